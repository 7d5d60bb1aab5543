//! The one error type of the crate.
//!
//! Every way a byte stream can fail to be STOMP, every limit, every missing required header and
//! every frame the encoder cannot represent has its own variant, so callers (and tests) can tell
//! them apart without parsing text.
//!
//! The `Display` text is meant to be sent back to the peer as the `message` header of an ERROR
//! frame, so it is one short English sentence without line breaks. Pieces of the offending input
//! are quoted with [`excerpt`]: truncated and with control characters escaped, so a hostile client
//! cannot make the server echo a megabyte or inject a line feed into a header.

use crate::frame::Command;

/// Everything that can go wrong while decoding, validating or encoding a frame.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The first line of a frame is not one of the 15 STOMP commands (commands are case-sensitive).
    #[error("unknown command {0}")]
    UnknownCommand(String),

    /// A header line has no `:` separating name and value.
    #[error("header number {index} has no colon between name and value")]
    MissingColon {
        /// Position of the header in the frame, counting from 1.
        index: usize,
    },

    /// A header line starts with `:`.
    #[error("header number {index} has an empty name")]
    EmptyHeaderName {
        /// Position of the header in the frame, counting from 1.
        index: usize,
    },

    /// A backslash in a header is not followed by one of the escapes the version defines
    /// (1.1: `\n` `\c` `\\`; 1.2 adds `\r`).
    #[error("undefined escape sequence {sequence} in a header")]
    InvalidEscape {
        /// The offending sequence, quoted.
        sequence: String,
    },

    /// The headers are not valid UTF-8 (the spec requires UTF-8 for commands and headers).
    #[error("frame headers are not valid UTF-8")]
    InvalidUtf8,

    /// More headers than [`Limits::max_headers`](crate::Limits::max_headers).
    #[error("frame has more than {max} headers")]
    TooManyHeaders {
        /// The configured limit.
        max: usize,
    },

    /// The command line and the headers are longer than
    /// [`Limits::max_head_bytes`](crate::Limits::max_head_bytes).
    #[error("frame command and headers are longer than {max} bytes")]
    HeadTooLong {
        /// The configured limit.
        max: usize,
    },

    /// A body without `content-length` runs past [`Limits::max_body_bytes`](crate::Limits::max_body_bytes)
    /// without a NUL.
    #[error("frame body is longer than {max} bytes")]
    BodyTooLong {
        /// The configured limit.
        max: usize,
    },

    /// The `content-length` header announces a body larger than the limit; reported as soon as the
    /// headers are complete, before any of the body is buffered.
    #[error("content-length {declared} is larger than the limit of {max} bytes")]
    ContentLengthTooLarge {
        /// The announced length (saturated at `u64::MAX`).
        declared: u64,
        /// The configured limit.
        max: usize,
    },

    /// The `content-length` header is not a non-negative decimal integer.
    #[error("content-length {value} is not a non-negative integer")]
    InvalidContentLength {
        /// The offending value, quoted.
        value: String,
    },

    /// The octet after a `content-length` body is not NUL.
    #[error("frame body is not followed by a NUL octet where content-length says it ends")]
    MissingNul,

    /// Only SEND, MESSAGE and ERROR frames may carry a body.
    #[error("{command} frames must not have a body")]
    BodyNotAllowed {
        /// The frame's command.
        command: Command,
    },

    /// The stream ended in the middle of a frame.
    #[error("connection closed in the middle of a frame")]
    Truncated,

    /// A typed view (see [`frames`](crate::frames)) found a required header missing.
    #[error("{command} frame is missing the required {header} header")]
    MissingHeader {
        /// The frame's command.
        command: Command,
        /// The missing header's name.
        header: &'static str,
    },

    /// A typed view was asked to read a frame with another command.
    #[error("expected a {expected} frame, not {found}")]
    UnexpectedCommand {
        /// The command the view reads.
        expected: Command,
        /// The frame's command.
        found: Command,
    },

    /// A `heart-beat` value is not two non-negative integers separated by a comma.
    #[error("invalid heart-beat {value}, expected two non-negative integers separated by a comma")]
    InvalidHeartBeat {
        /// The offending value, quoted.
        value: String,
    },

    /// An `ack` header is not `auto`, `client` or `client-individual`.
    #[error("invalid ack mode {value}, expected auto, client or client-individual")]
    InvalidAckMode {
        /// The offending value, quoted.
        value: String,
    },

    /// A version string is not `1.0`, `1.1` or `1.2`.
    #[error("unknown STOMP version {value}")]
    UnknownVersion {
        /// The offending value, quoted.
        value: String,
    },

    /// The encoder cannot write this header in this version without changing its meaning
    /// (e.g. a line feed in a STOMP 1.0 value, where there is no escaping).
    #[error("header {name} cannot be encoded because {reason}")]
    Unrepresentable {
        /// The header's name, quoted.
        name: String,
        /// Why not.
        reason: &'static str,
    },

    /// An I/O error from the transport (needed by `tokio_util::codec`).
    #[error("i/o error {0}")]
    Io(#[from] std::io::Error),
}

/// The longest excerpt of peer input quoted in an error message, in characters.
const EXCERPT_CHARS: usize = 40;

/// Quotes a piece of (untrusted) input for an error message: lossy UTF-8, escaped control
/// characters, at most [`EXCERPT_CHARS`] characters.
pub(crate) fn excerpt(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::with_capacity(text.len().min(EXCERPT_CHARS * 2) + 2);
    out.push('"');
    let mut chars = text.chars();
    for c in chars.by_ref().take(EXCERPT_CHARS) {
        out.extend(c.escape_debug());
    }
    if chars.next().is_some() {
        out.push_str("...");
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpt_escapes_and_truncates() {
        assert_eq!(excerpt(b"a\nb"), r#""a\nb""#);
        let long = excerpt(&[b'x'; 100]);
        assert!(long.ends_with("...\""));
        assert_eq!(long.len(), EXCERPT_CHARS + 5);
        assert_eq!(excerpt(&[0xff]), "\"\u{fffd}\"");
    }

    #[test]
    fn display_has_no_line_breaks() {
        let e = FrameError::UnknownCommand(excerpt(b"FOO\r\nBAR"));
        assert!(!e.to_string().contains(['\n', '\r']));
    }
}
