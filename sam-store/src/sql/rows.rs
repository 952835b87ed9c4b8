//! Encoding records into column values and decoding rows back, for both dialects.
//!
//! Timestamps are microseconds since the Unix epoch in 64-bit integer columns, enums
//! their snake_case names, and nested records JSON text; so one decoder serves
//! SQLite and PostgreSQL alike, and bad stored data becomes
//! [`Error::InvalidData`] naming the column, never a panic.

use std::str::FromStr;

use chrono::{DateTime, Utc};
use sam_core::{
    ApiTokenRecord, ErrorCategory, ExternalInstallationId, GithubInstallation, NodeRecord,
    StatusEvent, TaskError, TaskId, TaskRecord, WorkspaceRecord, WorkspaceStatus,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::error::Error;

/// Microseconds since the epoch.
pub(crate) fn micros(at: DateTime<Utc>) -> i64 {
    at.timestamp_micros()
}

/// [`micros`] of an optional time.
pub(crate) fn opt_micros(at: Option<DateTime<Utc>>) -> Option<i64> {
    at.map(micros)
}

/// JSON text of a value.
pub(crate) fn json<T: Serialize>(value: &T) -> String {
    // The records serialized here contain only maps with string keys, strings and
    // numbers, which serde_json always encodes.
    serde_json::to_string(value).expect("store records serialize to JSON")
}

/// The snake_case name of a value that serializes as a plain string.
pub(crate) fn name<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        other => unreachable!("enum stored by name serialized as {other:?}"),
    }
}

/// Reads typed columns of one row, naming the table, column and row in errors.
pub(crate) struct Columns<'r> {
    row: &'r AnyRow,
    table: &'static str,
    id: String,
}

impl<'r> Columns<'r> {
    /// Reads `row` of `table`, whose `id` column identifies it in errors.
    pub(crate) fn new(row: &'r AnyRow, table: &'static str) -> Self {
        let id = row.try_get::<String, _>("id").unwrap_or_default();
        Self { row, table, id }
    }

    fn bad(&self, column: &str, source: impl Into<sam_core::BoxError>) -> Error {
        Error::invalid_data(format!("{}.{column} of {:?}", self.table, self.id), source)
    }

    fn opt_text(&self, column: &str) -> Result<Option<String>, Error> {
        self.row
            .try_get::<Option<String>, _>(column)
            .map_err(|e| self.bad(column, e))
    }

    fn text(&self, column: &str) -> Result<String, Error> {
        self.opt_text(column)?
            .ok_or_else(|| self.bad(column, "unexpected NULL"))
    }

    fn opt_int(&self, column: &str) -> Result<Option<i64>, Error> {
        self.row
            .try_get::<Option<i64>, _>(column)
            .map_err(|e| self.bad(column, e))
    }

    fn opt_time(&self, column: &str) -> Result<Option<DateTime<Utc>>, Error> {
        self.opt_int(column)?
            .map(|us| {
                DateTime::from_timestamp_micros(us)
                    .ok_or_else(|| self.bad(column, format!("{us} is not a timestamp")))
            })
            .transpose()
    }

    fn time(&self, column: &str) -> Result<DateTime<Utc>, Error> {
        self.opt_time(column)?
            .ok_or_else(|| self.bad(column, "unexpected NULL"))
    }

    fn opt_parse<T>(&self, column: &str) -> Result<Option<T>, Error>
    where
        T: FromStr,
        T::Err: Into<sam_core::BoxError>,
    {
        self.opt_text(column)?
            .map(|s| s.parse::<T>().map_err(|e| self.bad(column, e)))
            .transpose()
    }

    fn parse<T>(&self, column: &str) -> Result<T, Error>
    where
        T: FromStr,
        T::Err: Into<sam_core::BoxError>,
    {
        self.opt_parse(column)?
            .ok_or_else(|| self.bad(column, "unexpected NULL"))
    }

