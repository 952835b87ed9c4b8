//! The crate's own [`Error`]: configuration and setup failures, plus provider calls.

use sam_core::{Classify, ErrorCategory, ProviderError, ProviderKind};

/// What can go wrong while building or running a provider of this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value is missing, empty or malformed.
    #[error("invalid {provider} configuration: {field} {reason}")]
    InvalidConfig {
        /// The provider being configured.
        provider: ProviderKind,
        /// The field at fault.
        field: &'static str,
        /// What is wrong with it, as a sentence fragment.
        reason: String,
    },
    /// Setting up the provider failed (the HTTP client, the local state directory).
    #[error("could not set up {}: {what}", provider.display_name())]
    Setup {
        /// The provider being set up.
        provider: ProviderKind,
        /// What was being set up.
        what: String,
        /// The cause.
        #[source]
        source: sam_core::BoxError,
    },
    /// A classified provider call failed.
    #[error(transparent)]
    Provider(Box<ProviderError>),
    /// A GitHub App setting is missing or malformed.
    #[error("invalid GitHub App configuration: {field} {reason}")]
    InvalidGithubConfig {
        /// The field at fault.
        field: &'static str,
        /// What is wrong with it, as a sentence fragment.
        reason: String,
    },
    /// A classified GitHub call (or the client's setup) failed.
    #[error(transparent)]
    Github(Box<sam_core::GithubError>),
}

impl From<ProviderError> for Error {
    fn from(value: ProviderError) -> Self {
        Self::Provider(Box::new(value))
    }
}

impl Error {
    /// An [`Error::InvalidConfig`].
    pub(crate) fn config(
        provider: ProviderKind,
        field: &'static str,
        reason: impl Into<String>,
    ) -> Self {
        Self::InvalidConfig {
            provider,
            field,
            reason: reason.into(),
        }
    }

    /// An [`Error::InvalidGithubConfig`].
    #[cfg_attr(not(feature = "github"), allow(dead_code))]
    pub(crate) fn github_config(field: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidGithubConfig {
            field,
            reason: reason.into(),
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
            Self::InvalidConfig { .. } | Self::InvalidGithubConfig { .. } => {
                ErrorCategory::InvalidConfig
            }
            Self::Setup { .. } => ErrorCategory::Unknown,
            Self::Provider(e) => e.category(),
            Self::Github(e) => e.category(),
        }
    }

    fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            Self::Provider(e) => e.retry_after(),
            Self::Github(e) => e.retry_after(),
            _ => None,
        }
    }
}

/// Keeps the category: configuration errors stay `invalid_config`, setup failures
/// become `unknown` provider errors with their cause, provider errors pass through.
impl From<Error> for sam_core::Error {
    fn from(value: Error) -> Self {
        match value {
            Error::InvalidConfig { field, reason, .. } => Self::InvalidInput { field, reason },
            Error::Setup {
                provider,
                what,
                source,
            } => ProviderError::new(
                provider,
                ErrorCategory::Unknown,
                format!("could not set up {what}"),
            )
            .with_source(source)
            .into(),
            Error::Provider(e) => Self::Provider(e),
            Error::InvalidGithubConfig { field, reason } => Self::InvalidInput { field, reason },
            Error::Github(e) => Self::Github(*e),
        }
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversion_keeps_the_category() {
        let cases = [
            Error::config(ProviderKind::Hetzner, "token", "must not be empty"),
            Error::Setup {
                provider: ProviderKind::Local,
                what: "the state directory".into(),
                source: "disk full".into(),
            },
            ProviderError::new(ProviderKind::Gcp, ErrorCategory::RateLimited, "slow down").into(),
            Error::github_config("app_id", "must be greater than zero"),
            Error::Github(Box::new(sam_core::GithubError::new(
                ErrorCategory::AuthError,
                "Bad credentials",
            ))),
        ];
        for error in cases {
            let before = error.category();
            let after = sam_core::Error::from(error);
            assert_eq!(after.category(), before);
        }
    }
}
