//! Local-directory backend and its warp routes.
//!
//! Layout under the directory: the object `post/42/<uuid>` is the file `post/42/<uuid>` and its
//! metadata (content type and disposition, JSON) is `post/42/<uuid>.meta`. The key grammar has
//! no `.`, so a metadata file can never be requested as an object.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use warp::Filter as _;
use warp::http::{HeaderValue, Response, StatusCode, header};

use super::storage::{CACHE_CONTROL, ObjectMeta, Storage, is_valid_key};
use super::{MediaError, sniff};

/// Objects in a directory on the local file system, served by [`Storage::routes`] under the
/// path of the URL prefix (default `/media`).
#[derive(Debug, Clone)]
pub struct LocalStorage {
    inner: Arc<LocalInner>,
}

#[derive(Debug)]
struct LocalInner {
    dir: PathBuf,
    /// URL prefix without a trailing slash, e.g. `/media` or `https://cdn.example/media`.
    base_url: String,
    /// Path part of `base_url` the routes match, e.g. `/media`.
    mount: String,
}

fn io_err(what: &str, path: &Path, e: &std::io::Error) -> MediaError {
    MediaError::Storage(format!("{what} {}: {e}", path.display()))
}

/// The path part of a URL prefix: `/media` for `/media/`, `media` or `https://host/media`.
fn mount_path(url_prefix: &str) -> String {
    let path = match url_prefix.find("://") {
        Some(i) => {
            let after = &url_prefix[i + 3..];
            after.find('/').map_or("", |j| &after[j..])
        }
        None => url_prefix,
    };
    let trimmed = path.trim_matches('/');
    if trimmed.is_empty() {
        String::new()
    } else {
        format!("/{trimmed}")
    }
}

impl LocalStorage {
    /// Opens (creating it if needed) the directory `dir`. Object URLs are `{url_prefix}/{key}`
    /// (a trailing `/` on the prefix is ignored); the routes answer under the path of
    /// `url_prefix` (`/media` for both `/media` and `https://cdn.example/media`).
    ///
    /// # Errors
    /// [`MediaError::Storage`] when the directory cannot be created.
    pub async fn new(
        dir: impl Into<PathBuf>,
        url_prefix: &str,
    ) -> Result<LocalStorage, MediaError> {
        let dir = dir.into();
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| io_err("cannot create media directory", &dir, &e))?;
        let base_url = url_prefix.trim_end_matches('/').to_owned();
        Ok(LocalStorage {
            inner: Arc::new(LocalInner {
                mount: mount_path(url_prefix),
                dir,
                base_url,
            }),
        })
    }

    /// The directory objects are stored in.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The file holding `key`, or `None` when `key` is not a valid key. Every component of a
    /// valid key is a plain name (no `.`, `..`, separators or encodings), so the result always
    /// lies inside the directory.
    #[must_use]
    pub fn path_of(&self, key: &str) -> Option<PathBuf> {
        is_valid_key(key).then(|| self.inner.dir.join(key))
    }

    async fn serve(
        &self,
        key: &str,
        head: bool,
        if_none_match: Option<&str>,
    ) -> warp::reply::Response {
        let Some(path) = self.path_of(key) else {
            return status_only(StatusCode::NOT_FOUND);
        };
        let size = match tokio::fs::metadata(&path).await {
            Ok(m) if m.is_file() => m.len(),
            _ => return status_only(StatusCode::NOT_FOUND),
        };
        // Objects never change (fresh UUID keys), so the key's last segment is a strong ETag.
        let etag = format!("\"{}\"", key.rsplit('/').next().unwrap_or(key));
        if let Some(inm) = if_none_match
            && inm.split(',').any(|t| {
                let t = t.trim();
                t == "*" || t == etag || t.strip_prefix("W/") == Some(etag.as_str())
            })
        {
            let mut r = status_only(StatusCode::NOT_MODIFIED);
            set(&mut r, header::ETAG, &etag);
            set(&mut r, header::CACHE_CONTROL, CACHE_CONTROL);
            return r;
        }
        let body = if head {
            None
        } else {
            match tokio::fs::read(&path).await {
                Ok(b) => Some(b),
                Err(e) => {
                    tracing::warn!(error = %e, path = %path.display(), "media: cannot read object");
                    return status_only(StatusCode::NOT_FOUND);
                }
            }
        };
        let meta = match read_meta(&path).await {
            Some(m) => m,
            // Metadata lost: decide from the bytes, and never serve unknown content inline.
            None => {
                let kind = match &body {
                    Some(b) => sniff(b),
                    None => {
                        let mut head_bytes = [0u8; 16];
                        let n = read_prefix(&path, &mut head_bytes).await;
                        sniff(&head_bytes[..n])
                    }
                };
                ObjectMeta {
                    content_type: kind.content_type().to_owned(),
                    content_disposition: (!kind.is_image()).then(|| "attachment".to_owned()),
                }
            }
        };
        let mut r = Response::new(body.map(Bytes::from).unwrap_or_default().into());
        set(&mut r, header::CONTENT_TYPE, &meta.content_type);
        set(&mut r, header::CONTENT_LENGTH, &size.to_string());
        if let Some(cd) = &meta.content_disposition {
            set(&mut r, header::CONTENT_DISPOSITION, cd);
        }
        set(&mut r, header::ETAG, &etag);
        set(&mut r, header::CACHE_CONTROL, CACHE_CONTROL);
        set(&mut r, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
        // Even if a browser were to open an object as a document, it gets no script and no origin.
        set(&mut r, header::CONTENT_SECURITY_POLICY, "sandbox");
        r
    }
}

