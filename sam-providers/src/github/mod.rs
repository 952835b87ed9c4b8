//! The GitHub App client: installation access tokens and pull requests.
//!
//! The App authenticates with a JWT signed by its private key (RS256, issued 60 s in
//! the past against clock drift, valid for 9 minutes, GitHub allows 10) and trades
//! it for an installation access token at
//! `POST /app/installations/{external id}/access_tokens`, narrowed to one repository.
//! Tokens are cached per installation and repository while
//! [`sam_core::token_is_fresh`] holds (more than 5 minutes left), so a burst of git
//! operations costs one mint. Nothing here retries or sleeps; every failure is
//! classified once ([`error`]).

mod config;
pub(crate) mod error;

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sam_core::{
    ErrorCategory, ExternalInstallationId, GitCredential, GithubError, PullRequestRequest, RepoRef,
    RepositoryHost, Secret, token_is_fresh,
};
use serde::Deserialize;
use tokio::sync::Mutex;

pub use config::GithubAppConfig;

use crate::error::{Error, Result};
use crate::http::{Reply, client, exchange, transport_failure};
use crate::jwt::Rs256Key;

/// The user name git sends with an installation token.
pub const INSTALLATION_TOKEN_USER: &str = "x-access-token";

/// How far the App JWT's `iat` is backdated, against clock drift.
const JWT_BACKDATE_SECS: i64 = 60;
/// How long the App JWT is valid (GitHub accepts at most 10 minutes).
const JWT_LIFETIME_SECS: i64 = 9 * 60;

/// What GitHub says about an installation.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct InstallationInfo {
    /// GitHub's id of the installation.
    pub id: u64,
    /// The account the App is installed on.
    pub account: InstallationAccount,
}

/// The account of an installation.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct InstallationAccount {
    /// Its login (an organisation or a user).
    pub login: String,
}

#[derive(Deserialize)]
struct MintedToken {
    token: String,
    expires_at: DateTime<Utc>,
}

#[derive(Deserialize)]
struct CreatedPull {
    html_url: String,
}

/// A cached installation token and its expiry.
type Cached = (Secret, DateTime<Utc>);

/// A GitHub App: mints installation tokens and opens pull requests, always
/// addressing GitHub by the installation's external id.
#[derive(Debug)]
pub struct GithubApp {
    app_id: u64,
    api_url: String,
    key: Rs256Key,
    http: reqwest::Client,
    tokens: Mutex<HashMap<(ExternalInstallationId, RepoRef), Cached>>,
}

/// The classified error of a request that got no answer.
fn transport(e: &reqwest::Error) -> GithubError {
    let (category, message) = transport_failure(e);
    GithubError::new(category, format!("GitHub: {message}"))
}

fn success(reply: Reply) -> Result<Reply, GithubError> {
    if reply.is_success() {
        Ok(reply)
    } else {
        Err(error::classify(&reply))
    }
}

fn decode<T: serde::de::DeserializeOwned>(reply: &Reply) -> Result<T, GithubError> {
    serde_json::from_str(&reply.body).map_err(|e| {
        GithubError::new(
            ErrorCategory::Unknown,
            format!("GitHub's answer could not be decoded: {e}"),
        )
        .with_status(reply.status)
    })
}

impl GithubApp {
    /// A client for the App in `config`.
    ///
    /// # Errors
    /// [`Error::InvalidGithubConfig`] for an app id of 0, an API URL that is not
    /// http(s) or ends with `/`, or a key that is not an RSA key in PEM form.
    pub fn new(config: GithubAppConfig) -> Result<Self> {
        if config.app_id == 0 {
            return Err(Error::github_config("app_id", "must be greater than zero"));
        }
        let url = &config.api_url;
        if !(url.starts_with("https://") || url.starts_with("http://")) || url.ends_with('/') {
            return Err(Error::github_config(
                "api_url",
                format!("{url:?} must start with http:// or https:// and have no trailing '/'"),
            ));
        }
        let key = Rs256Key::from_pem(config.private_key.expose())
            .map_err(|reason| Error::github_config("private_key", reason))?;
        let http = client().map_err(|e| {
            Error::Github(Box::new(GithubError::new(
                ErrorCategory::Unknown,
                format!("could not set up the HTTP client: {e}"),
            )))
        })?;
        Ok(Self {
            app_id: config.app_id,
            api_url: config.api_url,
            key,
            http,
            tokens: Mutex::new(HashMap::new()),
        })
    }

