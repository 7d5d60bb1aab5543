//! Media: uploaded images and files, stored behind one [`Storage`] trait.
//!
//! Backends: a local directory ([`LocalStorage`], the default, served by [`Media::routes`] under
//! `/media`) or S3 ([`S3Storage`], any S3-compatible endpoint).
//!
//! Every upload is checked before anything is stored:
//! * size first ([`MediaError::TooLarge`], nothing decoded),
//! * kind from the magic bytes only ([`sniff`]; the file name and declared type are ignored),
//! * images are decoded with a pixel-count guard, rotated upright per their EXIF orientation
//!   and re-encoded without any metadata (EXIF, GPS, XMP, comments); a thumbnail and a blurhash
//!   are made from the result,
//! * keys are generated here (`{prefix}/{uuid}`), never taken from the client.
//!
//! No orphans: if one of an image's two objects fails to store, the other is deleted; if the
//! caller goes away (its future is dropped) while objects are being stored, they are deleted;
//! and [`UploadGuard`] deletes stored objects unless the caller commits (for example when the
//! database transaction that would reference them fails). See `docs/media.md`.

mod local;
mod process;
mod s3;
mod sniff;
mod storage;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{Semaphore, oneshot};

pub use local::LocalStorage;
pub use s3::{S3Settings, S3Storage};
pub use sniff::{Kind, sniff};
pub use storage::{CACHE_CONTROL, MAX_KEY_LEN, ObjectMeta, Storage, is_valid_key, is_valid_prefix};

/// Default [`MediaConfig::max_file_bytes`]: 10 MiB, the original's multipart limit per file.
pub const DEFAULT_MAX_FILE_BYTES: usize = 10 * 1024 * 1024;
/// Default [`MediaConfig::max_pixels`]: 40 megapixels.
pub const DEFAULT_MAX_PIXELS: u64 = 40_000_000;
/// Default [`MediaConfig::thumbnail_px`]: 320 pixels on the longest side.
pub const DEFAULT_THUMBNAIL_PX: u32 = 320;
/// Default URL prefix of the local backend.
pub const DEFAULT_URL_PREFIX: &str = "/media";

/// Suffix of a thumbnail's key: `{prefix}/{uuid}_thumb`.
pub const THUMB_SUFFIX: &str = "_thumb";

/// Why an upload was refused or could not be stored.
///
/// The REST layer answers `TooLarge`, `NotAnImage` and `Corrupt` with 400 `BR`, and `Storage`
/// with 500 `DE`.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    /// The upload is larger than [`MediaConfig::max_file_bytes`] (checked before decoding).
    #[error("upload larger than {limit} bytes")]
    TooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// An image was required but the magic bytes say something else (PDF, ZIP, OLE, unknown).
    #[error("not an image ({0:?})")]
    NotAnImage(Kind),
    /// The image cannot be decoded, or it has more pixels than [`MediaConfig::max_pixels`].
    #[error("corrupt or unacceptable image: {0}")]
    Corrupt(String),
    /// The backend failed (I/O, S3, bucket missing), or the caller passed an invalid prefix.
    #[error("media storage failed: {0}")]
    Storage(String),
}

impl MediaError {
    /// True when the upload itself is at fault (HTTP 400), false for storage failures (500).
    #[must_use]
    pub fn is_client_error(&self) -> bool {
        !matches!(self, MediaError::Storage(_))
    }
}

