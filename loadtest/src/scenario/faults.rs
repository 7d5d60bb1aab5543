//! `faults`: chat under injected faults, measured end to end.
//!
//! R direct-message rooms (`<stem>` members `2i+1` → `2i+2`, created over REST as in `chat`). In
//! each room one sender (with `--senders-per-room 2`, both members, each in a session of its own)
//! SENDs to `/app/send` at its share of `--rate`, every SEND with a `receipt`, and one receiver
//! subscribes to `/topic/chat.{room}`. All behave like a careful client:
//!
//! - a connection that fails or ends is opened again, on the next `--url` after a failed attempt,
//!   with a capped exponential backoff
//!   (`--backoff-min-ms` doubling to `--backoff-max-ms`, with jitter);
//! - the receiver re-subscribes with `x-instar-last-message-id` set to the newest
//!   `x-instar-message-id` it got, so the gateway replays what it missed (no resend by the
//!   sender: a SEND without an answer may have been stored, and sending it again would store it
//!   twice; its fate is recorded as *unanswered*);
//! - messages that fall due while the sender is disconnected are not sent (*not sent*), as a user
//!   could not send them.
//!
//! `--fault AT:COMMAND` (repeatable) runs `COMMAND` through `sh -c` AT seconds after sending
//! starts (kill a process, restart a service). At the end, the run's messages are counted in the
//! database (`--database-url`, the `chatroom_message` table) or else in the rooms' history over
//! REST, and [`crate::faults::tally`] gives attempted / written / accepted / stored / lost /
//! delivered / duplicated; each fault gets the seconds until RECEIPTs and first deliveries flowed
//! again ([`crate::faults::recovery`]). Each receiver also counts the messages that arrived
//! *out of order*: a first delivery whose `x-instar-message-id` is lower than one it got before
//! on the room (with two senders per room this checks that the service publishes a room's messages
//! in id order even when the senders' commands reach different processes).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Args;
use serde_json::json;
use stomp::{Command, Frame, Item};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::chat::{Api, api_base_of, member};
use super::{BodyFormat, Common, heartbeat_timer, tick};
use crate::client::{ConnectSpec, Credentials, Session};
use crate::faults::{Backoff, Fate, FaultOutcome, FaultSpec, StreamRecord};
use crate::latency::Clock;
use crate::pacing::Schedule;
use crate::report::{FaultsReport, Report};
use crate::stamp::Stamp;

/// Options of `loadtest faults`.
#[derive(Debug, Clone, Args)]
pub struct FaultArgs {
    /// REST base URL of the social service (loopback only). Default: the first --url's host.
    #[arg(long)]
    pub api: Option<String>,
    /// Direct-message rooms (one receiver each, and --senders-per-room senders).
    #[arg(long, default_value_t = 50)]
    pub rooms: usize,
    /// Senders in each room: 1 (the first member) or 2 (both members, each in its own session,
    /// sharing the room's rate).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=2))]
    pub senders_per_room: u8,
    /// Stem of the member ids: members are <stem>00001, <stem>00002, ...
    #[arg(long, default_value = "chat")]
    pub user_stem: String,
    /// Aggregate send rate over all rooms, messages per second.
    #[arg(long, default_value_t = 500.0)]
    pub rate: f64,
    /// Seconds to send for.
    #[arg(long, default_value_t = 30.0)]
    pub duration: f64,
    /// Message text length in characters (at least the stamp).
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    /// Seconds to wait after sending ends for the last answers and deliveries (and for fault
    /// commands still running).
    #[arg(long, default_value_t = 20.0)]
    pub drain: f64,
    /// AT_SECONDS:COMMAND, run through `sh -c` that long after sending starts; repeatable.
    #[arg(long = "fault")]
    pub faults: Vec<FaultSpec>,
    /// Count what was stored in this database (sqlite://… or mysql://…) instead of reading the
    /// rooms' history over REST.
    #[arg(long)]
    pub database_url: Option<String>,
    /// First reconnect delay, ms (doubles after each failure).
    #[arg(long, default_value_t = 100)]
    pub backoff_min_ms: u64,
    /// Longest reconnect delay, ms.
    #[arg(long, default_value_t = 1000)]
    pub backoff_max_ms: u64,
    /// A pause in answers or deliveries longer than this (ms) counts as an outage when measuring
    /// recovery.
    #[arg(long, default_value_t = 500)]
    pub gap_ms: u64,
}

