//! `instar tags backfill`: labels the first image of posts that were created before labelling was
//! on (or while it was off), so they get `AI_TAG` rows like new posts.
//!
//! The walk goes over posts by id ascending, in batches, and keeps its position in the
//! `tag_backfill` table (migration 0009): after each group of posts labelled at once the last
//! finished id is stored, so a run that is interrupted (Ctrl-C, a crash, a lost connection)
//! resumes after it. A post is a candidate when it has a first image, no `AI_TAG` row and no
//! pending `tag_job` (a server is about to label it); so a post already labelled is never sent
//! again, even after a crash between storing its tags and moving the checkpoint. Ctrl-C lets the
//! images being labelled finish and stores the checkpoint before stopping.
//!
//! Labels go through the same rule and the same transaction as the worker's
//! ([`super::worker::labels_to_tags`], [`super::worker::store_labels`]). A labeler that is
//! unavailable (no answer, 5xx, quota) is waited for, with backoff, for as long as it takes (or
//! until Ctrl-C); a refusal or a malformed answer skips the post (counted, logged). `--rate`
//! bounds the images sent per second, `--concurrency` how many are in flight.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::labels::{LabelError, Labeler};
use super::nouns::Nouns;
use super::worker::{MAX_IMAGE_READ, labels_to_tags, store_labels};
use crate::media::Media;
use crate::store::{Store, StoreResult};

/// The checkpoint row's name (one walk over all posts).
pub const WALK: &str = "all-posts";
/// Longest wait between two tries of an image while the labeler is unavailable.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

/// How a run goes.
#[derive(Debug, Clone)]
pub struct Options {
    /// Posts read per database round trip (1-10,000).
    pub batch: usize,
    /// Images labelled at once (1-64).
    pub concurrency: usize,
    /// Images sent per second at most (`None`: as fast as the labeler answers).
    pub rate: Option<f64>,
    /// Start the walk again from the first post (posts labelled since keep their tags and are
    /// skipped; those that got no labels or were refused are tried again).
    pub restart: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            batch: 100,
            concurrency: 4,
            rate: None,
            restart: false,
        }
    }
}

/// What a run found before labelling anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The walk resumes after this post id (0: from the start).
    pub after_id: i64,
    /// Posts still to label after it.
    pub remaining: u64,
    /// Done by earlier runs of this walk: posts labelled, posts without labels, posts refused.
    pub earlier: Counts,
}

/// Posts by outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Labelled: at least one `AI_TAG` row stored.
    pub labelled: u64,
    /// Labelled but nothing stored: no labels, or the image is not in our storage or gone.
    pub unlabelled: u64,
    /// Refused by the labeler, or its answer was malformed (skipped; `--restart` tries again).
    pub refused: u64,
}

impl Counts {
    /// Every post counted.
    pub fn total(&self) -> u64 {
        self.labelled + self.unlabelled + self.refused
    }
}

/// How one post ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Tags stored (the names).
    Labelled(Vec<String>),
    /// Nothing stored (why).
    Unlabelled(&'static str),
    /// Refused or malformed (the labeler's error).
    Refused(String),
}

/// What the command shows while it runs (a progress bar on a terminal, lines otherwise).
pub trait Progress: Send + Sync {
    /// The walk starts: `plan.remaining` posts to go.
    fn start(&self, plan: &Plan);
    /// One post is done.
    fn post(&self, post: i64, outcome: &Outcome);
    /// The labeler is unavailable; the run waits `wait` before trying `post` again.
    fn waiting(&self, post: i64, error: &str, wait: Duration);
}

/// Why a run stopped early.
#[derive(Debug, thiserror::Error)]
pub enum BackfillError {
    /// The database failed (the checkpoint holds what was finished).
    #[error("database: {0}")]
    Store(#[from] crate::store::StoreError),
}

/// The end of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// This run's posts by outcome.
    pub counts: Counts,
    /// Where the walk stands now.
    pub after_id: i64,
    /// Whether Ctrl-C (the token) stopped it before the end.
    pub interrupted: bool,
}

/// Spaces the calls to the labeler `1 / rate` seconds apart. Hand-written: a single pacer of a
/// few lines, where a rate-limiting crate would bring a dependency for one call site.
#[derive(Debug)]
struct Pacer {
    gap: Option<Duration>,
    next: tokio::sync::Mutex<Instant>,
}

impl Pacer {
    fn new(rate: Option<f64>) -> Self {
        let gap = rate
            .filter(|r| r.is_finite() && *r > 0.0)
            .map(|r| Duration::from_secs_f64((1.0 / r).min(3600.0)));
        Self {
            gap,
            next: tokio::sync::Mutex::new(Instant::now()),
        }
    }