/// Where objects are stored.
#[derive(Clone, PartialEq, Eq)]
pub enum Backend {
    /// A directory on the local file system, served by [`Media::routes`].
    Local {
        /// The directory (created if missing).
        dir: PathBuf,
        /// URL prefix of objects, default `/media`: an object's URL is `{url_prefix}/{key}`.
        /// May be absolute (`https://cdn.example/media`); the routes answer under its path.
        url_prefix: String,
    },
    /// An S3 bucket (AWS or any S3-compatible endpoint). See [`S3Settings`] for the fields.
    S3 {
        /// Endpoint URL of an S3-compatible service; `None` for AWS.
        endpoint: Option<String>,
        /// Region, e.g. `us-east-1`.
        region: String,
        /// Bucket name.
        bucket: String,
        /// Access key id.
        access_key: String,
        /// Secret access key (redacted in `Debug`).
        secret_key: String,
        /// Path-style addressing (`{endpoint}/{bucket}/{key}`), needed by most non-AWS servers.
        path_style: bool,
        /// How clients reach objects; default derived from endpoint and bucket
        /// ([`S3Settings::derived_base_url`]).
        public_base_url: Option<String>,
        /// Create the bucket if it does not exist.
        create_bucket: bool,
    },
}

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Backend::Local { dir, url_prefix } => f
                .debug_struct("Local")
                .field("dir", dir)
                .field("url_prefix", url_prefix)
                .finish(),
            Backend::S3 {
                endpoint,
                region,
                bucket,
                access_key,
                secret_key: _,
                path_style,
                public_base_url,
                create_bucket,
            } => f
                .debug_struct("S3")
                .field("endpoint", endpoint)
                .field("region", region)
                .field("bucket", bucket)
                .field("access_key", access_key)
                .field("secret_key", &"<redacted>")
                .field("path_style", path_style)
                .field("public_base_url", public_base_url)
                .field("create_bucket", create_bucket)
                .finish(),
        }
    }
}

impl Backend {
    /// A local directory served under [`DEFAULT_URL_PREFIX`].
    pub fn local(dir: impl Into<PathBuf>) -> Backend {
        Backend::Local {
            dir: dir.into(),
            url_prefix: DEFAULT_URL_PREFIX.to_owned(),
        }
    }

    /// Opens the backend: creates the directory, or builds the S3 client and checks (or
    /// creates) the bucket.
    ///
    /// # Errors
    /// [`MediaError::Storage`] when that fails.
    pub async fn open(&self) -> Result<Arc<dyn Storage>, MediaError> {
        Ok(match self {
            Backend::Local { dir, url_prefix } => {
                Arc::new(LocalStorage::new(dir.clone(), url_prefix).await?)
            }
            Backend::S3 {
                endpoint,
                region,
                bucket,
                access_key,
                secret_key,
                path_style,
                public_base_url,
                create_bucket,
            } => Arc::new(
                S3Storage::new(&S3Settings {
                    endpoint: endpoint.clone(),
                    region: region.clone(),
                    bucket: bucket.clone(),
                    access_key: access_key.clone(),
                    secret_key: secret_key.clone(),
                    path_style: *path_style,
                    public_base_url: public_base_url.clone(),
                    create_bucket: *create_bucket,
                })
                .await?,
            ),
        })
    }
}

/// Media configuration: a backend and the limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaConfig {
    /// Where objects are stored.
    pub backend: Backend,
    /// Largest accepted upload in bytes (default [`DEFAULT_MAX_FILE_BYTES`], 10 MiB).
    pub max_file_bytes: usize,
    /// Largest accepted image in pixels, width × height from the header, checked before
    /// decoding (decompression-bomb guard; default [`DEFAULT_MAX_PIXELS`], 40 MP).
    pub max_pixels: u64,
    /// Longest side of thumbnails in pixels (default [`DEFAULT_THUMBNAIL_PX`], 320). Smaller
    /// images are not enlarged.
    pub thumbnail_px: u32,
    /// The public origin (`scheme://host[:port]`) that makes a relative base URL (the local
    /// backend's `/media`) absolute in every URL this service renders; `None` keeps them
    /// relative. Set by the social service from its public URL (see `docs/media.md`).
    pub origin: Option<String>,
}

impl MediaConfig {
    /// This backend with the default limits.
    #[must_use]
    pub fn new(backend: Backend) -> MediaConfig {
        MediaConfig {
            backend,
            max_file_bytes: DEFAULT_MAX_FILE_BYTES,
            max_pixels: DEFAULT_MAX_PIXELS,
            thumbnail_px: DEFAULT_THUMBNAIL_PX,
            origin: None,
        }
    }

    /// The limits part.
    #[must_use]
    pub fn limits(&self) -> Limits {
        Limits {
            max_file_bytes: self.max_file_bytes,
            max_pixels: self.max_pixels,
            thumbnail_px: self.thumbnail_px,
        }
    }
}

impl Default for MediaConfig {
    /// The directory `media` (relative to the working directory) served under `/media`, with
    /// the default limits.
    fn default() -> MediaConfig {
        MediaConfig::new(Backend::local("media"))
    }
}

