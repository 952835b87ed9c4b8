//! Resource requirements with provenance, and the checks that enforce them.
//!
//! A task's reservation is resolved from seven layers, highest first:
//! task, trigger, skill, agent profile, project, user, platform.
//! Each field comes from the first layer that sets it (0 counts as set), and the
//! resolved [`Reservation`] records the source of *every* field.
//! Unlike SAM, where the reservation was audit-only, placement enforces it:
//! [`check_slot`] says whether a node can take one more workspace.

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::InvalidInput;
use crate::model::{Catalog, ServerType, VmSize};

/// Minimum resources and tenancy rules; every field optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceRequirements {
    /// Minimum virtual CPUs (fractions allowed: 0.5 is 500 millicores).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_vcpu: Option<f64>,
    /// Minimum memory in GB (1 GB = 1024 MB here, as providers size their plans).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_memory_gb: Option<f64>,
    /// Minimum disk in GB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_disk_gb: Option<f64>,
    /// Whether the workspace needs the node to itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclusive_node: Option<bool>,
    /// The most workspaces the node may hold, this one included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_co_tenants: Option<u32>,
}

/// Largest accepted vCPU request.
pub const MAX_VCPU: f64 = 1024.0;
/// Largest accepted memory or disk request, in GB.
pub const MAX_GB: f64 = 1_048_576.0;
/// Largest accepted co-tenant limit.
pub const MAX_CO_TENANTS: u32 = 1024;

impl ResourceRequirements {
    /// The platform defaults: 2 vCPU, 4 GB, 40 GB, not exclusive, 4 co-tenants.
    pub fn platform_defaults() -> Self {
        Self {
            min_vcpu: Some(2.0),
            min_memory_gb: Some(4.0),
            min_disk_gb: Some(40.0),
            exclusive_node: Some(false),
            max_co_tenants: Some(4),
        }
    }

    /// Checks every set field is finite and in range, naming the first field that is not.
    ///
    /// # Errors
    /// [`InvalidInput`] naming the field.
    pub fn validate(&self) -> Result<(), InvalidInput> {
        let amounts = [
            ("min_vcpu", self.min_vcpu, MAX_VCPU),
            ("min_memory_gb", self.min_memory_gb, MAX_GB),
            ("min_disk_gb", self.min_disk_gb, MAX_GB),
        ];
        for (field, value, max) in amounts {
            if let Some(v) = value
                && !(v.is_finite() && (0.0..=max).contains(&v))
            {
                return Err(InvalidInput {
                    field,
                    reason: format!("{v} is not a number between 0 and {max}"),
                });
            }
        }
        if let Some(n) = self.max_co_tenants
            && !(1..=MAX_CO_TENANTS).contains(&n)
        {
            return Err(InvalidInput {
                field: "max_co_tenants",
                reason: format!("{n} is not between 1 and {MAX_CO_TENANTS}"),
            });
        }
        Ok(())
    }
}

/// Where a setting came from, highest precedence first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Layer {
    /// Set on the task itself.
    Task,
    /// Set by the trigger that created the task.
    Trigger,
    /// Set by the skill the task uses.
    Skill,
    /// Set by the agent profile.
    AgentProfile,
    /// A project default.
    Project,
    /// A user default.
    User,
    /// The platform default.
    Platform,
}

impl Layer {
    /// Every layer, highest precedence first.
    pub const ALL: [Self; 7] = [
        Self::Task,
        Self::Trigger,
        Self::Skill,
        Self::AgentProfile,
        Self::Project,
        Self::User,
        Self::Platform,
    ];

    /// Whether a *size* from this layer is an explicit requirement (task, trigger,
    /// skill, agent profile) rather than a default (project, user, platform).
    ///
    /// Explicit sizes are never downgraded; default-derived sizes may step down.
    /// Locations follow another rule: [`Layer::is_explicit_location`].
    pub const fn is_explicit(self) -> bool {
        matches!(
            self,
            Self::Task | Self::Trigger | Self::Skill | Self::AgentProfile
        )
    }

