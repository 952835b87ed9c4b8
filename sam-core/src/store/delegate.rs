//! [`delegate_store!`](crate::delegate_store): a wrapper's store methods, forwarded.

/// What [`delegate_store!`](crate::delegate_store) expands to, whatever the calling
/// crate depends on.
#[doc(hidden)]
pub mod __private {
    pub use async_trait::async_trait;
    /// What every store method returns.
    pub type Result<T> = ::core::result::Result<T, crate::error::StoreError>;
    /// A point in time, as every store method takes it.
    pub type Time = chrono::DateTime<chrono::Utc>;
}

/// Implements store traits for a wrapper by forwarding every method to the store
/// that a routing function returns, so a wrapper writes only what it adds.
///
/// `delegate_store!(impl TRAITS for TYPE => ROUTE)` implements each of `TRAITS`
/// ([`TaskStore`](crate::store::TaskStore), [`FleetStore`](crate::store::FleetStore),
/// [`AccountStore`](crate::store::AccountStore)) for `TYPE`. Each method calls
/// `ROUTE(&self, method, access)`, with the method's name and its
/// [`StoreAccess`](crate::store::StoreAccess), and forwards the call to the store it
/// returns (any type with the trait's methods: `&dyn Store`, `&dyn TaskStore`,
/// `&MemoryStore`, …). A wrapper that changes a method of one trait implements that
/// trait by hand and delegates the other two. Generic wrappers put their parameters in brackets:
/// `delegate_store!(impl [S: Store] TaskStore, FleetStore for Wrapper<S> => ...)`.
///
/// # Example
/// A store that counts the calls that may write:
/// ```
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use sam_core::store::{Store, StoreAccess, TaskStore};
///
/// #[derive(Debug)]
/// struct Counted<S> {
///     inner: S,
///     writes: AtomicU64,
/// }
///
/// impl<S: Store> Counted<S> {
///     fn route(&self, _method: &'static str, access: StoreAccess) -> &S {
///         if access == StoreAccess::Write {
///             self.writes.fetch_add(1, Ordering::Relaxed);
///         }
///         &self.inner
///     }
/// }
///
/// sam_core::delegate_store!(
///     impl [S: Store] TaskStore, FleetStore, AccountStore for Counted<S> => Self::route
/// );
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let store = Counted { inner: sam_store::MemoryStore::new(), writes: AtomicU64::new(0) };
/// let task = sam_core::testkit::fixtures::task("t-1", 1);
/// store.create_task(&task).await.unwrap();
/// assert_eq!(store.get_task(&task.id).await.unwrap(), Some(task));
/// assert_eq!(store.writes.load(Ordering::Relaxed), 1);
/// # });
/// ```
#[macro_export]
macro_rules! delegate_store {
    (impl $($store:ident),+ for $ty:ty => $route:expr) => {
        $crate::delegate_store!(@each [] [$($store),+] $ty => $route);
    };
    (impl $generics:tt $($store:ident),+ for $ty:ty => $route:expr) => {
        $crate::delegate_store!(@each $generics [$($store),+] $ty => $route);
    };
    (@each $generics:tt [$($store:ident),+] $ty:ty => $route:expr) => {
        $($crate::delegate_store!(@$store $generics $ty => $route);)+
    };
    (@TaskStore [$($generics:tt)*] $ty:ty => $route:expr) => {
        #[$crate::store::__private::async_trait]
        impl<$($generics)*> $crate::store::TaskStore for $ty {
            async fn create_task(
                &self,
                task: &$crate::TaskRecord,
            ) -> $crate::store::__private::Result<()> {
                ($route)(self, "create_task", $crate::store::StoreAccess::Write)
                    .create_task(task)
                    .await
            }
            async fn get_task(
                &self,
                id: &$crate::TaskId,
            ) -> $crate::store::__private::Result<::core::option::Option<$crate::TaskRecord>> {
                ($route)(self, "get_task", $crate::store::StoreAccess::Read)
                    .get_task(id)
                    .await
            }
            async fn list_tasks(
                &self,
                filter: &$crate::TaskFilter,
            ) -> $crate::store::__private::Result<::std::vec::Vec<$crate::TaskRecord>> {
                ($route)(self, "list_tasks", $crate::store::StoreAccess::Read)
                    .list_tasks(filter)
                    .await
            }
            async fn transition_task(
                &self,
                id: &$crate::TaskId,
                change: &$crate::Transition,
            ) -> $crate::store::__private::Result<bool> {
                ($route)(self, "transition_task", $crate::store::StoreAccess::Write)
                    .transition_task(id, change)
                    .await
            }
            async fn set_execution_step(
                &self,
                id: &$crate::TaskId,
                step: $crate::ExecutionStep,
                at: $crate::store::__private::Time,
            ) -> $crate::store::__private::Result<bool> {
                ($route)(self, "set_execution_step", $crate::store::StoreAccess::Write)
                    .set_execution_step(id, step, at)
                    .await
            }
            async fn update_task(
                &self,
                id: &$crate::TaskId,
                update: &$crate::TaskUpdate,
                at: $crate::store::__private::Time,
            ) -> $crate::store::__private::Result<()> {
                ($route)(self, "update_task", $crate::store::StoreAccess::Write)
                    .update_task(id, update, at)
                    .await
            }
            async fn claim_due_tasks(
                &self,
                request: &$crate::LeaseRequest,
            ) -> $crate::store::__private::Result<::std::vec::Vec<$crate::TaskRecord>> {
                ($route)(self, "claim_due_tasks", $crate::store::StoreAccess::Write)
                    .claim_due_tasks(request)
                    .await
            }
            async fn release_lease(
                &self,
                id: &$crate::TaskId,
                release: &$crate::LeaseRelease,
            ) -> $crate::store::__private::Result<$crate::LeaseReleased> {
                ($route)(self, "release_lease", $crate::store::StoreAccess::Write)
                    .release_lease(id, release)
                    .await
            }
            async fn write_leased(
                &self,
                lease: &$crate::Lease,
                at: $crate::store::__private::Time,
                writes: &[$crate::LeasedWrite],
            ) -> $crate::store::__private::Result<$crate::LeasedOutcome> {
                ($route)(self, "write_leased", $crate::store::StoreAccess::Write)
                    .write_leased(lease, at, writes)
                    .await
            }
            async fn append_task_event(
                &self,
                id: &$crate::TaskId,
                at: $crate::store::__private::Time,
                kind: &$crate::TaskEventKind,
            ) -> $crate::store::__private::Result<u64> {
                ($route)(self, "append_task_event", $crate::store::StoreAccess::Write)
                    .append_task_event(id, at, kind)
                    .await
            }
            async fn list_task_events(
                &self,
                id: &$crate::TaskId,
                query: &$crate::TranscriptQuery,
            ) -> $crate::store::__private::Result<::std::vec::Vec<$crate::TaskEvent>> {
                ($route)(self, "list_task_events", $crate::store::StoreAccess::Read)
                    .list_task_events(id, query)
                    .await
            }
            async fn prune_task_events(
                &self,
                ended_before: $crate::store::__private::Time,
            ) -> $crate::store::__private::Result<u64> {
                ($route)(self, "prune_task_events", $crate::store::StoreAccess::Write)
                    .prune_task_events(ended_before)
                    .await
            }
            async fn list_status_events(
                &self,
                id: &$crate::TaskId,
            ) -> $crate::store::__private::Result<::std::vec::Vec<$crate::StatusEvent>> {
                ($route)(self, "list_status_events", $crate::store::StoreAccess::Read)
                    .list_status_events(id)
                    .await
            }
        }
    };
    (@FleetStore [$($generics:tt)*] $ty:ty => $route:expr) => {
        #[$crate::store::__private::async_trait]
        impl<$($generics)*> $crate::store::FleetStore for $ty {
            async fn put_key_if_absent(
                &self,
                key: &$crate::KeyRecord,
            ) -> $crate::store::__private::Result<$crate::KeyRecord> {
                ($route)(self, "put_key_if_absent", $crate::store::StoreAccess::Write)
                    .put_key_if_absent(key)
                    .await
            }
            async fn get_key(
                &self,
                purpose: $crate::KeyPurpose,
                id: &str,
            ) -> $crate::store::__private::Result<::core::option::Option<$crate::KeyRecord>> {
                ($route)(self, "get_key", $crate::store::StoreAccess::Read)
                    .get_key(purpose, id)
                    .await
            }
            async fn list_keys(
                &self,
                purpose: $crate::KeyPurpose,
            ) -> $crate::store::__private::Result<::std::vec::Vec<$crate::KeyRecord>> {
                ($route)(self, "list_keys", $crate::store::StoreAccess::Read)
                    .list_keys(purpose)
                    .await
            }
            async fn put_node(
                &self,
                node: &$crate::NodeRecord,
            ) -> $crate::store::__private::Result<()> {
                ($route)(self, "put_node", $crate::store::StoreAccess::Write)
                    .put_node(node)
                    .await
            }
            async fn get_node(
                &self,
                id: &$crate::NodeId,
            ) -> $crate::store::__private::Result<::core::option::Option<$crate::NodeRecord>> {
                ($route)(self, "get_node", $crate::store::StoreAccess::Read)
                    .get_node(id)
                    .await
            }
            async fn list_nodes(
                &self,
                filter: &$crate::NodeFilter,
            ) -> $crate::store::__private::Result<::std::vec::Vec<$crate::NodeRecord>> {
                ($route)(self, "list_nodes", $crate::store::StoreAccess::Read)
                    .list_nodes(filter)
                    .await
            }
            async fn delete_node(
                &self,
                id: &$crate::NodeId,
            ) -> $crate::store::__private::Result<()> {
                ($route)(self, "delete_node", $crate::store::StoreAccess::Write)
                    .delete_node(id)
                    .await
            }
            async fn record_node_beat(
                &self,
                id: &$crate::NodeId,
                beat: &$crate::NodeBeat,
            ) -> $crate::store::__private::Result<()> {
                ($route)(self, "record_node_beat", $crate::store::StoreAccess::Write)
                    .record_node_beat(id, beat)
                    .await
            }
            async fn mark_node_stale(
                &self,
                id: &$crate::NodeId,
                beat_before: $crate::store::__private::Time,
                at: $crate::store::__private::Time,
            ) -> $crate::store::__private::Result<bool> {
                ($route)(self, "mark_node_stale", $crate::store::StoreAccess::Write)
                    .mark_node_stale(id, beat_before, at)
                    .await
            }
            async fn claim_warm_node(
                &self,
                claim: &$crate::WarmClaim,
            ) -> $crate::store::__private::Result<::core::option::Option<$crate::NodeRecord>> {
                ($route)(self, "claim_warm_node", $crate::store::StoreAccess::Write)
                    .claim_warm_node(claim)
                    .await
            }
            async fn release_node_to_warm(
                &self,
                id: &$crate::NodeId,
                at: $crate::store::__private::Time,
            ) -> $crate::store::__private::Result<bool> {
                ($route)(self, "release_node_to_warm", $crate::store::StoreAccess::Write)
                    .release_node_to_warm(id, at)
                    .await
            }
            async fn reserve_workspace_slot(
                &self,
                workspace: &$crate::WorkspaceRecord,
            ) -> $crate::store::__private::Result<$crate::SlotOutcome> {
                ($route)(self, "reserve_workspace_slot", $crate::store::StoreAccess::Write)
                    .reserve_workspace_slot(workspace)
                    .await
            }
            async fn list_placement_candidates(
                &self,
                provider: $crate::ProviderKind,
            ) -> $crate::store::__private::Result<::std::vec::Vec<$crate::PlacementCandidate>> {
                ($route)(self, "list_placement_candidates", $crate::store::StoreAccess::Read)
                    .list_placement_candidates(provider)
                    .await
            }
            async fn get_placement_candidate(
                &self,
                id: &$crate::NodeId,
            ) -> $crate::store::__private::Result<::core::option::Option<$crate::PlacementCandidate>> {
                ($route)(self, "get_placement_candidate", $crate::store::StoreAccess::Read)
                    .get_placement_candidate(id)
                    .await
            }
            async fn get_workspace(
                &self,
                id: &$crate::WorkspaceId,
            ) -> $crate::store::__private::Result<::core::option::Option<$crate::WorkspaceRecord>> {
                ($route)(self, "get_workspace", $crate::store::StoreAccess::Read)
                    .get_workspace(id)
                    .await
            }
            async fn list_workspaces(
                &self,
                node: &$crate::NodeId,
            ) -> $crate::store::__private::Result<::std::vec::Vec<$crate::WorkspaceRecord>> {
                ($route)(self, "list_workspaces", $crate::store::StoreAccess::Read)
                    .list_workspaces(node)
                    .await
            }
            async fn update_workspace(
                &self,
                id: &$crate::WorkspaceId,
                status: $crate::WorkspaceStatus,
                effective_profile: ::core::option::Option<::std::string::String>,
                at: $crate::store::__private::Time,
            ) -> $crate::store::__private::Result<()> {
                ($route)(self, "update_workspace", $crate::store::StoreAccess::Write)
                    .update_workspace(id, status, effective_profile, at)
                    .await
            }
        }
    };
    (@AccountStore [$($generics:tt)*] $ty:ty => $route:expr) => {
        #[$crate::store::__private::async_trait]
        impl<$($generics)*> $crate::store::AccountStore for $ty {
            async fn put_api_token(
                &self,
                token: &$crate::ApiTokenRecord,
            ) -> $crate::store::__private::Result<()> {
                ($route)(self, "put_api_token", $crate::store::StoreAccess::Write)
                    .put_api_token(token)
                    .await
            }
            async fn find_api_token(
                &self,
                hash: &str,
            ) -> $crate::store::__private::Result<::core::option::Option<$crate::ApiTokenRecord>> {
                ($route)(self, "find_api_token", $crate::store::StoreAccess::Read)
                    .find_api_token(hash)
                    .await
            }
            async fn list_api_tokens(
                &self,
            ) -> $crate::store::__private::Result<::std::vec::Vec<$crate::ApiTokenRecord>> {
                ($route)(self, "list_api_tokens", $crate::store::StoreAccess::Read)
                    .list_api_tokens()
                    .await
            }
            async fn revoke_api_token(
                &self,
                id: &str,
                at: $crate::store::__private::Time,
            ) -> $crate::store::__private::Result<bool> {
                ($route)(self, "revoke_api_token", $crate::store::StoreAccess::Write)
                    .revoke_api_token(id, at)
                    .await
            }
            async fn touch_api_token(
                &self,
                id: &str,
                at: $crate::store::__private::Time,
            ) -> $crate::store::__private::Result<()> {
                ($route)(self, "touch_api_token", $crate::store::StoreAccess::Write)
                    .touch_api_token(id, at)
                    .await
            }
            async fn rotate_bootstrap_api_token(
                &self,
                token: &$crate::ApiTokenRecord,
            ) -> $crate::store::__private::Result<()> {
                ($route)(self, "rotate_bootstrap_api_token", $crate::store::StoreAccess::Write)
                    .rotate_bootstrap_api_token(token)
                    .await
            }
            async fn put_github_installation(
                &self,
                installation: &$crate::GithubInstallation,
            ) -> $crate::store::__private::Result<()> {
                ($route)(self, "put_github_installation", $crate::store::StoreAccess::Write)
                    .put_github_installation(installation)
                    .await
            }
            async fn get_github_installation(
                &self,
                key: &$crate::InstallationKey,
            ) -> $crate::store::__private::Result<::core::option::Option<$crate::GithubInstallation>> {
                ($route)(self, "get_github_installation", $crate::store::StoreAccess::Read)
                    .get_github_installation(key)
                    .await
            }
            async fn list_github_installations(
                &self,
                user: &$crate::UserId,
            ) -> $crate::store::__private::Result<::std::vec::Vec<$crate::GithubInstallation>> {
                ($route)(self, "list_github_installations", $crate::store::StoreAccess::Read)
                    .list_github_installations(user)
                    .await
            }
            async fn delete_github_installation(
                &self,
                key: &$crate::InstallationKey,
            ) -> $crate::store::__private::Result<()> {
                ($route)(self, "delete_github_installation", $crate::store::StoreAccess::Write)
                    .delete_github_installation(key)
                    .await
            }
            async fn put_user(
                &self,
                user: &$crate::UserRecord,
            ) -> $crate::store::__private::Result<()> {
                ($route)(self, "put_user", $crate::store::StoreAccess::Write)
                    .put_user(user)
                    .await
            }
            async fn get_user(
                &self,
                id: &$crate::UserId,
            ) -> $crate::store::__private::Result<::core::option::Option<$crate::UserRecord>> {
                ($route)(self, "get_user", $crate::store::StoreAccess::Read)
                    .get_user(id)
                    .await
            }
            async fn set_setup_choices(
                &self,
                user: &$crate::UserId,
                choices: $crate::SetupChoices,
            ) -> $crate::store::__private::Result<()> {
                ($route)(self, "set_setup_choices", $crate::store::StoreAccess::Write)
                    .set_setup_choices(user, choices)
                    .await
            }
            async fn setup_choices(
                &self,
                user: &$crate::UserId,
            ) -> $crate::store::__private::Result<::core::option::Option<$crate::SetupChoices>> {
                ($route)(self, "setup_choices", $crate::store::StoreAccess::Read)
                    .setup_choices(user)
                    .await
            }
            async fn put_project(
                &self,
                project: &$crate::ProjectRecord,
            ) -> $crate::store::__private::Result<()> {
                ($route)(self, "put_project", $crate::store::StoreAccess::Write)
                    .put_project(project)
                    .await
            }
            async fn get_project(
                &self,
                id: &$crate::ProjectId,
            ) -> $crate::store::__private::Result<::core::option::Option<$crate::ProjectRecord>> {
                ($route)(self, "get_project", $crate::store::StoreAccess::Read)
                    .get_project(id)
                    .await
            }
            async fn list_projects(
                &self,
            ) -> $crate::store::__private::Result<::std::vec::Vec<$crate::ProjectRecord>> {
                ($route)(self, "list_projects", $crate::store::StoreAccess::Read)
                    .list_projects()
                    .await
            }
            async fn delete_project(
                &self,
                id: &$crate::ProjectId,
            ) -> $crate::store::__private::Result<()> {
                ($route)(self, "delete_project", $crate::store::StoreAccess::Write)
                    .delete_project(id)
                    .await
            }
            async fn put_profile(
                &self,
                profile: &$crate::AgentProfileRecord,
            ) -> $crate::store::__private::Result<()> {
                ($route)(self, "put_profile", $crate::store::StoreAccess::Write)
                    .put_profile(profile)
                    .await
            }
            async fn get_profile(
                &self,
                id: &$crate::ProfileId,
            ) -> $crate::store::__private::Result<::core::option::Option<$crate::AgentProfileRecord>> {
                ($route)(self, "get_profile", $crate::store::StoreAccess::Read)
                    .get_profile(id)
                    .await
            }
            async fn list_profiles(
                &self,
                project: &$crate::ProjectId,
            ) -> $crate::store::__private::Result<::std::vec::Vec<$crate::AgentProfileRecord>> {
                ($route)(self, "list_profiles", $crate::store::StoreAccess::Read)
                    .list_profiles(project)
                    .await
            }
            async fn delete_profile(
                &self,
                id: &$crate::ProfileId,
            ) -> $crate::store::__private::Result<()> {
                ($route)(self, "delete_profile", $crate::store::StoreAccess::Write)
                    .delete_profile(id)
                    .await
            }
            async fn put_credential(
                &self,
                credential: &$crate::CredentialRecord,
            ) -> $crate::store::__private::Result<()> {
                ($route)(self, "put_credential", $crate::store::StoreAccess::Write)
                    .put_credential(credential)
                    .await
            }
            async fn list_credentials(
                &self,
                owner: &$crate::CredentialOwner,
            ) -> $crate::store::__private::Result<::std::vec::Vec<$crate::CredentialRecord>> {
                ($route)(self, "list_credentials", $crate::store::StoreAccess::Read)
                    .list_credentials(owner)
                    .await
            }
            async fn delete_credential(
                &self,
                owner: &$crate::CredentialOwner,
                target: &$crate::CredentialTarget,
            ) -> $crate::store::__private::Result<()> {
                ($route)(self, "delete_credential", $crate::store::StoreAccess::Write)
                    .delete_credential(owner, target)
                    .await
            }
        }
    };
}