fn meta_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".meta");
    PathBuf::from(p)
}

async fn read_meta(path: &Path) -> Option<ObjectMeta> {
    let raw = tokio::fs::read(meta_path(path)).await.ok()?;
    serde_json::from_slice(&raw).ok()
}

async fn read_prefix(path: &Path, buf: &mut [u8]) -> usize {
    use tokio::io::AsyncReadExt as _;
    let Ok(mut f) = tokio::fs::File::open(path).await else {
        return 0;
    };
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]).await {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
    }
    n
}

fn set(r: &mut warp::reply::Response, name: header::HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        r.headers_mut().insert(name, v);
    }
}

fn status_only(status: StatusCode) -> warp::reply::Response {
    let mut r = Response::new(Bytes::new().into());
    *r.status_mut() = status;
    set(&mut r, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    r
}

/// Writes `bytes` to a temporary sibling of `path` and renames it into place, so a reader never
/// sees a partial file.
async fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), MediaError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp-{}", uuid::Uuid::new_v4().simple()));
    let tmp = PathBuf::from(tmp);
    if let Err(e) = tokio::fs::write(&tmp, bytes).await {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(io_err("cannot write", &tmp, &e));
    }
    if let Err(e) = tokio::fs::rename(&tmp, path).await {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(io_err("cannot rename into", path, &e));
    }
    Ok(())
}

async fn remove_if_exists(path: &Path) -> Result<(), MediaError> {
    match tokio::fs::remove_file(path).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("cannot delete", path, &e)),
    }
}

#[async_trait]
impl Storage for LocalStorage {
    async fn check(&self) -> Result<(), MediaError> {
        match tokio::fs::metadata(self.dir()).await {
            Ok(m) if m.is_dir() => Ok(()),
            Ok(_) => Err(MediaError::Storage(format!(
                "{} is not a directory",
                self.dir().display()
            ))),
            Err(e) => Err(io_err("media directory unavailable", self.dir(), &e)),
        }
    }

    async fn put(&self, key: &str, body: Bytes, meta: &ObjectMeta) -> Result<(), MediaError> {
        let path = self
            .path_of(key)
            .ok_or_else(|| MediaError::Storage(format!("invalid key {key:?}")))?;
        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| io_err("cannot create directory", parent, &e))?;
        }
        let meta_json =
            serde_json::to_vec(meta).map_err(|e| MediaError::Storage(format!("metadata: {e}")))?;
        // Metadata first: the object becomes visible only once its data file is renamed in.
        let meta_file = meta_path(&path);
        write_atomically(&meta_file, &meta_json).await?;
        if let Err(e) = write_atomically(&path, &body).await {
            let _ = remove_if_exists(&meta_file).await;
            return Err(e);
        }
        Ok(())
    }

    async fn get(&self, key: &str, max: usize) -> Result<Bytes, MediaError> {
        let path = self
            .path_of(key)
            .ok_or_else(|| MediaError::Storage(format!("invalid key {key:?}")))?;
        let len = tokio::fs::metadata(&path)
            .await
            .map_err(|e| MediaError::Storage(format!("cannot read {key}: {e}")))?
            .len();
        if len > max as u64 {
            return Err(MediaError::Storage(format!("{key} is over {max} bytes")));
        }
        tokio::fs::read(&path)
            .await
            .map(Bytes::from)
            .map_err(|e| MediaError::Storage(format!("cannot read {key}: {e}")))
    }

    async fn delete(&self, key: &str) -> Result<(), MediaError> {
        let path = self
            .path_of(key)
            .ok_or_else(|| MediaError::Storage(format!("invalid key {key:?}")))?;
        remove_if_exists(&path).await?;
        remove_if_exists(&meta_path(&path)).await
    }

    fn base_url(&self) -> &str {
        &self.inner.base_url
    }

    fn routes(&self) -> Option<warp::filters::BoxedFilter<(warp::reply::Response,)>> {
        let mount = format!("{}/", self.inner.mount);
        let this = self.clone();
        let filter = warp::path::full()
            .and_then(move |full: warp::path::FullPath| {
                // The raw request path: percent-encodings are not decoded, so `%2e%2e` or `%2f`
                // stay as they are and fail the key grammar.
                let key = full
                    .as_str()
                    .strip_prefix(mount.as_str())
                    .map(str::to_owned);
                async move { key.ok_or_else(warp::reject::not_found) }
            })
            .and(
                warp::get()
                    .map(|| false)
                    .or(warp::head().map(|| true))
                    .unify(),
            )
            .and(warp::header::optional::<String>("if-none-match"))
            .then(move |key: String, head: bool, inm: Option<String>| {
                let this = this.clone();
                async move { this.serve(&key, head, inm.as_deref()).await }
            });
        Some(filter.boxed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_paths() {
        assert_eq!(mount_path("/media"), "/media");
        assert_eq!(mount_path("/media/"), "/media");
        assert_eq!(mount_path("media"), "/media");
        assert_eq!(
            mount_path("https://cdn.example/static/media/"),
            "/static/media"
        );
        assert_eq!(mount_path("https://cdn.example"), "");
        assert_eq!(mount_path("/"), "");
    }
}
