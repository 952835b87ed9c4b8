//! Settings of the Hetzner Cloud backend.

use sam_core::{ProviderKind, Secret};
use serde::Deserialize;

use crate::error::{Error, Result};

/// Settings of [`super::HetznerProvider`].
#[derive(Debug, Clone, Deserialize)]
pub struct HetznerConfig {
    /// API token of the project (read and write).
    pub token: Secret,
    /// API base URL, without a trailing slash; tests point it at a mock.
    #[serde(default = "default_base_url")]
    pub base_url: String,
    /// Image name used when a spec names none.
    #[serde(default = "default_image")]
    pub image: String,
}

fn default_base_url() -> String {
    "https://api.hetzner.cloud/v1".to_owned()
}

fn default_image() -> String {
    "ubuntu-24.04".to_owned()
}

impl HetznerConfig {
    /// A config with the token and the defaults.
    pub fn new(token: Secret) -> Self {
        Self {
            token,
            base_url: default_base_url(),
            image: default_image(),
        }
    }

    /// Reads `HCLOUD_TOKEN`, and `SAM_HETZNER_BASE_URL` if set.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when `HCLOUD_TOKEN` is missing or empty.
    pub fn from_env() -> Result<Self> {
        let token = crate::env_var(ProviderKind::Hetzner, "HCLOUD_TOKEN")?;
        sam_core::secret::register(&token);
        let mut config = Self::new(Secret::new(token));
        if let Ok(url) = std::env::var("SAM_HETZNER_BASE_URL") {
            config.base_url = url;
        }
        Ok(config)
    }

    pub(crate) fn validate(&self) -> Result<()> {
        let provider = ProviderKind::Hetzner;
        if self.token.is_empty() {
            return Err(Error::config(provider, "token", "must not be empty"));
        }
        crate::check_base_url(provider, &self.base_url)
    }
}
