//! The agent's end of an ACP connection over newline-delimited JSON-RPC, shared by
//! the demo agent and the scripted fake agent so both speak the wire format one way.

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

/// Reads messages from the client in the background and writes messages back.
#[derive(Debug)]
pub(crate) struct AgentEndpoint<W> {
    rx: mpsc::UnboundedReceiver<Value>,
    output: W,
}

impl<W: AsyncWrite + Unpin> AgentEndpoint<W> {
    /// Starts reading `input` line by line; lines that are not JSON are skipped.
    pub(crate) fn new(input: impl AsyncRead + Send + Unpin + 'static, output: W) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(input).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(message) = serde_json::from_str::<Value>(&line)
                    && tx.send(message).is_err()
                {
                    break;
                }
            }
        });
        Self { rx, output }
    }

    /// The next message from the client; `None` once its input ended.
    pub(crate) async fn recv(&mut self) -> Option<Value> {
        self.rx.recv().await
    }

    /// Writes one message and flushes it.
    pub(crate) async fn send(&mut self, message: Value) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(&message).map_err(std::io::Error::other)?;
        line.push(b'\n');
        self.output.write_all(&line).await?;
        self.output.flush().await
    }

    /// Writes a raw line, JSON or not (a misbehaving agent's output).
    pub(crate) async fn send_line(&mut self, line: &str) -> std::io::Result<()> {
        self.output.write_all(line.as_bytes()).await?;
        self.output.write_all(b"\n").await?;
        self.output.flush().await
    }

    /// Answers request `id` with `result`.
    pub(crate) async fn reply(&mut self, id: Value, result: Value) -> std::io::Result<()> {
        self.send(json!({ "jsonrpc": "2.0", "id": id, "result": result }))
            .await
    }

    /// Answers request `id` with a JSON-RPC error.
    pub(crate) async fn reply_error(
        &mut self,
        id: Value,
        code: i64,
        message: &str,
    ) -> std::io::Result<()> {
        self.send(
            json!({ "jsonrpc": "2.0", "id": id, "error": { "code": code, "message": message } }),
        )
        .await
    }

    /// Sends a `session/update` notification.
    pub(crate) async fn update(&mut self, session: &str, update: Value) -> std::io::Result<()> {
        self.send(json!({ "jsonrpc": "2.0", "method": "session/update", "params": { "sessionId": session, "update": update } }))
            .await
    }

    /// Sends an agent message chunk with `text`.
    pub(crate) async fn say(&mut self, session: &str, text: &str) -> std::io::Result<()> {
        self.update(
            session,
            json!({ "sessionUpdate": "agent_message_chunk", "content": { "type": "text", "text": text } }),
        )
        .await
    }
}
