//! The event log and the metrics store: appends, listing, retention, export.

use std::time::Duration;

use sam_core::testkit::fixtures::{at, node_id, workspace_id};
use sam_store::{
    Event, EventLevel, EventLog, EventQuery, MetricsSnapshot, MetricsStore, RetentionConfig,
};
use sqlx::{Connection, Row, SqliteConnection};

fn event(kind: &str, ws: Option<&str>, secs: i64) -> Event {
    Event {
        node_id: Some(node_id("node-1")),
        workspace_id: ws.map(workspace_id),
        level: EventLevel::Info,
        kind: kind.into(),
        message: format!("{kind} at {secs}"),
        detail: serde_json::json!({ "secs": secs }),
        created_at: at(secs),
    }
}

fn config(dir: &tempfile::TempDir, name: &str, retention_secs: u64) -> RetentionConfig {
    RetentionConfig {
        retention: Duration::from_secs(retention_secs),
        prune_every: Duration::from_secs(600),
        ..RetentionConfig::new(dir.path().join(name))
    }
}

async fn count(path: &std::path::Path, sql: &str) -> i64 {
    let url = format!("sqlite://{}?mode=ro", path.display());
    let mut conn = SqliteConnection::connect(&url)
        .await
        .expect("open the copy");
    let n = sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(&mut conn)
        .await
        .expect("query the copy")
        .get::<i64, _>(0);
    conn.close().await.expect("close");
    n
}

#[tokio::test]
async fn lists_newest_first_with_a_cursor_and_filters() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = EventLog::new(&config(&dir, "events.db", 86_400))
        .await
        .expect("open");
    let first = log
        .append(&event("node.boot", None, 1))
        .await
        .expect("append");
    let batch = [
        event("workspace.ready", Some("ws-1"), 2),
        event("agent_session.prompt_retry", Some("ws-1"), 3),
        event("agent_session.started", Some("ws-2"), 4),
        event("agent_session.stopped", Some("ws-1"), 5),
    ];
    let ids = log.append_batch(&batch).await.expect("append_batch");
    assert_eq!(ids.len(), 4);
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]) && ids[0] > first,
        "ids increase"
    );

    let page = log
        .list(&EventQuery {
            limit: Some(2),
            ..Default::default()
        })
        .await
        .expect("list");
    let kinds: Vec<_> = page.events.iter().map(|e| e.event.kind.as_str()).collect();
    assert_eq!(
        kinds,
        ["agent_session.stopped", "agent_session.started"],
        "newest first"
    );
    let rest = log
        .list(&EventQuery {
            before: page.next,
            limit: Some(10),
            ..Default::default()
        })
        .await
        .expect("next page");
    assert_eq!(
        rest.events.len(),
        3,
        "the cursor continues where the page ended"
    );
    assert_eq!(rest.events[2].id, first);
    assert_eq!(rest.next, None, "a short page is the last one");

    let ws1_sessions = log
        .list(&EventQuery {
            workspace_id: Some(workspace_id("ws-1")),
            type_prefix: Some("agent_session.".into()),
            ..Default::default()
        })
        .await
        .expect("filtered list");
    let kinds: Vec<_> = ws1_sessions
        .events
        .iter()
        .map(|e| e.event.kind.as_str())
        .collect();
    assert_eq!(
        kinds,
        ["agent_session.stopped", "agent_session.prompt_retry"]
    );
    assert_eq!(
        ws1_sessions.events[1].event, batch[1],
        "an event reads back unchanged"
    );
}

#[tokio::test]
async fn secrets_are_redacted_before_they_are_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = EventLog::new(&config(&dir, "events.db", 86_400))
        .await
        .expect("open");
    let mut e = event("agent.error", None, 1);
    e.message = "request failed with Authorization: Bearer abcdefghijklmnopqrstuvwxyz123456".into();
    e.detail = serde_json::json!({ "env": ["OPENAI_API_KEY=sk-proj-abcdefghijklmnopqrstuvwxyz"] });
    log.append(&e).await.expect("append");
    let stored = log
        .list(&EventQuery::default())
        .await
        .expect("list")
        .events
        .remove(0);
    assert!(
        !stored.event.message.contains("abcdefghijklmnop"),
        "{}",
        stored.event.message
    );
    assert!(
        !stored.event.detail.to_string().contains("sk-proj-abcdef"),
        "{}",
        stored.event.detail
    );
}

/// How many events the log holds, and the time of the oldest.
async fn oldest_kept(log: &EventLog) -> (i64, Option<chrono::DateTime<chrono::Utc>>) {
    let query = EventQuery {
        limit: Some(1 << 30),
        ..Default::default()
    };
    let events = log.list(&query).await.expect("list").events;
    (
        events.len() as i64,
        events.last().map(|e| e.event.created_at),
    )
}

