//! The boot timeline: when each boot phase of the node started and ended.
//!
//! The boot script wraps each phase in `logger -t sam-boot "PHASE START: <name>"` and
//! `"PHASE END: <name>"`, and logs `ALL PHASES COMPLETE` last. At start the agent
//! reads those markers from the journal (`journalctl -t sam-boot -o json`), or, on a
//! machine without a journal, from a syslog-style file whose lines start with an
//! RFC 3339 timestamp (rsyslog's default format); lines without a timestamp cannot be
//! placed in time and are skipped.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The tag of the boot script's log lines.
pub const BOOT_TAG: &str = "sam-boot";
/// The marker logged after the last phase.
pub const ALL_PHASES_COMPLETE: &str = "ALL PHASES COMPLETE";

/// One boot phase.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootPhase {
    /// Its name.
    pub name: String,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// When it ended; `None` for a phase that never ended (the boot failed in it).
    pub ended_at: Option<DateTime<Utc>>,
    /// How long it took, when it ended.
    pub duration: Option<Duration>,
}

/// The phases in the order they started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootTimeline {
    /// The phases.
    pub phases: Vec<BootPhase>,
    /// Whether `ALL PHASES COMPLETE` was logged.
    pub complete: bool,
}

impl BootTimeline {
    /// Builds the timeline from `(time, message)` markers in log order.
    pub fn from_markers<'a>(markers: impl IntoIterator<Item = (DateTime<Utc>, &'a str)>) -> Self {
        let mut timeline = Self::default();
        for (at, message) in markers {
            let message = message.trim();
            if message == ALL_PHASES_COMPLETE {
                timeline.complete = true;
            } else if let Some(name) = message.strip_prefix("PHASE START:") {
                timeline.phases.push(BootPhase {
                    name: name.trim().to_owned(),
                    started_at: at,
                    ended_at: None,
                    duration: None,
                });
            } else if let Some(name) = message.strip_prefix("PHASE END:") {
                let name = name.trim();
                // The latest start of that name that has not ended yet.
                if let Some(phase) = timeline
                    .phases
                    .iter_mut()
                    .rev()
                    .find(|p| p.name == name && p.ended_at.is_none())
                {
                    phase.ended_at = Some(at);
                    phase.duration = (at - phase.started_at).to_std().ok();
                }
            }
        }
        timeline
    }

    /// The phases as the control plane keeps them (`failed` stays unset: the
    /// control plane marks the phase a failure report names).
    pub fn to_records(&self) -> Vec<sam_core::BootPhaseRecord> {
        self.phases
            .iter()
            .map(|p| sam_core::BootPhaseRecord {
                phase: p.name.clone(),
                started_at: p.started_at,
                ended_at: p.ended_at,
                failed: false,
            })
            .collect()
    }

    /// Parses `journalctl -o json` output (one JSON object per line); entries of
    /// other tags and lines that are not JSON are skipped.
    pub fn from_journal_json(text: &str) -> Self {
        let entries: Vec<(DateTime<Utc>, String)> = text
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|entry| {
                entry
                    .get("SYSLOG_IDENTIFIER")
                    .and_then(Value::as_str)
                    .is_none_or(|tag| tag == BOOT_TAG)
            })
            .filter_map(|entry| {
                let micros: i64 = entry
                    .get("__REALTIME_TIMESTAMP")
                    .and_then(Value::as_str)?
                    .parse()
                    .ok()?;
                let at = DateTime::from_timestamp_micros(micros)?;
                Some((at, journal_message(entry.get("MESSAGE")?)?))
            })
            .collect();
        Self::from_markers(entries.iter().map(|(at, m)| (*at, m.as_str())))
    }

    /// Parses syslog-style lines: `<RFC 3339 time> <host> sam-boot[<pid>]: <message>`.
    pub fn from_syslog(text: &str) -> Self {
        let entries: Vec<(DateTime<Utc>, &str)> = text
            .lines()
            .filter_map(|line| {
                let (time, rest) = line.split_once(' ')?;
                let at = DateTime::parse_from_rfc3339(time).ok()?.with_timezone(&Utc);
                let tag_at = rest.find(BOOT_TAG)?;
                let after_tag = &rest[tag_at + BOOT_TAG.len()..];
                let (_, message) = after_tag.split_once(": ")?;
                Some((at, message))
            })
            .collect();
        Self::from_markers(entries)
    }
}

/// The journal's `MESSAGE`: a string, or an array of bytes when it is not UTF-8.
fn journal_message(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Array(bytes) => {
            let bytes: Vec<u8> = bytes
                .iter()
                .filter_map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()))
                .collect();
            Some(String::from_utf8_lossy(&bytes).into_owned())
        }
        _ => None,
    }
}

