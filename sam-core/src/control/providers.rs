//! Whose cloud account a provider call uses: the platform's providers, or providers
//! built from a user's or project's own credential by a [`ProviderFactory`](crate::ProviderFactory).
//!
//! A task's provider calls use the credential resolved at submission (project →
//! user → platform, [`crate::store::TaskSpec::provider_credential_owner`]); a node's
//! calls use the owner it was created with ([`NodeRecord::credential_owner`](crate::store::NodeRecord::credential_owner)), so a
//! VM is always polled and deleted through the account that pays for it.
//!
//! Built providers are cached per owner and provider kind, keyed by a fingerprint of
//! the *sealed* credential: a changed credential (a new seal, new details) builds a
//! new provider, and the opened secret is never kept outside the provider itself.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use crate::control::{ControlPlane, invalid};
use crate::credential::{CredentialError, CredentialOwner, CredentialRecord, CredentialTarget};
use crate::failure::Error;
use crate::model::ProviderKind;
use crate::provider::{Provider, ProviderCredential, ProviderFactory};
use crate::secret::Secret;
use crate::store::{NodeRecord, TaskRecord};

/// How many owner providers the cache keeps; the least recently used goes first.
pub const PROVIDER_CACHE_CAPACITY: usize = 256;

/// A cached provider and what it was built from.
pub(super) struct Entry {
    /// The fingerprint of the sealed credential it was built from.
    fingerprint: [u8; 32],
    provider: Arc<dyn Provider>,
    /// When it was last used, in cache ticks.
    used: u64,
}

#[derive(Default)]
pub(super) struct Entries {
    map: HashMap<(CredentialOwner, ProviderKind), Entry>,
    tick: u64,
}

/// The providers built from owners' credentials, bounded, shared by clones of a
/// control plane.
#[derive(Clone, Default)]
pub(crate) struct ProviderCache {
    entries: Arc<Mutex<Entries>>,
}

impl fmt::Debug for ProviderCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let len = self.lock().map.len();
        f.debug_struct("ProviderCache").field("len", &len).finish()
    }
}

impl ProviderCache {
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn get(
        &self,
        key: &(CredentialOwner, ProviderKind),
        fingerprint: &[u8; 32],
    ) -> Option<Arc<dyn Provider>> {
        let mut entries = self.lock();
        entries.tick += 1;
        let tick = entries.tick;
        let entry = entries
            .map
            .get_mut(key)
            .filter(|e| &e.fingerprint == fingerprint)?;
        entry.used = tick;
        Some(Arc::clone(&entry.provider))
    }

    pub(super) fn insert(
        &self,
        key: (CredentialOwner, ProviderKind),
        fingerprint: [u8; 32],
        provider: Arc<dyn Provider>,
    ) {
        let mut entries = self.lock();
        entries.tick += 1;
        let used = entries.tick;
        if !entries.map.contains_key(&key)
            && entries.map.len() >= PROVIDER_CACHE_CAPACITY
            && let Some(oldest) = entries
                .map
                .iter()
                .min_by_key(|(_, e)| e.used)
                .map(|(k, _)| k.clone())
        {
            entries.map.remove(&oldest);
        }
        entries.map.insert(
            key,
            Entry {
                fingerprint,
                provider,
                used,
            },
        );
    }

    /// How many providers are cached.
    pub(crate) fn len(&self) -> usize {
        self.lock().map.len()
    }
}

/// What identifies one stored credential's content without opening it: its seal
/// (a fresh nonce on every write), its details and when it last changed.
pub(super) fn fingerprint(credential: &CredentialRecord) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update(credential.sealed.as_str().as_bytes());
    hash.update([0]);
    hash.update(credential.kind.as_str().as_bytes());
    for (key, value) in &credential.details {
        hash.update([0]);
        hash.update(key.as_bytes());
        hash.update([1]);
        hash.update(value.as_bytes());
    }
    hash.update([0]);
    hash.update(credential.updated_at.timestamp_micros().to_be_bytes());
    hash.finalize().into()
}

impl ControlPlane {
    /// The provider of `kind` that calls with `owner`'s credential, or the platform's
    /// own provider when `owner` is `None`.
    ///
    /// # Errors
    /// [`CredentialError::Missing`] when the owner has no credential for the
    /// provider (any more); [`CredentialError::NoFactory`] without a provider factory;
    /// the credential's opening or the factory's errors; `invalid_config` for a
    /// platform provider that is not configured; store failures.
    pub async fn provider_for(
        &self,
        kind: ProviderKind,
        owner: Option<&CredentialOwner>,
    ) -> Result<Arc<dyn Provider>, Error> {
        let Some(owner) = owner else {
            return self.provider(kind).map(Arc::clone);
        };
        let target = CredentialTarget::Provider(kind);
        let credential = self
            .store
            .list_credentials(owner)
            .await?
            .into_iter()
            .find(|c| c.target == target)
            .ok_or_else(|| CredentialError::Missing {
                owner: owner.clone(),
                target: target.clone(),
            })?;
        self.providers
            .owned(kind, owner, &credential, |c| self.open(c))
    }

