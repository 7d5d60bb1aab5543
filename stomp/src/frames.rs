//! Typed, borrowed views of frames that check the headers each command requires.
//!
//! The decoder accepts any well-formed frame; whether a SUBSCRIBE names a destination is a
//! question of meaning, answered here. Each view borrows from the [`Frame`] (no copies) and is
//! built with `TryFrom<&Frame>`, failing with [`FrameError::MissingHeader`] (or
//! [`FrameError::UnexpectedCommand`], or a value error such as
//! [`FrameError::InvalidAckMode`]):
//!
//! ```
//! use stomp::{Command, Frame, frames::Subscribe, AckMode};
//! let f = Frame::new(Command::Subscribe).header("destination", "/topic/a").header("id", "0");
//! let s = Subscribe::try_from(&f).unwrap();
//! assert_eq!((s.destination, s.id, s.ack), ("/topic/a", "0", AckMode::Auto));
//! ```
//!
//! # Versions
//!
//! Required headers changed between versions. `TryFrom` applies the rules that work for every
//! version where that is possible, and the views that differ also have
//! `parse(frame, version)` with the exact rules of one version:
//!
//! | view | `TryFrom` | 1.0 | 1.1 | 1.2 |
//! |------|-----------|-----|-----|-----|
//! | [`Subscribe`] | `destination`, `id` | `id` optional: defaults to the destination | both | both |
//! | [`Unsubscribe`] | `id` | `id`, else `destination` | `id` | `id` |
//! | [`Ack`]/[`Nack`] | `id`, else `message-id` | `message-id` | `message-id` + `subscription` | `id` |
//!
//! CONNECT without `accept-version` means a 1.0 client; STOMP (a 1.1+ command) must carry
//! `accept-version`. `host` is required by 1.1/1.2 but is optional here because real clients omit it.

use bytes::Bytes;

use std::fmt;
use std::str::FromStr;

use crate::error::{FrameError, excerpt};
use crate::frame::{Command, Frame, Version};
use crate::heartbeat;

/// Acknowledgement mode of a subscription (`ack` header of SUBSCRIBE).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum AckMode {
    /// Messages count as acknowledged when sent (the default).
    #[default]
    Auto,
    /// ACK acknowledges the message and all earlier ones of the subscription.
    Client,
    /// ACK acknowledges just that message (1.1+).
    ClientIndividual,
}

impl AckMode {
    /// `"auto"`, `"client"` or `"client-individual"`; anything else is `None`.
    pub fn parse(value: &str) -> Option<AckMode> {
        match value {
            "auto" => Some(AckMode::Auto),
            "client" => Some(AckMode::Client),
            "client-individual" => Some(AckMode::ClientIndividual),
            _ => None,
        }
    }

    /// The header value.
    pub const fn as_str(self) -> &'static str {
        match self {
            AckMode::Auto => "auto",
            AckMode::Client => "client",
            AckMode::ClientIndividual => "client-individual",
        }
    }
}

impl FromStr for AckMode {
    type Err = FrameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        AckMode::parse(s).ok_or_else(|| FrameError::InvalidAckMode {
            value: excerpt(s.as_bytes()),
        })
    }
}

impl fmt::Display for AckMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The highest version both sides speak, from a CONNECT's `accept-version` header (a comma
/// separated list; unknown entries such as `2.0` are ignored, spaces around entries tolerated).
/// A missing header means the client only speaks 1.0. `None`: no version in common.
///
/// ```
/// use stomp::{negotiate_version, Version};
/// assert_eq!(negotiate_version(Some("1.0,1.1,1.2"), &Version::ALL), Some(Version::V1_2));
/// assert_eq!(negotiate_version(Some("1.1,1.2"), &[Version::V1_0, Version::V1_1]), Some(Version::V1_1));
/// assert_eq!(negotiate_version(None, &Version::ALL), Some(Version::V1_0));
/// assert_eq!(negotiate_version(Some("2.0"), &Version::ALL), None);
/// ```
pub fn negotiate_version(accept_version: Option<&str>, supported: &[Version]) -> Option<Version> {
    let offered = |v: &Version| match accept_version {
        None => *v == Version::V1_0,
        Some(list) => list.split(',').any(|entry| entry.trim() == v.as_str()),
    };
    supported.iter().copied().filter(|v| offered(v)).max()
}

