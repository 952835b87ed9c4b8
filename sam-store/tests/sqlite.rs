//! Bad input for the SQLite store: damaged files, two openers, bad rows, a newer schema.

use futures::future::join_all;
use sam_core::StoreErrorKind;
use sam_core::testkit::fixtures::{due_task, task, task_id};
use sam_core::{AccountStore, FleetStore, LeaseRequest, Store, TaskFilter, TaskStore};
use sam_store::{Error, SqliteConfig, SqliteStore};
use sqlx::{Connection, SqliteConnection};

async fn raw(path: &std::path::Path, sql: &str) {
    let url = format!("sqlite://{}", path.display());
    let mut conn = SqliteConnection::connect(&url)
        .await
        .expect("raw connection");
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(&mut conn)
        .await
        .expect("raw SQL");
    conn.close().await.expect("close");
}

#[tokio::test]
async fn a_file_that_is_not_a_database_is_a_clear_error_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("not-a-db.sqlite");
    std::fs::write(&path, "this is a text file, not SQLite\n".repeat(200)).expect("write");
    let err = SqliteStore::new(&SqliteConfig::new(&path))
        .await
        .expect_err("opening a text file must fail");
    assert!(
        matches!(&err, Error::Corrupt { path: p, .. } if p == &path),
        "{err:?}"
    );
    assert_eq!(err.kind(), StoreErrorKind::Corrupt);
    let message = err.to_string();
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(message.contains("not a SQLite database"), "{message}");
}

#[tokio::test]
async fn two_stores_on_one_file_never_leak_busy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = SqliteConfig::new(dir.path().join("shared.db"));
    let (a, b) = tokio::join!(SqliteStore::new(&config), SqliteStore::new(&config));
    let (a, b) = (a.expect("open a"), b.expect("open b"));
    let stores: [&dyn Store; 2] = [&a, &b];
    // Both write at once, in many small transactions, then both claim at once.
    let writes = (0..200).map(|i| {
        let store = stores[i % 2];
        async move {
            store
                .create_task(&due_task(&format!("t-{i:03}"), i as i64, 5))
                .await
        }
    });
    for result in join_all(writes).await {
        result.expect("a concurrent write on a shared file succeeds");
    }
    let claims = (0..20).map(|i| {
        let store = stores[i % 2];
        async move {
            let request = LeaseRequest {
                owner: format!("driver-{}", i % 2),
                now: sam_core::testkit::fixtures::at(10),
                lease: std::time::Duration::from_secs(60),
                limit: 5,
                except: Vec::new(),
            };
            store.claim_due_tasks(&request).await
        }
    });
    let mut claimed = 0;
    for result in join_all(claims).await {
        claimed += result
            .expect("a concurrent claim on a shared file succeeds")
            .len();
    }
    assert!(claimed >= 100, "both drivers got work: {claimed}");
    let all = a.list_tasks(&TaskFilter::default()).await.expect("list");
    assert_eq!(all.len(), 200, "every write of both stores is there");
}

/// Switching a fresh file into WAL upgrades a read lock, which SQLite refuses at once
/// (no busy wait) while another opener reads the file: every opener must still open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_opening_one_fresh_file_at_once_all_open() {
    for round in 0..25 {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = SqliteConfig::new(dir.path().join("fresh.db"));
        let opened = join_all((0..8).map(|_| SqliteStore::new(&config))).await;
        for (i, store) in opened.into_iter().enumerate() {
            let store = store.unwrap_or_else(|e| panic!("round {round}, opener {i}: {e:?}"));
            store
                .create_task(&task(&format!("t-{i}"), i as i64))
                .await
                .expect("each opened store writes");
            store.close().await;
        }
    }
}

#[tokio::test]
async fn invalid_json_in_a_row_is_a_typed_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store.db");
    let store = SqliteStore::new(&SqliteConfig::new(&path))
        .await
        .expect("open");
    store.create_task(&task("t-1", 1)).await.expect("create");
    store.create_task(&task("t-2", 2)).await.expect("create");
    raw(
        &path,
        "UPDATE tasks SET spec = '{not json' WHERE id = 't-1'",
    )
    .await;
    raw(
        &path,
        "UPDATE tasks SET status = 'exploded' WHERE id = 't-2'",
    )
    .await;
    for id in ["t-1", "t-2"] {
        let err = store.get_task(&task_id(id)).await.expect_err("bad row");
        assert_eq!(err.kind(), StoreErrorKind::InvalidData, "{err}");
        assert!(err.message().contains(id), "the error names the row: {err}");
    }
    let err = store
        .list_tasks(&TaskFilter::default())
        .await
        .expect_err("bad rows");
    assert_eq!(err.kind(), StoreErrorKind::InvalidData);
}

