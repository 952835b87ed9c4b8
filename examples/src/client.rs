//! A client of `sam-server`'s API ([`crate::server`]): what `sam submit`, `sam status`,
//! `sam watch`, `sam list` and `sam catalog` call.
//!
//! [`Client::watch`] follows a task's server-sent events with the same display as
//! `sam run` ([`Follower`]).

use std::time::Duration;

use anyhow::Context as _;
use sam_agent::wire::ErrorBody;
use sam_core::{Secret, TaskEvent, TaskStatus};
use serde::de::DeserializeOwned;

use crate::quickstart::{Followed, Follower, Progress};
use crate::server::{Accepted, Cancelled, CatalogView, NodeView, SubmitBody, TaskList, TaskView};

/// A `sam-server` API client.
#[derive(Debug, Clone)]
pub struct Client {
    base: url::Url,
    token: Option<Secret>,
    http: reqwest::Client,
}

impl Client {
    /// A client of the server at `base` (`http://127.0.0.1:8080`), sending `token`.
    ///
    /// # Errors
    /// When the HTTP client cannot be built.
    pub fn new(base: url::Url, token: Option<Secret>) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .context("cannot build the HTTP client")?;
        Ok(Self { base, token, http })
    }

    fn request(
        &self,
        method: reqwest::Method,
        path: &str,
    ) -> anyhow::Result<reqwest::RequestBuilder> {
        let url = self
            .base
            .join(path)
            .with_context(|| format!("bad server URL {}", self.base))?;
        let mut request = self.http.request(method, url);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token.expose());
        }
        Ok(request)
    }

    async fn send<T: DeserializeOwned>(request: reqwest::RequestBuilder) -> anyhow::Result<T> {
        let response = request
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .context("cannot reach the server")?;
        let status = response.status();
        let bytes = response.bytes().await.context("cannot read the answer")?;
        if !status.is_success() {
            return Err(match serde_json::from_slice::<ErrorBody>(&bytes) {
                Ok(body) => match body.field {
                    Some(field) => anyhow::anyhow!(
                        "{} ({}, field `{field}`, HTTP {status})",
                        body.error,
                        body.category
                    ),
                    None => anyhow::anyhow!("{} ({}, HTTP {status})", body.error, body.category),
                },
                Err(_) => anyhow::anyhow!("the server answered HTTP {status}"),
            });
        }
        serde_json::from_slice(&bytes).context("the server's answer is not what was expected")
    }

    /// `POST /v1/tasks`.
    ///
    /// # Errors
    /// When the server is unreachable or refuses the task.
    pub async fn submit(&self, body: &SubmitBody) -> anyhow::Result<Accepted> {
        Self::send(self.request(reqwest::Method::POST, "v1/tasks")?.json(body)).await
    }

    /// `GET /v1/tasks/{id}`.
    ///
    /// # Errors
    /// When the server is unreachable or the task unknown.
    pub async fn task(&self, id: &str) -> anyhow::Result<TaskView> {
        Self::send(self.request(reqwest::Method::GET, &format!("v1/tasks/{id}"))?).await
    }

    /// `GET /v1/tasks`, filtered by `statuses`, after the `after` cursor.
    ///
    /// # Errors
    /// When the server is unreachable or refuses the filter.
    pub async fn list(
        &self,
        statuses: &[TaskStatus],
        after: Option<&str>,
        limit: usize,
    ) -> anyhow::Result<TaskList> {
        let mut query = vec![("limit".to_owned(), limit.to_string())];
        if !statuses.is_empty() {
            let names: Vec<String> = statuses.iter().map(ToString::to_string).collect();
            query.push(("status".to_owned(), names.join(",")));
        }
        if let Some(after) = after {
            query.push(("after".to_owned(), after.to_owned()));
        }
        Self::send(
            self.request(reqwest::Method::GET, "v1/tasks")?
                .query(&query),
        )
        .await
    }

    /// `POST /v1/tasks/{id}/cancel`.
    ///
    /// # Errors
    /// When the server is unreachable or the task unknown.
    pub async fn cancel(&self, id: &str) -> anyhow::Result<Cancelled> {
        Self::send(self.request(reqwest::Method::POST, &format!("v1/tasks/{id}/cancel"))?).await
    }

    /// `GET /v1/nodes`.
    ///
    /// # Errors
    /// When the server is unreachable.
    pub async fn nodes(&self) -> anyhow::Result<Vec<NodeView>> {
        Self::send(self.request(reqwest::Method::GET, "v1/nodes")?).await
    }

    /// `GET /v1/catalog`.
    ///
    /// # Errors
    /// When the server is unreachable.
    pub async fn catalog(&self) -> anyhow::Result<CatalogView> {
        Self::send(self.request(reqwest::Method::GET, "v1/catalog")?).await
    }

    /// Follows `GET /v1/tasks/{id}/events` until the stream ends (the task ended or
    /// the server stopped), showing each event with the `sam run` display, and
    /// returns the task as it is then with what the stream said.
    ///
    /// # Errors
    /// When the server is unreachable or the task unknown.
    pub async fn watch(
        &self,
        id: &str,
        progress: Progress,
    ) -> anyhow::Result<(TaskView, Followed)> {
        let mut response = self
            .request(reqwest::Method::GET, &format!("v1/tasks/{id}/events"))?
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .send()
            .await
            .context("cannot reach the server")?;
        if !response.status().is_success() {
            // Let `task` describe the failure (unknown task, bad token).
            self.task(id).await?;
            anyhow::bail!(
                "the server answered HTTP {} for the events",
                response.status()
            );
        }
        let mut follower = Follower::new(progress);
        follower.note(&format!("task {id}"));
        let mut buffer = String::new();
        let mut ok = false;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            let chunk = tokio::select! {
                chunk = response.chunk() => chunk.context("the event stream broke")?,
                _ = tick.tick() => {
                    follower.tick();
                    continue;
                }
            };
            let Some(chunk) = chunk else { break };
            buffer.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buffer.find("\n\n") {
                let frame: String = buffer.drain(..end + 2).collect();
                let data: String = frame
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(str::trim_start)
                    .collect::<Vec<_>>()
                    .join("\n");
                if data.is_empty() {
                    continue;
                }
                let event: TaskEvent = serde_json::from_str(&data)
                    .with_context(|| format!("a malformed event: {data}"))?;
                if let sam_core::TaskEventKind::Status { status, .. } = &event.kind {
                    ok = *status == TaskStatus::Completed;
                }
                follower.event(&event.kind);
            }
        }
        let followed = follower.done(ok);
        Ok((self.task(id).await?, followed))
    }
}

/// `sam list`'s table: one line per task.
pub fn task_table(list: &TaskList) -> String {
    let mut lines = vec![format!(
        "{:<20} {:<11} {:<34} {:<8} {}",
        "TASK", "STATUS", "STEP", "AGENT", "NODE"
    )];
    for task in &list.tasks {
        lines.push(format!(
            "{:<20} {:<11} {:<34} {:<8} {}",
            task.id,
            task.status.to_string(),
            task.execution_step.label,
            task.agent,
            task.node.as_deref().unwrap_or("-")
        ));
    }
    if let Some(after) = &list.next_after {
        lines.push(format!("(more: --after {after})"));
    }
    lines.join("\n")
}

/// `sam catalog`'s text: the provider and each size with its specs.
pub fn catalog_text(catalog: &CatalogView) -> String {
    let mut lines = vec![format!(
        "{} (default location: {})",
        catalog.provider,
        catalog
            .default_location
            .as_ref()
            .map_or_else(|| "none".to_owned(), ToString::to_string)
    )];
    for size in &catalog.sizes {
        lines.push(format!("  {:<7} {}", size.size.to_string(), size.display));
    }
    lines.join("\n")
}
