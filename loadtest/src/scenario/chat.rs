//! `chat`: R rooms of M members each talking through Instar's chat handlers.
//!
//! Set-up goes through the REST API (`--api`): member 0 of each room creates it with
//! `POST /api/chat/create` (M = 2 gives a DM, reused across runs; more gives a group). The members
//! must exist: they are `<user-stem><k>` with `k` zero-padded to 5 digits from 1 (the seed scripts
//! in `scripts/bench/` create them). Every member but the first subscribes to `/topic/chat.{room}`;
//! the first SENDs to `/app/send` with `{"chatRoomId", "message"}` where the message text is the
//! stamp and `run=<id>`, at an aggregate paced rate. Each message is therefore persisted by the
//! social service, then broadcast: delivered, lost, duplicated and reordered are counted per room
//! (one stream per room), latency is intended-send to receipt.
//!
//! Afterwards the rooms' history (`GET /api/chat/history`, 30 per page, newest first) is read back
//! until the run's first message, and every stamp of this run is counted: persisted, missing,
//! duplicated.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Args;
use serde_json::{Value, json};

use super::{BodyFormat, Common, MessageRun, SendPlan, SessionPlan};
use crate::client::Credentials;
use crate::pacing::Schedule;
use crate::report::{Persistence, Report};
use crate::stamp::Stamp;

/// Options of `loadtest chat`.
#[derive(Debug, Clone, Args)]
pub struct ChatArgs {
    /// REST base URL of the social service (loopback only). Default: the first --url's host.
    #[arg(long)]
    pub api: Option<String>,
    /// Rooms.
    #[arg(long, default_value_t = 100)]
    pub rooms: usize,
    /// Members per room (2: a DM; more: a group, at most 100).
    #[arg(long, default_value_t = 2)]
    pub room_size: usize,
    /// Stem of the member ids: members are <stem>00001, <stem>00002, ...
    #[arg(long, default_value = "chat")]
    pub user_stem: String,
    /// Aggregate send rate over all rooms, messages per second.
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// Seconds to send for.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Messages to send at most (all rooms together).
    #[arg(long, default_value_t = 100_000)]
    pub max_messages: u64,
    /// Message text length in characters (at least the stamp).
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    /// Seconds to wait for the last deliveries after sending ends.
    #[arg(long, default_value_t = 10.0)]
    pub drain: f64,
    /// Skip reading the history back.
    #[arg(long)]
    pub no_persistence_check: bool,
}

/// Most members a room may have (the social service's limit).
pub const MAX_ROOM_SIZE: usize = 100;

/// The id of member `k` (from 0) overall.
pub(crate) fn member(stem: &str, k: usize) -> String {
    format!("{stem}{:05}", k + 1)
}

pub(crate) struct Api {
    pub(crate) base: String,
    pub(crate) http: reqwest::Client,
    pub(crate) secret: Vec<u8>,
}

impl Api {
    fn token(&self, user: &str) -> String {
        let now = crate::jwt::unix_now();
        crate::jwt::sign_hs256(&self.secret, user, now, now + 3600)
    }

    async fn call(&self, user: &str, req: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let res = req
            .bearer_auth(self.token(user))
            .send()
            .await
            .context("REST request")?;
        let status = res.status();
        let body: Value = res.json().await.context("REST response")?;
        if !status.is_success() || body["code"] != "SC" {
            bail!("{status} {body}");
        }
        Ok(body)
    }

    pub(crate) async fn create_room(&self, members: &[String]) -> anyhow::Result<i64> {
        let body = self
            .call(
                &members[0],
                self.http
                    .post(format!("{}/api/chat/create", self.base))
                    .json(&json!({ "users": &members[1..] })),
            )
            .await
            .with_context(|| format!("creating a room for {}", members[0]))?;
        body["chatRoomId"]
            .as_i64()
            .context("no chatRoomId in the create answer")
    }

    /// Counts this run's stamps in `room`'s history: `(per-seq counts, requests)`.
    pub(crate) async fn stored(
        &self,
        user: &str,
        room: i64,
        run: &str,
    ) -> anyhow::Result<(Vec<(u64, u64)>, u64)> {
        let marker = format!("run={run} ");
        let mut seqs = Vec::new();
        let mut cursor = String::new();
        let mut requests = 0;
        loop {
            requests += 1;
            let body = self
                .call(
                    user,
                    self.http.get(format!(
                        "{}/api/chat/history?chatRoomId={room}&messageId={cursor}",
                        self.base
                    )),
                )
                .await
                .with_context(|| format!("reading room {room}'s history"))?;
            let list = body["list"].as_array().cloned().unwrap_or_default();
            let mut older = false;
            for m in &list {
                let text = m["message"].as_str().unwrap_or("");
                if text.contains(&marker) {
                    if let Some(st) = Stamp::from_body(text.as_bytes()) {
                        seqs.push((st.stream, st.seq));
                    }
                } else {
                    older = true;
                }
            }
            match list.last().and_then(|m| m["messageId"].as_i64()) {
                Some(id) if !older => cursor = id.to_string(),
                _ => break,
            }
        }
        Ok((seqs, requests))
    }
}