#[tokio::test]
async fn retention_keeps_only_the_newest_window_after_1e5_appends() {
    const TOTAL: i64 = 100_000;
    const WINDOW: u64 = 3_600;
    let dir = tempfile::tempdir().expect("tempdir");
    let log = EventLog::new(&config(&dir, "events.db", WINDOW))
        .await
        .expect("open");
    for start in (0..TOTAL).step_by(1_000) {
        let batch: Vec<Event> = (start..start + 1_000)
            .map(|s| event("tick", None, s))
            .collect();
        log.append_batch(&batch).await.expect("append_batch");
    }
    let newest = TOTAL - 1;
    let path = dir.path().join("events.db");
    // Pruning ran while appending: nothing older than the window plus one interval.
    let (kept, oldest) = oldest_kept(&log).await;
    assert!(kept < TOTAL / 10, "pruned while running: {kept} rows kept");
    assert!(
        oldest >= Some(at(newest - WINDOW as i64 - 600 - 1_000)),
        "{oldest:?}"
    );
    // An explicit prune leaves exactly the window.
    log.prune(at(newest)).await.expect("prune");
    let (kept, oldest) = oldest_kept(&log).await;
    assert_eq!(kept, WINDOW as i64 + 1, "only the newest window remains");
    assert_eq!(oldest, Some(at(newest - WINDOW as i64)));
    assert_eq!(
        count(&path, "SELECT COUNT(*) FROM events").await,
        kept,
        "another reader agrees"
    );
}

#[tokio::test]
async fn export_after_checkpoint_is_a_database_with_every_committed_event() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = EventLog::new(&config(&dir, "events.db", 86_400))
        .await
        .expect("open");
    let mut last = 0;
    for i in 0..250 {
        last = log.append(&event("tick", None, i)).await.expect("append");
    }
    log.checkpoint().await.expect("checkpoint");
    let copy = dir.path().join("export.db");
    let bytes = log.export(&copy).await.expect("export");
    assert!(bytes > 0);
    assert_eq!(count(&copy, "SELECT COUNT(*) FROM events").await, 250);
    assert_eq!(count(&copy, "SELECT MAX(id) FROM events").await, last);
    assert_eq!(
        count(
            &copy,
            "SELECT COUNT(*) FROM pragma_integrity_check WHERE integrity_check <> 'ok'"
        )
        .await,
        0
    );
    // The log goes on after an export.
    log.append(&event("tick", None, 251))
        .await
        .expect("append after export");
}

#[tokio::test]
async fn metrics_are_keyed_by_minute_pruned_and_exported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let metrics = MetricsStore::new(&config(&dir, "metrics.db", 3_600))
        .await
        .expect("open");
    let snap = |secs: i64, cpu: f64| MetricsSnapshot {
        minute: at(secs),
        cpu_percent: cpu,
        load_avg1: 0.5,
        memory_percent: 40.0,
        disk_percent: 12.5,
    };
    metrics.record(&snap(0, 10.0)).await.expect("record");
    metrics
        .record(&snap(30, 20.0))
        .await
        .expect("same minute replaces");
    for minute in 1..180 {
        metrics
            .record(&snap(minute * 60 + 5, 1.0))
            .await
            .expect("record");
    }
    let all = metrics.list(at(0)).await.expect("list");
    assert!(
        all.iter().all(|s| s.minute.timestamp() % 60 == 0),
        "keyed by minute"
    );
    assert!(
        all.len() <= 60 + 10 + 1,
        "older minutes were pruned while running: {}",
        all.len()
    );
    metrics.prune(at(179 * 60)).await.expect("prune");
    let kept = metrics.list(at(0)).await.expect("list");
    assert_eq!(kept.len(), 61, "one hour of minutes remains");
    assert_eq!(kept[0].minute, at(119 * 60));
    let copy = dir.path().join("metrics-export.db");
    metrics.export(&copy).await.expect("export");
    assert_eq!(count(&copy, "SELECT COUNT(*) FROM snapshots").await, 61);
}

#[tokio::test]
async fn a_damaged_event_log_names_its_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("events.db");
    std::fs::write(&path, vec![0x5a_u8; 8192]).expect("write");
    let err = EventLog::new(&RetentionConfig::new(&path))
        .await
        .expect_err("damaged file");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
}

#[tokio::test]
async fn invalid_json_in_an_event_row_is_a_typed_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("events.db");
    let log = EventLog::new(&RetentionConfig::new(&path))
        .await
        .expect("open");
    log.append(&event("tick", None, 1)).await.expect("append");
    let url = format!("sqlite://{}", path.display());
    let mut conn = SqliteConnection::connect(&url)
        .await
        .expect("raw connection");
    sqlx::query("UPDATE events SET detail = '{oops'")
        .execute(&mut conn)
        .await
        .expect("update");
    conn.close().await.expect("close");
    let err = log.list(&EventQuery::default()).await.expect_err("bad row");
    assert_eq!(err.kind(), sam_core::StoreErrorKind::InvalidData, "{err}");
}
