//! Service-account access tokens: a signed JWT exchanged at the key's `token_uri`.
//!
//! Implemented here rather than with `gcp_auth`: that crate retries failed token
//! requests with sleeps of its own (a backend must not), reports every failure as
//! "token request failed" without status or body (so `invalid_grant` could not be
//! classified as `auth_error` and a 503 as `transient`), and brings a second HTTP
//! stack that ignores the shared client and its timeout. Signing uses `ring`, which
//! rustls already brings, so no crypto crate is added.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::rand::SystemRandom;
use ring::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
use sam_core::{ErrorCategory, ProviderError, ProviderKind, Secret};
use serde::Deserialize;
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::config::GcpServiceAccount;
use super::error::classify;
use crate::error::{Error, Result};
use crate::http::send;

const KIND: ProviderKind = ProviderKind::Gcp;
const SCOPE: &str = "https://www.googleapis.com/auth/compute";
/// A token is renewed this long before it expires.
const MARGIN: Duration = Duration::from_secs(60);

/// Mints and caches access tokens for one service account.
#[derive(Debug)]
pub(super) struct TokenSource {
    account: GcpServiceAccount,
    key: KeyPair,
    http: reqwest::Client,
    cached: Mutex<Option<(Secret, Instant)>>,
}

/// The parsed private key; `Debug` shows nothing of it.
struct KeyPair(RsaKeyPair);

impl std::fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyPair(***)")
    }
}

#[derive(Deserialize)]
struct TokenReply {
    access_token: String,
    expires_in: u64,
}

impl TokenSource {
    pub(super) fn new(account: GcpServiceAccount, http: reqwest::Client) -> Result<Self> {
        let invalid = |reason: &str| Error::config(KIND, "service_account.private_key", reason);
        let pem = account.private_key.expose();
        let base64: String = pem
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with("-----"))
            .collect();
        let der = STANDARD
            .decode(base64)
            .map_err(|_| invalid("is not a PEM-encoded key"))?;
        let key = RsaKeyPair::from_pkcs8(&der).map_err(|_| invalid("is not a PKCS#8 RSA key"))?;
        Ok(Self {
            account,
            key: KeyPair(key),
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
        let header = serde_json::json!({ "alg": "RS256", "typ": "JWT" });
        let claims = serde_json::json!({
            "iss": self.account.client_email,
            "scope": SCOPE,
            "aud": self.account.token_uri,
            "iat": now,
            "exp": now + 3600,
        });
        let message = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let mut signature = vec![0; self.key.0.public().modulus_len()];
        self.key
            .0
            .sign(
                &RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                message.as_bytes(),
                &mut signature,
            )
            .map_err(|_| {
                ProviderError::new(
                    KIND,
                    ErrorCategory::Unknown,
                    "could not sign the token request",
                )
            })?;
        Ok(format!("{message}.{}", URL_SAFE_NO_PAD.encode(signature)))
    }
}
