//! The per-connection STOMP state machine, with no sockets in it.
//!
//! [`Session::on_frame`] takes one decoded client frame and returns the [`Action`]s the connection driver
//! must carry out, in order: frames to write, subscriptions to open or close, commands to hand to the bus.
//! Everything a peer can get wrong is decided here (state, versions, tokens, required headers, the
//! destination grammar, transactions, ack ids), so it is all testable by feeding frames and looking at
//! the actions, like lapin's connection tests do.
//!
//! Errors follow the STOMP rule: one ERROR frame (with `receipt-id` when the offending frame asked for a
//! receipt, and a readable `message`), then the connection closes. The session is [`State::Closed`]
//! afterwards and ignores further input.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use stomp::{AckMode, Command, Frame, Version, heartbeat};

use crate::auth::{Principal, TokenError, Verifier};
use crate::destination::{self, DestinationError, SendTarget, SubscribeTarget};
use crate::rules::{Destinations, Kind};

/// Settings that shape every session. Shared by all sessions of a gateway.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// The `server` header of CONNECTED.
    pub server_name: String,
    /// The server's heart-beat offer `(cx, cy)` in ms: how often it can send, how often it wants to
    /// receive. Clients asking for faster beats are held to these minimums.
    pub heartbeat: (u32, u32),
    /// Accept sessions without a token (read-only: they may subscribe to topics the policy opens to
    /// anonymous users, and may not SEND).
    pub allow_anonymous: bool,
    /// Subscriptions one session may hold.
    pub max_subscriptions: usize,
    /// Open transactions one session may hold.
    pub max_transactions: usize,
    /// Frames buffered in one transaction.
    pub max_transaction_frames: usize,
    /// The destination rules opening `/topic/**` and `/queue/**` to clients ([`crate::rules`]).
    pub destinations: Arc<Destinations>,
    /// Unacknowledged messages a queue subscription holds when its SUBSCRIBE names no
    /// `prefetch-count`.
    pub queue_prefetch: u16,
    /// Largest `prefetch-count` a queue SUBSCRIBE may ask for.
    pub max_queue_prefetch: u16,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            server_name: format!("Instar/{}", env!("CARGO_PKG_VERSION")),
            heartbeat: (10_000, 10_000),
            allow_anonymous: false,
            max_subscriptions: 64,
            max_transactions: 8,
            max_transaction_frames: 256,
            destinations: Arc::new(Destinations::default()),
            queue_prefetch: 64,
            max_queue_prefetch: 1_000,
        }
    }
}

/// Where a session is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Waiting for CONNECT or STOMP.
    AwaitConnect,
    /// CONNECTED sent.
    Connected,
    /// ERROR sent or DISCONNECT handled; nothing more is read.
    Closed,
}

/// What the driver must do, in order.
#[derive(Debug)]
pub enum Action {
    /// Write this frame to the client now.
    Reply(Frame),
    /// The session is connected: register it, start heart-beats (`send_every`/`expect_within` in ms, 0 =
    /// off) and switch the codec to `version`.
    Connected {
        version: Version,
        send_every: u32,
        expect_within: u32,
    },
    /// Authorise (for topics) and open a subscription; replay the stored messages after
    /// `replay_after` when set (see [`crate::replay`]); then write `receipt` if any.
    Subscribe {
        sub: Arc<SubState>,
        target: SubscribeTarget,
        receipt: Option<String>,
        replay_after: Option<u64>,
        /// What the destination rules say of a topic (`None`: no rule covers it, the
        /// [`TopicPolicy`](crate::destination::TopicPolicy) decides; the application's own topics
        /// are always for it to decide). Patterns and queues were checked already.
        rule: Option<bool>,
        /// Unacknowledged messages a queue subscription may hold.
        prefetch: u16,
    },
    /// Close a subscription.
    Unsubscribe { sub: Arc<SubState> },
    /// Hand a command to the application handlers; once the bus accepted it, write `receipt` if any.
    Submit {
        destination: String,
        headers: Vec<(String, String)>,
        body: Bytes,
        receipt: Option<String>,
    },
    /// Publish a client's message to a topic or a queue the rules let it send to; once the bus
    /// accepted it, write `receipt` if any.
    Publish {
        target: SendTarget,
        message: Published,
        receipt: Option<String>,
    },
    /// Settle delivery `seq` of a queue subscription (and, for `ack:client`, every earlier one).
    /// Topic subscriptions have nothing to settle.
    Settle {
        sub: Arc<SubState>,
        seq: u64,
        how: broker_bridge::Settle,
    },
    /// Close the connection (after writing everything before this action).
    Close,
}

