//! Read cache of what `GET /api/post/get/details_info` and `GET /api/feed` show: post rows (with
//! their counters), post images (with user tags), authors' display fields, and each viewer's liked
//! post ids.
//!
//! # Consistency
//!
//! * **Images** never change once a post is committed (there is no post edit), so they are cached
//!   until evicted.
//! * **Tags** (hashtags and image labels) change once after the commit, when the labelling worker
//!   stores a post's `AI_TAG` rows: it publishes [`Change::Tags`], which drops the post's tags and
//!   its rendered view (not its row).
//! * **Post rows, authors and liked sets** are invalidated by the writes that change them, *after*
//!   the commit: a like or unlike ([`Change::Post`] and [`Change::Likes`] of the liker), a comment
//!   ([`Change::Post`]), a profile edit or profile image ([`Change::User`]). The writing process
//!   drops its own entries before it answers, so a client always reads its own writes from the
//!   process it wrote to.
//! * **Other processes** (scale-out: several `instar social` behind nginx) learn of each change
//!   through the bus: every process binds its own node to the topic [`INVALIDATION_TOPIC`] (a name
//!   no STOMP client can subscribe to: `:` is not allowed in destinations), and a write publishes
//!   its changes there. They are stale for the bus's delivery time (milliseconds).
//! * **Lost invalidations** (the bus was down when a change was published, or this process lost
//!   its connection) are bounded two ways: every entry expires within [`ReadCacheConfig::ttl`] of
//!   being loaded (75–100 % of it, so that entries loaded together do not expire together), and a process whose bus comes back after being down clears everything.
//! * **A read racing a write** cannot put an old value back: a reader takes a [`Ticket`] (the
//!   generation of the key's slot) before it reads the database, and its fill is dropped if the
//!   key was invalidated in between. Invalidation and fill of one slot are serialised by a lock.

use std::collections::HashSet;
use std::hash::{BuildHasher, Hash};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use broker_bridge::{Bus, Envelope, Target};
use parking_lot::Mutex;
use quick_cache::Equivalent;
use quick_cache::sync::Cache;
use serde::Serialize;
use serde_json::value::RawValue;

use crate::model::{ImageTags, SimpleUser};
use crate::store::posts::PostRow;

/// The bus topic that carries invalidations between social processes.
pub const INVALIDATION_TOPIC: &str = "instar:cache";
/// Default capacity: post rows and images each; authors and liked sets get a quarter.
pub const DEFAULT_ENTRIES: usize = 100_000;
/// Default lifetime of an entry (each gets 75–100 % of it). It only bounds how long a lost
/// invalidation can leave an entry stale; writes through the service invalidate at once.
pub const DEFAULT_TTL: Duration = Duration::from_secs(600);
/// A viewer with more likes than this is not cached (their likes are read per request).
pub const MAX_LIKED: usize = 4_096;
/// Default of [`ReadCacheConfig::author_posts`].
pub const DEFAULT_AUTHOR_POSTS: usize = 1_000;
/// Default of [`ReadCacheConfig::followees`].
pub const DEFAULT_FOLLOWEES: usize = 2_000;
/// Generation slots per table (a power of two).
const SLOTS: usize = 1024;
/// Change epochs (a power of two): a change bumps the epoch of its slot after dropping its
/// entries, and whatever was rendered from a slot's older epoch is ignored.
const EPOCH_SLOTS: usize = 16_384;
/// Default of [`ReadCacheConfig::feed_pages`].
pub const DEFAULT_FEED_PAGES: usize = 1_024;
/// A feed page larger than this is not kept (so kept pages take at most this times
/// [`ReadCacheConfig::feed_pages`]; a typical page of 30 posts is about 13 KB).
pub const MAX_FEED_PAGE_BYTES: usize = 64 * 1024;

/// Read cache settings.
#[derive(Debug, Clone)]
pub struct ReadCacheConfig {
    /// Entries of the post-row and the image table (0: no caching at all).
    pub entries: usize,
    /// Lifetime of an entry.
    pub ttl: Duration,
    /// Newest post ids kept per author for the feed's followed tier.
    pub author_posts: usize,
    /// Most followed users kept per viewer (beyond, the followed tier is read from the database).
    pub followees: usize,
    /// Rendered feed pages kept (about 13 KB each for 30 posts); 0 keeps none.
    pub feed_pages: usize,
}

impl Default for ReadCacheConfig {
    fn default() -> Self {
        Self {
            entries: DEFAULT_ENTRIES,
            ttl: DEFAULT_TTL,
            author_posts: DEFAULT_AUTHOR_POSTS,
            followees: DEFAULT_FOLLOWEES,
            feed_pages: DEFAULT_FEED_PAGES,
        }
    }
}

/// Something that changed in the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A post's row (its counters).
    Post(i64),
    /// A post's tags (image labels stored after the commit).
    Tags(i64),
    /// A user's display fields (name, profile image).
    User(String),
    /// The set of posts a user likes.
    Likes(String),
    /// The users a user follows.
    Follows(String),
    /// The posts a user wrote (a new one).
    Posts(String),
}

impl Change {
    fn encode(&self, out: &mut String) {
        use std::fmt::Write as _;
        let _ = match self {
            Change::Post(id) => writeln!(out, "post:{id}"),
            Change::Tags(id) => writeln!(out, "tags:{id}"),
            Change::User(u) => writeln!(out, "user:{u}"),
            Change::Likes(u) => writeln!(out, "likes:{u}"),
            Change::Follows(u) => writeln!(out, "follows:{u}"),
            Change::Posts(u) => writeln!(out, "posts:{u}"),
        };
    }

