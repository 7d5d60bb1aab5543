//! Replays every file of the fuzz seed corpus (`fuzz/corpus/decode/`) through the decoder with the
//! fuzz target's checks, at every split point, so CI exercises the corpus without nightly.

mod common;

use std::path::PathBuf;

use common::invariants::{check, check_fuzz_input, small_limits, version_from};
use stomp::Limits;

#[test]
fn replay_fuzz_corpus() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/decode");
    let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("corpus directory exists")
        .map(|e| e.expect("readable directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    entries.sort();
    assert!(
        entries.len() >= 40,
        "seed corpus is missing: {}",
        dir.display()
    );
    for path in entries {
        let data = std::fs::read(&path).expect("readable corpus file");
        // Exactly what the fuzz target does...
        check_fuzz_input(&data);
        // ...and every other split point too.
        if let [v, _, input @ ..] = data.as_slice() {
            let limits = if v & 0x80 != 0 {
                small_limits()
            } else {
                Limits::default()
            };
            for split in 0..=input.len() {
                check(input, split, version_from(*v), &limits);
            }
        }
    }
}
