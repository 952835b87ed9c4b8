//! Per-task provider credentials through the real control plane, against a mock
//! Hetzner Cloud in which every API token is its own project: a server is seen only
//! with the token that created it, as in Hetzner, and an unknown token gets the
//! recorded 401 body.
//!
//! Two users with their own Hetzner tokens and one without run tasks; every create,
//! poll and delete must carry the token of the account that pays for the node.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use sam_core::testkit::fixtures::{run_to_end, set_provider_token, submit_for};
use sam_core::testkit::node_agent::{FakeAgentScript, FakeNodeAgent, PlainBoot};
use sam_core::{
    Classify, ControlPlane, ControlPlaneConfig, ControlPlaneParts, CredentialError,
    CredentialInput, CredentialKind, CredentialOwner, CredentialTarget, DefaultScheduler,
    ErrorCategory, Layer, ManualClock, NodeId, NodeLifecycle, NodeRecord, NodeStatus, Provider,
    ProviderKind, Secret, Store, SubmitRequest, TaskId, TaskRecord, TaskStatus, TokenSigner,
    UserId, UserInput,
};
use sam_providers::{CloudProviderFactory, HetznerConfig, HetznerProvider};
use sam_store::MemoryStore;
use serde_json::{Value, json};
use support::hetzner::{HetznerProjects, token_of};
use wiremock::matchers::path_regex;
use wiremock::{Mock, MockServer};

const PLATFORM_TOKEN: &str = "token-platform";
const TOKEN_A: &str = "token-user-a";
const TOKEN_B: &str = "token-user-b";

struct World {
    cp: ControlPlane,
    clock: Arc<ManualClock>,
    store: Arc<dyn Store>,
    server: MockServer,
}

async fn world() -> World {
    let server = MockServer::start().await;
    Mock::given(path_regex("^/v1/.*"))
        .respond_with(HetznerProjects::new(
            &[PLATFORM_TOKEN, TOKEN_A, TOKEN_B],
            50,
        ))
        .mount(&server)
        .await;
    let mut platform = HetznerConfig::new(Secret::new(PLATFORM_TOKEN));
    platform.base_url = format!("{}/v1", server.uri());
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let clock = Arc::new(ManualClock::starting_at(chrono::Utc::now()));
    let mut config = ControlPlaneConfig::new("driver-credentials", ProviderKind::Hetzner);
    config.credential_key = Some(Secret::new("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="));
    let cp = ControlPlane::new(
        ControlPlaneParts {
            store: Arc::clone(&store),
            providers: vec![
                Arc::new(HetznerProvider::new(platform.clone()).expect("valid"))
                    as Arc<dyn Provider>,
            ],
            scheduler: Arc::new(DefaultScheduler::new(Arc::clone(&store))),
            node_agent: Arc::new(FakeNodeAgent::new(FakeAgentScript::default())),
            boot: Arc::new(PlainBoot),
            signer: TokenSigner::new(Secret::new("k".repeat(32)), "sam").expect("valid key"),
            clock: clock.clone(),
        },
        config,
    )
    .expect("valid configuration")
    .with_provider_factory(Arc::new(CloudProviderFactory::new().with_hetzner(platform)));
    World {
        cp,
        clock,
        store,
        server,
    }
}

impl World {
    async fn user(&self, name: &str, token: Option<&str>) -> UserId {
        let user = self
            .cp
            .accounts()
            .create_user(&UserInput {
                name: name.to_owned(),
                settings: Default::default(),
            })
            .await
            .expect("user");
        if let Some(token) = token {
            self.set_token(&user.id, token).await;
        }
        user.id
    }

    async fn set_token(&self, user: &UserId, token: &str) {
        set_provider_token(&self.cp, user, ProviderKind::Hetzner, token).await;
    }

    async fn submit(&self, user: &UserId, preferred: Option<&NodeId>) -> TaskId {
        submit_for(&self.cp, user, preferred).await
    }

    async fn run(&self, id: &TaskId) -> TaskRecord {
        run_to_end(&self.cp, &self.clock, id).await
    }

    async fn node(&self, id: &NodeId) -> NodeRecord {
        self.store
            .get_node(id)
            .await
            .expect("get node")
            .expect("the node is recorded")
    }

    /// Every request to the mock as (method, path, token), in order.
    async fn requests(&self) -> Vec<(String, String, Option<String>)> {
        self.server
            .received_requests()
            .await
            .expect("recording is on")
            .iter()
            .map(|r| (r.method.to_string(), r.url.path().to_owned(), token_of(r)))
            .collect()
    }

    /// The tokens the server creates for `node` carried.
    async fn create_tokens(&self, node: &NodeId) -> Vec<String> {
        self.server
            .received_requests()
            .await
            .expect("recording is on")
            .iter()
            .filter(|r| r.method.as_str() == "POST" && r.url.path() == "/v1/servers")
            .filter(|r| {
                let body: Value = serde_json::from_slice(&r.body).expect("json");
                body["labels"]["sam-node"] == json!(node.as_str())
            })
            .filter_map(token_of)
            .collect()
    }

