//! Secrets that never print, and a redactor for text that may contain them.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, LazyLock, RwLock};

use aho_corasick::{AhoCorasick, MatchKind};
use regex::{Captures, Regex};
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

/// How a pattern's match is replaced.
#[derive(Clone, Copy)]
enum Replace {
    /// By this text (which may refer to the pattern's groups).
    Fixed(&'static str),
    /// `Bearer <token>`: the token, unless it is an ordinary word ("a bearer token is
    /// required" stays readable).
    Bearer,
    /// `name=value` where the name names a secret: the value, quoted or not, with its
    /// quotes kept.
    Named,
}

/// The patterns `redact` removes, each with how the match is replaced.
///
/// Order matters: PEM blocks go first, so a `"private_key": "-----BEGIN …"` loses
/// its whole key and not only the first word; bearer tokens go before named values,
/// so that `Authorization: Bearer x` loses the token itself.
static PATTERNS: LazyLock<Vec<(Regex, Replace)>> = LazyLock::new(|| {
    [
        // PEM private keys, whole: up to their END line, or, when cut off, up to the
        // end of the JSON string or of the text. Escaped `\n` inside JSON strings are
        // ordinary characters here.
        (
            r#"(?s)-----BEGIN ([A-Z0-9 ]*)PRIVATE KEY-----(?:.*?-----END [A-Z0-9 ]*PRIVATE KEY-----|[^"]*)"#,
            Replace::Fixed("-----BEGIN ${1}PRIVATE KEY-----***"),
        ),
        // `Bearer <token>` in headers and logs.
        (r"(?i)\b(bearer)\s+([A-Za-z0-9._~+/=-]+)", Replace::Bearer),
        // JSON Web Tokens: base64url header (always `eyJ`), payload and signature.
        (
            r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}",
            Replace::Fixed(REDACTED),
        ),
        // Anthropic and OpenAI keys: `sk-…`, `sk-ant-…`, `sk-proj-…`.
        (r"\bsk-[A-Za-z0-9_-]{8,}", Replace::Fixed(REDACTED)),
        // GitHub tokens: classic (`ghp_`, `gho_`, `ghu_`, `ghs_`, `ghr_`) and fine-grained.
        (r"\bgh[pousr]_[A-Za-z0-9]{16,}", Replace::Fixed(REDACTED)),
        (r"\bgithub_pat_[A-Za-z0-9_]{16,}", Replace::Fixed(REDACTED)),
        // `key=value`, `key="quoted value"` and `"key": "value"` where the key names a
        // secret, including names that add `_KEY` or `_ACCESS_KEY` after the word
        // (`SCW_SECRET_KEY`, `AWS_SECRET_ACCESS_KEY`, `SAM_CREDENTIAL_KEY`), whatever
        // the value's shape (a UUID, say). A quoted value goes whole, escapes included.
        (
            r#"(?i)(\b[a-z0-9_.-]*(?:token|secret|password|passwd|api[_-]?key|access[_-]?key|private[_-]?key|credentials?)(?:[_-](?:access[_-])?key)?["']?\s*[=:]\s*)(?:"((?:[^"\\]|\\.)*)"|'([^']*)'|[^\s"'&,;}]+)"#,
            Replace::Named,
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

/// The longest word after `Bearer` that is taken as prose rather than a token.
const LONGEST_BEARER_WORD: usize = 14;

/// Whether `word` after `Bearer` is an ordinary word (`token`, `Authentication`), not
/// a credential: letters only, lower case after the first, and short. A token made of
/// so few lower-case letters would be too weak to be one.
fn is_prose(word: &str) -> bool {
    let mut chars = word.chars();
    word.len() <= LONGEST_BEARER_WORD
        && chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_lowercase())
}

fn replace(regex: &Regex, replacement: Replace, text: &str) -> Option<String> {
    let replaced = match replacement {
        Replace::Fixed(fixed) => regex.replace_all(text, fixed),
        Replace::Bearer => regex.replace_all(text, |c: &Captures<'_>| {
            if is_prose(&c[2]) {
                c[0].to_owned()
            } else {
                format!("{} {REDACTED}", &c[1])
            }
        }),
        Replace::Named => regex.replace_all(text, |c: &Captures<'_>| {
            let quote = if c.get(2).is_some() {
                "\""
            } else if c.get(3).is_some() {
                "'"
            } else {
                ""
            };
            format!("{}{quote}{REDACTED}{quote}", &c[1])
        }),
    };
    match replaced {
        Cow::Owned(text) => Some(text),
        Cow::Borrowed(_) => None,
    }
}

/// The shortest value [`register`] accepts: shorter ones would mask ordinary text.
pub const MIN_REGISTERED_LEN: usize = 8;

/// The longest value [`register`] accepts; longer secrets (keys in PEM) are caught
/// by their shape.
const MAX_REGISTERED_LEN: usize = 1024;

/// The most values the registry keeps; past it, the oldest registration goes.
const MAX_REGISTERED: usize = 1024;

/// The secrets this process holds, and one automaton matching any of them.
#[derive(Default)]
struct Registry {
    values: VecDeque<String>,
    matcher: Option<Arc<AhoCorasick>>,
}

static REGISTRY: LazyLock<RwLock<Registry>> = LazyLock::new(RwLock::default);

/// Registers a secret this process holds, so that [`redact`] masks its exact value
/// wherever it appears, whatever its shape, as CI systems mask their secrets.
///
/// Call it where a secret is read: from the environment, a key file, a request that
/// carries a credential. Values shorter than [`MIN_REGISTERED_LEN`] are ignored (they
/// would mask ordinary words), as are values over 1 KiB; the registry keeps the
/// latest 1,024 values.
pub fn register(value: &str) {
    let value = value.trim();
    if value.len() < MIN_REGISTERED_LEN || value.len() > MAX_REGISTERED_LEN {
        return;
    }
    let mut registry = REGISTRY.write().unwrap_or_else(|e| e.into_inner());
    if registry.values.iter().any(|v| v == value) {
        return;
    }
    if registry.values.len() == MAX_REGISTERED {
        registry.values.pop_front();
    }
    registry.values.push_back(value.to_owned());
    // Leftmost-longest: of two values where one starts the other, the longer goes
    // whole.
    match AhoCorasick::builder()
        .match_kind(MatchKind::LeftmostLongest)
        .build(&registry.values)
    {
        Ok(matcher) => registry.matcher = Some(Arc::new(matcher)),
        // Too large to build: the values registered so far stay masked.
        Err(_) => {
            registry.values.pop_back();
        }
    }
}

/// Replaces secrets in `text` with `***`: every value given to [`register`], PEM
/// private keys, Bearer tokens, `sk-…` keys, GitHub tokens (`ghp_…`, `github_pat_…`),
/// JWTs and `key=value` pairs whose key names a secret (the whole value when quoted).
///
/// Text without secrets is returned borrowed and unchanged.
pub fn redact(text: &str) -> Cow<'_, str> {
    let mut out = Cow::Borrowed(text);
    // Exact values first: a pattern could otherwise rewrite part of one and leave
    // the rest unrecognisable.
    let matcher = REGISTRY
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .matcher
        .clone();
    if let Some(matcher) = matcher
        && matcher.is_match(text)
    {
        let mut replaced = String::with_capacity(text.len());
        matcher.replace_all_with(text, &mut replaced, |_, _, dst| {
            dst.push_str(REDACTED);
            true
        });
        out = Cow::Owned(replaced);
    }
    for (regex, replacement) in PATTERNS.iter() {
        if let Some(replaced) = replace(regex, *replacement, &out) {
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
    fn pem_blocks_go_whole() {
        // In a JSON string, with escaped newlines (a GCP service-account key).
        check(
            r#"{"private_key": "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\nBKcwggSjAgEAAoIBAQC7\n-----END PRIVATE KEY-----\n", "n": 1}"#,
            r#"{"private_key": "***", "n": 1}"#,
        );
        // As raw lines in a log, with text after it.
        check(
            "key:\n-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA\nq83vEi4x\n-----END RSA PRIVATE KEY-----\nnext line",
            "key:\n-----BEGIN RSA PRIVATE KEY-----***\nnext line",
        );
        check(
            "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAA\n-----END OPENSSH PRIVATE KEY-----",
            "-----BEGIN OPENSSH PRIVATE KEY-----***",
        );
        // Cut off before its END line: everything after BEGIN goes.
        check(
            "body was -----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIBk1",
            "body was -----BEGIN EC PRIVATE KEY-----***",
        );
        // A public key or certificate is not a secret.
        check(
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----",
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----",
        );
    }

    #[test]
    fn quoted_and_named_values_go_whole() {
        check(
            r#"HCLOUD_TOKEN="abc def" next"#,
            r#"HCLOUD_TOKEN="***" next"#,
        );
        check("password='two words' x", "password='***' x");
        check(
            r#"{"password": "a\"b c", "n": 1}"#,
            r#"{"password": "***", "n": 1}"#,
        );
        check(
            "SCW_SECRET_KEY=3f9a1c7e-8b2d-4e6f-a1b2-c3d4e5f60718 done",
            "SCW_SECRET_KEY=*** done",
        );
        check(
            "export AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG",
            "export AWS_SECRET_ACCESS_KEY=***",
        );
        check(
            "SAM_CREDENTIAL_KEY: AAAAbbbbCCCC=",
            "SAM_CREDENTIAL_KEY: ***",
        );
        check(
            r#"{"scw_secret_key":"3f9a1c7e-8b2d"}"#,
            r#"{"scw_secret_key":"***"}"#,
        );
        // Counts of tokens are not tokens.
        check(r#"{"input_tokens": 1234}"#, r#"{"input_tokens": 1234}"#);
    }

    #[test]
    fn bearer_prose_stays_readable() {
        check("a bearer token is required", "a bearer token is required");
        check(
            "Bearer Authentication failed",
            "Bearer Authentication failed",
        );
        check("Authorization: Bearer abc123", "Authorization: Bearer ***");
        check("bearer ABCDEFGHIJ", "bearer ***");
        check("bearer abcdefghijklmnopqrstuvwxyz", "bearer ***");
    }

    #[test]
    fn registered_values_are_masked_whatever_their_shape() {
        register("zq9-canary-4471 ");
        register("zq9-canary-4471-longer");
        register("short");
        check(
            "leaked zq9-canary-4471-longer and zq9-canary-4471.",
            "leaked *** and ***.",
        );
        check("short words stay", "short words stay");
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
            // A digit makes it a token, not a word of prose.
            ("[A-Za-z0-9._~+/=-]{7,40}", 0..10u8).prop_map(|(t, d)| format!("Bearer {t}{d}")),
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

        #[test]
        fn leaves_prose_after_bearer_alone(word in "[A-Za-z][a-z]{0,13}") {
            let text = format!("a bearer {word} is required");
            prop_assert_eq!(redact(&text), text.as_str());
        }

        #[test]
        fn quoted_values_go_whole(
            name in prop_oneof![
                Just("HCLOUD_TOKEN"),
                Just("SCW_SECRET_KEY"),
                Just("AWS_SECRET_ACCESS_KEY"),
                Just("password"),
                Just("\"api_key\""),
            ],
            sep in prop_oneof![Just("="), Just(": ")],
            value in "[A-Za-z0-9 /+=-]{1,40}",
            quote in prop_oneof![Just('"'), Just('\'')],
        ) {
            let text = format!("x {name}{sep}{quote}{value}{quote} y");
            prop_assert_eq!(
                redact(&text),
                format!("x {name}{sep}{quote}{REDACTED}{quote} y")
            );
        }

        #[test]
        fn uuids_after_secret_names_go(
            name in prop_oneof![
                Just("SCW_SECRET_KEY"),
                Just("SCW_ACCESS_KEY"),
                Just("AWS_SECRET_ACCESS_KEY"),
                Just("HCLOUD_TOKEN"),
            ],
            uuid in "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
        ) {
            let text = format!("{name}={uuid}");
            let out = redact(&text);
            prop_assert_eq!(out, format!("{name}={REDACTED}"));
        }

        #[test]
        fn pem_bodies_go(
            kind in prop_oneof![Just(""), Just("RSA "), Just("EC "), Just("OPENSSH ")],
            lines in proptest::collection::vec("[A-Za-z0-9+/]{16,64}", 1..8),
            newline in prop_oneof![Just("\n"), Just("\\n"), Just("\r\n")],
            end in any::<bool>(),
        ) {
            let mut pem = format!("-----BEGIN {kind}PRIVATE KEY-----{newline}");
            for line in &lines {
                pem.push_str(line);
                pem.push_str(newline);
            }
            if end {
                pem.push_str(&format!("-----END {kind}PRIVATE KEY-----"));
            }
            let text = format!(r#"{{"k": "{pem}", "n": 1}}"#);
            let out = redact(&text);
            for line in &lines {
                prop_assert!(!out.contains(line.as_str()), "{line:?} survived in {out:?}");
            }
            prop_assert!(out.ends_with(r#"", "n": 1}"#), "{out:?}");
        }

        #[test]
        fn registered_values_go(
            before in "[a-z ]{0,20}",
            value in "[A-Za-z0-9]{6,30}-[0-9]{2}",
            after in "[a-z ]{0,20}",
        ) {
            register(&value);
            let text = format!("{before}{value}{after}");
            let out = redact(&text);
            prop_assert!(!out.contains(&value), "{value:?} survived in {out:?}");
        }
    }
}
