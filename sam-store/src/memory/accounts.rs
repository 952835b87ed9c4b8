//! [`AccountStore`] for [`MemoryStore`]: API tokens, GitHub installation links,
//! users, projects, profiles and credentials.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sam_core::{
    AccountStore, AgentProfileRecord, ApiTokenKind, ApiTokenRecord, CredentialOwner,
    CredentialRecord, CredentialTarget, GithubInstallation, InstallationKey, ProfileId, ProjectId,
    ProjectRecord, SetupChoices, StoreError, UserId, UserRecord,
};

use super::{MemoryStore, by_creation};
use crate::error::Error;

#[async_trait]
impl AccountStore for MemoryStore {
    async fn put_api_token(&self, token: &ApiTokenRecord) -> Result<(), StoreError> {
        let mut state = self.state();
        if state.tokens.contains_key(&token.id)
            || state.tokens.values().any(|t| t.hash == token.hash)
        {
            return Err(Error::already_exists(format!("API token {}", token.id)).into());
        }
        state.tokens.insert(token.id.clone(), token.clone());
        Ok(())
    }

    async fn find_api_token(&self, hash: &str) -> Result<Option<ApiTokenRecord>, StoreError> {
        Ok(self
            .state()
            .tokens
            .values()
            .find(|t| t.hash == hash)
            .cloned())
    }

    async fn list_api_tokens(&self) -> Result<Vec<ApiTokenRecord>, StoreError> {
        let mut tokens: Vec<ApiTokenRecord> = self.state().tokens.values().cloned().collect();
        tokens.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(tokens)
    }

    async fn revoke_api_token(&self, id: &str, at: DateTime<Utc>) -> Result<bool, StoreError> {
        let mut state = self.state();
        let token = state
            .tokens
            .get_mut(id)
            .ok_or_else(|| Error::not_found(format!("API token {id}")))?;
        if token.revoked_at.is_some() {
            return Ok(false);
        }
        token.revoked_at = Some(at);
        Ok(true)
    }

    async fn touch_api_token(&self, id: &str, at: DateTime<Utc>) -> Result<(), StoreError> {
        let mut state = self.state();
        let token = state
            .tokens
            .get_mut(id)
            .ok_or_else(|| Error::not_found(format!("API token {id}")))?;
        token.last_used_at = Some(at);
        Ok(())
    }

    async fn rotate_bootstrap_api_token(&self, token: &ApiTokenRecord) -> Result<(), StoreError> {
        let mut state = self.state();
        if state
            .tokens
            .get(&token.id)
            .is_some_and(|t| t.hash != token.hash)
        {
            return Err(Error::already_exists(format!("API token {}", token.id)).into());
        }
        for other in state.tokens.values_mut() {
            if other.hash == token.hash {
                other.kind = ApiTokenKind::Bootstrap;
                other.revoked_at = None;
            } else if other.kind == ApiTokenKind::Bootstrap && other.revoked_at.is_none() {
                other.revoked_at = Some(token.created_at);
            }
        }
        if !state.tokens.values().any(|t| t.hash == token.hash) {
            let mut fresh = token.clone();
            fresh.kind = ApiTokenKind::Bootstrap;
            state.tokens.insert(fresh.id.clone(), fresh);
        }
        Ok(())
    }

    async fn put_github_installation(
        &self,
        installation: &GithubInstallation,
    ) -> Result<(), StoreError> {
        self.state()
            .installations
            .insert(installation.key(), installation.clone());
        Ok(())
    }

    async fn get_github_installation(
        &self,
        key: &InstallationKey,
    ) -> Result<Option<GithubInstallation>, StoreError> {
        Ok(self.state().installations.get(key).cloned())
    }

    async fn list_github_installations(
        &self,
        user: &UserId,
    ) -> Result<Vec<GithubInstallation>, StoreError> {
        let mut links: Vec<GithubInstallation> = self
            .state()
            .installations
            .values()
            .filter(|i| &i.user_id == user)
            .cloned()
            .collect();
        links.sort_by_cached_key(|i| (i.created_at, i.key().to_string()));
        Ok(links)
    }

    async fn delete_github_installation(&self, key: &InstallationKey) -> Result<(), StoreError> {
        self.state().installations.remove(key);
        Ok(())
    }

