//! Image labelling off the request path (contract §6.1 d, §6.2).
//!
//! Creating a post writes a `tag_job` row in the post's own transaction ([`stage`]) and wakes
//! the worker after the commit ([`Tagger::wake`]); the post is answered at once. The worker
//! ([`Tagger::start`], one task under [`crate::jobs`]) takes due jobs oldest first, claims each by
//! moving its `next_at` forward (so several processes share the table without doing a job twice
//! at once), reads the post's first image from media storage, asks the [`Labeler`], turns the
//! labels into nouns (§6.2) and stores at most [`MAX_LABELS`] of them as `AI_TAG` rows and deletes
//! the job in one transaction. A hashtag row of the same name stays a hashtag.
//!
//! Failures: an unavailable labeler (no answer, 5xx, quota) leaves the job for later with
//! exponential backoff (1 s doubling up to [`MAX_BACKOFF`]) for as long as it takes; a refusal or
//! a malformed answer is retried [`MAX_REFUSALS`] times and then dropped, storing nothing. A
//! crash between the claim and the commit leaves the job to be taken again when its claim runs
//! out ([`CLAIM`]). At most [`CONCURRENCY`] images are labelled at once.
//!
//! `/metrics`: `instar_tag_queue_depth` (jobs waiting), `instar_tag_labels_total` (AI tags
//! stored; its rate is labels/s), `instar_tag_jobs_total{outcome}` (done, retried, dropped).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt as _;
use sqlx::AnyConnection;
use tokio::sync::Notify;

use super::labels::{LabelError, Labeler, MAX_LABELS};
use super::nouns::Nouns;
use crate::cache::Change;
use crate::ctx::{Ctx, MetricsSource};
use crate::store::{Dialect, Store, StoreResult};

/// Images labelled at once by one process.
pub const CONCURRENCY: usize = 4;
/// Jobs taken per round.
pub const BATCH: i64 = 16;
/// How long a claimed job is left to its worker before another may take it.
pub const CLAIM: Duration = Duration::from_secs(120);
/// Longest wait between two tries of one job.
pub const MAX_BACKOFF: Duration = Duration::from_secs(600);
/// Refused or malformed answers tolerated before a job is dropped.
pub const MAX_REFUSALS: i64 = 5;
/// Largest image read back from storage for labelling, bytes.
pub const MAX_IMAGE_READ: usize = super::labels::MAX_IMAGE;
/// The worker looks for due jobs at least this often, even without a wake-up.
pub const POLL: Duration = Duration::from_secs(1);

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct TagMetrics {
    queue_depth: AtomicI64,
    labels: AtomicU64,
    done: AtomicU64,
    retried: AtomicU64,
    dropped: AtomicU64,
}

impl MetricsSource for TagMetrics {
    fn update_metrics(&self, registry: &broker_bridge::MetricsRegistry) {
        #[allow(clippy::cast_precision_loss)]
        registry
            .gauge(
                "instar_tag_queue_depth",
                "Posts whose first image waits for labelling.",
            )
            .set(self.queue_depth.load(Ordering::Relaxed) as f64);
        registry.set_counter(
            "instar_tag_labels_total",
            "Image labels stored as AI_TAG rows.",
            self.labels.load(Ordering::Relaxed),
        );
        for (outcome, n) in [
            ("done", &self.done),
            ("retried", &self.retried),
            ("dropped", &self.dropped),
        ] {
            registry
                .counter_with(
                    "instar_tag_jobs_total",
                    &[("outcome", outcome)],
                    "Labelling attempts by outcome (done, retried: the labeler was unavailable or refused and the job waits, dropped: refused or malformed too often).",
                )
                .absolute(n.load(Ordering::Relaxed));
        }
    }
}

