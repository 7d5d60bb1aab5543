//! [`StompCodec`]: the decoder and encoder behind one `tokio_util::codec` value.
//!
//! One codec serves one connection. It owns the [`Limits`], the negotiated [`Version`] (which
//! decides header escaping in both directions) and the decoder's scan state, so it must not be
//! shared between connections.
//!
//! Until [`StompCodec::set_version`] is called the codec assumes 1.2. That only matters for frames
//! other than CONNECT/STOMP/CONNECTED (which are never escaped), e.g. an ERROR sent in reply to a
//! CONNECT that could not be accepted; 1.2 escaping can carry any header.

use bytes::BytesMut;
use tokio_util::codec::{Decoder, Encoder};

use crate::encoder::{encode_frame, encode_heartbeat};
use crate::error::FrameError;
use crate::frame::{Frame, Item, Version};
use crate::limits::Limits;
use crate::parser::FrameDecoder;

/// STOMP framing for `tokio_util::codec::{Framed, FramedRead, FramedWrite}`.
///
/// ```
/// use bytes::BytesMut;
/// use stomp::{Command, Item, Limits, StompCodec};
/// use tokio_util::codec::Decoder;
///
/// let mut codec = StompCodec::new(Limits::default());
/// let mut buf = BytesMut::from(&b"\nSEND\ndestination:/q\n\nhi\0"[..]);
/// assert_eq!(codec.decode(&mut buf).unwrap(), Some(Item::HeartBeat));
/// let Some(Item::Frame(f)) = codec.decode(&mut buf).unwrap() else { panic!() };
/// assert_eq!((f.command, f.get("destination"), &f.body[..]), (Command::Send, Some("/q"), &b"hi"[..]));
/// ```
#[derive(Debug)]
pub struct StompCodec {
    limits: Limits,
    version: Version,
    decoder: FrameDecoder,
}

impl Default for StompCodec {
    /// [`Limits::default`], 1.2.
    fn default() -> Self {
        StompCodec::new(Limits::default())
    }
}

impl StompCodec {
    /// A codec enforcing `limits` on inbound frames, speaking 1.2 until told otherwise.
    pub fn new(limits: Limits) -> Self {
        StompCodec {
            limits,
            version: Version::V1_2,
            decoder: FrameDecoder::default(),
        }
    }

    /// Switches header escaping (both directions) to the negotiated version. Call it after
    /// CONNECT/CONNECTED, which are never escaped.
    pub fn set_version(&mut self, version: Version) {
        self.version = version;
    }

    /// The version used for escaping.
    pub fn version(&self) -> Version {
        self.version
    }

    /// The inbound limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }
}

impl Decoder for StompCodec {
    type Item = Item;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Item>, FrameError> {
        self.decoder.decode(src, &self.limits, self.version)
    }

    /// At end of stream, leftover bytes are a truncated frame, except for a lone CR (half of a
    /// CRLF heart-beat), which is ignored.
    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Item>, FrameError> {
        match self.decode(src)? {
            Some(item) => Ok(Some(item)),
            None if src.is_empty() && self.decoder.is_idle() => Ok(None),
            None if src.as_ref() == b"\r" && self.decoder.is_idle() => {
                src.clear();
                Ok(None)
            }
            None => Err(FrameError::Truncated),
        }
    }
}

impl Encoder<&Frame> for StompCodec {
    type Error = FrameError;

    fn encode(&mut self, frame: &Frame, dst: &mut BytesMut) -> Result<(), FrameError> {
        encode_frame(frame, self.version, dst)
    }
}

impl Encoder<Frame> for StompCodec {
    type Error = FrameError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), FrameError> {
        encode_frame(&frame, self.version, dst)
    }
}

impl Encoder<Item> for StompCodec {
    type Error = FrameError;

    fn encode(&mut self, item: Item, dst: &mut BytesMut) -> Result<(), FrameError> {
        match item {
            Item::Frame(frame) => encode_frame(&frame, self.version, dst),
            Item::HeartBeat => {
                encode_heartbeat(dst);
                Ok(())
            }
        }
    }
}
