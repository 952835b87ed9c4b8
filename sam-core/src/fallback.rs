//! The size and location fallback plan: which `(size, location)` to try, in order.
//!
//! The plan is computed here, never inside a provider.
//! Sizes descend only when the size was default-derived (project, user or platform),
//! never below the smallest size that holds the reservation, and never when descent
//! is switched off. Locations move only when the location was not explicit: only the
//! platform's default moves ([`Layer::is_explicit_location`], the rule placement and
//! warm claims follow too).
//! On `transient_capacity` the runner moves to the next entry; after a full pass it
//! backs off and starts again; any other category stops the plan at once.

use serde::{Deserialize, Serialize};

use crate::error::ErrorCategory;
use crate::model::{Catalog, Location, ProviderKind, VmSize};
use crate::reservation::{Capacity, Layer, NoSizeFits, Reservation, smallest_size};

/// Whether a default-derived size may step down. `Disabled` is the operator's kill switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SizeDescent {
    /// A default-derived size may step down (large → medium → small).
    #[default]
    Allowed,
    /// Only the requested size is tried.
    Disabled,
}

/// What the plan is built from.
#[derive(Debug, Clone)]
pub struct PlanRequest<'a> {
    /// The provider's catalog.
    pub catalog: &'a Catalog,
    /// The requested size.
    pub size: VmSize,
    /// Where the size came from; explicit layers never descend.
    pub size_source: Layer,
    /// The requested location; `None` uses the catalog's default.
    pub location: Option<Location>,
    /// Where the location came from; only a platform default may move
    /// ([`Layer::is_explicit_location`]).
    pub location_source: Layer,
    /// The resolved reservation the VM must hold.
    pub reservation: &'a Reservation,
    /// The descent kill switch.
    pub descent: SizeDescent,
}

/// One attempt of the plan.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Attempt {
    /// The provider-neutral size.
    pub size: VmSize,
    /// The concrete server type for that size.
    pub server_type: String,
    /// Where to create it.
    pub location: Location,
}

/// An ordered list of attempts, largest size first, each size's locations in
/// preference order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FallbackPlan {
    attempts: Vec<Attempt>,
    requested: VmSize,
    explicit_size: bool,
}

/// A plan that cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PlanError {
    /// An explicitly requested size is too small for the reservation.
    #[error(
        "the requested size {size} ({server_type}) cannot hold the reservation; request a larger size or lower the requirements"
    )]
    ExplicitSizeTooSmall {
        /// The requested size.
        size: VmSize,
        /// Its server type.
        server_type: String,
    },
    /// The catalog has no server type for the size.
    #[error("{provider} has no server type for size {size}")]
    SizeNotInCatalog {
        /// The provider.
        provider: ProviderKind,
        /// The size.
        size: VmSize,
    },
    /// An explicit location does not offer the requested size.
    #[error("{server_type} is not offered in {location}")]
    LocationNotOffered {
        /// The server type.
        server_type: String,
        /// The location.
        location: Location,
    },
    /// No location is known for any planned size.
    #[error("no location offers any size that holds the reservation")]
    NoLocation,
    /// No size holds the reservation.
    #[error(transparent)]
    NoSizeFits(#[from] NoSizeFits),
}

/// What to do after an attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlanStep {
    /// Try the attempt at this index next.
    Next(usize),
    /// Every entry failed for capacity in this pass: back off, then start at 0.
    EndOfPass,
    /// A non-capacity failure: stop the plan with that error.
    Stop,
}

impl PlanRequest<'_> {
    /// The requested location when it is explicit ([`Layer::is_explicit_location`]):
    /// then every attempt is in it.
    pub fn explicit_location(&self) -> Option<&Location> {
        self.location
            .as_ref()
            .filter(|_| self.location_source.is_explicit_location())
    }
}

