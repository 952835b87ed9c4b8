//! Scoped, signed, expiring tokens between the control plane and VM agents.
//!
//! A token is `base64url(claims JSON) . base64url(HMAC-SHA256(key, claims))`.
//! A signer may hold several keys, each with an id ([`TokenSigner::with_keys`]):
//! its tokens name the key that signed them (`kid`), the newest key signs, and a
//! token signed by an older key verifies until it expires, so a key can be replaced.
//! Its claims name an audience, a scope (`node` or `workspace`), a subject (the node
//! or workspace id) and an expiry in hours, not days; [`TokenSigner::verify`] rejects
//! a token with a wrong audience, scope or subject, a bad signature, an expired one,
//! one without a scope, one issued in the future (beyond [`CLOCK_SKEW`]) and one
//! whose lifetime exceeds [`MAX_TOKEN_TTL`], so a leaked key cannot mint a token that
//! outlives every rotation. Cloud credentials never reach a VM: a node holds only
//! its node-scoped token.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::secret::Secret;

type HmacSha256 = Hmac<Sha256>;

/// What a token lets its holder do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenScope {
    /// Node-level calls: ready, heartbeat, node management.
    Node,
    /// Calls about one workspace: workspace ready, session events.
    Workspace,
}

/// The signed content of a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenClaims {
    /// Who the token is for (`sam-control-plane`, `sam-vm-agent`).
    pub aud: String,
    /// What it allows. Required: a token without one is rejected.
    pub scope: Option<TokenScope>,
    /// The node or workspace id it is about.
    pub sub: String,
    /// Issued at, seconds since the epoch.
    pub iat: i64,
    /// Expires at, seconds since the epoch.
    pub exp: i64,
    /// The id of the key that signed it; absent for a signer whose one key has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
}

/// The part of the claims read before the signature is checked: which key to use.
#[derive(Deserialize)]
struct KeyId {
    #[serde(default)]
    kid: Option<String>,
}

impl TokenClaims {
    /// Whether the token is past half its life, when it should be refreshed.
    pub fn needs_refresh(&self, now: DateTime<Utc>) -> bool {
        let half = self.iat + (self.exp - self.iat) / 2;
        now.timestamp() >= half
    }
}

/// Why a token was rejected. Deliberately coarse in `Display`, so an attacker learns little.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// Not of the `claims.signature` form, or not decodable.
    #[error("the token is malformed")]
    Malformed,
    /// The signature does not match.
    #[error("the token's signature is invalid")]
    BadSignature,
    /// The token has expired.
    #[error("the token has expired")]
    Expired,
    /// The token is for another audience.
    #[error("the token is for another audience")]
    WrongAudience,
    /// The token has no scope.
    #[error("the token has no scope")]
    NoScope,
    /// The token has another scope.
    #[error("the token's scope does not allow this call")]
    WrongScope,
    /// The token is about another node or workspace.
    #[error("the token is for another subject")]
    WrongSubject,
    /// The token claims to be issued later than now plus [`CLOCK_SKEW`].
    #[error("the token is issued in the future")]
    IssuedInFuture,
    /// The token lives longer than any token is issued for ([`MAX_TOKEN_TTL`]), or
    /// expires before it is issued.
    #[error("the token's lifetime is out of bounds")]
    BadLifetime,
}

/// Longest lifetime a signer issues: tokens live for hours, not days.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

/// How far in the future a token's issue time may lie, for clocks that differ a little
/// between the control plane and a node.
pub const CLOCK_SKEW: Duration = Duration::from_secs(60);

/// Issues and verifies tokens for one audience, with one key or several.
#[derive(Debug, Clone)]
pub struct TokenSigner {
    /// The keys by id, oldest first.
    keys: Vec<(Option<String>, Secret)>,
    /// The one that signs: the last, unless [`TokenSigner::signing_with`] chose.
    signing: usize,
    audience: String,
}

/// Which of several keys, made at `created` (oldest first), signs at `now`: the
/// newest that is at least `activation` old, or the first. A new key is thus only
/// verified for `activation`, long enough for every server to have read it,
/// before any server signs with it.
pub fn active_key(created: &[DateTime<Utc>], now: DateTime<Utc>, activation: Duration) -> usize {
    let activation = chrono::Duration::from_std(activation).unwrap_or(chrono::Duration::MAX);
    created
        .iter()
        .rposition(|made| now.signed_duration_since(*made) >= activation)
        .unwrap_or(0)
}