#[tokio::test]
async fn a_schema_newer_than_the_binary_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store.db");
    let store = SqliteStore::new(&SqliteConfig::new(&path))
        .await
        .expect("open");
    store.close().await;
    raw(
        &path,
        "INSERT INTO sam_store_migrations \
         (version, description, success, checksum, execution_time) \
         VALUES (999, 'from a newer build', TRUE, x'00', 0)",
    )
    .await;
    let err = SqliteStore::new(&SqliteConfig::new(&path))
        .await
        .expect_err("a newer schema must be refused");
    assert!(
        matches!(
            err,
            Error::SchemaTooNew {
                found: 999,
                supported: 12
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("upgrade sam-store"), "{err}");
}

#[tokio::test]
async fn reopening_keeps_data_and_does_not_migrate_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = SqliteConfig::new(dir.path().join("store.db"));
    let store = SqliteStore::new(&config).await.expect("open");
    store.create_task(&task("t-1", 1)).await.expect("create");
    store.close().await;
    let again = SqliteStore::new(&config).await.expect("reopen");
    assert_eq!(
        again.get_task(&task_id("t-1")).await.expect("get"),
        Some(task("t-1", 1))
    );
}

/// A database written before GitHub links and projects existed (schema version 1)
/// gains their tables and columns when opened, and keeps its tasks.
#[tokio::test]
async fn a_version_1_database_is_migrated_to_projects_keeping_its_tasks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store.db");
    let store = SqliteStore::new(&SqliteConfig::new(&path))
        .await
        .expect("open");
    store.create_task(&task("t-old", 0)).await.expect("task");
    store
        .put_node(&sam_core::testkit::fixtures::node("n-old", 0))
        .await
        .expect("node");
    let token = sam_core::testkit::fixtures::api_token("tok-old", 0x0a);
    store.put_api_token(&token).await.expect("token");
    store.close().await;
    // Turn the file back into what version 1 wrote.
    raw(
        &path,
        "DROP TABLE users; DROP TABLE projects; DROP TABLE agent_profiles; \
         DROP TABLE credentials; DROP TABLE github_installations; \
         ALTER TABLE tasks DROP COLUMN output; \
         DROP INDEX nodes_warm; ALTER TABLE nodes DROP COLUMN credential_owner; \
         ALTER TABLE nodes DROP COLUMN address; \
         CREATE INDEX nodes_warm ON nodes (provider, size, warm_since) WHERE lifecycle = 'warm'; \
         DROP TRIGGER tasks_status_created; DROP TRIGGER tasks_status_changed; \
         ALTER TABLE tasks DROP COLUMN status_actor; ALTER TABLE tasks DROP COLUMN status_reason; \
         DROP INDEX api_tokens_by_creation; ALTER TABLE api_tokens DROP COLUMN kind; \
         ALTER TABLE api_tokens DROP COLUMN last_used_at; ALTER TABLE api_tokens DROP COLUMN expires_at; \
         ALTER TABLE api_tokens DROP COLUMN revoked_at; \
         ALTER TABLE nodes DROP COLUMN boot_timeline; ALTER TABLE nodes DROP COLUMN boot_failure; \
         ALTER TABLE tasks DROP COLUMN node_replacements; ALTER TABLE tasks DROP COLUMN lease_epoch; \
             DROP TABLE task_events; DROP TABLE keys; \
         DELETE FROM sam_store_migrations WHERE version IN (2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12);",
    )
    .await;
    let store = SqliteStore::new(&SqliteConfig::new(&path))
        .await
        .expect("a version 1 database opens and migrates");
    assert!(
        store
            .get_task(&task_id("t-old"))
            .await
            .expect("read")
            .is_some()
    );
    let old = store
        .get_node(&sam_core::NodeId::new("n-old").expect("id"))
        .await
        .expect("an old node row decodes")
        .expect("the node is kept");
    assert_eq!(
        old.credential_owner, None,
        "a node written before credential owners were recorded ran on the platform's"
    );
    assert!(
        old.boot.is_empty(),
        "a node written before boot records reads with an empty one"
    );
    let old_task = store
        .get_task(&task_id("t-old"))
        .await
        .expect("read")
        .expect("the task is kept");
    assert_eq!(old_task.node_replacements, 0);
    let project = sam_core::testkit::fixtures::project("p-1", 0);
    store
        .put_project(&project)
        .await
        .expect("the new tables exist");
    assert_eq!(store.list_projects().await.expect("list"), [project]);
    // A token written before tokens were records was a server's start token: it is
    // a bootstrap token, which the next start with another token revokes.
    assert_eq!(
        store.find_api_token(&token.hash).await.expect("find"),
        Some(sam_core::ApiTokenRecord {
            kind: sam_core::ApiTokenKind::Bootstrap,
            ..token
        }),
        "an old token row decodes as a bootstrap token"
    );
    // The old task's status changes are recorded by the triggers the migration added.
    sam_core::testkit::store::transition_is_recorded(&store, &task_id("t-old")).await;
    store.close().await;
}
