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
        // A directory that went away meanwhile (a workspace handed over) holds nothing.
        let entries = match std::fs::read_dir(&dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            entries => entries.expect("readable directory"),
        };
        for entry in entries {
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

/// Values in the server's environment that no node or agent may see.
const CANARIES: [(&str, &str); 6] = [
    (
        "SAM_CREDENTIAL_KEY",
        "Y2FuYXJ5LWNyZWRlbnRpYWwta2V5LTMyLWJ5dGVzISE=",
    ),
    ("HCLOUD_TOKEN", "canary-hcloud-token-5a1f"),
    ("SCW_SECRET_KEY", "7c0e5b1a-canary-4d2e-9f3b-scw0secret0"),
    ("AWS_SECRET_ACCESS_KEY", "canary/aws+secret/access0key9"),
    ("SAM_CANARY", "canary-custom-variable-e4b7"),
    ("ANTHROPIC_API_KEY", "sk-ant-canary-another-agents-key"),
];

/// The custom agent's own key: the one variable of the server's environment that is
/// given to it, by name.
const AGENT_OWN_KEY: &str = "custom-agent-own-key-61d3";

fn mode(path: &Path) -> u32 {
    std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(path).unwrap().permissions()) & 0o777
}

/// A real agent process started by a real `sam-server` (local provider, real
/// `sam-vm-agent` node) sees none of the server's secrets: a custom agent records
/// its environment, then runs the demo agent to finish the task. Its own credential
/// reaches it; the API token, the credential key, the cloud keys, another agent's
/// key, an operator's variable and the path of the node's boot token do not. The
/// warm node's own environment (read from `/proc`) holds none of them either, and
/// the files that hold secrets are private.
#[tokio::test(flavor = "multi_thread")]
async fn agents_and_nodes_see_none_of_the_servers_secrets() {
    let repo = repo();
    let data = tempfile::tempdir().unwrap();
    let dumps = tempfile::tempdir().unwrap();
    let _nodes = StopNodes(data.path().to_owned());
    let agent_env = dumps.path().join("agent-env");
    let command = format!(
        "env > '{}.tmp' && mv '{0}.tmp' '{0}'; exec '{}'",
        agent_env.display(),
        env!("CARGO_BIN_EXE_sam-demo-agent")
    );
    let mut env: Vec<(&str, &str)> = CANARIES.to_vec();
    env.push(("SAM_AGENT_COMMAND", &command));
    env.push(("SAM_AGENT_API_KEY", AGENT_OWN_KEY));
    let server = ServerProcess::start_with(data.path(), &[], &env).await;
    let http = reqwest::Client::new();

    let (status, accepted) =
        call(http.post(server.url("/v1/tasks")).bearer_auth(TOKEN).json(
            &serde_json::json!({"repo": repo.path(), "prompt": "say hello", "agent": "custom"}),
        ))
        .await;
    assert_eq!(status, 202, "{accepted}");
    let id = accepted["id"].as_str().unwrap();
    let events =
        common::server::read_events(&http, &server.url(&format!("/v1/tasks/{id}/events"))).await;
    let (_, end) = events.last().expect("events");
    assert_eq!(end["kind"]["status"], "completed", "{events:?}");

    let agent = std::fs::read_to_string(&agent_env).expect("the agent recorded its environment");
    assert!(
        agent
            .lines()
            .any(|l| l == format!("SAM_AGENT_API_KEY={AGENT_OWN_KEY}")),
        "the agent's own key reached it:\n{agent}"
    );
    assert!(agent.lines().any(|l| l.starts_with("PATH=")), "{agent}");
    // The node: still running, warm for the next task.
    let state: serde_json::Value = serde_json::from_slice(
        &std::fs::read(data.path().join("local").join("state.json")).unwrap(),
    )
    .unwrap();
    let nodes: Vec<&serde_json::Value> = state["vms"].as_object().unwrap().values().collect();
    assert_eq!(nodes.len(), 1, "{state}");
    let pid = nodes[0]["pid"].as_u64().unwrap();
    let node = String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/environ")).unwrap())
        .replace('\0', "\n");
    assert!(
        node.contains("SAM_USER_DATA="),
        "the node has its own settings:\n{node}"
    );

    for (who, environment) in [("agent", &agent), ("node", &node)] {
        for (name, value) in CANARIES.iter().chain(&[("SAM_API_TOKEN", TOKEN)]) {
            assert!(
                !environment.contains(value),
                "{name}'s value reached the {who}:\n{environment}"
            );
            assert!(
                !environment
                    .lines()
                    .any(|l| l.starts_with(&format!("{name}="))),
                "{name} reached the {who}"
            );
        }
    }
    for name in ["SAM_USER_DATA", "SAM_AGENT_COMMAND", "SAM_DATA_DIR"] {
        assert!(
            !agent.lines().any(|l| l.starts_with(&format!("{name}="))),
            "{name} reached the agent:\n{agent}"
        );
    }

    assert_eq!(mode(data.path()), 0o700, "the data directory");
    assert_eq!(mode(&data.path().join("sam.db")), 0o600, "sam.db");
    // With a credential key the signing key lives in the database, sealed: no file.
    assert!(
        !data.path().join("signing-key").exists(),
        "the signing key is in the database, not in a file"
    );
    for file in files_under(data.path()) {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        if name == "user-data" || name.ends_with(".token") || name.starts_with("sam.db") {
            assert_eq!(mode(&file), 0o600, "{}", file.display());
        }
    }
    let status = server.terminate().await;
    assert!(status.success(), "a graceful shutdown: {status}");
}
