//! `sam-bench`: the load harness. Runs every scenario once in this process and prints
//! a table; with `--json`, also one JSON object of figures as the last line.
//!
//! ```sh
//! cargo run --release --bin sam-bench -- --json
//! cargo run --release --bin sam-bench -- --only placement,acp
//! ```
//!
//! The warm-path scenario starts this executable again as a VM agent and as the demo
//! agent (the hidden first arguments `vm-agent` and `demo-agent`).

use std::process::ExitCode;

use anyhow::Context as _;
use sam_benches::warm::{DEMO_AGENT_ROLE, VM_AGENT_ROLE};
use sam_benches::{acp, events, lifecycle, memory, placement, warm};
use serde_json::{Map, Value};

/// The scenarios, in the order they run.
const SCENARIOS: [&str; 6] = [
    "placement",
    "lifecycle",
    "warm_path",
    "events",
    "acp",
    "memory",
];

/// Nodes in the placement fleet.
const FLEET: usize = 10_000;
/// Tasks driven through the lifecycle scenario, and how many at once.
const LIFECYCLE_TASKS: u64 = 2_000;
const LIFECYCLE_IN_FLIGHT: usize = 32;
/// Warm tasks measured.
const WARM_TASKS: usize = 200;
/// Rows through the event log.
const EVENT_ROWS: u64 = 20_000;
/// ACP updates relayed.
const ACP_UPDATES: usize = 5_000;
/// Tasks parked for the memory scenario.
const PARKED_TASKS: u64 = 10_000;

#[derive(Debug, Default)]
struct Report {
    json: Map<String, Value>,
    rows: Vec<(String, String, String)>,
}

impl Report {
    fn figure(&mut self, key: &str, value: f64, unit: &str) {
        self.json.insert(key.to_owned(), Value::from(value));
        self.row(key, value, unit);
    }

    /// A row of the table that is not a key of the JSON object.
    fn row(&mut self, key: &str, value: f64, unit: &str) {
        let shown = if value.abs() >= 100.0 {
            format!("{value:.0}")
        } else {
            format!("{value:.2}")
        };
        self.rows.push((key.to_owned(), shown, unit.to_owned()));
    }

    fn print(&self, json: bool) {
        let width = self.rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
        println!("{:width$}  {:>12}  unit", "figure", "value");
        for (key, value, unit) in &self.rows {
            println!("{key:width$}  {value:>12}  {unit}");
        }
        if json {
            println!("{}", Value::Object(self.json.clone()));
        }
    }
}

fn progress(scenario: &str) {
    eprintln!("sam-bench: running {scenario}");
}

/// Runs the wanted scenarios; returns the failures, one line each.
async fn run(only: &[String], report: &mut Report) -> anyhow::Result<Vec<String>> {
    let mut failed = Vec::new();
    let wanted = |s: &str| only.is_empty() || only.iter().any(|o| o == s);
    let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
    if wanted("placement") {
        progress("placement");
        let outcome: anyhow::Result<()> = async {
            let run = placement::PlacementRun {
                fleet: FLEET,
                naive_decisions: 2_000,
                index_decisions: 400_000,
                scheduler_decisions: 100_000,
                seed: 0x5a3,
            };
            let f = placement::run(run).await?;
            report.figure(
                "placement.ops_per_sec_10k_nodes",
                f.ops_per_sec,
                "decisions/s",
            );
            report.figure(
                "placement.naive_ops_per_sec_10k_nodes",
                f.naive_ops_per_sec,
                "decisions/s",
            );
            report.row(
                "placement.speedup",
                f.ops_per_sec / f.naive_ops_per_sec,
                "x naive",
            );
            report.row(
                "placement.in_service_loop_ops_per_sec",
                f.loop_ops_per_sec,
                "decisions/s",
            );
            report.row(
                "placement.index_only_ops_per_sec",
                f.index_ops_per_sec,
                "decisions/s",
            );
            report.row("placement.placed_share", f.placed_share, "of requests");
            Ok(())
        }
        .await;
        if let Err(e) = outcome {
            failed.push(format!("placement: {e:#}"));
        }
    }
    if wanted("lifecycle") {
        progress("lifecycle");
        let outcome: anyhow::Result<()> = async {
            let f = lifecycle::run(dir.path(), LIFECYCLE_TASKS, LIFECYCLE_IN_FLIGHT).await?;
            report.figure("lifecycle.tasks_per_sec_sqlite", f.tasks_per_sec, "tasks/s");
            report.figure("lifecycle.writes_per_task", f.writes_per_task, "write tx");
            report.figure(
                "lifecycle.sqlite_bound_tasks_per_sec",
                f.bound_tasks_per_sec,
                "tasks/s",
            );
            report.row("lifecycle.raw_writes_per_sec", f.raw_writes_per_sec, "tx/s");
            for (i, raw) in f.raw_samples.iter().enumerate() {
                report.row(
                    &format!("lifecycle.raw_writes_per_sec.{}", i + 1),
                    *raw,
                    "tx/s",
                );
            }
            for (method, per_task) in &f.writes_by_method {
                report.row(
                    &format!("lifecycle.writes_per_task.{method}"),
                    *per_task,
                    "write tx",
                );
            }
            for (method, per_task) in &f.reads_by_method {
                report.row(
                    &format!("lifecycle.reads_per_task.{method}"),
                    *per_task,
                    "reads",
                );
            }
            report.row(
                "lifecycle.share_of_bound",
                f.tasks_per_sec / f.bound_tasks_per_sec,
                "of bound",
            );
            Ok(())
        }
        .await;
        if let Err(e) = outcome {
            failed.push(format!("lifecycle: {e:#}"));
        }
    }
    if wanted("warm_path") {
        progress("warm_path");
        let outcome: anyhow::Result<()> = async {
            let f = warm::run(&dir.path().join("warm"), WARM_TASKS).await?;
            report.figure("warm_path.p50_ms", f.p50_ms, "ms");
            report.figure("warm_path.p99_ms", f.p99_ms, "ms");
            report.row("warm_path.samples", f.samples as f64, "tasks");
            let steps: Vec<String> = f
                .slowest_steps
                .iter()
                .map(|(label, at)| format!("{label} at {at:.1} ms"))
                .collect();
            eprintln!("sam-bench: slowest warm task: {}", steps.join(", "));
            Ok(())
        }
        .await;
        if let Err(e) = outcome {
            failed.push(format!("warm_path: {e:#}"));
        }
    }
    if wanted("events") {
        progress("events");
        let outcome: anyhow::Result<()> = async {
            let f = events::run(dir.path(), EVENT_ROWS).await?;
            report.figure("events.rows_per_sec", f.rows_per_sec, "rows/s");
            report.figure("events.raw_rows_per_sec", f.raw_rows_per_sec, "rows/s");
            report.row(
                "events.share_of_raw",
                f.rows_per_sec / f.raw_rows_per_sec,
                "of raw",
            );
            Ok(())
        }
        .await;
        if let Err(e) = outcome {
            failed.push(format!("events: {e:#}"));
        }
    }
    if wanted("acp") {
        progress("acp");
        let outcome: anyhow::Result<()> = async {
            let f = acp::run(ACP_UPDATES).await?;
            report.figure("acp.relay_overhead_p99_us", f.relay_overhead_p99_us, "µs");
            report.row("acp.host_p50_us", f.host_p50_us, "µs");
            report.row("acp.host_p99_us", f.host_p99_us, "µs");
            report.row("acp.raw_p50_us", f.raw_p50_us, "µs");
            report.row("acp.raw_p99_us", f.raw_p99_us, "µs");
            Ok(())
        }
        .await;
        if let Err(e) = outcome {
            failed.push(format!("acp: {e:#}"));
        }
    }
    if wanted("memory") {
        progress("memory");
        let outcome: anyhow::Result<()> = async {
            report.figure(
                "memory.control_plane_bytes_per_inflight_task",
                memory_in_child().await?,
                "bytes",
            );
            Ok(())
        }
        .await;
        if let Err(e) = outcome {
            failed.push(format!("memory: {e:#}"));
        }
    }
    Ok(failed)
}

