//! Where the personalised feed's state lives: each user's recommendation list with its page
//! pointer, the "seen" set (posts served to, viewed, liked or commented on by the user) and the
//! set of users whose interest profile changed since their list was built.
//!
//! One trait, [`FeedState`], two homes:
//! - [`MemoryFeedState`] (the embedded default): in this process, bounded. At most
//!   [`MEMORY_USERS`] users have a list and at most [`MEMORY_USERS`] a seen set (each at most
//!   [`MAX_SEEN`] posts); past that, an arbitrary other user's entry is dropped (that user gets
//!   today's non-personalised feed until the next rebuild). A list is at most 330 ids, so the
//!   worst case is about 10,000 × (330 × 8 + 1,000 × 16) bytes ≈ 190 MB; typical use is far
//!   below. A restart loses it all; the next rebuild (the nightly run, or the user's next
//!   interaction) makes it again.
//! - [`RedisFeedState`] (scale-out): in Redis, so every `instar social` process serves every user
//!   and a restart loses nothing. Keys, under the key-value store's prefix: `feed:list:{user}` (a
//!   list, a header element then the ids), `feed:ptr:{user}` (the next page), both for
//!   [`LIST_TTL`]; `feed:seen:{user}` (a sorted set by time, trimmed to 30 days and
//!   [`MAX_SEEN`] members, expiring 30 days after its last write); `feed:changed` (a set of user
//!   ids, expiring a day after its last write).
//!
//! A list written by a cluster job is fenced: it is written only while the job's run still holds
//! its lock (checked in the same Redis script as the write), so a holder that lost its lock cannot
//! write over its successor's lists.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;

use crate::jobs::Lease;
use crate::kv::KvError;

/// How long a list and its pointer live without a rebuild (the nightly run rebuilds daily).
pub const LIST_TTL: Duration = Duration::from_secs(3 * 24 * 60 * 60);
/// How long a post stays seen (contract: 30 days).
pub const SEEN_TTL: Duration = Duration::from_secs(30 * 24 * 60 * 60);
/// The most seen posts kept per user (the oldest go first).
pub const MAX_SEEN: usize = 1_000;
/// The most users the in-process state keeps lists (and, separately, seen sets) for.
pub const MEMORY_USERS: usize = 10_000;
/// The most users the in-process state remembers as changed.
const MEMORY_CHANGED: usize = 100_000;

/// What a page request found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Page {
    /// The user has no list.
    NoList,
    /// `pages` was given and differs from the stored pointer (nothing changed).
    Mismatch,
    /// Page `pointer` of the list (the pointer now stands at `pointer + 1`).
    Served {
        /// The page index served.
        pointer: i64,
        /// Its post ids, in the list's order.
        ids: Vec<i64>,
        /// Whether this page holds the end of the list.
        last: bool,
    },
    /// The pointer is past the list's end (nothing changed).
    UsedUp,
}

/// The personalised feed's state ([module docs](self)).
#[async_trait]
pub trait FeedState: Send + Sync + std::fmt::Debug + 'static {
    /// Replaces `user`'s list by `ids` and resets its pointer to 0. With a `lease`, only while
    /// that run still holds its lock (false: nothing was written).
    async fn put_list(
        &self,
        user: &str,
        ids: &[i64],
        lease: Option<&Lease>,
    ) -> Result<bool, KvError>;
    /// Serves the page at the pointer (checked against `pages` when given) and advances it. A
    /// pointer at 0 accepts any `pages`: the list was rebuilt (every rebuild resets the pointer)
    /// while the frontend was paging through the old one, and its first page carries on the
    /// scroll rather than a `BR` that would stop it (the new list leaves out what was served).
    async fn take_page(&self, user: &str, pages: Option<i64>, size: usize)
    -> Result<Page, KvError>;
    /// `user`'s whole list (None: no list).
    async fn list(&self, user: &str) -> Result<Option<Vec<i64>>, KvError>;
    /// Marks `ids` seen by `user` at `at_ms` (ms since the epoch).
    async fn add_seen(&self, user: &str, ids: &[i64], at_ms: i64) -> Result<(), KvError>;
    /// The posts `user` saw at or after `since_ms`.
    async fn seen(&self, user: &str, since_ms: i64) -> Result<Vec<i64>, KvError>;
    /// Notes that `user`'s interest profile changed.
    async fn mark_changed(&self, user: &str) -> Result<(), KvError>;
    /// Whether `user` was marked changed; clears the mark.
    async fn take_changed(&self, user: &str) -> Result<bool, KvError>;
    /// Up to `max` users marked changed; clears their marks.
    async fn drain_changed(&self, max: usize) -> Result<Vec<String>, KvError>;
}

