//! The Redis session registry (scale-out).
//!
//! # Keys (all under [`RedisRegistryConfig::prefix`], `instar:` by default)
//!
//! | key | type | content | expires |
//! |---|---|---|---|
//! | `{p}s:{session}` | hash | `user`, `node`, `at` (connected, ms since the epoch) | never: removed on disconnect or by the sweeper |
//! | `{p}u:{user}` | sorted set | the user's session ids, scored by registration order | never (empty sets vanish) |
//! | `{p}n:{node}` | set | the session ids on a node | never: deleted when the node is swept |
//! | `{p}l:{node}` | string | the node's lease: a random token of the holding process | 3/4 of the lease TTL, refreshed every 1/4 |
//! | `{p}nodes` | set | node ids that have held a lease or have sessions | – |
//! | `{p}seq` | counter | registration order | – |
//! | `{p}r:{user}:{topic}` | string | resume mark: the last message id delivered on `topic` to the user's session that ended | the resume window |
//! | `{p}epoch` | string | ms since the epoch when a node last found its lease missing and wrote its sessions back (`0`: never) | – |
//!
//! Every change touching several keys runs as one Lua script, so readers never see half a
//! registration. Nothing about a session expires while its node's lease is refreshed: the original
//! system stopped delivering to users after 30 minutes because its entries had a TTL.
//!
//! # Leases and sweeping
//!
//! A gateway node holds a lease ([`crate::Registry::hold_lease`], taken by the AMQP bus's
//! `open_node`): a key that expires after 3/4 of [`RedisRegistryConfig::lease_ttl`], refreshed by a
//! background task every 1/4 (so two refreshes may fail before it lapses). The same task sweeps every
//! [`RedisRegistryConfig::sweep_every`] (default: 1/4 of the TTL): for every node in `{p}nodes` whose
//! lease key is gone, one script removes all its sessions (it checks the lease is still absent
//! first). A node killed without warning therefore loses its sessions **within `lease_ttl`** of its
//! death, as long as one other node is alive to sweep.
//!
//! The process also remembers the sessions it registered. If a refresh finds its lease key missing
//! (Redis restarted and lost its data, or the node was cut off longer than the TTL and another node
//! swept it), it takes the lease again, marks `{p}epoch` with the time and writes every one of its
//! live sessions back. Unregisters that fail during an outage are retried on the next refresh.
//! Refreshes run every 1/4 of the TTL but at least every [`MAX_REFRESH_EVERY`], so a registry that
//! came back empty is refilled within about that long.
//!
//! # Deliveries during a recovery
//!
//! A push to a user whose sessions are not (yet) written back would find nobody online and be
//! dropped. [`crate::Registry::nodes_for_delivery`] therefore tells "offline" from "maybe not
//! written back yet": while `{p}epoch` is missing (nobody has noticed the loss yet) or younger than
//! the recovery window ([`RECOVERY_WINDOW`]), a lookup that finds nobody is retried every 50 ms
//! until the window ends. A user still missing then is reported as lost in the recovery (the bus
//! logs and counts it as dropped); the waits of concurrent pushes end together, at the window's
//! end. Outside a recovery the cost is one cached read of `{p}epoch` at most every 250 ms.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Script};
use tracing::{debug, error, info, warn};

use crate::bus::Health;
use crate::error::BusError;
use crate::model::{NodeId, SessionEntry};
use crate::registry::{LeaseControl, NodeLease, RegistryBackend};

/// Settings of the Redis registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisRegistryConfig {
    /// Redis URL, e.g. `redis://127.0.0.1:6379` or `redis://:password@host:6379/2`.
    pub url: String,
    /// Prefix of every key. Default `instar:`. Give each deployment (and each test) its own.
    pub prefix: String,
    /// Bound on how long a dead node's sessions stay registered. The lease key lives 3/4 of it and
    /// is refreshed every 1/4. Default 10 s.
    pub lease_ttl: Duration,
    /// How often a lease-holding process sweeps nodes whose lease expired. Default (`None`): a
    /// quarter of `lease_ttl`.
    pub sweep_every: Option<Duration>,
    /// Timeout of one Redis request. Default 2 s.
    pub response_timeout: Duration,
    /// Timeout of connecting to Redis. Default 2 s.
    pub connect_timeout: Duration,
    /// Bounds of the reconnect backoff. Default 50 ms to 2 s.
    pub reconnect_min: Duration,
    /// See `reconnect_min`.
    pub reconnect_max: Duration,
}

