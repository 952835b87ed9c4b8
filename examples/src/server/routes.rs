//! The route table: every user and public route with its method and handler. The
//! router is built from it ([`super::api_router`]), and so is the OpenAPI document
//! ([`openapi`]), together with the handlers' annotations.

use axum::routing::{MethodFilter, MethodRouter};
use utoipa::{OpenApi as _, ToSchema};

use super::views::HealthView;
use super::{ApiState, accounts, agent_download, follow, nodes, tasks, tokens};

/// An HTTP method the API uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verb {
    /// `GET`.
    Get,
    /// `POST`.
    Post,
    /// `PUT`.
    Put,
    /// `DELETE`.
    Delete,
}

impl Verb {
    /// The method's name, upper case.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Get => "GET",
            Self::Post => "POST",
            Self::Put => "PUT",
            Self::Delete => "DELETE",
        }
    }

    const fn to_filter(self) -> MethodFilter {
        match self {
            Self::Get => MethodFilter::GET,
            Self::Post => MethodFilter::POST,
            Self::Put => MethodFilter::PUT,
            Self::Delete => MethodFilter::DELETE,
        }
    }
}

/// One route of the table the router is built from.
type RouteEntry<S> = (Verb, &'static str, MethodRouter<S>);

fn entry<S, H, T>(verb: Verb, path: &'static str, handler: H) -> RouteEntry<S>
where
    S: Clone + Send + Sync + 'static,
    H: axum::handler::Handler<T, S>,
    T: 'static,
{
    (verb, path, axum::routing::on(verb.to_filter(), handler))
}

/// The routes anyone may call.
pub(super) fn public_routes() -> Vec<RouteEntry<()>> {
    vec![
        entry(Verb::Get, "/v1/health", health),
        entry(Verb::Get, "/v1/openapi.json", openapi_json),
        entry(Verb::Get, agent_download::PATH, agent_download::download),
    ]
}

/// The routes behind a bearer token.
pub(super) fn user_routes() -> Vec<RouteEntry<ApiState>> {
    vec![
        entry(Verb::Post, "/v1/tasks", tasks::submit),
        entry(Verb::Get, "/v1/tasks", tasks::list),
        entry(Verb::Get, "/v1/tasks/{id}", tasks::task),
        entry(Verb::Post, "/v1/tasks/{id}/cancel", tasks::cancel),
        entry(Verb::Get, "/v1/tasks/{id}/events", follow::events),
        entry(Verb::Get, "/v1/nodes", nodes::nodes),
        entry(Verb::Get, "/v1/nodes/{id}", nodes::node),
        entry(Verb::Get, "/v1/catalog", nodes::catalog),
        entry(Verb::Get, "/v1/tokens", tokens::list_tokens),
        entry(Verb::Post, "/v1/tokens", tokens::create_token),
        entry(Verb::Delete, "/v1/tokens/{id}", tokens::revoke_token),
        entry(Verb::Post, "/v1/tasks/{id}/retry", tasks::retry),
        entry(Verb::Post, "/v1/tasks/{id}/fork", tasks::fork),
        entry(Verb::Post, "/v1/users", accounts::create_user),
        entry(Verb::Get, "/v1/users/{id}", accounts::get_user),
        entry(Verb::Put, "/v1/users/{id}", accounts::update_user),
        entry(Verb::Get, "/v1/users/{id}/setup", accounts::setup),
        entry(Verb::Put, "/v1/users/{id}/setup", accounts::set_setup),
        entry(
            Verb::Get,
            "/v1/users/{id}/credentials",
            accounts::user_credentials,
        ),
        entry(
            Verb::Put,
            "/v1/users/{id}/credentials",
            accounts::set_user_credential,
        ),
        entry(
            Verb::Delete,
            "/v1/users/{id}/credentials/{target}",
            accounts::delete_user_credential,
        ),
        entry(
            Verb::Post,
            "/v1/users/{id}/github/installations",
            accounts::link_installation,
        ),
        entry(
            Verb::Get,
            "/v1/users/{id}/github/installations",
            accounts::list_installations,
        ),
        entry(
            Verb::Delete,
            "/v1/users/{id}/github/installations/{installation}",
            accounts::unlink_installation,
        ),
        entry(Verb::Get, "/v1/projects", accounts::list_projects),
        entry(Verb::Post, "/v1/projects", accounts::create_project),
        entry(Verb::Get, "/v1/projects/{id}", accounts::get_project),
        entry(Verb::Put, "/v1/projects/{id}", accounts::update_project),
        entry(Verb::Delete, "/v1/projects/{id}", accounts::delete_project),
        entry(
            Verb::Get,
            "/v1/projects/{id}/credentials",
            accounts::project_credentials,
        ),
        entry(
            Verb::Put,
            "/v1/projects/{id}/credentials",
            accounts::set_project_credential,
        ),
        entry(
            Verb::Delete,
            "/v1/projects/{id}/credentials/{target}",
            accounts::delete_project_credential,
        ),
        entry(
            Verb::Get,
            "/v1/projects/{id}/profiles",
            accounts::list_profiles,
        ),
        entry(
            Verb::Post,
            "/v1/projects/{id}/profiles",
            accounts::create_profile,
        ),
        entry(
            Verb::Get,
            "/v1/projects/{id}/profiles/{profile}",
            accounts::get_profile,
        ),
        entry(
            Verb::Put,
            "/v1/projects/{id}/profiles/{profile}",
            accounts::update_profile,
        ),
        entry(
            Verb::Delete,
            "/v1/projects/{id}/profiles/{profile}",
            accounts::delete_profile,
        ),
    ]
}

/// Every route [`super::api_router`] serves, as (method, path) in axum's path syntax (which
/// is also OpenAPI's): the public and user routes from the table the router is built
/// from, and the callback routes ([`sam_agent::plane::CALLBACK_PATHS`], all `POST`). Not
/// listed: the served repository ([`sam_agent::plane::SERVED_REPO_PATH`]), which speaks
/// git's smart HTTP protocol to git, not JSON.
pub fn routes() -> Vec<(Verb, &'static str)> {
    let public = public_routes().into_iter().map(|(v, p, _)| (v, p));
    let user = user_routes().into_iter().map(|(v, p, _)| (v, p));
    let callbacks = sam_agent::plane::CALLBACK_PATHS
        .into_iter()
        .chain(sam_agent::plane::GIT_PATHS)
        .map(|p| (Verb::Post, p));
    public.chain(user).chain(callbacks).collect()
}

/// The OpenAPI description of the user routes (generated from the handlers).
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "sam-server",
        description = "The SAM control plane. User routes need `Authorization: Bearer <token>`; \
                       the VM agents' callbacks need their scoped tokens."
    ),
    paths(
        health, openapi_json, tasks::submit, tasks::list, tasks::task, tasks::cancel,
        follow::events, nodes::nodes, nodes::node, nodes::catalog,
        tasks::retry, tasks::fork, accounts::create_user, accounts::get_user,
        accounts::update_user, accounts::setup, accounts::set_setup, accounts::user_credentials,
        accounts::set_user_credential, accounts::delete_user_credential,
        accounts::list_projects, accounts::create_project, accounts::get_project,
        accounts::update_project, accounts::delete_project, accounts::project_credentials,
        accounts::set_project_credential, accounts::delete_project_credential,
        accounts::list_profiles, accounts::create_profile, accounts::get_profile,
        accounts::update_profile, accounts::delete_profile, accounts::link_installation,
        accounts::list_installations, accounts::unlink_installation, agent_download::download,
        tokens::list_tokens, tokens::create_token, tokens::revoke_token,
    ),
    components(schemas(ErrorDoc)),
    modifiers(&BearerAuth),
)]
struct ApiDoc;