impl FallbackPlan {
    /// Builds the plan.
    ///
    /// # Errors
    /// [`PlanError`] when the request cannot be planned: an explicit size too small
    /// for the reservation, a size or explicit location the catalog lacks, or no
    /// size that holds the reservation at all.
    pub fn new(request: &PlanRequest<'_>) -> Result<Self, PlanError> {
        let catalog = request.catalog;
        let explicit_size = request.size_source.is_explicit();
        let requested_type =
            catalog
                .server_type(request.size)
                .ok_or(PlanError::SizeNotInCatalog {
                    provider: catalog.provider,
                    size: request.size,
                })?;
        let (smallest, _) = smallest_size(catalog, request.reservation)?;

        let sizes: Vec<VmSize> = if explicit_size {
            if !Capacity::of(requested_type).covers(request.reservation) {
                return Err(PlanError::ExplicitSizeTooSmall {
                    size: request.size,
                    server_type: requested_type.name.clone(),
                });
            }
            vec![request.size]
        } else {
            // A default below what the reservation needs starts at the smallest size
            // that holds it; descent never goes below that size.
            let start = request.size.max(smallest);
            match request.descent {
                SizeDescent::Disabled => vec![start],
                SizeDescent::Allowed => VmSize::ALL
                    .iter()
                    .rev()
                    .copied()
                    .filter(|s| *s <= start && *s >= smallest)
                    .filter(|s| {
                        catalog
                            .server_type(*s)
                            .is_some_and(|t| Capacity::of(t).covers(request.reservation))
                    })
                    .collect(),
            }
        };

        let explicit_location = request.explicit_location();
        let preferred = request
            .location
            .as_ref()
            .or(catalog.default_location.as_ref());

        let mut attempts = Vec::new();
        for size in sizes {
            let Some(server_type) = catalog.server_type(size) else {
                continue;
            };
            let offered = &server_type.locations;
            let locations: Vec<&Location> = match explicit_location {
                Some(loc) if offered.contains(loc) => vec![loc],
                Some(loc) if size == request.size || explicit_size => {
                    return Err(PlanError::LocationNotOffered {
                        server_type: server_type.name.clone(),
                        location: loc.clone(),
                    });
                }
                Some(_) => Vec::new(),
                None => preferred
                    .filter(|p| offered.contains(p))
                    .into_iter()
                    .chain(offered.iter().filter(|l| Some(*l) != preferred))
                    .collect(),
            };
            attempts.extend(locations.into_iter().map(|location| Attempt {
                size,
                server_type: server_type.name.clone(),
                location: location.clone(),
            }));
        }
        if attempts.is_empty() {
            return Err(PlanError::NoLocation);
        }
        Ok(Self {
            attempts,
            requested: request.size,
            explicit_size,
        })
    }

    /// The attempts, in order.
    pub fn attempts(&self) -> &[Attempt] {
        &self.attempts
    }

    /// The size that was requested.
    pub fn requested_size(&self) -> VmSize {
        self.requested
    }

    /// Whether the requested size was explicit (the plan then holds only that size).
    pub fn is_explicit_size(&self) -> bool {
        self.explicit_size
    }

    /// The distinct sizes of the plan, largest first.
    pub fn sizes(&self) -> Vec<VmSize> {
        let mut sizes: Vec<VmSize> = Vec::new();
        for a in &self.attempts {
            if !sizes.contains(&a.size) {
                sizes.push(a.size);
            }
        }
        sizes
    }

    /// What to do after attempt `index` failed with `category`.
    pub fn after_failure(&self, index: usize, category: ErrorCategory) -> PlanStep {
        if category != ErrorCategory::TransientCapacity {
            PlanStep::Stop
        } else if index + 1 < self.attempts.len() {
            PlanStep::Next(index + 1)
        } else {
            PlanStep::EndOfPass
        }
    }

    /// The user-facing message when every attempt ran out of capacity.
    ///
    /// "There were no large machines available." for a one-size plan;
    /// "No capacity for any available VM size (tried large, medium, small)." otherwise.
    pub fn exhausted_message(&self) -> String {
        let sizes = self.sizes();
        match sizes.as_slice() {
            [one] => format!("There were no {one} machines available."),
            many => format!(
                "No capacity for any available VM size (tried {}).",
                many.iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}

#[cfg(test)]
mod tests;
