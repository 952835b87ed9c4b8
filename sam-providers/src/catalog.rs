//! The providers' catalogs and the one size formatter every surface uses.
//!
//! Prices are `None` throughout: no sourced list price is recorded here, and the
//! formatter says "price unknown" rather than inventing one.

use std::fmt::{self, Write};

use sam_core::{Catalog, Location, Price, ProviderKind, ServerType, VmSize};

/// A server type as `(name, vCPU, memory GB, disk GB)`.
type Row = (&'static str, u32, u32, u32);

/// The catalog of `provider` with its locations.
///
/// Hetzner and Scaleway list the locations SAM's catalogs offer. GCP lists no zone
/// of its own: pass the configured zones, which [`crate::GcpProvider`] does.
/// The local and fake catalogs carry nominal capacities (they run on this machine or
/// nowhere): placement reserves by them, and the formatter shows them as nominal.
pub fn catalog(provider: ProviderKind, locations: &[Location]) -> Catalog {
    let (types, default_locations): (&[Row], &[&str]) = match provider {
        ProviderKind::Hetzner => (
            &[("cx23", 2, 4, 40), ("cx33", 4, 8, 80), ("cx43", 8, 16, 160)],
            &["fsn1", "nbg1", "hel1", "ash", "hil"],
        ),
        ProviderKind::Scaleway => (
            &[
                ("DEV1-M", 3, 4, 40),
                ("DEV1-XL", 4, 12, 120),
                ("GP1-S", 8, 32, 600),
            ],
            &[
                "fr-par-1", "fr-par-2", "fr-par-3", "nl-ams-1", "nl-ams-2", "nl-ams-3", "pl-waw-1",
                "pl-waw-2",
            ],
        ),
        ProviderKind::Gcp => (
            &[
                ("e2-medium", 1, 4, 50),
                ("e2-standard-2", 2, 8, 50),
                ("e2-standard-4", 4, 16, 50),
            ],
            &[],
        ),
        // A VM of its own on this machine: what QEMU is told is what the guest gets.
        // Medium holds the platform's default reservation (2 vCPU, 4 GB, 40 GB): a
        // smaller medium would make every default task a large one.
        ProviderKind::Qemu => (
            &[
                ("qemu-small", 1, 2, 20),
                ("qemu-medium", 2, 4, 40),
                ("qemu-large", 4, 8, 80),
            ],
            &["local"],
        ),
        ProviderKind::Local | ProviderKind::Fake => (
            &[
                ("local-small", 2, 4, 40),
                ("local-medium", 4, 8, 80),
                ("local-large", 8, 16, 160),
            ],
            &["local"],
        ),
    };
    let locations: Vec<Location> = if locations.is_empty() {
        default_locations
            .iter()
            .filter_map(|l| Location::new(*l).ok())
            .collect()
    } else {
        locations.to_vec()
    };
    let server_types: Vec<ServerType> = types
        .iter()
        .map(|(name, vcpu, memory_gb, disk_gb)| ServerType {
            name: (*name).to_owned(),
            vcpu: *vcpu,
            memory_gb: *memory_gb,
            disk_gb: Some(*disk_gb),
            price: None,
            locations: locations.clone(),
        })
        .collect();
    let sizes = VmSize::ALL
        .into_iter()
        .zip(server_types.iter().map(|t| t.name.clone()))
        .collect();
    Catalog {
        provider,
        server_types,
        sizes,
        default_location: locations.first().cloned(),
    }
}

/// How a size is shown to people: one formatter for the CLI, the server and the docs.
///
/// ```
/// use sam_core::{Price, ServerType, VmSize, ProviderKind};
/// use sam_providers::SizeDisplay;
///
/// let cx33 = ServerType {
///     name: "cx33".into(), vcpu: 4, memory_gb: 8, disk_gb: Some(80),
///     price: Some(Price { monthly: 7.49, currency: "EUR".into() }), locations: vec![],
/// };
/// let shown = SizeDisplay::new(ProviderKind::Hetzner, VmSize::Medium, Some(&cx33));
/// assert_eq!(shown.inline(), "cx33 · 4 vCPU · 8 GB RAM · 80 GB disk · €7.49/mo");
/// ```
#[derive(Debug, Clone, Copy)]
pub struct SizeDisplay<'a> {
    provider: ProviderKind,
    size: VmSize,
    server_type: Option<&'a ServerType>,
}

