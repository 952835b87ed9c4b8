//! Settings of the Scaleway backend.

use sam_core::{Location, ProviderKind, Secret};
use serde::Deserialize;

use crate::error::{Error, Result};

/// Settings of [`super::ScalewayProvider`].
#[derive(Debug, Clone, Deserialize)]
pub struct ScalewayConfig {
    /// Secret key of an API key (`X-Auth-Token`).
    pub secret_key: Secret,
    /// The project that owns the servers.
    pub project_id: String,
    /// Zones to create in and to search for servers, preferred first.
    pub zones: Vec<Location>,
    /// API base URL, without a trailing slash; tests point it at a mock.
    #[serde(default = "default_base_url")]
    pub base_url: String,
    /// Marketplace image label (or an image UUID) used when a spec names none.
    #[serde(default = "default_image")]
    pub image: String,
}

fn default_base_url() -> String {
    "https://api.scaleway.com".to_owned()
}

fn default_image() -> String {
    "ubuntu_noble".to_owned()
}

impl ScalewayConfig {
    /// A config with the defaults for the base URL and image.
    pub fn new(secret_key: Secret, project_id: impl Into<String>, zones: Vec<Location>) -> Self {
        Self {
            secret_key,
            project_id: project_id.into(),
            zones,
            base_url: default_base_url(),
            image: default_image(),
        }
    }

    /// Reads `SCW_SECRET_KEY`, `SCW_DEFAULT_PROJECT_ID`, `SCW_DEFAULT_ZONE` (default
    /// `fr-par-1`), and `SAM_SCALEWAY_BASE_URL` if set.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when a required variable is missing or the zone is invalid.
    pub fn from_env() -> Result<Self> {
        let provider = ProviderKind::Scaleway;
        let key = crate::env_var(provider, "SCW_SECRET_KEY")?;
        sam_core::secret::register(&key);
        let project = crate::env_var(provider, "SCW_DEFAULT_PROJECT_ID")?;
        let zone = std::env::var("SCW_DEFAULT_ZONE").unwrap_or_else(|_| "fr-par-1".into());
        let zone = Location::new(zone)
            .map_err(|e| Error::config(provider, "SCW_DEFAULT_ZONE", e.reason))?;
        let mut config = Self::new(Secret::new(key), project, vec![zone]);
        if let Ok(url) = std::env::var("SAM_SCALEWAY_BASE_URL") {
            config.base_url = url;
        }
        Ok(config)
    }

    pub(crate) fn validate(&self) -> Result<()> {
        let provider = ProviderKind::Scaleway;
        if self.secret_key.is_empty() {
            return Err(Error::config(provider, "secret_key", "must not be empty"));
        }
        if self.project_id.trim().is_empty() {
            return Err(Error::config(provider, "project_id", "must not be empty"));
        }
        if self.zones.is_empty() {
            return Err(Error::config(
                provider,
                "zones",
                "must name at least one zone",
            ));
        }
        crate::check_base_url(provider, &self.base_url)
    }
}
