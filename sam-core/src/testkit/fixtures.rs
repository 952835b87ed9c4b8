//! Sample records for the conformance suites.
//!
//! Times are whole seconds after a fixed epoch, so they round-trip exactly through
//! every backend (stores keep timestamps to the microsecond).

use chrono::{DateTime, TimeZone, Utc};

use crate::boot::NodeBootRecord;
use crate::error::ErrorCategory;
use crate::github::{
    ExternalInstallationId, GithubAccess, GithubInstallation, InstallationKey, PullRequestMode,
    TaskOutput,
};
use crate::model::{
    ExecutionStep, Labels, Location, NodeHealth, NodeId, NodeLifecycle, NodeStatus, ProviderKind,
    TaskId, TaskStatus, UserId, VmId, VmSize, WorkspaceId,
};
use crate::reservation::{
    Capacity, Layer, RequirementLayers, Reservation, ResourceRequirements, resolve_reservation,
};
use crate::scheduler::{PlacementExplanation, Rejected};
use crate::store::{
    ApiTokenRecord, NodeRecord, TaskError, TaskRecord, TaskSpec, WorkspaceRecord, WorkspaceStatus,
};

/// `secs` seconds after 2025-01-01T00:00:00Z.
pub fn at(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_735_689_600 + secs, 0)
        .single()
        .expect("fixture times are in range")
}

/// A task id.
pub fn task_id(id: &str) -> TaskId {
    TaskId::new(id).expect("fixture task ids are valid")
}

/// A node id.
pub fn node_id(id: &str) -> NodeId {
    NodeId::new(id).expect("fixture node ids are valid")
}

/// A workspace id.
pub fn workspace_id(id: &str) -> WorkspaceId {
    WorkspaceId::new(id).expect("fixture workspace ids are valid")
}

/// One user's link to the GitHub installation `external`, made at `at(created)`.
pub fn github_installation(user: &str, external: u64, created: i64) -> GithubInstallation {
    GithubInstallation {
        user_id: UserId::new(user).expect("fixture user ids are valid"),
        external_id: ExternalInstallationId::new(external).expect("fixture ids are positive"),
        account: "acme".into(),
        created_at: at(created),
    }
}

/// A location.
pub fn location(name: &str) -> Location {
    Location::new(name).expect("fixture locations are valid")
}

/// A queued task created at `at(created)`, with platform-default requirements and no
/// optional field set.
pub fn task(id: &str, created: i64) -> TaskRecord {
    let requirements = RequirementLayers::default();
    TaskRecord {
        id: task_id(id),
        status: TaskStatus::Queued,
        execution_step: ExecutionStep::NodeSelection,
        spec: TaskSpec {
            repo: "https://example.invalid/repo.git".into(),
            branch: None,
            prompt: "fix the flaky test".into(),
            agent: "claude".into(),
            workspace_profile: None,
            devcontainer: None,
            preferred_node: None,
            provenance: Default::default(),
            github: None,
            ..TaskSpec::default()
        },
        provider: ProviderKind::Hetzner,
        requested_size: VmSize::Medium,
        size_source: Layer::Platform,
        requested_location: None,
        location_source: Layer::Platform,
        reservation: resolve_reservation(&requirements).expect("defaults resolve"),
        requirements,
        placement: None,
        provisioned_node_id: None,
        provisioned_size: None,
        provisioned_location: None,
        workspace_id: None,
        next_wake_at: None,
        lease_owner: None,
        lease_expires_at: None,
        lease_epoch: 0,
        provisioning_started_at: None,
        capacity_passes: 0,
        node_replacements: 0,
        step_started_at: at(created),
        error: None,
        output: None,
        created_at: at(created),
        updated_at: at(created),
    }
}

/// A task that wakes at `at(wake)`.
pub fn due_task(id: &str, created: i64, wake: i64) -> TaskRecord {
    TaskRecord {
        next_wake_at: Some(at(wake)),
        ..task(id, created)
    }
}