    fn decode(line: &str) -> Option<Change> {
        let (kind, key) = line.split_once(':')?;
        match kind {
            "post" => key.parse().ok().map(Change::Post),
            "tags" => key.parse().ok().map(Change::Tags),
            "user" if !key.is_empty() => Some(Change::User(key.to_owned())),
            "likes" if !key.is_empty() => Some(Change::Likes(key.to_owned())),
            "follows" if !key.is_empty() => Some(Change::Follows(key.to_owned())),
            "posts" if !key.is_empty() => Some(Change::Posts(key.to_owned())),
            _ => None,
        }
    }

    /// The lines of an invalidation message body (unknown lines are skipped).
    pub fn decode_all(body: &[u8]) -> Vec<Change> {
        String::from_utf8_lossy(body)
            .lines()
            .filter_map(Change::decode)
            .collect()
    }
}

impl Change {
    /// What this change makes stale.
    pub fn dep(&self) -> Dep<'_> {
        match self {
            // What was rendered from a post's tags was rendered from its row too.
            Change::Post(id) | Change::Tags(id) => Dep::Post(*id),
            Change::User(u) => Dep::User(u),
            Change::Likes(u) => Dep::Likes(u),
            Change::Follows(u) => Dep::Follows(u),
            Change::Posts(u) => Dep::Posts(u),
        }
    }
}

/// Something a rendered response was built from: the key of a [`Change`], borrowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dep<'a> {
    /// A post's row.
    Post(i64),
    /// A user's display fields.
    User(&'a str),
    /// The posts a user likes.
    Likes(&'a str),
    /// The users a user follows.
    Follows(&'a str),
    /// The posts a user wrote.
    Posts(&'a str),
}

/// The epochs of the things a response was rendered from, each read *before* the thing itself
/// was read from the cache. The response is current while every epoch is. A response with a
/// part that did not come from the cache is not kept ([`Watch::give_up`]).
#[derive(Debug)]
pub struct Watch {
    seen: Vec<(u32, u64)>,
    complete: bool,
}

impl Default for Watch {
    fn default() -> Self {
        Self {
            seen: Vec::with_capacity(96),
            complete: true,
        }
    }
}

impl Watch {
    /// A watch that notes nothing, for a response that is not to be kept.
    pub fn off() -> Self {
        Self {
            seen: Vec::new(),
            complete: false,
        }
    }

    /// A part came from elsewhere than the cache: the response is not to be kept.
    pub fn give_up(&mut self) {
        self.complete = false;
        self.seen.clear();
    }

    /// Whether every part came from the cache.
    pub fn complete(&self) -> bool {
        self.complete
    }
}

/// Per-slot change epochs.
struct Epochs {
    slots: Box<[AtomicU64]>,
    hasher: foldhash::fast::RandomState,
}

impl Epochs {
    fn new() -> Self {
        Self {
            slots: (0..EPOCH_SLOTS).map(|_| AtomicU64::new(0)).collect(),
            hasher: foldhash::fast::RandomState::default(),
        }
    }

    fn slot(&self, dep: Dep<'_>) -> u32 {
        // Truncation is fine: only the low bits pick the slot.
        #[allow(clippy::cast_possible_truncation)]
        let h = self.hasher.hash_one(dep) as u32;
        // EPOCH_SLOTS fits in u32.
        #[allow(clippy::cast_possible_truncation)]
        let mask = (EPOCH_SLOTS - 1) as u32;
        h & mask
    }

    fn get(&self, slot: u32) -> u64 {
        self.slots[slot as usize].load(Ordering::Acquire)
    }

    fn read(&self, dep: Dep<'_>) -> (u32, u64) {
        let slot = self.slot(dep);
        (slot, self.get(slot))
    }

    fn bump(&self, dep: Dep<'_>) {
        self.slots[self.slot(dep) as usize].fetch_add(1, Ordering::AcqRel);
    }

    fn current(&self, seen: &[(u32, u64)]) -> bool {
        seen.iter().all(|&(slot, epoch)| self.get(slot) == epoch)
    }
}

/// A viewer's feed page kept whole: the response body and the epochs it was rendered at.
struct FeedPage {
    body: bytes::Bytes,
    seen: Box<[(u32, u64)]>,
}

/// Key of a kept feed page: the viewer and the page's cursor (followed tier, below this id).
#[derive(Debug, Clone, PartialEq, Eq)]
struct PageKey {
    viewer: String,
    before: i64,
}

impl Hash for PageKey {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        PageKeyRef(&self.viewer, self.before).hash(h);
    }
}

/// A [`PageKey`] looked up without allocating.
struct PageKeyRef<'a>(&'a str, i64);

impl Hash for PageKeyRef<'_> {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.0.hash(h);
        h.write_i64(self.1);
    }
}

impl Equivalent<PageKey> for PageKeyRef<'_> {
    fn equivalent(&self, key: &PageKey) -> bool {
        self.1 == key.before && self.0 == key.viewer
    }
}

/// A viewer's likes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Liked {
    /// Every post the viewer likes.
    Set(HashSet<i64, foldhash::fast::RandomState>),
    /// More than [`MAX_LIKED`]: read per request instead.
    TooMany,
}

/// A value kept as its JSON text, written into responses without serialising it again.
pub type Json = Box<RawValue>;

/// `value` as JSON text (`null`, logged, if it cannot be serialised: never for the types kept).
pub fn to_json<T: Serialize>(value: &T) -> Json {
    serde_json::value::to_raw_value(value).unwrap_or_else(|e| {
        tracing::error!(error = %e, "serialising a cached value");
        RawValue::NULL.to_owned()
    })
}

/// A post's automatic tags, rendered as the members `"hashtags":[…],"aiTags":[…]` of its JSON
/// object (no braces, no leading or trailing comma).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagsJson(pub Box<str>);

