//! The JSON answers of the user API: a task with its size, location, boot timeline
//! and provenance, a page of tasks, nodes and the catalog, as the server sends them
//! and `sam` reads them ([`crate::client`]).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sam_core::{
    AgentOptions, BootPhaseRecord, Catalog, ControlPlane, ExecutionStep, Layer, Location,
    NodeRecord, PlacementExplanation, ProviderKind, Reservation, TaskError, TaskEventKind,
    TaskOutput, TaskRecord, TaskSource, TaskStatus, TranscriptQuery, VmSize,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The body of `GET /v1/health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct HealthView {
    /// Always `ok` when the server answers.
    pub status: String,
    /// The server's version.
    pub version: String,
}

/// The answer to `POST /v1/tasks`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Accepted {
    /// The new task.
    pub id: String,
    /// Its status (`queued`).
    #[schema(value_type = String)]
    pub status: TaskStatus,
}

/// A step with its human label.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct StepView {
    /// The step.
    #[schema(value_type = String)]
    pub step: ExecutionStep,
    /// Its label.
    pub label: String,
}

/// A task's size: requested, where that came from, provisioned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SizeView {
    /// The size asked for.
    #[schema(value_type = String)]
    pub requested: VmSize,
    /// The layer it came from (`task`, `platform`, …).
    #[schema(value_type = String)]
    pub source: Layer,
    /// The size running the task, once known.
    #[schema(value_type = Option<String>)]
    pub provisioned: Option<VmSize>,
    /// The provisioned (else requested) size as the catalog knows it.
    pub display: String,
}

/// A task's location: requested, where that came from, provisioned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LocationView {
    /// The location asked for, if any.
    #[schema(value_type = Option<String>)]
    pub requested: Option<Location>,
    /// The layer it came from.
    #[schema(value_type = String)]
    pub source: Layer,
    /// The location running the task, once known.
    #[schema(value_type = Option<String>)]
    pub provisioned: Option<Location>,
}

/// The transcript kinds a [`TaskView`] shows as notices.
const NOTICE_KINDS: [&str; 3] = ["capacity_unavailable", "waiting_for_capacity", "downgraded"];

/// The most notices a [`TaskView`] shows (capacity waits are bounded by the
/// capacity budget, far below this).
const MAX_NOTICES: usize = 200;

/// A capacity entry of a task's transcript, as a [`TaskView`] shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NoticeView {
    /// Its number in the task's transcript.
    pub seq: u64,
    /// When it was written.
    pub at: DateTime<Utc>,
    /// What.
    #[serde(flatten)]
    pub kind: TaskEventKind,
}

/// The answer to `GET /v1/tasks/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TaskView {
    /// The task.
    pub id: String,
    /// Its status.
    #[schema(value_type = String)]
    pub status: TaskStatus,
    /// Its current (or last) step.
    pub execution_step: StepView,
    /// The repository.
    pub repo: String,
    /// The agent.
    pub agent: String,
    /// The provider.
    #[schema(value_type = String)]
    pub provider: ProviderKind,
    /// The size.
    pub size: SizeView,
    /// The location.
    pub location: LocationView,
    /// Where each resolved setting came from.
    #[schema(value_type = Object)]
    pub provenance: BTreeMap<String, Layer>,
    /// The reservation, with each field's source.
    #[schema(value_type = Object)]
    pub reservation: Reservation,
    /// Why the task was placed where it was.
    #[schema(value_type = Option<Object>)]
    pub placement: Option<PlacementExplanation>,
    /// The node running the task.
    pub node: Option<String>,
    /// Whether that node was a warm one from an earlier task.
    pub node_reused: bool,
    /// The boot timeline of the node, when the task booted it (empty for a warm
    /// node, and until the node reported it).
    #[serde(default)]
    #[schema(value_type = Vec<Object>)]
    pub boot_timeline: Vec<BootPhaseRecord>,
    /// How many times the task moved off a node it lost (a failed boot, a VM that
    /// vanished, an agent that stopped answering).
    #[serde(default)]
    pub node_replacements: u32,
    /// What the runner noticed about where the task could run, oldest first: each
    /// attempt without capacity, each wait for capacity, a downgrade (the
    /// transcript's entries of those kinds).
    #[serde(default)]
    #[schema(value_type = Vec<Object>)]
    pub notices: Vec<NoticeView>,
    /// The agent's last message, once its turn ended (the transcript's last
    /// `last_message` entry).
    #[serde(default)]
    pub last_message: Option<String>,
    /// The workspace.
    pub workspace: Option<String>,
    /// The workspace's effective profile.
    pub workspace_profile: Option<String>,
    /// Why it failed; `null` unless failed.
    #[schema(value_type = Option<Object>)]
    pub error: Option<TaskError>,
    /// The project whose settings the task carries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// The agent profile whose settings the task carries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// How the agent runs (model, effort, permission mode, system-prompt addition).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub agent_options: AgentOptions,
    /// Where a retried or forked task came from (parent title, task and session);
    /// absent for an original task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub source: Option<TaskSource>,
    /// What the task left in its repository (output branch, commit, pull request),
    /// once it has pushed; absent before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub output: Option<TaskOutput>,
    /// When it was submitted.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

impl TaskView {
    /// Describes `task`, reading its node and workspace from the store.
    ///
    /// # Errors
    /// Store failures.
    pub async fn describe(
        cp: &ControlPlane,
        catalog: &Catalog,
        task: TaskRecord,
    ) -> Result<Self, sam_core::Error> {
        let store = cp.store();
        let source = cp.source(&task).await?;
        let node = match &task.provisioned_node_id {
            Some(id) => store.get_node(id).await?,
            None => None,
        };
        let workspace = match &task.workspace_id {
            Some(id) => store.get_workspace(id).await?,
            None => None,
        };
        let notices = cp
            .transcript(
                &task.id,
                &TranscriptQuery::after(0, MAX_NOTICES).with_kinds(NOTICE_KINDS),
            )
            .await?
            .into_iter()
            .map(|e| NoticeView {
                seq: e.id,
                at: e.at,
                kind: e.kind,
            })
            .collect();
        let last_message = cp
            .transcript(
                &task.id,
                &TranscriptQuery::after(0, 1)
                    .with_kinds(["last_message"])
                    .newest_first(),
            )
            .await?
            .into_iter()
            .find_map(|e| match e.kind {
                TaskEventKind::LastMessage { text } => Some(text),
                _ => None,
            });
        // A claimed warm node records no provisioned size on the task: the node's is it.
        let provisioned = task.provisioned_size.or(node.as_ref().map(|n| n.size));
        let shown = provisioned.unwrap_or(task.requested_size);
        Ok(Self {
            id: task.id.to_string(),
            status: task.status,
            execution_step: StepView {
                step: task.execution_step,
                label: task.execution_step.label().to_owned(),
            },
            repo: task.spec.repo,
            agent: task.spec.agent,
            provider: task.provider,
            size: SizeView {
                requested: task.requested_size,
                source: task.size_source,
                provisioned,
                display: sam_providers::SizeDisplay::from_catalog(catalog, shown).inline(),
            },
            location: LocationView {
                requested: task.requested_location,
                source: task.location_source,
                provisioned: task
                    .provisioned_location
                    .or(node.as_ref().map(|n| n.location.clone())),
            },
            provenance: task.spec.provenance,
            reservation: task.reservation,
            placement: task.placement,
            node_reused: node
                .as_ref()
                .is_some_and(|n| n.created_for.as_ref() != Some(&task.id)),
            boot_timeline: node
                .as_ref()
                .filter(|n| n.created_for.as_ref() == Some(&task.id))
                .map(|n| n.boot.timeline.clone())
                .unwrap_or_default(),
            node_replacements: task.node_replacements,
            notices,
            last_message,
            node: node.map(|n| n.id.to_string()),
            workspace: task.workspace_id.map(|w| w.to_string()),
            workspace_profile: workspace.and_then(|w| w.effective_profile),
            error: task.error,
            project: task.spec.project.map(|p| p.to_string()),
            profile: task.spec.profile.map(|p| p.to_string()),
            agent_options: task.spec.agent_options,
            source,
            output: task.output,
            created_at: task.created_at,
            updated_at: task.updated_at,
        })
    }

    /// The human summary `sam status` and `sam watch` print; `last_message` is the
    /// agent's, when the caller saw it in the event stream (else the view's own).
    pub fn summary(&self, last_message: Option<&str>) -> String {
        let last_message = last_message.or(self.last_message.as_deref());
        let mut lines = vec![format!("Task {} {}", self.id, self.status)];
        let mut field = |name: &str, value: String| lines.push(format!("  {name:<18}{value}"));
        // A task that has ended shows the step it ended in, not one it is in.
        field(
            if self.status.is_terminal() {
                "last step"
            } else {
                "step"
            },
            format!(
                "{} ({})",
                self.execution_step.label, self.execution_step.step
            ),
        );
        field("repo", self.repo.clone());
        if let Some(node) = &self.node {
            let how = if self.node_reused {
                " (warm, reused)"
            } else {
                " (new)"
            };
            field("node", format!("{node}{how}"));
        }
        if let Some(boot) = boot_line(&self.boot_timeline) {
            field("boot", boot);
        }
        if self.node_replacements > 0 {
            field("replacements", self.node_replacements.to_string());
        }
        let mut size = format!("{} (size from {})", self.size.display, self.size.source);
        if let Some(p) = self.size.provisioned.filter(|p| *p != self.size.requested) {
            size.push_str(&format!(", {p} instead of {}", self.size.requested));
        }
        field("size", size);
        for notice in &self.notices {
            let at = notice.at.format("%H:%M:%S");
            field("notice", format!("{at} {}", notice.kind));
        }
        if let Some(profile) = &self.workspace_profile {
            field("workspace", profile.clone());
        }
        field("agent", self.agent.clone());
        if let Some(placement) = &self.placement {
            field("placement", placement.reason.clone());
        }
        for (name, value) in output_fields(self.output.as_ref()) {
            field(name, value);
        }
        if let Some(message) = last_message {
            field("last message", message.trim().to_owned());
        }
        if let Some(error) = &self.error {
            field("error", format!("{} ({})", error.message, error.category));
            if let Some(hint) = crate::quickstart::hint(error, &self.agent) {
                field("hint", hint);
            }
        }
        lines.join("\n")
    }
}

/// The summary lines of what a task left in its repository: branch, commit, pull
/// request (`sam status`, `sam watch` and `sam run` print them alike).
pub(crate) fn output_fields(output: Option<&TaskOutput>) -> Vec<(&'static str, String)> {
    let Some(output) = output else {
        return Vec::new();
    };
    let mut fields = vec![("branch", output.branch.clone())];
    if let Some(commit) = &output.commit {
        fields.push(("commit", commit.clone()));
    }
    if let Some(url) = &output.pull_request_url {
        fields.push(("pull request", url.clone()));
    }
    fields
}

/// A node's boot timeline on one line: each phase with its duration, a phase that
/// never ended marked `failed` or `unfinished`, and the total; `None` when empty.
pub fn boot_line(timeline: &[BootPhaseRecord]) -> Option<String> {
    let (first, last) = (timeline.first()?, timeline.last()?);
    let phases: Vec<String> = timeline
        .iter()
        .map(|p| match p.ended_at {
            _ if p.failed => format!("{} failed", p.phase),
            Some(end) => format!("{} {}", p.phase, seconds(end - p.started_at)),
            None => format!("{} unfinished", p.phase),
        })
        .collect();
    let end = last.ended_at.unwrap_or(last.started_at);
    Some(format!(
        "{} in {}",
        phases.join(", "),
        seconds(end - first.started_at)
    ))
}

/// A duration as seconds with one decimal (`31.5 s`).
fn seconds(d: chrono::TimeDelta) -> String {
    format!("{:.1} s", d.num_milliseconds().max(0) as f64 / 1000.0)
}

/// The answer to `GET /v1/tasks`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TaskList {
    /// The tasks, oldest first.
    pub tasks: Vec<TaskView>,
    /// The `after` cursor of the next page, when there may be one.
    pub next_after: Option<String>,
}

