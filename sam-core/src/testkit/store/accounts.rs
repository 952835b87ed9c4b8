//! The conformance cases of the [`AccountStore`](crate::store::AccountStore)
//! contract: API tokens, GitHub installation links, users, projects, profiles and
//! credentials.

use crate::credential::{CredentialOwner, CredentialTarget, SetupChoices};
use crate::error::StoreErrorKind;
use crate::github::GithubInstallation;
use crate::model::{ProviderKind, UserId};
use crate::store::Store;
use crate::testkit::fixtures::{
    api_token, at, credential, github_installation, profile, project, project_id, user,
};

use super::expect_kind;

/// API tokens are found by hash; ids and hashes are unique.
pub async fn api_tokens_are_found_by_hash(store: &dyn Store) {
    let token = api_token("tok-1", 0xab);
    store.put_api_token(&token).await.expect("put_api_token");
    let found = store.find_api_token(&token.hash).await.expect("find");
    assert_eq!(found, Some(token.clone()), "a token is found by its hash");
    let other = store
        .find_api_token(&api_token("x", 0xcd).hash)
        .await
        .expect("find");
    assert_eq!(other, None, "an unknown hash finds nothing");
    expect_kind(
        store.put_api_token(&api_token("tok-1", 0x01)).await,
        StoreErrorKind::AlreadyExists,
        "a taken token id is AlreadyExists",
    );
    expect_kind(
        store.put_api_token(&api_token("tok-2", 0xab)).await,
        StoreErrorKind::AlreadyExists,
        "a taken token hash is AlreadyExists",
    );
}

/// API tokens are listed by `(created_at, id)`, revoked once, and touched on their
/// last use only; every field round-trips.
pub async fn api_tokens_are_listed_revoked_and_touched(store: &dyn Store) {
    let mut late = api_token("tok-b", 0x0b);
    late.created_at = at(20);
    late.expires_at = Some(at(3_600));
    late.kind = crate::api_token::ApiTokenKind::Admin;
    let mut early = api_token("tok-c", 0x0c);
    early.created_at = at(10);
    let mut tie = api_token("tok-a", 0x0a);
    tie.created_at = at(20);
    for token in [&late, &early, &tie] {
        store.put_api_token(token).await.expect("put_api_token");
    }
    let ids = |tokens: Vec<crate::ApiTokenRecord>| -> Vec<String> {
        tokens.into_iter().map(|t| t.id).collect()
    };
    assert_eq!(
        ids(store.list_api_tokens().await.expect("list")),
        ["tok-c", "tok-a", "tok-b"],
        "tokens are listed by (created_at, id)"
    );
    assert_eq!(
        store.find_api_token(&late.hash).await.expect("find"),
        Some(late.clone()),
        "kind and expiry round-trip"
    );

    assert!(
        store
            .revoke_api_token("tok-b", at(30))
            .await
            .expect("revoke"),
        "the first revocation changes the token"
    );
    assert!(
        !store
            .revoke_api_token("tok-b", at(40))
            .await
            .expect("revoke"),
        "a second revocation changes nothing"
    );
    let revoked = store.find_api_token(&late.hash).await.expect("find");
    assert_eq!(
        revoked.as_ref().and_then(|t| t.revoked_at),
        Some(at(30)),
        "a revoked token is still found, with its first revocation time"
    );
    expect_kind(
        store.revoke_api_token("tok-nope", at(30)).await,
        StoreErrorKind::NotFound,
        "revoking an unknown token is NotFound",
    );

    store.touch_api_token("tok-c", at(50)).await.expect("touch");
    let touched = store
        .find_api_token(&early.hash)
        .await
        .expect("find")
        .expect("tok-c exists");
    assert_eq!(
        touched,
        crate::ApiTokenRecord {
            last_used_at: Some(at(50)),
            ..early
        },
        "a touch changes the last use only"
    );
    expect_kind(
        store.touch_api_token("tok-nope", at(50)).await,
        StoreErrorKind::NotFound,
        "touching an unknown token is NotFound",
    );
}

