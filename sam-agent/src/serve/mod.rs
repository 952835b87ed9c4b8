//! What every HTTP server of the SDK puts around its routes: the VM agent's API
//! (`vm::http`), the control plane's callback and git routes (`plane::routes`) and
//! `sam-server`. Every failure is answered as an [`ErrorBody`](crate::wire::ErrorBody), whoever refused the
//! request: a handler ([`ApiError`]), axum ([`json_errors`]) or hyper
//! ([`JsonErrorListener`]); a body over [`BODY_LIMIT`] is refused; a handler whose
//! caller hangs up still runs to its end ([`run_to_completion`]).

use axum::response::{IntoResponse, Response};
use sam_core::ErrorCategory;

use crate::wire::{ApiError, classify_status};

pub mod listener;

pub use listener::{JsonErrorListener, JsonErrorStream};

/// Middleware for every route that changes state: runs the rest of the request in
/// its own task and answers when it ends.
///
/// hyper drops a handler's future when its connection closes, so without this a
/// caller that goes away (a killed process, a client timeout, a VM agent that
/// aborts its callback sender) cuts the handler at whatever `.await` it reached:
/// a task made terminal but its workspace never stopped and its node never returned
/// to the warm pool, or a workspace entry never given its preparation. With it, the
/// work runs to its end and only the answer is lost; the callers retry idempotently.
///
/// ```
/// use axum::{Router, middleware, routing::post};
///
/// let router: Router = Router::new()
///     .route("/v1/things", post(|| async { "made" }))
///     .layer(middleware::from_fn(sam_agent::serve::run_to_completion));
/// ```
pub async fn run_to_completion(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match tokio::spawn(next.run(request)).await {
        Ok(response) => response,
        Err(e) => ApiError::new(
            ErrorCategory::Unknown,
            &format!("the request's handler did not finish: {e}"),
        )
        .into_response(),
    }
}

/// The largest request body either server reads (2 MiB); a larger one is answered
/// `413` with an [`ErrorBody`](crate::wire::ErrorBody). Routes with smaller limits of their own (a task's
/// prompt) check them after reading.
pub const BODY_LIMIT: usize = 2 * 1024 * 1024;

/// Middleware for every server of the SDK: a failure answered without a JSON body
/// (axum's own rejections: a body over [`BODY_LIMIT`], a path segment that does not
/// decode such as `%FF`, a query or body it cannot read) is answered as an
/// [`ErrorBody`](crate::wire::ErrorBody) with the same status, its text as the message.
///
/// The failures hyper answers itself, before any route (a URL over 64 KiB, headers
/// too large), are rewritten by [`JsonErrorListener`].
pub async fn json_errors(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) || is_json(&response) {
        return response;
    }
    let (parts, body) = response.into_parts();
    // A rejection's text is one line; anything longer is cut.
    let text = axum::body::to_bytes(body, 4096)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let message = if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("the request failed")
            .to_owned()
    } else {
        text
    };
    let error = ApiError::new(classify_status(status.as_u16()), &message);
    let mut answer = (status, axum::Json(error.body().clone())).into_response();
    for (name, value) in &parts.headers {
        if name != axum::http::header::CONTENT_TYPE && name != axum::http::header::CONTENT_LENGTH {
            answer.headers_mut().append(name, value.clone());
        }
    }
    answer
}

fn is_json(response: &Response) -> bool {
    response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A handler whose caller hangs up while it works.
    async fn hang_up_midway(layered: bool) -> bool {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};
        use tokio::io::AsyncWriteExt as _;

        let entered = Arc::new(tokio::sync::Notify::new());
        let done = Arc::new(AtomicBool::new(false));
        let (e, d) = (Arc::clone(&entered), Arc::clone(&done));
        let mut router = axum::Router::new().route(
            "/work",
            axum::routing::post(move || async move {
                e.notify_one();
                tokio::time::sleep(Duration::from_millis(500)).await;
                d.store(true, Ordering::SeqCst);
                "done"
            }),
        );
        if layered {
            router = router.layer(axum::middleware::from_fn(run_to_completion));
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let server = tokio::spawn(async move { axum::serve(listener, router).await });
        let mut caller = tokio::net::TcpStream::connect(address).await.unwrap();
        caller
            .write_all(b"POST /work HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n")
            .await
            .unwrap();
        entered.notified().await;
        drop(caller);
        tokio::time::sleep(Duration::from_millis(1200)).await;
        server.abort();
        done.load(Ordering::SeqCst)
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_handler_runs_to_its_end_when_the_caller_hangs_up() {
        assert!(hang_up_midway(true).await, "the work finished");
        // Without the layer hyper drops the handler with the connection: what the
        // layer is for.
        assert!(!hang_up_midway(false).await, "cut short without the layer");
    }
}
