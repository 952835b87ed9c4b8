//! The node tokens the control plane booted its nodes with: the keys of their
//! management tokens, kept so that a restarted control plane can still manage its
//! nodes. [`KeyedBoot`] records each token as it is issued, in files
//! ([`FileNodeKeys`]); [`StoreNodeKeys`] reads them from the store, sealed with the
//! credential key.

use std::sync::Arc;

use async_trait::async_trait;
use sam_core::{NodeId, NodeRecord, Secret};

/// The node tokens a control plane booted its nodes with, kept as files (one per
/// node, mode 0600) so a restarted control plane can still manage its nodes.
///
/// A VM agent keys its management tokens with its boot token
/// ([`crate::wire::management_signer`]); the token is signed with an issue time, so
/// it cannot be derived again and must be kept. [`KeyedBoot`] records each token as
/// it is issued; [`ProviderNodeDirectory`](super::ProviderNodeDirectory) reads it back.
#[derive(Debug, Clone)]
pub struct FileNodeKeys {
    dir: std::path::PathBuf,
}

impl FileNodeKeys {
    /// Keys in `dir`, which is created (mode 0700) when missing.
    ///
    /// # Errors
    /// [`crate::Error::Io`] when the directory cannot be created.
    pub fn new(dir: impl Into<std::path::PathBuf>) -> crate::Result<Self> {
        use std::os::unix::fs::DirBuilderExt as _;
        let dir = dir.into();
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| crate::Error::io(format!("creating {}", dir.display()), e))?;
        Ok(Self { dir })
    }

    fn path(&self, node: &NodeId) -> std::path::PathBuf {
        self.dir.join(format!("{}.token", node.as_str()))
    }

    /// Records `node`'s boot token, replacing an earlier one.
    ///
    /// # Errors
    /// [`crate::Error::Io`] when the file cannot be written.
    pub fn put(&self, node: &NodeId, token: &Secret) -> crate::Result<()> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let path = self.path(node);
        let tmp = path.with_extension("tmp");
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| f.write_all(token.expose().as_bytes()).map(|()| f))
            .map_err(|e| crate::Error::io(format!("writing {}", tmp.display()), e))?;
        file.flush()
            .map_err(|e| crate::Error::io(format!("writing {}", tmp.display()), e))?;
        std::fs::rename(&tmp, &path)
            .map_err(|e| crate::Error::io(format!("writing {}", path.display()), e))
    }

    /// `node`'s boot token, if one was recorded.
    ///
    /// # Errors
    /// [`crate::Error::Io`] when the file exists but cannot be read.
    pub fn get(&self, node: &NodeId) -> crate::Result<Option<Secret>> {
        let path = self.path(node);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Some(Secret::new(text))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(crate::Error::io(format!("reading {}", path.display()), e)),
        }
    }
}

/// Where a control plane finds the boot token each node was booted with (its
/// management key): files ([`FileNodeKeys`]) or the store ([`StoreNodeKeys`]).
#[async_trait]
pub trait NodeKeys: Send + Sync + std::fmt::Debug {
    /// `node`'s boot token, if one was kept.
    ///
    /// # Errors
    /// When the keys cannot be read or opened.
    async fn node_key(&self, node: &NodeId) -> crate::Result<Option<Secret>>;
}

#[async_trait]
impl NodeKeys for FileNodeKeys {
    async fn node_key(&self, node: &NodeId) -> crate::Result<Option<Secret>> {
        self.get(node)
    }
}

/// Node keys kept in the store, sealed with the credential key, as the control
/// plane writes them when it creates a node with one: every control plane on the
/// database reads them. A node booted before (its key only in a file) is found in
/// `files`.
#[derive(Debug, Clone)]
pub struct StoreNodeKeys {
    store: Arc<dyn sam_core::Store>,
    cipher: sam_core::CredentialCipher,
    files: Option<FileNodeKeys>,
}

impl StoreNodeKeys {
    /// Keys in `store`, opened with `cipher`; `files` for nodes booted before.
    pub fn new(
        store: Arc<dyn sam_core::Store>,
        cipher: sam_core::CredentialCipher,
        files: Option<FileNodeKeys>,
    ) -> Self {
        Self {
            store,
            cipher,
            files,
        }
    }
}

#[async_trait]
impl NodeKeys for StoreNodeKeys {
    async fn node_key(&self, node: &NodeId) -> crate::Result<Option<Secret>> {
        let purpose = sam_core::KeyPurpose::Node;
        let failed = |reason: String| crate::Error::InvalidConfig {
            field: "node_keys".to_owned(),
            reason,
        };
        let stored = self
            .store
            .get_key(purpose, node.as_str())
            .await
            .map_err(|e| failed(format!("reading the key of node {node}: {e}")))?;
        match stored {
            Some(key) => {
                let secret = key.open(&self.cipher).map_err(|e| {
                    failed(format!(
                        "the key of node {node} does not open with this credential_key ({e}): \
                         every server on one database needs the same credential_key"
                    ))
                })?;
                Ok(Some(secret))
            }
            None => match &self.files {
                Some(files) => files.get(node),
                None => Ok(None),
            },
        }
    }
}

/// A [`sam_core::BootRenderer`] that records each node's boot token in
/// [`FileNodeKeys`] before the wrapped renderer puts it into the user data.
#[derive(Debug, Clone)]
pub struct KeyedBoot {
    inner: Arc<dyn sam_core::BootRenderer>,
    keys: FileNodeKeys,
}

impl KeyedBoot {
    /// Wraps `inner`, recording tokens in `keys`.
    pub fn new(inner: Arc<dyn sam_core::BootRenderer>, keys: FileNodeKeys) -> Self {
        Self { inner, keys }
    }
}

impl sam_core::BootRenderer for KeyedBoot {
    /// Renders with the key recorded for the node when there is one: a node's key is
    /// made once, and a create made again (its first one never reached the provider,
    /// or went through unseen) boots with the key a VM of the first may already hold.
    fn user_data(&self, node: &NodeRecord, token: &Secret) -> Result<String, sam_core::Error> {
        let failed = |e: crate::Error| sam_core::Error::InvalidInput {
            field: "node_keys",
            reason: e.to_string(),
        };
        if let Some(kept) = self.keys.get(&node.id).map_err(failed)? {
            return self.inner.user_data(node, &kept);
        }
        // Recorded first: a node whose key is lost could not be managed.
        self.keys.put(&node.id, token).map_err(failed)?;
        self.inner.user_data(node, token)
    }
}
