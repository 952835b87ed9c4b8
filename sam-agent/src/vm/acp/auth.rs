//! ACP authentication: which of the methods an agent lists in `initialize`'s
//! `authMethods` the host can use with the credentials the agent was given.
//!
//! Observed with the real adapters (codex-acp 0.16.0, gemini-cli 0.61.0,
//! claude-agent-acp 0.23.1, opencode-ai 1.18.33):
//! - codex-acp lists `chatgpt`, `codex-api-key` and `openai-api-key`; the last two are
//!   of `"type": "env_var"` and name their variables in `vars`. It refuses
//!   `session/new` with `-32000 "Authentication required"` until `authenticate`
//!   succeeds, even with the key in its environment.
//! - gemini-cli lists `oauth-personal`, `gemini-api-key`, `vertex-ai` and `gateway`,
//!   none with `vars`; without a key `session/new` fails with `-32000 "Gemini API key
//!   is missing or not configured."`.
//! - claude-agent-acp lists none; opencode lists `opencode-login` (a terminal login).
//!
//! Methods that name their variables are read as they say; for methods that do not,
//! [`KNOWN_AUTH_METHODS`] says which variable each one needs.

use serde_json::Value;

/// Authentication methods of known agents that do not name their variables, with the
/// variables each needs.
pub const KNOWN_AUTH_METHODS: &[(&str, &[&str])] = &[
    ("openai-api-key", &["OPENAI_API_KEY"]),
    ("codex-api-key", &["CODEX_API_KEY"]),
    ("gemini-api-key", &["GEMINI_API_KEY"]),
];

/// One entry of `initialize`'s `authMethods`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AuthMethod {
    /// The `methodId` to send to `authenticate`.
    pub(crate) id: String,
    /// The variables the method needs; empty when it needs none the host can give
    /// (an interactive login).
    pub(crate) vars: Vec<String>,
}

/// The methods listed in an `initialize` result; entries without an id are skipped.
pub(crate) fn parse_methods(initialize: &Value) -> Vec<AuthMethod> {
    let Some(list) = initialize.get("authMethods").and_then(Value::as_array) else {
        return Vec::new();
    };
    list.iter()
        .filter_map(|method| {
            let id = method.get("id").and_then(Value::as_str)?.to_owned();
            let named: Vec<String> = method
                .get("vars")
                .and_then(Value::as_array)
                .map(|vars| {
                    vars.iter()
                        .filter_map(|v| v.get("name").and_then(Value::as_str))
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default();
            let vars = if named.is_empty() {
                KNOWN_AUTH_METHODS
                    .iter()
                    .find(|(known, _)| *known == id)
                    .map(|(_, vars)| vars.iter().map(|v| (*v).to_owned()).collect())
                    .unwrap_or_default()
            } else {
                named
            };
            Some(AuthMethod { id, vars })
        })
        .collect()
}

/// The method to authenticate with: the first listed one whose variables were all
/// given to the agent (`given`, names only). `None` when none is usable.
pub(crate) fn choose<'a>(methods: &'a [AuthMethod], given: &[String]) -> Option<&'a AuthMethod> {
    methods
        .iter()
        .find(|m| !m.vars.is_empty() && m.vars.iter().all(|v| given.contains(v)))
}

/// What a user can do when the agent refuses for want of credentials: the variables
/// that would work, and the methods the agent offers. `None` when it lists none.
pub(crate) fn hint(methods: &[AuthMethod]) -> Option<String> {
    if methods.is_empty() {
        return None;
    }
    let mut vars: Vec<&str> = methods
        .iter()
        .flat_map(|m| m.vars.iter().map(String::as_str))
        .collect();
    vars.dedup();
    let ids: Vec<&str> = methods.iter().map(|m| m.id.as_str()).collect();
    Some(match vars.as_slice() {
        [] => format!(
            "the agent offers only logins the host cannot perform (authenticate methods: {})",
            ids.join(", ")
        ),
        _ => format!(
            "give the agent {} (authenticate methods: {})",
            vars.join(" or "),
            ids.join(", ")
        ),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// codex-acp 0.16.0's `authMethods`, as it answered `initialize` here.
    fn codex() -> Value {
        json!({ "protocolVersion": 1, "authMethods": [
            { "id": "chatgpt", "name": "Login with ChatGPT", "description": "Use your ChatGPT login with Codex CLI (requires a paid ChatGPT subscription)" },
            { "type": "env_var", "id": "codex-api-key", "name": "Use CODEX_API_KEY", "description": "Requires setting the `CODEX_API_KEY` environment variable.", "vars": [{ "name": "CODEX_API_KEY" }] },
            { "type": "env_var", "id": "openai-api-key", "name": "Use OPENAI_API_KEY", "description": "Requires setting the `OPENAI_API_KEY` environment variable.", "vars": [{ "name": "OPENAI_API_KEY" }] },
        ]})
    }

    /// gemini-cli 0.61.0's, likewise.
    fn gemini() -> Value {
        json!({ "protocolVersion": 1, "authMethods": [
            { "id": "oauth-personal", "name": "Log in with Google" },
            { "id": "gemini-api-key", "name": "Gemini API key", "_meta": { "api-key": { "provider": "google" } } },
            { "id": "vertex-ai", "name": "Vertex AI" },
            { "id": "gateway", "name": "AI API Gateway" },
        ]})
    }

    fn check(init: &Value, given: &[&str], expected: Option<&str>) {
        let methods = parse_methods(init);
        let given: Vec<String> = given.iter().map(|g| (*g).to_owned()).collect();
        assert_eq!(
            choose(&methods, &given).map(|m| m.id.as_str()),
            expected,
            "{init} with {given:?}"
        );
    }

    #[test]
    fn picks_the_method_whose_variables_were_given() {
        check(&codex(), &["OPENAI_API_KEY"], Some("openai-api-key"));
        check(&codex(), &["CODEX_API_KEY"], Some("codex-api-key"));
        check(&codex(), &["ANTHROPIC_API_KEY"], None);
        check(&codex(), &[], None);
        check(&gemini(), &["GEMINI_API_KEY"], Some("gemini-api-key"));
        check(&gemini(), &["OPENAI_API_KEY"], None);
        check(&json!({ "authMethods": [] }), &["OPENAI_API_KEY"], None);
        check(&json!({}), &["OPENAI_API_KEY"], None);
    }

    #[test]
    fn unknown_and_malformed_methods_are_never_chosen() {
        let init = json!({ "authMethods": [
            { "id": "mystery-login" },
            { "name": "no id" },
            7,
            { "id": "bad-vars", "vars": "OPENAI_API_KEY" },
            { "id": "empty-vars", "vars": [] },
        ]});
        let methods = parse_methods(&init);
        assert_eq!(
            methods.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
            ["mystery-login", "bad-vars", "empty-vars"]
        );
        check(&init, &["OPENAI_API_KEY"], None);
        assert_eq!(
            hint(&methods).unwrap(),
            "the agent offers only logins the host cannot perform (authenticate methods: mystery-login, bad-vars, empty-vars)"
        );
    }

    #[test]
    fn the_hint_names_the_variables_that_would_work() {
        assert_eq!(
            hint(&parse_methods(&codex())).unwrap(),
            "give the agent CODEX_API_KEY or OPENAI_API_KEY (authenticate methods: chatgpt, codex-api-key, openai-api-key)"
        );
        assert_eq!(hint(&[]), None);
    }
}
