//! The GitHub App client against a mock of GitHub's REST API: the App's JWT, token
//! minting, the token cache, pull requests and the classification of failures.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chrono::Utc;
use sam_core::{
    Classify, ErrorCategory, ExternalInstallationId, PullRequestRequest, RepoRef, RepositoryHost,
    Secret,
};
use sam_providers::{GithubApp, GithubAppConfig, INSTALLATION_TOKEN_USER};
use serde_json::{Value, json};
use wiremock::matchers::{body_partial_json, header, method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

const APP_ID: u64 = 123_456;
const INSTALLATION: u64 = 4242;

fn data(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn app(server: &MockServer) -> GithubApp {
    let mut config = GithubAppConfig::new(APP_ID, Secret::new(data("test-github-app.pem")));
    config.api_url = server.uri();
    GithubApp::new(config).expect("valid config")
}

fn installation() -> ExternalInstallationId {
    ExternalInstallationId::new(INSTALLATION).unwrap()
}

fn repo() -> RepoRef {
    RepoRef::parse_https("https://github.com/acme/widgets.git").unwrap()
}

/// Checks the App JWT of `request`: RS256 by the App's key, `iss` the app id, `iat`
/// backdated, at most 10 minutes of life.
fn check_app_jwt(request: &Request) {
    let auth = request
        .headers
        .get("authorization")
        .unwrap()
        .to_str()
        .unwrap();
    let jwt = auth.strip_prefix("Bearer ").expect("a bearer token");
    let parts: Vec<&str> = jwt.split('.').collect();
    assert_eq!(parts.len(), 3, "a signed JWT");
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
    assert_eq!(header["alg"], "RS256");
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    assert_eq!(claims["iss"], APP_ID.to_string());
    let now = Utc::now().timestamp();
    let (iat, exp) = (
        claims["iat"].as_i64().unwrap(),
        claims["exp"].as_i64().unwrap(),
    );
    assert!(
        iat <= now - 55 && iat >= now - 65,
        "iat is backdated about 60 s: {claims}"
    );
    assert!(
        exp > now && exp - iat <= 600,
        "exp is at most 10 minutes after iat: {claims}"
    );
    let public: String = data("test-github-app.pub.pem")
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let public = STANDARD.decode(public).unwrap();
    let key = ring::signature::UnparsedPublicKey::new(
        &ring::signature::RSA_PKCS1_2048_8192_SHA256,
        public,
    );
    let signature = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
    key.verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &signature)
        .expect("the JWT is signed by the App's key");
}

fn minted(token: &str, valid_for: chrono::Duration) -> ResponseTemplate {
    ResponseTemplate::new(201).set_body_json(json!({
        "token": token,
        "expires_at": (Utc::now() + valid_for).to_rfc3339(),
        "permissions": { "contents": "write", "pull_requests": "write" },
        "repository_selection": "selected",
    }))
}

async fn mount_mint(server: &MockServer, response: ResponseTemplate, times: u64) {
    Mock::given(method("POST"))
        .and(path(format!(
            "/app/installations/{INSTALLATION}/access_tokens"
        )))
        .and(header("accept", "application/vnd.github+json"))
        .and(body_partial_json(json!({ "repositories": ["widgets"] })))
        .respond_with(move |request: &Request| {
            check_app_jwt(request);
            response.clone()
        })
        .expect(times)
        .mount(server)
        .await;
}

#[tokio::test]
async fn a_minted_token_is_reused_while_fresh() {
    let server = MockServer::start().await;
    mount_mint(&server, minted("ghs_first", chrono::Duration::hours(1)), 1).await;
    let app = app(&server);
    let first = app
        .repository_token(installation(), &repo())
        .await
        .expect("mint");
    assert_eq!(first.username, INSTALLATION_TOKEN_USER);
    assert_eq!(first.password.expose(), "ghs_first");
    let again = app
        .repository_token(installation(), &repo())
        .await
        .expect("cached");
    assert_eq!(
        again, first,
        "a fresh token is handed out again without a request"
    );
}

#[tokio::test]
async fn a_token_near_expiry_is_minted_again() {
    let server = MockServer::start().await;
    // Four minutes left is inside the five-minute margin: every call mints.
    mount_mint(
        &server,
        minted("ghs_short", chrono::Duration::minutes(4)),
        2,
    )
    .await;
    let app = app(&server);
    app.repository_token(installation(), &repo())
        .await
        .expect("mint");
    app.repository_token(installation(), &repo())
        .await
        .expect("mint again");
}

#[tokio::test]
async fn each_repository_gets_its_own_token() {
    let server = MockServer::start().await;
    mount_mint(
        &server,
        minted("ghs_widgets", chrono::Duration::hours(1)),
        1,
    )
    .await;
    Mock::given(method("POST"))
        .and(path(format!(
            "/app/installations/{INSTALLATION}/access_tokens"
        )))
        .and(body_partial_json(json!({ "repositories": ["gadgets"] })))
        .respond_with(minted("ghs_gadgets", chrono::Duration::hours(1)))
        .expect(1)
        .mount(&server)
        .await;
    let app = app(&server);
    let gadgets = RepoRef::parse_https("https://github.com/acme/gadgets").unwrap();
    let a = app.repository_token(installation(), &repo()).await.unwrap();
    let b = app
        .repository_token(installation(), &gadgets)
        .await
        .unwrap();
    assert_ne!(a.password, b.password);
}

#[tokio::test]
async fn installations_are_read_by_their_external_id() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(format!("/app/installations/{INSTALLATION}")))
        .respond_with(|request: &Request| {
            check_app_jwt(request);
            ResponseTemplate::new(200).set_body_json(json!({
                "id": INSTALLATION,
                "account": { "login": "acme", "type": "Organization" },
                "app_id": APP_ID,
            }))
        })
        .expect(1)
        .mount(&server)
        .await;
    let info = app(&server)
        .installation(installation())
        .await
        .expect("read");
    assert_eq!(
        (info.id, info.account.login.as_str()),
        (INSTALLATION, "acme")
    );
}