impl Default for RedisRegistryConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".to_owned(),
            prefix: "instar:".to_owned(),
            lease_ttl: Duration::from_secs(10),
            sweep_every: None,
            response_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(2),
            reconnect_min: Duration::from_millis(50),
            reconnect_max: Duration::from_secs(2),
        }
    }
}

impl RedisRegistryConfig {
    /// The default settings with another URL.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            ..Self::default()
        }
    }

    /// Sets the key prefix.
    #[must_use]
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Sets the lease TTL.
    #[must_use]
    pub fn with_lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = ttl;
        self
    }

    fn refresh_every(&self) -> Duration {
        (self.lease_ttl / 4).clamp(Duration::from_millis(50), MAX_REFRESH_EVERY)
    }

    fn key_ttl_ms(&self) -> u64 {
        u64::try_from((self.lease_ttl * 3 / 4).as_millis())
            .unwrap_or(u64::MAX)
            .max(150)
    }

    fn sweep_every(&self) -> Duration {
        self.sweep_every
            .unwrap_or(self.lease_ttl / 4)
            .max(Duration::from_millis(50))
    }
}

const REGISTER: &str = r"
local p, sid, user, node, at, keep = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6] == '1'
local skey = p .. 's:' .. sid
local old = redis.call('HMGET', skey, 'user', 'node')
if old[1] and old[1] ~= user then redis.call('ZREM', p .. 'u:' .. old[1], sid) end
if old[2] and old[2] ~= node then redis.call('SREM', p .. 'n:' .. old[2], sid) end
redis.call('HSET', skey, 'user', user, 'node', node, 'at', at)
local ukey = p .. 'u:' .. user
if not (keep and redis.call('ZSCORE', ukey, sid)) then
  redis.call('ZADD', ukey, redis.call('INCR', p .. 'seq'), sid)
end
redis.call('SADD', p .. 'n:' .. node, sid)
redis.call('SADD', p .. 'nodes', node)
return 1
";

const UNREGISTER: &str = r"
local p, sid = ARGV[1], ARGV[2]
local skey = p .. 's:' .. sid
local v = redis.call('HMGET', skey, 'user', 'node')
if not v[1] then return 0 end
redis.call('ZREM', p .. 'u:' .. v[1], sid)
if v[2] then redis.call('SREM', p .. 'n:' .. v[2], sid) end
redis.call('DEL', skey)
return 1
";

