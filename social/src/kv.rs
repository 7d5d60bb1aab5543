//! Short-lived keyed state: e-mail codes, rate-limit windows, caches.
//!
//! In-process for the embedded default, Redis for scale-out (several social processes must see the
//! same codes and counters). Keys are namespaced by a configurable prefix (the original used raw
//! e-mail addresses and Google subjects as Redis keys, contract §5).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;

/// Errors from the key-value store.
#[derive(Debug, thiserror::Error)]
#[error("key-value store: {0}")]
pub struct KvError(pub String);

/// A key-value store with expiry.
#[async_trait]
pub trait Kv: Send + Sync + std::fmt::Debug + 'static {
    /// The value of `key`, if present and not expired.
    async fn get(&self, key: &str) -> Result<Option<String>, KvError>;
    /// Sets `key` to `value`, expiring after `ttl`.
    async fn set(&self, key: &str, value: &str, ttl: Duration) -> Result<(), KvError>;
    /// Deletes `key`; true when it existed.
    async fn del(&self, key: &str) -> Result<bool, KvError>;
    /// Deletes `key` and returns its value, atomically: of two callers taking the same key, one
    /// gets the value and the other `None` (single-use tokens).
    async fn take(&self, key: &str) -> Result<Option<String>, KvError>;
    /// Adds one to the counter at `key` and returns the new count; a new counter expires after
    /// `window` (fixed-window rate limiting).
    async fn incr(&self, key: &str, window: Duration) -> Result<u64, KvError>;
    /// Adds `n` to the counter `key` (created at 0, expiring `window` after creation) and
    /// returns the new value.
    async fn incr_by(&self, key: &str, n: u64, window: Duration) -> Result<u64, KvError>;
    /// Takes the lock `key` for `owner` for `ttl` if nobody holds it, and returns its fencing
    /// token: a number larger than every earlier holder's (`None`: held by someone else).
    async fn lock(&self, key: &str, owner: &str, ttl: Duration) -> Result<Option<u64>, KvError>;
    /// Extends `owner`'s hold on `key` to `ttl` from now; false when `owner` no longer holds it.
    async fn renew(&self, key: &str, owner: &str, ttl: Duration) -> Result<bool, KvError>;
    /// Releases `key` if `owner` holds it (a later holder's lock is left alone).
    async fn unlock(&self, key: &str, owner: &str) -> Result<bool, KvError>;
    /// Sets `key` to `value` for `ttl` only while `owner` holds the lock `lock` (false: it does
    /// not, and nothing was written): a fenced write.
    async fn set_if_owner(
        &self,
        lock: &str,
        owner: &str,
        key: &str,
        value: &str,
        ttl: Duration,
    ) -> Result<bool, KvError>;
}

/// Which store to use.
#[derive(Debug, Clone)]
pub enum KvConfig {
    /// In this process.
    Memory,
    /// Redis at `url`, keys prefixed by `prefix`.
    Redis {
        /// `redis://host:port/db`.
        url: String,
        /// Key prefix, e.g. `instar:`.
        prefix: String,
    },
}

/// Opens the configured store.
pub async fn open(cfg: &KvConfig) -> Result<Arc<dyn Kv>, KvError> {
    match cfg {
        KvConfig::Memory => Ok(Arc::new(MemoryKv::default())),
        KvConfig::Redis { url, prefix } => Ok(Arc::new(RedisKv::connect(url, prefix).await?)),
    }
}

#[derive(Debug)]
enum Entry {
    Text(String),
    Count(u64),
}

type Slots = HashMap<String, (Entry, Instant)>;

/// Whether `owner` holds the lock `key` in `map` at `now`.
fn holds(map: &Slots, key: &str, owner: &str, now: Instant) -> bool {
    matches!(map.get(key), Some((Entry::Text(v), exp)) if *exp > now && v == owner)
}

/// How long a lock's fencing counter outlives its last use (it must outlive every holder that
/// could still write, so a successor's token is always larger).
const FENCE_TTL: Duration = Duration::from_secs(30 * 24 * 60 * 60);

/// In-process store. Expired entries are dropped lazily and by a sweep every 1,024 writes.
#[derive(Debug, Default)]
pub struct MemoryKv {
    map: Mutex<(Slots, u32)>,
}