/// The boot phase that downloads the VM agent (`sam_cloudinit::Phase::AgentDownload`):
/// once it shows in the timeline, the boot is in its last phases and about to log
/// its end.
pub const AGENT_DOWNLOAD_PHASE: &str = "agent-download";

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    /// A journal line as `journalctl -o json` prints it.
    fn journal_line(time: &str, tag: &str, message: &Value) -> String {
        serde_json::json!({
            "__REALTIME_TIMESTAMP": at(time).timestamp_micros().to_string(),
            "_BOOT_ID": "1c2c1e0b4c6e4f0a9a8f0b0e7c7d6e5f",
            "PRIORITY": "5",
            "SYSLOG_IDENTIFIER": tag,
            "MESSAGE": message,
            "_HOSTNAME": "sam-node-1",
        })
        .to_string()
    }

    fn check(timeline: &BootTimeline, expected: &[(&str, &str, Option<u64>)], complete: bool) {
        let got: Vec<_> = timeline
            .phases
            .iter()
            .map(|p| {
                (
                    p.name.as_str(),
                    p.started_at,
                    p.duration.map(|d| d.as_secs()),
                )
            })
            .collect();
        let want: Vec<_> = expected.iter().map(|(n, s, d)| (*n, at(s), *d)).collect();
        assert_eq!(got, want);
        assert_eq!(timeline.complete, complete);
    }

    #[test]
    fn journal_with_a_phase_that_never_ended() {
        let text = [
            journal_line(
                "2026-11-21T18:00:00Z",
                "sam-boot",
                &"PHASE START: apt-timers".into(),
            ),
            journal_line(
                "2026-11-21T18:00:02Z",
                "sam-boot",
                &"PHASE END: apt-timers".into(),
            ),
            journal_line(
                "2026-11-21T18:00:02Z",
                "systemd",
                &"Started something.".into(),
            ),
            journal_line(
                "2026-11-21T18:00:03Z",
                "sam-boot",
                &"PHASE START: swap".into(),
            ),
            // A message the journal stored as bytes.
            journal_line(
                "2026-11-21T18:00:40Z",
                "sam-boot",
                &Value::Array(b"PHASE END: swap".iter().map(|b| (*b).into()).collect()),
            ),
            journal_line(
                "2026-11-21T18:00:41Z",
                "sam-boot",
                &"PHASE START: install-agent".into(),
            ),
            "not json".to_owned(),
        ]
        .join("\n");
        let timeline = BootTimeline::from_journal_json(&text);
        check(
            &timeline,
            &[
                ("apt-timers", "2026-11-21T18:00:00Z", Some(2)),
                ("swap", "2026-11-21T18:00:03Z", Some(37)),
                ("install-agent", "2026-11-21T18:00:41Z", None),
            ],
            false,
        );
        assert_eq!(timeline.phases[2].ended_at, None);
    }

    #[test]
    fn syslog_fallback() {
        let text = "\
Cloud-init v. 22.4.2 running 'modules:final' at Sat, 21 Nov 2026 18:00:00 +0000. Up 12.5 seconds.
2026-11-21T18:00:00.123456+00:00 sam-node-1 sam-boot[812]: PHASE START: swap
2026-11-21T18:00:05.123456+00:00 sam-node-1 kernel: Adding 2097148k swap on /swapfile.
2026-11-21T18:00:09.123456+00:00 sam-node-1 sam-boot[815]: PHASE END: swap
2026-11-21T18:00:10+00:00 sam-node-1 sam-boot: PHASE START: agent
2026-11-21T18:00:15+00:00 sam-node-1 sam-boot: PHASE END: agent
2026-11-21T18:00:15+00:00 sam-node-1 sam-boot: ALL PHASES COMPLETE
PHASE START: untimed
";
        check(
            &BootTimeline::from_syslog(text),
            &[
                ("swap", "2026-11-21T18:00:00.123456Z", Some(9)),
                ("agent", "2026-11-21T18:00:10Z", Some(5)),
            ],
            true,
        );
    }

    #[test]
    fn a_repeated_phase_ends_its_latest_start() {
        let t = |s: u32| at(&format!("2026-11-21T18:00:{s:02}Z"));
        let timeline = BootTimeline::from_markers([
            (t(0), "PHASE START: docker"),
            (t(1), "PHASE START: docker"),
            (t(4), "PHASE END: docker"),
            (t(5), "PHASE END: never-started"),
        ]);
        assert_eq!(timeline.phases.len(), 2);
        assert_eq!(timeline.phases[0].ended_at, None);
        assert_eq!(timeline.phases[1].duration, Some(Duration::from_secs(3)));
    }
}