    async fn wait(&self) {
        let Some(gap) = self.gap else {
            return;
        };
        let at = {
            let mut next = self.next.lock().await;
            let at = (*next).max(Instant::now());
            *next = at + gap;
            at
        };
        tokio::time::sleep_until(at.into()).await;
    }
}

/// The backfill over one database and one media storage.
#[derive(Debug, Clone)]
pub struct Backfill {
    store: Store,
    media: Media,
    labeler: Option<Arc<dyn Labeler>>,
    nouns: Option<Nouns>,
}

/// The candidate condition on `post p`.
const CANDIDATE: &str = "p.id > ? AND p.profile_image IS NOT NULL \
     AND NOT EXISTS (SELECT 1 FROM post_tags t WHERE t.post_id = p.id AND t.type = 'AI_TAG') \
     AND NOT EXISTS (SELECT 1 FROM tag_job j WHERE j.post_id = p.id)";

impl Backfill {
    /// `labeler` may be `None` for [`Backfill::plan`] alone (a dry run).
    pub fn new(
        store: Store,
        media: Media,
        labeler: Option<Arc<dyn Labeler>>,
        nouns: Option<Nouns>,
    ) -> Self {
        Self {
            store,
            media,
            labeler,
            nouns,
        }
    }

    async fn checkpoint(&self) -> StoreResult<Option<(i64, Counts)>> {
        let row: Option<(i64, i64, i64, i64)> = sqlx::query_as(
            "SELECT after_id, labelled, unlabelled, refused FROM tag_backfill WHERE name = ?",
        )
        .bind(WALK)
        .fetch_optional(self.store.pool())
        .await?;
        let n = |v: i64| u64::try_from(v).unwrap_or(0);
        Ok(row.map(|(after, l, u, r)| {
            (
                after,
                Counts {
                    labelled: n(l),
                    unlabelled: n(u),
                    refused: n(r),
                },
            )
        }))
    }

    /// Where the walk stands and how many posts it has left (nothing is written).
    pub async fn plan(&self, restart: bool) -> StoreResult<Plan> {
        let (after_id, earlier) = match self.checkpoint().await? {
            Some(c) if !restart => c,
            _ => (0, Counts::default()),
        };
        let remaining: i64 =
            sqlx::query_scalar(&format!("SELECT COUNT(*) FROM post p WHERE {CANDIDATE}"))
                .bind(after_id)
                .fetch_one(self.store.pool())
                .await?;
        Ok(Plan {
            after_id,
            remaining: u64::try_from(remaining).unwrap_or(0),
            earlier,
        })
    }

    /// The next `limit` candidates after `after`: `(id, first image key)`.
    async fn next_batch(&self, after: i64, limit: usize) -> StoreResult<Vec<(i64, String)>> {
        Ok(sqlx::query_as(&format!(
            "SELECT p.id, p.profile_image FROM post p WHERE {CANDIDATE} ORDER BY p.id LIMIT ?"
        ))
        .bind(after)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(self.store.pool())
        .await?)
    }

