//! What the scenarios share: options, session set-up at scale, and the sender and receiver loops.

pub mod chat;
pub mod direct;
pub mod fanout;
pub mod faults;
pub mod idle;
pub mod queue;

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures_util::StreamExt;
use stomp::{Command, Frame, Item};
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::accounting::{SeqTracker, Tally};
use crate::client::{ConnectSpec, Credentials, Session, error_of};
use crate::latency::{Clock, LatencySummary, Recorder};
use crate::pacing::{Pacer, Schedule};
use crate::progress::Progress;
use crate::report::{Report, ServerStats, SessionHealth, Setup, Throughput, latency_curve};
use crate::stamp::Stamp;
use crate::target::Target;

/// Connections per source address before another 127.0.0.x is used (the ephemeral port range holds
/// about 28k ports per address; leave room for other users of the machine).
pub const SESSIONS_PER_SOURCE: usize = 20_000;

/// Options every scenario takes.
#[derive(Debug, Clone)]
pub struct Common {
    /// Gateways to spread sessions over (checked to be loopback).
    pub targets: Vec<Target>,
    pub credentials: Arc<Credentials>,
    /// CONNECT `host` header.
    pub host_header: String,
    /// Heart-beat offered both ways, ms (0: none).
    pub heartbeat_ms: u32,
    /// Sessions being set up at once.
    pub connect_concurrency: usize,
    /// Limit for one session's set-up (TCP + WebSocket + CONNECT + subscriptions).
    pub connect_timeout: Duration,
    /// Source addresses to spread connections over; 0 picks one per [`SESSIONS_PER_SOURCE`].
    pub source_ips: usize,
    /// tungstenite read buffer per client connection, bytes.
    pub ws_read_buffer: usize,
    /// Prefix of every user name.
    pub user_prefix: String,
    /// Server process to read RSS and CPU from.
    pub pid: Option<u32>,
    pub progress: Progress,
    /// Headers of every SUBSCRIBE besides `id` and `destination` (default `ack:auto`); with an
    /// `ack` mode other than `auto`, receivers ACK every MESSAGE.
    pub subscribe_headers: Vec<(String, String)>,
}

/// One session to set up.
#[derive(Debug, Clone)]
pub struct SessionPlan {
    /// Index into [`Common::targets`].
    pub target: usize,
    pub user: String,
    /// Destinations to subscribe to (confirmed with a receipt before the session counts as set up).
    pub subscriptions: Vec<String>,
}

/// The source addresses for `sessions` connections: none (let the kernel pick) for one address,
/// else `127.0.0.1 … 127.0.0.k`.
pub fn source_addresses(sessions: usize, requested: usize) -> Vec<IpAddr> {
    let k = if requested == 0 {
        sessions.div_ceil(SESSIONS_PER_SOURCE).max(1)
    } else {
        requested
    };
    if k <= 1 {
        return Vec::new();
    }
    (0..k.min(254))
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + i as u8)))
        .collect()
}

/// Replaces `{i}` and `{user}` in a destination template.
pub fn expand(template: &str, i: usize, user: &str) -> String {
    template
        .replace("{i}", &i.to_string())
        .replace("{user}", user)
}

