//! Scenario `acp`: the latency the ACP host adds to a `session/update` on its way from
//! the agent's stdout to the event sink ([`AgentSession::events`]).
//!
//! An in-process agent answers `initialize`, `session/new` and `session/prompt` over a
//! pipe and, during the turn, writes the `session/update` notifications of the ACP
//! transcript in `shared/cases` one at a time: it stamps the time, writes the line,
//! and waits until the receiving side has seen it before writing the next, so every
//! sample is one update's travel with nothing queued before it. The same lines are
//! then sent the same way to a plain line reader on the same kind of pipe; the
//! difference of the two latency distributions is what the host adds (parsing,
//! routing, redaction, the broadcast to the sink).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt;
use sam_agent::vm::acp::{AcpOptions, AcpSession, AgentIo, AgentLauncher};
use sam_core::{AgentError, AgentFailure, AgentSession, ErrorCategory, SessionEvent};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

use crate::cases;

/// The figures of the ACP scenario.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AcpFigures {
    /// 99th percentile of an update's travel through the host, in microseconds.
    pub host_p99_us: f64,
    /// 99th percentile of the same bytes read straight from the pipe.
    pub raw_p99_us: f64,
    /// `host_p99_us - raw_p99_us`.
    pub relay_overhead_p99_us: f64,
    /// Median travel through the host.
    pub host_p50_us: f64,
    /// Median travel of the raw read.
    pub raw_p50_us: f64,
}

/// The `q` quantile (0–1) of `samples`, in microseconds.
pub fn quantile_us(samples: &mut [Duration], q: f64) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    samples.sort_unstable();
    let i = ((samples.len() - 1) as f64 * q).round() as usize;
    samples[i].as_secs_f64() * 1e6
}

/// When each update was written, and when it was seen.
#[derive(Debug, Default)]
struct Stamps {
    sent: Vec<Instant>,
    seen: Vec<Instant>,
}

impl Stamps {
    fn latencies(&self) -> Vec<Duration> {
        self.sent
            .iter()
            .zip(&self.seen)
            .map(|(s, r)| r.saturating_duration_since(*s))
            .collect()
    }
}

/// Writes `lines` one by one, stamping each, waiting for an acknowledgement after each.
async fn send_paced(
    out: &mut (impl AsyncWrite + Unpin),
    lines: &[String],
    stamps: &Mutex<Stamps>,
    acks: &mut mpsc::Receiver<()>,
) -> anyhow::Result<()> {
    for line in lines {
        let now = Instant::now();
        stamps
            .lock()
            .map_err(|_| anyhow::anyhow!("stamps poisoned"))?
            .sent
            .push(now);
        out.write_all(line.as_bytes()).await?;
        out.flush().await?;
        acks.recv()
            .await
            .ok_or_else(|| anyhow::anyhow!("the receiving side went away"))?;
    }
    Ok(())
}

/// The agent side: answers the handshake and, on `session/prompt`, sends `updates`.
async fn agent(
    input: impl AsyncRead + Unpin,
    mut output: impl AsyncWrite + Unpin,
    updates: Arc<Vec<String>>,
    stamps: Arc<Mutex<Stamps>>,
    mut acks: mpsc::Receiver<()>,
) -> anyhow::Result<()> {
    let mut lines = BufReader::new(input).lines();
    while let Some(line) = lines.next_line().await? {
        let message: Value = serde_json::from_str(&line)?;
        let Some(id) = message.get("id").cloned() else {
            continue;
        };
        let result = match message.get("method").and_then(Value::as_str) {
            Some("initialize") => json!({
                "protocolVersion": 1,
                "agentCapabilities": {"loadSession": false},
            }),
            Some("session/new") => json!({"sessionId": cases::ACP_SESSION_ID}),
            Some("session/prompt") => {
                send_paced(&mut output, &updates, &stamps, &mut acks).await?;
                json!({"stopReason": "end_turn"})
            }
            _ => json!({}),
        };
        let reply = json!({"jsonrpc": "2.0", "id": id, "result": result});
        output.write_all(format!("{reply}\n").as_bytes()).await?;
        output.flush().await?;
    }
    Ok(())
}

/// Starts the in-process agent on a fresh pipe.
#[derive(Debug)]
struct InProcess {
    updates: Arc<Vec<String>>,
    stamps: Arc<Mutex<Stamps>>,
    acks: Mutex<Option<mpsc::Receiver<()>>>,
}

