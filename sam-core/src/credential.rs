//! Credentials: provider and agent secrets per user or project, sealed at rest with
//! AES-256-GCM, resolved project → user → platform.
//!
//! The cipher lives here because it is pure computation: the only thing it takes
//! from the operating system is the random nonce of each encryption (`getrandom`).
//! The key comes from configuration ([`crate::ControlPlaneConfig::credential_key`]) and
//! is never stored; a store holds only [`Sealed`] values, bound by their associated
//! data to the owner and target they were written for, so a sealed value copied to
//! another row does not open.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use aes_gcm::aead::{Aead, Generate as _, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Classify, ErrorCategory};
use crate::github::GithubInstallation;
use crate::model::{ProjectId, ProviderKind, UserId};
use crate::reservation::Layer;
use crate::secret::Secret;

/// Length of a credential key, in bytes (AES-256).
pub const KEY_LEN: usize = 32;
/// Length of a nonce, in bytes (the GCM standard).
const NONCE_LEN: usize = 12;
/// The version tag of the sealed format.
const SEALED_VERSION: &str = "v1";
/// Longest secret accepted, in bytes (a GCP service-account JSON is about 2.4 KiB).
pub const MAX_SECRET_LEN: usize = 16 * 1024;

/// Why a credential could not be sealed, opened or accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CredentialError {
    /// The configured key is not 32 bytes of base64.
    #[error(
        "the credential key must be {KEY_LEN} bytes encoded as base64 (for example `openssl rand -base64 32`): {reason}"
    )]
    InvalidKey {
        /// What is wrong with it.
        reason: String,
    },
    /// No key is configured, so credentials can be neither stored nor read.
    #[error("no credential key is configured; set one to store credentials")]
    NoKey,
    /// The sealed value does not open with this key: the key changed or the row was
    /// tampered with or moved.
    #[error(
        "a stored credential does not open with the configured key (the key changed, or the row was altered)"
    )]
    WrongKey,
    /// The stored value is not a sealed credential at all.
    #[error("a stored credential is malformed: {reason}")]
    Malformed {
        /// What is wrong with it.
        reason: String,
    },
    /// The secret or its details are out of range.
    #[error("invalid credential {field}: {reason}")]
    Invalid {
        /// The field at fault.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A call needs an owner's credential that is not stored (any more): a node
    /// created with it cannot be managed until it is set again.
    #[error(
        "{owner} has no {target} credential (it was deleted or never set); set it again so its nodes can be managed"
    )]
    Missing {
        /// Whose credential it was.
        owner: CredentialOwner,
        /// What it was for.
        target: CredentialTarget,
    },
    /// A user's or project's provider credential cannot be used: no provider factory
    /// is configured to build a provider from it.
    #[error(
        "{owner} has its own {target} credential, but this control plane has no provider factory to use it"
    )]
    NoFactory {
        /// Whose credential it is.
        owner: CredentialOwner,
        /// What it is for.
        target: CredentialTarget,
    },
}

impl Classify for CredentialError {
    fn category(&self) -> ErrorCategory {
        match self {
            Self::WrongKey | Self::Missing { .. } => ErrorCategory::AuthError,
            Self::NoFactory { .. }
            | Self::InvalidKey { .. }
            | Self::NoKey
            | Self::Malformed { .. }
            | Self::Invalid { .. } => ErrorCategory::InvalidConfig,
        }
    }
}

/// A secret sealed with AES-256-GCM: `v1:<nonce base64>:<ciphertext base64>`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Sealed(String);

impl Sealed {
    /// Wraps a stored value; it is checked when opened.
    pub fn from_stored(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value to store.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Sealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Ciphertext reveals the secret's length; keep it out of logs as well.
        f.write_str("Sealed(***)")
    }
}

/// Seals and opens credentials with a key from configuration.
#[derive(Clone)]
pub struct CredentialCipher {
    cipher: Aes256Gcm,
}

