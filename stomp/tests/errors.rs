//! Every malformed form and every limit, each asserting the exact error variant, decoded at every
//! split point. Limits are also checked to fire *early*: before the rest of the frame arrives.

mod common;

use bytes::BytesMut;
use common::{decode_err, decode_one, frame_bytes, run};
use stomp::frames::{Ack, Begin, Connect, Connected, Send, Subscribe, Unsubscribe};
use stomp::{
    AckMode, Command, Frame, FrameError, Item, Limits, MessageTemplate, StompCodec, Version,
    encode_frame, heartbeat,
};
use tokio_util::codec::Decoder;

const V12: Version = Version::V1_2;

fn default_err(input: &[u8]) -> FrameError {
    decode_err(input, V12, &Limits::default())
}

/// Feeds only `partial` (an incomplete frame) and expects the error already.
fn early_err(partial: &[u8], limits: &Limits) -> FrameError {
    let run = run(partial, &[], V12, limits, false);
    match run.error {
        Some(e) => e,
        None => panic!(
            "no error yet for {:?}: {run:?}",
            String::from_utf8_lossy(partial)
        ),
    }
}

// ---- malformed frames ----

#[test]
fn unknown_command() {
    for input in [
        &b"FOO\n\n\0"[..],
        b"send\n\n\0",
        b"SEND \ndestination:/q\n\n\0",
        b" SEND\n\n\0",
        b"\rSEND\n\n\0",
        b"\0\n\n\0",
        b"SEN\xffD\n\n\0",
    ] {
        assert!(
            matches!(default_err(input), FrameError::UnknownCommand(_)),
            "{input:?}"
        );
    }
    let FrameError::UnknownCommand(quoted) = default_err(b"G\r\rET / HTTP/1.1\n\n\0") else {
        panic!()
    };
    assert!(!quoted.contains('\r'), "quoted input is escaped: {quoted}");
}

#[test]
fn missing_colon() {
    assert!(matches!(
        default_err(b"SEND\ndestination\n\n\0"),
        FrameError::MissingColon { index: 1 }
    ));
    assert!(matches!(
        default_err(b"SEND\ndestination:/q\r\nbad\r\n\r\n\0"),
        FrameError::MissingColon { index: 2 }
    ));
}

#[test]
fn empty_header_name() {
    assert!(matches!(
        default_err(b"SEND\n:x\n\n\0"),
        FrameError::EmptyHeaderName { index: 1 }
    ));
}

#[test]
fn undefined_escapes() {
    for (input, version) in [
        (&b"SEND\ndestination:a\\tb\n\n\0"[..], Version::V1_2),
        (b"SEND\ndestination:a\\rb\n\n\0", Version::V1_1),
        (b"SEND\ndestination:ab\\\n\n\0", Version::V1_2),
        (b"SEND\nde\\st:ab\n\n\0", Version::V1_1),
        (b"MESSAGE\nx:\\\\\\x\n\n\0", Version::V1_2),
    ] {
        assert!(
            matches!(
                decode_err(input, version, &Limits::default()),
                FrameError::InvalidEscape { .. }
            ),
            "{input:?}"
        );
    }
    // Not an error where there is no escaping.
    let f = decode_one(b"SEND\ndestination:a\\tb\n\n\0", Version::V1_0);
    assert_eq!(f.get("destination"), Some("a\\tb"));
    let f = decode_one(b"CONNECT\nlogin:a\\tb\n\n\0", Version::V1_2);
    assert_eq!(f.get("login"), Some("a\\tb"));
}

#[test]
fn invalid_utf8_in_headers() {
    for input in [
        &b"SEND\ndestination:/q\xff\n\n\0"[..],
        b"SEND\nd\xc3:x\n\n\0",
        b"SEND\nx:\xc0\xaf\n\n\0",     // overlong '/'
        b"SEND\nx:\xed\xa0\x80\n\n\0", // surrogate
    ] {
        assert!(
            matches!(default_err(input), FrameError::InvalidUtf8),
            "{input:?}"
        );
    }
    // Bodies are octets: not validated.
    let f = decode_one(b"SEND\ndestination:/q\n\n\xff\xfe\0", V12);
    assert_eq!(f.body.as_ref(), b"\xff\xfe");
}

#[test]
fn invalid_content_length() {
    for value in ["abc", "-1", "", " 5", "5 ", "+5", "0x5", "5.0"] {
        let input = frame_bytes(
            &format!("SEND\ndestination:/q\ncontent-length:{value}\n\n"),
            b"hello",
        );
        assert!(
            matches!(default_err(&input), FrameError::InvalidContentLength { .. }),
            "{value:?}"
        );
    }
}

