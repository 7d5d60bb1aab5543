//! Runs one [`Session`] over one transport: decoding, timers, the outbound queue, and carrying out the
//! session's actions against the hub, the bus and the registry.
//!
//! One task per connection. It waits on five things at once: client bytes, the session's outbound queue
//! (filled by the hub), the heart-beat timer, the CONNECT / token deadlines, and the two stop signals
//! (slow consumer, server shutdown). Client frames are handled one at a time, in order, and an action
//! that waits (a bus submit, say) stops reading from that client until it is done: that is the
//! per-session ordering and the back-pressure in one.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use broker_bridge::{AppCommand, SessionEntry};
use bytes::{Bytes, BytesMut};
use stomp::{Frame, Item, StompCodec};
use tokio::time::{Instant, sleep_until};
use tokio_util::codec::{Decoder, Encoder};
use tokio_util::sync::CancellationToken;

use crate::destination::{DestinationError, SendTarget, SubscribeTarget};
use crate::hub::SessionHandle;
use crate::replay::{self, ReplayError};
use crate::session::{Action, Published, Session, State, SubState};
use crate::transport::{Sink, Source};
use crate::{Gateway, random_id};

/// Outbound frames queued per session before it counts as a slow consumer.
pub const DEFAULT_OUTBOUND_QUEUE: usize = 1024;

/// How long a last write (ERROR, close) may take on a connection that is being dropped.
const STUCK_WRITE_GRACE: Duration = Duration::from_millis(500);

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}

/// Why a connection ended (logged and counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    ClientGone,
    Disconnect,
    ProtocolError,
    HeartBeatTimeout,
    ConnectTimeout,
    TokenExpired,
    /// The session's token was revoked (password change, sign-out-everywhere).
    TokenRevoked,
    SlowConsumer,
    Shutdown,
    WriteError,
    /// The transport could not read what the client sent (a WebSocket message over the limit, a
    /// text message that is not UTF-8, a framing error): failed with the matching Close code.
    BadInput,
}

impl CloseReason {
    /// Every `reason` label of `instar_sessions_closed_total`: each reason's [`CloseReason::label`],
    /// and `send_rate` and `refused` for the ERROR closes that were no protocol error.
    pub const LABELS: [&'static str; 13] = [
        "client",
        "disconnect",
        "error",
        "send_rate",
        "refused",
        "heartbeat",
        "connect_timeout",
        "token_expired",
        "revoked",
        "slow_consumer",
        "shutdown",
        "write_error",
        "bad_input",
    ];

    /// This reason's `reason` label.
    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            CloseReason::ClientGone => "client",
            CloseReason::Disconnect => "disconnect",
            CloseReason::ProtocolError => "error",
            CloseReason::HeartBeatTimeout => "heartbeat",
            CloseReason::ConnectTimeout => "connect_timeout",
            CloseReason::TokenExpired => "token_expired",
            CloseReason::TokenRevoked => "revoked",
            CloseReason::SlowConsumer => "slow_consumer",
            CloseReason::Shutdown => "shutdown",
            CloseReason::WriteError => "write_error",
            CloseReason::BadInput => "bad_input",
        }
    }
}

struct Driver<'a> {
    gw: &'a Gateway,
    session: Session,
    number: u64,
    codec: StompCodec,
    sink: Box<dyn Sink>,
    handle: SessionHandle,
    targets: HashMap<u32, (Arc<SubState>, SubscribeTarget)>,
    registered: bool,
    /// When CONNECTED was handled (a resume is only for SUBSCRIBEs soon after it).
    connected_at: Option<Instant>,
    send_every: Option<Duration>,
    expect_within: Option<Duration>,
    last_sent: Instant,
    last_recv: Instant,
    token_deadline: Instant,
    out: BytesMut,
    /// SENDs this session may still make (refilled at `send_rate`).
    sends: crate::bucket::Bucket,
    /// The user whose session count this session holds ([`Gateway::admit_session`]).
    counted: Option<String>,
    /// The random part of this session's command keys ([`broker_bridge::COMMAND_KEY_HEADER`]).
    command_prefix: String,
    /// Commands submitted so far (the counter part of their keys).
    commands: u64,
    /// Queue subscriptions, by subscription index.
    queues: HashMap<u32, crate::queue_sub::QueueSub>,
    /// Cancelled when the session's token is revoked ([`crate::revocation`]).
    revoke: CancellationToken,
    /// The user this session is entered under in [`Gateway::revocations`].
    revocable: Option<String>,
    /// What the ERROR this session is failing with stands for on `instar_sessions_closed_total`,
    /// when not a protocol error (`send_rate`, `refused`).
    error_label: Option<&'static str>,
}

static SESSION_NUMBERS: AtomicU64 = AtomicU64::new(1);