impl fmt::Debug for CredentialCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CredentialCipher(***)")
    }
}

impl CredentialCipher {
    /// A cipher from a base64-encoded 32-byte key.
    ///
    /// # Errors
    /// [`CredentialError::InvalidKey`] when the key is not base64 or not 32 bytes.
    pub fn new(key: &Secret) -> Result<Self, CredentialError> {
        let bytes =
            BASE64
                .decode(key.expose().trim())
                .map_err(|e| CredentialError::InvalidKey {
                    reason: format!("not base64 ({e})"),
                })?;
        if bytes.len() != KEY_LEN {
            return Err(CredentialError::InvalidKey {
                reason: format!("{} bytes", bytes.len()),
            });
        }
        let cipher =
            Aes256Gcm::new_from_slice(&bytes).map_err(|e| CredentialError::InvalidKey {
                reason: e.to_string(),
            })?;
        // The key seals every stored credential: never let it reach a log.
        crate::secret::register(key.expose());
        Ok(Self { cipher })
    }

    /// Seals `secret` for `context` (the owner and target it belongs to), with a
    /// fresh random nonce.
    ///
    /// # Errors
    /// [`CredentialError::Invalid`] for an empty or oversized secret.
    pub fn seal(&self, secret: &Secret, context: &str) -> Result<Sealed, CredentialError> {
        check_secret(secret)?;
        let nonce = aes_gcm::aead::Nonce::<Aes256Gcm>::generate();
        let ciphertext = self
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: secret.expose().as_bytes(),
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| CredentialError::Invalid {
                field: "secret",
                reason: "could not be encrypted".to_owned(),
            })?;
        Ok(Sealed(format!(
            "{SEALED_VERSION}:{}:{}",
            BASE64.encode(nonce),
            BASE64.encode(ciphertext)
        )))
    }

    /// Opens a value sealed for `context`.
    ///
    /// # Errors
    /// [`CredentialError::Malformed`] for a value that is not in the sealed format;
    /// [`CredentialError::WrongKey`] when it does not open with this key and context.
    pub fn open(&self, sealed: &Sealed, context: &str) -> Result<Secret, CredentialError> {
        let malformed = |reason: &str| CredentialError::Malformed {
            reason: reason.to_owned(),
        };
        let mut parts = sealed.0.splitn(3, ':');
        let (Some(SEALED_VERSION), Some(nonce), Some(ciphertext)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed("expected v1:<nonce>:<ciphertext>"));
        };
        let nonce = BASE64
            .decode(nonce)
            .map_err(|_| malformed("the nonce is not base64"))?;
        let nonce: [u8; NONCE_LEN] = nonce
            .try_into()
            .map_err(|_| malformed("the nonce is not 12 bytes"))?;
        let ciphertext = BASE64
            .decode(ciphertext)
            .map_err(|_| malformed("the ciphertext is not base64"))?;
        let plain = self
            .cipher
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: &ciphertext,
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| CredentialError::WrongKey)?;
        let secret = String::from_utf8(plain).map_err(|_| malformed("the secret is not UTF-8"))?;
        // An opened credential is masked wherever it might be echoed back.
        crate::secret::register(&secret);
        Ok(Secret::new(secret))
    }
}

fn check_secret(secret: &Secret) -> Result<(), CredentialError> {
    if secret.expose().trim().is_empty() {
        return Err(CredentialError::Invalid {
            field: "secret",
            reason: "must not be empty".to_owned(),
        });
    }
    if secret.expose().len() > MAX_SECRET_LEN {
        return Err(CredentialError::Invalid {
            field: "secret",
            reason: format!("longer than {MAX_SECRET_LEN} bytes"),
        });
    }
    Ok(())
}

/// Who a credential belongs to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(tag = "type", content = "id", rename_all = "snake_case")]
pub enum CredentialOwner {
    /// A user's own credential, for all their tasks.
    User(UserId),
    /// A project's credential, for the tasks of that project.
    Project(ProjectId),
}

