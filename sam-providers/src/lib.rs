//! # sam-providers
//!
//! Provider backends of the SAM SDK: thin clients that translate a [`VmSpec`](sam_core::VmSpec) into a
//! provider's API calls and classify every failure once, at the HTTP edge, into an
//! [`ErrorCategory`]. They never retry, sleep or fall back to another size: the
//! policies in `sam-core` wrap any backend.
//!
//! - [`HetznerProvider`], [`ScalewayProvider`], [`GcpProvider`]: REST clients for
//!   Hetzner Cloud, Scaleway Instances and Google Compute Engine, configured by
//!   [`HetznerConfig`], [`ScalewayConfig`], [`GcpConfig`]. Each instance builds its
//!   own HTTP client (rustls, 30 s timeout) when it is constructed.
//! - [`GithubApp`]: the GitHub App client (installation tokens, pull requests), the
//!   control plane's [`sam_core::RepositoryHost`], configured by [`GithubAppConfig`].
//! - [`LocalProvider`]: runs each node as a local process with its own loopback port
//!   and data directory; its state survives a restart of the control plane.
//! - [`QemuProvider`]: runs each node as a QEMU virtual machine on this machine,
//!   booted from cloud-init user data like a cloud node; [`qemu::image`] builds its
//!   base image from Debian's packages.
//! - [`stop_nodes`]: stops every node the local or QEMU provider started under a
//!   root directory (`sam down`).
//! - [`FakeProvider`]: in memory, scripted per call, recording every call.
//! - [`CloudProviderFactory`] and [`FakeProviderFactory`]: the
//!   [`sam_core::ProviderFactory`]s that build a provider from a user's or project's
//!   own credential, so their tasks' VMs are made in their account.
//! - [`classify_http_error`]: the classification every backend uses, public for
//!   embedding programs; [`classify_error_text`] classifies an error as it reached a
//!   caller (an Operation's error, or what an SDK or a CLI rendered of a body).
//! - [`catalog()`] and [`SizeDisplay`]: the providers' catalogs and the one size
//!   formatter.
//!
//! ## Features
//! - `hetzner`, `scaleway`, `gcp` (default): the cloud backends; `github` (default):
//!   the GitHub App client; `qemu` (default): the QEMU provider. Without them the
//!   crate builds with no HTTP client at all; the fake and local providers and the
//!   classifiers are always there.
//!
//! ## Example
//! Create a VM against the fake provider, then see how a stock-out is classified:
//! ```
//! use sam_core::{ErrorCategory, Labels, Location, NodeId, Provider, VmSize, VmSpec, VmState};
//! use sam_providers::{FakeOutcome, FakeOp, FakeProvider, ProviderKind, classify_http_error};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let fake = FakeProvider::new();
//! // The second create will find the size out of stock.
//! fake.script(FakeOp::CreateVm, [FakeOutcome::Succeed, FakeOutcome::Fail(ErrorCategory::TransientCapacity)]);
//!
//! let node = NodeId::new("node-1").unwrap();
//! let spec = VmSpec {
//!     node_id: node.clone(),
//!     name: "sam-node-1".into(),
//!     size: VmSize::Small,
//!     server_type: "local-small".into(),
//!     location: Location::new("local").unwrap(),
//!     image: None,
//!     user_data: "#cloud-config\n".into(),
//!     labels: Labels::for_node(&node),
//! };
//! let vm = fake.create_vm(&spec).await.unwrap();
//! assert_eq!(fake.poll_create(&vm).await.unwrap().state, VmState::Running);
//! let error = fake.create_vm(&spec).await.unwrap_err();
//! assert_eq!(error.category(), ErrorCategory::TransientCapacity);
//! assert_eq!(fake.calls().len(), 3);
//!
//! // The same decision from a real Hetzner response body.
//! let body = r#"{"error":{"code":"resource_unavailable","message":"server location disabled"}}"#;
//! let error = classify_http_error(ProviderKind::Hetzner, 412, body);
//! assert_eq!(error.category(), ErrorCategory::TransientCapacity);
//! assert!(!error.is_retryable()); // the fallback plan moves on instead
//! # });
//! ```

