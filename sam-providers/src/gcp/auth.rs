//! Service-account access tokens: a signed JWT exchanged at the key's `token_uri`.
//!
//! Implemented here rather than with `gcp_auth`: that crate retries failed token
//! requests with sleeps of its own (a backend must not), reports every failure as
//! "token request failed" without status or body (so `invalid_grant` could not be
//! classified as `auth_error` and a 503 as `transient`), and brings a second HTTP
//! stack that ignores the shared client and its timeout. Signing is the crate's one
//! RS256 signer ([`crate::jwt`]).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sam_core::{ErrorCategory, ProviderError, ProviderKind, Secret};
use serde::Deserialize;
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::config::GcpServiceAccount;
use super::error::classify;
use crate::error::{Error, Result};
use crate::http::send;
use crate::jwt::Rs256Key;

const KIND: ProviderKind = ProviderKind::Gcp;
const SCOPE: &str = "https://www.googleapis.com/auth/compute";
/// A token is renewed this long before it expires.
const MARGIN: Duration = Duration::from_secs(60);

/// Mints and caches access tokens for one service account.
#[derive(Debug)]
pub(super) struct TokenSource {
    account: GcpServiceAccount,
    key: Rs256Key,
    http: reqwest::Client,
    cached: Mutex<Option<(Secret, Instant)>>,
}

#[derive(Deserialize)]
struct TokenReply {
    access_token: String,
    expires_in: u64,
}

impl TokenSource {
    pub(super) fn new(account: GcpServiceAccount, http: reqwest::Client) -> Result<Self> {
        let key = Rs256Key::from_pem(account.private_key.expose())
            .map_err(|reason| Error::config(KIND, "service_account.private_key", reason))?;
        Ok(Self {
            account,
            key,
            http,
            cached: Mutex::new(None),
        })
    }

    /// A valid access token, minted when the cached one is missing or about to expire.
    pub(super) async fn token(&self) -> Result<Secret, ProviderError> {
        let mut cached = self.cached.lock().await;
        if let Some((token, expires)) = cached.as_ref()
            && Instant::now() + MARGIN < *expires
        {
            return Ok(token.clone());
        }
        let assertion = self.assertion()?;
        let request = self.http.post(&self.account.token_uri).form(&[
            ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
            ("assertion", assertion.as_str()),
        ]);
        let reply = send(KIND, request).await?.success(classify)?;
        let minted: TokenReply = reply.json(KIND)?;
        let token = Secret::new(minted.access_token);
        *cached = Some((
            token.clone(),
            Instant::now() + Duration::from_secs(minted.expires_in),
        ));
        Ok(token)
    }

    /// The signed JWT (RS256) the token endpoint exchanges for an access token.
    fn assertion(&self) -> Result<String, ProviderError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let claims = serde_json::json!({
            "iss": self.account.client_email,
            "scope": SCOPE,
            "aud": self.account.token_uri,
            "iat": now,
            "exp": now + 3600,
        });
        self.key.sign(&claims).map_err(|()| {
            ProviderError::new(
                KIND,
                ErrorCategory::Unknown,
                "could not sign the token request",
            )
        })
    }
}