impl TagsJson {
    /// `hashtags` and `aiTags`, each in the order given.
    pub fn render<'a>(
        hashtags: impl IntoIterator<Item = &'a str>,
        ai_tags: impl IntoIterator<Item = &'a str>,
    ) -> Self {
        fn list<'a>(out: &mut String, names: impl IntoIterator<Item = &'a str>) {
            out.push('[');
            for (i, n) in names.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                crate::json::push_str(out, n);
            }
            out.push(']');
        }
        let mut out = String::with_capacity(48);
        out.push_str("\"hashtags\":");
        list(&mut out, hashtags);
        out.push_str(",\"aiTags\":");
        list(&mut out, ai_tags);
        TagsJson(out.into_boxed_str())
    }

    /// A post without tags.
    pub fn empty() -> Self {
        Self::render([], [])
    }
}

/// The users a viewer follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Followees {
    /// All of them.
    List(Vec<String>),
    /// More than [`ReadCacheConfig::followees`]: the followed tier is read from the database.
    TooMany,
}

/// The newest post ids of an author, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorPosts {
    /// Post ids, descending.
    pub ids: Vec<i64>,
    /// Whether `ids` are all of the author's posts (else only the newest
    /// [`ReadCacheConfig::author_posts`]).
    pub complete: bool,
}

/// A post rendered once for every viewer: its JSON object up to and including `"isLiked":`, to
/// which a response appends the viewer's `true}` or `false}`. Built from a cached row, its images
/// and its author; dropped with the row (a like, a comment) and ignored once its author changed.
#[derive(Debug)]
pub struct PostView {
    /// `{"postId":…,"user":{…},…,"imageTags":[…],"isLiked":`
    pub head: Box<str>,
    /// The author's epoch slot and its value when the author's JSON was read.
    author_epoch: (u32, u64),
}

impl PostView {
    /// A view for one response only (its parts may be older than the cache's).
    pub fn unstored(head: Box<str>) -> Arc<PostView> {
        Arc::new(PostView {
            head,
            author_epoch: (0, 0),
        })
    }
}

/// What a [`PostView`] is filled with: the view's own ticket, and the author's epoch, both taken
/// before the row and the author were read.
#[derive(Debug, Clone, Copy)]
pub struct ViewTicket {
    ticket: Ticket,
    author_epoch: (u32, u64),
}

/// The generation of a key's slot, taken before reading the database.
#[derive(Debug, Clone, Copy)]
pub struct Ticket {
    slot: usize,
    generation: u64,
}

struct Entry<V> {
    value: Arc<V>,
    /// Coarse monotonic clock (a few ms of resolution, a fraction of the cost of a precise read).
    expires: coarsetime::Instant,
}

impl<V> Clone for Entry<V> {
    fn clone(&self) -> Self {
        Self {
            value: Arc::clone(&self.value),
            expires: self.expires,
        }
    }
}

/// One cached relation.
struct Table<K, V> {
    map: Cache<K, Entry<V>>,
    slots: Box<[Mutex<u64>]>,
    hasher: foldhash::fast::RandomState,
    ttl: Duration,
    enabled: bool,
}

impl<K: Eq + Hash + Clone, V> Table<K, V> {
    fn new(capacity: usize, ttl: Duration) -> Self {
        Self {
            map: Cache::new(capacity.max(1)),
            slots: (0..SLOTS).map(|_| Mutex::new(0)).collect(),
            hasher: foldhash::fast::RandomState::default(),
            ttl,
            enabled: capacity > 0,
        }
    }

    fn slot<Q: Hash + ?Sized>(&self, key: &Q) -> usize {
        // Truncation is fine: only the low bits pick the slot.
        #[allow(clippy::cast_possible_truncation)]
        let h = self.hasher.hash_one(key) as usize;
        h & (SLOTS - 1)
    }

    fn get<Q>(&self, key: &Q) -> Option<Arc<V>>
    where
        Q: Hash + Equivalent<K> + ?Sized,
    {
        if !self.enabled {
            return None;
        }
        let e = self.map.get(key)?;
        (coarsetime::Instant::now_without_cache_update() < e.expires).then_some(e.value)
    }

    fn ticket<Q: Hash + ?Sized>(&self, key: &Q) -> Ticket {
        let slot = self.slot(key);
        Ticket {
            slot,
            generation: *self.slots[slot].lock(),
        }
    }

    /// Stores `value` unless the key was invalidated since `ticket` was taken.
    fn fill(&self, key: K, value: Arc<V>, ticket: Ticket) -> bool {
        if !self.enabled {
            return false;
        }
        let generation = self.slots[ticket.slot].lock();
        if *generation != ticket.generation {
            return false;
        }
        // 75–100 % of the TTL, so that entries loaded together do not all expire together.
        let life = self.ttl.mul_f64(rand::random_range(0.75..=1.0));
        self.map.insert(
            key,
            Entry {
                value,
                expires: coarsetime::Instant::now_without_cache_update()
                    + coarsetime::Duration::from(life),
            },
        );
        true
    }

    fn invalidate<Q>(&self, key: &Q)
    where
        Q: Hash + Equivalent<K> + ?Sized,
    {
        let mut generation = self.slots[self.slot(key)].lock();
        *generation += 1;
        self.map.remove(key);
    }

    fn clear(&self) {
        let mut held: Vec<_> = self.slots.iter().map(|s| s.lock()).collect();
        for g in &mut held {
            **g += 1;
        }
        self.map.clear();
    }
}

/// Stripes of the hit and miss counters (a power of two).
const STRIPES: usize = 16;

