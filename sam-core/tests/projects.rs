//! Whose intent a task carries: projects, agent profiles, users, credentials and
//! lineage, through the control plane over the real in-memory store, the fake
//! provider and the fake node agent, on tokio's paused clock.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use sam_core::testkit::node_agent::{FakeAgentScript, FakeNodeAgent, PlainBoot};
use sam_core::{
    Classify, ControlPlane, ControlPlaneConfig, ControlPlaneParts, CredentialError,
    CredentialInput, CredentialKind, CredentialOwner, CredentialTarget, DefaultScheduler, Effort,
    Error, ErrorCategory, Layer, LayerSettings, LineageKind, MAX_LINEAGE_DEPTH, PermissionMode,
    PlatformCredential, ProfileInput, ProjectId, ProjectInput, Provider, ProviderKind,
    ResourceRequirements, ScalingOverrides, Secret, SetupChoices, Store, SubmitRequest, TaskId,
    TaskRecord, TaskStatus, TokenSigner, TokioClock, UserId, UserInput, VmSize,
};
use sam_providers::FakeProvider;
use sam_store::MemoryStore;

const HOUR: Duration = Duration::from_secs(3600);
const USER_KEY: &str = "sk-ant-user-key-0123456789";
const PROJECT_KEY: &str = "sk-ant-project-key-0123456789";
const PLATFORM_KEY: &str = "sk-ant-platform-key-0123456789";

fn key(byte: u8) -> Secret {
    Secret::new(base64::engine::general_purpose::STANDARD.encode([byte; 32]))
}

struct Harness {
    cp: ControlPlane,
    store: Arc<dyn Store>,
    agent: Arc<FakeNodeAgent>,
}

fn harness_on(store: Arc<dyn Store>, credential_key: Option<Secret>) -> Harness {
    let mut config = ControlPlaneConfig::new("d1", ProviderKind::Fake);
    config.agent_credentials.insert(
        "claude".into(),
        PlatformCredential {
            kind: CredentialKind::ApiKey,
            secret: Secret::new(PLATFORM_KEY),
        },
    );
    harness_with(store, credential_key, config)
}

/// A harness on `store` with `config` (the fake provider is the platform's).
fn harness_with(
    store: Arc<dyn Store>,
    credential_key: Option<Secret>,
    mut config: ControlPlaneConfig,
) -> Harness {
    let agent = Arc::new(FakeNodeAgent::new(FakeAgentScript::default()));
    config.credential_key = credential_key;
    let parts = ControlPlaneParts {
        store: Arc::clone(&store),
        providers: vec![Arc::new(FakeProvider::new()) as Arc<dyn Provider>],
        scheduler: Arc::new(DefaultScheduler::new(Arc::clone(&store))),
        node_agent: Arc::clone(&agent) as _,
        boot: Arc::new(PlainBoot),
        signer: TokenSigner::new(Secret::new("s".repeat(32)), "sam-control-plane").unwrap(),
        clock: Arc::new(TokioClock::new()),
    };
    Harness {
        cp: ControlPlane::new(parts, config).unwrap(),
        store,
        agent,
    }
}

fn harness() -> Harness {
    harness_on(Arc::new(MemoryStore::new()), Some(key(1)))
}

impl Harness {
    async fn run(&self, id: &TaskId) -> TaskRecord {
        let start = tokio::time::Instant::now();
        loop {
            self.cp.tick().await.unwrap();
            let task = self.store.get_task(id).await.unwrap().unwrap();
            if task.status.is_terminal() || start.elapsed() > HOUR {
                return task;
            }
            tokio::time::advance(self.cp.config().poll_interval).await;
        }
    }

    async fn user(&self) -> UserId {
        self.cp
            .accounts()
            .create_user(&UserInput {
                name: "Ada".into(),
                settings: LayerSettings {
                    model: Some("user-model".into()),
                    effort: Some(Effort::Medium),
                    location: Some("local".parse().unwrap()),
                    ..LayerSettings::default()
                },
            })
            .await
            .unwrap()
            .id
    }