    /// The App's JWT at `now`: `iat` backdated 60 s, `exp` 9 minutes on, `iss` the app id.
    fn app_jwt(&self, now: DateTime<Utc>) -> Result<Secret, GithubError> {
        let now = now.timestamp();
        let claims = serde_json::json!({
            "iat": now - JWT_BACKDATE_SECS,
            "exp": now + JWT_LIFETIME_SECS,
            "iss": self.app_id.to_string(),
        });
        self.key.sign(&claims).map(Secret::new).map_err(|()| {
            GithubError::new(ErrorCategory::Unknown, "could not sign the App's token")
        })
    }

    fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        bearer: &Secret,
    ) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.api_url))
            .bearer_auth(bearer.expose())
            .header("accept", "application/vnd.github+json")
            .header("x-github-api-version", "2022-11-28")
    }

    async fn call(&self, request: reqwest::RequestBuilder) -> Result<Reply, GithubError> {
        success(exchange(request).await.map_err(|e| transport(&e))?)
    }

    /// Reads an installation (`GET /app/installations/{id}`): to check a link a user
    /// asks for and learn its account.
    ///
    /// # Errors
    /// The classified failure (`not_found` for an installation the App does not have).
    pub async fn installation(
        &self,
        installation: ExternalInstallationId,
    ) -> Result<InstallationInfo, GithubError> {
        let jwt = self.app_jwt(Utc::now())?;
        let path = format!("/app/installations/{installation}");
        let reply = self
            .call(self.request(reqwest::Method::GET, &path, &jwt))
            .await?;
        decode(&reply)
    }

    /// Mints a token for `repo` through `installation`, valid for about an hour.
    async fn mint(
        &self,
        installation: ExternalInstallationId,
        repo: &RepoRef,
    ) -> Result<Cached, GithubError> {
        let jwt = self.app_jwt(Utc::now())?;
        let path = format!("/app/installations/{installation}/access_tokens");
        let body = serde_json::json!({
            "repositories": [repo.name()],
            "permissions": { "contents": "write", "pull_requests": "write" },
        });
        let reply = self
            .call(self.request(reqwest::Method::POST, &path, &jwt).json(&body))
            .await?;
        let minted: MintedToken = decode(&reply)?;
        Ok((Secret::new(minted.token), minted.expires_at))
    }
}

#[async_trait]
impl RepositoryHost for GithubApp {
    async fn installation_account(
        &self,
        installation: ExternalInstallationId,
    ) -> Result<String, GithubError> {
        Ok(self.installation(installation).await?.account.login)
    }

    async fn repository_token(
        &self,
        installation: ExternalInstallationId,
        repo: &RepoRef,
    ) -> Result<GitCredential, GithubError> {
        let key = (installation, repo.clone());
        let mut tokens = self.tokens.lock().await;
        let (token, expires_at) = match tokens.get(&key) {
            Some((token, expires_at)) if token_is_fresh(*expires_at, Utc::now()) => {
                (token.clone(), *expires_at)
            }
            _ => {
                let minted = self.mint(installation, repo).await?;
                tokens.insert(key, minted.clone());
                minted
            }
        };
        Ok(GitCredential {
            username: INSTALLATION_TOKEN_USER.to_owned(),
            password: token,
            expires_at,
        })
    }

    async fn open_pull_request(
        &self,
        installation: ExternalInstallationId,
        repo: &RepoRef,
        request: &PullRequestRequest,
    ) -> Result<String, GithubError> {
        let credential = self.repository_token(installation, repo).await?;
        let path = format!("/repos/{}/{}/pulls", repo.owner(), repo.name());
        let body = serde_json::json!({
            "title": request.title,
            "head": request.head,
            "base": request.base,
            "body": request.body,
        });
        let reply = self
            .call(
                self.request(reqwest::Method::POST, &path, &credential.password)
                    .json(&body),
            )
            .await?;
        let created: CreatedPull = decode(&reply)?;
        Ok(created.html_url)
    }
}