/// A task with every optional field set, to check that nothing is lost on a round trip.
pub fn full_task(id: &str, created: i64) -> TaskRecord {
    let requirements = RequirementLayers {
        task: ResourceRequirements {
            min_vcpu: Some(0.5),
            min_memory_gb: Some(6.0),
            ..Default::default()
        },
        project: ResourceRequirements {
            exclusive_node: Some(true),
            ..Default::default()
        },
        ..Default::default()
    };
    TaskRecord {
        status: TaskStatus::InProgress,
        execution_step: ExecutionStep::Running,
        spec: TaskSpec {
            repo: "git@example.invalid:org/repo.git".into(),
            branch: Some("feature/ü-unicode".into()),
            prompt: "line one\nline \"two\" with 'quotes' and ; DROP TABLE tasks; --".into(),
            agent: "codex".into(),
            workspace_profile: Some("full".into()),
            devcontainer: Some("python".into()),
            preferred_node: Some(NodeId::new("n-preferred").expect("valid id")),
            provenance: [
                ("size".to_owned(), Layer::Task),
                ("provider".to_owned(), Layer::Project),
                ("agent_credential".to_owned(), Layer::User),
            ]
            .into_iter()
            .collect(),
            github: Some(GithubAccess {
                installation: InstallationKey::new(
                    UserId::new("user:42").expect("valid id"),
                    ExternalInstallationId::new(4_242_424_242).expect("valid id"),
                ),
                pull_request: PullRequestMode::Open,
            }),
            agent_options: crate::project::AgentOptions {
                model: Some("gpt-5-codex".into()),
                effort: Some(crate::project::Effort::High),
                permission_mode: Some(crate::session::PermissionMode::ReadOnly),
                system_prompt: Some("Answer in \"English\".\n".into()),
            },
            project: Some(crate::model::ProjectId::new("p-1").expect("valid id")),
            profile: Some(crate::model::ProfileId::new("pf-1").expect("valid id")),
            user: Some(crate::model::UserId::new("u-1").expect("valid id")),
            submitted: [(
                Layer::Task,
                crate::project::LayerSettings {
                    model: Some("gpt-5-codex".into()),
                    ..Default::default()
                },
            )]
            .into_iter()
            .collect(),
            lineage: Some(crate::store::Lineage {
                kind: crate::store::LineageKind::Fork,
                parent_task: crate::model::TaskId::new("t-parent").expect("valid id"),
                parent_session: Some(WorkspaceId::new("w-parent").expect("valid id")),
                depth: 3,
            }),
            provider_credential_owner: Some(crate::credential::CredentialOwner::Project(
                crate::model::ProjectId::new("p-1").expect("valid id"),
            )),
        },
        provider: ProviderKind::Scaleway,
        requested_size: VmSize::Large,
        size_source: Layer::Task,
        requested_location: Some(location("fr-par-1")),
        location_source: Layer::Project,
        reservation: resolve_reservation(&requirements).expect("valid requirements"),
        requirements,
        placement: Some(PlacementExplanation {
            chosen: "node-7".into(),
            reason: "warm node of the exact size".into(),
            rejected: vec![Rejected {
                candidate: "node-3".into(),
                reason: "not enough memory_mb".into(),
            }],
        }),
        provisioned_node_id: Some(node_id("node-7")),
        provisioned_size: Some(VmSize::Medium),
        provisioned_location: Some(location("fr-par-2")),
        workspace_id: Some(workspace_id("ws-7")),
        next_wake_at: Some(at(created + 60)),
        lease_owner: Some("driver-a".into()),
        lease_expires_at: Some(at(created + 30)),
        lease_epoch: 7,
        provisioning_started_at: Some(at(created + 5)),
        capacity_passes: 3,
        step_started_at: at(created + 20),
        error: Some(TaskError {
            category: ErrorCategory::TransientCapacity,
            message: "There were no large machines available".into(),
        }),
        output: Some(TaskOutput {
            branch: "sam/fix-the-flaky-test-00000007".into(),
            commit: Some("0123456789abcdef0123456789abcdef01234567".into()),
            pull_request_url: Some("https://github.com/acme/widgets/pull/7".into()),
        }),
        ..task(id, created)
    }
}

