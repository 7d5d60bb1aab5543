//! Words/s and peak memory of the noun rule over mecab-ko-dic (social/src/tagging), on the parity
//! sample (social/tests/data/nouns.tsv), for docs/benchmarks.md next to Komoran's
//! (`scripts/tagging/parity.py bench`, the same sample and the same number of rounds).
//!
//! `INSTAR_MECAB_KO_DIC=<dictionary folder> cargo run -p social --example nouns_bench`
//! (docs/benchmarks.md gives the profile used).

use std::time::Instant;

use social::tagging::nouns::Nouns;

/// Rounds over the sample, as `parity.py bench` does.
const ROUNDS: usize = 20;

fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::var_os("INSTAR_MECAB_KO_DIC")
        .ok_or("set INSTAR_MECAB_KO_DIC to the mecab-ko-dic folder (source .test-env/env.sh)")?;
    let sample =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/nouns.tsv"))?;
    let words: Vec<&str> = sample
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split('\t').next())
        .collect();
    let started = Instant::now();
    let nouns = Nouns::load(std::path::Path::new(&dir))?;
    let load = started.elapsed();
    std::hint::black_box(nouns.last_noun("워밍업"));
    let started = Instant::now();
    let mut chars = 0usize;
    for _ in 0..ROUNDS {
        for w in &words {
            chars += std::hint::black_box(nouns.last_noun(w)).len();
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let n = words.len() * ROUNDS;
    #[allow(clippy::cast_precision_loss)]
    let per_s = n as f64 / secs;
    println!(
        "mecab-ko-dic (Rust) words={n} secs={secs:.3} words_per_s={per_s:.0} load_ms={} \
         max_rss_mib={:.0} (output bytes {chars})",
        load.as_millis(),
        peak_rss_mib().unwrap_or(f64::NAN)
    );
    Ok(())
}