/// The REST base for `--api`, or the first gateway URL's host and port.
pub(crate) fn api_base_of(common: &Common, api: Option<&str>) -> anyhow::Result<String> {
    let base = match api {
        Some(a) => a.trim_end_matches('/').to_owned(),
        None => {
            let url = &common.targets[0].url;
            let rest = url
                .strip_prefix("ws://")
                .context("--api is needed with a wss:// --url")?;
            let host = rest.split('/').next().unwrap_or(rest);
            format!("http://{host}")
        }
    };
    let host = base
        .strip_prefix("http://")
        .context("--api must be an http:// URL")?
        .split('/')
        .next()
        .unwrap_or("");
    crate::target::check_loopback(&format!("ws://{host}/"))
        .with_context(|| format!("--api {base}"))?;
    Ok(base)
}

/// Runs the chat scenario.
pub async fn run(common: &Common, args: &ChatArgs) -> anyhow::Result<Report> {
    let Credentials::Bearer { secret, .. } = &*common.credentials else {
        bail!("the chat scenario needs --jwt-secret (it signs REST and STOMP tokens)");
    };
    if !(2..=MAX_ROOM_SIZE).contains(&args.room_size) {
        bail!("--room-size must be in 2..={MAX_ROOM_SIZE}");
    }
    let api = Api {
        base: api_base_of(common, args.api.as_deref())?,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .context("HTTP client")?,
        secret: secret.clone(),
    };
    let r = args.rooms.max(1);
    let m = args.room_size;
    let run_id = format!(
        "{:x}",
        crate::jwt::unix_now() ^ u64::from(std::process::id()) << 32
    );

    let spinner = common.progress.spinner("creating rooms");
    let mut rooms = Vec::with_capacity(r);
    for i in 0..r {
        let members: Vec<String> = (0..m).map(|k| member(&args.user_stem, i * m + k)).collect();
        rooms.push((api.create_room(&members).await?, members));
        spinner.set_message(format!("creating rooms: {}/{r}", i + 1));
    }
    spinner.finish_and_clear();

    let n_targets = common.targets.len();
    let per_room_rate = args.rate / r as f64;
    let stagger_ns = Schedule::from_rate(args.rate, 0).interval_ns;
    let duration = Duration::from_secs_f64(args.duration);
    let mut receivers = Vec::new();
    let mut senders = Vec::new();
    let mut planned = 0;
    for (i, (room, members)) in rooms.iter().enumerate() {
        for (k, user) in members.iter().enumerate().skip(1) {
            receivers.push((
                SessionPlan {
                    target: (i + k) % n_targets,
                    user: user.clone(),
                    subscriptions: vec![format!("/topic/chat.{room}")],
                },
                i as u64,
            ));
        }
        let schedule = Schedule::from_rate(per_room_rate, i as u64 * stagger_ns);
        let share =
            args.max_messages / r as u64 + u64::from((i as u64) < args.max_messages % r as u64);
        let count = schedule.count_within(duration).min(share);
        planned += count;
        senders.push((
            SessionPlan {
                target: i % n_targets,
                user: members[0].clone(),
                subscriptions: Vec::new(),
            },
            SendPlan {
                stream: i as u64,
                destination: "/app/send".into(),
                headers: Vec::new(),
                schedule,
                max_messages: count,
                payload: args.payload,
                body: BodyFormat::Chat {
                    room: *room,
                    run: run_id.clone(),
                },
            },
        ));
    }
    let parameters = json!({
        "rooms": r,
        "room_size": m,
        "rate": args.rate,
        "duration_s": args.duration,
        "max_messages": args.max_messages,
        "messages_planned": planned,
        "payload_chars": args.payload,
        "api": api.base,
        "run": run_id,
        "heartbeat_ms": common.heartbeat_ms,
    });
    let mut report = super::run_messages(
        common,
        MessageRun {
            scenario: "chat",
            parameters,
            receivers,
            senders,
            target_rate: args.rate,
            fan: (m - 1) as u64,
            drain: Duration::from_secs_f64(args.drain),
            shared: false,
        },
    )
    .await?;
    if report.aborted.is_some() || args.no_persistence_check {
        return Ok(report);
    }
    let spinner = common.progress.spinner("reading the history back");
    let mut p = Persistence {
        sent: report.messages.as_ref().map_or(0, |t| t.sent),
        ..Persistence::default()
    };
    for (room, members) in &rooms {
        let (seqs, requests) = api.stored(&members[0], *room, &run_id).await?;
        p.requests += requests;
        let mut seen = HashSet::with_capacity(seqs.len());
        for s in seqs {
            if seen.insert(s) {
                p.persisted += 1;
            } else {
                p.duplicated += 1;
            }
        }
    }
    spinner.finish_and_clear();
    p.missing = p.sent.saturating_sub(p.persisted);
    report.persistence = Some(p);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_ids() {
        assert_eq!(member("chat", 0), "chat00001");
        assert_eq!(member("chat", 1999), "chat02000");
    }
}