impl TokenSigner {
    /// A signer for `audience` with `key` (at least 32 bytes).
    ///
    /// # Errors
    /// [`crate::Error::InvalidInput`] for a key shorter than 32 bytes or an empty audience.
    pub fn new(key: Secret, audience: impl Into<String>) -> Result<Self, crate::Error> {
        Self::checked(vec![(None, key)], audience.into())
    }

    /// A signer for `audience` with `keys` (id, key), oldest first: the last signs,
    /// and a token naming any of them verifies.
    ///
    /// # Errors
    /// [`crate::Error::InvalidInput`] for no key, a key shorter than 32 bytes, an
    /// empty or repeated id, or an empty audience.
    pub fn with_keys(
        keys: Vec<(String, Secret)>,
        audience: impl Into<String>,
    ) -> Result<Self, crate::Error> {
        let mut seen = std::collections::BTreeSet::new();
        for (id, _) in &keys {
            if id.is_empty() || !seen.insert(id.as_str()) {
                return Err(crate::Error::InvalidInput {
                    field: "token_key",
                    reason: format!("key ids must be set and distinct, not {id:?}"),
                });
            }
        }
        let keys = keys.into_iter().map(|(id, key)| (Some(id), key)).collect();
        Self::checked(keys, audience.into())
    }

    fn checked(
        keys: Vec<(Option<String>, Secret)>,
        audience: String,
    ) -> Result<Self, crate::Error> {
        if keys.is_empty() {
            return Err(crate::Error::InvalidInput {
                field: "token_key",
                reason: "at least one key is needed".to_owned(),
            });
        }
        if keys.iter().any(|(_, key)| key.expose().len() < 32) {
            return Err(crate::Error::InvalidInput {
                field: "token_key",
                reason: "must be at least 32 bytes".to_owned(),
            });
        }
        if audience.is_empty() {
            return Err(crate::Error::InvalidInput {
                field: "audience",
                reason: "must not be empty".to_owned(),
            });
        }
        let signing = keys.len() - 1;
        Ok(Self {
            keys,
            signing,
            audience,
        })
    }

    /// This signer, signing with the key `kid` (the others still verify).
    ///
    /// # Errors
    /// [`crate::Error::InvalidInput`] when it holds no key `kid`.
    pub fn signing_with(mut self, kid: &str) -> Result<Self, crate::Error> {
        self.signing = self
            .keys
            .iter()
            .position(|(id, _)| id.as_deref() == Some(kid))
            .ok_or_else(|| crate::Error::InvalidInput {
                field: "token_key",
                reason: format!("no key {kid:?} to sign with"),
            })?;
        Ok(self)
    }

    /// The id of the key that signs new tokens.
    pub fn signing_key_id(&self) -> Option<&str> {
        self.keys[self.signing].0.as_deref()
    }

    /// The ids of every key it verifies with, oldest first.
    pub fn key_ids(&self) -> Vec<Option<&str>> {
        self.keys.iter().map(|(id, _)| id.as_deref()).collect()
    }

    /// The key named `kid`; a token that names none (issued before its signer had
    /// ids) is checked with the oldest key.
    fn key(&self, kid: Option<&str>) -> Option<&Secret> {
        match kid {
            Some(kid) => self
                .keys
                .iter()
                .find(|(id, _)| id.as_deref() == Some(kid))
                .map(|(_, key)| key),
            None => self.keys.first().map(|(_, key)| key),
        }
    }

    fn mac(key: &Secret, payload: &[u8]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(key.expose().as_bytes())
            .expect("HMAC takes keys of any length");
        mac.update(payload);
        mac
    }

    /// Issues a token for `subject` in `scope`, valid for `ttl` (capped at [`MAX_TOKEN_TTL`]).
    pub fn issue(
        &self,
        scope: TokenScope,
        subject: &str,
        now: DateTime<Utc>,
        ttl: Duration,
    ) -> Secret {
        let ttl = ttl.min(MAX_TOKEN_TTL).as_secs() as i64;
        let claims = TokenClaims {
            aud: self.audience.clone(),
            scope: Some(scope),
            sub: subject.to_owned(),
            iat: now.timestamp(),
            exp: now.timestamp() + ttl,
            kid: self.signing_key_id().map(str::to_owned),
        };
        self.sign(&claims)
    }

