//! Fan-out encoding: one MESSAGE, many subscribers.
//!
//! When a message goes to N subscribers, the N frames differ only in three headers:
//! `subscription`, `message-id` and (for client acknowledgement) `ack`. Everything else, the
//! destination, the content type, the application headers, `content-length` and the body, is the
//! same. [`MessageTemplate`] escapes and serialises that shared part *once*, into one immutable
//! buffer (the "tail"), and each recipient then costs three short header writes plus one `memcpy`
//! of the tail ([`MessageTemplate::encode_to`]), or no copy of the tail at all when the transport
//! can write a `Bytes` chain ([`MessageTemplate::encode_parts`]).
//!
//! The per-recipient headers come first, as in the spec's MESSAGE example, which also means they
//! win over anything in the shared headers for a receiver that reads the first occurrence.

use bytes::{BufMut, Bytes, BytesMut};

use crate::encoder::write_content_length;
use crate::error::FrameError;
use crate::escape::{Escaping, write_header};
use crate::frame::{Command, Version};
use crate::headers::Headers;

/// A MESSAGE with everything but the per-recipient headers already encoded.
///
/// ```
/// use bytes::{Bytes, BytesMut};
/// use stomp::{Headers, MessageTemplate, Version};
///
/// let t = MessageTemplate::new("/topic/a", Some("text/plain"), &Headers::new(),
///                              Bytes::from_static(b"hello"), Version::V1_2);
/// let mut out = BytesMut::new();
/// t.encode_to("sub-0", "m-1", None, &mut out).unwrap();
/// assert_eq!(&out[..], b"MESSAGE\nsubscription:sub-0\nmessage-id:m-1\n\
///     destination:/topic/a\ncontent-type:text/plain\ncontent-length:5\n\nhello\0");
/// ```
#[derive(Debug, Clone)]
pub struct MessageTemplate {
    version: Version,
    esc: Escaping,
    /// Shared headers, blank line, body, NUL; or why the shared headers cannot be encoded.
    tail: Result<Bytes, Unencodable>,
}

/// A deferred [`FrameError::Unrepresentable`] (which is not `Clone`).
#[derive(Debug, Clone)]
struct Unencodable {
    name: String,
    reason: &'static str,
}

/// Headers the template writes itself; copies in `extra` are skipped.
const OWN_HEADERS: [&str; 5] = [
    "destination",
    "subscription",
    "message-id",
    "ack",
    "content-length",
];

impl MessageTemplate {
    /// Serialises the shared part of a MESSAGE for connections speaking `version`.
    ///
    /// `extra` are application headers; copies of `destination`, `subscription`, `message-id`,
    /// `ack`, `content-length`, and of `content-type` when `content_type` is given, are skipped.
    ///
    /// Never fails: if a shared header cannot be written in `version` (e.g. a line feed in a 1.0
    /// value), every [`encode_to`](Self::encode_to) reports it as
    /// [`FrameError::Unrepresentable`]; [`check`](Self::check) reports it up front.
    pub fn new(
        destination: &str,
        content_type: Option<&str>,
        extra: &Headers,
        body: Bytes,
        version: Version,
    ) -> Self {
        let esc = Escaping::for_frame(Command::Message, version);
        let tail = Self::serialise(destination, content_type, extra, &body, esc);
        MessageTemplate { version, esc, tail }
    }

    fn serialise(
        destination: &str,
        content_type: Option<&str>,
        extra: &Headers,
        body: &[u8],
        esc: Escaping,
    ) -> Result<Bytes, Unencodable> {
        let extra_len: usize = extra.iter().map(|(n, v)| n.len() + v.len() + 2).sum();
        let mut tail = BytesMut::with_capacity(
            destination.len() + content_type.map_or(0, str::len) + extra_len + body.len() + 64,
        );
        let mut put = |name: &str, value: &str| {
            write_header(name, value, esc, &mut tail).map_err(|e| match e {
                FrameError::Unrepresentable { name, reason } => Unencodable { name, reason },
                _ => Unencodable {
                    name: name.to_owned(),
                    reason: "it is invalid",
                },
            })
        };
        put("destination", destination)?;
        if let Some(ct) = content_type {
            put("content-type", ct)?;
        }
        for (name, value) in extra {
            let own =
                OWN_HEADERS.contains(&name) || (content_type.is_some() && name == "content-type");
            if !own {
                put(name, value)?;
            }
        }
        write_content_length(body.len(), &mut tail);
        tail.put_u8(b'\n');
        tail.put_slice(body);
        tail.put_u8(0);
        Ok(tail.freeze())
    }

