//! [`FleetStore`] for [`SqlStore`]: the SQL of keys, nodes, the warm pool,
//! workspace slots and placement reads.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sam_core::{
    FleetStore, KeyPurpose, KeyRecord, NodeBeat, NodeFilter, NodeId, NodeLifecycle, NodeRecord,
    PlacementCandidate, ProviderKind, SlotOutcome, StoreError, WarmClaim, WorkspaceId,
    WorkspaceRecord, WorkspaceStatus, check_slot,
};
use sqlx::any::{Any, AnyRow};
use sqlx::{Row, Transaction};

use super::rows::{self, json, micros, name, opt_micros};
use super::{AnyQuery, Dialect, SLOT_HOLDING, SqlStore, TERMINAL, query};
use crate::error::Error;

const NODE_COLUMNS: &str = "id, provider, vm_id, size, server_type, location, capacity, labels, \
    status, lifecycle, warm_since, health, last_heartbeat_at, agent_version, ready_at, \
    created_for, created_at, updated_at, credential_owner, address, boot_timeline, boot_failure";

const WORKSPACE_COLUMNS: &str =
    "id, node_id, task_id, status, effective_profile, reservation, created_at, updated_at";

/// Which nodes a placement-candidate read covers.
#[derive(Debug, Clone, Copy)]
enum CandidateScope<'a> {
    /// The `running`, `active` nodes of one provider.
    Placeable(ProviderKind),
    /// One node, whatever its state.
    Node(&'a NodeId),
}

impl<D: Dialect> SqlStore<D> {
    async fn try_put_node(&self, node: &NodeRecord) -> Result<(), Error> {
        Self::put_node_query(node)
            .execute(&self.writer)
            .await
            .map_err(Self::db("writing a node"))?;
        Ok(())
    }

