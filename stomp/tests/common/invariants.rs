//! Decoder invariants, shared by the `cargo fuzz` target (`fuzz/fuzz_targets/decode.rs` includes
//! this file with `#[path]`), the corpus replay test and the proptests. Depends only on `stomp`,
//! `bytes` and `tokio-util`.
//!
//! For any input, any version and any limits:
//!
//! 1. no panic;
//! 2. feeding the input whole or split at any point gives the same items and the same error;
//! 3. every byte is accounted for: items consume contiguous ranges from the start, a heart-beat is
//!    exactly `\n` or `\r\n`, a frame's range starts with its command and ends with NUL, right
//!    after its body (zero copy: the body is those very bytes), and what is left is the suffix
//!    not consumed;
//! 4. re-encoding a decoded frame and decoding that gives the same frame (`content-length`
//!    aside, which the encoder rewrites), unless the version cannot represent it, which can only
//!    happen where escaping is incomplete (1.0, 1.1, CONNECT/STOMP/CONNECTED).

#![allow(dead_code)]

use std::ops::Range;

use bytes::BytesMut;
use stomp::{Command, Frame, FrameError, Item, Limits, StompCodec, Version};
use tokio_util::codec::{Decoder, Encoder};

/// What decoding produced.
#[derive(Debug)]
pub(crate) struct Run {
    /// Items with the input range each consumed.
    pub(crate) items: Vec<(Item, Range<usize>)>,
    /// The error that stopped decoding, if any.
    pub(crate) error: Option<FrameError>,
    /// Bytes consumed before stopping (meaningful when `error` is `None`).
    pub(crate) consumed: usize,
    /// Bytes left in the buffer (meaningful when `error` is `None`).
    pub(crate) rest: Vec<u8>,
}

impl Run {
    /// Items and error, comparable across runs.
    pub(crate) fn outcome(&self) -> (Vec<Item>, Option<String>) {
        (
            self.items.iter().map(|(item, _)| item.clone()).collect(),
            self.error.as_ref().map(|e| format!("{e:?}")),
        )
    }

    /// The decoded frames.
    pub(crate) fn frames(&self) -> Vec<Frame> {
        self.items
            .iter()
            .filter_map(|(item, _)| match item {
                Item::Frame(f) => Some(f.clone()),
                Item::HeartBeat => None,
            })
            .collect()
    }
}

/// Version from a selector byte: `b'0'`, `b'1'`, `b'2'` map to 1.0, 1.1, 1.2 (low 7 bits `% 3`).
pub(crate) fn version_from(selector: u8) -> Version {
    match (selector & 0x7f) % 3 {
        0 => Version::V1_0,
        1 => Version::V1_1,
        _ => Version::V1_2,
    }
}

/// Small limits, so fuzz inputs reach them.
pub(crate) fn small_limits() -> Limits {
    Limits {
        max_head_bytes: 256,
        max_headers: 8,
        max_body_bytes: 512,
    }
}

/// Limits large enough for anything a test builds.
pub(crate) fn huge_limits() -> Limits {
    Limits {
        max_head_bytes: 1 << 30,
        max_headers: 1 << 20,
        max_body_bytes: 1 << 30,
    }
}

/// Decodes `input` fed in pieces cut at `cuts` (any order, clamped), then signals end of stream
/// if `eof`.
pub(crate) fn run(
    input: &[u8],
    cuts: &[usize],
    version: Version,
    limits: &Limits,
    eof: bool,
) -> Run {
    let mut codec = StompCodec::new(limits.clone());
    codec.set_version(version);
    let mut cuts: Vec<usize> = cuts.iter().map(|&c| c.min(input.len())).collect();
    cuts.push(input.len());
    cuts.sort_unstable();
    let mut buf = BytesMut::new();
    let mut out = Run {
        items: Vec::new(),
        error: None,
        consumed: 0,
        rest: Vec::new(),
    };
    let mut fed = 0;
    for cut in cuts {
        buf.extend_from_slice(input.get(fed..cut).unwrap_or_default());
        fed = cut;
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(item)) => out.push(item, fed - buf.len()),
                Ok(None) => break,
                Err(e) => {
                    out.error = Some(e);
                    return out;
                }
            }
        }
    }
    if eof {
        loop {
            match codec.decode_eof(&mut buf) {
                Ok(Some(item)) => out.push(item, fed - buf.len()),
                Ok(None) => break,
                Err(e) => {
                    out.error = Some(e);
                    return out;
                }
            }
        }
    }
    out.consumed = fed - buf.len();
    out.rest = buf.to_vec();
    out
}