/// Runs a connection to its end.
pub async fn run(
    gw: Arc<Gateway>,
    source: Box<dyn Source>,
    sink: Box<dyn Sink>,
    transport: &'static str,
) {
    use tracing::Instrument as _;
    // One span a session (not a frame): every line the session logs carries its id, node and,
    // once connected, its user.
    let id: Arc<str> = Arc::from(format!("{}-{}", gw.node, random_id(12)));
    let span = tracing::info_span!(
        "session",
        session = %id,
        node = %gw.node,
        transport,
        user = tracing::field::Empty,
    );
    run_session(gw, source, sink, transport, id)
        .instrument(span)
        .await;
}

async fn run_session(
    gw: Arc<Gateway>,
    mut source: Box<dyn Source>,
    sink: Box<dyn Sink>,
    transport: &'static str,
    id: Arc<str>,
) {
    let number = SESSION_NUMBERS.fetch_add(1, Ordering::Relaxed);
    let session = Session::new(id.clone(), gw.session_config.clone(), gw.verifier.clone());
    let queue = Arc::new(crate::queue::Outbound::new(gw.config.outbound_queue));
    let kill = CancellationToken::new();
    let now = Instant::now();
    let mut d = Driver {
        gw: &gw,
        session,
        number,
        codec: StompCodec::new(gw.config.limits.clone()),
        sink,
        handle: SessionHandle {
            session: number,
            version: stomp::Version::V1_2,
            queue: queue.clone(),
            kill: kill.clone(),
        },
        targets: HashMap::new(),
        registered: false,
        connected_at: None,
        send_every: None,
        expect_within: None,
        last_sent: now,
        last_recv: now,
        token_deadline: far_future(),
        out: BytesMut::new(),
        sends: crate::bucket::Bucket::full(
            gw.config.send_rate,
            crate::server::SEND_BURST_SECONDS,
            now,
        ),
        counted: None,
        command_prefix: random_id(20),
        commands: 0,
        queues: HashMap::new(),
        revoke: CancellationToken::new(),
        revocable: None,
        error_label: None,
    };
    gw.metrics.sessions_open.fetch_add(1, Ordering::Relaxed);
    gw.metrics.sessions_total.fetch_add(1, Ordering::Relaxed);
    let connect_deadline = now + gw.config.connect_timeout;
    let mut inbuf = BytesMut::new();
    let shutdown = gw.shutdown.clone();

    // The loop's signals and timers live across iterations: building them anew for every frame
    // registered two cancellation waiters and three timer entries (each under a lock) and removed
    // them again, per frame in or out. The heart-beat timer is re-armed lazily: traffic moves the
    // deadline later with every frame, so when the timer fires early it is only pushed back; a
    // deadline that moves earlier (heart-beats negotiated by CONNECT) re-arms it at once.
    let kill_signal = kill.cancelled();
    tokio::pin!(kill_signal);
    let revoke = d.revoke.clone();
    let revoke_signal = revoke.cancelled();
    tokio::pin!(revoke_signal);
    let shutdown_signal = shutdown.cancelled();
    tokio::pin!(shutdown_signal);
    let mut hb_armed = d.next_heartbeat_deadline();
    let hb_timer = sleep_until(hb_armed);
    tokio::pin!(hb_timer);
    let connect_timer = sleep_until(connect_deadline);
    tokio::pin!(connect_timer);
    let mut token_armed = d.token_deadline;
    let token_timer = sleep_until(token_armed);
    tokio::pin!(token_timer);

    let reason = loop {
        let hb_due = d.next_heartbeat_deadline();
        if hb_due < hb_armed {
            hb_armed = hb_due;
            hb_timer.as_mut().reset(hb_armed);
        }
        if d.token_deadline != token_armed {
            token_armed = d.token_deadline;
            token_timer.as_mut().reset(token_armed);
        }
        let awaiting_connect = d.session.state() == State::AwaitConnect;
        tokio::select! {
            biased;
            () = &mut kill_signal => {
                // The socket is likely stuck: try to say why, but do not wait on it for long.
                let _ = tokio::time::timeout(
                    STUCK_WRITE_GRACE,
                    d.write_error("slow consumer: messages could not be delivered fast enough"),
                )
                .await;
                break CloseReason::SlowConsumer;
            }
            () = &mut revoke_signal => {
                tracing::info!(session = %d.session.id(), "token revoked: session closed");
                let _ = tokio::time::timeout(
                    STUCK_WRITE_GRACE,
                    d.write_error(crate::revocation::REVOKED_MESSAGE),
                )
                .await;
                break CloseReason::TokenRevoked;
            }
            () = &mut shutdown_signal => {
                // Drain what is already queued, then tell the client why it is being closed.
                let mut batch = Vec::new();
                queue.drain(&mut batch, usize::MAX);
                if !batch.is_empty() { let _ = d.sink.send(&batch).await; }
                d.write_error("server shutting down").await;
                break CloseReason::Shutdown;
            }
            chunk = source.recv() => {
                let chunk = match chunk {
                    Some(Ok(chunk)) => chunk,
                    Some(Err(e)) => {
                        tracing::debug!(session = %d.session.id(), error = %e.detail, "transport read failed");
                        let Some((code, reason)) = e.close else { break CloseReason::ClientGone };
                        let _ = tokio::time::timeout(STUCK_WRITE_GRACE, d.sink.fail(code, reason)).await;
                        break CloseReason::BadInput;
                    }
                    None => break CloseReason::ClientGone,
                };
                d.last_recv = Instant::now();
                inbuf.extend_from_slice(&chunk);
                if let Some(reason) = d.on_input(&mut inbuf).await { break reason; }
            }
            batch = queue.next_batch(64) => {
                // A write blocked on a client that does not read must not outlive the hub's verdict.
                let written = tokio::select! {
                    r = d.sink.send(&batch) => r.is_ok(),
                    () = &mut kill_signal => false,
                };
                if !written {
                    break if kill.is_cancelled() { CloseReason::SlowConsumer } else { CloseReason::WriteError };
                }
                d.last_sent = Instant::now();
            }
            () = &mut hb_timer => {
                let now = Instant::now();
                if hb_due <= now
                    && let Some(reason) = d.on_heartbeat_timer().await
                {
                    break reason;
                }
                // Re-armed from the deadline as it stands now (later than the one that fired).
                hb_armed = d.next_heartbeat_deadline().max(now);
                hb_timer.as_mut().reset(hb_armed);
            }
            () = &mut connect_timer, if awaiting_connect => {
                d.write_error("CONNECT not received in time").await;
                break CloseReason::ConnectTimeout;
            }
            () = &mut token_timer => {
                let actions = d.session.expire();
                d.execute(actions).await;
                break CloseReason::TokenExpired;
            }
        }
    };
    d.finish(reason, transport).await;
    if !matches!(
        reason,
        CloseReason::ClientGone | CloseReason::WriteError | CloseReason::BadInput
    ) {
        // The server closed: let the client's answering Close arrive before TCP goes.
        source.drain().await;
    }
}

