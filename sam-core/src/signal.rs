//! The native signals of an error as it really reaches us.
//!
//! A provider's error seldom arrives as its own clean JSON. An SDK or a CLI has
//! often rendered it first: Go's `googleapi: Error 403: <message>, <reason>`,
//! hcloud-go's `<message> (<code>, <correlation id>)`, Python's repr of the body
//! (`{'error': {'type': 'insufficient_quota', 'param': None}}`), a CLI's
//! `StatusCode: 403, Type: invalid_request_error, APIMessage: …`, gcloud's YAML, a
//! Python client prefixing `503 SERVICE UNAVAILABLE`, a body cut at 4 KiB, or JSON
//! escaped inside another JSON string. [`extract`] finds the codes, reasons, types
//! and statuses wherever they appear and says where each came from; the classifiers
//! ([`crate::classify_agent_error`] and the providers' own) decide from them.
//!
//! Extraction is pure and total: any text gives a (possibly empty) [`Signals`], in
//! time linear in the text for a bounded number of passes.

use std::collections::HashSet;
use std::sync::LazyLock;

use regex::Regex;
use serde_json::Value;

/// What a [`Signal`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SignalKind {
    /// A machine-readable code: `code`, `error_code`, an OAuth `error`, hcloud-go's
    /// parenthesized code, or an upper-snake-case code standing in prose.
    Code,
    /// A reason: Google's `errors[].reason` (`rateLimitExceeded`) or the reason that
    /// closes a `googleapi` line.
    Reason,
    /// A `type` (Anthropic, OpenAI, Scaleway).
    Type,
    /// A named status such as `RESOURCE_EXHAUSTED` or `PERMISSION_DENIED`.
    Status,
    /// An HTTP status number.
    HttpStatus,
    /// A JSON-RPC error code (`-32000` … `-32768`).
    RpcCode,
    /// A human message, or a quota's name (`quotaId`, `quotaMetric`), kept for the
    /// message rules.
    Message,
}

/// Where a [`Signal`] was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum SignalOrigin {
    /// Well-formed JSON, the whole text or embedded in it (also JSON escaped inside
    /// a JSON string, and JSON whose strings a terminal broke across lines).
    Json,
    /// A Python repr of JSON: single quotes, `None`, `True`, `False`.
    PythonRepr,
    /// Go's `googleapi: Error <status>: <message>, <reason>`.
    Googleapi,
    /// A lowercase code in parentheses closing a line, as hcloud-go renders
    /// `<message> (<code>)` or `<message> (<code>, <correlation id>)`.
    Parenthesized,
    /// A `key: value`, `Key: value,` or `"key": "value"` pair outside parseable JSON:
    /// truncated JSON, YAML, CLI renderings.
    KeyValue,
    /// An HTTP status written in prose: `API Error: 529`, `Error code: 429`,
    /// `status code: 429`, a leading `503 SERVICE UNAVAILABLE`.
    StatusText,
    /// A snake-case code standing in prose (`ZONE_RESOURCE_POOL_EXHAUSTED`,
    /// `insufficient_quota`).
    Bare,
}

/// One native signal and where it was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signal {
    /// What it is.
    pub kind: SignalKind,
    /// Its value as written (an HTTP status or JSON-RPC code in decimal).
    pub value: String,
    /// Where it came from.
    pub origin: SignalOrigin,
}

/// Everything [`extract`] found in one text, the most structured first.
#[derive(Clone, Debug, Default)]
pub struct Signals {
    items: Vec<Signal>,
    seen: HashSet<(SignalKind, String)>,
}

impl Signals {
    /// Every signal, ordered by [`SignalOrigin`] (structured sources first), then by
    /// position.
    pub fn iter(&self) -> impl Iterator<Item = &Signal> {
        self.items.iter()
    }

    /// Whether nothing was found.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The codes, reasons, types and named statuses, most structured first.
    pub fn codes(&self) -> impl Iterator<Item = &Signal> {
        self.items.iter().filter(|s| {
            matches!(
                s.kind,
                SignalKind::Code | SignalKind::Reason | SignalKind::Type | SignalKind::Status
            )
        })
    }

    /// The messages and quota names, most structured first.
    pub fn messages(&self) -> impl Iterator<Item = &str> {
        self.of(SignalKind::Message)
    }