impl Run {
    fn push(&mut self, item: Item, end: usize) {
        let start = self.items.last().map_or(0, |(_, r)| r.end);
        self.items.push((item, start..end));
    }
}

/// Drops `content-length` headers, which the encoder rewrites.
pub(crate) fn normalise(frame: &Frame) -> Frame {
    let mut f = frame.clone();
    f.headers.remove("content-length");
    f
}

/// Whether the encoder may refuse frames with `command` in `version`.
pub(crate) fn escaping_is_complete(command: Command, version: Version) -> bool {
    version == Version::V1_2
        && !matches!(
            command,
            Command::Connect | Command::Stomp | Command::Connected
        )
}

/// Checks invariant 4 for one decoded frame.
pub(crate) fn check_reencode(frame: &Frame, version: Version) {
    let mut codec = StompCodec::new(huge_limits());
    codec.set_version(version);
    let mut encoded = BytesMut::new();
    match codec.encode(frame, &mut encoded) {
        Ok(()) => {
            let again = run(&encoded, &[], version, &huge_limits(), true);
            assert!(
                again.error.is_none(),
                "re-encoded frame fails: {again:?}\n{encoded:?}"
            );
            assert_eq!(again.rest, b"", "re-encoded frame leaves bytes");
            let frames = again.frames();
            assert_eq!(frames.len(), 1, "{encoded:?}");
            let back = frames.first().map(normalise);
            assert_eq!(back, Some(normalise(frame)), "{encoded:?}");
        }
        Err(FrameError::Unrepresentable { .. }) => {
            assert!(
                !escaping_is_complete(frame.command, version),
                "1.2 must encode every decoded frame: {frame:?}"
            );
            assert!(encoded.is_empty(), "failed encode left bytes");
        }
        Err(e) => panic!("unexpected encode error {e:?} for {frame:?}"),
    }
}

/// Checks invariants 1–4 for `input` split at `split`.
pub(crate) fn check(input: &[u8], split: usize, version: Version, limits: &Limits) {
    let whole = run(input, &[], version, limits, true);
    let parted = run(input, &[split], version, limits, true);
    assert_eq!(
        whole.outcome(),
        parted.outcome(),
        "split at {split} differs"
    );
    if whole.error.is_none() {
        assert_eq!(whole.consumed, parted.consumed);
        assert_eq!(whole.rest, parted.rest);
        assert_eq!(input.get(whole.consumed..), Some(whole.rest.as_slice()));
    }

    let mut next = 0;
    for (item, range) in &whole.items {
        assert_eq!(range.start, next, "ranges must be contiguous");
        assert!(range.end > range.start, "every item consumes bytes");
        next = range.end;
        let bytes = input.get(range.clone()).unwrap_or_default();
        match item {
            Item::HeartBeat => assert!(bytes == b"\n" || bytes == b"\r\n", "{bytes:?}"),
            Item::Frame(frame) => {
                assert!(bytes.starts_with(frame.command.as_str().as_bytes()));
                assert_eq!(bytes.last(), Some(&0), "a frame ends with NUL");
                let body_end = bytes.len() - 1;
                let body = bytes.get(body_end.saturating_sub(frame.body.len())..body_end);
                assert_eq!(
                    body,
                    Some(frame.body.as_ref()),
                    "body is the bytes before the NUL"
                );
                assert!(frame.body.is_empty() || frame.command.allows_body());
                check_reencode(frame, version);
            }
        }
    }
}

/// The fuzz input layout: `[version selector][split selector][STOMP bytes...]`.
/// The version is `(selector & 0x7f) % 3` (so ASCII `0`/`1`/`2` read naturally); bit 7 of the version
/// selector picks small limits; the split is `split_selector / 255` of the way through.
pub(crate) fn check_fuzz_input(data: &[u8]) {
    let (Some(&v), Some(&s)) = (data.first(), data.get(1)) else {
        return;
    };
    let input = data.get(2..).unwrap_or_default();
    let limits = if v & 0x80 != 0 {
        small_limits()
    } else {
        Limits::default()
    };
    let split = usize::from(s) * input.len() / 255;
    check(input, split, version_from(v), &limits);
}
