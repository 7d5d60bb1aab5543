//! Decoding: bytes to [`Item`](crate::Item)s.
//!
//! Split in two on purpose:
//!
//! - [`decoder`] is the *scanner*: a small state machine that finds where the head and the body
//!   of a frame end, resuming where it stopped when more bytes arrive, and enforcing the
//!   [`Limits`](crate::Limits) while it scans;
//! - [`head`] is the *parser*: given a complete head and the offsets of its line ends, it builds
//!   the command and the unescaped [`Headers`](crate::Headers).
//!
//! The scanner never allocates per byte and never looks at a byte twice; the parser runs once per
//! frame over at most `max_head_bytes`.

mod decoder;
mod head;

pub(crate) use decoder::FrameDecoder;