    /// The tokens the deletes of `node`'s VM carried.
    async fn delete_tokens(&self, node: &NodeRecord) -> Vec<String> {
        let vm = node.vm_id.as_ref().expect("the node has a VM");
        let path = format!("/v1/servers/{vm}");
        self.requests()
            .await
            .into_iter()
            .filter(|(m, p, _)| m == "DELETE" && p == &path)
            .filter_map(|(_, _, t)| t)
            .collect()
    }
}

#[tokio::test]
async fn each_users_nodes_are_made_polled_and_deleted_with_their_own_token() {
    let w = world().await;
    let a = w.user("a", Some(TOKEN_A)).await;
    let b = w.user("b", Some(TOKEN_B)).await;
    let c = w.user("c", None).await;
    let owner_a = CredentialOwner::User(a.clone());
    let owner_b = CredentialOwner::User(b.clone());

    // User A's task: a node made with A's token, owned by A, warm once the task ends.
    let task_a = w.run(&w.submit(&a, None).await).await;
    assert_eq!(task_a.status, TaskStatus::Completed, "{:?}", task_a.error);
    assert_eq!(task_a.spec.provenance["provider_credential"], Layer::User);
    assert_eq!(task_a.spec.provider_credential_owner, Some(owner_a.clone()));
    let node_a_id = task_a.provisioned_node_id.clone().expect("a node");
    let node_a = w.node(&node_a_id).await;
    assert_eq!(node_a.credential_owner, Some(owner_a.clone()));
    assert_eq!(node_a.lifecycle, NodeLifecycle::Warm);
    assert_eq!(
        node_a.address.as_deref(),
        Some("192.0.2.10"),
        "the address its agent is reached at, recorded when the VM ran"
    );
    assert_eq!(w.create_tokens(&node_a_id).await, [TOKEN_A]);

    // User B's task never lands on A's warm node: B gets a node of B's own.
    let task_b = w.run(&w.submit(&b, None).await).await;
    assert_eq!(task_b.status, TaskStatus::Completed, "{:?}", task_b.error);
    let node_b_id = task_b.provisioned_node_id.clone().expect("a node");
    assert_ne!(node_b_id, node_a_id, "B must not run on A's warm node");
    assert_eq!(
        w.node(&node_b_id).await.credential_owner,
        Some(owner_b.clone())
    );
    assert_eq!(w.create_tokens(&node_b_id).await, [TOKEN_B]);

    // Nor when B asks for it by name: the pure check refuses, saying why.
    let refused = w.run(&w.submit(&b, Some(&node_a_id)).await).await;
    assert_eq!(refused.status, TaskStatus::Failed);
    let error = refused.error.expect("an error");
    assert_eq!(error.category, ErrorCategory::InvalidConfig);
    assert!(
        error.message.contains("provider credential"),
        "{}",
        error.message
    );

    // A's next task reuses A's warm node: no second create with A's token.
    let again = w.run(&w.submit(&a, None).await).await;
    assert_eq!(again.status, TaskStatus::Completed, "{:?}", again.error);
    assert_eq!(again.provisioned_node_id, Some(node_a_id.clone()));
    assert_eq!(w.create_tokens(&node_a_id).await, [TOKEN_A]);

    // A user without a credential runs on the platform's, and provenance says so.
    let task_c = w.run(&w.submit(&c, None).await).await;
    assert_eq!(task_c.status, TaskStatus::Completed, "{:?}", task_c.error);
    assert_eq!(
        task_c.spec.provenance["provider_credential"],
        Layer::Platform
    );
    assert_eq!(task_c.spec.provider_credential_owner, None);
    let node_c_id = task_c.provisioned_node_id.clone().expect("a node");
    assert!(![&node_a_id, &node_b_id].contains(&&node_c_id));
    assert_eq!(w.node(&node_c_id).await.credential_owner, None);
    assert_eq!(w.create_tokens(&node_c_id).await, [PLATFORM_TOKEN]);

    // Every poll of a node's VM carried its owner's token too.
    for (node, token) in [
        (&node_a_id, TOKEN_A),
        (&node_b_id, TOKEN_B),
        (&node_c_id, PLATFORM_TOKEN),
    ] {
        let vm = w.node(node).await.vm_id.expect("a VM");
        let path = format!("/v1/servers/{vm}");
        let polls: Vec<_> = w
            .requests()
            .await
            .into_iter()
            .filter(|(m, p, _)| m == "GET" && p == &path)
            .collect();
        assert!(!polls.is_empty(), "node {node} was polled");
        assert!(
            polls.iter().all(|(_, _, t)| t.as_deref() == Some(token)),
            "node {node}: {polls:?}"
        );
    }

    // B deletes their credential; the warm nodes expire. A's and the platform's are
    // deleted with their own tokens; B's cannot be, says why, and stays recorded.
    w.cp.accounts()
        .delete_credential(&owner_b, &CredentialTarget::Provider(ProviderKind::Hetzner))
        .await
        .expect("deleted");
    w.clock
        .advance(w.cp.config().timeouts.warm_node + Duration::from_secs(60));
    let report = w.cp.sweep().await.expect("sweep");
    let node_a = w.node(&node_a_id).await;
    assert_eq!(node_a.status, NodeStatus::Deleted);
    assert_eq!(w.delete_tokens(&node_a).await, [TOKEN_A]);
    let node_c = w.node(&node_c_id).await;
    assert_eq!(node_c.status, NodeStatus::Deleted);
    assert_eq!(w.delete_tokens(&node_c).await, [PLATFORM_TOKEN]);
    let node_b = w.node(&node_b_id).await;
    assert_ne!(
        node_b.status,
        NodeStatus::Deleted,
        "B's node is not forgotten"
    );
    assert_eq!(node_b.lifecycle, NodeLifecycle::Destroying);
    assert!(w.delete_tokens(&node_b).await.is_empty());
    let kept = report
        .nodes_kept
        .iter()
        .find(|k| k.node == node_b_id)
        .unwrap_or_else(|| panic!("the sweep says why B's node is kept: {report:?}"));
    assert_eq!(kept.category, ErrorCategory::AuthError);
    assert!(kept.reason.contains("credential"), "{}", kept.reason);
    // The same error, typed, from the account lookup the delete uses.
    let error =
        w.cp.provider_for(ProviderKind::Hetzner, Some(&owner_b))
            .await
            .expect_err("B's credential is gone");
    assert!(
        matches!(
            &error,
            sam_core::Error::Credential(CredentialError::Missing { owner, .. }) if owner == &owner_b
        ),
        "{error:?}"
    );
    assert_eq!(error.category(), ErrorCategory::AuthError);

    // The sweep tries again; once B sets a credential, B's node goes with B's token.
    let retried = w.cp.sweep().await.expect("sweep");
    assert!(retried.nodes_kept.iter().any(|k| k.node == node_b_id));
    w.set_token(&b, TOKEN_B).await;
    let report = w.cp.sweep().await.expect("sweep");
    assert!(report.nodes_kept.is_empty(), "{report:?}");
    let node_b = w.node(&node_b_id).await;
    assert_eq!(node_b.status, NodeStatus::Deleted);
    assert_eq!(w.delete_tokens(&node_b).await, [TOKEN_B]);

    // No request ever carried a token the mock does not know.
    for (m, p, t) in w.requests().await {
        assert!(
            [PLATFORM_TOKEN, TOKEN_A, TOKEN_B].contains(&t.as_deref().unwrap_or("")),
            "{m} {p} carried {t:?}"
        );
    }
}

