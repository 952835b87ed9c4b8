//! What a task may name as its repository, and what a prompt may hold: the checks
//! made at submission, before any node is touched.
//!
//! Git treats many strings as instructions rather than places: `ext::<command>`
//! runs a command, `fd::17` talks to a file descriptor, `--upload-pack=…` is an
//! option, and a relative path is resolved wherever git happens to run. A task's
//! repository is therefore one of a few shapes ([`Repository`]), each with the git
//! transport it needs ([`Repository::protocol`]); everything else is refused with a
//! reason. A local path is a repository only for a provider whose nodes reach this
//! machine's paths ([`ProviderKind::reaches_local_paths`]); whether it really is a git
//! repository is for the caller to look at, since this crate reads no files.
//!
//! ```
//! use sam_core::repository::{Repository, parse_repository};
//!
//! assert!(matches!(parse_repository("https://github.com/o/r.git"), Ok(Repository::Https { .. })));
//! assert!(matches!(parse_repository("git@github.com:o/r.git"), Ok(Repository::Ssh { .. })));
//! assert!(matches!(parse_repository("/srv/repo"), Ok(Repository::Local { .. })));
//! assert!(parse_repository("fd::17").is_err());
//! assert!(parse_repository("--upload-pack=touch /tmp/x").is_err());
//! ```

use crate::model::ProviderKind;

/// The longest repository a task may name, in bytes.
pub const MAX_REPOSITORY_BYTES: usize = 2048;

/// The longest prompt a task may carry, in bytes (256 KiB).
pub const MAX_PROMPT_BYTES: usize = 256 * 1024;

/// A repository a task may name, as it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Repository {
    /// `https://host/path`, or `http://` to a loopback host (a test server).
    Https {
        /// The URL as given.
        url: String,
    },
    /// `ssh://[user@]host[:port]/path`, or the scp form `user@host:path`.
    Ssh {
        /// The location as given.
        url: String,
    },
    /// An absolute path on the machine the nodes run on (`file:///path` gives the
    /// path).
    Local {
        /// The absolute path.
        path: String,
    },
}

impl Repository {
    /// The git transport it needs (what `GIT_ALLOW_PROTOCOL` should allow).
    pub fn protocol(&self) -> &'static str {
        match self {
            Self::Https { url } if url.starts_with("http://") => "http",
            Self::Https { .. } => "https",
            Self::Ssh { .. } => "ssh",
            Self::Local { .. } => "file",
        }
    }

    /// Whether it is a path on this machine.
    pub fn is_local(&self) -> bool {
        matches!(self, Self::Local { .. })
    }
}

/// Why a repository or a prompt is refused: one sentence.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refusal(pub String);

fn refuse(reason: impl Into<String>) -> Refusal {
    Refusal(reason.into())
}

/// Whether `host` names a loopback host.
fn is_loopback(host: &str) -> bool {
    let name = host
        .rsplit_once(':')
        .filter(|(_, port)| port.chars().all(|c| c.is_ascii_digit()))
        .map_or(host, |(name, _)| name);
    matches!(name, "localhost" | "[::1]") || name.starts_with("127.")
}

/// A host (with an optional port) of letters, digits, dots and dashes, not
/// starting with a dash or a dot; an IPv6 literal in brackets.
fn host_ok(host: &str) -> bool {
    let name = host
        .rsplit_once(':')
        .filter(|(name, port)| {
            !port.is_empty() && port.chars().all(|c| c.is_ascii_digit()) && !name.ends_with(':')
        })
        .map_or(host, |(name, _)| name);
    if let Some(inner) = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
        return !inner.is_empty() && inner.chars().all(|c| c.is_ascii_hexdigit() || c == ':');
    }
    !name.is_empty()
        && !name.starts_with(['-', '.'])
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
}

