//! No credential leaks: a task runs end to end through a real `sam-server` (SQLite
//! file, local provider, real `sam-vm-agent` and demo agent processes) with a
//! distinctive fake provider key and fake agent key in the environment, then every
//! place the run wrote is searched for both, and for the user API token (which the
//! store keeps only hashed): the server's debug logs (which include the nodes'
//! output), the task's events and view over the API, and every file under the data
//! directory as raw bytes (the SQLite database and its WAL, the nodes' rendered user
//! data, their event logs, the handed-over workspace).

use std::path::{Path, PathBuf};
use std::process::Stdio;

mod common;
use common::server::{ServerProcess, TOKEN, call, free_port, server_command, submit_and_follow};
use common::{StopNodes, repo};

/// A fake cloud key, set in every variable a provider reads its key from.
const PROVIDER_KEY: &str = "hcloud-FAKE-provider-key-3f9a1c7e";
/// A fake model key, set where coding agents read theirs.
const AGENT_KEY: &str = "sk-ant-FAKE-agent-key-8b2d4e6f";

/// Every regular file under `dir`, recursively (symlinks are not followed).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).expect("readable directory") {
            let entry = entry.expect("a directory entry");
            let kind = entry.file_type().expect("a file type");
            if kind.is_dir() {
                pending.push(entry.path());
            } else if kind.is_file() {
                files.push(entry.path());
            }
        }
    }
    files
}

/// Whether `needle` occurs in `haystack`.
fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread")]
async fn no_key_or_token_reaches_logs_events_the_database_or_user_data() {
    let repo = repo();
    let data = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let _nodes = StopNodes(data.path().to_owned());
    let log_path = logs.path().join("sam-server.log");
    let port = free_port();
    let mut command = server_command(
        data.path(),
        port,
        &[],
        &[
            ("RUST_LOG", "debug"),
            ("HCLOUD_TOKEN", PROVIDER_KEY),
            ("SCW_SECRET_KEY", PROVIDER_KEY),
            ("ANTHROPIC_API_KEY", AGENT_KEY),
            ("OPENAI_API_KEY", AGENT_KEY),
        ],
    );
    let log_file = std::fs::File::create(&log_path).unwrap();
    command
        .stdout(Stdio::from(log_file.try_clone().unwrap()))
        .stderr(Stdio::from(log_file));
    let server = ServerProcess::launch(command, port).await;
    let http = reqwest::Client::new();

    let (id, events) = submit_and_follow(&server, &http, repo.path()).await;
    let (_, end) = events.last().expect("events");
    assert_eq!(end["kind"]["status"], "completed", "{events:?}");
    let (status, task) = call(
        http.get(server.url(&format!("/v1/tasks/{id}")))
            .bearer_auth(TOKEN),
    )
    .await;
    assert_eq!(status, 200);
    let status = server.terminate().await;
    assert!(status.success(), "a graceful shutdown: {status}");

    let user_data: Vec<PathBuf> = files_under(data.path())
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n == "user-data"))
        .collect();
    assert!(!user_data.is_empty(), "the node's user data was rendered");
    assert!(
        data.path().join("sam.db").is_file(),
        "the state is in the SQLite file"
    );
    let log = std::fs::read(&log_path).unwrap();
    assert!(
        contains(&log, "DEBUG") || contains(&log, "\"debug\""),
        "the server logged at debug level"
    );

    let mut places: Vec<(String, Vec<u8>)> = vec![
        ("the server's logs".to_owned(), log),
        (
            "the task's events".to_owned(),
            serde_json::to_vec(&events.iter().map(|(_, e)| e).collect::<Vec<_>>()).unwrap(),
        ),
        ("the task's view".to_owned(), task.to_string().into_bytes()),
    ];
    for file in files_under(data.path()) {
        let bytes = std::fs::read(&file).unwrap();
        places.push((file.display().to_string(), bytes));
    }
    for (place, bytes) in &places {
        for (what, secret) in [
            ("the provider key", PROVIDER_KEY),
            ("the agent key", AGENT_KEY),
            ("the API token", TOKEN),
        ] {
            assert!(!contains(bytes, secret), "{what} appears in {place}");
        }
    }
}
