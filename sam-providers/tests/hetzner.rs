//! The Hetzner backend against a mock of the Hetzner Cloud API that keeps servers in
//! memory and replays recorded error bodies.

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sam_core::testkit::provider::spec;
use sam_core::{ErrorCategory, Provider, Secret};
use sam_providers::{HetznerConfig, HetznerProvider};
use serde_json::{Value, json};
use support::{Mocked, case, cases};
use wiremock::matchers::{method, path, path_regex};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

const TOKEN: &str = "test-token";

/// A small Hetzner Cloud: servers in memory, one per page when listing.
#[derive(Clone, Default)]
struct FakeHetzner {
    servers: Arc<Mutex<BTreeMap<u64, Value>>>,
}

fn error(status: u16, code: &str, message: &str) -> ResponseTemplate {
    ResponseTemplate::new(status)
        .set_body_json(json!({ "error": { "code": code, "message": message } }))
}

impl Respond for FakeHetzner {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let auth = request
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        if auth != Some(&format!("Bearer {TOKEN}")) {
            return error(401, "unauthorized", "unable to authenticate");
        }
        let mut servers = self.servers.lock().expect("lock");
        let segments: Vec<&str> = request
            .url
            .path()
            .trim_start_matches("/v1/")
            .split('/')
            .collect();
        let query: BTreeMap<String, String> = request.url.query_pairs().into_owned().collect();
        match (request.method.as_str(), segments.as_slice()) {
            ("POST", ["servers"]) => {
                let body: Value = serde_json::from_slice(&request.body).expect("json body");
                let id = servers.keys().last().copied().unwrap_or(1000) + 1;
                let server = json!({
                    "id": id, "name": body["name"], "status": "initializing",
                    "server_type": { "name": body["server_type"] },
                    "datacenter": { "location": { "name": body["location"] } },
                    "labels": body["labels"], "public_net": { "ipv4": { "ip": "192.0.2.10" } },
                    "created": "2026-01-01T00:00:00+00:00",
                });
                servers.insert(id, server.clone());
                ResponseTemplate::new(201).set_body_json(json!({
                    "server": server, "action": { "id": 1, "command": "create_server", "status": "running" },
                }))
            }
            ("GET", ["servers"]) => {
                let selector: Vec<(String, String)> = query
                    .get("label_selector")
                    .map(|s| {
                        s.split(',')
                            .filter_map(|p| p.split_once("=="))
                            .map(|(k, v)| (k.to_owned(), v.to_owned()))
                            .collect()
                    })
                    .unwrap_or_default();
                let matching: Vec<&Value> = servers
                    .values()
                    .filter(|s| selector.iter().all(|(k, v)| s["labels"][k] == json!(v)))
                    .collect();
                let page: usize = query.get("page").and_then(|p| p.parse().ok()).unwrap_or(1);
                let next = (page < matching.len()).then_some(page + 1);
                ResponseTemplate::new(200).set_body_json(json!({
                    "servers": matching.get(page - 1).map(|s| vec![*s]).unwrap_or_default(),
                    "meta": { "pagination": { "page": page, "per_page": 1, "next_page": next } },
                }))
            }
            (m, ["servers", id, rest @ ..]) => {
                let Some(server) = id.parse().ok().and_then(|id: u64| servers.get_mut(&id)) else {
                    return error(404, "not_found", "server not found");
                };
                match (m, rest) {
                    ("GET", []) => {
                        let shown = server.clone();
                        server["status"] = json!("running");
                        ResponseTemplate::new(200).set_body_json(json!({ "server": shown }))
                    }
                    ("GET", ["actions"]) => {
                        ResponseTemplate::new(200).set_body_json(json!({ "actions": [] }))
                    }
                    ("DELETE", []) => {
                        let id: u64 = id.parse().expect("numeric");
                        servers.remove(&id);
                        ResponseTemplate::new(200)
                            .set_body_json(json!({ "action": { "id": 2, "status": "running" } }))
                    }
                    _ => error(404, "not_found", "no such route"),
                }
            }
            _ => error(404, "not_found", "no such route"),
        }
    }
}

