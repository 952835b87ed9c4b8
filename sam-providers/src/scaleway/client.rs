//! Scaleway Instances REST calls and their private wire types.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::Method;
use sam_core::{
    ErrorCategory, Location, ProviderError, ProviderKind, VmId, VmInstance, VmSpec, VmState,
};
use serde::Deserialize;
use serde_json::Value;

use super::config::ScalewayConfig;
use super::error::classify;
use crate::http::{Reply, send};

const KIND: ProviderKind = ProviderKind::Scaleway;

/// Servers per list page.
pub(super) const PER_PAGE: usize = 50;

/// The REST client: base URL, key and the shared HTTP client.
#[derive(Debug)]
pub(super) struct Client {
    pub(super) config: ScalewayConfig,
    pub(super) http: reqwest::Client,
}

/// What a call sends.
pub(super) enum Body {
    None,
    Json(Value),
    Text(String),
}

#[derive(Deserialize)]
pub(super) struct ServerEnvelope {
    pub(super) server: Server,
}

#[derive(Deserialize)]
pub(super) struct ServerPage {
    pub(super) servers: Vec<Server>,
}

#[derive(Deserialize)]
pub(super) struct Server {
    pub(super) id: String,
    name: String,
    pub(super) state: String,
    commercial_type: String,
    #[serde(default)]
    tags: Vec<String>,
    zone: String,
    public_ip: Option<Value>,
    #[serde(default)]
    public_ips: Vec<Value>,
    creation_date: Option<DateTime<Utc>>,
    /// The server's volumes by slot (`"0"` is the root volume). `DELETE` on a
    /// server leaves them behind, detached and still billed.
    #[serde(default)]
    volumes: BTreeMap<String, ServerVolume>,
}

/// A volume as a server lists it.
#[derive(Deserialize)]
pub(super) struct ServerVolume {
    id: String,
    /// `sbs_volume` (Block Storage API), `l_ssd` or `b_ssd` (Instance API).
    #[serde(default)]
    volume_type: String,
}

impl ServerVolume {
    /// Where the volume is deleted: SBS volumes belong to the Block Storage API,
    /// local and legacy block volumes to the Instance API.
    fn path(&self, zone: &Location) -> String {
        if self.volume_type == "sbs_volume" {
            format!("/block/v1alpha1/zones/{zone}/volumes/{}", self.id)
        } else {
            format!("/instance/v1/zones/{zone}/volumes/{}", self.id)
        }
    }
}

/// Attempts per volume `DELETE`: a volume stays attached for a few seconds after its
/// server is deleted, and is refused meanwhile.
const VOLUME_ATTEMPTS: u32 = 5;

#[derive(Deserialize)]
struct LocalImages {
    local_images: Vec<LocalImage>,
}

#[derive(Deserialize)]
struct LocalImage {
    id: String,
    #[serde(default)]
    compatible_commercial_types: Vec<String>,
}

impl Server {
    pub(super) fn into_instance(self) -> Result<VmInstance, ProviderError> {
        let address = self
            .public_ip
            .iter()
            .chain(self.public_ips.iter())
            .find_map(|ip| ip.get("address").and_then(Value::as_str))
            .map(str::to_owned);
        let labels = self.tags.iter().filter_map(|tag| {
            let (k, v) = tag.split_once('=')?;
            Some((k.to_owned(), v.to_owned()))
        });
        Ok(VmInstance {
            id: crate::vm_id(KIND, self.id)?,
            provider: KIND,
            name: self.name,
            server_type: self.commercial_type,
            location: crate::location(KIND, &self.zone)?,
            state: match self.state.as_str() {
                "starting" => VmState::Pending,
                "running" => VmState::Running,
                "stopped" | "stopped in place" | "stopping" => VmState::Stopped,
                "locked" => VmState::Failed,
                _ => VmState::Unknown,
            },
            labels: crate::lossy_labels(labels),
            address,
            created_at: self.creation_date,
            failure: None,
        })
    }
}

/// The tags a spec's labels become: `k=v`.
pub(super) fn tags(labels: &sam_core::Labels) -> Vec<String> {
    labels.iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// Whether an image reference is already an image id (a UUID).
fn is_uuid(value: &str) -> bool {
    value.len() == 36
        && value.chars().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        })
}