    async fn project(&self, owner: Option<UserId>, settings: LayerSettings) -> ProjectId {
        self.cp
            .accounts()
            .create_project(&ProjectInput {
                name: "web".into(),
                repo: "https://example.invalid/web.git".into(),
                owner,
                settings,
                scaling: ScalingOverrides {
                    max_workspaces_per_node: Some(3),
                    warm_timeout_secs: Some(900),
                },
            })
            .await
            .unwrap()
            .id
    }

    async fn reviewer(&self, project: &ProjectId) {
        self.cp
            .accounts()
            .create_profile(
                project,
                &ProfileInput {
                    name: "reviewer".into(),
                    settings: LayerSettings {
                        agent: Some("claude".into()),
                        model: Some("claude-opus-4-1".into()),
                        effort: Some(Effort::Low),
                        permission_mode: Some(PermissionMode::ReadOnly),
                        system_prompt: Some("Review only; change nothing.".into()),
                        requirements: ResourceRequirements {
                            min_vcpu: Some(1.0),
                            ..ResourceRequirements::default()
                        },
                        ..LayerSettings::default()
                    },
                },
            )
            .await
            .unwrap();
    }

    async fn set_key(&self, owner: &CredentialOwner, secret: &str) {
        self.cp
            .accounts()
            .set_credential(
                owner,
                &CredentialInput {
                    target: CredentialTarget::Agent("claude".into()),
                    kind: CredentialKind::ApiKey,
                    secret: Secret::new(secret),
                    details: BTreeMap::new(),
                },
            )
            .await
            .unwrap();
    }

    /// The environment the agent process of the last session was given.
    fn last_env(&self) -> Vec<(String, String)> {
        let requests = self.agent.session_requests();
        let last = requests.last().expect("a session was started");
        last.env
            .iter()
            .map(|(k, v)| (k.clone(), v.expose().to_owned()))
            .collect()
    }
}

fn in_project(project: &ProjectId, profile: Option<&str>, task: LayerSettings) -> SubmitRequest {
    SubmitRequest {
        prompt: "Review the login flow\nand list problems".into(),
        layers: [(Layer::Task, task)].into_iter().collect(),
        project: Some(project.clone()),
        profile: profile.map(str::to_owned),
        ..SubmitRequest::default()
    }
}

