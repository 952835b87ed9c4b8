//! Projects, users and agent profiles: whose intent a task carries.
//!
//! Each of them holds one [`LayerSettings`], which feeds its layer of the precedence
//! chains at submission (agent profile, project, user), so every resolved value keeps
//! the layer it came from. Nothing here is created behind the user's back: a fresh
//! project has no profiles, and deleting the last one leaves none.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::InvalidInput;
use crate::model::{Location, ProfileId, ProjectId, ProviderKind, UserId, VmSize};
use crate::reservation::{MAX_CO_TENANTS, ResourceRequirements};
use crate::session::PermissionMode;

/// The workspace profile: a full devcontainer, or the lightweight image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkspaceProfile {
    /// Use the repository's devcontainer configuration when it has one.
    Full,
    /// The lightweight image, without a devcontainer.
    Lightweight,
}

impl WorkspaceProfile {
    /// The snake_case name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::Lightweight => "lightweight",
        }
    }
}

/// The settings one layer (task, trigger, skill, agent profile, project, user,
/// platform) may set; each is optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerSettings {
    /// VM size.
    #[serde(default)]
    pub size: Option<VmSize>,
    /// Provider.
    #[serde(default)]
    pub provider: Option<ProviderKind>,
    /// Location.
    #[serde(default)]
    pub location: Option<Location>,
    /// Workspace profile.
    #[serde(default)]
    pub workspace_profile: Option<WorkspaceProfile>,
    /// Devcontainer configuration name.
    #[serde(default)]
    pub devcontainer: Option<String>,
    /// Coding agent.
    #[serde(default)]
    pub agent: Option<String>,
    /// The agent's model.
    #[serde(default)]
    pub model: Option<String>,
    /// How hard the agent thinks.
    #[serde(default)]
    pub effort: Option<Effort>,
    /// How the agent's permission requests are answered.
    #[serde(default)]
    pub permission_mode: Option<PermissionMode>,
    /// Text added to the agent's instructions.
    #[serde(default)]
    pub system_prompt: Option<String>,
    /// Resource requirements.
    #[serde(default)]
    pub requirements: ResourceRequirements,
}

/// Longest name of a project, profile or user, in bytes.
pub const MAX_NAME_LEN: usize = 100;
/// Longest model name, in bytes.
pub const MAX_MODEL_LEN: usize = 128;
/// Longest system-prompt addition, in bytes.
pub const MAX_SYSTEM_PROMPT_LEN: usize = 16 * 1024;
/// Shortest warm timeout a project may set, in seconds.
pub const MIN_WARM_TIMEOUT_SECS: u64 = 60;
/// Longest warm timeout a project may set, in seconds (one day).
pub const MAX_WARM_TIMEOUT_SECS: u64 = 24 * 3600;

/// How hard the agent thinks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Effort {
    /// Quick answers.
    Low,
    /// The agent's default.
    Medium,
    /// Think longer.
    High,
}

impl Effort {
    /// The snake_case name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Low => "low",
            Self::Medium => "medium",
            Self::High => "high",
        }
    }
}

/// How the agent runs, as resolved for a task and sent to the node: each is
/// optional, and `None` leaves the agent's (or the VM agent's) default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentOptions {
    /// The agent's model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// How hard the agent thinks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effort: Option<Effort>,
    /// How the agent's permission requests are answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permission_mode: Option<PermissionMode>,
    /// Text added to the agent's instructions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_prompt: Option<String>,
}

/// A project's scaling overrides; each is optional and range-checked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScalingOverrides {
    /// The most workspaces a node may hold for this project's tasks, this one
    /// included (1 to [`MAX_CO_TENANTS`]); feeds the project layer's `max_co_tenants`
    /// when the project's requirements do not set it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_workspaces_per_node: Option<u32>,
    /// How long an idle node stays warm, in seconds ([`MIN_WARM_TIMEOUT_SECS`] to
    /// [`MAX_WARM_TIMEOUT_SECS`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warm_timeout_secs: Option<u64>,
}

impl ScalingOverrides {
    /// Checks the ranges.
    ///
    /// # Errors
    /// [`InvalidInput`] naming the field out of range.
    pub fn validate(&self) -> Result<(), InvalidInput> {
        if let Some(n) = self.max_workspaces_per_node
            && !(1..=MAX_CO_TENANTS).contains(&n)
        {
            return Err(invalid(
                "scaling.max_workspaces_per_node",
                format!("{n} is outside 1..={MAX_CO_TENANTS}"),
            ));
        }
        if let Some(s) = self.warm_timeout_secs
            && !(MIN_WARM_TIMEOUT_SECS..=MAX_WARM_TIMEOUT_SECS).contains(&s)
        {
            return Err(invalid(
                "scaling.warm_timeout_secs",
                format!("{s} is outside {MIN_WARM_TIMEOUT_SECS}..={MAX_WARM_TIMEOUT_SECS} seconds"),
            ));
        }
        Ok(())
    }
}