impl Client {
    /// One authenticated call; the body of a non-2xx reply is classified.
    pub(super) async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Body,
    ) -> Result<Reply, ProviderError> {
        let url = format!("{}{path}", self.config.base_url);
        let request = self
            .http
            .request(method, url)
            .header("X-Auth-Token", self.config.secret_key.expose())
            .query(query);
        let request = match body {
            Body::None => request,
            Body::Json(value) => request.json(&value),
            Body::Text(text) => request.header("Content-Type", "text/plain").body(text),
        };
        send(KIND, request).await?.success(classify)
    }

    pub(super) fn server_path(zone: &Location, id: &str) -> String {
        format!("/instance/v1/zones/{zone}/servers/{id}")
    }

    pub(super) async fn get_server(
        &self,
        zone: &Location,
        id: &str,
    ) -> Result<Server, ProviderError> {
        let reply = self
            .call(Method::GET, &Self::server_path(zone, id), &[], Body::None)
            .await?;
        Ok(reply.json::<ServerEnvelope>(KIND)?.server)
    }

    /// Finds a server in the configured zones; `None` when no zone has it.
    pub(super) async fn find_server(
        &self,
        id: &VmId,
    ) -> Result<Option<(Location, Server)>, ProviderError> {
        for zone in &self.config.zones {
            match self.get_server(zone, id.as_str()).await {
                Ok(server) => return Ok(Some((zone.clone(), server))),
                Err(e) if e.category() == ErrorCategory::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    pub(super) async fn action(
        &self,
        zone: &Location,
        id: &str,
        action: &str,
    ) -> Result<(), ProviderError> {
        let path = format!("{}/action", Self::server_path(zone, id));
        let body = Body::Json(serde_json::json!({ "action": action }));
        self.call(Method::POST, &path, &[], body).await.map(|_| ())
    }

    /// The image id for a spec: the reference itself when it is an id, else the
    /// Marketplace image with that label compatible with the server type.
    pub(super) async fn resolve_image(&self, spec: &VmSpec) -> Result<String, ProviderError> {
        let label = spec.image.as_deref().unwrap_or(&self.config.image);
        if is_uuid(label) {
            return Ok(label.to_owned());
        }
        let query = [
            ("image_label", label.to_owned()),
            ("zone", spec.location.to_string()),
            ("type", "instance_sbs".to_owned()),
        ];
        let reply = self
            .call(
                Method::GET,
                "/marketplace/v2/local-images",
                &query,
                Body::None,
            )
            .await?;
        let images: LocalImages = reply.json(KIND)?;
        let compatible = |i: &&LocalImage| {
            i.compatible_commercial_types.is_empty()
                || i.compatible_commercial_types.contains(&spec.server_type)
        };
        images
            .local_images
            .iter()
            .find(compatible)
            .map(|i| i.id.clone())
            .ok_or_else(|| {
                ProviderError::new(
                    KIND,
                    ErrorCategory::InvalidConfig,
                    format!(
                        "no image {label} for {} in {}",
                        spec.server_type, spec.location
                    ),
                )
            })
    }

    /// Removes a server this backend just created: terminate, or `DELETE` (with its
    /// volumes) when terminating fails; gone (404) counts as done.
    pub(super) async fn discard(&self, zone: &Location, id: &str) -> Result<(), ProviderError> {
        match self.action(zone, id, "terminate").await {
            Ok(()) => return Ok(()),
            Err(e) if e.category() == ErrorCategory::NotFound => return Ok(()),
            Err(_) => {}
        }
        match self.get_server(zone, id).await {
            Ok(server) => self.delete_server(zone, &server).await,
            Err(e) if e.category() == ErrorCategory::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `DELETE`s a server, then each of its volumes, which the server's `DELETE`
    /// leaves behind; gone counts as done. A volume that cannot be deleted fails
    /// the call with an error naming it, since nothing would find it later.
    pub(super) async fn delete_server(
        &self,
        zone: &Location,
        server: &Server,
    ) -> Result<(), ProviderError> {
        match self
            .call(
                Method::DELETE,
                &Self::server_path(zone, &server.id),
                &[],
                Body::None,
            )
            .await
        {
            Ok(_) => {}
            Err(e) if e.category() == ErrorCategory::NotFound => {}
            Err(e) => return Err(e),
        }
        let mut left = Vec::new();
        let mut last = None;
        for volume in server.volumes.values() {
            if let Err(e) = self.delete_volume(zone, volume).await {
                left.push(volume.id.as_str());
                last = Some(e);
            }
        }
        match last {
            None => Ok(()),
            Some(e) => Err(ProviderError::new(
                KIND,
                e.category(),
                format!(
                    "server {} deleted, but its volumes {} are left (still billed): {e}",
                    server.id,
                    left.join(", ")
                ),
            )),
        }
    }

    /// Deletes one detached volume, retrying while it is still attached.
    async fn delete_volume(
        &self,
        zone: &Location,
        volume: &ServerVolume,
    ) -> Result<(), ProviderError> {
        let path = volume.path(zone);
        let mut delay = Duration::from_millis(500);
        let mut attempt = 1;
        loop {
            match self.call(Method::DELETE, &path, &[], Body::None).await {
                Ok(_) => return Ok(()),
                Err(e) if e.category() == ErrorCategory::NotFound => return Ok(()),
                Err(e) if attempt >= VOLUME_ATTEMPTS => return Err(e),
                Err(e) => {
                    tracing::debug!(volume = %volume.id, attempt, error = %e, "volume not deletable yet");
                    tokio::time::sleep(delay).await;
                    delay = delay.saturating_mul(2);
                    attempt += 1;
                }
            }
        }
    }
}