    /// The provider a task's calls use: its provider, with the credential owner
    /// resolved at submission.
    ///
    /// # Errors
    /// As [`ControlPlane::provider_for`].
    pub(crate) async fn task_provider(
        &self,
        task: &TaskRecord,
    ) -> Result<Arc<dyn Provider>, Error> {
        self.provider_for(task.provider, task.spec.provider_credential_owner.as_ref())
            .await
    }

    /// The provider a node's calls use: the account it was created with.
    ///
    /// # Errors
    /// As [`ControlPlane::provider_for`].
    pub(crate) async fn node_provider(
        &self,
        node: &NodeRecord,
    ) -> Result<Arc<dyn Provider>, Error> {
        self.provider_for(node.provider, node.credential_owner.as_ref())
            .await
    }

    /// How many providers built from owners' credentials are cached.
    pub fn cached_owner_providers(&self) -> usize {
        self.providers.cache.len()
    }

    pub(crate) fn provider(&self, kind: ProviderKind) -> Result<&Arc<dyn Provider>, Error> {
        self.providers.platform(kind)
    }
}

/// The provider registry: the platform's providers by kind, and those built from
/// owners' own credentials by the factory, cached per owner.
#[derive(Debug, Clone)]
pub(super) struct ProviderRegistry {
    platform: HashMap<ProviderKind, Arc<dyn Provider>>,
    /// Builds providers from users' and projects' own credentials; without it only
    /// the platform's providers are used.
    factory: Option<Arc<dyn ProviderFactory>>,
    /// The providers built by `factory`, per owner.
    cache: ProviderCache,
}

impl ProviderRegistry {
    /// The platform's providers, one per kind (a later one of the same kind wins).
    pub(super) fn new(platform: Vec<Arc<dyn Provider>>) -> Self {
        Self {
            platform: platform.into_iter().map(|p| (p.kind(), p)).collect(),
            factory: None,
            cache: ProviderCache::default(),
        }
    }

    /// The same platform providers, building owners' providers with `factory` (and
    /// an empty cache).
    pub(super) fn with_factory(self, factory: Arc<dyn ProviderFactory>) -> Self {
        Self {
            factory: Some(factory),
            cache: ProviderCache::default(),
            ..self
        }
    }

    /// Whether the platform has a provider of `kind`.
    pub(super) fn has_platform(&self, kind: ProviderKind) -> bool {
        self.platform.contains_key(&kind)
    }

    /// The kinds the platform has providers for.
    pub(super) fn platform_kinds(&self) -> impl Iterator<Item = ProviderKind> + '_ {
        self.platform.keys().copied()
    }

    /// The platform's provider of `kind`.
    ///
    /// # Errors
    /// `invalid_config` when the platform has none.
    pub(super) fn platform(&self, kind: ProviderKind) -> Result<&Arc<dyn Provider>, Error> {
        self.platform
            .get(&kind)
            .ok_or_else(|| invalid("provider", format!("{kind} is not configured")))
    }

    /// The provider of `kind` in `owner`'s account, built from `credential` (opened
    /// with `open`) by the factory, or the cached one while the sealed credential is
    /// unchanged.
    ///
    /// # Errors
    /// [`CredentialError::NoFactory`] without a factory; the opening's and the
    /// factory's failures; `invalid_config` when the factory built another kind.
    pub(super) fn owned(
        &self,
        kind: ProviderKind,
        owner: &CredentialOwner,
        credential: &CredentialRecord,
        open: impl FnOnce(&CredentialRecord) -> Result<Secret, Error>,
    ) -> Result<Arc<dyn Provider>, Error> {
        let Some(factory) = &self.factory else {
            return Err(CredentialError::NoFactory {
                owner: owner.clone(),
                target: CredentialTarget::Provider(kind),
            }
            .into());
        };
        let key = (owner.clone(), kind);
        let fingerprint = fingerprint(credential);
        if let Some(provider) = self.cache.get(&key, &fingerprint) {
            return Ok(provider);
        }
        let opened = ProviderCredential {
            kind: credential.kind,
            secret: open(credential)?,
            details: credential.details.clone(),
        };
        let provider = factory.build(kind, &opened)?;
        if provider.kind() != kind {
            return Err(invalid(
                "provider_factory",
                format!(
                    "asked for a {kind} provider, the factory built a {}",
                    provider.kind()
                ),
            ));
        }
        tracing::debug!(owner = %owner, provider = %kind, "built a provider from the owner's credential");
        self.cache.insert(key, fingerprint, Arc::clone(&provider));
        Ok(provider)
    }
}
