//! Settings of the GitHub App client.

use sam_core::Secret;
use serde::Deserialize;

use crate::error::{Error, Result};

/// Settings of [`super::GithubApp`]. No `Default`: it holds the App's key.
#[derive(Debug, Clone, Deserialize)]
pub struct GithubAppConfig {
    /// The App's id (the JWT issuer).
    pub app_id: u64,
    /// The App's RSA private key in PEM form, as GitHub issues it (PKCS#1) or PKCS#8.
    pub private_key: Secret,
    /// The REST API's base URL, without a trailing slash (`https://api.github.com`,
    /// `https://<host>/api/v3` for GitHub Enterprise Server); tests point it at a mock.
    #[serde(default = "default_api_url")]
    pub api_url: String,
}

fn default_api_url() -> String {
    "https://api.github.com".to_owned()
}

impl GithubAppConfig {
    /// A config for `app_id` with `private_key`, against `api.github.com`.
    pub fn new(app_id: u64, private_key: Secret) -> Self {
        Self {
            app_id,
            private_key,
            api_url: default_api_url(),
        }
    }

    /// Reads `GITHUB_APP_ID`, the key from `GITHUB_APP_PRIVATE_KEY` or the file named
    /// by `GITHUB_APP_PRIVATE_KEY_FILE`, and `GITHUB_API_URL` if set.
    ///
    /// # Errors
    /// [`Error::InvalidGithubConfig`] for a missing or malformed variable or an
    /// unreadable key file.
    pub fn from_env() -> Result<Self> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let app_id = var("GITHUB_APP_ID")
            .ok_or_else(|| Error::github_config("GITHUB_APP_ID", "is not set in the environment"))?
            .trim()
            .parse()
            .map_err(|_| Error::github_config("GITHUB_APP_ID", "is not a number"))?;
        let private_key = match (
            var("GITHUB_APP_PRIVATE_KEY"),
            var("GITHUB_APP_PRIVATE_KEY_FILE"),
        ) {
            (Some(key), _) => key,
            (None, Some(path)) => std::fs::read_to_string(&path).map_err(|e| {
                Error::github_config("GITHUB_APP_PRIVATE_KEY_FILE", format!("{path}: {e}"))
            })?,
            (None, None) => {
                return Err(Error::github_config(
                    "GITHUB_APP_PRIVATE_KEY",
                    "is not set (nor GITHUB_APP_PRIVATE_KEY_FILE)",
                ));
            }
        };
        let mut config = Self::new(app_id, Secret::new(private_key));
        if let Some(url) = var("GITHUB_API_URL") {
            config.api_url = url;
        }
        Ok(config)
    }
}
