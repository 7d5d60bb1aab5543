//! Helpers shared by the integration tests.

#![allow(dead_code, unused_imports)]

pub(crate) mod invariants;

use stomp::{Frame, FrameError, Item, Limits, Version};

pub(crate) use invariants::{Run, check, check_reencode, huge_limits, normalise, run};

/// Decodes `input` whole, split in two at every index, and one byte at a time; asserts that all
/// agree (items and error) and returns the whole-input run (without end-of-stream).
pub(crate) fn decode_everywhere(input: &[u8], version: Version, limits: &Limits) -> Run {
    let whole = run(input, &[], version, limits, false);
    for split in 0..=input.len() {
        let parted = run(input, &[split], version, limits, false);
        assert_eq!(whole.outcome(), parted.outcome(), "split at {split}");
        assert_eq!(whole.rest, parted.rest, "split at {split}");
    }
    let all: Vec<usize> = (0..=input.len()).collect();
    let bytewise = run(input, &all, version, limits, false);
    assert_eq!(whole.outcome(), bytewise.outcome(), "one byte at a time");
    assert_eq!(whole.rest, bytewise.rest, "one byte at a time");
    whole
}

/// Decodes `input` (at every split point) expecting exactly one frame and nothing left over;
/// also checks that the frame survives re-encoding.
pub(crate) fn decode_one(input: &[u8], version: Version) -> Frame {
    let run = decode_everywhere(input, version, &Limits::default());
    if let Some(e) = &run.error {
        panic!("{e:?} decoding {:?}", String::from_utf8_lossy(input));
    }
    assert_eq!(run.rest, b"", "bytes left over");
    let items: Vec<Item> = run.items.iter().map(|(i, _)| i.clone()).collect();
    let [Item::Frame(frame)] = items.as_slice() else {
        panic!("expected one frame, got {items:?}");
    };
    check_reencode(frame, version);
    frame.clone()
}

/// Decodes `input` (at every split point) expecting an error; returns it.
pub(crate) fn decode_err(input: &[u8], version: Version, limits: &Limits) -> FrameError {
    let run = decode_everywhere(input, version, limits);
    match run.error {
        Some(e) => e,
        None => panic!(
            "expected an error decoding {:?}, got {run:?}",
            String::from_utf8_lossy(input)
        ),
    }
}

/// The same frame with LF line ends in the head replaced by CRLF (the body is left alone).
pub(crate) fn with_crlf(head: &str, body: &[u8]) -> Vec<u8> {
    let mut out = head.replace('\n', "\r\n").into_bytes();
    out.extend_from_slice(body);
    out.push(0);
    out
}

/// `head` + `body` + NUL.
pub(crate) fn frame_bytes(head: &str, body: &[u8]) -> Vec<u8> {
    let mut out = head.as_bytes().to_vec();
    out.extend_from_slice(body);
    out.push(0);
    out
}
