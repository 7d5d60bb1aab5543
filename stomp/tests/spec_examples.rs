//! The example frames of the STOMP 1.2, 1.1 and 1.0 specifications, decoded at every split point
//! (two parts at every index, and one byte at a time), with LF and CRLF line ends, and re-encoded.

mod common;

use common::{decode_everywhere, decode_one, frame_bytes, with_crlf};
use stomp::frames::{
    Abort, Ack, Begin, Commit, Connect, Connected, Disconnect, Error, Message, Nack, Receipt, Send,
    Subscribe, Unsubscribe,
};
use stomp::{AckMode, Command, Frame, Item, Limits, Version};

/// Decodes the example with LF and with CRLF line ends; both must give the same frame.
fn decode_both(head: &str, body: &[u8], version: Version) -> Frame {
    let lf = decode_one(&frame_bytes(head, body), version);
    let crlf = decode_one(&with_crlf(head, body), version);
    assert_eq!(lf, crlf, "LF and CRLF differ");
    lf
}

fn headers(frame: &Frame) -> Vec<(&str, &str)> {
    frame.headers.iter().collect()
}

// ---- STOMP 1.2 ----

#[test]
fn v12_connect() {
    let f = decode_both(
        "CONNECT\naccept-version:1.2\nhost:stomp.github.org\n\n",
        b"",
        Version::V1_2,
    );
    assert_eq!(f.command, Command::Connect);
    let c = Connect::try_from(&f).expect("valid CONNECT");
    assert_eq!(c.accept_version, Some("1.2"));
    assert_eq!(c.host, Some("stomp.github.org"));
    assert_eq!(c.heart_beat, (0, 0));
    assert_eq!(c.version(&Version::ALL), Some(Version::V1_2));
}

#[test]
fn v12_connect_with_heart_beat_and_credentials() {
    let f = decode_both(
        "CONNECT\naccept-version:1.0,1.1,1.2\nhost:stomp.github.org\nlogin:guest\npasscode:g:u\\est\nheart-beat:0,1000\n\n",
        b"",
        Version::V1_2,
    );
    let c = Connect::try_from(&f).expect("valid CONNECT");
    assert_eq!(c.heart_beat, (0, 1000));
    assert_eq!(c.login, Some("guest"));
    // CONNECT is never escaped: the backslash and colon are literal.
    assert_eq!(c.passcode, Some("g:u\\est"));
}

#[test]
fn v12_connected() {
    let f = decode_both("CONNECTED\nversion:1.2\n\n", b"", Version::V1_2);
    let c = Connected::try_from(&f).expect("valid CONNECTED");
    assert_eq!(c.version, Version::V1_2);
}

#[test]
fn v12_send_with_body_up_to_nul() {
    let f = decode_both(
        "SEND\ndestination:/queue/a\ncontent-type:text/plain\n\n",
        b"hello queue a\n",
        Version::V1_2,
    );
    let s = Send::try_from(&f).expect("valid SEND");
    assert_eq!(s.destination, "/queue/a");
    assert_eq!(s.content_type, Some("text/plain"));
    assert_eq!(s.body.as_ref(), b"hello queue a\n");
}

#[test]
fn v12_send_with_receipt() {
    let f = decode_both(
        "SEND\ndestination:/queue/a\nreceipt:message-12345\n\n",
        b"hello queue a",
        Version::V1_2,
    );
    let s = Send::try_from(&f).expect("valid SEND");
    assert_eq!(s.receipt, Some("message-12345"));
    assert_eq!(s.transaction, None);
}

#[test]
fn v12_send_in_transaction() {
    let f = decode_both(
        "SEND\ndestination:/queue/a\ntransaction:tx1\ncontent-type:text/plain\n\n",
        b"hello queue a",
        Version::V1_2,
    );
    assert_eq!(
        Send::try_from(&f).map(|s| s.transaction).ok(),
        Some(Some("tx1"))
    );
}

#[test]
fn v12_subscribe() {
    let f = decode_both(
        "SUBSCRIBE\nid:0\ndestination:/queue/foo\nack:client\n\n",
        b"",
        Version::V1_2,
    );
    let s = Subscribe::try_from(&f).expect("valid SUBSCRIBE");
    assert_eq!(
        (s.id, s.destination, s.ack),
        ("0", "/queue/foo", AckMode::Client)
    );
}

#[test]
fn v12_unsubscribe() {
    let f = decode_both("UNSUBSCRIBE\nid:0\n\n", b"", Version::V1_2);
    assert_eq!(Unsubscribe::try_from(&f).map(|u| u.id).ok(), Some("0"));
}

