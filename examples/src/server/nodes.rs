//! The fleet routes: the nodes (with what each reported of its boot) and the
//! provider's catalog of sizes.

use axum::extract::{Path as UrlPath, State};
use sam_core::{ErrorCategory, NodeFilter};

use super::views::{CatalogView, NodeView};
use super::{ApiError, ApiState, ErrorDoc, path_id};

/// The nodes.
#[utoipa::path(get, path = "/v1/nodes", tag = "nodes", security(("bearer" = [])),
    responses((status = 200, description = "Every node", body = Vec<NodeView>), (status = 401, description = "No or an unknown API token", body = ErrorDoc)))]
pub(super) async fn nodes(
    State(state): State<ApiState>,
) -> Result<axum::Json<Vec<NodeView>>, ApiError> {
    let nodes = state
        .control_plane
        .store()
        .list_nodes(&NodeFilter::default())
        .await?;
    Ok(axum::Json(
        nodes
            .into_iter()
            .map(|node| NodeView {
                size_display: sam_providers::SizeDisplay::from_catalog(&state.catalog, node.size)
                    .inline(),
                node,
            })
            .collect(),
    ))
}

/// One node, with what it reported of its boot (`boot`: the timeline of its
/// phases, and the failing phase, exit status and journal tail of a failed boot).
#[utoipa::path(get, path = "/v1/nodes/{id}", tag = "nodes", security(("bearer" = [])), params(("id" = String, Path, description = "The node id")),
    responses(
        (status = 200, description = "The node", body = NodeView),
        (status = 404, description = "No such node", body = ErrorDoc),
        (status = 401, description = "No or an unknown API token", body = ErrorDoc),
    ))]
pub(super) async fn node(
    State(state): State<ApiState>,
    UrlPath(id): UrlPath<String>,
) -> Result<axum::Json<NodeView>, ApiError> {
    let id: sam_core::NodeId = path_id(&id, "id")?;
    let node = state
        .control_plane
        .store()
        .get_node(&id)
        .await?
        .ok_or_else(|| {
            ApiError::new(
                ErrorCategory::NotFound,
                &format!("node {id} does not exist"),
            )
        })?;
    Ok(axum::Json(NodeView {
        size_display: sam_providers::SizeDisplay::from_catalog(&state.catalog, node.size).inline(),
        node,
    }))
}

/// The provider's catalog: sizes, server types, locations.
#[utoipa::path(get, path = "/v1/catalog", tag = "nodes", security(("bearer" = [])),
    responses((status = 200, description = "The catalog", body = CatalogView), (status = 401, description = "No or an unknown API token", body = ErrorDoc)))]
pub(super) async fn catalog(State(state): State<ApiState>) -> axum::Json<CatalogView> {
    axum::Json(CatalogView::new(&state.catalog))
}