/// The limits of a [`MediaConfig`], for [`Media::with_storage`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// See [`MediaConfig::max_file_bytes`].
    pub max_file_bytes: usize,
    /// See [`MediaConfig::max_pixels`].
    pub max_pixels: u64,
    /// See [`MediaConfig::thumbnail_px`].
    pub thumbnail_px: u32,
}

impl Default for Limits {
    fn default() -> Limits {
        MediaConfig::default().limits()
    }
}

/// A stored image: the cleaned main picture and its thumbnail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredImage {
    /// Key of the main picture, `{prefix}/{uuid}`.
    pub key: String,
    /// URL of the main picture.
    pub url: String,
    /// Key of the thumbnail, `{prefix}/{uuid}_thumb`.
    pub thumbnail_key: String,
    /// URL of the thumbnail.
    pub thumbnail_url: String,
    /// Blurhash of the thumbnail (4×3 components, 28 characters).
    pub blurhash: String,
    /// Width of the main picture after orientation.
    pub width: u32,
    /// Height of the main picture after orientation.
    pub height: u32,
    /// Content type of the main picture: `image/jpeg`, `image/png` or `image/gif`.
    pub content_type: &'static str,
    /// Size of the main picture as stored, in bytes.
    pub size: u64,
    /// Content type of the thumbnail: `image/jpeg`, or `image/png` when it has transparency.
    pub thumbnail_content_type: &'static str,
    /// Thumbnail width.
    pub thumbnail_width: u32,
    /// Thumbnail height.
    pub thumbnail_height: u32,
}

impl StoredImage {
    /// Both keys (main, thumbnail), e.g. for [`Media::delete`] or [`UploadGuard::add_image`].
    #[must_use]
    pub fn keys(&self) -> [String; 2] {
        [self.key.clone(), self.thumbnail_key.clone()]
    }
}

/// A stored non-image file (chat `FILE` attachments).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredFile {
    /// Key, `{prefix}/{uuid}`.
    pub key: String,
    /// URL.
    pub url: String,
    /// Size in bytes.
    pub size: u64,
    /// Content type it is served with (a safe type; see [`Kind::content_type`]).
    pub content_type: String,
}

/// A stored reference that is an object key (`post/…`), not a URL written by an older version.
fn is_key(stored: &str) -> bool {
    !stored.starts_with('/') && !stored.contains("://") && is_valid_key(stored)
}

/// How stored media references become the URLs clients load. The database keeps object keys
/// (`post/…`, `profile/…`), never host-bound URLs; a key is rendered as `{base}/{key}`, where the
/// base is the storage's base URL (`/media`, or the bucket's or CDN's URL) made absolute with the
/// public origin when it is relative. Rows written before keys were stored keep working: an
/// absolute URL (a legacy bucket or CDN) is returned as it is, a root-relative path (a local
/// prefix other than `/media`) gets the origin in front, and `""` (the original's "no image")
/// stays `""`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Links {
    origin: String,
    base: String,
}

impl Links {
    /// Links for a storage whose objects live under `base_url` (`/media`, or an absolute URL),
    /// rendered under `origin` (`scheme://host[:port]`; `None` or `""` keeps a relative base
    /// relative).
    #[must_use]
    pub fn new(origin: Option<&str>, base_url: &str) -> Links {
        let origin = origin.unwrap_or("").trim_end_matches('/').to_owned();
        let base_url = base_url.trim_end_matches('/');
        let base = if base_url.starts_with('/') {
            format!("{origin}{base_url}")
        } else {
            base_url.to_owned()
        };
        Links { origin, base }
    }

    /// The public origin (`""`: none).
    #[must_use]
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The base URL keys are rendered under.
    #[must_use]
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The URL of `key`: `{base}/{key}`.
    #[must_use]
    pub fn url_of(&self, key: &str) -> String {
        format!("{}/{key}", self.base)
    }

    /// The URL clients load a stored reference from (see the type's documentation).
    #[must_use]
    pub fn link(&self, stored: &str) -> String {
        if stored.is_empty() || stored.contains("://") {
            stored.to_owned()
        } else if stored.starts_with('/') {
            format!("{}{stored}", self.origin)
        } else {
            self.url_of(stored)
        }
    }

