//! User API tokens as records: named, stored only as a hash, with their creation
//! time, last use, optional expiry and revocation.
//!
//! A token is a random string handed to its holder once; the store keeps its hex
//! SHA-256 ([`hash_api_token`]) and the [`ApiTokenRecord`] around it. Whether a
//! presented token lets a request through is the pure [`ApiTokenRecord::check`];
//! the server reads the record by hash, asks it, and records the use at most once
//! per [`LAST_USE_GRANULARITY`] ([`ApiTokenRecord::needs_touch`]), so reads do not
//! turn into writes.
//!
//! The token a server is started with (`SAM_API_TOKEN`, or the file it creates) is
//! the *bootstrap* token ([`ApiTokenKind::Bootstrap`]): starting with another value
//! revokes the previous one ([`crate::AccountStore::rotate_bootstrap_api_token`]).
//!
//! ```
//! use chrono::{Duration, TimeZone, Utc};
//! use sam_core::{ApiTokenKind, ApiTokenRecord, ApiTokenRefusal, hash_api_token};
//!
//! let now = Utc.timestamp_opt(1_700_000_000, 0).unwrap();
//! let mut token = ApiTokenRecord::new("ci", ApiTokenKind::User, &hash_api_token("s3cret-value"), now);
//! token.expires_at = Some(now + Duration::days(30));
//! assert_eq!(token.check(now), Ok(()));
//! assert_eq!(token.check(now + Duration::days(31)), Err(ApiTokenRefusal::Expired));
//! token.revoked_at = Some(now);
//! assert_eq!(token.check(now), Err(ApiTokenRefusal::Revoked));
//! ```

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

/// How often a token's last use is written at most: a use within this long of the
/// recorded one is not written again.
pub const LAST_USE_GRANULARITY: chrono::Duration = chrono::Duration::seconds(60);

/// The longest name a token may have.
pub const MAX_API_TOKEN_NAME: usize = 64;

/// The hex SHA-256 of an API token: the only form in which tokens are stored.
pub fn hash_api_token(token: &str) -> String {
    sha2::Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApiTokenKind {
    /// The token the server was started with: an admin token, revoked when the
    /// server starts with another one.
    Bootstrap,
    /// May use every route, including the management of tokens.
    Admin,
    /// May use every route but the management of tokens.
    User,
}

impl ApiTokenKind {
    /// Its name, as stored and shown.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Bootstrap => "bootstrap",
            Self::Admin => "admin",
            Self::User => "user",
        }
    }

    /// Whether it may manage tokens.
    pub const fn is_admin(self) -> bool {
        matches!(self, Self::Bootstrap | Self::Admin)
    }
}

impl fmt::Display for ApiTokenKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ApiTokenKind {
    type Err = crate::model::ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "bootstrap" => Ok(Self::Bootstrap),
            "admin" => Ok(Self::Admin),
            "user" => Ok(Self::User),
            other => Err(crate::model::ParseError::new(
                "API token kind",
                other,
                "expected bootstrap, admin or user",
            )),
        }
    }
}

/// Why a known token does not let a request through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ApiTokenRefusal {
    /// It was revoked.
    Revoked,
    /// Its expiry has passed.
    Expired,
}

impl fmt::Display for ApiTokenRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Revoked => "this API token was revoked",
            Self::Expired => "this API token has expired",
        })
    }
}

/// A user API token, stored only as a hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiTokenRecord {
    /// Public id of the token (`tok-` and the start of its hash).
    pub id: String,
    /// Hex SHA-256 of the token; the token itself is never stored.
    pub hash: String,
    /// Its name, chosen by whoever created it.
    pub label: String,
    /// What it may do.
    pub kind: ApiTokenKind,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it last let a request through (to [`LAST_USE_GRANULARITY`]).
    pub last_used_at: Option<DateTime<Utc>>,
    /// When it stops working; `None` never.
    pub expires_at: Option<DateTime<Utc>>,
    /// When it was revoked; `None` while it is not.
    pub revoked_at: Option<DateTime<Utc>>,
}

impl ApiTokenRecord {
    /// A new, unused, unrevoked token without expiry, named `label`, whose id is
    /// derived from its hash.
    pub fn new(label: &str, kind: ApiTokenKind, hash: &str, at: DateTime<Utc>) -> Self {
        Self {
            id: format!("tok-{}", hash.get(..12).unwrap_or(hash)),
            hash: hash.to_owned(),
            label: label.to_owned(),
            kind,
            created_at: at,
            last_used_at: None,
            expires_at: None,
            revoked_at: None,
        }
    }

