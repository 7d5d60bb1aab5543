//! The image pipeline through the public API, on the local backend in a temporary directory:
//! orientation, metadata stripping, thumbnails, blurhash, limits and refusals.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Cursor;
use std::path::PathBuf;

use common::files_under;

use bytes::Bytes;
use image::{DynamicImage, ImageFormat, Rgb, RgbImage, Rgba, RgbaImage};
use social::media::{Backend, Kind, Media, MediaConfig, MediaError, sniff};

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

async fn media_in(dir: &TempDir, tweak: impl FnOnce(&mut MediaConfig)) -> Media {
    let mut cfg = MediaConfig::new(Backend::local(dir.0.join("store")));
    tweak(&mut cfg);
    Media::new(cfg).await.unwrap()
}

fn stored_bytes(dir: &TempDir, key: &str) -> Vec<u8> {
    std::fs::read(dir.0.join("store").join(key)).unwrap()
}

fn encode(img: &DynamicImage, format: ImageFormat) -> Bytes {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, format).unwrap();
    Bytes::from(out.into_inner())
}

/// 40x20: left half red, right half blue.
fn red_blue() -> DynamicImage {
    DynamicImage::ImageRgb8(RgbImage::from_fn(40, 20, |x, _| {
        if x < 20 {
            Rgb([255, 0, 0])
        } else {
            Rgb([0, 0, 255])
        }
    }))
}

fn gradient(w: u32, h: u32) -> DynamicImage {
    DynamicImage::ImageRgb8(RgbImage::from_fn(w, h, |x, y| {
        Rgb([(x * 255 / w) as u8, (y * 255 / h) as u8, 128])
    }))
}

/// An EXIF APP1 segment, written by hand (big-endian TIFF): IFD0 with Orientation = 6 and a
/// GPS IFD pointer; the GPS IFD with latitude 37°33'N and longitude 126°58'E.
fn exif_app1() -> Vec<u8> {
    let mut t = Vec::new();
    t.extend_from_slice(b"MM\x00\x2A\x00\x00\x00\x08");
    // IFD0 at 8: two entries.
    t.extend_from_slice(&2u16.to_be_bytes());
    t.extend_from_slice(&[0x01, 0x12, 0x00, 0x03, 0, 0, 0, 1, 0x00, 0x06, 0, 0]); // Orientation
    t.extend_from_slice(&[0x88, 0x25, 0x00, 0x04, 0, 0, 0, 1]); // GPS IFD pointer
    t.extend_from_slice(&38u32.to_be_bytes());
    t.extend_from_slice(&0u32.to_be_bytes());
    assert_eq!(t.len(), 38);
    // GPS IFD at 38: four entries.
    t.extend_from_slice(&4u16.to_be_bytes());
    t.extend_from_slice(&[0x00, 0x01, 0x00, 0x02, 0, 0, 0, 2, b'N', 0, 0, 0]);
    t.extend_from_slice(&[0x00, 0x02, 0x00, 0x05, 0, 0, 0, 3]);
    t.extend_from_slice(&92u32.to_be_bytes());
    t.extend_from_slice(&[0x00, 0x03, 0x00, 0x02, 0, 0, 0, 2, b'E', 0, 0, 0]);
    t.extend_from_slice(&[0x00, 0x04, 0x00, 0x05, 0, 0, 0, 3]);
    t.extend_from_slice(&116u32.to_be_bytes());
    t.extend_from_slice(&0u32.to_be_bytes());
    assert_eq!(t.len(), 92);
    for v in [37u32, 33, 0, 126, 58, 0] {
        t.extend_from_slice(&v.to_be_bytes());
        t.extend_from_slice(&1u32.to_be_bytes());
    }
    let mut seg = vec![0xFF, 0xE1];
    seg.extend_from_slice(&u16::try_from(2 + 6 + t.len()).unwrap().to_be_bytes());
    seg.extend_from_slice(b"Exif\0\0");
    seg.extend_from_slice(&t);
    seg
}

/// `jpeg` with the EXIF segment inserted right after SOI.
fn with_exif(jpeg: &[u8]) -> Bytes {
    assert_eq!(&jpeg[..2], b"\xFF\xD8");
    let mut out = jpeg[..2].to_vec();
    out.extend_from_slice(&exif_app1());
    out.extend_from_slice(&jpeg[2..]);
    Bytes::from(out)
}

