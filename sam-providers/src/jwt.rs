//! RS256 JSON Web Tokens, signed with `ring` (which rustls already brings): the GCP
//! service-account assertion and the GitHub App token are both made here.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::rand::SystemRandom;
use ring::signature::{RSA_PKCS1_SHA256, RsaKeyPair};

/// An RSA private key that signs RS256 tokens; `Debug` shows nothing of it.
pub(crate) struct Rs256Key(RsaKeyPair);

impl std::fmt::Debug for Rs256Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Rs256Key(***)")
    }
}

/// Why a key could not be read, as a sentence fragment after the field's name.
pub(crate) type KeyError = &'static str;

impl Rs256Key {
    /// Reads a PEM key: PKCS#8 (`BEGIN PRIVATE KEY`, as GCP issues them) or PKCS#1
    /// (`BEGIN RSA PRIVATE KEY`, as GitHub issues App keys).
    pub(crate) fn from_pem(pem: &str) -> Result<Self, KeyError> {
        let base64: String = pem
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with("-----"))
            .collect();
        let der = STANDARD
            .decode(base64)
            .map_err(|_| "is not a PEM-encoded key")?;
        let key = if pem.contains("BEGIN RSA PRIVATE KEY") {
            RsaKeyPair::from_der(&der).map_err(|_| "is not a PKCS#1 RSA key")?
        } else {
            RsaKeyPair::from_pkcs8(&der).map_err(|_| "is not a PKCS#8 RSA key")?
        };
        Ok(Self(key))
    }

    /// The signed token `header.claims.signature` for `claims`.
    ///
    /// # Errors
    /// `Err(())` when signing fails, which `ring` reports without detail.
    pub(crate) fn sign(&self, claims: &serde_json::Value) -> Result<String, ()> {
        let header = serde_json::json!({ "alg": "RS256", "typ": "JWT" });
        let message = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let mut signature = vec![0; self.0.public().modulus_len()];
        self.0
            .sign(
                &RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                message.as_bytes(),
                &mut signature,
            )
            .map_err(drop)?;
        Ok(format!("{message}.{}", URL_SAFE_NO_PAD.encode(signature)))
    }
}
