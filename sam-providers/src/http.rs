//! The HTTP client every cloud backend builds (one per provider instance), and the response handling they
//! have in common. Nothing here retries or sleeps.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::header::HeaderMap;
use sam_core::{ErrorCategory, ProviderError, ProviderKind};
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// How long one request may take, connection included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A new client (rustls, 30 s timeout) for one provider instance; its clones share
/// one connection pool.
#[cfg_attr(not(feature = "cloud"), allow(dead_code))]
pub(crate) fn shared_client(provider: ProviderKind) -> Result<reqwest::Client> {
    client().map_err(|e| Error::Setup {
        provider,
        what: "the HTTP client".into(),
        source: e.into(),
    })
}

/// A new client, or why it could not be built.
///
/// Not one client for the whole process: a pooled connection belongs to the tokio
/// runtime that opened it, and a program with several runtimes (or tests, one
/// runtime each, against servers that reuse ports) would send a request down a
/// connection whose runtime is gone and get a failure that no retry explains.
/// Each provider builds its client once, when it is constructed.
pub(crate) fn client() -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .user_agent(concat!("sam-sdk/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// A response read in full.
#[derive(Debug)]
pub(crate) struct Reply {
    /// The HTTP status.
    pub(crate) status: u16,
    /// `Retry-After`, or Hetzner's `RateLimit-Reset` (GitHub's `X-RateLimit-Reset`),
    /// as a wait from now.
    pub(crate) retry_after: Option<Duration>,
    /// Whether the response says no requests remain (`X-RateLimit-Remaining: 0`,
    /// or `RateLimit-Remaining: 0`).
    pub(crate) rate_limit_exhausted: bool,
    /// The body as text.
    pub(crate) body: String,
}

impl Reply {
    /// Whether the status is 2xx.
    pub(crate) fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// Fails with the provider's classification unless the status is 2xx.
    #[cfg_attr(not(feature = "cloud"), allow(dead_code))]
    pub(crate) fn success(
        self,
        classify: fn(Option<u16>, &str) -> ProviderError,
    ) -> Result<Self, ProviderError> {
        if self.is_success() {
            return Ok(self);
        }
        let error = classify(Some(self.status), &self.body);
        Err(match self.retry_after {
            Some(wait) if error.retry_after().is_none() => error.with_retry_after(wait),
            _ => error,
        })
    }

    /// Decodes the body of a successful response.
    #[cfg_attr(not(feature = "cloud"), allow(dead_code))]
    pub(crate) fn json<T: DeserializeOwned>(
        &self,
        provider: ProviderKind,
    ) -> Result<T, ProviderError> {
        serde_json::from_str(&self.body).map_err(|e| {
            ProviderError::new(
                provider,
                ErrorCategory::Unknown,
                "the response could not be decoded",
            )
            .with_status(self.status)
            .with_body(&self.body)
            .with_source(e)
        })
    }
}

/// The category and sentence of a transport failure: a request that could not be
/// built is `invalid_config`, anything else (refused, reset, timed out) `transient`.
pub(crate) fn transport_failure(e: &reqwest::Error) -> (ErrorCategory, String) {
    let category = if e.is_builder() {
        ErrorCategory::InvalidConfig
    } else {
        ErrorCategory::Transient
    };
    let what = if e.is_timeout() {
        "timed out"
    } else {
        "could not be completed"
    };
    (category, format!("the request {what}"))
}

/// Sends a request and reads the whole response.
pub(crate) async fn exchange(request: reqwest::RequestBuilder) -> Result<Reply, reqwest::Error> {
    let response = request.send().await?;
    let status = response.status().as_u16();
    let headers = response.headers();
    let retry_after = retry_after(headers, SystemTime::now());
    let rate_limit_exhausted =
        ["x-ratelimit-remaining", "ratelimit-remaining"]
            .iter()
            .any(|name| {
                headers
                    .get(*name)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.trim() == "0")
            });
    let body = response.text().await?;
    Ok(Reply {
        status,
        retry_after,
        rate_limit_exhausted,
        body,
    })
}

/// Sends a request and reads the whole response; transport failures are `transient`.
#[cfg_attr(not(feature = "cloud"), allow(dead_code))]
pub(crate) async fn send(
    provider: ProviderKind,
    request: reqwest::RequestBuilder,
) -> Result<Reply, ProviderError> {
    exchange(request).await.map_err(|e| {
        let (category, message) = transport_failure(&e);
        ProviderError::new(provider, category, message).with_source(e)
    })
}

/// Reads `Retry-After` (seconds) or `RateLimit-Reset` (seconds, or a UNIX timestamp
/// as Hetzner sends it).
fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let number = |name: &str| headers.get(name)?.to_str().ok()?.trim().parse::<u64>().ok();
    if let Some(seconds) = number("retry-after") {
        return Some(Duration::from_secs(seconds));
    }
    let reset = number("ratelimit-reset").or_else(|| number("x-ratelimit-reset"))?;
    // Anything past 2001-09-09 is a timestamp, not a number of seconds.
    if reset >= 1_000_000_000 {
        let now = now.duration_since(UNIX_EPOCH).ok()?.as_secs();
        Some(Duration::from_secs(reset.saturating_sub(now)))
    } else {
        Some(Duration::from_secs(reset))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn retry_after_headers() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let check = |pairs: &[(&'static str, &'static str)], expected: Option<u64>| {
            let mut headers = HeaderMap::new();
            for (k, v) in pairs {
                headers.insert(*k, HeaderValue::from_static(v));
            }
            assert_eq!(
                retry_after(&headers, now),
                expected.map(Duration::from_secs),
                "{pairs:?}"
            );
        };
        check(&[("retry-after", "7")], Some(7));
        check(&[("ratelimit-reset", "1700000042")], Some(42));
        check(&[("ratelimit-reset", "1600000000")], Some(0));
        check(&[("ratelimit-reset", "12")], Some(12));
        check(&[("x-ratelimit-reset", "1700000060")], Some(60));
        check(&[("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT")], None);
        check(&[], None);
    }
}