#[test]
fn content_length_first_wins() {
    let input = frame_bytes(
        "SEND\ndestination:/q\ncontent-length:3\ncontent-length:x\n\n",
        b"a\0b",
    );
    let f = decode_one(&input, V12);
    assert_eq!(f.body.as_ref(), b"a\0b");
}

#[test]
fn missing_nul_after_content_length_body() {
    assert!(matches!(
        default_err(b"SEND\ndestination:/q\ncontent-length:2\n\nabc\0"),
        FrameError::MissingNul
    ));
    assert!(matches!(
        default_err(b"SEND\ndestination:/q\ncontent-length:0\n\nx\0"),
        FrameError::MissingNul
    ));
}

#[test]
fn body_not_allowed() {
    for input in [
        &b"SUBSCRIBE\nid:0\ndestination:/q\n\nx\0"[..],
        b"DISCONNECT\n\n\n\0",
        b"CONNECT\naccept-version:1.2\ncontent-length:1\n\nx\0",
        b"RECEIPT\nreceipt-id:1\n\nbody\0",
    ] {
        assert!(
            matches!(default_err(input), FrameError::BodyNotAllowed { .. }),
            "{input:?}"
        );
    }
    // Detected from content-length alone, before the body arrives.
    assert!(matches!(
        early_err(
            b"BEGIN\ntransaction:t\ncontent-length:10\n\n",
            &Limits::default()
        ),
        FrameError::BodyNotAllowed {
            command: Command::Begin
        }
    ));
    // ... and from the first body byte otherwise.
    assert!(matches!(
        early_err(b"BEGIN\ntransaction:t\n\nx", &Limits::default()),
        FrameError::BodyNotAllowed {
            command: Command::Begin
        }
    ));
    // content-length:0 is fine.
    let f = decode_one(b"DISCONNECT\ncontent-length:0\n\n\0", V12);
    assert!(f.body.is_empty());
}

#[test]
fn truncated_at_end_of_stream() {
    for input in [
        &b"SEND"[..],
        b"SEND\ndestination:/q\n",
        b"SEND\ndestination:/q\n\nhello",
        b"SEND\ndestination:/q\ncontent-length:5\n\nhel",
        b"SEND\ndestination:/q\ncontent-length:5\n\nhello",
    ] {
        let run = run(input, &[], V12, &Limits::default(), true);
        assert!(
            matches!(run.error, Some(FrameError::Truncated)),
            "{input:?}"
        );
    }
    // A lone CR (half a CRLF heart-beat) or nothing at all is a clean end.
    for input in [&b""[..], b"\r", b"\n\r", b"SEND\ndestination:/q\n\n\0\r"] {
        let run = run(input, &[], V12, &Limits::default(), true);
        assert!(run.error.is_none(), "{input:?}");
    }
}

// ---- limits ----

fn limits(head: usize, headers: usize, body: usize) -> Limits {
    Limits {
        max_head_bytes: head,
        max_headers: headers,
        max_body_bytes: body,
    }
}

#[test]
fn head_limit_is_inclusive_and_early() {
    // "SEND\n" + "destination:/q\n" + "\n" = 5 + 15 + 1 = 21 bytes of head.
    let input = b"SEND\ndestination:/q\n\nx\0";
    let ok = run(input, &[], V12, &limits(21, 64, 64), false);
    assert!(ok.error.is_none());
    assert!(matches!(
        decode_err(input, V12, &limits(20, 64, 64)),
        FrameError::HeadTooLong { max: 20 }
    ));
    // CRLF counts too.
    assert!(matches!(
        decode_err(
            b"SEND\r\ndestination:/q\r\n\r\n\0",
            V12,
            &limits(22, 64, 64)
        ),
        FrameError::HeadTooLong { max: 22 }
    ));
    // A head with no line end at all fails as soon as it is one byte over, with no more input.
    assert!(matches!(
        early_err(&[b'A'; 33], &limits(32, 64, 64)),
        FrameError::HeadTooLong { max: 32 }
    ));
    let partial = run(&[b'A'; 32], &[], V12, &limits(32, 64, 64), false);
    assert!(partial.error.is_none());
    // A huge header value is refused without waiting for its end.
    let mut big = b"SEND\ndestination:".to_vec();
    big.extend(std::iter::repeat_n(b'x', 9000));
    assert!(matches!(
        early_err(&big, &Limits::default()),
        FrameError::HeadTooLong { max: 8192 }
    ));
}