impl MemoryKv {
    fn write<R>(&self, f: impl FnOnce(&mut Slots, Instant) -> R) -> R {
        let now = Instant::now();
        let mut guard = self.map.lock();
        let (map, writes) = &mut *guard;
        *writes = writes.wrapping_add(1);
        if *writes % 1024 == 0 {
            map.retain(|_, (_, exp)| *exp > now);
        }
        f(map, now)
    }
}

#[async_trait]
impl Kv for MemoryKv {
    async fn get(&self, key: &str) -> Result<Option<String>, KvError> {
        let now = Instant::now();
        let guard = self.map.lock();
        Ok(match guard.0.get(key) {
            Some((Entry::Text(v), exp)) if *exp > now => Some(v.clone()),
            Some((Entry::Count(n), exp)) if *exp > now => Some(n.to_string()),
            _ => None,
        })
    }

    async fn set(&self, key: &str, value: &str, ttl: Duration) -> Result<(), KvError> {
        self.write(|map, now| {
            map.insert(key.to_owned(), (Entry::Text(value.to_owned()), now + ttl));
        });
        Ok(())
    }

    async fn del(&self, key: &str) -> Result<bool, KvError> {
        let now = Instant::now();
        let mut guard = self.map.lock();
        Ok(guard.0.remove(key).is_some_and(|(_, exp)| exp > now))
    }

    async fn take(&self, key: &str) -> Result<Option<String>, KvError> {
        let now = Instant::now();
        let mut guard = self.map.lock();
        Ok(match guard.0.remove(key) {
            Some((Entry::Text(v), exp)) if exp > now => Some(v),
            Some((Entry::Count(n), exp)) if exp > now => Some(n.to_string()),
            _ => None,
        })
    }

    async fn incr(&self, key: &str, window: Duration) -> Result<u64, KvError> {
        self.incr_by(key, 1, window).await
    }

    async fn incr_by(&self, key: &str, by: u64, window: Duration) -> Result<u64, KvError> {
        Ok(self.write(|map, now| {
            let slot = map
                .entry(key.to_owned())
                .or_insert((Entry::Count(0), now + window));
            if slot.1 <= now {
                *slot = (Entry::Count(0), now + window);
            }
            match &mut slot.0 {
                Entry::Count(n) => {
                    *n = n.saturating_add(by);
                    *n
                }
                Entry::Text(_) => {
                    *slot = (Entry::Count(by), now + window);
                    by
                }
            }
        }))
    }

    async fn lock(&self, key: &str, owner: &str, ttl: Duration) -> Result<Option<u64>, KvError> {
        Ok(self.write(|map, now| {
            if matches!(map.get(key), Some((_, exp)) if *exp > now) {
                return None;
            }
            map.insert(key.to_owned(), (Entry::Text(owner.to_owned()), now + ttl));
            let fence = map
                .entry(format!("{key}:fence"))
                .or_insert((Entry::Count(0), now + FENCE_TTL));
            fence.1 = now + FENCE_TTL;
            match &mut fence.0 {
                Entry::Count(n) => {
                    *n += 1;
                    Some(*n)
                }
                Entry::Text(_) => {
                    fence.0 = Entry::Count(1);
                    Some(1)
                }
            }
        }))
    }

    async fn renew(&self, key: &str, owner: &str, ttl: Duration) -> Result<bool, KvError> {
        Ok(self.write(|map, now| match map.get_mut(key) {
            Some((Entry::Text(v), exp)) if *exp > now && v == owner => {
                *exp = now + ttl;
                true
            }
            _ => false,
        }))
    }

    async fn unlock(&self, key: &str, owner: &str) -> Result<bool, KvError> {
        Ok(self.write(|map, now| {
            let held = holds(map, key, owner, now);
            if held {
                map.remove(key);
            }
            held
        }))
    }

    async fn set_if_owner(
        &self,
        lock: &str,
        owner: &str,
        key: &str,
        value: &str,
        ttl: Duration,
    ) -> Result<bool, KvError> {
        Ok(self.write(|map, now| {
            let held = holds(map, lock, owner, now);
            if held {
                map.insert(key.to_owned(), (Entry::Text(value.to_owned()), now + ttl));
            }
            held
        }))
    }
}

/// Redis store (a multiplexed connection that reconnects by itself).
pub struct RedisKv {
    conn: redis::aio::ConnectionManager,
    prefix: String,
}

