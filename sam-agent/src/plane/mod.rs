//! The control plane's side of the wire: what a control plane runs to manage its
//! nodes, compiled without the `vm` feature.
//!
//! - **The node-agent client** ([`node_client`]): [`HttpNodeAgent`] is the control
//!   plane's [`sam_core::NodeAgent`] over the VM agent's HTTP API.
//! - **Finding nodes** ([`node_directory`], [`node_keys`]): a [`NodeDirectory`]
//!   answers where a node's agent listens ([`ProviderNodeDirectory`],
//!   [`StaticNodeDirectory`]), and [`NodeKeys`] keep the boot tokens that key its
//!   management tokens ([`FileNodeKeys`] with [`KeyedBoot`], [`StoreNodeKeys`]).
//! - **The routes nodes call** ([`routes`]): [`callback_router`] serves the
//!   callbacks over a `sam_core::ControlPlane`, [`git_router`] git's credential and
//!   pull-request routes and the served repository ([`served_repo`]).
//! - **Local nodes** ([`local_boot`]): [`LocalBoot`] renders their user data.

pub mod local_boot;
pub mod node_client;
pub mod node_directory;
pub mod node_keys;
pub mod routes;
pub mod served_repo;

pub use local_boot::LocalBoot;
pub use node_client::{HttpNodeAgent, HttpNodeAgentConfig};
pub use node_directory::{NodeDirectory, NodeEndpoint, ProviderNodeDirectory, StaticNodeDirectory};
pub use node_keys::{FileNodeKeys, KeyedBoot, NodeKeys, StoreNodeKeys};
pub use routes::{
    BOOT_FAILED_BODY_LIMIT, CALLBACK_PATHS, GIT_PATHS, SERVED_REPO_PATH, callback_router,
    git_router,
};
