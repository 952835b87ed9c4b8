//! `GET /metrics`: the server's metrics in the Prometheus text format (OpenMetrics),
//! through the Prometheus project's own client, `prometheus-client`.
//!
//! The series, all prefixed `sam_`:
//! - `sam_tasks{status}` and `sam_task_steps{step}`: the live tasks (queued,
//!   delegated, in progress) by status and by execution step, read from the store
//!   at each scrape, so every server on one database reports the same. Ended tasks
//!   are not listed at a scrape (they only grow); they are counted as they end:
//! - `sam_tasks_ended_total{status}`: tasks this server saw end (completed, failed,
//!   cancelled), from the control plane's events.
//! - `sam_step_duration_seconds{step}`: how long tasks stayed in each step, from
//!   one step event of a task on this server to its next step or end.
//! - `sam_provider_calls_total{provider, operation, outcome}`: every provider call
//!   the control plane made, `outcome` `ok` or the error's category
//!   (`transient_capacity`, `rate_limited`, …); see [`MeteredProvider`].
//! - `sam_nodes{status}`: the nodes by status (deleted rows left out), at each scrape.
//! - `sam_leases_lost_total`: steps of this server stopped because the lease of
//!   their task ran out and another server took the task over
//!   ([`sam_core::ControlPlane::leases_lost`]). A server that died counts nothing.
//! - `sam_http_request_duration_seconds{method, route, status}`: every request,
//!   by its route template (`/v1/tasks/{id}`, never the id itself; `unmatched`
//!   for a request no route matched).
//!
//! Scrapes need an API token, like the user routes: the server's port is also the
//! one nodes call back on, often public. `metrics_public = true`
//! (`SAM_METRICS_PUBLIC`) serves it without one, for a scraper on a private network.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use sam_core::{
    Catalog, ControlPlane, ExecutionStep, Labels, NodeFilter, NodeStatus, Provider,
    ProviderCapabilities, ProviderError, ProviderKind, TaskEvent, TaskEventKind, TaskFilter,
    TaskId, TaskStatus, VmId, VmInstance, VmSpec,
};
use tokio::sync::{broadcast, watch};

use super::ApiError;

/// The path scrapers read.
pub const PATH: &str = "/metrics";

/// The live statuses `sam_tasks` reports, each even at zero.
const LIVE: [TaskStatus; 3] = [
    TaskStatus::Queued,
    TaskStatus::Delegated,
    TaskStatus::InProgress,
];

/// The node statuses `sam_nodes` reports, each even at zero: all but `deleted`.
const NODE_STATUSES: [NodeStatus; 6] = [
    NodeStatus::Creating,
    NodeStatus::Running,
    NodeStatus::Recovery,
    NodeStatus::Stopping,
    NodeStatus::Stopped,
    NodeStatus::Error,
];

/// At most this many tasks' current steps are remembered for `sam_step_duration_seconds`;
/// past it, those in their step for over a day are forgotten (tasks that ended on
/// another server, whose end this one never sees).
const TRACKED_TASKS: usize = 10_000;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StepLabel {
    step: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProviderCallLabels {
    provider: String,
    operation: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    method: String,
    route: String,
    status: String,
}

/// A step's duration: 0.1 s to about an hour, doubling.
fn step_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.1, 2.0, 16))
}