/// A client's message to a topic or queue, as it will be delivered.
#[derive(Debug, Clone)]
pub struct Published {
    /// `/topic/<name>` or `/queue/<name>`.
    pub destination: String,
    pub content_type: Option<String>,
    /// The SEND's own headers that travel with the message.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    /// `persistent:true` on the SEND.
    pub persistent: bool,
}

/// One subscription's state, shared with the local hub that delivers to it.
#[derive(Debug)]
pub struct SubState {
    /// The client's subscription id (`subscription` header of MESSAGE frames).
    pub id: Arc<str>,
    /// A small number unique within the session; message and ack ids are `<index>-<seq>`.
    pub index: u32,
    pub ack: AckMode,
    /// Messages delivered so far; the hub increments it. ACKs may name only ids up to it.
    pub delivered: AtomicU64,
    /// Set while the subscription replays stored messages: the hub then holds live deliveries in
    /// [`SubState::held`] instead of sending them.
    pub replaying: std::sync::atomic::AtomicBool,
    /// Live deliveries held during a replay.
    pub held: parking_lot::Mutex<Option<crate::replay::ReplayBuffer>>,
    /// The newest replayed message id: live messages with an id at or below it were replayed
    /// already (their publish was late) and are dropped. 0 when nothing was replayed.
    pub floor: AtomicU64,
    /// Message ids delivered lately, so a re-published message is not delivered twice.
    pub seen: parking_lot::Mutex<crate::dedup::SeenIds>,
}

impl SubState {
    /// A live subscription.
    pub fn new(id: Arc<str>, index: u32, ack: AckMode) -> Self {
        Self {
            id,
            index,
            ack,
            delivered: AtomicU64::new(0),
            replaying: std::sync::atomic::AtomicBool::new(false),
            held: parking_lot::Mutex::new(None),
            floor: AtomicU64::new(0),
            seen: parking_lot::Mutex::new(crate::dedup::SeenIds::default()),
        }
    }

    /// Starts holding live deliveries (before the subscription is registered with the hub).
    pub fn begin_replay(&self) {
        *self.held.lock() = Some(crate::replay::ReplayBuffer::default());
        self.replaying.store(true, Ordering::Release);
    }

    /// The `message-id` (and, in client ack modes, the `ack` id) of delivery number `seq`.
    pub fn message_id(&self, seq: u64) -> String {
        format!("{}-{}", self.index, seq)
    }
}

/// A transactional operation held until COMMIT.
#[derive(Debug)]
enum TxOp {
    Send {
        destination: String,
        headers: Vec<(String, String)>,
        body: Bytes,
    },
    Publish {
        target: SendTarget,
        message: Published,
    },
    Settle {
        sub: Arc<SubState>,
        seq: u64,
        how: broker_bridge::Settle,
    },
}

/// The state of one STOMP session.
#[derive(Debug)]
pub struct Session {
    id: Arc<str>,
    config: Arc<SessionConfig>,
    verifier: Arc<Verifier>,
    state: State,
    version: Version,
    principal: Option<Principal>,
    subs: HashMap<Arc<str>, Arc<SubState>>,
    next_index: u32,
    transactions: HashMap<String, Vec<TxOp>>,
}

/// Headers a client may not set on an application command: the gateway stamps identity itself.
const RESERVED_HEADERS: &[&str] = &[
    "user-name",
    "principal",
    "session",
    "x-instar-user",
    broker_bridge::COMMAND_KEY_HEADER,
    broker_bridge::ORDER_KEY_HEADER,
];

