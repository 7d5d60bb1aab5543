//! Input trickling in one byte at a time must cost linear time: the decoder resumes its scan
//! where it stopped. With a rescanning decoder these cases take O(n²) ≈ 10¹² byte visits and
//! would run for many minutes; a resuming decoder does them in well under a second (debug build).

use std::time::{Duration, Instant};

use bytes::BytesMut;
use stomp::{Item, Limits, StompCodec};
use tokio_util::codec::Decoder;

const N: usize = 1 << 20;

fn limits() -> Limits {
    Limits {
        max_head_bytes: 2 * N,
        max_headers: 64,
        max_body_bytes: 2 * N,
    }
}

/// Feeds `input` one byte at a time; returns the items and the time taken.
fn trickle(input: &[u8]) -> (Vec<Item>, Duration) {
    let mut codec = StompCodec::new(limits());
    let mut buf = BytesMut::with_capacity(input.len());
    let mut items = Vec::new();
    let start = Instant::now();
    for &b in input {
        buf.extend_from_slice(&[b]);
        while let Some(item) = codec.decode(&mut buf).expect("valid input") {
            items.push(item);
        }
    }
    (items, start.elapsed())
}

#[test]
fn long_body_without_content_length() {
    let mut input = b"SEND\ndestination:/q\n\n".to_vec();
    input.extend(std::iter::repeat_n(b'x', N));
    input.push(0);
    let (items, took) = trickle(&input);
    assert!(matches!(items.as_slice(), [Item::Frame(f)] if f.body.len() == N));
    assert!(took < Duration::from_secs(20), "took {took:?}");
}

#[test]
fn long_header_value() {
    let mut input = b"SEND\ndestination:/q\nx:".to_vec();
    input.extend(std::iter::repeat_n(b'y', N));
    input.extend_from_slice(b"\n\n\0");
    let (items, took) = trickle(&input);
    assert!(matches!(items.as_slice(), [Item::Frame(f)] if f.get("x").map(str::len) == Some(N)));
    assert!(took < Duration::from_secs(20), "took {took:?}");
}

#[test]
fn many_short_headers() {
    let mut input = b"SEND\n".to_vec();
    for i in 0..64 {
        input.extend_from_slice(format!("h{i}:{}\n", "v".repeat(N / 64 - 8)).as_bytes());
    }
    input.extend_from_slice(b"\n\0");
    let (items, took) = trickle(&input);
    assert!(matches!(items.as_slice(), [Item::Frame(f)] if f.headers.len() == 64));
    assert!(took < Duration::from_secs(20), "took {took:?}");
}
