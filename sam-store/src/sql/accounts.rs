//! [`AccountStore`] for [`SqlStore`]: the SQL of API tokens, GitHub installation
//! links, users, projects, profiles and credentials.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sam_core::{
    AccountStore, AgentProfileRecord, ApiTokenRecord, CredentialOwner, CredentialRecord,
    CredentialTarget, GithubInstallation, InstallationKey, ProfileId, ProjectId, ProjectRecord,
    SetupChoices, StoreError, UserId, UserRecord,
};
use sqlx::any::Any;

use super::rows::{self, json, micros, opt_micros};
use super::{Dialect, SqlStore, query};
use crate::error::Error;

const INSTALLATION_COLUMNS: &str = "id, user_id, external_id, account, created_at";

/// The columns of an `api_tokens` row, as [`rows::api_token`] reads them.
const TOKEN_COLUMNS: &str =
    "id, hash, label, kind, created_at, last_used_at, expires_at, revoked_at";

impl<D: Dialect> SqlStore<D> {
    async fn try_put_token(&self, token: &ApiTokenRecord) -> Result<(), Error> {
        let result = Self::insert_token(&self.writer, token).await;
        match result {
            Err(e) if e.kind() == sam_core::StoreErrorKind::AlreadyExists => Err(
                Error::already_exists(format!("API token {} (or its hash)", token.id)),
            ),
            other => other,
        }
    }