/// Runs the memory scenario in a fresh `sam-bench` process and returns its figure.
///
/// Resident growth is only seen in a process whose heap has not been grown and freed
/// before: after the other scenarios, the allocator hands the parked tasks pages it
/// already holds, and the growth read ~0 bytes per task (0.41 in one full run,
/// against ~2,950 when the scenario ran alone).
async fn memory_in_child() -> anyhow::Result<f64> {
    let exe = std::env::current_exe().context("cannot find the running executable")?;
    let output = tokio::process::Command::new(exe)
        .arg(MEMORY_PROBE_ROLE)
        .stderr(std::process::Stdio::inherit())
        .output()
        .await
        .context("cannot start the memory probe")?;
    anyhow::ensure!(
        output.status.success(),
        "the memory probe failed ({})",
        output.status
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    last.trim()
        .parse()
        .with_context(|| format!("the memory probe printed {last:?}, not a number"))
}

/// The role in which `sam-bench` runs the memory scenario alone and prints its
/// figure (bytes per parked task) as its last line.
const MEMORY_PROBE_ROLE: &str = "memory-probe";

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let outcome = match args.first().map(String::as_str) {
        Some(VM_AGENT_ROLE) => {
            runtime().and_then(|rt| rt.block_on(sam_examples::node::run_vm_agent(None, None)))
        }
        Some(DEMO_AGENT_ROLE) => runtime().and_then(|rt| {
            rt.block_on(sam_agent::vm::demo::serve(
                tokio::io::stdin(),
                tokio::io::stdout(),
            ))
            .map_err(Into::into)
        }),
        Some(MEMORY_PROBE_ROLE) => runtime().and_then(|rt| {
            let f = rt.block_on(memory::run(PARKED_TASKS))?;
            println!("{}", f.bytes_per_inflight_task);
            Ok(())
        }),
        _ => harness(&args),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sam-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn harness(args: &[String]) -> anyhow::Result<()> {
    let mut json = false;
    let mut only = Vec::new();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--json" => json = true,
            "--only" => {
                let list = args.next().context("--only needs a list of scenarios")?;
                only = list.split(',').map(str::to_owned).collect();
            }
            "-h" | "--help" => {
                println!(
                    "usage: sam-bench [--json] [--only SCENARIO,...]\nscenarios: {}",
                    SCENARIOS.join(", ")
                );
                return Ok(());
            }
            other => anyhow::bail!("unknown argument {other:?} (try --help)"),
        }
    }
    if let Some(unknown) = only.iter().find(|o| !SCENARIOS.contains(&o.as_str())) {
        anyhow::bail!(
            "unknown scenario {unknown:?}; the scenarios are {}",
            SCENARIOS.join(", ")
        );
    }
    let mut report = Report::default();
    let failed = runtime()?.block_on(run(&only, &mut report))?;
    // The figures of the scenarios that ran are printed even when another failed.
    report.print(json);
    for failure in &failed {
        eprintln!("sam-bench: {failure}");
    }
    anyhow::ensure!(
        failed.is_empty(),
        "{} scenario(s) failed; their figures are missing",
        failed.len()
    );
    Ok(())
}