impl std::fmt::Debug for RedisKv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisKv")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisKv {
    /// Connects to `url`; every key gets `prefix`.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, KvError> {
        let client = redis::Client::open(url).map_err(|e| KvError(e.to_string()))?;
        let conn = redis::aio::ConnectionManager::new(client)
            .await
            .map_err(|e| KvError(e.to_string()))?;
        Ok(Self {
            conn,
            prefix: prefix.to_owned(),
        })
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// Runs the Lua `script` on `keys` (prefixed here) and `args`; its integer answer.
    async fn eval(&self, script: &str, keys: &[&str], args: &[&str]) -> Result<u64, KvError> {
        let mut c = self.conn.clone();
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(script).arg(keys.len());
        for k in keys {
            cmd.arg(self.key(k));
        }
        cmd.arg(args)
            .query_async(&mut c)
            .await
            .map_err(|e| KvError(e.to_string()))
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

#[async_trait]
impl Kv for RedisKv {
    async fn get(&self, key: &str) -> Result<Option<String>, KvError> {
        let mut c = self.conn.clone();
        redis::cmd("GET")
            .arg(self.key(key))
            .query_async(&mut c)
            .await
            .map_err(|e| KvError(e.to_string()))
    }

    async fn set(&self, key: &str, value: &str, ttl: Duration) -> Result<(), KvError> {
        let mut c = self.conn.clone();
        redis::cmd("SET")
            .arg(self.key(key))
            .arg(value)
            .arg("PX")
            .arg(millis(ttl))
            .query_async::<()>(&mut c)
            .await
            .map_err(|e| KvError(e.to_string()))
    }

    async fn del(&self, key: &str) -> Result<bool, KvError> {
        let mut c = self.conn.clone();
        let n: u64 = redis::cmd("DEL")
            .arg(self.key(key))
            .query_async(&mut c)
            .await
            .map_err(|e| KvError(e.to_string()))?;
        Ok(n > 0)
    }

    async fn take(&self, key: &str) -> Result<Option<String>, KvError> {
        let mut c = self.conn.clone();
        redis::cmd("GETDEL")
            .arg(self.key(key))
            .query_async(&mut c)
            .await
            .map_err(|e| KvError(e.to_string()))
    }

    async fn incr(&self, key: &str, window: Duration) -> Result<u64, KvError> {
        self.incr_by(key, 1, window).await
    }

    async fn incr_by(&self, key: &str, by: u64, window: Duration) -> Result<u64, KvError> {
        let mut c = self.conn.clone();
        let key = self.key(key);
        let (n, _): (u64, i64) = redis::pipe()
            .atomic()
            .cmd("INCRBY")
            .arg(&key)
            .arg(by)
            .cmd("PEXPIRE")
            .arg(&key)
            .arg(millis(window))
            .arg("NX")
            .query_async(&mut c)
            .await
            .map_err(|e| KvError(e.to_string()))?;
        Ok(n)
    }

    async fn lock(&self, key: &str, owner: &str, ttl: Duration) -> Result<Option<u64>, KvError> {
        const SCRIPT: &str = "if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then \
             return redis.call('INCR', KEYS[2]) else return 0 end";
        let fence_key = format!("{key}:fence");
        let ttl = millis(ttl).to_string();
        let fence = self
            .eval(SCRIPT, &[key, &fence_key], &[owner, &ttl])
            .await?;
        Ok((fence > 0).then_some(fence))
    }

    async fn renew(&self, key: &str, owner: &str, ttl: Duration) -> Result<bool, KvError> {
        const SCRIPT: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then \
             return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end";
        let ttl = millis(ttl).to_string();
        Ok(self.eval(SCRIPT, &[key], &[owner, &ttl]).await? > 0)
    }

    async fn unlock(&self, key: &str, owner: &str) -> Result<bool, KvError> {
        const SCRIPT: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then \
             return redis.call('DEL', KEYS[1]) else return 0 end";
        Ok(self.eval(SCRIPT, &[key], &[owner]).await? > 0)
    }

    async fn set_if_owner(
        &self,
        lock: &str,
        owner: &str,
        key: &str,
        value: &str,
        ttl: Duration,
    ) -> Result<bool, KvError> {
        const SCRIPT: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then \
             redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3]) return 1 else return 0 end";
        let ttl = millis(ttl).to_string();
        Ok(self
            .eval(SCRIPT, &[lock, key], &[owner, value, &ttl])
            .await?
            > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_values_expire() {
        let kv = MemoryKv::default();
        kv.set("a", "1", Duration::from_millis(30)).await.unwrap();
        assert_eq!(kv.get("a").await.unwrap().as_deref(), Some("1"));
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert_eq!(kv.get("a").await.unwrap(), None);
        assert!(!kv.del("a").await.unwrap());
    }

    #[tokio::test]
    async fn memory_take_is_single_use() {
        let kv = MemoryKv::default();
        kv.set("t", "v", Duration::from_secs(5)).await.unwrap();
        assert_eq!(kv.take("t").await.unwrap().as_deref(), Some("v"));
        assert_eq!(kv.take("t").await.unwrap(), None);
        kv.set("x", "v", Duration::from_millis(10)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(kv.take("x").await.unwrap(), None);
    }

    #[tokio::test]
    async fn memory_counters_use_fixed_windows() {
        let kv = MemoryKv::default();
        let w = Duration::from_millis(40);
        assert_eq!(kv.incr("c", w).await.unwrap(), 1);
        assert_eq!(kv.incr("c", w).await.unwrap(), 2);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(kv.incr("c", w).await.unwrap(), 1);
    }

    /// The lock contract, on any store.
    async fn locks_fence_and_refuse_strangers(kv: &dyn Kv) {
        let ttl = Duration::from_millis(300);
        let first = kv.lock("job", "a", ttl).await.unwrap().expect("free lock");
        assert_eq!(kv.lock("job", "b", ttl).await.unwrap(), None, "held");
        assert!(kv.renew("job", "a", ttl).await.unwrap());
        assert!(!kv.renew("job", "b", ttl).await.unwrap());
        assert!(
            !kv.unlock("job", "b").await.unwrap(),
            "only the owner releases"
        );
        assert!(kv.set_if_owner("job", "a", "out", "1", ttl).await.unwrap());
        assert_eq!(kv.get("out").await.unwrap().as_deref(), Some("1"));
        // "a" stalls past its lease; "b" takes over with a larger token.
        tokio::time::sleep(Duration::from_millis(400)).await;
        let second = kv
            .lock("job", "b", ttl)
            .await
            .unwrap()
            .expect("expired lock");
        assert!(second > first);
        assert!(!kv.renew("job", "a", ttl).await.unwrap());
        assert!(
            !kv.set_if_owner("job", "a", "out", "late", ttl)
                .await
                .unwrap()
        );
        assert!(
            !kv.unlock("job", "a").await.unwrap(),
            "a late owner leaves the successor alone"
        );
        assert!(kv.set_if_owner("job", "b", "out", "2", ttl).await.unwrap());
        assert_eq!(kv.get("out").await.unwrap().as_deref(), Some("2"));
        assert!(kv.unlock("job", "b").await.unwrap());
        assert!(kv.lock("job", "c", ttl).await.unwrap().expect("released") > second);
    }

    #[tokio::test]
    async fn memory_locks() {
        locks_fence_and_refuse_strangers(&MemoryKv::default()).await;
    }

    #[tokio::test]
    async fn redis_locks() {
        let url = std::env::var("INSTAR_TEST_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
        let prefix = format!(
            "instar-test-lock-{}-{}:",
            std::process::id(),
            crate::time::now_micros()
        );
        let kv = RedisKv::connect(&url, &prefix).await.unwrap();
        locks_fence_and_refuse_strangers(&kv).await;
        kv.del("job:fence").await.unwrap();
        kv.del("job").await.unwrap();
        kv.del("out").await.unwrap();
    }

    #[tokio::test]
    async fn redis_store_round_trip() {
        let url = std::env::var("INSTAR_TEST_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
        let prefix = format!(
            "instar-test-kv-{}-{}:",
            std::process::id(),
            crate::time::now_micros()
        );
        let kv = RedisKv::connect(&url, &prefix).await.unwrap();
        kv.set("code", "12345", Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(kv.get("code").await.unwrap().as_deref(), Some("12345"));
        assert!(kv.del("code").await.unwrap());
        assert_eq!(kv.get("code").await.unwrap(), None);
        kv.set("once", "v", Duration::from_secs(5)).await.unwrap();
        assert_eq!(kv.take("once").await.unwrap().as_deref(), Some("v"));
        assert_eq!(kv.take("once").await.unwrap(), None);
        assert_eq!(kv.incr("n", Duration::from_secs(5)).await.unwrap(), 1);
        assert_eq!(kv.incr("n", Duration::from_secs(5)).await.unwrap(), 2);
        kv.del("n").await.unwrap();
    }
}
