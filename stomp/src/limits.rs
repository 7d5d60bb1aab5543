//! Resource limits for inbound frames.
//!
//! A STOMP peer controls how many bytes we buffer, so every quantity the decoder stores is
//! bounded, and each bound is checked while *scanning*, before anything is allocated for it:
//!
//! - the head (command line, headers, the blank line) is searched at most `max_head_bytes` deep;
//!   a head without its blank line by then is [`HeadTooLong`](crate::FrameError::HeadTooLong),
//!   even if the rest has not arrived;
//! - header lines are counted as their line feeds are found, so header number
//!   `max_headers + 1` fails at once ([`TooManyHeaders`](crate::FrameError::TooManyHeaders));
//! - a `content-length` above `max_body_bytes` fails as soon as the head is complete, before the
//!   body is buffered ([`ContentLengthTooLarge`](crate::FrameError::ContentLengthTooLarge)); a body
//!   without `content-length` is searched for its NUL at most `max_body_bytes` deep
//!   ([`BodyTooLong`](crate::FrameError::BodyTooLong)).
//!
//! So one connection holds at most about `max_head_bytes + max_body_bytes` plus one read chunk.

/// Limits for one inbound frame. All limits are inclusive (a value equal to the limit is allowed).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Limits {
    /// Longest head: command line, header lines and the blank line, EOLs included.
    pub max_head_bytes: usize,
    /// Most header lines (repeated names count each time).
    pub max_headers: usize,
    /// Longest body, whether delimited by `content-length` or by NUL.
    pub max_body_bytes: usize,
}

impl Limits {
    /// Head 8 KiB, 64 headers, body 64 KiB.
    pub const DEFAULT: Limits = Limits {
        max_head_bytes: 8 * 1024,
        max_headers: 64,
        max_body_bytes: 64 * 1024,
    };
}

impl Default for Limits {
    /// [`Limits::DEFAULT`]: head 8 KiB, 64 headers, body 64 KiB.
    fn default() -> Self {
        Limits::DEFAULT
    }
}