/// One stripe of the lookup counters, alone on its cache lines: a feed request makes about a
/// hundred lookups, and one counter shared by every worker thread bounced its cache line between
/// the cores on each of them.
#[derive(Debug, Default)]
#[repr(align(128))]
struct LookupStripe {
    hits: AtomicU64,
    misses: AtomicU64,
    pages: AtomicU64,
}

/// The stripe of the calling thread (threads are spread over the stripes in start order).
fn stripe() -> usize {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    thread_local! {
        static STRIPE: usize = {
            // Only the low bits are used.
            #[allow(clippy::cast_possible_truncation)]
            let n = NEXT.fetch_add(1, Ordering::Relaxed) as usize;
            n & (STRIPES - 1)
        };
    }
    STRIPE.with(|s| *s)
}

/// Hit and miss counters.
#[derive(Debug, Default)]
struct Counters {
    lookups: [LookupStripe; STRIPES],
    rejected_fills: AtomicU64,
    invalidations: AtomicU64,
    clears: AtomicU64,
    publish_failures: AtomicU64,
}

/// A snapshot of the counters (monotonic since start).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadCacheStats {
    /// Lookups answered from memory.
    pub hits: u64,
    /// Lookups that went to the database.
    pub misses: u64,
    /// Feed responses served whole from a kept page (also counted in `hits`).
    pub feed_pages_served: u64,
    /// Fills dropped because the key changed while it was read.
    pub rejected_fills: u64,
    /// Keys invalidated (local writes and other processes' messages).
    pub invalidations: u64,
    /// Whole-cache clears (the bus came back after an outage).
    pub clears: u64,
    /// Invalidation messages the bus refused (other processes then rely on the TTL).
    pub publish_failures: u64,
}

/// The read cache. Cheap to share (`Arc`).
pub struct ReadCache {
    rows: Table<i64, PostRow>,
    images: Table<i64, Json>,
    tags: Table<i64, TagsJson>,
    authors: Table<String, Json>,
    liked: Table<String, Liked>,
    followees: Table<String, Followees>,
    author_posts: Table<String, AuthorPosts>,
    views: Table<i64, PostView>,
    feed_pages: Table<PageKey, FeedPage>,
    /// Bumped after a change's entries are dropped, so that what was rendered from them is
    /// ignored: the views written with an author's old JSON (an author's posts are not listed
    /// anywhere to drop them), and the feed pages.
    epochs: Epochs,
    limits: (usize, usize),
    counters: Counters,
    bus: Option<Bus>,
}

impl std::fmt::Debug for ReadCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadCache")
            .field("rows", &self.rows.map.len())
            .field("images", &self.images.map.len())
            .field("authors", &self.authors.map.len())
            .field("liked", &self.liked.map.len())
            .field("stats", &self.stats())
            .finish()
    }
}

impl ReadCache {
    /// An empty cache; changes are published on `bus` when there is one.
    pub fn new(cfg: &ReadCacheConfig, bus: Option<Bus>) -> Self {
        let small = if cfg.entries == 0 {
            0
        } else {
            (cfg.entries / 4).max(1)
        };
        Self {
            rows: Table::new(cfg.entries, cfg.ttl),
            images: Table::new(cfg.entries, cfg.ttl),
            tags: Table::new(cfg.entries, cfg.ttl),
            authors: Table::new(small, cfg.ttl),
            liked: Table::new(small, cfg.ttl),
            followees: Table::new(small, cfg.ttl),
            author_posts: Table::new(small, cfg.ttl),
            views: Table::new(cfg.entries, cfg.ttl),
            feed_pages: Table::new(if cfg.entries == 0 { 0 } else { cfg.feed_pages }, cfg.ttl),
            epochs: Epochs::new(),
            limits: (cfg.author_posts.max(1), cfg.followees.max(1)),
            counters: Counters::default(),
            bus,
        }
    }

    fn count<T>(&self, found: Option<T>) -> Option<T> {
        let stripe = &self.counters.lookups[stripe()];
        let c = if found.is_some() {
            &stripe.hits
        } else {
            &stripe.misses
        };
        c.fetch_add(1, Ordering::Relaxed);
        found
    }

