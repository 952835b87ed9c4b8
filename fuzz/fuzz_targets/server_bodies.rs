//! The server's request inputs through the routes' own parsing and checks: a
//! `POST /v1/tasks` body (then, when it parses, the control plane's submission
//! checks against an in-memory store), and a `GET /v1/tasks` query string. Every
//! refusal is a 4xx naming its category, never a panic or a 5xx.
//!
//! Input: one byte choosing the route (odd: the query string), then the bytes.
#![no_main]

use std::sync::{Arc, LazyLock};

use libfuzzer_sys::fuzz_target;
use sam_core::testkit::node_agent::{FakeAgentScript, FakeNodeAgent, PlainBoot};
use sam_core::{
    ControlPlane, ControlPlaneConfig, ControlPlaneParts, DefaultScheduler, Provider, ProviderKind,
    Secret, TokenSigner, TokioClock,
};
use sam_examples::server::{submit_request, task_filter};

static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
});

/// A control plane over a fresh in-memory store, as the server's submit route sees it.
fn control_plane() -> ControlPlane {
    let store: Arc<dyn sam_core::Store> = Arc::new(sam_store::MemoryStore::new());
    let mut config = ControlPlaneConfig::new("fuzz", ProviderKind::Fake);
    config.agents.push("custom".to_owned());
    ControlPlane::new(
        ControlPlaneParts {
            scheduler: Arc::new(DefaultScheduler::new(Arc::clone(&store))),
            store,
            providers: vec![Arc::new(sam_providers::FakeProvider::new()) as Arc<dyn Provider>],
            node_agent: Arc::new(FakeNodeAgent::new(FakeAgentScript::default())),
            boot: Arc::new(PlainBoot),
            signer: TokenSigner::new(Secret::new("k".repeat(32)), "sam").expect("a signer"),
            clock: Arc::new(TokioClock::new()),
        },
        config,
    )
    .expect("a control plane")
}

fuzz_target!(|data: &[u8]| {
    let [route, bytes @ ..] = data else {
        return;
    };
    if route % 2 == 1 {
        if let Ok(text) = std::str::from_utf8(bytes)
            && let Err(error) = task_filter(Some(text))
        {
            assert_eq!(error.status(), 400, "{:?}", error.body());
            assert!(error.body().field.is_some(), "{:?}", error.body());
        }
        return;
    }
    match submit_request(bytes) {
        Ok(request) => {
            let submitted = RUNTIME.block_on(control_plane().submit(&request));
            if let Err(error) = submitted {
                let error = sam_examples::server::ApiError::from(error);
                assert!(
                    (400..500).contains(&error.status()),
                    "{} {:?}",
                    error.status(),
                    error.body()
                );
            }
        }
        Err(error) => assert_eq!(error.status(), 400, "{:?}", error.body()),
    }
});
