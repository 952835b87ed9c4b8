//! The GCP backend against a mock of Compute Engine and the OAuth token endpoint that
//! keeps instances and operations in memory and replays recorded error bodies.

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use sam_core::testkit::provider::spec;
use sam_core::{ErrorCategory, Location, Provider};
use sam_providers::{GcpConfig, GcpProvider, GcpServiceAccount};
use serde_json::{Value, json};
use support::{Mocked, cases};
use wiremock::matchers::{method, path, path_regex};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

const ACCESS_TOKEN: &str = "ya29.test-access-token";
const PREFIX: &str = "/compute/v1/projects/sam-test/zones/";

#[derive(Default)]
struct State {
    instances: BTreeMap<String, Value>,
    operations: BTreeMap<String, Value>,
    requests: BTreeMap<String, String>,
}

/// A small Compute Engine: instances and operations in memory.
#[derive(Clone, Default)]
struct FakeCompute {
    state: Arc<Mutex<State>>,
}

fn google(status: u16, reason: &str, text: &str) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_json(json!({ "error": {
        "code": status, "message": text, "errors": [{ "reason": reason, "message": text, "domain": "global" }],
    }}))
}

impl Respond for FakeCompute {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        if request.url.path() == "/token" {
            let form = String::from_utf8_lossy(&request.body).into_owned();
            assert!(
                form.contains("grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer"),
                "{form}"
            );
            let assertion = form.split("assertion=").nth(1).unwrap_or_default();
            assert_eq!(assertion.split('.').count(), 3, "a signed JWT");
            return ResponseTemplate::new(200).set_body_json(
                json!({ "access_token": ACCESS_TOKEN, "expires_in": 3599, "token_type": "Bearer" }),
            );
        }
        let auth = request
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        if auth != Some(&format!("Bearer {ACCESS_TOKEN}")) {
            return google(
                401,
                "authError",
                "Request had invalid authentication credentials.",
            );
        }
        let Some(rest) = request.url.path().strip_prefix(PREFIX) else {
            return google(404, "notFound", "no such route");
        };
        let segments: Vec<&str> = rest.split('/').collect();
        let query: BTreeMap<String, String> = request.url.query_pairs().into_owned().collect();
        let mut state = self.state.lock().expect("lock");
        let operation = |state: &mut State, zone: &str, target: &str| {
            let name = format!("operation-{}", state.operations.len() + 1);
            let op =
                json!({ "name": name, "status": "RUNNING", "zone": zone, "targetLink": target });
            state.operations.insert(name, op.clone());
            op
        };
        match (request.method.as_str(), segments.as_slice()) {
            ("POST", [zone, "instances"]) => {
                let request_id = query
                    .get("requestId")
                    .cloned()
                    .expect("every insert carries a requestId");
                if let Some(name) = state.requests.get(&request_id) {
                    let op = state.operations[name].clone();
                    return ResponseTemplate::new(200).set_body_json(op);
                }
                let body: Value = serde_json::from_slice(&request.body).expect("json body");
                assert_eq!(body["metadata"]["items"][0]["key"], "user-data");
                let name = body["name"].as_str().expect("name").to_owned();
                if state.instances.contains_key(&name) {
                    return google(409, "alreadyExists", "The resource already exists");
                }
                let instance = json!({
                    "id": "1234", "name": name, "status": "PROVISIONING",
                    "machineType": format!("https://compute.googleapis.com{PREFIX}{zone}/machineTypes/{}",
                        body["machineType"].as_str().and_then(|m| m.rsplit('/').next()).unwrap_or_default()),
                    "zone": format!("https://compute.googleapis.com{PREFIX}{zone}"),
                    "labels": body["labels"],
                    "networkInterfaces": [{ "networkIP": "10.0.0.2", "accessConfigs": [{ "natIP": "192.0.2.30" }] }],
                    "creationTimestamp": "2026-01-01T00:00:00.000-08:00",
                });
                state.instances.insert(name.clone(), instance);
                let op = operation(&mut state, zone, &name);
                state.requests.insert(
                    request_id,
                    op["name"].as_str().unwrap_or_default().to_owned(),
                );
                ResponseTemplate::new(200).set_body_json(op)
            }
            ("GET", [_, "operations", name]) => match state.operations.get_mut(*name) {
                Some(op) => {
                    op["status"] = json!("DONE");
                    ResponseTemplate::new(200).set_body_json(op.clone())
                }
                None => google(404, "notFound", "operation not found"),
            },
            ("GET", [zone, "instances"]) => {
                let filter = query.get("filter").cloned().unwrap_or_default();
                let wanted: Vec<(String, String)> = filter
                    .split(" AND ")
                    .filter_map(|term| {
                        let term = term.trim_matches(|c| c == '(' || c == ')');
                        let (k, v) = term.strip_prefix("labels.")?.split_once(" = ")?;
                        Some((k.to_owned(), v.trim_matches('"').to_owned()))
                    })
                    .collect();
                let matching: Vec<&Value> = state
                    .instances
                    .values()
                    .filter(|i| i["zone"].as_str().is_some_and(|z| z.ends_with(zone)))
                    .filter(|i| wanted.iter().all(|(k, v)| i["labels"][k] == json!(v)))
                    .collect();
                let start: usize = query
                    .get("pageToken")
                    .and_then(|t| t.parse().ok())
                    .unwrap_or(0);
                let next = (start + 1 < matching.len()).then(|| (start + 1).to_string());
                ResponseTemplate::new(200).set_body_json(json!({
                    "items": matching.get(start).map(|i| vec![*i]).unwrap_or_default(),
                    "nextPageToken": next,
                }))
            }
            (verb, [zone, "instances", name]) => {
                let in_zone = state
                    .instances
                    .get(*name)
                    .is_some_and(|i| i["zone"].as_str().is_some_and(|z| z.ends_with(zone)));
                if !in_zone {
                    return google(
                        404,
                        "notFound",
                        &format!("The resource '{name}' was not found"),
                    );
                }
                if verb == "DELETE" {
                    state.instances.remove(*name);
                    let op = operation(&mut state, zone, name);
                    return ResponseTemplate::new(200).set_body_json(op);
                }
                let instance = state.instances.get_mut(*name).expect("present");
                let shown = instance.clone();
                instance["status"] = json!("RUNNING");
                ResponseTemplate::new(200).set_body_json(shown)
            }
            _ => google(404, "notFound", "no such route"),
        }
    }
}