fn read_exif(bytes: &[u8]) -> Result<exif::Exif, exif::Error> {
    exif::Reader::new().read_from_container(&mut Cursor::new(bytes))
}

fn is_red(p: Rgb<u8>) -> bool {
    p.0[0] > 180 && p.0[2] < 80
}
fn is_blue(p: Rgb<u8>) -> bool {
    p.0[2] > 180 && p.0[0] < 80
}

#[tokio::test]
async fn exif_orientation_applied_and_all_metadata_stripped() {
    let dir = TempDir::new("orient");
    let media = media_in(&dir, |_| {}).await;
    let upload = with_exif(&encode(&red_blue(), ImageFormat::Jpeg));

    // The test input really carries what we claim.
    let exif = read_exif(&upload).expect("input has EXIF");
    let o = exif
        .get_field(exif::Tag::Orientation, exif::In::PRIMARY)
        .expect("orientation");
    assert_eq!(o.value.get_uint(0), Some(6));
    assert!(
        exif.get_field(exif::Tag::GPSLatitude, exif::In::PRIMARY)
            .is_some()
    );
    assert!(
        exif.get_field(exif::Tag::GPSLongitude, exif::In::PRIMARY)
            .is_some()
    );

    let img = media.store_image("post/42", upload).await.unwrap();
    assert_eq!(img.content_type, "image/jpeg");
    // Rotated 90° clockwise: 40x20 becomes 20x40.
    assert_eq!((img.width, img.height), (20, 40));

    let stored = stored_bytes(&dir, &img.key);
    assert_eq!(stored.len() as u64, img.size);
    assert_eq!(sniff(&stored), Kind::Jpeg);
    assert!(read_exif(&stored).is_err(), "stored image still has EXIF");
    assert!(!stored.windows(6).any(|w| w == b"Exif\0\0"));
    let decoded = image::load_from_memory(&stored).unwrap().to_rgb8();
    assert_eq!(decoded.dimensions(), (20, 40));
    // The left (red) half of the original is now on top, the right (blue) at the bottom.
    assert!(
        is_red(*decoded.get_pixel(10, 5)),
        "{:?}",
        decoded.get_pixel(10, 5)
    );
    assert!(
        is_blue(*decoded.get_pixel(10, 35)),
        "{:?}",
        decoded.get_pixel(10, 35)
    );

    // The thumbnail is oriented the same way and clean too.
    let thumb = stored_bytes(&dir, &img.thumbnail_key);
    assert!(read_exif(&thumb).is_err());
    let t = image::load_from_memory(&thumb).unwrap();
    assert_eq!((t.width(), t.height()), (20, 40));
}

#[tokio::test]
async fn png_exif_chunk_is_dropped_and_alpha_kept() {
    let dir = TempDir::new("png");
    let media = media_in(&dir, |_| {}).await;
    let rgba = DynamicImage::ImageRgba8(RgbaImage::from_fn(30, 10, |x, _| {
        Rgba([0, 200, 0, if x < 15 { 0 } else { 255 }])
    }));
    // A PNG with an eXIf chunk (orientation 6 + GPS) and a tEXt comment right after IHDR.
    let png = encode(&rgba, ImageFormat::Png);
    let tiff = &exif_app1()[10..];
    let mut with_meta = png[..33].to_vec();
    with_meta.extend_from_slice(&png_chunk(b"eXIf", tiff));
    with_meta.extend_from_slice(&png_chunk(b"tEXt", b"Comment\0home address"));
    with_meta.extend_from_slice(&png[33..]);
    assert!(read_exif(&with_meta).is_ok(), "input carries EXIF");

    let img = media
        .store_image("profile", Bytes::from(with_meta))
        .await
        .unwrap();
    assert_eq!(img.content_type, "image/png");
    assert_eq!(
        (img.width, img.height),
        (10, 30),
        "eXIf orientation applied"
    );
    let stored = stored_bytes(&dir, &img.key);
    assert!(read_exif(&stored).is_err());
    assert!(!stored.windows(4).any(|w| w == b"eXIf" || w == b"tEXt"));
    let decoded = image::load_from_memory(&stored).unwrap();
    assert!(decoded.color().has_alpha());
    // Transparent thumbnail stays PNG.
    assert_eq!(img.thumbnail_content_type, "image/png");
    assert_eq!(sniff(&stored_bytes(&dir, &img.thumbnail_key)), Kind::Png);
}

