//! The JSON-RPC 2.0 connection to one agent process: newline-delimited messages on
//! stdio, our requests matched to responses by id, the agent's requests and
//! notifications handed to the [`ClientHandler`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::{Mutex, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::client::ClientHandler;
use super::launch::{AgentIo, TreeGuard};

/// A JSON-RPC error object the agent answered with.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RpcError {
    pub(crate) code: i64,
    pub(crate) message: String,
    pub(crate) data: Option<Value>,
}

impl RpcError {
    pub(crate) fn new(code: i64, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            data: None,
        }
    }

    pub(crate) fn to_json(&self) -> Value {
        let mut error = json!({ "code": self.code, "message": self.message });
        if let Some(data) = &self.data {
            error["data"] = data.clone();
        }
        error
    }
}

/// How the agent's side of the connection ended.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Exit {
    /// What happened (end of output, exit status), redacted.
    pub(crate) reason: String,
    /// How long the agent ran.
    pub(crate) uptime: Duration,
}

/// Why a call did not get a result.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum CallError {
    /// The agent answered with an error.
    Rpc(RpcError),
    /// The agent went away before answering.
    Closed(Exit),
    /// The agent's answer was not JSON-RPC.
    Protocol(String),
}

type Pending = Arc<StdMutex<HashMap<u64, oneshot::Sender<Result<Value, RpcError>>>>>;
type Writer = Arc<Mutex<Box<dyn AsyncWrite + Send + Unpin>>>;

/// One live connection. Dropping it stops the reader and kills the agent's process
/// tree.
#[derive(Debug)]
pub(crate) struct Connection {
    writer: WriterDebug,
    pending: Pending,
    next_id: AtomicU64,
    closed: watch::Receiver<Option<Exit>>,
    reader: JoinHandle<()>,
    started: Instant,
    _tree: TreeGuard,
}

/// The writer, wrapped so `Connection` can derive `Debug`.
struct WriterDebug(Writer);

impl std::fmt::Debug for WriterDebug {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AgentStdin")
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Connection {
    /// Starts reading the agent's output; requests from it go to `handler`.
    pub(crate) fn start(io: AgentIo, handler: Arc<ClientHandler>) -> Self {
        let AgentIo {
            stdin,
            stdout,
            mut child,
            stderr_tail,
            stderr_done,
            marker,
            cgroup,
        } = io;
        let writer: Writer = Arc::new(Mutex::new(stdin));
        let pending: Pending = Arc::default();
        let (closed_tx, closed) = watch::channel(None);
        let started = Instant::now();
        let tree = TreeGuard {
            pid: child.as_ref().and_then(tokio::process::Child::id),
            marker,
            cgroup,
        };
        let reader = {
            let writer = Arc::clone(&writer);
            let pending = Arc::clone(&pending);
            tokio::spawn(async move {
                let end = read_loop(stdout, &writer, &pending, &handler).await;
                // The output ended: find out how the process ended, briefly.
                let status = match child.as_mut() {
                    Some(child) => {
                        match tokio::time::timeout(Duration::from_secs(2), child.wait()).await {
                            Ok(Ok(status)) => format!(", {status}"),
                            Ok(Err(e)) => format!(", exit status unknown: {e}"),
                            Err(_) => ", still running; killed".to_owned(),
                        }
                    }
                    None => String::new(),
                };
                // Let the last words on stderr arrive before reporting them.
                if let Some(done) = stderr_done {
                    let _ = tokio::time::timeout(Duration::from_secs(1), done).await;
                }
                let tail = stderr_tail
                    .lock()
                    .map(|t| t.trim().to_owned())
                    .unwrap_or_default();
                let stderr = if tail.is_empty() {
                    String::new()
                } else {
                    format!("; stderr: {tail}")
                };
                let exit = Exit {
                    reason: sam_core::redact(&format!(
                        "agent process exited ({end}{status}){stderr}"
                    ))
                    .into_owned(),
                    uptime: started.elapsed(),
                };
                let waiting: Vec<_> = pending
                    .lock()
                    .map(|mut p| p.drain().collect())
                    .unwrap_or_default();
                drop(waiting);
                let _ = closed_tx.send(Some(exit));
                drop(child);
            })
        };
        Self {
            writer: WriterDebug(writer),
            pending,
            next_id: AtomicU64::new(0),
            closed,
            reader,
            started,
            _tree: tree,
        }
    }

    /// How long ago the agent started.
    pub(crate) fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Sends a request and waits for its result.
    pub(crate) async fn request(&self, method: &str, params: Value) -> Result<Value, CallError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        if let Ok(mut pending) = self.pending.lock() {
            pending.insert(id, tx);
        }
        let message = json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params });
        if write_message(&self.writer.0, &message).await.is_err() {
            return Err(CallError::Closed(self.wait_closed().await));
        }
        // Biased: the reader answers a request before it reports the end of output, so
        // a reply that is ready wins over a close that is ready too.
        tokio::select! {
            biased;
            reply = rx => match reply {
                Ok(Ok(value)) => Ok(value),
                Ok(Err(error)) => Err(CallError::Rpc(error)),
                Err(_) => Err(CallError::Closed(self.wait_closed().await)),
            },
            exit = self.wait_closed() => Err(CallError::Closed(exit)),
        }
    }

    /// Sends a notification.
    pub(crate) async fn notify(&self, method: &str, params: Value) -> Result<(), CallError> {
        let message = json!({ "jsonrpc": "2.0", "method": method, "params": params });
        match write_message(&self.writer.0, &message).await {
            Ok(()) => Ok(()),
            Err(_) => Err(CallError::Closed(self.wait_closed().await)),
        }
    }

    /// Waits until the agent's output ends.
    pub(crate) async fn wait_closed(&self) -> Exit {
        let mut closed = self.closed.clone();
        match closed.wait_for(Option::is_some).await {
            Ok(exit) => exit.clone().unwrap_or_else(|| lost(self.uptime())),
            Err(_) => lost(self.uptime()),
        }
    }
}