/// Declares the bearer token scheme the user routes name.
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// The body of every failed request (the shape of [`ErrorBody`]).
#[derive(ToSchema)]
#[schema(as = ErrorBody)]
#[expect(dead_code)] // Only its schema is used: the API answers with `ErrorBody`.
pub(crate) struct ErrorDoc {
    /// One sentence, redacted.
    error: String,
    /// What kind of failure (`invalid_config`, `auth_error`, `not_found`, …).
    category: String,
    /// The request field at fault, for malformed requests.
    field: Option<String>,
}

/// The OpenAPI document `GET /v1/openapi.json` serves: every route of [`routes`],
/// the user routes from their handlers, the callback routes described here.
pub fn openapi() -> utoipa::openapi::OpenApi {
    use utoipa::openapi::path::{HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn};
    use utoipa::openapi::{Required, ResponseBuilder};
    let mut doc = ApiDoc::openapi();
    for path in sam_agent::plane::CALLBACK_PATHS
        .into_iter()
        .chain(sam_agent::plane::GIT_PATHS)
    {
        let operation = OperationBuilder::new()
            .summary(Some("A VM agent's callback; needs the node's scoped token"))
            .tag("callbacks")
            .parameter(
                ParameterBuilder::new()
                    .name("id")
                    .parameter_in(ParameterIn::Path)
                    .required(Required::True),
            )
            .response("200", ResponseBuilder::new().description("Accepted"))
            .response(
                "401",
                ResponseBuilder::new().description("A missing or wrong token"),
            )
            .build();
        doc.paths
            .add_path_operation(path, vec![HttpMethod::Post], operation);
    }
    doc
}

/// The OpenAPI document of this API.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "meta",
    responses((status = 200, description = "The OpenAPI 3 document", body = Object)))]
pub(super) async fn openapi_json() -> axum::Json<utoipa::openapi::OpenApi> {
    axum::Json(openapi())
}

/// Whether the server is up.
#[utoipa::path(get, path = "/v1/health", tag = "meta",
    responses((status = 200, description = "The server answers", body = HealthView)))]
pub(super) async fn health() -> axum::Json<HealthView> {
    axum::Json(HealthView {
        status: "ok".to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
    })
}
