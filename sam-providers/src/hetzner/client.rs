//! Hetzner Cloud REST calls and their private wire types.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use reqwest::Method;
use sam_core::{ProviderError, ProviderKind, VmId, VmInstance, VmSpec, VmState};
use serde::Deserialize;
use serde_json::Value;

use super::config::HetznerConfig;
use super::error::classify;
use crate::http::{Reply, send};

const KIND: ProviderKind = ProviderKind::Hetzner;

/// The REST client: base URL, token and the shared HTTP client.
#[derive(Debug)]
pub(super) struct Client {
    pub(super) config: HetznerConfig,
    pub(super) http: reqwest::Client,
}

/// The body of `POST /servers`.
pub(super) fn create_body(spec: &VmSpec, default_image: &str) -> Value {
    let labels: BTreeMap<&str, &str> = spec.labels.iter().collect();
    serde_json::json!({
        "name": spec.name,
        "server_type": spec.server_type,
        "image": spec.image.as_deref().unwrap_or(default_image),
        "location": spec.location.as_str(),
        "user_data": spec.user_data,
        "labels": labels,
        "start_after_create": true,
    })
}

#[derive(Deserialize)]
pub(super) struct ServerEnvelope {
    pub(super) server: Server,
}

#[derive(Deserialize)]
pub(super) struct ServerPage {
    pub(super) servers: Vec<Server>,
    #[serde(default)]
    pub(super) meta: Option<Value>,
}

impl ServerPage {
    pub(super) fn next_page(&self) -> Option<u64> {
        self.meta
            .as_ref()?
            .pointer("/pagination/next_page")?
            .as_u64()
    }
}

#[derive(Deserialize)]
pub(super) struct Server {
    id: u64,
    name: String,
    status: String,
    server_type: Named,
    datacenter: Option<Datacenter>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    public_net: Option<Value>,
    created: Option<DateTime<Utc>>,
}

#[derive(Deserialize)]
struct Named {
    name: String,
}

#[derive(Deserialize)]
struct Datacenter {
    location: Named,
}

#[derive(Deserialize)]
pub(super) struct ActionPage {
    pub(super) actions: Vec<Action>,
}

#[derive(Deserialize)]
pub(super) struct Action {
    pub(super) status: String,
    pub(super) error: Option<Value>,
}

impl Server {
    pub(super) fn into_instance(self) -> Result<VmInstance, ProviderError> {
        let location = self.datacenter.map(|d| d.location.name).unwrap_or_default();
        let address = self.public_net.as_ref().and_then(|n| {
            n.pointer("/ipv4/ip")
                .or_else(|| n.pointer("/ipv6/ip"))
                .and_then(Value::as_str)
                .map(str::to_owned)
        });
        Ok(VmInstance {
            id: crate::vm_id(KIND, self.id.to_string())?,
            provider: KIND,
            name: self.name,
            server_type: self.server_type.name,
            location: crate::location(KIND, &location)?,
            state: match self.status.as_str() {
                "initializing" | "starting" | "migrating" | "rebuilding" => VmState::Pending,
                "running" => VmState::Running,
                "stopping" | "off" => VmState::Stopped,
                "deleting" => VmState::Deleting,
                _ => VmState::Unknown,
            },
            labels: crate::lossy_labels(self.labels),
            address,
            created_at: self.created,
            failure: None,
        })
    }
}

impl Client {
    /// One authenticated call; the body of a non-2xx reply is classified.
    pub(super) async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<Value>,
    ) -> Result<Reply, ProviderError> {
        let url = format!("{}{path}", self.config.base_url);
        let mut request = self
            .http
            .request(method, url)
            .bearer_auth(self.config.token.expose())
            .query(query);
        if let Some(body) = body {
            request = request.json(&body);
        }
        send(KIND, request).await?.success(classify)
    }

    pub(super) async fn get_server(&self, id: &VmId) -> Result<Server, ProviderError> {
        let reply = self
            .call(Method::GET, &format!("/servers/{id}"), &[], None)
            .await?;
        Ok(reply.json::<ServerEnvelope>(KIND)?.server)
    }
}
