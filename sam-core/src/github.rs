//! GitHub repositories: App installations, installation tokens, output branches.
//!
//! An installation has two identities that must never be confused, as SAM learned:
//! - the [`ExternalInstallationId`], GitHub's own number, which every GitHub API call
//!   and every API response uses;
//! - the [`InstallationKey`], the storage key of one user's link to it
//!   (`<user id>:<external id>`), so two users of one organisation each have their own
//!   link to the same installation.
//!
//! They are distinct types, and a [`GithubInstallation`] derives its key from its
//! user and external id, so a record cannot carry a key that disagrees with them.
//!
//! The policies here are pure: [`output_branch`] names the branch a task works on,
//! and [`token_is_fresh`] decides when a cached installation token must be minted
//! again. The [`RepositoryHost`] trait is what the control plane needs from GitHub;
//! `sam-providers` implements it.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Classify, ErrorCategory};
use crate::model::{ParseError, TaskId, UserId};
use crate::secret::{Secret, redact};

/// GitHub's own id of an App installation: the only id GitHub API calls and API
/// responses carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(into = "u64", try_from = "u64")]
pub struct ExternalInstallationId(u64);

impl TryFrom<u64> for ExternalInstallationId {
    type Error = ParseError;
    fn try_from(value: u64) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<ExternalInstallationId> for u64 {
    fn from(id: ExternalInstallationId) -> Self {
        id.0
    }
}

impl ExternalInstallationId {
    /// Wraps GitHub's installation id.
    ///
    /// # Errors
    /// [`ParseError`] for 0, which GitHub never assigns.
    pub fn new(value: u64) -> Result<Self, ParseError> {
        if value == 0 {
            return Err(ParseError::new(
                "installation id",
                "0",
                "must be greater than zero",
            ));
        }
        Ok(Self(value))
    }

    /// The number, as GitHub's API takes it.
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for ExternalInstallationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for ExternalInstallationId {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let value = s
            .parse::<u64>()
            .map_err(|_| ParseError::new("installation id", s, "is not a positive integer"))?;
        Self::new(value)
    }
}

/// The storage key of one user's link to an installation: `<user id>:<external id>`.
///
/// Never sent to GitHub; use [`InstallationKey::external_id`] for that.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InstallationKey {
    user: UserId,
    external: ExternalInstallationId,
}

impl InstallationKey {
    /// The key of `user`'s link to the installation `external`.
    pub fn new(user: UserId, external: ExternalInstallationId) -> Self {
        Self { user, external }
    }

    /// The user who linked the installation.
    pub fn user(&self) -> &UserId {
        &self.user
    }

    /// GitHub's id of the installation.
    pub fn external_id(&self) -> ExternalInstallationId {
        self.external
    }
}

impl fmt::Display for InstallationKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.user, self.external)
    }
}

impl FromStr for InstallationKey {
    type Err = ParseError;
    /// Parses `<user id>:<external id>`; the user id may itself contain `:`, the
    /// external id is what follows the last one.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (user, external) = s.rsplit_once(':').ok_or_else(|| {
            ParseError::new("installation key", s, "must be <user id>:<installation id>")
        })?;
        Ok(Self::new(UserId::new(user)?, external.parse()?))
    }
}

impl Serialize for InstallationKey {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for InstallationKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// One user's link to a GitHub App installation, as persisted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GithubInstallation {
    /// The user who linked it.
    pub user_id: UserId,
    /// GitHub's id of the installation.
    pub external_id: ExternalInstallationId,
    /// The account the App is installed on (an organisation or a user login).
    pub account: String,
    /// When the link was made.
    pub created_at: DateTime<Utc>,
}

impl GithubInstallation {
    /// The storage key, derived from the user and the external id.
    pub fn key(&self) -> InstallationKey {
        InstallationKey::new(self.user_id.clone(), self.external_id)
    }
}

/// A repository on GitHub (or a GitHub Enterprise host), from its HTTPS URL.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RepoRef {
    scheme: String,
    host: String,
    owner: String,
    name: String,
}

/// Whether `host` (with an optional port) names this machine.
fn is_loopback(host: &str) -> bool {
    let name = if let Some(bracketed) = host.strip_prefix('[') {
        bracketed.split_once(']').map_or("", |(name, _)| name)
    } else {
        host.rsplit_once(':').map_or(host, |(name, _)| name)
    };
    matches!(name, "127.0.0.1" | "::1" | "localhost")
}