impl Session {
    /// A new session with a server-chosen id.
    pub fn new(id: Arc<str>, config: Arc<SessionConfig>, verifier: Arc<Verifier>) -> Self {
        Self {
            id,
            config,
            verifier,
            state: State::AwaitConnect,
            version: Version::V1_2,
            principal: None,
            subs: HashMap::new(),
            next_index: 0,
            transactions: HashMap::new(),
        }
    }

    pub fn id(&self) -> &Arc<str> {
        &self.id
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn version(&self) -> Version {
        self.version
    }

    pub fn principal(&self) -> Option<&Principal> {
        self.principal.as_ref()
    }

    /// Every open subscription (for cleanup when the connection ends).
    pub fn subscriptions(&self) -> impl Iterator<Item = &Arc<SubState>> {
        self.subs.values()
    }

    /// An ERROR frame (with `receipt-id` when `receipt` is set), then close.
    pub fn fail(
        &mut self,
        message: &str,
        receipt: Option<&str>,
        detail: Option<&str>,
    ) -> Vec<Action> {
        let mut frame = Frame::new(Command::Error).header("message", message);
        if let Some(r) = receipt {
            frame = frame.header("receipt-id", r);
        }
        if self.state == State::AwaitConnect {
            frame = frame.header("version", "1.0,1.1,1.2");
        }
        self.state = State::Closed;
        if let Some(d) = detail {
            frame = frame
                .header("content-type", "text/plain")
                .with_body(Bytes::copy_from_slice(d.as_bytes()));
        }
        vec![Action::Reply(frame), Action::Close]
    }

    /// Handles one client frame at `now` (seconds since the epoch).
    pub fn on_frame(&mut self, frame: Frame, now: u64) -> Vec<Action> {
        let receipt = frame.get("receipt").map(str::to_owned);
        match self.state {
            State::Closed => Vec::new(),
            State::AwaitConnect => match frame.command {
                Command::Connect | Command::Stomp => self.connect(&frame, now),
                other => self.fail(
                    "not connected",
                    receipt.as_deref(),
                    Some(&format!(
                        "the first frame must be CONNECT or STOMP, not {}",
                        other.as_str()
                    )),
                ),
            },
            State::Connected => match self.connected(frame, receipt.as_deref()) {
                Ok(actions) => actions,
                Err(message) => self.fail(&message, receipt.as_deref(), None),
            },
        }
    }

    /// Ends the session because its token expired.
    pub fn expire(&mut self) -> Vec<Action> {
        self.fail(
            "token has expired",
            None,
            Some("reconnect with a fresh token"),
        )
    }

    fn connect(&mut self, frame: &Frame, now: u64) -> Vec<Action> {
        let Some(version) = stomp::negotiate_version(
            frame.get("accept-version"),
            &[Version::V1_0, Version::V1_1, Version::V1_2],
        ) else {
            return self.fail(
                "supported protocol versions are 1.0, 1.1 and 1.2",
                None,
                None,
            );
        };
        self.version = version;
        let client_hb = match frame.get("heart-beat") {
            Some(h) => match heartbeat::parse(h) {
                Ok(hb) => hb,
                Err(e) => return self.fail(&format!("invalid heart-beat header: {e}"), None, None),
            },
            None => (0, 0),
        };
        let token = frame
            .get("Authorization")
            .or_else(|| frame.get("authorization"))
            .map(|h| self.verifier.verify_bearer(h, now))
            .or_else(|| frame.get("passcode").map(|t| self.verifier.verify(t, now)));
        match token {
            Some(Ok(p)) => self.principal = Some(p),
            Some(Err(e)) => return self.fail(&e.to_string(), None, None),
            None if self.config.allow_anonymous => {}
            None => return self.fail(&TokenError::Missing.to_string(), None, None),
        }
        // Heart-beats: version 1.0 has none.
        let (send_every, expect_within) = if version == Version::V1_0 {
            (0, 0)
        } else {
            heartbeat::negotiate(client_hb, self.config.heartbeat)
        };
        self.state = State::Connected;
        // We answer with our own offer (sx,sy); both sides then compute the same intervals.
        let hb_header = if version == Version::V1_0 {
            "0,0".to_owned()
        } else {
            format!("{},{}", self.config.heartbeat.0, self.config.heartbeat.1)
        };
        let mut connected = Frame::new(Command::Connected)
            .header("version", version.as_str())
            .header("heart-beat", &hb_header)
            .header("session", &self.id)
            .header("server", &self.config.server_name);
        if let Some(p) = &self.principal {
            connected = connected.header("user-name", &p.user);
        }
        vec![
            Action::Connected {
                version,
                send_every,
                expect_within,
            },
            Action::Reply(connected),
        ]
    }

    fn connected(&mut self, frame: Frame, receipt: Option<&str>) -> Result<Vec<Action>, String> {
        let mut actions = Vec::new();
        match frame.command {
            Command::Send => {
                let dest = required(&frame, "destination")?.to_owned();
                let target = destination::parse_send(&dest).map_err(|e| e.to_string())?;
                if self.principal.is_none() {
                    return Err("anonymous sessions may not SEND".into());
                }
                if !matches!(target, SendTarget::App(_)) {
                    return self.publish(target, dest, frame, receipt);
                }
                let headers = forwarded_headers(&frame);
                let body = frame.body;
                if let Some(tx) = frame.headers.get("transaction") {
                    self.hold(
                        tx,
                        TxOp::Send {
                            destination: dest,
                            headers,
                            body,
                        },
                    )?;
                    push_receipt(&mut actions, receipt);
                } else {
                    actions.push(Action::Submit {
                        destination: dest,
                        headers,
                        body,
                        receipt: receipt.map(str::to_owned),
                    });
                }
            }
            Command::Subscribe => {
                let dest = required(&frame, "destination")?;
                let target = destination::parse_subscribe(dest).map_err(|e| e.to_string())?;
                let id: Arc<str> = match frame.get("id") {
                    Some(id) => Arc::from(id),
                    // STOMP 1.0 made the id optional; the destination then names the subscription.
                    None if self.version == Version::V1_0 => Arc::from(dest),
                    None => return Err("SUBSCRIBE requires an 'id' header".into()),
                };
                if self.subs.contains_key(&id) {
                    return Err(format!("subscription id '{id}' is already in use"));
                }
                if self.subs.len() >= self.config.max_subscriptions {
                    return Err(format!(
                        "at most {} subscriptions per session",
                        self.config.max_subscriptions
                    ));
                }
                if matches!(target, SubscribeTarget::UserQueue(_)) && self.principal.is_none() {
                    return Err("anonymous sessions have no user queue".into());
                }
                let rules = &self.config.destinations;
                let principal = self.principal.as_ref();
                let rule = match &target {
                    SubscribeTarget::Topic(t) => rules.may_subscribe(Kind::Topic, t, principal),
                    SubscribeTarget::Pattern(p) => {
                        if rules.may_subscribe(Kind::Topic, p, principal) != Some(true) {
                            return Err(DestinationError::Forbidden(dest.to_owned()).to_string());
                        }
                        Some(true)
                    }
                    SubscribeTarget::Queue(q) => {
                        if rules.may_subscribe(Kind::Queue, q, principal) != Some(true) {
                            return Err(DestinationError::Forbidden(dest.to_owned()).to_string());
                        }
                        Some(true)
                    }
                    SubscribeTarget::UserQueue(_) => None,
                };
                let prefetch = match frame.get("prefetch-count") {
                    None => self.config.queue_prefetch,
                    Some(v) => v
                        .parse::<u16>()
                        .ok()
                        .filter(|n| (1..=self.config.max_queue_prefetch).contains(n))
                        .ok_or_else(|| {
                            format!(
                                "invalid prefetch-count '{v}': 1 to {} is allowed",
                                self.config.max_queue_prefetch
                            )
                        })?,
                };
                let ack = match frame.get("ack") {
                    None => AckMode::Auto,
                    Some(a) => AckMode::parse(a).ok_or_else(|| {
                        format!("invalid ack mode '{a}': use auto, client or client-individual")
                    })?,
                };
                let replay_after = match frame.get(crate::replay::LAST_ID_HEADER) {
                    None => None,
                    Some(_) if self.principal.is_none() => {
                        return Err("anonymous sessions cannot replay missed messages".into());
                    }
                    Some(_) if !matches!(target, SubscribeTarget::Topic(_)) => {
                        return Err(format!(
                            "'{}' applies to topics only",
                            crate::replay::LAST_ID_HEADER
                        ));
                    }
                    Some(v) => Some(crate::replay::parse_id(v).ok_or_else(|| {
                        format!(
                            "invalid '{}' header: a message id (decimal digits) is expected",
                            crate::replay::LAST_ID_HEADER
                        )
                    })?),
                };
                let sub = Arc::new(SubState::new(id.clone(), self.next_index, ack));
                self.next_index = self.next_index.wrapping_add(1);
                self.subs.insert(id, sub.clone());
                actions.push(Action::Subscribe {
                    sub,
                    target,
                    receipt: receipt.map(str::to_owned),
                    replay_after,
                    rule,
                    prefetch,
                });
            }
            Command::Unsubscribe => {
                let id = match frame.get("id") {
                    Some(id) => id,
                    None if self.version == Version::V1_0 => required(&frame, "destination")?,
                    None => return Err("UNSUBSCRIBE requires an 'id' header".into()),
                };
                let sub = self
                    .subs
                    .remove(id)
                    .ok_or_else(|| format!("no subscription with id '{id}'"))?;
                actions.push(Action::Unsubscribe { sub });
                push_receipt(&mut actions, receipt);
            }
            Command::Ack | Command::Nack => {
                let (sub, seq) = self.check_ack(&frame)?;
                // Topic messages are not redelivered, so for them an acknowledgement only has to
                // name a message this session was given; NACK drops it. Queue messages are settled
                // with the queue: a NACK puts the message back (`requeue:false` drops it).
                let how = match frame.command {
                    Command::Ack => broker_bridge::Settle::Ack,
                    _ if frame.get("requeue") == Some("false") => broker_bridge::Settle::Discard,
                    _ => broker_bridge::Settle::Requeue,
                };
                if let Some(tx) = frame.get("transaction") {
                    self.hold(tx, TxOp::Settle { sub, seq, how })?;
                } else {
                    actions.push(Action::Settle { sub, seq, how });
                }
                push_receipt(&mut actions, receipt);
            }
            Command::Begin => {
                let tx = required(&frame, "transaction")?;
                if self.transactions.contains_key(tx) {
                    return Err(format!("transaction '{tx}' already started"));
                }
                if self.transactions.len() >= self.config.max_transactions {
                    return Err(format!(
                        "at most {} open transactions",
                        self.config.max_transactions
                    ));
                }
                self.transactions.insert(tx.to_owned(), Vec::new());
                push_receipt(&mut actions, receipt);
            }
            Command::Commit => {
                let tx = required(&frame, "transaction")?;
                let ops = self
                    .transactions
                    .remove(tx)
                    .ok_or_else(|| format!("unknown transaction '{tx}'"))?;
                for op in ops {
                    actions.push(match op {
                        TxOp::Send {
                            destination,
                            headers,
                            body,
                        } => Action::Submit {
                            destination,
                            headers,
                            body,
                            receipt: None,
                        },
                        TxOp::Publish { target, message } => Action::Publish {
                            target,
                            message,
                            receipt: None,
                        },
                        TxOp::Settle { sub, seq, how } => Action::Settle { sub, seq, how },
                    });
                }
                push_receipt(&mut actions, receipt);
            }
            Command::Abort => {
                let tx = required(&frame, "transaction")?;
                self.transactions
                    .remove(tx)
                    .ok_or_else(|| format!("unknown transaction '{tx}'"))?;
                push_receipt(&mut actions, receipt);
            }
            Command::Disconnect => {
                self.transactions.clear();
                self.state = State::Closed;
                push_receipt(&mut actions, receipt);
                actions.push(Action::Close);
            }
            Command::Connect | Command::Stomp => return Err("already connected".into()),
            other => return Err(format!("{} is a server frame", other.as_str())),
        }
        Ok(actions)
    }

    /// A SEND to a topic or queue: allowed only where a destination rule lets this session send.
    fn publish(
        &mut self,
        target: SendTarget,
        dest: String,
        frame: Frame,
        receipt: Option<&str>,
    ) -> Result<Vec<Action>, String> {
        let (kind, name) = match &target {
            SendTarget::Topic(t) => (Kind::Topic, t),
            SendTarget::Queue(q) => (Kind::Queue, q),
            SendTarget::App(_) => return Err(format!("'{dest}' is not a topic or queue")),
        };
        if !self
            .config
            .destinations
            .may_send(kind, name, self.principal.as_ref())
        {
            return Err(DestinationError::SendForbidden(dest).to_string());
        }
        let message = Published {
            content_type: frame.get("content-type").map(str::to_owned),
            persistent: frame.get("persistent") == Some("true"),
            headers: published_headers(&frame),
            destination: dest,
            body: frame.body.clone(),
        };
        let mut actions = Vec::new();
        if let Some(tx) = frame.get("transaction") {
            self.hold(tx, TxOp::Publish { target, message })?;
            push_receipt(&mut actions, receipt);
        } else {
            actions.push(Action::Publish {
                target,
                message,
                receipt: receipt.map(str::to_owned),
            });
        }
        Ok(actions)
    }

    /// Holds an operation in an open transaction until COMMIT.
    fn hold(&mut self, tx: &str, op: TxOp) -> Result<(), String> {
        let ops = self
            .transactions
            .get_mut(tx)
            .ok_or_else(|| format!("unknown transaction '{tx}'"))?;
        if ops.len() >= self.config.max_transaction_frames {
            return Err("too many frames in one transaction".into());
        }
        ops.push(op);
        Ok(())
    }

    /// An ACK/NACK must name a message delivered to a client-ack subscription of this session;
    /// returns that subscription and the delivery's number.
    fn check_ack(&self, frame: &Frame) -> Result<(Arc<SubState>, u64), String> {
        // 1.2: `id` is the MESSAGE's `ack` header. 1.0/1.1: `message-id` (+ `subscription` in 1.1).
        let id = match self.version {
            Version::V1_2 => required(frame, "id")?,
            _ => required(frame, "message-id")?,
        };
        let bad = || format!("no message '{id}' awaits acknowledgement");
        let (index, seq) = id.split_once('-').ok_or_else(bad)?;
        let index: u32 = index.parse().map_err(|_| bad())?;
        let seq: u64 = seq.parse().map_err(|_| bad())?;
        let sub = self
            .subs
            .values()
            .find(|s| s.index == index)
            .ok_or_else(bad)?;
        if sub.ack == AckMode::Auto || seq == 0 || seq > sub.delivered.load(Ordering::Relaxed) {
            return Err(bad());
        }
        Ok((sub.clone(), seq))
    }
}

fn required<'a>(frame: &'a Frame, name: &str) -> Result<&'a str, String> {
    frame
        .get(name)
        .ok_or_else(|| format!("{} requires a '{name}' header", frame.command.as_str()))
}