/// Starting with another bootstrap token revokes the previous one and leaves other
/// tokens alone; starting again with a known token keeps its record.
pub async fn bootstrap_rotation_revokes_the_previous_token(store: &dyn Store) {
    use crate::api_token::ApiTokenKind;
    let bootstrap = |id: &str, seed: u8, created: i64| crate::ApiTokenRecord {
        kind: ApiTokenKind::Bootstrap,
        created_at: at(created),
        ..api_token(id, seed)
    };
    let user = api_token("tok-user", 0x55);
    store.put_api_token(&user).await.expect("put_api_token");
    let a = bootstrap("tok-a", 0xaa, 10);
    store
        .rotate_bootstrap_api_token(&a)
        .await
        .expect("rotate to a");
    let found = |hash: String| async move {
        store
            .find_api_token(&hash)
            .await
            .expect("find")
            .expect("the token exists")
    };
    assert_eq!(
        found(a.hash.clone()).await,
        a,
        "the first bootstrap token is written"
    );

    // The same token again: nothing changes.
    let again = bootstrap("tok-a", 0xaa, 15);
    store
        .rotate_bootstrap_api_token(&again)
        .await
        .expect("rotate to a again");
    assert_eq!(
        found(a.hash.clone()).await,
        a,
        "a known token keeps its record"
    );

    let b = bootstrap("tok-b", 0xbb, 20);
    store
        .rotate_bootstrap_api_token(&b)
        .await
        .expect("rotate to b");
    assert_eq!(
        found(a.hash.clone()).await.revoked_at,
        Some(at(20)),
        "the previous bootstrap token is revoked when the next one is written"
    );
    assert_eq!(
        found(b.hash.clone()).await,
        b,
        "the new bootstrap token is live"
    );
    assert_eq!(
        found(user.hash.clone()).await,
        user,
        "other tokens are left alone"
    );

    // Back to the first: it is live again, and the second is revoked.
    let back = bootstrap("tok-a", 0xaa, 30);
    store
        .rotate_bootstrap_api_token(&back)
        .await
        .expect("rotate back to a");
    let a_now = found(a.hash.clone()).await;
    assert_eq!(
        (a_now.revoked_at, a_now.created_at),
        (None, at(10)),
        "a token named again is live again, with its first creation time"
    );
    assert_eq!(found(b.hash.clone()).await.revoked_at, Some(at(30)));
    let live: Vec<String> = store
        .list_api_tokens()
        .await
        .expect("list")
        .into_iter()
        .filter(|t| t.kind == ApiTokenKind::Bootstrap && t.revoked_at.is_none())
        .map(|t| t.id)
        .collect();
    assert_eq!(live, ["tok-a"], "exactly one bootstrap token is live");
    expect_kind(
        store
            .rotate_bootstrap_api_token(&bootstrap("tok-user", 0xcc, 40))
            .await,
        StoreErrorKind::AlreadyExists,
        "an id taken by another hash is AlreadyExists",
    );
}

/// Two users of one organisation each have their own link to the same installation:
/// distinct keys, the same external id, each listed only for its user.
pub async fn github_installation_links_are_per_user(store: &dyn Store) {
    let alice = github_installation("alice", 4_242_424_242, 2);
    let alice_other = github_installation("alice", 7, 1);
    let bob = github_installation("bob", 4_242_424_242, 3);
    for link in [&alice, &alice_other, &bob] {
        store
            .put_github_installation(link)
            .await
            .expect("put_github_installation");
    }
    assert_ne!(alice.key(), bob.key(), "the storage keys differ");
    let read = store
        .get_github_installation(&bob.key())
        .await
        .expect("get_github_installation");
    assert_eq!(read, Some(bob.clone()), "a link round-trips by its key");
    assert_eq!(
        read.map(|l| l.external_id),
        Some(alice.external_id),
        "both links carry GitHub's installation id"
    );
    let listed = store
        .list_github_installations(&alice.user_id)
        .await
        .expect("list_github_installations");
    assert_eq!(
        listed,
        vec![alice_other, alice.clone()],
        "a user's links, ordered by (created_at, key)"
    );
    let bobs = store
        .list_github_installations(&bob.user_id)
        .await
        .expect("list_github_installations");
    assert_eq!(bobs, vec![bob], "the other user sees only their own link");
    let nobody = github_installation("carol", 4_242_424_242, 0);
    assert_eq!(
        store
            .get_github_installation(&nobody.key())
            .await
            .expect("get_github_installation"),
        None,
        "a missing link is None"
    );
}