/// What every session of a run shares.
struct Shared {
    clock: Clock,
    /// The run is over: every task returns.
    stop: CancellationToken,
    /// Sending is over: senders only wait for answers.
    sending_over: CancellationToken,
    /// When RECEIPTs arrived (ns since the origin).
    accepted_at: std::sync::Mutex<Vec<u64>>,
    /// When a message arrived for the first time at its receiver.
    delivered_at: std::sync::Mutex<Vec<u64>>,
    accepted: AtomicU64,
    delivered: AtomicU64,
    /// SENDs written and not answered yet, over all senders.
    outstanding: AtomicI64,
    sender_reconnects: AtomicU64,
    receiver_reconnects: AtomicU64,
    with_last_id: AtomicU64,
    /// First deliveries with a message id below one the receiver had got on its room.
    out_of_order: AtomicU64,
    /// Streams (senders) per room.
    per_room: u64,
    /// Receivers subscribed for the first time.
    ready: AtomicUsize,
    ready_changed: Notify,
    backoff: (Duration, Duration),
    /// `run=<id> `: the marker in this run's messages.
    marker: String,
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Connects with backoff until it works or the run stops. `specs` holds one entry per gateway
/// URL; a failed attempt moves on to the next one (as a client behind a load balancer would end
/// up on a live node), starting from `*at`, which is left on the one that worked.
async fn connect(
    specs: &[ConnectSpec],
    at: &mut usize,
    user: &str,
    backoff: &mut Backoff,
    stop: &CancellationToken,
) -> Option<Session> {
    loop {
        if stop.is_cancelled() {
            return None;
        }
        let spec = &specs[*at % specs.len()];
        match Session::connect(spec, user).await {
            Ok(s) => {
                backoff.succeeded();
                return Some(s);
            }
            Err(_) => {
                *at = (*at + 1) % specs.len();
                let wait = backoff.failed();
                tokio::select! {
                    () = stop.cancelled() => return None,
                    () = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

/// One room's sender: returns the fate of each message.
/// What one room's sender sends.
struct SendJob {
    stream: u64,
    user: String,
    schedule: Schedule,
    count: u64,
    body: BodyFormat,
    payload: usize,
}

async fn sender(
    job: SendJob,
    specs: Arc<Vec<ConnectSpec>>,
    mut at: usize,
    shared: Arc<Shared>,
) -> Vec<Fate> {
    let SendJob {
        stream,
        user,
        schedule,
        count,
        body,
        payload,
    } = job;
    let n = usize::try_from(count).unwrap_or(usize::MAX);
    let mut fates = vec![Fate::NotSent; n];
    let mut backoff = Backoff::new(shared.backoff.0, shared.backoff.1, stream + 1);
    let mut next = 0u64;
    let mut first = true;
    'run: loop {
        if shared.sending_over.is_cancelled() {
            // Answers to a connection that ended will not come.
            break;
        }
        let Some(mut session) = connect(&specs, &mut at, &user, &mut backoff, &shared.stop).await
        else {
            break;
        };
        if first {
            // A first connection that took longer than the schedule's head start (a loaded
            // machine) sends what fell due meanwhile at once: the harness was late, not the
            // service.
            first = false;
        } else {
            shared.sender_reconnects.fetch_add(1, Ordering::Relaxed);
            // What fell due while disconnected was not sent.
            next = next.max(schedule.due(shared.clock.now_ns()).min(count));
        }
        let mut pending: HashMap<String, u64> = HashMap::new();
        let mut hb = heartbeat_timer(session.send_every);
        loop {
            let sending = !shared.sending_over.is_cancelled();
            if sending {
                let due = schedule.due(shared.clock.now_ns()).min(count);
                if due > next {
                    let upto = due.min(next + 256);
                    let mut ok = true;
                    for seq in next..upto {
                        let stamp = Stamp {
                            stream,
                            seq,
                            sent_ns: schedule.intended_ns(seq),
                        };
                        let (content_type, bytes) = body.render(&stamp, payload);
                        let receipt = format!("m{seq}");
                        let frame = Frame::new(Command::Send)
                            .header("destination", "/app/send")
                            .header("content-type", content_type)
                            .header("receipt", &receipt)
                            .with_body(bytes);
                        // Counted as written from here: part of it may have gone out.
                        fates[seq as usize] = Fate::Unanswered;
                        pending.insert(receipt, seq);
                        shared.outstanding.fetch_add(1, Ordering::Relaxed);
                        if session.feed(frame).await.is_err() {
                            ok = false;
                            break;
                        }
                    }
                    next = upto;
                    if !ok || session.flush().await.is_err() {
                        shared
                            .outstanding
                            .fetch_sub(pending.len() as i64, Ordering::Relaxed);
                        continue 'run;
                    }
                    if let Some(t) = hb.as_mut() {
                        t.reset();
                    }
                    continue;
                }
            } else if pending.is_empty() {
                break 'run;
            }
            let wake = if sending && next < count {
                shared.clock.instant_at(schedule.intended_ns(next))
            } else {
                Instant::now() + Duration::from_millis(100)
            };
            tokio::select! {
                biased;
                () = shared.stop.cancelled() => {
                    shared.outstanding.fetch_sub(pending.len() as i64, Ordering::Relaxed);
                    break 'run;
                }
                item = session.next_item() => match item {
                    Ok(Some(Item::Frame(f))) => {
                        let answered = f.get("receipt-id").and_then(|id| pending.remove(id));
                        if let Some(seq) = answered {
                            shared.outstanding.fetch_sub(1, Ordering::Relaxed);
                            // An error receipt (the SEND was not taken: the gateway's send buffer
                            // was full during a broker outage) names what went wrong in
                            // `x-instar-error`; `message` is accepted too, as on an ERROR.
                            let refused = f.command == Command::Error
                                || f.get("x-instar-error").is_some()
                                || f.get("message").is_some();
                            if refused {
                                fates[seq as usize] = Fate::Refused;
                            } else {
                                fates[seq as usize] = Fate::Accepted;
                                shared.accepted.fetch_add(1, Ordering::Relaxed);
                                lock(&shared.accepted_at).push(shared.clock.now_ns());
                            }
                        }
                        if f.command == Command::Error {
                            // The server closes the session after an ERROR.
                            shared.outstanding.fetch_sub(pending.len() as i64, Ordering::Relaxed);
                            continue 'run;
                        }
                    }
                    Ok(Some(Item::HeartBeat)) => {}
                    Ok(None) | Err(_) => {
                        shared.outstanding.fetch_sub(pending.len() as i64, Ordering::Relaxed);
                        continue 'run;
                    }
                },
                () = tokio::time::sleep_until(wake.into()) => {}
                () = tick(&mut hb) => {
                    if session.heartbeat().await.is_err() {
                        shared.outstanding.fetch_sub(pending.len() as i64, Ordering::Relaxed);
                        continue 'run;
                    }
                }
            }
        }
    }
    fates
}

/// One room's receiver: returns, per stream of the room, how many copies of each sequence number
/// it got.
async fn receiver(
    room_index: u64,
    specs: Arc<Vec<ConnectSpec>>,
    mut at: usize,
    user: String,
    topic: String,
    shared: Arc<Shared>,
) -> Vec<Vec<u32>> {
    let per_room = shared.per_room.max(1);
    let first_stream = room_index * per_room;
    let mut counts: Vec<Vec<u32>> = vec![Vec::new(); per_room as usize];
    let mut backoff = Backoff::new(shared.backoff.0, shared.backoff.1, room_index + 10_007);
    let mut last_id: Option<u64> = None;
    // The highest id among this run's messages delivered so far.
    let mut highest: Option<u64> = None;
    let mut subscribed_once = false;
    let mut first = true;
    'run: loop {
        let Some(mut session) = connect(&specs, &mut at, &user, &mut backoff, &shared.stop).await
        else {
            break;
        };
        if !first {
            shared.receiver_reconnects.fetch_add(1, Ordering::Relaxed);
        }
        first = false;
        let mut subscribe = Frame::new(Command::Subscribe)
            .header("id", "0")
            .header("destination", &topic)
            .header("ack", "auto")
            .header("receipt", "subscribed");
        if let Some(id) = last_id {
            subscribe = subscribe.header("x-instar-last-message-id", id.to_string());
            shared.with_last_id.fetch_add(1, Ordering::Relaxed);
        }
        if session.send(&subscribe).await.is_err() {
            continue;
        }
        let mut hb = heartbeat_timer(session.send_every);
        loop {
            tokio::select! {
                biased;
                () = shared.stop.cancelled() => break 'run,
                item = session.next_item() => match item {
                    Ok(Some(Item::Frame(f))) => match f.command {
                        Command::Message => {
                            let id = f.get("x-instar-message-id").and_then(|v| v.parse::<u64>().ok());
                            if let Some(id) = id {
                                last_id = Some(last_id.map_or(id, |l| l.max(id)));
                            }
                            let ours = std::str::from_utf8(&f.body)
                                .is_ok_and(|b| b.contains(&shared.marker));
                            if let (true, Some(st)) = (ours, Stamp::from_chat_json(&f.body))
                                && (first_stream..first_stream + per_room).contains(&st.stream)
                            {
                                let counts = &mut counts[(st.stream - first_stream) as usize];
                                let i = usize::try_from(st.seq).unwrap_or(usize::MAX);
                                if i < 10_000_000 {
                                    if counts.len() <= i {
                                        counts.resize(i + 1, 0);
                                    }
                                    counts[i] += 1;
                                    if counts[i] == 1 {
                                        shared.delivered.fetch_add(1, Ordering::Relaxed);
                                        lock(&shared.delivered_at).push(shared.clock.now_ns());
                                        if let Some(id) = id {
                                            if highest.is_some_and(|h| id < h) {
                                                shared.out_of_order.fetch_add(1, Ordering::Relaxed);
                                            }
                                            highest = Some(highest.map_or(id, |h| h.max(id)));
                                        }
                                    }
                                }
                            }
                        }
                        Command::Receipt if !subscribed_once => {
                            subscribed_once = true;
                            shared.ready.fetch_add(1, Ordering::Relaxed);
                            shared.ready_changed.notify_waiters();
                        }
                        Command::Error => {
                            // A replay refused (too long a gap): start live next time.
                            last_id = None;
                            continue 'run;
                        }
                        _ => {}
                    },
                    Ok(Some(Item::HeartBeat)) => {}
                    Ok(None) | Err(_) => continue 'run,
                },
                () = tick(&mut hb) => {
                    if session.heartbeat().await.is_err() {
                        continue 'run;
                    }
                }
            }
        }
    }
    counts
}

/// Runs one fault command at its time; returns how it went (recovery filled in later).
async fn run_fault(spec: FaultSpec, clock: Clock, origin_ns: u64) -> FaultOutcome {
    let at = clock.instant_at(origin_ns + (spec.at_seconds * 1e9) as u64);
    tokio::time::sleep_until(at.into()).await;
    let started = clock.now_ns();
    let status = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(&spec.command)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .status()
        .await;
    let finished = clock.now_ns();
    let exit_code = match status {
        Ok(s) => s.code(),
        Err(e) => {
            eprintln!("loadtest: fault `{}` could not start: {e}", spec.command);
            None
        }
    };
    FaultOutcome {
        command: spec.command,
        started_s: started.saturating_sub(origin_ns) as f64 / 1e9,
        finished_s: finished.saturating_sub(origin_ns) as f64 / 1e9,
        exit_code,
        accepting_again_s: None,
        delivering_again_s: None,
    }
}

/// Rows of this run per (room index, seq), read from the database.
async fn stored_in_database(
    url: &str,
    rooms: &[i64],
    per_room: u64,
    marker: &str,
) -> anyhow::Result<HashMap<(u64, u64), u32>> {
    sqlx::any::install_default_drivers();
    let pool = sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(30))
        .connect(url)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    let mut out = HashMap::new();
    for (i, room) in rooms.iter().enumerate() {
        let rows: Vec<(Option<String>,)> = sqlx::query_as(
            "SELECT message FROM chatroom_message WHERE chatroom_id = ? AND message LIKE ?",
        )
        .bind(*room)
        .bind(format!("%{marker}%"))
        .fetch_all(&pool)
        .await
        .with_context(|| format!("counting room {room}'s messages"))?;
        for (text,) in rows {
            if let Some(st) = text.as_deref().and_then(|t| Stamp::from_body(t.as_bytes()))
                && st.stream / per_room.max(1) == i as u64
            {
                *out.entry((st.stream, st.seq)).or_insert(0) += 1;
            }
        }
    }
    pool.close().await;
    Ok(out)
}

/// Runs the fault scenario.
pub async fn run(common: &Common, args: &FaultArgs) -> anyhow::Result<Report> {
    let Credentials::Bearer { secret, .. } = &*common.credentials else {
        bail!("the faults scenario needs --jwt-secret (it signs REST and STOMP tokens)");
    };
    let api = Api {
        base: api_base_of(common, args.api.as_deref())?,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .context("HTTP client")?,
        secret: secret.clone(),
    };
    let r = args.rooms.max(1);
    let run_id = format!(
        "{:x}",
        crate::jwt::unix_now() ^ u64::from(std::process::id()) << 32
    );
    let spinner = common.progress.spinner("creating rooms");
    let mut rooms = Vec::with_capacity(r);
    for i in 0..r {
        let members = vec![
            member(&args.user_stem, 2 * i),
            member(&args.user_stem, 2 * i + 1),
        ];
        rooms.push((api.create_room(&members).await?, members));
    }
    spinner.finish_and_clear();

    let clock = Clock::start();
    let shared = Arc::new(Shared {
        clock,
        stop: CancellationToken::new(),
        sending_over: CancellationToken::new(),
        accepted_at: std::sync::Mutex::new(Vec::new()),
        delivered_at: std::sync::Mutex::new(Vec::new()),
        accepted: AtomicU64::new(0),
        delivered: AtomicU64::new(0),
        outstanding: AtomicI64::new(0),
        sender_reconnects: AtomicU64::new(0),
        receiver_reconnects: AtomicU64::new(0),
        with_last_id: AtomicU64::new(0),
        out_of_order: AtomicU64::new(0),
        per_room: u64::from(args.senders_per_room),
        ready: AtomicUsize::new(0),
        ready_changed: Notify::new(),
        backoff: (
            Duration::from_millis(args.backoff_min_ms.max(1)),
            Duration::from_millis(args.backoff_max_ms.max(args.backoff_min_ms.max(1))),
        ),
        marker: format!("run={run_id} "),
    });
    let heartbeat = (common.heartbeat_ms, common.heartbeat_ms);
    let specs: Arc<Vec<ConnectSpec>> = Arc::new(
        common
            .targets
            .iter()
            .map(|target| ConnectSpec {
                target: target.clone(),
                credentials: common.credentials.clone(),
                host_header: common.host_header.clone(),
                heartbeat,
                source: None,
                timeout: common.connect_timeout,
                ws_read_buffer: common.ws_read_buffer,
            })
            .collect(),
    );
    let n_targets = specs.len();

    // Receivers first; sending starts once every one of them has subscribed.
    let mut receivers = Vec::with_capacity(r);
    for (i, (room, members)) in rooms.iter().enumerate() {
        receivers.push(tokio::spawn(receiver(
            i as u64,
            specs.clone(),
            (i + 1) % n_targets,
            members[1].clone(),
            format!("/topic/chat.{room}"),
            shared.clone(),
        )));
    }
    let set_up = Instant::now();
    let deadline = set_up + common.connect_timeout.max(Duration::from_secs(5));
    while shared.ready.load(Ordering::Relaxed) < r {
        let wait = shared.ready_changed.notified();
        if shared.ready.load(Ordering::Relaxed) >= r {
            break;
        }
        if tokio::time::timeout_at(deadline.into(), wait)
            .await
            .is_err()
        {
            shared.stop.cancel();
            return Ok(Report {
                scenario: "faults".into(),
                aborted: Some(format!(
                    "only {} of {r} receivers subscribed within {:?}",
                    shared.ready.load(Ordering::Relaxed),
                    common.connect_timeout
                )),
                ..Report::default()
            });
        }
    }

    let origin = clock.now_ns() + 200_000_000;
    let spr = usize::from(args.senders_per_room.max(1));
    let per_sender = args.rate / (r * spr) as f64;
    let stagger = Schedule::from_rate(args.rate, 0).interval_ns;
    let duration = Duration::from_secs_f64(args.duration);
    let mut senders = Vec::with_capacity(r * spr);
    let mut planned = 0;
    for (i, (room, members)) in rooms.iter().enumerate() {
        for (k, user) in members.iter().enumerate().take(spr) {
            let stream = i * spr + k;
            let schedule = Schedule::from_rate(per_sender, origin + stream as u64 * stagger);
            let count = schedule.count_within(duration);
            planned += count;
            senders.push(tokio::spawn(sender(
                SendJob {
                    stream: stream as u64,
                    user: user.clone(),
                    schedule,
                    count,
                    body: BodyFormat::Chat {
                        room: *room,
                        run: run_id.clone(),
                    },
                    payload: args.payload,
                },
                specs.clone(),
                // The room's senders on different gateways when there are several.
                (i + k) % n_targets,
                shared.clone(),
            )));
        }
    }
    let faults: Vec<_> = args
        .faults
        .iter()
        .cloned()
        .map(|f| tokio::spawn(run_fault(f, clock, origin)))
        .collect();

    // Send for the duration, then wait for the answers, the deliveries and the fault commands.
    let spinner = common.progress.spinner("sending");
    let end_of_sending = clock.instant_at(origin + duration.as_nanos() as u64);
    while Instant::now() < end_of_sending {
        spinner.set_message(format!(
            "accepted {} delivered {}",
            shared.accepted.load(Ordering::Relaxed),
            shared.delivered.load(Ordering::Relaxed)
        ));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    shared.sending_over.cancel();
    let drain_until = Instant::now() + Duration::from_secs_f64(args.drain);
    let mut drained = false;
    while Instant::now() < drain_until {
        let outstanding = shared.outstanding.load(Ordering::Relaxed);
        let accepted = shared.accepted.load(Ordering::Relaxed);
        let delivered = shared.delivered.load(Ordering::Relaxed);
        spinner.set_message(format!(
            "draining: {outstanding} unanswered, delivered {delivered}/{accepted}"
        ));
        if outstanding <= 0 && delivered >= accepted && faults.iter().all(|f| f.is_finished()) {
            drained = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shared.stop.cancel();
    spinner.finish_and_clear();

    let mut records: Vec<StreamRecord> = Vec::with_capacity(r * spr);
    let mut senders = senders.into_iter();
    for rcv in receivers {
        let mut delivered = rcv.await.unwrap_or_default().into_iter();
        for _ in 0..spr {
            let fates = match senders.next() {
                Some(s) => s.await.unwrap_or_default(),
                None => Vec::new(),
            };
            records.push(StreamRecord {
                fates,
                stored: Vec::new(),
                delivered: delivered.next().unwrap_or_default(),
            });
        }
    }
    let mut outcomes = Vec::new();
    for f in faults {
        if f.is_finished() {
            if let Ok(o) = f.await {
                outcomes.push(o);
            }
        } else {
            f.abort();
            eprintln!("loadtest: a fault command was still running at the end of the drain");
        }
    }

    // What was stored.
    let spinner = common.progress.spinner("counting what was stored");
    let room_ids: Vec<i64> = rooms.iter().map(|(id, _)| *id).collect();
    let (stored, stored_from) = match &args.database_url {
        Some(url) => (
            stored_in_database(url, &room_ids, spr as u64, &shared.marker).await?,
            "database",
        ),
        None => {
            let mut out = HashMap::new();
            for (i, (room, members)) in rooms.iter().enumerate() {
                let (stamps, _) = api.stored(&members[0], *room, &run_id).await?;
                for (stream, seq) in stamps {
                    if stream / spr as u64 == i as u64 {
                        *out.entry((stream, seq)).or_insert(0) += 1;
                    }
                }
            }
            (out, "rest")
        }
    };
    spinner.finish_and_clear();
    for ((stream, seq), n) in stored {
        let (Ok(stream), Ok(seq)) = (usize::try_from(stream), usize::try_from(seq)) else {
            continue;
        };
        if let Some(rec) = records.get_mut(stream)
            && seq < 10_000_000
        {
            if rec.stored.len() <= seq {
                rec.stored.resize(seq + 1, 0);
            }
            rec.stored[seq] += n;
        }
    }
    let tally = crate::faults::tally(&records);

    let gap = args.gap_ms.saturating_mul(1_000_000);
    let until = origin + duration.as_nanos() as u64;
    let mut accepted_at = std::mem::take(&mut *lock(&shared.accepted_at));
    let mut delivered_at = std::mem::take(&mut *lock(&shared.delivered_at));
    accepted_at.sort_unstable();
    delivered_at.sort_unstable();
    for o in &mut outcomes {
        let at = origin + (o.started_s * 1e9) as u64;
        o.accepting_again_s = crate::faults::recovery(&accepted_at, at, until, gap);
        o.delivering_again_s = crate::faults::recovery(&delivered_at, at, until, gap);
    }

    Ok(Report {
        scenario: "faults".into(),
        started_unix: crate::jwt::unix_now(),
        urls: common.targets.iter().map(|t| t.url.clone()).collect(),
        parameters: json!({
            "rooms": r,
            "senders_per_room": spr,
            "rate": args.rate,
            "duration_s": args.duration,
            "messages_planned": planned,
            "payload_chars": args.payload,
            "api": api.base,
            "run": run_id,
            "faults": args.faults.iter().map(|f| format!("{}:{}", f.at_seconds, f.command)).collect::<Vec<_>>(),
            "backoff_ms": [args.backoff_min_ms, args.backoff_max_ms],
            "gap_ms": args.gap_ms,
            "drained": drained,
        }),
        faults: Some(FaultsReport {
            tally,
            faults: outcomes,
            stored_from: stored_from.into(),
            sender_reconnects: shared.sender_reconnects.load(Ordering::Relaxed),
            receiver_reconnects: shared.receiver_reconnects.load(Ordering::Relaxed),
            resubscribed_with_last_id: shared.with_last_id.load(Ordering::Relaxed),
            out_of_order: shared.out_of_order.load(Ordering::Relaxed),
        }),
        ..Report::default()
    })
}
