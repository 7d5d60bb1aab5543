//! Header escaping, which differs by version and by command.
//!
//! | rules              | `\n`→LF | `\c`→`:` | `\\`→`\` | `\r`→CR | other `\x` |
//! |--------------------|---------|----------|----------|---------|------------|
//! | 1.0, CONNECT/STOMP/CONNECTED | – | – | – | – | literal |
//! | 1.1                | yes     | yes      | yes      | error   | error      |
//! | 1.2                | yes     | yes      | yes      | yes     | error      |
//!
//! CONNECT and CONNECTED are never escaped so that a 1.0 peer can still read them; we treat
//! STOMP (the 1.1+ spelling of CONNECT) the same way, since it is sent before any version is
//! agreed.
//!
//! Where there is no escape for an octet, some headers simply cannot be written:
//! without escaping, a name cannot contain `:` and nothing can contain LF; and because every
//! version accepts CRLF line ends, a value cannot *end* in CR unless `\r` exists (1.2). The
//! encoder refuses those with [`FrameError::Unrepresentable`] instead of producing a frame that
//! would decode differently. A raw CR elsewhere is data and survives in every version.

use bytes::{BufMut, BytesMut};
use memchr::memchr;

use crate::error::{FrameError, excerpt};
use crate::frame::{Command, Version};

/// Which escaping rules apply to a frame's headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Escaping {
    /// 1.0 and the CONNECT/STOMP/CONNECTED frames: bytes are taken literally.
    None,
    /// `\n`, `\c`, `\\`.
    V1_1,
    /// `\n`, `\c`, `\\`, `\r`.
    V1_2,
}

impl Escaping {
    /// The rules for a frame with `command` on a connection speaking `version`.
    pub(crate) fn for_frame(command: Command, version: Version) -> Escaping {
        match command {
            Command::Connect | Command::Stomp | Command::Connected => Escaping::None,
            _ => match version {
                Version::V1_0 => Escaping::None,
                Version::V1_1 => Escaping::V1_1,
                Version::V1_2 => Escaping::V1_2,
            },
        }
    }
}

/// Appends `src` to `dst`, undoing the escapes. `src` is one header name or value as read.
pub(crate) fn unescape_into(src: &str, esc: Escaping, dst: &mut String) -> Result<(), FrameError> {
    if esc == Escaping::None {
        dst.push_str(src);
        return Ok(());
    }
    let mut rest = src;
    // memchr jumps from backslash to backslash; the common case (none) is a single scan + copy.
    while let Some(i) = memchr(b'\\', rest.as_bytes()) {
        // `i` indexes an ASCII byte, so it and `i + 2` (after an ASCII escape letter) are char
        // boundaries; `get` makes that a non-panicking fact rather than an assumption.
        dst.push_str(rest.get(..i).unwrap_or_default());
        let decoded = match (rest.as_bytes().get(i + 1), esc) {
            (Some(b'n'), _) => '\n',
            (Some(b'c'), _) => ':',
            (Some(b'\\'), _) => '\\',
            (Some(b'r'), Escaping::V1_2) => '\r',
            _ => {
                let seq: String = rest.get(i..).unwrap_or_default().chars().take(2).collect();
                return Err(FrameError::InvalidEscape {
                    sequence: excerpt(seq.as_bytes()),
                });
            }
        };
        dst.push(decoded);
        rest = rest.get(i + 2..).unwrap_or_default();
    }
    dst.push_str(rest);
    Ok(())
}

/// Writes `name:value\n` with the escaping `esc`, or refuses if the version cannot carry it.
/// On error nothing has been written.
pub(crate) fn write_header(
    name: &str,
    value: &str,
    esc: Escaping,
    dst: &mut BytesMut,
) -> Result<(), FrameError> {
    check_representable(name, value, esc)?;
    dst.reserve(name.len() + value.len() + 2);
    write_escaped(name.as_bytes(), esc, dst);
    dst.put_u8(b':');
    write_escaped(value.as_bytes(), esc, dst);
    dst.put_u8(b'\n');
    Ok(())
}