/// What the formatter says when it does not know a server's exact specs.
pub const SPECS_UNAVAILABLE: &str = "exact specs unavailable";

/// What the formatter says of a local node's capacity: what placement reserves by,
/// not what the node gets to itself.
pub const NOMINAL: &str = "nominal: nodes share this machine";

impl<'a> SizeDisplay<'a> {
    /// A size, with the server type it maps to if known.
    pub fn new(provider: ProviderKind, size: VmSize, server_type: Option<&'a ServerType>) -> Self {
        Self {
            provider,
            size,
            server_type,
        }
    }

    /// A size as the given catalog maps it.
    pub fn from_catalog(catalog: &'a Catalog, size: VmSize) -> Self {
        Self::new(catalog.provider, size, catalog.server_type(size))
    }

    /// The exact server type, when the provider's specs are known.
    fn exact(&self) -> Option<&'a ServerType> {
        match self.provider {
            ProviderKind::Hetzner
            | ProviderKind::Scaleway
            | ProviderKind::Gcp
            | ProviderKind::Qemu => self.server_type,
            ProviderKind::Local | ProviderKind::Fake => None,
        }
    }

    /// One line: `cx33 · 4 vCPU · 8 GB RAM · 80 GB disk · €7.49/mo`; a local node's
    /// nominal capacity as `local-small · 2 vCPU · 4 GB RAM · 40 GB disk (nominal:
    /// nodes share this machine)`.
    pub fn inline(&self) -> String {
        let Some(t) = self.exact() else {
            return match self.server_type {
                Some(t) => format!(
                    "{} · {} vCPU · {} GB RAM{} ({NOMINAL})",
                    t.name,
                    t.vcpu,
                    t.memory_gb,
                    t.disk_gb
                        .map_or_else(String::new, |gb| format!(" · {gb} GB disk"))
                ),
                None => format!("{} · {SPECS_UNAVAILABLE}", self.size.as_str()),
            };
        };
        let mut out = format!("{} · {} vCPU · {} GB RAM · ", t.name, t.vcpu, t.memory_gb);
        match t.disk_gb {
            Some(disk) => {
                let _ = write!(out, "{disk} GB disk");
            }
            None => out.push_str("disk size unknown"),
        }
        out.push_str(" · ");
        match &t.price {
            Some(price) => {
                let _ = write!(out, "{}/mo", Money(price));
            }
            None => out.push_str("price unknown"),
        }
        out
    }

    /// Several lines: size, provider, server type, CPU, memory, disk, price, locations.
    pub fn detail(&self) -> String {
        let mut out = format!(
            "Size: {}\nProvider: {}\n",
            self.size,
            self.provider.display_name()
        );
        let Some(t) = self.exact() else {
            match self.server_type {
                Some(t) => {
                    let _ = write!(
                        out,
                        "Server type: {}\nSpecs: {} vCPU, {} GB RAM{} ({NOMINAL})",
                        t.name,
                        t.vcpu,
                        t.memory_gb,
                        t.disk_gb
                            .map_or_else(String::new, |gb| format!(", {gb} GB disk"))
                    );
                }
                None => {
                    let _ = write!(out, "Specs: {SPECS_UNAVAILABLE}");
                }
            }
            return out;
        };
        let disk = t
            .disk_gb
            .map_or_else(|| "unknown".to_owned(), |d| format!("{d} GB"));
        let price = t.price.as_ref().map_or_else(
            || "unknown".to_owned(),
            |p| format!("{} per month", Money(p)),
        );
        let locations: Vec<&str> = t.locations.iter().map(Location::as_str).collect();
        let locations = if locations.is_empty() {
            "unknown".to_owned()
        } else {
            locations.join(", ")
        };
        let _ = write!(
            out,
            "Server type: {}\nvCPU: {}\nMemory: {} GB\nDisk: {disk}\nPrice: {price}\nLocations: {locations}",
            t.name, t.vcpu, t.memory_gb
        );
        out
    }
}

impl fmt::Display for SizeDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.inline())
    }
}

/// A price with its currency symbol: `€7.49`, `$3.00`, `12.00 CHF`.
struct Money<'a>(&'a Price);