    async fn put_user(&self, user: &UserRecord) -> Result<(), StoreError> {
        self.state().users.insert(user.id.clone(), user.clone());
        Ok(())
    }

    async fn get_user(&self, id: &UserId) -> Result<Option<UserRecord>, StoreError> {
        Ok(self.state().users.get(id).cloned())
    }

    async fn set_setup_choices(
        &self,
        user: &UserId,
        choices: SetupChoices,
    ) -> Result<(), StoreError> {
        let mut state = self.state();
        if !state.users.contains_key(user) {
            return Err(Error::not_found(format!("user {user}")).into());
        }
        state.setup_choices.insert(user.clone(), choices);
        Ok(())
    }

    async fn setup_choices(&self, user: &UserId) -> Result<Option<SetupChoices>, StoreError> {
        let state = self.state();
        Ok(state
            .users
            .contains_key(user)
            .then(|| state.setup_choices.get(user).copied().unwrap_or_default()))
    }

    async fn put_project(&self, project: &ProjectRecord) -> Result<(), StoreError> {
        self.state()
            .projects
            .insert(project.id.clone(), project.clone());
        Ok(())
    }

    async fn get_project(&self, id: &ProjectId) -> Result<Option<ProjectRecord>, StoreError> {
        Ok(self.state().projects.get(id).cloned())
    }

    async fn list_projects(&self) -> Result<Vec<ProjectRecord>, StoreError> {
        let mut list: Vec<ProjectRecord> = self.state().projects.values().cloned().collect();
        by_creation(&mut list, |p| (p.created_at, p.id.as_str()));
        Ok(list)
    }

    async fn delete_project(&self, id: &ProjectId) -> Result<(), StoreError> {
        let mut state = self.state();
        state.projects.remove(id);
        state.profiles.retain(|_, p| &p.project_id != id);
        state
            .credentials
            .retain(|(owner, _), _| owner != &CredentialOwner::Project(id.clone()));
        Ok(())
    }

    async fn put_profile(&self, profile: &AgentProfileRecord) -> Result<(), StoreError> {
        let mut state = self.state();
        if !state.projects.contains_key(&profile.project_id) {
            return Err(Error::not_found(format!("project {}", profile.project_id)).into());
        }
        if state.profiles.values().any(|p| {
            p.project_id == profile.project_id && p.name == profile.name && p.id != profile.id
        }) {
            return Err(Error::already_exists(format!(
                "agent profile {:?} of project {}",
                profile.name, profile.project_id
            ))
            .into());
        }
        state.profiles.insert(profile.id.clone(), profile.clone());
        Ok(())
    }

    async fn get_profile(&self, id: &ProfileId) -> Result<Option<AgentProfileRecord>, StoreError> {
        Ok(self.state().profiles.get(id).cloned())
    }

    async fn list_profiles(
        &self,
        project: &ProjectId,
    ) -> Result<Vec<AgentProfileRecord>, StoreError> {
        let mut list: Vec<AgentProfileRecord> = self
            .state()
            .profiles
            .values()
            .filter(|p| &p.project_id == project)
            .cloned()
            .collect();
        by_creation(&mut list, |p| (p.created_at, p.id.as_str()));
        Ok(list)
    }

    async fn delete_profile(&self, id: &ProfileId) -> Result<(), StoreError> {
        self.state().profiles.remove(id);
        Ok(())
    }

    async fn put_credential(&self, credential: &CredentialRecord) -> Result<(), StoreError> {
        self.state().credentials.insert(
            (credential.owner.clone(), credential.target.clone()),
            credential.clone(),
        );
        Ok(())
    }

    async fn list_credentials(
        &self,
        owner: &CredentialOwner,
    ) -> Result<Vec<CredentialRecord>, StoreError> {
        let mut list: Vec<CredentialRecord> = self
            .state()
            .credentials
            .values()
            .filter(|c| &c.owner == owner)
            .cloned()
            .collect();
        list.sort_by_key(|c| c.target.to_string());
        Ok(list)
    }

    async fn delete_credential(
        &self,
        owner: &CredentialOwner,
        target: &CredentialTarget,
    ) -> Result<(), StoreError> {
        self.state()
            .credentials
            .remove(&(owner.clone(), target.clone()));
        Ok(())
    }
}