fn png_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut c = u32::try_from(data.len()).unwrap().to_be_bytes().to_vec();
    c.extend_from_slice(kind);
    c.extend_from_slice(data);
    let crc = crc32(&c[4..]);
    c.extend_from_slice(&crc.to_be_bytes());
    c
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[tokio::test]
async fn thumbnail_fits_the_configured_size_and_blurhash_decodes() {
    let dir = TempDir::new("thumb");
    let media = media_in(&dir, |_| {}).await;
    let img = media
        .store_image("post/1", encode(&gradient(1000, 500), ImageFormat::Png))
        .await
        .unwrap();
    assert_eq!((img.width, img.height), (1000, 500));
    assert_eq!((img.thumbnail_width, img.thumbnail_height), (320, 160));
    assert_eq!(
        img.thumbnail_content_type, "image/jpeg",
        "opaque thumbnails are JPEG"
    );
    let thumb = image::load_from_memory(&stored_bytes(&dir, &img.thumbnail_key)).unwrap();
    assert_eq!((thumb.width(), thumb.height()), (320, 160));
    assert_eq!(img.thumbnail_key, format!("{}_thumb", img.key));
    assert!(img.key.starts_with("post/1/"));
    assert!(uuid::Uuid::parse_str(img.key.trim_start_matches("post/1/")).is_ok());

    // 4x3 components: 1 size char + 1 max-AC char + 4 DC chars + 2 per AC component.
    assert_eq!(img.blurhash.len(), 6 + 2 * (4 * 3 - 1));
    assert!(
        img.blurhash.starts_with('L'),
        "size flag of 4x3 is 'L': {}",
        img.blurhash
    );
    let px = blurhash::decode(&img.blurhash, 32, 16, 1.0).unwrap();
    assert_eq!(px.len(), 32 * 16 * 4);

    // A custom thumbnail size; small images are not enlarged.
    let dir2 = TempDir::new("thumb2");
    let media2 = media_in(&dir2, |c| c.thumbnail_px = 64).await;
    let big = media2
        .store_image("p", encode(&gradient(300, 600), ImageFormat::Jpeg))
        .await
        .unwrap();
    assert_eq!((big.thumbnail_width, big.thumbnail_height), (32, 64));
    let small = media2
        .store_image("p", encode(&gradient(40, 20), ImageFormat::Jpeg))
        .await
        .unwrap();
    assert_eq!((small.thumbnail_width, small.thumbnail_height), (40, 20));
}

#[tokio::test]
async fn webp_becomes_jpeg_or_png() {
    let dir = TempDir::new("webp");
    let media = media_in(&dir, |_| {}).await;
    let opaque = encode(&gradient(50, 40), ImageFormat::WebP);
    assert_eq!(sniff(&opaque), Kind::Webp);
    let a = media.store_image("post/2", opaque).await.unwrap();
    assert_eq!(a.content_type, "image/jpeg");
    assert_eq!(sniff(&stored_bytes(&dir, &a.key)), Kind::Jpeg);
    assert_eq!((a.width, a.height), (50, 40));

    let transparent = DynamicImage::ImageRgba8(RgbaImage::from_fn(8, 8, |x, _| {
        Rgba([9, 9, 9, if x == 0 { 0 } else { 255 }])
    }));
    let b = media
        .store_image("post/2", encode(&transparent, ImageFormat::WebP))
        .await
        .unwrap();
    assert_eq!(b.content_type, "image/png");
    assert_eq!(sniff(&stored_bytes(&dir, &b.key)), Kind::Png);
}