fn invalid(field: &'static str, reason: impl Into<String>) -> InvalidInput {
    InvalidInput {
        field,
        reason: reason.into(),
    }
}

fn check_name(field: &'static str, name: &str) -> Result<(), InvalidInput> {
    if name.trim().is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    if name.len() > MAX_NAME_LEN || name.chars().any(char::is_control) {
        return Err(invalid(
            field,
            format!("must be at most {MAX_NAME_LEN} bytes without control characters"),
        ));
    }
    Ok(())
}

impl LayerSettings {
    /// Checks the settings a user wrote: requirements in range, model and
    /// system-prompt addition within their limits, no empty names.
    ///
    /// # Errors
    /// [`InvalidInput`] naming the field.
    pub fn validate(&self) -> Result<(), InvalidInput> {
        self.requirements.validate()?;
        for (field, value, max) in [
            ("agent", &self.agent, MAX_NAME_LEN),
            ("model", &self.model, MAX_MODEL_LEN),
            ("devcontainer", &self.devcontainer, MAX_NAME_LEN),
        ] {
            if let Some(v) = value
                && (v.trim().is_empty() || v.len() > max || v.chars().any(char::is_control))
            {
                return Err(invalid(
                    field,
                    format!("must be 1 to {max} bytes without control characters"),
                ));
            }
        }
        if let Some(p) = &self.system_prompt
            && p.len() > MAX_SYSTEM_PROMPT_LEN
        {
            return Err(invalid(
                "system_prompt",
                format!("longer than {MAX_SYSTEM_PROMPT_LEN} bytes"),
            ));
        }
        Ok(())
    }
}

/// A user of the control plane and their defaults (the `user` layer).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserRecord {
    /// The user's id.
    pub id: UserId,
    /// A display name.
    pub name: String,
    /// The user's defaults.
    pub settings: LayerSettings,
    /// When the user was created.
    pub created_at: DateTime<Utc>,
    /// When the user last changed.
    pub updated_at: DateTime<Utc>,
}

impl UserRecord {
    /// Checks the name and settings.
    ///
    /// # Errors
    /// [`InvalidInput`] naming the field.
    pub fn validate(&self) -> Result<(), InvalidInput> {
        check_name("name", &self.name)?;
        self.settings.validate()
    }
}

/// A project: a repository and its defaults (the `project` layer).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProjectRecord {
    /// The project's id.
    pub id: ProjectId,
    /// A display name.
    pub name: String,
    /// Repository URL or local path every task of the project works on.
    pub repo: String,
    /// The user who owns it; their defaults are the `user` layer of its tasks.
    pub owner: Option<UserId>,
    /// Default size, provider, location, workspace profile, devcontainer, agent
    /// settings and requirements.
    pub settings: LayerSettings,
    /// Scaling overrides.
    pub scaling: ScalingOverrides,
    /// When the project was created.
    pub created_at: DateTime<Utc>,
    /// When the project last changed.
    pub updated_at: DateTime<Utc>,
}

impl ProjectRecord {
    /// Checks the name, repository, settings and scaling overrides.
    ///
    /// # Errors
    /// [`InvalidInput`] naming the field.
    pub fn validate(&self) -> Result<(), InvalidInput> {
        check_name("name", &self.name)?;
        if self.repo.trim().is_empty() {
            return Err(invalid("repo", "must not be empty"));
        }
        // The same shapes a task may name; a local path only where the project's
        // provider (when it names one) can reach it.
        match self.settings.provider {
            Some(provider) => crate::repository::check_repository(&self.repo, provider).map(drop),
            None => crate::repository::parse_repository(&self.repo).map(drop),
        }
        .map_err(|e| invalid("repo", e.0))?;
        self.settings.validate()?;
        self.scaling.validate()
    }

    /// The project layer of a task: the project's settings, with
    /// `max_workspaces_per_node` as the co-tenant limit unless the requirements set one.
    pub fn layer(&self) -> LayerSettings {
        let mut layer = self.settings.clone();
        if layer.requirements.max_co_tenants.is_none() {
            layer.requirements.max_co_tenants = self.scaling.max_workspaces_per_node;
        }
        layer
    }
}

/// An agent profile of a project (the `agent_profile` layer): which agent, how it
/// runs, and what it needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentProfileRecord {
    /// The profile's id.
    pub id: ProfileId,
    /// The project it belongs to.
    pub project_id: ProjectId,
    /// Its name, unique within the project.
    pub name: String,
    /// Agent type, model, effort, permission mode, system-prompt addition, size,
    /// provider, location, workspace profile, devcontainer and requirements.
    pub settings: LayerSettings,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

