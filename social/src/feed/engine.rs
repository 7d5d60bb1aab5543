//! The recommendation engine: each user's top interests (contract §6.9, fixed) and list (§6.10,
//! fixed), rebuilt for one user ([`Feed::rebuild`]), for every active user (the nightly run,
//! [`Feed::rebuild_active`]) and for the users whose profile changed ([`Feed::rebuild_changed`]);
//! and what an interaction does to the feed's state ([`Feed`] as a
//! [`crate::ctx::InteractionListener`]).
//!
//! A list is the followed tier (posts of followed users, newest first, 30; score
//! `10000 + 1 / (age in ms + 1)`) then the interest tier (others' posts with a tag among the top
//! interests, by §6.10's rank, 300), each post once (the higher score wins), by score, then newer
//! id. Both leave out what the user has seen in the last 30 days: viewed, liked or commented on
//! (from the database) or served (the state's seen set). Nothing seen excludes nothing (the
//! original's `NOT IN (null)` gave such users no list at all, §7.12).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;

use super::state::FeedState;
use crate::jobs::Lease;
use crate::store::Store;
use crate::store::feed::InterestEvent;

/// Posts in the followed tier.
pub const FOLLOWED_POSTS: usize = 30;
/// Posts in the interest tier.
pub const INTEREST_POSTS: usize = 300;
/// Keywords per type in the top interests, and distinct keywords in all.
const PER_TYPE: usize = 5;
const TOP_KEYWORDS: usize = 10;
/// How far back "active" and "seen" reach.
pub const THIRTY_DAYS_MICROS: i64 = 30 * 86_400_000_000;
/// Active users read per statement in the nightly run.
const ACTIVE_BATCH: i64 = 500;

/// The feed's counters.
#[derive(Debug, Default)]
pub struct FeedStats {
    /// Lists written.
    pub rebuilds: AtomicU64,
    /// Rebuilds that failed (logged; the run went on).
    pub rebuild_failures: AtomicU64,
    /// Users whose list the nightly run rebuilt.
    pub users_processed: AtomicU64,
    /// Interactions applied to a profile as they happened.
    pub interactions: AtomicU64,
    /// Pages served from a list.
    pub cached_pages: AtomicU64,
    /// Pages served from the non-personalised tiers.
    pub fallback_pages: AtomicU64,
}

/// The personalised feed: the store, where its state lives, and its counters.
#[derive(Debug)]
pub struct Feed {
    store: Store,
    state: Arc<dyn FeedState>,
    jobs: super::jobs::FeedJobSettings,
    /// Counters (on `/metrics`).
    pub stats: FeedStats,
}

/// The top interests from a user's best keywords of each type (each best first): the best 5
/// image-tag and the best 5 hashtag keywords, topped up from the rest (by score) to 10 distinct
/// ones (the original listed both halves even when they were the same words, §7.14).
#[must_use]
pub fn top_keywords(ai: &[(String, f64)], hash: &[(String, f64)]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(TOP_KEYWORDS);
    let push = |k: &String, out: &mut Vec<String>| {
        if out.len() < TOP_KEYWORDS && !out.contains(k) {
            out.push(k.clone());
        }
    };
    for (k, _) in ai.iter().take(PER_TYPE).chain(hash.iter().take(PER_TYPE)) {
        push(k, &mut out);
    }
    let mut rest: Vec<&(String, f64)> = ai
        .iter()
        .skip(PER_TYPE)
        .chain(hash.iter().skip(PER_TYPE))
        .collect();
    rest.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    for (k, _) in rest {
        push(k, &mut out);
    }
    out
}

/// The list from the two tiers' candidates (already without seen posts): each post once with
/// its best score, by score then newer id.
#[must_use]
pub fn merge_tiers(followed: &[(i64, i64)], interest: &[(i64, f64)], now_ms: i64) -> Vec<i64> {
    let mut best: HashMap<i64, f64> = HashMap::with_capacity(followed.len() + interest.len());
    #[allow(clippy::cast_precision_loss)]
    for &(id, create_at) in followed {
        let age_ms = (now_ms - create_at / 1000).max(0);
        let score = 10_000.0 + 1.0 / (age_ms as f64 + 1.0);
        best.insert(id, score);
    }
    for &(id, rank) in interest {
        let e = best.entry(id).or_insert(rank);
        if rank > *e {
            *e = rank;
        }
    }
    let mut all: Vec<(i64, f64)> = best.into_iter().collect();
    all.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| b.0.cmp(&a.0)));
    all.into_iter().map(|(id, _)| id).collect()
}