    fn filled(&self, stored: bool) {
        if !stored {
            self.counters.rejected_fills.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A post row.
    pub fn row(&self, id: i64) -> Option<Arc<PostRow>> {
        self.count(self.rows.get(&id))
    }

    /// Ticket for filling the row of `id`.
    pub fn row_ticket(&self, id: i64) -> Ticket {
        self.rows.ticket(&id)
    }

    /// Stores a row read after `ticket` was taken.
    pub fn fill_row(&self, row: PostRow, ticket: Ticket) -> Arc<PostRow> {
        let row = Arc::new(row);
        let stored = self.rows.fill(row.id, Arc::clone(&row), ticket);
        self.filled(stored);
        row
    }

    /// A post's images (the `imageTags` array).
    pub fn images(&self, post: i64) -> Option<Arc<Json>> {
        self.count(self.images.get(&post))
    }

    /// Stores a post's images (they never change, so no ticket).
    pub fn fill_images(&self, post: i64, images: &[ImageTags]) -> Arc<Json> {
        let images = Arc::new(to_json(&images));
        let ticket = self.images.ticket(&post);
        self.images.fill(post, Arc::clone(&images), ticket);
        images
    }

    /// A post's tags (the `hashtags` and `aiTags` members).
    pub fn tags(&self, post: i64) -> Option<Arc<TagsJson>> {
        self.count(self.tags.get(&post))
    }

    /// Ticket for filling the tags of `post`.
    pub fn tags_ticket(&self, post: i64) -> Ticket {
        self.tags.ticket(&post)
    }

    /// Stores a post's tags read after `ticket` was taken.
    pub fn fill_tags(&self, post: i64, tags: TagsJson, ticket: Ticket) -> Arc<TagsJson> {
        let tags = Arc::new(tags);
        let stored = self.tags.fill(post, Arc::clone(&tags), ticket);
        self.filled(stored);
        tags
    }

    /// An author's display fields (a `user` object of a post).
    pub fn author(&self, id: &str) -> Option<Arc<Json>> {
        self.count(self.authors.get(id))
    }

    /// Ticket for filling the author `id`.
    pub fn author_ticket(&self, id: &str) -> Ticket {
        self.authors.ticket(id)
    }

    /// Stores an author read after `ticket` was taken.
    pub fn fill_author(&self, user: &SimpleUser, ticket: Ticket) -> Arc<Json> {
        let json = Arc::new(to_json(user));
        let stored = self
            .authors
            .fill(user.id.clone(), Arc::clone(&json), ticket);
        self.filled(stored);
        json
    }

    /// A viewer's likes.
    pub fn liked(&self, viewer: &str) -> Option<Arc<Liked>> {
        self.count(self.liked.get(viewer))
    }

    /// Ticket for filling the likes of `viewer`.
    pub fn liked_ticket(&self, viewer: &str) -> Ticket {
        self.liked.ticket(viewer)
    }

    /// Stores a viewer's likes read after `ticket` was taken.
    pub fn fill_liked(&self, viewer: &str, liked: Liked, ticket: Ticket) -> Arc<Liked> {
        let liked = Arc::new(liked);
        let stored = self
            .liked
            .fill(viewer.to_owned(), Arc::clone(&liked), ticket);
        self.filled(stored);
        liked
    }

    /// Whether anything is cached at all.
    pub fn enabled(&self) -> bool {
        self.rows.enabled
    }

    /// Newest post ids kept per author.
    pub fn author_posts_limit(&self) -> usize {
        self.limits.0
    }

    /// Most followed users kept per viewer.
    pub fn followees_limit(&self) -> usize {
        self.limits.1
    }

    /// Whom a viewer follows.
    pub fn followees(&self, viewer: &str) -> Option<Arc<Followees>> {
        self.count(self.followees.get(viewer))
    }

    /// Ticket for filling whom `viewer` follows.
    pub fn followees_ticket(&self, viewer: &str) -> Ticket {
        self.followees.ticket(viewer)
    }

    /// Stores whom a viewer follows, read after `ticket` was taken.
    pub fn fill_followees(&self, viewer: &str, f: Followees, ticket: Ticket) -> Arc<Followees> {
        let f = Arc::new(f);
        let stored = self
            .followees
            .fill(viewer.to_owned(), Arc::clone(&f), ticket);
        self.filled(stored);
        f
    }

    /// An author's newest post ids.
    pub fn author_posts(&self, author: &str) -> Option<Arc<AuthorPosts>> {
        self.count(self.author_posts.get(author))
    }

    /// Ticket for filling an author's post ids.
    pub fn author_posts_ticket(&self, author: &str) -> Ticket {
        self.author_posts.ticket(author)
    }

    /// Stores an author's newest post ids, read after `ticket` was taken.
    pub fn fill_author_posts(
        &self,
        author: &str,
        p: AuthorPosts,
        ticket: Ticket,
    ) -> Arc<AuthorPosts> {
        let p = Arc::new(p);
        let stored = self
            .author_posts
            .fill(author.to_owned(), Arc::clone(&p), ticket);
        self.filled(stored);
        p
    }

    /// A post's rendered view, unless its author changed since it was rendered. Counted as a hit
    /// when found; a missing view is not a miss (no database read: the post is rendered from its
    /// parts, whose lookups count).
    pub fn view(&self, id: i64) -> Option<Arc<PostView>> {
        let view = self.views.get(&id).filter(|v| {
            let (slot, epoch) = v.author_epoch;
            self.epochs.get(slot) == epoch
        })?;
        self.count(Some(view))
    }

    /// Whether the cache holds exactly `row` (uncounted). A view rendered from a row read before
    /// its ticket may be kept only if this holds after the ticket: the cached row is current, so
    /// a view equal to the one it would give is current too.
    pub fn holds_row(&self, row: &PostRow) -> bool {
        self.rows.get(&row.id).is_some_and(|c| *c == *row)
    }

    /// Ticket for rendering the view of post `id` by `author`: take it before reading the row and
    /// the author that the view is built from.
    pub fn view_ticket(&self, id: i64, author: &str) -> ViewTicket {
        self.view_ticket_with(self.views_slot_ticket(id), author)
    }

    /// The first half of a view ticket, for a post whose author is not known yet: take it before
    /// reading the row, then complete it with [`ReadCache::view_ticket_with`].
    pub fn views_slot_ticket(&self, id: i64) -> Ticket {
        self.views.ticket(&id)
    }

    /// Completes a ticket of [`ReadCache::views_slot_ticket`] once the row names the author (and
    /// before the author is read).
    pub fn view_ticket_with(&self, ticket: Ticket, author: &str) -> ViewTicket {
        ViewTicket {
            author_epoch: self.epochs.read(Dep::User(author)),
            ticket,
        }
    }

    /// Stores a view rendered from parts read after `ticket` was taken (dropped if the post or
    /// its author changed since).
    pub fn fill_view(&self, id: i64, head: Box<str>, ticket: ViewTicket) -> Arc<PostView> {
        let view = Arc::new(PostView {
            head,
            author_epoch: ticket.author_epoch,
        });
        let (slot, epoch) = ticket.author_epoch;
        let stored =
            self.epochs.get(slot) == epoch && self.views.fill(id, Arc::clone(&view), ticket.ticket);
        self.filled(stored);
        view
    }

    /// Notes the epoch of `dep` in `watch`: call it before reading `dep` from the cache.
    pub fn watch(&self, watch: &mut Watch, dep: Dep<'_>) {
        if watch.complete {
            watch.seen.push(self.epochs.read(dep));
        }
    }

    /// Notes the author epoch a view was rendered at (current when [`ReadCache::view`] gave it).
    pub fn watch_view(&self, watch: &mut Watch, view: &PostView) {
        if watch.complete {
            watch.seen.push(view.author_epoch);
        }
    }

    /// Whether rendered feed pages are kept.
    pub fn keeps_feed_pages(&self) -> bool {
        self.feed_pages.enabled
    }

    /// `viewer`'s kept feed page below `before`, unless something it was rendered from changed.
    /// Counted as a hit when found; a missing page is not a miss (it is rendered from parts whose
    /// lookups count).
    pub fn feed_page(&self, viewer: &str, before: i64) -> Option<bytes::Bytes> {
        let page = self.feed_pages.get(&PageKeyRef(viewer, before))?;
        if !self.epochs.current(&page.seen) {
            return None;
        }
        self.counters.lookups[stripe()]
            .pages
            .fetch_add(1, Ordering::Relaxed);
        self.count(Some(page.body.clone()))
    }

    /// Ticket for filling `viewer`'s feed page below `before`: take it before the first
    /// [`ReadCache::watch`].
    pub fn feed_page_ticket(&self, viewer: &str, before: i64) -> Ticket {
        self.feed_pages.ticket(&PageKeyRef(viewer, before))
    }

    /// Keeps a feed page rendered from parts read from the cache after `watch` noted their epochs
    /// (dropped if any of them changed since, or the cache was cleared after `ticket`).
    pub fn fill_feed_page(
        &self,
        viewer: &str,
        before: i64,
        body: bytes::Bytes,
        watch: Watch,
        ticket: Ticket,
    ) {
        let stored = watch.complete
            && body.len() <= MAX_FEED_PAGE_BYTES
            && self.epochs.current(&watch.seen)
            && self.feed_pages.fill(
                PageKey {
                    viewer: viewer.to_owned(),
                    before,
                },
                Arc::new(FeedPage {
                    body,
                    seen: watch.seen.into_boxed_slice(),
                }),
                ticket,
            );
        self.filled(stored);
    }

    /// Drops what `changes` name, here only.
    pub fn apply(&self, changes: &[Change]) {
        for c in changes {
            match c {
                Change::Post(id) => {
                    // The row first: a view rendered after the view's slot moved on must not
                    // find the old row still cached.
                    self.rows.invalidate(id);
                    self.views.invalidate(id);
                }
                Change::Tags(id) => {
                    self.tags.invalidate(id);
                    self.views.invalidate(id);
                }
                Change::User(u) => self.authors.invalidate(u.as_str()),
                Change::Likes(u) => self.liked.invalidate(u.as_str()),
                Change::Follows(u) => self.followees.invalidate(u.as_str()),
                Change::Posts(u) => self.author_posts.invalidate(u.as_str()),
            }
            // The entries first, then the epoch: what noted the epoch before the bump is
            // ignored from now on; what notes it after finds the entries gone.
            self.epochs.bump(c.dep());
        }
        self.counters
            .invalidations
            .fetch_add(changes.len() as u64, Ordering::Relaxed);
    }

    /// Drops everything.
    pub fn clear(&self) {
        self.rows.clear();
        self.images.clear();
        self.tags.clear();
        self.authors.clear();
        self.liked.clear();
        self.followees.clear();
        self.author_posts.clear();
        self.views.clear();
        self.feed_pages.clear();
        self.counters.clears.fetch_add(1, Ordering::Relaxed);
    }

    /// Call after committing `changes`: drops them here, then tells the other processes.
    pub async fn changed(&self, changes: &[Change]) {
        if changes.is_empty() {
            return;
        }
        self.apply(changes);
        let Some(bus) = &self.bus else {
            return;
        };
        let mut body = String::new();
        for c in changes {
            c.encode(&mut body);
        }
        let env = Envelope::new(format!("/topic/{INVALIDATION_TOPIC}"), body);
        if let Err(e) = bus.publish(Target::topic(INVALIDATION_TOPIC), env).await {
            self.counters
                .publish_failures
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, "cache invalidation not published; other processes catch up within the TTL");
        }
    }

    /// The counters.
    pub fn stats(&self) -> ReadCacheStats {
        let c = &self.counters;
        ReadCacheStats {
            hits: c
                .lookups
                .iter()
                .map(|l| l.hits.load(Ordering::Relaxed))
                .sum(),
            misses: c
                .lookups
                .iter()
                .map(|l| l.misses.load(Ordering::Relaxed))
                .sum(),
            feed_pages_served: c
                .lookups
                .iter()
                .map(|l| l.pages.load(Ordering::Relaxed))
                .sum(),
            rejected_fills: c.rejected_fills.load(Ordering::Relaxed),
            invalidations: c.invalidations.load(Ordering::Relaxed),
            clears: c.clears.load(Ordering::Relaxed),
            publish_failures: c.publish_failures.load(Ordering::Relaxed),
        }
    }

    /// Binds a node of this process to [`INVALIDATION_TOPIC`] and applies what arrives, until the
    /// bus shuts down. Clears everything when the bus comes back after being down.
    pub async fn listen(
        self: Arc<Self>,
        bus: Bus,
        jobs: &crate::jobs::Jobs,
    ) -> Result<(), broker_bridge::BusError> {
        let back = Arc::clone(&self);
        jobs.listen_topic(
            bus,
            "social-cache",
            INVALIDATION_TOPIC,
            "read-cache-invalidations",
            move |envelope| self.apply(&Change::decode_all(&envelope.body)),
            move || {
                tracing::info!("bus back: read cache cleared (invalidations may have been missed)");
                back.clear();
            },
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: i64, likes: i64) -> PostRow {
        PostRow {
            id,
            user_id: "u".into(),
            comment: String::new(),
            location: None,
            favorite_count: likes,
            comment_count: 0,
            create_at: 0,
            json: Default::default(),
        }
    }

    #[test]
    fn a_fill_that_raced_an_invalidation_is_dropped() {
        let c = ReadCache::new(&ReadCacheConfig::default(), None);
        let t = c.row_ticket(7);
        // A writer commits and invalidates while the reader is reading the old row.
        c.apply(&[Change::Post(7)]);
        c.fill_row(row(7, 1), t);
        assert!(c.row(7).is_none());
        assert_eq!(c.stats().rejected_fills, 1);
        // A fresh read is kept.
        let t = c.row_ticket(7);
        c.fill_row(row(7, 2), t);
        assert_eq!(c.row(7).map(|r| r.favorite_count), Some(2));
        c.apply(&[Change::Post(7)]);
        assert!(c.row(7).is_none());
    }

    #[test]
    fn entries_expire_and_a_zero_capacity_caches_nothing() {
        let c = ReadCache::new(
            &ReadCacheConfig {
                entries: 10,
                ttl: Duration::from_millis(20),
                ..ReadCacheConfig::default()
            },
            None,
        );
        let t = c.author_ticket("a");
        c.fill_author(
            &SimpleUser {
                id: "a".into(),
                name: "A".into(),
                profile_image: None,
                following: false,
            },
            t,
        );
        assert!(c.author("a").is_some());
        std::thread::sleep(Duration::from_millis(60));
        assert!(c.author("a").is_none());

        let off = ReadCache::new(
            &ReadCacheConfig {
                entries: 0,
                ..ReadCacheConfig::default()
            },
            None,
        );
        let t = off.row_ticket(1);
        off.fill_row(row(1, 0), t);
        off.fill_images(1, &[]);
        assert!(off.row(1).is_none() && off.images(1).is_none());
    }

    fn head(text: &str) -> Box<str> {
        text.into()
    }

    #[test]
    fn a_view_is_dropped_with_its_post_and_ignored_once_its_author_changes() {
        let c = ReadCache::new(&ReadCacheConfig::default(), None);
        let t = c.view_ticket(7, "kim");
        c.fill_view(7, head("v7"), t);
        let t = c.view_ticket(8, "lee");
        c.fill_view(8, head("v8"), t);
        assert_eq!(c.view(7).map(|v| v.head.to_string()), Some("v7".into()));
        // A like or a comment on post 7.
        c.apply(&[Change::Post(7)]);
        assert!(c.view(7).is_none());
        assert!(c.view(8).is_some());
        // Lee edits the profile: every view of Lee's posts is ignored from now on.
        c.apply(&[Change::User("lee".into())]);
        assert!(c.view(8).is_none());
        // Rendered again afterwards, it is kept.
        let t = c.view_ticket(8, "lee");
        c.fill_view(8, head("v8 new"), t);
        assert_eq!(c.view(8).map(|v| v.head.to_string()), Some("v8 new".into()));
    }

    #[test]
    fn a_view_rendered_from_parts_older_than_a_change_is_not_kept() {
        let c = ReadCache::new(&ReadCacheConfig::default(), None);
        // The post changes while its view is being rendered.
        let t = c.view_ticket(7, "kim");
        c.apply(&[Change::Post(7)]);
        let v = c.fill_view(7, head("old counts"), t);
        assert_eq!(&*v.head, "old counts");
        assert!(c.view(7).is_none());
        // The author changes while it is being rendered.
        let t = c.view_ticket(7, "kim");
        c.apply(&[Change::User("kim".into())]);
        c.fill_view(7, head("old name"), t);
        assert!(c.view(7).is_none());
        assert_eq!(c.stats().rejected_fills, 2);
        // A clear in flight.
        let t = c.view_ticket(7, "kim");
        c.clear();
        c.fill_view(7, head("before the clear"), t);
        assert!(c.view(7).is_none());
        // An unstored view is never found.
        let _ = PostView::unstored(head("one response"));
        assert!(c.view(7).is_none());
    }

    /// Renders a page of posts 7 and 8 by kim, for viewer v, the way the feed does.
    fn render(c: &ReadCache) -> (Watch, Ticket) {
        let ticket = c.feed_page_ticket("v", i64::MAX);
        let mut w = Watch::default();
        c.watch(&mut w, Dep::Follows("v"));
        c.watch(&mut w, Dep::Posts("kim"));
        c.watch(&mut w, Dep::Likes("v"));
        for id in [7, 8] {
            c.watch(&mut w, Dep::Post(id));
            let view = c.view(id).expect("view cached");
            c.watch_view(&mut w, &view);
        }
        (w, ticket)
    }

    fn page(c: &ReadCache, body: &'static str) {
        let (w, t) = render(c);
        c.fill_feed_page(
            "v",
            i64::MAX,
            bytes::Bytes::from_static(body.as_bytes()),
            w,
            t,
        );
    }

    /// Changes to other things than the page's, in epoch slots none of its parts share (the
    /// slots are hashed with a random seed, so a fixed choice could share one by chance).
    fn unrelated(c: &ReadCache) -> Vec<Change> {
        let used: HashSet<u32> = [
            Dep::Follows("v"),
            Dep::Posts("kim"),
            Dep::Likes("v"),
            Dep::Post(7),
            Dep::Post(8),
            Dep::User("kim"),
        ]
        .into_iter()
        .map(|d| c.epochs.slot(d))
        .collect();
        let post = (100..)
            .find(|&id| !used.contains(&c.epochs.slot(Dep::Post(id))))
            .unwrap_or(100);
        let viewer = (0..)
            .map(|n| format!("w{n}"))
            .find(|w| !used.contains(&c.epochs.slot(Dep::Likes(w))))
            .unwrap_or_default();
        vec![Change::Likes(viewer), Change::Post(post)]
    }

    #[test]
    fn a_feed_page_is_served_until_anything_it_was_rendered_from_changes() {
        let c = ReadCache::new(&ReadCacheConfig::default(), None);
        let views = |c: &ReadCache| {
            for id in [7, 8] {
                let t = c.view_ticket(id, "kim");
                c.fill_view(id, head("v"), t);
            }
        };
        views(&c);
        let changes = [
            Change::Post(8),
            Change::User("kim".into()),
            Change::Likes("v".into()),
            Change::Follows("v".into()),
            Change::Posts("kim".into()),
        ];
        for change in &changes {
            page(&c, "page");
            let served = c.stats().feed_pages_served;
            assert_eq!(c.feed_page("v", i64::MAX).as_deref(), Some(&b"page"[..]));
            assert_eq!(c.stats().feed_pages_served, served + 1);
            // Other viewers, other cursors, other people's changes: not this page.
            assert!(c.feed_page("w", i64::MAX).is_none());
            assert!(c.feed_page("v", 8).is_none());
            c.apply(&unrelated(&c));
            assert!(c.feed_page("v", i64::MAX).is_some(), "{change:?}");
            c.apply(std::slice::from_ref(change));
            assert!(c.feed_page("v", i64::MAX).is_none(), "{change:?}");
            views(&c);
        }

        // A change while the page is rendered: not kept.
        for change in &changes {
            let (w, t) = render(&c);
            c.apply(std::slice::from_ref(change));
            c.fill_feed_page("v", i64::MAX, bytes::Bytes::from_static(b"old"), w, t);
            assert!(c.feed_page("v", i64::MAX).is_none(), "{change:?}");
            views(&c);
        }
        // A page over the size limit is not kept.
        let (w, t) = render(&c);
        let big = bytes::Bytes::from(vec![b' '; MAX_FEED_PAGE_BYTES + 1]);
        c.fill_feed_page("v", i64::MAX, big, w, t);
        assert!(c.feed_page("v", i64::MAX).is_none());
        // A clear while it is rendered, or a part that did not come from the cache: not kept.
        let (w, t) = render(&c);
        c.clear();
        c.fill_feed_page("v", i64::MAX, bytes::Bytes::from_static(b"old"), w, t);
        assert!(c.feed_page("v", i64::MAX).is_none());
        views(&c);
        let (mut w, t) = render(&c);
        w.give_up();
        c.watch(&mut w, Dep::Post(1));
        assert!(!w.complete());
        c.fill_feed_page("v", i64::MAX, bytes::Bytes::from_static(b"part"), w, t);
        assert!(c.feed_page("v", i64::MAX).is_none());
        // No pages kept when asked for none.
        let none = ReadCache::new(
            &ReadCacheConfig {
                feed_pages: 0,
                ..ReadCacheConfig::default()
            },
            None,
        );
        assert!(!none.keeps_feed_pages());
        views(&none);
        page(&none, "page");
        assert!(none.feed_page("v", i64::MAX).is_none());
    }

    #[test]
    fn clear_drops_everything_and_rejects_fills_in_flight() {
        let c = ReadCache::new(&ReadCacheConfig::default(), None);
        let t = c.row_ticket(1);
        c.fill_row(row(1, 0), t);
        let t = c.liked_ticket("v");
        c.clear();
        c.fill_liked("v", Liked::TooMany, t);
        assert!(c.row(1).is_none() && c.liked("v").is_none());
    }

    #[test]
    fn stored_labels_drop_the_tags_and_the_view_but_not_the_row() {
        let cache = ReadCache::new(&ReadCacheConfig::default(), None);
        let row = cache.fill_row(
            PostRow {
                id: 7,
                user_id: "kim".into(),
                comment: String::new(),
                location: None,
                favorite_count: 0,
                comment_count: 0,
                create_at: 0,
                json: Default::default(),
            },
            cache.row_ticket(7),
        );
        let tags_ticket = cache.tags_ticket(7);
        let view_ticket = cache.view_ticket(7, "kim");
        cache.apply(&[Change::Tags(7)]);
        // Read before the labels were stored: neither is kept.
        cache.fill_tags(7, TagsJson::empty(), tags_ticket);
        cache.fill_view(7, "{".into(), view_ticket);
        assert!(cache.tags(7).is_none() && cache.view(7).is_none());
        assert_eq!(cache.row(7).as_deref(), Some(&*row));
        cache.fill_tags(7, TagsJson::render(["sea"], ["Sky"]), cache.tags_ticket(7));
        assert_eq!(
            &*cache.tags(7).unwrap().0,
            r#""hashtags":["sea"],"aiTags":["Sky"]"#
        );
    }

    #[test]
    fn changes_round_trip_through_their_encoding() {
        let changes = vec![
            Change::Post(42),
            Change::Tags(43),
            Change::User("kim:1".into()),
            Change::Likes("lee".into()),
            Change::Follows("park".into()),
            Change::Posts("choi".into()),
        ];
        let mut body = String::new();
        for c in &changes {
            c.encode(&mut body);
        }
        assert_eq!(Change::decode_all(body.as_bytes()), changes);
        assert_eq!(
            Change::decode_all(b"post:x\nbogus\nuser:\nlikes:a\n"),
            vec![Change::Likes("a".into())]
        );
    }
}