fn push_receipt(actions: &mut Vec<Action>, receipt: Option<&str>) {
    if let Some(r) = receipt {
        actions.push(Action::Reply(
            Frame::new(Command::Receipt).header("receipt-id", r),
        ));
    }
}

/// Headers of a SEND that travel with the application command: everything but the STOMP plumbing and
/// identity headers the client must not be able to forge.
fn forwarded_headers(frame: &Frame) -> Vec<(String, String)> {
    frame
        .headers
        .iter()
        .filter(|(k, _)| {
            !matches!(
                *k,
                "destination" | "receipt" | "transaction" | "content-length"
            ) && !RESERVED_HEADERS.contains(k)
        })
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// Headers of a SEND to a topic or queue that travel to subscribers: the client's own headers,
/// without the STOMP plumbing, the headers the MESSAGE frame sets itself, and identity headers.
fn published_headers(frame: &Frame) -> Vec<(String, String)> {
    frame
        .headers
        .iter()
        .filter(|(k, _)| {
            !matches!(
                *k,
                "destination"
                    | "receipt"
                    | "transaction"
                    | "content-length"
                    | "content-type"
                    | "subscription"
                    | "message-id"
                    | "ack"
                    | "redelivered"
            ) && !RESERVED_HEADERS.contains(k)
        })
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Algorithm;

    const NOW: u64 = 1_750_000_000;

    fn session(config: SessionConfig) -> Session {
        Session::new(
            Arc::from("s-1"),
            Arc::new(config),
            Arc::new(Verifier::new(b"k".to_vec())),
        )
    }

    fn token(user: &str) -> String {
        Verifier::new(b"k".to_vec()).sign(Algorithm::Hs256, user, None, NOW, NOW + 60)
    }

    fn connect(s: &mut Session, extra: &[(&str, &str)]) -> Vec<Action> {
        let mut f = Frame::new(Command::Connect)
            .header("Authorization", format!("Bearer {}", token("alice")));
        for (k, v) in extra {
            f = f.header(k, v);
        }
        s.on_frame(f, NOW)
    }

    fn reply(a: &Action) -> &Frame {
        match a {
            Action::Reply(f) => f,
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    #[test]
    fn negotiates_version_and_heartbeats() {
        let mut s = session(SessionConfig::default());
        let actions = connect(
            &mut s,
            &[("accept-version", "1.1,1.2"), ("heart-beat", "25000,5000")],
        );
        match &actions[0] {
            Action::Connected {
                version,
                send_every,
                expect_within,
            } => {
                assert_eq!(*version, Version::V1_2);
                // We send every max(10000, 5000); the client beats every max(25000, 10000).
                assert_eq!((*send_every, *expect_within), (10_000, 25_000));
            }
            other => panic!("{other:?}"),
        }
        let connected = reply(&actions[1]);
        assert_eq!(connected.get("heart-beat"), Some("10000,10000"));
        assert_eq!(connected.get("user-name"), Some("alice"));
        assert_eq!(s.state(), State::Connected);
    }

    #[test]
    fn version_1_0_has_no_heartbeats() {
        let mut s = session(SessionConfig::default());
        let actions = connect(&mut s, &[("heart-beat", "1000,1000")]);
        assert!(matches!(
            actions[0],
            Action::Connected {
                version: Version::V1_0,
                send_every: 0,
                expect_within: 0
            }
        ));
    }

    #[test]
    fn unsupported_version_is_an_error() {
        let mut s = session(SessionConfig::default());
        let actions = connect(&mut s, &[("accept-version", "2.0")]);
        let e = reply(&actions[0]);
        assert_eq!(e.command, Command::Error);
        assert_eq!(e.get("version"), Some("1.0,1.1,1.2"));
        assert!(matches!(actions[1], Action::Close));
        assert_eq!(s.state(), State::Closed);
        // Nothing more is handled.
        assert!(s.on_frame(Frame::new(Command::Disconnect), NOW).is_empty());
    }

    #[test]
    fn invalid_heartbeat_header_is_an_error() {
        let mut s = session(SessionConfig::default());
        let actions = connect(
            &mut s,
            &[("accept-version", "1.2"), ("heart-beat", "ten,0")],
        );
        assert!(
            reply(&actions[0])
                .get("message")
                .unwrap_or("")
                .contains("heart-beat")
        );
    }

    #[test]
    fn subscription_rules() {
        let mut s = session(SessionConfig {
            max_subscriptions: 2,
            ..SessionConfig::default()
        });
        connect(&mut s, &[("accept-version", "1.2")]);
        let sub = |id: &str, dest: &str| {
            Frame::new(Command::Subscribe)
                .header("id", id)
                .header("destination", dest)
        };
        assert!(matches!(
            s.on_frame(sub("a", "/topic/public.x"), NOW)[0],
            Action::Subscribe { .. }
        ));
        // The same id twice is refused.
        let mut s2 = session(SessionConfig::default());
        connect(&mut s2, &[("accept-version", "1.2")]);
        s2.on_frame(sub("a", "/topic/public.x"), NOW);
        let e = s2.on_frame(sub("a", "/topic/public.y"), NOW);
        assert!(
            reply(&e[0])
                .get("message")
                .unwrap_or("")
                .contains("already in use")
        );
        // The cap holds.
        assert!(matches!(
            s.on_frame(sub("b", "/user/queue/notify"), NOW)[0],
            Action::Subscribe { .. }
        ));
        let e = s.on_frame(sub("c", "/topic/public.z"), NOW);
        assert!(
            reply(&e[0])
                .get("message")
                .unwrap_or("")
                .contains("at most 2")
        );
    }

    #[test]
    fn last_message_id_header_is_checked() {
        let sub = |dest: &str, last: &str| {
            Frame::new(Command::Subscribe)
                .header("id", "a")
                .header("destination", dest)
                .header(crate::replay::LAST_ID_HEADER, last)
        };
        let mut s = session(SessionConfig::default());
        connect(&mut s, &[("accept-version", "1.2")]);
        match &s.on_frame(sub("/topic/chat.1", "41"), NOW)[0] {
            Action::Subscribe { replay_after, .. } => assert_eq!(*replay_after, Some(41)),
            other => panic!("{other:?}"),
        }
        for (dest, last, why) in [
            ("/topic/chat.1", "-3", "invalid"),
            ("/topic/chat.1", "x", "invalid"),
            ("/user/queue/notify", "3", "topics only"),
        ] {
            let mut s = session(SessionConfig::default());
            connect(&mut s, &[("accept-version", "1.2")]);
            let e = s.on_frame(sub(dest, last), NOW);
            assert!(
                reply(&e[0]).get("message").unwrap_or("").contains(why),
                "{dest} {last}"
            );
        }
    }

    #[test]
    fn unsubscribe_unknown_id_is_an_error() {
        let mut s = session(SessionConfig::default());
        connect(&mut s, &[("accept-version", "1.2")]);
        let e = s.on_frame(
            Frame::new(Command::Unsubscribe)
                .header("id", "nope")
                .header("receipt", "r"),
            NOW,
        );
        let e = reply(&e[0]);
        assert_eq!(e.get("receipt-id"), Some("r"));
        assert!(e.get("message").unwrap_or("").contains("no subscription"));
    }

    #[test]
    fn anonymous_sessions_when_allowed_may_not_send() {
        let mut s = session(SessionConfig {
            allow_anonymous: true,
            ..SessionConfig::default()
        });
        let actions = s.on_frame(
            Frame::new(Command::Connect).header("accept-version", "1.2"),
            NOW,
        );
        assert!(reply(&actions[1]).get("user-name").is_none());
        let e = s.on_frame(
            Frame::new(Command::Send).header("destination", "/app/send"),
            NOW,
        );
        assert!(
            reply(&e[0])
                .get("message")
                .unwrap_or("")
                .contains("anonymous")
        );
    }

    #[test]
    fn disconnect_receipt_then_close() {
        let mut s = session(SessionConfig::default());
        connect(&mut s, &[("accept-version", "1.2")]);
        let a = s.on_frame(
            Frame::new(Command::Disconnect).header("receipt", "close-7"),
            NOW,
        );
        assert_eq!(reply(&a[0]).get("receipt-id"), Some("close-7"));
        assert!(matches!(a[1], Action::Close));
    }

    #[test]
    fn server_frames_from_a_client_are_errors() {
        let mut s = session(SessionConfig::default());
        connect(&mut s, &[("accept-version", "1.2")]);
        let e = s.on_frame(Frame::new(Command::Message), NOW);
        assert!(
            reply(&e[0])
                .get("message")
                .unwrap_or("")
                .contains("server frame")
        );
    }
}
