//! Compute Engine REST calls and their private wire types.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use reqwest::Method;
use sam_core::{ErrorCategory, Location, ProviderError, ProviderKind, VmInstance, VmSpec, VmState};
use serde::Deserialize;
use serde_json::Value;

use super::auth::TokenSource;
use super::config::GcpConfig;
use super::error::{classify, classify_operation_error};
use crate::http::{Reply, send};

const KIND: ProviderKind = ProviderKind::Gcp;

/// The REST client: project, zones, token source and the shared HTTP client.
#[derive(Debug)]
pub(super) struct Client {
    pub(super) config: GcpConfig,
    pub(super) http: reqwest::Client,
    pub(super) tokens: TokenSource,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Operation {
    pub(super) name: String,
    #[serde(default)]
    pub(super) status: String,
    pub(super) error: Option<Value>,
    pub(super) http_error_status_code: Option<u16>,
}

impl Operation {
    /// The classified failure of a finished operation, if it failed.
    pub(super) fn failure(&self) -> Option<ProviderError> {
        let error = self.error.as_ref()?;
        Some(classify_operation_error(self.http_error_status_code, error))
    }

    pub(super) fn is_done(&self) -> bool {
        self.status == "DONE"
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct InstancePage {
    #[serde(default)]
    pub(super) items: Vec<Instance>,
    pub(super) next_page_token: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Instance {
    name: String,
    status: String,
    machine_type: String,
    zone: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    network_interfaces: Vec<Value>,
    creation_timestamp: Option<DateTime<Utc>>,
}

/// The last segment of a resource URL (`…/zones/europe-west1-b` → `europe-west1-b`).
fn last_segment(url: &str) -> &str {
    url.rsplit('/').next().unwrap_or(url)
}

impl Instance {
    pub(super) fn into_instance(self) -> Result<VmInstance, ProviderError> {
        let address = self.network_interfaces.iter().find_map(|n| {
            n.pointer("/accessConfigs/0/natIP")
                .or_else(|| n.get("networkIP"))
                .and_then(Value::as_str)
                .map(str::to_owned)
        });
        Ok(VmInstance {
            // Instance names are unique per project and zone; the SDK addresses
            // instances by name and searches the configured zones.
            id: crate::vm_id(KIND, self.name.clone())?,
            provider: KIND,
            name: self.name,
            server_type: last_segment(&self.machine_type).to_owned(),
            location: crate::location(KIND, last_segment(&self.zone))?,
            state: match self.status.as_str() {
                "PROVISIONING" | "STAGING" | "REPAIRING" => VmState::Pending,
                "RUNNING" => VmState::Running,
                "STOPPING" | "STOPPED" | "SUSPENDING" | "SUSPENDED" | "TERMINATED" => {
                    VmState::Stopped
                }
                _ => VmState::Unknown,
            },
            labels: crate::lossy_labels(self.labels),
            address,
            created_at: self.creation_timestamp,
            failure: None,
        })
    }
}

/// The body of `instances.insert`.
pub(super) fn insert_body(config: &GcpConfig, spec: &VmSpec) -> Value {
    let zone = &spec.location;
    let labels: BTreeMap<&str, &str> = spec.labels.iter().collect();
    serde_json::json!({
        "name": spec.name,
        "machineType": format!("zones/{zone}/machineTypes/{}", spec.server_type),
        "labels": labels,
        "metadata": { "items": [{ "key": "user-data", "value": spec.user_data }] },
        "disks": [{
            "boot": true,
            "autoDelete": true,
            "initializeParams": {
                "sourceImage": spec.image.as_deref().unwrap_or(&config.image),
                "diskSizeGb": config.disk_gb.to_string(),
            },
        }],
        "networkInterfaces": [{
            "network": "global/networks/default",
            "accessConfigs": [{ "type": "ONE_TO_ONE_NAT", "name": "External NAT" }],
        }],
    })
}

/// A request id (a UUID) derived from what makes an attempt unique, so sending the
/// same attempt twice creates one instance, and another zone or type is a new request.
pub(super) fn request_id(spec: &VmSpec) -> String {
    let key = format!(
        "{}\n{}\n{}\n{}",
        spec.node_id, spec.name, spec.location, spec.server_type
    );
    // FNV-1a, twice with different offsets: stable across processes and versions.
    let fnv = |offset: u64| {
        key.bytes().fold(offset, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        })
    };
    let (hi, lo) = (fnv(0xcbf2_9ce4_8422_2325), fnv(0x6c62_272e_07bb_0142));
    // Version 4 layout and RFC 4122 variant, so the API accepts it as a UUID.
    let hi = (hi & 0xffff_ffff_ffff_0fff) | 0x0000_0000_0000_4000;
    let lo = (lo & 0x3fff_ffff_ffff_ffff) | 0x8000_0000_0000_0000;
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        hi >> 32,
        (hi >> 16) & 0xffff,
        hi & 0xffff,
        lo >> 48,
        lo & 0xffff_ffff_ffff
    )
}

impl Client {
    /// One authenticated call under `/projects/{project}`; a non-2xx reply is classified.
    pub(super) async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<Value>,
    ) -> Result<Reply, ProviderError> {
        let token = self.tokens.token().await?;
        let url = format!(
            "{}/projects/{}{path}",
            self.config.base_url, self.config.project_id
        );
        let mut request = self
            .http
            .request(method, url)
            .bearer_auth(token.expose())
            .query(query);
        if let Some(body) = body {
            request = request.json(&body);
        }
        send(KIND, request).await?.success(classify)
    }

    pub(super) async fn get_instance(
        &self,
        zone: &Location,
        name: &str,
    ) -> Result<Option<Instance>, ProviderError> {
        match self
            .call(
                Method::GET,
                &format!("/zones/{zone}/instances/{name}"),
                &[],
                None,
            )
            .await
        {
            Ok(reply) => reply.json(KIND).map(Some),
            Err(e) if e.category() == ErrorCategory::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Finds an instance in the configured zones.
    pub(super) async fn find_instance(
        &self,
        name: &str,
    ) -> Result<Option<(Location, Instance)>, ProviderError> {
        for zone in &self.config.zones {
            if let Some(instance) = self.get_instance(zone, name).await? {
                return Ok(Some((zone.clone(), instance)));
            }
        }
        Ok(None)
    }

    pub(super) async fn operation(
        &self,
        zone: &Location,
        name: &str,
    ) -> Result<Operation, ProviderError> {
        let reply = self
            .call(
                Method::GET,
                &format!("/zones/{zone}/operations/{name}"),
                &[],
                None,
            )
            .await?;
        reply.json(KIND)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_stable_uuids() {
        let node = sam_core::NodeId::new("n1").expect("valid");
        let mut spec = VmSpec {
            labels: sam_core::Labels::for_node(&node),
            node_id: node,
            name: "sam-n1".into(),
            size: sam_core::VmSize::Small,
            server_type: "e2-medium".into(),
            location: Location::new("europe-west1-b").expect("valid"),
            image: None,
            user_data: String::new(),
        };
        let first = request_id(&spec);
        assert_eq!(first, request_id(&spec));
        assert_eq!(first.len(), 36);
        assert_eq!(&first[14..15], "4");
        spec.location = Location::new("europe-west1-c").expect("valid");
        assert_ne!(first, request_id(&spec), "another zone is another request");
    }
}