/// Deleting one user's link leaves another user's link to the same installation,
/// and deleting it again succeeds.
pub async fn delete_github_installation_keeps_other_users_links(store: &dyn Store) {
    let alice = github_installation("alice", 4_242, 0);
    let bob = github_installation("bob", 4_242, 1);
    for link in [&alice, &bob] {
        store.put_github_installation(link).await.expect("put");
    }
    for _ in 0..2 {
        store
            .delete_github_installation(&alice.key())
            .await
            .expect("delete_github_installation is idempotent");
    }
    assert_eq!(
        store
            .get_github_installation(&alice.key())
            .await
            .expect("get"),
        None,
        "the deleted link is gone"
    );
    assert_eq!(
        store
            .list_github_installations(&alice.user_id)
            .await
            .expect("list"),
        vec![],
        "its user has no links left"
    );
    assert_eq!(
        store
            .list_github_installations(&bob.user_id)
            .await
            .expect("list"),
        vec![bob],
        "the other user's link to the same installation stays"
    );
}

/// Writing a link again replaces it (the account may be renamed).
pub async fn put_github_installation_replaces(store: &dyn Store) {
    let link = github_installation("alice", 42, 0);
    store.put_github_installation(&link).await.expect("put");
    let renamed = GithubInstallation {
        account: "acme-renamed".into(),
        ..link.clone()
    };
    store
        .put_github_installation(&renamed)
        .await
        .expect("put again");
    assert_eq!(
        store
            .get_github_installation(&link.key())
            .await
            .expect("get"),
        Some(renamed.clone()),
        "the second write wins"
    );
    assert_eq!(
        store
            .list_github_installations(&link.user_id)
            .await
            .expect("list"),
        vec![renamed],
        "one row per key"
    );
}

/// Users are upserted by id and read back whole.
pub async fn users_round_trip_and_upsert(store: &dyn Store) {
    let clause = "users are upserted by id";
    let mut u = user("u-1", 0);
    store.put_user(&u).await.expect(clause);
    assert_eq!(
        store.get_user(&u.id).await.expect(clause),
        Some(u.clone()),
        "{clause}"
    );
    u.name = "renamed".into();
    u.updated_at = at(5);
    store.put_user(&u).await.expect(clause);
    assert_eq!(
        store.get_user(&u.id).await.expect(clause),
        Some(u),
        "{clause}"
    );
    let missing = UserId::new("u-missing").expect("valid id");
    assert_eq!(
        store.get_user(&missing).await.expect(clause),
        None,
        "{clause}"
    );
}

/// Setup choices belong to a stored user: a new user chose nothing, a choice is read
/// back as written, writing the user keeps it, writing it keeps the user, and an
/// unknown user has none and cannot choose.
pub async fn setup_choices_are_kept_apart_from_the_user(store: &dyn Store) {
    let clause = "setup choices are kept apart from the user";
    let mut u = user("u-1", 0);
    store.put_user(&u).await.expect(clause);
    assert_eq!(
        store.setup_choices(&u.id).await.expect(clause),
        Some(SetupChoices::default()),
        "a user who never chose chose nothing"
    );
    for choices in [
        SetupChoices {
            platform_ai: true,
            platform_infrastructure: false,
        },
        SetupChoices {
            platform_ai: false,
            platform_infrastructure: true,
        },
        SetupChoices {
            platform_ai: true,
            platform_infrastructure: true,
        },
    ] {
        store.set_setup_choices(&u.id, choices).await.expect(clause);
        assert_eq!(
            store.setup_choices(&u.id).await.expect(clause),
            Some(choices),
            "{clause}: read back as written"
        );
        assert_eq!(
            store.get_user(&u.id).await.expect(clause),
            Some(u.clone()),
            "{clause}: the user's body is untouched"
        );
    }
    u.name = "renamed".into();
    u.updated_at = at(5);
    store.put_user(&u).await.expect(clause);
    assert_eq!(
        store.setup_choices(&u.id).await.expect(clause),
        Some(SetupChoices {
            platform_ai: true,
            platform_infrastructure: true,
        }),
        "{clause}: writing the user keeps the choices"
    );
    store
        .set_setup_choices(&u.id, SetupChoices::default())
        .await
        .expect(clause);
    assert_eq!(
        store.setup_choices(&u.id).await.expect(clause),
        Some(SetupChoices::default()),
        "{clause}: a choice can be taken back"
    );
    let missing = UserId::new("u-missing").expect("valid id");
    assert_eq!(
        store.setup_choices(&missing).await.expect(clause),
        None,
        "an unknown user has no choices"
    );
    expect_kind(
        store
            .set_setup_choices(&missing, SetupChoices::default())
            .await,
        StoreErrorKind::NotFound,
        "an unknown user cannot choose",
    );
}

