//! The control plane's providers built from users' own credentials: rebuilt when a
//! credential changes, bounded in number, and a task whose credential is gone fails
//! with the typed error instead of falling back to the platform's account.

use std::sync::Arc;

use sam_core::testkit::fixtures::{run_to_end, set_provider_token, submit_for};
use sam_core::testkit::node_agent::{FakeAgentScript, FakeNodeAgent};
use sam_core::{
    ControlPlane, ControlPlaneConfig, CredentialOwner, CredentialTarget, ErrorCategory, Layer,
    ManualClock, PROVIDER_CACHE_CAPACITY, Provider, ProviderKind, Secret, Store, SubmitRequest,
    TaskRecord, TaskStatus, UserId, UserInput,
};
use sam_providers::{FakeCall, FakeProvider, FakeProviderFactory};
use sam_store::MemoryStore;

mod support;

struct World {
    cp: ControlPlane,
    clock: Arc<ManualClock>,
    platform: Arc<FakeProvider>,
    factory: Arc<FakeProviderFactory>,
}

fn world() -> World {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let clock = Arc::new(ManualClock::starting_at(chrono::Utc::now()));
    let platform = Arc::new(FakeProvider::new());
    let factory = Arc::new(FakeProviderFactory::new());
    let mut config = ControlPlaneConfig::new("driver-1", ProviderKind::Fake);
    config.credential_key = Some(Secret::new("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="));
    let agent = Arc::new(FakeNodeAgent::new(FakeAgentScript::default()));
    let cp = support::control_plane(store, Arc::clone(&platform), agent, clock.clone(), config)
        .with_provider_factory(Arc::clone(&factory) as Arc<dyn sam_core::ProviderFactory>);
    World {
        cp,
        clock,
        platform,
        factory,
    }
}

impl World {
    async fn user(&self, token: &str) -> UserId {
        let user = self
            .cp
            .accounts()
            .create_user(&UserInput {
                name: "someone".into(),
                settings: Default::default(),
            })
            .await
            .expect("user");
        self.set_token(&user.id, token).await;
        user.id
    }

    async fn set_token(&self, user: &UserId, token: &str) {
        set_provider_token(&self.cp, user, ProviderKind::Fake, token).await;
    }

    async fn run(&self, user: &UserId) -> TaskRecord {
        let id = submit_for(&self.cp, user, None).await;
        run_to_end(&self.cp, &self.clock, &id).await
    }
}

fn creates(fake: &FakeProvider) -> usize {
    fake.calls()
        .iter()
        .filter(|c| matches!(c, FakeCall::CreateVm(_)))
        .count()
}

#[tokio::test]
async fn a_changed_credential_builds_a_new_provider() {
    let w = world();
    let first = Arc::new(FakeProvider::new());
    let second = Arc::new(FakeProvider::new());
    w.factory.register("token-1", Arc::clone(&first));
    w.factory.register("token-2", Arc::clone(&second));
    let user = w.user("token-1").await;
    let owner = CredentialOwner::User(user.clone());

    let task = w.run(&user).await;
    assert_eq!(task.status, TaskStatus::Completed, "{:?}", task.error);
    assert_eq!(task.spec.provenance["provider_credential"], Layer::User);
    assert_eq!(creates(&first), 1);
    assert_eq!(
        creates(&w.platform),
        0,
        "the platform's account pays nothing"
    );
    assert_eq!(w.cp.cached_owner_providers(), 1);

    w.set_token(&user, "token-2").await;
    let built =
        w.cp.provider_for(ProviderKind::Fake, Some(&owner))
            .await
            .expect("built");
    assert!(Arc::ptr_eq(
        &built,
        &(Arc::clone(&second) as Arc<dyn Provider>)
    ));
    assert_eq!(w.cp.cached_owner_providers(), 1, "replaced, not added");
}

#[tokio::test]
async fn the_cache_of_owner_providers_is_bounded() {
    let w = world();
    w.factory.register("token", Arc::new(FakeProvider::new()));
    for _ in 0..=PROVIDER_CACHE_CAPACITY {
        let user = w.user("token").await;
        w.cp.provider_for(ProviderKind::Fake, Some(&CredentialOwner::User(user)))
            .await
            .expect("built");
    }
    assert_eq!(w.cp.cached_owner_providers(), PROVIDER_CACHE_CAPACITY);
}

#[tokio::test]
async fn a_task_whose_credential_is_gone_fails_with_the_typed_error() {
    let w = world();
    let fake = Arc::new(FakeProvider::new());
    w.factory.register("token-1", Arc::clone(&fake));
    let user = w.user("token-1").await;
    let id =
        w.cp.submit(&SubmitRequest {
            repo: "https://example.invalid/repo.git".into(),
            prompt: "fix it".into(),
            user: Some(user.clone()),
            ..SubmitRequest::default()
        })
        .await
        .expect("submitted");
    w.cp.accounts()
        .delete_credential(
            &CredentialOwner::User(user),
            &CredentialTarget::Provider(ProviderKind::Fake),
        )
        .await
        .expect("deleted");
    for _ in 0..50 {
        w.cp.tick().await.expect("tick");
        w.clock.advance(w.cp.config().poll_interval);
    }
    let task = w.cp.get(&id).await.expect("get").expect("task");
    assert_eq!(task.status, TaskStatus::Failed);
    let error = task.error.expect("an error");
    assert_eq!(error.category, ErrorCategory::AuthError);
    assert!(error.message.contains("credential"), "{}", error.message);
    assert_eq!(creates(&fake), 0);
    assert_eq!(
        creates(&w.platform),
        0,
        "never the platform's account instead"
    );
}