const SESSIONS_OF: &str = r"
local p, user = ARGV[1], ARGV[2]
local ids = redis.call('ZRANGE', p .. 'u:' .. user, 0, -1)
local out = {}
for _, id in ipairs(ids) do
  local v = redis.call('HMGET', p .. 's:' .. id, 'user', 'node', 'at')
  if v[1] == user and v[2] then
    out[#out + 1] = id
    out[#out + 1] = v[2]
    out[#out + 1] = v[3] or '0'
  end
end
return out
";

/// ARGV[3] = '1': remove even if the lease exists (explicit `remove_node`); otherwise only when it
/// has expired (the sweeper). Returns -1 when the lease exists and nothing was removed.
const REMOVE_NODE: &str = r"
local p, node, force = ARGV[1], ARGV[2], ARGV[3] == '1'
if not force and redis.call('EXISTS', p .. 'l:' .. node) == 1 then return -1 end
local nkey = p .. 'n:' .. node
local ids = redis.call('SMEMBERS', nkey)
local removed = 0
for _, id in ipairs(ids) do
  local skey = p .. 's:' .. id
  local v = redis.call('HMGET', skey, 'user', 'node')
  if v[2] == node then
    redis.call('ZREM', p .. 'u:' .. v[1], id)
    redis.call('DEL', skey)
    removed = removed + 1
  end
end
redis.call('DEL', nkey)
if not force then redis.call('SREM', p .. 'nodes', node) end
return removed
";

/// Returns 1 (refreshed), 0 (was missing: taken again) or -1 (held by another process).
const REFRESH: &str = r"
local p, node, token, ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local lkey = p .. 'l:' .. node
local cur = redis.call('GET', lkey)
if cur == token then
  redis.call('PEXPIRE', lkey, ttl)
  redis.call('SADD', p .. 'nodes', node)
  return 1
end
if not cur then
  redis.call('SET', lkey, token, 'PX', ttl)
  redis.call('SADD', p .. 'nodes', node)
  redis.call('SET', p .. 'epoch', ARGV[5])
  return 0
end
return -1
";

/// Most time between two lease refreshes, whatever the lease TTL: how long a node takes to notice
/// that Redis lost its data.
pub(crate) const MAX_REFRESH_EVERY: Duration = Duration::from_millis(250);
/// How long after a loss of the registry's data a push that finds nobody online is retried.
pub(crate) const RECOVERY_WINDOW: Duration = Duration::from_millis(1500);
/// How long a read of `{p}epoch` is trusted.
const EPOCH_CACHE: Duration = Duration::from_millis(250);

/// Keys: the marks; ARGV[1]: TTL in ms, ARGV[2..]: the ids. A mark is replaced only by a larger id.
const SAVE_RESUME: &str = r"
for i, key in ipairs(KEYS) do
  local id = tonumber(ARGV[i + 1])
  local old = tonumber(redis.call('GET', key) or '-1')
  if id > old then redis.call('SET', key, ARGV[i + 1], 'PX', ARGV[1]) end
end
return 0
";

const RELEASE: &str = r"
local lkey = ARGV[1] .. 'l:' .. ARGV[2]
if redis.call('GET', lkey) == ARGV[3] then redis.call('DEL', lkey) return 1 end
return 0
";

/// A worker's heartbeat: its expiry (server clock) in `{p}workers`, expired workers removed, the
/// live ones returned.
const WORKER_HEARTBEAT: &str = r"
local key = ARGV[1] .. 'workers'
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', key, now + tonumber(ARGV[3]), ARGV[2])
redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
return redis.call('ZRANGE', key, 0, -1)
";

struct Scripts {
    worker_heartbeat: Script,
    save_resume: Script,
    register: Script,
    unregister: Script,
    sessions_of: Script,
    remove_node: Script,
    refresh: Script,
    release: Script,
}

impl Scripts {
    fn new() -> Self {
        Self {
            worker_heartbeat: Script::new(WORKER_HEARTBEAT),
            register: Script::new(REGISTER),
            unregister: Script::new(UNREGISTER),
            sessions_of: Script::new(SESSIONS_OF),
            remove_node: Script::new(REMOVE_NODE),
            refresh: Script::new(REFRESH),
            release: Script::new(RELEASE),
            save_resume: Script::new(SAVE_RESUME),
        }
    }
}

/// The registry handle stored in [`crate::Registry`].
#[derive(Clone)]
pub(crate) struct RedisRegistry {
    inner: Arc<Inner>,
}

struct Inner {
    conn: ConnectionManager,
    config: RedisRegistryConfig,
    scripts: Scripts,
    /// Sessions registered through this process and not unregistered since: what a node writes back
    /// when the registry lost them.
    /// The number is the local registration order, kept when writing them back.
    local: Mutex<HashMap<String, (u64, SessionEntry)>>,
    local_seq: std::sync::atomic::AtomicU64,
    /// Unregisters that failed (outage); retried by the lease task.
    pending_unregister: Mutex<HashSet<String>>,
    /// Nodes whose lease this process holds.
    leased: Mutex<HashSet<NodeId>>,
    status: Mutex<Status>,
    /// What the last read of `{p}epoch` said.
    epoch: Mutex<EpochView>,
}

/// This process's view of `{p}epoch`.
#[derive(Debug, Default, Clone, Copy)]
struct EpochView {
    /// When it was last read.
    read: Option<Instant>,
    /// Since when it has been seen missing (continuously).
    missing_since: Option<Instant>,
    /// Until when deliveries wait for sessions to be written back.
    until: Option<Instant>,
}

#[derive(Default)]
struct Status {
    last_error: Option<String>,
    lease_conflict: Option<String>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl fmt::Debug for RedisRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisRegistry")
            .field("prefix", &self.inner.config.prefix)
            .field("local_sessions", &lock(&self.inner.local).len())
            .finish_non_exhaustive()
    }
}

fn unavailable(e: &redis::RedisError) -> BusError {
    BusError::Unavailable(format!("redis: {e}"))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl RedisRegistry {
    pub(crate) async fn connect(config: RedisRegistryConfig) -> Result<Self, BusError> {
        let client = redis::Client::open(config.url.as_str())
            .map_err(|e| BusError::Unavailable(format!("invalid Redis URL: {e}")))?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.connect_timeout))
            .set_response_timeout(Some(config.response_timeout))
            .set_min_delay(config.reconnect_min)
            .set_max_delay(config.reconnect_max)
            .set_number_of_retries(3);
        let conn = tokio::time::timeout(
            config.connect_timeout + config.response_timeout,
            ConnectionManager::new_with_config(client, manager_config),
        )
        .await
        .map_err(|_| BusError::Unavailable("redis: connect timed out".to_owned()))?
        .map_err(|e| unavailable(&e))?;
        let registry = Self {
            inner: Arc::new(Inner {
                conn,
                config,
                scripts: Scripts::new(),
                local: Mutex::new(HashMap::new()),
                local_seq: std::sync::atomic::AtomicU64::new(0),
                pending_unregister: Mutex::new(HashSet::new()),
                leased: Mutex::new(HashSet::new()),
                status: Mutex::new(Status::default()),
                epoch: Mutex::new(EpochView::default()),
            }),
        };
        let mut conn = registry.inner.conn.clone();
        let _: () = redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .map_err(|e| unavailable(&e))?;
        Ok(registry)
    }
}

impl Inner {
    fn prefix(&self) -> &str {
        &self.config.prefix
    }

    fn ok<T>(&self, result: Result<T, redis::RedisError>) -> Result<T, BusError> {
        let mut status = lock(&self.status);
        match result {
            Ok(v) => {
                status.last_error = None;
                Ok(v)
            }
            Err(e) => {
                status.last_error = Some(e.to_string());
                Err(unavailable(&e))
            }
        }
    }

    async fn write_entry(&self, entry: &SessionEntry, keep_order: bool) -> Result<(), BusError> {
        let mut conn = self.conn.clone();
        let result: Result<i64, _> = self
            .scripts
            .register
            .arg(self.prefix())
            .arg(&entry.session)
            .arg(&entry.user)
            .arg(&*entry.node)
            .arg(entry.connected_at_ms)
            .arg(if keep_order { "1" } else { "0" })
            .invoke_async(&mut conn)
            .await;
        self.ok(result).map(drop)
    }

    async fn delete_entry(&self, session: &str) -> Result<(), BusError> {
        let mut conn = self.conn.clone();
        let result: Result<i64, _> = self
            .scripts
            .unregister
            .arg(self.prefix())
            .arg(session)
            .invoke_async(&mut conn)
            .await;
        self.ok(result).map(drop)
    }

    async fn remove_node(&self, node: &str, force: bool) -> Result<i64, BusError> {
        let mut conn = self.conn.clone();
        let result: Result<i64, _> = self
            .scripts
            .remove_node
            .arg(self.prefix())
            .arg(node)
            .arg(if force { "1" } else { "0" })
            .invoke_async(&mut conn)
            .await;
        self.ok(result)
    }

    async fn sweep(&self) -> Result<usize, BusError> {
        let mut conn = self.conn.clone();
        let nodes: Result<Vec<String>, _> = conn.smembers(format!("{}nodes", self.prefix())).await;
        let nodes = self.ok(nodes)?;
        let mut removed = 0usize;
        for node in nodes {
            // Our own lease may have lapsed for a moment (a stalled refresh): the next refresh takes
            // it again, so our live sessions are not ours to sweep.
            if lock(&self.leased).contains(node.as_str()) {
                continue;
            }
            let n = self.remove_node(&node, false).await?;
            if n >= 0 {
                info!(%node, sessions = n, "registry: swept a node whose lease expired");
                removed += usize::try_from(n).unwrap_or(0);
            }
        }
        Ok(removed)
    }

    /// Retries unregisters that failed during an outage.
    async fn flush_pending(&self) {
        let pending: Vec<String> = lock(&self.pending_unregister).iter().cloned().collect();
        for session in pending {
            if self.delete_entry(&session).await.is_ok() {
                lock(&self.pending_unregister).remove(&session);
            } else {
                return;
            }
        }
    }

    /// Writes every local session of `node` back (the registry lost them).
    async fn reassert(&self, node: &NodeId) -> Result<usize, BusError> {
        let mut entries: Vec<(u64, SessionEntry)> = lock(&self.local)
            .values()
            .filter(|(_, e)| e.node == *node)
            .cloned()
            .collect();
        entries.sort_by_key(|(seq, _)| *seq);
        let entries: Vec<SessionEntry> = entries.into_iter().map(|(_, e)| e).collect();
        for entry in &entries {
            self.write_entry(entry, true).await?;
        }
        // A session that ended while we were writing must not stay behind.
        let gone: Vec<String> = {
            let local = lock(&self.local);
            entries
                .iter()
                .filter(|e| !local.contains_key(&e.session))
                .map(|e| e.session.clone())
                .collect()
        };
        for session in gone {
            if self.delete_entry(&session).await.is_err() {
                lock(&self.pending_unregister).insert(session);
            }
        }
        Ok(entries.len())
    }

    async fn refresh(&self, node: &NodeId, token: &str) -> Result<i64, BusError> {
        let mut conn = self.conn.clone();
        let ttl_ms = self.config.key_ttl_ms();
        let result: Result<i64, _> = self
            .scripts
            .refresh
            .arg(self.prefix())
            .arg(&**node)
            .arg(token)
            .arg(ttl_ms)
            .arg(now_ms())
            .invoke_async(&mut conn)
            .await;
        self.ok(result)
    }

    /// Until when deliveries wait for sessions to be written back: `None` outside a recovery
    /// (see the module's documentation). Read from Redis at most every [`EPOCH_CACHE`].
    async fn recovering_until(&self) -> Result<Option<Instant>, BusError> {
        let now = Instant::now();
        {
            let view = lock(&self.epoch);
            if view
                .read
                .is_some_and(|read| now.duration_since(read) < EPOCH_CACHE)
            {
                return Ok(view.until.filter(|u| *u > now));
            }
        }
        let mut conn = self.conn.clone();
        let result: Result<Option<u64>, _> = conn.get(format!("{}epoch", self.prefix())).await;
        let epoch = self.ok(result)?;
        let mut view = lock(&self.epoch);
        view.read = Some(now);
        match epoch {
            // Lost and not noticed by a node yet (or no node ever ran): wait out one window from
            // the first time this process saw it missing, so that concurrent pushes stop waiting
            // together and a registry without nodes costs one window, not one per push.
            None => {
                let since = *view.missing_since.get_or_insert(now);
                view.until = Some(since + RECOVERY_WINDOW);
            }
            Some(at) => {
                view.missing_since = None;
                view.until = if at == 0 {
                    None
                } else {
                    let age = Duration::from_millis(now_ms().saturating_sub(at));
                    RECOVERY_WINDOW.checked_sub(age).map(|left| now + left)
                };
            }
        }
        Ok(view.until.filter(|u| *u > now))
    }

    async fn release(&self, node: &NodeId, token: &str) -> Result<(), BusError> {
        let mut conn = self.conn.clone();
        let result: Result<i64, _> = self
            .scripts
            .release
            .arg(self.prefix())
            .arg(&**node)
            .arg(token)
            .invoke_async(&mut conn)
            .await;
        self.ok(result).map(drop)
    }
}

/// The lease's background task: refresh, write back lost sessions, retry unregisters, sweep.
async fn lease_task(inner: Arc<Inner>, node: NodeId, token: String) {
    let refresh_every = inner.config.refresh_every();
    let sweep_every = inner.config.sweep_every();
    let tick = refresh_every.min(sweep_every);
    let mut next_refresh = Instant::now() + refresh_every;
    let mut next_sweep = Instant::now();
    let mut must_reassert = false;
    loop {
        tokio::time::sleep(tick).await;
        let now = Instant::now();
        if now >= next_refresh {
            next_refresh = now + refresh_every;
            match inner.refresh(&node, &token).await {
                Ok(1) => {
                    lock(&inner.status).lease_conflict = None;
                }
                Ok(0) => {
                    warn!(%node, "registry: lease was missing (Redis restarted, or the node was cut off and swept); writing the node's sessions back");
                    lock(&inner.status).lease_conflict = None;
                    must_reassert = true;
                }
                Ok(_) => {
                    let msg = format!("the lease of node {node} is held by another process");
                    error!(%node, "registry: {msg}");
                    lock(&inner.status).lease_conflict = Some(msg);
                }
                Err(e) => warn!(%node, error = %e, "registry: lease refresh failed"),
            }
            if must_reassert {
                match inner.reassert(&node).await {
                    Ok(n) => {
                        info!(%node, sessions = n, "registry: sessions written back");
                        must_reassert = false;
                    }
                    Err(e) => warn!(%node, error = %e, "registry: writing sessions back failed"),
                }
            }
            inner.flush_pending().await;
        }
        if now >= next_sweep {
            next_sweep = now + sweep_every;
            if let Err(e) = inner.sweep().await {
                debug!(error = %e, "registry: sweep failed");
            }
        }
    }
}

struct RedisLease {
    inner: Arc<Inner>,
    node: NodeId,
    token: String,
    task: tokio::task::JoinHandle<()>,
}

impl fmt::Debug for RedisLease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLease")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl LeaseControl for RedisLease {
    async fn release(&self) -> Result<(), BusError> {
        self.task.abort();
        lock(&self.inner.leased).remove(&self.node);
        self.inner.release(&self.node, &self.token).await?;
        self.inner.remove_node(&self.node, true).await?;
        lock(&self.inner.local).retain(|_, (_, e)| e.node != self.node);
        Ok(())
    }
}