#[test]
fn v12_ack_and_nack() {
    let f = decode_both("ACK\nid:12345\ntransaction:tx1\n\n", b"", Version::V1_2);
    let a = Ack::parse(&f, Version::V1_2).expect("valid ACK");
    assert_eq!((a.id, a.transaction), ("12345", Some("tx1")));
    let f = decode_both("NACK\nid:12345\ntransaction:tx1\n\n", b"", Version::V1_2);
    let n = Nack::parse(&f, Version::V1_2).expect("valid NACK");
    assert_eq!((n.id, n.transaction), ("12345", Some("tx1")));
}

#[test]
fn v12_transactions() {
    let f = decode_both("BEGIN\ntransaction:tx1\n\n", b"", Version::V1_2);
    assert_eq!(Begin::try_from(&f).map(|b| b.transaction).ok(), Some("tx1"));
    let f = decode_both("COMMIT\ntransaction:tx1\n\n", b"", Version::V1_2);
    assert_eq!(
        Commit::try_from(&f).map(|b| b.transaction).ok(),
        Some("tx1")
    );
    let f = decode_both("ABORT\ntransaction:tx1\n\n", b"", Version::V1_2);
    assert_eq!(Abort::try_from(&f).map(|b| b.transaction).ok(), Some("tx1"));
}

#[test]
fn v12_disconnect_and_receipt() {
    let f = decode_both("DISCONNECT\nreceipt:77\n\n", b"", Version::V1_2);
    assert_eq!(
        Disconnect::try_from(&f).map(|d| d.receipt).ok(),
        Some(Some("77"))
    );
    let f = decode_both("RECEIPT\nreceipt-id:77\n\n", b"", Version::V1_2);
    assert_eq!(Receipt::try_from(&f).map(|r| r.receipt_id).ok(), Some("77"));
}

#[test]
fn v12_message() {
    let f = decode_both(
        "MESSAGE\nsubscription:0\nmessage-id:007\ndestination:/queue/a\ncontent-type:text/plain\n\n",
        b"hello queue a",
        Version::V1_2,
    );
    let m = Message::try_from(&f).expect("valid MESSAGE");
    assert_eq!(m.subscription, Some("0"));
    assert_eq!(m.message_id, "007");
    assert_eq!(m.destination, "/queue/a");
    assert_eq!(m.body.as_ref(), b"hello queue a");
}

#[test]
fn v12_error_with_content_length() {
    let body = b"The message:\n-----\nMESSAGE\ndestined:/queue/a\nreceipt:message-12345\n\nHello queue a!\n-----\nDid not contain a destination header, which is REQUIRED\nfor message propagation.\n";
    let f = decode_both(
        "ERROR\nreceipt-id:message-12345\ncontent-type:text/plain\ncontent-length:170\nmessage:malformed frame received\n\n",
        body,
        Version::V1_2,
    );
    let e = Error::try_from(&f).expect("valid ERROR");
    assert_eq!(e.message, Some("malformed frame received"));
    assert_eq!(e.receipt_id, Some("message-12345"));
    assert_eq!(e.body.len(), 170);
}

#[test]
fn v12_repeated_header_first_wins() {
    let f = decode_both("MESSAGE\nfoo:World\nfoo:Hello\n\n", b"", Version::V1_2);
    assert_eq!(f.get("foo"), Some("World"));
    assert_eq!(headers(&f), [("foo", "World"), ("foo", "Hello")]);
}

#[test]
fn v12_escapes_in_message_headers() {
    let f = decode_both(
        "MESSAGE\ndestination:/q\nmessage-id:1\nx\\cy:a\\nb\\rc\\\\d\n\n",
        b"",
        Version::V1_2,
    );
    assert_eq!(f.get("x:y"), Some("a\nb\rc\\d"));
}

#[test]
fn v12_body_with_nul_by_content_length() {
    let f = decode_both(
        "SEND\ndestination:/q\ncontent-length:5\n\n",
        b"a\0b\0c",
        Version::V1_2,
    );
    assert_eq!(f.body.as_ref(), b"a\0b\0c");
}

#[test]
fn v12_heart_beats_between_frames() {
    let input = b"\n\r\nSEND\ndestination:/q\n\nx\0\n\nRECEIPT\r\nreceipt-id:1\r\n\r\n\0\r\n";
    let run = decode_everywhere(input, Version::V1_2, &Limits::default());
    assert!(run.error.is_none());
    let kinds: Vec<&str> = run
        .items
        .iter()
        .map(|(i, _)| match i {
            Item::HeartBeat => "hb",
            Item::Frame(f) => f.command.as_str(),
        })
        .collect();
    assert_eq!(kinds, ["hb", "hb", "SEND", "hb", "hb", "RECEIPT", "hb"]);
    assert_eq!(run.rest, b"");
}