impl CredentialOwner {
    /// The layer a credential of this owner resolves from.
    pub const fn layer(&self) -> Layer {
        match self {
            Self::User(_) => Layer::User,
            Self::Project(_) => Layer::Project,
        }
    }
}

impl fmt::Display for CredentialOwner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::User(id) => write!(f, "user:{id}"),
            Self::Project(id) => write!(f, "project:{id}"),
        }
    }
}

impl FromStr for CredentialOwner {
    type Err = CredentialError;

    /// Parses the [`Display`](fmt::Display) form: `user:<id>` or `project:<id>`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = |reason: String| CredentialError::Invalid {
            field: "owner",
            reason,
        };
        match s.split_once(':') {
            Some(("user", id)) => id
                .parse::<UserId>()
                .map(Self::User)
                .map_err(|e| invalid(e.to_string())),
            Some(("project", id)) => id
                .parse::<ProjectId>()
                .map(Self::Project)
                .map_err(|e| invalid(e.to_string())),
            _ => Err(invalid(format!(
                "{s:?} is not one of user:<id>, project:<id>"
            ))),
        }
    }
}

/// What a credential is for: one cloud provider, one coding agent, or repository access.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CredentialTarget {
    /// A cloud provider's API (`provider:hetzner`).
    Provider(ProviderKind),
    /// A coding agent's model access (`agent:claude`).
    Agent(String),
    /// Access to the project's repository (`repository`).
    Repository,
}

impl fmt::Display for CredentialTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Provider(p) => write!(f, "provider:{p}"),
            Self::Agent(a) => write!(f, "agent:{a}"),
            Self::Repository => f.write_str("repository"),
        }
    }
}

impl FromStr for CredentialTarget {
    type Err = CredentialError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = |reason: String| CredentialError::Invalid {
            field: "target",
            reason,
        };
        match s.split_once(':') {
            Some(("provider", p)) => p
                .parse::<ProviderKind>()
                .map(Self::Provider)
                .map_err(|e| invalid(e.to_string())),
            Some(("agent", a))
                if !a.is_empty()
                    && a.len() <= 64
                    && a.chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_')) =>
            {
                Ok(Self::Agent(a.to_owned()))
            }
            None if s == "repository" => Ok(Self::Repository),
            _ => Err(invalid(format!(
                "{s:?} is not one of provider:<kind>, agent:<name>, repository"
            ))),
        }
    }
}

impl Serialize for CredentialTarget {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for CredentialTarget {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// What kind of secret a credential holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CredentialKind {
    /// An API token (Hetzner, a repository token).
    ApiToken,
    /// An API key (Scaleway's secret key, a model provider's key).
    ApiKey,
    /// An OAuth token (Claude's subscription token).
    OauthToken,
    /// A GCP service-account JSON key.
    ServiceAccount,
}

impl CredentialKind {
    /// The snake_case name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::ApiToken => "api_token",
            Self::ApiKey => "api_key",
            Self::OauthToken => "oauth_token",
            Self::ServiceAccount => "service_account",
        }
    }
}

/// A credential as persisted: the secret only sealed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CredentialRecord {
    /// Who it belongs to.
    pub owner: CredentialOwner,
    /// What it is for.
    pub target: CredentialTarget,
    /// What kind of secret it is.
    pub kind: CredentialKind,
    /// The secret, sealed for `(owner, target)`.
    pub sealed: Sealed,
    /// Non-secret details the target needs (Scaleway's `project_id`, GCP's `project`).
    #[serde(default)]
    pub details: BTreeMap<String, String>,
    /// When it was first written.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

impl CredentialRecord {
    /// The associated data a credential of `owner` for `target` is sealed with.
    pub fn context(owner: &CredentialOwner, target: &CredentialTarget) -> String {
        format!("sam-credential:{owner}:{target}")
    }

