//! Load on a real `sam-server` over loopback (SQLite file, local provider, real
//! nodes and demo agents) while its tasks run: a bounded client with a fixed number
//! of workers sends status reads (`GET /v1/tasks/{id}`, `GET /v1/tasks`) and
//! submissions (`POST /v1/tasks`, one request in twenty) as fast as the server
//! answers. It asserts that no request fails or gets a 5xx and that the server's
//! resident memory stays bounded; it prints requests per second and latency
//! percentiles.
//!
//! The CI run lasts 5 s; `SAM_LOAD_SECS=60 cargo test -p sam-examples --test load --
//! --nocapture` is the long run whose figures RELIABILITY.md reports.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::Mutex;

mod common;
use common::server::{ServerProcess, TOKEN, call};
use common::{StopNodes, repo};

/// Requests in flight at once.
const WORKERS: usize = 32;
/// The resident memory the server may reach, in KiB.
const MAX_RSS_KIB: u64 = 512 * 1024;

/// The server's resident set size in KiB, from `/proc/<pid>/status`.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// What the workers saw.
#[derive(Debug, Default)]
struct Tally {
    latencies: Vec<Duration>,
    server_errors: Vec<String>,
    unexpected: Vec<String>,
}

/// What every worker shares.
#[derive(Debug, Clone)]
struct Load {
    http: reqwest::Client,
    base: String,
    repo: String,
    /// Tasks submitted so far, whose status the workers read.
    ids: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    tally: Arc<Mutex<Tally>>,
    sent: Arc<AtomicU64>,
}

/// One worker: until `stop`, sends a submission every 20th request and status reads
/// otherwise, recording each latency and any failure.
async fn worker(n: usize, load: Load) {
    let Load {
        http,
        base,
        repo,
        ids,
        stop,
        tally,
        sent,
    } = load;
    let mut local = Tally::default();
    let mut i = n;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let known = {
            let ids = ids.lock().await;
            (!ids.is_empty()).then(|| ids[i % ids.len()].clone())
        };
        let (request, expected) = match (i % 20, known) {
            (0, _) | (_, None) => (
                http.post(format!("{base}/v1/tasks")).json(
                    &json!({"repo": &repo, "prompt": format!("load {n}/{i}"), "agent": "demo"}),
                ),
                202,
            ),
            (1, _) => (http.get(format!("{base}/v1/tasks?limit=20")), 200),
            (_, Some(id)) => (http.get(format!("{base}/v1/tasks/{id}")), 200),
        };
        let start = Instant::now();
        let response = request.bearer_auth(TOKEN).send().await;
        let latency = start.elapsed();
        sent.fetch_add(1, Ordering::Relaxed);
        match response {
            Ok(response) => {
                let status = response.status().as_u16();
                let body = response.text().await.unwrap_or_default();
                local.latencies.push(latency);
                if status >= 500 {
                    local.server_errors.push(format!("HTTP {status}: {body}"));
                } else if status != expected {
                    local.unexpected.push(format!("HTTP {status}: {body}"));
                } else if expected == 202
                    && let Some(id) = serde_json::from_str::<serde_json::Value>(&body)
                        .ok()
                        .and_then(|v| v["id"].as_str().map(str::to_owned))
                {
                    ids.lock().await.push(id);
                }
            }
            Err(e) => local.unexpected.push(format!("no answer: {e}")),
        }
    }
    let mut tally = tally.lock().await;
    tally.latencies.extend(local.latencies);
    tally.server_errors.extend(local.server_errors);
    tally.unexpected.extend(local.unexpected);
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

async fn run_load(data: &Path, repo: &Path, seconds: u64) {
    let server = ServerProcess::start(data).await;
    let pid = server.pid();
    let http = reqwest::Client::new();
    // Tasks running underneath the load.
    let ids = Arc::new(Mutex::new(Vec::new()));
    for n in 0..4 {
        let (status, accepted) =
            call(http.post(server.url("/v1/tasks")).bearer_auth(TOKEN).json(
                &json!({"repo": repo, "prompt": format!("background {n}"), "agent": "demo"}),
            ))
            .await;
        assert_eq!(status, 202, "{accepted}");
        ids.lock()
            .await
            .push(accepted["id"].as_str().expect("an id").to_owned());
    }
    let rss_before = rss_kib(pid).expect("the server's memory");

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let sent = Arc::new(AtomicU64::new(0));
    let load = Load {
        http: http.clone(),
        base: server.base.clone(),
        repo: repo.display().to_string(),
        ids: Arc::clone(&ids),
        stop: Arc::clone(&stop),
        tally: Arc::clone(&tally),
        sent: Arc::clone(&sent),
    };
    let workers: Vec<_> = (0..WORKERS)
        .map(|n| tokio::spawn(worker(n, load.clone())))
        .collect();
    drop(load);
    let started = Instant::now();
    let mut rss_peak = rss_before;
    while started.elapsed() < Duration::from_secs(seconds) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Some(rss) = rss_kib(pid) {
            rss_peak = rss_peak.max(rss);
        }
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.expect("a worker");
    }
    let elapsed = started.elapsed();
    let rss_after = rss_kib(pid).unwrap_or(rss_peak);
    let status = server.terminate().await;
    assert!(status.success(), "a graceful shutdown: {status}");

    let mut tally = Arc::try_unwrap(tally).expect("workers ended").into_inner();
    tally.latencies.sort();
    let requests = sent.load(Ordering::Relaxed);
    let submitted = ids.lock().await.len();
    eprintln!(
        "load: {requests} requests in {elapsed:.1?} with {WORKERS} workers = {:.0} req/s; \
         latency p50 {:?} p99 {:?} max {:?}; {submitted} tasks submitted; \
         server RSS {} MiB before, {} MiB peak, {} MiB after",
        requests as f64 / elapsed.as_secs_f64(),
        percentile(&tally.latencies, 0.50),
        percentile(&tally.latencies, 0.99),
        tally.latencies.last().copied().unwrap_or_default(),
        rss_before / 1024,
        rss_peak / 1024,
        rss_after / 1024,
    );
    assert!(requests > 0, "the load ran");
    assert!(
        tally.server_errors.is_empty(),
        "{} 5xx answers, e.g. {:?}",
        tally.server_errors.len(),
        tally.server_errors.first()
    );
    assert!(
        tally.unexpected.is_empty(),
        "{} unexpected answers, e.g. {:?}",
        tally.unexpected.len(),
        tally.unexpected.first()
    );
    assert!(
        rss_peak <= MAX_RSS_KIB,
        "the server's memory reached {} MiB",
        rss_peak / 1024
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_server_answers_reads_and_submissions_under_load_without_5xx() {
    let seconds = std::env::var("SAM_LOAD_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let repo = repo();
    let data = tempfile::tempdir().unwrap();
    let _nodes = StopNodes(data.path().to_owned());
    run_load(data.path(), repo.path(), seconds).await;
}