impl Drop for RedisLease {
    fn drop(&mut self) {
        if self.task.is_finished() {
            return;
        }
        self.task.abort();
        lock(&self.inner.leased).remove(&self.node);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let inner = Arc::clone(&self.inner);
            let node = self.node.clone();
            let token = std::mem::take(&mut self.token);
            runtime.spawn(async move {
                if let Err(e) = inner.release(&node, &token).await {
                    debug!(%node, error = %e, "registry: could not delete the lease");
                }
            });
        }
    }
}

#[async_trait]
impl RegistryBackend for RedisRegistry {
    async fn register(&self, entry: SessionEntry) -> Result<(), BusError> {
        let inner = &self.inner;
        lock(&inner.pending_unregister).remove(&entry.session);
        inner.write_entry(&entry, false).await?;
        let seq = inner
            .local_seq
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        lock(&inner.local).insert(entry.session.clone(), (seq, entry));
        Ok(())
    }

    async fn unregister(&self, session: &str) -> Result<(), BusError> {
        let inner = &self.inner;
        let was_local = lock(&inner.local).remove(session).is_some();
        match inner.delete_entry(session).await {
            Ok(()) => Ok(()),
            Err(e) => {
                if was_local {
                    // Retried by the lease task once Redis answers again.
                    lock(&inner.pending_unregister).insert(session.to_owned());
                }
                Err(e)
            }
        }
    }

