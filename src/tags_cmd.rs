//! `instar tags backfill`: labels the first image of existing posts that have no image tags yet
//! (docs/tagging.md, "Backfill"). The walk and its checkpoint are
//! [`social::tagging::backfill`]; this is the command: its settings (the social service's, so the
//! server's variables and `[social]` table work as they are, and the run's own), the progress bar
//! on a terminal (plain lines every few seconds otherwise), Ctrl-C, and the summary.

use std::io::IsTerminal as _;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{ArgAction, Args, Subcommand, builder::BoolishValueParser};
use serde::{Deserialize, Serialize};
use social::tagging::backfill::{Backfill, Counts, Options, Outcome, Plan, Progress};
use tokio_util::sync::CancellationToken;

use crate::settings::sections::ConfigFile;
use crate::social_config::SocialArgs;

/// `instar tags …`.
#[derive(Debug, Subcommand)]
pub(crate) enum TagsCmd {
    /// Label the first image of existing posts without image tags (Google Cloud Vision);
    /// resumable: an interrupted run goes on where it stopped.
    Backfill(BackfillArgs),
}

/// Settings of `instar tags backfill`: the run's own, then the social service's.
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
pub(crate) struct BackfillArgs {
    #[command(flatten)]
    #[serde(skip)]
    pub file: ConfigFile,
    #[command(flatten)]
    #[serde(flatten)]
    pub run: BackfillRun,
    /// Social service settings (database, media, dictionary, Vision).
    #[command(flatten)]
    pub social: SocialArgs,
}

/// How the backfill runs.
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
#[command(next_help_heading = "Backfill")]
pub(crate) struct BackfillRun {
    /// Posts read from the database at a time (1-10000).
    #[arg(long = "batch", default_value_t = 100)]
    pub backfill_batch: usize,
    /// Images labelled at once (1-64); the checkpoint moves after each such group.
    #[arg(long = "concurrency", default_value_t = 4)]
    pub backfill_concurrency: usize,
    /// Images sent to Vision per second at most (0: no limit). Vision's default quota is 1,800
    /// requests a minute per project.
    #[arg(long = "rate", default_value_t = 10.0)]
    pub backfill_rate: f64,
    /// Only count the posts that would be labelled and show where the walk stands; nothing is
    /// sent to Vision or written (Vision need not be configured).
    #[arg(long = "dry-run", default_value_t = false, action = ArgAction::Set, num_args = 0..=1,
          default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub backfill_dry_run: bool,
    /// Start the walk again from the first post: posts labelled since keep their tags and are
    /// skipped, those that got no labels or were refused are tried again.
    #[arg(long = "restart", default_value_t = false, action = ArgAction::Set, num_args = 0..=1,
          default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub backfill_restart: bool,
}

/// Progress on a terminal: a bar.
struct Bar {
    bar: indicatif::ProgressBar,
    counts: Mutex<Counts>,
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.bar.finish();
    }
}

impl Bar {
    fn message(c: &Counts) -> String {
        format!(
            "{} labelled, {} without labels, {} skipped",
            c.labelled, c.unlabelled, c.refused
        )
    }
}

impl Progress for Bar {
    fn start(&self, plan: &Plan) {
        self.bar.set_length(plan.remaining);
        self.bar.set_message(Self::message(&Counts::default()));
    }

    fn post(&self, _post: i64, outcome: &Outcome) {
        let mut c = lock(&self.counts);
        count(&mut c, outcome);
        self.bar.set_message(Self::message(&c));
        self.bar.inc(1);
    }

    fn waiting(&self, post: i64, error: &str, wait: Duration) {
        self.bar.set_message(format!(
            "Vision unavailable (post {post}: {error}); trying again in {}s",
            wait.as_secs()
        ));
    }
}

/// Progress elsewhere (a log file, a pipe): a line at most every [`LINE_EVERY`].
struct Lines {
    state: Mutex<LineState>,
}

struct LineState {
    total: u64,
    counts: Counts,
    started: Instant,
    last: Instant,
}

const LINE_EVERY: Duration = Duration::from_secs(5);

impl Lines {
    fn line(s: &LineState) -> String {
        let done = s.counts.total();
        let pct = if s.total == 0 {
            100.0
        } else {
            done as f64 * 100.0 / s.total as f64
        };
        let secs = s.started.elapsed().as_secs_f64().max(0.001);
        format!(
            "tags backfill: {done}/{} posts ({pct:.1}%), {} labelled, {} without labels, {} skipped, {:.1} posts/s",
            s.total,
            s.counts.labelled,
            s.counts.unlabelled,
            s.counts.refused,
            done as f64 / secs
        )
    }
}

impl Progress for Lines {
    fn start(&self, plan: &Plan) {
        let mut s = lock(&self.state);
        s.total = plan.remaining;
        eprintln!("{}", Self::line(&s));
    }

    fn post(&self, _post: i64, outcome: &Outcome) {
        let mut s = lock(&self.state);
        count(&mut s.counts, outcome);
        if s.last.elapsed() >= LINE_EVERY {
            s.last = Instant::now();
            eprintln!("{}", Self::line(&s));
        }
    }

