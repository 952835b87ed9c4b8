//! sam-core's one error, [`Error`]: every module's failure, as the control plane and
//! its callers see it, with the one [`Classify`] that maps each to its category.
//!
//! It sits at the top of the crate's layering: it holds the errors of the policies,
//! the credentials, GitHub and the node agent, so none of those imports it.

use std::time::Duration;

use crate::error::{Classify, ErrorCategory, InvalidInput, PolicyError, ProviderError, StoreError};
use crate::model::ParseError;

/// sam-core's error: everything its policies and (later) its runner can report.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A value could not be parsed.
    #[error(transparent)]
    Parse(#[from] ParseError),
    /// An input field is out of range or inconsistent.
    #[error("invalid {field}: {reason}")]
    InvalidInput {
        /// The field at fault.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// An input field is larger than its limit.
    #[error("{field} is too large: {size} bytes, at most {limit}")]
    TooLarge {
        /// The field at fault.
        field: &'static str,
        /// Its size in bytes.
        size: usize,
        /// The limit in bytes.
        limit: usize,
    },
    /// A callback would change a task that has ended: a finished task is closed.
    #[error("task {task} has ended ({status}); it takes no more {callback}")]
    TaskEnded {
        /// The task.
        task: crate::model::TaskId,
        /// Its terminal status.
        status: crate::model::TaskStatus,
        /// What was refused (`output`, `session event`, …).
        callback: &'static str,
    },
    /// A policy's values contradict each other.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// No catalog size can meet a reservation.
    #[error(transparent)]
    NoSizeFits(#[from] crate::reservation::NoSizeFits),
    /// A fallback plan could not be built.
    #[error(transparent)]
    Plan(#[from] crate::fallback::PlanError),
    /// A provider call failed.
    #[error(transparent)]
    Provider(Box<ProviderError>),
    /// A store call failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A callback's token was rejected.
    #[error("unauthorized: {0}")]
    Unauthorized(crate::token::TokenError),
    /// A VM agent call failed.
    #[error(transparent)]
    NodeAgent(#[from] crate::node_agent::NodeAgentError),
    /// A GitHub call failed.
    #[error(transparent)]
    Github(#[from] crate::github::GithubError),
    /// A credential could not be sealed, opened or accepted.
    #[error(transparent)]
    Credential(#[from] crate::credential::CredentialError),
}

impl From<ProviderError> for Error {
    fn from(value: ProviderError) -> Self {
        Self::Provider(Box::new(value))
    }
}

impl Error {
    /// Whether the same operation may succeed later.
    pub fn is_retryable(&self) -> bool {
        self.category().is_retryable()
    }
}

impl Classify for Error {
    fn category(&self) -> ErrorCategory {
        match self {
            Self::Parse(_)
            | Self::InvalidInput { .. }
            | Self::TooLarge { .. }
            | Self::Policy(_)
            | Self::NoSizeFits(_)
            | Self::Plan(_) => ErrorCategory::InvalidConfig,
            Self::Provider(e) => e.category(),
            Self::Store(e) => e.category(),
            Self::Unauthorized(_) => ErrorCategory::AuthError,
            // The task's state refuses the request: answered `409`, and the callback
            // client treats every 4xx as permanent.
            Self::TaskEnded { .. } => ErrorCategory::Conflict,
            Self::NodeAgent(e) => e.category(),
            Self::Github(e) => e.category(),
            Self::Credential(e) => e.category(),
        }
    }
    fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Provider(e) => e.retry_after(),
            Self::Github(e) => e.retry_after(),
            _ => None,
        }
    }
}

impl From<InvalidInput> for Error {
    fn from(value: InvalidInput) -> Self {
        Self::InvalidInput {
            field: value.field,
            reason: value.reason,
        }
    }
}

/// sam-core's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
