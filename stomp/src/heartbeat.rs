//! Heart-beat negotiation (STOMP 1.1+), as pure functions.
//!
//! Both sides put a `heart-beat: x,y` header in their first frame, in milliseconds:
//!
//! - **x**: "I can send heart-beats at least this often" (0: I cannot send any);
//! - **y**: "I would like to receive heart-beats this often" (0: I do not want any).
//!
//! So the client sends `cx,cy` in CONNECT and the server answers `sx,sy` in CONNECTED. Each
//! direction is then settled independently (spec, "Heart-beating"):
//!
//! - server → client: 0 (none) if `sx == 0` or `cy == 0`, else every `max(sx, cy)` ms;
//! - client → server: 0 (none) if `cx == 0` or `sy == 0`, else every `max(cx, sy)` ms.
//!
//! `max` is what makes the server's numbers a *minimum*: a client asking for heart-beats every
//! 10 ms from a server that offers 5000 gets them every 5000 ms, and a server that wants to hear
//! from clients every 10000 ms at most never has to track a client offering 100.
//!
//! [`negotiate`] returns both figures from the server's point of view. A server should allow some
//! slack before declaring the client dead (the spec suggests a margin; e.g. 1.5 × the figure).

use crate::error::{FrameError, excerpt};

/// Parses a `heart-beat` header value: two non-negative decimal integers (ASCII digits only, no
/// sign, no spaces) separated by one comma, each fitting in `u32` milliseconds.
///
/// ```
/// assert_eq!(stomp::heartbeat::parse("0,5000").ok(), Some((0, 5000)));
/// assert!(stomp::heartbeat::parse("5000").is_err());
/// ```
pub fn parse(value: &str) -> Result<(u32, u32), FrameError> {
    let invalid = || FrameError::InvalidHeartBeat {
        value: excerpt(value.as_bytes()),
    };
    let (x, y) = value.split_once(',').ok_or_else(invalid)?;
    Ok((
        number(x).ok_or_else(invalid)?,
        number(y).ok_or_else(invalid)?,
    ))
}

/// ASCII digits only (`u32::from_str` would also accept a leading `+`).
fn number(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Formats a `heart-beat` header value, `"x,y"`.
pub fn format((x, y): (u32, u32)) -> String {
    format!("{x},{y}")
}

/// Settles both directions given the client's CONNECT `(cx, cy)` and the server's own CONNECTED
/// `(sx, sy)`. Returns `(server sends every, server expects within)` in milliseconds, 0 meaning
/// never:
///
/// - `.0` = `max(sx, cy)`, or 0 if either is 0: how often the server must send something;
/// - `.1` = `max(cx, sy)`, or 0 if either is 0: how often the client promises to send something.
///
/// ```
/// use stomp::heartbeat::negotiate;
/// // Client can send every 1 s and wants one every 2 s; server sends every 5 s, wants one every 10 s.
/// assert_eq!(negotiate((1000, 2000), (5000, 10_000)), (5000, 10_000));
/// // The client cannot send heart-beats: the server expects none.
/// assert_eq!(negotiate((0, 2000), (5000, 10_000)), (5000, 0));
/// ```
pub fn negotiate(client: (u32, u32), server: (u32, u32)) -> (u32, u32) {
    let (cx, cy) = client;
    let (sx, sy) = server;
    (direction(sx, cy), direction(cx, sy))
}

/// One direction: the sender can do `every`, the receiver wants `wanted`.
fn direction(every: u32, wanted: u32) -> u32 {
    if every == 0 || wanted == 0 {
        0
    } else {
        every.max(wanted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        assert_eq!(parse("0,0").ok(), Some((0, 0)));
        assert_eq!(parse("4294967295,1").ok(), Some((u32::MAX, 1)));
        for bad in [
            "",
            ",",
            "1,",
            ",1",
            "1",
            "1,2,3",
            "-1,0",
            "+1,0",
            " 1,0",
            "1 ,0",
            "1,0 ",
            "a,b",
            "4294967296,0",
            "1;2",
            "1.5,0",
        ] {
            assert!(
                matches!(parse(bad), Err(FrameError::InvalidHeartBeat { .. })),
                "{bad:?}"
            );
        }
        assert_eq!(format((10, 20)), "10,20");
    }

    #[test]
    fn negotiates_each_direction() {
        assert_eq!(negotiate((0, 0), (5000, 5000)), (0, 0));
        assert_eq!(negotiate((100, 100), (0, 0)), (0, 0));
        assert_eq!(negotiate((100, 200), (5000, 6000)), (5000, 6000));
        assert_eq!(negotiate((9000, 8000), (5000, 6000)), (8000, 9000));
        assert_eq!(negotiate((9000, 0), (5000, 6000)), (0, 9000));
    }
}