    /// Inserts an `api_tokens` row through `executor` (a transaction, or a pool).
    async fn insert_token<'e>(
        executor: impl sqlx::Executor<'e, Database = Any>,
        token: &ApiTokenRecord,
    ) -> Result<(), Error> {
        query(
            "INSERT INTO api_tokens (id, hash, label, kind, created_at, last_used_at, \
             expires_at, revoked_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(token.id.clone())
        .bind(token.hash.clone())
        .bind(token.label.clone())
        .bind(token.kind.as_str().to_owned())
        .bind(micros(token.created_at))
        .bind(opt_micros(token.last_used_at))
        .bind(opt_micros(token.expires_at))
        .bind(opt_micros(token.revoked_at))
        .execute(executor)
        .await
        .map_err(Self::db("storing an API token"))?;
        Ok(())
    }

    async fn try_rotate_bootstrap(&self, token: &ApiTokenRecord) -> Result<(), Error> {
        let context = "rotating the bootstrap API token";
        let mut tx = self.begin(context).await?;
        let taken = query("SELECT 1 AS found FROM api_tokens WHERE id = $1 AND hash <> $2")
            .bind(token.id.clone())
            .bind(token.hash.clone())
            .fetch_optional(&mut *tx)
            .await
            .map_err(Self::db(context))?;
        if taken.is_some() {
            return Err(Error::already_exists(format!("API token {}", token.id)));
        }
        query(
            "UPDATE api_tokens SET revoked_at = $1 \
             WHERE kind = 'bootstrap' AND revoked_at IS NULL AND hash <> $2",
        )
        .bind(micros(token.created_at))
        .bind(token.hash.clone())
        .execute(&mut *tx)
        .await
        .map_err(Self::db(context))?;
        let kept =
            query("UPDATE api_tokens SET kind = 'bootstrap', revoked_at = NULL WHERE hash = $1")
                .bind(token.hash.clone())
                .execute(&mut *tx)
                .await
                .map_err(Self::db(context))?;
        if kept.rows_affected() == 0 {
            let fresh = ApiTokenRecord {
                kind: sam_core::ApiTokenKind::Bootstrap,
                ..token.clone()
            };
            Self::insert_token(&mut *tx, &fresh).await?;
        }
        Self::commit(tx, context).await
    }

    /// Upserts a row of one of the JSON-bodied tables: `columns` are the key columns
    /// (the first is the conflict target's first column), `body` goes last.
    async fn upsert(
        &self,
        table: &str,
        conflict: &str,
        columns: &[(&str, String)],
        extra: Option<(&str, i64)>,
        body: String,
        context: &str,
    ) -> Result<(), Error> {
        let mut names: Vec<&str> = columns.iter().map(|(c, _)| *c).collect();
        if let Some((c, _)) = extra {
            names.push(c);
        }
        names.push("body");
        let placeholders: Vec<String> = (1..=names.len()).map(|i| format!("${i}")).collect();
        let updates: Vec<String> = names
            .iter()
            .filter(|c| !conflict.split(", ").any(|k| k == **c))
            .map(|c| format!("{c} = excluded.{c}"))
            .collect();
        let mut q = query(format!(
            "INSERT INTO {table} ({}) VALUES ({}) ON CONFLICT ({conflict}) DO UPDATE SET {}",
            names.join(", "),
            placeholders.join(", "),
            updates.join(", ")
        ));
        for (_, value) in columns {
            q = q.bind(value.clone());
        }
        if let Some((_, value)) = extra {
            q = q.bind(value);
        }
        q.bind(body)
            .execute(&self.writer)
            .await
            .map_err(Self::db(context))?;
        Ok(())
    }

    async fn try_put_profile(&self, profile: &AgentProfileRecord) -> Result<(), Error> {
        let context = "writing an agent profile";
        let mut tx = self.begin(context).await?;
        if !Self::exists(&mut *tx, "projects", profile.project_id.as_str()).await? {
            return Err(Error::not_found(format!("project {}", profile.project_id)));
        }
        let taken = query("SELECT 1 AS found FROM agent_profiles WHERE project_id = $1 AND name = $2 AND id <> $3")
            .bind(profile.project_id.to_string())
            .bind(profile.name.clone())
            .bind(profile.id.to_string())
            .fetch_optional(&mut *tx)
            .await
            .map_err(Self::db(context))?;
        if taken.is_some() {
            return Err(Error::already_exists(format!(
                "agent profile {:?} of project {}",
                profile.name, profile.project_id
            )));
        }
        query(
            "INSERT INTO agent_profiles (id, project_id, name, created_at, body) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO UPDATE SET \
             project_id = excluded.project_id, name = excluded.name, \
             created_at = excluded.created_at, body = excluded.body",
        )
        .bind(profile.id.to_string())
        .bind(profile.project_id.to_string())
        .bind(profile.name.clone())
        .bind(micros(profile.created_at))
        .bind(json(profile))
        .execute(&mut *tx)
        .await
        .map_err(Self::db(context))?;
        Self::commit(tx, context).await
    }

    async fn try_delete_project(&self, id: &ProjectId) -> Result<(), Error> {
        let context = "deleting a project";
        let mut tx = self.begin(context).await?;
        let owner = CredentialOwner::Project(id.clone()).to_string();
        for (sql, key) in [
            ("DELETE FROM credentials WHERE owner = $1", owner),
            (
                "DELETE FROM agent_profiles WHERE project_id = $1",
                id.to_string(),
            ),
            ("DELETE FROM projects WHERE id = $1", id.to_string()),
        ] {
            query(sql)
                .bind(key)
                .execute(&mut *tx)
                .await
                .map_err(Self::db(context))?;
        }
        Self::commit(tx, context).await
    }

    async fn delete_where(&self, sql: &str, keys: &[String], context: &str) -> Result<(), Error> {
        let mut q = query(sql.to_owned());
        for key in keys {
            q = q.bind(key.clone());
        }
        q.execute(&self.writer).await.map_err(Self::db(context))?;
        Ok(())
    }
}

#[async_trait]
impl<D: Dialect> AccountStore for SqlStore<D> {
    async fn put_api_token(&self, token: &ApiTokenRecord) -> Result<(), StoreError> {
        Ok(self.try_put_token(token).await?)
    }

    async fn find_api_token(&self, hash: &str) -> Result<Option<ApiTokenRecord>, StoreError> {
        let q = query(format!(
            "SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE hash = $1"
        ))
        .bind(hash.to_owned());
        Ok(self
            .fetch_optional(q, rows::api_token, "finding an API token")
            .await?)
    }

