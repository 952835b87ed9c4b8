//! Settings of the Google Compute Engine backend.

use sam_core::{Location, ProviderKind, Secret};
use serde::Deserialize;

use crate::error::{Error, Result};

/// The fields of a service-account key file the backend uses (others are ignored).
#[derive(Debug, Clone, Deserialize)]
pub struct GcpServiceAccount {
    /// The account's e-mail, the JWT issuer.
    pub client_email: String,
    /// The PKCS#8 RSA private key in PEM form.
    pub private_key: Secret,
    /// Where tokens are minted; tests point it at a mock.
    #[serde(default = "default_token_uri")]
    pub token_uri: String,
    /// The project the key belongs to.
    #[serde(default)]
    pub project_id: Option<String>,
}

/// Settings of [`super::GcpProvider`].
#[derive(Debug, Clone, Deserialize)]
pub struct GcpConfig {
    /// The project that owns the instances.
    pub project_id: String,
    /// Zones to create in and to search for instances, preferred first.
    pub zones: Vec<Location>,
    /// The service account that calls the API.
    pub service_account: GcpServiceAccount,
    /// Compute API base URL up to `/compute/v1`, without a trailing slash.
    #[serde(default = "default_base_url")]
    pub base_url: String,
    /// Source image used when a spec names none.
    #[serde(default = "default_image")]
    pub image: String,
    /// Boot disk size in GB.
    #[serde(default = "default_disk_gb")]
    pub disk_gb: u32,
}

fn default_token_uri() -> String {
    "https://oauth2.googleapis.com/token".to_owned()
}

fn default_base_url() -> String {
    "https://compute.googleapis.com/compute/v1".to_owned()
}

fn default_image() -> String {
    "projects/debian-cloud/global/images/family/debian-12".to_owned()
}

fn default_disk_gb() -> u32 {
    50
}

impl GcpConfig {
    /// A config with the defaults for the base URL, image and disk.
    pub fn new(
        project_id: impl Into<String>,
        zones: Vec<Location>,
        service_account: GcpServiceAccount,
    ) -> Self {
        Self {
            project_id: project_id.into(),
            zones,
            service_account,
            base_url: default_base_url(),
            image: default_image(),
            disk_gb: default_disk_gb(),
        }
    }

    /// Reads the key file named by `GOOGLE_APPLICATION_CREDENTIALS`, the project from
    /// `GCP_PROJECT` (or the key), the zone from `GCP_ZONE`, and
    /// `SAM_GCP_BASE_URL` if set.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when a variable is missing or the key file cannot be
    /// read or parsed.
    pub fn from_env() -> Result<Self> {
        let provider = ProviderKind::Gcp;
        let path = crate::env_var(provider, "GOOGLE_APPLICATION_CREDENTIALS")?;
        let text = std::fs::read_to_string(&path).map_err(|e| {
            Error::config(
                provider,
                "GOOGLE_APPLICATION_CREDENTIALS",
                format!("cannot be read: {e}"),
            )
        })?;
        let account: GcpServiceAccount = serde_json::from_str(&text).map_err(|e| {
            Error::config(
                provider,
                "GOOGLE_APPLICATION_CREDENTIALS",
                format!("is not a service-account key: {e}"),
            )
        })?;
        let project = match std::env::var("GCP_PROJECT") {
            Ok(p) if !p.is_empty() => p,
            _ => account.project_id.clone().ok_or_else(|| {
                Error::config(
                    provider,
                    "GCP_PROJECT",
                    "is not set and the key names no project",
                )
            })?,
        };
        let zone = crate::env_var(provider, "GCP_ZONE")?;
        let zone =
            Location::new(zone).map_err(|e| Error::config(provider, "GCP_ZONE", e.reason))?;
        let mut config = Self::new(project, vec![zone], account);
        if let Ok(url) = std::env::var("SAM_GCP_BASE_URL") {
            config.base_url = url;
        }
        Ok(config)
    }

    pub(crate) fn validate(&self) -> Result<()> {
        let provider = ProviderKind::Gcp;
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
        if self.service_account.client_email.is_empty() {
            return Err(Error::config(
                provider,
                "service_account.client_email",
                "must not be empty",
            ));
        }
        crate::check_base_url(provider, &self.service_account.token_uri)?;
        crate::check_base_url(provider, &self.base_url)
    }
}