    /// Whether a *location* from this layer is explicit: set by any layer but the
    /// platform's. An explicit location is never left: placement, warm claims and the
    /// fallback plan all stay in it, and all three ask this one function.
    ///
    /// A size set by a project or user is a default that may step down, since a
    /// smaller machine still does the work. A location is different: a project or user
    /// pins one for data residency, latency or a contract, and a task run elsewhere
    /// breaks that promise without anyone noticing. So only the platform's default
    /// location (its own or the catalog's) may move to find capacity or a running node.
    pub const fn is_explicit_location(self) -> bool {
        !matches!(self, Self::Platform)
    }

    /// The snake_case name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Task => "task",
            Self::Trigger => "trigger",
            Self::Skill => "skill",
            Self::AgentProfile => "agent_profile",
            Self::Project => "project",
            Self::User => "user",
            Self::Platform => "platform",
        }
    }
}

impl fmt::Display for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The requirements each layer sets. The platform layer is always complete: any
/// field it leaves unset takes [`ResourceRequirements::platform_defaults`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RequirementLayers {
    /// Set on the task.
    #[serde(default)]
    pub task: ResourceRequirements,
    /// Set by the trigger.
    #[serde(default)]
    pub trigger: ResourceRequirements,
    /// Set by the skill.
    #[serde(default)]
    pub skill: ResourceRequirements,
    /// Set by the agent profile.
    #[serde(default)]
    pub agent_profile: ResourceRequirements,
    /// Project defaults.
    #[serde(default)]
    pub project: ResourceRequirements,
    /// User defaults.
    #[serde(default)]
    pub user: ResourceRequirements,
    /// Platform overrides of the built-in defaults.
    #[serde(default)]
    pub platform: ResourceRequirements,
}

impl RequirementLayers {
    /// The requirements of one layer.
    pub fn layer(&self, layer: Layer) -> &ResourceRequirements {
        match layer {
            Layer::Task => &self.task,
            Layer::Trigger => &self.trigger,
            Layer::Skill => &self.skill,
            Layer::AgentProfile => &self.agent_profile,
            Layer::Project => &self.project,
            Layer::User => &self.user,
            Layer::Platform => &self.platform,
        }
    }

    /// Mutable access to one layer.
    pub fn layer_mut(&mut self, layer: Layer) -> &mut ResourceRequirements {
        match layer {
            Layer::Task => &mut self.task,
            Layer::Trigger => &mut self.trigger,
            Layer::Skill => &mut self.skill,
            Layer::AgentProfile => &mut self.agent_profile,
            Layer::Project => &mut self.project,
            Layer::User => &mut self.user,
            Layer::Platform => &mut self.platform,
        }
    }
}

/// The layer each resolved field came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ReservationSources {
    /// Source of `cpu_millis`.
    pub vcpu: Layer,
    /// Source of `memory_mb`.
    pub memory: Layer,
    /// Source of `disk_mb`.
    pub disk: Layer,
    /// Source of `exclusive`.
    pub exclusive: Layer,
    /// Source of `max_co_tenants`.
    pub max_co_tenants: Layer,
}

/// The version of the [`Reservation`] JSON written by this crate.
pub const RESERVATION_SCHEMA_VERSION: u32 = 1;

/// A concrete, resolved reservation, persisted on the task at submission.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Reservation {
    /// Version of this record's shape.
    pub schema_version: u32,
    /// CPU in millicores (1 vCPU = 1000).
    pub cpu_millis: u64,
    /// Memory in MB.
    pub memory_mb: u64,
    /// Disk in MB.
    pub disk_mb: u64,
    /// Whether the workspace needs the node to itself.
    pub exclusive: bool,
    /// The most workspaces the node may hold, this one included.
    pub max_co_tenants: u32,
    /// Where each field came from.
    pub sources: ReservationSources,
}

fn millis(vcpu: f64) -> u64 {
    // Validated to be finite and in range; `as` saturates anyway.
    (vcpu * 1000.0).ceil() as u64
}

fn megabytes(gb: f64) -> u64 {
    (gb * 1024.0).ceil() as u64
}

