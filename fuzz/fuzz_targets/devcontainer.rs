//! Any bytes as a `devcontainer.json`: a configuration or a typed error, never a
//! panic; an error names the file.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let path = Path::new(".devcontainer/devcontainer.json");
    match sam_agent::vm::devcontainer::parse_text(path, None, text) {
        Ok(config) => assert_eq!(config.path, path),
        Err(error) => assert!(error.to_string().contains("devcontainer.json"), "{error}"),
    }
});