    /// The first HTTP status found (a JSON `code`/`status` before one in prose).
    pub fn http_status(&self) -> Option<u16> {
        self.of(SignalKind::HttpStatus).find_map(|v| v.parse().ok())
    }

    /// The first JSON-RPC error code found.
    pub fn rpc_code(&self) -> Option<i64> {
        self.of(SignalKind::RpcCode).find_map(|v| v.parse().ok())
    }

    fn of(&self, kind: SignalKind) -> impl Iterator<Item = &str> {
        self.items
            .iter()
            .filter(move |s| s.kind == kind)
            .map(|s| s.value.as_str())
    }

    fn push(&mut self, kind: SignalKind, value: &str, origin: SignalOrigin) {
        let value = value.trim();
        if value.is_empty() || value.len() > MAX_VALUE_LEN && kind != SignalKind::Message {
            return;
        }
        if self.items.len() >= MAX_SIGNALS || !self.seen.insert((kind, value.to_owned())) {
            return;
        }
        self.items.push(Signal {
            kind,
            value: value.to_owned(),
            origin,
        });
    }
}

/// Most signals kept from one text.
const MAX_SIGNALS: usize = 256;

/// Longest code, reason, type or status kept; anything longer is prose.
const MAX_VALUE_LEN: usize = 96;

/// How many `{` a text is tried from as the start of an embedded object.
const MAX_OBJECT_STARTS: usize = 16;

/// How deep JSON is followed, counting JSON inside strings.
const MAX_DEPTH: u8 = 8;

/// How many bytes of a text are read: enough for a kept body (4 KiB) many times over.
const MAX_TEXT_BYTES: usize = 64 * 1024;

/// Finds the native signals in `text`, wherever and however they were rendered.
///
/// ```
/// use sam_core::signal::{extract, SignalOrigin, SignalKind};
///
/// let text = "googleapi: Error 403: Quota exceeded for quota group 'ReadGroup' and limit \
///             'Read requests per 100 seconds' of service 'compute.googleapis.com'., rateLimitExceeded";
/// let signals = extract(text);
/// assert_eq!(signals.http_status(), Some(403));
/// let reason = signals.iter().find(|s| s.kind == SignalKind::Reason).unwrap();
/// assert_eq!((reason.value.as_str(), reason.origin), ("rateLimitExceeded", SignalOrigin::Googleapi));
/// ```
pub fn extract(text: &str) -> Signals {
    let mut signals = Signals::default();
    extract_into(&mut signals, bounded(text), 0);
    signals.items.sort_by_key(|s| s.origin);
    signals
}

