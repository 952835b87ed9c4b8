//! Corpora of real error texts, the renderings SDKs and CLIs give them, and a report
//! of how a classifier does on them.
//!
//! A corpus is a JSON array of [`CorpusCase`]s: each text was taken from a public
//! issue tracker or an SDK's test table (its `source`), or rendered from such a body
//! by a client's documented rule (its `rule`, with the case it was `derived_from`).

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde_json::Value;

use crate::error::{ErrorCategory, truncate_body};

/// One error as it reached someone, and the category a maintainer of that system
/// would choose.
#[derive(Clone, Debug, Deserialize)]
pub struct CorpusCase {
    /// A unique name.
    pub id: String,
    /// The system that failed (`hetzner`, `gcp`, `anthropic`, `opencode`, …).
    pub provider: String,
    /// The HTTP status of the response, when the source shows it.
    pub status: Option<u16>,
    /// How the text was rendered (`raw_json`, `googleapi`, `hcloud_go`,
    /// `openai_python`, `claude_code`, …).
    pub rendering: String,
    /// The category a maintainer would choose.
    pub expected: ErrorCategory,
    /// Every category that counts as right, when more than one does.
    #[serde(default)]
    pub accept: Vec<ErrorCategory>,
    /// Where the text (or the body it was rendered from) was found.
    pub source: String,
    /// The case whose body this one renders.
    #[serde(default)]
    pub derived_from: Option<String>,
    /// The rendering rule, with where it is documented.
    #[serde(default)]
    pub rule: Option<String>,
    /// Why the category is what it is, where that is not obvious.
    #[serde(default)]
    pub note: Option<String>,
    /// The text as it reached the classifier.
    pub text: String,
}

impl CorpusCase {
    /// Whether `category` counts as right for this case.
    pub fn accepts(&self, category: ErrorCategory) -> bool {
        category == self.expected || self.accept.contains(&category)
    }

    /// The first well-formed JSON object in the text: the body an SDK rendered.
    pub fn body(&self) -> Option<Value> {
        self.text
            .char_indices()
            .filter(|(_, c)| *c == '{')
            .find_map(|(i, _)| {
                let mut stream =
                    serde_json::Deserializer::from_str(&self.text[i..]).into_iter::<Value>();
                match stream.next() {
                    Some(Ok(value @ Value::Object(_))) => Some(value),
                    _ => None,
                }
            })
    }
}

/// Parses a corpus, checking that every case names its source and that ids are
/// unique.
///
/// # Panics
/// On malformed data: a corpus is test material, and a broken one must fail loudly.
pub fn load(json: &str) -> Vec<CorpusCase> {
    let cases: Vec<CorpusCase> = serde_json::from_str(json).expect("the corpus parses");
    let mut ids = std::collections::HashSet::new();
    for case in &cases {
        assert!(ids.insert(case.id.as_str()), "duplicate id {}", case.id);
        assert!(
            !case.source.trim().is_empty(),
            "case {} names no source",
            case.id
        );
        assert!(
            case.derived_from.is_none() || case.rule.is_some(),
            "case {} is derived without a rule",
            case.id
        );
    }
    cases
}

/// Right and total, per provider and per rendering, and the cases missed.
#[derive(Debug, Default)]
pub struct CorpusReport {
    by_provider: BTreeMap<String, (usize, usize)>,
    by_rendering: BTreeMap<String, (usize, usize)>,
    misses: Vec<(String, ErrorCategory, ErrorCategory)>,
    false_auth: Vec<String>,
}

impl CorpusReport {
    /// Classifies every case and tallies the result.
    pub fn run(cases: &[CorpusCase], classify: impl Fn(&CorpusCase) -> ErrorCategory) -> Self {
        let mut report = Self::default();
        for case in cases {
            let got = classify(case);
            let right = case.accepts(got);
            for (map, key) in [
                (&mut report.by_provider, &case.provider),
                (&mut report.by_rendering, &case.rendering),
            ] {
                let entry = map.entry(key.clone()).or_default();
                entry.0 += usize::from(right);
                entry.1 += 1;
            }
            if !right {
                report.misses.push((case.id.clone(), got, case.expected));
                if got == ErrorCategory::AuthError {
                    report.false_auth.push(case.id.clone());
                }
            }
        }
        report
    }

