//! Placement: the pure best-fit choice among existing nodes, and [`DefaultScheduler`],
//! which applies the placement order of the [`Scheduler`] contract over a [`Store`].

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;

use crate::credential::CredentialOwner;
use crate::error::Error;
use crate::model::{Location, NodeHealth, NodeLifecycle, NodeStatus, ProviderKind, TaskId, VmSize};
use crate::reservation::{Capacity, Reservation, SlotRejection, check_slot};
use crate::scheduler::{
    NodeChoice, Placement, PlacementDecision, PlacementExplanation, PlacementRequest, Rejected,
    Scheduler,
};
use crate::store::{NodeFilter, NodeRecord, Store, WarmClaim, WorkspaceRecord};

mod fleet;

pub use fleet::FleetIndex;

/// A node considered for placement, with the reservations of its slot-holding workspaces.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    /// The node.
    pub node: &'a NodeRecord,
    /// Reservations of its workspaces that hold a slot.
    pub live: &'a [Reservation],
}

/// Why a node cannot take a request, without formatting it: placement asks this of
/// every candidate, and only an explanation needs the words.
#[derive(Debug)]
enum Rejection<'a> {
    Provider(ProviderKind, ProviderKind),
    Owner(Option<&'a CredentialOwner>, Option<&'a CredentialOwner>),
    Status(NodeStatus),
    Lifecycle(NodeLifecycle),
    Health(NodeHealth),
    Location(&'a Location, &'a Location),
    Size(VmSize, VmSize),
    Slot(SlotRejection),
}

impl fmt::Display for Rejection<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Provider(node, requested) => write!(f, "runs on {node}, not {requested}"),
            Self::Owner(node, requested) => {
                let account = |owner: Option<&CredentialOwner>| {
                    owner.map_or_else(|| "the platform's".to_owned(), |o| format!("{o}'s"))
                };
                write!(
                    f,
                    "was made with {} provider credential, not {}",
                    account(*node),
                    account(*requested)
                )
            }
            Self::Status(status) => write!(f, "is {status}, not running"),
            Self::Lifecycle(lifecycle) => write!(f, "is {lifecycle}, not active"),
            Self::Health(health) => write!(f, "is {health}"),
            Self::Location(node, requested) => {
                write!(f, "is in {node}, not the requested {requested}")
            }
            Self::Size(node, requested) => {
                write!(f, "is {node}, smaller than the requested {requested}")
            }
            Self::Slot(rejection) => rejection.fmt(f),
        }
    }
}

/// The first rule that keeps `candidate` from taking `request`.
fn rejection<'a>(candidate: Candidate<'a>, request: &'a PlacementRequest) -> Option<Rejection<'a>> {
    let node = candidate.node;
    if node.provider != request.provider {
        return Some(Rejection::Provider(node.provider, request.provider));
    }
    if node.credential_owner != request.credential_owner {
        return Some(Rejection::Owner(
            node.credential_owner.as_ref(),
            request.credential_owner.as_ref(),
        ));
    }
    if node.status != NodeStatus::Running {
        return Some(Rejection::Status(node.status));
    }
    if node.lifecycle != NodeLifecycle::Active {
        return Some(Rejection::Lifecycle(node.lifecycle));
    }
    if node.health != NodeHealth::Healthy {
        return Some(Rejection::Health(node.health));
    }
    if let Some(location) = request
        .location
        .as_ref()
        .filter(|_| request.location_source.is_explicit())
        && &node.location != location
    {
        return Some(Rejection::Location(&node.location, location));
    }
    if request.size_source.is_explicit() && node.size < request.size {
        return Some(Rejection::Size(node.size, request.size));
    }
    check_slot(&node.capacity, candidate.live, &request.reservation)
        .err()
        .map(Rejection::Slot)
}

/// Why `node` cannot take `request` as an existing, active node; `None` when it can.
pub fn reject_reason(candidate: Candidate<'_>, request: &PlacementRequest) -> Option<String> {
    rejection(candidate, request).map(|r| r.to_string())
}

/// Whether `candidate` can take `request` as an existing, active node: the same
/// rules as [`reject_reason`], without building the reason.
pub fn fits(candidate: Candidate<'_>, request: &PlacementRequest) -> bool {
    rejection(candidate, request).is_none()
}