/// `text` cut to [`MAX_TEXT_BYTES`] on a character boundary.
fn bounded(text: &str) -> &str {
    if text.len() <= MAX_TEXT_BYTES {
        return text;
    }
    let mut end = MAX_TEXT_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn extract_into(signals: &mut Signals, text: &str, depth: u8) {
    embedded_objects(signals, text, depth);
    googleapi(signals, text);
    parenthesized(signals, text);
    status_in_text(signals, text);
    key_values(signals, text);
    bare_codes(signals, text);
}

/// Parses every object embedded in `text` (JSON, or JSON as Python or a terminal
/// rendered it) and walks it.
fn embedded_objects(signals: &mut Signals, text: &str, depth: u8) {
    if depth > MAX_DEPTH {
        return;
    }
    let mut from = 0;
    let mut tries = 0;
    while tries < MAX_OBJECT_STARTS {
        let Some(offset) = text[from..].find('{') else {
            return;
        };
        let start = from + offset;
        tries += 1;
        match object_at(&text[start..]) {
            Some((value, origin, len)) => {
                walk(signals, &value, origin, depth);
                from = start + len.max(1);
            }
            None => from = start + 1,
        }
    }
}

/// The object that starts `text`, how it was written, and how many bytes of `text`
/// it spans.
fn object_at(text: &str) -> Option<(Value, SignalOrigin, usize)> {
    let mut stream = serde_json::Deserializer::from_str(text).into_iter::<Value>();
    if let Some(Ok(value @ Value::Object(_))) = stream.next() {
        return Some((value, SignalOrigin::Json, stream.byte_offset()));
    }
    let (converted, len, python) = normalize_object(text)?;
    match serde_json::from_str::<Value>(&converted) {
        Ok(value @ Value::Object(_)) => {
            let origin = if python {
                SignalOrigin::PythonRepr
            } else {
                SignalOrigin::Json
            };
            Some((value, origin, len))
        }
        _ => None,
    }
}

/// Rewrites the balanced object at the start of `text` as JSON: single-quoted
/// strings become double-quoted, `None`/`True`/`False` become `null`/`true`/`false`,
/// raw control characters inside strings are escaped. Returns the JSON, the bytes
/// of `text` it spans, and whether it was Python's rendering.
fn normalize_object(text: &str) -> Option<(String, usize, bool)> {
    let mut out = String::with_capacity(text.len().min(MAX_TEXT_BYTES));
    let mut depth = 0usize;
    let mut python = false;
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' | '\'' => {
                python |= c == '\'';
                out.push('"');
                let mut closed = false;
                while let Some((_, s)) = chars.next() {
                    match s {
                        '\\' => match chars.next() {
                            Some((_, '\'')) => out.push('\''),
                            Some((
                                _,
                                e @ ('"' | '\\' | '/' | 'b' | 'f' | 'n' | 'r' | 't' | 'u'),
                            )) => {
                                out.push('\\');
                                out.push(e);
                            }
                            // An escape JSON lacks (`\x41`): keep it as literal text.
                            Some((_, e)) => {
                                out.push_str("\\\\");
                                push_escaped(&mut out, e);
                            }
                            None => return None,
                        },
                        q if q == c => {
                            closed = true;
                            break;
                        }
                        '"' => out.push_str("\\\""),
                        other => push_escaped(&mut out, other),
                    }
                }
                if !closed {
                    return None;
                }
                out.push('"');
            }
            '{' | '[' => {
                depth += 1;
                out.push(c);
            }
            '}' | ']' => {
                depth = depth.checked_sub(1)?;
                out.push(c);
                if depth == 0 {
                    return Some((out, i + c.len_utf8(), python));
                }
            }
            c if c.is_ascii_alphabetic() => {
                let start = i;
                let mut end = i + c.len_utf8();
                while let Some(&(j, n)) = chars.peek() {
                    if n.is_ascii_alphanumeric() || n == '_' {
                        end = j + n.len_utf8();
                        chars.next();
                    } else {
                        break;
                    }
                }
                match &text[start..end] {
                    "None" => {
                        python = true;
                        out.push_str("null");
                    }
                    "True" => {
                        python = true;
                        out.push_str("true");
                    }
                    "False" => {
                        python = true;
                        out.push_str("false");
                    }
                    word => out.push_str(word),
                }
            }
            other => out.push(other),
        }
        if depth == 0 {
            // Text before the object's opening brace cannot happen: callers start at `{`.
            return None;
        }
    }
    None
}

fn push_escaped(out: &mut String, c: char) {
    match c {
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
        c => out.push(c),
    }
}

/// Reads the signals of a parsed body. Keys name what a value is; strings that may
/// hold a rendered body of their own (`message`, `error`, `details`, `raw`) are read
/// again as text.
fn walk(signals: &mut Signals, value: &Value, origin: SignalOrigin, depth: u8) {
    if depth > MAX_DEPTH {
        return;
    }
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                walk_field(signals, key, v, origin, depth);
            }
        }
        Value::Array(items) => {
            for v in items {
                walk(signals, v, origin, depth + 1);
            }
        }
        _ => {}
    }
}