// ---- STOMP 1.1 ----

#[test]
fn v11_stomp_frame() {
    let f = decode_both(
        "STOMP\naccept-version:1.1\nhost:stomp.github.org\n\n",
        b"",
        Version::V1_1,
    );
    let c = Connect::try_from(&f).expect("valid STOMP");
    assert_eq!(c.version(&Version::ALL), Some(Version::V1_1));
}

#[test]
fn v11_version_error() {
    let f = decode_both(
        "ERROR\nversion:1.2,2.1\ncontent-type:text/plain\n\n",
        b"Supported protocol versions are 1.2 2.1",
        Version::V1_1,
    );
    assert_eq!(f.get("version"), Some("1.2,2.1"));
}

#[test]
fn v11_ack_with_message_id_and_subscription() {
    let f = decode_both(
        "ACK\nsubscription:0\nmessage-id:007\ntransaction:tx1\n\n",
        b"",
        Version::V1_1,
    );
    let a = Ack::parse(&f, Version::V1_1).expect("valid 1.1 ACK");
    assert_eq!((a.id, a.subscription), ("007", Some("0")));
    assert_eq!(Ack::try_from(&f).map(|a| a.id).ok(), Some("007"));
}

#[test]
fn v11_escapes_without_cr() {
    let f = decode_both(
        "SEND\ndestination:/q\na:b\\nc\\cd\\\\e\n\n",
        b"",
        Version::V1_1,
    );
    assert_eq!(f.get("a"), Some("b\nc:d\\e"));
}

// ---- STOMP 1.0 ----

#[test]
fn v10_connect_and_connected() {
    let f = decode_both(
        "CONNECT\nlogin: <username>\npasscode:<passcode>\n\n",
        b"",
        Version::V1_0,
    );
    let c = Connect::try_from(&f).expect("valid CONNECT");
    assert_eq!(c.accept_version, None);
    assert_eq!(c.version(&Version::ALL), Some(Version::V1_0));
    assert_eq!(c.login, Some(" <username>"));
    let f = decode_both("CONNECTED\nsession: <session-id>\n\n", b"", Version::V1_0);
    let c = Connected::try_from(&f).expect("valid CONNECTED");
    assert_eq!(c.version, Version::V1_0);
    assert_eq!(c.session, Some(" <session-id>"));
}

#[test]
fn v10_send_subscribe_unsubscribe_ack() {
    let f = decode_both(
        "SEND\ndestination:/queue/a\n\n",
        b"hello queue a\n",
        Version::V1_0,
    );
    assert_eq!(f.body.as_ref(), b"hello queue a\n");
    let f = decode_both(
        "SUBSCRIBE\ndestination:/queue/foo\nack:client\n\n",
        b"",
        Version::V1_0,
    );
    let s = Subscribe::parse(&f, Version::V1_0).expect("1.0 SUBSCRIBE without id");
    assert_eq!(s.id, "/queue/foo");
    assert_eq!(s.ack, AckMode::Client);
    let f = decode_both("UNSUBSCRIBE\ndestination:/queue/a\n\n", b"", Version::V1_0);
    assert_eq!(
        Unsubscribe::parse(&f, Version::V1_0).map(|u| u.id).ok(),
        Some("/queue/a")
    );
    let f = decode_both(
        "ACK\nmessage-id:<message-identifier>\n\n",
        b"",
        Version::V1_0,
    );
    assert_eq!(
        Ack::parse(&f, Version::V1_0).map(|a| a.id).ok(),
        Some("<message-identifier>")
    );
}

#[test]
fn v10_no_unescaping() {
    let f = decode_both("SEND\ndestination:/q\na:b\\tc\\nd\n\n", b"", Version::V1_0);
    assert_eq!(f.get("a"), Some("b\\tc\\nd"));
}

#[test]
fn v10_message_and_error() {
    let f = decode_both(
        "MESSAGE\ndestination:/queue/a\nmessage-id:<message-identifier>\n\n",
        b"hello queue a",
        Version::V1_0,
    );
    assert_eq!(
        Message::try_from(&f).map(|m| m.subscription).ok(),
        Some(None)
    );
    let f = decode_both(
        "ERROR\nmessage:malformed packet received\n\n",
        b"The message:\n-----\nMESSAGE\ndestined:/queue/a\n\nHello queue a!\n-----\nDid not contain a destination header, which is required\nfor message propagation.\n",
        Version::V1_0,
    );
    assert_eq!(f.get("message"), Some("malformed packet received"));
}