    async fn list_api_tokens(&self) -> Result<Vec<ApiTokenRecord>, StoreError> {
        let q = query(format!(
            "SELECT {TOKEN_COLUMNS} FROM api_tokens ORDER BY created_at, id"
        ));
        Ok(self
            .fetch_all(q, rows::api_token, "listing API tokens")
            .await?)
    }

    async fn revoke_api_token(&self, id: &str, at: DateTime<Utc>) -> Result<bool, StoreError> {
        let q = query("UPDATE api_tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
            .bind(micros(at))
            .bind(id.to_owned());
        Ok(self
            .update_existing(q, "api_tokens", id, "revoking an API token")
            .await?)
    }

    async fn touch_api_token(&self, id: &str, at: DateTime<Utc>) -> Result<(), StoreError> {
        let q = query("UPDATE api_tokens SET last_used_at = $1 WHERE id = $2")
            .bind(micros(at))
            .bind(id.to_owned());
        self.update_existing(q, "api_tokens", id, "recording an API token's use")
            .await?;
        Ok(())
    }

    async fn rotate_bootstrap_api_token(&self, token: &ApiTokenRecord) -> Result<(), StoreError> {
        Ok(self.try_rotate_bootstrap(token).await?)
    }

    async fn put_github_installation(
        &self,
        installation: &GithubInstallation,
    ) -> Result<(), StoreError> {
        let external =
            i64::try_from(installation.external_id.get()).map_err(|_| Error::InvalidInput {
                what: format!("installation id {}", installation.external_id),
                reason: "is larger than a 64-bit signed integer".to_owned(),
            })?;
        query(format!(
            "INSERT INTO github_installations ({INSTALLATION_COLUMNS}) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (id) DO UPDATE SET account = excluded.account"
        ))
        .bind(installation.key().to_string())
        .bind(installation.user_id.to_string())
        .bind(external)
        .bind(installation.account.clone())
        .bind(micros(installation.created_at))
        .execute(&self.writer)
        .await
        .map_err(Self::db("storing a GitHub installation link"))?;
        Ok(())
    }

    async fn get_github_installation(
        &self,
        key: &InstallationKey,
    ) -> Result<Option<GithubInstallation>, StoreError> {
        let q = query(format!(
            "SELECT {INSTALLATION_COLUMNS} FROM github_installations WHERE id = $1"
        ))
        .bind(key.to_string());
        Ok(self
            .fetch_optional(
                q,
                rows::github_installation,
                "reading a GitHub installation link",
            )
            .await?)
    }

    async fn list_github_installations(
        &self,
        user: &UserId,
    ) -> Result<Vec<GithubInstallation>, StoreError> {
        let q = query(format!(
            "SELECT {INSTALLATION_COLUMNS} FROM github_installations WHERE user_id = $1 \
             ORDER BY created_at, id"
        ))
        .bind(user.to_string());
        Ok(self
            .fetch_all(
                q,
                rows::github_installation,
                "listing GitHub installation links",
            )
            .await?)
    }

    async fn delete_github_installation(&self, key: &InstallationKey) -> Result<(), StoreError> {
        Ok(self
            .delete_where(
                "DELETE FROM github_installations WHERE id = $1",
                &[key.to_string()],
                "deleting a GitHub installation link",
            )
            .await?)
    }

    async fn put_user(&self, user: &UserRecord) -> Result<(), StoreError> {
        Ok(self
            .upsert(
                "users",
                "id",
                &[("id", user.id.to_string())],
                Some(("created_at", micros(user.created_at))),
                json(user),
                "writing a user",
            )
            .await?)
    }

    async fn get_user(&self, id: &UserId) -> Result<Option<UserRecord>, StoreError> {
        let q = query("SELECT id, body FROM users WHERE id = $1").bind(id.to_string());
        Ok(self.fetch_optional(q, rows::user, "reading a user").await?)
    }

    async fn set_setup_choices(
        &self,
        user: &UserId,
        choices: SetupChoices,
    ) -> Result<(), StoreError> {
        let context = "writing a user's setup choices";
        // One statement: the body (name, settings) is not touched.
        let done =
            query("UPDATE users SET platform_ai = $1, platform_infrastructure = $2 WHERE id = $3")
                .bind(i64::from(choices.platform_ai))
                .bind(i64::from(choices.platform_infrastructure))
                .bind(user.to_string())
                .execute(&self.writer)
                .await
                .map_err(Self::db(context))?;
        if done.rows_affected() == 0 {
            return Err(Error::not_found(format!("user {user}")).into());
        }
        Ok(())
    }

    async fn setup_choices(&self, user: &UserId) -> Result<Option<SetupChoices>, StoreError> {
        let q = query("SELECT id, platform_ai, platform_infrastructure FROM users WHERE id = $1")
            .bind(user.to_string());
        Ok(self
            .fetch_optional(q, rows::setup_choices, "reading a user's setup choices")
            .await?)
    }

    async fn put_project(&self, project: &ProjectRecord) -> Result<(), StoreError> {
        Ok(self
            .upsert(
                "projects",
                "id",
                &[("id", project.id.to_string())],
                Some(("created_at", micros(project.created_at))),
                json(project),
                "writing a project",
            )
            .await?)
    }

    async fn get_project(&self, id: &ProjectId) -> Result<Option<ProjectRecord>, StoreError> {
        let q = query("SELECT id, body FROM projects WHERE id = $1").bind(id.to_string());
        Ok(self
            .fetch_optional(q, rows::project, "reading a project")
            .await?)
    }

    async fn list_projects(&self) -> Result<Vec<ProjectRecord>, StoreError> {
        let q = query("SELECT id, body FROM projects ORDER BY created_at, id");
        Ok(self.fetch_all(q, rows::project, "listing projects").await?)
    }

    async fn delete_project(&self, id: &ProjectId) -> Result<(), StoreError> {
        Ok(self.try_delete_project(id).await?)
    }

    async fn put_profile(&self, profile: &AgentProfileRecord) -> Result<(), StoreError> {
        Ok(self.try_put_profile(profile).await?)
    }

    async fn get_profile(&self, id: &ProfileId) -> Result<Option<AgentProfileRecord>, StoreError> {
        let q = query("SELECT id, body FROM agent_profiles WHERE id = $1").bind(id.to_string());
        Ok(self
            .fetch_optional(q, rows::profile, "reading an agent profile")
            .await?)
    }

    async fn list_profiles(
        &self,
        project: &ProjectId,
    ) -> Result<Vec<AgentProfileRecord>, StoreError> {
        let q = query(
            "SELECT id, body FROM agent_profiles WHERE project_id = $1 ORDER BY created_at, id",
        )
        .bind(project.to_string());
        Ok(self
            .fetch_all(q, rows::profile, "listing agent profiles")
            .await?)
    }

    async fn delete_profile(&self, id: &ProfileId) -> Result<(), StoreError> {
        Ok(self
            .delete_where(
                "DELETE FROM agent_profiles WHERE id = $1",
                &[id.to_string()],
                "deleting an agent profile",
            )
            .await?)
    }

    async fn put_credential(&self, credential: &CredentialRecord) -> Result<(), StoreError> {
        Ok(self
            .upsert(
                "credentials",
                "owner, target",
                &[
                    ("owner", credential.owner.to_string()),
                    ("target", credential.target.to_string()),
                ],
                None,
                json(credential),
                "writing a credential",
            )
            .await?)
    }

    async fn list_credentials(
        &self,
        owner: &CredentialOwner,
    ) -> Result<Vec<CredentialRecord>, StoreError> {
        let q =
            query("SELECT target AS id, body FROM credentials WHERE owner = $1 ORDER BY target")
                .bind(owner.to_string());
        Ok(self
            .fetch_all(q, rows::credential, "listing credentials")
            .await?)
    }

    async fn delete_credential(
        &self,
        owner: &CredentialOwner,
        target: &CredentialTarget,
    ) -> Result<(), StoreError> {
        Ok(self
            .delete_where(
                "DELETE FROM credentials WHERE owner = $1 AND target = $2",
                &[owner.to_string(), target.to_string()],
                "deleting a credential",
            )
            .await?)
    }
}
