//! [`MockStore`]: a `mockall` mock of every [`Store`](super::Store) method.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{AccountStore, FleetStore, TaskStore};
use crate::api_token::ApiTokenRecord;
use crate::credential::{CredentialOwner, CredentialRecord, CredentialTarget, SetupChoices};
use crate::error::StoreError;
use crate::github::{GithubInstallation, InstallationKey};
use crate::model::{
    ExecutionStep, NodeId, ProfileId, ProjectId, ProviderKind, TaskId, UserId, WorkspaceId,
};
use crate::project::{AgentProfileRecord, ProjectRecord, UserRecord};
use crate::record::{
    KeyPurpose, KeyRecord, Lease, LeaseRelease, LeaseReleased, LeaseRequest, LeasedOutcome,
    LeasedWrite, NodeBeat, NodeFilter, NodeRecord, PlacementCandidate, SlotOutcome, StatusEvent,
    TaskEvent, TaskEventKind, TaskFilter, TaskRecord, TaskUpdate, TranscriptQuery, Transition,
    WarmClaim, WorkspaceRecord, WorkspaceStatus,
};

mockall::mock! {
    /// A mock [`Store`](super::Store), with an expectation per method of the three traits.
    pub Store {}
    #[async_trait]
    impl TaskStore for Store {
        async fn create_task(&self, task: &TaskRecord) -> Result<(), StoreError>;
        async fn get_task(&self, id: &TaskId) -> Result<Option<TaskRecord>, StoreError>;
        async fn list_tasks(&self, filter: &TaskFilter) -> Result<Vec<TaskRecord>, StoreError>;
        async fn transition_task(
            &self,
            id: &TaskId,
            change: &Transition,
        ) -> Result<bool, StoreError>;
        async fn set_execution_step(
            &self,
            id: &TaskId,
            step: ExecutionStep,
            at: DateTime<Utc>,
        ) -> Result<bool, StoreError>;
        async fn update_task(
            &self,
            id: &TaskId,
            update: &TaskUpdate,
            at: DateTime<Utc>,
        ) -> Result<(), StoreError>;
        async fn claim_due_tasks(
            &self,
            request: &LeaseRequest,
        ) -> Result<Vec<TaskRecord>, StoreError>;
        async fn release_lease(
            &self,
            id: &TaskId,
            release: &LeaseRelease,
        ) -> Result<LeaseReleased, StoreError>;
        async fn write_leased(
            &self,
            lease: &Lease,
            at: DateTime<Utc>,
            writes: &[LeasedWrite],
        ) -> Result<LeasedOutcome, StoreError>;
        async fn append_task_event(
            &self,
            id: &TaskId,
            at: DateTime<Utc>,
            kind: &TaskEventKind,
        ) -> Result<u64, StoreError>;
        async fn list_task_events(
            &self,
            id: &TaskId,
            query: &TranscriptQuery,
        ) -> Result<Vec<TaskEvent>, StoreError>;
        async fn prune_task_events(&self, ended_before: DateTime<Utc>) -> Result<u64, StoreError>;
        async fn list_status_events(&self, id: &TaskId) -> Result<Vec<StatusEvent>, StoreError>;
    }
    #[async_trait]
    impl FleetStore for Store {
        async fn put_key_if_absent(&self, key: &KeyRecord) -> Result<KeyRecord, StoreError>;
        async fn get_key(
            &self,
            purpose: KeyPurpose,
            id: &str,
        ) -> Result<Option<KeyRecord>, StoreError>;
        async fn list_keys(&self, purpose: KeyPurpose) -> Result<Vec<KeyRecord>, StoreError>;
        async fn put_node(&self, node: &NodeRecord) -> Result<(), StoreError>;
        async fn get_node(&self, id: &NodeId) -> Result<Option<NodeRecord>, StoreError>;
        async fn list_nodes(&self, filter: &NodeFilter) -> Result<Vec<NodeRecord>, StoreError>;
        async fn delete_node(&self, id: &NodeId) -> Result<(), StoreError>;
        async fn record_node_beat(&self, id: &NodeId, beat: &NodeBeat) -> Result<(), StoreError>;
        async fn mark_node_stale(
            &self,
            id: &NodeId,
            beat_before: DateTime<Utc>,
            at: DateTime<Utc>,
        ) -> Result<bool, StoreError>;
        async fn claim_warm_node(
            &self,
            claim: &WarmClaim,
        ) -> Result<Option<NodeRecord>, StoreError>;
        async fn release_node_to_warm(
            &self,
            id: &NodeId,
            at: DateTime<Utc>,
        ) -> Result<bool, StoreError>;
        async fn reserve_workspace_slot(
            &self,
            workspace: &WorkspaceRecord,
        ) -> Result<SlotOutcome, StoreError>;
        async fn list_placement_candidates(
            &self,
            provider: ProviderKind,
        ) -> Result<Vec<PlacementCandidate>, StoreError>;
        async fn get_placement_candidate(
            &self,
            id: &NodeId,
        ) -> Result<Option<PlacementCandidate>, StoreError>;
        async fn get_workspace(
            &self,
            id: &WorkspaceId,
        ) -> Result<Option<WorkspaceRecord>, StoreError>;
        async fn list_workspaces(&self, node: &NodeId) -> Result<Vec<WorkspaceRecord>, StoreError>;
        async fn update_workspace(
            &self,
            id: &WorkspaceId,
            status: WorkspaceStatus,
            effective_profile: Option<String>,
            at: DateTime<Utc>,
        ) -> Result<(), StoreError>;
    }
    #[async_trait]
    impl AccountStore for Store {
        async fn put_api_token(&self, token: &ApiTokenRecord) -> Result<(), StoreError>;
        async fn find_api_token(&self, hash: &str) -> Result<Option<ApiTokenRecord>, StoreError>;
        async fn list_api_tokens(&self) -> Result<Vec<ApiTokenRecord>, StoreError>;
        async fn revoke_api_token(&self, id: &str, at: DateTime<Utc>) -> Result<bool, StoreError>;
        async fn touch_api_token(&self, id: &str, at: DateTime<Utc>) -> Result<(), StoreError>;
        async fn rotate_bootstrap_api_token(
            &self,
            token: &ApiTokenRecord,
        ) -> Result<(), StoreError>;
        async fn put_github_installation(
            &self,
            installation: &GithubInstallation,
        ) -> Result<(), StoreError>;
        async fn get_github_installation(
            &self,
            key: &InstallationKey,
        ) -> Result<Option<GithubInstallation>, StoreError>;
        async fn list_github_installations(
            &self,
            user: &UserId,
        ) -> Result<Vec<GithubInstallation>, StoreError>;
        async fn delete_github_installation(&self, key: &InstallationKey) -> Result<(), StoreError>;
        async fn put_user(&self, user: &UserRecord) -> Result<(), StoreError>;
        async fn get_user(&self, id: &UserId) -> Result<Option<UserRecord>, StoreError>;
        async fn set_setup_choices(
            &self,
            user: &UserId,
            choices: SetupChoices,
        ) -> Result<(), StoreError>;
        async fn setup_choices(&self, user: &UserId) -> Result<Option<SetupChoices>, StoreError>;
        async fn put_project(&self, project: &ProjectRecord) -> Result<(), StoreError>;
        async fn get_project(&self, id: &ProjectId) -> Result<Option<ProjectRecord>, StoreError>;
        async fn list_projects(&self) -> Result<Vec<ProjectRecord>, StoreError>;
        async fn delete_project(&self, id: &ProjectId) -> Result<(), StoreError>;
        async fn put_profile(&self, profile: &AgentProfileRecord) -> Result<(), StoreError>;
        async fn get_profile(
            &self,
            id: &ProfileId,
        ) -> Result<Option<AgentProfileRecord>, StoreError>;
        async fn list_profiles(
            &self,
            project: &ProjectId,
        ) -> Result<Vec<AgentProfileRecord>, StoreError>;
        async fn delete_profile(&self, id: &ProfileId) -> Result<(), StoreError>;
        async fn put_credential(&self, credential: &CredentialRecord) -> Result<(), StoreError>;
        async fn list_credentials(
            &self,
            owner: &CredentialOwner,
        ) -> Result<Vec<CredentialRecord>, StoreError>;
        async fn delete_credential(
            &self,
            owner: &CredentialOwner,
            target: &CredentialTarget,
        ) -> Result<(), StoreError>;
    }
}

impl std::fmt::Debug for MockStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockStore").finish_non_exhaustive()
    }
}
