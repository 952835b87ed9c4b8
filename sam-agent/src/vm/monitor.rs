//! The resource monitor: CPU, load, memory and disk of the node.
//!
//! CPU % comes from two samples of `/proc/stat`; load from `/proc/loadavg`; memory
//! from `/proc/meminfo` (used = total − available); disk from `statvfs("/")` (used
//! over used plus what unprivileged users may still fill, as `df` shows it).

use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// One resource snapshot, sent with heartbeats and stored every interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsSnapshot {
    /// When it was taken.
    pub at: DateTime<Utc>,
    /// CPU busy percentage between the two `/proc/stat` samples.
    pub cpu_percent: f64,
    /// The 1-minute load average.
    pub cpu_load_avg1: f64,
    /// The 5-minute load average.
    pub cpu_load_avg5: f64,
    /// The 15-minute load average.
    pub cpu_load_avg15: f64,
    /// Memory in use, in percent of the total.
    pub memory_percent: f64,
    /// Total memory in bytes.
    pub memory_total_bytes: u64,
    /// Disk in use on `/`, in percent.
    pub disk_percent: f64,
    /// Size of `/` in bytes.
    pub disk_total_bytes: u64,
}

/// Cumulative CPU time from the `cpu` line of `/proc/stat`, in clock ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTimes {
    /// Every tick counted.
    pub total: u64,
    /// Ticks spent idle or waiting for IO.
    pub idle: u64,
}

impl CpuTimes {
    /// Parses the aggregate `cpu` line of `/proc/stat`.
    pub fn parse(proc_stat: &str) -> Option<Self> {
        let line = proc_stat.lines().find(|l| l.starts_with("cpu "))?;
        let fields: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()?;
        // user nice system idle iowait irq softirq steal [guest guest_nice]; guest time
        // is already counted in user and nice, so only the first eight are summed.
        let total = fields.iter().take(8).sum();
        let idle = fields.get(3)? + fields.get(4).copied().unwrap_or(0);
        Some(Self { total, idle })
    }

    /// The busy percentage from `self` (earlier) to `later`.
    pub fn busy_percent(self, later: Self) -> f64 {
        let total = later.total.saturating_sub(self.total);
        let idle = later.idle.saturating_sub(self.idle);
        if total == 0 {
            return 0.0;
        }
        100.0 * total.saturating_sub(idle) as f64 / total as f64
    }
}

/// The three load averages of `/proc/loadavg`.
pub fn parse_loadavg(text: &str) -> Option<(f64, f64, f64)> {
    let mut fields = text.split_whitespace().map(str::parse::<f64>);
    Some((
        fields.next()?.ok()?,
        fields.next()?.ok()?,
        fields.next()?.ok()?,
    ))
}

/// `(total, available)` bytes from `/proc/meminfo`.
pub fn parse_meminfo(text: &str) -> Option<(u64, u64)> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
            .map(|kib| kib * 1024)
    };
    Some((field("MemTotal")?, field("MemAvailable")?))
}

/// Used percentage of `used` out of `total`.
fn percent(used: u64, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        100.0 * used as f64 / total as f64
    }
}

/// `(used percent, total bytes)` of the file system holding `path`.
///
/// # Errors
/// When `statvfs` fails.
pub fn disk_usage(path: &Path) -> crate::Result<(f64, u64)> {
    let stat = rustix::fs::statvfs(path)
        .map_err(|e| crate::Error::io(format!("statvfs {}", path.display()), e.into()))?;
    let block = stat.f_frsize;
    let used = stat.f_blocks.saturating_sub(stat.f_bfree);
    let visible = used + stat.f_bavail;
    Ok((percent(used, visible), stat.f_blocks * block))
}