    /// Signs arbitrary claims (tests use it to craft bad tokens) with the key they
    /// name, or the signing key when they name none of this signer's.
    pub fn sign(&self, claims: &TokenClaims) -> Secret {
        let key = self
            .key(claims.kid.as_deref())
            .unwrap_or_else(|| &self.keys[self.signing].1);
        let payload =
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).expect("claims always serialize"));
        let signature =
            URL_SAFE_NO_PAD.encode(Self::mac(key, payload.as_bytes()).finalize().into_bytes());
        Secret::new(format!("{payload}.{signature}"))
    }

    /// Verifies `token` for a call in `scope` about `subject` at `now`.
    ///
    /// # Errors
    /// The first [`TokenError`] that applies: malformed, bad signature, wrong
    /// audience, no scope, wrong scope, wrong subject, issued in the future, bad
    /// lifetime, expired.
    pub fn verify(
        &self,
        token: &str,
        scope: TokenScope,
        subject: &str,
        now: DateTime<Utc>,
    ) -> Result<TokenClaims, TokenError> {
        let (payload, signature) = token.split_once('.').ok_or(TokenError::Malformed)?;
        let signature = URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| TokenError::Malformed)?;
        let json = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| TokenError::Malformed)?;
        // Only the key id is read before the signature is checked; a key this signer
        // does not hold signs nothing it accepts.
        let kid: KeyId = serde_json::from_slice(&json).map_err(|_| TokenError::Malformed)?;
        let key = self
            .key(kid.kid.as_deref())
            .ok_or(TokenError::BadSignature)?;
        Self::mac(key, payload.as_bytes())
            .verify_slice(&signature)
            .map_err(|_| TokenError::BadSignature)?;
        let claims: TokenClaims =
            serde_json::from_slice(&json).map_err(|_| TokenError::Malformed)?;
        if claims.aud != self.audience {
            return Err(TokenError::WrongAudience);
        }
        match claims.scope {
            None => return Err(TokenError::NoScope),
            Some(s) if s != scope => return Err(TokenError::WrongScope),
            Some(_) => {}
        }
        if claims.sub != subject {
            return Err(TokenError::WrongSubject);
        }
        if claims.iat > now.timestamp().saturating_add(CLOCK_SKEW.as_secs() as i64) {
            return Err(TokenError::IssuedInFuture);
        }
        let lifetime = claims.exp.saturating_sub(claims.iat);
        if lifetime <= 0 || lifetime > MAX_TOKEN_TTL.as_secs() as i64 {
            return Err(TokenError::BadLifetime);
        }
        if now.timestamp() >= claims.exp {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn signer() -> TokenSigner {
        TokenSigner::new(Secret::new("k".repeat(32)), "sam-control-plane").unwrap()
    }

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 21, 12, 0, 0).unwrap()
    }

    fn check(
        token: &str,
        scope: TokenScope,
        subject: &str,
        at: DateTime<Utc>,
        expected: Result<(), TokenError>,
    ) {
        assert_eq!(
            signer().verify(token, scope, subject, at).map(|_| ()),
            expected,
            "token {token}"
        );
    }

    /// A token signed by an earlier build (hmac 0.12, sha2 0.10) is byte for byte
    /// what this build signs, and still verifies.
    #[test]
    fn a_token_signed_by_an_earlier_build_is_signed_alike_and_verifies() {
        const TOKEN_EARLIER: &str = "eyJhdWQiOiJzYW0tY29udHJvbC1wbGFuZSIsInNjb3BlIjoid29ya3NwYWNlIiwic3ViIjoid3MtMSIsImlhdCI6MTc5NTI2MjQwMCwiZXhwIjoxNzk1MjYzMDAwfQ.ByFIv1CSkDf6a98zXvZPMUJSDQ0yw1V6atE6gqmKCF8";
        let issued = signer().issue(
            TokenScope::Workspace,
            "ws-1",
            now(),
            Duration::from_secs(600),
        );
        assert_eq!(issued.expose(), TOKEN_EARLIER);
        check(TOKEN_EARLIER, TokenScope::Workspace, "ws-1", now(), Ok(()));
    }

    /// A new key only verifies until it is `activation` old; then it signs.
    #[test]
    fn a_new_key_signs_once_it_is_old_enough() {
        let t = |secs: i64| now() + chrono::Duration::seconds(secs);
        let activation = Duration::from_secs(120);
        assert_eq!(
            active_key(&[t(0)], t(0), activation),
            0,
            "the first key signs at once"
        );
        assert_eq!(active_key(&[t(0), t(100)], t(150), activation), 0);
        assert_eq!(active_key(&[t(0), t(100)], t(220), activation), 1);
        assert_eq!(active_key(&[t(0), t(100), t(300)], t(350), activation), 1);
        assert_eq!(active_key(&[], t(0), activation), 0);
        let key = |c: &str| Secret::new(c.repeat(32));
        let signer = TokenSigner::with_keys(
            vec![("k1".into(), key("a")), ("k2".into(), key("b"))],
            "sam",
        )
        .unwrap()
        .signing_with("k1")
        .unwrap();
        assert_eq!(signer.signing_key_id(), Some("k1"));
        let token = signer.issue(TokenScope::Node, "n-1", now(), Duration::from_secs(60));
        let claims = signer
            .verify(token.expose(), TokenScope::Node, "n-1", now())
            .unwrap();
        assert_eq!(claims.kid.as_deref(), Some("k1"));
        assert!(signer.signing_with("k9").is_err());
    }

    /// Several keys: the newest signs and names itself; tokens of an older key, and
    /// tokens that name no key (checked with the oldest), verify until they expire;
    /// a key the signer does not hold signs nothing it accepts.
    #[test]
    fn a_signer_with_several_keys_verifies_each_and_signs_with_the_newest() {
        let key = |c: &str| Secret::new(c.repeat(32));
        let old = TokenSigner::with_keys(vec![("k1".into(), key("a"))], "sam").unwrap();
        let both = TokenSigner::with_keys(
            vec![("k1".into(), key("a")), ("k2".into(), key("b"))],
            "sam",
        )
        .unwrap();
        let ttl = Duration::from_secs(3600);
        let old_token = old.issue(TokenScope::Node, "n-1", now(), ttl);
        let new_token = both.issue(TokenScope::Node, "n-1", now(), ttl);
        assert_eq!(both.signing_key_id(), Some("k2"));
        let claims = both
            .verify(new_token.expose(), TokenScope::Node, "n-1", now())
            .unwrap();
        assert_eq!(claims.kid.as_deref(), Some("k2"));
        both.verify(old_token.expose(), TokenScope::Node, "n-1", now())
            .expect("an older key's token verifies");
        assert_eq!(
            old.verify(new_token.expose(), TokenScope::Node, "n-1", now()),
            Err(TokenError::BadSignature),
            "a key the signer does not hold"
        );
        let unnamed =
            TokenSigner::new(key("a"), "sam")
                .unwrap()
                .issue(TokenScope::Node, "n-1", now(), ttl);
        both.verify(unnamed.expose(), TokenScope::Node, "n-1", now())
            .expect("a token naming no key is checked with the oldest");
        let later = now() + chrono::Duration::hours(2);
        assert_eq!(
            both.verify(old_token.expose(), TokenScope::Node, "n-1", later),
            Err(TokenError::Expired)
        );
        for keys in [
            vec![],
            vec![("k1".to_owned(), key("a")), ("k1".to_owned(), key("b"))],
            vec![(String::new(), key("a"))],
            vec![("k1".to_owned(), Secret::new("short"))],
        ] {
            assert!(TokenSigner::with_keys(keys, "sam").is_err());
        }
    }

    #[test]
    fn accepts_only_the_right_scope_subject_audience_and_time() {
        let hour = Duration::from_secs(3600);
        let t = signer().issue(TokenScope::Workspace, "ws-1", now(), hour);
        let t = t.expose();
        check(t, TokenScope::Workspace, "ws-1", now(), Ok(()));
        check(
            t,
            TokenScope::Node,
            "ws-1",
            now(),
            Err(TokenError::WrongScope),
        );
        check(
            t,
            TokenScope::Workspace,
            "ws-2",
            now(),
            Err(TokenError::WrongSubject),
        );
        check(
            t,
            TokenScope::Workspace,
            "ws-1",
            now() + chrono::Duration::hours(1),
            Err(TokenError::Expired),
        );
        let other = TokenSigner::new(Secret::new("k".repeat(32)), "sam-vm-agent").unwrap();
        assert_eq!(
            other
                .verify(t, TokenScope::Workspace, "ws-1", now())
                .unwrap_err(),
            TokenError::WrongAudience
        );
        let forged = TokenSigner::new(Secret::new("x".repeat(32)), "sam-control-plane").unwrap();
        let f = forged.issue(TokenScope::Workspace, "ws-1", now(), hour);
        check(
            f.expose(),
            TokenScope::Workspace,
            "ws-1",
            now(),
            Err(TokenError::BadSignature),
        );
    }

    #[test]
    fn rejects_scopeless_tampered_and_garbage_tokens() {
        let scopeless = signer().sign(&TokenClaims {
            aud: "sam-control-plane".into(),
            scope: None,
            sub: "node-1".into(),
            iat: now().timestamp(),
            exp: now().timestamp() + 3600,
            kid: None,
        });
        check(
            scopeless.expose(),
            TokenScope::Node,
            "node-1",
            now(),
            Err(TokenError::NoScope),
        );
        let good = signer().issue(TokenScope::Node, "node-1", now(), Duration::from_secs(3600));
        let (payload, sig) = good.expose().split_once('.').unwrap();
        let mut claims: TokenClaims =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
        claims.sub = "node-2".into();
        let tampered = format!(
            "{}.{sig}",
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap())
        );
        check(
            &tampered,
            TokenScope::Node,
            "node-2",
            now(),
            Err(TokenError::BadSignature),
        );
        for garbage in ["", ".", "abc", "a.b", "!!.!!"] {
            assert!(
                signer()
                    .verify(garbage, TokenScope::Node, "node-1", now())
                    .is_err()
            );
        }
    }

    #[test]
    fn future_dated_and_over_long_tokens_are_refused() {
        let at = now().timestamp();
        let claims = |iat: i64, exp: i64| {
            signer().sign(&TokenClaims {
                aud: "sam-control-plane".into(),
                scope: Some(TokenScope::Node),
                sub: "node-1".into(),
                iat,
                exp,
                kid: None,
            })
        };
        let year = 365 * 24 * 3600;
        let day = MAX_TOKEN_TTL.as_secs() as i64;
        let skew = CLOCK_SKEW.as_secs() as i64;
        for (iat, exp, expected) in [
            // The attack seen: issued 3 years ahead, expiring 31 years ahead.
            (
                at + 3 * year,
                at + 31 * year,
                Err(TokenError::IssuedInFuture),
            ),
            // Issued now, but valid for 31 years.
            (at, at + 31 * year, Err(TokenError::BadLifetime)),
            // One second over the longest lifetime.
            (at - 10, at - 10 + day + 1, Err(TokenError::BadLifetime)),
            // Expiring before it is issued.
            (at, at - 1, Err(TokenError::BadLifetime)),
            (at, at, Err(TokenError::BadLifetime)),
            // Within the clock skew, and exactly the longest lifetime: accepted.
            (at + skew, at + skew + 3600, Ok(())),
            (
                at + skew + 1,
                at + skew + 3600,
                Err(TokenError::IssuedInFuture),
            ),
            (at - 10, at - 10 + day, Ok(())),
            // Extreme values do not overflow.
            (i64::MIN, i64::MAX, Err(TokenError::BadLifetime)),
            (i64::MAX, i64::MIN, Err(TokenError::IssuedInFuture)),
        ] {
            check(
                claims(iat, exp).expose(),
                TokenScope::Node,
                "node-1",
                now(),
                expected,
            );
        }
    }

    #[test]
    fn lifetime_is_capped_and_refresh_starts_at_half_life() {
        let t = signer().issue(
            TokenScope::Node,
            "n",
            now(),
            Duration::from_secs(30 * 24 * 3600),
        );
        let claims = signer()
            .verify(t.expose(), TokenScope::Node, "n", now())
            .unwrap();
        assert_eq!(claims.exp - claims.iat, MAX_TOKEN_TTL.as_secs() as i64);
        assert!(!claims.needs_refresh(now() + chrono::Duration::hours(11)));
        assert!(claims.needs_refresh(now() + chrono::Duration::hours(12)));
        assert!(TokenSigner::new(Secret::new("short"), "a").is_err());
    }
}
