//! [`AccountStore`]: users, projects, agent profiles, credentials, API tokens and
//! GitHub installation links.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::api_token::ApiTokenRecord;
use crate::credential::{CredentialOwner, CredentialRecord, CredentialTarget, SetupChoices};
use crate::error::StoreError;
use crate::github::{GithubInstallation, InstallationKey};
use crate::model::{ProfileId, ProjectId, UserId};
use crate::project::{AgentProfileRecord, ProjectRecord, UserRecord};
#[cfg(doc)]
use crate::store::Store;

/// The durable state of who uses the control plane: users, their projects and
/// agent profiles, the credentials they keep, the API tokens they call with, and
/// the GitHub installations they linked.
///
/// # Contract
/// Every backend guarantees, besides the clauses every [`Store`] keeps:
/// - **GitHub installation links are per user**: `put_github_installation` writes or
///   replaces the link under its [`InstallationKey`] (`<user id>:<external id>`), so
///   two users linking one installation have two rows with the same external id;
///   `list_github_installations` returns a user's links ordered by
///   `(created_at, key)`, and only theirs; `delete_github_installation` removes one
///   link and leaves the other users' links to the same installation.
/// - **Users, projects and profiles are upserted by id** (`put_*`); projects are
///   listed by `(created_at, id)`, a project's profiles by `(created_at, id)`.
///   A profile's name is unique within its project: putting a profile whose name
///   another profile of the project holds is `AlreadyExists`. A profile of a missing
///   project is `NotFound`. Deleting a project deletes its profiles and credentials.
///   Nothing is created implicitly: a new project has no profiles, and deleting
///   every profile leaves none.
/// - **API tokens are records**: `put_api_token` inserts (`AlreadyExists` for a taken
///   id or hash); `find_api_token` finds revoked and expired tokens too;
///   `list_api_tokens` is ordered by `(created_at, id)`; `revoke_api_token` sets the
///   revocation time once; `touch_api_token` changes the last use only;
///   `rotate_bootstrap_api_token` leaves exactly one unrevoked bootstrap token, in
///   one transaction.
/// - **Setup choices belong to a user and are written apart from it**:
///   `set_setup_choices` replaces a stored user's choices (`NotFound` for an unknown
///   user) and changes nothing else of the user; `put_user` never changes them, so
///   a user's name and settings and their choices can change at once without one
///   undoing the other. A user who never chose has [`SetupChoices::default`];
///   `setup_choices` of an unknown user is `None`.
/// - **Credentials are upserted by `(owner, target)`** and listed per owner ordered
///   by target; the store keeps them sealed and never opens them.
#[async_trait]
pub trait AccountStore: Send + Sync + std::fmt::Debug {
    /// Stores an API token's hash.
    ///
    /// # Errors
    /// `AlreadyExists` for a taken id or hash.
    async fn put_api_token(&self, token: &ApiTokenRecord) -> Result<(), StoreError>;

    /// Finds an API token by its hash, revoked and expired ones included (the
    /// caller decides with [`ApiTokenRecord::check`]).
    ///
    /// # Errors
    /// Backend failures.
    async fn find_api_token(&self, hash: &str) -> Result<Option<ApiTokenRecord>, StoreError>;

    /// Every API token, revoked ones included, ordered by `(created_at, id)`.
    ///
    /// # Errors
    /// Backend or decoding failures.
    async fn list_api_tokens(&self) -> Result<Vec<ApiTokenRecord>, StoreError>;

    /// Revokes the API token `id` at `at`; `Ok(false)` when it was revoked already
    /// (its revocation time stays the first one).
    ///
    /// # Errors
    /// `NotFound` for an unknown id.
    async fn revoke_api_token(&self, id: &str, at: DateTime<Utc>) -> Result<bool, StoreError>;

    /// Records that the API token `id` was used at `at` (its `last_used_at` only).
    ///
    /// # Errors
    /// `NotFound` for an unknown id.
    async fn touch_api_token(&self, id: &str, at: DateTime<Utc>) -> Result<(), StoreError>;

    /// Makes `token` the one live bootstrap token, atomically: every other
    /// unrevoked bootstrap token is revoked at `token.created_at`; a row with
    /// `token`'s hash becomes a live bootstrap token (keeping its id, creation and
    /// last use); otherwise `token` is written.
    ///
    /// # Errors
    /// `AlreadyExists` when `token`'s id is taken by a row of another hash.
    async fn rotate_bootstrap_api_token(&self, token: &ApiTokenRecord) -> Result<(), StoreError>;