#[async_trait]
impl AgentLauncher for InProcess {
    async fn launch(&self) -> Result<AgentIo, AgentError> {
        let (host, agent_end) = tokio::io::duplex(64 * 1024);
        let (agent_in, agent_out) = tokio::io::split(agent_end);
        let acks = self
            .acks
            .lock()
            .ok()
            .and_then(|mut a| a.take())
            .ok_or_else(|| AgentError {
                failure: AgentFailure::Spawn,
                category: ErrorCategory::InvalidConfig,
                code: None,
                message: "the benchmark agent starts only once".to_owned(),
            })?;
        let updates = Arc::clone(&self.updates);
        let stamps = Arc::clone(&self.stamps);
        tokio::spawn(async move {
            if let Err(e) = agent(agent_in, agent_out, updates, stamps, acks).await {
                eprintln!("benchmark agent: {e:#}");
            }
        });
        let (host_in, host_out) = tokio::io::split(host);
        Ok(AgentIo::from_streams(host_out, host_in))
    }
}

/// Sends `count` updates through the host, then the same bytes to a plain reader.
///
/// # Errors
/// When the transcript cannot be read, or the session fails.
pub async fn run(count: usize) -> anyhow::Result<AcpFigures> {
    let transcript = cases::session_updates()?;
    let updates: Arc<Vec<String>> = Arc::new(
        transcript
            .iter()
            .cycle()
            .take(count)
            .map(|l| format!("{l}\n"))
            .collect(),
    );

    // Through the host.
    let stamps = Arc::new(Mutex::new(Stamps::default()));
    let (ack, acks) = mpsc::channel(1);
    let session = AcpSession::new(
        Arc::new(InProcess {
            updates: Arc::clone(&updates),
            stamps: Arc::clone(&stamps),
            acks: Mutex::new(Some(acks)),
        }),
        AcpOptions::default(),
    );
    let mut events = session.events();
    let sink_stamps = Arc::clone(&stamps);
    let sink = tokio::spawn(async move {
        while let Some(event) = events.next().await {
            let SessionEvent::Update { update } = &event.event else {
                continue;
            };
            // The host records the user's prompt as an update of its own; the agent's
            // updates never are user messages (see `cases::session_updates`).
            if update.get("sessionUpdate").and_then(Value::as_str) == Some("user_message_chunk") {
                continue;
            }
            if let Ok(mut s) = sink_stamps.lock() {
                s.seen.push(Instant::now());
            }
            if ack.send(()).await.is_err() {
                break;
            }
        }
    });
    session.initialize().await?;
    let dir = tempfile::tempdir()?;
    let id = session.new_session(dir.path()).await?;
    session.prompt(&id, "benchmark").await?;
    sink.abort();
    let mut host = stamps
        .lock()
        .map_err(|_| anyhow::anyhow!("stamps poisoned"))?
        .latencies();
    anyhow::ensure!(
        host.len() == count,
        "the sink saw {} of {count} updates",
        host.len()
    );

    // Straight from the pipe.
    let stamps = Arc::new(Mutex::new(Stamps::default()));
    let (ack, mut acks) = mpsc::channel(1);
    let (mut writer, reader) = tokio::io::duplex(64 * 1024);
    let reader_stamps = Arc::clone(&stamps);
    let read = tokio::spawn(async move {
        let mut lines = BufReader::new(reader).lines();
        while let Ok(Some(_line)) = lines.next_line().await {
            if let Ok(mut s) = reader_stamps.lock() {
                s.seen.push(Instant::now());
            }
            if ack.send(()).await.is_err() {
                break;
            }
        }
    });
    send_paced(&mut writer, &updates, &stamps, &mut acks).await?;
    drop(writer);
    read.await?;
    let mut raw = stamps
        .lock()
        .map_err(|_| anyhow::anyhow!("stamps poisoned"))?
        .latencies();

    let host_p99_us = quantile_us(&mut host, 0.99);
    let raw_p99_us = quantile_us(&mut raw, 0.99);
    Ok(AcpFigures {
        host_p99_us,
        raw_p99_us,
        relay_overhead_p99_us: host_p99_us - raw_p99_us,
        host_p50_us: quantile_us(&mut host, 0.5),
        raw_p50_us: quantile_us(&mut raw, 0.5),
    })
}