fn repo_part_ok(part: &str) -> bool {
    !part.is_empty()
        && !part.starts_with('.')
        && part
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl RepoRef {
    /// Parses `https://<host>/<owner>/<name>[.git][/]`.
    ///
    /// Plain `http://` is accepted only for a loopback host (`127.0.0.1`, `[::1]`,
    /// `localhost`, with any port): local mirrors and tests, where nothing crosses
    /// a network.
    ///
    /// # Errors
    /// [`ParseError`] for another scheme, `http` to a host that is not loopback,
    /// credentials in the URL, or a path that is not exactly an owner and a name.
    pub fn parse_https(url: &str) -> Result<Self, ParseError> {
        let bad = |reason: &str| ParseError::new("repository URL", url, reason);
        let (scheme, rest) = if let Some(rest) = url.strip_prefix("https://") {
            ("https", rest)
        } else if let Some(rest) = url.strip_prefix("http://") {
            ("http", rest)
        } else {
            return Err(bad("must start with https://"));
        };
        let (host, path) = rest
            .split_once('/')
            .ok_or_else(|| bad("must name an owner and a repository"))?;
        if host.is_empty() || host.contains('@') {
            return Err(bad("must have a host and no credentials"));
        }
        if scheme == "http" && !is_loopback(host) {
            return Err(bad("must use https (http only to a loopback host)"));
        }
        let path = path.trim_end_matches('/');
        let path = path.strip_suffix(".git").unwrap_or(path);
        let (owner, name) = path
            .split_once('/')
            .ok_or_else(|| bad("must name an owner and a repository"))?;
        if !repo_part_ok(owner) || !repo_part_ok(name) {
            return Err(bad(
                "owner and repository must be [A-Za-z0-9._-] and not start with '.'",
            ));
        }
        Ok(Self {
            scheme: scheme.to_owned(),
            host: host.to_ascii_lowercase(),
            owner: owner.to_owned(),
            name: name.to_owned(),
        })
    }

    /// `https`, or `http` for a loopback host.
    pub fn scheme(&self) -> &str {
        &self.scheme
    }

    /// The host, lowercase (`github.com`, or `host:port`).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The owner (organisation or user).
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// The repository's name, without `.git`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether a git credential request for `protocol`, `host` and (when git sends
    /// it) `path` is about this repository and nothing else.
    pub fn matches_credential_request(
        &self,
        protocol: &str,
        host: &str,
        path: Option<&str>,
    ) -> bool {
        if protocol != self.scheme || !host.eq_ignore_ascii_case(&self.host) {
            return false;
        }
        let Some(path) = path else {
            return true;
        };
        let path = path.trim_matches('/');
        let path = path.strip_suffix(".git").unwrap_or(path);
        path.split_once('/').is_some_and(|(o, n)| {
            o.eq_ignore_ascii_case(&self.owner) && n.eq_ignore_ascii_case(&self.name)
        })
    }
}

impl fmt::Display for RepoRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}://{}/{}/{}",
            self.scheme, self.host, self.owner, self.name
        )
    }
}

/// Whether the task should open a pull request for its output branch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PullRequestMode {
    /// Push the branch only.
    #[default]
    BranchOnly,
    /// Push the branch and open a pull request against the task's base branch.
    Open,
}

/// A task's link to the GitHub installation its repository is behind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GithubAccess {
    /// The user's link to the installation.
    pub installation: InstallationKey,
    /// Whether to open a pull request at the end.
    #[serde(default)]
    pub pull_request: PullRequestMode,
}

/// What a task left in its repository: recorded on the task at the end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskOutput {
    /// The output branch (`sam/<slug>-<short id>`).
    pub branch: String,
    /// The commit the branch points at after the push.
    pub commit: Option<String>,
    /// The pull request, when the task asked for one.
    #[serde(default)]
    pub pull_request_url: Option<String>,
}

/// Longest slug [`output_branch`] takes from a prompt, in bytes.
pub const MAX_SLUG_LEN: usize = 40;

/// The output branch of a task: `sam/<slug>-<short id>`.
///
/// The slug is the prompt in lowercase ASCII letters, digits and single dashes, at
/// most [`MAX_SLUG_LEN`] bytes, never empty (`task` when the prompt has no ASCII
/// letter or digit). The short id is the last eight letters or digits of the task id.
/// The result is always a valid git branch name.
pub fn output_branch(prompt: &str, task: &TaskId) -> String {
    let mut slug = String::new();
    for c in prompt.chars() {
        if slug.len() >= MAX_SLUG_LEN {
            break;
        }
        if c.is_ascii_alphanumeric() {
            slug.push(c.to_ascii_lowercase());
        } else if !slug.is_empty() && !slug.ends_with('-') {
            slug.push('-');
        }
    }
    let slug = slug.trim_end_matches('-');
    let slug = if slug.is_empty() { "task" } else { slug };
    let id: Vec<char> = task
        .as_str()
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    let short: String = id[id.len().saturating_sub(8)..].iter().collect();
    let short = if short.is_empty() {
        "0".to_owned()
    } else {
        short
    };
    format!("sam/{slug}-{short}")
}

