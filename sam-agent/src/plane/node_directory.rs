//! Where the control plane finds a node's agent: a [`NodeDirectory`] answers each
//! node's [`NodeEndpoint`] (its address, and the key of its management tokens).
//! [`StaticNodeDirectory`] is a map for tests and small embeddings;
//! [`ProviderNodeDirectory`] reads the address recorded for the node (or asks its
//! provider) and the key from [`NodeKeys`].

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use sam_core::{ErrorCategory, NodeAgentError, NodeId, NodeRecord, Secret, redact};
use url::Url;

use super::node_keys::NodeKeys;

/// Where a node's agent listens and how to sign its management tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeEndpoint {
    /// The agent's base URL (`http://203.0.113.7:8080/`).
    pub base_url: Url,
    /// The node token the node booted with: the key of its management tokens
    /// ([`crate::wire::management_signer`]).
    pub management_key: Secret,
}

/// Finds a node's [`NodeEndpoint`].
///
/// # Contract
/// `Ok(None)` means the node cannot be reached yet (no address while it boots); it
/// is not an error.
#[async_trait]
pub trait NodeDirectory: Send + Sync + std::fmt::Debug {
    /// The endpoint of `node`'s agent.
    ///
    /// # Errors
    /// When the lookup itself fails (a provider call, say), classified.
    async fn endpoint(&self, node: &NodeRecord) -> Result<Option<NodeEndpoint>, NodeAgentError>;
}

/// A [`NodeDirectory`] from a map, filled by its owner.
#[derive(Debug, Default)]
pub struct StaticNodeDirectory {
    endpoints: RwLock<HashMap<NodeId, NodeEndpoint>>,
}

impl StaticNodeDirectory {
    /// An empty directory.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records (or replaces) `node`'s endpoint.
    pub fn insert(&self, node: NodeId, endpoint: NodeEndpoint) {
        self.endpoints
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(node, endpoint);
    }

    /// Forgets `node`.
    pub fn remove(&self, node: &NodeId) {
        self.endpoints
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(node);
    }
}

#[async_trait]
impl NodeDirectory for StaticNodeDirectory {
    async fn endpoint(&self, node: &NodeRecord) -> Result<Option<NodeEndpoint>, NodeAgentError> {
        Ok(self
            .endpoints
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&node.id)
            .cloned())
    }
}

/// A classified failure of a node-agent call, its message redacted.
pub(super) fn failure(category: ErrorCategory, message: &str) -> NodeAgentError {
    NodeAgentError {
        category,
        message: redact(message).into_owned(),
    }
}

/// A [`NodeDirectory`] that reaches a node at the address recorded when its VM ran
/// ([`NodeRecord::address`]) and finds its management key in [`NodeKeys`].
/// Only a node without a recorded address (a row from before the address was kept)
/// is looked up through its provider ([`sam_core::VmInstance::address`]), and only
/// when it is in the platform's account: a node made with a user's or project's own
/// provider credential lives in their account, which the platform's providers
/// cannot see.
///
/// An address with a port (`127.0.0.1:40123`, the local provider) is used as is; a
/// bare IP address or host name gets [`ProviderNodeDirectory::new`]'s port. Agents
/// are reached over plain HTTP.
#[derive(Debug, Clone)]
pub struct ProviderNodeDirectory {
    providers: HashMap<sam_core::ProviderKind, Arc<dyn sam_core::Provider>>,
    keys: Arc<dyn NodeKeys>,
    port: u16,
}

impl ProviderNodeDirectory {
    /// A directory over `providers`, with agents on `port` unless the address says.
    pub fn new(
        providers: impl IntoIterator<Item = Arc<dyn sam_core::Provider>>,
        keys: Arc<dyn NodeKeys>,
        port: u16,
    ) -> Self {
        Self {
            providers: providers.into_iter().map(|p| (p.kind(), p)).collect(),
            keys,
            port,
        }
    }

    /// The agent's base URL for a VM address.
    fn base_url(&self, address: &str) -> Option<Url> {
        let host = if address.parse::<std::net::SocketAddr>().is_ok() {
            address.to_owned()
        } else if let Ok(ip) = address.parse::<std::net::IpAddr>() {
            std::net::SocketAddr::new(ip, self.port).to_string()
        } else {
            format!("{address}:{}", self.port)
        };
        Url::parse(&format!("http://{host}/")).ok()
    }
}

#[async_trait]
impl NodeDirectory for ProviderNodeDirectory {
    async fn endpoint(&self, node: &NodeRecord) -> Result<Option<NodeEndpoint>, NodeAgentError> {
        let address = if node.address.is_some() || node.credential_owner.is_some() {
            // The address recorded when the VM ran. Without one, a VM in a user's or
            // project's account cannot be looked up: the platform's provider does
            // not see it.
            node.address.clone()
        } else {
            let (Some(vm_id), Some(provider)) = (&node.vm_id, self.providers.get(&node.provider))
            else {
                return Ok(None);
            };
            let vm = provider.get_vm(vm_id).await.map_err(|e| {
                failure(
                    sam_core::Classify::category(&e),
                    &format!("could not look up node {}: {e}", node.id),
                )
            })?;
            vm.and_then(|vm| vm.address)
        };
        let Some(url) = address.and_then(|address| self.base_url(&address)) else {
            return Ok(None);
        };
        let key = self
            .keys
            .node_key(&node.id)
            .await
            .map_err(|e| failure(ErrorCategory::Unknown, &e.to_string()))?;
        let Some(management_key) = key else {
            return Err(failure(
                ErrorCategory::InvalidConfig,
                &format!(
                    "the boot token of node {} was not kept, so its agent cannot be managed",
                    node.id
                ),
            ));
        };
        Ok(Some(NodeEndpoint {
            base_url: url,
            management_key,
        }))
    }
}
