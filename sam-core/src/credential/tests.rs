use super::*;

fn key(byte: u8) -> Secret {
    Secret::new(BASE64.encode([byte; KEY_LEN]))
}

#[test]
fn sealing_round_trips_with_a_fresh_nonce_each_time() {
    let cipher = CredentialCipher::new(&key(7)).unwrap();
    let secret = Secret::new("sk-ant-api03-very-secret");
    let a = cipher.seal(&secret, "ctx").unwrap();
    let b = cipher.seal(&secret, "ctx").unwrap();
    assert_ne!(a, b, "each encryption draws its own nonce");
    assert!(!a.as_str().contains("very-secret"));
    assert_eq!(cipher.open(&a, "ctx").unwrap().expose(), secret.expose());
    assert_eq!(cipher.open(&b, "ctx").unwrap().expose(), secret.expose());
}

/// A value sealed by an earlier build (aes-gcm 0.10) still opens: the stored format
/// and the cipher do not change with the crate versions behind them.
#[test]
fn a_value_sealed_by_an_earlier_build_still_opens() {
    const SEALED_EARLIER: &str =
        "v1:eE7kL//+W7vS3XB2:72oTT0DfoWeUh4PACREqK2FhzzzR3DfYtD2uc/Dk/S9ZtN4=";
    let cipher = CredentialCipher::new(&key(0x5a)).unwrap();
    let sealed = Sealed::from_stored(SEALED_EARLIER);
    assert_eq!(
        cipher
            .open(&sealed, "user:u-1:provider:hetzner")
            .unwrap()
            .expose(),
        "hcloud-token-of-u-1"
    );
    assert_eq!(
        cipher
            .open(&sealed, "user:u-2:provider:hetzner")
            .unwrap_err(),
        CredentialError::WrongKey
    );
}

#[test]
fn a_wrong_key_or_context_is_a_typed_error() {
    let sealed = CredentialCipher::new(&key(1))
        .unwrap()
        .seal(&Secret::new("hcloud-token"), "user:u-1:provider:hetzner")
        .unwrap();
    let other = CredentialCipher::new(&key(2)).unwrap();
    let err = other
        .open(&sealed, "user:u-1:provider:hetzner")
        .unwrap_err();
    assert_eq!(err, CredentialError::WrongKey);
    assert_eq!(err.category(), ErrorCategory::AuthError);
    let same = CredentialCipher::new(&key(1)).unwrap();
    assert_eq!(
        same.open(&sealed, "user:u-2:provider:hetzner").unwrap_err(),
        CredentialError::WrongKey,
        "a sealed value moved to another owner does not open"
    );
}

#[test]
fn bad_keys_and_bad_stored_values_are_rejected() {
    for bad in ["", "not base64!", "c2hvcnQ="] {
        assert!(matches!(
            CredentialCipher::new(&Secret::new(bad)),
            Err(CredentialError::InvalidKey { .. })
        ));
    }
    let cipher = CredentialCipher::new(&key(3)).unwrap();
    for stored in ["", "v2:a:b", "v1:!!:AAAA", "v1:AAAA:AAAA", "v1"] {
        assert!(
            matches!(
                cipher.open(&Sealed::from_stored(stored), "ctx"),
                Err(CredentialError::Malformed { .. })
            ),
            "{stored:?}"
        );
    }
    assert!(matches!(
        cipher.seal(&Secret::new("  "), "ctx"),
        Err(CredentialError::Invalid {
            field: "secret",
            ..
        })
    ));
}

#[test]
fn debug_output_shows_no_secret() {
    let cipher = CredentialCipher::new(&key(4)).unwrap();
    let sealed = cipher.seal(&Secret::new("top-secret"), "ctx").unwrap();
    assert_eq!(format!("{sealed:?}"), "Sealed(***)");
    assert_eq!(format!("{cipher:?}"), "CredentialCipher(***)");
}