    async fn save(&self, after_id: i64, counts: &Counts, restart: bool) -> StoreResult<()> {
        let now = crate::time::now_micros();
        let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        let mut tx = self.store.write().await?;
        let updated = if restart {
            0
        } else {
            sqlx::query(
                "UPDATE tag_backfill SET after_id = ?, labelled = labelled + ?, \
                 unlabelled = unlabelled + ?, refused = refused + ?, updated_at = ? WHERE name = ?",
            )
            .bind(after_id)
            .bind(n(counts.labelled))
            .bind(n(counts.unlabelled))
            .bind(n(counts.refused))
            .bind(now)
            .bind(WALK)
            .execute(tx.conn())
            .await?
            .rows_affected()
        };
        if updated == 0 {
            sqlx::query("DELETE FROM tag_backfill WHERE name = ?")
                .bind(WALK)
                .execute(tx.conn())
                .await?;
            sqlx::query(
                "INSERT INTO tag_backfill (name, after_id, labelled, unlabelled, refused, \
                 started_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(WALK)
            .bind(after_id)
            .bind(n(counts.labelled))
            .bind(n(counts.unlabelled))
            .bind(n(counts.refused))
            .bind(now)
            .bind(now)
            .execute(tx.conn())
            .await?;
        }
        tx.commit().await
    }

    /// Labels every candidate after the checkpoint, storing the checkpoint as it goes, until the
    /// end or until `stop` is cancelled (the images in flight finish first).
    ///
    /// # Panics
    /// Never; a backfill built without a labeler labels nothing and says so in the log.
    pub async fn run(
        &self,
        opts: &Options,
        progress: &dyn Progress,
        stop: &CancellationToken,
    ) -> Result<Summary, BackfillError> {
        let plan = self.plan(opts.restart).await?;
        progress.start(&plan);
        let Some(labeler) = self.labeler.clone() else {
            tracing::error!("tags backfill: no labeler configured, nothing labelled");
            return Ok(Summary {
                counts: Counts::default(),
                after_id: plan.after_id,
                interrupted: false,
            });
        };
        let batch = opts.batch.clamp(1, 10_000);
        let concurrency = opts.concurrency.clamp(1, 64);
        let pacer = Pacer::new(opts.rate);
        let mut after = plan.after_id;
        let mut counts = Counts::default();
        let mut restart = opts.restart;
        if restart {
            // The checkpoint starts again now: an interrupted restart resumes, not restarts.
            self.save(0, &Counts::default(), true).await?;
            restart = false;
        }
        let mut interrupted = false;
        'walk: loop {
            if stop.is_cancelled() {
                interrupted = true;
                break;
            }
            let posts = self.next_batch(after, batch).await?;
            if posts.is_empty() {
                break;
            }
            for group in posts.chunks(concurrency) {
                if stop.is_cancelled() {
                    interrupted = true;
                    break 'walk;
                }
                let results = futures_util::future::join_all(group.iter().map(|(post, key)| {
                    self.label_one(&*labeler, &pacer, *post, key, progress, stop)
                }))
                .await;
                // The checkpoint moves over the finished prefix of the group only.
                let mut group_counts = Counts::default();
                let mut last_done = None;
                let mut unfinished = false;
                for ((post, _), result) in group.iter().zip(results) {
                    let Some(outcome) = result? else {
                        unfinished = true;
                        continue;
                    };
                    let stored = matches!(outcome, Outcome::Labelled(_));
                    // After an unfinished post only the labelled ones count (they have their
                    // AI_TAG rows, so a resumed run skips them); the others are taken again.
                    if unfinished && !stored {
                        continue;
                    }
                    match &outcome {
                        Outcome::Labelled(_) => group_counts.labelled += 1,
                        Outcome::Unlabelled(_) => group_counts.unlabelled += 1,
                        Outcome::Refused(_) => group_counts.refused += 1,
                    }
                    progress.post(*post, &outcome);
                    if !unfinished {
                        last_done = Some(*post);
                    }
                }
                counts.labelled += group_counts.labelled;
                counts.unlabelled += group_counts.unlabelled;
                counts.refused += group_counts.refused;
                if let Some(last) = last_done {
                    after = last;
                }
                if group_counts.total() > 0 {
                    self.save(after, &group_counts, restart).await?;
                }
                if unfinished {
                    interrupted = true;
                    break 'walk;
                }
            }
        }
        Ok(Summary {
            counts,
            after_id: after,
            interrupted,
        })
    }

    /// Labels one post; `None` when `stop` came while waiting for an unavailable labeler.
    async fn label_one(
        &self,
        labeler: &dyn Labeler,
        pacer: &Pacer,
        post: i64,
        key: &str,
        progress: &dyn Progress,
        stop: &CancellationToken,
    ) -> Result<Option<Outcome>, BackfillError> {
        let Some(own) = self.media.own_key(key) else {
            return Ok(Some(Outcome::Unlabelled(
                "the first image is not in our storage",
            )));
        };
        let mut wait = Duration::from_secs(1);
        loop {
            // An image that cannot be read is skipped (counted with the refusals; `--restart`
            // tries it again): waiting would block the walk on one missing file.
            let bytes = match self.media.storage().get(&own, MAX_IMAGE_READ).await {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(post, error = %e, "tags backfill: image unreadable, post skipped");
                    return Ok(Some(Outcome::Refused(format!("reading the image: {e}"))));
                }
            };
            pacer.wait().await;
            let answer = labeler.labels(bytes).await;
            match answer {
                Ok(labels) => {
                    let tags = labels_to_tags(self.nouns.as_ref(), labels);
                    store_labels(&self.store, post, &tags).await?;
                    return Ok(Some(if tags.is_empty() {
                        Outcome::Unlabelled("no labels")
                    } else {
                        Outcome::Labelled(tags)
                    }));
                }
                Err(LabelError::Unavailable(e)) => {
                    if stop.is_cancelled() {
                        return Ok(None);
                    }
                    progress.waiting(post, &e, wait);
                    tokio::select! {
                        () = stop.cancelled() => return Ok(None),
                        () = tokio::time::sleep(wait) => {}
                    }
                    wait = (wait * 2).min(MAX_WAIT);
                }
                Err(e) => {
                    tracing::warn!(post, error = %e, "tags backfill: post skipped");
                    return Ok(Some(Outcome::Refused(e.to_string())));
                }
            }
        }
    }
}