impl fmt::Display for Money<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let amount = self.0.monthly;
        match self.0.currency.as_str() {
            "EUR" => write!(f, "€{amount:.2}"),
            "USD" => write!(f, "${amount:.2}"),
            other => write!(f, "{amount:.2} {other}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalogs_hold_the_design_facts() {
        let check = |provider, size, expected: (&str, u32, u32, u32)| {
            let catalog = catalog(provider, &[]);
            let t = catalog.server_type(size).expect("size is mapped");
            assert_eq!(
                (t.name.as_str(), t.vcpu, t.memory_gb, t.disk_gb.unwrap_or(0)),
                expected
            );
            assert_eq!(t.price, None, "no sourced price");
        };
        check(ProviderKind::Hetzner, VmSize::Small, ("cx23", 2, 4, 40));
        check(ProviderKind::Hetzner, VmSize::Medium, ("cx33", 4, 8, 80));
        check(ProviderKind::Hetzner, VmSize::Large, ("cx43", 8, 16, 160));
        check(ProviderKind::Scaleway, VmSize::Small, ("DEV1-M", 3, 4, 40));
        check(
            ProviderKind::Scaleway,
            VmSize::Medium,
            ("DEV1-XL", 4, 12, 120),
        );
        check(ProviderKind::Scaleway, VmSize::Large, ("GP1-S", 8, 32, 600));
        check(ProviderKind::Gcp, VmSize::Small, ("e2-medium", 1, 4, 50));
        check(
            ProviderKind::Gcp,
            VmSize::Medium,
            ("e2-standard-2", 2, 8, 50),
        );
        check(
            ProviderKind::Gcp,
            VmSize::Large,
            ("e2-standard-4", 4, 16, 50),
        );
        assert_eq!(
            catalog(ProviderKind::Hetzner, &[]).server_types[0]
                .locations
                .len(),
            5
        );
        assert_eq!(
            catalog(ProviderKind::Scaleway, &[]).server_types[0]
                .locations
                .len(),
            8
        );
        let zone = Location::new("europe-west1-b").expect("valid");
        let gcp = catalog(ProviderKind::Gcp, std::slice::from_ref(&zone));
        assert_eq!(gcp.default_location, Some(zone));
    }

    #[test]
    fn every_medium_holds_the_platforms_default_reservation() {
        // Warm nodes are claimed by the size a task asks for (medium by default); a
        // medium that cannot hold the default reservation is provisioned as a larger
        // size, which no later default task claims. Found on QEMU, whose medium
        // had 2 GB.
        let reservation = sam_core::resolve_reservation(&Default::default()).expect("defaults");
        for provider in ProviderKind::ALL {
            let catalog = catalog(provider, &[]);
            let medium = catalog
                .server_type(VmSize::Medium)
                .expect("medium is mapped");
            assert!(
                sam_core::Capacity::of(medium).covers(&reservation),
                "{provider}'s medium ({}) cannot hold {reservation:?}",
                medium.name
            );
        }
    }

    #[test]
    fn formatter() {
        let hetzner = catalog(ProviderKind::Hetzner, &[]);
        let shown = SizeDisplay::from_catalog(&hetzner, VmSize::Medium);
        assert_eq!(
            shown.inline(),
            "cx33 · 4 vCPU · 8 GB RAM · 80 GB disk · price unknown"
        );
        assert!(
            shown
                .detail()
                .contains("Locations: fsn1, nbg1, hel1, ash, hil")
        );
        let local = catalog(ProviderKind::Local, &[]);
        assert_eq!(
            SizeDisplay::from_catalog(&local, VmSize::Small).inline(),
            "local-small · 2 vCPU · 4 GB RAM · 40 GB disk (nominal: nodes share this machine)"
        );
        assert!(
            SizeDisplay::from_catalog(&local, VmSize::Small)
                .detail()
                .ends_with(
                    "Specs: 2 vCPU, 4 GB RAM, 40 GB disk (nominal: nodes share this machine)"
                )
        );
        let unmapped = SizeDisplay::new(ProviderKind::Gcp, VmSize::Large, None);
        assert_eq!(unmapped.inline(), "large · exact specs unavailable");
        assert!(
            unmapped
                .detail()
                .ends_with("Specs: exact specs unavailable")
        );
        let priced = ServerType {
            price: Some(Price {
                monthly: 12.0,
                currency: "CHF".into(),
            }),
            disk_gb: None,
            ..hetzner.server_types[0].clone()
        };
        assert_eq!(
            SizeDisplay::new(ProviderKind::Hetzner, VmSize::Small, Some(&priced)).to_string(),
            "cx23 · 2 vCPU · 4 GB RAM · disk size unknown · 12.00 CHF/mo"
        );
    }
}