/// The labelling worker's handle (kept in the context's extensions while labelling is on).
#[derive(Debug, Clone)]
pub struct Tagger {
    labeler: Arc<dyn Labeler>,
    nouns: Option<Nouns>,
    wake: Arc<Notify>,
    metrics: Arc<TagMetrics>,
}

/// Writes the job for `post` in the post's transaction.
pub async fn stage(conn: &mut AnyConnection, post: i64, now: i64) -> StoreResult<()> {
    sqlx::query("INSERT INTO tag_job (post_id, attempts, next_at) VALUES (?, 0, ?)")
        .bind(post)
        .bind(now)
        .execute(conn)
        .await?;
    Ok(())
}

fn backoff(attempts: i64) -> Duration {
    let exp = u32::try_from(attempts.clamp(0, 20)).unwrap_or(20);
    Duration::from_secs(1u64 << exp).min(MAX_BACKOFF)
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

impl Tagger {
    pub fn new(labeler: Arc<dyn Labeler>, nouns: Option<Nouns>, metrics: Arc<TagMetrics>) -> Self {
        Self {
            labeler,
            nouns,
            wake: Arc::new(Notify::new()),
            metrics,
        }
    }

    /// Called after a post with a job committed.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Starts the worker under the context's jobs.
    pub fn start(&self, ctx: &Ctx) {
        let me = self.clone();
        let ctx2 = ctx.clone();
        ctx.jobs.spawn("tag-worker", move |cancel| async move {
            loop {
                match me.round(&ctx2).await {
                    Ok(n) if n > 0 => continue,
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "tag worker: database"),
                }
                tokio::select! {
                    () = cancel.cancelled() => break,
                    () = me.wake.notified() => {}
                    () = tokio::time::sleep(POLL) => {}
                }
            }
        });
    }

    /// One round: claims due jobs and runs them. Returns how many were claimed.
    pub async fn round(&self, ctx: &Ctx) -> StoreResult<usize> {
        let store = &ctx.store;
        let depth: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM tag_job")
            .fetch_one(store.pool())
            .await?;
        self.metrics.queue_depth.store(depth, Ordering::Relaxed);
        let now = crate::time::now_micros();
        let due: Vec<(i64, i64, i64)> = sqlx::query_as(
            "SELECT post_id, attempts, next_at FROM tag_job WHERE next_at <= ? ORDER BY next_at LIMIT ?",
        )
        .bind(now)
        .bind(BATCH)
        .fetch_all(store.pool())
        .await?;
        let mut claimed = Vec::new();
        for (post, attempts, next_at) in due {
            let taken =
                sqlx::query("UPDATE tag_job SET next_at = ? WHERE post_id = ? AND next_at = ?")
                    .bind(now + micros(CLAIM))
                    .bind(post)
                    .bind(next_at)
                    .execute(store.pool())
                    .await?
                    .rows_affected();
            if taken == 1 {
                claimed.push((post, attempts));
            }
        }
        let n = claimed.len();
        futures_util::stream::iter(claimed)
            .for_each_concurrent(CONCURRENCY, |(post, attempts)| async move {
                if let Err(e) = self.run(ctx, post, attempts).await {
                    tracing::warn!(post, error = %e, "tag worker: job not finished");
                }
            })
            .await;
        Ok(n)
    }

    async fn run(&self, ctx: &Ctx, post: i64, attempts: i64) -> StoreResult<()> {
        let store = &ctx.store;
        let key: Option<Option<String>> =
            sqlx::query_scalar("SELECT profile_image FROM post WHERE id = ?")
                .bind(post)
                .fetch_optional(store.pool())
                .await?;
        let Some(Some(key)) = key else {
            // The post is gone (its job went with it) or has no image: nothing to label.
            return finish(ctx, post, &[]).await;
        };
        let Some(own) = ctx.media.own_key(&key) else {
            tracing::info!(post, "tag worker: the first image is not in our storage");
            return finish(ctx, post, &[]).await;
        };
        let outcome = match ctx.media.storage().get(&own, MAX_IMAGE_READ).await {
            Ok(bytes) => self.labeler.labels(bytes).await,
            Err(e) => Err(LabelError::Unavailable(format!("reading the image: {e}"))),
        };
        match outcome {
            Ok(labels) => {
                let tags = labels_to_tags(self.nouns.as_ref(), labels);
                finish(ctx, post, &tags).await?;
                self.metrics
                    .labels
                    .fetch_add(tags.len() as u64, Ordering::Relaxed);
                self.metrics.done.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                let refused = !matches!(e, LabelError::Unavailable(_));
                if refused && attempts + 1 >= MAX_REFUSALS {
                    tracing::warn!(post, error = %e, "tag worker: giving up on this image");
                    self.metrics.dropped.fetch_add(1, Ordering::Relaxed);
                    return finish(ctx, post, &[]).await;
                }
                tracing::info!(post, error = %e, attempts, "tag worker: will try again");
                self.metrics.retried.fetch_add(1, Ordering::Relaxed);
                let msg: String = e.to_string().chars().take(500).collect();
                sqlx::query(
                    "UPDATE tag_job SET attempts = ?, next_at = ?, last_error = ? WHERE post_id = ?",
                )
                .bind(attempts + 1)
                .bind(crate::time::now_micros() + micros(backoff(attempts)))
                .bind(msg)
                .bind(post)
                .execute(store.pool())
                .await?;
                Ok(())
            }
        }
    }
}

