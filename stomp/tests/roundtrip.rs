//! Property tests: decode(encode(frame)) == frame for generated frames, in every version, with
//! header names and values full of `:`, `\n`, `\r`, `\` and NUL, and bodies with NUL; plus the
//! decoder invariants on arbitrary (STOMP-flavoured) bytes.

mod common;

use bytes::BytesMut;
use common::{check, huge_limits, normalise, run};
use proptest::prelude::*;
use stomp::{
    Command, Frame, FrameError, Headers, Item, Limits, MessageTemplate, StompCodec, Version,
    heartbeat,
};
use tokio_util::codec::Encoder;

fn tricky_char() -> impl Strategy<Value = char> {
    prop_oneof![
        4 => prop::char::range('a', 'z'),
        1 => Just(':'),
        1 => Just('\n'),
        1 => Just('\r'),
        1 => Just('\\'),
        1 => Just('\0'),
        1 => Just(' '),
        1 => Just('é'),
        1 => Just('€'),
    ]
}

fn tricky_string(min: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(tricky_char(), min..10).prop_map(String::from_iter)
}

fn version() -> impl Strategy<Value = Version> {
    prop::sample::select(Version::ALL.to_vec())
}

fn frame() -> impl Strategy<Value = Frame> {
    let command = prop::sample::select(Command::ALL.to_vec());
    let headers = prop::collection::vec((tricky_string(1), tricky_string(0)), 0..6);
    let body = prop::collection::vec(
        prop_oneof![3 => any::<u8>(), 1 => Just(0u8), 1 => Just(b'\n')],
        0..40,
    );
    (command, headers, body).prop_map(|(command, headers, body)| {
        let mut f = Frame::new(command);
        f.headers = headers.into_iter().collect();
        if command.allows_body() {
            f.body = body.into();
        }
        f
    })
}

/// The spec's rules, stated independently of the encoder: what each version can carry.
fn representable(frame: &Frame, version: Version) -> bool {
    let no_escaping = version == Version::V1_0
        || matches!(
            frame.command,
            Command::Connect | Command::Stomp | Command::Connected
        );
    frame
        .headers
        .iter()
        .filter(|(n, _)| *n != "content-length")
        .all(|(n, v)| {
            if no_escaping {
                !n.contains([':', '\n']) && !v.contains('\n') && !v.ends_with('\r')
            } else if version == Version::V1_1 {
                !v.ends_with('\r')
            } else {
                true
            }
        })
}

fn encode(frame: &Frame, version: Version) -> Result<BytesMut, FrameError> {
    let mut codec = StompCodec::new(Limits::default());
    codec.set_version(version);
    let mut dst = BytesMut::new();
    codec.encode(frame, &mut dst).map(|()| dst)
}

