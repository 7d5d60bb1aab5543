//! The resumable frame scanner.
//!
//! # Why a state machine
//!
//! A transport hands us bytes in arbitrary pieces. The naive decoder ("is there a whole frame in
//! the buffer? no: wait; yes: parse it") rescans the buffer from the start on every call, so a
//! frame that arrives one byte at a time costs O(n²). This decoder remembers how far it has
//! searched and resumes there; every byte is examined by the scanner once, so the cost is linear
//! in the input however it is fragmented.
//!
//! # States
//!
//! ```text
//!            LF / CRLF (=> HeartBeat)
//!             ┌──────┐
//!             ▼      │
//!  ┌────────► Idle ──┘
//!  │           │ any other byte
//!  │           ▼
//!  │         Head { scanned }  ── memchr(LF) from `scanned`; blank line ends the head
//!  │           │ parse command + headers, drop the head from the buffer
//!  │           ▼
//!  └─ NUL ── Body { Length(n) | UntilNul { scanned } }
//! ```
//!
//! Offsets (`scanned`, the recorded line ends) are relative to the start of the buffer, which is
//! the start of the current frame: the decoder consumes the buffer only at item boundaries, and
//! `tokio_util` only ever appends to it between calls.
//!
//! # Zero copy
//!
//! Bodies are `split_to(len).freeze()` off the input buffer: the `Bytes` handed out shares the
//! buffer's allocation (reference counted), so a 16 KiB MESSAGE body is never copied by the
//! decoder. Header text is copied once, into the frame's [`Headers`], because it must be unescaped.

use bytes::{Buf, Bytes, BytesMut};
use memchr::memchr;

use super::head::{Head, parse_head};
use crate::error::FrameError;
use crate::frame::{Command, Frame, Item, Version};
use crate::headers::Headers;
use crate::limits::Limits;

/// The most the decoder reserves ahead for a `content-length` body it is waiting for.
const MAX_EAGER_RESERVE: usize = 1 << 20;

/// Incremental decoder for one byte stream. Not reusable after an error: a STOMP stream that
/// went wrong cannot be resynchronised, the connection must be closed.
#[derive(Debug, Default)]
pub(crate) struct FrameDecoder {
    state: State,
    /// Offsets of the LF ending the command line and each header line of the current head.
    /// Kept across frames so its allocation is reused; never longer than `max_headers + 1`.
    line_ends: Vec<usize>,
}

#[derive(Debug, Default)]
enum State {
    /// At a frame boundary, where EOLs are heart-beats.
    #[default]
    Idle,
    /// Looking for the blank line that ends the head; `buf[..scanned]` has been searched.
    Head { scanned: usize },
    /// Head parsed and consumed; waiting for the body and its NUL.
    Body {
        command: Command,
        headers: Headers,
        body: BodyState,
    },
}

#[derive(Debug)]
enum BodyState {
    /// `content-length` given: wait for that many bytes plus the NUL.
    Length(usize),
    /// No `content-length`: search for the NUL; `buf[..scanned]` has been searched.
    UntilNul { scanned: usize },
}

impl FrameDecoder {
    /// Decodes the next item from the front of `buf`, consuming exactly its bytes.
    /// `Ok(None)` means "need more bytes" (everything seen so far was fine).
    pub(crate) fn decode(
        &mut self,
        buf: &mut BytesMut,
        limits: &Limits,
        version: Version,
    ) -> Result<Option<Item>, FrameError> {
        let result = self.step(buf, limits, version);
        if result.is_err() {
            self.state = State::Idle;
        }
        result
    }

    /// Whether the decoder is between frames (nothing of a frame consumed or scanned yet).
    pub(crate) fn is_idle(&self) -> bool {
        matches!(self.state, State::Idle)
    }

    fn step(
        &mut self,
        buf: &mut BytesMut,
        limits: &Limits,
        version: Version,
    ) -> Result<Option<Item>, FrameError> {
        loop {
            match &mut self.state {
                State::Idle => match (buf.first(), buf.get(1)) {
                    (None, _) | (Some(b'\r'), None) => return Ok(None),
                    (Some(b'\n'), _) => {
                        buf.advance(1);
                        return Ok(Some(Item::HeartBeat));
                    }
                    (Some(b'\r'), Some(b'\n')) => {
                        buf.advance(2);
                        return Ok(Some(Item::HeartBeat));
                    }
                    // Anything else starts a frame (a stray CR becomes part of the command line,
                    // which then is not a known command).
                    _ => {
                        self.line_ends.clear();
                        self.state = State::Head { scanned: 0 };
                    }
                },
                State::Head { scanned } => {
                    let Some(head_len) = scan_head(buf, scanned, &mut self.line_ends, limits)?
                    else {
                        return Ok(None);
                    };
                    let head = buf.get(..head_len).unwrap_or_default();
                    let Head {
                        command,
                        headers,
                        content_length,
                    } = parse_head(head, &self.line_ends, version)?;
                    let body = body_state(command, content_length, limits)?;
                    buf.advance(head_len);
                    if let BodyState::Length(len) = body {
                        // The length is within the limit: make room for the body at once instead
                        // of growing the buffer read by read (capped, in case limits are huge).
                        let missing = len.saturating_add(1).saturating_sub(buf.len());
                        buf.reserve(missing.min(MAX_EAGER_RESERVE));
                    }
                    self.state = State::Body {
                        command,
                        headers,
                        body,
                    };
                }
                State::Body { command, body, .. } => {
                    let Some(body) = take_body(buf, *command, body, limits)? else {
                        return Ok(None);
                    };
                    let State::Body {
                        command, headers, ..
                    } = std::mem::take(&mut self.state)
                    else {
                        return Ok(None); // unreachable: we are in the Body arm
                    };
                    return Ok(Some(Item::Frame(Frame {
                        command,
                        headers,
                        body,
                    })));
                }
            }
        }
    }
}