impl Driver<'_> {
    /// Takes one SEND from the session's bucket (refilled at `send_rate` per second, holding at
    /// most [`crate::server::SEND_BURST_SECONDS`] of them); false when it is empty.
    fn take_send_token(&mut self) -> bool {
        self.sends.take(
            self.gw.config.send_rate,
            crate::server::SEND_BURST_SECONDS,
            Instant::now(),
        )
    }

    fn next_heartbeat_deadline(&self) -> Instant {
        let send = self.send_every.map(|p| self.last_sent + p);
        let recv = self.expect_within.map(|p| self.last_recv + p);
        match (send, recv) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) => far_future(),
        }
    }

    async fn on_heartbeat_timer(&mut self) -> Option<CloseReason> {
        let now = Instant::now();
        if let Some(p) = self.expect_within
            && now >= self.last_recv + p
        {
            self.gw
                .metrics
                .heartbeat_timeouts
                .fetch_add(1, Ordering::Relaxed);
            return Some(CloseReason::HeartBeatTimeout);
        }
        if let Some(p) = self.send_every
            && now >= self.last_sent + p
        {
            if self.sink.send(&[Bytes::from_static(b"\n")]).await.is_err() {
                return Some(CloseReason::WriteError);
            }
            self.last_sent = Instant::now();
        }
        None
    }

    /// Decodes and handles every complete frame in `inbuf`.
    async fn on_input(&mut self, inbuf: &mut BytesMut) -> Option<CloseReason> {
        loop {
            match self.codec.decode(inbuf) {
                Ok(None) => return None,
                Ok(Some(Item::HeartBeat)) => {}
                Ok(Some(Item::Frame(frame))) => {
                    self.gw.metrics.frames_in.fetch_add(1, Ordering::Relaxed);
                    let actions = self.session.on_frame(frame, unix_now());
                    if let Some(reason) = self.execute(actions).await {
                        return Some(reason);
                    }
                }
                Err(e) => {
                    let actions = self
                        .session
                        .fail(&format!("malformed frame: {e}"), None, None);
                    self.execute(actions).await;
                    return Some(CloseReason::ProtocolError);
                }
            }
        }
    }

    async fn write(&mut self, frame: &Frame) -> Result<(), ()> {
        if self.codec.encode(frame, &mut self.out).is_err() {
            return Err(());
        }
        let bytes = self.out.split().freeze();
        self.sink.send(&[bytes]).await.map_err(|_| ())?;
        self.last_sent = Instant::now();
        Ok(())
    }

    async fn write_error(&mut self, message: &str) {
        let actions = self.session.fail(message, None, None);
        self.execute(actions).await;
    }

    /// Writes the stored messages of `topic` after `after` to `sub` (which is holding its live
    /// deliveries), then releases the held ones that were not replayed. `Ok(Some(_))` means the
    /// connection must end; `Err` is the reason to refuse the subscription.
    async fn replay(
        &mut self,
        sub: &SubState,
        topic: &str,
        user: &str,
        mut after: u64,
    ) -> Result<Option<CloseReason>, ReplayError> {
        let destination = format!("/topic/{topic}");
        let max = self.gw.config.max_replay;
        // The client has everything up to `after`: a live copy of one of those (the outbox
        // re-publishing a batch after a restart, say) is dropped like a replayed one.
        let mut newest = (after > 0).then_some(after);
        let mut total = 0usize;
        let mut failure = None;
        loop {
            let page = match self
                .gw
                .policy
                .replay(user, topic, after, replay::PAGE)
                .await
            {
                Ok(page) => page,
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            };
            let full = page.len() >= replay::PAGE;
            if total + page.len() > max {
                failure = Some(ReplayError::TooMany(max));
                break;
            }
            total += page.len();
            for m in page {
                let seq = sub.delivered.fetch_add(1, Ordering::Relaxed) + 1;
                let id = sub.message_id(seq);
                let mut frame = Frame::new(stomp::Command::Message)
                    .header("destination", &destination)
                    .header("subscription", &sub.id)
                    .header("message-id", &id);
                if sub.ack != stomp::AckMode::Auto {
                    frame = frame.header("ack", &id);
                }
                if let Some(ct) = &m.content_type {
                    frame = frame.header("content-type", ct);
                }
                frame = frame
                    .header(replay::ID_HEADER, m.id.to_string())
                    .header(replay::REPLAYED_HEADER, "true")
                    .with_body(m.body);
                if self.write(&frame).await.is_err() {
                    return Ok(Some(CloseReason::WriteError));
                }
                after = m.id;
                newest = Some(m.id);
            }
            if !full {
                break;
            }
        }
        self.gw
            .metrics
            .replayed
            .fetch_add(total as u64, Ordering::Relaxed);
        if !crate::hub::finish_replay(sub, &self.handle.queue, newest) {
            self.handle.kill.cancel();
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(None),
        }
    }

    /// Carries out the session's actions in order. Returns why the connection must end, if it must.
    async fn execute(&mut self, actions: Vec<Action>) -> Option<CloseReason> {
        let mut actions = std::collections::VecDeque::from(actions);
        while let Some(action) = actions.pop_front() {
            match action {
                Action::Reply(frame) => {
                    let is_error = frame.command == stomp::Command::Error;
                    if self.write(&frame).await.is_err() {
                        return Some(CloseReason::WriteError);
                    }
                    if is_error {
                        self.gw.metrics.errors_sent.fetch_add(1, Ordering::Relaxed);
                        self.sink.close(true).await;
                        return Some(CloseReason::ProtocolError);
                    }
                }
                Action::Connected {
                    version,
                    send_every,
                    expect_within,
                } => {
                    self.codec.set_version(version);
                    self.handle.version = version;
                    self.send_every =
                        (send_every > 0).then(|| Duration::from_millis(u64::from(send_every)));
                    // Allow the client some slack over the agreed interval, as the spec suggests.
                    self.expect_within = (expect_within > 0).then(|| {
                        Duration::from_millis(u64::from(expect_within))
                            .mul_f64(self.gw.config.heartbeat_grace)
                    });
                    if let Some(p) = self.session.principal().cloned() {
                        if !self.gw.admit_session(&p.user) {
                            self.gw
                                .metrics
                                .sessions_refused
                                .fetch_add(1, Ordering::Relaxed);
                            self.gw
                                .counted
                                .refused(crate::metrics::Refusal::SessionsPerUser);
                            self.error_label = Some("refused");
                            tracing::info!(user = %p.user, "too many sessions for one user; CONNECT refused");
                            let max = self.gw.config.max_sessions_per_user;
                            actions.clear();
                            actions.extend(self.session.fail(
                                &format!("too many sessions for this user (at most {max})"),
                                None,
                                None,
                            ));
                            continue;
                        }
                        self.counted = Some(p.user.clone());
                        tracing::Span::current().record("user", p.user.as_str());
                        // Entered before the version is read, so a revocation heard meanwhile
                        // still closes the session.
                        if !self.gw.revocations.admit(
                            &p.user,
                            self.number,
                            p.version,
                            self.revoke.clone(),
                        ) {
                            self.gw.revocations.refused();
                            self.gw
                                .counted
                                .refused(crate::metrics::Refusal::RevokedToken);
                            self.error_label = Some("refused");
                            actions.clear();
                            actions.extend(self.session.fail(
                                crate::revocation::REVOKED_MESSAGE,
                                None,
                                None,
                            ));
                            continue;
                        }
                        self.revocable = Some(p.user.clone());
                        match self.gw.policy.token_version(&p.user).await {
                            Ok(Some(current)) if p.version < current => {
                                self.gw.revocations.refused();
                                self.gw
                                    .counted
                                    .refused(crate::metrics::Refusal::RevokedToken);
                                self.error_label = Some("refused");
                                tracing::info!(user = %p.user, version = p.version, current, "revoked token refused on CONNECT");
                                actions.clear();
                                actions.extend(self.session.fail(
                                    crate::revocation::REVOKED_MESSAGE,
                                    None,
                                    None,
                                ));
                                continue;
                            }
                            Ok(_) => {}
                            Err(e) => {
                                tracing::error!(error = %e, "token version unavailable");
                                actions.clear();
                                actions.extend(self.session.fail(
                                    "token check unavailable, retry later",
                                    None,
                                    None,
                                ));
                                continue;
                            }
                        }
                        let left = p.expires_at.saturating_sub(unix_now());
                        self.token_deadline = Instant::now() + Duration::from_secs(left);
                        let entry = SessionEntry {
                            session: self.session.id().to_string(),
                            user: p.user.clone(),
                            node: self.gw.node.clone(),
                            connected_at_ms: unix_now() * 1000,
                        };
                        if let Err(e) = self.gw.registry.register(entry).await {
                            tracing::error!(error = %e, "session registry unavailable");
                            actions.clear();
                            actions.extend(self.session.fail(
                                "session registry unavailable, retry later",
                                None,
                                None,
                            ));
                            continue;
                        }
                        self.registered = true;
                    }
                    self.connected_at = Some(Instant::now());
                }
                Action::Subscribe {
                    sub,
                    target,
                    receipt,
                    replay_after,
                    rule,
                    prefetch,
                } => {
                    let user = self.session.principal().map(|p| p.user.clone());
                    if let SubscribeTarget::Topic(topic) = &target {
                        // The application's own topics are its policy's to decide, whatever the
                        // destination rules say; other topics follow a rule when one covers them.
                        let allowed = match rule {
                            Some(allowed) if !self.gw.policy.owns(topic) => allowed,
                            _ => self.gw.policy.may_subscribe(user.as_deref(), topic).await,
                        };
                        if !allowed {
                            let msg = DestinationError::Forbidden(target.destination()).to_string();
                            actions.clear();
                            actions.extend(self.session.fail(&msg, receipt.as_deref(), None));
                            continue;
                        }
                    }
                    if let SubscribeTarget::Queue(name) = &target {
                        if let Err(e) = self.subscribe_queue(&sub, name, prefetch).await {
                            actions.clear();
                            actions.extend(self.session.fail(
                                &format!("subscription failed: {e}"),
                                receipt.as_deref(),
                                None,
                            ));
                            continue;
                        }
                        self.targets
                            .insert(sub.index, (sub.clone(), target.clone()));
                        if let Some(r) = receipt {
                            let frame =
                                Frame::new(stomp::Command::Receipt).header("receipt-id", &r);
                            if self.write(&frame).await.is_err() {
                                return Some(CloseReason::WriteError);
                            }
                        }
                        continue;
                    }
                    // (The session refuses the header without a principal: replay is per user.)
                    let replay_after = replay_after.filter(|_| user.is_some());
                    let (replay_after, resumed) = match (replay_after, &target, user.as_deref()) {
                        (None, SubscribeTarget::Topic(topic), Some(user)) => {
                            match self.resume_point(user, topic).await {
                                Some(after) => (Some(after), true),
                                None => (None, false),
                            }
                        }
                        _ => (replay_after, false),
                    };
                    if replay_after.is_some() {
                        sub.begin_replay();
                    }
                    if let Err(e) = self
                        .gw
                        .hub
                        .subscribe(self.handle.clone(), sub.clone(), &target, user.as_deref())
                        .await
                    {
                        actions.clear();
                        actions.extend(self.session.fail(
                            &format!("subscription failed: {e}"),
                            receipt.as_deref(),
                            None,
                        ));
                        continue;
                    }
                    // Checked again once registered: a membership that ended between the first
                    // check and the registration (its revoke control already handled here) must
                    // not leave a live subscription behind.
                    if let SubscribeTarget::Topic(topic) = &target
                        && self.gw.policy.rechecks(topic)
                        && !self.gw.policy.may_subscribe(user.as_deref(), topic).await
                    {
                        self.gw
                            .hub
                            .unsubscribe(self.number, &sub, &target, user.as_deref())
                            .await;
                        let msg = DestinationError::Forbidden(target.destination()).to_string();
                        actions.clear();
                        actions.extend(self.session.fail(&msg, receipt.as_deref(), None));
                        continue;
                    }
                    self.targets
                        .insert(sub.index, (sub.clone(), target.clone()));
                    if let (Some(after), SubscribeTarget::Topic(topic), Some(user)) =
                        (replay_after, &target, user.as_deref())
                    {
                        match self.replay(&sub, topic, user, after).await {
                            Ok(None) => {
                                if resumed {
                                    self.gw.metrics.resumed.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                            Ok(Some(reason)) => return Some(reason),
                            Err(e) if resumed => {
                                // The client did not ask for a replay: a resume that cannot be
                                // served (too long a gap, history unavailable) leaves the
                                // subscription live, as without a resume.
                                tracing::info!(%user, %topic, error = %e, "resume not served; the subscription stays live");
                            }
                            Err(e) => {
                                actions.clear();
                                actions.extend(self.session.fail(
                                    &e.to_string(),
                                    receipt.as_deref(),
                                    None,
                                ));
                                continue;
                            }
                        }
                    }
                    if let Some(r) = receipt {
                        let frame = Frame::new(stomp::Command::Receipt).header("receipt-id", &r);
                        if self.write(&frame).await.is_err() {
                            return Some(CloseReason::WriteError);
                        }
                    }
                }
                Action::Unsubscribe { sub } => {
                    if let Some(queue) = self.queues.remove(&sub.index) {
                        queue.stop().await;
                    }
                    if let Some((sub, target)) = self.targets.remove(&sub.index) {
                        let user = self.session.principal().map(|p| p.user.clone());
                        self.gw
                            .hub
                            .unsubscribe(self.number, &sub, &target, user.as_deref())
                            .await;
                    }
                }
                Action::Submit {
                    destination,
                    headers,
                    body,
                    receipt,
                } => {
                    let Some(principal) = self.session.principal().map(|p| p.user.clone()) else {
                        continue;
                    };
                    if let Some(why) = self.over_send_rate(&principal) {
                        actions.clear();
                        actions.extend(self.session.fail(&why, receipt.as_deref(), None));
                        continue;
                    }
                    // A key per command, unique across the deployment, so that a handler can
                    // recognise the bus's redelivery of it (at least once on the wire, stored once).
                    self.commands += 1;
                    let mut headers = headers;
                    headers.push((
                        broker_bridge::COMMAND_KEY_HEADER.to_owned(),
                        format!("{}.{}", self.command_prefix, self.commands),
                    ));
                    // Its order key (chat: the room), so one process handles a room's commands.
                    if let Some(key) =
                        crate::order::order_key(&self.gw.config.command_order_field, &body)
                    {
                        headers.push((broker_bridge::ORDER_KEY_HEADER.to_owned(), key));
                    }
                    // Exported spans: one a command, a trace root of its own (a session lives for
                    // hours), a child of the client's `traceparent` when it sent a well-formed
                    // one. The trace context travels with the command: this span's when spans are
                    // exported, else the client's, else a new one.
                    let span = if !broker_bridge::trace::exporting() {
                        tracing::Span::none()
                    } else {
                        tracing::info_span!(
                            parent: None,
                            "submit",
                            session = %self.session.id(),
                            node = %self.gw.node,
                            user = %principal,
                            %destination,
                            trace_id = tracing::field::Empty,
                        )
                    };
                    let client_trace = headers
                        .iter()
                        .find(|(k, v)| {
                            k == broker_bridge::trace::TRACEPARENT
                                && broker_bridge::trace::trace_id(v).is_some()
                        })
                        .map(|(_, v)| v.clone());
                    if let Some(tp) = &client_trace {
                        broker_bridge::trace::set_parent(&span, tp);
                    }
                    let traceparent = broker_bridge::trace::traceparent_of(&span)
                        .or(client_trace)
                        .unwrap_or_else(|| {
                            let mut rng = rand::rng();
                            broker_bridge::trace::traceparent(
                                rand::Rng::random_range(&mut rng, 1..=u128::MAX),
                                rand::Rng::random_range(&mut rng, 1..=u64::MAX),
                            )
                        });
                    let trace_id = broker_bridge::trace::trace_id(&traceparent).unwrap_or("-");
                    span.record("trace_id", trace_id);
                    tracing::debug!(trace_id, %destination, "command submitted");
                    headers.retain(|(k, _)| k != broker_bridge::trace::TRACEPARENT);
                    headers.push((broker_bridge::trace::TRACEPARENT.to_owned(), traceparent));
                    let cmd = AppCommand {
                        destination,
                        principal,
                        session: self.session.id().to_string(),
                        node: self.gw.node.clone(),
                        headers,
                        body,
                    };
                    // During a broker outage (and until what it left in the node's buffer is
                    // through) commands go to the buffer, in order (crate::sendbuf).
                    let buffer = &self.gw.send_buffer;
                    let direct = !buffer.enabled()
                        || (!buffer.holds_commands() && self.gw.bus.accepts_commands_now());
                    let submitted = if direct {
                        use tracing::Instrument as _;
                        match self.gw.bus.submit(cmd.clone()).instrument(span).await {
                            Err(broker_bridge::BusError::Unavailable(why)) if buffer.enabled() => {
                                tracing::debug!(error = %why, "the bus did not take a command; buffering it");
                                None
                            }
                            other => Some(other),
                        }
                    } else {
                        None
                    };
                    let submitted = match submitted {
                        Some(result) => result,
                        None => {
                            let receipt_frame = match &receipt {
                                Some(r) => {
                                    let frame =
                                        Frame::new(stomp::Command::Receipt).header("receipt-id", r);
                                    let mut out = BytesMut::new();
                                    if self.codec.encode(&frame, &mut out).is_err() {
                                        return Some(CloseReason::WriteError);
                                    }
                                    Some((self.handle.queue.clone(), out.freeze()))
                                }
                                None => None,
                            };
                            let bus = self.gw.bus.clone();
                            match buffer.push(&bus, cmd, receipt_frame) {
                                // The RECEIPT follows once the broker confirmed it.
                                Ok(()) => {
                                    self.gw.metrics.commands.fetch_add(1, Ordering::Relaxed);
                                    continue;
                                }
                                Err(crate::sendbuf::BufferFull) => {
                                    let why = "message not accepted: the message bus is unavailable and this node's send buffer is full; retry later";
                                    if let Some(r) = receipt {
                                        // Answered, and the session stays open: it may retry.
                                        let frame = Frame::new(stomp::Command::Receipt)
                                            .header("receipt-id", &r)
                                            .header(crate::sendbuf::ERROR_HEADER, why);
                                        if self.write(&frame).await.is_err() {
                                            return Some(CloseReason::WriteError);
                                        }
                                        continue;
                                    }
                                    Err(broker_bridge::BusError::Unavailable(
                                        "the message bus is unavailable and this node's send buffer is full".to_owned(),
                                    ))
                                }
                            }
                        }
                    };
                    match submitted {
                        Ok(()) => {
                            self.gw.metrics.commands.fetch_add(1, Ordering::Relaxed);
                            if let Some(r) = receipt {
                                let frame =
                                    Frame::new(stomp::Command::Receipt).header("receipt-id", &r);
                                if self.write(&frame).await.is_err() {
                                    return Some(CloseReason::WriteError);
                                }
                            }
                        }
                        Err(e) => {
                            actions.clear();
                            actions.extend(self.session.fail(
                                &format!("message not accepted: {e}"),
                                receipt.as_deref(),
                                None,
                            ));
                            continue;
                        }
                    }
                }
                Action::Publish {
                    target,
                    message,
                    receipt,
                } => {
                    let Some(principal) = self.session.principal().map(|p| p.user.clone()) else {
                        continue;
                    };
                    if let Some(why) = self.over_send_rate(&principal) {
                        actions.clear();
                        actions.extend(self.session.fail(&why, receipt.as_deref(), None));
                        continue;
                    }
                    if let Err(why) = self.publish(target, message).await {
                        actions.clear();
                        actions.extend(self.session.fail(&why, receipt.as_deref(), None));
                        continue;
                    }
                    if let Some(r) = receipt {
                        let frame = Frame::new(stomp::Command::Receipt).header("receipt-id", &r);
                        if self.write(&frame).await.is_err() {
                            return Some(CloseReason::WriteError);
                        }
                    }
                }
                Action::Settle { sub, seq, how } => {
                    let Some(queue) = self.queues.get(&sub.index) else {
                        continue;
                    };
                    if let Err(e) = queue.settle(seq, how).await {
                        actions.clear();
                        actions.extend(self.session.fail(
                            &format!("acknowledgement failed: {e}"),
                            None,
                            None,
                        ));
                        continue;
                    }
                }
                Action::Close => {
                    self.sink.close(false).await;
                    return Some(CloseReason::Disconnect);
                }
            }
        }
        None
    }
}

impl Driver<'_> {
    /// Takes a SEND from the session's and the user's buckets; the ERROR message when either is
    /// empty (the session is then closed).
    fn over_send_rate(&mut self, user: &str) -> Option<String> {
        if self.take_send_token() && self.gw.take_user_send(user) {
            return None;
        }
        self.gw
            .metrics
            .send_rate_closes
            .fetch_add(1, Ordering::Relaxed);
        self.error_label = Some("send_rate");
        tracing::info!(session = %self.session.id(), user, "session sent faster than its send rate; closed");
        let rate = self.gw.config.send_rate;
        Some(format!(
            "too many messages: at most {rate} per second per session and {} per user (bursts of five seconds' worth); slow down and reconnect",
            rate.saturating_mul(2)
        ))
    }

    /// Starts consuming queue `name` for `sub`.
    async fn subscribe_queue(
        &mut self,
        sub: &Arc<SubState>,
        name: &str,
        prefetch: u16,
    ) -> Result<(), broker_bridge::BusError> {
        let consumer = self.gw.bus.consume(name, prefetch).await?;
        let queue = crate::queue_sub::QueueSub::start(
            consumer,
            sub.clone(),
            self.handle.clone(),
            format!("/queue/{name}"),
        );
        self.queues.insert(sub.index, queue);
        Ok(())
    }

    /// Publishes a client's message to a topic or queue; the ERROR message when it is refused.
    async fn publish(&mut self, target: SendTarget, message: Published) -> Result<(), String> {
        let envelope = broker_bridge::Envelope {
            destination: message.destination,
            content_type: message.content_type,
            headers: message.headers,
            body: message.body,
        };
        let result = match target {
            SendTarget::Topic(topic) => {
                if self.gw.policy.owns(&topic) {
                    return Err(DestinationError::SendForbidden(envelope.destination).to_string());
                }
                self.gw
                    .bus
                    .publish(broker_bridge::Target::Topic(topic), envelope)
                    .await
            }
            SendTarget::Queue(queue) => {
                self.gw
                    .bus
                    .enqueue(&queue, envelope, message.persistent)
                    .await
            }
            SendTarget::App(dest) => return Err(format!("'{dest}' is not a topic or queue")),
        };
        match result {
            Ok(()) => {
                self.gw.metrics.published.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => Err(format!("message not accepted: {e}")),
        }
    }

    /// Where a topic SUBSCRIBE without [`replay::LAST_ID_HEADER`] resumes from: the last message
    /// id the user's previous session was delivered on `topic`, when that session ended within the
    /// resume window and this SUBSCRIBE comes soon after CONNECTED (an automatic re-subscribe, not
    /// a user opening the room, which reloads its history; see docs/chat.md). The mark is taken,
    /// so only one SUBSCRIBE resumes from it.
    async fn resume_point(&mut self, user: &str, topic: &str) -> Option<u64> {
        let config = &self.gw.config;
        if config.resume_window.is_zero() || !self.gw.policy.owns(topic) {
            return None;
        }
        let soon = self
            .connected_at
            .is_some_and(|at| at.elapsed() <= config.resume_after_connect);
        if !soon {
            return None;
        }
        match self.gw.registry.take_resume(user, topic).await {
            Ok(mark) => mark,
            Err(e) => {
                tracing::warn!(%user, %topic, error = %e, "resume mark unavailable; subscribing without a resume");
                None
            }
        }
    }

    /// Records, for the user's next session, the last message id this session was delivered on
    /// each of its topic subscriptions (see [`Driver::resume_point`]).
    async fn save_resume_marks(&mut self, user: &str) {
        let window = self.gw.config.resume_window;
        if window.is_zero() {
            return;
        }
        let marks: Vec<(String, u64)> = self
            .targets
            .values()
            .filter_map(|(sub, target)| match target {
                SubscribeTarget::Topic(topic) if self.gw.policy.owns(topic) => {
                    let last = sub
                        .seen
                        .lock()
                        .newest()
                        .max(sub.floor.load(Ordering::Acquire));
                    (last > 0).then(|| (topic.clone(), last))
                }
                _ => None,
            })
            .collect();
        if marks.is_empty() {
            return;
        }
        if let Err(e) = self.gw.registry.save_resume(user, &marks, window).await {
            tracing::warn!(%user, error = %e, "could not record resume marks");
        }
    }

    /// Unsubscribes everything, leaves the registry, and records why the connection ended.
    async fn finish(&mut self, reason: CloseReason, transport: &'static str) {
        self.handle.queue.close();
        for (_, queue) in std::mem::take(&mut self.queues) {
            queue.stop().await;
        }
        let user = self.session.principal().map(|p| p.user.clone());
        if let Some(user) = user.as_deref() {
            self.save_resume_marks(user).await;
        }
        for (_, (sub, target)) in std::mem::take(&mut self.targets) {
            self.gw
                .hub
                .unsubscribe(self.number, &sub, &target, user.as_deref())
                .await;
        }
        if let Some(user) = self.counted.take() {
            self.gw.release_session(&user);
        }
        if let Some(user) = self.revocable.take() {
            self.gw.revocations.forget(&user, self.number);
        }
        if self.registered
            && let Err(e) = self.gw.registry.unregister(self.session.id()).await
        {
            tracing::warn!(error = %e, session = %self.session.id(), "could not leave the session registry");
        }
        if !matches!(
            reason,
            CloseReason::ClientGone
                | CloseReason::Disconnect
                | CloseReason::ProtocolError
                | CloseReason::WriteError
                | CloseReason::BadInput
        ) {
            let _ = tokio::time::timeout(STUCK_WRITE_GRACE, self.sink.close(false)).await;
        }
        self.gw
            .metrics
            .sessions_open
            .fetch_sub(1, Ordering::Relaxed);
        let label = match (reason, self.error_label) {
            (CloseReason::ProtocolError, Some(label)) => label,
            _ => reason.label(),
        };
        self.gw.counted.closed(label);
        tracing::debug!(session = %self.session.id(), transport, ?reason, user = user.as_deref().unwrap_or("-"), "session closed");
    }
}
