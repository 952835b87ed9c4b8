//! A node's boot as the control plane keeps it: the timeline of its boot phases and,
//! for a boot that failed, the failing phase, its exit status and the tail of its
//! journal.
//!
//! What a node reports is outside input: [`NodeBootRecord::bounded`] caps every part
//! of it ([`MAX_BOOT_PHASES`], [`MAX_PHASE_NAME_CHARS`], [`MAX_JOURNAL_LINES`],
//! [`MAX_JOURNAL_LINE_CHARS`]) and passes the journal through [`redact`], so a row
//! stays small and holds no secret whatever a node sends.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::InvalidInput;
use crate::secret::redact;

/// The most boot phases kept per node (the last ones: a failure is at the end).
pub const MAX_BOOT_PHASES: usize = 64;
/// The longest phase name kept, in characters.
pub const MAX_PHASE_NAME_CHARS: usize = 64;
/// The most journal lines kept from a failed boot (the last ones).
pub const MAX_JOURNAL_LINES: usize = 40;
/// The longest journal line kept, in characters.
pub const MAX_JOURNAL_LINE_CHARS: usize = 512;

/// One phase of a node's boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootPhaseRecord {
    /// The phase's name (`packages`, `agent-download`, …).
    pub phase: String,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// When it ended; `None` for a phase that never ended.
    pub ended_at: Option<DateTime<Utc>>,
    /// Whether the boot failed in this phase.
    #[serde(default)]
    pub failed: bool,
}

/// How a node's boot failed, as the node reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootFailure {
    /// The phase that failed.
    pub phase: String,
    /// The exit status of its failing command.
    pub exit_status: i32,
    /// The last lines of the boot's journal, redacted.
    #[serde(default)]
    pub journal: Vec<String>,
    /// When the control plane heard of it.
    pub reported_at: DateTime<Utc>,
}

/// What the control plane keeps of a node's boot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeBootRecord {
    /// The phases in the order they started.
    #[serde(default)]
    pub timeline: Vec<BootPhaseRecord>,
    /// Why the boot failed, when it did.
    #[serde(default)]
    pub failure: Option<BootFailure>,
}

/// What a node reports when its boot fails: the phase, the exit status of its
/// failing command, its journal lines, and the timeline read from them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootFailureReport {
    /// The phase that failed: lowercase letters, digits and dashes.
    pub phase: String,
    /// The exit status of its failing command.
    pub exit_status: i32,
    /// The boot's journal lines, as the node sent them.
    #[serde(default)]
    pub journal: Vec<String>,
    /// The phases read from the journal, in the order they started.
    #[serde(default)]
    pub timeline: Vec<BootPhaseRecord>,
}

impl BootFailureReport {
    /// Checks what the node said before it is kept: a phase is a non-empty name of
    /// at most [`MAX_PHASE_NAME_CHARS`] lowercase letters, digits and dashes (what
    /// the boot script itself allows).
    ///
    /// # Errors
    /// [`InvalidInput`] (field `phase`) otherwise.
    pub fn check(&self) -> Result<(), InvalidInput> {
        let valid = !self.phase.is_empty()
            && self.phase.len() <= MAX_PHASE_NAME_CHARS
            && self
                .phase
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if valid {
            Ok(())
        } else {
            Err(InvalidInput {
                field: "phase",
                reason: format!(
                    "a boot phase is 1 to {MAX_PHASE_NAME_CHARS} lowercase letters, digits and dashes, not {:?}",
                    cut(&self.phase, MAX_PHASE_NAME_CHARS)
                ),
            })
        }
    }
}

impl NodeBootRecord {
    /// Whether nothing is known of the boot.
    pub fn is_empty(&self) -> bool {
        self.timeline.is_empty() && self.failure.is_none()
    }

    /// The record within its bounds: the last [`MAX_BOOT_PHASES`] phases, the last
    /// [`MAX_JOURNAL_LINES`] journal lines, each name and line cut to its limit, the
    /// journal redacted. A failure marks its phase failed when the timeline shows
    /// that phase unfinished.
    pub fn bounded(mut self) -> Self {
        let skip = self.timeline.len().saturating_sub(MAX_BOOT_PHASES);
        self.timeline.drain(..skip);
        for phase in &mut self.timeline {
            phase.phase = cut(&phase.phase, MAX_PHASE_NAME_CHARS);
        }
        if let Some(failure) = &mut self.failure {
            failure.phase = cut(&failure.phase, MAX_PHASE_NAME_CHARS);
            let skip = failure.journal.len().saturating_sub(MAX_JOURNAL_LINES);
            failure.journal = failure.journal[skip..]
                .iter()
                .map(|line| cut(&redact(line), MAX_JOURNAL_LINE_CHARS))
                .collect();
            if let Some(phase) = self
                .timeline
                .iter_mut()
                .rev()
                .find(|p| p.phase == failure.phase && p.ended_at.is_none())
            {
                phase.failed = true;
            }
        }
        self
    }
}