#[test]
fn header_count_limit_is_inclusive_and_early() {
    let input = b"SEND\na:1\nb:2\nc:3\n\n\0";
    assert!(
        run(input, &[], V12, &limits(1024, 3, 64), false)
            .error
            .is_none()
    );
    assert!(matches!(
        decode_err(input, V12, &limits(1024, 2, 64)),
        FrameError::TooManyHeaders { max: 2 }
    ));
    assert!(matches!(
        decode_err(b"SEND\na:1\n\n\0", V12, &limits(1024, 0, 64)),
        FrameError::TooManyHeaders { max: 0 }
    ));
    // Fires on the third header line, before the blank line arrives.
    assert!(matches!(
        early_err(b"SEND\na:1\nb:2\nc:3\n", &limits(1024, 2, 64)),
        FrameError::TooManyHeaders { max: 2 }
    ));
    // Repeated names count each time.
    assert!(matches!(
        decode_err(b"SEND\na:1\na:1\na:1\n\n\0", V12, &limits(1024, 2, 64)),
        FrameError::TooManyHeaders { max: 2 }
    ));
}

#[test]
fn body_limit_without_content_length() {
    let input = frame_bytes("SEND\ndestination:/q\n\n", &[b'x'; 16]);
    assert!(
        run(&input, &[], V12, &limits(1024, 8, 16), false)
            .error
            .is_none()
    );
    assert!(matches!(
        decode_err(&input, V12, &limits(1024, 8, 15)),
        FrameError::BodyTooLong { max: 15 }
    ));
    // Fails once the 17th body byte arrives, without waiting for the NUL.
    let mut partial = b"SEND\ndestination:/q\n\n".to_vec();
    partial.extend_from_slice(&[b'x'; 17]);
    assert!(matches!(
        early_err(&partial, &limits(1024, 8, 16)),
        FrameError::BodyTooLong { max: 16 }
    ));
}

#[test]
fn body_limit_with_content_length() {
    let input = frame_bytes("SEND\ndestination:/q\ncontent-length:16\n\n", &[0; 16]);
    assert!(
        run(&input, &[], V12, &limits(1024, 8, 16), false)
            .error
            .is_none()
    );
    assert!(matches!(
        decode_err(&input, V12, &limits(1024, 8, 15)),
        FrameError::ContentLengthTooLarge {
            declared: 16,
            max: 15
        }
    ));
    // Refused as soon as the head is complete: no body byte has arrived.
    assert!(matches!(
        early_err(
            b"SEND\ndestination:/q\ncontent-length:65537\n\n",
            &Limits::default()
        ),
        FrameError::ContentLengthTooLarge {
            declared: 65537,
            max: 65536
        }
    ));
    assert!(matches!(
        early_err(
            b"SEND\ndestination:/q\ncontent-length:99999999999999999999999\n\n",
            &Limits::default()
        ),
        FrameError::ContentLengthTooLarge {
            declared: u64::MAX,
            ..
        }
    ));
}

#[test]
fn limits_default() {
    assert_eq!(Limits::default(), limits(8 * 1024, 64, 64 * 1024));
}

#[test]
fn decoder_reserves_nothing_before_checking() {
    // A declared length over the limit must not make the codec reserve it.
    let mut codec = StompCodec::new(Limits::default());
    let mut buf = BytesMut::from(&b"SEND\ndestination:/q\ncontent-length:1000000000\n\n"[..]);
    let before = buf.capacity();
    assert!(codec.decode(&mut buf).is_err());
    assert_eq!(buf.capacity(), before);
}

// ---- typed views ----