/// How long before its expiry a cached installation token is minted again.
pub const TOKEN_REFRESH_MARGIN: Duration = Duration::from_secs(5 * 60);

/// Whether a token expiring at `expires_at` may still be handed out at `now`: more
/// than [`TOKEN_REFRESH_MARGIN`] must remain, so that whoever receives it can finish
/// a clone or a push with it.
pub fn token_is_fresh(expires_at: DateTime<Utc>, now: DateTime<Utc>) -> bool {
    expires_at
        .signed_duration_since(now)
        .to_std()
        .is_ok_and(|left| left > TOKEN_REFRESH_MARGIN)
}

/// A short-lived credential for one repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitCredential {
    /// The user name git sends (`x-access-token` for installation tokens).
    pub username: String,
    /// The installation token.
    pub password: Secret,
    /// When it stops working.
    pub expires_at: DateTime<Utc>,
}

/// A pull request to open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullRequestRequest {
    /// Its title.
    pub title: String,
    /// The branch with the changes.
    pub head: String,
    /// The branch to merge into.
    pub base: String,
    /// Its description.
    pub body: String,
}

/// A failed call to GitHub, classified once where it happened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("GitHub call failed ({category}): {message}")]
pub struct GithubError {
    category: ErrorCategory,
    status: Option<u16>,
    message: String,
    retry_after: Option<Duration>,
}

impl GithubError {
    /// An error of `category`; the message is redacted.
    pub fn new(category: ErrorCategory, message: impl AsRef<str>) -> Self {
        Self {
            category,
            status: None,
            message: redact(message.as_ref()).into_owned(),
            retry_after: None,
        }
    }

    /// With the HTTP status.
    #[must_use]
    pub fn with_status(mut self, status: u16) -> Self {
        self.status = Some(status);
        self
    }

    /// With a wait GitHub asked for.
    #[must_use]
    pub fn with_retry_after(mut self, wait: Duration) -> Self {
        self.retry_after = Some(wait);
        self
    }

    /// The HTTP status, when there was a response.
    pub fn status(&self) -> Option<u16> {
        self.status
    }

    /// The message, redacted.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl Classify for GithubError {
    fn category(&self) -> ErrorCategory {
        self.category
    }
    fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }
}

/// What the control plane needs from GitHub: the account of an installation,
/// short-lived repository credentials and pull requests, always addressed by the
/// [`ExternalInstallationId`].
///
/// # Contract
/// - Every call makes at most one request per GitHub endpoint and returns; none
///   retries or sleeps (the caller decides whether to ask again).
/// - `repository_token` returns a token that is fresh by [`token_is_fresh`]; a
///   backend may hand out a cached token while it is, and mints a new one otherwise.
/// - Failures are classified once: 401 is `auth_error`, 403 with a rate limit is
///   `rate_limited` with its wait, other 403 `auth_error`, 404 `not_found`, 422
///   `invalid_config`, 5xx and transport failures `transient`.
#[async_trait]
pub trait RepositoryHost: Send + Sync + fmt::Debug {
    /// The account (organisation or user login) the App's installation
    /// `installation` is on: to check a link a user asks for before storing it.
    ///
    /// # Errors
    /// The classified failure: `not_found` for an installation the App does not have.
    async fn installation_account(
        &self,
        installation: ExternalInstallationId,
    ) -> Result<String, GithubError>;

    /// A token that can read and push `repo` through the installation.
    ///
    /// # Errors
    /// The classified failure.
    async fn repository_token(
        &self,
        installation: ExternalInstallationId,
        repo: &RepoRef,
    ) -> Result<GitCredential, GithubError>;

    /// Opens a pull request in `repo` and returns its web URL.
    ///
    /// # Errors
    /// The classified failure.
    async fn open_pull_request(
        &self,
        installation: ExternalInstallationId,
        repo: &RepoRef,
        request: &PullRequestRequest,
    ) -> Result<String, GithubError>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use proptest::prelude::*;

    fn task(id: &str) -> TaskId {
        TaskId::new(id).unwrap()
    }

    fn check(prompt: &str, id: &str, expected: &str) {
        assert_eq!(output_branch(prompt, &task(id)), expected, "{prompt:?}");
    }

    #[test]
    fn output_branches() {
        check(
            "Fix the flaky test in repo X!",
            "t-00ab12cd34ef5678",
            "sam/fix-the-flaky-test-in-repo-x-34ef5678",
        );
        check("   ", "t-1", "sam/task-t1");
        check("Ünïcödé ✨", "t-1", "sam/n-c-d-t1");
        check("--a--b--", "abc", "sam/a-b-abc");
        check(
            &"x".repeat(100),
            "t-1",
            &format!("sam/{}-t1", "x".repeat(40)),
        );
        check("a b c", "...", "sam/a-b-c-0");
    }

