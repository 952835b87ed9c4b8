//! Hetzner Cloud (`/v1/servers`): create, poll the create action, get, delete, list
//! by label selector.

pub(crate) mod error;

#[cfg(feature = "hetzner")]
mod client;
#[cfg(feature = "hetzner")]
mod config;

#[cfg(feature = "hetzner")]
pub use config::HetznerConfig;
#[cfg(feature = "hetzner")]
pub use provider::HetznerProvider;

#[cfg(feature = "hetzner")]
mod provider {
    use async_trait::async_trait;
    use reqwest::Method;
    use sam_core::{
        Catalog, ErrorCategory, Labels, Provider, ProviderCapabilities, ProviderError,
        ProviderKind, VmId, VmInstance, VmSpec,
    };

    use super::client::{ActionPage, Client, ServerEnvelope, ServerPage, create_body};
    use super::config::HetznerConfig;
    use super::error::classify_action_error;
    use crate::error::Result;

    const KIND: ProviderKind = ProviderKind::Hetzner;

    /// Most pages a list follows before it stops (50 servers each).
    const MAX_PAGES: u64 = 1000;

    /// Hetzner Cloud servers.
    #[derive(Debug)]
    pub struct HetznerProvider {
        client: Client,
        catalog: Catalog,
    }

    impl HetznerProvider {
        /// Validates the config and builds the backend on the shared HTTP client.
        ///
        /// # Errors
        /// [`crate::Error::InvalidConfig`] for an empty token or a bad base URL;
        /// [`crate::Error::Setup`] when the HTTP client cannot be built.
        pub fn new(config: HetznerConfig) -> Result<Self> {
            config.validate()?;
            Ok(Self {
                client: Client {
                    http: crate::http::shared_client(KIND)?,
                    config,
                },
                catalog: crate::catalog(KIND, &[]),
            })
        }
    }

    #[async_trait]
    impl Provider for HetznerProvider {
        fn kind(&self) -> ProviderKind {
            KIND
        }

        fn catalog(&self) -> &Catalog {
            &self.catalog
        }

        fn capabilities(&self) -> ProviderCapabilities {
            ProviderCapabilities {
                idempotent_create: false,
                async_create: true,
            }
        }

        async fn check_credentials(&self) -> Result<(), ProviderError> {
            let query = [("per_page", "1".to_owned())];
            self.client
                .call(Method::GET, "/servers", &query, None)
                .await?;
            Ok(())
        }

        async fn create_vm(&self, spec: &VmSpec) -> Result<VmInstance, ProviderError> {
            let body = create_body(spec, &self.client.config.image);
            let reply = self
                .client
                .call(Method::POST, "/servers", &[], Some(body))
                .await?;
            reply.json::<ServerEnvelope>(KIND)?.server.into_instance()
        }

        async fn poll_create(&self, vm: &VmInstance) -> Result<VmInstance, ProviderError> {
            let path = format!("/servers/{}/actions", vm.id);
            let query = [("status", "error".to_owned())];
            let reply = self.client.call(Method::GET, &path, &query, None).await?;
            let failed = reply
                .json::<ActionPage>(KIND)?
                .actions
                .into_iter()
                .find_map(|a| (a.status == "error").then_some(a.error).flatten());
            if let Some(error) = failed {
                return Err(classify_action_error(&error));
            }
            self.client.get_server(&vm.id).await?.into_instance()
        }

        async fn get_vm(&self, id: &VmId) -> Result<Option<VmInstance>, ProviderError> {
            match self.client.get_server(id).await {
                Ok(server) => server.into_instance().map(Some),
                Err(e) if e.category() == ErrorCategory::NotFound => Ok(None),
                Err(e) => Err(e),
            }
        }

        async fn delete_vm(&self, id: &VmId) -> Result<(), ProviderError> {
            let path = format!("/servers/{id}");
            match self.client.call(Method::DELETE, &path, &[], None).await {
                Ok(_) => Ok(()),
                Err(e) if e.category() == ErrorCategory::NotFound => Ok(()),
                Err(e) => Err(e),
            }
        }

        async fn list_vms(&self, labels: &Labels) -> Result<Vec<VmInstance>, ProviderError> {
            let selector: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=={v}")).collect();
            let mut vms = Vec::new();
            let mut page = 1;
            loop {
                let mut query = vec![("page", page.to_string()), ("per_page", "50".to_owned())];
                if !selector.is_empty() {
                    query.push(("label_selector", selector.join(",")));
                }
                let reply = self
                    .client
                    .call(Method::GET, "/servers", &query, None)
                    .await?;
                let servers: ServerPage = reply.json(KIND)?;
                let next = servers.next_page();
                for server in servers.servers {
                    let vm = server.into_instance()?;
                    if vm.labels.matches(labels) {
                        vms.push(vm);
                    }
                }
                match next {
                    Some(n) if n > page && n <= MAX_PAGES => page = n,
                    _ => return Ok(vms),
                }
            }
        }
    }
}