    /// The delete of a node's key, which goes with its row.
    pub(super) fn delete_node_key_query(node: &NodeId) -> AnyQuery<'static> {
        query("DELETE FROM keys WHERE purpose = 'node' AND id = $1").bind(node.to_string())
    }

    /// The upsert of a node row.
    pub(super) fn put_node_query(node: &NodeRecord) -> AnyQuery<'static> {
        let placeholders: Vec<String> = (1..=22).map(|i| format!("${i}")).collect();
        // A boot record is never cleared: an empty timeline or a missing failure is
        // written as NULL and keeps the stored one.
        let updates: Vec<String> = NODE_COLUMNS
            .split(", ")
            .skip(1)
            .map(|c| match c {
                "boot_timeline" | "boot_failure" => {
                    format!("{c} = COALESCE(excluded.{c}, nodes.{c})")
                }
                c => format!("{c} = excluded.{c}"),
            })
            .collect();
        query(format!(
            "INSERT INTO nodes ({NODE_COLUMNS}) VALUES ({}) ON CONFLICT (id) DO UPDATE SET {}",
            placeholders.join(", "),
            updates.join(", ")
        ))
        .bind(node.id.to_string())
        .bind(node.provider.as_str().to_owned())
        .bind(node.vm_id.as_ref().map(|v| v.to_string()))
        .bind(node.size.as_str().to_owned())
        .bind(node.server_type.clone())
        .bind(node.location.to_string())
        .bind(json(&node.capacity))
        .bind(json(&node.labels))
        .bind(node.status.as_str().to_owned())
        .bind(node.lifecycle.as_str().to_owned())
        .bind(opt_micros(node.warm_since))
        .bind(node.health.as_str().to_owned())
        .bind(opt_micros(node.last_heartbeat_at))
        .bind(node.agent_version.clone())
        .bind(opt_micros(node.ready_at))
        .bind(node.created_for.as_ref().map(|t| t.to_string()))
        .bind(micros(node.created_at))
        .bind(micros(node.updated_at))
        .bind(rows::owner_column(node.credential_owner.as_ref()))
        .bind(node.address.clone())
        .bind((!node.boot.timeline.is_empty()).then(|| json(&node.boot.timeline)))
        .bind(node.boot.failure.as_ref().map(json))
    }

    async fn try_list_nodes(&self, filter: &NodeFilter) -> Result<Vec<NodeRecord>, Error> {
        let mut sql = format!("SELECT {NODE_COLUMNS} FROM nodes WHERE 1 = 1");
        let mut values: Vec<String> = Vec::new();
        let mut add = |column: &str, names: Vec<&str>, sql: &mut String| {
            if names.is_empty() {
                return;
            }
            let list: Vec<String> = names
                .into_iter()
                .map(|n| {
                    values.push(n.to_owned());
                    format!("${}", values.len())
                })
                .collect();
            *sql += &format!(" AND {column} IN ({})", list.join(", "));
        };
        add(
            "status",
            filter.statuses.iter().map(|s| s.as_str()).collect(),
            &mut sql,
        );
        add(
            "lifecycle",
            filter.lifecycles.iter().map(|l| l.as_str()).collect(),
            &mut sql,
        );
        add(
            "provider",
            filter.provider.iter().map(|p| p.as_str()).collect(),
            &mut sql,
        );
        sql += " ORDER BY created_at, id";
        let q = values.into_iter().fold(query(sql), |q, v| q.bind(v));
        self.fetch_all(q, rows::node, "listing nodes").await
    }

    async fn try_claim_warm(&self, claim: &WarmClaim) -> Result<Option<NodeRecord>, Error> {
        let sql = format!(
            "WITH pick AS (SELECT id FROM nodes \
                WHERE lifecycle = 'warm' AND status = 'running' AND health = 'healthy' \
                  AND provider = $1 AND size = $2 AND ($3 = 0 OR location = $4) \
                  AND credential_owner = $6 \
                ORDER BY warm_since, created_at, id LIMIT 1{}) \
             UPDATE nodes SET lifecycle = 'active', warm_since = NULL, updated_at = $5 \
             WHERE id IN (SELECT id FROM pick) AND lifecycle = 'warm' \
             RETURNING {NODE_COLUMNS}",
            D::FOR_UPDATE_SKIP_LOCKED
        );
        let q = query(sql)
            .bind(claim.provider.as_str().to_owned())
            .bind(claim.size.as_str().to_owned())
            .bind(i64::from(claim.location.is_some()))
            .bind(
                claim
                    .location
                    .as_ref()
                    .map(|l| l.to_string())
                    .unwrap_or_default(),
            )
            .bind(micros(claim.now))
            .bind(rows::owner_column(claim.credential_owner.as_ref()));
        // One statement, so a transaction of its own (see `update_existing`).
        let context = "claiming a warm node";
        let row = q
            .fetch_optional(&self.writer)
            .await
            .map_err(Self::db(context))?;
        row.as_ref().map(rows::node).transpose()
    }

    /// The placement candidates of `provider`: the nodes (with the task each is held
    /// for, worked out in SQL as [`NodeRecord::held_for`] does) and then their
    /// slot-holding workspaces, two queries over one snapshot.
    async fn try_list_candidates(
        &self,
        scope: CandidateScope<'_>,
    ) -> Result<Vec<PlacementCandidate>, Error> {
        const PLACEABLE: &str = "status = 'running' AND lifecycle = 'active' AND provider = $1";
        let (nodes_where, workspaces_where, bound) = match scope {
            CandidateScope::Placeable(provider) => (
                PLACEABLE.to_owned(),
                format!("node_id IN (SELECT id FROM nodes WHERE {PLACEABLE})"),
                provider.as_str().to_owned(),
            ),
            CandidateScope::Node(id) => (
                "id = $1".to_owned(),
                "node_id = $1".to_owned(),
                id.to_string(),
            ),
        };
        let nodes_sql = format!(
            "SELECT {NODE_COLUMNS}, \
               CASE WHEN EXISTS (SELECT 1 FROM tasks t WHERE t.id = nodes.created_for \
                                   AND t.status NOT IN {TERMINAL} \
                                   AND t.provisioned_node_id = nodes.id) \
                     AND NOT EXISTS (SELECT 1 FROM workspaces w WHERE w.node_id = nodes.id \
                                       AND w.task_id = nodes.created_for) \
                    THEN nodes.created_for END AS held_for \
             FROM nodes WHERE {nodes_where} ORDER BY created_at, id"
        );
        let workspaces_sql = format!(
            "SELECT {WORKSPACE_COLUMNS} FROM workspaces \
             WHERE status IN {SLOT_HOLDING} AND {workspaces_where} \
             ORDER BY node_id, created_at, id"
        );
        let context = match scope {
            CandidateScope::Placeable(_) => "listing placement candidates",
            CandidateScope::Node(_) => "reading a placement candidate",
        };
        let mut tx = self
            .reader
            .begin_with(D::BEGIN_SNAPSHOT)
            .await
            .map_err(Self::db(context))?;
        let node_rows = query(nodes_sql)
            .bind(bound.clone())
            .fetch_all(&mut *tx)
            .await
            .map_err(Self::db(context))?;
        let workspace_rows = query(workspaces_sql)
            .bind(bound)
            .fetch_all(&mut *tx)
            .await
            .map_err(Self::db(context))?;
        Self::commit(tx, context).await?;
        let mut on_node: std::collections::HashMap<NodeId, Vec<WorkspaceRecord>> =
            std::collections::HashMap::new();
        for row in &workspace_rows {
            let ws = rows::workspace(row)?;
            on_node.entry(ws.node_id.clone()).or_default().push(ws);
        }
        node_rows
            .iter()
            .map(|row| {
                let (node, held_for) = rows::placement_node(row)?;
                Ok(PlacementCandidate {
                    workspaces: on_node.remove(&node.id).unwrap_or_default(),
                    node,
                    held_for,
                })
            })
            .collect()
    }

    /// Locks the node row and returns its capacity; `NotFound` when it is missing.
    async fn lock_node(tx: &mut Transaction<'static, Any>, id: &NodeId) -> Result<AnyRow, Error> {
        let sql = format!(
            "SELECT id, capacity, lifecycle FROM nodes WHERE id = $1{}",
            D::FOR_UPDATE
        );
        query(sql)
            .bind(id.to_string())
            .fetch_optional(&mut **tx)
            .await
            .map_err(Self::db("locking a node"))?
            .ok_or_else(|| Error::not_found(format!("node {id}")))
    }

    /// The reservations of the node's slot-holding workspaces, inside `tx`.
    async fn live_reservations(
        tx: &mut Transaction<'static, Any>,
        node: &NodeId,
    ) -> Result<Vec<sam_core::Reservation>, Error> {
        let sql = format!(
            "SELECT id, reservation FROM workspaces WHERE node_id = $1 AND status IN {SLOT_HOLDING}"
        );
        let rows = query(sql)
            .bind(node.to_string())
            .fetch_all(&mut **tx)
            .await
            .map_err(Self::db("reading live reservations"))?;
        rows.iter().map(rows::reservation).collect()
    }

    async fn try_release_to_warm(&self, id: &NodeId, at: DateTime<Utc>) -> Result<bool, Error> {
        let context = "returning a node to the warm pool";
        let mut tx = self.begin(context).await?;
        let node = Self::lock_node(&mut tx, id).await?;
        let lifecycle: String = node.try_get("lifecycle").map_err(Self::db(context))?;
        if lifecycle != NodeLifecycle::Active.as_str()
            || !Self::live_reservations(&mut tx, id).await?.is_empty()
        {
            return Ok(false);
        }
        query(
            "UPDATE nodes SET lifecycle = 'warm', warm_since = $1, updated_at = $1 WHERE id = $2",
        )
        .bind(micros(at))
        .bind(id.to_string())
        .execute(&mut *tx)
        .await
        .map_err(Self::db(context))?;
        Self::commit(tx, context).await?;
        Ok(true)
    }

    async fn try_reserve(&self, ws: &WorkspaceRecord) -> Result<SlotOutcome, Error> {
        let context = "reserving a workspace slot";
        let mut tx = self.begin(context).await?;
        let node = Self::lock_node(&mut tx, &ws.node_id).await?;
        let capacity = rows::capacity(&node)?;
        if Self::exists(&mut *tx, "workspaces", ws.id.as_str()).await? {
            return Err(Error::already_exists(format!("workspace {}", ws.id)));
        }
        let live = Self::live_reservations(&mut tx, &ws.node_id).await?;
        if let Err(rejection) = check_slot(&capacity, &live, &ws.reservation) {
            return Ok(SlotOutcome::Rejected(rejection));
        }
        query(format!(
            "INSERT INTO workspaces ({WORKSPACE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        ))
        .bind(ws.id.to_string())
        .bind(ws.node_id.to_string())
        .bind(ws.task_id.to_string())
        .bind(name(&ws.status))
        .bind(ws.effective_profile.clone())
        .bind(json(&ws.reservation))
        .bind(micros(ws.created_at))
        .bind(micros(ws.updated_at))
        .execute(&mut *tx)
        .await
        .map_err(Self::db(context))?;
        Self::commit(tx, context).await?;
        Ok(SlotOutcome::Reserved)
    }

    async fn try_update_workspace(
        &self,
        id: &WorkspaceId,
        status: WorkspaceStatus,
        effective_profile: Option<String>,
        at: DateTime<Utc>,
    ) -> Result<(), Error> {
        // A stopped workspace matches nothing: a late report cannot revive it.
        let q = query(
            "UPDATE workspaces SET status = $1, \
             effective_profile = COALESCE($2, effective_profile), updated_at = $3 \
             WHERE id = $4 AND status <> 'stopped'",
        )
        .bind(name(&status))
        .bind(effective_profile)
        .bind(micros(at))
        .bind(id.to_string());
        self.update_existing(q, "workspaces", id.as_str(), "updating a workspace")
            .await?;
        Ok(())
    }

    async fn try_mark_stale(
        &self,
        id: &NodeId,
        beat_before: DateTime<Utc>,
        at: DateTime<Utc>,
    ) -> Result<bool, Error> {
        let q = query(
            "UPDATE nodes SET health = 'stale', updated_at = $1 \
             WHERE id = $2 AND health = 'healthy' AND last_heartbeat_at < $3",
        )
        .bind(micros(at))
        .bind(id.to_string())
        .bind(micros(beat_before));
        self.update_existing(q, "nodes", id.as_str(), "marking a node stale")
            .await
    }

    async fn try_record_beat(&self, id: &NodeId, beat: &NodeBeat) -> Result<(), Error> {
        // One statement on the liveness columns only: a beat read-modify-writing the
        // whole row could put back the lifecycle a warm claim or release just changed.
        let q = query(
            "UPDATE nodes SET last_heartbeat_at = $1, updated_at = $1, \
             health = CASE WHEN $2 = 1 OR health = 'stale' THEN 'healthy' ELSE health END, \
             status = CASE WHEN $2 = 1 THEN 'running' ELSE status END, \
             ready_at = CASE WHEN $2 = 1 AND ready_at IS NULL THEN $1 ELSE ready_at END, \
             agent_version = CASE WHEN $2 = 1 THEN $3 ELSE agent_version END, \
             boot_timeline = CASE WHEN $2 = 1 AND $5 = 1 THEN $6 ELSE boot_timeline END \
             WHERE id = $4",
        )
        .bind(micros(beat.at))
        .bind(i64::from(beat.ready_version.is_some()))
        .bind(beat.ready_version.clone())
        .bind(id.to_string())
        .bind(i64::from(!beat.boot_timeline.is_empty()))
        .bind(json(&beat.boot_timeline));
        self.update_existing(q, "nodes", id.as_str(), "recording a node's beat")
            .await?;
        Ok(())
    }
}

#[async_trait]
impl<D: Dialect> FleetStore for SqlStore<D> {
    async fn put_key_if_absent(&self, key: &KeyRecord) -> Result<KeyRecord, StoreError> {
        let context = "writing a key";
        // One statement, so two control planes starting at once both read the key
        // that was written first.
        query(
            "INSERT INTO keys (id, purpose, sealed, created_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(key.id.clone())
        .bind(key.purpose.as_str().to_owned())
        .bind(key.sealed.as_str().to_owned())
        .bind(micros(key.created_at))
        .execute(&self.writer)
        .await
        .map_err(Self::db(context))?;
        let q = query("SELECT id, purpose, sealed, created_at FROM keys WHERE id = $1")
            .bind(key.id.clone());
        let stored = q
            .fetch_optional(&self.writer)
            .await
            .map_err(Self::db(context))?
            .ok_or_else(|| Error::not_found(format!("key {}", key.id)))?;
        Ok(rows::key(&stored)?)
    }

    async fn get_key(
        &self,
        purpose: KeyPurpose,
        id: &str,
    ) -> Result<Option<KeyRecord>, StoreError> {
        let q = query(
            "SELECT id, purpose, sealed, created_at FROM keys WHERE purpose = $1 AND id = $2",
        )
        .bind(purpose.as_str().to_owned())
        .bind(id.to_owned());
        Ok(self.fetch_optional(q, rows::key, "reading a key").await?)
    }

    async fn list_keys(&self, purpose: KeyPurpose) -> Result<Vec<KeyRecord>, StoreError> {
        let q = query(
            "SELECT id, purpose, sealed, created_at FROM keys WHERE purpose = $1 \
             ORDER BY created_at, id",
        )
        .bind(purpose.as_str().to_owned());
        Ok(self.fetch_all(q, rows::key, "listing keys").await?)
    }

    async fn put_node(&self, node: &NodeRecord) -> Result<(), StoreError> {
        Ok(self.try_put_node(node).await?)
    }

    async fn get_node(&self, id: &NodeId) -> Result<Option<NodeRecord>, StoreError> {
        let q =
            query(format!("SELECT {NODE_COLUMNS} FROM nodes WHERE id = $1")).bind(id.to_string());
        Ok(self.fetch_optional(q, rows::node, "reading a node").await?)
    }

    async fn list_nodes(&self, filter: &NodeFilter) -> Result<Vec<NodeRecord>, StoreError> {
        Ok(self.try_list_nodes(filter).await?)
    }

    async fn delete_node(&self, id: &NodeId) -> Result<(), StoreError> {
        let context = "deleting a node";
        let mut tx = self.begin(context).await?;
        for q in [
            Self::delete_node_key_query(id),
            query("DELETE FROM nodes WHERE id = $1").bind(id.to_string()),
        ] {
            q.execute(&mut *tx).await.map_err(Self::db(context))?;
        }
        Self::commit(tx, context).await?;
        Ok(())
    }

    async fn record_node_beat(&self, id: &NodeId, beat: &NodeBeat) -> Result<(), StoreError> {
        Ok(self.try_record_beat(id, beat).await?)
    }

    async fn mark_node_stale(
        &self,
        id: &NodeId,
        beat_before: DateTime<Utc>,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        Ok(self.try_mark_stale(id, beat_before, at).await?)
    }

    async fn claim_warm_node(&self, claim: &WarmClaim) -> Result<Option<NodeRecord>, StoreError> {
        Ok(self.try_claim_warm(claim).await?)
    }

    async fn release_node_to_warm(
        &self,
        id: &NodeId,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        Ok(self.try_release_to_warm(id, at).await?)
    }

    async fn reserve_workspace_slot(
        &self,
        workspace: &WorkspaceRecord,
    ) -> Result<SlotOutcome, StoreError> {
        Ok(self.try_reserve(workspace).await?)
    }

    async fn list_placement_candidates(
        &self,
        provider: ProviderKind,
    ) -> Result<Vec<PlacementCandidate>, StoreError> {
        Ok(self
            .try_list_candidates(CandidateScope::Placeable(provider))
            .await?)
    }

    async fn get_placement_candidate(
        &self,
        id: &NodeId,
    ) -> Result<Option<PlacementCandidate>, StoreError> {
        Ok(self
            .try_list_candidates(CandidateScope::Node(id))
            .await?
            .pop())
    }

    async fn get_workspace(&self, id: &WorkspaceId) -> Result<Option<WorkspaceRecord>, StoreError> {
        let q = query(format!(
            "SELECT {WORKSPACE_COLUMNS} FROM workspaces WHERE id = $1"
        ))
        .bind(id.to_string());
        Ok(self
            .fetch_optional(q, rows::workspace, "reading a workspace")
            .await?)
    }

    async fn list_workspaces(&self, node: &NodeId) -> Result<Vec<WorkspaceRecord>, StoreError> {
        let q = query(format!(
            "SELECT {WORKSPACE_COLUMNS} FROM workspaces WHERE node_id = $1 ORDER BY created_at, id"
        ))
        .bind(node.to_string());
        Ok(self
            .fetch_all(q, rows::workspace, "listing workspaces")
            .await?)
    }

    async fn update_workspace(
        &self,
        id: &WorkspaceId,
        status: WorkspaceStatus,
        effective_profile: Option<String>,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        Ok(self
            .try_update_workspace(id, status, effective_profile, at)
            .await?)
    }
}
