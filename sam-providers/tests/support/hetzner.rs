//! A mock Hetzner Cloud API for the wire-level suites.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use wiremock::{Request, Respond, ResponseTemplate};

/// Hetzner projects keyed by their API token, each with its own servers.
///
/// A server is seen only with the token that created it, as in Hetzner Cloud, where
/// a token belongs to one project; an unknown token gets the recorded 401 body
/// (`hetzner-12`). Listing returns `per_page` servers per page.
#[derive(Clone)]
pub struct HetznerProjects {
    projects: Arc<Mutex<HashMap<String, BTreeMap<u64, Value>>>>,
    next_id: Arc<Mutex<u64>>,
    per_page: usize,
}

impl HetznerProjects {
    /// One empty project per token.
    pub fn new(tokens: &[&str], per_page: usize) -> Self {
        Self {
            per_page,
            projects: Arc::new(Mutex::new(
                tokens
                    .iter()
                    .map(|t| ((*t).to_owned(), BTreeMap::new()))
                    .collect(),
            )),
            next_id: Arc::new(Mutex::new(1000)),
        }
    }
}

fn not_found() -> ResponseTemplate {
    ResponseTemplate::new(404)
        .set_body_json(json!({ "error": { "code": "not_found", "message": "server not found" } }))
}

impl Respond for HetznerProjects {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let mut projects = self.projects.lock().expect("lock");
        let Some(servers) = token_of(request).and_then(|t| projects.get_mut(&t)) else {
            let unauthorized = super::case("hetzner-12");
            return ResponseTemplate::new(unauthorized.http_status.expect("status"))
                .set_body_raw(unauthorized.body, "application/json");
        };
        let segments: Vec<&str> = request
            .url
            .path()
            .trim_start_matches("/v1/")
            .split('/')
            .collect();
        let query: BTreeMap<String, String> = request.url.query_pairs().into_owned().collect();
        match (request.method.as_str(), segments.as_slice()) {
            ("POST", ["servers"]) => {
                let body: Value = serde_json::from_slice(&request.body).expect("json body");
                let mut next = self.next_id.lock().expect("lock");
                *next += 1;
                let id = *next;
                let server = json!({
                    "id": id, "name": body["name"], "status": "initializing",
                    "server_type": { "name": body["server_type"] },
                    "datacenter": { "location": { "name": body["location"] } },
                    "labels": body["labels"], "public_net": { "ipv4": { "ip": "192.0.2.10" } },
                    "created": "2026-01-01T00:00:00+00:00",
                });
                servers.insert(id, server.clone());
                ResponseTemplate::new(201).set_body_json(json!({
                    "server": server,
                    "action": { "id": 1, "command": "create_server", "status": "running" },
                }))
            }
            ("GET", ["servers"]) => {
                let selector: Vec<(String, String)> = query
                    .get("label_selector")
                    .map(|s| {
                        s.split(',')
                            .filter_map(|p| p.split_once("=="))
                            .map(|(k, v)| (k.to_owned(), v.to_owned()))
                            .collect()
                    })
                    .unwrap_or_default();
                let matching: Vec<&Value> = servers
                    .values()
                    .filter(|s| selector.iter().all(|(k, v)| s["labels"][k] == json!(v)))
                    .collect();
                let page: usize = query.get("page").and_then(|p| p.parse().ok()).unwrap_or(1);
                let shown: Vec<&Value> = matching
                    .iter()
                    .skip((page - 1) * self.per_page)
                    .take(self.per_page)
                    .copied()
                    .collect();
                let next = (page * self.per_page < matching.len()).then_some(page + 1);
                ResponseTemplate::new(200).set_body_json(json!({
                    "servers": shown,
                    "meta": { "pagination": { "page": page, "per_page": self.per_page, "next_page": next } },
                }))
            }
            (m, ["servers", id, rest @ ..]) => {
                let Some(id) = id.parse::<u64>().ok().filter(|id| servers.contains_key(id)) else {
                    return not_found();
                };
                match (m, rest) {
                    ("GET", []) => {
                        let server = servers.get_mut(&id).expect("present");
                        let shown = server.clone();
                        server["status"] = json!("running");
                        ResponseTemplate::new(200).set_body_json(json!({ "server": shown }))
                    }
                    ("GET", ["actions"]) => {
                        ResponseTemplate::new(200).set_body_json(json!({ "actions": [] }))
                    }
                    ("DELETE", []) => {
                        servers.remove(&id);
                        ResponseTemplate::new(200)
                            .set_body_json(json!({ "action": { "id": 2, "status": "running" } }))
                    }
                    _ => not_found(),
                }
            }
            _ => not_found(),
        }
    }
}

/// The bearer token a request carries.
pub fn token_of(request: &Request) -> Option<String> {
    request
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned)
}
