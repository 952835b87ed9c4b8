//! [`PgStore`]: the PostgreSQL backend, for several control-plane processes that
//! share one database.
//!
//! Claims lock the rows they take with `FOR UPDATE SKIP LOCKED`, so concurrent
//! drivers never lease the same task or claim the same warm node; slot reservations
//! lock the node row for the length of their transaction.

use std::str::FromStr;

use sam_core::Secret;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::postgres::PgConnectOptions;
use sqlx::{AssertSqlSafe, Executor};

use crate::error::{Dialect, Error};
use crate::sql::{self, Migration, Schema, SqlStore};

/// The PostgreSQL [`sam_core::Store`] backend; open it with [`PgStore::new`].
pub type PgStore = SqlStore<sql::Postgres>;

/// Settings of a PostgreSQL connection.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct PgConfig {
    /// A `postgres://user:password@host:port/database` URL.
    pub url: Secret,
    /// Most connections the pool opens.
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// The schema that holds the tables, created if missing; `None` uses the
    /// server's `search_path` (normally `public`).
    #[serde(default)]
    pub schema: Option<String>,
}

fn default_max_connections() -> u32 {
    10
}

impl PgConfig {
    /// A connection to `url` with up to 10 connections, in the default schema.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: Secret::new(url),
            max_connections: default_max_connections(),
            schema: None,
        }
    }

    /// Uses `schema` for the tables.
    pub fn with_schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = Some(schema.into());
        self
    }
}

const STORE_SCHEMA: Schema = Schema {
    table: "sam_store_migrations",
    migrations: &[
        Migration {
            version: 1,
            sql: include_str!("../migrations/postgres/0001_initial.sql"),
        },
        Migration {
            version: 2,
            sql: include_str!("../migrations/postgres/0002_github.sql"),
        },
        Migration {
            version: 3,
            sql: include_str!("../migrations/postgres/0003_projects.sql"),
        },
        Migration {
            version: 4,
            sql: include_str!("../migrations/postgres/0004_node_owner.sql"),
        },
        Migration {
            version: 5,
            sql: include_str!("../migrations/postgres/0005_status_trigger.sql"),
        },
        Migration {
            version: 6,
            sql: include_str!("../migrations/postgres/0006_api_token_records.sql"),
        },
        Migration {
            version: 7,
            sql: include_str!("../migrations/postgres/0007_node_boot.sql"),
        },
        Migration {
            version: 8,
            sql: include_str!("../migrations/postgres/0008_lease_epoch.sql"),
        },
        Migration {
            version: 9,
            sql: include_str!("../migrations/postgres/0009_task_notices.sql"),
        },
        Migration {
            version: 10,
            sql: include_str!("../migrations/postgres/0010_keys.sql"),
        },
        Migration {
            version: 11,
            sql: include_str!("../migrations/postgres/0011_task_events.sql"),
        },
        Migration {
            version: 12,
            sql: include_str!("../migrations/postgres/0012_setup_choices.sql"),
        },
    ],
};

/// Serializes concurrent migrations across control planes (an arbitrary constant
/// key for `pg_advisory_xact_lock`).
const MIGRATION_LOCK: &str = "SELECT COUNT(*) FROM (SELECT pg_advisory_xact_lock(7255386127)) AS l";

fn check_schema_name(schema: &str) -> Result<(), Error> {
    let valid = !schema.is_empty()
        && schema.len() <= 63
        && schema.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && schema
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if valid {
        Ok(())
    } else {
        Err(Error::InvalidInput {
            what: format!("schema name {schema:?}"),
            reason: "use 1-63 characters of a-z, 0-9 and '_', not starting with a digit".into(),
        })
    }
}