fn check_command(frame: &Frame, expected: Command) -> Result<(), FrameError> {
    if frame.command == expected {
        Ok(())
    } else {
        Err(FrameError::UnexpectedCommand {
            expected,
            found: frame.command,
        })
    }
}

fn required<'a>(frame: &'a Frame, header: &'static str) -> Result<&'a str, FrameError> {
    frame.get(header).ok_or(FrameError::MissingHeader {
        command: frame.command,
        header,
    })
}

fn heart_beat(frame: &Frame) -> Result<(u32, u32), FrameError> {
    frame.get("heart-beat").map_or(Ok((0, 0)), heartbeat::parse)
}

/// CONNECT or STOMP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connect<'a> {
    /// Versions the client speaks; `None` means 1.0 only. See [`Connect::version`].
    pub accept_version: Option<&'a str>,
    /// The virtual host (required by 1.1+, optional here).
    pub host: Option<&'a str>,
    /// User name.
    pub login: Option<&'a str>,
    /// Password (or token).
    pub passcode: Option<&'a str>,
    /// The client's `(cx, cy)`; `(0, 0)` when absent. See [`heartbeat`].
    pub heart_beat: (u32, u32),
}

impl Connect<'_> {
    /// The version to speak: [`negotiate_version`] over `supported`.
    pub fn version(&self, supported: &[Version]) -> Option<Version> {
        negotiate_version(self.accept_version, supported)
    }
}

impl<'a> TryFrom<&'a Frame> for Connect<'a> {
    type Error = FrameError;

    fn try_from(frame: &'a Frame) -> Result<Self, FrameError> {
        if !matches!(frame.command, Command::Connect | Command::Stomp) {
            return Err(FrameError::UnexpectedCommand {
                expected: Command::Connect,
                found: frame.command,
            });
        }
        let accept_version = frame.get("accept-version");
        if frame.command == Command::Stomp && accept_version.is_none() {
            return Err(FrameError::MissingHeader {
                command: Command::Stomp,
                header: "accept-version",
            });
        }
        Ok(Connect {
            accept_version,
            host: frame.get("host"),
            login: frame.get("login"),
            passcode: frame.get("passcode"),
            heart_beat: heart_beat(frame)?,
        })
    }
}

/// CONNECTED.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connected<'a> {
    /// The agreed version (`version` header; absent means 1.0).
    pub version: Version,
    /// Session id.
    pub session: Option<&'a str>,
    /// Server name and version.
    pub server: Option<&'a str>,
    /// The server's `(sx, sy)`; `(0, 0)` when absent.
    pub heart_beat: (u32, u32),
}

impl<'a> TryFrom<&'a Frame> for Connected<'a> {
    type Error = FrameError;

    fn try_from(frame: &'a Frame) -> Result<Self, FrameError> {
        check_command(frame, Command::Connected)?;
        Ok(Connected {
            version: frame.get("version").map_or(Ok(Version::V1_0), str::parse)?,
            session: frame.get("session"),
            server: frame.get("server"),
            heart_beat: heart_beat(frame)?,
        })
    }
}

/// SEND.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Send<'a> {
    /// Where to send (required).
    pub destination: &'a str,
    /// The transaction this send belongs to.
    pub transaction: Option<&'a str>,
    /// Receipt requested.
    pub receipt: Option<&'a str>,
    /// MIME type of the body.
    pub content_type: Option<&'a str>,
    /// The body.
    pub body: &'a Bytes,
}

impl<'a> TryFrom<&'a Frame> for Send<'a> {
    type Error = FrameError;

    fn try_from(frame: &'a Frame) -> Result<Self, FrameError> {
        check_command(frame, Command::Send)?;
        Ok(Send {
            destination: required(frame, "destination")?,
            transaction: frame.get("transaction"),
            receipt: frame.get("receipt"),
            content_type: frame.get("content-type"),
            body: &frame.body,
        })
    }
}

/// SUBSCRIBE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subscribe<'a> {
    /// What to subscribe to (required).
    pub destination: &'a str,
    /// Subscription id (required, except in 1.0 via [`Subscribe::parse`]).
    pub id: &'a str,
    /// `ack` header; `Auto` when absent.
    pub ack: AckMode,
    /// Receipt requested.
    pub receipt: Option<&'a str>,
}

