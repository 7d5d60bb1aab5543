//! The data model: protocol versions, commands, frames and the items of a STOMP byte stream.
//!
//! A [`Frame`] is deliberately dumb: a command, an ordered list of already *unescaped* headers and
//! the body as [`Bytes`]. It does not know which version it was read with; escaping is a property
//! of the wire, handled by the decoder and the encoder, which are told the negotiated version.
//! Checking that a frame carries the headers its command requires is the job of the typed views
//! in [`frames`](crate::frames).

use std::fmt;
use std::str::FromStr;

use bytes::Bytes;

use crate::error::{FrameError, excerpt};
use crate::headers::Headers;

/// A STOMP protocol version. Ordered: `V1_0 < V1_1 < V1_2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Version {
    /// STOMP 1.0: no header escaping, no NACK, no STOMP command, no heart-beats.
    V1_0,
    /// STOMP 1.1: escapes `\n`, `\c`, `\\`; heart-beats; NACK; the STOMP command.
    V1_1,
    /// STOMP 1.2: adds the `\r` escape, CRLF line ends, ACK by `id`.
    V1_2,
}

impl Version {
    /// Every version, oldest first.
    pub const ALL: [Version; 3] = [Version::V1_0, Version::V1_1, Version::V1_2];

    /// The version as written in `accept-version` and `version` headers: `"1.0"`, `"1.1"`, `"1.2"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Version::V1_0 => "1.0",
            Version::V1_1 => "1.1",
            Version::V1_2 => "1.2",
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Version {
    type Err = FrameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "1.0" => Ok(Version::V1_0),
            "1.1" => Ok(Version::V1_1),
            "1.2" => Ok(Version::V1_2),
            _ => Err(FrameError::UnknownVersion {
                value: excerpt(s.as_bytes()),
            }),
        }
    }
}

/// A STOMP command: the first line of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    /// Client: open a session.
    Connect,
    /// Client: open a session (1.1+ alias of CONNECT, distinguishable from HTTP).
    Stomp,
    /// Client: send a message.
    Send,
    /// Client: subscribe to a destination.
    Subscribe,
    /// Client: end a subscription.
    Unsubscribe,
    /// Client: acknowledge a message.
    Ack,
    /// Client: refuse a message (1.1+).
    Nack,
    /// Client: start a transaction.
    Begin,
    /// Client: commit a transaction.
    Commit,
    /// Client: roll back a transaction.
    Abort,
    /// Client: close the session.
    Disconnect,
    /// Server: the session is open.
    Connected,
    /// Server: a message for a subscription.
    Message,
    /// Server: a receipt for a client frame that asked for one.
    Receipt,
    /// Server: something went wrong; the server closes the connection afterwards.
    Error,
}

impl Command {
    /// Every command, client commands first.
    pub const ALL: [Command; 15] = [
        Command::Connect,
        Command::Stomp,
        Command::Send,
        Command::Subscribe,
        Command::Unsubscribe,
        Command::Ack,
        Command::Nack,
        Command::Begin,
        Command::Commit,
        Command::Abort,
        Command::Disconnect,
        Command::Connected,
        Command::Message,
        Command::Receipt,
        Command::Error,
    ];