/// Appends `src` escaped (or verbatim for [`Escaping::None`]). Callers have checked
/// representability.
pub(crate) fn write_escaped(src: &[u8], esc: Escaping, dst: &mut BytesMut) {
    if esc == Escaping::None {
        dst.extend_from_slice(src);
        return;
    }
    let mut start = 0;
    for (i, &b) in src.iter().enumerate() {
        let replacement: &[u8] = match b {
            b'\n' => b"\\n",
            b':' => b"\\c",
            b'\\' => b"\\\\",
            b'\r' if esc == Escaping::V1_2 => b"\\r",
            _ => continue,
        };
        dst.extend_from_slice(src.get(start..i).unwrap_or_default());
        dst.extend_from_slice(replacement);
        start = i + 1;
    }
    dst.extend_from_slice(src.get(start..).unwrap_or_default());
}

/// Whether `name:value` survives a round trip under `esc`; see the module docs for the rules.
pub(crate) fn check_representable(
    name: &str,
    value: &str,
    esc: Escaping,
) -> Result<(), FrameError> {
    let reason = if name.is_empty() {
        Some("a header name cannot be empty")
    } else if esc == Escaping::None && name.contains(':') {
        Some("a colon in a name needs escaping, which STOMP 1.0 and CONNECT/CONNECTED frames lack")
    } else if esc == Escaping::None && (name.contains('\n') || value.contains('\n')) {
        Some("a line feed needs escaping, which STOMP 1.0 and CONNECT/CONNECTED frames lack")
    } else if esc != Escaping::V1_2 && value.ends_with('\r') {
        Some("a carriage return ending a value is only escapable in STOMP 1.2 frames")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(FrameError::Unrepresentable {
            name: excerpt(name.as_bytes()),
            reason,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unescape(s: &str, esc: Escaping) -> Result<String, FrameError> {
        let mut out = String::new();
        unescape_into(s, esc, &mut out).map(|()| out)
    }

    fn escape(s: &str, esc: Escaping) -> String {
        let mut out = BytesMut::new();
        write_escaped(s.as_bytes(), esc, &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }

    #[test]
    fn unescapes_per_version() {
        assert_eq!(
            unescape(r"a\nb\cc\\d", Escaping::V1_1).ok().as_deref(),
            Some("a\nb:c\\d")
        );
        assert_eq!(
            unescape(r"a\rb", Escaping::V1_2).ok().as_deref(),
            Some("a\rb")
        );
        assert!(matches!(
            unescape(r"a\rb", Escaping::V1_1),
            Err(FrameError::InvalidEscape { .. })
        ));
        assert!(matches!(
            unescape(r"a\tb", Escaping::V1_2),
            Err(FrameError::InvalidEscape { .. })
        ));
        assert!(matches!(
            unescape("trailing\\", Escaping::V1_2),
            Err(FrameError::InvalidEscape { .. })
        ));
        assert_eq!(
            unescape(r"a\tb\", Escaping::None).ok().as_deref(),
            Some(r"a\tb\")
        );
        assert_eq!(
            unescape("é\\cö", Escaping::V1_2).ok().as_deref(),
            Some("é:ö")
        );
    }

    #[test]
    fn escapes_per_version() {
        assert_eq!(escape("a:b\nc\\d\re", Escaping::V1_2), r"a\cb\nc\\d\re");
        assert_eq!(escape("a:b\nc\\d\re", Escaping::V1_1), "a\\cb\\nc\\\\d\re");
        assert_eq!(escape("a:b", Escaping::None), "a:b");
    }

    #[test]
    fn representability() {
        let ok = |n, v, e| check_representable(n, v, e).is_ok();
        assert!(!ok("", "v", Escaping::V1_2));
        assert!(!ok("a:b", "v", Escaping::None));
        assert!(ok("a", "b:c", Escaping::None));
        assert!(!ok("a", "b\nc", Escaping::None));
        assert!(ok("a", "b\nc", Escaping::V1_1));
        assert!(!ok("a", "b\r", Escaping::V1_1));
        assert!(ok("a", "b\rc", Escaping::V1_1));
        assert!(ok("a", "b\r", Escaping::V1_2));
    }
}
