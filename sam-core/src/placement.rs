//! Placement: the pure best-fit choice among existing nodes, and [`DefaultScheduler`],
//! which applies the placement order of the [`Scheduler`] contract over a [`Store`].

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::credential::CredentialOwner;
use crate::failure::Error;
use crate::model::{
    Location, NodeHealth, NodeLifecycle, NodeStatus, ProviderKind, TaskId, VmSize, WorkspaceId,
};
use crate::reservation::{Capacity, Reservation, SlotRejection, check_slot};
use crate::scheduler::{
    NodeChoice, Placement, PlacementDecision, PlacementExplanation, PlacementRequest, Rejected,
    Scheduler,
};
use crate::store::{NodeRecord, PlacementCandidate, Store, WarmClaim};

mod fleet;
mod view;

pub use fleet::FleetIndex;
use view::{Checked, FleetView};

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
    if let Some(location) = request.explicit_location()
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

/// How long [`DefaultScheduler`] trusts its fleet view by default: see
/// [`DefaultScheduler::with_max_staleness`].
///
/// Half a second: under a steady churn every slot freed behind the scheduler's back
/// stays counted as taken until the view is read again, so a longer window makes
/// lookups walk past nodes the view wrongly thinks full; a shorter one pays for the
/// bulk read more often.
pub const DEFAULT_MAX_STALENESS: Duration = Duration::from_millis(500);

/// The least a fleet view is trusted for, in multiples of how long the bulk read
/// that built it took (when the maximum staleness is not zero): however slow the
/// store or starved the host, re-reading the fleet then takes at most a fifth of the
/// scheduler's time. A view's age counts from before its read, so without this a
/// read that takes nearly the staleness would leave a view already stale when built.
const VIEW_LIFETIME_PER_READ: i32 = 4;

/// How long a view whose bulk read (and build) took `took` is trusted, for a
/// scheduler with `max_staleness`: see [`VIEW_LIFETIME_PER_READ`].
fn view_lifetime(max_staleness: chrono::Duration, took: Duration) -> chrono::Duration {
    if max_staleness.is_zero() {
        return max_staleness;
    }
    let floor = chrono::Duration::from_std(took)
        .ok()
        .and_then(|took| took.checked_mul(VIEW_LIFETIME_PER_READ))
        .unwrap_or(chrono::Duration::MAX);
    max_staleness.max(floor)
}

/// How many proposals of the fleet view one decision checks against the store
/// before it reads the whole fleet again (and, after that read, before it takes the
/// proposal as read).
const MAX_CHECKS: usize = 8;

/// The default [`Scheduler`]: preferred node, warm node, best-fit existing node, provision.
///
/// # Existing nodes: a cached fleet view, checked
/// Finding the best-fit running node does not read the fleet per decision. The
/// scheduler keeps, per provider, a [`FleetIndex`] built from one bulk read
/// ([`FleetStore::list_placement_candidates`]) and finds the best fit in it by a range
/// lookup. The view only *proposes*:
/// - the proposed node is read back ([`FleetStore::get_placement_candidate`]: its row, its
///   slot-holding workspaces, and the task it may be held for) and judged by the
///   same [`reject_reason`] before it is returned; when the store says otherwise, the
///   view takes in what was read and looks again (a few times, then it reads the
///   whole fleet again);
/// - "provision a new node" is never decided from an old view: before returning it,
///   the scheduler reads the whole fleet again and looks once more;
/// - after an existing node is chosen, the view counts the request's slot on it
///   until the store shows the task's workspace there, so consecutive decisions do
///   not all pick the same nearly-full node;
/// - the view is read again when it is older than the maximum staleness (by the
///   requests' `now`), so freed room and new nodes are seen; a view whose bulk read
///   took more than a quarter of that is trusted for four times the read's duration
///   instead, so a slow store or a starved host does not spend most of its time
///   re-reading (a zero staleness still reads for every decision).
///
/// The trade-off: within the staleness window a node that became a *tighter* fit
/// (one of its workspaces stopped, or it just started) may be passed over for a
/// looser one. That is still a valid placement (the chosen node was checked against
/// the store), only not the tightest. The store's `reserve_workspace_slot` stays the
/// authority: when it refuses a slot another control plane took first, the runner
/// places the task again, and the check above sees the node as it is now.
///
/// The explanation of an existing-node decision names the nodes found wanting on
/// the way (warm nodes given back, proposals the store contradicted), not every
/// running node; a decision to provision explains the first 16 nodes of the fresh
/// read by `(created_at, id)` one by one and counts the rest.
///
/// [`FleetStore::list_placement_candidates`]: crate::FleetStore::list_placement_candidates
/// [`FleetStore::get_placement_candidate`]: crate::FleetStore::get_placement_candidate
///
/// Clones share the view.
#[derive(Debug, Clone)]
pub struct DefaultScheduler {
    store: Arc<dyn Store>,
    views: Arc<Mutex<HashMap<ProviderKind, FleetView>>>,
    max_staleness: chrono::Duration,
}