fn walk_field(signals: &mut Signals, key: &str, value: &Value, origin: SignalOrigin, depth: u8) {
    let key = key.to_ascii_lowercase();
    match (key.as_str(), value) {
        ("code" | "error_code" | "errorcode", Value::Number(n)) => {
            if let Some(n) = n.as_i64() {
                number_signal(signals, n, origin);
            }
        }
        ("code" | "error_code" | "errorcode", Value::String(s)) => match s.parse::<i64>() {
            Ok(n) => number_signal(signals, n, origin),
            Err(_) => signals.push(SignalKind::Code, s, origin),
        },
        ("reason", Value::String(s)) => signals.push(SignalKind::Reason, s, origin),
        ("type" | "error_type" | "errortype", Value::String(s)) => {
            signals.push(SignalKind::Type, s, origin);
        }
        (
            "status" | "status_code" | "statuscode" | "httperrorstatuscode" | "http_status",
            Value::Number(n),
        ) => {
            if let Some(n) = n.as_i64() {
                number_signal(signals, n, origin);
            }
        }
        ("status", Value::String(s)) => match s.parse::<i64>() {
            Ok(n) => number_signal(signals, n, origin),
            Err(_) => signals.push(SignalKind::Status, s, origin),
        },
        // OAuth: `{"error":"invalid_grant","error_description":"…"}`.
        ("error", Value::String(s)) if is_identifier(s) => {
            signals.push(SignalKind::Code, s, origin);
        }
        ("quotaid" | "quota_id" | "quotametric" | "quota_metric" | "metric", Value::String(s)) => {
            signals.push(SignalKind::Message, s, origin);
        }
        (_, Value::String(s)) if is_message_key(&key) => {
            signals.push(SignalKind::Message, s, origin);
            if depth < MAX_DEPTH {
                extract_into(signals, bounded(s), depth + 1);
            }
        }
        (_, Value::String(s)) if s.contains('{') && depth < MAX_DEPTH => {
            extract_into(signals, bounded(s), depth + 1);
        }
        (_, Value::Object(_) | Value::Array(_)) => walk(signals, value, origin, depth + 1),
        _ => {}
    }
}

fn is_message_key(key: &str) -> bool {
    matches!(
        key,
        "message"
            | "msg"
            | "error"
            | "error_message"
            | "errormessage"
            | "error_description"
            | "help_message"
            | "apimessage"
            | "detail"
            | "details"
            | "description"
            | "raw"
            | "data"
            | "body"
    )
}

fn number_signal(signals: &mut Signals, n: i64, origin: SignalOrigin) {
    if (100..=599).contains(&n) {
        signals.push(SignalKind::HttpStatus, &n.to_string(), origin);
    } else if (-32768..=-32000).contains(&n) {
        signals.push(SignalKind::RpcCode, &n.to_string(), origin);
    }
}

/// Whether `s` looks like a code rather than a sentence.
fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_VALUE_LEN
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// `googleapi: Error 403: <message>, <reason>` and
/// `googleapi: got HTTP response code 503 with body: …`.
fn googleapi(signals: &mut Signals, text: &str) {
    static LINE: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r"googleapi: (?:Error ([1-5][0-9]{2}): ?([^\n]*)|got HTTP response code ([1-5][0-9]{2}))")
            .expect("valid googleapi regex")
    });
    static REASON: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r",\s*([A-Za-z][A-Za-z0-9_]*)\.?\s*$").expect("valid reason regex")
    });
    for caps in LINE.captures_iter(text) {
        if let Some(status) = caps.get(1).or_else(|| caps.get(3)) {
            signals.push(
                SignalKind::HttpStatus,
                status.as_str(),
                SignalOrigin::Googleapi,
            );
        }
        if let Some(rest) = caps.get(2)
            && let Some(reason) = REASON.captures(rest.as_str()).and_then(|c| c.get(1))
        {
            signals.push(SignalKind::Reason, reason.as_str(), SignalOrigin::Googleapi);
        }
    }
}

/// hcloud-go's `<message> (<code>)` and `<message> (<code>, <correlation id>)`,
/// also when a caller wrapped it in more text; the text before it on its line is
/// the message.
fn parenthesized(signals: &mut Signals, text: &str) {
    static CODE: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r"\(([a-z][a-z0-9_]*[a-z0-9])(?:,\s*[0-9a-f]{6,32})?\)")
            .expect("valid parenthesized regex")
    });
    for caps in CODE.captures_iter(text) {
        let (Some(whole), Some(code)) = (caps.get(0), caps.get(1)) else {
            continue;
        };
        signals.push(SignalKind::Code, code.as_str(), SignalOrigin::Parenthesized);
        let line_start = text[..whole.start()].rfind('\n').map_or(0, |i| i + 1);
        signals.push(
            SignalKind::Message,
            &text[line_start..whole.start()],
            SignalOrigin::Parenthesized,
        );
    }
}

/// Pushes the first group of every match of `re` in `text` (the whole match when
/// `re` has no group).
fn push_captures(
    signals: &mut Signals,
    re: &Regex,
    text: &str,
    kind: SignalKind,
    origin: SignalOrigin,
) {
    for caps in re.captures_iter(text) {
        if let Some(m) = caps.get(1).or_else(|| caps.get(0)) {
            signals.push(kind, m.as_str(), origin);
        }
    }
}