#[tokio::test]
async fn pull_requests_are_opened_with_the_installation_token() {
    let server = MockServer::start().await;
    mount_mint(&server, minted("ghs_pr", chrono::Duration::hours(1)), 1).await;
    Mock::given(method("POST"))
        .and(path("/repos/acme/widgets/pulls"))
        .and(header("authorization", "Bearer ghs_pr"))
        .and(body_partial_json(
            json!({ "head": "sam/fix-1", "base": "main" }),
        ))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({
            "number": 7,
            "html_url": "https://github.com/acme/widgets/pull/7",
        })))
        .expect(1)
        .mount(&server)
        .await;
    let request = PullRequestRequest {
        title: "SAM: fix".into(),
        head: "sam/fix-1".into(),
        base: "main".into(),
        body: "Opened by SAM".into(),
    };
    let url = app(&server)
        .open_pull_request(installation(), &repo(), &request)
        .await
        .expect("opened");
    assert_eq!(url, "https://github.com/acme/widgets/pull/7");
}

/// One failed mint per case: the status, headers and body GitHub documents, and the
/// category it must get.
#[tokio::test]
async fn failures_are_classified_through_the_taxonomy() {
    let reset = (Utc::now().timestamp() + 30).to_string();
    let cases: Vec<(ResponseTemplate, ErrorCategory, Option<u64>)> = vec![
        (
            ResponseTemplate::new(401).set_body_json(json!({
                "message": "A JSON web token could not be decoded",
                "documentation_url": "https://docs.github.com/rest",
            })),
            ErrorCategory::AuthError,
            None,
        ),
        (
            ResponseTemplate::new(403)
                .insert_header("x-ratelimit-remaining", "0")
                .insert_header("x-ratelimit-reset", reset.as_str())
                .set_body_json(json!({ "message": "API rate limit exceeded for installation ID 4242." })),
            ErrorCategory::RateLimited,
            Some(30),
        ),
        (
            ResponseTemplate::new(403).set_body_json(json!({
                "message": "Resource not accessible by integration",
            })),
            ErrorCategory::AuthError,
            None,
        ),
        (
            ResponseTemplate::new(404).set_body_json(json!({ "message": "Not Found" })),
            ErrorCategory::NotFound,
            None,
        ),
        (
            ResponseTemplate::new(422).set_body_json(json!({
                "message": "There is at least one repository that does not exist or is not accessible to the parent installation.",
            })),
            ErrorCategory::InvalidConfig,
            None,
        ),
        (ResponseTemplate::new(502), ErrorCategory::Transient, None),
    ];
    for (response, expected, wait) in cases {
        let server = MockServer::start().await;
        mount_mint(&server, response, 1).await;
        let error = app(&server)
            .repository_token(installation(), &repo())
            .await
            .expect_err("the mint fails");
        assert_eq!(error.category(), expected, "{error:?}");
        if let Some(wait) = wait {
            let got = error.retry_after().expect("a rate limit carries its wait");
            assert!(
                got <= Duration::from_secs(wait) && got >= Duration::from_secs(wait - 5),
                "{got:?}"
            );
        }
    }
}

#[tokio::test]
async fn an_unreachable_github_is_transient() {
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut config = GithubAppConfig::new(APP_ID, Secret::new(data("test-github-app.pem")));
    config.api_url = format!("http://127.0.0.1:{port}");
    let app = GithubApp::new(config).unwrap();
    let error = app
        .repository_token(installation(), &repo())
        .await
        .expect_err("nobody listens");
    assert_eq!(error.category(), ErrorCategory::Transient);
}

#[test]
fn bad_configs_are_refused() {
    let key = Secret::new(data("test-github-app.pem"));
    let check = |config: GithubAppConfig| {
        let error = GithubApp::new(config).expect_err("refused");
        assert_eq!(error.category(), ErrorCategory::InvalidConfig, "{error}");
    };
    check(GithubAppConfig::new(0, key.clone()));
    check(GithubAppConfig::new(APP_ID, Secret::new("not a key")));
    check(GithubAppConfig::new(
        APP_ID,
        Secret::new(
            "-----BEGIN RSA PRIVATE KEY-----\nbm90IGEga2V5\n-----END RSA PRIVATE KEY-----\n",
        ),
    ));
    let mut trailing = GithubAppConfig::new(APP_ID, key);
    trailing.api_url = "https://api.github.com/".into();
    check(trailing);
}
