//! Runs the `sam` binary's `cloud-init` subcommand.

use std::io::Write;
use std::process::{Command, Output};

use sam_cloudinit::NodeBoot;
use sam_core::Secret;

const TOKEN: &str = "eyJhbGciOiJIUzI1NiJ9.eyJzY29wZSI6Im5vZGUifQ.c2lnbmF0dXJl";

fn token_file(content: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    file.write_all(content.as_bytes()).expect("write token");
    file
}

/// The single place that runs the binary: `sam cloud-init` with the three
/// required options, then `extra`.
fn cloud_init(node_id: &str, url: &str, token_path: &str, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sam"))
        .args([
            "cloud-init",
            "--node-id",
            node_id,
            "--control-plane-url",
            url,
        ])
        .args(["--callback-token-file", token_path])
        .args(extra)
        .output()
        .expect("run sam")
}

#[test]
fn prints_the_same_user_data_as_the_library() {
    let token = token_file(&format!("{TOKEN}\n"));
    let path = token.path().to_str().unwrap();
    let output = cloud_init(
        "node-7",
        "https://sam.example.com",
        path,
        &["--swap-mb", "0", "--swappiness", "5", "--provider", "gcp"],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let mut expected = NodeBoot::new("node-7", "https://sam.example.com", Secret::new(TOKEN));
    expected.swap_mb = 0;
    expected.swappiness = 5;
    expected.provider = sam_core::ProviderKind::Gcp;
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
        &["--swap-mb", "70000"],
    );
    assert!(!output.status.success());
    assert!(output.stdout.is_empty(), "nothing is printed on failure");
    let stderr = String::from_utf8_lossy(&output.stderr);
    for field in ["node_id", "control_plane_url", "callback_token", "swap_mb"] {
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
