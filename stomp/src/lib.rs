//! STOMP 1.0/1.1/1.2 frames: parser, encoder, limits, heart-beats, tokio-util codec.
//!
//! This crate knows the *wire format* of STOMP and nothing else: no sockets, no sessions, no
//! subscriptions. The gateway owns connections and state; it feeds bytes in and gets
//! [`Frame`]s out, and the other way round.
//!
//! # A frame on the wire
//!
//! ```text
//! SEND\n                        command line
//! destination:/queue/a\n        header lines: name ":" value, escaped (1.1+)
//! content-length:5\n
//! \n                            blank line: end of the head
//! hello\0                       body, then NUL
//! \n                            EOLs between frames: heart-beats
//! ```
//!
//! Line ends are LF or CRLF (CRLF is accepted in every version, since clients send it before a
//! version is even agreed). The body is either `content-length` octets (and may then contain NUL)
//! or everything up to the first NUL.
//!
//! # Map of the crate
//!
//! - [`Frame`], [`Command`], [`Version`], [`Item`] (`frame.rs`): the data model;
//! - [`Headers`] (`headers.rs`): ordered, first-wins header list stored in one buffer;
//! - `escape.rs`: the per-version escaping rules (summarised below);
//! - `parser/`: the resumable decoder, [`Limits`] enforced while scanning (`limits.rs`);
//! - [`encode_frame`] (`encoder.rs`) and [`MessageTemplate`] (`template.rs`, fan-out);
//! - [`StompCodec`] (`codec.rs`): both directions as a `tokio_util` codec;
//! - [`frames`]: typed views that check required headers; [`negotiate_version`];
//! - [`heartbeat`]: parsing and negotiating `heart-beat`;
//! - [`FrameError`] (`error.rs`): one variant per failure, displayable in an ERROR frame.
//!
//! # Design choices
//!
//! **Linear-time decoding of fragmented input.** The decoder keeps the offset up to which it has
//! searched and resumes there; a frame trickling in one byte at a time costs the same as one
//! arriving whole (see `parser/decoder.rs`).
//!
//! **Limits before allocation.** Every size the peer controls is bounded while scanning, so a
//! hostile peer cannot make us buffer or allocate more than the limits allow; a too-large
//! `content-length` is refused before its body arrives (see [`Limits`]).
//!
//! **Zero-copy bodies.** Bodies are split off the read buffer as [`bytes::Bytes`]; only header
//! text is copied (it has to be unescaped anyway), into a single allocation per frame.
//!
//! **Escaping follows the version, and refuses what cannot be said.** 1.0 has no escaping, 1.1
//! escapes `\n` `\c` `\\`, 1.2 adds `\r`; CONNECT, STOMP and CONNECTED are never escaped.
//! Undefined escapes are errors when decoding 1.1/1.2. When encoding, a header the version cannot
//! carry (a line feed in 1.0, say) is an error rather than a silently different frame.
//!
//! **Strictness where the spec says MUST.** Unknown commands, header lines without a colon,
//! empty header names, non-UTF-8 headers, malformed `content-length`, and bodies on frames other
//! than SEND/MESSAGE/ERROR are errors. Repeated headers are kept, and the first one wins.

mod codec;
mod encoder;
mod error;
mod escape;
mod frame;
pub mod frames;
mod headers;
pub mod heartbeat;
mod limits;
mod parser;
mod template;

pub use codec::StompCodec;
pub use encoder::{encode_frame, encode_heartbeat};
pub use error::FrameError;
pub use frame::{Command, Frame, Item, Version};
pub use frames::{AckMode, negotiate_version};
pub use headers::{Headers, Iter as HeaderIter};
pub use limits::Limits;
pub use template::MessageTemplate;
