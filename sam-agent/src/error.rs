//! The crate's error type.

use sam_core::{AgentError, Classify, ErrorCategory};

#[cfg(feature = "vm")]
use crate::vm::devcontainer::DevcontainerError;

/// Everything that can go wrong in the VM agent, and in the control plane's side
/// of the wire.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Devcontainer discovery or selection failed.
    #[cfg(feature = "vm")]
    #[error(transparent)]
    Devcontainer(#[from] DevcontainerError),
    /// A request was refused before anything ran.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The node's configuration cannot be served as it is (an unknown role, an agent
    /// user that does not exist); found when the agent starts.
    #[error("invalid node configuration: {field}: {reason}")]
    InvalidConfig {
        /// The setting (a path such as `role`, `.` for the whole file).
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An external command (`git`, `docker`, `devcontainer`) failed.
    #[error("{program} failed ({status}): {stderr}")]
    Command {
        /// The program.
        program: String,
        /// Its exit status, as text.
        status: String,
        /// The end of its error output, redacted.
        stderr: String,
    },
    /// A file operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The coding agent failed.
    #[error(transparent)]
    Agent(#[from] AgentError),
    /// A call to the control plane failed.
    #[error("callback to the control plane failed ({category}): {message}")]
    Callback {
        /// Its category (4xx are permanent).
        category: ErrorCategory,
        /// The HTTP status, when there was a response.
        status: Option<u16>,
        /// What happened, redacted.
        message: String,
    },
    /// The event log or metrics store failed.
    #[error("store: {0}")]
    Store(String),
    /// The SQLite event log or metrics store failed; `sam-store` classified it.
    #[cfg(feature = "vm")]
    #[error("event log or metrics: {0}")]
    Sqlite(#[from] sam_store::Error),
}

/// `Result` with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error with its causes, which is where `reqwest` keeps the useful part.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }

    /// Whether the same operation may succeed later.
    pub fn is_retryable(&self) -> bool {
        self.category().is_retryable()
    }
}

impl Classify for Error {
    fn category(&self) -> ErrorCategory {
        match self {
            #[cfg(feature = "vm")]
            Self::Devcontainer(DevcontainerError::NotFound { .. }) => ErrorCategory::NotFound,
            #[cfg(feature = "vm")]
            Self::Devcontainer(_) => ErrorCategory::InvalidConfig,
            Self::InvalidRequest(_) | Self::InvalidConfig { .. } => ErrorCategory::InvalidConfig,
            Self::Command { .. } | Self::Store(_) => ErrorCategory::Unknown,
            Self::Io { .. } => ErrorCategory::Transient,
            Self::Agent(e) => e.category,
            Self::Callback { category, .. } => *category,
            #[cfg(feature = "vm")]
            Self::Sqlite(e) => e.category(),
        }
    }
}
