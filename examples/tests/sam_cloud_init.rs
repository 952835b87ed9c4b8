//! Runs the `sam` binary's `cloud-init` subcommand.

use std::io::Write;
use std::process::{Command, Output};

use sam_cloudinit::NodeBoot;
use sam_core::Secret;

const TOKEN: &str = "eyJhbGciOiJIUzI1NiJ9.eyJzY29wZSI6Im5vZGUifQ.c2lnbmF0dXJl";
const SHA256: &str = "8bb5fc60ba6109b4647f89baa0a8f76b7cc67de6167f1f9e9068e01a1d3d45f0";

fn token_file(content: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    file.write_all(content.as_bytes()).expect("write token");
    file
}

/// The single place that runs the binary: `sam cloud-init` with `args`.
fn sam_cloud_init(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sam"))
        .arg("cloud-init")
        .args(args)
        .output()
        .expect("run sam")
}

/// `sam cloud-init` with the four required options, then `extra`.
fn cloud_init(node_id: &str, url: &str, token_path: &str, extra: &[&str]) -> Output {
    let required = [
        "--node-id",
        node_id,
        "--control-plane-url",
        url,
        "--callback-token-file",
        token_path,
    ];
    let sha = ["--agent-sha256", SHA256];
    let sha: &[&str] = if extra.contains(&"--agent-sha256") {
        &[]
    } else {
        &sha
    };
    let args: Vec<&str> = required.iter().chain(sha).chain(extra).copied().collect();
    sam_cloud_init(&args)
}

#[test]
fn prints_the_same_user_data_as_the_library() {
    let token = token_file(&format!("{TOKEN}\n"));
    let path = token.path().to_str().unwrap();
    let output = cloud_init(
        "node-7",
        "https://sam.example.com",
        path,
        &[
            "--swap-mb",
            "0",
            "--swappiness",
            "5",
            "--provider",
            "gcp",
            "--agent-download-url",
            "https://downloads.example.com/sam-vm-agent",
            "--agents",
            "claude,gemini",
        ],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let mut expected = NodeBoot::new(
        "node-7",
        "https://sam.example.com",
        Secret::new(TOKEN),
        SHA256,
    );
    expected.swap_mb = 0;
    expected.swappiness = 5;
    expected.provider = sam_core::ProviderKind::Gcp;
    expected.agent_download_url = Some("https://downloads.example.com/sam-vm-agent".into());
    expected.agents = vec!["claude".into(), "gemini".into()];
    let expected = expected.render().unwrap();
    assert_eq!(String::from_utf8(output.stdout).unwrap(), expected.expose());
}

#[test]
fn invalid_input_exits_non_zero_naming_every_field() {
    let token = token_file("short;token");
    let output = cloud_init(
        "node;reboot",
        "http://sam.example.com",
        token.path().to_str().unwrap(),
        &["--swap-mb", "70000", "--agents", "claude,aider"],
    );
    assert!(!output.status.success());
    assert!(output.stdout.is_empty(), "nothing is printed on failure");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("unknown agent \"aider\" (known: claude, codex, gemini, opencode)"),
        "{stderr}"
    );
    for field in [
        "node_id",
        "control_plane_url",
        "callback_token",
        "agents",
        "swap_mb",
    ] {
        assert!(stderr.contains(field), "{field} missing from:\n{stderr}");
    }
    assert!(
        !stderr.contains("short;token"),
        "the token leaked:\n{stderr}"
    );
}

#[test]
fn a_missing_token_file_is_an_error() {
    let output = cloud_init(
        "node-7",
        "https://sam.example.com",
        "/nonexistent/sam-token",
        &[],
    );
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("/nonexistent/sam-token"), "{stderr}");
}

#[test]
fn an_unknown_provider_is_a_usage_error() {
    let token = token_file(TOKEN);
    let output = cloud_init(
        "node-7",
        "https://sam.example.com",
        token.path().to_str().unwrap(),
        &["--provider", "aws"],
    );
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("aws"));
}

#[test]
fn the_agent_checksum_is_required_and_checked() {
    let token = token_file(TOKEN);
    let path = token.path().to_str().unwrap();
    let missing = sam_cloud_init(&[
        "--node-id",
        "node-7",
        "--control-plane-url",
        "https://sam.example.com",
        "--callback-token-file",
        path,
    ]);
    assert!(!missing.status.success());
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(stderr.contains("--agent-sha256"), "{stderr}");

    let output = cloud_init(
        "node-7",
        "https://sam.example.com",
        path,
        &["--agent-sha256", "not-hex"],
    );
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("agent_sha256"), "{stderr}");
}