    /// Whether the token lets a request through at `now`.
    ///
    /// # Errors
    /// Why it does not: revoked (whatever its expiry), or expired.
    pub fn check(&self, now: DateTime<Utc>) -> Result<(), ApiTokenRefusal> {
        if self.revoked_at.is_some() {
            return Err(ApiTokenRefusal::Revoked);
        }
        if self.expires_at.is_some_and(|at| at <= now) {
            return Err(ApiTokenRefusal::Expired);
        }
        Ok(())
    }

    /// Whether a use at `now` should be written: the recorded last use is missing or
    /// older than [`LAST_USE_GRANULARITY`].
    pub fn needs_touch(&self, now: DateTime<Utc>) -> bool {
        self.last_used_at
            .is_none_or(|last| now - last >= LAST_USE_GRANULARITY)
    }
}

/// Checks a token's name: 1 to [`MAX_API_TOKEN_NAME`] characters, no control
/// characters, not blank.
///
/// # Errors
/// What is wrong with it, as one sentence.
pub fn check_api_token_name(name: &str) -> Result<(), String> {
    if name.trim().is_empty() {
        return Err("a token's name must not be empty".to_owned());
    }
    if name.chars().count() > MAX_API_TOKEN_NAME {
        return Err(format!(
            "a token's name has at most {MAX_API_TOKEN_NAME} characters"
        ));
    }
    if name.chars().any(char::is_control) {
        return Err("a token's name must not hold control characters".to_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use chrono::{Duration, TimeZone};

    use super::*;

    fn now() -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000, 0).unwrap()
    }

    #[test]
    fn tokens_are_hashed_with_sha256() {
        assert_eq!(
            hash_api_token("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn check_refuses_revoked_and_expired_tokens() {
        let fresh = ApiTokenRecord::new("t", ApiTokenKind::User, &hash_api_token("x"), now());
        let check = |token: &ApiTokenRecord, at, expected| {
            assert_eq!(token.check(at), expected, "{token:?} at {at}");
        };
        check(&fresh, now(), Ok(()));
        check(&fresh, now() + Duration::days(3650), Ok(()));
        let expiring = ApiTokenRecord {
            expires_at: Some(now() + Duration::hours(1)),
            ..fresh.clone()
        };
        check(&expiring, now(), Ok(()));
        check(
            &expiring,
            now() + Duration::hours(1),
            Err(ApiTokenRefusal::Expired),
        );
        let revoked = ApiTokenRecord {
            revoked_at: Some(now()),
            ..expiring
        };
        check(&revoked, now(), Err(ApiTokenRefusal::Revoked));
        check(
            &revoked,
            now() + Duration::days(1),
            Err(ApiTokenRefusal::Revoked),
        );
    }

    #[test]
    fn uses_are_written_at_most_once_a_minute() {
        let mut token = ApiTokenRecord::new("t", ApiTokenKind::Admin, "ab", now());
        assert_eq!(token.id, "tok-ab");
        assert!(token.needs_touch(now()));
        token.last_used_at = Some(now());
        assert!(!token.needs_touch(now() + Duration::seconds(59)));
        assert!(token.needs_touch(now() + Duration::seconds(60)));
    }

    #[test]
    fn kinds_round_trip_and_only_admins_manage() {
        for kind in [
            ApiTokenKind::Bootstrap,
            ApiTokenKind::Admin,
            ApiTokenKind::User,
        ] {
            assert_eq!(kind.as_str().parse::<ApiTokenKind>(), Ok(kind));
            assert_eq!(kind.is_admin(), kind != ApiTokenKind::User);
        }
        assert!("root".parse::<ApiTokenKind>().is_err());
    }

    #[test]
    fn names_are_checked() {
        for (name, ok) in [
            ("ci", true),
            ("laptop of Ana", true),
            ("", false),
            ("  ", false),
            ("a\u{0}b", false),
            ("line\nbreak", false),
        ] {
            assert_eq!(check_api_token_name(name).is_ok(), ok, "{name:?}");
        }
        assert!(check_api_token_name(&"x".repeat(MAX_API_TOKEN_NAME + 1)).is_err());
    }
}
