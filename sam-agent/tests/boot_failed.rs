//! The `boot-failed` callback route end to end: a real `ControlPlane` behind
//! `callback_router` on loopback, the fake provider and fake node agents. The body
//! is what `report-boot-failure.sh` posts (sam-cloudinit's boot tests run that
//! script and check its body): the event, the phase, the exit status, and the
//! journal entries as `journalctl -o json` prints them.

use std::sync::Arc;
use std::time::Duration;

use sam_agent::callback_router;
use sam_core::testkit::node_agent::{FakeAgentScript, FakeNodeAgent, PlainBoot};
use sam_core::{
    ControlPlane, ControlPlaneConfig, ControlPlaneParts, DefaultScheduler, ExecutionStep, NodeId,
    NodeStatus, Provider, ProviderKind, Secret, Store, SubmitRequest, TaskId, TaskRecord,
    TaskStatus, TokenSigner, TokioClock,
};
use sam_providers::FakeProvider;
use sam_store::MemoryStore;
use serde_json::{Value, json};

#[path = "support/github_peers.rs"]
mod github_peers;

struct World {
    cp: ControlPlane,
    store: Arc<dyn Store>,
    provider: Arc<FakeProvider>,
    agent: Arc<FakeNodeAgent>,
    url: String,
    http: reqwest::Client,
}

async fn world() -> World {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let provider = Arc::new(FakeProvider::new());
    // The first node's agent never comes up: its boot fails.
    let agent = Arc::new(FakeNodeAgent::new(FakeAgentScript {
        ready_after_probes: None,
        ..FakeAgentScript::default()
    }));
    let mut config = ControlPlaneConfig::new("test", ProviderKind::Fake);
    config.poll_interval = Duration::from_millis(20);
    let cp = ControlPlane::new(
        ControlPlaneParts {
            store: Arc::clone(&store),
            providers: vec![Arc::clone(&provider) as Arc<dyn Provider>],
            scheduler: Arc::new(DefaultScheduler::new(Arc::clone(&store))),
            node_agent: Arc::clone(&agent) as _,
            boot: Arc::new(PlainBoot),
            signer: TokenSigner::new(Secret::new("s".repeat(32)), "sam-control-plane").unwrap(),
            clock: Arc::new(TokioClock::new()),
        },
        config,
    )
    .unwrap();
    let url = github_peers::serve(callback_router(cp.clone())).await;
    World {
        cp,
        store,
        provider,
        agent,
        url,
        http: reqwest::Client::new(),
    }
}

/// The body `report-boot-failure.sh` posts for a boot that failed in `packages`
/// with apt-get's exit status 100: the journal holds the markers as the boot
/// script's `logger` left them, with the fields `journalctl -o json` prints.
fn report_body() -> Value {
    let entry = |micros: u64, message: &str| {
        json!({
            "__REALTIME_TIMESTAMP": micros.to_string(),
            "SYSLOG_IDENTIFIER": "sam-boot",
            "MESSAGE": message,
        })
    };
    json!({
        "event": "boot_failed",
        "phase": "packages",
        "exit_status": 100,
        "journal": [
            entry(1_765_000_000_000_000, "PHASE START: swap"),
            entry(1_765_000_001_500_000, "PHASE END: swap"),
            entry(1_765_000_001_600_000, "PHASE START: packages"),
            entry(1_765_000_031_000_000, "PHASE FAILED: packages (exit 100)"),
        ],
    })
}

impl World {
    async fn task(&self, id: &TaskId) -> TaskRecord {
        self.store.get_task(id).await.unwrap().unwrap()
    }

