//! A real `VmAgent` serving its HTTP API on loopback as a node that calls back to a
//! control plane, with one scripted `fake` agent, and a client holding a management
//! token for it: the node side of the end-to-end git tests.

// Each test binary that includes this module uses a part of it.
#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use sam_agent::vm::fake::FakeAgentScript;
use sam_agent::wire::management_signer;
use sam_agent::{AgentCommand, HostRuntime, VmAgent, VmAgentConfig};
use sam_core::testkit::node_agent::{FakeNodeAgent, PlainBoot};
use sam_core::{
    ControlPlane, ControlPlaneConfig, ControlPlaneParts, DefaultScheduler, NodeId, Provider,
    ProviderKind, RetryOn, RetryPolicy, Secret, Store, TaskId, TaskRecord, TaskStatus, TokenScope,
    TokenSigner, TokioClock,
};
use serde_json::Value;

/// The signing secret the tests' control planes use.
pub const SIGNING_SECRET: &str = "ssssssssssssssssssssssssssssssss";

/// A control plane over a memory store and the fake provider (its nodes' agents
/// scripted), signing with [`SIGNING_SECRET`]: the other end of a [`VmNode`]'s
/// callbacks once its routes are served.
pub fn control_plane() -> (Arc<dyn Store>, ControlPlane) {
    let store: Arc<dyn Store> = Arc::new(sam_store::MemoryStore::new());
    let provider: Arc<dyn Provider> = Arc::new(sam_providers::FakeProvider::new());
    let cp = ControlPlane::new(
        ControlPlaneParts {
            store: Arc::clone(&store),
            providers: vec![provider],
            scheduler: Arc::new(DefaultScheduler::new(Arc::clone(&store))),
            node_agent: Arc::new(FakeNodeAgent::new(
                sam_core::testkit::node_agent::FakeAgentScript::default(),
            )),
            boot: Arc::new(PlainBoot),
            signer: TokenSigner::new(Secret::new(SIGNING_SECRET), "sam-control-plane").unwrap(),
            clock: Arc::new(TokioClock::new()),
        },
        ControlPlaneConfig::new("test", ProviderKind::Fake),
    )
    .unwrap();
    (store, cp)
}

/// Callback retries fast enough for a test.
pub fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        initial_delay: Duration::from_millis(5),
        max_delay: Duration::from_millis(20),
        max_attempts: 3,
        budget: Duration::from_secs(10),
        jitter: 0.0,
        per_attempt_timeout: Some(Duration::from_secs(10)),
        retry_on: RetryOn::Retryable,
    }
}

/// A running node and a client for its API.
pub struct VmNode {
    /// The agent's base URL.
    pub url: String,
    management: Secret,
    http: reqwest::Client,
}

impl VmNode {
    /// Starts node `node` calling back to `control_plane_url` (tokens signed with
    /// [`SIGNING_SECRET`]), preparing workspaces with `runtime`; its `fake` agent
    /// writes `AGENT_NOTES.md`.
    pub async fn start(node: &str, control_plane_url: &str, runtime: HostRuntime) -> Self {
        let node_token = TokenSigner::new(Secret::new(SIGNING_SECRET), "sam-control-plane")
            .unwrap()
            .issue(
                TokenScope::Node,
                node,
                Utc::now(),
                Duration::from_secs(3600),
            );
        let mut config = VmAgentConfig::new(
            NodeId::new(node).unwrap(),
            node_token.clone(),
            format!("{control_plane_url}/").parse().unwrap(),
        );
        config.boot_log = None;
        config.callback_retry = fast_retry();
        let script = FakeAgentScript {
            write_path: Some("AGENT_NOTES.md".to_owned()),
            ..FakeAgentScript::default()
        };
        config.agents.insert(
            "fake".to_owned(),
            script.to_env().into_iter().fold(
                AgentCommand::new(env!("CARGO_BIN_EXE_fake-acp-agent")),
                |c, (k, v)| c.with_env(k, Secret::new(v)),
            ),
        );
        let agent = VmAgent::new(config, Arc::new(runtime)).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let router = agent.router();
        tokio::spawn(async move { axum::serve(listener, router).await });
        let management = management_signer(&node_token).unwrap().issue(
            TokenScope::Node,
            node,
            Utc::now(),
            Duration::from_secs(600),
        );
        Self {
            url,
            management,
            http: reqwest::Client::new(),
        }
    }

    /// `method path` on the node's API with the management token; the status and
    /// the JSON body (`null` when there is none).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(self.management.expose());
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (
            status,
            response.json::<Value>().await.unwrap_or(Value::Null),
        )
    }

    /// Creates workspace `body` and waits (10 s at most) until it is ready.
    pub async fn create_workspace(&self, body: Value) {
        let id = body["id"].as_str().expect("an id").to_owned();
        let (status, view) = self
            .call(reqwest::Method::POST, "/v1/workspaces", Some(body))
            .await;
        assert_eq!(status, 202, "{view}");
        for _ in 0..400 {
            let (_, view) = self
                .call(reqwest::Method::GET, &format!("/v1/workspaces/{id}"), None)
                .await;
            match view["report"]["state"].as_str() {
                Some("ready") => return,
                Some("failed") => panic!("the workspace failed: {view}"),
                _ => tokio::time::sleep(Duration::from_millis(25)).await,
            }
        }
        panic!("workspace {id} was not ready within 10 s");
    }

    /// Starts the `fake` agent on `prompt` in workspace `id`.
    pub async fn start_session(&self, id: &str, prompt: &str) {
        let (status, view) = self
            .call(
                reqwest::Method::POST,
                &format!("/v1/workspaces/{id}/sessions"),
                Some(serde_json::json!({ "agent": "fake", "prompt": prompt })),
            )
            .await;
        assert_eq!(status, 202, "{view}");
    }
}

/// Waits (20 s at most) for task `id` to end, and asserts it completed.
pub async fn completed(store: &dyn Store, id: &TaskId) -> TaskRecord {
    for _ in 0..800 {
        let record = store.get_task(id).await.unwrap().unwrap();
        if record.status.is_terminal() {
            assert_eq!(record.status, TaskStatus::Completed, "{:?}", record.error);
            return record;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("task {id} did not end within 20 s");
}
