//! The Scaleway backend against a mock of the Instances and Marketplace APIs that
//! keeps servers in memory and replays recorded error bodies.

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use sam_core::testkit::provider::spec;
use sam_core::{ErrorCategory, Labels, Location, Provider, Secret};
use sam_providers::{ScalewayConfig, ScalewayProvider};
use serde_json::{Value, json};
use support::{Mocked, case, cases};
use wiremock::matchers::{body_partial_json, method, path_regex};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

const TOKEN: &str = "test-secret-key";
const IMAGE: &str = "3f1b9623-71ba-4fe3-b994-27fcdaa850ba";

/// A small Scaleway: servers in memory per id, one per page when listing; each
/// server has an SBS root volume that outlives a server `DELETE` (as Scaleway's
/// does) and is refused once, `412 resource_still_in_use`, while it detaches (the
/// answer public Scaleway tooling retries on after deleting a server).
#[derive(Clone, Default)]
struct FakeScaleway {
    servers: Arc<Mutex<BTreeMap<String, Value>>>,
    /// Volume id → whether it was already refused once after its server went.
    volumes: Arc<Mutex<BTreeMap<String, bool>>>,
}

impl FakeScaleway {
    /// Volume ids still there.
    fn volumes(&self) -> Vec<String> {
        self.volumes.lock().expect("lock").keys().cloned().collect()
    }
}

fn typed(status: u16, kind: &str, message: &str) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_json(json!({ "type": kind, "message": message }))
}

impl Respond for FakeScaleway {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let auth = request
            .headers
            .get("x-auth-token")
            .and_then(|v| v.to_str().ok());
        if auth != Some(TOKEN) {
            return ResponseTemplate::new(401)
                .set_body_json(json!({ "method": "api_key", "reason": "not_found", "type": "denied_authentication" }));
        }
        let mut servers = self.servers.lock().expect("lock");
        let query: BTreeMap<String, String> = request.url.query_pairs().into_owned().collect();
        let segments: Vec<&str> = request
            .url
            .path()
            .trim_start_matches('/')
            .split('/')
            .collect();
        match (request.method.as_str(), segments.as_slice()) {
            ("GET", ["marketplace", "v2", "local-images"]) => ResponseTemplate::new(200).set_body_json(json!({
                "local_images": [{ "id": IMAGE, "compatible_commercial_types": ["DEV1-M", "DEV1-XL", "GP1-S"] }],
            })),
            ("POST", ["instance", "v1", "zones", zone, "servers"]) => {
                let body: Value = serde_json::from_slice(&request.body).expect("json body");
                assert_eq!(body["image"], IMAGE, "the image label was resolved");
                let id = format!("11111111-1111-4111-8111-{:012}", servers.len() + 1);
                let volume = format!("22222222-2222-4222-8222-{:012}", servers.len() + 1);
                self.volumes.lock().expect("lock").insert(volume.clone(), false);
                let server = json!({
                    "volumes": { "0": { "id": volume, "volume_type": "sbs_volume", "boot": false } },
                    "id": id, "name": body["name"], "state": "stopped", "commercial_type": body["commercial_type"],
                    "tags": body["tags"], "zone": zone, "public_ip": { "address": "192.0.2.20" },
                    "creation_date": "2026-01-01T00:00:00+00:00",
                });
                servers.insert(id, server.clone());
                ResponseTemplate::new(201).set_body_json(json!({ "server": server }))
            }
            ("GET", ["instance", "v1", "zones", zone, "servers"]) => {
                let wanted: Vec<&str> = query.get("tags").map(|t| t.split(',').collect()).unwrap_or_default();
                let matching: Vec<&Value> = servers
                    .values()
                    .filter(|s| s["zone"] == *zone)
                    .filter(|s| wanted.iter().all(|t| s["tags"].as_array().is_some_and(|a| a.contains(&json!(t)))))
                    .collect();
                let page: usize = query.get("page").and_then(|p| p.parse().ok()).unwrap_or(1);
                let per_page: usize = query.get("per_page").and_then(|p| p.parse().ok()).unwrap_or(50);
                let shown: Vec<&Value> = matching.iter().skip((page - 1) * per_page).take(per_page).copied().collect();
                ResponseTemplate::new(200)
                    .insert_header("X-Total-Count", matching.len().to_string())
                    .set_body_json(json!({ "servers": shown }))
            }
            (m, ["instance", "v1", "zones", zone, "servers", id, rest @ ..]) => {
                let found = servers.get(*id).is_some_and(|s| s["zone"] == *zone);
                if !found {
                    return typed(404, "unknown_resource", &format!("\"{id}\" not found"));
                }
                match (m, rest) {
                    ("GET", []) => {
                        let server = servers.get_mut(*id).expect("found");
                        let shown = server.clone();
                        if server["state"] == "starting" {
                            server["state"] = json!("running");
                        }
                        ResponseTemplate::new(200).set_body_json(json!({ "server": shown }))
                    }
                    ("DELETE", []) => {
                        servers.remove(*id);
                        ResponseTemplate::new(204)
                    }
                    ("PATCH", ["user_data", "cloud-init"]) => {
                        let content_type = request.headers.get("content-type").and_then(|v| v.to_str().ok());
                        assert_eq!(content_type, Some("text/plain"));
                        ResponseTemplate::new(204)
                    }
                    ("POST", ["action"]) => {
                        let body: Value = serde_json::from_slice(&request.body).expect("json body");
                        match body["action"].as_str() {
                            Some("poweron") => servers.get_mut(*id).expect("found")["state"] = json!("starting"),
                            Some("terminate") => {
                                // Terminate deletes the server with its volumes.
                                if let Some(server) = servers.remove(*id) {
                                    let mut volumes = self.volumes.lock().expect("lock");
                                    for v in server["volumes"].as_object().into_iter().flat_map(|m| m.values()) {
                                        volumes.remove(v["id"].as_str().unwrap_or_default());
                                    }
                                }
                            }
                            _ => return typed(400, "invalid_request_error", "unknown action"),
                        }
                        ResponseTemplate::new(202).set_body_json(json!({ "task": { "status": "pending" } }))
                    }
                    _ => typed(404, "not_found", "no such route"),
                }
            }
            ("DELETE", ["block", "v1alpha1", "zones", _zone, "volumes", id]) => {
                let attached = servers.values().any(|s| {
                    s["volumes"].as_object().into_iter().flat_map(|m| m.values()).any(|v| v["id"] == *id)
                });
                let mut volumes = self.volumes.lock().expect("lock");
                match volumes.get_mut(*id) {
                    None => typed(404, "unknown_resource", &format!("\"{id}\" not found")),
                    Some(refused) if attached || !*refused => {
                        *refused = true;
                        ResponseTemplate::new(412).set_body_json(
                            json!({ "type": "precondition_failed", "precondition": "resource_still_in_use" }),
                        )
                    }
                    Some(_) => {
                        volumes.remove(*id);
                        ResponseTemplate::new(204)
                    }
                }
            }
            _ => typed(404, "not_found", "no such route"),
        }
    }
}