    fn opt_json<T: DeserializeOwned>(&self, column: &str) -> Result<Option<T>, Error> {
        self.opt_text(column)?
            .map(|s| serde_json::from_str(&s).map_err(|e| self.bad(column, e)))
            .transpose()
    }

    fn json<T: DeserializeOwned>(&self, column: &str) -> Result<T, Error> {
        self.opt_json(column)?
            .ok_or_else(|| self.bad(column, "unexpected NULL"))
    }

    /// A column holding an enum by its snake_case name.
    fn named<T: DeserializeOwned>(&self, column: &str) -> Result<T, Error> {
        let text = self.text(column)?;
        serde_json::from_value(serde_json::Value::String(text)).map_err(|e| self.bad(column, e))
    }

    fn opt_named<T: DeserializeOwned>(&self, column: &str) -> Result<Option<T>, Error> {
        self.opt_text(column)?
            .map(|text| {
                serde_json::from_value(serde_json::Value::String(text))
                    .map_err(|e| self.bad(column, e))
            })
            .transpose()
    }
}

/// Decodes a `tasks` row.
/// A `keys` row (`id`, `purpose`, `sealed`, `created_at`).
pub(crate) fn key(row: &AnyRow) -> Result<sam_core::KeyRecord, Error> {
    let c = Columns::new(row, "keys");
    Ok(sam_core::KeyRecord {
        id: c.text("id")?,
        purpose: c.named("purpose")?,
        sealed: sam_core::Sealed::from_stored(c.text("sealed")?),
        created_at: c.time("created_at")?,
    })
}

/// A `task_events` row (`task_id`, `seq`, `at`, `kind`).
pub(crate) fn task_event(row: &AnyRow) -> Result<sam_core::TaskEvent, Error> {
    let c = Columns::new(row, "task_events");
    Ok(sam_core::TaskEvent {
        id: c
            .opt_int("seq")?
            .map_or(Ok(0), u64::try_from)
            .map_err(|e| c.bad("seq", e))?,
        task_id: c.parse("task_id")?,
        at: c.time("at")?,
        kind: c.json("kind")?,
    })
}

/// A task row's lease: its owner, epoch and expiry.
pub(crate) type LeaseColumns = (Option<String>, u64, Option<DateTime<Utc>>);

/// A task row's lease columns (`id`, `lease_owner`, `lease_epoch`,
/// `lease_expires_at`).
pub(crate) fn lease(row: &AnyRow) -> Result<LeaseColumns, Error> {
    let c = Columns::new(row, "tasks");
    let epoch = c
        .opt_int("lease_epoch")?
        .map_or(Ok(0), u64::try_from)
        .map_err(|e| c.bad("lease_epoch", e))?;
    Ok((
        c.opt_text("lease_owner")?,
        epoch,
        c.opt_time("lease_expires_at")?,
    ))
}