#[test]
fn targets_parse_and_print_the_same() {
    for text in ["provider:hetzner", "agent:claude", "repository"] {
        let target: CredentialTarget = text.parse().unwrap();
        assert_eq!(target.to_string(), text);
    }
    for bad in ["provider:aws", "agent:", "agent:a b", "github"] {
        assert!(bad.parse::<CredentialTarget>().is_err(), "{bad}");
    }
}

#[test]
fn kinds_must_fit_their_target() {
    let none = BTreeMap::new();
    let hetzner = CredentialTarget::Provider(ProviderKind::Hetzner);
    assert!(check_credential(&hetzner, CredentialKind::ApiToken, &none).is_ok());
    assert!(check_credential(&hetzner, CredentialKind::ServiceAccount, &none).is_err());
    let scaleway = CredentialTarget::Provider(ProviderKind::Scaleway);
    assert!(check_credential(&scaleway, CredentialKind::ApiKey, &none).is_err());
    let with_project = BTreeMap::from([("project_id".to_owned(), "p-1".to_owned())]);
    assert!(check_credential(&scaleway, CredentialKind::ApiKey, &with_project).is_ok());
    let claude = CredentialTarget::Agent("claude".to_owned());
    assert!(check_credential(&claude, CredentialKind::OauthToken, &none).is_ok());
    assert!(check_credential(&claude, CredentialKind::ServiceAccount, &none).is_err());
}

fn record(owner: CredentialOwner, target: &str) -> CredentialRecord {
    CredentialRecord {
        owner,
        target: target.parse().unwrap(),
        kind: CredentialKind::ApiKey,
        sealed: Sealed::from_stored("v1:x:y"),
        details: BTreeMap::new(),
        created_at: DateTime::UNIX_EPOCH,
        updated_at: DateTime::UNIX_EPOCH,
    }
}

#[test]
fn resolution_prefers_the_project_then_the_user() {
    let user = CredentialOwner::User(UserId::new("u-1").unwrap());
    let project = CredentialOwner::Project(ProjectId::new("p-1").unwrap());
    let users = [
        record(user.clone(), "agent:claude"),
        record(user.clone(), "agent:codex"),
    ];
    let projects = [record(project.clone(), "agent:claude")];
    let claude = CredentialTarget::Agent("claude".to_owned());
    let codex = CredentialTarget::Agent("codex".to_owned());
    let gemini = CredentialTarget::Agent("gemini".to_owned());
    assert_eq!(
        resolve_credential(&claude, &projects, &users)
            .unwrap()
            .owner,
        project
    );
    assert_eq!(
        resolve_credential(&codex, &projects, &users).unwrap().owner,
        user
    );
    assert!(resolve_credential(&gemini, &projects, &users).is_none());
}

#[test]
fn setup_status_counts_only_what_the_user_configured() {
    let user = CredentialOwner::User(UserId::new("u-1").unwrap());
    let empty = setup_status(&[], &[], SetupChoices::default(), SetupChoices::default());
    assert!(!empty.ai_access.configured && !empty.cloud_access.configured);
    assert!(!empty.complete);
    let status = setup_status(
        &[
            record(user.clone(), "agent:claude"),
            record(
                CredentialOwner::Project(ProjectId::new("p-1").unwrap()),
                "provider:hetzner",
            ),
        ],
        &[],
        SetupChoices::default(),
        SetupChoices::default(),
    );
    assert!(status.ai_access.configured);
    assert_eq!(status.ai_access.how, ["agent:claude api_key (user)"]);
    assert_eq!(
        status.cloud_access.how,
        ["provider:hetzner api_key (project p-1)"]
    );
    assert!(!status.repository_access.configured);
    assert!(!status.complete);
}