async fn mocked() -> Mocked<ScalewayProvider> {
    mocked_with(FakeScaleway::default()).await
}

async fn mocked_with(fake: FakeScaleway) -> Mocked<ScalewayProvider> {
    let server = MockServer::start().await;
    Mock::given(path_regex("^/.*"))
        .respond_with(fake)
        .with_priority(10)
        .mount(&server)
        .await;
    let zones = ["fr-par-1", "nl-ams-1"]
        .map(|z| Location::new(z).expect("valid"))
        .to_vec();
    let mut config = ScalewayConfig::new(Secret::new(TOKEN), "project-1", zones);
    config.base_url = server.uri();
    let provider = ScalewayProvider::new(config).expect("valid config");
    Mocked { provider, server }
}

mod conformance {
    sam_core::provider_conformance!(super::mocked());
}

/// Makes every call matching `method` and `path_pattern` (and the optional JSON part)
/// answer with `status` and `body`.
async fn fail(
    mocked: &Mocked<ScalewayProvider>,
    verb: &str,
    path_pattern: &str,
    part: Option<Value>,
    status: u16,
    body: &str,
) {
    let mock = Mock::given(method(verb)).and(path_regex(path_pattern));
    let mock = match part {
        Some(part) => mock.and(body_partial_json(part)),
        None => mock,
    };
    mock.respond_with(
        ResponseTemplate::new(status).set_body_raw(body.to_owned(), "application/json"),
    )
    .with_priority(1)
    .mount(&mocked.server)
    .await;
}

async fn leftovers(mocked: &Mocked<ScalewayProvider>) -> usize {
    mocked.list_vms(&Labels::new()).await.expect("list").len()
}

