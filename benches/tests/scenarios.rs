//! Every harness scenario, run small: each completes, checks what it must (the index
//! and the scan agree, every task completes, every update arrives) and reports sane
//! figures. Timing targets live in the harness's report, never here.

use sam_benches::placement::PlacementRun;
use sam_benches::{acp, events, lifecycle, memory, placement};

#[tokio::test]
async fn placement_index_and_scan_agree_on_a_small_fleet() {
    for seed in [1, 2, 3] {
        let f = placement::run(PlacementRun {
            fleet: 300,
            naive_decisions: 300,
            index_decisions: 600,
            scheduler_decisions: 600,
            seed,
        })
        .await
        .expect("the index and the scan agree, and the store takes every slot chosen");
        assert!(
            f.ops_per_sec > 0.0
                && f.naive_ops_per_sec > 0.0
                && f.index_ops_per_sec > 0.0
                && f.loop_ops_per_sec > 0.0
                && f.loop_ops_per_sec < f.ops_per_sec,
            "{f:?}"
        );
        assert!(f.placed_share > 0.0 && f.placed_share <= 1.0, "{f:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_completes_every_task_and_counts_writes() {
    let dir = tempfile::tempdir().unwrap();
    let f = lifecycle::run(dir.path(), 20, 4).await.unwrap();
    assert!(f.tasks_per_sec > 0.0, "{f:?}");
    // Submit, lease, each step and the final transition each write at least once.
    assert!(f.writes_per_task >= 8.0, "{f:?}");
    assert!(f.raw_writes_per_sec > 0.0, "{f:?}");
    let counted: f64 = f.writes_by_method.iter().map(|(_, n)| n).sum();
    assert!((counted - f.writes_per_task).abs() < 1e-9, "{f:?}");
    // The breakdown goes into BENCHMARKS.md; `--nocapture` shows it.
    println!("writes per task: {:.2}", f.writes_per_task);
    for (method, per_task) in &f.writes_by_method {
        println!("  {method}: {per_task:.2}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_go_through_the_log_and_the_raw_loop() {
    let dir = tempfile::tempdir().unwrap();
    let f = events::run(dir.path(), 200).await.unwrap();
    assert!(f.rows_per_sec > 0.0 && f.raw_rows_per_sec > 0.0, "{f:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acp_update_reaches_the_sink() {
    let f = acp::run(200).await.expect("all updates arrive");
    assert!(
        f.host_p99_us >= f.host_p50_us && f.raw_p99_us >= f.raw_p50_us,
        "{f:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_park_waiting_for_capacity() {
    let f = memory::run(200).await.expect("every task parks");
    assert!(f.bytes_per_inflight_task >= 0.0, "{f:?}");
}
