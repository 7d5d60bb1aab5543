//! Content sniffing by magic bytes.
//!
//! The declared content type and the client's file name are never trusted: the kind of an upload
//! is decided here, from its first bytes only.

/// What an upload is, decided from its magic bytes by [`sniff`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// JPEG: `FF D8 FF`.
    Jpeg,
    /// PNG: `89 50 4E 47 0D 0A 1A 0A`.
    Png,
    /// GIF: `GIF87a` or `GIF89a`.
    Gif,
    /// WebP: `RIFF????WEBP`.
    Webp,
    /// PDF: `%PDF`.
    Pdf,
    /// ZIP container (`PK\x03\x04`, or `PK\x05\x06` for an empty archive): also docx, xlsx, hwpx, jar...
    Zip,
    /// OLE2 compound file (`D0 CF 11 E0 A1 B1 1A E1`): hwp, doc, xls, ppt, msi...
    Ole,
    /// Anything else (including HEIC, AVIF, SVG, HTML, text).
    Unknown,
}

impl Kind {
    /// True for the kinds [`crate::media::Media::store_image`] accepts: JPEG, PNG, GIF and WebP.
    #[must_use]
    pub fn is_image(self) -> bool {
        matches!(self, Kind::Jpeg | Kind::Png | Kind::Gif | Kind::Webp)
    }

    /// The MIME type of this kind as it is served. Every value is safe to serve: nothing here is
    /// rendered as active content (no HTML, no SVG). Unknown content is
    /// `application/octet-stream`, and so is OLE (its real format cannot be told from the magic).
    #[must_use]
    pub fn content_type(self) -> &'static str {
        match self {
            Kind::Jpeg => "image/jpeg",
            Kind::Png => "image/png",
            Kind::Gif => "image/gif",
            Kind::Webp => "image/webp",
            Kind::Pdf => "application/pdf",
            Kind::Zip => "application/zip",
            Kind::Ole | Kind::Unknown => "application/octet-stream",
        }
    }

    /// The label the original backend compared file extensions with (`jpg`, `png`, `gif`, `pdf`,
    /// and `hwp` for both ZIP and OLE), plus `webp`; `None` for [`Kind::Unknown`].
    #[must_use]
    pub fn label(self) -> Option<&'static str> {
        match self {
            Kind::Jpeg => Some("jpg"),
            Kind::Png => Some("png"),
            Kind::Gif => Some("gif"),
            Kind::Webp => Some("webp"),
            Kind::Pdf => Some("pdf"),
            Kind::Zip | Kind::Ole => Some("hwp"),
            Kind::Unknown => None,
        }
    }
}

/// Decides the [`Kind`] of `bytes` from their magic bytes only (at most the first 12 bytes are
/// read). Empty or short input is [`Kind::Unknown`].
#[must_use]
pub fn sniff(bytes: &[u8]) -> Kind {
    const PNG: &[u8] = b"\x89PNG\r\n\x1a\n";
    const OLE: &[u8] = b"\xD0\xCF\x11\xE0\xA1\xB1\x1A\xE1";
    if bytes.starts_with(b"\xFF\xD8\xFF") {
        Kind::Jpeg
    } else if bytes.starts_with(PNG) {
        Kind::Png
    } else if bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a") {
        Kind::Gif
    } else if bytes.len() >= 12 && bytes.starts_with(b"RIFF") && &bytes[8..12] == b"WEBP" {
        Kind::Webp
    } else if bytes.starts_with(b"%PDF") {
        Kind::Pdf
    } else if bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06") {
        Kind::Zip
    } else if bytes.starts_with(OLE) {
        Kind::Ole
    } else {
        Kind::Unknown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind() {
        assert_eq!(sniff(b"\xFF\xD8\xFF\xE0\x00\x10JFIF"), Kind::Jpeg);
        assert_eq!(sniff(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"), Kind::Png);
        assert_eq!(sniff(b"GIF87a\x01\x00"), Kind::Gif);
        assert_eq!(sniff(b"GIF89a\x01\x00"), Kind::Gif);
        assert_eq!(sniff(b"RIFF\x24\0\0\0WEBPVP8 "), Kind::Webp);
        assert_eq!(sniff(b"%PDF-1.7\n"), Kind::Pdf);
        assert_eq!(sniff(b"PK\x03\x04\x14\0"), Kind::Zip);
        assert_eq!(sniff(b"PK\x05\x06\0\0"), Kind::Zip);
        assert_eq!(sniff(b"\xD0\xCF\x11\xE0\xA1\xB1\x1A\xE1\0"), Kind::Ole);
    }

    #[test]
    fn near_misses_are_unknown() {
        assert_eq!(sniff(b""), Kind::Unknown);
        assert_eq!(sniff(b"\xFF\xD8"), Kind::Unknown);
        assert_eq!(sniff(b"\x89PNG\r\n"), Kind::Unknown);
        assert_eq!(sniff(b"GIF88a"), Kind::Unknown);
        assert_eq!(sniff(b"RIFF\0\0\0\0WAVE"), Kind::Unknown);
        assert_eq!(sniff(b"RIFF\0\0\0\0WEB"), Kind::Unknown);
        assert_eq!(sniff(b"\xD0\xCF\x11\xE0"), Kind::Unknown);
        assert_eq!(
            sniff(b"<svg xmlns=\"http://www.w3.org/2000/svg\"/>"),
            Kind::Unknown
        );
        assert_eq!(sniff(b"<!DOCTYPE html>"), Kind::Unknown);
        // HEIC: ftyp box, not accepted.
        assert_eq!(sniff(b"\0\0\0\x18ftypheic"), Kind::Unknown);
    }

    #[test]
    fn kinds_map_to_safe_types() {
        for k in [
            Kind::Jpeg,
            Kind::Png,
            Kind::Gif,
            Kind::Webp,
            Kind::Pdf,
            Kind::Zip,
            Kind::Ole,
            Kind::Unknown,
        ] {
            let ct = k.content_type();
            assert!(!ct.contains("html") && !ct.contains("svg") && !ct.starts_with("text/"));
            assert_eq!(k.is_image(), ct.starts_with("image/"));
        }
    }
}
