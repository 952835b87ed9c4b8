//! The [`Provider`] trait: what a cloud (or a local stand-in) must do for the SDK.

use std::fmt::Debug;

use async_trait::async_trait;

use crate::error::ProviderError;
use crate::model::{Catalog, Labels, ProviderKind, VmId, VmInstance, VmSpec};

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
