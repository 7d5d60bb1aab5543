//! The image pipeline: decode with limits, apply the EXIF orientation, re-encode without
//! metadata, make a thumbnail and a blurhash. Synchronous and CPU-bound: run it in
//! `spawn_blocking`.

use std::io::Cursor;

use bytes::Bytes;
use image::imageops::FilterType;
use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader};

use super::{Kind, MediaError};

/// JPEG quality of re-encoded main images.
const JPEG_QUALITY: u8 = 88;
/// JPEG quality of thumbnails.
const THUMB_JPEG_QUALITY: u8 = 80;
/// ICC profiles larger than this are dropped rather than carried over.
const MAX_ICC_BYTES: usize = 64 * 1024;
/// Blurhash components (x, y).
pub(crate) const BLURHASH_COMPONENTS: (u32, u32) = (4, 3);

/// One encoded picture.
#[derive(Debug)]
pub(crate) struct Encoded {
    pub(crate) bytes: Bytes,
    pub(crate) content_type: &'static str,
    pub(crate) width: u32,
    pub(crate) height: u32,
}

/// The result of [`process_image`].
#[derive(Debug)]
pub(crate) struct Processed {
    pub(crate) main: Encoded,
    pub(crate) thumbnail: Encoded,
    pub(crate) blurhash: String,
}

fn corrupt(e: impl std::fmt::Display) -> MediaError {
    MediaError::Corrupt(e.to_string())
}

/// Runs the whole pipeline on an upload already sniffed as `kind`.
pub(crate) fn process_image(
    data: &Bytes,
    kind: Kind,
    max_pixels: u64,
    thumbnail_px: u32,
) -> Result<Processed, MediaError> {
    let format = match kind {
        Kind::Jpeg => ImageFormat::Jpeg,
        Kind::Png => ImageFormat::Png,
        Kind::Gif => ImageFormat::Gif,
        Kind::Webp => ImageFormat::WebP,
        other => return Err(MediaError::NotAnImage(other)),
    };
    let mut reader = ImageReader::with_format(Cursor::new(data.as_ref()), format);
    let mut limits = image::Limits::default();
    // Enough for a max_pixels image at 16 bits per channel RGBA, plus decoder working memory.
    limits.max_alloc = Some(max_pixels.saturating_mul(8).saturating_add(64 << 20));
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(corrupt)?;

    // Decompression-bomb guard: refuse on the header's dimensions, before any pixel is decoded.
    let (w, h) = decoder.dimensions();
    if w == 0 || h == 0 {
        return Err(MediaError::Corrupt("image has no pixels".to_owned()));
    }
    if u64::from(w) * u64::from(h) > max_pixels {
        return Err(MediaError::Corrupt(format!(
            "image is {w}x{h}, more than the {max_pixels} pixels allowed"
        )));
    }
    let orientation = if kind == Kind::Gif {
        Orientation::NoTransforms
    } else {
        // A broken EXIF block is ignored (and dropped with the rest of the metadata).
        decoder.orientation().unwrap_or(Orientation::NoTransforms)
    };
    let icc = decoder
        .icc_profile()
        .ok()
        .flatten()
        .filter(|p| p.len() <= MAX_ICC_BYTES);
    let mut img = DynamicImage::from_decoder(decoder).map_err(corrupt)?;
    img.apply_orientation(orientation);

    let main = match kind {
        Kind::Gif => Encoded {
            bytes: Bytes::from(strip_gif_metadata(data)?),
            content_type: "image/gif",
            width: img.width(),
            height: img.height(),
        },
        Kind::Jpeg => encode_jpeg(&img, JPEG_QUALITY, icc)?,
        Kind::Png => encode_png(&img, icc)?,
        // WebP is re-encoded as PNG when it uses transparency, else as JPEG (the `image` crate
        // only writes lossless WebP, which would be far larger than the upload).
        _ if is_opaque(&img) => encode_jpeg(&img, JPEG_QUALITY, icc)?,
        _ => encode_png(&img, icc)?,
    };

    let thumb = if img.width().max(img.height()) > thumbnail_px {
        img.resize(thumbnail_px, thumbnail_px, FilterType::Triangle)
    } else {
        img
    };
    let rgba = thumb.to_rgba8();
    let (cx, cy) = BLURHASH_COMPONENTS;
    let blurhash = blurhash::encode(cx, cy, rgba.width(), rgba.height(), rgba.as_raw())
        .map_err(|e| MediaError::Corrupt(format!("blurhash: {e:?}")))?;
    let thumbnail = if is_opaque(&thumb) {
        encode_jpeg(&thumb, THUMB_JPEG_QUALITY, None)?
    } else {
        encode_png(&DynamicImage::ImageRgba8(rgba), None)?
    };
    Ok(Processed {
        main,
        thumbnail,
        blurhash,
    })
}