/// Labels → the tags stored (§6.2): each its last noun (when the dictionary is loaded), repeats
/// dropped, at most [`MAX_LABELS`].
pub fn labels_to_tags(nouns: Option<&Nouns>, labels: Vec<String>) -> Vec<String> {
    let tags = match nouns {
        Some(n) => n.normalise_all(labels.iter().map(String::as_str)),
        None => {
            let mut v: Vec<String> = Vec::new();
            for l in labels {
                if !v.contains(&l) {
                    v.push(l);
                }
            }
            v
        }
    };
    tags.into_iter().take(MAX_LABELS).collect()
}

/// Stores `tags` as `AI_TAG` rows of `post` (a name the post has already keeps its row, so a
/// hashtag stays a hashtag) and deletes its job, in one transaction.
pub async fn store_labels(store: &Store, post: i64, tags: &[String]) -> StoreResult<()> {
    let mut tx = store.write().await?;
    insert_ai_tags(tx.conn(), store.dialect(), post, tags).await?;
    sqlx::query("DELETE FROM tag_job WHERE post_id = ?")
        .bind(post)
        .execute(tx.conn())
        .await?;
    tx.commit().await
}

/// [`store_labels`], then drops the post's tags from the read caches of every process, so
/// details and feeds show them.
async fn finish(ctx: &Ctx, post: i64, tags: &[String]) -> StoreResult<()> {
    store_labels(&ctx.store, post, tags).await?;
    if !tags.is_empty() {
        ctx.cache.changed(&[Change::Tags(post)]).await;
    }
    Ok(())
}

async fn insert_ai_tags(
    conn: &mut AnyConnection,
    d: Dialect,
    post: i64,
    names: &[String],
) -> StoreResult<()> {
    if names.is_empty() {
        return Ok(());
    }
    let exists: Option<i64> = sqlx::query_scalar("SELECT id FROM post WHERE id = ?")
        .bind(post)
        .fetch_optional(&mut *conn)
        .await?;
    if exists.is_none() {
        return Ok(());
    }
    let rows = vec!["(?, ?, 'AI_TAG')"; names.len()].join(", ");
    let sql = format!(
        "{} INTO post_tags (post_id, tag_name, type) VALUES {rows}",
        d.insert_ignore()
    );
    let mut q = sqlx::query(&sql);
    for name in names {
        q = q.bind(post).bind(name.as_str());
    }
    q.execute(conn).await?;
    Ok(())
}