/// What is left of a node (CPU millis, memory MB, disk MB) after it takes
/// `reservation`: the best fit leaves least.
pub fn leftover(
    capacity: &Capacity,
    live: &[Reservation],
    reservation: &Reservation,
) -> (u64, u64, u64) {
    let used = |f: fn(&Reservation) -> u64| {
        live.iter()
            .map(f)
            .fold(0u64, u64::saturating_add)
            .saturating_add(f(reservation))
    };
    (
        capacity.cpu_millis.saturating_sub(used(|r| r.cpu_millis)),
        capacity.memory_mb.saturating_sub(used(|r| r.memory_mb)),
        capacity
            .disk_mb
            .unwrap_or(0)
            .saturating_sub(used(|r| r.disk_mb)),
    )
}

/// The best-fit existing node for `request`, and every rejected candidate with its reason.
///
/// Best fit: the node left with the least CPU, then memory, then disk after taking
/// the reservation; ties go to the smaller node id, so the choice is deterministic.
pub fn best_fit<'a>(
    candidates: impl IntoIterator<Item = Candidate<'a>>,
    request: &PlacementRequest,
) -> (Option<&'a NodeRecord>, Vec<Rejected>) {
    let mut best: Option<(&NodeRecord, (u64, u64, u64))> = None;
    let mut rejected = Vec::new();
    for candidate in candidates {
        if let Some(reason) = rejection(candidate, request) {
            rejected.push(Rejected {
                candidate: candidate.node.id.to_string(),
                reason: format!("node {} {reason}", candidate.node.id),
            });
            continue;
        }
        let fit = leftover(
            &candidate.node.capacity,
            candidate.live,
            &request.reservation,
        );
        let better = match best {
            None => true,
            Some((node, best_fit)) => (fit, &candidate.node.id) < (best_fit, &node.id),
        };
        if better {
            if let Some((loser, _)) = best {
                rejected.push(Rejected {
                    candidate: loser.id.to_string(),
                    reason: format!("node {} fits, but less tightly", loser.id),
                });
            }
            best = Some((candidate.node, fit));
        } else {
            rejected.push(Rejected {
                candidate: candidate.node.id.to_string(),
                reason: format!("node {} fits, but less tightly", candidate.node.id),
            });
        }
    }
    (best.map(|(n, _)| n), rejected)
}

/// The default [`Scheduler`]: preferred node, warm node, best-fit existing node, provision.
#[derive(Debug, Clone)]
pub struct DefaultScheduler {
    store: Arc<dyn Store>,
}

impl DefaultScheduler {
    /// A scheduler reading nodes and workspaces from `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }

    async fn live_reservations(&self, node: &NodeRecord) -> Result<Vec<Reservation>, Error> {
        Ok(self
            .store
            .list_workspaces(&node.id)
            .await?
            .into_iter()
            .filter(|w| w.status.holds_slot())
            .map(|w| w.reservation)
            .collect())
    }
}

impl DefaultScheduler {
    /// The task `node` is held for, when it is not `asking`: a node provisioned for a
    /// task belongs to that task until the task has reserved its slot there (or has
    /// moved on), so that others filling it first cannot send the task to provision a
    /// second VM.
    async fn held_for(
        &self,
        node: &NodeRecord,
        workspaces: &[WorkspaceRecord],
        asking: &TaskId,
    ) -> Result<Option<TaskId>, Error> {
        let Some(creator) = node.created_for.as_ref().filter(|c| *c != asking) else {
            return Ok(None);
        };
        if workspaces.iter().any(|w| &w.task_id == creator) {
            return Ok(None);
        }
        let held = self.store.get_task(creator).await?.is_some_and(|t| {
            !t.status.is_terminal() && t.provisioned_node_id.as_ref() == Some(&node.id)
        });
        Ok(held.then(|| creator.clone()))
    }
}

