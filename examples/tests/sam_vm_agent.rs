//! Runs the `sam-vm-agent` binary with a cloud node's configuration that it cannot
//! serve: it must stop at start, naming the setting, and never listen.

use std::time::Duration;

/// Runs `sam-vm-agent --config <agent.json>` with `fields` added to a valid
/// configuration, and returns its exit status and error output.
async fn vm_agent(fields: &str) -> (std::process::ExitStatus, String) {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("callback-token");
    std::fs::write(&token, "node-token-0123456789\n").unwrap();
    // Port 1 is privileged and never ours: a listening agent would be a bug anyway.
    let config = format!(
        r#"{{"node_id":"n-1","control_plane_url":"http://127.0.0.1:1/","callback_token_file":{:?},"port":1,"listen":"127.0.0.1","data_dir":{:?},"provider":"hetzner"{fields}}}"#,
        token.display().to_string(),
        dir.path().join("data").display().to_string(),
    );
    let path = dir.path().join("agent.json");
    std::fs::write(&path, config).unwrap();
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_sam-vm-agent"))
        .arg("--config")
        .arg(&path)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("the agent stops at start instead of serving")
        .unwrap();
    assert!(
        !dir.path().join("data/workspaces").exists(),
        "nothing is prepared for a configuration the agent refuses"
    );
    (
        output.status,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn a_missing_agent_user_stops_the_agent_at_start() {
    let (status, stderr) = vm_agent(r#","role":"host","agent_user":"sam-no-such-user-7f3a""#).await;
    assert!(!status.success());
    assert!(
        stderr.contains("agent_user") && stderr.contains("sam-no-such-user-7f3a"),
        "{stderr}"
    );
}

#[tokio::test]
async fn an_unknown_role_stops_the_agent_at_start() {
    let (status, stderr) = vm_agent(r#","role":"kvm","agent_user":"sam""#).await;
    assert!(!status.success());
    assert!(
        stderr.contains("role") && stderr.contains("`docker` or `host`"),
        "{stderr}"
    );
}