    /// Drives the control plane until `done` holds for the task (at most 10 s).
    async fn drive_until(&self, id: &TaskId, done: impl Fn(&TaskRecord) -> bool) -> TaskRecord {
        for _ in 0..500 {
            let task = self.task(id).await;
            if done(&task) {
                return task;
            }
            self.cp.tick().await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("{id} did not get there: {:?}", self.task(id).await);
    }

    async fn post(&self, node: &str, token: &str, body: Vec<u8>) -> (u16, Value) {
        let response = self
            .http
            .post(format!("{}/v1/nodes/{node}/boot-failed", self.url))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
        };
        (status, body)
    }
}

/// A bad report: its name, the token, the body, and the status, category and
/// field of the answer.
type Case<'a> = (&'a str, &'a str, Vec<u8>, u16, &'a str, Option<&'a str>);

fn request() -> SubmitRequest {
    SubmitRequest {
        repo: "https://example.invalid/repo.git".into(),
        prompt: "fix the flaky test".into(),
        ..SubmitRequest::default()
    }
}

#[tokio::test]
async fn a_reported_boot_failure_deletes_the_vm_and_the_task_completes_on_a_new_node() {
    let w = world().await;
    let id = w.cp.submit(&request()).await.unwrap();
    let booting = w
        .drive_until(&id, |t| t.execution_step == ExecutionStep::NodeAgentReady)
        .await;
    let first = booting.provisioned_node_id.unwrap();
    let first_vm = w
        .store
        .get_node(&first)
        .await
        .unwrap()
        .unwrap()
        .vm_id
        .unwrap();
    let token = w.cp.issue_node_token(&first);

    let (status, body) = w
        .post(
            first.as_str(),
            token.expose(),
            serde_json::to_vec(&report_body()).unwrap(),
        )
        .await;
    assert_eq!(status, 204, "{body}");

    let node = w.store.get_node(&first).await.unwrap().unwrap();
    assert_eq!(node.status, NodeStatus::Deleted);
    let failure = node.boot.failure.clone().unwrap();
    assert_eq!(
        (failure.phase.as_str(), failure.exit_status),
        ("packages", 100)
    );
    assert_eq!(failure.journal[3], "PHASE FAILED: packages (exit 100)");
    let phases: Vec<(&str, bool, bool)> = node
        .boot
        .timeline
        .iter()
        .map(|p| (p.phase.as_str(), p.ended_at.is_some(), p.failed))
        .collect();
    assert_eq!(phases, [("swap", true, false), ("packages", false, true)]);
    assert!(
        w.provider.vms().iter().all(|vm| vm.id != first_vm),
        "the failed VM is deleted"
    );

    // The replacement's agent comes up.
    w.agent.set_script(FakeAgentScript::default());
    let done = w.drive_until(&id, |t| t.status.is_terminal()).await;
    assert_eq!(done.status, TaskStatus::Completed, "{done:?}");
    assert_eq!(done.node_replacements, 1);
    assert_ne!(done.provisioned_node_id, Some(first));
}