/// `code: X`, `"type":"X"`, `'reason': 'X'`, `StatusCode: 403,`, `code = X`, in any
/// rendering, including JSON cut short or escaped inside a string.
fn key_values(signals: &mut Signals, text: &str) {
    static PAIR: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(
            r#"(?i)(?:^|[^A-Za-z0-9_@])\\*["']?(code|error_code|errorcode|reason|type|error_type|status|statuscode|status_code)\\*["']?\s*[:=]\s*\\*["']?(-?[0-9]{3,6}\b|[A-Za-z_][A-Za-z0-9_.\-]{1,95})"#,
        )
        .expect("valid key-value regex")
    });
    for caps in PAIR.captures_iter(text) {
        let (Some(key), Some(value)) = (caps.get(1), caps.get(2)) else {
            continue;
        };
        let value = value.as_str();
        let key = key.as_str().to_ascii_lowercase();
        if let Ok(n) = value.parse::<i64>() {
            number_signal(signals, n, SignalOrigin::KeyValue);
            continue;
        }
        let kind = match key.as_str() {
            "reason" => SignalKind::Reason,
            "type" | "error_type" => SignalKind::Type,
            "status" | "statuscode" | "status_code" => SignalKind::Status,
            _ => SignalKind::Code,
        };
        signals.push(kind, value, SignalOrigin::KeyValue);
    }
}

/// An HTTP status in prose.
fn status_in_text(signals: &mut Signals, text: &str) {
    static LABELLED: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(
            r"(?i)\b(?:api error|http(?:/[0-9.]+)?|status(?:[ _]?code)?|error(?: code)?|httperror|got status|request rejected|response code)\s*[:=(]?\s*\(?([1-5][0-9]{2})\b",
        )
        .expect("valid status regex")
    });
    // A status opening a line or following a separator, then a word or a body:
    // `429 You exceeded…`, `503 SERVICE UNAVAILABLE`, `[ANTHROPIC] 401 {…}`.
    static LEADING: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r#"(?m)(?:^|[\s:=\[\]"(])([45][0-9]{2})[ \t]+(?:[A-Z]|\{)"#)
            .expect("valid leading status regex")
    });
    for re in [&*LABELLED, &*LEADING] {
        push_captures(
            signals,
            re,
            text,
            SignalKind::HttpStatus,
            SignalOrigin::StatusText,
        );
    }
}