/// The answer to `POST /v1/tasks/{id}/cancel`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Cancelled {
    /// The task.
    pub id: String,
    /// Whether this request cancelled it (`false` when it had already ended).
    pub cancelled: bool,
    /// Its status now.
    #[schema(value_type = String)]
    pub status: TaskStatus,
}

/// A node as `GET /v1/nodes` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NodeView {
    /// The node.
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub node: NodeRecord,
    /// Its size as the catalog knows it.
    pub size_display: String,
}

/// One size of the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SizeEntry {
    /// The size.
    #[schema(value_type = String)]
    pub size: VmSize,
    /// Its server type.
    pub server_type: Option<String>,
    /// One line, with the specs where the catalog knows them.
    pub display: String,
}

/// The answer to `GET /v1/catalog`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CatalogView {
    /// The provider.
    #[schema(value_type = String)]
    pub provider: ProviderKind,
    /// Its default location.
    #[schema(value_type = Option<String>)]
    pub default_location: Option<Location>,
    /// Each size and what it maps to.
    pub sizes: Vec<SizeEntry>,
    /// The full catalog.
    #[schema(value_type = Object)]
    pub catalog: Catalog,
}

impl CatalogView {
    /// The view of `catalog`.
    pub fn new(catalog: &Catalog) -> Self {
        Self {
            provider: catalog.provider,
            default_location: catalog.default_location.clone(),
            sizes: [VmSize::Small, VmSize::Medium, VmSize::Large]
                .into_iter()
                .map(|size| SizeEntry {
                    size,
                    server_type: catalog.sizes.get(&size).cloned(),
                    display: sam_providers::SizeDisplay::from_catalog(catalog, size).inline(),
                })
                .collect(),
            catalog: catalog.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use sam_core::{Secret, SubmitRequest, TaskId};

    use super::*;

    #[test]
    fn a_boot_timeline_reads_as_one_line() {
        let at = |ms: i64| DateTime::from_timestamp_millis(1_765_000_000_000 + ms).unwrap();
        let phase = |name: &str, start, end: Option<i64>, failed| BootPhaseRecord {
            phase: name.into(),
            started_at: at(start),
            ended_at: end.map(at),
            failed,
        };
        assert_eq!(boot_line(&[]), None);
        assert_eq!(
            boot_line(&[
                phase("swap", 0, Some(1_500), false),
                phase("packages", 1_500, Some(31_000), false),
            ])
            .as_deref(),
            Some("swap 1.5 s, packages 29.5 s in 31.0 s")
        );
        assert_eq!(
            boot_line(&[
                phase("swap", 0, Some(1_500), false),
                phase("packages", 1_500, None, true),
            ])
            .as_deref(),
            Some("swap 1.5 s, packages failed in 1.5 s")
        );
        assert_eq!(
            boot_line(&[phase("agent-start", 0, None, false)]).as_deref(),
            Some("agent-start unfinished in 0.0 s")
        );
    }

    /// Drives `id` to its end (real time, 10 ms polls).
    async fn drive(cp: &ControlPlane, id: &TaskId) -> TaskRecord {
        for _ in 0..500 {
            let task = cp.get(id).await.unwrap().unwrap();
            if task.status.is_terminal() {
                return task;
            }
            cp.tick().await.unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{id} did not end");
    }

    #[tokio::test]
    async fn a_task_shows_the_boot_timeline_of_the_node_it_booted_only() {
        use sam_core::testkit::node_agent::{FakeAgentScript, FakeNodeAgent, PlainBoot};
        let store: Arc<dyn sam_core::Store> = Arc::new(sam_store::MemoryStore::new());
        let provider = Arc::new(sam_providers::FakeProvider::new());
        let mut config = sam_core::ControlPlaneConfig::new("t", ProviderKind::Fake);
        config.poll_interval = Duration::from_millis(10);
        let cp = ControlPlane::new(
            sam_core::ControlPlaneParts {
                store: Arc::clone(&store),
                providers: vec![Arc::clone(&provider) as Arc<dyn sam_core::Provider>],
                scheduler: Arc::new(sam_core::DefaultScheduler::new(Arc::clone(&store))),
                node_agent: Arc::new(FakeNodeAgent::new(FakeAgentScript::default())),
                boot: Arc::new(PlainBoot),
                signer: sam_core::TokenSigner::new(Secret::new("k".repeat(32)), "sam").unwrap(),
                clock: Arc::new(sam_core::TokioClock::new()),
            },
            config,
        )
        .unwrap();
        let request = SubmitRequest {
            repo: "https://example.invalid/repo.git".into(),
            prompt: "p".into(),
            ..SubmitRequest::default()
        };
        let first = drive(&cp, &cp.submit(&request).await.unwrap()).await;
        let node = first.provisioned_node_id.clone().unwrap();
        // The node's ready callback carried its timeline.
        let at = |s: i64| DateTime::from_timestamp(1_765_000_000 + s, 0).unwrap();
        let timeline = vec![
            BootPhaseRecord {
                phase: "packages".into(),
                started_at: at(0),
                ended_at: Some(at(20)),
                failed: false,
            },
            BootPhaseRecord {
                phase: "agent-start".into(),
                started_at: at(20),
                ended_at: Some(at(23)),
                failed: false,
            },
        ];
        cp.node_ready(cp.issue_node_token(&node).expose(), &node, "1.0", &timeline)
            .await
            .unwrap();
        let catalog = sam_core::Provider::catalog(provider.as_ref()).clone();
        let view = TaskView::describe(&cp, &catalog, cp.get(&first.id).await.unwrap().unwrap())
            .await
            .unwrap();
        assert_eq!(view.boot_timeline, timeline);
        let summary = view.summary(None);
        assert!(
            summary.contains("boot              packages 20.0 s, agent-start 3.0 s in 23.0 s"),
            "{summary}"
        );
        // The next task reuses the warm node: its boot is not the task's.
        let second = drive(&cp, &cp.submit(&request).await.unwrap()).await;
        assert_eq!(second.provisioned_node_id.as_ref(), Some(&node));
        let view = TaskView::describe(&cp, &catalog, second).await.unwrap();
        assert!(view.node_reused);
        assert!(view.boot_timeline.is_empty());
        assert!(!view.summary(None).contains("boot  "));
        assert!(
            view.notices.is_empty(),
            "nothing to notice: {:?}",
            view.notices
        );

        // What the runner kept is in the view and the summary, after the fact.
        let notice = sam_core::TaskEventKind::Downgraded {
            requested: VmSize::Large,
            provisioned: VmSize::Medium,
        };
        let seq = store
            .append_task_event(&first.id, at(30), &notice)
            .await
            .unwrap();
        let view = TaskView::describe(&cp, &catalog, cp.get(&first.id).await.unwrap().unwrap())
            .await
            .unwrap();
        assert_eq!(view.notices.len(), 1);
        let json = serde_json::to_value(&view).unwrap();
        assert_eq!(json["notices"][0]["type"], "downgraded", "{json}");
        assert_eq!(json["notices"][0]["seq"], seq, "{json}");
        let summary = view.summary(None);
        assert!(
            summary.contains(
                "notice            05:47:10 runs on medium instead of the large asked for"
            ),
            "{summary}"
        );
    }
}