/// The capacity of a Hetzner `cx33`: 4 vCPU, 8 GB, 80 GB.
pub fn cx33_capacity() -> Capacity {
    Capacity {
        cpu_millis: 4000,
        memory_mb: 8192,
        disk_mb: Some(80 * 1024),
    }
}

/// A running, healthy, active Hetzner medium node in `fsn1` created at `at(created)`.
pub fn node(id: &str, created: i64) -> NodeRecord {
    let nid = node_id(id);
    NodeRecord {
        labels: Labels::for_node(&nid),
        id: nid,
        provider: ProviderKind::Hetzner,
        vm_id: Some(VmId::new(format!("vm-{id}")).expect("valid VM id")),
        size: VmSize::Medium,
        server_type: "cx33".into(),
        location: location("fsn1"),
        capacity: cx33_capacity(),
        status: NodeStatus::Running,
        lifecycle: NodeLifecycle::Active,
        warm_since: None,
        health: NodeHealth::Healthy,
        last_heartbeat_at: Some(at(created + 10)),
        agent_version: Some("0.1.0".into()),
        ready_at: Some(at(created + 5)),
        created_for: Some(task_id("task-origin")),
        credential_owner: None,
        address: Some("192.0.2.10".into()),
        boot: NodeBootRecord::default(),
        created_at: at(created),
        updated_at: at(created),
    }
}

/// [`node`], but warm since `at(created + 1)`.
pub fn warm_node(id: &str, created: i64) -> NodeRecord {
    NodeRecord {
        lifecycle: NodeLifecycle::Warm,
        warm_since: Some(at(created + 1)),
        ..node(id, created)
    }
}

/// A reservation of `cpu_millis` and `memory_mb` (1 GB disk), with tenancy rules.
pub fn reservation(
    cpu_millis: u64,
    memory_mb: u64,
    exclusive: bool,
    max_co_tenants: u32,
) -> Reservation {
    let base = resolve_reservation(&RequirementLayers::default()).expect("defaults resolve");
    Reservation {
        cpu_millis,
        memory_mb,
        disk_mb: 1024,
        exclusive,
        max_co_tenants,
        ..base
    }
}

/// A `creating` workspace on `node` holding `reservation`, created at `at(created)`.
pub fn workspace(id: &str, node: &str, reservation: Reservation, created: i64) -> WorkspaceRecord {
    WorkspaceRecord {
        id: workspace_id(id),
        node_id: node_id(node),
        task_id: task_id(&format!("task-for-{id}")),
        status: WorkspaceStatus::Creating,
        effective_profile: None,
        reservation,
        created_at: at(created),
        updated_at: at(created),
    }
}

/// An API token record whose hash is 64 hex characters derived from `seed`.
pub fn api_token(id: &str, seed: u8) -> ApiTokenRecord {
    ApiTokenRecord {
        id: id.into(),
        hash: format!("{seed:02x}").repeat(32),
        label: format!("token {id}"),
        kind: crate::api_token::ApiTokenKind::User,
        created_at: at(0),
        last_used_at: None,
        expires_at: None,
        revoked_at: None,
    }
}

/// A user with a model default.
pub fn user(id: &str, created: i64) -> crate::project::UserRecord {
    crate::project::UserRecord {
        id: crate::model::UserId::new(id).expect("fixture user ids are valid"),
        name: format!("user {id}"),
        settings: crate::project::LayerSettings {
            model: Some("claude-sonnet-4-5".into()),
            ..Default::default()
        },
        created_at: at(created),
        updated_at: at(created),
    }
}

/// A project id.
pub fn project_id(id: &str) -> crate::model::ProjectId {
    crate::model::ProjectId::new(id).expect("fixture project ids are valid")
}