/// Snake-case codes standing in prose: `ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS`,
/// `RESOURCE_EXHAUSTED`, `insufficient_quota`.
fn bare_codes(signals: &mut Signals, text: &str) {
    static BARE: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r"\b(?:[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+|[a-z][a-z0-9]*(?:_[a-z0-9]+)+)\b")
            .expect("valid bare code regex")
    });
    push_captures(signals, &BARE, text, SignalKind::Code, SignalOrigin::Bare);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn found(text: &str) -> Vec<(SignalKind, String, SignalOrigin)> {
        extract(text)
            .iter()
            .map(|s| (s.kind, s.value.clone(), s.origin))
            .collect()
    }

    fn has(text: &str, kind: SignalKind, value: &str, origin: SignalOrigin) {
        let all = found(text);
        assert!(
            all.contains(&(kind, value.to_owned(), origin)),
            "{kind:?} {value:?} from {origin:?} not in {all:?} of {text:?}"
        );
    }

    /// Each text, and one signal it must yield.
    const FOUND: &[(&str, SignalKind, &str, SignalOrigin)] = {
        use SignalKind::*;
        use SignalOrigin::*;
        &[
            (
                r#"{"error":{"code":"resource_unavailable","message":"x"}}"#,
                Code,
                "resource_unavailable",
                Json,
            ),
            (
                "Error code: 429 - {'error': {'message': 'Request too large', 'type': 'tokens', 'param': None, 'code': 'rate_limit_exceeded'}}",
                Type,
                "tokens",
                PythonRepr,
            ),
            (
                "Error code: 429 - {'error': {'message': 'Request too large', 'type': 'tokens', 'param': None, 'code': 'rate_limit_exceeded'}}",
                Code,
                "rate_limit_exceeded",
                PythonRepr,
            ),
            (
                "Error code: 429 - {'error': {'message': 'Request too large', 'type': 'tokens', 'param': None, 'code': 'rate_limit_exceeded'}}",
                HttpStatus,
                "429",
                StatusText,
            ),
            // A terminal wrapped the message: a raw newline inside a JSON string.
            (
                "API Error: 500 {\"type\":\"error\",\"error\":{\"type\":\"api_error\",\"message\":\"Internal server\n     error\"}}",
                Type,
                "api_error",
                Json,
            ),
            (
                "API Error: 500 {\"type\":\"error\",\"error\":{\"type\":\"api_error\",\"message\":\"Internal server\n     error\"}}",
                Message,
                "Internal server\n     error",
                Json,
            ),
            // Python picks double quotes for a string holding an apostrophe.
            (
                "{'message': \"Your organization's limit\", 'type': 'rate_limit_error'}",
                Type,
                "rate_limit_error",
                PythonRepr,
            ),
            // JSON inside a JSON string, as the Claude ACP adapter relays a body.
            (
                r#"{"code":-32603,"message":"Internal error: API Error: 529 {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}"}"#,
                RpcCode,
                "-32603",
                Json,
            ),
            (
                r#"{"code":-32603,"message":"Internal error: API Error: 529 {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}"}"#,
                Type,
                "overloaded_error",
                Json,
            ),
            (
                r#"{"code":-32603,"message":"Internal error: API Error: 529 {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}"}"#,
                HttpStatus,
                "529",
                StatusText,
            ),
            (
                r#"{"message":"Provider returned error","code":401,"metadata":{"raw":"{\"type\":\"error\",\"error\":{\"type\":\"authentication_error\"}}"}}"#,
                Type,
                "authentication_error",
                Json,
            ),
            (
                "Error: error during placement (resource_unavailable, 6c4be35cf2e8ed9d)",
                Code,
                "resource_unavailable",
                Parenthesized,
            ),
            (
                "cannot execute 'create': StatusCode: 403, Type: invalid_request_error, APIMessage: Quota exceeded for this resource.",
                HttpStatus,
                "403",
                StatusText,
            ),
            (
                "cannot execute 'create': StatusCode: 403, Type: invalid_request_error, APIMessage: Quota exceeded for this resource.",
                Type,
                "invalid_request_error",
                KeyValue,
            ),
            (
                "exception=503 SERVICE UNAVAILABLE ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS: The zone",
                HttpStatus,
                "503",
                StatusText,
            ),
            (
                "exception=503 SERVICE UNAVAILABLE ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS: The zone",
                Code,
                "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS",
                Bare,
            ),
            (
                "code: ZONE_RESOURCE_POOL_EXHAUSTED\nerrorDetails:\n    reason: resource_availability",
                Reason,
                "resource_availability",
                KeyValue,
            ),
            // Cut at 4 KiB: no JSON parses, the pairs survive.
            (
                r#"{"error":{"message":"You exceeded","type":"insufficient_quota","param":null,"code":"insufficient_q"#,
                Type,
                "insufficient_quota",
                KeyValue,
            ),
            (
                "googleapi: Error 403: Required 'compute.zones.get' permission for 'projects/p/zones/z', forbidden",
                Reason,
                "forbidden",
                Googleapi,
            ),
            (
                "googleapi: Error 403: Required 'compute.zones.get' permission for 'projects/p/zones/z', forbidden",
                HttpStatus,
                "403",
                Googleapi,
            ),
        ]
    };

    #[test]
    fn renderings_yield_their_signals() {
        for (text, kind, value, origin) in FOUND {
            has(text, *kind, value, *origin);
        }
    }

    #[test]
    fn structured_signals_come_first() {
        let signals =
            extract(r#"ZONE_RESOURCE_POOL_EXHAUSTED {"error":{"code":"QUOTA_EXCEEDED"}}"#);
        assert_eq!(
            signals.codes().next().map(|s| s.value.as_str()),
            Some("QUOTA_EXCEEDED")
        );
    }

    #[test]
    fn nothing_in_plain_prose() {
        assert!(extract("something odd happened").is_empty());
        assert!(extract("").is_empty());
        assert_eq!(
            extract("Limit 30000, Requested 342389.").http_status(),
            None
        );
    }

    proptest! {
        #[test]
        fn total_on_any_text(text in ".{0,400}") {
            let _ = extract(&text);
        }

        #[test]
        fn total_on_brace_heavy_text(text in r#"[{}\[\]"':,a-z0-9\\ ]{0,300}"#) {
            let _ = extract(&text);
        }
    }
}
