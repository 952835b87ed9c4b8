//! Google Compute Engine: `instances.insert` with a `requestId`, poll the returned
//! operation, get/delete/list by label across the configured zones.

pub(crate) mod error;

#[cfg(feature = "gcp")]
mod auth;
#[cfg(feature = "gcp")]
mod client;
#[cfg(feature = "gcp")]
mod config;

#[cfg(feature = "gcp")]
pub use config::{GcpConfig, GcpServiceAccount};
#[cfg(feature = "gcp")]
pub use provider::GcpProvider;

#[cfg(feature = "gcp")]
mod provider {
    use std::collections::HashMap;
    use std::sync::{Mutex, MutexGuard};

    use async_trait::async_trait;
    use reqwest::Method;
    use sam_core::{
        Catalog, ErrorCategory, Labels, Location, Provider, ProviderCapabilities, ProviderError,
        ProviderKind, VmId, VmInstance, VmSpec, VmState,
    };

    use super::auth::TokenSource;
    use super::client::{Client, InstancePage, Operation, insert_body, request_id};
    use super::config::GcpConfig;
    use crate::error::Result;

    const KIND: ProviderKind = ProviderKind::Gcp;

    /// Most pages a list follows per zone before it stops.
    const MAX_PAGES: usize = 1000;

    /// Compute Engine instances.
    ///
    /// The insert operation of each create is remembered in memory for
    /// `poll_create`; after a restart, `poll_create` reports the instance itself.
    #[derive(Debug)]
    pub struct GcpProvider {
        client: Client,
        catalog: Catalog,
        operations: Mutex<HashMap<VmId, (Location, String)>>,
    }

    impl GcpProvider {
        /// Validates the config, parses the key and builds the backend on the
        /// shared HTTP client.
        ///
        /// # Errors
        /// [`crate::Error::InvalidConfig`] for a missing project, zone or e-mail, a
        /// bad URL or a key that is not a PKCS#8 RSA key; [`crate::Error::Setup`]
        /// when the HTTP client cannot be built.
        pub fn new(config: GcpConfig) -> Result<Self> {
            config.validate()?;
            let http = crate::http::shared_client(KIND)?;
            let tokens = TokenSource::new(config.service_account.clone(), http.clone())?;
            Ok(Self {
                catalog: crate::catalog(KIND, &config.zones),
                client: Client {
                    config,
                    http,
                    tokens,
                },
                operations: Mutex::default(),
            })
        }

        fn operations(&self) -> MutexGuard<'_, HashMap<VmId, (Location, String)>> {
            self.operations.lock().unwrap_or_else(|e| e.into_inner())
        }
    }

    #[async_trait]
    impl Provider for GcpProvider {
        fn kind(&self) -> ProviderKind {
            KIND
        }

        fn catalog(&self) -> &Catalog {
            &self.catalog
        }

        fn capabilities(&self) -> ProviderCapabilities {
            ProviderCapabilities {
                idempotent_create: true,
                async_create: true,
            }
        }

        async fn check_credentials(&self) -> Result<(), ProviderError> {
            let zone = &self.client.config.zones[0];
            let query = [("maxResults", "1".to_owned())];
            self.client
                .call(
                    Method::GET,
                    &format!("/zones/{zone}/instances"),
                    &query,
                    None,
                )
                .await
                .map(|_| ())
        }

        async fn create_vm(&self, spec: &VmSpec) -> Result<VmInstance, ProviderError> {
            let zone = &spec.location;
            let query = [("requestId", request_id(spec))];
            let body = insert_body(&self.client.config, spec);
            let reply = self
                .client
                .call(
                    Method::POST,
                    &format!("/zones/{zone}/instances"),
                    &query,
                    Some(body),
                )
                .await?;
            let operation: Operation = reply.json(KIND)?;
            if let Some(error) = operation.failure() {
                return Err(error);
            }
            let id = crate::vm_id(KIND, spec.name.clone())?;
            self.operations()
                .insert(id.clone(), (zone.clone(), operation.name));
            Ok(VmInstance {
                id,
                provider: KIND,
                name: spec.name.clone(),
                server_type: spec.server_type.clone(),
                location: zone.clone(),
                state: VmState::Pending,
                labels: spec.labels.clone(),
                address: None,
                created_at: None,
                failure: None,
            })
        }

        async fn poll_create(&self, vm: &VmInstance) -> Result<VmInstance, ProviderError> {
            let pending = self.operations().get(&vm.id).cloned();
            let mut done = true;
            if let Some((zone, name)) = pending {
                let operation = self.client.operation(&zone, &name).await?;
                if operation.is_done() {
                    self.operations().remove(&vm.id);
                }
                if let Some(error) = operation.failure() {
                    return Err(error);
                }
                done = operation.is_done();
            }
            match self
                .client
                .get_instance(&vm.location, vm.id.as_str())
                .await?
            {
                Some(instance) => instance.into_instance(),
                // The operation has not made the instance yet.
                None if !done => Ok(vm.clone()),
                None => Err(ProviderError::new(
                    KIND,
                    ErrorCategory::NotFound,
                    format!("instance {} does not exist", vm.id),
                )),
            }
        }

        async fn get_vm(&self, id: &VmId) -> Result<Option<VmInstance>, ProviderError> {
            match self.client.find_instance(id.as_str()).await? {
                Some((_, instance)) => instance.into_instance().map(Some),
                None => Ok(None),
            }
        }

        async fn delete_vm(&self, id: &VmId) -> Result<(), ProviderError> {
            let Some((zone, _)) = self.client.find_instance(id.as_str()).await? else {
                return Ok(());
            };
            let path = format!("/zones/{zone}/instances/{id}");
            match self.client.call(Method::DELETE, &path, &[], None).await {
                Ok(_) => Ok(()),
                Err(e) if e.category() == ErrorCategory::NotFound => Ok(()),
                Err(e) => Err(e),
            }
        }

        async fn list_vms(&self, labels: &Labels) -> Result<Vec<VmInstance>, ProviderError> {
            let filter: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("(labels.{k} = \"{v}\")"))
                .collect();
            let mut vms = Vec::new();
            for zone in &self.client.config.zones {
                let path = format!("/zones/{zone}/instances");
                let mut token: Option<String> = None;
                for _ in 0..MAX_PAGES {
                    let mut query = Vec::new();
                    if !filter.is_empty() {
                        query.push(("filter", filter.join(" AND ")));
                    }
                    if let Some(t) = token.take() {
                        query.push(("pageToken", t));
                    }
                    let reply = self.client.call(Method::GET, &path, &query, None).await?;
                    let page: InstancePage = reply.json(KIND)?;
                    for instance in page.items {
                        let vm = instance.into_instance()?;
                        if vm.labels.matches(labels) {
                            vms.push(vm);
                        }
                    }
                    match page.next_page_token.filter(|t| !t.is_empty()) {
                        Some(t) => token = Some(t),
                        None => break,
                    }
                }
            }
            Ok(vms)
        }
    }
}
