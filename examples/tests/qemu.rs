//! `sam-server --provider qemu` and `sam run --provider qemu` end to end: a real VM,
//! booted by QEMU from the user data the server renders, under Debian's cloud-init,
//! runs every boot phase, downloads the VM agent from the server and checks its
//! SHA-256, starts it last, and the agent reports ready through QEMU's forward to
//! the server's loopback port; a VM killed while it boots is replaced. A task on a
//! repository of this machine then runs to `completed` inside the VM: git clones
//! it through the server's served-repository route, the demo agent works, and the
//! output branch is pushed back into the repository; a second task reuses the
//! warm VM. A VM booted from a bare image installs what its boot needs with apt,
//! through an apt proxy on this machine's loopback.
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
use common::repo;
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
    recipe_dir(&sam_providers::qemu::ImageRecipe::default())
}

/// The directory of `recipe`'s image, built once per target directory.
fn recipe_dir(recipe: &sam_providers::qemu::ImageRecipe) -> PathBuf {
    use sam_providers::qemu::image;
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("qemu-images");
    let built = image::build(recipe, &cache, &mut |stage, elapsed| {
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

    // A task on a repository of this machine, which the VM reaches only through the
    // server's served-repository route.
    let repo = repo();
    let submit = |prompt: &'static str| {
        let request = http
            .post(server.url("/v1/tasks"))
            .bearer_auth(TOKEN)
            .json(&json!({"repo": repo.path(), "prompt": prompt, "agent": "demo"}));
        async move {
            let (status, accepted) = call(request).await;
            assert_eq!(status, 202, "{accepted}");
            accepted["id"].as_str().expect("an id").to_owned()
        }
    };
    let id = submit("say hello").await;

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

    // The task runs to completion inside the VM, and its branch lands in the
    // repository on this machine.
    let task = wait_for_end(&server, &http, &id, Duration::from_secs(600)).await;
    assert_eq!(task["status"], "completed", "{task}");
    assert_eq!(task["node_replacements"], 1, "{task}");
    assert_eq!(task["node"], node["id"], "{task}");
    landed(repo.path(), &task);

    // A second task reuses the warm VM: no boot, no new VM.
    let started = std::time::Instant::now();
    let second = submit("say hello again").await;
    let task = wait_for_end(&server, &http, &second, Duration::from_secs(300)).await;
    let _ = writeln!(
        std::io::stderr(),
        "qemu warm task: submission -> completed in {:.1?}",
        started.elapsed()
    );
    assert_eq!(task["status"], "completed", "{task}");
    assert_eq!(task["node"], node["id"], "the warm node ran it: {task}");
    landed(repo.path(), &task);
    assert_eq!(qemu_pids(data.path()).len(), 1, "one VM ran both tasks");

    // Nothing is left running once the server and its VMs are stopped.
    server.terminate().await;
    assert_eq!(stop_vms(data.path()), 1, "the warm VM was still running");
}

/// Waits up to `limit` for task `id` to end; its view.
async fn wait_for_end(
    server: &ServerProcess,
    http: &reqwest::Client,
    id: &str,
    limit: Duration,
) -> Value {
    tokio::time::timeout(limit, async {
        loop {
            let (_, task) = call(
                http.get(server.url(&format!("/v1/tasks/{id}")))
                    .bearer_auth(TOKEN),
            )
            .await;
            if ["failed", "completed", "cancelled"]
                .contains(&task["status"].as_str().unwrap_or_default())
            {
                return task;
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("task {id} did not end within {limit:?}"))
}

/// Asserts the task's output branch is in `repo` at the commit the task reported,
/// and the checked-out branch is untouched.
fn landed(repo: &Path, task: &Value) {
    let git = |args: &[&str]| {
        let out = std::process::Command::new("git")
            .args(args)
            .current_dir(repo)
            .output()
            .expect("git runs");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let branch = task["output"]["branch"].as_str().expect("an output branch");
    let commit = task["output"]["commit"].as_str().expect("a commit");
    assert_eq!(
        git(&["rev-parse", &format!("refs/heads/{branch}")]),
        commit,
        "{task}"
    );
    assert_ne!(git(&["rev-parse", "--abbrev-ref", "HEAD"]), branch);
    assert_eq!(
        git(&["status", "--porcelain"]),
        "",
        "the working copy is untouched"
    );
}

/// `sam run --provider qemu --json --qemu-image IMAGE EXTRA… --repo REPO --data-dir
/// DATA "say hello"`, killed after 15 minutes: whether it exited 0, its JSON
/// outcome, and its standard error.
async fn sam_run_qemu(
    image: &Path,
    extra: &[&str],
    repo: &Path,
    data: &Path,
) -> (bool, Value, String) {
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_sam"))
        .args(["run", "--provider", "qemu", "--json", "--qemu-image"])
        .arg(image)
        .args(extra)
        .arg("--repo")
        .arg(repo)
        .arg("--data-dir")
        .arg(data)
        .arg("say hello")
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(900), run)
        .await
        .expect("sam run finished within 15 minutes")
        .expect("sam runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let outcome: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!("stdout is one JSON object ({e}):\n{stdout}\nstderr:\n{stderr}")
    });
    (output.status.success(), outcome, stderr)
}

#[tokio::test(flavor = "multi_thread")]
async fn sam_run_with_the_qemu_provider_completes_in_a_fresh_data_directory() {
    if !available() {
        return;
    }
    let image = image_dir();
    let repo = repo();
    let data = tempfile::tempdir().unwrap();
    let _vms = StopVms(data.path().to_owned());
    let (succeeded, outcome, stderr) =
        sam_run_qemu(&image, &[], repo.path(), &data.path().join("sam")).await;
    assert!(succeeded, "{outcome}\n{stderr}");
    assert_eq!(outcome["status"], "completed", "{outcome}");
    let phases: Vec<&str> = outcome["boot_timeline"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["phase"].as_str())
        .collect();
    assert_eq!(phases.last(), Some(&"agent-start"), "{outcome}");
    assert!(phases.contains(&"agent-download"), "{outcome}");
    assert!(
        !outcome["files_changed"]
            .as_array()
            .is_none_or(Vec::is_empty),
        "the files the agent changed, read from its pushed commit: {outcome}"
    );
    landed(repo.path(), &outcome);

    // `sam down` stops the VM the run left warm.
    let down = std::process::Command::new(env!("CARGO_BIN_EXE_sam"))
        .args(["down", "--data-dir"])
        .arg(data.path().join("sam"))
        .output()
        .expect("sam down runs");
    assert!(down.status.success(), "{down:?}");
    assert!(
        String::from_utf8_lossy(&down.stdout).contains("stopped qemu node"),
        "{down:?}"
    );
    assert_eq!(stop_vms(data.path()), 0, "sam down left a VM running");
}

/// An HTTP proxy for apt on a loopback port: it fetches `http://` URLs of
/// `mirror_host` only (what apt in the guest asks for) and answers anything else
/// with a JSON `403`; the count of requests it forwarded. It stands in for
/// apt-cacher-ng (which BENCHMARKS.md's measurement used) so that CI installs no
/// system service; what is under test is apt, dpkg and cloud-init in the guest.
async fn apt_proxy(
    mirror_host: &'static str,
) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use axum::http::{StatusCode, Uri, header};
    use std::sync::atomic::{AtomicUsize, Ordering};
    let forwarded = std::sync::Arc::new(AtomicUsize::new(0));
    let count = std::sync::Arc::clone(&forwarded);
    let client = reqwest::Client::new();
    let handler = move |uri: Uri| {
        let (client, count) = (client.clone(), std::sync::Arc::clone(&count));
        async move {
            let refused = |why: &str| {
                (
                    StatusCode::FORBIDDEN,
                    [(header::CONTENT_TYPE, "application/json".to_owned())],
                    axum::body::Bytes::from(json!({ "error": why }).to_string()),
                )
            };
            if uri.scheme_str() != Some("http") || uri.host() != Some(mirror_host) {
                return refused("this proxy fetches only the Debian mirror");
            }
            let Ok(response) = client.get(uri.to_string()).send().await else {
                return refused("the mirror did not answer");
            };
            count.fetch_add(1, Ordering::SeqCst);
            let status =
                StatusCode::from_u16(response.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
            let kind = response
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("application/octet-stream")
                .to_owned();
            let body = response.bytes().await.unwrap_or_default();
            (status, [(header::CONTENT_TYPE, kind)], body)
        }
    };
    let router = axum::Router::new().fallback(handler);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, router).await });
    (port, forwarded)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bare_image_installs_what_the_boot_needs_through_the_apt_proxy() {
    if !available() {
        return;
    }
    let image = recipe_dir(&sam_providers::qemu::ImageRecipe {
        bare: true,
        ..sam_providers::qemu::ImageRecipe::default()
    });
    let (port, forwarded) = apt_proxy("deb.debian.org").await;
    let repo = repo();
    let data = tempfile::tempdir().unwrap();
    let _vms = StopVms(data.path().to_owned());
    let port = port.to_string();
    let (_, outcome, stderr) = sam_run_qemu(
        &image,
        &["--qemu-apt-proxy-port", &port],
        repo.path(),
        &data.path().join("sam"),
    )
    .await;
    assert_eq!(outcome["status"], "completed", "{outcome}\n{stderr}");
    // The packages phase ran apt in the guest, through the proxy: git, curl and
    // the rest came from Debian's mirror, and the clone and the push used them.
    let packages = outcome["boot_timeline"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["phase"] == "packages")
        .cloned()
        .unwrap_or_default();
    assert!(
        packages["ended_at"].is_string() && packages["failed"] != true,
        "{outcome}"
    );
    assert!(
        forwarded.load(std::sync::atomic::Ordering::SeqCst) > 0,
        "apt in the guest fetched nothing through the proxy: {outcome}"
    );
    landed(repo.path(), &outcome);
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
