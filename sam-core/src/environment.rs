//! The environment of the processes the SDK starts on behalf of a task.
//!
//! A coding agent runs code from a repository nobody vetted, so whatever its process
//! can read, the repository's author can read. Nodes, agents and git therefore never
//! inherit their parent's whole environment (which holds API tokens, the credential
//! key and cloud keys): they start from an empty one, get the few variables of
//! [`INHERITED`] (and the `LC_*` locale variables) from their parent, and everything
//! else (an agent's credential, a node's settings) is given to them by name.

use std::ffi::OsString;

/// The variables a child process keeps from its parent: where programs are, whose
/// home, the language and terminal, and where temporary files go. None of them holds
/// a secret.
pub const INHERITED: &[&str] = &["PATH", "HOME", "USER", "LANG", "TERM", "TMPDIR"];

/// What a process may keep of its parent's environment besides [`INHERITED`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inherit {
    /// Nothing more: agent processes.
    Base,
    /// Also `SSH_AUTH_SOCK`, so git can clone and push over SSH with the user's agent
    /// (a socket that signs, never the key itself): nodes and their git processes,
    /// never agents.
    WithSshAgent,
}

/// Whether a child process keeps the variable `name` of its parent.
pub fn is_inherited(name: &str, inherit: Inherit) -> bool {
    INHERITED.contains(&name)
        || name.starts_with("LC_")
        || (inherit == Inherit::WithSshAgent && name == "SSH_AUTH_SOCK")
}

/// The part of `vars` (a parent's environment, `std::env::vars_os()`) a child keeps.
/// A name that is not UTF-8 is never kept.
pub fn inherited(
    vars: impl IntoIterator<Item = (OsString, OsString)>,
    inherit: Inherit,
) -> Vec<(OsString, OsString)> {
    vars.into_iter()
        .filter(|(name, _)| name.to_str().is_some_and(|n| is_inherited(n, inherit)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(name: &str, inherit: Inherit, expected: bool) {
        assert_eq!(
            is_inherited(name, inherit),
            expected,
            "{name} ({inherit:?})"
        );
    }

    #[test]
    fn only_the_allow_list_is_inherited() {
        for name in [
            "PATH", "HOME", "USER", "LANG", "TERM", "TMPDIR", "LC_ALL", "LC_CTYPE",
        ] {
            check(name, Inherit::Base, true);
            check(name, Inherit::WithSshAgent, true);
        }
        check("SSH_AUTH_SOCK", Inherit::Base, false);
        check("SSH_AUTH_SOCK", Inherit::WithSshAgent, true);
        for name in [
            "SAM_API_TOKEN",
            "SAM_CREDENTIAL_KEY",
            "SAM_USER_DATA",
            "HCLOUD_TOKEN",
            "SCW_SECRET_KEY",
            "AWS_SECRET_ACCESS_KEY",
            "ANTHROPIC_API_KEY",
            "LD_PRELOAD",
            "GIT_DIR",
            "path",
            "",
        ] {
            check(name, Inherit::Base, false);
            check(name, Inherit::WithSshAgent, false);
        }
    }

    #[test]
    fn inherited_keeps_only_allowed_utf8_names() {
        use std::os::unix::ffi::OsStringExt as _;
        let vars = [
            ("PATH", "/usr/bin"),
            ("SAM_API_TOKEN", "secret"),
            ("LC_ALL", "C.UTF-8"),
        ]
        .map(|(k, v)| (OsString::from(k), OsString::from(v)))
        .into_iter()
        .chain([(
            OsString::from_vec(b"PATH\xff".to_vec()),
            OsString::from("x"),
        )]);
        let kept = inherited(vars, Inherit::Base);
        assert_eq!(
            kept,
            [("PATH", "/usr/bin"), ("LC_ALL", "C.UTF-8")]
                .map(|(k, v)| (OsString::from(k), OsString::from(v)))
        );
    }
}