#[test]
fn setup_status_counts_linked_github_installations_as_repository_access() {
    let user = CredentialOwner::User(UserId::new("u-1").unwrap());
    let link = crate::testkit::fixtures::github_installation("u-1", 4242, 0);
    let status = setup_status(
        &[
            record(user.clone(), "agent:claude"),
            record(user, "provider:hetzner"),
        ],
        &[link],
        SetupChoices::default(),
        SetupChoices::default(),
    );
    assert!(status.repository_access.configured);
    assert_eq!(
        status.repository_access.how,
        ["GitHub App installation 4242"]
    );
    assert!(status.complete);
}

/// Every combination of what the user chose and what the platform offers, with and
/// without a credential of the user's own: a part is configured when the user set a
/// credential for it or chose the platform's while the platform offers it, never
/// because the platform merely offers it.
#[test]
fn setup_status_counts_a_platform_choice_only_where_the_platform_offers_it() {
    let user = CredentialOwner::User(UserId::new("u-1").unwrap());
    let link = crate::testkit::fixtures::github_installation("u-1", 4242, 0);
    let bools = [false, true];
    for (chose_ai, chose_infra, offers_ai, offers_infra, own_ai, own_cloud) in bools
        .into_iter()
        .flat_map(|a| bools.map(move |b| (a, b)))
        .flat_map(|(a, b)| bools.map(move |c| (a, b, c)))
        .flat_map(|(a, b, c)| bools.map(move |d| (a, b, c, d)))
        .flat_map(|(a, b, c, d)| bools.map(move |e| (a, b, c, d, e)))
        .flat_map(|(a, b, c, d, e)| bools.map(move |f| (a, b, c, d, e, f)))
    {
        let chose = SetupChoices {
            platform_ai: chose_ai,
            platform_infrastructure: chose_infra,
        };
        let offers = SetupChoices {
            platform_ai: offers_ai,
            platform_infrastructure: offers_infra,
        };
        let mut credentials = Vec::new();
        if own_ai {
            credentials.push(record(user.clone(), "agent:claude"));
        }
        if own_cloud {
            credentials.push(record(user.clone(), "provider:hetzner"));
        }
        let case =
            format!("chose {chose:?}, offers {offers:?}, own ai {own_ai}, own cloud {own_cloud}");
        let status = setup_status(&credentials, std::slice::from_ref(&link), chose, offers);
        let ai = own_ai || (chose_ai && offers_ai);
        let cloud = own_cloud || (chose_infra && offers_infra);
        assert_eq!(status.ai_access.configured, ai, "{case}");
        assert_eq!(status.cloud_access.configured, cloud, "{case}");
        assert_eq!(status.complete, ai && cloud, "{case}");
        assert_eq!(
            status
                .ai_access
                .how
                .iter()
                .any(|h| h == "the platform's AI (chosen)"),
            chose_ai && offers_ai,
            "{case}"
        );
        assert_eq!(
            status
                .cloud_access
                .how
                .iter()
                .any(|h| h == "the platform's infrastructure (chosen)"),
            chose_infra && offers_infra,
            "{case}"
        );
        // Offering alone never configures anything.
        if !chose_ai && !own_ai {
            assert!(!status.ai_access.configured, "{case}");
        }
    }
}

#[test]
fn owners_round_trip_through_their_text_form() {
    use crate::model::{ProjectId, UserId};
    for owner in [
        CredentialOwner::User(UserId::new("u-1").unwrap()),
        // A user id may itself hold a colon.
        CredentialOwner::User(UserId::new("user:42").unwrap()),
        CredentialOwner::Project(ProjectId::new("p-1").unwrap()),
    ] {
        assert_eq!(owner.to_string().parse::<CredentialOwner>(), Ok(owner));
    }
    for bad in ["", "platform", "team:t-1", "user:", "user"] {
        let error = bad.parse::<CredentialOwner>().unwrap_err();
        assert!(
            matches!(error, CredentialError::Invalid { field: "owner", .. }),
            "{bad:?}: {error:?}"
        );
    }
}