    /// What `git check-ref-format` requires of the names this module makes.
    fn is_git_safe(name: &str) -> bool {
        name.split('/')
            .all(|p| !p.is_empty() && !p.starts_with('.') && !p.ends_with(".lock"))
            && !name.contains("..")
            && !name.ends_with('.')
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '/' | '.' | '_'))
    }

    proptest! {
        #[test]
        fn output_branch_is_bounded_safe_and_never_empty(prompt in ".{0,200}", id in "[A-Za-z0-9._:-]{1,40}") {
            let branch = output_branch(&prompt, &task(&id));
            let slug_and_id = branch.strip_prefix("sam/").unwrap();
            let (slug, short) = slug_and_id.rsplit_once('-').unwrap();
            prop_assert!(!slug.is_empty() && slug.len() <= MAX_SLUG_LEN);
            prop_assert!(!short.is_empty() && short.len() <= 8);
            prop_assert!(!slug.starts_with('-') && !slug.ends_with('-') && !slug.contains("--"));
            prop_assert!(slug.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'));
            prop_assert!(is_git_safe(&branch));
        }

        #[test]
        fn installation_keys_round_trip(user in "[A-Za-z0-9._:-]{1,40}", external in 1u64..) {
            let key = InstallationKey::new(UserId::new(user).unwrap(), ExternalInstallationId::new(external).unwrap());
            let parsed: InstallationKey = key.to_string().parse().unwrap();
            prop_assert_eq!(&parsed, &key);
            prop_assert_eq!(parsed.external_id().get(), external);
        }
    }

    #[test]
    fn installation_keys_keep_the_two_identities_apart() {
        let org = ExternalInstallationId::new(4242).unwrap();
        let alice = InstallationKey::new(UserId::new("alice").unwrap(), org);
        let bob = InstallationKey::new(UserId::new("bob").unwrap(), org);
        assert_ne!(alice, bob);
        assert_eq!(alice.external_id(), bob.external_id());
        assert_eq!(alice.to_string(), "alice:4242");
        assert_eq!(serde_json::to_string(&alice).unwrap(), "\"alice:4242\"");
        for bad in ["", "alice", "alice:", ":42", "alice:0", "alice:-1", "a b:1"] {
            assert!(bad.parse::<InstallationKey>().is_err(), "{bad}");
        }
        assert!(ExternalInstallationId::new(0).is_err());
        assert!(serde_json::from_str::<ExternalInstallationId>("0").is_err());
        assert_eq!(
            serde_json::from_str::<ExternalInstallationId>("4242").unwrap(),
            org
        );
        assert_eq!(serde_json::to_string(&org).unwrap(), "4242");
    }

    #[test]
    fn repository_urls_and_credential_requests() {
        let repo = RepoRef::parse_https("https://GitHub.com/acme/widgets.git").unwrap();
        assert_eq!(
            (repo.host(), repo.owner(), repo.name()),
            ("github.com", "acme", "widgets")
        );
        assert!(repo.matches_credential_request("https", "github.com", None));
        assert!(repo.matches_credential_request("https", "github.com", Some("acme/widgets.git")));
        assert!(!repo.matches_credential_request("https", "github.com", Some("acme/other.git")));
        assert!(!repo.matches_credential_request("https", "gitlab.com", None));
        assert!(!repo.matches_credential_request("http", "github.com", None));
        assert_eq!(
            RepoRef::parse_https("https://127.0.0.1:8080/o/r/")
                .unwrap()
                .host(),
            "127.0.0.1:8080"
        );
        let local = RepoRef::parse_https("http://127.0.0.1:8080/o/r.git").unwrap();
        assert_eq!(local.to_string(), "http://127.0.0.1:8080/o/r");
        assert!(RepoRef::parse_https("http://[::1]:80/o/r").is_ok());
        assert!(RepoRef::parse_https("http://localhost/o/r").is_ok());
        for bad in [
            "http://github.com/a/b",
            "http://127.0.0.1.evil.example/a/b",
            "https://github.com/a",
            "https://github.com/a/b/c",
            "https://user:pw@github.com/a/b",
            "https://github.com/../b",
            "/tmp/repo",
        ] {
            assert!(RepoRef::parse_https(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tokens_are_fresh_until_the_margin() {
        let now = Utc.with_ymd_and_hms(2026, 11, 21, 12, 0, 0).unwrap();
        let minutes = |m| now + chrono::Duration::minutes(m);
        assert!(token_is_fresh(minutes(60), now));
        assert!(token_is_fresh(minutes(6), now));
        assert!(!token_is_fresh(minutes(5), now));
        assert!(!token_is_fresh(minutes(1), now));
        assert!(!token_is_fresh(minutes(-1), now));
    }
}