    /// What can be shown of it: never the secret.
    pub fn view(&self) -> CredentialView {
        CredentialView {
            owner: self.owner.clone(),
            target: self.target.clone(),
            kind: self.kind,
            details: self.details.clone(),
            updated_at: self.updated_at,
        }
    }
}

/// A credential as shown to users: what kind and where it is set, never the secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CredentialView {
    /// Who it belongs to.
    pub owner: CredentialOwner,
    /// What it is for.
    pub target: CredentialTarget,
    /// What kind of secret it is.
    pub kind: CredentialKind,
    /// Its non-secret details.
    pub details: BTreeMap<String, String>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

/// Checks a credential's kind and details against its target, before it is sealed.
///
/// # Errors
/// [`CredentialError::Invalid`] when the kind does not fit the target (a Hetzner
/// service account), a required detail is missing (Scaleway's `project_id`), or a
/// detail is out of range.
pub fn check_credential(
    target: &CredentialTarget,
    kind: CredentialKind,
    details: &BTreeMap<String, String>,
) -> Result<(), CredentialError> {
    use CredentialKind as K;
    let fits = match target {
        CredentialTarget::Provider(ProviderKind::Hetzner) => kind == K::ApiToken,
        CredentialTarget::Provider(ProviderKind::Scaleway) => kind == K::ApiKey,
        CredentialTarget::Provider(ProviderKind::Gcp) => kind == K::ServiceAccount,
        // The fake provider stands in for a cloud in tests: a token names its account.
        CredentialTarget::Provider(ProviderKind::Fake) => kind == K::ApiToken,
        CredentialTarget::Provider(_) => false,
        CredentialTarget::Agent(_) => matches!(kind, K::ApiKey | K::OauthToken),
        CredentialTarget::Repository => kind == K::ApiToken,
    };
    if !fits {
        return Err(CredentialError::Invalid {
            field: "kind",
            reason: format!("a {} does not fit {target}", kind.as_str()),
        });
    }
    if target == &CredentialTarget::Provider(ProviderKind::Scaleway)
        && !details.contains_key("project_id")
    {
        return Err(CredentialError::Invalid {
            field: "details.project_id",
            reason: "a Scaleway key needs the project it belongs to".to_owned(),
        });
    }
    for (key, value) in details {
        if key.is_empty() || key.len() > 64 || value.len() > 256 {
            return Err(CredentialError::Invalid {
                field: "details",
                reason: format!(
                    "{key:?} is empty or too long (keys up to 64, values up to 256 bytes)"
                ),
            });
        }
    }
    Ok(())
}

/// The name of an agent given as a command of one's own rather than a known agent
/// (`sam run --agent-command`).
pub const CUSTOM_AGENT: &str = "custom";

/// The environment variable an agent reads its credential of `kind` from, or `None`
/// when the agent takes no credential of that kind. An agent given as a command of
/// one's own (named [`CUSTOM_AGENT`]) reads `SAM_AGENT_API_KEY`.
pub fn agent_env_var(agent: &str, kind: CredentialKind) -> Option<&'static str> {
    match (agent, kind) {
        (CUSTOM_AGENT, CredentialKind::ApiKey | CredentialKind::OauthToken) => {
            Some("SAM_AGENT_API_KEY")
        }
        ("claude", CredentialKind::ApiKey) => Some("ANTHROPIC_API_KEY"),
        ("claude", CredentialKind::OauthToken) => Some("CLAUDE_CODE_OAUTH_TOKEN"),
        ("codex", CredentialKind::ApiKey) => Some("OPENAI_API_KEY"),
        ("gemini", CredentialKind::ApiKey) => Some("GEMINI_API_KEY"),
        ("opencode", CredentialKind::ApiKey) => Some("OPENCODE_API_KEY"),
        ("demo", CredentialKind::ApiKey | CredentialKind::OauthToken) => Some("SAM_DEMO_API_KEY"),
        _ => None,
    }
}

