//! The [`Provider`] trait: what a cloud (or a local stand-in) must do for the SDK.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;

use crate::credential::CredentialKind;
use crate::error::ProviderError;
use crate::failure::Error;
use crate::model::{Catalog, Labels, ProviderKind, VmId, VmInstance, VmSpec};
use crate::secret::Secret;

/// Where a QEMU node's guest reaches the control plane: QEMU's user-mode network
/// forwards this address (`guestfwd`) to a loopback port of the machine running the
/// VM, and the guest reaches nothing else. A QEMU node's control plane URL is
/// `http://10.0.2.100/`: plain http, which never leaves the machine.
pub const QEMU_CONTROL_PLANE_ADDRESS: std::net::SocketAddrV4 =
    std::net::SocketAddrV4::new(std::net::Ipv4Addr::new(10, 0, 2, 100), 80);

/// Optional abilities a provider may have; conformance cases check them first.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProviderCapabilities {
    /// The create call carries an idempotency key (GCP's `requestId`), so sending the
    /// same create twice makes one VM.
    pub idempotent_create: bool,
    /// A create can be accepted and fail later in an action or operation, which
    /// [`Provider::poll_create`] reports.
    pub async_create: bool,
}

/// A source of VMs: Hetzner, Scaleway, GCP, local processes, or the fake.
///
/// # Contract
/// Every backend guarantees:
/// - **Thin.** A call translates the request, makes the provider's API call(s), and
///   returns a domain value or a [`ProviderError`] classified once, at the HTTP edge.
///   It never sleeps, loops, retries or falls back to another size or location:
///   those live in `sam-core` and wrap any backend.
/// - **`create_vm` is not idempotent** (unless [`ProviderCapabilities::idempotent_create`]).
///   It attaches every label of the spec, including the node label, so a caller
///   whose response was lost can find the VM with [`Provider::list_vms`] before
///   trying again. It returns once the provider accepted the request; the VM may
///   still be `pending`.
/// - **`poll_create` makes one check and returns.** It reports the VM's current
///   state; when the provider's create action or operation failed it returns that
///   failure classified exactly like an HTTP error (a stock-out is
///   `transient_capacity` there too).
/// - **`get_vm` maps "gone" to `Ok(None)`**, never to an error.
/// - **`delete_vm` is idempotent**: deleting a VM that does not exist succeeds.
/// - **`list_vms` returns every VM carrying all the given labels**, across pages
///   and (where the provider has them) zones; an empty selector lists every VM the
///   credentials can see.
/// - **Labels round-trip**: the labels of a created VM are returned by `get_vm` and
///   `list_vms` unchanged.
/// - **Credentials never appear** in errors, logs or `Debug` output.
#[cfg_attr(feature = "mock", mockall::automock)]
#[async_trait]
pub trait Provider: Send + Sync + Debug {
    /// Which provider this is.
    fn kind(&self) -> ProviderKind;

    /// The server types on offer and the size mapping.
    fn catalog(&self) -> &Catalog;

    /// Optional abilities.
    fn capabilities(&self) -> ProviderCapabilities;

    /// Checks the credentials with one cheap authenticated call.
    ///
    /// # Errors
    /// `auth_error` when they are rejected; any other category as classified.
    async fn check_credentials(&self) -> Result<(), ProviderError>;

    /// Asks the provider to create a VM.
    ///
    /// # Errors
    /// The classified failure of the create call.
    async fn create_vm(&self, spec: &VmSpec) -> Result<VmInstance, ProviderError>;

    /// Reports the progress of a create the provider accepted.
    ///
    /// # Errors
    /// The classified failure of the create action or operation, or of the call.
    async fn poll_create(&self, vm: &VmInstance) -> Result<VmInstance, ProviderError>;

    /// Looks a VM up; `Ok(None)` when it does not exist.
    ///
    /// # Errors
    /// The classified failure of the call.
    async fn get_vm(&self, id: &VmId) -> Result<Option<VmInstance>, ProviderError>;

    /// Deletes a VM; succeeds when it is already gone.
    ///
    /// # Errors
    /// The classified failure of the call.
    async fn delete_vm(&self, id: &VmId) -> Result<(), ProviderError>;

    /// Lists the VMs carrying every label in `labels`.
    ///
    /// # Errors
    /// The classified failure of the call.
    async fn list_vms(&self, labels: &Labels) -> Result<Vec<VmInstance>, ProviderError>;
}

/// An opened provider credential of a user or project: what a [`ProviderFactory`]
/// builds a provider from. The control plane opens it only to build a provider and
/// never stores or logs it; its `Debug` shows the secret as `***`.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderCredential {
    /// What kind of secret it is (a Hetzner API token, a Scaleway API key, a GCP
    /// service account).
    pub kind: CredentialKind,
    /// The secret as the user stored it.
    pub secret: Secret,
    /// Its non-secret details (Scaleway's `project_id`, GCP's `project`).
    pub details: BTreeMap<String, String>,
}

/// Builds a [`Provider`] that calls a cloud with a user's or project's own credential,
/// so their tasks' VMs are made (and paid for) in their account, not the platform's.
///
/// The control plane keeps the providers it builds per credential owner and builds
/// again when the stored credential changes.
///
/// # Contract
/// Every factory guarantees:
/// - **Only this credential.** The returned provider has `kind() == kind` and makes
///   every call with `credential` alone, never with the platform's credentials.
/// - **No network.** `build` parses and constructs; a rejected token shows on the
///   first call as that call's `auth_error`.
/// - **Typed refusals.** A credential whose stored form does not fit the provider
///   (a kind that does not fit, a missing detail, a service account that is not a
///   key file) is [`Error::Credential`] with
///   [`CredentialError::Invalid`](crate::credential::CredentialError::Invalid) naming
///   the field; a provider kind the factory cannot build is `invalid_config`.
/// - **No secret in errors**: messages name fields, never values.
pub trait ProviderFactory: Send + Sync + Debug {
    /// A provider of `kind` that calls with `credential`.
    ///
    /// # Errors
    /// As the contract says: `invalid_config` for a credential that does not fit or
    /// a kind the factory does not build.
    fn build(
        &self,
        kind: ProviderKind,
        credential: &ProviderCredential,
    ) -> Result<Arc<dyn Provider>, Error>;
}
