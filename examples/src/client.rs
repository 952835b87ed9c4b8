//! A client of `sam-server`'s API ([`crate::server`]): what `sam submit`, `sam status`,
//! `sam watch`, `sam logs`, `sam list`, `sam nodes` and `sam catalog` call.
//!
//! [`Client::follow`] reads a task's server-sent events (through `eventsource-stream`,
//! which buffers bytes across chunks and takes CRLF line ends) and reconnects after
//! a dropped connection with `Last-Event-ID`; [`Client::events_page`] pages through
//! the stored transcript.

use std::time::Duration;

use anyhow::Context as _;
use eventsource_stream::Eventsource as _;
use futures::StreamExt as _;
use sam_agent::wire::ErrorBody;
use sam_core::{RetryPolicy, Secret, TaskStatus};
use serde::de::DeserializeOwned;

use crate::server::{
    Accepted, Cancelled, CatalogView, ForkBody, NodeView, SubmitBody, TaskList, TaskView,
};
use crate::transcript::Received;

/// Why a request to the server failed, as the exit code tells it
/// ([`crate::exit::Exit::of_error`]).
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// No answer: the connection was refused, or timed out.
    #[error("cannot reach the server at {url}")]
    Unreachable {
        /// The URL called.
        url: String,
        /// What failed.
        #[source]
        source: reqwest::Error,
    },
    /// HTTP 401 or 403: no token, an unknown one, or one without the right.
    #[error("{message}")]
    Unauthorized {
        /// The HTTP status.
        status: u16,
        /// The server's error, with its category.
        message: String,
    },
    /// Any other error answer.
    #[error("{message}")]
    Answered {
        /// The HTTP status.
        status: u16,
        /// The server's error, with its category and field.
        message: String,
    },
}

/// A page of a task's stored events (`GET /v1/tasks/{id}/events` as JSON).
#[derive(Debug, Clone, PartialEq)]
pub struct EventPage {
    /// The events, oldest first.
    pub events: Vec<Received>,
    /// The `after` of the next page, when this one was full.
    pub next_after: Option<u64>,
    /// Whether the task has ended (no event will follow the last one).
    pub ended: bool,
}

/// The JSON of an [`EventPage`].
#[derive(Debug, serde::Deserialize)]
struct EventPageBody {
    events: Vec<serde_json::Value>,
    next_after: Option<u64>,
    ended: bool,
}

/// How [`Client::follow`] reconnects: 6 attempts in a row at most, 250 ms growing to
/// 5 s between them, within 2 minutes.
fn default_reconnect() -> RetryPolicy {
    RetryPolicy {
        initial_delay: Duration::from_millis(250),
        max_delay: Duration::from_secs(5),
        max_attempts: 6,
        budget: Duration::from_secs(120),
        jitter: 0.2,
        per_attempt_timeout: None,
        ..RetryPolicy::default()
    }
}

/// A `sam-server` API client.
#[derive(Debug, Clone)]
pub struct Client {
    base: url::Url,
    token: Option<Secret>,
    http: reqwest::Client,
    reconnect: RetryPolicy,
}

