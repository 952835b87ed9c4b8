//! Hostile values in every string field are rejected, naming the field, and
//! arbitrary values never panic.

use proptest::prelude::*;
use sam_cloudinit::{Error, NodeBoot};
use sam_core::Secret;

use crate::support::default_boot;

/// Values that must never pass any string field.
const HOSTILE: &[&str] = &[
    "",
    " ",
    ";",
    "a;reboot",
    "$(reboot)",
    "a$(reboot)",
    "`reboot`",
    "'",
    "\"",
    "a'b",
    "a\"b",
    "a\nruncmd: [reboot]",
    "\nwrite_files:\n- path: /etc/passwd",
    "a\r\nfoo: bar",
    "../etc/passwd",
    "../",
    "a b",
    "#",
    "a\u{0}b",
    "é",
];

/// A valid prefix for each field, so the hostile suffix is what fails.
fn prefixed(prefix: &str) -> Vec<String> {
    HOSTILE
        .iter()
        .filter(|v| !v.is_empty())
        .map(|v| format!("{prefix}{v}"))
        .chain(HOSTILE.iter().map(|v| (*v).to_owned()))
        .collect()
}

/// Sets one field of the default input to `value`.
fn with(field: &str, value: String) -> NodeBoot {
    let mut boot = default_boot();
    match field {
        "node_id" => boot.node_id = value,
        "hostname" => boot.hostname = Some(value),
        "control_plane_url" => boot.control_plane_url = value,
        "agent_download_url" => boot.agent_download_url = Some(value),
        "callback_token" => boot.callback_token = Secret::new(value),
        "agent_sha256" => boot.agent_sha256 = value,
        "agents" => boot.agents = vec!["claude".into(), value],
        "journald.system_max_use" => boot.journald.system_max_use = value,
        "journald.max_retention" => boot.journald.max_retention = value,
        "extra_ca_pem" => boot.extra_ca_pem = Some(value),
        "lightweight_image" => boot.lightweight_image = value,
        other => panic!("no field {other}"),
    }
    boot
}

/// The single place that decides what a rejection must look like.
fn check_rejected(field: &str, value: &str) {
    let outcome = with(field, value.to_owned()).render();
    let Err(err @ Error::Invalid { .. }) = outcome else {
        panic!("{field} = {value:?} was not rejected: {outcome:?}");
    };
    assert_eq!(err.invalid_fields(), [field], "{field} = {value:?}");
    let message = err.to_string();
    assert!(message.contains(field), "{message}");
    if field == "callback_token" && value.len() > 3 {
        assert!(!message.contains(value), "the token leaked into: {message}");
    }
}

#[test]
fn hostile_values_are_rejected_by_field() {
    let url = "https://sam.example.com/";
    let cases: [(&str, Vec<String>); 11] = [
        ("node_id", prefixed("node-1")),
        ("hostname", prefixed("node-1")),
        ("control_plane_url", prefixed(url)),
        ("agent_download_url", prefixed(url)),
        ("callback_token", prefixed("abcdefghijklmnop")),
        ("agent_sha256", prefixed(&"a".repeat(64))),
        ("agents", prefixed("claude")),
        ("journald.system_max_use", prefixed("500M")),
        ("journald.max_retention", prefixed("7day")),
        ("extra_ca_pem", prefixed("")),
        ("lightweight_image", prefixed("debian:bookworm")),
    ];
    for (field, values) in cases {
        for value in values {
            check_rejected(field, &value);
        }
    }
}

#[test]
fn url_specific_tricks_are_rejected() {
    for value in [
        "https://sam.example.com/../../etc/passwd",
        "https://sam.example.com/%2e%2e/x",
        "https://sam.example.com/a/..",
        "https://sam.example.com\t/x",
        "https://user:password@sam.example.com",
        "http://sam.example.com",
        "http://169.254.169.254/latest/user-data",
        "file:///etc/passwd",
        "javascript:alert(1)",
        "//sam.example.com",
        "sam.example.com",
        "https://",
    ] {
        check_rejected("control_plane_url", value);
        check_rejected("agent_download_url", value);
    }
}

#[test]
fn over_long_values_are_rejected() {
    check_rejected("node_id", &"n".repeat(129));
    check_rejected("hostname", &"h".repeat(64));
    let long_url = format!("https://sam.example.com/{}", "a".repeat(2048));
    check_rejected("control_plane_url", &long_url);
    check_rejected("agent_download_url", &long_url);
    check_rejected("callback_token", &"t".repeat(4097));
    check_rejected("callback_token", "too-short");
    check_rejected("journald.system_max_use", "1234567M");
    let pem = include_str!("extra-ca.pem").repeat(30);
    check_rejected("extra_ca_pem", &pem);
    check_rejected("lightweight_image", &"i".repeat(256));
    check_rejected("lightweight_image", "");
    // An option, not an image, for `docker pull`.
    check_rejected("lightweight_image", "--all-tags");
}

#[test]
fn out_of_range_numbers_are_rejected_by_field() {
    let check = |field: &str, boot: NodeBoot| {
        let err = boot.render().unwrap_err();
        assert_eq!(err.invalid_fields(), [field]);
    };
    check(
        "swap_mb",
        NodeBoot {
            swap_mb: 65_537,
            ..default_boot()
        },
    );
    check(
        "swappiness",
        NodeBoot {
            swappiness: 101,
            ..default_boot()
        },
    );
    check(
        "agent_port",
        NodeBoot {
            agent_port: 0,
            ..default_boot()
        },
    );
}

#[test]
fn range_bounds_are_accepted() {
    for (swap_mb, swappiness) in [(0, 0), (65_536, 100), (1, 1)] {
        let boot = NodeBoot {
            swap_mb,
            swappiness,
            ..default_boot()
        };
        assert!(boot.render().is_ok(), "{swap_mb} {swappiness}");
    }
}

const FIELDS: [&str; 11] = [
    "node_id",
    "hostname",
    "control_plane_url",
    "agent_download_url",
    "callback_token",
    "agent_sha256",
    "agents",
    "journald.system_max_use",
    "journald.max_retention",
    "extra_ca_pem",
    "lightweight_image",
];

proptest! {
    /// Any value in any field renders or is rejected by that field's name; nothing panics.
    #[test]
    fn arbitrary_values_never_panic(
        field in proptest::sample::select(FIELDS.to_vec()),
        value in prop_oneof!["\\PC*", ".*", "[;$`'\"\\n\\\\/.a-z:-]{0,40}"],
    ) {
        match with(field, value.clone()).render() {
            Ok(user_data) => prop_assert!(user_data.expose().starts_with("#cloud-config\n")),
            Err(err) => prop_assert_eq!(err.invalid_fields(), [field], "{:?}", value),
        }
    }
}
