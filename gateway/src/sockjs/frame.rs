//! SockJS framing: outbound frame encoding (with the SockJS escaping rules) and
//! inbound payload decoding.

use std::fmt::Write as _;

/// The open frame.
pub(crate) const OPEN: &str = "o";
/// The heart-beat frame.
pub(crate) const HEARTBEAT: &str = "h";

/// Whether `c` must be written as a `\uXXXX` escape in frames sent to the
/// client. This is the set sockjs-protocol 0.3.3 requires servers to escape
/// (`escapable_by_server`): control characters plus ranges that browsers or
/// proxies mangle (zero-width marks, U+2028/U+2029 line/paragraph separators,
/// bidi controls, invisible operators and the specials block). Lone
/// surrogates cannot occur in a Rust `str`.
fn must_escape(c: char) -> bool {
    matches!(
        c as u32,
        0x00..=0x1f | 0x200c..=0x200f | 0x2028..=0x202f | 0x2060..=0x206f | 0xfff0..=0xffff
    )
}

/// Appends `s` as a JSON string literal, escaped per SockJS rules.
pub(crate) fn push_quoted(out: &mut String, s: &str) {
    out.reserve(s.len() + 2);
    out.push('"');
    let mut start = 0;
    for (i, c) in s.char_indices() {
        let short = match c {
            '"' => Some("\\\""),
            '\\' => Some("\\\\"),
            '\n' => Some("\\n"),
            '\r' => Some("\\r"),
            '\t' => Some("\\t"),
            '\u{8}' => Some("\\b"),
            '\u{c}' => Some("\\f"),
            _ => None,
        };
        if short.is_none() && !must_escape(c) {
            continue;
        }
        out.push_str(&s[start..i]);
        match short {
            Some(esc) => out.push_str(esc),
            None => {
                // Writing to a String cannot fail.
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
        }
        start = i + c.len_utf8();
    }
    out.push_str(&s[start..]);
    out.push('"');
}

/// Starts an `a[...]` frame; add messages with [`push_array_item`] and finish
/// with [`finish_array`].
pub(crate) fn start_array(capacity: usize) -> String {
    let mut out = String::with_capacity(capacity + 3);
    out.push_str("a[");
    out
}

/// Appends one message to a frame begun with [`start_array`].
pub(crate) fn push_array_item(frame: &mut String, msg: &str) {
    if frame.len() > 2 {
        frame.push(',');
    }
    push_quoted(frame, msg);
}

/// Closes an `a[...]` frame.
pub(crate) fn finish_array(frame: &mut String) {
    frame.push(']');
}

/// Encodes a close frame, `c[code,"reason"]`.
pub(crate) fn close_frame(code: u16, reason: &str) -> String {
    let mut out = String::with_capacity(reason.len() + 12);
    let _ = write!(out, "c[{code},");
    push_quoted(&mut out, reason);
    out.push(']');
    out
}

/// Why an inbound payload was refused.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum DecodeError {
    /// The payload is empty (or only whitespace).
    Empty,
    /// Not a JSON string nor a JSON array of strings.
    Broken,
}

/// Decodes an inbound SockJS payload: a JSON array of strings or, as the
/// protocol also allows, a single JSON string.
pub(crate) fn decode_messages(payload: &[u8]) -> Result<Vec<String>, DecodeError> {
    let first = payload.iter().find(|b| !b.is_ascii_whitespace());
    match first {
        None => Err(DecodeError::Empty),
        Some(b'[') => {
            serde_json::from_slice::<Vec<String>>(payload).map_err(|_| DecodeError::Broken)
        }
        Some(b'"') => serde_json::from_slice::<String>(payload)
            .map(|s| vec![s])
            .map_err(|_| DecodeError::Broken),
        Some(_) => Err(DecodeError::Broken),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quoted(s: &str) -> String {
        let mut out = String::new();
        push_quoted(&mut out, s);
        out
    }

    #[test]
    fn quotes_plain_and_korean_verbatim() {
        assert_eq!(quoted("hello"), "\"hello\"");
        assert_eq!(quoted("안녕하세요"), "\"안녕하세요\"");
        assert_eq!(quoted("😀"), "\"😀\"");
    }

    #[test]
    fn escapes_json_specials_and_sockjs_ranges() {
        assert_eq!(quoted("a\"b\\c\n\r\t"), r#""a\"b\\c\n\r\t""#);
        assert_eq!(quoted("\u{0}\u{1f}"), r#""\u0000\u001f""#);
        assert_eq!(quoted("x\u{2028}y\u{2029}"), r#""x\u2028y\u2029""#);
        assert_eq!(
            quoted("\u{200c}\u{206f}\u{fff0}\u{ffff}"),
            r#""\u200c\u206f\ufff0\uffff""#
        );
        // U+007F..U+009F are not in the server set: sent verbatim.
        assert_eq!(quoted("\u{7f}"), "\"\u{7f}\"");
    }

    #[test]
    fn escaped_output_round_trips() {
        let all: String = (0u32..0x11000).filter_map(char::from_u32).collect();
        let q = quoted(&all);
        let back: String = serde_json::from_str(&q).expect("valid JSON");
        assert_eq!(back, all);
        assert!(!q.contains('\u{2028}'));
    }

    #[test]
    fn frames() {
        let mut f = start_array(8);
        push_array_item(&mut f, "a");
        push_array_item(&mut f, "b\"");
        finish_array(&mut f);
        assert_eq!(f, r#"a["a","b\""]"#);
        assert_eq!(close_frame(3000, "Go away!"), r#"c[3000,"Go away!"]"#);
    }

    #[test]
    fn decodes_payloads() {
        assert_eq!(
            decode_messages(br#"["a","b"]"#),
            Ok(vec!["a".into(), "b".into()])
        );
        assert_eq!(decode_messages(br#" "x" "#), Ok(vec!["x".into()]));
        assert_eq!(decode_messages(b""), Err(DecodeError::Empty));
        assert_eq!(decode_messages(b"  "), Err(DecodeError::Empty));
        assert_eq!(decode_messages(br#"["a"#), Err(DecodeError::Broken));
        assert_eq!(decode_messages(b"[1]"), Err(DecodeError::Broken));
        assert_eq!(decode_messages(b"{}"), Err(DecodeError::Broken));
        assert_eq!(decode_messages(br#"["\ud800"]"#), Err(DecodeError::Broken));
    }
}