#[tokio::test]
async fn every_recorded_error_surfaces_with_its_category() {
    let all = cases("scaleway");
    assert!(all.len() >= 10);
    for case in all {
        let mocked = mocked().await;
        let status = case.http_status.expect("status");
        fail(&mocked, "POST", "/servers$", None, status, &case.body).await;
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
async fn a_failed_upload_terminates_the_new_server() {
    let mocked = mocked().await;
    let busy = case("scaleway-04");
    fail(
        &mocked,
        "PATCH",
        "/user_data/cloud-init$",
        None,
        409,
        &busy.body,
    )
    .await;
    let error = mocked
        .create_vm(&spec(&*mocked, "upload"))
        .await
        .expect_err("upload failed");
    assert_eq!(
        error.category(),
        ErrorCategory::Conflict,
        "the original error is returned"
    );
    assert!(error.cleanup_failure().is_none());
    assert_eq!(leftovers(&mocked).await, 0, "the server was terminated");
}

#[tokio::test]
async fn a_failed_power_on_falls_back_to_delete_when_terminate_is_refused() {
    let fake = FakeScaleway::default();
    let mocked = mocked_with(fake.clone()).await;
    let quota = case("scaleway-08");
    let not_running = case("scaleway-09");
    fail(
        &mocked,
        "POST",
        "/action$",
        Some(json!({ "action": "poweron" })),
        403,
        &quota.body,
    )
    .await;
    fail(
        &mocked,
        "POST",
        "/action$",
        Some(json!({ "action": "terminate" })),
        400,
        &not_running.body,
    )
    .await;
    let error = mocked
        .create_vm(&spec(&*mocked, "poweron"))
        .await
        .expect_err("power-on failed");
    assert_eq!(error.category(), ErrorCategory::QuotaExceeded);
    assert!(error.cleanup_failure().is_none(), "DELETE cleaned up");
    assert_eq!(leftovers(&mocked).await, 0, "the server was deleted");
    assert_eq!(
        fake.volumes(),
        Vec::<String>::new(),
        "its root volume too, once detached (a server DELETE leaves it billed)"
    );
}

#[tokio::test]
async fn deleting_a_stopped_server_deletes_its_volumes_and_terminate_needs_no_more() {
    let fake = FakeScaleway::default();
    let mocked = mocked_with(fake.clone()).await;
    // Created and powered on: running, so delete terminates (volumes go with it).
    let running = mocked
        .create_vm(&spec(&*mocked, "running"))
        .await
        .expect("create");
    mocked.get_vm(&running.id).await.expect("get");
    assert_eq!(fake.volumes().len(), 1);
    mocked.delete_vm(&running.id).await.expect("delete");
    assert!(fake.volumes().is_empty(), "terminate took the volume along");

    // A stopped server cannot be terminated: DELETE, then its volume.
    let stopped = mocked
        .create_vm(&spec(&*mocked, "stopped"))
        .await
        .expect("create");
    fake.servers
        .lock()
        .unwrap()
        .values_mut()
        .for_each(|s| s["state"] = json!("stopped"));
    mocked.delete_vm(&stopped.id).await.expect("delete");
    assert_eq!(leftovers(&mocked).await, 0);
    assert!(
        fake.volumes().is_empty(),
        "the stopped server's volume was deleted"
    );
}

#[tokio::test]
async fn a_volume_that_cannot_be_deleted_is_named_in_the_error() {
    let fake = FakeScaleway::default();
    let mocked = mocked_with(fake.clone()).await;
    let vm = mocked
        .create_vm(&spec(&*mocked, "stuck"))
        .await
        .expect("create");
    fake.servers
        .lock()
        .unwrap()
        .values_mut()
        .for_each(|s| s["state"] = json!("stopped"));
    fail(
        &mocked,
        "DELETE",
        "/block/v1alpha1/zones/[^/]+/volumes/[^/]+$",
        None,
        500,
        r#"{"type":"internal_error","message":"boom"}"#,
    )
    .await;
    let error = mocked
        .delete_vm(&vm.id)
        .await
        .expect_err("the volume stays");
    let volume = fake.volumes().pop().expect("the volume is still there");
    assert!(
        error.to_string().contains(&volume) && error.to_string().contains("still billed"),
        "{error}"
    );
    assert_eq!(leftovers(&mocked).await, 0, "the server itself is gone");
}

#[tokio::test]
async fn a_failed_cleanup_is_attached_to_the_original_error() {
    let mocked = mocked().await;
    let quota = case("scaleway-08");
    let not_running = case("scaleway-09");
    fail(
        &mocked,
        "POST",
        "/action$",
        Some(json!({ "action": "poweron" })),
        403,
        &quota.body,
    )
    .await;
    fail(
        &mocked,
        "POST",
        "/action$",
        Some(json!({ "action": "terminate" })),
        400,
        &not_running.body,
    )
    .await;
    fail(
        &mocked,
        "DELETE",
        "/servers/[^/]+$",
        None,
        500,
        r#"{"type":"internal_error","message":"boom"}"#,
    )
    .await;
    let error = mocked
        .create_vm(&spec(&*mocked, "cleanup"))
        .await
        .expect_err("power-on failed");
    assert_eq!(
        error.category(),
        ErrorCategory::QuotaExceeded,
        "the original error stays primary"
    );
    let cleanup = error.cleanup_failure().expect("cleanup failure attached");
    assert_eq!(cleanup.category(), ErrorCategory::Transient);
    assert!(error.to_string().contains("cleanup also failed"), "{error}");
    assert_eq!(
        leftovers(&mocked).await,
        1,
        "the server is still there, and the caller knows"
    );
}

#[tokio::test]
async fn get_and_delete_search_every_configured_zone() {
    let mocked = mocked().await;
    let mut spec = spec(&*mocked, "zones");
    spec.location = Location::new("nl-ams-1").expect("valid");
    let vm = mocked.create_vm(&spec).await.expect("create");
    let found = mocked
        .get_vm(&vm.id)
        .await
        .expect("get")
        .expect("found in the second zone");
    assert_eq!(found.location.as_str(), "nl-ams-1");
    mocked.delete_vm(&vm.id).await.expect("delete");
    assert_eq!(mocked.get_vm(&vm.id).await.expect("get"), None);
}
