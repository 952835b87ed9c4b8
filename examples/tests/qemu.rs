//! `sam-server --provider qemu` end to end: a real VM, booted by QEMU from the
//! user data the server renders, under Debian's cloud-init, runs every boot phase,
//! downloads the VM agent from the server and checks its SHA-256, starts it last,
//! and the agent reports ready through QEMU's forward to the server's loopback port;
//! a VM killed while it boots is replaced.
//!
//! Needs root, `qemu-system-x86_64`, `qemu-img`, `socat` and `debootstrap` (the image
//! is built once into `<target>/tmp/qemu-images`, as the provider's own tests do);
//! without them the test skips with a notice, except on CI (`CI=true`), where
//! `.ci/run` installs them and their absence fails it.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

mod common;
use common::server::{ServerProcess, TOKEN, call};

/// Whether the machine can run the test; prints why not, and fails on CI.
fn available() -> bool {
    let runs = |program: &str, flag: &str| {
        std::process::Command::new(program)
            .arg(flag)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let mut missing: Vec<String> = [
        ("qemu-system-x86_64", "--version"),
        ("qemu-img", "--version"),
        ("socat", "-V"),
    ]
    .into_iter()
    .filter(|(program, flag)| !runs(program, flag))
    .map(|(program, _)| program.to_owned())
    .collect();
    if let Err(e) = sam_providers::qemu::image::check_tools() {
        missing.push(e.to_string());
    }
    if missing.is_empty() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "the QEMU end-to-end test cannot run ({missing:?}), and CI=true requires it"
    );
    let _ = writeln!(
        std::io::stderr(),
        "notice: skipping the QEMU end-to-end test: {missing:?}"
    );
    false
}

/// The image directory, built once per target directory.
fn image_dir() -> PathBuf {
    use sam_providers::qemu::{ImageRecipe, image};
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("qemu-images");
    let built = image::build(&ImageRecipe::default(), &cache, &mut |stage, elapsed| {
        let _ = writeln!(
            std::io::stderr(),
            "qemu image: {} ({elapsed:.0?})",
            stage.describe()
        );
    })
    .expect("the base image builds");
    built.disk.parent().expect("in its directory").to_path_buf()
}

/// The QEMU processes of `dir`.
fn qemu_pids(dir: &Path) -> Vec<u32> {
    let needle = dir.display().to_string();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
                .is_ok_and(|c| c.contains("qemu-system") && c.contains(&needle))
        })
        .collect()
}

