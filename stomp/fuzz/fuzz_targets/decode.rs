//! Fuzz target `decode`: arbitrary bytes, split at an arbitrary point, through `StompCodec`.
//!
//! Input layout: `[version selector][split selector][STOMP bytes...]`, see
//! `tests/common/invariants.rs`, which holds the checks (no panic, whole == split, every byte
//! accounted for, decode(encode(decoded)) == decoded) and is shared with the normal test
//! `tests/fuzz_corpus.rs` that replays `corpus/decode/` without nightly.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/common/invariants.rs"]
mod invariants;

fuzz_target!(|data: &[u8]| {
    invariants::check_fuzz_input(data);
});