/// Sets up every planned session, `connect_concurrency` at a time, and hands each to `run` (spawned
/// at once, so early sessions keep heart-beating while later ones connect). Returns the tasks by plan
/// index (None where set-up failed) and the set-up figures.
pub async fn establish<T, F, Fut>(
    common: &Common,
    plans: Vec<SessionPlan>,
    label: &str,
    run: F,
) -> (Vec<Option<JoinHandle<T>>>, Setup)
where
    T: Send + 'static,
    F: Fn(usize, Session) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = T> + Send + 'static,
{
    let n = plans.len();
    let sources = source_addresses(n, common.source_ips);
    let bar = common.progress.bar(n as u64, label);
    let started = Instant::now();
    let heartbeat = (common.heartbeat_ms, common.heartbeat_ms);
    let subscribe_headers = Arc::new(common.subscribe_headers.clone());
    let results: Vec<(usize, Result<JoinHandle<T>, String>)> =
        futures_util::stream::iter(plans.into_iter().enumerate())
            .map(|(i, plan)| {
                let spec = ConnectSpec {
                    target: common.targets[plan.target % common.targets.len()].clone(),
                    credentials: common.credentials.clone(),
                    host_header: common.host_header.clone(),
                    heartbeat,
                    source: (!sources.is_empty()).then(|| sources[i % sources.len()]),
                    timeout: common.connect_timeout,
                    ws_read_buffer: common.ws_read_buffer,
                };
                let run = run.clone();
                let bar = bar.clone();
                let subscribe_headers = subscribe_headers.clone();
                async move {
                    let set_up = async {
                        let mut session = Session::connect(&spec, &plan.user).await?;
                        session
                            .subscribe_all(&plan.subscriptions, &subscribe_headers, spec.timeout)
                            .await?;
                        Ok::<_, crate::client::SessionError>(session)
                    };
                    let r = match set_up.await {
                        Ok(session) => Ok(tokio::spawn(run(i, session))),
                        Err(e) => Err(format!("session {i} ({}): {e}", plan.user)),
                    };
                    bar.inc(1);
                    (i, r)
                }
            })
            .buffer_unordered(common.connect_concurrency.max(1))
            .collect()
            .await;
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    let mut handles: Vec<Option<JoinHandle<T>>> = (0..n).map(|_| None).collect();
    let mut setup = Setup {
        requested: n as u64,
        seconds,
        source_addresses: sources.iter().map(ToString::to_string).collect(),
        ..Setup::default()
    };
    let mut errors: Vec<(usize, String)> = Vec::new();
    for (i, r) in results {
        match r {
            Ok(h) => {
                handles[i] = Some(h);
                setup.established += 1;
            }
            Err(e) => {
                setup.failed += 1;
                errors.push((i, e));
            }
        }
    }
    errors.sort();
    setup.first_error = errors.into_iter().next().map(|(_, e)| e);
    setup.per_second = if seconds > 0.0 {
        setup.established as f64 / seconds
    } else {
        0.0
    };
    (handles, setup)
}

/// A heart-beat timer slightly faster than the negotiated period (None: heart-beats are off).
fn heartbeat_timer(every: Option<Duration>) -> Option<tokio::time::Interval> {
    let period = every?.mul_f64(0.8).max(Duration::from_millis(10));
    let mut t = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    t.set_missed_tick_behavior(MissedTickBehavior::Delay);
    Some(t)
}