impl SqlStore<sql::Postgres> {
    /// Connects, creates the schema if one is configured, and migrates it.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a bad URL or schema name;
    /// [`Error::SchemaTooNew`] when a newer build wrote the schema; database errors.
    pub async fn new(config: &PgConfig) -> Result<Self, Error> {
        let invalid_url = |e: sqlx::Error| Error::InvalidInput {
            what: "PostgreSQL URL".into(),
            reason: e.to_string(),
        };
        let pg = PgConnectOptions::from_str(config.url.expose()).map_err(invalid_url)?;
        let target = format!(
            "postgres://{}:{}/{}{}",
            pg.get_host(),
            pg.get_port(),
            pg.get_database().unwrap_or_default(),
            config
                .schema
                .as_deref()
                .map(|s| format!(" (schema {s})"))
                .unwrap_or_default()
        );
        if let Some(schema) = &config.schema {
            check_schema_name(schema)?;
        }
        sqlx::any::install_default_drivers();
        let options = AnyConnectOptions::from_str(config.url.expose()).map_err(invalid_url)?;
        let setup = config
            .schema
            .as_ref()
            .map(|s| format!("SET search_path TO \"{s}\""));
        let db = |e| Error::database(Dialect::Postgres, format!("connecting to {target}"), e);
        let pool = AnyPoolOptions::new()
            .max_connections(config.max_connections.max(1))
            .after_connect(move |conn, _| {
                let setup = setup.clone();
                Box::pin(async move {
                    if let Some(setup) = setup {
                        conn.execute(sqlx::raw_sql(AssertSqlSafe(setup))).await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await
            .map_err(db)?;
        if let Some(schema) = &config.schema {
            sqlx::raw_sql(AssertSqlSafe(format!(
                "CREATE SCHEMA IF NOT EXISTS \"{schema}\""
            )))
            .execute(&pool)
            .await
            .map_err(|e| Error::database(Dialect::Postgres, "creating the schema", e))?;
        }
        sql::migrate(
            &pool,
            Dialect::Postgres,
            "BEGIN",
            Some(MIGRATION_LOCK),
            &STORE_SCHEMA,
        )
        .await?;
        Ok(Self::from_pools(pool.clone(), pool, target))
    }
}

#[cfg(test)]
mod conformance {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::{PgConfig, PgStore};

    /// A store in a fresh schema of the server `SAM_TEST_POSTGRES_URL` names, or
    /// `None` (with a notice) when it is unset.
    pub(crate) async fn fresh() -> Option<PgStore> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let url = sam_core::testkit::required_env("SAM_TEST_POSTGRES_URL")?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let schema = format!(
            "sam_test_{}_{}_{}",
            std::process::id(),
            nanos,
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let config = PgConfig {
            max_connections: 8,
            ..PgConfig::new(url).with_schema(schema)
        };
        Some(
            PgStore::new(&config)
                .await
                .expect("open a fresh PostgreSQL schema"),
        )
    }

    sam_core::store_conformance!(optional fresh());
}

#[cfg(test)]
mod upgrade {
    use sam_core::TaskStore;
    use sam_core::testkit::fixtures::{task, task_id};
    use sqlx::{AssertSqlSafe, Connection, PgConnection};

    use super::{PgConfig, PgStore};

    /// Runs `sql` in `schema` of the server at `url`, outside any store.
    async fn raw(url: &str, schema: &str, sql: &str) {
        let mut conn = PgConnection::connect(url).await.expect("connect");
        sqlx::raw_sql(AssertSqlSafe(format!(
            "SET search_path TO \"{schema}\"; {sql}"
        )))
        .execute(&mut conn)
        .await
        .expect("raw SQL");
        conn.close().await.expect("close");
    }

    /// A schema written before status events came from a trigger (version 4) gains
    /// the trigger (and the API token columns of version 6) when opened, and the
    /// status changes of its old tasks are recorded.
    #[tokio::test]
    async fn a_version_4_schema_gains_the_status_trigger_keeping_its_tasks() {
        let Some(url) = sam_core::testkit::required_env("SAM_TEST_POSTGRES_URL") else {
            return;
        };
        let schema = format!("sam_upgrade_{}", std::process::id());
        let config = PgConfig {
            max_connections: 2,
            ..PgConfig::new(url.clone()).with_schema(schema.clone())
        };
        let store = PgStore::new(&config).await.expect("open");
        store.create_task(&task("t-old", 0)).await.expect("task");
        store.close().await;
        // Turn the schema back into what version 4 wrote.
        raw(
            &url,
            &schema,
            "DROP TRIGGER tasks_status_event ON tasks; DROP FUNCTION sam_task_status_event(); \
             ALTER TABLE tasks DROP COLUMN status_actor, DROP COLUMN status_reason; \
             DROP INDEX api_tokens_by_creation; ALTER TABLE api_tokens DROP COLUMN kind, \
             DROP COLUMN last_used_at, DROP COLUMN expires_at, DROP COLUMN revoked_at; \
             ALTER TABLE nodes DROP COLUMN boot_timeline, DROP COLUMN boot_failure; \
             ALTER TABLE tasks DROP COLUMN node_replacements; ALTER TABLE tasks DROP COLUMN lease_epoch; \
             DROP TABLE task_events; DROP TABLE keys; \
             ALTER TABLE users DROP COLUMN platform_ai, DROP COLUMN platform_infrastructure; \
             DELETE FROM sam_store_migrations WHERE version IN (5, 6, 7, 8, 9, 10, 11, 12);",
        )
        .await;

        let store = PgStore::new(&config)
            .await
            .expect("a version 4 schema opens and migrates");
        sam_core::testkit::store::transition_is_recorded(&store, &task_id("t-old")).await;
        store.close().await;
        raw(&url, &schema, &format!("DROP SCHEMA \"{schema}\" CASCADE;")).await;
    }
}
