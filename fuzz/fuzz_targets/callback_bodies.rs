//! The VM agent → control plane callbacks through the routes' own parsing, then the
//! control plane itself with valid tokens: a node is ready, a heartbeat, a
//! workspace is ready, a session's event, a node's boot failed. The control plane runs over an in-memory
//! store with one task in progress on a fake node, so a body that parses reaches
//! the task, its workspace and its node. A malformed body is a 400 with a JSON
//! `ErrorBody`; a parsed one is accepted or refused with a 4xx; never a panic or a
//! 5xx.
//!
//! Input: one byte choosing the route (its value modulo 5), then the body.
#![no_main]

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use sam_agent::wire::{ApiError, BootFailed, Heartbeat, NodeReady, parse_body};
use sam_core::testkit::node_agent::{FakeAgentCall, FakeAgentScript, FakeNodeAgent, PlainBoot};
use sam_core::{
    Clock as _, ControlPlane, ControlPlaneConfig, ControlPlaneParts, DefaultScheduler,
    ManualClock, Provider, ProviderKind, Secret, SessionCallback, SessionReport, SubmitRequest,
    TokenScope, TokenSigner, WorkspaceReport,
};

static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
});

/// A control plane with one task in progress, and valid tokens for its node and
/// workspace.
struct World {
    control_plane: ControlPlane,
    node: sam_core::NodeId,
    node_token: Secret,
    workspace: sam_core::WorkspaceId,
    workspace_token: Secret,
}

async fn world() -> World {
    let store: Arc<dyn sam_core::Store> = Arc::new(sam_store::MemoryStore::new());
    let agent = Arc::new(FakeNodeAgent::new(FakeAgentScript {
        session: SessionReport::Running,
        ..FakeAgentScript::default()
    }));
    let signer = TokenSigner::new(Secret::new("k".repeat(32)), "sam").expect("a signer");
    let clock = Arc::new(ManualClock::starting_at(sam_core::testkit::fixtures::at(0)));
    let control_plane = ControlPlane::new(
        ControlPlaneParts {
            scheduler: Arc::new(DefaultScheduler::new(Arc::clone(&store))),
            store,
            providers: vec![Arc::new(sam_providers::FakeProvider::new()) as Arc<dyn Provider>],
            node_agent: Arc::clone(&agent) as Arc<dyn sam_core::NodeAgent>,
            boot: Arc::new(PlainBoot),
            signer: signer.clone(),
            clock: Arc::clone(&clock) as Arc<dyn sam_core::Clock>,
        },
        ControlPlaneConfig::new("fuzz", ProviderKind::Fake),
    )
    .expect("a control plane");
    control_plane
        .submit(&SubmitRequest {
            repo: "https://example.invalid/repo.git".into(),
            prompt: "fix the flaky test".into(),
            ..SubmitRequest::default()
        })
        .await
        .expect("submitted");
    for _ in 0..50 {
        if !agent.session_requests().is_empty() {
            break;
        }
        control_plane.tick().await.expect("a tick");
        clock.advance(control_plane.config().poll_interval);
    }
    let request = agent
        .workspace_requests()
        .pop()
        .expect("the task reached its workspace");
    let node = agent
        .calls()
        .into_iter()
        .find_map(|call| match call {
            FakeAgentCall::CreateWorkspace(node, _) => Some(node),
            _ => None,
        })
        .expect("the workspace is on a node");
    let node_token = signer.issue(
        TokenScope::Node,
        node.as_str(),
        clock.now(),
        Duration::from_secs(3600),
    );
    World {
        control_plane,
        node,
        node_token,
        workspace: request.workspace_id,
        workspace_token: request.token,
    }
}

/// A refusal of a parsed body: a client error, never a server error.
fn check_refusal(error: sam_core::Error) {
    let error = ApiError::from(error);
    assert!(
        (400..500).contains(&error.status()),
        "{} {:?}",
        error.status(),
        error.body()
    );
}

/// A malformed body: a 400 whose body serializes as JSON.
fn check_malformed(error: &ApiError) {
    assert_eq!(error.status(), 400, "{:?}", error.body());
    serde_json::to_string(error.body()).expect("the error body is JSON");
}

fuzz_target!(|data: &[u8]| {
    let [route, body @ ..] = data else {
        return;
    };
    RUNTIME.block_on(async {
        let w = world().await;
        let cp = &w.control_plane;
        let outcome = match route % 5 {
            0 => match parse_body::<NodeReady>(body) {
                Ok(ready) => {
                    cp.node_ready(
                        w.node_token.expose(),
                        &w.node,
                        &ready.version,
                        &ready.boot.to_records(),
                    )
                    .await
                }
                Err(e) => return check_malformed(&e),
            },
            1 => match parse_body::<Heartbeat>(body) {
                Ok(beat) => cp
                    .heartbeat(w.node_token.expose(), &w.node, &beat.metrics)
                    .await
                    .map(drop),
                Err(e) => return check_malformed(&e),
            },
            2 => match parse_body::<WorkspaceReport>(body) {
                Ok(report) => {
                    cp.workspace_ready(w.workspace_token.expose(), &w.workspace, &report)
                        .await
                }
                Err(e) => return check_malformed(&e),
            },
            4 => match parse_body::<BootFailed>(body) {
                Ok(failed) => match failed.to_report() {
                    Ok(report) => {
                        cp.node_boot_failed(w.node_token.expose(), &w.node, &report)
                            .await
                    }
                    Err(e) => return check_malformed(&e),
                },
                Err(e) => return check_malformed(&e),
            },
            _ => match parse_body::<SessionCallback>(body) {
                Ok(callback) => {
                    cp.session_event(w.workspace_token.expose(), &w.workspace, &callback)
                        .await
                }
                Err(e) => return check_malformed(&e),
            },
        };
        if let Err(error) = outcome {
            check_refusal(error);
        }
    });
});