/// Opens the state that goes with the key-value store `cfg` (in process, or the same Redis).
///
/// # Errors
/// Redis could not be reached.
pub async fn open(cfg: &crate::kv::KvConfig) -> Result<std::sync::Arc<dyn FeedState>, KvError> {
    Ok(match cfg {
        crate::kv::KvConfig::Memory => std::sync::Arc::new(MemoryFeedState::default()),
        crate::kv::KvConfig::Redis { url, prefix } => {
            std::sync::Arc::new(RedisFeedState::connect(url, prefix).await?)
        }
    })
}

#[derive(Debug)]
struct ListEntry {
    ids: Vec<i64>,
    pointer: i64,
    expires: Instant,
}

#[derive(Debug, Default)]
struct MemoryInner {
    lists: HashMap<String, ListEntry>,
    /// Per user: (post, ms), oldest first.
    seen: HashMap<String, VecDeque<(i64, i64)>>,
    changed: HashSet<String>,
}

/// In-process state, bounded ([module docs](self)).
#[derive(Debug, Default)]
pub struct MemoryFeedState {
    inner: Mutex<MemoryInner>,
}

/// Makes room for one more key in `map` (at most `cap` entries): drops an arbitrary other one.
fn make_room<V>(map: &mut HashMap<String, V>, key: &str, cap: usize) {
    if map.len() >= cap
        && !map.contains_key(key)
        && let Some(victim) = map.keys().next().cloned()
    {
        map.remove(&victim);
    }
}

/// The page at `pointer` of `ids`, pages of `size`.
fn page_of(ids: &[i64], pointer: i64, size: usize) -> Option<(Vec<i64>, bool)> {
    let start = usize::try_from(pointer).ok()?.checked_mul(size)?;
    if start >= ids.len() {
        return None;
    }
    let end = start.saturating_add(size).min(ids.len());
    Some((ids[start..end].to_vec(), end == ids.len()))
}

#[async_trait]
impl FeedState for MemoryFeedState {
    async fn put_list(
        &self,
        user: &str,
        ids: &[i64],
        lease: Option<&Lease>,
    ) -> Result<bool, KvError> {
        if let Some(lease) = lease
            && lease.lost().is_cancelled()
        {
            return Ok(false);
        }
        let mut inner = self.inner.lock();
        make_room(&mut inner.lists, user, MEMORY_USERS);
        inner.lists.insert(
            user.to_owned(),
            ListEntry {
                ids: ids.to_vec(),
                pointer: 0,
                expires: Instant::now() + LIST_TTL,
            },
        );
        Ok(true)
    }

    async fn take_page(
        &self,
        user: &str,
        pages: Option<i64>,
        size: usize,
    ) -> Result<Page, KvError> {
        let mut inner = self.inner.lock();
        let Some(entry) = inner.lists.get_mut(user) else {
            return Ok(Page::NoList);
        };
        if entry.expires <= Instant::now() {
            inner.lists.remove(user);
            return Ok(Page::NoList);
        }
        // Pointer 0 with `pages` given: the list was rebuilt while the frontend paged through the
        // old one; its first page carries on the scroll (see [`FeedState::take_page`]).
        if pages.is_some_and(|p| p != entry.pointer && entry.pointer != 0) {
            return Ok(Page::Mismatch);
        }
        let Some((ids, last)) = page_of(&entry.ids, entry.pointer, size) else {
            return Ok(Page::UsedUp);
        };
        let pointer = entry.pointer;
        entry.pointer += 1;
        Ok(Page::Served { pointer, ids, last })
    }