#[tokio::test]
async fn animated_gif_keeps_its_frames_and_gets_a_thumbnail() {
    use image::AnimationDecoder as _;
    let dir = TempDir::new("gif");
    let media = media_in(&dir, |c| c.thumbnail_px = 16).await;
    let mut gif = Vec::new();
    {
        let mut enc = image::codecs::gif::GifEncoder::new(&mut gif);
        enc.set_repeat(image::codecs::gif::Repeat::Infinite)
            .unwrap();
        let frames = [[255u8, 0, 0], [0, 0, 255]].map(|c| {
            image::Frame::new(RgbaImage::from_pixel(32, 24, Rgba([c[0], c[1], c[2], 255])))
        });
        enc.encode_frames(frames).unwrap();
    }
    let img = media.store_image("chat/7", Bytes::from(gif)).await.unwrap();
    assert_eq!(img.content_type, "image/gif");
    assert_eq!((img.width, img.height), (32, 24));
    let stored = stored_bytes(&dir, &img.key);
    let frames = image::codecs::gif::GifDecoder::new(Cursor::new(&stored))
        .unwrap()
        .into_frames()
        .collect_frames()
        .unwrap();
    assert_eq!(frames.len(), 2, "animation kept");
    assert_eq!((img.thumbnail_width, img.thumbnail_height), (16, 12));
    let thumb = image::load_from_memory(&stored_bytes(&dir, &img.thumbnail_key)).unwrap();
    let p = thumb.to_rgb8().get_pixel(8, 6).0;
    assert!(
        p[0] > 200 && p[2] < 60,
        "thumbnail is the first (red) frame: {p:?}"
    );
}

#[tokio::test]
async fn decompression_bomb_is_refused_before_decoding() {
    let dir = TempDir::new("bomb");
    let media = media_in(&dir, |_| {}).await;
    // A 1x1 PNG whose header claims 50000x50000 (2.5 gigapixels).
    let mut png = encode(&gradient(1, 1), ImageFormat::Png).to_vec();
    png[16..20].copy_from_slice(&50_000u32.to_be_bytes());
    png[20..24].copy_from_slice(&50_000u32.to_be_bytes());
    let crc = crc32(&png[12..29]);
    png[29..33].copy_from_slice(&crc.to_be_bytes());
    let err = media.store_image("p", Bytes::from(png)).await.unwrap_err();
    assert!(
        matches!(&err, MediaError::Corrupt(m) if m.contains("50000x50000")),
        "{err:?}"
    );

    // The configured limit is what counts.
    let dir2 = TempDir::new("bomb2");
    let media2 = media_in(&dir2, |c| c.max_pixels = 10_000).await;
    let err = media2
        .store_image("p", encode(&gradient(101, 100), ImageFormat::Jpeg))
        .await
        .unwrap_err();
    assert!(matches!(err, MediaError::Corrupt(_)), "{err:?}");
    assert!(
        media2
            .store_image("p", encode(&gradient(100, 100), ImageFormat::Jpeg))
            .await
            .is_ok()
    );
    assert!(files_under(&dir.0).is_empty());
}

#[tokio::test]
async fn size_limit_is_checked_before_anything_else() {
    let dir = TempDir::new("size");
    let media = media_in(&dir, |c| c.max_file_bytes = 1000).await;
    // Garbage that would be Corrupt is TooLarge first: nothing was decoded.
    let mut big = b"\x89PNG\r\n\x1a\n".to_vec();
    big.resize(1001, 0xAB);
    let err = media
        .store_image("p", Bytes::from(big.clone()))
        .await
        .unwrap_err();
    assert!(
        matches!(err, MediaError::TooLarge { limit: 1000 }),
        "{err:?}"
    );
    let err = media
        .store_file("chat/1", Bytes::from(big), "a.pdf")
        .await
        .unwrap_err();
    assert!(
        matches!(err, MediaError::TooLarge { limit: 1000 }),
        "{err:?}"
    );
    assert!(err.is_client_error());
    // Exactly at the limit is fine for files.
    let ok = media
        .store_file("chat/1", Bytes::from(vec![b'x'; 1000]), "a.txt")
        .await
        .unwrap();
    assert_eq!(ok.size, 1000);

    // The default is 10 MiB.
    let dir2 = TempDir::new("size2");
    let media2 = media_in(&dir2, |_| {}).await;
    let err = media2
        .store_image("p", Bytes::from(vec![0xFF; 10 * 1024 * 1024 + 1]))
        .await
        .unwrap_err();
    assert!(matches!(err, MediaError::TooLarge { limit: 10_485_760 }));
}