/// Pieces that make random bytes look like STOMP often enough to reach deep states.
const TOKENS: &[&[u8]] = &[
    b"SEND",
    b"MESSAGE",
    b"CONNECT",
    b"SUBSCRIBE",
    b"\n",
    b"\r\n",
    b"\r",
    b"\0",
    b":",
    b"\\",
    b"\\c",
    b"\\r",
    b"\\n",
    b"content-length:",
    b"3",
    b"0",
    b"destination:/q",
    b"x",
    b"\xff",
    b"\xc3\xa9",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn encode_then_decode_is_identity(f in frame(), v in version(), split in any::<prop::sample::Index>()) {
        match encode(&f, v) {
            Ok(bytes) => {
                prop_assert!(representable(&f, v), "encoded an unrepresentable frame");
                let at = split.index(bytes.len() + 1);
                let decoded = run(&bytes, &[at], v, &huge_limits(), true);
                prop_assert!(decoded.error.is_none(), "{:?}", decoded.error);
                prop_assert_eq!(decoded.rest.len(), 0);
                let frames = decoded.frames();
                prop_assert_eq!(frames.len(), 1);
                let back = &frames[0];
                prop_assert_eq!(normalise(back), normalise(&f));
                if let Some(cl) = back.get("content-length") {
                    prop_assert_eq!(cl, back.body.len().to_string());
                }
                prop_assert!(back.body.is_empty() || back.get("content-length").is_some());
            }
            Err(FrameError::Unrepresentable { .. }) => prop_assert!(!representable(&f, v)),
            Err(e) => prop_assert!(false, "unexpected {e:?}"),
        }
    }

    #[test]
    fn streams_of_frames_and_heartbeats(
        frames in prop::collection::vec(frame(), 1..5),
        beats in prop::collection::vec(0usize..3, 5),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
    ) {
        let v = Version::V1_2;
        let mut bytes = BytesMut::new();
        let mut expected = Vec::new();
        for (i, f) in frames.iter().enumerate() {
            // CONNECT/STOMP/CONNECTED are unescaped even in 1.2: skip what cannot be sent.
            let Ok(encoded) = encode(f, v) else { continue };
            for _ in 0..beats[i % beats.len()] {
                bytes.extend_from_slice(b"\r\n");
                expected.push(Item::HeartBeat);
            }
            bytes.extend_from_slice(&encoded);
            expected.push(Item::Frame(normalise(f)));
        }
        let cuts: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
        let decoded = run(&bytes, &cuts, v, &huge_limits(), true);
        prop_assert!(decoded.error.is_none());
        let got: Vec<Item> = decoded.items.into_iter().map(|(i, _)| match i {
            Item::Frame(f) => Item::Frame(normalise(&f)),
            hb => hb,
        }).collect();
        prop_assert_eq!(got, expected);
    }

    #[test]
    fn template_equals_encoder(
        dest in tricky_string(0),
        extra in prop::collection::vec((tricky_string(1), tricky_string(0)), 0..4),
        sub in tricky_string(0),
        id in tricky_string(0),
        ack in prop::option::of(tricky_string(0)),
        body in prop::collection::vec(any::<u8>(), 0..32),
        v in version(),
    ) {
        let extra: Headers = extra.into_iter()
            .filter(|(n, _)| !["destination", "subscription", "message-id", "ack", "content-length"].contains(&n.as_str()))
            .collect();
        let t = MessageTemplate::new(&dest, None, &extra, body.clone().into(), v);
        let mut spliced = BytesMut::new();
        let via_template = t.encode_to(&sub, &id, ack.as_deref(), &mut spliced);
        let mut f = Frame::new(Command::Message)
            .header("subscription", &sub)
            .header("message-id", &id);
        if let Some(a) = &ack {
            f = f.header("ack", a);
        }
        f = f.header("destination", &dest).with_body(body);
        f.headers.extend(extra.iter());
        let via_encoder = encode(&f, v);
        match (via_template, via_encoder) {
            (Ok(()), Ok(bytes)) => prop_assert_eq!(spliced, bytes),
            (Err(FrameError::Unrepresentable { .. }), Err(FrameError::Unrepresentable { .. })) => {
                prop_assert!(spliced.is_empty());
            }
            (a, b) => prop_assert!(false, "template {a:?} vs encoder {b:?}"),
        }
    }

    #[test]
    fn decoder_invariants_on_stomp_like_bytes(
        parts in prop::collection::vec(prop::sample::select(TOKENS), 0..40),
        v in version(),
        small in any::<bool>(),
        split in any::<prop::sample::Index>(),
    ) {
        let input: Vec<u8> = parts.concat();
        let limits = if small {
            Limits { max_head_bytes: 40, max_headers: 3, max_body_bytes: 8 }
        } else {
            Limits::default()
        };
        check(&input, split.index(input.len() + 1), v, &limits);
    }

    #[test]
    fn decoder_invariants_on_arbitrary_bytes(
        input in prop::collection::vec(any::<u8>(), 0..200),
        v in version(),
        split in any::<prop::sample::Index>(),
    ) {
        check(&input, split.index(input.len() + 1), v, &Limits::default());
    }

    #[test]
    fn heartbeat_parse_inverts_format(x in any::<u32>(), y in any::<u32>()) {
        prop_assert_eq!(heartbeat::parse(&heartbeat::format((x, y))).ok(), Some((x, y)));
    }

    #[test]
    fn heartbeat_negotiation_properties(c in any::<(u32, u32)>(), s in any::<(u32, u32)>()) {
        let (send, expect) = heartbeat::negotiate(c, s);
        prop_assert!(send == 0 || (send >= s.0 && send >= c.1));
        prop_assert!(expect == 0 || (expect >= c.0 && expect >= s.1));
        prop_assert_eq!(send == 0, s.0 == 0 || c.1 == 0);
        prop_assert_eq!(expect == 0, c.0 == 0 || s.1 == 0);
    }
}
