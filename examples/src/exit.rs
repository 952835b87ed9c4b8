//! The exit codes of `sam`: one per way a command can end, so scripts can tell a
//! failed task from an unreachable server or a bad token.
//!
//! | code | meaning |
//! |------|---------|
//! | 0    | success (a followed task completed) |
//! | 1    | any other error |
//! | 2    | bad usage: unknown flags or values (clap), or a pre-flight check refused the command (not a git repository, the agent's command not on `PATH`) |
//! | 3    | the task failed |
//! | 4    | the task was cancelled |
//! | 5    | the server could not be reached |
//! | 6    | the server refused the credentials (HTTP 401 or 403) |
//! | 130  | `sam run` was interrupted (SIGINT or SIGTERM) |

use sam_core::TaskStatus;

use crate::client::RequestError;

/// How a `sam` command ended, as its process exit code; see the [module docs](self).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// 0: done; a followed task completed.
    Success,
    /// 1: any error without a code of its own.
    Error,
    /// 2: bad usage, as clap reports it, or a refused pre-flight check.
    Usage,
    /// 3: the task failed.
    TaskFailed,
    /// 4: the task was cancelled.
    TaskCancelled,
    /// 5: the server could not be reached.
    Unreachable,
    /// 6: the server refused the credentials (HTTP 401 or 403).
    Auth,
    /// 130: interrupted by SIGINT or SIGTERM, as shells report such a command.
    Interrupted,
}

/// The exit codes as `sam --help` lists them.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0    success (a followed task completed)
  1    any other error
  2    bad usage, or a refused pre-flight check (not a git repository, agent not on PATH)
  3    the task failed
  4    the task was cancelled
  5    the server could not be reached
  6    the server refused the credentials (HTTP 401 or 403)
  130  interrupted";

impl Exit {
    /// The process exit code.
    pub const fn code(self) -> u8 {
        match self {
            Self::Success => 0,
            Self::Error => 1,
            Self::Usage => 2,
            Self::TaskFailed => 3,
            Self::TaskCancelled => 4,
            Self::Unreachable => 5,
            Self::Auth => 6,
            Self::Interrupted => 130,
        }
    }

    /// How a command that followed a task to `status` ends.
    pub const fn of_status(status: TaskStatus) -> Self {
        match status {
            TaskStatus::Failed => Self::TaskFailed,
            TaskStatus::Cancelled => Self::TaskCancelled,
            // A stream that ended before the task did (the server stopped) is not a
            // success either.
            TaskStatus::Queued | TaskStatus::Delegated | TaskStatus::InProgress => Self::Error,
            TaskStatus::Completed => Self::Success,
        }
    }

    /// The code of a failed command: its [`RequestError`] or [`UsageError`] anywhere
    /// in the chain, else [`Exit::Error`].
    pub fn of_error(error: &anyhow::Error) -> Self {
        for cause in error.chain() {
            if cause.downcast_ref::<UsageError>().is_some() {
                return Self::Usage;
            }
            match cause.downcast_ref::<RequestError>() {
                Some(RequestError::Unreachable { .. }) => return Self::Unreachable,
                Some(RequestError::Unauthorized { .. }) => return Self::Auth,
                Some(RequestError::Answered { .. }) | None => {}
            }
        }
        Self::Error
    }
}

/// Whether `error` is a write to a closed pipe (the reader of the output went away).
pub fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

impl From<Exit> for std::process::ExitCode {
    fn from(exit: Exit) -> Self {
        Self::from(exit.code())
    }
}

/// A command refused before it did anything: the arguments or this machine cannot
/// run it (exit code 2, like clap's usage errors).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_pipe_is_told_from_other_errors() {
        let pipe = anyhow::Error::from(std::io::Error::from(std::io::ErrorKind::BrokenPipe))
            .context("printing an event");
        assert!(is_broken_pipe(&pipe));
        let other = anyhow::Error::from(std::io::Error::from(std::io::ErrorKind::NotFound));
        assert!(!is_broken_pipe(&other));
    }

    #[test]
    fn each_way_to_end_has_its_own_documented_code() {
        let all = [
            Exit::Success,
            Exit::Error,
            Exit::Usage,
            Exit::TaskFailed,
            Exit::TaskCancelled,
            Exit::Unreachable,
            Exit::Auth,
            Exit::Interrupted,
        ];
        let mut codes: Vec<u8> = all.iter().map(|e| e.code()).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), all.len(), "distinct codes");
        for exit in all {
            assert!(
                EXIT_CODES_HELP
                    .lines()
                    .any(|l| l.trim_start().starts_with(&format!("{} ", exit.code()))),
                "{exit:?} is listed in the help"
            );
        }
    }

    #[test]
    fn errors_map_to_their_codes_through_context() {
        use anyhow::Context as _;
        let usage: anyhow::Error = UsageError("not a git repository".into()).into();
        assert_eq!(Exit::of_error(&usage.context("sam run")), Exit::Usage);
        let auth: anyhow::Result<()> = Err(RequestError::Unauthorized {
            status: 401,
            message: "no token".into(),
        }
        .into());
        assert_eq!(
            Exit::of_error(&auth.context("reading the task").unwrap_err()),
            Exit::Auth
        );
        let refused: anyhow::Error = RequestError::Answered {
            status: 404,
            message: "no such task".into(),
        }
        .into();
        assert_eq!(Exit::of_error(&refused), Exit::Error);
        assert_eq!(Exit::of_error(&anyhow::anyhow!("other")), Exit::Error);
        assert_eq!(Exit::of_status(TaskStatus::Failed), Exit::TaskFailed);
        assert_eq!(Exit::of_status(TaskStatus::Cancelled), Exit::TaskCancelled);
        assert_eq!(Exit::of_status(TaskStatus::Completed), Exit::Success);
    }
}