mod catalog;
mod classify;
mod error;
mod factory;
mod fake;
mod gcp;
#[cfg(feature = "github")]
mod github;
mod hetzner;
#[cfg(feature = "http")]
mod http;
#[cfg(feature = "jwt")]
mod jwt;
mod local;
mod process;
#[cfg(feature = "qemu")]
pub mod qemu;
mod scaleway;

pub use catalog::{NOMINAL, SPECS_UNAVAILABLE, SizeDisplay, catalog};
pub use classify::{classify_error_text, classify_http_error};
pub use error::{Error, Result};
pub use factory::{CloudProviderFactory, FakeProviderFactory};
pub use fake::{FakeCall, FakeOp, FakeOutcome, FakeProvider};
#[cfg(feature = "gcp")]
pub use gcp::{GcpConfig, GcpProvider, GcpServiceAccount};
#[cfg(feature = "github")]
pub use github::{
    GithubApp, GithubAppConfig, INSTALLATION_TOKEN_USER, InstallationAccount, InstallationInfo,
};
#[cfg(feature = "hetzner")]
pub use hetzner::{HetznerConfig, HetznerProvider};
#[cfg(feature = "http")]
pub use http::REQUEST_TIMEOUT;
pub use local::{LocalConfig, LocalProvider};
pub use process::stop_nodes;
#[cfg(feature = "qemu")]
pub use qemu::{QemuConfig, QemuProvider};
pub use sam_core::{ErrorCategory, ProviderError, ProviderKind};
#[cfg(feature = "scaleway")]
pub use scaleway::{ScalewayConfig, ScalewayProvider};

use sam_core::{Labels, Location, VmId};

/// Reads a required environment variable for a config's `from_env`.
#[cfg_attr(not(feature = "cloud"), allow(dead_code))]
fn env_var(provider: ProviderKind, var: &'static str) -> Result<String> {
    match std::env::var(var) {
        Ok(value) if !value.trim().is_empty() => Ok(value),
        _ => Err(Error::config(
            provider,
            var,
            "is not set in the environment",
        )),
    }
}

/// Checks that a base URL is an absolute http(s) URL.
#[cfg_attr(not(feature = "cloud"), allow(dead_code))]
fn check_base_url(provider: ProviderKind, url: &str) -> Result<()> {
    let ok = (url.starts_with("https://") || url.starts_with("http://")) && !url.ends_with('/');
    if ok {
        Ok(())
    } else {
        Err(Error::config(
            provider,
            "base_url",
            format!("{url:?} must start with http:// or https:// and have no trailing '/'"),
        ))
    }
}

/// A provider's VM id, or an `unknown` error naming what the provider sent.
fn vm_id(provider: ProviderKind, value: String) -> Result<VmId, ProviderError> {
    VmId::new(value).map_err(|e| {
        ProviderError::new(
            provider,
            ErrorCategory::Unknown,
            "the provider sent an unusable VM id",
        )
        .with_source(e)
    })
}

/// A provider's location name, or an `unknown` error.
#[cfg_attr(not(feature = "cloud"), allow(dead_code))]
fn location(provider: ProviderKind, value: &str) -> Result<Location, ProviderError> {
    Location::new(value).map_err(|e| {
        ProviderError::new(
            provider,
            ErrorCategory::Unknown,
            "the provider sent an unusable location",
        )
        .with_source(e)
    })
}

/// The labels of a VM as a provider reports them, keeping only those the SDK's label
/// rules accept (VMs made by other tools may carry others).
#[cfg_attr(not(feature = "cloud"), allow(dead_code))]
fn lossy_labels(pairs: impl IntoIterator<Item = (String, String)>) -> Labels {
    let mut labels = Labels::new();
    for (key, value) in pairs {
        // A label outside the SDK's rules was not set by the SDK; skip it.
        let _ = labels.insert(&key, &value);
    }
    labels
}
