//! Fixtures, input strategies and the external checkers (cloud-init, PyYAML).

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use proptest::prelude::*;
use sam_cloudinit::{JournaldLimits, NodeBoot, NodeRole};
use sam_core::{ProviderKind, Secret};

/// A callback token shaped like a JWT.
pub(crate) const TOKEN: &str = "eyJhbGciOiJIUzI1NiJ9.eyJzY29wZSI6Im5vZGUifQ.c2lnbmF0dXJlLXNpZw";

/// The SHA-256 of [`AGENT_BINARY`], which the fixtures pin.
pub(crate) const AGENT_SHA256: &str =
    "8bb5fc60ba6109b4647f89baa0a8f76b7cc67de6167f1f9e9068e01a1d3d45f0";

/// What the stand-in download serves as the agent binary.
pub(crate) const AGENT_BINARY: &[u8] = b"#!/bin/sh\necho sam-vm-agent stand-in\n";

/// Every field at its default.
pub(crate) fn default_boot() -> NodeBoot {
    NodeBoot::new(
        "node-01",
        "https://sam.example.com",
        Secret::new(TOKEN),
        AGENT_SHA256,
    )
}

/// Every optional field set, every default changed.
pub(crate) fn full_boot() -> NodeBoot {
    NodeBoot {
        hostname: Some("sam-node-7".into()),
        agent_download_url: Some(
            "https://downloads.example.com/sam/v0.1.0/sam-vm-agent?arch=amd64&sig=ab_c-1".into(),
        ),
        agents: vec!["codex".into(), "claude".into()],
        agent_port: 9443,
        swap_mb: 8192,
        swappiness: 10,
        journald: JournaldLimits {
            system_max_use: "2G".into(),
            max_retention: "30day".into(),
        },
        provider: ProviderKind::Scaleway,
        role: NodeRole::Docker,
        extra_ca_pem: Some(include_str!("extra-ca.pem").into()),
        lightweight_image: format!(
            "registry.example.com:5000/team/workspace@sha256:{}",
            "e".repeat(64)
        ),
        ..NodeBoot::new(
            "node:7_a.b",
            "https://cp.example.com:8443/sam",
            Secret::new(TOKEN),
            // Upper case: the checksum file gets it in lower case.
            AGENT_SHA256.to_ascii_uppercase(),
        )
    }
}

/// Swap disabled.
pub(crate) fn swap_disabled_boot() -> NodeBoot {
    NodeBoot {
        swap_mb: 0,
        ..default_boot()
    }
}

/// Workspaces on the host: no Docker.
pub(crate) fn host_boot() -> NodeBoot {
    NodeBoot {
        role: NodeRole::Host,
        control_plane_url: "http://127.0.0.1:3000".into(),
        ..default_boot()
    }
}

/// Workspaces on the host, no agent adapter: no Node.js either.
pub(crate) fn bare_host_boot() -> NodeBoot {
    NodeBoot {
        agents: Vec::new(),
        provider: ProviderKind::Gcp,
        ..host_boot()
    }
}

