//! The unprivileged account that coding agents and git run as on a node.
//!
//! A cloud node's VM agent runs as root (it manages Docker, the workspaces and the
//! node token), while the code it runs for a task must not: some agents refuse root
//! (Claude's ACP adapter), and a repository nobody vetted must not read the node's
//! secrets. Cloud-init creates the account and names it in the agent's
//! configuration (`agent_user`); [`AgentUser::lookup`] resolves it once, when the
//! agent starts, so a missing account stops the agent there and not at the first
//! task.
//!
//! A process started as the user (`AgentUser::apply`) gets the user's uid and
//! primary gid and no supplementary group: the standard library clears them when it
//! drops root, and this crate forbids the unsafe code it would take to set others.
//! That is the stricter choice, since a group such as `docker` is root on the host
//! by another name. `HOME`, `USER` and `LOGNAME` name the user and its home.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// An unprivileged account of the node's user database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentUser {
    name: String,
    uid: u32,
    gid: u32,
    home: PathBuf,
}

impl AgentUser {
    /// Looks `name` up in the system's user database.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] (field `agent_user`) when there is no such account,
    /// when it is root (uid 0), or when the database cannot be read.
    pub fn lookup(name: &str) -> Result<Self> {
        let refuse = |reason: String| Error::InvalidConfig {
            field: "agent_user".to_owned(),
            reason,
        };
        if name.is_empty() || name.contains(['\0', '/', ':']) {
            return Err(refuse(format!("{name:?} is not a user name")));
        }
        let user = nix::unistd::User::from_name(name)
            .map_err(|e| refuse(format!("cannot look up the user {name:?}: {e}")))?
            .ok_or_else(|| refuse(format!("the user {name:?} does not exist on this node")))?;
        let account = Self {
            name: user.name,
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
            home: user.dir,
        };
        account.check()?;
        Ok(account)
    }

    /// An account given by its fields (an embedding program that resolved it
    /// itself).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for root (uid 0) or an empty name.
    pub fn new(
        name: impl Into<String>,
        uid: u32,
        gid: u32,
        home: impl Into<PathBuf>,
    ) -> Result<Self> {
        let account = Self {
            name: name.into(),
            uid,
            gid,
            home: home.into(),
        };
        account.check()?;
        Ok(account)
    }

    fn check(&self) -> Result<()> {
        let refuse = |reason: String| {
            Err(Error::InvalidConfig {
                field: "agent_user".to_owned(),
                reason,
            })
        };
        if self.name.is_empty() {
            return refuse("the user name is empty".to_owned());
        }
        if self.uid == 0 {
            return refuse(format!(
                "{:?} is root (uid 0): agents run as an unprivileged user",
                self.name
            ));
        }
        Ok(())
    }

    /// The user name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The numeric user id.
    pub fn uid(&self) -> u32 {
        self.uid
    }

    /// The numeric id of the user's primary group.
    pub fn gid(&self) -> u32 {
        self.gid
    }

    /// The user's home directory.
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// Makes `command` run as this user: its uid and primary gid (no supplementary
    /// group), and `HOME`, `USER` and `LOGNAME` naming it. Call it after the
    /// command's environment is set, so these win.
    pub(crate) fn apply(&self, command: &mut tokio::process::Command) {
        command
            .uid(self.uid)
            .gid(self.gid)
            .env("HOME", &self.home)
            .env("USER", &self.name)
            .env("LOGNAME", &self.name);
    }

    /// The user for `docker exec --user`: numeric, so it needs no account inside
    /// the container and matches the owner of the workspace it mounts.
    pub(crate) fn container_user(&self) -> String {
        format!("{}:{}", self.uid, self.gid)
    }

    /// Gives `path` to this user (owner and group).
    ///
    /// # Errors
    /// [`Error::Io`] when the ownership cannot be changed.
    pub(crate) fn take_ownership(&self, path: &Path) -> Result<()> {
        std::os::unix::fs::chown(path, Some(self.uid), Some(self.gid)).map_err(|e| {
            Error::io(
                format!("giving {} to the user {}", path.display(), self.name),
                e,
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(result: Result<AgentUser>) -> String {
        match result {
            Err(Error::InvalidConfig { field, reason }) => {
                assert_eq!(field, "agent_user");
                reason
            }
            other => panic!("expected a configuration error, got {other:?}"),
        }
    }

    #[test]
    fn a_missing_user_is_a_configuration_error() {
        let why = reason(AgentUser::lookup("sam-no-such-user-7f3a"));
        assert!(why.contains("does not exist"), "{why}");
    }

    #[test]
    fn root_and_malformed_names_are_refused() {
        // Every Unix system has root, so this resolves for real and is refused.
        assert!(reason(AgentUser::lookup("root")).contains("uid 0"));
        for name in ["", "a/b", "a:b", "a\0b"] {
            assert!(
                reason(AgentUser::lookup(name)).contains("not a user name"),
                "{name:?}"
            );
        }
        assert!(reason(AgentUser::new("admin", 0, 0, "/root")).contains("uid 0"));
        assert!(reason(AgentUser::new("", 1000, 1000, "/home/x")).contains("empty"));
    }

    #[test]
    fn an_existing_account_resolves_to_its_ids_and_home() {
        // `nobody` exists on Debian, Ubuntu and most other systems; where it does
        // not, the lookup says so and the test says why it could not check.
        match AgentUser::lookup("nobody") {
            Ok(user) => {
                assert_eq!(user.name(), "nobody");
                assert_ne!(user.uid(), 0);
                assert!(user.home().is_absolute());
                assert_eq!(
                    user.container_user(),
                    format!("{}:{}", user.uid(), user.gid())
                );
            }
            Err(e) => panic!("this system has no `nobody` account to resolve: {e}"),
        }
    }
}