    /// [`Links::link`] of an optional reference.
    #[must_use]
    pub fn link_opt(&self, stored: Option<&str>) -> Option<String> {
        stored.map(|s| self.link(s))
    }
}

/// The media service. Cheap to clone (an `Arc` inside).
#[derive(Clone, Debug)]
pub struct Media {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    storage: Arc<dyn Storage>,
    /// How stored references become URLs.
    links: Links,
    limits: Limits,
    /// Bounds how many images are decoded at once (each may take a few hundred MB at the pixel
    /// limit).
    decode_slots: Semaphore,
}

impl Media {
    /// Opens the configured backend (creates the directory; checks or creates the bucket).
    ///
    /// # Errors
    /// [`MediaError::Storage`] when the backend cannot be opened.
    pub async fn new(cfg: MediaConfig) -> Result<Media, MediaError> {
        let storage = cfg.backend.open().await?;
        Ok(Media::build(storage, cfg.limits(), cfg.origin.as_deref()))
    }

    /// A media service over any [`Storage`] (for example a wrapper around a real backend), with
    /// URLs as relative as the storage's base.
    #[must_use]
    pub fn with_storage(storage: Arc<dyn Storage>, limits: Limits) -> Media {
        Media::build(storage, limits, None)
    }

    /// The service, rendering URLs under `origin` (`scheme://host[:port]`): a relative base URL
    /// (`/media`) becomes `{origin}/media` ([`Links`]).
    fn build(storage: Arc<dyn Storage>, limits: Limits, origin: Option<&str>) -> Media {
        let slots = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
        let links = Links::new(origin, storage.base_url());
        Media {
            inner: Arc::new(Inner {
                storage,
                links,
                limits,
                decode_slots: Semaphore::new(slots),
            }),
        }
    }