#[test]
fn missing_required_headers() {
    let missing = |f: Frame| -> &'static str {
        let err = match f.command {
            Command::Send => Send::try_from(&f).err(),
            Command::Subscribe => Subscribe::try_from(&f).err(),
            Command::Unsubscribe => Unsubscribe::try_from(&f).err(),
            Command::Ack => Ack::try_from(&f).err(),
            Command::Begin => Begin::try_from(&f).err(),
            _ => None,
        };
        match err {
            Some(FrameError::MissingHeader { header, .. }) => header,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(missing(Frame::new(Command::Send)), "destination");
    assert_eq!(
        missing(Frame::new(Command::Subscribe).header("id", "0")),
        "destination"
    );
    assert_eq!(
        missing(Frame::new(Command::Subscribe).header("destination", "/q")),
        "id"
    );
    assert_eq!(
        missing(Frame::new(Command::Unsubscribe).header("destination", "/q")),
        "id"
    );
    assert_eq!(
        missing(Frame::new(Command::Ack).header("subscription", "0")),
        "id"
    );
    assert_eq!(missing(Frame::new(Command::Begin)), "transaction");

    let ack11 = Frame::new(Command::Ack).header("message-id", "1");
    assert!(matches!(
        Ack::parse(&ack11, Version::V1_1),
        Err(FrameError::MissingHeader {
            header: "subscription",
            ..
        })
    ));
    assert!(matches!(
        Ack::parse(&ack11, Version::V1_2),
        Err(FrameError::MissingHeader { header: "id", .. })
    ));
    assert!(Ack::parse(&ack11, Version::V1_0).is_ok());
    let stomp = Frame::new(Command::Stomp).header("host", "h");
    assert!(matches!(
        Connect::try_from(&stomp),
        Err(FrameError::MissingHeader {
            command: Command::Stomp,
            header: "accept-version"
        })
    ));
}

#[test]
fn wrong_command_and_bad_values() {
    let f = Frame::new(Command::Send).header("destination", "/q");
    assert!(matches!(
        Subscribe::try_from(&f),
        Err(FrameError::UnexpectedCommand {
            expected: Command::Subscribe,
            found: Command::Send
        })
    ));
    let f = Frame::new(Command::Subscribe)
        .header("destination", "/q")
        .header("id", "0")
        .header("ack", "Client");
    assert!(matches!(
        Subscribe::try_from(&f),
        Err(FrameError::InvalidAckMode { .. })
    ));
    assert!(matches!(
        "x".parse::<AckMode>(),
        Err(FrameError::InvalidAckMode { .. })
    ));
    let f = Frame::new(Command::Connect).header("heart-beat", "1000");
    assert!(matches!(
        Connect::try_from(&f),
        Err(FrameError::InvalidHeartBeat { .. })
    ));
    assert!(matches!(
        heartbeat::parse("1, 2"),
        Err(FrameError::InvalidHeartBeat { .. })
    ));
    let f = Frame::new(Command::Connected).header("version", "1.3");
    assert!(matches!(
        Connected::try_from(&f),
        Err(FrameError::UnknownVersion { .. })
    ));
}

// ---- encoder ----

#[test]
fn unrepresentable_headers() {
    let cases = [
        (Frame::new(Command::Send).header("a", "x\ny"), Version::V1_0),
        (Frame::new(Command::Send).header("a:b", "x"), Version::V1_0),
        (Frame::new(Command::Send).header("a", "x\r"), Version::V1_0),
        (Frame::new(Command::Send).header("a", "x\r"), Version::V1_1),
        (Frame::new(Command::Send).header("", "x"), Version::V1_2),
        (
            Frame::new(Command::Connect).header("login", "a\nb"),
            Version::V1_2,
        ),
        (
            Frame::new(Command::Connected).header("a:b", "x"),
            Version::V1_2,
        ),
    ];
    for (frame, version) in cases {
        let mut dst = BytesMut::new();
        assert!(
            matches!(
                encode_frame(&frame, version, &mut dst),
                Err(FrameError::Unrepresentable { .. })
            ),
            "{frame:?} {version}"
        );
        assert!(dst.is_empty());
    }
    let mut dst = BytesMut::new();
    let t = MessageTemplate::new(
        "/q",
        None,
        &stomp::Headers::new(),
        "x".into(),
        Version::V1_1,
    );
    assert!(matches!(
        t.encode_to("sub\r", "1", None, &mut dst),
        Err(FrameError::Unrepresentable { .. })
    ));
    assert!(dst.is_empty());
}

#[test]
fn error_messages_are_single_line_sentences() {
    let errors = [
        default_err(b"FOO\n\n\0"),
        default_err(b"SEND\nx\n\n\0"),
        default_err(b"SEND\nx:\\q\n\n\0"),
        default_err(b"SEND\nx:\xff\n\n\0"),
        default_err(b"SEND\ncontent-length:\n\n\0"),
    ];
    for e in errors {
        let text = e.to_string();
        assert!(!text.contains(['\n', '\r']), "{text}");
        assert!(!text.is_empty());
    }
    assert_eq!(
        FrameError::HeadTooLong { max: 10 }.to_string(),
        "frame command and headers are longer than 10 bytes"
    );
}

#[test]
fn errors_after_good_items_keep_the_good_items() {
    let run = run(
        b"\nSEND\ndestination:/q\n\n\0BAD\n\n\0",
        &[],
        V12,
        &Limits::default(),
        false,
    );
    assert_eq!(run.items.len(), 2);
    assert!(matches!(run.items.first(), Some((Item::HeartBeat, _))));
    assert!(matches!(run.error, Some(FrameError::UnknownCommand(_))));
}
