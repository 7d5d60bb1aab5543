//! The S3 backend against a real S3 server: moto_server, started by `scripts/test`, which exports
//! `INSTAR_TEST_S3_ENDPOINT` (and `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`).
//! Each test uses a bucket of its own, path-style addressing and static credentials.
//!
//! Without `INSTAR_TEST_S3_ENDPOINT` the tests fail when `CI` is set, and are skipped with a note
//! otherwise (run them through `scripts/test`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Cursor;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use image::{DynamicImage, ImageFormat, Rgb, RgbImage};
use social::media::{
    Backend, Limits, Media, MediaConfig, MediaError, ObjectMeta, S3Settings, S3Storage, Storage,
};

/// The moto endpoint, or `None` (after printing why) when the test should be skipped.
fn endpoint() -> Option<String> {
    match std::env::var("INSTAR_TEST_S3_ENDPOINT") {
        Ok(v) if !v.trim().is_empty() => Some(v.trim().trim_end_matches('/').to_owned()),
        _ => {
            let ci = matches!(std::env::var("CI").as_deref(), Ok("true" | "1"));
            assert!(
                !ci,
                "INSTAR_TEST_S3_ENDPOINT is not set: run the tests through scripts/test, which \
                 starts moto_server and exports it"
            );
            eprintln!(
                "SKIPPED: INSTAR_TEST_S3_ENDPOINT is not set (run through scripts/test, or \
                 `scripts/test --setup-only --keep && source .test-env/env.sh`)"
            );
            None
        }
    }
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn unique_bucket(tag: &str) -> String {
    format!(
        "instar-media-{tag}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

fn settings(endpoint: &str, bucket: &str, create_bucket: bool) -> S3Settings {
    S3Settings {
        endpoint: Some(endpoint.to_owned()),
        region: env_or("AWS_REGION", "us-east-1"),
        bucket: bucket.to_owned(),
        access_key: env_or("AWS_ACCESS_KEY_ID", "test"),
        secret_key: env_or("AWS_SECRET_ACCESS_KEY", "test"),
        path_style: true,
        public_base_url: None,
        create_bucket,
    }
}

fn backend(s: &S3Settings) -> Backend {
    Backend::S3 {
        endpoint: s.endpoint.clone(),
        region: s.region.clone(),
        bucket: s.bucket.clone(),
        access_key: s.access_key.clone(),
        secret_key: s.secret_key.clone(),
        path_style: s.path_style,
        public_base_url: s.public_base_url.clone(),
        create_bucket: s.create_bucket,
    }
}

fn jpeg(w: u32, h: u32) -> Bytes {
    let img = DynamicImage::ImageRgb8(RgbImage::from_fn(w, h, |x, y| {
        Rgb([(x % 256) as u8, (y % 256) as u8, 7])
    }));
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, ImageFormat::Jpeg).unwrap();
    Bytes::from(out.into_inner())
}

async fn keys_in(s3: &S3Storage) -> Vec<String> {
    let out = s3
        .client()
        .list_objects_v2()
        .bucket(s3.bucket())
        .send()
        .await
        .unwrap();
    out.contents()
        .iter()
        .filter_map(|o| o.key().map(str::to_owned))
        .collect()
}

/// A plain, unauthenticated HTTP GET, as a browser would fetch the URL.
async fn http_get(url: &str) -> reqwest::Response {
    reqwest::Client::new().get(url).send().await.unwrap()
}

#[tokio::test]
async fn store_fetch_and_delete_an_image() {
    let Some(ep) = endpoint() else { return };
    let bucket = unique_bucket("img");
    let s = settings(&ep, &bucket, true);
    let media = Media::new(MediaConfig::new(backend(&s))).await.unwrap();
    let s3 = S3Storage::new(&s).await.unwrap();

    let img = media.store_image("post/42", jpeg(120, 80)).await.unwrap();
    assert_eq!(img.url, format!("{ep}/{bucket}/{}", img.key));
    assert_eq!(
        img.thumbnail_url,
        format!("{ep}/{bucket}/{}", img.thumbnail_key)
    );
    assert!(img.key.starts_with("post/42/"));
    assert_eq!(media.own_key(&img.url).as_deref(), Some(img.key.as_str()));
    assert!(media.routes().is_none(), "S3 objects are not served by us");

    let mut listed = keys_in(&s3).await;
    listed.sort();
    let mut expected = img.keys().to_vec();
    expected.sort();
    assert_eq!(listed, expected);

    // Over HTTP, as a client would.
    let r = http_get(&img.url).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "image/jpeg");
    assert_eq!(
        r.headers()["cache-control"],
        "public, max-age=31536000, immutable"
    );
    let body = r.bytes().await.unwrap();
    assert_eq!(body.len() as u64, img.size);
    let decoded = image::load_from_memory(&body).unwrap();
    assert_eq!((decoded.width(), decoded.height()), (120, 80));

    // Through the SDK: same bytes.
    let obj = s3
        .client()
        .get_object()
        .bucket(&bucket)
        .key(&img.key)
        .send()
        .await
        .unwrap();
    assert_eq!(obj.content_type(), Some("image/jpeg"));
    let sdk_body = obj.body.collect().await.unwrap().into_bytes();
    assert_eq!(sdk_body, body);

    let r = http_get(&img.thumbnail_url).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], img.thumbnail_content_type);
    let thumb = image::load_from_memory(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(
        (thumb.width(), thumb.height()),
        (img.thumbnail_width, img.thumbnail_height)
    );

    media.delete(&img.keys()).await;
    assert!(keys_in(&s3).await.is_empty());
    assert_eq!(http_get(&img.url).await.status(), 404);
}