/// Picks the credential for `target`: the project's, else the user's. `None` means
/// the platform's own (when it has one) applies.
pub fn resolve_credential<'a>(
    target: &CredentialTarget,
    project: &'a [CredentialRecord],
    user: &'a [CredentialRecord],
) -> Option<&'a CredentialRecord> {
    project.iter().chain(user).find(|c| &c.target == target)
}

/// How one part of setup is configured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetupItem {
    /// Whether the user has chosen something for it.
    pub configured: bool,
    /// How: one entry per credential the user set (`"agent:claude api_key (user)"`)
    /// or, for repository access, per GitHub App installation they linked
    /// (`"GitHub App installation 4242"`).
    pub how: Vec<String>,
}

/// The platform's own resources a user chose to use for a part of setup, recorded
/// as their choice ([`crate::store::AccountStore::set_setup_choices`]).
///
/// A choice is the user's, never inferred from what the platform offers; and it
/// counts only while the platform offers what was chosen ([`setup_status`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetupChoices {
    /// The user uses the platform's AI: its own agent credentials.
    #[serde(default)]
    pub platform_ai: bool,
    /// The user runs their nodes on the platform's infrastructure: its own providers.
    #[serde(default)]
    pub platform_infrastructure: bool,
}

/// What a user has configured of the three parts of setup.
///
/// It is computed only from credentials the user (or their project) set, the
/// GitHub App installations the user linked and the platform resources the user
/// chose ([`SetupChoices`]), never from what the platform happens to offer: a
/// platform key does not make a user's setup complete unless the user chose it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetupStatus {
    /// A coding agent's model access.
    pub ai_access: SetupItem,
    /// A cloud provider's API.
    pub cloud_access: SetupItem,
    /// Repository access.
    pub repository_access: SetupItem,
    /// Whether all three are configured.
    pub complete: bool,
}

/// Computes setup completeness from the credentials a user and their project set,
/// the GitHub App installations the user linked (each is repository access:
/// `"GitHub App installation <external id>"`), and the platform resources the
/// user `chose`. A choice counts only for what the platform `offers` (`"the
/// platform's AI (chosen)"`, `"the platform's infrastructure (chosen)"`): a
/// choice recorded while the platform offered something it no longer does
/// configures nothing.
pub fn setup_status(
    credentials: &[CredentialRecord],
    installations: &[GithubInstallation],
    chose: SetupChoices,
    offers: SetupChoices,
) -> SetupStatus {
    let item = |wanted: fn(&CredentialTarget) -> bool, chosen: Option<&str>| {
        let mut how: Vec<String> = credentials
            .iter()
            .filter(|c| wanted(&c.target))
            .map(|c| {
                let owner = match &c.owner {
                    CredentialOwner::User(_) => "user".to_owned(),
                    CredentialOwner::Project(p) => format!("project {p}"),
                };
                format!("{} {} ({owner})", c.target, c.kind.as_str())
            })
            .collect();
        how.extend(chosen.map(|what| format!("{what} (chosen)")));
        SetupItem {
            configured: !how.is_empty(),
            how,
        }
    };
    let ai_access = item(
        |t| matches!(t, CredentialTarget::Agent(_)),
        (chose.platform_ai && offers.platform_ai).then_some("the platform's AI"),
    );
    let cloud_access = item(
        |t| matches!(t, CredentialTarget::Provider(_)),
        (chose.platform_infrastructure && offers.platform_infrastructure)
            .then_some("the platform's infrastructure"),
    );
    let mut repository_access = item(|t| matches!(t, CredentialTarget::Repository), None);
    repository_access.how.extend(
        installations
            .iter()
            .map(|i| format!("GitHub App installation {}", i.external_id)),
    );
    repository_access.configured = !repository_access.how.is_empty();
    let complete = ai_access.configured && cloud_access.configured && repository_access.configured;
    SetupStatus {
        ai_access,
        cloud_access,
        repository_access,
        complete,
    }
}

#[cfg(test)]
mod tests;
