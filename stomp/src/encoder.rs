//! Encoding: frames to bytes.
//!
//! The encoder writes LF line ends, escapes headers by the rules of the frame's command and the
//! connection's version (see the escaping rules in the crate docs and `escape.rs`), and manages
//! `content-length` itself:
//!
//! - any `content-length` headers in the frame are ignored (they might be stale);
//! - `content-length` is written, last, for every frame with a body, and for every SEND, MESSAGE
//!   and ERROR frame even when the body is empty, so the receiver never has to search for the NUL.
//!
//! Headers the version cannot represent are refused with
//! [`FrameError::Unrepresentable`]; on any error nothing is left in `dst`.
//!
//! For delivering one message to many subscribers see [`MessageTemplate`](crate::MessageTemplate),
//! which does the work shared by all recipients once.

use bytes::{BufMut, BytesMut};

use crate::error::FrameError;
use crate::escape::{Escaping, write_header};
use crate::frame::{Frame, Version};

/// Appends `frame` to `dst`, encoded for a connection speaking `version`.
pub fn encode_frame(frame: &Frame, version: Version, dst: &mut BytesMut) -> Result<(), FrameError> {
    let start = dst.len();
    let result = write_frame(frame, version, dst);
    if result.is_err() {
        dst.truncate(start);
    }
    result
}

fn write_frame(frame: &Frame, version: Version, dst: &mut BytesMut) -> Result<(), FrameError> {
    let command = frame.command;
    if !frame.body.is_empty() && !command.allows_body() {
        return Err(FrameError::BodyNotAllowed { command });
    }
    let esc = Escaping::for_frame(command, version);
    // A good guess: escaping rarely grows a header, and BytesMut grows if it does.
    let head_guess: usize = frame
        .headers
        .iter()
        .map(|(n, v)| n.len() + v.len() + 2)
        .sum();
    dst.reserve(command.as_str().len() + head_guess + frame.body.len() + 40);

    dst.put_slice(command.as_str().as_bytes());
    dst.put_u8(b'\n');
    for (name, value) in &frame.headers {
        if name != "content-length" {
            write_header(name, value, esc, dst)?;
        }
    }
    if !frame.body.is_empty() || command.allows_body() {
        write_content_length(frame.body.len(), dst);
    }
    dst.put_u8(b'\n');
    dst.put_slice(&frame.body);
    dst.put_u8(0);
    Ok(())
}

/// Appends one heart-beat (a bare LF).
pub fn encode_heartbeat(dst: &mut BytesMut) {
    dst.put_u8(b'\n');
}

/// Writes `content-length:<len>\n` without going through `fmt`.
pub(crate) fn write_content_length(len: usize, dst: &mut BytesMut) {
    dst.put_slice(b"content-length:");
    write_decimal(len, dst);
    dst.put_u8(b'\n');
}

fn write_decimal(mut n: usize, dst: &mut BytesMut) {
    let mut digits = [0u8; 20]; // u64::MAX has 20 digits
    let mut i = digits.len();
    loop {
        i -= 1;
        if let Some(d) = digits.get_mut(i) {
            *d = b'0' + (n % 10) as u8;
        }
        n /= 10;
        if n == 0 || i == 0 {
            break;
        }
    }
    dst.put_slice(digits.get(i..).unwrap_or_default());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::Command;

    fn encode(frame: &Frame, version: Version) -> Result<String, FrameError> {
        let mut dst = BytesMut::new();
        encode_frame(frame, version, &mut dst)?;
        Ok(String::from_utf8_lossy(&dst).into_owned())
    }

    #[test]
    fn decimal() {
        for n in [0usize, 7, 10, 99, 12345, usize::MAX] {
            let mut b = BytesMut::new();
            write_decimal(n, &mut b);
            assert_eq!(b.as_ref(), n.to_string().as_bytes());
        }
    }

    #[test]
    fn writes_content_length_and_escapes() {
        let f = Frame::new(Command::Send)
            .header("destination", "/q:1")
            .header("content-length", "999")
            .with_body("hi");
        assert_eq!(
            encode(&f, Version::V1_2).ok().as_deref(),
            Some("SEND\ndestination:/q\\c1\ncontent-length:2\n\nhi\0")
        );
        assert_eq!(
            encode(&f, Version::V1_0).ok().as_deref(),
            Some("SEND\ndestination:/q:1\ncontent-length:2\n\nhi\0")
        );
        let f = Frame::new(Command::Subscribe).header("id", "0");
        assert_eq!(
            encode(&f, Version::V1_2).ok().as_deref(),
            Some("SUBSCRIBE\nid:0\n\n\0")
        );
        let f = Frame::new(Command::Connected).header("server", "a:b");
        assert_eq!(
            encode(&f, Version::V1_2).ok().as_deref(),
            Some("CONNECTED\nserver:a:b\n\n\0")
        );
    }

    #[test]
    fn refuses_and_leaves_nothing() {
        let mut dst = BytesMut::from(&b"keep"[..]);
        let f = Frame::new(Command::Send).header("a", "x\ny");
        assert!(matches!(
            encode_frame(&f, Version::V1_0, &mut dst),
            Err(FrameError::Unrepresentable { .. })
        ));
        let f = Frame::new(Command::Subscribe).with_body("x");
        assert!(matches!(
            encode_frame(&f, Version::V1_2, &mut dst),
            Err(FrameError::BodyNotAllowed { .. })
        ));
        assert_eq!(dst.as_ref(), b"keep");
    }
}