#[tokio::test]
async fn files_get_a_safe_type_and_attachment_disposition() {
    let Some(ep) = endpoint() else { return };
    let s = settings(&ep, &unique_bucket("file"), true);
    let media = Media::new(MediaConfig::new(backend(&s))).await.unwrap();
    let html = Bytes::from_static(b"<html><script>alert(1)</script></html>");
    let f = media
        .store_file("chat/7", html.clone(), "보고서 \"final\".html")
        .await
        .unwrap();
    assert_eq!(f.content_type, "application/octet-stream");
    let r = http_get(&f.url).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/octet-stream");
    let cd = r.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(cd.starts_with("attachment; filename=\""), "{cd}");
    assert!(
        cd.contains("filename*=UTF-8''%EB%B3%B4%EA%B3%A0%EC%84%9C%20final.html"),
        "{cd}"
    );
    assert_eq!(r.bytes().await.unwrap(), html);

    let pdf = Bytes::from_static(b"%PDF-1.4\n%%EOF");
    let f = media.store_file("chat/7", pdf, "a.pdf").await.unwrap();
    let r = http_get(&f.url).await;
    assert_eq!(r.headers()["content-type"], "application/pdf");
    media.delete(&[f.key]).await;
}

/// The real S3 store, failing every put of a thumbnail.
#[derive(Debug)]
struct FailThumbs(Arc<S3Storage>);

#[async_trait]
impl Storage for FailThumbs {
    async fn put(&self, key: &str, body: Bytes, meta: &ObjectMeta) -> Result<(), MediaError> {
        if key.ends_with("_thumb") {
            // Let the main picture land first, so there is something to clean up.
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            return Err(MediaError::Storage("injected thumbnail failure".into()));
        }
        self.0.put(key, body, meta).await
    }
    async fn delete(&self, key: &str) -> Result<(), MediaError> {
        self.0.delete(key).await
    }
    async fn get(&self, key: &str, max: usize) -> Result<Bytes, MediaError> {
        self.0.get(key, max).await
    }
    fn base_url(&self) -> &str {
        self.0.base_url()
    }
}

#[tokio::test]
async fn a_failed_thumbnail_upload_leaves_no_orphan() {
    let Some(ep) = endpoint() else { return };
    let s = settings(&ep, &unique_bucket("orphan"), true);
    let s3 = Arc::new(S3Storage::new(&s).await.unwrap());
    let media = Media::with_storage(Arc::new(FailThumbs(Arc::clone(&s3))), Limits::default());
    let err = media.store_image("post/1", jpeg(64, 64)).await.unwrap_err();
    assert!(matches!(err, MediaError::Storage(_)), "{err:?}");
    assert!(keys_in(&s3).await.is_empty(), "{:?}", keys_in(&s3).await);
}

#[tokio::test]
async fn a_vanished_bucket_is_a_storage_error_and_leaves_nothing() {
    let Some(ep) = endpoint() else { return };
    let bucket = unique_bucket("gone");
    let s = settings(&ep, &bucket, true);
    let media = Media::new(MediaConfig::new(backend(&s))).await.unwrap();
    let s3 = S3Storage::new(&s).await.unwrap();
    s3.client()
        .delete_bucket()
        .bucket(&bucket)
        .send()
        .await
        .unwrap();
    let err = media.store_image("post/1", jpeg(16, 16)).await.unwrap_err();
    assert!(matches!(err, MediaError::Storage(_)), "{err:?}");
    let err = media
        .store_file("chat/1", Bytes::from_static(b"x"), "x")
        .await
        .unwrap_err();
    assert!(matches!(err, MediaError::Storage(_)), "{err:?}");
    // Recreated empty: nothing was written anywhere.
    let s3 = S3Storage::new(&s).await.unwrap();
    assert!(keys_in(&s3).await.is_empty());
}

#[tokio::test]
async fn bucket_is_checked_or_created_at_startup() {
    let Some(ep) = endpoint() else { return };
    let bucket = unique_bucket("startup");
    // Missing and not to be created: refused at startup.
    let err = Media::new(MediaConfig::new(backend(&settings(&ep, &bucket, false))))
        .await
        .unwrap_err();
    assert!(matches!(err, MediaError::Storage(_)), "{err:?}");
    // Created, then found (twice is fine).
    Media::new(MediaConfig::new(backend(&settings(&ep, &bucket, true))))
        .await
        .unwrap();
    Media::new(MediaConfig::new(backend(&settings(&ep, &bucket, false))))
        .await
        .unwrap();
    Media::new(MediaConfig::new(backend(&settings(&ep, &bucket, true))))
        .await
        .unwrap();
    // Wrong endpoint: a storage error, not a hang.
    let err = Media::new(MediaConfig::new(backend(&settings(
        "http://127.0.0.1:9",
        &bucket,
        true,
    ))))
    .await
    .unwrap_err();
    assert!(matches!(err, MediaError::Storage(_)), "{err:?}");
}

#[tokio::test]
async fn public_base_url_overrides_the_object_urls() {
    let Some(ep) = endpoint() else { return };
    let mut s = settings(&ep, &unique_bucket("cdn"), true);
    s.public_base_url = Some("https://cdn.example/m/".into());
    let media = Media::new(MediaConfig::new(backend(&s))).await.unwrap();
    let f = media
        .store_file("profile", Bytes::from_static(b"x"), "x")
        .await
        .unwrap();
    assert_eq!(f.url, format!("https://cdn.example/m/{}", f.key));
    assert_eq!(media.own_key(&f.url).as_deref(), Some(f.key.as_str()));
    assert_eq!(media.own_key(&format!("{ep}/{}/{}", s.bucket, f.key)), None);
    media.delete(&[f.key]).await;
}