pub(crate) fn task(row: &AnyRow) -> Result<TaskRecord, Error> {
    let c = Columns::new(row, "tasks");
    let error = match c.opt_text("error_message")? {
        Some(message) => Some(TaskError {
            category: c
                .opt_named::<ErrorCategory>("error_category")?
                .unwrap_or(ErrorCategory::Unknown),
            message,
        }),
        None => None,
    };
    Ok(TaskRecord {
        id: c.parse("id")?,
        status: c.parse("status")?,
        execution_step: c.parse("execution_step")?,
        spec: c.json("spec")?,
        provider: c.parse("provider")?,
        requested_size: c.parse("requested_size")?,
        size_source: c.named("size_source")?,
        requested_location: c.opt_parse("requested_location")?,
        location_source: c.named("location_source")?,
        requirements: c.json("requirements")?,
        reservation: c.json("reservation")?,
        placement: c.opt_json("placement")?,
        provisioned_node_id: c.opt_parse("provisioned_node_id")?,
        provisioned_size: c.opt_parse("provisioned_size")?,
        provisioned_location: c.opt_parse("provisioned_location")?,
        workspace_id: c.opt_parse("workspace_id")?,
        next_wake_at: c.opt_time("next_wake_at")?,
        lease_owner: c.opt_text("lease_owner")?,
        lease_expires_at: c.opt_time("lease_expires_at")?,
        provisioning_started_at: c.opt_time("provisioning_started_at")?,
        step_started_at: c.time("step_started_at")?,
        error,
        created_at: c.time("created_at")?,
        updated_at: c.time("updated_at")?,
        capacity_passes: c
            .opt_int("capacity_passes")?
            .map_or(Ok(0), u32::try_from)
            .map_err(|e| c.bad("capacity_passes", e))?,
        node_replacements: c
            .opt_int("node_replacements")?
            .map_or(Ok(0), u32::try_from)
            .map_err(|e| c.bad("node_replacements", e))?,
        output: c.opt_json("output")?,
        lease_epoch: c
            .opt_int("lease_epoch")?
            .map_or(Ok(0), u64::try_from)
            .map_err(|e| c.bad("lease_epoch", e))?,
    })
}

/// Decodes a `task_status_events` row.
pub(crate) fn status_event(row: &AnyRow) -> Result<StatusEvent, Error> {
    let c = Columns::new(row, "task_status_events");
    Ok(StatusEvent {
        task_id: c.parse("task_id")?,
        from: c.opt_parse("from_status")?,
        to: c.parse("to_status")?,
        actor: c.text("actor")?,
        reason: c.opt_text("reason")?,
        at: c.time("at")?,
    })
}

/// Decodes a `nodes` row.
pub(crate) fn node(row: &AnyRow) -> Result<NodeRecord, Error> {
    let c = Columns::new(row, "nodes");
    Ok(NodeRecord {
        id: c.parse("id")?,
        provider: c.parse("provider")?,
        vm_id: c.opt_parse("vm_id")?,
        size: c.parse("size")?,
        server_type: c.text("server_type")?,
        location: c.parse("location")?,
        capacity: c.json("capacity")?,
        labels: c.json("labels")?,
        status: c.parse("status")?,
        lifecycle: c.parse("lifecycle")?,
        warm_since: c.opt_time("warm_since")?,
        health: c.parse("health")?,
        last_heartbeat_at: c.opt_time("last_heartbeat_at")?,
        agent_version: c.opt_text("agent_version")?,
        ready_at: c.opt_time("ready_at")?,
        created_for: c.opt_parse("created_for")?,
        credential_owner: match c.text("credential_owner")?.as_str() {
            PLATFORM_OWNER => None,
            owner => Some(owner.parse().map_err(|e| c.bad("credential_owner", e))?),
        },
        address: c.opt_text("address")?,
        boot: sam_core::NodeBootRecord {
            timeline: c.opt_json("boot_timeline")?.unwrap_or_default(),
            failure: c.opt_json("boot_failure")?,
        },
        created_at: c.time("created_at")?,
        updated_at: c.time("updated_at")?,
    })
}

/// What the `credential_owner` column of `nodes` holds for the platform's own
/// credentials; an owner is `user:<id>` or `project:<id>`.
const PLATFORM_OWNER: &str = "platform";

/// The `credential_owner` column for a node's owner.
pub(crate) fn owner_column(owner: Option<&sam_core::CredentialOwner>) -> String {
    owner.map_or_else(|| PLATFORM_OWNER.to_owned(), ToString::to_string)
}

/// Decodes a `nodes` row with the `held_for` column placement reads with it.
pub(crate) fn placement_node(row: &AnyRow) -> Result<(NodeRecord, Option<TaskId>), Error> {
    let held_for = Columns::new(row, "nodes").opt_parse("held_for")?;
    Ok((node(row)?, held_for))
}

