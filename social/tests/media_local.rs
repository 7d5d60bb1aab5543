//! The local backend: storing, serving through `Media::routes` with `warp::test`, deleting,
//! path traversal, and the no-orphan rule with a real directory behind a failing wrapper.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Cursor;
use std::path::PathBuf;

use common::files_under;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use image::{DynamicImage, ImageFormat, Rgb, RgbImage};
use social::media::{
    Backend, Limits, LocalStorage, Media, MediaConfig, MediaError, ObjectMeta, Storage,
};

struct TempDir(PathBuf);
impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "instar-media-{tag}-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn jpeg(w: u32, h: u32) -> Bytes {
    let img = DynamicImage::ImageRgb8(RgbImage::from_fn(w, h, |x, y| {
        Rgb([(x % 256) as u8, (y % 256) as u8, 77])
    }));
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, ImageFormat::Jpeg).unwrap();
    Bytes::from(out.into_inner())
}

async fn local_media(dir: &TempDir) -> Media {
    Media::new(MediaConfig::new(Backend::local(dir.0.join("store"))))
        .await
        .unwrap()
}

async fn get(media: &Media, method: &str, path: &str) -> warp::http::Response<Bytes> {
    let routes = media.routes().expect("local backend has routes");
    warp::test::request()
        .method(method)
        .path(path)
        .reply(&routes)
        .await
}

fn header<'a>(r: &'a warp::http::Response<Bytes>, name: &str) -> &'a str {
    r.headers()
        .get(name)
        .map(|v| v.to_str().unwrap())
        .unwrap_or_else(|| panic!("no {name} header"))
}

#[tokio::test]
async fn store_serve_and_delete() {
    let dir = TempDir::new("serve");
    let media = local_media(&dir).await;
    let img = media.store_image("post/42", jpeg(64, 48)).await.unwrap();
    assert_eq!(img.url, format!("/media/{}", img.key));
    assert_eq!(img.thumbnail_url, format!("/media/{}", img.thumbnail_key));
    assert_eq!(media.own_key(&img.url).as_deref(), Some(img.key.as_str()));

    let r = get(&media, "GET", &img.url).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-type"), "image/jpeg");
    assert_eq!(header(&r, "x-content-type-options"), "nosniff");
    assert_eq!(
        header(&r, "cache-control"),
        "public, max-age=31536000, immutable"
    );
    assert!(r.headers().get("content-disposition").is_none());
    let on_disk = std::fs::read(dir.0.join("store").join(&img.key)).unwrap();
    assert_eq!(r.body().as_ref(), on_disk.as_slice());
    assert_eq!(r.body().len() as u64, img.size);
    assert_eq!(header(&r, "content-length"), img.size.to_string());

    let r = get(&media, "GET", &img.thumbnail_url).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-type"), "image/jpeg");

    // HEAD: same headers, no body.
    let r = get(&media, "HEAD", &img.url).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-type"), "image/jpeg");
    assert_eq!(header(&r, "content-length"), img.size.to_string());
    assert!(r.body().is_empty());

    // Conditional GET.
    let etag = header(&get(&media, "GET", &img.url).await, "etag").to_owned();
    let routes = media.routes().unwrap();
    let r = warp::test::request()
        .path(&img.url)
        .header("if-none-match", &etag)
        .reply(&routes)
        .await;
    assert_eq!(r.status(), 304);
    assert!(r.body().is_empty());

    // Other methods are not served.
    let r = get(&media, "POST", &img.url).await;
    assert_eq!(r.status(), 405);
    let r = get(&media, "DELETE", &img.url).await;
    assert_eq!(r.status(), 405);

    // Delete: gone from the routes and from the disk (metadata too).
    media.delete(&img.keys()).await;
    assert_eq!(get(&media, "GET", &img.url).await.status(), 404);
    assert_eq!(get(&media, "GET", &img.thumbnail_url).await.status(), 404);
    assert!(files_under(&dir.0).is_empty(), "{:?}", files_under(&dir.0));
    // Deleting again, or something that never existed, is harmless.
    media
        .delete(&[img.key.clone(), "nope/1".into(), "../x".into()])
        .await;
}