/// Takes a snapshot: two `/proc/stat` samples `interval` apart, then the rest.
///
/// # Errors
/// When a `/proc` file cannot be read or parsed, or `statvfs("/")` fails.
pub async fn sample(interval: Duration) -> crate::Result<MetricsSnapshot> {
    let read = |path: &'static str| async move {
        tokio::fs::read_to_string(path)
            .await
            .map_err(|e| crate::Error::io(format!("reading {path}"), e))
    };
    let unparsable =
        |path: &str| crate::Error::io(path.to_owned(), std::io::ErrorKind::InvalidData.into());
    let first =
        CpuTimes::parse(&read("/proc/stat").await?).ok_or_else(|| unparsable("/proc/stat"))?;
    tokio::time::sleep(interval).await;
    let second =
        CpuTimes::parse(&read("/proc/stat").await?).ok_or_else(|| unparsable("/proc/stat"))?;
    let (load1, load5, load15) =
        parse_loadavg(&read("/proc/loadavg").await?).ok_or_else(|| unparsable("/proc/loadavg"))?;
    let (mem_total, mem_available) =
        parse_meminfo(&read("/proc/meminfo").await?).ok_or_else(|| unparsable("/proc/meminfo"))?;
    let (disk_percent, disk_total_bytes) = disk_usage(Path::new("/"))?;
    Ok(MetricsSnapshot {
        at: Utc::now(),
        cpu_percent: first.busy_percent(second),
        cpu_load_avg1: load1,
        cpu_load_avg5: load5,
        cpu_load_avg15: load15,
        memory_percent: percent(mem_total.saturating_sub(mem_available), mem_total),
        memory_total_bytes: mem_total,
        disk_percent,
        disk_total_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT_1: &str = "cpu  10132153 290696 3084719 46828483 16683 0 25195 0 175628 0
cpu0 1393280 32966 572056 13343292 6130 0 17875 0 23933 0
intr 1462898 0 0 0
ctxt 4000000
";
    const STAT_2: &str = "cpu  10132253 290696 3084819 46828783 16783 0 25195 0 175700 0
cpu0 1393380 32966 572156 13343592 6230 0 17875 0 23933 0
";

    #[test]
    fn cpu_from_two_samples() {
        let a = CpuTimes::parse(STAT_1).unwrap();
        let b = CpuTimes::parse(STAT_2).unwrap();
        assert_eq!(a.idle, 46828483 + 16683);
        // 100 user + 100 system busy, 300 idle + 100 iowait: 200 of 600 ticks.
        let busy = a.busy_percent(b);
        assert!((busy - 100.0 / 3.0).abs() < 1e-9, "{busy}");
        assert_eq!(
            b.busy_percent(a),
            0.0,
            "a counter going backwards is not negative"
        );
        assert_eq!(CpuTimes::parse("intr 1 2 3\n"), None);
        assert_eq!(CpuTimes::parse("cpu  1 2 x\n"), None);
    }

    #[test]
    fn loadavg() {
        assert_eq!(
            parse_loadavg("0.52 0.58 0.59 2/1034 93245\n"),
            Some((0.52, 0.58, 0.59))
        );
        assert_eq!(parse_loadavg("garbage"), None);
    }

    #[test]
    fn meminfo_used_is_total_minus_available() {
        let text = "MemTotal:        3921404 kB\nMemFree:          143324 kB\nMemAvailable:    1960702 kB\nBuffers:           92240 kB\n";
        let (total, available) = parse_meminfo(text).unwrap();
        assert_eq!(total, 3921404 * 1024);
        assert_eq!(available, 1960702 * 1024);
        assert!((percent(total - available, total) - 50.0).abs() < 1e-3);
        assert_eq!(parse_meminfo("MemTotal: 1 kB\n"), None);
    }

    #[test]
    fn disk_of_the_root() {
        let (used, total) = disk_usage(Path::new("/")).unwrap();
        assert!((0.0..=100.0).contains(&used));
        assert!(total > 0);
        assert!(disk_usage(Path::new("/nonexistent/path")).is_err());
    }

    #[tokio::test]
    async fn a_live_sample() {
        let snapshot = sample(Duration::from_millis(20)).await.unwrap();
        assert!((0.0..=100.0).contains(&snapshot.cpu_percent));
        assert!((0.0..=100.0).contains(&snapshot.memory_percent));
        assert!(snapshot.memory_total_bytes > 0);
    }
}
