//! Scaleway Instances: resolve the image, create the server stopped with `k=v` tags,
//! upload the user data, power on; terminate what was created when a later step fails.

pub(crate) mod error;

#[cfg(feature = "scaleway")]
mod client;
#[cfg(feature = "scaleway")]
mod config;

#[cfg(feature = "scaleway")]
pub use config::ScalewayConfig;
#[cfg(feature = "scaleway")]
pub use provider::ScalewayProvider;

#[cfg(feature = "scaleway")]
mod provider {
    use async_trait::async_trait;
    use reqwest::Method;
    use sam_core::{
        Catalog, Labels, Provider, ProviderCapabilities, ProviderError, ProviderKind, VmId,
        VmInstance, VmSpec, VmState,
    };

    use super::client::{Body, Client, PER_PAGE, ServerEnvelope, ServerPage, tags};
    use super::config::ScalewayConfig;
    use crate::error::Result;

    const KIND: ProviderKind = ProviderKind::Scaleway;

    /// Most pages a list follows per zone before it stops.
    const MAX_PAGES: usize = 1000;

    /// Scaleway Instances servers.
    #[derive(Debug)]
    pub struct ScalewayProvider {
        client: Client,
        catalog: Catalog,
    }

    impl ScalewayProvider {
        /// Validates the config and builds the backend on the shared HTTP client.
        ///
        /// # Errors
        /// [`crate::Error::InvalidConfig`] for a missing key, project or zone, or a bad
        /// base URL; [`crate::Error::Setup`] when the HTTP client cannot be built.
        pub fn new(config: ScalewayConfig) -> Result<Self> {
            config.validate()?;
            Ok(Self {
                catalog: crate::catalog(KIND, &[]),
                client: Client {
                    http: crate::http::shared_client(KIND)?,
                    config,
                },
            })
        }
    }

    #[async_trait]
    impl Provider for ScalewayProvider {
        fn kind(&self) -> ProviderKind {
            KIND
        }

        fn catalog(&self) -> &Catalog {
            &self.catalog
        }

        fn capabilities(&self) -> ProviderCapabilities {
            ProviderCapabilities::default()
        }

        async fn check_credentials(&self) -> Result<(), ProviderError> {
            let zone = &self.client.config.zones[0];
            let path = format!("/instance/v1/zones/{zone}/servers");
            let query = [("per_page", "1".to_owned())];
            self.client
                .call(Method::GET, &path, &query, Body::None)
                .await
                .map(|_| ())
        }

        async fn create_vm(&self, spec: &VmSpec) -> Result<VmInstance, ProviderError> {
            let zone = &spec.location;
            let image = self.client.resolve_image(spec).await?;
            let body = serde_json::json!({
                "name": spec.name,
                "commercial_type": spec.server_type,
                "image": image,
                "project": self.client.config.project_id,
                "tags": tags(&spec.labels),
                "dynamic_ip_required": true,
            });
            let path = format!("/instance/v1/zones/{zone}/servers");
            let reply = self
                .client
                .call(Method::POST, &path, &[], Body::Json(body))
                .await?;
            let server = reply.json::<ServerEnvelope>(KIND)?.server;
            let id = server.id.clone();

            let user_data = format!("{}/user_data/cloud-init", Client::server_path(zone, &id));
            let started = async {
                self.client
                    .call(
                        Method::PATCH,
                        &user_data,
                        &[],
                        Body::Text(spec.user_data.clone()),
                    )
                    .await?;
                self.client.action(zone, &id, "poweron").await
            }
            .await;
            if let Err(error) = started {
                // Leave nothing behind: the caller sees the original failure, plus the
                // cleanup's when that failed too.
                return Err(match self.client.discard(zone, &id).await {
                    Ok(()) => error,
                    Err(cleanup) => error.with_cleanup_failure(cleanup),
                });
            }
            let mut vm = server.into_instance()?;
            vm.state = VmState::Pending;
            Ok(vm)
        }

        async fn poll_create(&self, vm: &VmInstance) -> Result<VmInstance, ProviderError> {
            self.client
                .get_server(&vm.location, vm.id.as_str())
                .await?
                .into_instance()
        }

        async fn get_vm(&self, id: &VmId) -> Result<Option<VmInstance>, ProviderError> {
            match self.client.find_server(id).await? {
                Some((_, server)) => server.into_instance().map(Some),
                None => Ok(None),
            }
        }

        async fn delete_vm(&self, id: &VmId) -> Result<(), ProviderError> {
            let Some((zone, server)) = self.client.find_server(id).await? else {
                return Ok(());
            };
            if server.state == "running" {
                self.client.discard(&zone, &server.id).await
            } else {
                // A stopped server cannot be terminated; delete it and its volumes.
                self.client.delete_server(&zone, &server).await
            }
        }

        async fn list_vms(&self, labels: &Labels) -> Result<Vec<VmInstance>, ProviderError> {
            let mut vms = Vec::new();
            let wanted = tags(labels).join(",");
            for zone in &self.client.config.zones {
                let path = format!("/instance/v1/zones/{zone}/servers");
                for page in 1..=MAX_PAGES {
                    let mut query = vec![
                        ("page", page.to_string()),
                        ("per_page", PER_PAGE.to_string()),
                    ];
                    if !wanted.is_empty() {
                        query.push(("tags", wanted.clone()));
                    }
                    let reply = self
                        .client
                        .call(Method::GET, &path, &query, Body::None)
                        .await?;
                    let servers = reply.json::<ServerPage>(KIND)?.servers;
                    let full = servers.len() >= PER_PAGE;
                    for server in servers {
                        let vm = server.into_instance()?;
                        if vm.labels.matches(labels) {
                            vms.push(vm);
                        }
                    }
                    if !full {
                        break;
                    }
                }
            }
            Ok(vms)
        }
    }
}
