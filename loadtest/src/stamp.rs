//! What each benchmark message carries: its stream, its sequence number and its intended send time.
//!
//! The stamp travels twice: in headers (`x-stream`, `x-seq`, `x-sent-ns`), which RabbitMQ forwards,
//! and at the start of the body (`stream=<s> seq=<n> sent_ns=<t> ` then `.` padding up to the payload
//! size), which survives any relay that forwards only bodies, such as Instar's bench echo handler.
//! Receivers read the body first and fall back to the headers.
//!
//! `sent_ns` is nanoseconds since the harness's time origin, a monotonic clock read in the same
//! process by senders and receivers, so no wall-clock skew enters the latency.

use bytes::{BufMut, Bytes, BytesMut};
use stomp::Frame;

/// Header names of the stamp.
pub const H_STREAM: &str = "x-stream";
/// Sequence number header.
pub const H_SEQ: &str = "x-seq";
/// Intended send time header.
pub const H_SENT_NS: &str = "x-sent-ns";

/// The identity and intended send time of one benchmark message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Which sender's numbering this is.
    pub stream: u64,
    /// Position in the stream, from 0.
    pub seq: u64,
    /// Intended send time (ns since the time origin).
    pub sent_ns: u64,
}

impl Stamp {
    /// The body: the stamp as text, then `.` up to `payload` bytes (never shorter than the stamp).
    pub fn body(&self, payload: usize) -> Bytes {
        let text = self.text();
        let mut b = BytesMut::with_capacity(payload.max(text.len()));
        b.put_slice(text.as_bytes());
        while b.len() < payload {
            b.put_u8(b'.');
        }
        b.freeze()
    }

    /// Reads a stamp from the start of a body written by [`Stamp::body`].
    pub fn from_body(body: &[u8]) -> Option<Stamp> {
        // The stamp is ASCII and well under 100 bytes; look no further than that.
        let head = &body[..body.len().min(100)];
        let text = match std::str::from_utf8(head) {
            Ok(t) => t,
            Err(e) => std::str::from_utf8(&head[..e.valid_up_to()]).ok()?,
        };
        let mut parts = text.split(' ');
        let stream = field(parts.next()?, "stream=")?;
        let seq = field(parts.next()?, "seq=")?;
        let sent_ns = field(parts.next()?, "sent_ns=")?;
        Some(Stamp {
            stream,
            seq,
            sent_ns,
        })
    }

    /// Reads a stamp from the `x-*` headers of a frame.
    pub fn from_headers(frame: &Frame) -> Option<Stamp> {
        Some(Stamp {
            stream: frame.get(H_STREAM)?.parse().ok()?,
            seq: frame.get(H_SEQ)?.parse().ok()?,
            sent_ns: frame.get(H_SENT_NS)?.parse().ok()?,
        })
    }

    /// The body's stamp, else the headers'.
    pub fn from_frame(frame: &Frame) -> Option<Stamp> {
        Stamp::from_body(&frame.body)
            .or_else(|| Stamp::from_headers(frame))
            .or_else(|| Stamp::from_chat_json(&frame.body))
    }

    /// The stamp text alone (what [`Stamp::body`] starts with).
    pub fn text(&self) -> String {
        format!(
            "stream={} seq={} sent_ns={} ",
            self.stream, self.seq, self.sent_ns
        )
    }

    /// Reads a stamp from the `"message"` string of a chat message JSON (Instar's
    /// `/topic/chat.{id}` broadcasts and history entries carry the text the sender wrote).
    pub fn from_chat_json(body: &[u8]) -> Option<Stamp> {
        const KEY: &[u8] = b"\"message\":\"";
        let at = body.windows(KEY.len()).position(|w| w == KEY)?;
        Stamp::from_body(&body[at + KEY.len()..])
    }

    /// Adds the stamp headers to a frame under construction.
    pub fn add_headers(&self, frame: Frame) -> Frame {
        frame
            .header(H_STREAM, self.stream.to_string())
            .header(H_SEQ, self.seq.to_string())
            .header(H_SENT_NS, self.sent_ns.to_string())
    }
}

fn field(part: &str, prefix: &str) -> Option<u64> {
    part.strip_prefix(prefix)?.parse().ok()
}

#[cfg(test)]
mod chat_tests {
    use super::*;

    #[test]
    fn stamp_inside_chat_json() {
        let st = Stamp {
            stream: 3,
            seq: 41,
            sent_ns: 99,
        };
        let body = format!(
            r#"{{"type":"TEXT","chatRoomId":7,"messageId":5,"senderId":"u","message":"{}run=x ....","attachments":null}}"#,
            st.text()
        );
        assert_eq!(Stamp::from_chat_json(body.as_bytes()), Some(st));
        assert_eq!(Stamp::from_chat_json(br#"{"message":"hello"}"#), None);
        assert_eq!(Stamp::from_chat_json(b"{}"), None);
    }
}