impl AgentProfileRecord {
    /// Checks the name and settings; a profile must name its agent.
    ///
    /// # Errors
    /// [`InvalidInput`] naming the field.
    pub fn validate(&self) -> Result<(), InvalidInput> {
        check_name("name", &self.name)?;
        if self.settings.agent.is_none() {
            return Err(invalid("agent", "an agent profile must name its agent"));
        }
        self.settings.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaling_overrides_are_range_checked() {
        let check =
            |scaling: ScalingOverrides, field: Option<&str>| match (scaling.validate(), field) {
                (Ok(()), None) => {}
                (Err(InvalidInput { field: got, .. }), Some(want)) => assert_eq!(got, want),
                (other, want) => panic!("{scaling:?}: got {other:?}, wanted {want:?}"),
            };
        let max = "scaling.max_workspaces_per_node";
        let warm = "scaling.warm_timeout_secs";
        check(ScalingOverrides::default(), None);
        check(
            ScalingOverrides {
                max_workspaces_per_node: Some(1),
                warm_timeout_secs: Some(60),
            },
            None,
        );
        check(
            ScalingOverrides {
                max_workspaces_per_node: Some(0),
                ..Default::default()
            },
            Some(max),
        );
        check(
            ScalingOverrides {
                max_workspaces_per_node: Some(MAX_CO_TENANTS + 1),
                ..Default::default()
            },
            Some(max),
        );
        check(
            ScalingOverrides {
                warm_timeout_secs: Some(59),
                ..Default::default()
            },
            Some(warm),
        );
        check(
            ScalingOverrides {
                warm_timeout_secs: Some(MAX_WARM_TIMEOUT_SECS + 1),
                ..Default::default()
            },
            Some(warm),
        );
    }

    #[test]
    fn the_project_layer_takes_the_workspace_limit_as_co_tenants() {
        let mut project = ProjectRecord {
            id: ProjectId::new("p-1").unwrap(),
            name: "web".into(),
            repo: "https://example.invalid/web.git".into(),
            owner: None,
            settings: LayerSettings::default(),
            scaling: ScalingOverrides {
                max_workspaces_per_node: Some(3),
                warm_timeout_secs: None,
            },
            created_at: DateTime::UNIX_EPOCH,
            updated_at: DateTime::UNIX_EPOCH,
        };
        assert_eq!(project.layer().requirements.max_co_tenants, Some(3));
        project.settings.requirements.max_co_tenants = Some(2);
        assert_eq!(project.layer().requirements.max_co_tenants, Some(2));
    }

    #[test]
    fn a_project_repository_is_checked_like_a_task_s() {
        let project = |repo: &str, provider| ProjectRecord {
            id: ProjectId::new("p-1").unwrap(),
            name: "web".into(),
            repo: repo.into(),
            owner: None,
            settings: LayerSettings {
                provider,
                ..LayerSettings::default()
            },
            scaling: ScalingOverrides::default(),
            created_at: DateTime::UNIX_EPOCH,
            updated_at: DateTime::UNIX_EPOCH,
        };
        let field = |p: ProjectRecord| match p.validate() {
            Err(InvalidInput { field, .. }) => Some(field),
            _ => None,
        };
        assert_eq!(field(project("git@example.invalid:o/web.git", None)), None);
        assert_eq!(field(project("/srv/web", None)), None);
        assert_eq!(
            field(project("/srv/web", Some(crate::model::ProviderKind::Local))),
            None
        );
        for (repo, provider) in [
            ("fd::17", None),
            ("--upload-pack=x", None),
            ("/srv/web", Some(crate::model::ProviderKind::Hetzner)),
        ] {
            assert_eq!(field(project(repo, provider)), Some("repo"), "{repo}");
        }
    }

    #[test]
    fn a_profile_must_name_its_agent() {
        let mut profile = AgentProfileRecord {
            id: ProfileId::new("pf-1").unwrap(),
            project_id: ProjectId::new("p-1").unwrap(),
            name: "reviewer".into(),
            settings: LayerSettings::default(),
            created_at: DateTime::UNIX_EPOCH,
            updated_at: DateTime::UNIX_EPOCH,
        };
        assert!(matches!(
            profile.validate(),
            Err(InvalidInput { field: "agent", .. })
        ));
        profile.settings.agent = Some("claude".into());
        profile.settings.system_prompt = Some("x".repeat(MAX_SYSTEM_PROMPT_LEN + 1));
        assert!(matches!(
            profile.validate(),
            Err(InvalidInput {
                field: "system_prompt",
                ..
            })
        ));
        profile.settings.system_prompt = Some("Review only.".into());
        assert!(profile.validate().is_ok());
    }
}
