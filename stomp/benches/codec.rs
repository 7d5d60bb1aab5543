//! Codec throughput: `cargo bench -p stomp --bench codec`.
//!
//! - `decode/small`: a buffer of 1000 ~100-byte SEND frames, decoded to the end (frames/s);
//! - `decode/large_*`: 64 frames with 16 KiB bodies, by `content-length` and by NUL (bytes/s);
//! - `decode/byte_at_a_time_*`: one frame fed one byte per `decode` call (bytes/s);
//! - `encode/*`: the same frames encoded into a reused `BytesMut`;
//! - `template/*`: per-recipient MESSAGE encoding from a [`MessageTemplate`] (time per splice).
//!
//! Input buffers are built outside the timed routine (`iter_batched`), so decoding figures do not
//! include the copy from a socket into the read buffer.

use std::hint::black_box;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use stomp::{Command, Frame, Headers, Item, Limits, MessageTemplate, StompCodec, Version};
use tokio_util::codec::{Decoder, Encoder};

const SMALL_FRAMES: usize = 1000;
const LARGE_FRAMES: usize = 64;
const LARGE_BODY: usize = 16 * 1024;

fn small_frame() -> Frame {
    Frame::new(Command::Send)
        .header("destination", "/topic/chat.room.42")
        .header("content-type", "application/json")
        .header("receipt", "r-1234")
        .with_body(&b"{\"text\":\"hello, world\"}"[..])
}

fn large_frame() -> Frame {
    Frame::new(Command::Message)
        .header("subscription", "sub-7")
        .header("message-id", "m-123456")
        .header("destination", "/topic/feed")
        .header("content-type", "application/octet-stream")
        .with_body(vec![b'x'; LARGE_BODY])
}

fn encode(frame: &Frame) -> Vec<u8> {
    let mut codec = StompCodec::default();
    let mut dst = BytesMut::new();
    codec.encode(frame, &mut dst).expect("encodable");
    dst.to_vec()
}

/// `frame` without its content-length: the decoder must search for the NUL.
fn encode_nul_delimited(frame: &Frame) -> Vec<u8> {
    let mut bytes = b"MESSAGE\n".to_vec();
    for (n, v) in &frame.headers {
        bytes.extend_from_slice(format!("{n}:{v}\n").as_bytes());
    }
    bytes.push(b'\n');
    bytes.extend_from_slice(&frame.body);
    bytes.push(0);
    bytes
}

fn decode_all(input: BytesMut) -> usize {
    let mut codec = StompCodec::new(Limits::default());
    let mut buf = input;
    let mut n = 0;
    while let Some(item) = codec.decode(&mut buf).expect("valid input") {
        if let Item::Frame(f) = item {
            n += black_box(f).body.len() + 1;
        }
    }
    n
}

fn repeat(one: &[u8], times: usize) -> BytesMut {
    let mut buf = BytesMut::with_capacity(one.len() * times);
    for _ in 0..times {
        buf.extend_from_slice(one);
    }
    buf
}

fn decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode");
    g.measurement_time(Duration::from_secs(5));

    let small = encode(&small_frame());
    println!("small frame: {} bytes", small.len());
    let input = repeat(&small, SMALL_FRAMES);
    g.throughput(Throughput::Elements(SMALL_FRAMES as u64));
    g.bench_function("small", |b| {
        b.iter_batched(|| input.clone(), decode_all, BatchSize::LargeInput)
    });

    let large = encode(&large_frame());
    let input = repeat(&large, LARGE_FRAMES);
    g.throughput(Throughput::Bytes(input.len() as u64));
    g.bench_function("large_content_length", |b| {
        b.iter_batched(|| input.clone(), decode_all, BatchSize::LargeInput)
    });

    let input = repeat(&encode_nul_delimited(&large_frame()), LARGE_FRAMES);
    g.throughput(Throughput::Bytes(input.len() as u64));
    g.bench_function("large_until_nul", |b| {
        b.iter_batched(|| input.clone(), decode_all, BatchSize::LargeInput)
    });

    for (name, bytes) in [
        ("byte_at_a_time_small", small.clone()),
        ("byte_at_a_time_large", encode_nul_delimited(&large_frame())),
    ] {
        g.throughput(Throughput::Bytes(bytes.len() as u64));
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut codec = StompCodec::default();
                let mut buf = BytesMut::with_capacity(bytes.len());
                let mut frames = 0;
                for byte in &bytes {
                    buf.extend_from_slice(std::slice::from_ref(byte));
                    if let Some(item) = codec.decode(&mut buf).expect("valid input") {
                        black_box(item);
                        frames += 1;
                    }
                }
                assert_eq!(frames, 1);
            })
        });
    }
    g.finish();
}

fn encode_bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("encode");
    g.measurement_time(Duration::from_secs(5));
    let small = small_frame();
    let mut dst = BytesMut::with_capacity(256 * SMALL_FRAMES);
    g.throughput(Throughput::Elements(SMALL_FRAMES as u64));
    g.bench_function("small", |b| {
        b.iter(|| {
            dst.clear();
            let mut codec = StompCodec::default();
            for _ in 0..SMALL_FRAMES {
                codec
                    .encode(black_box(&small), &mut dst)
                    .expect("encodable");
            }
            black_box(dst.len())
        })
    });
    let large = large_frame();
    let mut dst = BytesMut::with_capacity((LARGE_BODY + 256) * 16);
    g.throughput(Throughput::Bytes(encode(&large).len() as u64 * 16));
    g.bench_function("large", |b| {
        b.iter(|| {
            dst.clear();
            let mut codec = StompCodec::default();
            for _ in 0..16 {
                codec
                    .encode(black_box(&large), &mut dst)
                    .expect("encodable");
            }
            black_box(dst.len())
        })
    });
    g.finish();
}

fn template(c: &mut Criterion) {
    let mut g = c.benchmark_group("template");
    g.measurement_time(Duration::from_secs(5));
    let extra: Headers = [("x-app", "instar"), ("priority", "4")]
        .into_iter()
        .collect();
    let body =
        Bytes::from_static(b"{\"post\":12345,\"author\":\"alice\",\"text\":\"hello world\"}");
    let t = MessageTemplate::new(
        "/topic/feed.alice",
        Some("application/json"),
        &extra,
        body,
        Version::V1_2,
    );
    let mut dst = BytesMut::with_capacity(4096);
    g.throughput(Throughput::Elements(1));
    g.bench_function("splice_small", |b| {
        b.iter(|| {
            dst.clear();
            t.encode_to(
                black_box("sub-12"),
                black_box("3-1234567"),
                Some(black_box("3-1234567")),
                &mut dst,
            )
            .expect("encodable");
            black_box(dst.len())
        })
    });
    let t = MessageTemplate::new(
        "/topic/feed.alice",
        Some("application/octet-stream"),
        &extra,
        Bytes::from(vec![b'x'; LARGE_BODY]),
        Version::V1_2,
    );
    let mut dst = BytesMut::with_capacity(LARGE_BODY + 512);
    g.bench_function("splice_16k_copy", |b| {
        b.iter(|| {
            dst.clear();
            t.encode_to(black_box("sub-12"), black_box("3-1234567"), None, &mut dst)
                .expect("encodable");
            black_box(dst.len())
        })
    });
    g.bench_function("splice_16k_parts", |b| {
        b.iter(|| {
            dst.clear();
            let tail = t
                .encode_parts(black_box("sub-12"), black_box("3-1234567"), None, &mut dst)
                .expect("encodable");
            black_box((dst.len(), tail))
        })
    });
    g.finish();
}

criterion_group!(benches, decode, encode_bench, template);
criterion_main!(benches);
