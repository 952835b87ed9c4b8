//! Secrets that never print, and a redactor for text that may contain them.

use std::borrow::Cow;
use std::fmt;
use std::sync::LazyLock;

use regex::Regex;
use serde::{Deserialize, Deserializer};

/// What redacted text shows in place of a secret.
pub const REDACTED: &str = "***";

/// A credential or token. `Debug` and `Display` print `***`; only [`Secret::expose`] reveals it.
///
/// It deserializes from a plain string but deliberately does not implement
/// `Serialize`, so a config holding one cannot be written back out by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether the secret is the empty string.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({REDACTED})")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Self)
    }
}

/// The patterns `redact` removes, each with what replaces the match.
///
/// Order matters: bearer tokens go first so that `Authorization: Bearer x` loses
/// the token itself, not only the word `Bearer`.
static PATTERNS: LazyLock<Vec<(Regex, &'static str)>> = LazyLock::new(|| {
    [
        // `Bearer <token>` in headers and logs.
        (r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/=-]+", "$1 ***"),
        // JSON Web Tokens: base64url header (always `eyJ`), payload and signature.
        (
            r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}",
            REDACTED,
        ),
        // Anthropic and OpenAI keys: `sk-…`, `sk-ant-…`, `sk-proj-…`.
        (r"\bsk-[A-Za-z0-9_-]{8,}", REDACTED),
        // GitHub tokens: classic (`ghp_`, `gho_`, `ghu_`, `ghs_`, `ghr_`) and fine-grained.
        (r"\bgh[pousr]_[A-Za-z0-9]{16,}", REDACTED),
        (r"\bgithub_pat_[A-Za-z0-9_]{16,}", REDACTED),
        // `key=value` and `"key": "value"` where the key names a secret.
        (
            r#"(?i)(\b[a-z0-9_.-]*(?:token|secret|password|passwd|api[_-]?key|access[_-]?key|private[_-]?key|credentials?)["']?\s*[=:]\s*["']?)[^\s"'&,;}]+"#,
            "${1}***",
        ),
    ]
    .into_iter()
    .map(|(pattern, replacement)| {
        (
            Regex::new(pattern).expect("redaction patterns are valid"),
            replacement,
        )
    })
    .collect()
});

/// Replaces secrets in `text` with `***`: Bearer tokens, `sk-…` keys, GitHub tokens
/// (`ghp_…`, `github_pat_…`), JWTs and `key=value` pairs whose key names a secret.
///
/// Text without secrets is returned borrowed and unchanged.
pub fn redact(text: &str) -> Cow<'_, str> {
    let mut out = Cow::Borrowed(text);
    for (regex, replacement) in PATTERNS.iter() {
        if let Cow::Owned(replaced) = regex.replace_all(&out, *replacement) {
            out = Cow::Owned(replaced);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn check(input: &str, expected: &str) {
        assert_eq!(redact(input), expected, "redacting {input:?}");
    }

    #[test]
    fn table() {
        check(
            "Authorization: Bearer abc.def-123",
            "Authorization: Bearer ***",
        );
        check("key sk-ant-api03-AbCdEf123456 rejected", "key *** rejected");
        check("token ghp_abcdefghijklmnopqrstuvwxyz0123", "token ***");
        check("github_pat_11ABCDEFG0123456789_abcdef", "***");
        check(
            "jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl end",
            "jwt *** end",
        );
        check("HCLOUD_TOKEN=abc123 next", "HCLOUD_TOKEN=*** next");
        check(r#"{"api_key": "xyz789"}"#, r#"{"api_key": "***"}"#);
        check("password: hunter2", "password: ***");
        check("no secrets here, just text.", "no secrets here, just text.");
        check("the key point is speed", "the key point is speed");
    }

    #[test]
    fn secret_never_prints() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s}"), "***");
        assert_eq!(format!("{s:?}"), "Secret(***)");
        assert_eq!(s.expose(), "hunter2");
    }

    fn secret_shape() -> impl Strategy<Value = String> {
        prop_oneof![
            // At least 8 characters, so the token cannot hide inside "Bearer" or "***".
            "[A-Za-z0-9._~+/=-]{8,40}".prop_map(|t| format!("Bearer {t}")),
            "[A-Za-z0-9_-]{8,40}".prop_map(|t| format!("sk-{t}")),
            "[A-Za-z0-9_-]{8,40}".prop_map(|t| format!("sk-ant-{t}")),
            ("[pousr]", "[A-Za-z0-9]{16,40}").prop_map(|(k, t)| format!("gh{k}_{t}")),
            "[A-Za-z0-9_]{16,40}".prop_map(|t| format!("github_pat_{t}")),
            (
                "[A-Za-z0-9_-]{4,30}",
                "[A-Za-z0-9_-]{4,30}",
                "[A-Za-z0-9_-]{4,30}"
            )
                .prop_map(|(a, b, c)| format!("eyJ{a}.{b}.{c}")),
            (
                prop_oneof![
                    Just("token"),
                    Just("API_KEY"),
                    Just("client_secret"),
                    Just("password")
                ],
                "[A-Za-z0-9]{8,30}"
            )
                .prop_map(|(k, v)| format!("{k}={v}")),
        ]
    }

    fn secret_value(shape: &str) -> &str {
        // The part that must disappear: after `Bearer ` or `=`, or the whole token.
        shape
            .strip_prefix("Bearer ")
            .or_else(|| shape.split_once('=').map(|(_, v)| v))
            .unwrap_or(shape)
    }

    proptest! {
        #[test]
        fn removes_every_secret_shape(
            before in "[a-z ]{0,20}",
            shape in secret_shape(),
            after in "[a-z ]{0,20}",
        ) {
            let text = format!("{before} {shape} {after}");
            let out = redact(&text);
            let value = secret_value(&shape);
            prop_assert!(!out.contains(value), "{value:?} survived in {out:?}");
            prop_assert!(out.contains(REDACTED));
        }

        #[test]
        fn leaves_ordinary_text_alone(text in "[A-Za-z ,.!?()]{0,200}") {
            prop_assert_eq!(redact(&text), text.as_str());
        }
    }
}