/// Projects are upserted by id, read back whole, and listed by `(created_at, id)`.
pub async fn projects_round_trip_and_list_in_order(store: &dyn Store) {
    let clause = "projects are listed by (created_at, id)";
    for p in [project("p-b", 5), project("p-c", 1), project("p-a", 5)] {
        store.put_project(&p).await.expect(clause);
    }
    let mut updated = project("p-c", 1);
    updated.name = "renamed".into();
    updated.scaling.warm_timeout_secs = None;
    store.put_project(&updated).await.expect(clause);
    assert_eq!(
        store.get_project(&project_id("p-c")).await.expect(clause),
        Some(updated),
        "{clause}"
    );
    let ids: Vec<String> = store
        .list_projects()
        .await
        .expect(clause)
        .into_iter()
        .map(|p| p.id.to_string())
        .collect();
    assert_eq!(ids, ["p-c", "p-a", "p-b"], "{clause}");
    assert_eq!(
        store.get_project(&project_id("p-x")).await.expect(clause),
        None
    );
}

/// A project's profiles are listed by `(created_at, id)`, and only its own.
pub async fn profiles_are_listed_per_project_in_order(store: &dyn Store) {
    let clause = "a project's profiles are listed by (created_at, id)";
    store.put_project(&project("p-1", 0)).await.expect(clause);
    store.put_project(&project("p-2", 0)).await.expect(clause);
    let first = profile("pf-b", "p-1", "reviewer", 3);
    for p in [
        &first,
        &profile("pf-a", "p-1", "writer", 3),
        &profile("pf-c", "p-1", "fixer", 1),
    ] {
        store.put_profile(p).await.expect(clause);
    }
    store
        .put_profile(&profile("pf-d", "p-2", "reviewer", 0))
        .await
        .expect("the same name in another project is fine");
    let names: Vec<String> = store
        .list_profiles(&project_id("p-1"))
        .await
        .expect(clause)
        .into_iter()
        .map(|p| p.id.to_string())
        .collect();
    assert_eq!(names, ["pf-c", "pf-a", "pf-b"], "{clause}");
    assert_eq!(
        store.get_profile(&first.id).await.expect(clause),
        Some(first)
    );
}

/// Putting a profile whose name another profile of the project holds is `AlreadyExists`;
/// renaming a profile to its own name is not.
pub async fn profile_names_are_unique_per_project(store: &dyn Store) {
    let clause = "a profile's name is unique within its project";
    store.put_project(&project("p-1", 0)).await.expect(clause);
    store
        .put_profile(&profile("pf-1", "p-1", "reviewer", 0))
        .await
        .expect(clause);
    let mut again = profile("pf-1", "p-1", "reviewer", 0);
    again.settings.model = Some("other".into());
    store
        .put_profile(&again)
        .await
        .expect("re-putting a profile keeps its name");
    let err = store
        .put_profile(&profile("pf-2", "p-1", "reviewer", 1))
        .await
        .expect_err(clause);
    assert_eq!(err.kind(), StoreErrorKind::AlreadyExists, "{clause}: {err}");
    assert_eq!(
        store
            .list_profiles(&project_id("p-1"))
            .await
            .expect(clause)
            .len(),
        1
    );
}

/// A profile of a missing project is `NotFound`.
pub async fn profile_of_missing_project_is_not_found(store: &dyn Store) {
    let clause = "a profile of a missing project is NotFound";
    let err = store
        .put_profile(&profile("pf-1", "p-missing", "reviewer", 0))
        .await
        .expect_err(clause);
    assert_eq!(err.kind(), StoreErrorKind::NotFound, "{clause}: {err}");
}