/// True when the image has no alpha channel or every pixel is fully opaque.
fn is_opaque(img: &DynamicImage) -> bool {
    if !img.color().has_alpha() {
        return true;
    }
    match img {
        DynamicImage::ImageLumaA8(b) => b.pixels().all(|p| p.0[1] == u8::MAX),
        DynamicImage::ImageRgba8(b) => b.pixels().all(|p| p.0[3] == u8::MAX),
        DynamicImage::ImageLumaA16(b) => b.pixels().all(|p| p.0[1] == u16::MAX),
        DynamicImage::ImageRgba16(b) => b.pixels().all(|p| p.0[3] == u16::MAX),
        other => other.to_rgba8().pixels().all(|p| p.0[3] == u8::MAX),
    }
}

fn encode_jpeg(
    img: &DynamicImage,
    quality: u8,
    icc: Option<Vec<u8>>,
) -> Result<Encoded, MediaError> {
    use image::ImageEncoder as _;
    let mut out = Vec::new();
    let mut enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality);
    if let Some(icc) = icc {
        // Unsupported only means "not written"; the picture is still right.
        let _ = enc.set_icc_profile(icc);
    }
    // The JPEG encoder takes L8 or RGB8; write_with_encoder converts (dropping alpha, which a
    // JPEG source never has and an opaque WebP does not use).
    img.write_with_encoder(enc).map_err(corrupt)?;
    Ok(Encoded {
        bytes: Bytes::from(out),
        content_type: "image/jpeg",
        width: img.width(),
        height: img.height(),
    })
}

fn encode_png(img: &DynamicImage, icc: Option<Vec<u8>>) -> Result<Encoded, MediaError> {
    use image::ImageEncoder as _;
    let mut out = Vec::new();
    let mut enc = image::codecs::png::PngEncoder::new(&mut out);
    if let Some(icc) = icc {
        let _ = enc.set_icc_profile(icc);
    }
    img.write_with_encoder(enc).map_err(corrupt)?;
    Ok(Encoded {
        bytes: Bytes::from(out),
        content_type: "image/png",
        width: img.width(),
        height: img.height(),
    })
}