/// Decodes a `workspaces` row.
pub(crate) fn workspace(row: &AnyRow) -> Result<WorkspaceRecord, Error> {
    let c = Columns::new(row, "workspaces");
    Ok(WorkspaceRecord {
        id: c.parse("id")?,
        node_id: c.parse("node_id")?,
        task_id: c.parse("task_id")?,
        status: c.named::<WorkspaceStatus>("status")?,
        effective_profile: c.opt_text("effective_profile")?,
        reservation: c.json("reservation")?,
        created_at: c.time("created_at")?,
        updated_at: c.time("updated_at")?,
    })
}

/// Decodes the `reservation` column of a `workspaces` row.
pub(crate) fn reservation(row: &AnyRow) -> Result<sam_core::Reservation, Error> {
    Columns::new(row, "workspaces").json("reservation")
}

/// Decodes the `capacity` column of a `nodes` row.
pub(crate) fn capacity(row: &AnyRow) -> Result<sam_core::Capacity, Error> {
    Columns::new(row, "nodes").json("capacity")
}

/// Decodes an `api_tokens` row.
pub(crate) fn api_token(row: &AnyRow) -> Result<ApiTokenRecord, Error> {
    let c = Columns::new(row, "api_tokens");
    Ok(ApiTokenRecord {
        id: c.text("id")?,
        hash: c.text("hash")?,
        label: c.text("label")?,
        kind: c.parse("kind")?,
        created_at: c.time("created_at")?,
        last_used_at: c.opt_time("last_used_at")?,
        expires_at: c.opt_time("expires_at")?,
        revoked_at: c.opt_time("revoked_at")?,
    })
}

/// Decodes a `github_installations` row; its `id` must be the key its user and
/// external id make.
pub(crate) fn github_installation(row: &AnyRow) -> Result<GithubInstallation, Error> {
    let c = Columns::new(row, "github_installations");
    let external = c
        .opt_int("external_id")?
        .ok_or_else(|| c.bad("external_id", "unexpected NULL"))?;
    let external = u64::try_from(external)
        .map_err(|e| c.bad("external_id", e))
        .and_then(|v| ExternalInstallationId::new(v).map_err(|e| c.bad("external_id", e)))?;
    let link = GithubInstallation {
        user_id: c.parse("user_id")?,
        external_id: external,
        account: c.text("account")?,
        created_at: c.time("created_at")?,
    };
    if link.key().to_string() != c.text("id")? {
        return Err(c.bad("id", "does not match user_id and external_id"));
    }
    Ok(link)
}

/// Decodes a `users` row.
pub(crate) fn user(row: &AnyRow) -> Result<sam_core::UserRecord, Error> {
    Columns::new(row, "users").json("body")
}

/// Decodes a user's setup choices from their `users` row (1 is chosen).
pub(crate) fn setup_choices(row: &AnyRow) -> Result<sam_core::SetupChoices, Error> {
    let columns = Columns::new(row, "users");
    let chosen = |column| {
        columns
            .opt_int(column)?
            .map(|v| v != 0)
            .ok_or_else(|| columns.bad(column, "unexpected NULL"))
    };
    Ok(sam_core::SetupChoices {
        platform_ai: chosen("platform_ai")?,
        platform_infrastructure: chosen("platform_infrastructure")?,
    })
}

/// Decodes a `projects` row.
pub(crate) fn project(row: &AnyRow) -> Result<sam_core::ProjectRecord, Error> {
    Columns::new(row, "projects").json("body")
}

/// Decodes an `agent_profiles` row.
pub(crate) fn profile(row: &AnyRow) -> Result<sam_core::AgentProfileRecord, Error> {
    Columns::new(row, "agent_profiles").json("body")
}

/// Decodes a `credentials` row (the secret stays sealed).
pub(crate) fn credential(row: &AnyRow) -> Result<sam_core::CredentialRecord, Error> {
    Columns::new(row, "credentials").json("body")
}