/// Kills every QEMU process of `dir` (the nodes stay warm after the server stops);
/// returns how many there were.
fn stop_vms(dir: &Path) -> usize {
    let pids = qemu_pids(dir);
    for pid in &pids {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
    pids.len()
}

struct StopVms(PathBuf);

impl Drop for StopVms {
    fn drop(&mut self) {
        stop_vms(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_qemu_node_boots_from_the_servers_user_data_and_reports_ready() {
    if !available() {
        return;
    }
    let image = image_dir();
    let data = tempfile::tempdir().unwrap();
    let _vms = StopVms(data.path().to_owned());
    let server = ServerProcess::start_with(
        data.path(),
        &[
            "--provider",
            "qemu",
            "--qemu-image",
            image.to_str().unwrap(),
        ],
        &[],
    )
    .await;
    let http = reqwest::Client::new();

    // A task whose repository the VM cannot reach (it reaches nothing but the
    // server): the node still boots and reports ready before the clone fails.
    let (status, accepted) = call(
        http.post(server.url("/v1/tasks"))
            .bearer_auth(TOKEN)
            .json(&json!({"repo": "https://git.invalid/sam/repo.git", "prompt": "say hello", "agent": "demo"})),
    )
    .await;
    assert_eq!(status, 202, "{accepted}");
    let id = accepted["id"].as_str().expect("an id").to_owned();

    // The first VM dies while it boots (QEMU killed from outside): the task moves
    // to a replacement node instead of waiting out the agent-ready timeout.
    let first = tokio::time::timeout(Duration::from_secs(120), async {
        loop {
            let (_, nodes) = call(http.get(server.url("/v1/nodes")).bearer_auth(TOKEN)).await;
            if let Some(id) = nodes
                .as_array()
                .and_then(|n| n.first())
                .and_then(|n| n["id"].as_str())
                && !qemu_pids(data.path()).is_empty()
            {
                return id.to_owned();
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
    .await
    .expect("the first node's VM started within 2 minutes");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(stop_vms(data.path()), 1, "one VM was booting");

    let started = std::time::Instant::now();
    let ready = tokio::time::timeout(Duration::from_secs(900), async {
        loop {
            let (_, nodes) = call(http.get(server.url("/v1/nodes")).bearer_auth(TOKEN)).await;
            if let Some(node) = nodes
                .as_array()
                // Ready, and its timeline stored: the control plane may see the agent
                // answer its health probe before the ready callback brings the timeline.
                .and_then(|n| {
                    n.iter().find(|n| {
                        n["ready_at"].is_string()
                            && n["boot"]["timeline"]
                                .as_array()
                                .is_some_and(|t| !t.is_empty())
                    })
                })
            {
                return node.clone();
            }
            let (_, task) = call(
                http.get(server.url(&format!("/v1/tasks/{id}")))
                    .bearer_auth(TOKEN),
            )
            .await;
            assert_ne!(
                task["status"], "failed",
                "the task failed before its node was ready: {task}"
            );
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    })
    .await;
    let node: Value = ready.unwrap_or_else(|_| {
        let consoles: Vec<String> = glob_consoles(data.path());
        panic!(
            "no QEMU node reported ready within 15 minutes; consoles:\n{}",
            consoles.join("\n----\n")
        )
    });
    let _ = writeln!(
        std::io::stderr(),
        "qemu node ready {:.1?} after submission",
        started.elapsed()
    );
    assert_eq!(node["provider"], "qemu", "{node}");
    assert_ne!(
        node["id"],
        first.as_str(),
        "the ready node is the replacement: {node}"
    );
    // The boot timeline the agent reported with its ready callback: every phase
    // ended, the agent's start last; printed for BENCHMARKS.md.
    let timeline = node["boot"]["timeline"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let phases: Vec<&str> = timeline
        .iter()
        .filter_map(|p| p["phase"].as_str())
        .collect();
    assert_eq!(phases.last(), Some(&"agent-start"), "{node}");
    for required in ["packages", "agent-download"] {
        assert!(phases.contains(&required), "{required} missing: {phases:?}");
    }
    assert!(
        timeline
            .iter()
            .all(|p| p["ended_at"].is_string() && p["failed"] != true),
        "{node}"
    );
    let time = |v: &Value| {
        chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap_or_default())
            .map(|t| t.timestamp_millis())
            .unwrap_or_default()
    };
    for phase in &timeline {
        let _ = writeln!(
            std::io::stderr(),
            "qemu boot phase {:<16} {:>7.1}s",
            phase["phase"].as_str().unwrap_or_default(),
            (time(&phase["ended_at"]) - time(&phase["started_at"])) as f64 / 1000.0
        );
    }
    assert!(node["agent_version"].is_string(), "{node}");
    assert!(
        node["address"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.1:")),
        "{node}"
    );

    // The task then fails on the clone, with git's reason, and nothing is left
    // running once the server and its VMs are stopped.
    let task = tokio::time::timeout(Duration::from_secs(300), async {
        loop {
            let (_, task) = call(
                http.get(server.url(&format!("/v1/tasks/{id}")))
                    .bearer_auth(TOKEN),
            )
            .await;
            if task["status"] == "failed" || task["status"] == "completed" {
                return task;
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    })
    .await
    .expect("the task ended within 5 minutes of its node's start");
    assert_eq!(task["status"], "failed", "{task}");
    assert_eq!(task["node_replacements"], 1, "{task}");
    let message = task["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        message.contains("git.invalid") || message.contains("clone"),
        "{task}"
    );
    server.terminate().await;
    assert_eq!(stop_vms(data.path()), 1, "the warm VM was still running");
}

/// Every VM's serial console, for a failure's message.
fn glob_consoles(data: &Path) -> Vec<String> {
    let vms = data.join("qemu").join("vms");
    std::fs::read_dir(vms)
        .into_iter()
        .flatten()
        .flatten()
        .map(|vm| {
            let text = std::fs::read_to_string(vm.path().join("console.log")).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(60).collect();
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        })
        .collect()
}