/// Copies a GIF block by block, keeping the frames byte-for-byte (animation, palettes, timing,
/// looping) and dropping everything that can carry metadata: comment extensions, plain-text
/// extensions, application extensions other than the looping ones (`NETSCAPE2.0`,
/// `ANIMEXTS1.0`; XMP lives in an application extension), and any bytes after the trailer.
pub(crate) fn strip_gif_metadata(data: &[u8]) -> Result<Vec<u8>, MediaError> {
    fn bad(what: &str) -> MediaError {
        MediaError::Corrupt(format!("GIF: {what}"))
    }
    fn get(data: &[u8], range: std::ops::Range<usize>) -> Result<&[u8], MediaError> {
        data.get(range).ok_or_else(|| bad("truncated"))
    }
    /// End (exclusive) of the data sub-blocks starting at `pos`, including the terminator.
    fn sub_blocks_end(data: &[u8], mut pos: usize) -> Result<usize, MediaError> {
        loop {
            let len = usize::from(*data.get(pos).ok_or_else(|| bad("truncated"))?);
            pos += 1;
            if len == 0 {
                return Ok(pos);
            }
            pos += len;
            if pos > data.len() {
                return Err(bad("truncated"));
            }
        }
    }
    fn color_table_len(flags: u8) -> usize {
        if flags & 0x80 != 0 {
            3 * (1usize << ((flags & 0x07) + 1))
        } else {
            0
        }
    }

    let mut out = Vec::with_capacity(data.len());
    let head = get(data, 0..13)?;
    out.extend_from_slice(head);
    let mut pos = 13;
    let gct = color_table_len(head[10]);
    out.extend_from_slice(get(data, pos..pos + gct)?);
    pos += gct;
    loop {
        match data.get(pos) {
            // Truncated after a complete block: close the stream properly.
            None => {
                out.push(0x3B);
                return Ok(out);
            }
            Some(0x3B) => {
                out.push(0x3B);
                return Ok(out);
            }
            Some(0x2C) => {
                let desc = get(data, pos..pos + 10)?;
                let lct = color_table_len(desc[9]);
                // Descriptor, local color table, LZW minimum code size, then the data.
                let end = sub_blocks_end(data, pos + 10 + lct + 1)?;
                out.extend_from_slice(get(data, pos..end)?);
                pos = end;
            }
            Some(0x21) => {
                let label = *get(data, pos + 1..pos + 2)?
                    .first()
                    .ok_or_else(|| bad("?"))?;
                let end = sub_blocks_end(data, pos + 2)?;
                let keep = match label {
                    0xF9 => true, // graphic control: frame delay, disposal, transparency
                    0xFF => {
                        let app = data.get(pos + 2..pos + 14);
                        matches!(app, Some(a) if a == b"\x0BNETSCAPE2.0" || a == b"\x0BANIMEXTS1.0")
                    }
                    _ => false, // 0xFE comment, 0x01 plain text, unknown
                };
                if keep {
                    out.extend_from_slice(get(data, pos..end)?);
                }
                pos = end;
            }
            Some(_) => return Err(bad("unknown block")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 2-frame 1x1 GIF with a comment, an XMP-like application block, a looping block and
    /// junk after the trailer.
    fn gif_with_metadata() -> Vec<u8> {
        let mut g = Vec::new();
        g.extend_from_slice(b"GIF89a\x01\x00\x01\x00\x80\x00\x00"); // 1x1, GCT of 2 colors
        g.extend_from_slice(b"\x00\x00\x00\xff\xff\xff");
        g.extend_from_slice(b"\x21\xFF\x0BNETSCAPE2.0\x03\x01\x00\x00\x00");
        g.extend_from_slice(b"\x21\xFE\x0Asecret gps\x00");
        g.extend_from_slice(b"\x21\xFF\x0BXMP DataXMP\x05<x:x>\x00");
        for _ in 0..2 {
            g.extend_from_slice(b"\x21\xF9\x04\x00\x0A\x00\x00\x00");
            g.extend_from_slice(b"\x2C\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02\x44\x01\x00");
        }
        g.extend_from_slice(b"\x3B<html>polyglot</html>");
        g
    }

    #[test]
    fn gif_strip_keeps_frames_and_drops_metadata() {
        let g = gif_with_metadata();
        let out = strip_gif_metadata(&g).expect("strip");
        let s = String::from_utf8_lossy(&out);
        assert!(!s.contains("secret"));
        assert!(!s.contains("XMP"));
        assert!(!s.contains("html"));
        assert!(s.contains("NETSCAPE2.0"));
        assert_eq!(out.last(), Some(&0x3B));
        // Two frames are still there, byte for byte.
        let frame = b"\x21\xF9\x04\x00\x0A\x00\x00\x00\x2C\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02\x44\x01\x00";
        assert_eq!(out.windows(frame.len()).filter(|w| w == frame).count(), 2);
        // Still decodes.
        let img = image::load_from_memory_with_format(&out, ImageFormat::Gif).expect("decode");
        assert_eq!((img.width(), img.height()), (1, 1));
    }

    #[test]
    fn gif_strip_refuses_garbage() {
        assert!(strip_gif_metadata(b"GIF89a").is_err());
        let mut g = gif_with_metadata();
        g.truncate(40);
        assert!(strip_gif_metadata(&g).is_err());
    }
}