async fn mocked() -> Mocked<HetznerProvider> {
    let server = MockServer::start().await;
    Mock::given(path_regex("^/v1/.*"))
        .respond_with(FakeHetzner::default())
        .with_priority(10)
        .mount(&server)
        .await;
    let mut config = HetznerConfig::new(Secret::new(TOKEN));
    config.base_url = format!("{}/v1", server.uri());
    let provider = HetznerProvider::new(config).expect("valid config");
    Mocked { provider, server }
}

mod conformance {
    sam_core::provider_conformance!(super::mocked());
}

#[tokio::test]
async fn every_recorded_error_surfaces_with_its_category() {
    let all = cases("hetzner");
    assert!(all.len() >= 10);
    for case in all {
        let mocked = mocked().await;
        Mock::given(method("POST"))
            .and(path("/v1/servers"))
            .respond_with(
                ResponseTemplate::new(case.http_status.expect("status"))
                    .set_body_raw(case.body.clone(), "application/json"),
            )
            .with_priority(1)
            .mount(&mocked.server)
            .await;
        let result = mocked.create_vm(&spec(&*mocked, "errors")).await;
        let category = match result {
            Err(e) => e.category(),
            // hetzner-21 is a 200 that lists a failed action: not a server.
            Ok(vm) => panic!("case {}: created {vm:?}", case.id),
        };
        assert!(
            case.accept.contains(&category),
            "case {}: {category} not in {:?}",
            case.id,
            case.accept
        );
    }
}

#[tokio::test]
async fn rate_limits_carry_the_reset_time() {
    let mocked = mocked().await;
    let limited = case("hetzner-13");
    Mock::given(method("GET"))
        .and(path("/v1/servers"))
        .respond_with(
            ResponseTemplate::new(429)
                .insert_header("RateLimit-Reset", "7")
                .set_body_raw(limited.body, "application/json"),
        )
        .with_priority(1)
        .mount(&mocked.server)
        .await;
    let error = mocked.check_credentials().await.expect_err("limited");
    assert_eq!(error.category(), ErrorCategory::RateLimited);
    assert_eq!(error.retry_after(), Some(Duration::from_secs(7)));
}

#[tokio::test]
async fn a_failed_create_action_is_classified_on_poll() {
    for (body, expected) in [
        (case("hetzner-21").body, ErrorCategory::Unknown),
        (
            json!({ "actions": [{ "id": 9, "command": "create_server", "status": "error",
                "error": { "code": "resource_unavailable", "message": "no capacity left" } }] })
            .to_string(),
            ErrorCategory::TransientCapacity,
        ),
    ] {
        let mocked = mocked().await;
        let vm = mocked
            .create_vm(&spec(&*mocked, "action"))
            .await
            .expect("accepted");
        Mock::given(method("GET"))
            .and(path(format!("/v1/servers/{}/actions", vm.id)))
            .respond_with(ResponseTemplate::new(200).set_body_raw(body, "application/json"))
            .with_priority(1)
            .mount(&mocked.server)
            .await;
        let error = mocked.poll_create(&vm).await.expect_err("action failed");
        assert_eq!(error.category(), expected);
        assert_eq!(error.status(), None, "an action failure has no HTTP status");
    }
}

#[tokio::test]
async fn a_wrong_token_is_an_auth_error() {
    let mocked = mocked().await;
    let mut config = HetznerConfig::new(Secret::new("wrong"));
    config.base_url = format!("{}/v1", mocked.server.uri());
    let provider = HetznerProvider::new(config).expect("valid");
    let error = provider.check_credentials().await.expect_err("rejected");
    assert_eq!(error.category(), ErrorCategory::AuthError);
    assert!(
        !format!("{error:?}{error}").contains("wrong"),
        "the token never prints"
    );
}