impl<'a> Subscribe<'a> {
    /// With `version`'s rules: in 1.0 a missing `id` defaults to the destination (1.0 clients
    /// name subscriptions by destination, e.g. in UNSUBSCRIBE).
    pub fn parse(frame: &'a Frame, version: Version) -> Result<Self, FrameError> {
        check_command(frame, Command::Subscribe)?;
        let destination = required(frame, "destination")?;
        let id = match frame.get("id") {
            Some(id) => id,
            None if version == Version::V1_0 => destination,
            None => return Err(missing(frame, "id")),
        };
        Ok(Subscribe {
            destination,
            id,
            ack: frame.get("ack").map_or(Ok(AckMode::Auto), str::parse)?,
            receipt: frame.get("receipt"),
        })
    }
}

impl<'a> TryFrom<&'a Frame> for Subscribe<'a> {
    type Error = FrameError;

    /// `destination` and `id` required.
    fn try_from(frame: &'a Frame) -> Result<Self, FrameError> {
        Subscribe::parse(frame, Version::V1_2)
    }
}

fn missing(frame: &Frame, header: &'static str) -> FrameError {
    FrameError::MissingHeader {
        command: frame.command,
        header,
    }
}

/// UNSUBSCRIBE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unsubscribe<'a> {
    /// The subscription id (in 1.0 possibly the destination, see [`Unsubscribe::parse`]).
    pub id: &'a str,
    /// Receipt requested.
    pub receipt: Option<&'a str>,
}

impl<'a> Unsubscribe<'a> {
    /// With `version`'s rules: in 1.0 a missing `id` may be replaced by `destination`.
    pub fn parse(frame: &'a Frame, version: Version) -> Result<Self, FrameError> {
        check_command(frame, Command::Unsubscribe)?;
        let id = match (frame.get("id"), version) {
            (Some(id), _) => id,
            (None, Version::V1_0) => frame
                .get("destination")
                .ok_or_else(|| missing(frame, "id"))?,
            (None, _) => return Err(missing(frame, "id")),
        };
        Ok(Unsubscribe {
            id,
            receipt: frame.get("receipt"),
        })
    }
}

impl<'a> TryFrom<&'a Frame> for Unsubscribe<'a> {
    type Error = FrameError;

    /// `id` required.
    fn try_from(frame: &'a Frame) -> Result<Self, FrameError> {
        Unsubscribe::parse(frame, Version::V1_2)
    }
}

/// ACK and NACK share their headers; the two views differ only in the command they accept.
macro_rules! ack_view {
    ($(#[$doc:meta])* $name:ident, $command:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub struct $name<'a> {
            /// The message being (n)acknowledged: the `id` header (1.2: the MESSAGE's `ack`
            /// value) or, for 1.0/1.1, `message-id`.
            pub id: &'a str,
            /// The `subscription` header (required in 1.1).
            pub subscription: Option<&'a str>,
            /// The transaction this belongs to.
            pub transaction: Option<&'a str>,
            /// Receipt requested.
            pub receipt: Option<&'a str>,
        }

        impl<'a> $name<'a> {
            /// With `version`'s rules: 1.2 needs `id`; 1.1 `message-id` and `subscription`;
            /// 1.0 `message-id`.
            pub fn parse(frame: &'a Frame, version: Version) -> Result<Self, FrameError> {
                check_command(frame, $command)?;
                let subscription = frame.get("subscription");
                let id = match version {
                    Version::V1_2 => required(frame, "id")?,
                    Version::V1_1 => {
                        if subscription.is_none() {
                            return Err(missing(frame, "subscription"));
                        }
                        required(frame, "message-id")?
                    }
                    Version::V1_0 => required(frame, "message-id")?,
                };
                Ok($name {
                    id,
                    subscription,
                    transaction: frame.get("transaction"),
                    receipt: frame.get("receipt"),
                })
            }
        }

        impl<'a> TryFrom<&'a Frame> for $name<'a> {
            type Error = FrameError;

            /// Any version's form: `id` (1.2), else `message-id` (1.0/1.1).
            fn try_from(frame: &'a Frame) -> Result<Self, FrameError> {
                check_command(frame, $command)?;
                let id = frame
                    .get("id")
                    .or_else(|| frame.get("message-id"))
                    .ok_or_else(|| missing(frame, "id"))?;
                Ok($name {
                    id,
                    subscription: frame.get("subscription"),
                    transaction: frame.get("transaction"),
                    receipt: frame.get("receipt"),
                })
            }
        }
    };
}