fn as_limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Feed {
    /// A feed over `store` keeping its state in `state`.
    #[must_use]
    pub fn new(store: Store, state: Arc<dyn FeedState>) -> Feed {
        Feed {
            store,
            state,
            jobs: super::jobs::FeedJobSettings::default(),
            stats: FeedStats::default(),
        }
    }

    /// This feed with its jobs run by `settings`.
    #[must_use]
    pub fn with_job_settings(mut self, settings: super::jobs::FeedJobSettings) -> Feed {
        self.jobs = settings;
        self
    }

    /// How its jobs run.
    #[must_use]
    pub fn job_settings(&self) -> super::jobs::FeedJobSettings {
        self.jobs
    }

    /// Where the lists live.
    #[must_use]
    pub fn state(&self) -> &dyn FeedState {
        self.state.as_ref()
    }

    /// `user`'s top interests now.
    ///
    /// # Errors
    /// The database failed.
    pub async fn top_interests(&self, user: &str) -> Result<Vec<String>, String> {
        let limit = as_limit(TOP_KEYWORDS);
        let ai = self.store.top_interests(user, "AI_TAG", limit).await;
        let hash = self.store.top_interests(user, "HASH_TAG", limit).await;
        Ok(top_keywords(
            &ai.map_err(|e| e.to_string())?,
            &hash.map_err(|e| e.to_string())?,
        ))
    }

    /// `user`'s list at `now` (µs), computed (not stored).
    ///
    /// # Errors
    /// The database or the state failed.
    pub async fn compute_list(&self, user: &str, now: i64) -> Result<Vec<i64>, String> {
        let since = now - THIRTY_DAYS_MICROS;
        let served: HashSet<i64> = self
            .state
            .seen(user, since / 1000)
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .collect();
        let mut followed = self
            .store
            .followed_candidates(user, since, as_limit(FOLLOWED_POSTS + served.len()))
            .await
            .map_err(|e| e.to_string())?;
        followed.retain(|(id, _)| !served.contains(id));
        followed.truncate(FOLLOWED_POSTS);
        let keywords = self.top_interests(user).await?;
        let mut interest = Vec::new();
        if !keywords.is_empty() {
            interest = self
                .store
                .interest_candidates(
                    user,
                    &keywords,
                    now,
                    since,
                    as_limit(INTEREST_POSTS + served.len()),
                )
                .await
                .map_err(|e| e.to_string())?;
            interest.retain(|(id, _)| !served.contains(id));
            interest.truncate(INTEREST_POSTS);
        }
        Ok(merge_tiers(&followed, &interest, now / 1000))
    }

    /// Rebuilds and stores `user`'s list (its pointer back at 0); with a `lease`, only while that
    /// run holds its lock. Returns the list's length (`None`: the lease was lost, nothing
    /// written).
    ///
    /// # Errors
    /// The database or the state failed.
    pub async fn rebuild(
        &self,
        user: &str,
        now: i64,
        lease: Option<&Lease>,
    ) -> Result<Option<usize>, String> {
        let result = async {
            let list = self.compute_list(user, now).await?;
            let written = self
                .state
                .put_list(user, &list, lease)
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(written.then_some(list.len()))
        }
        .await;
        match &result {
            Ok(Some(_)) => {
                self.stats.rebuilds.fetch_add(1, Ordering::Relaxed);
            }
            Ok(None) => {}
            Err(e) => {
                self.stats.rebuild_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(user, error = %e, "feed list not rebuilt");
            }
        }
        result
    }

    /// Rebuilds the list of every user who signed in within 30 days of `now`, under `lease`. A
    /// failure for one user is logged and the run goes on; a lost lease stops it. Returns (users
    /// rebuilt, failures).
    ///
    /// # Errors
    /// The lease was lost, or the active users could not be read.
    pub async fn rebuild_active(&self, now: i64, lease: &Lease) -> Result<(u64, u64), String> {
        let mut after = String::new();
        let (mut done, mut failed) = (0, 0);
        loop {
            let users = self
                .store
                .active_users(now - THIRTY_DAYS_MICROS, &after, ACTIVE_BATCH)
                .await
                .map_err(|e| e.to_string())?;
            let Some(last) = users.last() else {
                break;
            };
            after.clone_from(last);
            for user in &users {
                if !self.jobs.user_delay.is_zero() {
                    tokio::time::sleep(self.jobs.user_delay).await;
                }
                if lease.lost().is_cancelled() {
                    return Err("the lock was lost; the run stopped".to_owned());
                }
                match self.rebuild(user, now, Some(lease)).await {
                    Ok(Some(_)) => {
                        done += 1;
                        self.stats.users_processed.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(None) => {
                        tracing::warn!(
                            user,
                            fence = lease.fence(),
                            "feed list refused: the run's lock was taken over"
                        );
                        lease.lost().cancel();
                        return Err("the lock was lost; the run stopped".to_owned());
                    }
                    Err(_) => failed += 1,
                }
            }
        }
        Ok((done, failed))
    }

    /// Rebuilds the lists of up to `max` users whose profile changed, under `lease`.
    ///
    /// # Errors
    /// The state failed, or the lease was lost.
    pub async fn rebuild_changed(
        &self,
        now: i64,
        max: usize,
        lease: &Lease,
    ) -> Result<u64, String> {
        let users = self
            .state
            .drain_changed(max)
            .await
            .map_err(|e| e.to_string())?;
        let mut done = 0;
        for user in &users {
            match self.rebuild(user, now, Some(lease)).await {
                Ok(Some(_)) => done += 1,
                Ok(None) => {
                    // Not rebuilt: marked again for whoever holds the lock next.
                    let _ = self.state.mark_changed(user).await;
                    lease.lost().cancel();
                    return Err("the lock was lost; the run stopped".to_owned());
                }
                Err(_) => {}
            }
        }
        Ok(done)
    }

    /// Rebuilds `user`'s list now if the profile changed since the last build (at a fresh load
    /// of the feed, so the next feed reflects the last interaction).
    ///
    /// # Errors
    /// The state or the database failed.
    pub async fn refresh_if_changed(&self, user: &str, now: i64) -> Result<(), String> {
        if self
            .state
            .take_changed(user)
            .await
            .map_err(|e| e.to_string())?
            && self.rebuild(user, now, None).await.is_err()
        {
            let _ = self.state.mark_changed(user).await;
        }
        Ok(())
    }
}

#[async_trait]
impl crate::ctx::InteractionListener for Feed {
    async fn interacted(&self, user: &str, post: i64, _event: InterestEvent) {
        self.stats.interactions.fetch_add(1, Ordering::Relaxed);
        let now_ms = crate::time::now_micros() / 1000;
        if let Err(e) = self.state.add_seen(user, &[post], now_ms).await {
            tracing::warn!(user, error = %e, "seen post not recorded");
        }
        if let Err(e) = self.state.mark_changed(user).await {
            tracing::warn!(user, error = %e, "profile change not recorded");
        }
    }
}

impl crate::ctx::MetricsSource for Feed {
    fn update_metrics(&self, registry: &broker_bridge::MetricsRegistry) {
        let s = &self.stats;
        let rows: [(&str, &str, &AtomicU64); 6] = [
            (
                "feed_list_rebuilds_total",
                "Personalised feed lists written.",
                &s.rebuilds,
            ),
            (
                "feed_list_rebuild_failures_total",
                "Personalised feed list rebuilds that failed (the run went on).",
                &s.rebuild_failures,
            ),
            (
                "feed_users_processed_total",
                "Active users whose list the nightly run rebuilt.",
                &s.users_processed,
            ),
            (
                "feed_interactions_total",
                "Likes, comments and views applied to interest profiles as they happened.",
                &s.interactions,
            ),
            (
                "feed_cached_pages_total",
                "Feed pages served from a personalised list.",
                &s.cached_pages,
            ),
            (
                "feed_fallback_pages_total",
                "Feed pages served from the non-personalised tiers.",
                &s.fallback_pages,
            ),
        ];
        for (name, help, v) in rows {
            registry.set_counter(&format!("instar_{name}"), help, v.load(Ordering::Relaxed));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kw(list: &[(&str, f64)]) -> Vec<(String, f64)> {
        list.iter().map(|(k, s)| ((*k).to_owned(), *s)).collect()
    }

    #[test]
    fn top_interests_take_five_of_each_type_then_top_up_to_ten_distinct() {
        let same = kw(&[
            ("a", 9.0),
            ("b", 8.0),
            ("c", 7.0),
            ("d", 6.0),
            ("e", 5.0),
            ("f", 4.0),
            ("g", 3.0),
            ("h", 2.0),
        ]);
        // The original listed a..e twice; here the rest tops the list up.
        let hash = kw(&[
            ("a", 1.0),
            ("b", 1.0),
            ("c", 1.0),
            ("d", 1.0),
            ("e", 1.0),
            ("x", 0.9),
            ("y", 0.8),
        ]);
        assert_eq!(
            top_keywords(&same, &hash),
            ["a", "b", "c", "d", "e", "f", "g", "h", "x", "y"]
        );
        let ai = kw(&[("sea", 0.05)]);
        let hash = kw(&[("cat", 3.0), ("dog", 2.0)]);
        assert_eq!(top_keywords(&ai, &hash), ["sea", "cat", "dog"]);
        assert!(top_keywords(&[], &[]).is_empty());
    }

    #[test]
    fn tiers_merge_once_each_by_score() {
        let now_ms = 1_000_000_000;
        let followed = [(5, (now_ms - 10) * 1000), (9, (now_ms - 1000) * 1000)];
        let interest = [(7, 300.0), (5, 250.0), (8, 12_000.0)];
        assert_eq!(merge_tiers(&followed, &interest, now_ms), [8, 5, 9, 7]);
    }
}