async fn tick(timer: &mut Option<tokio::time::Interval>) {
    match timer {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Shared by every receiver of a run.
#[derive(Debug)]
pub struct ReceiveContext {
    pub clock: Clock,
    pub recorder: Recorder,
    /// Cancelled when the run is over.
    pub stop: CancellationToken,
    /// ACK every MESSAGE (by its `ack` header) as soon as it is read.
    pub ack: bool,
    /// Competing consumers (a queue): every receiver's arrivals go to this one tracker per run
    /// (stream 0) instead of a tracker per receiver.
    pub shared: Option<std::sync::Mutex<SeqTracker>>,
}

/// What one receiving session saw.
#[derive(Debug, Default)]
pub struct ReceiverOutcome {
    /// One tracker per stream heard, `(stream, tracker)`.
    pub streams: Vec<(u64, SeqTracker)>,
    /// MESSAGE frames without a readable stamp.
    pub unstamped: u64,
    pub error_frames: u64,
    pub heartbeats: u64,
    /// Heard any frame or heart-beat.
    pub heard: bool,
    /// The connection ended before the stop signal.
    pub dropped: bool,
    pub problem: Option<String>,
}

impl ReceiverOutcome {
    fn tracker(&mut self, stream: u64) -> &mut SeqTracker {
        let pos = match self.streams.iter().position(|(s, _)| *s == stream) {
            Some(p) => p,
            None => {
                self.streams.push((stream, SeqTracker::new()));
                self.streams.len() - 1
            }
        };
        &mut self.streams[pos].1
    }
}

/// Reads a session until `ctx.stop`: counts MESSAGE frames per stream, records their latency,
/// answers the heart-beat contract.
pub async fn receive(
    index: usize,
    mut session: Session,
    ctx: Arc<ReceiveContext>,
) -> ReceiverOutcome {
    let mut out = ReceiverOutcome::default();
    let mut hb = heartbeat_timer(session.send_every);
    loop {
        tokio::select! {
            biased;
            () = ctx.stop.cancelled() => break,
            item = session.next_item() => match item {
                Ok(Some(Item::Frame(f))) => {
                    out.heard = true;
                    match f.command {
                        Command::Message => {
                            let now = ctx.clock.now_ns();
                            match Stamp::from_frame(&f) {
                                Some(st) => {
                                    ctx.recorder.record(index, now, Some(st.sent_ns));
                                    match &ctx.shared {
                                        Some(shared) => {
                                            shared
                                                .lock()
                                                .unwrap_or_else(std::sync::PoisonError::into_inner)
                                                .observe(st.seq);
                                        }
                                        None => {
                                            out.tracker(st.stream).observe(st.seq);
                                        }
                                    }
                                }
                                None => {
                                    ctx.recorder.record(index, now, None);
                                    out.unstamped += 1;
                                }
                            }
                            if ctx.ack
                                && let Some(id) = f.get("ack")
                                && let Err(e) = session.send(&Frame::new(Command::Ack).header("id", id)).await
                            {
                                out.dropped = true;
                                out.problem.get_or_insert_with(|| format!("session {index}: sending an ACK: {e}"));
                                break;
                            }
                        }
                        Command::Error => {
                            out.error_frames += 1;
                            out.problem.get_or_insert_with(|| format!("session {index}: {}", error_of(&f)));
                        }
                        _ => {}
                    }
                }
                Ok(Some(Item::HeartBeat)) => {
                    out.heard = true;
                    out.heartbeats += 1;
                }
                Ok(None) => {
                    out.dropped = true;
                    out.problem.get_or_insert_with(|| format!("session {index}: closed by the server"));
                    break;
                }
                Err(e) => {
                    out.dropped = true;
                    out.problem.get_or_insert_with(|| format!("session {index}: {e}"));
                    break;
                }
            },
            () = tick(&mut hb) => {
                if let Err(e) = session.heartbeat().await {
                    out.dropped = true;
                    out.problem.get_or_insert_with(|| format!("session {index}: sending a heart-beat: {e}"));
                    break;
                }
            }
        }
    }
    out
}

/// One sender's stream.
#[derive(Debug, Clone)]
pub struct SendPlan {
    pub stream: u64,
    pub destination: String,
    /// Extra SEND headers, e.g. `to`.
    pub headers: Vec<(String, String)>,
    pub schedule: Schedule,
    /// Messages to send at most.
    pub max_messages: u64,
    /// Body size, bytes.
    pub payload: usize,
    /// How the stamp is wrapped.
    pub body: BodyFormat,
}

/// The body of each SEND.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyFormat {
    /// `text/plain`: the stamp, then `.` padding ([`Stamp::body`]).
    Plain,
    /// Instar's `/app/send`: `{"chatRoomId": room, "message": "<stamp>run=<run> ..."}` as JSON.
    Chat { room: i64, run: String },
}

impl BodyFormat {
    /// Content type and body for `stamp`.
    pub fn render(&self, stamp: &Stamp, payload: usize) -> (&'static str, bytes::Bytes) {
        match self {
            BodyFormat::Plain => ("text/plain", stamp.body(payload)),
            BodyFormat::Chat { room, run } => {
                let mut text = format!("{}run={run} ", stamp.text());
                while text.len() < payload {
                    text.push('.');
                }
                let body = serde_json::json!({ "chatRoomId": room, "message": text });
                ("application/json", bytes::Bytes::from(body.to_string()))
            }
        }
    }
}

/// What one sender did.
#[derive(Debug, Default)]
pub struct SenderOutcome {
    pub stream: u64,
    /// Messages written and flushed.
    pub sent: u64,
    /// When the last batch was flushed (ns since the origin).
    pub last_sent_ns: u64,
    pub error_frames: u64,
    pub dropped: bool,
    pub problem: Option<String>,
}

/// What every sender of a run shares.
#[derive(Debug)]
pub struct SendContext {
    pub clock: Clock,
    /// Wakes senders at their intended times.
    pub pacer: Pacer,
    /// How late each message was flushed after its intended time.
    pub lag: Recorder,
    /// Messages sent so far, all senders.
    pub sent: AtomicU64,
    /// Senders done with their schedule.
    pub done: AtomicU64,
    pub stop: CancellationToken,
}

/// Most messages written before one flush (and before looking at what the server sent).
const MAX_BATCH: u64 = 256;

/// Sends the plan's messages at their intended times (late ones at once, in a batch), then returns.
pub async fn send_stream(
    mut session: Session,
    plan: SendPlan,
    ctx: Arc<SendContext>,
) -> SenderOutcome {
    let SendContext {
        clock,
        ref pacer,
        ref lag,
        sent: ref sent_counter,
        ref done,
        ref stop,
    } = *ctx;
    let mut out = SenderOutcome {
        stream: plan.stream,
        ..SenderOutcome::default()
    };
    let mut hb = heartbeat_timer(session.send_every);
    while out.sent < plan.max_messages {
        let now = clock.now_ns();
        let due = plan.schedule.due(now).min(plan.max_messages);
        if due > out.sent {
            let upto = due.min(out.sent + MAX_BATCH);
            let mut result = Ok(());
            for seq in out.sent..upto {
                let stamp = Stamp {
                    stream: plan.stream,
                    seq,
                    sent_ns: plan.schedule.intended_ns(seq),
                };
                let (content_type, body) = plan.body.render(&stamp, plan.payload);
                let mut frame = Frame::new(Command::Send)
                    .header("destination", &plan.destination)
                    .header("content-type", content_type);
                for (k, v) in &plan.headers {
                    frame = frame.header(k, v);
                }
                let frame = stamp.add_headers(frame).with_body(body);
                result = session.feed(frame).await;
                if result.is_err() {
                    break;
                }
            }
            if result.is_ok() {
                result = session.flush().await;
            }
            if result.is_ok() {
                let flushed = clock.now_ns();
                let key = usize::try_from(plan.stream).unwrap_or(0);
                for seq in out.sent..upto {
                    lag.record(key, flushed, Some(plan.schedule.intended_ns(seq)));
                }
            }
            if let Err(e) = result {
                out.dropped = true;
                out.problem = Some(format!("sender {}: {e}", plan.stream));
                break;
            }
            sent_counter.fetch_add(upto - out.sent, Ordering::Relaxed);
            out.sent = upto;
            out.last_sent_ns = clock.now_ns();
            if let Some(t) = hb.as_mut() {
                t.reset();
            }
            continue;
        }
        let next = clock.instant_at(plan.schedule.intended_ns(out.sent));
        tokio::select! {
            biased;
            () = stop.cancelled() => break,
            () = pacer.sleep_until(next) => {}
            item = session.next_item() => match item {
                Ok(Some(Item::Frame(f))) if f.command == Command::Error => {
                    out.error_frames += 1;
                    out.problem.get_or_insert_with(|| format!("sender {}: {}", plan.stream, error_of(&f)));
                }
                Ok(Some(_)) => {}
                Ok(None) => {
                    out.dropped = true;
                    out.problem.get_or_insert_with(|| format!("sender {}: closed by the server", plan.stream));
                    break;
                }
                Err(e) => {
                    out.dropped = true;
                    out.problem.get_or_insert_with(|| format!("sender {}: {e}", plan.stream));
                    break;
                }
            },
            () = tick(&mut hb) => {
                if let Err(e) = session.heartbeat().await {
                    out.dropped = true;
                    out.problem = Some(format!("sender {}: {e}", plan.stream));
                    break;
                }
            }
        }
    }
    done.fetch_add(1, Ordering::Relaxed);
    // Keep the session open (heart-beating, reading errors) until the run ends, so the server does
    // not see a publisher vanish while its last messages are still being delivered.
    if !out.dropped {
        loop {
            tokio::select! {
                biased;
                () = stop.cancelled() => break,
                item = session.next_item() => match item {
                    Ok(Some(Item::Frame(f))) if f.command == Command::Error => {
                        out.error_frames += 1;
                        out.problem.get_or_insert_with(|| format!("sender {}: {}", plan.stream, error_of(&f)));
                    }
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => break,
                },
                () = tick(&mut hb) => {
                    if session.heartbeat().await.is_err() {
                        break;
                    }
                }
            }
        }
    }
    out
}

/// Parameters of a message run (fanout or direct).
#[derive(Debug, Clone)]
pub struct MessageRun {
    pub scenario: &'static str,
    pub parameters: serde_json::Value,
    /// Receivers: plan, and the stream each one should hear.
    pub receivers: Vec<(SessionPlan, u64)>,
    /// Senders: session plan and what to send (its schedule's offset is relative to the start of
    /// publishing).
    pub senders: Vec<(SessionPlan, SendPlan)>,
    /// Aggregate target publish rate, for the report.
    pub target_rate: f64,
    /// Receivers each message is meant for (fanout: all; direct: 1).
    pub fan: u64,
    /// Longest wait for the last deliveries after the senders finish.
    pub drain: Duration,
    /// The receivers compete for the messages (a queue): each message is meant for any one of
    /// them, and loss/duplicates are counted over all of them together.
    pub shared: bool,
}

/// Runs a message scenario: set up receivers, then senders, publish, drain, account.
pub async fn run_messages(common: &Common, run: MessageRun) -> anyhow::Result<Report> {
    let clock = Clock::start();
    let ctx = Arc::new(ReceiveContext {
        clock,
        recorder: Recorder::new(64),
        stop: CancellationToken::new(),
        ack: common
            .subscribe_headers
            .iter()
            .any(|(k, v)| k == "ack" && v != "auto"),
        shared: run.shared.then(|| std::sync::Mutex::new(SeqTracker::new())),
    });
    let mut report = Report {
        scenario: run.scenario.to_owned(),
        started_unix: crate::jwt::unix_now(),
        urls: common.targets.iter().map(|t| t.url.clone()).collect(),
        parameters: run.parameters.clone(),
        ..Report::default()
    };
    let rss_before = common.pid.and_then(|p| crate::procfs::rss_kib(p).ok());
    let cpu_before = common.pid.and_then(|p| crate::procfs::cpu_ticks(p).ok());

    let (expected_streams, receiver_plans): (Vec<u64>, Vec<SessionPlan>) =
        run.receivers.into_iter().map(|(p, s)| (s, p)).unzip();
    let rctx = ctx.clone();
    let (receivers, mut setup) = establish(common, receiver_plans, "receivers", move |i, s| {
        receive(i, s, rctx.clone())
    })
    .await;

    // Senders: connected now, released together once all are up.
    let go = CancellationToken::new();
    let publish_origin = Arc::new(AtomicU64::new(0));
    let send_ctx = Arc::new(SendContext {
        clock,
        pacer: Pacer::start().context("starting the pacer thread")?,
        lag: Recorder::new(16),
        sent: AtomicU64::new(0),
        done: AtomicU64::new(0),
        stop: ctx.stop.clone(),
    });
    let (sender_plans, send_plans): (Vec<SessionPlan>, Vec<SendPlan>) =
        run.senders.into_iter().unzip();
    let send_plans = Arc::new(send_plans);
    let (senders, sender_setup) = {
        let go = go.clone();
        let origin = publish_origin.clone();
        let send_ctx = send_ctx.clone();
        let send_plans = send_plans.clone();
        establish(common, sender_plans, "senders", move |i, session| {
            let go = go.clone();
            let origin = origin.clone();
            let send_ctx = send_ctx.clone();
            let mut plan = send_plans[i].clone();
            async move {
                go.cancelled().await;
                plan.schedule.offset_ns += origin.load(Ordering::Relaxed);
                send_stream(session, plan, send_ctx).await
            }
        })
        .await
    };
    setup.requested += sender_setup.requested;
    setup.established += sender_setup.established;
    setup.failed += sender_setup.failed;
    setup.seconds += sender_setup.seconds;
    setup.first_error = setup.first_error.or(sender_setup.first_error);
    report.setup = setup;
    if report.setup.failed > 0 {
        ctx.stop.cancel();
        go.cancel();
        report.aborted = Some(format!(
            "{} of {} sessions failed to set up; first: {}",
            report.setup.failed,
            report.setup.requested,
            report.setup.first_error.clone().unwrap_or_default()
        ));
        return Ok(report);
    }
    let rss_connected = common.pid.and_then(|p| crate::procfs::rss_kib(p).ok());

    // Publish: all schedules start 50 ms from now.
    let start_ns = clock.now_ns() + 50_000_000;
    publish_origin.store(start_ns, Ordering::Relaxed);
    go.cancel();
    let expected_total: u64 = send_plans.iter().map(|p| p.max_messages).sum::<u64>() * run.fan;
    let spinner = common.progress.spinner("publishing");
    let mut sender_outcomes = Vec::new();
    let mut sender_handles: Vec<JoinHandle<SenderOutcome>> =
        senders.into_iter().flatten().collect();
    let mut rss_peak = rss_connected.unwrap_or(0);
    // Wait for the senders to finish their schedules (they stay connected until `stop`).
    let mut finished = false;
    while !finished {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let sent = send_ctx.sent.load(Ordering::Relaxed);
        let delivered = ctx.recorder.delivered();
        spinner.set_message(format!(
            "sent {sent} delivered {delivered}/{expected_total}"
        ));
        if let Some(r) = common.pid.and_then(|p| crate::procfs::rss_kib(p).ok()) {
            rss_peak = rss_peak.max(r);
        }
        finished = send_ctx.done.load(Ordering::Relaxed) >= sender_handles.len() as u64;
    }
    // Drain: wait until every expected delivery is in, or the drain time passes.
    let sent_total = send_ctx.sent.load(Ordering::Relaxed);
    let expected_now = sent_total * run.fan;
    let drain_deadline = Instant::now() + run.drain;
    let mut drained = false;
    while Instant::now() < drain_deadline {
        let delivered = ctx.recorder.delivered();
        spinner.set_message(format!("draining: delivered {delivered}/{expected_now}"));
        if delivered >= expected_now {
            drained = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rss_end = common.pid.and_then(|p| crate::procfs::rss_kib(p).ok());
    let cpu_end = common.pid.and_then(|p| crate::procfs::cpu_ticks(p).ok());
    ctx.stop.cancel();
    spinner.finish_and_clear();
    for h in sender_handles.drain(..) {
        if let Ok(o) = h.await {
            sender_outcomes.push(o);
        }
    }
    let mut receiver_outcomes = Vec::new();
    for (i, h) in receivers.into_iter().enumerate() {
        if let Some(h) = h
            && let Ok(o) = h.await
        {
            receiver_outcomes.push((expected_streams[i], o));
        }
    }

    // Accounting.
    let mut sent_by_stream = std::collections::HashMap::new();
    let mut tally = Tally::default();
    let mut health = SessionHealth::default();
    let mut last_sent_ns = 0;
    for o in &sender_outcomes {
        *sent_by_stream.entry(o.stream).or_insert(0) += o.sent;
        tally.sent += o.sent;
        last_sent_ns = last_sent_ns.max(o.last_sent_ns);
        health.error_frames += o.error_frames;
        health.dropped += u64::from(o.dropped);
        if health.first_problem.is_none() {
            health.first_problem.clone_from(&o.problem);
        }
    }
    if let Some(shared) = &ctx.shared {
        let tracker = shared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        tally.add_expected(&tracker, sent_by_stream.get(&0).copied().unwrap_or(0));
    }
    for (expected, o) in &mut receiver_outcomes {
        let sent = sent_by_stream.get(expected).copied().unwrap_or(0);
        if !o.streams.iter().any(|(s, _)| s == expected) && ctx.shared.is_none() {
            o.streams.push((*expected, SeqTracker::new()));
        }
        for (stream, tracker) in &o.streams {
            if stream == expected {
                tally.add_expected(tracker, sent);
            } else {
                tally.add_unexpected(tracker);
            }
        }
        tally.delivered += o.unstamped;
        tally.misrouted += o.unstamped;
        health.error_frames += o.error_frames;
        health.dropped += u64::from(o.dropped);
        health.server_heartbeats += o.heartbeats;
        health.sessions_heard_from += u64::from(o.heard);
        if health.first_problem.is_none() {
            health.first_problem.clone_from(&o.problem);
        }
    }

    let (hist, delivered, _first_delivery, last_delivery) = ctx.recorder.merged();
    let publish_seconds = last_sent_ns.saturating_sub(start_ns) as f64 / 1e9;
    let delivery_seconds = last_delivery.saturating_sub(start_ns) as f64 / 1e9;
    report.throughput = Some(Throughput {
        target_publish_rate: run.target_rate,
        publish_rate: if publish_seconds > 0.0 {
            tally.sent as f64 / publish_seconds
        } else {
            0.0
        },
        publish_seconds,
        offered_deliveries_per_second: run.target_rate * run.fan as f64,
        deliveries_per_second: if delivery_seconds > 0.0 {
            delivered as f64 / delivery_seconds
        } else {
            0.0
        },
        delivery_seconds,
        drained,
    });
    report.latency = Some(LatencySummary::of(&hist));
    report.send_lag = Some(LatencySummary::of(&send_ctx.lag.merged().0));
    report.latency_curve = latency_curve(&hist);
    let worst = ctx.recorder.worst_windows();
    let first = worst.iter().position(|w| *w > 0).unwrap_or(worst.len());
    report.worst_per_100ms = worst[first..]
        .iter()
        .map(|us| f64::from(*us) / 1_000.0)
        .collect();
    report.messages = Some(tally);
    report.sessions = health;
    if let (Some(pid), Some(before), Some(end)) = (common.pid, rss_before, rss_end) {
        let sessions = report.setup.established.max(1);
        let cpu_secs = match (cpu_before, cpu_end) {
            (Some(a), Some(b)) => b.saturating_sub(a) as f64 / crate::procfs::TICKS_PER_SEC,
            _ => 0.0,
        };
        let wall = clock.now_ns() as f64 / 1e9;
        report.server = Some(ServerStats {
            pid,
            rss_before_kib: before,
            rss_connected_kib: rss_connected.unwrap_or(0),
            rss_end_kib: end,
            rss_peak_kib: rss_peak.max(end),
            kib_per_session: end.saturating_sub(before) as f64 / sessions as f64,
            cpu_percent: if wall > 0.0 {
                100.0 * cpu_secs / wall
            } else {
                0.0
            },
        });
    }
    report.loadtest_rss_kib = crate::procfs::rss_kib(std::process::id()).ok();
    Ok(report)
}