    fn waiting(&self, post: i64, error: &str, wait: Duration) {
        let mut s = lock(&self.state);
        if s.last.elapsed() >= LINE_EVERY {
            s.last = Instant::now();
            eprintln!(
                "tags backfill: Vision unavailable (post {post}: {error}); trying again in {}s",
                wait.as_secs()
            );
        }
    }
}

/// The lock's value, even after a panic elsewhere (the counts stay usable).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn count(c: &mut Counts, outcome: &Outcome) {
    match outcome {
        Outcome::Labelled(_) => c.labelled += 1,
        Outcome::Unlabelled(_) => c.unlabelled += 1,
        Outcome::Refused(_) => c.refused += 1,
    }
}

/// Runs the command; the exit code is 0 when the walk reached its end, 130 when Ctrl-C stopped
/// it (the checkpoint is stored: run it again to resume).
pub(crate) async fn backfill(args: BackfillArgs) -> anyhow::Result<std::process::ExitCode> {
    let run = &args.run;
    // The token secret is not used here; the social settings only require one.
    // No listener here, so no proxies to trust.
    let cfg = args.social.resolve(&gateway::random_id(48), Vec::new())?;
    let labeler: Option<Arc<dyn social::tagging::labels::Labeler>> = match &cfg.tags.vision {
        Some(v) => Some(Arc::new(
            social::tagging::labels::Vision::new(v.clone())
                .map_err(|e| anyhow::anyhow!("Vision: {e}"))?,
        )),
        None if run.backfill_dry_run => None,
        None => anyhow::bail!(
            "Google Cloud Vision is not configured: set INSTAR_TAGS_VISION_API_KEY or \
             INSTAR_TAGS_VISION_CREDENTIALS (the same settings as the server; docs/tagging.md), \
             or use --dry-run to only count the posts"
        ),
    };
    let store = social::store::Store::open(&cfg.database_url, &cfg.pool)
        .await
        .with_context(|| {
            format!(
                "opening the database {}",
                migrations::redact(&cfg.database_url)
            )
        })?;
    let mut media_cfg = cfg.media.clone();
    if media_cfg.origin.is_none() {
        media_cfg.origin = cfg.public_url.canonical();
    }
    let media = social::media::Media::new(media_cfg)
        .await
        .context("opening media storage")?;
    let nouns = social::tagging::load_nouns(&cfg.tags)
        .await
        .context("loading the Korean dictionary")?;
    let backfill = Backfill::new(store, media, labeler, nouns);
    let opts = Options {
        batch: run.backfill_batch,
        concurrency: run.backfill_concurrency,
        rate: (run.backfill_rate > 0.0).then_some(run.backfill_rate),
        restart: run.backfill_restart,
    };
    if run.backfill_dry_run {
        let plan = backfill.plan(opts.restart).await?;
        println!(
            "tags backfill (dry run): {} posts to label after post {}{}",
            plan.remaining,
            plan.after_id,
            match plan.earlier.total() {
                0 => String::new(),
                _ => format!(
                    "; earlier runs: {} labelled, {} without labels, {} skipped",
                    plan.earlier.labelled, plan.earlier.unlabelled, plan.earlier.refused
                ),
            }
        );
        if let Some(rate) = opts.rate {
            let secs = plan.remaining as f64 / rate;
            println!("at {rate} images/s: about {:.0} minutes", secs / 60.0);
        }
        return Ok(std::process::ExitCode::SUCCESS);
    }
    let stop = CancellationToken::new();
    {
        let stop = stop.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!(
                    "\ntags backfill: stopping after the images in flight (Ctrl-C again to quit at once; the next run resumes)"
                );
                stop.cancel();
            }
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(130);
            }
        });
    }
    let progress: Box<dyn Progress> = if std::io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} posts ({per_sec}, eta {eta})\n{msg}",
            )
            .context("progress bar template")?,
        );
        bar.enable_steady_tick(Duration::from_millis(200));
        Box::new(Bar {
            bar,
            counts: Mutex::new(Counts::default()),
        })
    } else {
        Box::new(Lines {
            state: Mutex::new(LineState {
                total: 0,
                counts: Counts::default(),
                started: Instant::now(),
                last: Instant::now(),
            }),
        })
    };
    let started = Instant::now();
    let summary = backfill.run(&opts, progress.as_ref(), &stop).await;
    drop(progress);
    let summary = summary?;
    let c = summary.counts;
    println!(
        "tags backfill {}: {} posts in {:.1}s: {} labelled, {} without labels, {} skipped (refused, \
         malformed or unreadable; --restart tries them again); checkpoint after post {}",
        if summary.interrupted {
            "stopped"
        } else {
            "finished"
        },
        c.total(),
        started.elapsed().as_secs_f64(),
        c.labelled,
        c.unlabelled,
        c.refused,
        summary.after_id
    );
    if summary.interrupted {
        println!("run the same command again to resume");
        return Ok(std::process::ExitCode::from(130));
    }
    Ok(std::process::ExitCode::SUCCESS)
}