impl Client {
    /// A client of the server at `base` (`http://127.0.0.1:8080`, or with a path
    /// prefix: `http://host/sam` calls `http://host/sam/v1/tasks`), sending `token`.
    ///
    /// # Errors
    /// When the HTTP client cannot be built, or `base` cannot have a path.
    pub fn new(mut base: url::Url, token: Option<Secret>) -> anyhow::Result<Self> {
        // `Url::join` replaces the last segment of a path without a trailing slash:
        // the prefix is kept only as a directory.
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        if base.cannot_be_a_base() {
            anyhow::bail!("bad server URL {base}: it cannot have a path");
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            // The event stream sends a keep-alive every 15 s: a longer silence is a
            // dead connection, which `follow` replaces.
            .read_timeout(Duration::from_secs(60))
            .build()
            .context("cannot build the HTTP client")?;
        Ok(Self {
            base,
            token,
            http,
            reconnect: default_reconnect(),
        })
    }

    /// This client, reconnecting event streams with `policy` (its attempts count
    /// failures in a row; an event received starts the count again).
    pub fn with_reconnect(mut self, policy: RetryPolicy) -> Self {
        self.reconnect = policy;
        self
    }

    /// The URL of `path` (relative, `v1/tasks`) on the server.
    ///
    /// # Errors
    /// When `path` does not make a URL.
    pub fn url(&self, path: &str) -> anyhow::Result<url::Url> {
        self.base
            .join(path)
            .with_context(|| format!("bad server URL {}", self.base))
    }

    fn request(
        &self,
        method: reqwest::Method,
        path: &str,
    ) -> anyhow::Result<reqwest::RequestBuilder> {
        let mut request = self.http.request(method, self.url(path)?);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token.expose());
        }
        Ok(request)
    }

    /// Sends `request`; an error answer becomes a [`RequestError`].
    async fn answer(request: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        let response = request.send().await.map_err(|source| {
            let url = source.url().map_or_else(String::new, ToString::to_string);
            if source.is_connect() || source.is_timeout() {
                anyhow::Error::from(RequestError::Unreachable { url, source })
            } else {
                anyhow::Error::from(source).context(format!("cannot talk to the server at {url}"))
            }
        })?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let bytes = response.bytes().await.unwrap_or_default();
        let message = match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(body) => match body.field {
                Some(field) => format!(
                    "{} ({}, field `{field}`, HTTP {status})",
                    body.error, body.category
                ),
                None => format!("{} ({}, HTTP {status})", body.error, body.category),
            },
            Err(_) => format!("the server answered HTTP {status}"),
        };
        let status = status.as_u16();
        Err(if status == 401 || status == 403 {
            RequestError::Unauthorized { status, message }
        } else {
            RequestError::Answered { status, message }
        }
        .into())
    }

    async fn send<T: DeserializeOwned>(request: reqwest::RequestBuilder) -> anyhow::Result<T> {
        let response = Self::answer(request.timeout(Duration::from_secs(30))).await?;
        let bytes = response.bytes().await.context("cannot read the answer")?;
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

    /// `POST /v1/tasks/{id}/retry`: the task's prompt again, as a new task.
    ///
    /// # Errors
    /// When the server is unreachable, the task unknown or still running.
    pub async fn retry(&self, id: &str) -> anyhow::Result<Accepted> {
        Self::send(self.request(reqwest::Method::POST, &format!("v1/tasks/{id}/retry"))?).await
    }

    /// `POST /v1/tasks/{id}/fork`: a new task continuing from this one with `prompt`.
    ///
    /// # Errors
    /// When the server is unreachable, the task unknown or the prompt empty.
    pub async fn fork(&self, id: &str, prompt: &str) -> anyhow::Result<Accepted> {
        let body = ForkBody {
            prompt: prompt.to_owned(),
        };
        Self::send(
            self.request(reqwest::Method::POST, &format!("v1/tasks/{id}/fork"))?
                .json(&body),
        )
        .await
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

    /// `GET /v1/tasks/{id}/events?after=…&limit=…` as JSON: the stored events after
    /// the one numbered `after` (0: from the start).
    ///
    /// # Errors
    /// When the server is unreachable, the task unknown, or the answer is not a page.
    pub async fn events_page(&self, id: &str, after: u64, limit: u32) -> anyhow::Result<EventPage> {
        let body: EventPageBody = Self::send(
            self.request(reqwest::Method::GET, &format!("v1/tasks/{id}/events"))?
                .header(reqwest::header::ACCEPT, "application/json")
                .query(&[("after", after.to_string()), ("limit", limit.to_string())]),
        )
        .await
        .context("the server did not answer with a page of events")?;
        Ok(EventPage {
            events: body
                .events
                .into_iter()
                .map(|raw| Received::from_value(raw, None))
                .collect(),
            next_after: body.next_after,
            ended: body.ended,
        })
    }

    /// Every stored event of the task, page by page.
    ///
    /// # Errors
    /// As [`Client::events_page`].
    pub async fn all_events(&self, id: &str) -> anyhow::Result<(Vec<Received>, bool)> {
        let mut events = Vec::new();
        let mut after = 0;
        loop {
            let page = self.events_page(id, after, 1000).await?;
            events.extend(page.events);
            match page.next_after {
                Some(next) if next > after => after = next,
                _ => return Ok((events, page.ended)),
            }
        }
    }

    /// Follows the task's server-sent events after the one numbered `after` (0: all
    /// the server sends), until its terminal status: a background reader hands each
    /// event, once and in order, to the returned [`EventFeed`]. A dropped connection
    /// is opened again with `Last-Event-ID` set to the last `id:` seen, as the
    /// client's reconnect policy allows.
    pub fn follow(&self, id: &str, after: u64) -> EventFeed {
        let (sender, receiver) = tokio::sync::mpsc::channel(256);
        let client = self.clone();
        let id = id.to_owned();
        let reader = tokio::spawn(async move {
            if let Err(error) = client.read_events(&id, after, &sender).await {
                let _ = sender.send(Err(error)).await;
            }
        });
        EventFeed { receiver, reader }
    }

    /// The loop of [`Client::follow`]'s reader.
    async fn read_events(
        &self,
        id: &str,
        mut last: u64,
        sender: &tokio::sync::mpsc::Sender<anyhow::Result<Received>>,
    ) -> anyhow::Result<()> {
        let mut failures = 0;
        let mut failing_since = None;
        loop {
            let mut request = self
                .request(reqwest::Method::GET, &format!("v1/tasks/{id}/events"))?
                .header(reqwest::header::ACCEPT, "text/event-stream");
            if last > 0 {
                request = request.header("Last-Event-ID", last.to_string());
            }
            // The first connection's refusal (unknown task, bad token, no server) is
            // the answer; a later one is a connection to retry.
            let broke = match Self::answer(request).await {
                Ok(response) => {
                    let mut stream = response.bytes_stream().eventsource();
                    loop {
                        match stream.next().await {
                            Some(Ok(event)) => {
                                let seq = event.id.trim().parse::<u64>().ok();
                                // Replayed events already handed on are skipped.
                                if seq.is_some_and(|seq| seq <= last) || event.data.is_empty() {
                                    continue;
                                }
                                let received =
                                    Received::decode(&event.data, seq).with_context(|| {
                                        format!("a malformed event: {}", event.data)
                                    })?;
                                if let Some(seq) = received.id {
                                    last = seq;
                                }
                                failures = 0;
                                failing_since = None;
                                let terminal = received.is_terminal();
                                if sender.send(Ok(received)).await.is_err() || terminal {
                                    return Ok(());
                                }
                            }
                            Some(Err(error)) => break anyhow::Error::from(error),
                            None => break anyhow::anyhow!("the server closed the event stream"),
                        }
                    }
                }
                Err(error) if last == 0 && failures == 0 => return Err(error),
                Err(error) => error,
            };
            failures += 1;
            let since = *failing_since.get_or_insert_with(tokio::time::Instant::now);
            match self.reconnect.next_delay(
                failures,
                since.elapsed(),
                None,
                sam_core::jitter_sample(),
            ) {
                Some(delay) => {
                    tracing::debug!(%id, last, failures, ?delay, "event stream broke: {broke:#}");
                    tokio::time::sleep(delay).await;
                }
                None => {
                    return Err(broke.context(format!(
                        "the event stream of task {id} broke {failures} time(s) in a row"
                    )));
                }
            }
        }
    }
}

/// The events [`Client::follow`] reads; the reader stops when this is dropped.
#[derive(Debug)]
pub struct EventFeed {
    receiver: tokio::sync::mpsc::Receiver<anyhow::Result<Received>>,
    reader: tokio::task::JoinHandle<()>,
}

impl EventFeed {
    /// The next event; `None` after the task's terminal status.
    ///
    /// # Errors
    /// When the stream cannot be opened, or broke more often than the reconnect
    /// policy allows, or sent an event that is not JSON.
    pub async fn next(&mut self) -> Option<anyhow::Result<Received>> {
        self.receiver.recv().await
    }
}

impl Drop for EventFeed {
    fn drop(&mut self) {
        self.reader.abort();
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

/// `sam nodes`' text: one line per node (status, lifecycle, health, size, last
/// heartbeat), then its boot timeline and a failed boot's phase and journal tail.
pub fn node_table(nodes: &[NodeView], now: chrono::DateTime<chrono::Utc>) -> String {
    if nodes.is_empty() {
        return "no node".to_owned();
    }
    let mut lines = vec![format!(
        "{:<20} {:<12} {:<10} {:<10} {:<8} {:<10} {}",
        "NODE", "STATUS", "LIFECYCLE", "HEALTH", "SIZE", "HEARTBEAT", "TASK"
    )];
    for view in nodes {
        let node = &view.node;
        let heartbeat = node.last_heartbeat_at.map_or_else(
            || "never".to_owned(),
            |at| format!("{}s ago", (now - at).num_seconds().max(0)),
        );
        lines.push(format!(
            "{:<20} {:<12} {:<10} {:<10} {:<8} {:<10} {}",
            node.id.to_string(),
            node.status.to_string(),
            node.lifecycle.to_string(),
            node.health.to_string(),
            node.size.to_string(),
            heartbeat,
            node.created_for
                .as_ref()
                .map_or_else(|| "-".to_owned(), ToString::to_string)
        ));
        lines.push(format!("  {}", view.size_display));
        if let Some(boot) = crate::server::boot_line(&node.boot.timeline) {
            lines.push(format!("  boot: {boot}"));
        }
        if let Some(failure) = &node.boot.failure {
            lines.push(format!(
                "  boot failed in {} (exit {})",
                failure.phase, failure.exit_status
            ));
            for line in failure.journal.iter().rev().take(5).rev() {
                lines.push(format!("    | {line}"));
            }
        }
    }
    lines.join("\n")
}

/// `sam catalog`'s text: the provider and each size as the one formatter shows it.
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

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    /// Accepts one connection and reads its request head; returns the connection and
    /// the head, lowercased.
    async fn accept(listener: &TcpListener) -> (TcpStream, String) {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            socket.read_exact(&mut byte).await.unwrap();
            head.push(byte[0]);
        }
        (socket, String::from_utf8(head).unwrap().to_lowercase())
    }

    /// Starts a chunked `text/event-stream` answer.
    async fn start_stream(socket: &mut TcpStream) {
        socket
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
            .await
            .unwrap();
    }

    /// Writes `bytes` as one HTTP chunk in a TCP write of its own.
    async fn chunk(socket: &mut TcpStream, bytes: &[u8]) {
        let mut frame = format!("{:x}\r\n", bytes.len()).into_bytes();
        frame.extend_from_slice(bytes);
        frame.extend_from_slice(b"\r\n");
        socket.write_all(&frame).await.unwrap();
        socket.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
    }

    /// One SSE event with CRLF line ends, in the documented wire form.
    fn sse(id: u64, kind: &str) -> String {
        format!(
            "event: x\r\nid: {id}\r\ndata: {{\"id\":{id},\"task_id\":\"t-1\",\"at\":\"2026-01-02T03:04:05Z\",\"kind\":{kind}}}\r\n\r\n"
        )
    }

    const STEP: &str = r#"{"type":"step","step":"running","label":"Agent is working…"}"#;
    const DONE: &str = r#"{"type":"status","status":"completed","error":null}"#;

    fn test_client(listener: &TcpListener) -> Client {
        let base = format!("http://{}/prefix", listener.local_addr().unwrap());
        Client::new(base.parse().unwrap(), None)
            .unwrap()
            .with_reconnect(RetryPolicy {
                initial_delay: Duration::from_millis(10),
                max_delay: Duration::from_millis(50),
                max_attempts: 3,
                budget: Duration::from_secs(10),
                jitter: 0.0,
                per_attempt_timeout: None,
                ..RetryPolicy::default()
            })
    }

    async fn drain(mut feed: EventFeed) -> Vec<Received> {
        let mut all = Vec::new();
        while let Some(received) = tokio::time::timeout(Duration::from_secs(10), feed.next())
            .await
            .expect("an event or the end within 10 s")
        {
            all.push(received.unwrap());
        }
        all
    }

    #[tokio::test]
    async fn a_character_split_across_chunks_and_crlf_lines_arrive_whole() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = test_client(&listener);
        let server = tokio::spawn(async move {
            let (mut socket, head) = accept(&listener).await;
            assert!(
                head.starts_with("get /prefix/v1/tasks/t-1/events "),
                "{head}"
            );
            assert!(head.contains("accept: text/event-stream"), "{head}");
            start_stream(&mut socket).await;
            let first = sse(1, STEP);
            let bytes = first.as_bytes();
            // Inside the three bytes of "…" (U+2026).
            let split = first.find('…').unwrap() + 1;
            chunk(&mut socket, &bytes[..split]).await;
            chunk(&mut socket, &bytes[split..]).await;
            chunk(&mut socket, sse(2, DONE).as_bytes()).await;
            chunk(&mut socket, b"").await;
        });
        let events = drain(client.follow("t-1", 0)).await;
        server.await.unwrap();
        assert_eq!(events.len(), 2, "{events:?}");
        assert_eq!(events[0].raw["kind"]["label"], "Agent is working…");
        assert_eq!(events[0].id, Some(1));
        assert!(events[1].is_terminal());
    }

    #[tokio::test]
    async fn a_dropped_stream_resumes_after_the_last_id_with_no_gap_and_no_duplicate() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = test_client(&listener);
        let chunk_kind = |text: &str| {
            format!(
                r#"{{"type":"session","event":{{"type":"update","update":{{"sessionUpdate":"agent_message_chunk","content":{{"type":"text","text":"{text}"}}}}}}}}"#
            )
        };
        let (one, two, three) = (chunk_kind("Hel"), chunk_kind("lo"), chunk_kind("!"));
        let server = tokio::spawn(async move {
            let (mut socket, head) = accept(&listener).await;
            assert!(!head.contains("last-event-id"), "{head}");
            start_stream(&mut socket).await;
            chunk(&mut socket, sse(1, &one).as_bytes()).await;
            chunk(&mut socket, sse(2, &two).as_bytes()).await;
            // Half an event, then the connection drops without the last chunk.
            chunk(&mut socket, &sse(3, &three).as_bytes()[..20]).await;
            drop(socket);
            // The reconnect names the last whole event; the server replays after it.
            let (mut socket, head) = accept(&listener).await;
            assert!(head.contains("last-event-id: 2\r\n"), "{head}");
            start_stream(&mut socket).await;
            chunk(&mut socket, sse(3, &three).as_bytes()).await;
            chunk(&mut socket, sse(4, DONE).as_bytes()).await;
            chunk(&mut socket, b"").await;
        });
        let events = drain(client.follow("t-1", 0)).await;
        server.await.unwrap();
        let ids: Vec<Option<u64>> = events.iter().map(|e| e.id).collect();
        assert_eq!(ids, [Some(1), Some(2), Some(3), Some(4)]);
        let mut transcript = crate::transcript::Transcript::new();
        let lines: Vec<String> = events.iter().flat_map(|e| transcript.push(e)).collect();
        assert_eq!(lines, ["Hello!", "✓ 03:04:05 task completed"]);
    }

    #[tokio::test]
    async fn a_stream_that_keeps_breaking_gives_up_after_the_policys_attempts() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = test_client(&listener);
        let server = tokio::spawn(async move {
            // One event, then every connection drops at once: 1 + 3 attempts at most.
            let mut connections = 0;
            while let Ok((mut socket, _)) =
                tokio::time::timeout(Duration::from_secs(2), accept(&listener)).await
            {
                connections += 1;
                start_stream(&mut socket).await;
                if connections == 1 {
                    chunk(&mut socket, sse(1, STEP).as_bytes()).await;
                }
            }
            connections
        });
        let mut feed = client.follow("t-1", 0);
        assert_eq!(feed.next().await.unwrap().unwrap().id, Some(1));
        let error = feed.next().await.unwrap().unwrap_err();
        assert!(
            format!("{error:#}").contains("broke 3 time(s) in a row"),
            "{error:#}"
        );
        assert!(feed.next().await.is_none());
        assert_eq!(server.await.unwrap(), 3);
    }

    #[test]
    fn a_server_url_keeps_its_path_prefix() {
        let check = |base: &str, path: &str, expected: &str| {
            let client = Client::new(base.parse().unwrap(), None).unwrap();
            assert_eq!(client.url(path).unwrap().as_str(), expected, "{base}");
        };
        check(
            "http://host/prefix",
            "v1/tasks",
            "http://host/prefix/v1/tasks",
        );
        check(
            "http://host/prefix/",
            "v1/tasks",
            "http://host/prefix/v1/tasks",
        );
        check(
            "http://host/a/b",
            "v1/tasks/t-1/events",
            "http://host/a/b/v1/tasks/t-1/events",
        );
        check(
            "http://127.0.0.1:8080",
            "v1/tasks",
            "http://127.0.0.1:8080/v1/tasks",
        );
        check(
            "http://127.0.0.1:8080/",
            "v1/nodes",
            "http://127.0.0.1:8080/v1/nodes",
        );
    }

    #[test]
    fn the_catalog_shows_the_specs_its_json_has() {
        let catalog = CatalogView::new(&sam_providers::catalog(sam_core::ProviderKind::Local, &[]));
        let text = catalog_text(&catalog);
        assert!(
            text.contains("small   local-small · 2 vCPU · 4 GB RAM · 40 GB disk (nominal"),
            "{text}"
        );
        assert!(!text.contains(sam_providers::SPECS_UNAVAILABLE), "{text}");
        let catalog = CatalogView::new(&sam_providers::catalog(
            sam_core::ProviderKind::Hetzner,
            &[],
        ));
        let text = catalog_text(&catalog);
        assert!(
            text.contains(&format!("medium  {}\n", catalog.sizes[1].display)),
            "{text}"
        );
        assert!(
            text.contains("cx33 · 4 vCPU · 8 GB RAM · 80 GB disk"),
            "{text}"
        );
    }
}
