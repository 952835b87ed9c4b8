//! The output survives a YAML 1.1 loader (PyYAML, as cloud-init uses) unchanged:
//! values such as `yes`, `on`, `0600` and `12:30` stay strings.

use proptest::prelude::*;
use proptest::test_runner::Config;
use sam_cloudinit::{CloudConfig, Command, FileContent, WriteFile};

use crate::support::{fixtures, pyyaml_available, pyyaml_load, valid_boot};

/// Scalars that YAML 1.1 reads as something other than a string when unquoted.
const TRAPS: &[&str] = &[
    "yes",
    "no",
    "on",
    "off",
    "y",
    "n",
    "Y",
    "N",
    "true",
    "False",
    "ON",
    "Off",
    "~",
    "null",
    "Null",
    "",
    " ",
    "0600",
    "0o600",
    "0x1F",
    "0b101",
    "1e3",
    "1_000",
    "-0",
    "+1",
    "3.14",
    ".inf",
    "-.Inf",
    ".NaN",
    "12:30",
    "12:30:45",
    "190:20:30.15",
    "2001-12-14",
    "2001-12-14t21:59:43.10-05:00",
    "<<",
    "=",
    "- x",
    "? x",
    "a: b",
    "a #b",
    "#b",
    "@x",
    "`x",
    "%x",
    "!tag",
    "&a",
    "*a",
    "|",
    ">",
    "[a]",
    "{a: b}",
    "'q'",
    "\"dq\"",
    "a\nb",
    "a\n\n",
    "  lead\nx",
    "trail ",
    "\ttab",
    "back\\slash",
    "#cloud-config",
];

/// A document that puts `values` everywhere a string can go.
fn document(values: &[String]) -> CloudConfig {
    CloudConfig {
        hostname: values.first().cloned(),
        write_files: values
            .iter()
            .map(|v| WriteFile {
                path: v.clone(),
                content: FileContent::Text(v.clone()),
                owner: v.clone(),
                permissions: v.clone(),
                defer: false,
            })
            .collect(),
        runcmd: vec![Command::new(values.iter().cloned())],
        ..CloudConfig::default()
    }
}

/// The single round-trip check: what PyYAML reads is exactly what was serialized.
fn check_round_trip(config: &CloudConfig) {
    let text = config.render().unwrap().into_string();
    let expected = serde_json::to_value(config).unwrap();
    assert_eq!(pyyaml_load(&text), expected, "{text}");
}

#[test]
fn yaml_1_1_traps_stay_strings() {
    if !pyyaml_available() {
        return;
    }
    let values: Vec<String> = TRAPS.iter().map(|s| (*s).to_owned()).collect();
    check_round_trip(&document(&values));
    // And the rendered text really quotes the headline traps.
    let text = document(&values).render().unwrap().into_string();
    for trap in ["yes", "on", "0600", "12:30"] {
        assert!(
            text.contains(&format!("\"{trap}\"")),
            "{trap} unquoted in:\n{text}"
        );
    }
}

#[test]
fn fixtures_round_trip() {
    if !pyyaml_available() {
        return;
    }
    for (_, boot) in fixtures() {
        check_round_trip(&boot.to_cloud_config().unwrap());
    }
}

#[test]
fn arbitrary_documents_round_trip() {
    if !pyyaml_available() {
        return;
    }
    // One PyYAML process per case: keep the count moderate, the values many.
    let mut runner = proptest::test_runner::TestRunner::new(Config::with_cases(32));
    let values = proptest::collection::vec(
        prop_oneof![
            any::<String>(),
            "[ -~\\n\\t]{0,30}",
            proptest::sample::select(TRAPS.to_vec()).prop_map(str::to_owned),
        ],
        1..24,
    );
    runner
        .run(&values, |values| {
            check_round_trip(&document(&values));
            Ok(())
        })
        .unwrap();
    let mut runner = proptest::test_runner::TestRunner::new(Config::with_cases(16));
    runner
        .run(&valid_boot(), |boot| {
            check_round_trip(&boot.to_cloud_config().unwrap());
            Ok(())
        })
        .unwrap();
}