impl DefaultScheduler {
    /// A scheduler reading nodes and workspaces from `store`, trusting its fleet view
    /// for [`DEFAULT_MAX_STALENESS`].
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self::with_max_staleness(store, DEFAULT_MAX_STALENESS)
    }

    /// A scheduler that reads the whole fleet again once its view is older than
    /// `max_staleness`; zero reads it for every decision that reaches the
    /// existing-node step. A larger value means fewer bulk reads and a longer window
    /// in which a node that became a tighter fit can be passed over.
    pub fn with_max_staleness(store: Arc<dyn Store>, max_staleness: Duration) -> Self {
        Self {
            store,
            views: Arc::default(),
            max_staleness: chrono::Duration::from_std(max_staleness)
                .unwrap_or(chrono::Duration::MAX),
        }
    }

    /// The views, whose lock is never held across an await.
    fn views(&self) -> MutexGuard<'_, HashMap<ProviderKind, FleetView>> {
        // Every change to a view is complete before the next statement that could
        // panic, so a poisoned view is still consistent.
        self.views
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Reads the whole fleet of `provider` into a new view, trusted for the maximum
    /// staleness or [`VIEW_LIFETIME_PER_READ`] times as long as the read took,
    /// whichever is longer (a zero staleness stays zero).
    async fn refresh(&self, provider: ProviderKind, now: DateTime<Utc>) -> Result<(), Error> {
        let started = tokio::time::Instant::now();
        let candidates = self.store.list_placement_candidates(provider).await?;
        let view = FleetView::new(provider, candidates, now);
        let lifetime = view_lifetime(self.max_staleness, started.elapsed());
        self.views().insert(provider, view.trusted_for(lifetime));
        Ok(())
    }

    /// The best-fit running node for `request`, checked against the store, or `None`
    /// when a fresh read of the fleet has none; rejections found on the way (or, for
    /// `None`, every node's) go to `rejected`.
    async fn existing_node(
        &self,
        request: &PlacementRequest,
        rejected: &mut Vec<Rejected>,
    ) -> Result<Option<Box<NodeRecord>>, Error> {
        let provider = request.provider;
        let stale = {
            let mut views = self.views();
            match views.get_mut(&provider) {
                Some(view) if !view.is_stale(request.now) => {
                    view.forget(&request.task_id);
                    false
                }
                _ => true,
            }
        };
        let mut fresh = false;
        if stale {
            self.refresh(provider, request.now).await?;
            fresh = true;
        }
        let mut checks = 0;
        loop {
            let proposal = self
                .views()
                .get(&provider)
                .and_then(|view| view.propose(request));
            let Some(id) = proposal else {
                if fresh {
                    if let Some(view) = self.views().get(&provider) {
                        rejected.extend(view.rejections(request));
                    }
                    return Ok(None);
                }
                // Never decide to provision from an old view.
                self.refresh(provider, request.now).await?;
                fresh = true;
                continue;
            };
            if checks == MAX_CHECKS {
                // The store keeps contradicting the view (another control plane is
                // busy on the same nodes): read everything again, once.
                // After that the proposal stands on this decision's own fresh read,
                // as a scan of the fleet would; the store's slot check still rules.
                if fresh {
                    let mut views = self.views();
                    let node = views
                        .get_mut(&provider)
                        .and_then(|view| view.accept(&id, request));
                    if node.is_some() {
                        return Ok(node.map(Box::new));
                    }
                    continue;
                }
                self.refresh(provider, request.now).await?;
                fresh = true;
                checks = 0;
                continue;
            }
            checks += 1;
            let read = self.store.get_placement_candidate(&id).await?;
            let mut views = self.views();
            let Some(view) = views.get_mut(&provider) else {
                continue;
            };
            match view.check(&id, read, request) {
                Checked::Fits(node) => return Ok(Some(node)),
                Checked::Rejected(rejection) => rejected.push(rejection),
            }
        }
    }
}

#[async_trait]
impl Scheduler for DefaultScheduler {
    /// Frees the slot in every view that holds it (the view keeps a slot it handed
    /// out under the task until the store shows the task's workspace).
    fn released(&self, task: &TaskId, workspace: &WorkspaceId) {
        for view in self.views().values_mut() {
            view.released(task, workspace);
        }
    }

    async fn place(&self, request: &PlacementRequest) -> Result<PlacementDecision, Error> {
        let mut rejected = Vec::new();

        if let Some(preferred) = &request.preferred_node {
            let Some(PlacementCandidate {
                node, workspaces, ..
            }) = self.store.get_placement_candidate(preferred).await?
            else {
                return Err(Error::InvalidInput {
                    field: "preferred_node",
                    reason: format!("node {preferred} does not exist"),
                });
            };
            let live: Vec<Reservation> = workspaces.iter().map(|w| w.reservation).collect();
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
                node: Some(Box::new(node)),
            });
        }

        // Warm nodes: exact size first in the requested location, then (when the
        // location is not explicit) in any location.
        let mut claim = WarmClaim {
            task_id: request.task_id.clone(),
            provider: request.provider,
            size: request.size,
            location: request.location.clone(),
            credential_owner: request.credential_owner.clone(),
            now: request.now,
        };
        loop {
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
                        node: Some(Box::new(node)),
                    });
                }
                // Too small for the reservation: give it back and say so.
                self.store.release_node_to_warm(&node.id, claim.now).await?;
                rejected.push(Rejected {
                    candidate: node.id.to_string(),
                    reason: format!("warm node {} cannot hold the reservation", node.id),
                });
            }
            if claim.location.is_none() || request.explicit_location().is_some() {
                break;
            }
            claim.location = None;
        }

        let warm_rejections = rejected.len();
        if let Some(node) = self.existing_node(request, &mut rejected).await? {
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
                node: Some(node),
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
                reason: if rejected.len() == warm_rejections {
                    "no running node and no warm node to reuse".to_owned()
                } else {
                    "no running node has room and no warm node matches".to_owned()
                },
                rejected,
            },
            node: None,
        })
    }
}

#[cfg(test)]
mod tests;