ack_view!(
    /// ACK.
    Ack,
    Command::Ack
);
ack_view!(
    /// NACK (1.1+).
    Nack,
    Command::Nack
);

/// BEGIN, COMMIT and ABORT all just name a transaction.
macro_rules! transaction_view {
    ($(#[$doc:meta])* $name:ident, $command:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub struct $name<'a> {
            /// The transaction id (required).
            pub transaction: &'a str,
            /// Receipt requested.
            pub receipt: Option<&'a str>,
        }

        impl<'a> TryFrom<&'a Frame> for $name<'a> {
            type Error = FrameError;

            fn try_from(frame: &'a Frame) -> Result<Self, FrameError> {
                check_command(frame, $command)?;
                Ok($name {
                    transaction: required(frame, "transaction")?,
                    receipt: frame.get("receipt"),
                })
            }
        }
    };
}

transaction_view!(
    /// BEGIN.
    Begin,
    Command::Begin
);
transaction_view!(
    /// COMMIT.
    Commit,
    Command::Commit
);
transaction_view!(
    /// ABORT.
    Abort,
    Command::Abort
);

/// DISCONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Disconnect<'a> {
    /// Receipt requested (the graceful-shutdown handshake).
    pub receipt: Option<&'a str>,
}

impl<'a> TryFrom<&'a Frame> for Disconnect<'a> {
    type Error = FrameError;

    fn try_from(frame: &'a Frame) -> Result<Self, FrameError> {
        check_command(frame, Command::Disconnect)?;
        Ok(Disconnect {
            receipt: frame.get("receipt"),
        })
    }
}

/// MESSAGE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Message<'a> {
    /// Where the message was sent (required).
    pub destination: &'a str,
    /// Unique message id (required).
    pub message_id: &'a str,
    /// The subscription it is delivered for (required by 1.1+, optional here).
    pub subscription: Option<&'a str>,
    /// The id to put in an ACK/NACK's `id` (1.2 client acknowledgement).
    pub ack: Option<&'a str>,
    /// MIME type of the body.
    pub content_type: Option<&'a str>,
    /// The body.
    pub body: &'a Bytes,
}

impl<'a> TryFrom<&'a Frame> for Message<'a> {
    type Error = FrameError;

    fn try_from(frame: &'a Frame) -> Result<Self, FrameError> {
        check_command(frame, Command::Message)?;
        Ok(Message {
            destination: required(frame, "destination")?,
            message_id: required(frame, "message-id")?,
            subscription: frame.get("subscription"),
            ack: frame.get("ack"),
            content_type: frame.get("content-type"),
            body: &frame.body,
        })
    }
}

/// RECEIPT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receipt<'a> {
    /// The `receipt` value of the frame being confirmed (required).
    pub receipt_id: &'a str,
}

impl<'a> TryFrom<&'a Frame> for Receipt<'a> {
    type Error = FrameError;

    fn try_from(frame: &'a Frame) -> Result<Self, FrameError> {
        check_command(frame, Command::Receipt)?;
        Ok(Receipt {
            receipt_id: required(frame, "receipt-id")?,
        })
    }
}

/// ERROR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Error<'a> {
    /// Short description.
    pub message: Option<&'a str>,
    /// The `receipt` of the frame that caused the error, if it asked for one.
    pub receipt_id: Option<&'a str>,
    /// MIME type of the body.
    pub content_type: Option<&'a str>,
    /// Details.
    pub body: &'a Bytes,
}

impl<'a> TryFrom<&'a Frame> for Error<'a> {
    type Error = FrameError;

    fn try_from(frame: &'a Frame) -> Result<Self, FrameError> {
        check_command(frame, Command::Error)?;
        Ok(Error {
            message: frame.get("message"),
            receipt_id: frame.get("receipt-id"),
            content_type: frame.get("content-type"),
            body: &frame.body,
        })
    }
}