/// A request's duration: 1 ms to about half a minute, doubling.
fn http_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every series of `/metrics`; see the [module docs](self). One per server, shared by
/// the router, the provider decorators and the event listener.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    tasks: Family<StatusLabel, Gauge>,
    task_steps: Family<StepLabel, Gauge>,
    tasks_ended: Family<StatusLabel, Counter>,
    step_seconds: Histograms<StepLabel>,
    provider_calls: Family<ProviderCallLabels, Counter>,
    nodes: Family<StatusLabel, Gauge>,
    leases_lost: Counter,
    http: Histograms<HttpLabels>,
    /// Each task's current step and since when, as this server saw it.
    steps: Mutex<HashMap<TaskId, (ExecutionStep, DateTime<Utc>)>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every series registered, all empty.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("sam");
        let tasks = Family::<StatusLabel, Gauge>::default();
        let task_steps = Family::<StepLabel, Gauge>::default();
        let tasks_ended = Family::<StatusLabel, Counter>::default();
        let step_seconds: Histograms<StepLabel> = Family::new_with_constructor(step_histogram);
        let provider_calls = Family::<ProviderCallLabels, Counter>::default();
        let nodes = Family::<StatusLabel, Gauge>::default();
        let leases_lost = Counter::default();
        let http: Histograms<HttpLabels> = Family::new_with_constructor(http_histogram);
        registry.register(
            "tasks",
            "Live tasks by status, from the store",
            tasks.clone(),
        );
        registry.register(
            "task_steps",
            "Live tasks by execution step, from the store",
            task_steps.clone(),
        );
        registry.register(
            "tasks_ended",
            "Tasks this server saw end, by final status",
            tasks_ended.clone(),
        );
        registry.register(
            "step_duration_seconds",
            "Time tasks spent in each execution step, as this server saw them",
            step_seconds.clone(),
        );
        registry.register(
            "provider_calls",
            "Provider calls by provider, operation and outcome (ok or the error category)",
            provider_calls.clone(),
        );
        registry.register(
            "nodes",
            "Nodes by status (deleted ones left out), from the store",
            nodes.clone(),
        );
        registry.register(
            "leases_lost",
            "Steps of this server stopped because another server took their task's expired lease",
            leases_lost.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP requests by method, route template and status",
            http.clone(),
        );
        Self {
            registry,
            tasks,
            task_steps,
            tasks_ended,
            step_seconds,
            provider_calls,
            nodes,
            leases_lost,
            http,
            steps: Mutex::default(),
        }
    }

    /// Reads what a scrape shows from the store and the control plane, then renders
    /// every series as OpenMetrics text.
    ///
    /// # Errors
    /// Store failures.
    pub async fn render(&self, control_plane: &ControlPlane) -> Result<String, sam_core::Error> {
        let live = control_plane.list(&TaskFilter::live()).await?;
        let nodes = control_plane
            .store()
            .list_nodes(&NodeFilter {
                statuses: NODE_STATUSES.to_vec(),
                ..NodeFilter::default()
            })
            .await?;
        for status in LIVE {
            let count = live.iter().filter(|t| t.status == status).count();
            self.tasks
                .get_or_create(&StatusLabel {
                    status: status.as_str().to_owned(),
                })
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
        for step in ExecutionStep::ALL {
            let count = live.iter().filter(|t| t.execution_step == step).count();
            self.task_steps
                .get_or_create(&StepLabel {
                    step: step.as_str().to_owned(),
                })
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
        for status in NODE_STATUSES {
            let count = nodes.iter().filter(|n| n.status == status).count();
            self.nodes
                .get_or_create(&StatusLabel {
                    status: status.as_str().to_owned(),
                })
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
        let lost = control_plane.leases_lost();
        let counted = self.leases_lost.get();
        if lost > counted {
            self.leases_lost.inc_by(lost - counted);
        }
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        Ok(text)
    }

    /// Counts what one event shows: a step's end (its duration) and a task's end.
    fn observe(&self, event: &TaskEvent) {
        let mut steps = self.steps.lock().unwrap_or_else(|e| e.into_inner());
        let ended = match &event.kind {
            TaskEventKind::Step { step, .. } => {
                let previous = steps.insert(event.task_id.clone(), (*step, event.at));
                if steps.len() > TRACKED_TASKS {
                    let day_ago = event.at - chrono::Duration::days(1);
                    steps.retain(|_, (_, since)| *since > day_ago);
                }
                previous
            }
            TaskEventKind::Status { status, .. } if status.is_terminal() => {
                self.tasks_ended
                    .get_or_create(&StatusLabel {
                        status: status.as_str().to_owned(),
                    })
                    .inc();
                steps.remove(&event.task_id)
            }
            _ => None,
        };
        if let Some((step, since)) = ended {
            let seconds = (event.at - since).num_milliseconds().max(0) as f64 / 1000.0;
            self.step_seconds
                .get_or_create(&StepLabel {
                    step: step.as_str().to_owned(),
                })
                .observe(seconds);
        }
    }

    /// Observes the control plane's events until `stopped` turns true. A listener
    /// that falls behind skips what it missed (those steps are not timed).
    pub fn listen(
        self: &Arc<Self>,
        control_plane: &ControlPlane,
        mut stopped: watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let mut events = control_plane.subscribe();
        let metrics = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stopped.wait_for(|s| *s) => return,
                    event = events.recv() => match event {
                        Ok(event) => metrics.observe(&event),
                        Err(broadcast::error::RecvError::Lagged(missed)) => {
                            tracing::debug!(missed, "the metrics fell behind the task events");
                        }
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                }
            }
        })
    }

    /// `provider` with its calls counted here.
    pub fn meter(self: &Arc<Self>, provider: Arc<dyn Provider>) -> Arc<dyn Provider> {
        Arc::new(MeteredProvider {
            inner: provider,
            metrics: Arc::clone(self),
        })
    }

    fn count_call<T>(
        &self,
        kind: ProviderKind,
        operation: &str,
        result: &Result<T, ProviderError>,
    ) {
        let outcome = match result {
            Ok(_) => "ok",
            Err(e) => e.category().as_str(),
        };
        self.provider_calls
            .get_or_create(&ProviderCallLabels {
                provider: kind.as_str().to_owned(),
                operation: operation.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
    }
}

/// The answer of `GET /metrics`.
pub(super) async fn scrape(
    State((metrics, control_plane)): State<(Arc<Metrics>, ControlPlane)>,
) -> Result<Response, ApiError> {
    let text = metrics.render(&control_plane).await?;
    let mut response = text.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    Ok(response)
}

/// Times every request by its route template and status.
pub(super) async fn time_requests(
    State(metrics): State<Arc<Metrics>>,
    request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().as_str().to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    metrics
        .http
        .get_or_create(&HttpLabels {
            method,
            route,
            status: response.status().as_str().to_owned(),
        })
        .observe(started.elapsed().as_secs_f64());
    response
}

/// A provider whose every call is counted in [`Metrics`] by operation and outcome;
/// the calls themselves pass through unchanged.
#[derive(Debug)]
pub struct MeteredProvider {
    inner: Arc<dyn Provider>,
    metrics: Arc<Metrics>,
}

impl MeteredProvider {
    fn counted<T>(
        &self,
        operation: &str,
        result: Result<T, ProviderError>,
    ) -> Result<T, ProviderError> {
        self.metrics
            .count_call(self.inner.kind(), operation, &result);
        result
    }
}

#[async_trait::async_trait]
impl Provider for MeteredProvider {
    fn kind(&self) -> ProviderKind {
        self.inner.kind()
    }

    fn catalog(&self) -> &Catalog {
        self.inner.catalog()
    }

    fn capabilities(&self) -> ProviderCapabilities {
        self.inner.capabilities()
    }

    async fn check_credentials(&self) -> Result<(), ProviderError> {
        let result = self.inner.check_credentials().await;
        self.counted("check_credentials", result)
    }

    async fn create_vm(&self, spec: &VmSpec) -> Result<VmInstance, ProviderError> {
        let result = self.inner.create_vm(spec).await;
        self.counted("create_vm", result)
    }

    async fn poll_create(&self, vm: &VmInstance) -> Result<VmInstance, ProviderError> {
        let result = self.inner.poll_create(vm).await;
        self.counted("poll_create", result)
    }

    async fn get_vm(&self, id: &VmId) -> Result<Option<VmInstance>, ProviderError> {
        let result = self.inner.get_vm(id).await;
        self.counted("get_vm", result)
    }

    async fn delete_vm(&self, id: &VmId) -> Result<(), ProviderError> {
        let result = self.inner.delete_vm(id).await;
        self.counted("delete_vm", result)
    }

    async fn list_vms(&self, labels: &Labels) -> Result<Vec<VmInstance>, ProviderError> {
        let result = self.inner.list_vms(labels).await;
        self.counted("list_vms", result)
    }
}

impl crate::embedded::ProviderLayer for Metrics {
    fn layer(self: Arc<Self>, provider: Arc<dyn Provider>) -> Arc<dyn Provider> {
        self.meter(provider)
    }
}
