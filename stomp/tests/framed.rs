//! `StompCodec` under `tokio_util::codec::Framed` over an in-memory pipe: bytes written in tiny
//! pieces arrive as frames; frames sent through the sink arrive as bytes; set_version switches
//! escaping mid-stream as a gateway does after CONNECTED.

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use stomp::{Command, Frame, FrameError, Item, Limits, StompCodec, Version};
use tokio::io::AsyncWriteExt;
use tokio_util::codec::{Framed, FramedRead};

#[tokio::test]
async fn frames_arrive_whatever_the_chunking() {
    let (mut client, server) = tokio::io::duplex(64);
    let input: &[u8] = b"CONNECT\r\naccept-version:1.2\r\nhost:h\r\n\r\n\0\nSEND\ndestination:/q\ncontent-length:3\n\na\0b\0";
    let writer = tokio::spawn(async move {
        for chunk in input.chunks(3) {
            client.write_all(chunk).await.expect("pipe open");
            tokio::task::yield_now().await;
        }
    });
    let mut reader = FramedRead::new(server, StompCodec::new(Limits::default()));
    let mut items = Vec::new();
    while let Some(item) = reader.next().await {
        items.push(item.expect("valid stream"));
    }
    writer.await.expect("writer finished");
    assert_eq!(items.len(), 3);
    assert!(matches!(&items[0], Item::Frame(f) if f.command == Command::Connect));
    assert_eq!(items[1], Item::HeartBeat);
    let Item::Frame(send) = &items[2] else {
        panic!("{items:?}")
    };
    assert_eq!(send.body, Bytes::from_static(b"a\0b"));
}

#[tokio::test]
async fn truncated_stream_is_an_error() {
    let (mut client, server) = tokio::io::duplex(64);
    client
        .write_all(b"SEND\ndestination:/q\n\nhal")
        .await
        .expect("pipe open");
    drop(client);
    let mut reader = FramedRead::new(server, StompCodec::default());
    assert!(matches!(
        reader.next().await,
        Some(Err(FrameError::Truncated))
    ));
}

#[tokio::test]
async fn sink_encodes_with_the_negotiated_version() {
    let (a, b) = tokio::io::duplex(4096);
    let mut server = Framed::new(a, StompCodec::new(Limits::default()));
    let mut client = Framed::new(b, StompCodec::new(Limits::default()));

    let connected = Frame::new(Command::Connected)
        .header("version", "1.1")
        .header("server", "x:y");
    server.send(&connected).await.expect("sent");
    server.codec_mut().set_version(Version::V1_1);
    server.send(Item::HeartBeat).await.expect("sent");
    let msg = Frame::new(Command::Message)
        .header("destination", "/a:b")
        .header("message-id", "1")
        .with_body("hi");
    server.send(msg.clone()).await.expect("sent");

    let Some(Ok(Item::Frame(got))) = client.next().await else {
        panic!()
    };
    assert_eq!(got.get("server"), Some("x:y")); // CONNECTED is not escaped
    client.codec_mut().set_version(Version::V1_1);
    assert!(matches!(client.next().await, Some(Ok(Item::HeartBeat))));
    let Some(Ok(Item::Frame(got))) = client.next().await else {
        panic!()
    };
    assert_eq!(got.get("destination"), Some("/a:b"));
    assert_eq!(got.get("content-length"), Some("2"));
    assert_eq!(got.body, msg.body);
}