/// Resolves `layers` into a concrete reservation, recording every field's source.
///
/// # Errors
/// [`InvalidInput`] when any layer holds an out-of-range value.
pub fn resolve_reservation(layers: &RequirementLayers) -> Result<Reservation, InvalidInput> {
    for layer in Layer::ALL {
        layers.layer(layer).validate()?;
    }
    let defaults = ResourceRequirements::platform_defaults();
    // The first layer that sets the field wins; the built-in default stands in for
    // whatever the platform layer leaves unset, so the result is always complete.
    fn pick<T: Copy>(
        layers: &RequirementLayers,
        default: &ResourceRequirements,
        field: impl Fn(&ResourceRequirements) -> Option<T>,
    ) -> (T, Layer) {
        Layer::ALL
            .iter()
            .find_map(|&l| field(layers.layer(l)).map(|v| (v, l)))
            .or_else(|| field(default).map(|v| (v, Layer::Platform)))
            .expect("platform defaults set every field")
    }
    let (vcpu, vcpu_src) = pick(layers, &defaults, |r| r.min_vcpu);
    let (memory, memory_src) = pick(layers, &defaults, |r| r.min_memory_gb);
    let (disk, disk_src) = pick(layers, &defaults, |r| r.min_disk_gb);
    let (exclusive, exclusive_src) = pick(layers, &defaults, |r| r.exclusive_node);
    let (co_tenants, co_src) = pick(layers, &defaults, |r| r.max_co_tenants);
    Ok(Reservation {
        schema_version: RESERVATION_SCHEMA_VERSION,
        cpu_millis: millis(vcpu),
        memory_mb: megabytes(memory),
        disk_mb: megabytes(disk),
        exclusive,
        max_co_tenants: co_tenants,
        sources: ReservationSources {
            vcpu: vcpu_src,
            memory: memory_src,
            disk: disk_src,
            exclusive: exclusive_src,
            max_co_tenants: co_src,
        },
    })
}

/// What a node can hold, in the reservation's units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Capacity {
    /// CPU in millicores.
    pub cpu_millis: u64,
    /// Memory in MB.
    pub memory_mb: u64,
    /// Disk in MB; `None` when the catalog does not know it (then disk is not enforced).
    pub disk_mb: Option<u64>,
}

impl Capacity {
    /// The capacity of a catalog server type.
    pub fn of(server_type: &ServerType) -> Self {
        Self {
            cpu_millis: u64::from(server_type.vcpu) * 1000,
            memory_mb: u64::from(server_type.memory_gb) * 1024,
            disk_mb: server_type.disk_gb.map(|gb| u64::from(gb) * 1024),
        }
    }

    /// Whether an empty node of this capacity can hold `reservation`.
    pub fn covers(&self, reservation: &Reservation) -> bool {
        self.cpu_millis >= reservation.cpu_millis
            && self.memory_mb >= reservation.memory_mb
            && self.disk_mb.is_none_or(|d| d >= reservation.disk_mb)
    }
}

/// Why a node cannot take one more workspace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum SlotRejection {
    /// A live workspace on the node holds it exclusively.
    #[error("the node is held exclusively by another workspace")]
    HeldExclusively,
    /// The new workspace needs the node to itself, but it is not empty.
    #[error("the workspace needs a node to itself and this one has {live} workspace(s)")]
    NotEmpty {
        /// Live workspaces on the node.
        live: usize,
    },
    /// A co-tenant limit (the new workspace's or a live one's) would be exceeded.
    #[error("the node would hold {would_hold} workspaces, over a co-tenant limit of {limit}")]
    TooManyTenants {
        /// Workspaces the node would hold.
        would_hold: usize,
        /// The tightest limit among the live and new workspaces.
        limit: u32,
    },
    /// Not enough CPU, memory or disk left.
    #[error("not enough {resource}: {needed} needed, {free} free of {total}")]
    Insufficient {
        /// `"cpu_millis"`, `"memory_mb"` or `"disk_mb"`.
        resource: Cow<'static, str>,
        /// What the new workspace needs.
        needed: u64,
        /// What is left after live reservations.
        free: u64,
        /// The node's capacity.
        total: u64,
    },
}