    /// The storage backend.
    #[must_use]
    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.inner.storage
    }

    /// The limits in force.
    #[must_use]
    pub fn limits(&self) -> Limits {
        self.inner.limits
    }

    /// How this service renders stored references as URLs.
    #[must_use]
    pub fn links(&self) -> &Links {
        &self.inner.links
    }

    /// [`Links::url_of`].
    #[must_use]
    pub fn url_of(&self, key: &str) -> String {
        self.inner.links.url_of(key)
    }

    /// [`Links::link`].
    #[must_use]
    pub fn link(&self, stored: &str) -> String {
        self.inner.links.link(stored)
    }

    /// [`Links::link_opt`].
    #[must_use]
    pub fn link_opt(&self, stored: Option<&str>) -> Option<String> {
        self.inner.links.link_opt(stored)
    }

    /// The key of a stored reference to one of this service's objects: the reference itself
    /// when it is a key, or the key inside a URL this service made earlier (`{base}/{key}`,
    /// relative or absolute); `None` for anything else (another bucket, a legacy URL, a
    /// malformed key). Used to delete an old image once its replacement is stored.
    #[must_use]
    pub fn own_key(&self, stored: &str) -> Option<String> {
        if is_key(stored) {
            return Some(stored.to_owned());
        }
        let rest = stored
            .strip_prefix(self.inner.links.base.as_str())
            .or_else(|| stored.strip_prefix(self.inner.storage.base_url()))?
            .strip_prefix('/')?;
        is_valid_key(rest).then(|| rest.to_owned())
    }

    /// Warp routes serving stored objects (`GET`/`HEAD` under the URL prefix, default
    /// `/media/**`) for the local backend: the stored content type, `X-Content-Type-Options:
    /// nosniff`, `Content-Security-Policy: sandbox`, immutable cache headers and an ETag
    /// (`If-None-Match` answers 304). Paths that are not valid keys (`..`, `.`, percent
    /// encodings, empty segments) are 404. `None` for S3, whose objects clients fetch from the
    /// bucket.
    #[must_use]
    pub fn routes(&self) -> Option<warp::filters::BoxedFilter<(warp::reply::Response,)>> {
        self.inner.storage.routes()
    }

    /// A guard that deletes the objects added to it unless [`UploadGuard::commit`] is called.
    pub fn guard(&self) -> UploadGuard {
        UploadGuard {
            media: self.clone(),
            keys: Vec::new(),
        }
    }

    fn check_upload(&self, prefix: &str, bytes: &Bytes) -> Result<(), MediaError> {
        if !is_valid_prefix(prefix) {
            return Err(MediaError::Storage(format!(
                "invalid key prefix {prefix:?}"
            )));
        }
        let limit = self.inner.limits.max_file_bytes;
        if bytes.len() > limit {
            return Err(MediaError::TooLarge { limit });
        }
        Ok(())
    }

    fn new_key(prefix: &str) -> String {
        let id = uuid::Uuid::new_v4();
        if prefix.is_empty() {
            id.to_string()
        } else {
            format!("{prefix}/{id}")
        }
    }

    /// Stores an image: size check, sniff (JPEG, PNG, GIF or WebP, else
    /// [`MediaError::NotAnImage`]), pixel-count check, decode (on the blocking pool), EXIF
    /// orientation applied, re-encoded without metadata (JPEG stays JPEG, PNG stays PNG, WebP
    /// becomes JPEG, or PNG if it has transparency; GIF keeps its frames byte for byte with
    /// comment/XMP/application blocks removed), then a thumbnail (longest side
    /// [`MediaConfig::thumbnail_px`], JPEG or PNG) and a blurhash of it (4×3).
    ///
    /// Both objects are stored under `{prefix}/{uuid}` and `{prefix}/{uuid}_thumb`; if either
    /// fails, the other is deleted, and if this future is dropped before it completes, both are
    /// deleted.
    ///
    /// # Errors
    /// [`MediaError::TooLarge`], [`MediaError::NotAnImage`], [`MediaError::Corrupt`] for a bad
    /// upload (nothing stored); [`MediaError::Storage`] when storing fails (nothing left).
    pub async fn store_image(&self, prefix: &str, bytes: Bytes) -> Result<StoredImage, MediaError> {
        self.check_upload(prefix, &bytes)?;
        let kind = sniff(&bytes);
        if !kind.is_image() {
            return Err(MediaError::NotAnImage(kind));
        }
        let limits = self.inner.limits;
        let processed = {
            let _slot = self
                .inner
                .decode_slots
                .acquire()
                .await
                .map_err(|e| MediaError::Storage(e.to_string()))?;
            tokio::task::spawn_blocking(move || {
                process::process_image(&bytes, kind, limits.max_pixels, limits.thumbnail_px)
            })
            .await
            .map_err(|e| MediaError::Corrupt(format!("image decoder failed: {e}")))??
        };
        let key = Media::new_key(prefix);
        let thumbnail_key = format!("{key}{THUMB_SUFFIX}");
        let process::Processed {
            main,
            thumbnail,
            blurhash,
        } = processed;
        let stored = StoredImage {
            url: self.url_of(&key),
            thumbnail_url: self.url_of(&thumbnail_key),
            key,
            thumbnail_key,
            blurhash,
            width: main.width,
            height: main.height,
            content_type: main.content_type,
            size: main.bytes.len() as u64,
            thumbnail_content_type: thumbnail.content_type,
            thumbnail_width: thumbnail.width,
            thumbnail_height: thumbnail.height,
        };
        let objects = vec![
            (
                stored.key.clone(),
                main.bytes,
                ObjectMeta::inline(main.content_type),
            ),
            (
                stored.thumbnail_key.clone(),
                thumbnail.bytes,
                ObjectMeta::inline(thumbnail.content_type),
            ),
        ];
        self.put_all(objects).await?;
        Ok(stored)
    }

    /// Stores any file (chat `FILE` attachments) as a download: the content type comes from the
    /// magic bytes and is always safe ([`Kind::content_type`]: images, `application/pdf`,
    /// `application/zip`, else `application/octet-stream`; never HTML, SVG or text), and the
    /// object carries `Content-Disposition: attachment` with a sanitized `file_name` (used for
    /// nothing else: the key is `{prefix}/{uuid}`). Images stored this way keep their metadata;
    /// use [`Media::store_image`] for pictures.
    ///
    /// # Errors
    /// [`MediaError::TooLarge`]; [`MediaError::Storage`] when storing fails (nothing left).
    pub async fn store_file(
        &self,
        prefix: &str,
        bytes: Bytes,
        file_name: &str,
    ) -> Result<StoredFile, MediaError> {
        self.check_upload(prefix, &bytes)?;
        let kind = sniff(&bytes);
        let key = Media::new_key(prefix);
        let meta = ObjectMeta {
            content_type: kind.content_type().to_owned(),
            content_disposition: Some(attachment_disposition(file_name)),
        };
        let stored = StoredFile {
            url: self.url_of(&key),
            key: key.clone(),
            size: bytes.len() as u64,
            content_type: meta.content_type.clone(),
        };
        self.put_all(vec![(key, bytes, meta)]).await?;
        Ok(stored)
    }

    /// Stores all `objects` concurrently in a task of its own. If any fails, the stored ones are
    /// deleted and the first error returned. If the caller's future is dropped before the result
    /// is delivered, the task deletes everything it stored.
    async fn put_all(&self, objects: Vec<(String, Bytes, ObjectMeta)>) -> Result<(), MediaError> {
        let storage = Arc::clone(&self.inner.storage);
        let (tx, rx) = oneshot::channel();
        tokio::spawn(async move {
            let keys: Vec<String> = objects.iter().map(|(k, _, _)| k.clone()).collect();
            let results = futures_util::future::join_all(
                objects
                    .iter()
                    .map(|(key, body, meta)| storage.put(key, body.clone(), meta)),
            )
            .await;
            let stored: Vec<String> = keys
                .iter()
                .zip(&results)
                .filter(|(_, r)| r.is_ok())
                .map(|(k, _)| k.clone())
                .collect();
            let outcome = match results.into_iter().find_map(Result::err) {
                Some(err) => {
                    delete_keys(storage.as_ref(), &stored).await;
                    Err(err)
                }
                None => Ok(()),
            };
            if let Err(Ok(())) = tx.send(outcome) {
                tracing::info!(?keys, "media: upload abandoned by its caller; deleting");
                delete_keys(storage.as_ref(), &keys).await;
            }
        });
        rx.await
            .map_err(|_| MediaError::Storage("upload task ended without a result".to_owned()))?
    }

    /// Deletes objects, best effort: invalid keys are skipped and failures are logged (never
    /// returned). Used to undo uploads when the database transaction that would reference them
    /// fails, and to remove a replaced profile image.
    pub async fn delete(&self, keys: &[String]) {
        delete_keys(self.inner.storage.as_ref(), keys).await;
    }
}

