//! The crate's one error type.

use std::fmt;

use sam_core::{Classify, ErrorCategory};

/// What went wrong while validating or rendering node boot user-data.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// One or more fields of a [`crate::NodeBoot`] are invalid; every failing field is listed.
    #[error("invalid node boot input: {}", FieldErrorList(errors))]
    Invalid {
        /// Every field that failed validation, in field order.
        errors: Vec<FieldError>,
    },
    /// The rendered user-data is larger than the providers accept.
    #[error("rendered user-data is {size} bytes, over the {limit}-byte limit")]
    TooLarge {
        /// Size of the rendered user-data in bytes.
        size: usize,
        /// The limit it exceeded ([`crate::MAX_USER_DATA_BYTES`]).
        limit: usize,
    },
    /// The YAML serializer refused the cloud-config.
    #[error("could not serialize the cloud-config")]
    Serialize(#[source] serde_saphyr::SerializeError),
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The fields named by an [`Error::Invalid`], empty for other variants.
    pub fn invalid_fields(&self) -> Vec<&'static str> {
        match self {
            Self::Invalid { errors } => errors.iter().map(|e| e.field).collect(),
            _ => Vec::new(),
        }
    }

    /// Whether the same call may succeed later; never, for this crate.
    pub fn is_retryable(&self) -> bool {
        self.category().is_retryable()
    }
}

impl Classify for Error {
    fn category(&self) -> ErrorCategory {
        match self {
            Self::Invalid { .. } | Self::TooLarge { .. } | Self::Serialize(_) => {
                ErrorCategory::InvalidConfig
            }
        }
    }
}

/// One invalid field of a [`crate::NodeBoot`].
///
/// The reason never quotes the rejected value, so a mistyped token cannot leak
/// through an error message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The field's name, as spelled in [`crate::NodeBoot`] (`journald.system_max_use`
    /// for nested fields).
    pub field: &'static str,
    /// What is wrong with it, as a sentence fragment.
    pub reason: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

/// Formats a list of field errors as `a: why; b: why`.
struct FieldErrorList<'a>(&'a [FieldError]);

impl fmt::Display for FieldErrorList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}