    /// The command as written on the wire, e.g. `"SEND"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Command::Connect => "CONNECT",
            Command::Stomp => "STOMP",
            Command::Send => "SEND",
            Command::Subscribe => "SUBSCRIBE",
            Command::Unsubscribe => "UNSUBSCRIBE",
            Command::Ack => "ACK",
            Command::Nack => "NACK",
            Command::Begin => "BEGIN",
            Command::Commit => "COMMIT",
            Command::Abort => "ABORT",
            Command::Disconnect => "DISCONNECT",
            Command::Connected => "CONNECTED",
            Command::Message => "MESSAGE",
            Command::Receipt => "RECEIPT",
            Command::Error => "ERROR",
        }
    }

    /// Parses a command line (without its EOL). Commands are case-sensitive.
    pub fn from_bytes(line: &[u8]) -> Option<Command> {
        Some(match line {
            b"CONNECT" => Command::Connect,
            b"STOMP" => Command::Stomp,
            b"SEND" => Command::Send,
            b"SUBSCRIBE" => Command::Subscribe,
            b"UNSUBSCRIBE" => Command::Unsubscribe,
            b"ACK" => Command::Ack,
            b"NACK" => Command::Nack,
            b"BEGIN" => Command::Begin,
            b"COMMIT" => Command::Commit,
            b"ABORT" => Command::Abort,
            b"DISCONNECT" => Command::Disconnect,
            b"CONNECTED" => Command::Connected,
            b"MESSAGE" => Command::Message,
            b"RECEIPT" => Command::Receipt,
            b"ERROR" => Command::Error,
            _ => return None,
        })
    }

    /// A command clients send.
    pub const fn is_client(self) -> bool {
        !self.is_server()
    }

    /// A command servers send (CONNECTED, MESSAGE, RECEIPT, ERROR).
    pub const fn is_server(self) -> bool {
        matches!(
            self,
            Command::Connected | Command::Message | Command::Receipt | Command::Error
        )
    }

    /// Only SEND, MESSAGE and ERROR frames may have a body; the others "MUST NOT".
    pub const fn allows_body(self) -> bool {
        matches!(self, Command::Send | Command::Message | Command::Error)
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Command {
    type Err = FrameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Command::from_bytes(s.as_bytes())
            .ok_or_else(|| FrameError::UnknownCommand(excerpt(s.as_bytes())))
    }
}

/// One STOMP frame: command, headers (unescaped, in wire order) and body.
///
/// ```
/// use stomp::{Command, Frame};
/// let f = Frame::new(Command::Send)
///     .header("destination", "/queue/a")
///     .header("destination", "/queue/b")
///     .with_body("hello");
/// assert_eq!(f.get("destination"), Some("/queue/a")); // the first occurrence wins
/// assert_eq!(f.headers.len(), 2);                       // but all are kept
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The command line.
    pub command: Command,
    /// The headers, in order, repeated ones included.
    pub headers: Headers,
    /// The body (empty if none). Decoded bodies share the input buffer's memory.
    pub body: Bytes,
}

impl Frame {
    /// A frame with no headers and no body.
    pub fn new(command: Command) -> Self {
        Frame {
            command,
            headers: Headers::new(),
            body: Bytes::new(),
        }
    }

    /// Builder: appends a header (repeated names are kept; the first one is what [`get`](Self::get) sees).
    #[must_use]
    pub fn header(mut self, name: impl AsRef<str>, value: impl AsRef<str>) -> Self {
        self.headers.push(name, value);
        self
    }

    /// Builder: sets the body.
    #[must_use]
    pub fn with_body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    /// The first value of the header `name` (names are case-sensitive, as in the spec).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.headers.get(name)
    }
}

/// What a STOMP byte stream yields: frames, and the bare end-of-lines between them, which are
/// heart-beats (1.1+) or harmless padding (1.0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// A complete frame.
    Frame(Frame),
    /// One EOL (`\n` or `\r\n`) outside a frame.
    HeartBeat,
}

impl From<Frame> for Item {
    fn from(frame: Frame) -> Self {
        Item::Frame(frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_round_trips_and_classifies() {
        for c in Command::ALL {
            assert_eq!(Command::from_bytes(c.as_str().as_bytes()), Some(c));
            assert_eq!(c.as_str().parse::<Command>().ok(), Some(c));
            assert_ne!(c.is_client(), c.is_server());
        }
        assert_eq!(Command::from_bytes(b"send"), None);
        assert!(matches!(
            "send".parse::<Command>(),
            Err(FrameError::UnknownCommand(_))
        ));
        assert_eq!(Command::ALL.iter().filter(|c| c.is_server()).count(), 4);
    }

    #[test]
    fn version_parses_displays_and_orders() {
        for v in Version::ALL {
            assert_eq!(v.to_string().parse::<Version>().ok(), Some(v));
        }
        assert!(Version::V1_0 < Version::V1_1 && Version::V1_1 < Version::V1_2);
        assert!(matches!(
            "1.3".parse::<Version>(),
            Err(FrameError::UnknownVersion { .. })
        ));
    }
}
