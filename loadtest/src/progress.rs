//! Progress on stderr: a bar while sessions connect, a spinner with live counts while messages flow.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// A progress display that can be switched off (`--quiet`).
#[derive(Debug, Clone)]
pub struct Progress {
    quiet: bool,
}

impl Progress {
    /// Draws nothing when `quiet`.
    pub fn new(quiet: bool) -> Self {
        Progress { quiet }
    }

    /// A bar counting up to `len` with a message.
    pub fn bar(&self, len: u64, what: &str) -> ProgressBar {
        if self.quiet {
            return ProgressBar::hidden();
        }
        let pb = ProgressBar::new(len);
        let style =
            ProgressStyle::with_template("{msg:12} [{bar:40}] {pos}/{len} {per_sec} eta {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
        pb.set_style(style);
        pb.set_message(what.to_owned());
        pb.enable_steady_tick(Duration::from_millis(200));
        pb
    }

    /// A spinner whose message the caller keeps updating.
    pub fn spinner(&self, what: &str) -> ProgressBar {
        if self.quiet {
            return ProgressBar::hidden();
        }
        let pb = ProgressBar::new_spinner();
        let style = ProgressStyle::with_template("{spinner} {elapsed:>4} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner());
        pb.set_style(style);
        pb.set_message(what.to_owned());
        pb.enable_steady_tick(Duration::from_millis(200));
        pb
    }

    /// A line on stderr (unless quiet), printed above any live bar.
    pub fn note(&self, pb: &ProgressBar, line: &str) {
        if !self.quiet {
            pb.println(line);
        }
    }
}