/// Whether a node of `capacity`, already holding `live`, can take `new`.
///
/// This is the one rule every placement and every store's slot reservation applies:
/// capacity minus live reservations must cover the new one, an exclusive workspace
/// is alone, and no workspace's `max_co_tenants` is exceeded.
///
/// # Errors
/// The first [`SlotRejection`] that applies.
pub fn check_slot(
    capacity: &Capacity,
    live: &[Reservation],
    new: &Reservation,
) -> Result<(), SlotRejection> {
    if live.iter().any(|r| r.exclusive) {
        return Err(SlotRejection::HeldExclusively);
    }
    if new.exclusive && !live.is_empty() {
        return Err(SlotRejection::NotEmpty { live: live.len() });
    }
    let would_hold = live.len() + 1;
    let limit = live
        .iter()
        .chain(std::iter::once(new))
        .map(|r| r.max_co_tenants)
        .min()
        .unwrap_or(u32::MAX);
    if would_hold > limit as usize {
        return Err(SlotRejection::TooManyTenants { would_hold, limit });
    }
    let used = |f: fn(&Reservation) -> u64| live.iter().map(f).fold(0u64, u64::saturating_add);
    // A fixed array, not a vector: placement calls this once per candidate node, and
    // a rule that allocates on every call would dominate a placement over a big fleet.
    let checks = [
        Some((
            "cpu_millis",
            capacity.cpu_millis,
            used(|r| r.cpu_millis),
            new.cpu_millis,
        )),
        Some((
            "memory_mb",
            capacity.memory_mb,
            used(|r| r.memory_mb),
            new.memory_mb,
        )),
        capacity
            .disk_mb
            .map(|disk| ("disk_mb", disk, used(|r| r.disk_mb), new.disk_mb)),
    ];
    for (resource, total, used, needed) in checks.into_iter().flatten() {
        let free = total.saturating_sub(used);
        if needed > free {
            return Err(SlotRejection::Insufficient {
                resource: Cow::Borrowed(resource),
                needed,
                free,
                total,
            });
        }
    }
    Ok(())
}

/// No catalog size can hold a reservation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "no {provider} size can hold {vcpu} vCPU, {memory_gb} GB memory and {disk_gb} GB disk; the largest is {largest}"
)]
pub struct NoSizeFits {
    /// The provider whose catalog was searched.
    pub provider: crate::model::ProviderKind,
    /// Requested vCPU, as text (`"2"`, `"0.5"`).
    pub vcpu: String,
    /// Requested memory in GB, as text.
    pub memory_gb: String,
    /// Requested disk in GB, as text.
    pub disk_gb: String,
    /// Description of the largest size the catalog offers.
    pub largest: String,
}

/// The smallest catalog size whose server type can hold `reservation` on an empty node.
///
/// # Errors
/// [`NoSizeFits`] naming the request and the largest size on offer.
pub fn smallest_size(
    catalog: &Catalog,
    reservation: &Reservation,
) -> Result<(VmSize, ServerType), NoSizeFits> {
    VmSize::ALL
        .iter()
        .find_map(|&size| {
            let t = catalog.server_type(size)?;
            Capacity::of(t)
                .covers(reservation)
                .then(|| (size, t.clone()))
        })
        .ok_or_else(|| {
            let largest = VmSize::ALL
                .iter()
                .rev()
                .find_map(|&s| catalog.server_type(s).map(|t| (s, t)))
                .map_or_else(
                    || "none (the catalog maps no sizes)".to_owned(),
                    |(s, t)| format!("{s} ({}: {} vCPU, {} GB)", t.name, t.vcpu, t.memory_gb),
                );
            NoSizeFits {
                provider: catalog.provider,
                vcpu: trim_float(reservation.cpu_millis as f64 / 1000.0),
                memory_gb: trim_float(reservation.memory_mb as f64 / 1024.0),
                disk_gb: trim_float(reservation.disk_mb as f64 / 1024.0),
                largest,
            }
        })
}

fn trim_float(v: f64) -> String {
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

#[cfg(test)]
mod tests;