fn lost(uptime: Duration) -> Exit {
    Exit {
        reason: "agent connection lost".to_owned(),
        uptime,
    }
}

async fn write_message(writer: &Writer, message: &Value) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(message).map_err(std::io::Error::other)?;
    line.push(b'\n');
    let mut writer = writer.lock().await;
    writer.write_all(&line).await?;
    writer.flush().await
}

/// Reads messages until the output ends; returns how it ended.
async fn read_loop(
    stdout: Box<dyn tokio::io::AsyncRead + Send + Unpin>,
    writer: &Writer,
    pending: &Pending,
    handler: &ClientHandler,
) -> String {
    let mut lines = BufReader::new(stdout).lines();
    loop {
        let line = match lines.next_line().await {
            Ok(Some(line)) => line,
            Ok(None) => return "end of output".to_owned(),
            Err(e) => return format!("read error: {e}"),
        };
        if line.trim().is_empty() {
            continue;
        }
        let message: Value = match serde_json::from_str(&line) {
            Ok(message) => message,
            Err(e) => {
                // Agents sometimes print logs on stdout; skip what is not JSON.
                tracing::warn!(error = %e, "ignoring a line from the agent that is not JSON");
                continue;
            }
        };
        if let Some(reply) = dispatch(message, pending, handler).await
            && write_message(writer, &reply).await.is_err()
        {
            return "stdin closed".to_owned();
        }
    }
}

/// Routes one message from the agent; returns the response to send, if any.
pub(crate) async fn dispatch(
    message: Value,
    pending: &Pending,
    handler: &ClientHandler,
) -> Option<Value> {
    let method = message.get("method").and_then(Value::as_str);
    let id = message.get("id").cloned();
    match (method, id) {
        (Some(method), Some(id)) => {
            let params = message.get("params").cloned().unwrap_or(Value::Null);
            let reply = match handler.on_request(method, params).await {
                Ok(result) => json!({ "jsonrpc": "2.0", "id": id, "result": result }),
                Err(error) => json!({ "jsonrpc": "2.0", "id": id, "error": error.to_json() }),
            };
            Some(reply)
        }
        (Some(method), None) => {
            let params = message.get("params").cloned().unwrap_or(Value::Null);
            handler.on_notification(method, params);
            None
        }
        (None, Some(id)) => {
            let Some(id) = id.as_u64() else {
                tracing::warn!(%id, "ignoring a response with an id we never sent");
                return None;
            };
            let waiter = pending.lock().ok().and_then(|mut p| p.remove(&id));
            let Some(waiter) = waiter else {
                tracing::warn!(id, "ignoring a response nobody waits for");
                return None;
            };
            let outcome = match message.get("error") {
                Some(error) => Err(parse_error(error)),
                None => Ok(message.get("result").cloned().unwrap_or(Value::Null)),
            };
            let _ = waiter.send(outcome);
            None
        }
        (None, None) => {
            tracing::warn!("ignoring a message that is neither request, response nor notification");
            None
        }
    }
}

fn parse_error(error: &Value) -> RpcError {
    RpcError {
        code: error.get("code").and_then(Value::as_i64).unwrap_or(-32603),
        message: error
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("error without a message")
            .to_owned(),
        data: error.get("data").cloned(),
    }
}