/// Nothing is created implicitly: a new project has no profiles, and deleting every
/// profile leaves none.
pub async fn deleting_every_profile_leaves_none(store: &dyn Store) {
    let clause = "deleting every profile leaves none";
    store.put_project(&project("p-1", 0)).await.expect(clause);
    assert!(
        store
            .list_profiles(&project_id("p-1"))
            .await
            .expect(clause)
            .is_empty()
    );
    let a = profile("pf-1", "p-1", "reviewer", 0);
    let b = profile("pf-2", "p-1", "writer", 1);
    store.put_profile(&a).await.expect(clause);
    store.put_profile(&b).await.expect(clause);
    store.delete_profile(&a.id).await.expect(clause);
    store.delete_profile(&b.id).await.expect(clause);
    store
        .delete_profile(&b.id)
        .await
        .expect("deleting a missing profile succeeds");
    assert!(
        store
            .list_profiles(&project_id("p-1"))
            .await
            .expect(clause)
            .is_empty(),
        "{clause}"
    );
    assert_eq!(store.get_profile(&a.id).await.expect(clause), None);
}

/// Deleting a project deletes its profiles and credentials, and nothing else.
pub async fn deleting_a_project_deletes_its_profiles_and_credentials(store: &dyn Store) {
    let clause = "deleting a project deletes its profiles and credentials";
    store.put_project(&project("p-1", 0)).await.expect(clause);
    store.put_project(&project("p-2", 0)).await.expect(clause);
    store
        .put_profile(&profile("pf-1", "p-1", "reviewer", 0))
        .await
        .expect(clause);
    store
        .put_profile(&profile("pf-2", "p-2", "reviewer", 0))
        .await
        .expect(clause);
    let p1 = CredentialOwner::Project(project_id("p-1"));
    let p2 = CredentialOwner::Project(project_id("p-2"));
    store
        .put_credential(&credential(p1.clone(), "agent:claude", 1))
        .await
        .expect(clause);
    store
        .put_credential(&credential(p2.clone(), "agent:claude", 1))
        .await
        .expect(clause);
    store
        .delete_project(&project_id("p-1"))
        .await
        .expect(clause);
    store
        .delete_project(&project_id("p-1"))
        .await
        .expect("deleting a missing project succeeds");
    assert_eq!(
        store.get_project(&project_id("p-1")).await.expect(clause),
        None
    );
    assert!(
        store
            .list_profiles(&project_id("p-1"))
            .await
            .expect(clause)
            .is_empty(),
        "{clause}"
    );
    assert!(
        store.list_credentials(&p1).await.expect(clause).is_empty(),
        "{clause}"
    );
    assert_eq!(
        store
            .list_profiles(&project_id("p-2"))
            .await
            .expect(clause)
            .len(),
        1
    );
    assert_eq!(store.list_credentials(&p2).await.expect(clause).len(), 1);
}

/// Credentials are upserted by `(owner, target)`, listed per owner by target, and
/// deleted idempotently.
pub async fn credentials_upsert_per_owner_and_target(store: &dyn Store) {
    let clause = "credentials are upserted by (owner, target) and listed by target";
    let u1 = CredentialOwner::User(UserId::new("u-1").expect("valid id"));
    let u2 = CredentialOwner::User(UserId::new("u-2").expect("valid id"));
    let p1 = CredentialOwner::Project(project_id("u-1"));
    store
        .put_credential(&credential(u1.clone(), "provider:scaleway", 1))
        .await
        .expect(clause);
    store
        .put_credential(&credential(u1.clone(), "agent:claude", 1))
        .await
        .expect(clause);
    store
        .put_credential(&credential(u2.clone(), "agent:claude", 1))
        .await
        .expect(clause);
    store
        .put_credential(&credential(p1.clone(), "agent:claude", 1))
        .await
        .expect(clause);
    let newer = credential(u1.clone(), "agent:claude", 9);
    store.put_credential(&newer).await.expect(clause);
    let listed = store.list_credentials(&u1).await.expect(clause);
    assert_eq!(listed.len(), 2, "{clause}");
    assert_eq!(
        listed[0], newer,
        "{clause}: the newer write replaced the older"
    );
    assert_eq!(
        listed[1].target,
        CredentialTarget::Provider(ProviderKind::Scaleway),
        "{clause}"
    );
    let claude = CredentialTarget::Agent("claude".into());
    store.delete_credential(&u1, &claude).await.expect(clause);
    store
        .delete_credential(&u1, &claude)
        .await
        .expect("deleting a missing credential succeeds");
    assert_eq!(store.list_credentials(&u1).await.expect(clause).len(), 1);
    assert_eq!(
        store.list_credentials(&u2).await.expect(clause).len(),
        1,
        "other owners keep theirs"
    );
    assert_eq!(
        store.list_credentials(&p1).await.expect(clause).len(),
        1,
        "a project is not a user of the same id"
    );
}