#[tokio::test]
async fn files_are_served_as_safe_downloads() {
    let dir = TempDir::new("files");
    let media = local_media(&dir).await;
    let html = Bytes::from_static(b"<!DOCTYPE html><html><script>alert(document.cookie)</script>");
    let svg =
        Bytes::from_static(b"<svg xmlns=\"http://www.w3.org/2000/svg\" onload=\"alert(1)\"/>");
    let pdf = Bytes::from_static(b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF");
    for (bytes, name, ct) in [
        (html, "index.html", "application/octet-stream"),
        (svg, "logo.svg", "application/octet-stream"),
        (pdf, "보고서.pdf", "application/pdf"),
    ] {
        let f = media
            .store_file("chat/7", bytes.clone(), name)
            .await
            .unwrap();
        assert_eq!(f.content_type, ct);
        assert_eq!(f.size, bytes.len() as u64);
        assert!(f.key.starts_with("chat/7/"));
        assert!(
            !f.key.contains(name.split('.').next().unwrap()),
            "key from the name"
        );
        let r = get(&media, "GET", &f.url).await;
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "content-type"), ct);
        assert_eq!(header(&r, "x-content-type-options"), "nosniff");
        let cd = header(&r, "content-disposition");
        assert!(cd.starts_with("attachment; filename="), "{cd}");
        assert_eq!(r.body(), &bytes);
    }
    let f = media
        .store_file("chat/7", Bytes::from_static(b"x"), "../../a\"b.hwp")
        .await
        .unwrap();
    let r = get(&media, "GET", &f.url).await;
    assert_eq!(
        header(&r, "content-disposition"),
        "attachment; filename=\"ab.hwp\"; filename*=UTF-8''ab.hwp"
    );
}

#[tokio::test]
async fn path_traversal_is_impossible() {
    let dir = TempDir::new("traversal");
    let media = local_media(&dir).await;
    // Something worth stealing next to and above the store.
    std::fs::write(dir.0.join("secret"), b"top secret").unwrap();
    std::fs::write(dir.0.join("store").join("loose"), b"not an object").unwrap();
    let img = media.store_image("post/1", jpeg(8, 8)).await.unwrap();
    let f = media
        .store_file("chat/1", Bytes::from_static(b"%PDF-1.4"), "a.pdf")
        .await
        .unwrap();

    let attempts = [
        "/media/../secret".to_owned(),
        "/media/../Cargo.toml".to_owned(),
        "/media/../../Cargo.toml".to_owned(),
        "/media/%2e%2e/secret".to_owned(),
        "/media/%2E%2E/secret".to_owned(),
        "/media/..%2fsecret".to_owned(),
        "/media/..%2Fsecret".to_owned(),
        "/media/..%5csecret".to_owned(),
        "/media/%2e%2e%2fsecret".to_owned(),
        "/media/post/..%2F..%2F..%2Fsecret".to_owned(),
        "/media/post/1/../../../secret".to_owned(),
        "/media/./loose".to_owned(),
        "/media//etc/passwd".to_owned(),
        "/media/%2fetc%2fpasswd".to_owned(),
        "/media/..\\secret".to_owned(),
        "/media/".to_owned(),
        "/media/post".to_owned(),
        "/media/post/1".to_owned(),
        // The metadata sidecar and temp files are not objects.
        format!("{}.meta", img.url),
        format!("{}.meta", f.url),
        format!("{}%2emeta", f.url),
    ];
    for path in &attempts {
        let routes = media.routes().unwrap();
        let r = warp::test::request().path(path).reply(&routes).await;
        assert!(
            r.status() == 404 || r.status() == 400,
            "{path}: {}",
            r.status()
        );
        assert!(!r.body().windows(6).any(|w| w == b"secret"), "{path}");
        assert!(!r.body().windows(9).any(|w| w == b"workspace"), "{path}");
    }
    // A file placed in the directory by hand is served only with a safe type.
    let r = get(&media, "GET", "/media/loose").await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-type"), "application/octet-stream");
    assert!(header(&r, "content-disposition").starts_with("attachment"));
}

#[tokio::test]
async fn routes_only_answer_under_their_prefix() {
    let dir = TempDir::new("prefix");
    let media = Media::new(MediaConfig::new(Backend::Local {
        dir: dir.0.join("store"),
        url_prefix: "https://cdn.example/static/media/".into(),
    }))
    .await
    .unwrap();
    let img = media.store_image("profile", jpeg(8, 8)).await.unwrap();
    assert!(
        img.url
            .starts_with("https://cdn.example/static/media/profile/")
    );
    assert_eq!(media.own_key(&img.url).as_deref(), Some(img.key.as_str()));
    assert_eq!(
        media.own_key("https://other.example/static/media/profile/x"),
        None
    );
    assert_eq!(media.own_key("https://cdn.example/static/media/../x"), None);

    let routes = media.routes().unwrap();
    let r = warp::test::request()
        .path(&format!("/static/media/{}", img.key))
        .reply(&routes)
        .await;
    assert_eq!(r.status(), 200);
    // Paths outside the prefix are rejected (left to other routes), not answered.
    for p in [
        format!("/media/{}", img.key),
        "/api/user/me".to_owned(),
        "/static/mediaX/a".to_owned(),
    ] {
        assert!(
            !warp::test::request().path(&p).matches(&routes).await,
            "{p}"
        );
    }
}

/// A real store that delays (and optionally fails) every put of a thumbnail, and signals when a
/// main picture has been stored.
#[derive(Debug)]
struct Flaky {
    inner: Arc<dyn Storage>,
    fail_thumbs: bool,
    delay_thumbs: Duration,
    main_stored: Arc<tokio::sync::Notify>,
}