/// A project with every kind of setting.
pub fn project(id: &str, created: i64) -> crate::project::ProjectRecord {
    crate::project::ProjectRecord {
        id: project_id(id),
        name: format!("project {id}"),
        repo: "https://example.invalid/web.git".into(),
        owner: Some(crate::model::UserId::new("u-1").expect("valid id")),
        settings: crate::project::LayerSettings {
            size: Some(VmSize::Large),
            provider: Some(ProviderKind::Hetzner),
            location: Some(location("fsn1")),
            devcontainer: Some("python".into()),
            requirements: crate::reservation::ResourceRequirements {
                min_vcpu: Some(2.5),
                ..Default::default()
            },
            ..Default::default()
        },
        scaling: crate::project::ScalingOverrides {
            max_workspaces_per_node: Some(3),
            warm_timeout_secs: Some(600),
        },
        created_at: at(created),
        updated_at: at(created),
    }
}

/// An agent profile of a project.
pub fn profile(
    id: &str,
    project: &str,
    name: &str,
    created: i64,
) -> crate::project::AgentProfileRecord {
    crate::project::AgentProfileRecord {
        id: crate::model::ProfileId::new(id).expect("fixture profile ids are valid"),
        project_id: project_id(project),
        name: name.into(),
        settings: crate::project::LayerSettings {
            agent: Some("claude".into()),
            model: Some("claude-opus-4-1".into()),
            effort: Some(crate::project::Effort::Low),
            permission_mode: Some(crate::session::PermissionMode::RejectAll),
            system_prompt: Some("Only review; change nothing.".into()),
            ..Default::default()
        },
        created_at: at(created),
        updated_at: at(created),
    }
}

/// A sealed credential (the sealed value is opaque to stores).
pub fn credential(
    owner: crate::credential::CredentialOwner,
    target: &str,
    updated: i64,
) -> crate::credential::CredentialRecord {
    crate::credential::CredentialRecord {
        owner,
        target: target.parse().expect("fixture targets are valid"),
        kind: crate::credential::CredentialKind::ApiKey,
        sealed: crate::credential::Sealed::from_stored(format!("v1:nonce:{target}-{updated}")),
        details: [("project_id".to_owned(), "scw-1".to_owned())]
            .into_iter()
            .collect(),
        created_at: at(0),
        updated_at: at(updated),
    }
}

/// Stores `token` as `user`'s own API token for `provider`.
///
/// # Panics
/// When the control plane refuses it.
pub async fn set_provider_token(
    cp: &crate::ControlPlane,
    user: &UserId,
    provider: ProviderKind,
    token: &str,
) {
    cp.accounts()
        .set_credential(
            &crate::credential::CredentialOwner::User(user.clone()),
            &crate::control::CredentialInput {
                target: crate::credential::CredentialTarget::Provider(provider),
                kind: crate::credential::CredentialKind::ApiToken,
                secret: crate::secret::Secret::new(token),
                details: std::collections::BTreeMap::new(),
            },
        )
        .await
        .expect("the credential is stored");
}

/// Submits a task of `user` (on `preferred`, when given).
///
/// # Panics
/// When the submission is refused.
pub async fn submit_for(
    cp: &crate::ControlPlane,
    user: &UserId,
    preferred: Option<&NodeId>,
) -> TaskId {
    cp.submit(&crate::control::SubmitRequest {
        repo: "https://example.invalid/repo.git".into(),
        prompt: "fix the flaky test".into(),
        user: Some(user.clone()),
        preferred_node: preferred.cloned(),
        ..crate::control::SubmitRequest::default()
    })
    .await
    .expect("submitted")
}

/// Ticks `cp`, moving `clock` on by the poll interval after each tick, until task
/// `id` ends (at most 500 ticks); returns it.
///
/// # Panics
/// When the task does not end or the store fails.
pub async fn run_to_end(
    cp: &crate::ControlPlane,
    clock: &crate::clock::ManualClock,
    id: &TaskId,
) -> TaskRecord {
    for _ in 0..500 {
        let task = cp.get(id).await.expect("get").expect("the task exists");
        if task.status.is_terminal() {
            return task;
        }
        cp.tick().await.expect("tick");
        clock.advance(cp.config().poll_interval);
    }
    panic!("task {id} did not end within 500 ticks");
}