    async fn list(&self, user: &str) -> Result<Option<Vec<i64>>, KvError> {
        let inner = self.inner.lock();
        Ok(inner
            .lists
            .get(user)
            .filter(|e| e.expires > Instant::now())
            .map(|e| e.ids.clone()))
    }

    async fn add_seen(&self, user: &str, ids: &[i64], at_ms: i64) -> Result<(), KvError> {
        let mut inner = self.inner.lock();
        make_room(&mut inner.seen, user, MEMORY_USERS);
        let seen = inner.seen.entry(user.to_owned()).or_default();
        let horizon = at_ms - millis(SEEN_TTL);
        while seen.front().is_some_and(|(_, t)| *t < horizon) {
            seen.pop_front();
        }
        for &id in ids {
            seen.retain(|(p, _)| *p != id);
            seen.push_back((id, at_ms));
        }
        while seen.len() > MAX_SEEN {
            seen.pop_front();
        }
        Ok(())
    }

    async fn seen(&self, user: &str, since_ms: i64) -> Result<Vec<i64>, KvError> {
        let inner = self.inner.lock();
        Ok(inner
            .seen
            .get(user)
            .map(|s| {
                s.iter()
                    .filter(|(_, t)| *t >= since_ms)
                    .map(|(p, _)| *p)
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn mark_changed(&self, user: &str) -> Result<(), KvError> {
        let mut inner = self.inner.lock();
        if inner.changed.len() < MEMORY_CHANGED {
            inner.changed.insert(user.to_owned());
        }
        Ok(())
    }

    async fn take_changed(&self, user: &str) -> Result<bool, KvError> {
        Ok(self.inner.lock().changed.remove(user))
    }

    async fn drain_changed(&self, max: usize) -> Result<Vec<String>, KvError> {
        let mut inner = self.inner.lock();
        let users: Vec<String> = inner.changed.iter().take(max).cloned().collect();
        for u in &users {
            inner.changed.remove(u);
        }
        Ok(users)
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Redis state ([module docs](self)).
pub struct RedisFeedState {
    conn: redis::aio::ConnectionManager,
    prefix: String,
}

impl std::fmt::Debug for RedisFeedState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisFeedState")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

fn kv_err(e: redis::RedisError) -> KvError {
    KvError(e.to_string())
}

/// The first element of every stored list (so that an empty list is still a key).
const HEADER: &str = "L";

impl RedisFeedState {
    /// Connects to `url`; every key gets `prefix` (the key-value store's, so a job's lock key is
    /// the one [`crate::kv::RedisKv`] wrote).
    ///
    /// # Errors
    /// Redis could not be reached.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, KvError> {
        let client = redis::Client::open(url).map_err(kv_err)?;
        let conn = redis::aio::ConnectionManager::new(client)
            .await
            .map_err(kv_err)?;
        Ok(Self {
            conn,
            prefix: prefix.to_owned(),
        })
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn list_key(&self, user: &str) -> String {
        self.key(&format!("feed:list:{user}"))
    }

    fn ptr_key(&self, user: &str) -> String {
        self.key(&format!("feed:ptr:{user}"))
    }

    fn seen_key(&self, user: &str) -> String {
        self.key(&format!("feed:seen:{user}"))
    }

    fn changed_key(&self) -> String {
        self.key("feed:changed")
    }

    /// [`FeedState::put_list`], written only while `fence` = (lock key, owner) holds that lock
    /// (checked in the same script as the write).
    ///
    /// # Errors
    /// Redis failed.
    pub async fn put_list_fenced(
        &self,
        user: &str,
        ids: &[i64],
        fence: Option<(&str, &str)>,
    ) -> Result<bool, KvError> {
        // KEYS: lock, list, pointer. ARGV: owner ('' = unfenced), ttl ms, header, ids…
        const SCRIPT: &str = "if ARGV[1] ~= '' and redis.call('GET', KEYS[1]) ~= ARGV[1] then \
             return 0 end \
             redis.call('DEL', KEYS[2], KEYS[3]) \
             for i = 3, #ARGV, 500 do \
               redis.call('RPUSH', KEYS[2], unpack(ARGV, i, math.min(i + 499, #ARGV))) \
             end \
             redis.call('PEXPIRE', KEYS[2], ARGV[2]) \
             return 1";
        let (lock, owner) = match fence {
            Some((lock, owner)) => (self.key(lock), owner.to_owned()),
            None => (self.key("feed:nolock"), String::new()),
        };
        let mut c = self.conn.clone();
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(SCRIPT)
            .arg(3)
            .arg(lock)
            .arg(self.list_key(user))
            .arg(self.ptr_key(user))
            .arg(owner)
            .arg(millis(LIST_TTL))
            .arg(HEADER);
        for id in ids {
            cmd.arg(*id);
        }
        let n: i64 = cmd.query_async(&mut c).await.map_err(kv_err)?;
        Ok(n > 0)
    }
}

#[async_trait]
impl FeedState for RedisFeedState {
    async fn put_list(
        &self,
        user: &str,
        ids: &[i64],
        lease: Option<&Lease>,
    ) -> Result<bool, KvError> {
        let fence = lease.map(|l| (l.lock_key(), l.owner()));
        self.put_list_fenced(user, ids, fence).await
    }

    async fn take_page(
        &self,
        user: &str,
        pages: Option<i64>,
        size: usize,
    ) -> Result<Page, KvError> {
        // KEYS: list, pointer. ARGV: pages ('' = none), size, ttl ms.
        // Answers {'N'} no list, {'M'} mismatch, {'U'} used up, or {'S', pointer, last, ids…}.
        const SCRIPT: &str = "if redis.call('EXISTS', KEYS[1]) == 0 then return {'N'} end \
             local ptr = tonumber(redis.call('GET', KEYS[2]) or '0') \
             if ARGV[1] ~= '' and tonumber(ARGV[1]) ~= ptr and ptr ~= 0 then return {'M'} end \
             local size = tonumber(ARGV[2]) \
             local n = redis.call('LLEN', KEYS[1]) - 1 \
             local start = ptr * size \
             if start >= n then return {'U'} end \
             local ids = redis.call('LRANGE', KEYS[1], start + 1, start + size) \
             redis.call('SET', KEYS[2], tostring(ptr + 1), 'PX', ARGV[3]) \
             local last = '0' \
             if start + size >= n then last = '1' end \
             table.insert(ids, 1, last) \
             table.insert(ids, 1, tostring(ptr)) \
             table.insert(ids, 1, 'S') \
             return ids";
        let mut c = self.conn.clone();
        let answer: Vec<String> = redis::cmd("EVAL")
            .arg(SCRIPT)
            .arg(2)
            .arg(self.list_key(user))
            .arg(self.ptr_key(user))
            .arg(pages.map(|p| p.to_string()).unwrap_or_default())
            .arg(size)
            .arg(millis(LIST_TTL))
            .query_async(&mut c)
            .await
            .map_err(kv_err)?;
        let bad = || KvError("feed page: unexpected answer".to_owned());
        match answer.first().map(String::as_str) {
            Some("N") => Ok(Page::NoList),
            Some("M") => Ok(Page::Mismatch),
            Some("U") => Ok(Page::UsedUp),
            Some("S") if answer.len() >= 3 => {
                let pointer = answer[1].parse().map_err(|_| bad())?;
                let last = answer[2] == "1";
                let ids = answer[3..]
                    .iter()
                    .map(|s| s.parse::<i64>().map_err(|_| bad()))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(Page::Served { pointer, ids, last })
            }
            _ => Err(bad()),
        }
    }

    async fn list(&self, user: &str) -> Result<Option<Vec<i64>>, KvError> {
        let mut c = self.conn.clone();
        let items: Vec<String> = redis::cmd("LRANGE")
            .arg(self.list_key(user))
            .arg(0)
            .arg(-1)
            .query_async(&mut c)
            .await
            .map_err(kv_err)?;
        if items.is_empty() {
            return Ok(None);
        }
        Ok(Some(
            items
                .iter()
                .skip(1)
                .filter_map(|s| s.parse().ok())
                .collect(),
        ))
    }

    async fn add_seen(&self, user: &str, ids: &[i64], at_ms: i64) -> Result<(), KvError> {
        if ids.is_empty() {
            return Ok(());
        }
        let key = self.seen_key(user);
        let mut c = self.conn.clone();
        let mut pipe = redis::pipe();
        pipe.atomic();
        let zadd = pipe.cmd("ZADD").arg(&key);
        for id in ids {
            zadd.arg(at_ms).arg(*id);
        }
        pipe.ignore()
            .cmd("ZREMRANGEBYSCORE")
            .arg(&key)
            .arg("-inf")
            .arg(format!("({}", at_ms - millis(SEEN_TTL)))
            .ignore()
            .cmd("ZREMRANGEBYRANK")
            .arg(&key)
            .arg(0)
            .arg(-i64::try_from(MAX_SEEN).unwrap_or(i64::MAX) - 1)
            .ignore()
            .cmd("PEXPIRE")
            .arg(&key)
            .arg(millis(SEEN_TTL))
            .ignore();
        pipe.query_async::<()>(&mut c).await.map_err(kv_err)
    }

    async fn seen(&self, user: &str, since_ms: i64) -> Result<Vec<i64>, KvError> {
        let mut c = self.conn.clone();
        let items: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(self.seen_key(user))
            .arg(since_ms)
            .arg("+inf")
            .query_async(&mut c)
            .await
            .map_err(kv_err)?;
        Ok(items.iter().filter_map(|s| s.parse().ok()).collect())
    }

    async fn mark_changed(&self, user: &str) -> Result<(), KvError> {
        let key = self.changed_key();
        let mut c = self.conn.clone();
        redis::pipe()
            .atomic()
            .cmd("SADD")
            .arg(&key)
            .arg(user)
            .ignore()
            .cmd("PEXPIRE")
            .arg(&key)
            .arg(24 * 60 * 60 * 1000)
            .ignore()
            .query_async::<()>(&mut c)
            .await
            .map_err(kv_err)
    }

    async fn take_changed(&self, user: &str) -> Result<bool, KvError> {
        let mut c = self.conn.clone();
        let n: i64 = redis::cmd("SREM")
            .arg(self.changed_key())
            .arg(user)
            .query_async(&mut c)
            .await
            .map_err(kv_err)?;
        Ok(n > 0)
    }

    async fn drain_changed(&self, max: usize) -> Result<Vec<String>, KvError> {
        let mut c = self.conn.clone();
        redis::cmd("SPOP")
            .arg(self.changed_key())
            .arg(max.max(1))
            .query_async(&mut c)
            .await
            .map_err(kv_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn pages_follow_the_pointer(state: &dyn FeedState, user: &str) {
        let ids: Vec<i64> = (1..=65).rev().collect();
        assert_eq!(state.take_page(user, None, 30).await.unwrap(), Page::NoList);
        assert!(state.put_list(user, &ids, None).await.unwrap());
        let Page::Served {
            pointer,
            ids: p0,
            last,
        } = state.take_page(user, None, 30).await.unwrap()
        else {
            panic!("no page 0");
        };
        assert_eq!((pointer, p0.len(), last, p0[0]), (0, 30, false, 65));
        assert_eq!(
            state.take_page(user, Some(0), 30).await.unwrap(),
            Page::Mismatch
        );
        let Page::Served {
            pointer, ids: p1, ..
        } = state.take_page(user, Some(1), 30).await.unwrap()
        else {
            panic!("no page 1");
        };
        assert_eq!((pointer, p1[0]), (1, 35));
        let Page::Served {
            pointer,
            ids: p2,
            last,
        } = state.take_page(user, Some(2), 30).await.unwrap()
        else {
            panic!("no page 2");
        };
        assert_eq!((pointer, p2, last), (2, vec![5, 4, 3, 2, 1], true));
        assert_eq!(
            state.take_page(user, Some(3), 30).await.unwrap(),
            Page::UsedUp
        );
        assert_eq!(state.list(user).await.unwrap().map(|l| l.len()), Some(65));
        // A rebuild resets the pointer; an empty list is a list.
        assert!(state.put_list(user, &[], None).await.unwrap());
        assert_eq!(state.take_page(user, None, 30).await.unwrap(), Page::UsedUp);
        assert_eq!(state.list(user).await.unwrap(), Some(vec![]));
        assert!(state.put_list(user, &[7], None).await.unwrap());
        // Rebuilt while the frontend was on page 3 of the old list: its next request gets the new
        // list's first page (pointer 0) instead of BR, and carries on with `pages=1`.
        assert_eq!(
            state.take_page(user, Some(3), 30).await.unwrap(),
            Page::Served {
                pointer: 0,
                ids: vec![7],
                last: true
            }
        );

        // Seen: expiry and bound.
        let now = 40 * 24 * 3600 * 1000;
        state
            .add_seen(user, &[1, 2], now - millis(SEEN_TTL) - 1)
            .await
            .unwrap();
        state.add_seen(user, &[3], now).await.unwrap();
        assert_eq!(
            state.seen(user, now - millis(SEEN_TTL)).await.unwrap(),
            vec![3]
        );
        let many: Vec<i64> = (100..100 + i64::try_from(MAX_SEEN).unwrap() + 5).collect();
        state.add_seen(user, &many, now + 1).await.unwrap();
        let seen = state.seen(user, 0).await.unwrap();
        assert_eq!(seen.len(), MAX_SEEN);
        assert!(!seen.contains(&3));

        // Changed marks.
        state.mark_changed(user).await.unwrap();
        assert!(state.take_changed(user).await.unwrap());
        assert!(!state.take_changed(user).await.unwrap());
        state.mark_changed(user).await.unwrap();
        assert_eq!(
            state.drain_changed(10).await.unwrap(),
            vec![user.to_owned()]
        );
        assert!(state.drain_changed(10).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn memory_state_pages_seen_and_marks() {
        pages_follow_the_pointer(&MemoryFeedState::default(), "ann").await;
    }

    #[tokio::test]
    async fn redis_state_pages_seen_and_marks() {
        let url = std::env::var("INSTAR_TEST_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
        let prefix = format!(
            "instar-test-feed-{}-{}:",
            std::process::id(),
            crate::time::now_micros()
        );
        let state = RedisFeedState::connect(&url, &prefix).await.unwrap();
        pages_follow_the_pointer(&state, "ann").await;
    }

    /// A holder whose lock expired and was taken over cannot write over its successor's lists.
    #[tokio::test]
    async fn redis_list_writes_are_fenced_by_the_job_lock() {
        use crate::kv::Kv as _;
        let url = std::env::var("INSTAR_TEST_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
        let prefix = format!(
            "instar-test-feed-fence-{}-{}:",
            std::process::id(),
            crate::time::now_micros()
        );
        let kv = crate::kv::RedisKv::connect(&url, &prefix).await.unwrap();
        let state = RedisFeedState::connect(&url, &prefix).await.unwrap();
        let lock = "job:rebuild";
        assert!(
            kv.lock(lock, "old", Duration::from_millis(150))
                .await
                .unwrap()
                .is_some()
        );
        assert!(
            state
                .put_list_fenced("ann", &[1], Some((lock, "old")))
                .await
                .unwrap()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(
            kv.lock(lock, "new", Duration::from_secs(5))
                .await
                .unwrap()
                .is_some()
        );
        assert!(
            state
                .put_list_fenced("ann", &[2], Some((lock, "new")))
                .await
                .unwrap()
        );
        // The old holder's late write is refused and changes nothing.
        assert!(
            !state
                .put_list_fenced("ann", &[3], Some((lock, "old")))
                .await
                .unwrap()
        );
        assert_eq!(state.list("ann").await.unwrap(), Some(vec![2]));
        assert!(kv.unlock(lock, "new").await.unwrap());
        assert!(
            !state
                .put_list_fenced("ann", &[4], Some((lock, "new")))
                .await
                .unwrap()
        );
        for key in ["feed:list:ann", "job:rebuild:fence"] {
            kv.del(key).await.unwrap();
        }
    }

    #[test]
    fn the_memory_state_is_bounded() {
        let mut map: HashMap<String, u8> = HashMap::new();
        for i in 0..10 {
            make_room(&mut map, &i.to_string(), 4);
            map.insert(i.to_string(), 0);
        }
        assert_eq!(map.len(), 4);
    }
}