#[tokio::test]
async fn corrupt_images_are_refused() {
    let dir = TempDir::new("corrupt");
    let media = media_in(&dir, |_| {}).await;
    let mut truncated = encode(&gradient(64, 64), ImageFormat::Png).to_vec();
    truncated.truncate(60);
    for bad in [
        b"\x89PNG\r\n\x1a\nthis is not a png at all".to_vec(),
        b"\xFF\xD8\xFF\xE0garbage garbage garbage".to_vec(),
        b"GIF89a\x01".to_vec(),
        b"RIFF\x10\x00\x00\x00WEBPVP8 nonsense".to_vec(),
        truncated,
    ] {
        let err = media.store_image("p", Bytes::from(bad)).await.unwrap_err();
        assert!(matches!(err, MediaError::Corrupt(_)), "{err:?}");
        assert!(err.is_client_error());
    }
    assert!(files_under(&dir.0).is_empty(), "nothing stored");
}

#[tokio::test]
async fn non_images_are_refused_as_images() {
    let dir = TempDir::new("notimg");
    let media = media_in(&dir, |_| {}).await;
    for (bytes, kind) in [
        (&b"%PDF-1.7\n%\xE2\xE3\xCF\xD3\n"[..], Kind::Pdf),
        (&b"PK\x03\x04\x14\x00\x00\x00"[..], Kind::Zip),
        (&b"\xD0\xCF\x11\xE0\xA1\xB1\x1A\xE1\x00\x00"[..], Kind::Ole),
        (
            &b"<svg xmlns='http://www.w3.org/2000/svg'><script>alert(1)</script></svg>"[..],
            Kind::Unknown,
        ),
        (&b""[..], Kind::Unknown),
    ] {
        let err = media
            .store_image("post/3", Bytes::from_static(bytes))
            .await
            .unwrap_err();
        match err {
            MediaError::NotAnImage(k) => assert_eq!(k, kind),
            other => panic!("{other:?}"),
        }
    }
    assert!(files_under(&dir.0).is_empty());
}

#[tokio::test]
async fn invalid_prefixes_are_refused() {
    let dir = TempDir::new("prefix");
    let media = media_in(&dir, |_| {}).await;
    let jpeg = encode(&gradient(8, 8), ImageFormat::Jpeg);
    for prefix in ["../x", "a/../b", "/abs", "a/", "a b", "a.b"] {
        let err = media.store_image(prefix, jpeg.clone()).await.unwrap_err();
        assert!(matches!(err, MediaError::Storage(_)), "{prefix}: {err:?}");
        let err = media
            .store_file(prefix, jpeg.clone(), "x.jpg")
            .await
            .unwrap_err();
        assert!(matches!(err, MediaError::Storage(_)), "{prefix}: {err:?}");
    }
    assert!(files_under(&dir.0).is_empty());
    // The empty prefix is allowed.
    let img = media.store_image("", jpeg).await.unwrap();
    assert!(uuid::Uuid::parse_str(&img.key).is_ok());
}

#[test]
fn sniff_every_kind() {
    assert_eq!(
        sniff(&encode(&gradient(2, 2), ImageFormat::Jpeg)),
        Kind::Jpeg
    );
    assert_eq!(sniff(&encode(&gradient(2, 2), ImageFormat::Png)), Kind::Png);
    assert_eq!(sniff(&encode(&gradient(2, 2), ImageFormat::Gif)), Kind::Gif);
    assert_eq!(
        sniff(&encode(&gradient(2, 2), ImageFormat::WebP)),
        Kind::Webp
    );
    assert_eq!(sniff(b"%PDF-1.4"), Kind::Pdf);
    assert_eq!(sniff(b"PK\x03\x04"), Kind::Zip);
    assert_eq!(sniff(b"\xD0\xCF\x11\xE0\xA1\xB1\x1A\xE1"), Kind::Ole);
    assert_eq!(sniff(b"hello"), Kind::Unknown);
    // The name is never consulted: there is nothing to pass it.
}
