//! `classify_agent_error` and `is_agent_crash` are total over any text, and the
//! redactor never panics on it.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let _ = sam_core::classify_agent_error(text);
    let _ = sam_core::is_agent_crash(text);
    let _ = sam_core::redact(text);
});