    async fn session(&self, session: &str) -> Result<Option<SessionEntry>, BusError> {
        let inner = &self.inner;
        let mut conn = inner.conn.clone();
        let result: Result<(Option<String>, Option<String>, Option<u64>), _> = redis::cmd("HMGET")
            .arg(format!("{}s:{session}", inner.prefix()))
            .arg("user")
            .arg("node")
            .arg("at")
            .query_async(&mut conn)
            .await;
        let (user, node, at) = inner.ok(result)?;
        Ok(match (user, node) {
            (Some(user), Some(node)) => Some(SessionEntry {
                session: session.to_owned(),
                user,
                node: NodeId::from(node),
                connected_at_ms: at.unwrap_or(0),
            }),
            _ => None,
        })
    }

    async fn sessions_of(&self, user: &str) -> Result<Vec<SessionEntry>, BusError> {
        let inner = &self.inner;
        let mut conn = inner.conn.clone();
        let result: Result<Vec<String>, _> = inner
            .scripts
            .sessions_of
            .arg(inner.prefix())
            .arg(user)
            .invoke_async(&mut conn)
            .await;
        let flat = inner.ok(result)?;
        Ok(flat
            .chunks_exact(3)
            .map(|c| SessionEntry {
                session: c[0].clone(),
                user: user.to_owned(),
                node: NodeId::from(c[1].as_str()),
                connected_at_ms: c[2].parse().unwrap_or(0),
            })
            .collect())
    }

