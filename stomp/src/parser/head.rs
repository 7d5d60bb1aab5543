//! Turning a complete head (command line, header lines, blank line) into a command and headers.
//!
//! The scanner in [`decoder`](super::decoder) has already found every line feed of the head and
//! recorded their offsets, so this pass never searches for line ends again: it slices each line,
//! splits it at its first colon and unescapes the two halves into one [`Headers`] allocation.
//!
//! UTF-8 is validated once for all header lines together. Every structural byte (`:`, `\`, CR,
//! LF) is ASCII, and a UTF-8 string split at ASCII bytes stays valid UTF-8, so after that one
//! check each line, name and value can be sliced as `&str` without further validation.

use crate::error::{FrameError, excerpt};
use crate::escape::Escaping;
use crate::frame::{Command, Version};
use crate::headers::Headers;

/// A parsed head.
#[derive(Debug)]
pub(crate) struct Head {
    pub(crate) command: Command,
    pub(crate) headers: Headers,
    /// The first `content-length` header, parsed.
    pub(crate) content_length: Option<u64>,
}

/// Parses `head` (the bytes of the head including its blank line) whose command and header lines
/// end at the offsets `line_ends` (the blank line's LF is not among them).
pub(crate) fn parse_head(
    head: &[u8],
    line_ends: &[usize],
    version: Version,
) -> Result<Head, FrameError> {
    let Some((&command_end, header_ends)) = line_ends.split_first() else {
        return Err(FrameError::UnknownCommand(excerpt(b"")));
    };
    let command_line = strip_cr(head.get(..command_end).unwrap_or_default());
    let command = Command::from_bytes(command_line)
        .ok_or_else(|| FrameError::UnknownCommand(excerpt(command_line)))?;
    let esc = Escaping::for_frame(command, version);

    // Everything after the command line: header lines and the blank line.
    let rest_start = command_end + 1;
    let rest = head.get(rest_start..).unwrap_or_default();
    let text = std::str::from_utf8(rest).map_err(|_| FrameError::InvalidUtf8)?;

    // Unescaping only shrinks, so the raw size is an upper bound: one allocation each.
    let mut headers = Headers::with_capacity(header_ends.len(), rest.len());
    let mut line_start = 0;
    for (i, &end) in header_ends.iter().enumerate() {
        let line_end = end - rest_start;
        let line = text.get(line_start..line_end).unwrap_or_default();
        line_start = line_end + 1;
        let line = line.strip_suffix('\r').unwrap_or(line);
        let index = i + 1;
        let Some((name, value)) = line.split_once(':') else {
            return Err(FrameError::MissingColon { index });
        };
        if name.is_empty() {
            return Err(FrameError::EmptyHeaderName { index });
        }
        headers.push_unescaped(name, value, esc)?;
    }

    let content_length = headers
        .get("content-length")
        .map(parse_content_length)
        .transpose()?;
    Ok(Head {
        command,
        headers,
        content_length,
    })
}

/// Strips the CR of a CRLF line end.
fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// A decimal number of octets: one or more ASCII digits, nothing else (no sign, no spaces).
/// Values too large for `u64` saturate, so they are reported as "too large", not "invalid".
fn parse_content_length(value: &str) -> Result<u64, FrameError> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(FrameError::InvalidContentLength {
            value: excerpt(value.as_bytes()),
        });
    }
    Ok(value.bytes().fold(0u64, |n, d| {
        n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length_forms() {
        assert_eq!(parse_content_length("0").ok(), Some(0));
        assert_eq!(parse_content_length("0012").ok(), Some(12));
        assert_eq!(
            parse_content_length("99999999999999999999999").ok(),
            Some(u64::MAX)
        );
        for bad in ["", "-1", "+1", " 1", "1 ", "0x10", "1.0", "١"] {
            assert!(
                matches!(
                    parse_content_length(bad),
                    Err(FrameError::InvalidContentLength { .. })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn parses_lines() {
        let head = b"SEND\r\ndestination:/q\nx:a:b\n\n";
        let head = parse_head(head, &[5, 20, 26], Version::V1_2);
        let head = head.expect("valid head");
        assert_eq!(head.command, Command::Send);
        assert_eq!(head.headers.get("destination"), Some("/q"));
        assert_eq!(head.headers.get("x"), Some("a:b"));
        assert_eq!(head.content_length, None);
    }
}