#[async_trait]
impl Storage for Flaky {
    async fn put(&self, key: &str, body: Bytes, meta: &ObjectMeta) -> Result<(), MediaError> {
        if key.ends_with("_thumb") {
            tokio::time::sleep(self.delay_thumbs).await;
            if self.fail_thumbs {
                return Err(MediaError::Storage("injected failure".into()));
            }
        }
        self.inner.put(key, body, meta).await?;
        if !key.ends_with("_thumb") {
            self.main_stored.notify_one();
        }
        Ok(())
    }
    async fn delete(&self, key: &str) -> Result<(), MediaError> {
        self.inner.delete(key).await
    }
    async fn get(&self, key: &str, max: usize) -> Result<Bytes, MediaError> {
        self.inner.get(key, max).await
    }
    fn base_url(&self) -> &str {
        self.inner.base_url()
    }
}

#[tokio::test]
async fn a_failed_thumbnail_upload_leaves_no_orphan() {
    let dir = TempDir::new("orphan");
    let local = Arc::new(
        LocalStorage::new(dir.0.join("store"), "/media")
            .await
            .unwrap(),
    );
    let media = Media::with_storage(
        Arc::new(Flaky {
            inner: local,
            fail_thumbs: true,
            delay_thumbs: Duration::from_millis(100),
            main_stored: Arc::default(),
        }),
        Limits::default(),
    );
    let err = media.store_image("post/9", jpeg(32, 32)).await.unwrap_err();
    assert!(matches!(err, MediaError::Storage(_)), "{err:?}");
    assert!(!err.is_client_error());
    assert!(files_under(&dir.0).is_empty(), "{:?}", files_under(&dir.0));
}

#[tokio::test]
async fn an_abandoned_upload_leaves_no_orphan() {
    let dir = TempDir::new("abandon");
    let local = Arc::new(
        LocalStorage::new(dir.0.join("store"), "/media")
            .await
            .unwrap(),
    );
    let main_stored = Arc::new(tokio::sync::Notify::new());
    let media = Media::with_storage(
        Arc::new(Flaky {
            inner: local,
            fail_thumbs: false,
            delay_thumbs: Duration::from_secs(2),
            main_stored: Arc::clone(&main_stored),
        }),
        Limits::default(),
    );
    // The caller gives up (its future is dropped) once the main picture is stored and while the
    // thumbnail is still on its way.
    tokio::select! {
        r = media.store_image("post/9", jpeg(32, 32)) => panic!("finished early: {r:?}"),
        () = main_stored.notified() => {}
    }
    assert!(
        !files_under(&dir.0).is_empty(),
        "the main picture was stored"
    );
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if files_under(&dir.0).is_empty() {
            return;
        }
    }
    panic!("left behind: {:?}", files_under(&dir.0));
}

#[tokio::test]
async fn upload_guard_deletes_unless_committed() {
    let dir = TempDir::new("guard");
    let media = local_media(&dir).await;

    // Dropped (e.g. the DB transaction failed and `?` returned): deleted.
    {
        let mut guard = media.guard();
        let img = media.store_image("post/5", jpeg(16, 16)).await.unwrap();
        guard.add_image(&img);
        let f = media
            .store_file("post/5", Bytes::from_static(b"%PDF-1.4"), "x.pdf")
            .await
            .unwrap();
        guard.add_file(&f);
        assert_eq!(guard.keys().len(), 3);
        assert_eq!(files_under(&dir.0).len(), 6, "3 objects + 3 metadata files");
    }
    for _ in 0..50 {
        if files_under(&dir.0).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(files_under(&dir.0).is_empty());

    // Explicit rollback waits for the deletion.
    let mut guard = media.guard();
    let img = media.store_image("post/5", jpeg(16, 16)).await.unwrap();
    guard.add_image(&img);
    guard.rollback().await;
    assert!(files_under(&dir.0).is_empty());

    // Committed: kept.
    let mut guard = media.guard();
    let img = media.store_image("post/5", jpeg(16, 16)).await.unwrap();
    guard.add_image(&img);
    guard.commit();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(get(&media, "GET", &img.url).await.status(), 200);
}

#[tokio::test]
async fn concurrent_uploads_get_distinct_keys() {
    let dir = TempDir::new("concurrent");
    let media = local_media(&dir).await;
    let jobs = (0..8).map(|_| {
        let m = media.clone();
        tokio::spawn(async move { m.store_image("post/1", jpeg(40, 30)).await })
    });
    let mut keys = std::collections::HashSet::new();
    for j in jobs {
        let img = j.await.unwrap().unwrap();
        assert!(keys.insert(img.key));
    }
    assert_eq!(files_under(&dir.0).len(), 8 * 4);
}