async fn delete_keys(storage: &dyn Storage, keys: &[String]) {
    let jobs = keys.iter().map(|key| async move {
        if !is_valid_key(key) {
            tracing::warn!(key, "media: not deleting an invalid key");
            return;
        }
        if let Err(e) = storage.delete(key).await {
            tracing::warn!(key, error = %e, "media: delete failed; the object is left behind");
        }
    });
    futures_util::future::join_all(jobs).await;
}

/// Deletes the objects added to it when dropped, unless [`UploadGuard::commit`] was called.
///
/// ```ignore
/// let mut guard = media.guard();
/// let img = media.store_image("post/42", bytes).await?;
/// guard.add_image(&img);
/// insert_rows(&mut tx, &img).await?;   // an error here drops the guard: objects deleted
/// tx.commit().await?;
/// guard.commit();                      // keep them
/// ```
///
/// Deletion on drop runs in a spawned task (it needs a Tokio runtime; without one, the keys
/// are logged as left behind). [`UploadGuard::rollback`] deletes and waits.
#[derive(Debug)]
#[must_use = "dropping the guard deletes its objects; call commit() to keep them"]
pub struct UploadGuard {
    media: Media,
    keys: Vec<String>,
}

impl UploadGuard {
    /// Adds the two objects of a stored image.
    pub fn add_image(&mut self, image: &StoredImage) {
        self.keys.extend(image.keys());
    }

    /// Adds a stored file.
    pub fn add_file(&mut self, file: &StoredFile) {
        self.keys.push(file.key.clone());
    }

    /// Adds a key.
    pub fn add_key(&mut self, key: impl Into<String>) {
        self.keys.push(key.into());
    }

    /// The keys held.
    #[must_use]
    pub fn keys(&self) -> &[String] {
        &self.keys
    }

    /// Keeps the objects: the guard forgets them.
    pub fn commit(mut self) {
        self.keys.clear();
    }

    /// Deletes the objects now and waits for it.
    pub async fn rollback(mut self) {
        let keys = std::mem::take(&mut self.keys);
        self.media.delete(&keys).await;
    }
}