    /// Writes one user's link to a GitHub App installation, replacing the row with
    /// the same key.
    ///
    /// # Errors
    /// Backend failures.
    async fn put_github_installation(
        &self,
        installation: &GithubInstallation,
    ) -> Result<(), StoreError>;

    /// Reads a link by its storage key.
    ///
    /// # Errors
    /// Backend or decoding failures.
    async fn get_github_installation(
        &self,
        key: &InstallationKey,
    ) -> Result<Option<GithubInstallation>, StoreError>;

    /// The links of one user, ordered by `(created_at, key)`.
    ///
    /// # Errors
    /// Backend or decoding failures.
    async fn list_github_installations(
        &self,
        user: &UserId,
    ) -> Result<Vec<GithubInstallation>, StoreError>;

    /// Deletes one user's link to an installation; succeeds when it is gone.
    ///
    /// # Errors
    /// Backend failures.
    async fn delete_github_installation(&self, key: &InstallationKey) -> Result<(), StoreError>;

    /// Writes a user, replacing any user with the same id.
    ///
    /// # Errors
    /// Backend failures.
    async fn put_user(&self, user: &UserRecord) -> Result<(), StoreError>;

    /// Reads a user.
    ///
    /// # Errors
    /// Backend or decoding failures.
    async fn get_user(&self, id: &UserId) -> Result<Option<UserRecord>, StoreError>;

    /// Replaces the platform resources `user` chose for their setup, leaving the
    /// rest of the user as it is.
    ///
    /// # Errors
    /// `NotFound` for an unknown user; backend failures.
    async fn set_setup_choices(
        &self,
        user: &UserId,
        choices: SetupChoices,
    ) -> Result<(), StoreError>;

    /// The platform resources `user` chose for their setup (the default when they
    /// never chose); `None` for an unknown user.
    ///
    /// # Errors
    /// Backend failures.
    async fn setup_choices(&self, user: &UserId) -> Result<Option<SetupChoices>, StoreError>;

    /// Writes a project, replacing any project with the same id.
    ///
    /// # Errors
    /// Backend failures.
    async fn put_project(&self, project: &ProjectRecord) -> Result<(), StoreError>;

    /// Reads a project.
    ///
    /// # Errors
    /// Backend or decoding failures.
    async fn get_project(&self, id: &ProjectId) -> Result<Option<ProjectRecord>, StoreError>;

    /// Lists every project, ordered by `(created_at, id)`.
    ///
    /// # Errors
    /// Backend or decoding failures.
    async fn list_projects(&self) -> Result<Vec<ProjectRecord>, StoreError>;

    /// Deletes a project with its profiles and credentials; succeeds when it is gone.
    ///
    /// # Errors
    /// Backend failures.
    async fn delete_project(&self, id: &ProjectId) -> Result<(), StoreError>;

    /// Writes an agent profile, replacing any profile with the same id.
    ///
    /// # Errors
    /// `NotFound` when its project does not exist; `AlreadyExists` when another
    /// profile of the project has its name.
    async fn put_profile(&self, profile: &AgentProfileRecord) -> Result<(), StoreError>;

    /// Reads an agent profile.
    ///
    /// # Errors
    /// Backend or decoding failures.
    async fn get_profile(&self, id: &ProfileId) -> Result<Option<AgentProfileRecord>, StoreError>;

    /// Lists a project's profiles, ordered by `(created_at, id)`.
    ///
    /// # Errors
    /// Backend or decoding failures.
    async fn list_profiles(
        &self,
        project: &ProjectId,
    ) -> Result<Vec<AgentProfileRecord>, StoreError>;

    /// Deletes an agent profile; succeeds when it is gone.
    ///
    /// # Errors
    /// Backend failures.
    async fn delete_profile(&self, id: &ProfileId) -> Result<(), StoreError>;

    /// Writes a credential, replacing the owner's credential for the same target.
    ///
    /// # Errors
    /// Backend failures.
    async fn put_credential(&self, credential: &CredentialRecord) -> Result<(), StoreError>;

    /// Lists an owner's credentials, ordered by target.
    ///
    /// # Errors
    /// Backend or decoding failures.
    async fn list_credentials(
        &self,
        owner: &CredentialOwner,
    ) -> Result<Vec<CredentialRecord>, StoreError>;

    /// Deletes an owner's credential for a target; succeeds when it is gone.
    ///
    /// # Errors
    /// Backend failures.
    async fn delete_credential(
        &self,
        owner: &CredentialOwner,
        target: &CredentialTarget,
    ) -> Result<(), StoreError>;
}
