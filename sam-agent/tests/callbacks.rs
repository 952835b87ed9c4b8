//! Callbacks to the control plane against a wiremock control plane.

use std::time::Duration;

use sam_agent::Error;
use sam_agent::vm::{Callbacks, CallbacksConfig};
use sam_agent::wire::NodeReady;
use sam_agent::wire::boot_timeline::BootTimeline;
use sam_core::{
    ErrorCategory, NodeId, NodeMetrics, RetryOn, RetryPolicy, Secret, SessionCallback,
    SessionReport, StopReason, WorkspaceId, WorkspaceReport,
};
use serde_json::json;
use wiremock::matchers::{body_json, header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

fn fast_policy() -> RetryPolicy {
    RetryPolicy {
        initial_delay: Duration::from_millis(5),
        max_delay: Duration::from_millis(20),
        max_attempts: 5,
        budget: Duration::from_secs(10),
        jitter: 0.0,
        per_attempt_timeout: Some(Duration::from_secs(5)),
        retry_on: RetryOn::Retryable,
    }
}

fn callbacks(server: &MockServer) -> Callbacks {
    Callbacks::new(CallbacksConfig {
        base_url: server.uri().parse().unwrap(),
        node_id: NodeId::new("node-1").unwrap(),
        node_token: Secret::new("boot-node-token"),
        retry: fast_policy(),
    })
    .unwrap()
}

fn ready() -> NodeReady {
    NodeReady {
        version: "1.2.3".to_owned(),
        boot: BootTimeline::default(),
    }
}

/// The category and status of a failed callback.
fn failure(error: Error) -> (ErrorCategory, Option<u16>) {
    match error {
        Error::Callback {
            category, status, ..
        } => (category, status),
        other => panic!("not a callback error: {other:?}"),
    }
}

#[tokio::test]
async fn node_ready_is_retried_through_5xx_with_the_node_token() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/nodes/node-1/ready"))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(2)
        .expect(2)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/v1/nodes/node-1/ready"))
        .and(header("authorization", "Bearer boot-node-token"))
        .and(body_json(
            json!({ "version": "1.2.3", "boot": { "phases": [], "complete": false } }),
        ))
        .respond_with(ResponseTemplate::new(204))
        .expect(1)
        .mount(&server)
        .await;
    callbacks(&server).node_ready(&ready()).await.unwrap();
}

#[tokio::test]
async fn a_4xx_is_permanent_and_classified() {
    for (status, category) in [
        (401, ErrorCategory::AuthError),
        (403, ErrorCategory::AuthError),
        (404, ErrorCategory::NotFound),
        (400, ErrorCategory::InvalidConfig),
        (422, ErrorCategory::InvalidConfig),
    ] {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(status).set_body_string("no Bearer abc.def here"))
            .expect(1)
            .mount(&server)
            .await;
        let error = callbacks(&server).node_ready(&ready()).await.unwrap_err();
        assert!(!error.to_string().contains("abc.def"), "redacted: {error}");
        assert_eq!(failure(error), (category, Some(status)), "status {status}");
    }
}

#[tokio::test]
async fn gives_up_after_five_attempts() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(500))
        .expect(5)
        .mount(&server)
        .await;
    let error = callbacks(&server)
        .heartbeat(&NodeMetrics::default())
        .await
        .unwrap_err();
    assert_eq!(failure(error), (ErrorCategory::Transient, Some(500)));
}

#[tokio::test]
async fn an_unreachable_control_plane_is_transient() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    drop(listener);
    let mut policy = fast_policy();
    policy.max_attempts = 2;
    let callbacks = Callbacks::new(CallbacksConfig {
        base_url: url.parse().unwrap(),
        node_id: NodeId::new("node-1").unwrap(),
        node_token: Secret::new("boot-node-token"),
        retry: policy,
    })
    .unwrap();
    let error = callbacks.node_ready(&ready()).await.unwrap_err();
    assert_eq!(failure(error), (ErrorCategory::Transient, None));
}

#[tokio::test]
async fn a_refreshed_token_replaces_the_node_token() {
    let server = MockServer::start().await;
    let metrics = NodeMetrics {
        cpu_load_avg1: 0.5,
        memory_percent: 40.0,
        disk_percent: 12.5,
    };
    Mock::given(method("POST"))
        .and(path("/v1/nodes/node-1/heartbeat"))
        .and(header("authorization", "Bearer boot-node-token"))
        .and(body_json(json!({ "metrics": {
            "cpu_load_avg1": 0.5, "memory_percent": 40.0, "disk_percent": 12.5
        } })))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({ "refreshed_token": "fresh-token" })),
        )
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/v1/nodes/node-1/heartbeat"))
        .and(header("authorization", "Bearer fresh-token"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({})))
        .expect(1)
        .mount(&server)
        .await;
    let callbacks = callbacks(&server);
    assert!(callbacks.heartbeat(&metrics).await.unwrap());
    assert_eq!(callbacks.node_token().expose(), "fresh-token");
    assert!(!callbacks.heartbeat(&metrics).await.unwrap());
}

#[tokio::test]
async fn workspace_routes_carry_the_workspace_token() {
    let server = MockServer::start().await;
    let ws = WorkspaceId::new("ws-1").unwrap();
    let token = Secret::new("workspace-token");
    let report = WorkspaceReport::Ready {
        effective_profile: "host".to_owned(),
        recovery: false,
    };
    let stopped = SessionCallback::Report(SessionReport::Stopped {
        reason: StopReason::EndTurn,
        last_message: Some("done".to_owned()),
    });
    Mock::given(method("POST"))
        .and(path("/v1/workspaces/ws-1/ready"))
        .and(header("authorization", "Bearer workspace-token"))
        .and(body_json(serde_json::to_value(&report).unwrap()))
        .respond_with(ResponseTemplate::new(200))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/v1/workspaces/ws-1/events"))
        .and(header("authorization", "Bearer workspace-token"))
        .and(body_json(json!({
            "kind": "report", "state": "stopped", "reason": "end_turn", "last_message": "done"
        })))
        .respond_with(ResponseTemplate::new(200))
        .expect(1)
        .mount(&server)
        .await;
    let callbacks = callbacks(&server);
    callbacks
        .workspace_ready(&ws, &token, &report)
        .await
        .unwrap();
    callbacks
        .session_event(&ws, &token, &stopped)
        .await
        .unwrap();
}
