//! The Hetzner backend against a mock of the Hetzner Cloud API that keeps servers in
//! memory and replays recorded error bodies.

mod support;

use std::time::Duration;

use sam_core::testkit::provider::spec;
use sam_core::{ErrorCategory, Provider, Secret};
use sam_providers::{HetznerConfig, HetznerProvider};
use serde_json::json;
use support::hetzner::HetznerProjects;
use support::{Mocked, case, cases};
use wiremock::matchers::{method, path, path_regex};
use wiremock::{Mock, MockServer, ResponseTemplate};

const TOKEN: &str = "test-token";

/// A small Hetzner Cloud with one project, `TOKEN`'s: one server per page when
/// listing, so every list walks pages.
fn fake_hetzner() -> HetznerProjects {
    HetznerProjects::new(&[TOKEN], 1)
}

async fn mocked() -> Mocked<HetznerProvider> {
    let server = MockServer::start().await;
    Mock::given(path_regex("^/v1/.*"))
        .respond_with(fake_hetzner())
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
