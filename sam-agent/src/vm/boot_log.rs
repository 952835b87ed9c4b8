//! The node's side of the boot timeline ([`BootTimeline`]): reading the boot
//! script's markers from the journal or a syslog file, and waiting for the boot to
//! log its end before the agent reports ready.

use std::path::Path;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::wire::boot_timeline::{AGENT_DOWNLOAD_PHASE, BOOT_TAG, BootTimeline};

/// Reads the timeline from the journal, or from `fallback_log` when `journalctl` is
/// missing or fails, or when the journal holds no boot markers (the boot script's
/// `logger` wrote to syslog files only).
///
/// # Errors
/// When neither source can be read.
pub async fn read_timeline(fallback_log: &Path) -> Result<BootTimeline> {
    let journal = tokio::process::Command::new("journalctl")
        .args(["-t", BOOT_TAG, "-o", "json", "--no-pager", "-b"])
        .output()
        .await;
    if let Ok(output) = journal
        && output.status.success()
    {
        let timeline = BootTimeline::from_journal_json(&String::from_utf8_lossy(&output.stdout));
        if timeline != BootTimeline::default() {
            return Ok(timeline);
        }
        // A readable journal without markers: the file may have them; if it cannot be
        // read, the empty timeline from the journal stands.
        return Ok(match tokio::fs::read_to_string(fallback_log).await {
            Ok(text) => BootTimeline::from_syslog(&text),
            Err(_) => timeline,
        });
    }
    let text = tokio::fs::read_to_string(fallback_log)
        .await
        .map_err(|e| Error::io(format!("reading {}", fallback_log.display()), e))?;
    Ok(BootTimeline::from_syslog(&text))
}

/// How long the agent waits for the boot to log its end (`ALL PHASES COMPLETE`)
/// before it reports ready with the timeline it has. The boot starts the agent in
/// its last phase and logs that phase's end a moment later; without the wait the
/// ready callback could miss it (seen on a QEMU node, once in six boots).
const BOOT_END_WAIT: Duration = Duration::from_secs(30);

/// The boot timeline; when the boot has reached the agent's own phases
/// ([`AGENT_DOWNLOAD_PHASE`] onwards), once it logged its end, or after
/// [`BOOT_END_WAIT`]. A boot that stopped earlier (the agent started by hand, say)
/// is reported as it is at once.
pub(crate) async fn finished_timeline(log: &std::path::Path) -> Result<BootTimeline> {
    let deadline = tokio::time::Instant::now() + BOOT_END_WAIT;
    loop {
        let timeline = read_timeline(log).await?;
        let ending = timeline
            .phases
            .iter()
            .any(|p| p.name == AGENT_DOWNLOAD_PHASE);
        if timeline.complete || !ending || tokio::time::Instant::now() >= deadline {
            return Ok(timeline);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