/// `text` cut to at most `limit` characters.
fn cut(text: &str, limit: usize) -> String {
    text.chars().take(limit).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + secs, 0).unwrap()
    }

    fn phase(name: &str, start: i64, end: Option<i64>) -> BootPhaseRecord {
        BootPhaseRecord {
            phase: name.to_owned(),
            started_at: at(start),
            ended_at: end.map(at),
            failed: false,
        }
    }

    fn failure(phase: &str, journal: Vec<String>) -> BootFailure {
        BootFailure {
            phase: phase.to_owned(),
            exit_status: 100,
            journal,
            reported_at: at(100),
        }
    }

    #[test]
    fn a_failure_marks_its_unfinished_phase() {
        let record = NodeBootRecord {
            timeline: vec![phase("swap", 0, Some(1)), phase("packages", 1, None)],
            failure: Some(failure("packages", vec![])),
        }
        .bounded();
        let failed: Vec<bool> = record.timeline.iter().map(|p| p.failed).collect();
        assert_eq!(failed, [false, true]);
    }

    #[test]
    fn a_failure_of_a_finished_or_unknown_phase_marks_none() {
        for name in ["swap", "elsewhere"] {
            let record = NodeBootRecord {
                timeline: vec![phase("swap", 0, Some(1))],
                failure: Some(failure(name, vec![])),
            }
            .bounded();
            assert!(!record.timeline[0].failed, "{name}");
        }
    }

    #[test]
    fn everything_a_node_sends_is_bounded() {
        let long = "x".repeat(10_000);
        let record = NodeBootRecord {
            timeline: (0..1000).map(|i| phase(&long, i, Some(i + 1))).collect(),
            failure: Some(failure(
                &long,
                (0..1000).map(|i| format!("line {i} {long}")).collect(),
            )),
        }
        .bounded();
        assert_eq!(record.timeline.len(), MAX_BOOT_PHASES);
        assert_eq!(record.timeline[0].started_at, at(1000 - 64));
        assert!(
            record
                .timeline
                .iter()
                .all(|p| p.phase.chars().count() == MAX_PHASE_NAME_CHARS)
        );
        let failure = record.failure.unwrap();
        assert_eq!(failure.phase.chars().count(), MAX_PHASE_NAME_CHARS);
        assert_eq!(failure.journal.len(), MAX_JOURNAL_LINES);
        assert!(failure.journal[0].starts_with("line 960 "));
        assert!(
            failure
                .journal
                .iter()
                .all(|l| l.chars().count() <= MAX_JOURNAL_LINE_CHARS)
        );
    }

    #[test]
    fn the_journal_is_redacted() {
        let record = NodeBootRecord {
            timeline: vec![],
            failure: Some(failure(
                "packages",
                vec!["Authorization: Bearer ghp_abcdefghijklmnopqrstuvwxyz0123456789".to_owned()],
            )),
        }
        .bounded();
        let line = &record.failure.unwrap().journal[0];
        assert!(
            !line.contains("ghp_abcdefghijklmnopqrstuvwxyz0123456789"),
            "{line}"
        );
    }

    #[test]
    fn only_phase_names_pass() {
        let report = |phase: &str| BootFailureReport {
            phase: phase.to_owned(),
            ..BootFailureReport::default()
        };
        for good in ["packages", "agent-download", "node-22"] {
            assert!(report(good).check().is_ok(), "{good}");
        }
        for bad in ["", "Packages", "a b", "x\n", "é", &"a".repeat(65)] {
            let error = report(bad).check().unwrap_err();
            assert!(
                matches!(error, InvalidInput { field: "phase", .. }),
                "{bad:?}: {error}"
            );
        }
    }

    #[test]
    fn an_old_row_without_a_boot_reads_as_empty() {
        let record: NodeBootRecord = serde_json::from_str("{}").unwrap();
        assert!(record.is_empty());
    }
}