    async fn nodes_of(&self, user: &str) -> Result<Vec<NodeId>, BusError> {
        let mut nodes: Vec<NodeId> = Vec::new();
        for entry in self.sessions_of(user).await? {
            if !nodes.contains(&entry.node) {
                nodes.push(entry.node);
            }
        }
        Ok(nodes)
    }

    async fn nodes_for_delivery(&self, user: &str) -> Result<(Vec<NodeId>, bool), BusError> {
        let nodes = self.nodes_of(user).await?;
        if !nodes.is_empty() {
            return Ok((nodes, false));
        }
        let Some(until) = self.inner.recovering_until().await? else {
            return Ok((nodes, false));
        };
        // The registry lost its data lately: the user's sessions may not be written back yet.
        while Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let nodes = self.nodes_of(user).await?;
            if !nodes.is_empty() {
                return Ok((nodes, false));
            }
        }
        Ok((Vec::new(), true))
    }

    async fn is_online(&self, user: &str) -> Result<bool, BusError> {
        let inner = &self.inner;
        let mut conn = inner.conn.clone();
        let result: Result<u64, _> = conn.zcard(format!("{}u:{user}", inner.prefix())).await;
        Ok(inner.ok(result)? > 0)
    }

    async fn remove_node(&self, node: &NodeId) -> Result<usize, BusError> {
        let n = self.inner.remove_node(node, true).await?;
        Ok(usize::try_from(n).unwrap_or(0))
    }

    async fn hold_lease(&self, node: &NodeId) -> Result<NodeLease, BusError> {
        let inner = &self.inner;
        if !lock(&inner.leased).insert(node.clone()) {
            return Err(BusError::NodeInUse(node.to_string()));
        }
        let token = format!("{}-{:x}", std::process::id(), now_ms() ^ random_u64());
        let ttl_ms = inner.config.key_ttl_ms();
        let deadline = Instant::now() + inner.config.lease_ttl + Duration::from_secs(1);
        loop {
            let mut conn = inner.conn.clone();
            let result: Result<Option<String>, _> = redis::cmd("SET")
                .arg(format!("{}l:{node}", inner.prefix()))
                .arg(&token)
                .arg("NX")
                .arg("PX")
                .arg(ttl_ms)
                .query_async(&mut conn)
                .await;
            match inner.ok(result) {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => {
                    debug!(%node, "registry: lease held by a previous process; waiting for it to expire");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Ok(None) => {
                    lock(&inner.leased).remove(node);
                    return Err(BusError::NodeInUse(node.to_string()));
                }
                Err(e) => {
                    lock(&inner.leased).remove(node);
                    return Err(e);
                }
            }
        }
        // Sessions left by an earlier process with this node id are dead.
        let stale = match inner.remove_node(node, true).await {
            Ok(n) => n,
            Err(e) => {
                lock(&inner.leased).remove(node);
                return Err(e);
            }
        };
        if stale > 0 {
            info!(%node, sessions = stale, "registry: removed sessions of an earlier process with this node id");
        }
        let mut conn = inner.conn.clone();
        // The first node of a deployment marks the registry as having lost nothing (`0`): when
        // Redis later loses its data, the missing mark tells a recovery until a node notices.
        // Only nodes set it, so a process that merely connects right after a loss cannot hide it.
        let marked: Result<Option<String>, _> = redis::cmd("SET")
            .arg(format!("{}epoch", inner.prefix()))
            .arg(0)
            .arg("NX")
            .query_async(&mut conn)
            .await;
        let added = match inner.ok(marked) {
            Ok(_) => {
                let r: Result<i64, _> =
                    conn.sadd(format!("{}nodes", inner.prefix()), &**node).await;
                inner.ok(r)
            }
            Err(e) => Err(e),
        };
        if let Err(e) = added {
            lock(&inner.leased).remove(node);
            return Err(e);
        }
        let task = tokio::spawn(lease_task(Arc::clone(inner), node.clone(), token.clone()));
        info!(%node, ttl_ms, "registry: lease taken");
        Ok(NodeLease::new(
            node.clone(),
            Some(Box::new(RedisLease {
                inner: Arc::clone(inner),
                node: node.clone(),
                token,
                task,
            })),
        ))
    }

    async fn live_nodes(&self) -> Result<Vec<NodeId>, BusError> {
        let inner = &self.inner;
        let mut conn = inner.conn.clone();
        let nodes: Result<Vec<String>, _> = conn.smembers(format!("{}nodes", inner.prefix())).await;
        let nodes = inner.ok(nodes)?;
        let mut live = Vec::new();
        for node in nodes {
            let exists: Result<bool, _> = conn.exists(format!("{}l:{node}", inner.prefix())).await;
            if inner.ok(exists)? {
                live.push(NodeId::from(node));
            }
        }
        live.sort();
        Ok(live)
    }

    async fn sweep(&self) -> Result<usize, BusError> {
        self.inner.sweep().await
    }

    async fn worker_heartbeat(&self, worker: &str, ttl: Duration) -> Result<Vec<String>, BusError> {
        let inner = &self.inner;
        let mut conn = inner.conn.clone();
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let result: Result<Vec<String>, _> = inner
            .scripts
            .worker_heartbeat
            .arg(inner.prefix())
            .arg(worker)
            .arg(ttl_ms)
            .invoke_async(&mut conn)
            .await;
        let mut live = inner.ok(result)?;
        live.sort();
        Ok(live)
    }

    async fn worker_leave(&self, worker: &str) -> Result<(), BusError> {
        let inner = &self.inner;
        let mut conn = inner.conn.clone();
        let result: Result<i64, _> = conn
            .zrem(format!("{}workers", inner.prefix()), worker)
            .await;
        inner.ok(result).map(|_| ())
    }

    async fn save_resume(
        &self,
        user: &str,
        marks: &[(String, u64)],
        ttl: Duration,
    ) -> Result<(), BusError> {
        let inner = &self.inner;
        let mut conn = inner.conn.clone();
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut invocation = inner.scripts.save_resume.prepare_invoke();
        invocation.arg(ttl_ms);
        for (topic, id) in marks {
            invocation
                .key(format!("{}r:{user}:{topic}", inner.prefix()))
                .arg(*id);
        }
        let result: Result<(), _> = invocation.invoke_async(&mut conn).await;
        inner.ok(result)
    }

    async fn take_resume(&self, user: &str, topic: &str) -> Result<Option<u64>, BusError> {
        let inner = &self.inner;
        let mut conn = inner.conn.clone();
        let result: Result<Option<u64>, _> = redis::cmd("GETDEL")
            .arg(format!("{}r:{user}:{topic}", inner.prefix()))
            .query_async(&mut conn)
            .await;
        inner.ok(result)
    }

    fn health(&self) -> Health {
        let status = lock(&self.inner.status);
        if let Some(conflict) = &status.lease_conflict {
            return Health::Down(conflict.clone());
        }
        match &status.last_error {
            Some(e) => Health::Down(format!("redis: {e}")),
            None => Health::Up,
        }
    }
}

/// A random number without a dependency: the standard library's randomly keyed hasher.
pub(crate) fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(Instant::now().elapsed().as_nanos());
    hasher.finish()
}