#[tokio::test]
async fn bad_boot_failure_reports_get_typed_json_errors() {
    let w = world().await;
    let id = w.cp.submit(&request()).await.unwrap();
    let booting = w
        .drive_until(&id, |t| t.execution_step == ExecutionStep::NodeAgentReady)
        .await;
    let node = booting.provisioned_node_id.unwrap();
    let token = w.cp.issue_node_token(&node);
    let good = serde_json::to_vec(&report_body()).unwrap();
    let with = |change: &dyn Fn(&mut Value)| {
        let mut body = report_body();
        change(&mut body);
        serde_json::to_vec(&body).unwrap()
    };
    let unknown = NodeId::new("n-unknown").unwrap();
    let unknown_token = w.cp.issue_node_token(&unknown);
    let other_token = w.cp.issue_node_token(&NodeId::new("n-other").unwrap());
    let cases: Vec<Case> = vec![
        (
            "wrong token",
            other_token.expose(),
            good.clone(),
            401,
            "auth_error",
            None,
        ),
        ("no token", "", good.clone(), 401, "auth_error", None),
        (
            "unknown node",
            unknown_token.expose(),
            good.clone(),
            404,
            "not_found",
            None,
        ),
        (
            "not JSON",
            token.expose(),
            b"{\"event\":".to_vec(),
            400,
            "invalid_config",
            None,
        ),
        (
            "missing status",
            token.expose(),
            with(&|b| drop(b.as_object_mut().unwrap().remove("exit_status"))),
            400,
            "invalid_config",
            Some("exit_status"),
        ),
        (
            "other event",
            token.expose(),
            with(&|b| b["event"] = json!("boot_done")),
            400,
            "invalid_config",
            Some("event"),
        ),
        (
            "bad phase",
            token.expose(),
            with(&|b| b["phase"] = json!("rm -rf /")),
            400,
            "invalid_config",
            Some("phase"),
        ),
        (
            "oversized",
            token.expose(),
            with(&|b| b["journal"] = json!(vec!["x".repeat(1024); 300])),
            413,
            "invalid_config",
            None,
        ),
    ];
    let (path_node, path_unknown) = (node.to_string(), unknown.to_string());
    for (name, token, body, status, category, field) in cases {
        let target = if name == "unknown node" {
            &path_unknown
        } else {
            &path_node
        };
        let (got, answer) = w.post(target, token, body).await;
        assert_eq!(got, status, "{name}: {answer}");
        assert_eq!(answer["category"], category, "{name}: {answer}");
        assert!(answer["error"].is_string(), "{name}: {answer}");
        if let Some(field) = field {
            assert_eq!(answer["field"], field, "{name}: {answer}");
        }
    }
    // None of them touched the node.
    let read = w.store.get_node(&node).await.unwrap().unwrap();
    assert!(read.boot.failure.is_none());
    assert_ne!(read.status, NodeStatus::Deleted);
}

#[tokio::test]
async fn the_ready_callback_keeps_the_boot_timeline_on_the_node() {
    let w = world().await;
    let id = w.cp.submit(&request()).await.unwrap();
    let booting = w
        .drive_until(&id, |t| t.execution_step == ExecutionStep::NodeAgentReady)
        .await;
    let node = booting.provisioned_node_id.unwrap();
    // The VM agent's own client, with the timeline its parser reads from a
    // syslog-style boot log.
    let log = "2026-12-07T10:00:00Z node sam-boot[1]: PHASE START: swap\n\
               2026-12-07T10:00:02Z node sam-boot[1]: PHASE END: swap\n\
               2026-12-07T10:00:02Z node sam-boot[1]: PHASE START: agent-start\n\
               2026-12-07T10:00:09Z node sam-boot[1]: PHASE END: agent-start\n\
               2026-12-07T10:00:09Z node sam-boot[1]: ALL PHASES COMPLETE\n";
    let timeline = sam_agent::wire::boot_timeline::BootTimeline::from_syslog(log);
    let callbacks = sam_agent::vm::Callbacks::new(sam_agent::vm::CallbacksConfig {
        base_url: w.url.parse().unwrap(),
        node_id: node.clone(),
        node_token: w.cp.issue_node_token(&node),
        retry: sam_core::RetryPolicy::default(),
    })
    .unwrap();
    callbacks
        .node_ready(&sam_agent::wire::NodeReady {
            version: "1.2.3".into(),
            boot: timeline,
        })
        .await
        .unwrap();
    let read = w.store.get_node(&node).await.unwrap().unwrap();
    let phases: Vec<(&str, i64, bool)> = read
        .boot
        .timeline
        .iter()
        .map(|p| {
            let took = p.ended_at.map(|end| (end - p.started_at).num_seconds());
            (p.phase.as_str(), took.unwrap_or(-1), p.failed)
        })
        .collect();
    assert_eq!(phases, [("swap", 2, false), ("agent-start", 7, false)]);
    assert_eq!(read.agent_version.as_deref(), Some("1.2.3"));
    assert!(read.boot.failure.is_none());
}
