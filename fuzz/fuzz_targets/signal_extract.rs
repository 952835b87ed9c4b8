//! `signal::extract` is total over any text: it never panics, every signal it keeps
//! has a value, and every HTTP status it reports is one. The agent classifier that
//! reads it stays total too.
//!
//! Seeded from the error corpora under `sam-core/tests/corpus` and
//! `sam-providers/tests/corpus` (see `fuzz/seed.py`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sam_core::signal::{SignalKind, extract};

fuzz_target!(|text: &str| {
    let signals = extract(text);
    for signal in signals.iter() {
        assert!(!signal.value.is_empty(), "an empty signal from {text:?}");
        if signal.kind == SignalKind::HttpStatus {
            let status: u16 = signal.value.parse().expect("a status is a number");
            assert!((100..=599).contains(&status), "status {status} from {text:?}");
        }
    }
    let _ = sam_core::classify_agent_error(text);
});