/// The named fixtures every external check runs on.
pub(crate) fn fixtures() -> [(&'static str, NodeBoot); 5] {
    [
        ("default", default_boot()),
        ("all-options", full_boot()),
        ("swap-disabled", swap_disabled_boot()),
        ("host-role", host_boot()),
        ("bare-host", bare_host_boot()),
    ]
}

/// Valid inputs, varied over every field.
pub(crate) fn valid_boot() -> impl Strategy<Value = NodeBoot> {
    let identity = (
        "[A-Za-z0-9][A-Za-z0-9._:-]{0,40}",
        proptest::option::of("[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?"),
        prop_oneof![
            "https://[a-z]{1,12}\\.example\\.com(:[1-9][0-9]{0,3})?(/[a-z0-9_-]{1,8}){0,2}",
            "http://(127\\.0\\.0\\.1|localhost|\\[::1\\]):[1-9][0-9]{0,3}",
        ],
        "[A-Za-z0-9_.=-]{16,80}",
        proptest::option::of("https://[a-z]{1,12}\\.example\\.org/[a-z0-9/]{0,20}"),
        "[0-9a-fA-F]{64}",
        proptest::sample::subsequence(
            sam_cloudinit::AGENT_ADAPTERS
                .iter()
                .map(|a| a.agent.to_owned())
                .collect::<Vec<_>>(),
            0..=4,
        ),
    );
    let tuning = (
        1..=u16::MAX,
        prop_oneof![Just(0), 0..=sam_cloudinit::MAX_SWAP_MB],
        0..=sam_cloudinit::MAX_SWAPPINESS,
        "[1-9][0-9]{0,3}[KMGT]?",
        "[1-9][0-9]{0,3}(s|min|h|day|week|month|year)",
        proptest::sample::select(ProviderKind::ALL.to_vec()),
        proptest::sample::select(vec![NodeRole::Docker, NodeRole::Host]),
    );
    (identity, tuning).prop_map(
        |(
            (node_id, hostname, url, token, download, sha, agents),
            (port, swap_mb, swappiness, max_use, retention, provider, role),
        )| NodeBoot {
            hostname,
            agent_download_url: download,
            agents,
            agent_port: port,
            swap_mb,
            swappiness,
            journald: JournaldLimits {
                system_max_use: max_use,
                max_retention: retention,
            },
            provider,
            role,
            ..NodeBoot::new(node_id, url, Secret::new(token), sha)
        },
    )
}

/// The shared field cases (`shared/cases/cloud-init`).
pub(crate) fn cases_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/cases/cloud-init")
}

/// Whether an external tool works. Without it the caller skips with a notice,
/// except on CI (`CI=true`), where `.ci/run` installs it and its absence fails the test.
pub(crate) fn tool_available(program: &str, probe: &[&str]) -> bool {
    let works = Command::new(program)
        .args(probe)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !works {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "`{program} {}` failed, and CI=true requires it (.ci/run installs it)",
            probe.join(" ")
        );
        // Written to the stream itself, not through `eprintln!`, so the test
        // harness's output capture does not swallow the notice.
        let _ = writeln!(
            std::io::stderr(),
            "notice: skipping this check: `{program} {}` failed; install it to run the check",
            probe.join(" ")
        );
    }
    works
}

/// Whether `cloud-init schema` can run here (see [`tool_available`]).
pub(crate) fn cloud_init_available() -> bool {
    tool_available("cloud-init", &["--version"])
}

/// Whether a YAML 1.1 loader (PyYAML) can run here (see [`tool_available`]).
pub(crate) fn pyyaml_available() -> bool {
    tool_available("python3", &["-c", "import yaml"])
}

/// Runs `cloud-init schema --config-file` on `text`; `Err` holds its output.
pub(crate) fn cloud_init_schema(text: &str) -> Result<(), String> {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    file.write_all(text.as_bytes()).expect("write temp file");
    let output = Command::new("cloud-init")
        .args(["schema", "--config-file"])
        .arg(file.path())
        .output()
        .expect("run cloud-init");
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// Loads `text` with PyYAML's `safe_load` (YAML 1.1) and returns it as JSON.
///
/// Panics if PyYAML fails or yields something JSON cannot hold, such as a date:
/// that is an unquoted YAML 1.1 trap.
pub(crate) fn pyyaml_load(text: &str) -> serde_json::Value {
    let script = "import json, sys, yaml; json.dump(yaml.safe_load(sys.stdin), sys.stdout)";
    python_json("python3", script, text)
}

/// Runs the Python `program` of `interpreter` with `input` on its standard input and
/// reads the JSON it prints; panics with its standard error when it fails.
pub(crate) fn python_json<T: serde::de::DeserializeOwned>(
    interpreter: &str,
    program: &str,
    input: &str,
) -> T {
    let mut child = Command::new(interpreter)
        .args(["-c", program])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {interpreter}: {e}"));
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write to python");
    let output = child.wait_with_output().expect("wait for python");
    assert!(
        output.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("python printed JSON")
}