    /// The version this template encodes for.
    pub fn version(&self) -> Version {
        self.version
    }

    /// Whether the shared headers could be encoded (see [`new`](Self::new)).
    pub fn check(&self) -> Result<(), FrameError> {
        match &self.tail {
            Ok(_) => Ok(()),
            Err(u) => Err(FrameError::Unrepresentable {
                name: u.name.clone(),
                reason: u.reason,
            }),
        }
    }

    /// Appends the complete MESSAGE frame for one recipient to `dst`.
    ///
    /// `ack` is the value for the `ack` header (1.2 client acknowledgement), or `None` to omit it.
    /// On error nothing is written.
    pub fn encode_to(
        &self,
        subscription: &str,
        message_id: &str,
        ack: Option<&str>,
        dst: &mut BytesMut,
    ) -> Result<(), FrameError> {
        let tail = self.tail()?;
        let start = dst.len();
        dst.reserve(
            32 + subscription.len() + message_id.len() + ack.map_or(0, str::len) + tail.len(),
        );
        match self.write_head(subscription, message_id, ack, dst) {
            Ok(()) => {
                dst.put_slice(tail);
                Ok(())
            }
            Err(e) => {
                dst.truncate(start);
                Err(e)
            }
        }
    }

    /// Appends only the per-recipient start of the frame to `dst` and returns the shared rest
    /// (a reference-counted clone, no copy); send `dst`'s new bytes followed by the returned
    /// `Bytes`. For large bodies this avoids one body copy per recipient.
    pub fn encode_parts(
        &self,
        subscription: &str,
        message_id: &str,
        ack: Option<&str>,
        dst: &mut BytesMut,
    ) -> Result<Bytes, FrameError> {
        let tail = self.tail()?.clone();
        let start = dst.len();
        if let Err(e) = self.write_head(subscription, message_id, ack, dst) {
            dst.truncate(start);
            return Err(e);
        }
        Ok(tail)
    }

    fn tail(&self) -> Result<&Bytes, FrameError> {
        match &self.tail {
            Ok(tail) => Ok(tail),
            Err(u) => Err(FrameError::Unrepresentable {
                name: u.name.clone(),
                reason: u.reason,
            }),
        }
    }

    fn write_head(
        &self,
        subscription: &str,
        message_id: &str,
        ack: Option<&str>,
        dst: &mut BytesMut,
    ) -> Result<(), FrameError> {
        dst.put_slice(b"MESSAGE\n");
        write_header("subscription", subscription, self.esc, dst)?;
        write_header("message-id", message_id, self.esc, dst)?;
        if let Some(ack) = ack {
            write_header("ack", ack, self.esc, dst)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splices_and_escapes() {
        let extra: Headers = [("x", "a:b"), ("content-length", "1"), ("ack", "no")]
            .into_iter()
            .collect();
        let t = MessageTemplate::new(
            "/q",
            None,
            &extra,
            Bytes::from_static(b"b\0dy"),
            Version::V1_2,
        );
        let mut out = BytesMut::new();
        assert!(t.encode_to("s:1", "m", Some("a"), &mut out).is_ok());
        assert_eq!(
            out.as_ref(),
            b"MESSAGE\nsubscription:s\\c1\nmessage-id:m\nack:a\ndestination:/q\nx:a\\cb\ncontent-length:4\n\nb\0dy\0"
        );
        let mut head = BytesMut::new();
        let tail = t.encode_parts("s:1", "m", Some("a"), &mut head);
        let mut joined = head.clone();
        joined.extend_from_slice(&tail.unwrap_or_default());
        assert_eq!(joined, out);
    }

    #[test]
    fn deferred_and_per_recipient_errors() {
        let t = MessageTemplate::new("/q\n", None, &Headers::new(), Bytes::new(), Version::V1_0);
        assert!(matches!(t.check(), Err(FrameError::Unrepresentable { .. })));
        let mut out = BytesMut::new();
        assert!(t.encode_to("s", "m", None, &mut out).is_err());
        let t = MessageTemplate::new("/q", None, &Headers::new(), Bytes::new(), Version::V1_0);
        assert!(t.check().is_ok());
        assert!(matches!(
            t.encode_to("s\n", "m", None, &mut out),
            Err(FrameError::Unrepresentable { .. })
        ));
        assert!(out.is_empty());
        assert_eq!(t.version(), Version::V1_0);
    }
}