#[async_trait]
impl Scheduler for DefaultScheduler {
    async fn place(&self, request: &PlacementRequest) -> Result<PlacementDecision, Error> {
        let mut rejected = Vec::new();

        if let Some(preferred) = &request.preferred_node {
            let Some(node) = self.store.get_node(preferred).await? else {
                return Err(Error::InvalidInput {
                    field: "preferred_node",
                    reason: format!("node {preferred} does not exist"),
                });
            };
            let live = self.live_reservations(&node).await?;
            if let Some(reason) = reject_reason(
                Candidate {
                    node: &node,
                    live: &live,
                },
                request,
            ) {
                return Err(Error::InvalidInput {
                    field: "preferred_node",
                    reason: format!("node {preferred} {reason}"),
                });
            }
            return Ok(PlacementDecision {
                placement: Placement::Node {
                    node_id: node.id.clone(),
                    choice: NodeChoice::Preferred,
                },
                explanation: PlacementExplanation {
                    chosen: node.id.to_string(),
                    reason: "the task asked for this node and it has room".to_owned(),
                    rejected,
                },
            });
        }

        // Warm nodes: exact size first in the requested location, then (when the
        // location is not explicit) in any location.
        let explicit_location = request.location_source.is_explicit();
        let mut claims = vec![request.location.clone()];
        if request.location.is_some() && !explicit_location {
            claims.push(None);
        }
        for location in claims {
            let claim = WarmClaim {
                task_id: request.task_id.clone(),
                provider: request.provider,
                size: request.size,
                location: location.clone(),
                credential_owner: request.credential_owner.clone(),
                now: request.now,
            };
            if let Some(node) = self.store.claim_warm_node(&claim).await? {
                crate::crash::point(crate::crash::WARM_CLAIMED);
                if node.capacity.covers(&request.reservation) {
                    return Ok(PlacementDecision {
                        placement: Placement::Node {
                            node_id: node.id.clone(),
                            choice: NodeChoice::Warm,
                        },
                        explanation: PlacementExplanation {
                            chosen: node.id.to_string(),
                            reason: format!("claimed warm {} node in {}", node.size, node.location),
                            rejected,
                        },
                    });
                }
                // Too small for the reservation: give it back and say so.
                self.store.release_node_to_warm(&node.id, claim.now).await?;
                rejected.push(Rejected {
                    candidate: node.id.to_string(),
                    reason: format!("warm node {} cannot hold the reservation", node.id),
                });
            }
        }

        let nodes = self
            .store
            .list_nodes(&NodeFilter {
                statuses: vec![NodeStatus::Running],
                lifecycles: vec![NodeLifecycle::Active],
                provider: Some(request.provider),
            })
            .await?;
        let mut open = Vec::with_capacity(nodes.len());
        let mut lives = Vec::with_capacity(nodes.len());
        for node in &nodes {
            let workspaces = self.store.list_workspaces(&node.id).await?;
            if let Some(creator) = self.held_for(node, &workspaces, &request.task_id).await? {
                rejected.push(Rejected {
                    candidate: node.id.to_string(),
                    reason: format!(
                        "node {} was provisioned for task {creator}, which has not taken its slot yet",
                        node.id
                    ),
                });
                continue;
            }
            open.push(node);
            lives.push(
                workspaces
                    .into_iter()
                    .filter(|w| w.status.holds_slot())
                    .map(|w| w.reservation)
                    .collect::<Vec<_>>(),
            );
        }
        let (chosen, mut existing_rejected) = best_fit(
            open.iter()
                .zip(&lives)
                .map(|(node, live)| Candidate { node, live }),
            request,
        );
        rejected.append(&mut existing_rejected);
        if let Some(node) = chosen {
            return Ok(PlacementDecision {
                placement: Placement::Node {
                    node_id: node.id.clone(),
                    choice: NodeChoice::Existing,
                },
                explanation: PlacementExplanation {
                    chosen: node.id.to_string(),
                    reason: "the tightest running node with room for the reservation".to_owned(),
                    rejected,
                },
            });
        }

        let location = request
            .location
            .as_ref()
            .map_or_else(|| "the default location".to_owned(), |l| l.to_string());
        Ok(PlacementDecision {
            placement: Placement::Provision {
                size: request.size,
                location: request.location.clone(),
            },
            explanation: PlacementExplanation {
                chosen: format!("new {} node in {location}", request.size),
                reason: if nodes.is_empty() {
                    "no running node and no warm node to reuse".to_owned()
                } else {
                    "no running node has room and no warm node matches".to_owned()
                },
                rejected,
            },
        })
    }
}

#[cfg(test)]
mod tests;