async fn mocked() -> Mocked<GcpProvider> {
    let server = MockServer::start().await;
    Mock::given(path_regex("^/.*"))
        .respond_with(FakeCompute::default())
        .with_priority(10)
        .mount(&server)
        .await;
    let key_file = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/test-service-account.json"
    );
    let text = std::fs::read_to_string(key_file).expect("test key");
    let mut account: GcpServiceAccount = serde_json::from_str(&text).expect("key parses");
    account.token_uri = format!("{}/token", server.uri());
    let zones = ["europe-west1-b", "europe-west1-c"]
        .map(|z| Location::new(z).expect("valid"))
        .to_vec();
    let mut config = GcpConfig::new("sam-test", zones, account);
    config.base_url = format!("{}/compute/v1", server.uri());
    let provider = GcpProvider::new(config).expect("valid config");
    Mocked { provider, server }
}

mod conformance {
    sam_core::provider_conformance!(super::mocked());
}

#[tokio::test]
async fn every_recorded_error_surfaces_with_its_category() {
    let all = cases("gcp");
    assert!(all.len() >= 4);
    for case in all {
        let mocked = mocked().await;
        Mock::given(method("POST"))
            .and(path_regex("/instances$"))
            .respond_with(
                ResponseTemplate::new(case.http_status.expect("status"))
                    .set_body_raw(case.body.clone(), "application/json"),
            )
            .with_priority(1)
            .mount(&mocked.server)
            .await;
        let error = mocked
            .create_vm(&spec(&*mocked, "errors"))
            .await
            .expect_err("scripted failure");
        assert!(
            case.accept.contains(&error.category()),
            "case {}: {} not in {:?}",
            case.id,
            error.category(),
            case.accept
        );
    }
}

#[tokio::test]
async fn operation_failures_are_classified_on_poll() {
    for (code, status, expected) in [
        (
            "ZONE_RESOURCE_POOL_EXHAUSTED",
            503,
            ErrorCategory::TransientCapacity,
        ),
        (
            "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS",
            503,
            ErrorCategory::TransientCapacity,
        ),
        ("QUOTA_EXCEEDED", 403, ErrorCategory::QuotaExceeded),
        (
            "CONCURRENT_OPERATIONS_QUOTA_EXCEEDED",
            403,
            ErrorCategory::RateLimited,
        ),
    ] {
        let mocked = mocked().await;
        let vm = mocked
            .create_vm(&spec(&*mocked, "operation"))
            .await
            .expect("accepted");
        Mock::given(method("GET"))
            .and(path_regex("/operations/"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "name": "operation-1", "status": "DONE", "httpErrorStatusCode": status,
                "error": { "errors": [{ "code": code, "message": format!("The zone does not have enough resources ({code})") }] },
            })))
            .with_priority(1)
            .mount(&mocked.server)
            .await;
        let error = mocked.poll_create(&vm).await.expect_err("operation failed");
        assert_eq!(error.category(), expected, "{code}");
        assert_eq!(error.provider_code(), Some(code));
    }
}

#[tokio::test]
async fn the_same_attempt_twice_makes_one_instance() {
    let mocked = mocked().await;
    let spec = spec(&*mocked, "twice");
    mocked.create_vm(&spec).await.expect("first");
    mocked
        .create_vm(&spec)
        .await
        .expect("the repeated request id is accepted");
    assert_eq!(mocked.list_vms(&spec.labels).await.expect("list").len(), 1);
}

#[tokio::test]
async fn a_rejected_key_is_an_auth_error() {
    let mocked = mocked().await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .respond_with(ResponseTemplate::new(400).set_body_json(
            json!({ "error": "invalid_grant", "error_description": "Invalid JWT Signature." }),
        ))
        .with_priority(1)
        .mount(&mocked.server)
        .await;
    let error = mocked.check_credentials().await.expect_err("rejected");
    assert_eq!(error.category(), ErrorCategory::AuthError);
    assert_eq!(error.provider_code(), Some("invalid_grant"));
}

#[tokio::test]
async fn a_key_that_is_not_rsa_is_invalid_config() {
    let account = GcpServiceAccount {
        client_email: "a@b".into(),
        private_key: sam_core::Secret::new(
            "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n",
        ),
        token_uri: "http://127.0.0.1:9/token".into(),
        project_id: None,
    };
    let config = GcpConfig::new(
        "p",
        vec![Location::new("europe-west1-b").expect("valid")],
        account,
    );
    let error = GcpProvider::new(config).expect_err("not a key");
    assert_eq!(
        sam_core::Classify::category(&error),
        ErrorCategory::InvalidConfig
    );
    assert!(
        !format!("{error:?}").contains("bm90IGEga2V5"),
        "the key never prints"
    );
}
