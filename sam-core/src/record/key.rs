//! The keys every control plane on one database shares, stored sealed.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// What a [`KeyRecord`] is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyPurpose {
    /// Signs the tokens the control plane issues ([`crate::TokenSigner`]).
    Signing,
    /// A node's boot token, which its VM agent keys its management tokens with;
    /// the key's id is the node's.
    Node,
}

impl KeyPurpose {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Signing => "signing",
            Self::Node => "node",
        }
    }
}

/// A key every control plane on one database shares, kept in the store sealed with
/// the credential key ([`crate::CredentialCipher`]), so servers share nothing else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    /// The key's id (tokens name it, so a key can be replaced while the tokens it
    /// signed still verify).
    pub id: String,
    /// What it is for.
    pub purpose: KeyPurpose,
    /// The key, sealed for [`KeyRecord::context`].
    pub sealed: crate::credential::Sealed,
    /// When it was made.
    pub created_at: DateTime<Utc>,
}

impl KeyRecord {
    /// What the key is sealed for: its purpose and id, so a sealed key copied to
    /// another row does not open.
    pub fn context(purpose: KeyPurpose, id: &str) -> String {
        format!("key:{}:{id}", purpose.as_str())
    }

    /// A key record holding `key`, sealed with `cipher` for its purpose and id.
    ///
    /// # Errors
    /// [`crate::CredentialError`] for a key the cipher cannot seal (empty, oversized).
    pub fn seal(
        purpose: KeyPurpose,
        id: impl Into<String>,
        key: &crate::secret::Secret,
        cipher: &crate::credential::CredentialCipher,
        created_at: DateTime<Utc>,
    ) -> Result<Self, crate::credential::CredentialError> {
        let id = id.into();
        Ok(Self {
            sealed: cipher.seal(key, &Self::context(purpose, &id))?,
            id,
            purpose,
            created_at,
        })
    }

    /// The key, opened with `cipher`.
    ///
    /// # Errors
    /// [`crate::CredentialError`] when it was sealed with another key, or for
    /// another purpose or id.
    pub fn open(
        &self,
        cipher: &crate::credential::CredentialCipher,
    ) -> Result<crate::secret::Secret, crate::credential::CredentialError> {
        cipher.open(&self.sealed, &Self::context(self.purpose, &self.id))
    }
}