/// Resumes the search for the end of the head. Returns the head's length (through the blank
/// line's LF) once found. Never looks past `max_head_bytes`, and counts header lines as it goes.
fn scan_head(
    buf: &[u8],
    scanned: &mut usize,
    line_ends: &mut Vec<usize>,
    limits: &Limits,
) -> Result<Option<usize>, FrameError> {
    let window_end = buf.len().min(limits.max_head_bytes);
    while let Some(found) = memchr(b'\n', buf.get(*scanned..window_end).unwrap_or_default()) {
        let lf = *scanned + found;
        *scanned = lf + 1;
        let line_start = line_ends.last().map_or(0, |&end| end + 1);
        let line = buf.get(line_start..lf).unwrap_or_default();
        if !line_ends.is_empty() && (line.is_empty() || line == b"\r") {
            return Ok(Some(lf + 1));
        }
        // `line_ends` holds the command line and the headers so far; this line is header
        // number `line_ends.len()`.
        if line_ends.len() > limits.max_headers {
            return Err(FrameError::TooManyHeaders {
                max: limits.max_headers,
            });
        }
        line_ends.push(lf);
    }
    *scanned = window_end.max(*scanned);
    if buf.len() > limits.max_head_bytes {
        // The blank line is not within the first `max_head_bytes`, so the head is longer.
        return Err(FrameError::HeadTooLong {
            max: limits.max_head_bytes,
        });
    }
    Ok(None)
}

/// How the body of a frame with this head is delimited, checking the declared length at once.
fn body_state(
    command: Command,
    content_length: Option<u64>,
    limits: &Limits,
) -> Result<BodyState, FrameError> {
    let Some(declared) = content_length else {
        return Ok(BodyState::UntilNul { scanned: 0 });
    };
    if declared > 0 && !command.allows_body() {
        return Err(FrameError::BodyNotAllowed { command });
    }
    match usize::try_from(declared) {
        Ok(len) if len <= limits.max_body_bytes => Ok(BodyState::Length(len)),
        _ => Err(FrameError::ContentLengthTooLarge {
            declared,
            max: limits.max_body_bytes,
        }),
    }
}

/// Takes the body and its NUL off the front of `buf` once they are complete.
fn take_body(
    buf: &mut BytesMut,
    command: Command,
    body: &mut BodyState,
    limits: &Limits,
) -> Result<Option<Bytes>, FrameError> {
    let len = match body {
        BodyState::Length(len) => {
            let len = *len;
            match buf.get(len) {
                None => return Ok(None),
                Some(0) => len,
                Some(_) => return Err(FrameError::MissingNul),
            }
        }
        BodyState::UntilNul { scanned } => {
            // A frame that may not have a body must have its NUL right away.
            let max = if command.allows_body() {
                limits.max_body_bytes
            } else {
                0
            };
            let window_end = buf.len().min(max.saturating_add(1));
            match memchr(0, buf.get(*scanned..window_end).unwrap_or_default()) {
                Some(found) => *scanned + found,
                None => {
                    *scanned = window_end.max(*scanned);
                    if buf.len() > max {
                        return Err(if command.allows_body() {
                            FrameError::BodyTooLong { max }
                        } else {
                            FrameError::BodyNotAllowed { command }
                        });
                    }
                    return Ok(None);
                }
            }
        }
    };
    let body = if len == 0 {
        // Do not pin the input buffer for an empty body.
        Bytes::new()
    } else {
        buf.split_to(len).freeze()
    };
    buf.advance(1); // the NUL, present: checked above
    Ok(Some(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(input: &[u8]) -> Vec<Result<Item, String>> {
        let mut d = FrameDecoder::default();
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        loop {
            match d.decode(&mut buf, &Limits::default(), Version::V1_2) {
                Ok(Some(item)) => out.push(Ok(item)),
                Ok(None) => break,
                Err(e) => {
                    out.push(Err(format!("{e:?}")));
                    break;
                }
            }
        }
        out
    }

    #[test]
    fn heartbeats_and_frame() {
        let items = decode_all(b"\n\r\nSEND\ndestination:/q\n\nhi\0\n");
        assert_eq!(items.len(), 4);
        assert_eq!(items[0], Ok(Item::HeartBeat));
        assert_eq!(items[1], Ok(Item::HeartBeat));
        let Some(Ok(Item::Frame(f))) = items.get(2) else {
            panic!("{items:?}")
        };
        assert_eq!(f.body.as_ref(), b"hi");
        assert_eq!(items[3], Ok(Item::HeartBeat));
    }

    #[test]
    fn resumes_without_rescanning() {
        let mut d = FrameDecoder::default();
        let mut buf = BytesMut::new();
        let limits = Limits::default();
        for &b in b"SEND\ndestination:/q\n" {
            buf.extend_from_slice(&[b]);
            assert!(matches!(
                d.decode(&mut buf, &limits, Version::V1_2),
                Ok(None)
            ));
        }
        assert!(matches!(d.state, State::Head { scanned: 20 }));
        assert_eq!(d.line_ends, [4, 19]);
        assert!(!d.is_idle());
    }
}