/// A user name of an ssh location.
fn user_ok(user: &str) -> bool {
    !user.is_empty()
        && !user.starts_with('-')
        && user
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// A path inside a remote repository location: not empty, no option.
fn remote_path_ok(path: &str) -> bool {
    !path.is_empty() && !path.starts_with('-')
}

/// `[user@]host[:port]/path` after a URL scheme.
fn split_authority(rest: &str) -> Result<(Option<&str>, &str, &str), Refusal> {
    let (authority, path) = rest
        .split_once('/')
        .ok_or_else(|| refuse("a repository URL names a path after its host"))?;
    let (user, host) = match authority.rsplit_once('@') {
        Some((user, host)) => (Some(user), host),
        None => (None, authority),
    };
    if !host_ok(host) {
        return Err(refuse(format!("{host:?} is not a host name")));
    }
    if !remote_path_ok(path) {
        return Err(refuse("a repository URL names a path after its host"));
    }
    Ok((user, host, path))
}

/// Reads what a task names as its repository; see the [module docs](self).
///
/// # Errors
/// A [`Refusal`] saying why: control characters, a leading `-`, too long, another
/// transport (`ext::`, `fd::`, `git://`, `ftp://`, …), credentials in the URL, a
/// relative path, a malformed host.
pub fn parse_repository(repo: &str) -> Result<Repository, Refusal> {
    if repo.trim().is_empty() {
        return Err(refuse("must not be empty"));
    }
    if repo.len() > MAX_REPOSITORY_BYTES {
        return Err(refuse(format!(
            "is {} bytes long; at most {MAX_REPOSITORY_BYTES}",
            repo.len()
        )));
    }
    if repo.chars().any(char::is_control) {
        return Err(refuse("must not hold control characters"));
    }
    if repo.starts_with('-') {
        return Err(refuse(
            "must not start with '-' (git would read it as an option)",
        ));
    }
    if repo != repo.trim() {
        return Err(refuse("must not start or end with spaces"));
    }
    let scheme_rest = |scheme: &str| {
        repo.get(..scheme.len())
            .filter(|s| s.eq_ignore_ascii_case(scheme))
            .map(|_| &repo[scheme.len()..])
    };
    if let Some(rest) = scheme_rest("https://") {
        let (user, _, _) = split_authority(rest)?;
        if user.is_some() {
            return Err(refuse(
                "an https URL carries no credentials: they come from the GitHub App",
            ));
        }
        return Ok(Repository::Https {
            url: repo.to_owned(),
        });
    }
    if let Some(rest) = scheme_rest("http://") {
        let (user, host, _) = split_authority(rest)?;
        if user.is_some() || !is_loopback(host) {
            return Err(refuse(
                "http is allowed only to a loopback host, without credentials; use https",
            ));
        }
        return Ok(Repository::Https {
            url: repo.to_owned(),
        });
    }
    if let Some(rest) = scheme_rest("ssh://") {
        let (user, _, _) = split_authority(rest)?;
        if user.is_some_and(|u| !user_ok(u)) {
            return Err(refuse(
                "an ssh URL's user is a plain name, without a password",
            ));
        }
        return Ok(Repository::Ssh {
            url: repo.to_owned(),
        });
    }
    if let Some(rest) = scheme_rest("file://") {
        if !rest.starts_with('/') {
            return Err(refuse("a file URL names an absolute path: file:///path"));
        }
        return local(rest);
    }
    if repo.starts_with('/') {
        return local(repo);
    }
    if repo.contains("::") {
        return Err(refuse(
            "names a git remote helper (`<transport>::<address>`); use https://, ssh:// or user@host:path",
        ));
    }
    if repo.contains("://") {
        return Err(refuse(
            "uses a transport that is not allowed; use https://, ssh:// or user@host:path",
        ));
    }
    // The scp form: `user@host:path`, with no slash before the colon.
    if let Some((before, path)) = repo.split_once(':')
        && let Some((user, host)) = before.split_once('@')
        && !before.contains('/')
    {
        if !user_ok(user) || !host_ok(host) || !remote_path_ok(path) {
            return Err(refuse(
                "is not a valid user@host:path location (plain user and host names, a path not starting with '-')",
            ));
        }
        return Ok(Repository::Ssh {
            url: repo.to_owned(),
        });
    }
    Err(refuse(
        "must be https://…, ssh://…, user@host:path, or an absolute path with the local provider",
    ))
}

fn local(path: &str) -> Result<Repository, Refusal> {
    if path.split('/').any(|part| part.starts_with('-')) {
        return Err(refuse("no part of a path may start with '-'"));
    }
    Ok(Repository::Local {
        path: path.to_owned(),
    })
}

/// Reads a task's repository for `provider`: as [`parse_repository`], and a local
/// path only for a provider whose nodes reach this machine's paths
/// ([`ProviderKind::reaches_local_paths`]).
///
/// # Errors
/// A [`Refusal`] saying why.
pub fn check_repository(repo: &str, provider: ProviderKind) -> Result<Repository, Refusal> {
    let parsed = parse_repository(repo)?;
    if parsed.is_local() && !provider.reaches_local_paths() {
        return Err(refuse(format!(
            "is a path on this machine, which only local and QEMU nodes can reach; {provider} nodes need https://, ssh:// or user@host:path"
        )));
    }
    Ok(parsed)
}

/// Checks a prompt: not blank, no NUL, at most [`MAX_PROMPT_BYTES`].
///
/// # Errors
/// [`PromptRefusal::TooLarge`] above the limit, [`PromptRefusal::Invalid`] for a
/// blank prompt or one holding NUL.
pub fn check_prompt(prompt: &str) -> Result<(), PromptRefusal> {
    if prompt.len() > MAX_PROMPT_BYTES {
        return Err(PromptRefusal::TooLarge {
            size: prompt.len(),
            limit: MAX_PROMPT_BYTES,
        });
    }
    if prompt.trim().is_empty() {
        return Err(PromptRefusal::Invalid(refuse("must not be empty")));
    }
    if prompt.contains('\0') {
        return Err(PromptRefusal::Invalid(refuse(
            "must not hold NUL characters",
        )));
    }
    Ok(())
}

/// Why a prompt is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PromptRefusal {
    /// It is larger than the limit.
    #[error("is {size} bytes long; at most {limit}")]
    TooLarge {
        /// Its size in bytes.
        size: usize,
        /// The limit in bytes.
        limit: usize,
    },
    /// It can never run.
    #[error(transparent)]
    Invalid(Refusal),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(repo: &str, expected: Option<&str>) {
        let got = parse_repository(repo).map(|r| r.protocol());
        match expected {
            Some(protocol) => assert_eq!(got, Ok(protocol), "{repo:?}"),
            None => assert!(got.is_err(), "{repo:?} should be refused, got {got:?}"),
        }
    }

    #[test]
    fn accepted_repositories() {
        for (repo, protocol) in [
            ("https://github.com/owner/name.git", "https"),
            ("https://github.com/owner/name", "https"),
            (
                "HTTPS://gitlab.example.com:8443/group/sub/name.git",
                "https",
            ),
            ("http://127.0.0.1:9418/owner/name.git", "http"),
            ("http://localhost/owner/name", "http"),
            ("ssh://git@github.com/owner/name.git", "ssh"),
            ("ssh://github.com:2222/owner/name.git", "ssh"),
            ("git@github.com:owner/name.git", "ssh"),
            ("deploy.bot@git.example.com:team/name", "ssh"),
            ("/srv/repos/name", "file"),
            ("/tmp", "file"),
            ("file:///srv/repos/name", "file"),
        ] {
            check(repo, Some(protocol));
        }
    }

    #[test]
    fn hostile_and_malformed_repositories_are_refused() {
        for repo in [
            "",
            " ",
            "fd::17",
            "ext::sh -c touch% /tmp/pwned",
            "ext::ssh -oProxyCommand=x host",
            "--upload-pack=touch /tmp/x",
            "-u",
            "/srv/repo\n--upload-pack=x",
            "/srv/re\u{0}po",
            "https://github.com/o/r\r\n",
            "relative/path",
            ".",
            "..",
            "repo",
            "git://github.com/owner/name.git",
            "ftp://example.com/owner/name.git",
            "file://relative/path",
            "http://github.com/owner/name.git",
            "https://user:token@github.com/owner/name.git",
            "https://-oProxyCommand=x/owner/name",
            "https://github.com",
            "https:///owner/name",
            "ssh://-oProxyCommand=touch%20x/name",
            "ssh://user:password@host/path",
            "git@-oProxyCommand=x:path",
            "-oProxyCommand=x@host:path",
            "git@host:-path",
            "git@host:",
            "host:path",
            "transport::address",
            "/srv/-repo",
            " /srv/repo",
        ] {
            check(repo, None);
        }
        check(&format!("/{}", "a".repeat(MAX_REPOSITORY_BYTES)), None);
    }

    #[test]
    fn local_paths_only_for_nodes_on_this_machine() {
        assert!(check_repository("/srv/repo", ProviderKind::Local).is_ok());
        assert!(check_repository("/srv/repo", ProviderKind::Qemu).is_ok());
        let refusal = check_repository("/srv/repo", ProviderKind::Hetzner).unwrap_err();
        assert!(refusal.0.contains("local and QEMU nodes"), "{refusal}");
        for kind in ProviderKind::ALL {
            assert_eq!(
                check_repository("/srv/repo", kind).is_ok(),
                kind.reaches_local_paths(),
                "{kind}"
            );
        }
        assert!(check_repository("file:///srv/repo", ProviderKind::Gcp).is_err());
        assert!(check_repository("https://github.com/o/r", ProviderKind::Hetzner).is_ok());
    }

    #[test]
    fn prompts_are_checked() {
        assert_eq!(check_prompt("fix the bug"), Ok(()));
        assert!(matches!(
            check_prompt("a\u{0}b"),
            Err(PromptRefusal::Invalid(_))
        ));
        assert!(matches!(
            check_prompt(" \n"),
            Err(PromptRefusal::Invalid(_))
        ));
        assert_eq!(check_prompt(&"x".repeat(MAX_PROMPT_BYTES)), Ok(()));
        assert_eq!(
            check_prompt(&"x".repeat(MAX_PROMPT_BYTES + 1)),
            Err(PromptRefusal::TooLarge {
                size: MAX_PROMPT_BYTES + 1,
                limit: MAX_PROMPT_BYTES
            })
        );
    }
}