    /// The share classified right, from 0 to 1.
    pub fn share(&self) -> f64 {
        let (right, total) = self
            .by_provider
            .values()
            .fold((0, 0), |(r, t), (right, total)| (r + right, t + total));
        if total == 0 {
            0.0
        } else {
            right as f64 / total as f64
        }
    }

    /// The cases classified `auth_error` whose maintainers would not.
    pub fn false_auth(&self) -> &[String] {
        &self.false_auth
    }

    /// Prints the report under `title`, then holds it to the bar: at least
    /// `min_cases` cases, no false `auth_error`, and at least 95% right.
    ///
    /// # Panics
    /// When the corpus or the classifier falls short.
    pub fn print_and_hold(&self, title: &str, min_cases: usize) {
        let cases: usize = self.by_provider.values().map(|(_, total)| total).sum();
        println!("{title} ({cases} cases)\n{self}");
        assert!(cases >= min_cases, "only {cases} cases");
        assert!(
            self.false_auth.is_empty(),
            "auth_error for failures that are not authentication: {:?}",
            self.false_auth
        );
        assert!(
            self.share() >= 0.95,
            "{:.1}% right\n{self}",
            self.share() * 100.0
        );
    }
}

impl fmt::Display for CorpusReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (title, map) in [
            ("provider", &self.by_provider),
            ("rendering", &self.by_rendering),
        ] {
            writeln!(f, "{title:<28} right / cases")?;
            for (key, (right, total)) in map {
                writeln!(f, "  {key:<26} {right:>3} / {total:<3}")?;
            }
        }
        writeln!(f, "overall: {:.1}% right", self.share() * 100.0)?;
        for (id, got, expected) in &self.misses {
            writeln!(f, "  miss {id}: {got}, expected {expected}")?;
        }
        Ok(())
    }
}

/// Renders a JSON value as Python's `repr` of the parsed body, as the OpenAI and
/// Anthropic Python SDKs print it in `Error code: 429 - {…}`.
pub fn python_repr(value: &Value) -> String {
    match value {
        Value::Null => "None".to_owned(),
        Value::Bool(true) => "True".to_owned(),
        Value::Bool(false) => "False".to_owned(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => python_str(s),
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(python_repr).collect();
            format!("[{}]", items.join(", "))
        }
        Value::Object(map) => {
            let items: Vec<String> = map
                .iter()
                .map(|(k, v)| format!("{}: {}", python_str(k), python_repr(v)))
                .collect();
            format!("{{{}}}", items.join(", "))
        }
    }
}

/// Python's `repr` of a string: single quotes unless the string holds a single
/// quote and no double quote.
fn python_str(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

/// Go's `googleapi.Error` rendering of a Google error body, when it has the
/// `{"error":{"code","message","errors":[…]}}` shape.
pub fn googleapi(body: &Value) -> Option<String> {
    let error = body.get("error")?;
    let code = error.get("code")?.as_u64()?;
    let message = error.get("message").and_then(Value::as_str).unwrap_or("");
    let errors = error
        .get("errors")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut out = format!("googleapi: Error {code}: {message}");
    let reason = |e: &Value| {
        e.get("reason")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    match errors.as_slice() {
        [] => out = out.trim().to_owned(),
        [only] if only.get("message").and_then(Value::as_str) == Some(message) => {
            out.push_str(&format!(", {}", reason(only)));
        }
        all => {
            out.push_str("\nMore details:\n");
            for e in all {
                let m = e.get("message").and_then(Value::as_str).unwrap_or("");
                out.push_str(&format!("Reason: {}, Message: {m}\n", reason(e)));
            }
        }
    }
    Some(out)
}

/// `text` with `pad` bytes of padding added inside its closing brace, then cut to
/// the 4 KiB a kept body holds: every byte of the original but the brace survives.
pub fn pad_and_truncate(text: &str, pad: usize) -> String {
    let trimmed = text.trim_end();
    let open = trimmed.strip_suffix('}').unwrap_or(trimmed);
    truncate_body(&format!("{open},\"padding\":\"{}\"}}", "x".repeat(pad)))
}
