//! The scoped tokens of nodes and workspaces: issued with the active signing key,
//! verified against every key the control plane holds.

use crate::control::ControlPlane;
use crate::failure::Error;
use crate::model::{NodeId, WorkspaceId};
use crate::secret::Secret;
use crate::token::{TokenError, TokenScope, TokenSigner};

impl ControlPlane {
    /// The token signer in use.
    pub(super) fn signer(&self) -> std::sync::RwLockReadGuard<'_, TokenSigner> {
        // A panic while replacing it leaves a whole signer: keep using it.
        self.signer.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Replaces the token signer, for every clone of this control plane: a server
    /// that read new signing keys (a rotation) signs and verifies with them from now.
    pub fn replace_signer(&self, signer: TokenSigner) {
        *self.signer.write().unwrap_or_else(|e| e.into_inner()) = signer;
    }

    /// The ids of the keys the signer verifies with, and of the one that signs.
    pub fn signer_keys(&self) -> (Vec<Option<String>>, Option<String>) {
        let signer = self.signer();
        let ids = signer
            .key_ids()
            .into_iter()
            .map(|id| id.map(str::to_owned))
            .collect();
        (ids, signer.signing_key_id().map(str::to_owned))
    }

    pub(super) fn verify(
        &self,
        token: &str,
        scope: TokenScope,
        subject: &str,
    ) -> Result<(), Error> {
        self.signer()
            .verify(token, scope, subject, self.clock.now())
            .map(|_| ())
            .map_err(|e: TokenError| Error::Unauthorized(e))
    }

    /// Checks a node's callback token without acting on it: the callback routes
    /// check it before they read the body.
    ///
    /// # Errors
    /// [`Error::Unauthorized`] for a token that is not this node's.
    pub fn verify_node_token(&self, token: &str, node: &NodeId) -> Result<(), Error> {
        self.verify(token, TokenScope::Node, node.as_str())
    }

    /// Checks a workspace's callback token without acting on it, as
    /// [`ControlPlane::verify_node_token`].
    ///
    /// # Errors
    /// [`Error::Unauthorized`] for a token that is not this workspace's.
    pub fn verify_workspace_token(
        &self,
        token: &str,
        workspace: &WorkspaceId,
    ) -> Result<(), Error> {
        self.verify(token, TokenScope::Workspace, workspace.as_str())
    }

    /// Issues the node-scoped token a node boots with.
    pub fn issue_node_token(&self, node: &NodeId) -> Secret {
        self.signer().issue(
            TokenScope::Node,
            node.as_str(),
            self.clock.now(),
            self.config.token_ttl,
        )
    }

    /// Issues a workspace-scoped token.
    pub fn issue_workspace_token(&self, workspace: &WorkspaceId) -> Secret {
        self.signer().issue(
            TokenScope::Workspace,
            workspace.as_str(),
            self.clock.now(),
            self.config.token_ttl,
        )
    }
}