fn invalid_field(error: &Error) -> &'static str {
    match error {
        Error::InvalidInput { field, .. } => field,
        other => panic!("expected invalid input, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_task_in_a_project_with_a_profile_runs_on_its_settings_with_every_source() {
    let h = harness();
    let user = h.user().await;
    let project = h
        .project(
            Some(user.clone()),
            LayerSettings {
                size: Some(VmSize::Large),
                devcontainer: Some("python".into()),
                model: Some("project-model".into()),
                ..LayerSettings::default()
            },
        )
        .await;
    h.reviewer(&project).await;
    h.set_key(&CredentialOwner::User(user.clone()), USER_KEY)
        .await;
    let mut events = h.cp.subscribe();

    let id =
        h.cp.submit(&in_project(
            &project,
            Some("reviewer"),
            LayerSettings {
                effort: Some(Effort::High),
                ..LayerSettings::default()
            },
        ))
        .await
        .unwrap();
    let task = h.run(&id).await;
    assert_eq!(task.status, TaskStatus::Completed, "{task:?}");

    let spec = &task.spec;
    assert_eq!(
        spec.repo, "https://example.invalid/web.git",
        "the project's repository"
    );
    assert_eq!(spec.agent, "claude");
    let options = &spec.agent_options;
    assert_eq!(options.model.as_deref(), Some("claude-opus-4-1"));
    assert_eq!(options.effort, Some(Effort::High));
    assert_eq!(options.permission_mode, Some(PermissionMode::ReadOnly));
    assert_eq!(spec.devcontainer.as_deref(), Some("python"));
    assert_eq!(task.requested_size, VmSize::Large);
    assert_eq!(task.requested_location, Some("local".parse().unwrap()));
    let expected: BTreeMap<String, Layer> = [
        ("repo", Layer::Project),
        ("agent", Layer::AgentProfile),
        ("model", Layer::AgentProfile),
        ("effort", Layer::Task),
        ("permission_mode", Layer::AgentProfile),
        ("system_prompt", Layer::AgentProfile),
        ("size", Layer::Project),
        ("devcontainer", Layer::Project),
        ("location", Layer::User),
        ("provider", Layer::Platform),
        ("workspace_profile", Layer::Platform),
        ("provider_credential", Layer::Platform),
        ("agent_credential", Layer::User),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    assert_eq!(spec.provenance, expected);
    assert_eq!(task.size_source, Layer::Project);
    assert_eq!(task.location_source, Layer::User);
    assert_eq!(task.reservation.cpu_millis, 1000);
    assert_eq!(task.reservation.sources.vcpu, Layer::AgentProfile);
    assert_eq!(task.reservation.max_co_tenants, 3);
    assert_eq!(task.reservation.sources.max_co_tenants, Layer::Project);
    assert_eq!(spec.project.as_ref(), Some(&project));
    assert_eq!(spec.user.as_ref(), Some(&user));
    assert!(spec.profile.is_some());

    // The resolved settings reached the node with the task.
    let workspace = &h.agent.workspace_requests()[0];
    assert_eq!(workspace.devcontainer.as_deref(), Some("python"));
    let session = &h.agent.session_requests()[0];
    assert_eq!(session.agent, "claude");
    assert_eq!(&session.options, options);
    assert_eq!(
        options.system_prompt.as_deref(),
        Some("Review only; change nothing.")
    );
    assert_eq!(
        h.last_env(),
        [("ANTHROPIC_API_KEY".to_owned(), USER_KEY.to_owned())]
    );

    // The key is in the agent's environment only: not in the task, its events, or
    // what the store holds for the credential.
    let record = serde_json::to_string(&task).unwrap();
    assert!(!record.contains(USER_KEY));
    while let Ok(event) = events.try_recv() {
        assert!(!serde_json::to_string(&event).unwrap().contains(USER_KEY));
    }
    let stored = h
        .store
        .list_credentials(&CredentialOwner::User(user.clone()))
        .await
        .unwrap();
    assert!(!serde_json::to_string(&stored).unwrap().contains(USER_KEY));
    let views =
        h.cp.accounts()
            .list_credentials(&CredentialOwner::User(user))
            .await
            .unwrap();
    assert!(!serde_json::to_string(&views).unwrap().contains(USER_KEY));
    assert_eq!(views[0].kind, CredentialKind::ApiKey);
}

#[tokio::test(start_paused = true)]
async fn agent_credentials_resolve_project_then_user_then_platform() {
    let h = harness();
    let user = h.user().await;
    let project = h
        .project(Some(user.clone()), LayerSettings::default())
        .await;
    h.reviewer(&project).await;
    let submit_and_run = async || {
        let id =
            h.cp.submit(&in_project(
                &project,
                Some("reviewer"),
                LayerSettings::default(),
            ))
            .await
            .unwrap();
        let task = h.run(&id).await;
        assert_eq!(task.status, TaskStatus::Completed);
        (
            task.spec.provenance["agent_credential"],
            h.last_env()[0].1.clone(),
        )
    };
    assert_eq!(
        submit_and_run().await,
        (Layer::Platform, PLATFORM_KEY.to_owned())
    );
    h.set_key(&CredentialOwner::User(user.clone()), USER_KEY)
        .await;
    assert_eq!(submit_and_run().await, (Layer::User, USER_KEY.to_owned()));
    h.set_key(&CredentialOwner::Project(project.clone()), PROJECT_KEY)
        .await;
    assert_eq!(
        submit_and_run().await,
        (Layer::Project, PROJECT_KEY.to_owned())
    );
    h.cp.accounts()
        .delete_credential(
            &CredentialOwner::Project(project.clone()),
            &CredentialTarget::Agent("claude".into()),
        )
        .await
        .unwrap();
    assert_eq!(submit_and_run().await, (Layer::User, USER_KEY.to_owned()));
}

#[tokio::test(start_paused = true)]
async fn a_wrong_or_missing_key_is_a_typed_error() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let h = harness_on(Arc::clone(&store), Some(key(1)));
    let user = h.user().await;
    let project = h
        .project(Some(user.clone()), LayerSettings::default())
        .await;
    h.reviewer(&project).await;
    h.set_key(&CredentialOwner::User(user.clone()), USER_KEY)
        .await;

    let other = harness_on(Arc::clone(&store), Some(key(2)));
    let err = other
        .cp
        .submit(&in_project(
            &project,
            Some("reviewer"),
            LayerSettings::default(),
        ))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Credential(CredentialError::WrongKey)),
        "{err:?}"
    );
    assert_eq!(err.category(), ErrorCategory::AuthError);
    assert!(!err.to_string().contains(USER_KEY));

    let keyless = harness_on(store, None);
    let err = keyless
        .cp
        .accounts()
        .set_credential(
            &CredentialOwner::User(user),
            &CredentialInput {
                target: CredentialTarget::Agent("claude".into()),
                kind: CredentialKind::ApiKey,
                secret: Secret::new(USER_KEY),
                details: BTreeMap::new(),
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Credential(CredentialError::NoKey)),
        "{err:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_project_with_agents_but_no_profile_asks_for_one_and_none_is_created() {
    let h = harness();
    let project = h
        .project(
            None,
            LayerSettings {
                agent: Some("claude".into()),
                ..LayerSettings::default()
            },
        )
        .await;
    assert!(
        h.cp.accounts()
            .list_profiles(&project)
            .await
            .unwrap()
            .is_empty()
    );
    let err =
        h.cp.submit(&in_project(&project, None, LayerSettings::default()))
            .await
            .unwrap_err();
    assert_eq!(invalid_field(&err), "profile");
    assert!(err.to_string().contains("create one"), "{err}");
    assert!(
        h.cp.accounts()
            .list_profiles(&project)
            .await
            .unwrap()
            .is_empty(),
        "nothing is created behind the user's back"
    );

    // With profiles, one must be named; deleting them all leaves none.
    h.reviewer(&project).await;
    let err =
        h.cp.submit(&in_project(&project, None, LayerSettings::default()))
            .await
            .unwrap_err();
    assert!(err.to_string().contains("reviewer"), "{err}");
    for profile in h.cp.accounts().list_profiles(&project).await.unwrap() {
        h.cp.accounts()
            .delete_profile(&project, &profile.id)
            .await
            .unwrap();
    }
    assert!(
        h.cp.accounts()
            .list_profiles(&project)
            .await
            .unwrap()
            .is_empty()
    );
    let err =
        h.cp.submit(&in_project(
            &project,
            Some("reviewer"),
            LayerSettings::default(),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.category(), ErrorCategory::NotFound, "{err}");

    // A project with neither agents nor profiles runs on the other layers.
    let plain = h.project(None, LayerSettings::default()).await;
    let id =
        h.cp.submit(&in_project(&plain, None, LayerSettings::default()))
            .await
            .unwrap();
    let task = h.run(&id).await;
    assert_eq!(task.status, TaskStatus::Completed);
    assert_eq!(task.spec.provenance["agent"], Layer::Platform);
}

#[tokio::test(start_paused = true)]
async fn projects_and_profiles_are_validated() {
    let h = harness();
    let input = ProjectInput {
        name: "web".into(),
        repo: "https://example.invalid/web.git".into(),
        owner: None,
        settings: LayerSettings::default(),
        scaling: ScalingOverrides {
            max_workspaces_per_node: Some(0),
            warm_timeout_secs: None,
        },
    };
    let err = h.cp.accounts().create_project(&input).await.unwrap_err();
    assert_eq!(invalid_field(&err), "scaling.max_workspaces_per_node");
    let err =
        h.cp.accounts()
            .create_project(&ProjectInput {
                owner: Some(UserId::new("u-nobody").unwrap()),
                scaling: ScalingOverrides::default(),
                ..input.clone()
            })
            .await
            .unwrap_err();
    assert_eq!(err.category(), ErrorCategory::NotFound);
    let project = h.project(None, LayerSettings::default()).await;
    h.reviewer(&project).await;
    let err =
        h.cp.accounts()
            .create_profile(
                &project,
                &ProfileInput {
                    name: "reviewer".into(),
                    settings: LayerSettings {
                        agent: Some("claude".into()),
                        ..LayerSettings::default()
                    },
                },
            )
            .await
            .unwrap_err();
    assert_eq!(err.category(), ErrorCategory::Conflict, "{err}");
    let err =
        h.cp.accounts()
            .create_profile(
                &project,
                &ProfileInput {
                    name: "other".into(),
                    settings: LayerSettings {
                        agent: Some("cursor".into()),
                        ..LayerSettings::default()
                    },
                },
            )
            .await
            .unwrap_err();
    assert_eq!(invalid_field(&err), "agent");
}

#[tokio::test(start_paused = true)]
async fn retries_and_forks_record_their_parent_up_to_the_depth_limit() {
    let h = harness();
    let original =
        h.cp.submit(&SubmitRequest {
            repo: "https://example.invalid/repo.git".into(),
            prompt: "Fix the flaky test\nin the login suite".into(),
            layers: [(
                Layer::Task,
                LayerSettings {
                    size: Some(VmSize::Small),
                    ..LayerSettings::default()
                },
            )]
            .into_iter()
            .collect(),
            ..SubmitRequest::default()
        })
        .await
        .unwrap();
    let err = h.cp.retry(&original).await.unwrap_err();
    assert_eq!(invalid_field(&err), "task", "a running task is not retried");
    let parent = h.run(&original).await;
    assert_eq!(h.cp.source(&parent).await.unwrap(), None);

    let retried = h.cp.retry(&original).await.unwrap();
    let child = h.cp.get(&retried).await.unwrap().unwrap();
    assert_eq!(child.spec.prompt, parent.spec.prompt);
    assert_eq!(child.requested_size, VmSize::Small);
    assert_eq!(
        child.size_source,
        Layer::Task,
        "the retry carries the same intent"
    );
    let source = h.cp.source(&child).await.unwrap().unwrap();
    assert_eq!(source.kind, LineageKind::Retry);
    assert_eq!(source.parent_task_id, original);
    assert_eq!(source.parent_title.as_deref(), Some("Fix the flaky test"));
    assert!(parent.workspace_id.is_some());
    assert_eq!(source.parent_session_id, parent.workspace_id);

    let mut last = retried;
    for depth in 2..=MAX_LINEAGE_DEPTH {
        last =
            h.cp.fork(&last, &format!("continue {depth}"))
                .await
                .unwrap();
        let task = h.cp.get(&last).await.unwrap().unwrap();
        let lineage = task.spec.lineage.unwrap();
        assert_eq!((lineage.kind, lineage.depth), (LineageKind::Fork, depth));
    }
    let err = h.cp.fork(&last, "one too many").await.unwrap_err();
    assert_eq!(invalid_field(&err), "task");
    assert!(err.to_string().contains("at most 10"), "{err}");
    let err = h.cp.fork(&last, "  ").await.unwrap_err();
    assert_eq!(invalid_field(&err), "task", "the depth is checked first");
    let err = h.cp.fork(&original, "  ").await.unwrap_err();
    assert_eq!(invalid_field(&err), "prompt");
}

#[tokio::test(start_paused = true)]
async fn setup_status_counts_what_the_user_chose_not_what_the_platform_offers() {
    let h = harness();
    let user = h.user().await;
    let status = h.cp.accounts().setup_status(&user, None).await.unwrap();
    assert!(
        !status.ai_access.configured,
        "the platform's claude key does not complete the user's setup"
    );
    assert!(!status.cloud_access.configured && !status.repository_access.configured);
    h.set_key(&CredentialOwner::User(user.clone()), USER_KEY)
        .await;
    let project = h
        .project(Some(user.clone()), LayerSettings::default())
        .await;
    h.cp.accounts()
        .set_credential(
            &CredentialOwner::Project(project.clone()),
            &CredentialInput {
                target: CredentialTarget::Provider(ProviderKind::Hetzner),
                kind: CredentialKind::ApiToken,
                secret: Secret::new("hcloud-token"),
                details: BTreeMap::new(),
            },
        )
        .await
        .unwrap();
    let status = h.cp.accounts().setup_status(&user, None).await.unwrap();
    assert_eq!(status.ai_access.how, ["agent:claude api_key (user)"]);
    assert_eq!(
        status.cloud_access.how,
        [format!("provider:hetzner api_token (project {project})")]
    );
    assert!(!status.complete);
}

/// A user who chose the platform's AI and infrastructure counts as set up for both,
/// and only while the platform offers them: a server without an agent credential of
/// its own refuses the AI choice, and a choice recorded before counts no longer.
#[tokio::test(start_paused = true)]
async fn setup_choices_count_only_what_the_platform_offers() {
    let h = harness();
    let user = h.user().await;
    let offers = h.cp.accounts().platform_offers();
    assert!(
        offers.platform_ai && offers.platform_infrastructure,
        "{offers:?}"
    );
    let both = SetupChoices {
        platform_ai: true,
        platform_infrastructure: true,
    };
    assert_eq!(
        h.cp.accounts()
            .set_setup_choices(&user, both)
            .await
            .unwrap(),
        both
    );
    let status = h.cp.accounts().setup_status(&user, None).await.unwrap();
    assert_eq!(status.ai_access.how, ["the platform's AI (chosen)"]);
    assert_eq!(
        status.cloud_access.how,
        ["the platform's infrastructure (chosen)"]
    );
    assert!(!status.complete, "repository access is still missing");

    // The same users, served by a control plane with no AI of its own.
    let bare = harness_with(
        Arc::clone(&h.store),
        Some(key(1)),
        ControlPlaneConfig::new("d2", ProviderKind::Fake),
    );
    let status = bare.cp.accounts().setup_status(&user, None).await.unwrap();
    assert!(
        !status.ai_access.configured,
        "a platform AI that is gone configures nothing"
    );
    assert!(status.cloud_access.configured);
    match bare.cp.accounts().set_setup_choices(&user, both).await {
        Err(Error::InvalidInput { field, .. }) => assert_eq!(field, "platform_ai"),
        other => panic!("wanted the AI choice refused, got {other:?}"),
    }
    let infrastructure = SetupChoices {
        platform_ai: false,
        platform_infrastructure: true,
    };
    bare.cp
        .accounts()
        .set_setup_choices(&user, infrastructure)
        .await
        .unwrap();
    let missing = UserId::new("u-missing").unwrap();
    let e =
        h.cp.accounts()
            .set_setup_choices(&missing, infrastructure)
            .await
            .unwrap_err();
    assert_eq!(e.category(), ErrorCategory::NotFound, "{e}");
}

/// A project's warm timeout decides how long the nodes provisioned for its tasks stay
/// warm; other nodes keep the policy's.
#[tokio::test(start_paused = true)]
async fn a_projects_warm_timeout_decides_how_long_its_nodes_stay_warm() {
    use sam_core::{NodeFilter, NodeLifecycle};

    let h = harness();
    // The project's warm timeout is 900 s; the policy's is longer.
    assert!(h.cp.config().timeouts.warm_node > Duration::from_secs(1_000));
    let project = h.project(None, LayerSettings::default()).await;
    let ours =
        h.cp.submit(&in_project(&project, None, LayerSettings::default()))
            .await
            .unwrap();
    let ours = h.run(&ours).await;
    assert_eq!(ours.status, TaskStatus::Completed, "{:?}", ours.error);
    let theirs =
        h.cp.submit(&SubmitRequest {
            prompt: "no project".into(),
            repo: "https://example.invalid/other.git".into(),
            preferred_node: None,
            ..SubmitRequest::default()
        })
        .await
        .unwrap();
    // The second task would reuse the warm node; make it provision its own.
    let nodes = h.store.list_nodes(&NodeFilter::default()).await.unwrap();
    assert_eq!(nodes.len(), 1);
    let ours_node = nodes[0].id.clone();
    h.store.delete_node(&ours_node).await.unwrap();
    let theirs = h.run(&theirs).await;
    assert_eq!(theirs.status, TaskStatus::Completed, "{:?}", theirs.error);
    h.store.put_node(&nodes[0]).await.unwrap();

    tokio::time::advance(Duration::from_secs(901)).await;
    h.cp.sweep().await.unwrap();
    let after = h.store.list_nodes(&NodeFilter::default()).await.unwrap();
    let lifecycle = |id: &sam_core::NodeId| {
        after
            .iter()
            .find(|n| &n.id == id)
            .map(|n| (n.lifecycle, n.status))
    };
    let theirs_node = theirs.provisioned_node_id.clone().expect("a node");
    assert_eq!(
        lifecycle(&theirs_node).map(|l| l.0),
        Some(NodeLifecycle::Warm),
        "the policy's 30 min have not passed: {after:?}"
    );
    assert_ne!(
        lifecycle(&ours_node).map(|l| l.0),
        Some(NodeLifecycle::Warm),
        "the project's 900 s have passed: {after:?}"
    );
}