impl Drop for UploadGuard {
    fn drop(&mut self) {
        if self.keys.is_empty() {
            return;
        }
        let keys = std::mem::take(&mut self.keys);
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                let media = self.media.clone();
                rt.spawn(async move { media.delete(&keys).await });
            }
            Err(_) => tracing::warn!(?keys, "media: no runtime to delete uncommitted uploads"),
        }
    }
}

/// `Content-Disposition: attachment` for a client-supplied file name: only the last path
/// component is kept, control characters, quotes and backslashes are removed, the name is cut
/// to 200 characters, and it is given both as an ASCII `filename` (non-ASCII replaced by `_`)
/// and as an RFC 5987 `filename*` in UTF-8.
#[must_use]
pub fn attachment_disposition(file_name: &str) -> String {
    let base = file_name.rsplit(['/', '\\']).next().unwrap_or(file_name);
    let clean: String = base
        .chars()
        .filter(|c| !c.is_control() && !matches!(c, '"' | '\\'))
        .take(200)
        .collect();
    let clean = clean.trim();
    let clean = if clean.is_empty() || clean == "." || clean == ".." {
        "file"
    } else {
        clean
    };
    let ascii: String = clean
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                if matches!(c, ';' | '%') { '_' } else { c }
            } else {
                '_'
            }
        })
        .collect();
    let mut encoded = String::with_capacity(clean.len() * 3);
    for b in clean.bytes() {
        if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
            encoded.push(char::from(b));
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    format!("attachment; filename=\"{ascii}\"; filename*=UTF-8''{encoded}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_render_keys_under_the_origin_and_keep_legacy_values() {
        let local = Links::new(Some("http://127.0.0.1:8080/"), "/media");
        assert_eq!(local.base(), "http://127.0.0.1:8080/media");
        assert_eq!(
            local.link("post/1/abc"),
            "http://127.0.0.1:8080/media/post/1/abc"
        );
        // Legacy rows: a root-relative path gets the origin, an absolute URL and "" stay.
        assert_eq!(
            local.link("/static/x.jpg"),
            "http://127.0.0.1:8080/static/x.jpg"
        );
        assert_eq!(
            local.link("https://b.s3.amazonaws.com/p/1"),
            "https://b.s3.amazonaws.com/p/1"
        );
        assert_eq!(local.link(""), "");
        assert_eq!(local.link_opt(None), None);
        // No origin: as relative as the base (library use).
        assert_eq!(Links::new(None, "/media").link("p/1"), "/media/p/1");
        // An absolute base (S3, CDN) does not depend on the origin.
        let s3 = Links::new(Some("http://localhost:1"), "http://127.0.0.1:5000/bucket/");
        assert_eq!(s3.link("p/1"), "http://127.0.0.1:5000/bucket/p/1");
        assert_eq!(s3.origin(), "http://localhost:1");
    }

    #[test]
    fn dispositions() {
        assert_eq!(
            attachment_disposition("report.pdf"),
            "attachment; filename=\"report.pdf\"; filename*=UTF-8''report.pdf"
        );
        assert_eq!(
            attachment_disposition("../../etc/pa\"ss\r\nwd;.hwp"),
            "attachment; filename=\"passwd_.hwp\"; filename*=UTF-8''passwd%3B.hwp"
        );
        assert_eq!(
            attachment_disposition("C:\\x\\보고서.hwp"),
            "attachment; filename=\"___.hwp\"; filename*=UTF-8''%EB%B3%B4%EA%B3%A0%EC%84%9C.hwp"
        );
        assert_eq!(
            attachment_disposition(""),
            "attachment; filename=\"file\"; filename*=UTF-8''file"
        );
        assert_eq!(
            attachment_disposition("a/.."),
            "attachment; filename=\"file\"; filename*=UTF-8''file"
        );
    }

    #[test]
    fn backend_debug_redacts_secret() {
        let b = Backend::S3 {
            endpoint: None,
            region: "r".into(),
            bucket: "b".into(),
            access_key: "AKIA".into(),
            secret_key: "very-secret".into(),
            path_style: true,
            public_base_url: None,
            create_bucket: false,
        };
        let s = format!("{b:?}");
        assert!(s.contains("AKIA") && !s.contains("very-secret"));
    }
}