#[tokio::test]
async fn without_a_factory_a_users_credential_is_refused_not_replaced() {
    let w = world().await;
    let user = w.user("a", None).await;
    w.cp.accounts()
        .set_credential(
            &CredentialOwner::User(user.clone()),
            &CredentialInput {
                target: CredentialTarget::Provider(ProviderKind::Hetzner),
                kind: CredentialKind::ApiToken,
                secret: Secret::new(TOKEN_A),
                details: BTreeMap::new(),
            },
        )
        .await
        .expect("stored");
    // Without a factory, a user's own credential is refused rather than replaced by
    // the platform's.
    let bare = ControlPlane::new(
        ControlPlaneParts {
            store: Arc::clone(&w.store),
            providers: vec![Arc::new(
                HetznerProvider::new(HetznerConfig::new(Secret::new(PLATFORM_TOKEN)))
                    .expect("valid"),
            ) as Arc<dyn Provider>],
            scheduler: Arc::new(DefaultScheduler::new(Arc::clone(&w.store))),
            node_agent: Arc::new(FakeNodeAgent::new(FakeAgentScript::default())),
            boot: Arc::new(PlainBoot),
            signer: TokenSigner::new(Secret::new("k".repeat(32)), "sam").expect("valid key"),
            clock: w.clock.clone(),
        },
        w.cp.config().clone(),
    )
    .expect("valid");
    let error = bare
        .submit(&SubmitRequest {
            repo: "https://example.invalid/repo.git".into(),
            prompt: "p".into(),
            user: Some(user.clone()),
            ..SubmitRequest::default()
        })
        .await
        .expect_err("no factory");
    assert!(
        matches!(
            error,
            sam_core::Error::Credential(CredentialError::NoFactory { .. })
        ),
        "{error:?}"
    );
    assert!(w.requests().await.is_empty(), "nothing reached the cloud");
}
