//! The `sam` commands that read a task's events from a server: `sam logs` (the
//! transcript, after the fact or as it grows), `sam watch` (the step display with
//! the agent's text as it streams) and the last message `sam status` shows.

use std::io::Write as _;
use std::time::Duration;

use sam_core::{TaskEventKind, TaskStatus};

use crate::client::Client;
use crate::exit::Exit;
use crate::quickstart::{Follower, Progress};
use crate::server::TaskView;
use crate::transcript::{Received, Transcript};

/// How events are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// For people: the transcript's lines.
    Text,
    /// One JSON event per line (NDJSON), as the server sent it.
    Json,
}

/// Prints `received` on stdout as `output` says, through `transcript`.
fn print(output: Output, transcript: &mut Transcript, received: &Received) -> std::io::Result<()> {
    let mut stdout = std::io::stdout().lock();
    match output {
        Output::Json => writeln!(stdout, "{}", received.raw)?,
        Output::Text => {
            for line in transcript.push(received) {
                writeln!(stdout, "{line}")?;
            }
        }
    }
    stdout.flush()
}

/// `sam logs`: prints the task's stored events; with `follow`, then its new events
/// until it ends. Ends [`Exit::Success`], or as the task did when followed to its end.
///
/// # Errors
/// When the server is unreachable, the task unknown, or the stream broke for good.
pub async fn logs(client: &Client, id: &str, follow: bool, output: Output) -> anyhow::Result<Exit> {
    let (events, ended) = client.all_events(id).await?;
    let mut transcript = Transcript::new();
    let mut last = 0;
    let mut status = None;
    for received in &events {
        last = received.id.unwrap_or(last).max(last);
        status = received.status().or(status);
        print(output, &mut transcript, received)?;
    }
    if follow && !ended {
        let mut feed = client.follow(id, last);
        while let Some(received) = feed.next().await {
            let received = received?;
            status = received.status().or(status);
            print(output, &mut transcript, &received)?;
        }
    }
    if output == Output::Text {
        for line in transcript.finish() {
            println!("{line}");
        }
    }
    Ok(match status {
        Some(status) if follow => Exit::of_status(status),
        _ => Exit::Success,
    })
}

/// The agent's last message in the task's stored events, if it said one (`None`
/// too when the server keeps no transcript).
pub async fn last_message(client: &Client, id: &str) -> Option<String> {
    match client.all_events(id).await {
        Ok((events, _)) => events.iter().rev().find_map(|r| match &r.event {
            Some(event) => match &event.kind {
                TaskEventKind::LastMessage { text } => Some(text.clone()),
                _ => None,
            },
            None => None,
        }),
        Err(error) => {
            tracing::debug!("no transcript for the last message: {error:#}");
            None
        }
    }
}

/// `sam watch`: follows the task to its end with the step display and the agent's
/// text on stderr (`Output::Json`: its events as NDJSON on stdout), then returns the
/// task as it is then with the agent's last message. A task that has already ended
/// shows its transcript and no step display.
///
/// # Errors
/// When the server is unreachable, the task unknown, or the stream broke for good.
pub async fn watch(
    client: &Client,
    id: &str,
    output: Output,
) -> anyhow::Result<(TaskView, Option<String>)> {
    let task = client.task(id).await?;
    if task.status.is_terminal() {
        let mut last_message = None;
        match client.all_events(id).await {
            Ok((events, _)) => {
                let mut transcript = Transcript::new();
                for received in &events {
                    if let Some(TaskEventKind::LastMessage { text }) =
                        received.event.as_ref().map(|e| &e.kind)
                    {
                        last_message = Some(text.clone());
                    }
                    match output {
                        Output::Json => println!("{}", received.raw),
                        Output::Text => {
                            for line in transcript.push(received) {
                                eprintln!("{line}");
                            }
                        }
                    }
                }
                if output == Output::Text {
                    for line in transcript.finish() {
                        eprintln!("{line}");
                    }
                }
            }
            Err(error) => tracing::debug!("no transcript of the ended task: {error:#}"),
        }
        return Ok((task, last_message));
    }
    let mut follower = Follower::with_transcript(Progress::Auto);
    follower.note(&format!("task {id}"));
    let mut feed = client.follow(id, 0);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut status = None;
    loop {
        let received = tokio::select! {
            received = feed.next() => received,
            _ = tick.tick() => {
                follower.tick();
                continue;
            }
        };
        let Some(received) = received else { break };
        let received = match received {
            Ok(received) => received,
            Err(error) => {
                follower.done(false);
                return Err(error);
            }
        };
        status = received.status().or(status);
        if output == Output::Json {
            println!("{}", received.raw);
        }
        follower.received(&received);
    }
    let followed = follower.done(status == Some(TaskStatus::Completed));
    Ok((client.task(id).await?, followed.last_message))
}
