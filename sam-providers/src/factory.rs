//! Providers built from users' and projects' own credentials: [`CloudProviderFactory`]
//! for the clouds, [`FakeProviderFactory`] for tests.
//!
//! The control plane opens a stored provider credential and hands it to a
//! [`ProviderFactory`]; the factory parses the credential's stored form (a Hetzner
//! API token; a Scaleway secret key with its `project_id` detail; a GCP
//! service-account key file with an optional `project` detail) into the provider's
//! own config and builds it with that provider's constructor. The non-secret settings
//! (API base URL, image, zones) come from a template: the platform's config for that
//! provider when it has one, else the provider's defaults.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use sam_core::{
    CredentialError, CredentialKind, Error as CoreError, Provider, ProviderCredential,
    ProviderFactory, ProviderKind,
};

use crate::FakeProvider;

/// A typed refusal of a credential's stored form, naming the field, never its value.
fn refuse(field: &'static str, reason: impl Into<String>) -> CoreError {
    CredentialError::Invalid {
        field,
        reason: reason.into(),
    }
    .into()
}

/// Refuses a credential whose kind does not fit `provider`.
#[cfg_attr(not(feature = "cloud"), allow(dead_code))]
fn expect_kind(
    provider: ProviderKind,
    credential: &ProviderCredential,
    wanted: CredentialKind,
) -> Result<(), CoreError> {
    if credential.kind == wanted {
        Ok(())
    } else {
        Err(refuse(
            "kind",
            format!(
                "a {provider} credential must be a {}, not a {}",
                wanted.as_str(),
                credential.kind.as_str()
            ),
        ))
    }
}

/// The zones a provider built from a credential uses: the credential's `zones`
/// detail (comma-separated) when it has one, else the template's.
#[cfg_attr(not(any(feature = "scaleway", feature = "gcp")), allow(dead_code))]
fn zones(
    details: &BTreeMap<String, String>,
    template: Option<&[sam_core::Location]>,
    provider: &str,
) -> Result<Vec<sam_core::Location>, CoreError> {
    match (details.get("zones"), template) {
        (Some(zones), _) => zones
            .split(',')
            .map(|z| {
                sam_core::Location::new(z.trim()).map_err(|e| refuse("details.zones", e.reason))
            })
            .collect(),
        (None, Some(zones)) => Ok(zones.to_vec()),
        (None, None) => Err(refuse(
            "details.zones",
            format!("no {provider} zones are configured; give the credential a zones detail"),
        )),
    }
}

/// Builds Hetzner, Scaleway and GCP providers from users' and projects' credentials.
///
/// Each provider's non-secret settings come from its template
/// ([`CloudProviderFactory::with_hetzner`] and friends: normally the platform's own
/// config, whose credential is replaced), else from the provider's defaults. Scaleway
/// and GCP need zones: from the template, or the credential's `zones` detail
/// (comma-separated), which wins when both are there.
///
/// # Example
/// ```
/// use sam_core::{CredentialKind, ProviderCredential, ProviderFactory, ProviderKind, Secret};
/// use sam_providers::CloudProviderFactory;
///
/// let factory = CloudProviderFactory::new();
/// let credential = ProviderCredential {
///     kind: CredentialKind::ApiToken,
///     secret: Secret::new("a-users-hetzner-token"),
///     details: Default::default(),
/// };
/// let provider = factory.build(ProviderKind::Hetzner, &credential).unwrap();
/// assert_eq!(provider.kind(), ProviderKind::Hetzner);
/// // A Scaleway key without the project it belongs to is refused, naming the field.
/// let key = ProviderCredential { kind: CredentialKind::ApiKey, ..credential };
/// let error = factory.build(ProviderKind::Scaleway, &key).unwrap_err();
/// assert!(error.to_string().contains("project_id"), "{error}");
/// ```
#[derive(Debug, Clone, Default)]
pub struct CloudProviderFactory {
    #[cfg(feature = "hetzner")]
    hetzner: Option<crate::HetznerConfig>,
    #[cfg(feature = "scaleway")]
    scaleway: Option<crate::ScalewayConfig>,
    #[cfg(feature = "gcp")]
    gcp: Option<crate::GcpConfig>,
}

impl CloudProviderFactory {
    /// A factory with every provider's defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes Hetzner's base URL and image from `template` (its token is not used).
    #[cfg(feature = "hetzner")]
    pub fn with_hetzner(mut self, template: crate::HetznerConfig) -> Self {
        self.hetzner = Some(template);
        self
    }

    /// Takes Scaleway's base URL, image and zones from `template` (its key and project
    /// are not used).
    #[cfg(feature = "scaleway")]
    pub fn with_scaleway(mut self, template: crate::ScalewayConfig) -> Self {
        self.scaleway = Some(template);
        self
    }

    /// Takes GCP's base URL, image, disk and zones from `template` (its service
    /// account and project are not used).
    #[cfg(feature = "gcp")]
    pub fn with_gcp(mut self, template: crate::GcpConfig) -> Self {
        self.gcp = Some(template);
        self
    }

    #[cfg(feature = "hetzner")]
    fn hetzner(&self, credential: &ProviderCredential) -> Result<Arc<dyn Provider>, CoreError> {
        expect_kind(ProviderKind::Hetzner, credential, CredentialKind::ApiToken)?;
        let mut config = self
            .hetzner
            .clone()
            .unwrap_or_else(|| crate::HetznerConfig::new(credential.secret.clone()));
        config.token = credential.secret.clone();
        Ok(Arc::new(crate::HetznerProvider::new(config)?))
    }

    #[cfg(feature = "scaleway")]
    fn scaleway(&self, credential: &ProviderCredential) -> Result<Arc<dyn Provider>, CoreError> {
        expect_kind(ProviderKind::Scaleway, credential, CredentialKind::ApiKey)?;
        let project = credential
            .details
            .get("project_id")
            .filter(|p| !p.trim().is_empty())
            .ok_or_else(|| {
                refuse(
                    "details.project_id",
                    "a Scaleway key needs the project it belongs to",
                )
            })?;
        let zones = zones(
            &credential.details,
            self.scaleway.as_ref().map(|t| t.zones.as_slice()),
            "Scaleway",
        )?;
        let mut config = self.scaleway.clone().unwrap_or_else(|| {
            crate::ScalewayConfig::new(credential.secret.clone(), project.clone(), Vec::new())
        });
        config.secret_key = credential.secret.clone();
        config.project_id.clone_from(project);
        config.zones = zones;
        Ok(Arc::new(crate::ScalewayProvider::new(config)?))
    }

    #[cfg(feature = "gcp")]
    fn gcp(&self, credential: &ProviderCredential) -> Result<Arc<dyn Provider>, CoreError> {
        expect_kind(
            ProviderKind::Gcp,
            credential,
            CredentialKind::ServiceAccount,
        )?;
        // serde_json's messages can quote the input; say only where it went wrong.
        let account: crate::GcpServiceAccount = serde_json::from_str(credential.secret.expose())
            .map_err(|e| {
                refuse(
                    "secret",
                    format!(
                        "is not a service-account key file ({:?} error at line {}, column {})",
                        e.classify(),
                        e.line(),
                        e.column()
                    ),
                )
            })?;
        let project = credential
            .details
            .get("project")
            .or_else(|| credential.details.get("project_id"))
            .cloned()
            .or_else(|| account.project_id.clone())
            .filter(|p| !p.trim().is_empty())
            .ok_or_else(|| {
                refuse(
                    "details.project",
                    "name the GCP project (the key file names none)",
                )
            })?;
        let zones = zones(
            &credential.details,
            self.gcp.as_ref().map(|t| t.zones.as_slice()),
            "GCP",
        )?;
        let mut config = self
            .gcp
            .clone()
            .unwrap_or_else(|| crate::GcpConfig::new(project.clone(), Vec::new(), account.clone()));
        config.project_id = project;
        config.service_account = account;
        config.zones = zones;
        Ok(Arc::new(crate::GcpProvider::new(config)?))
    }
}

impl ProviderFactory for CloudProviderFactory {
    #[cfg_attr(not(feature = "cloud"), allow(unused_variables))]
    fn build(
        &self,
        kind: ProviderKind,
        credential: &ProviderCredential,
    ) -> Result<Arc<dyn Provider>, CoreError> {
        match kind {
            #[cfg(feature = "hetzner")]
            ProviderKind::Hetzner => self.hetzner(credential),
            #[cfg(feature = "scaleway")]
            ProviderKind::Scaleway => self.scaleway(credential),
            #[cfg(feature = "gcp")]
            ProviderKind::Gcp => self.gcp(credential),
            other => Err(CoreError::InvalidInput {
                field: "provider",
                reason: format!(
                    "{other} cannot be built from a user's credential (this build has the {} backends)",
                    built_backends()
                ),
            }),
        }
    }
}

/// The cloud backends this build has, for messages.
fn built_backends() -> String {
    let names: Vec<&str> = [
        (cfg!(feature = "hetzner"), "hetzner"),
        (cfg!(feature = "scaleway"), "scaleway"),
        (cfg!(feature = "gcp"), "gcp"),
    ]
    .into_iter()
    .filter_map(|(on, name)| on.then_some(name))
    .collect();
    if names.is_empty() {
        "no cloud".to_owned()
    } else {
        names.join(", ")
    }
}

/// A [`ProviderFactory`] for tests: each credential secret registered with
/// [`FakeProviderFactory::register`] builds its own [`FakeProvider`], so a test can
/// see which credential every call was made with.
#[derive(Debug, Default)]
pub struct FakeProviderFactory {
    /// The fakes by the secret that builds them.
    fakes: Mutex<Vec<(sam_core::Secret, Arc<FakeProvider>)>>,
}

impl FakeProviderFactory {
    /// A factory that knows no credential yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes `secret` build `fake`.
    pub fn register(&self, secret: &str, fake: Arc<FakeProvider>) {
        let mut fakes = self.fakes.lock().unwrap_or_else(|e| e.into_inner());
        fakes.retain(|(s, _)| s.expose() != secret);
        fakes.push((sam_core::Secret::new(secret), fake));
    }
}

impl ProviderFactory for FakeProviderFactory {
    fn build(
        &self,
        kind: ProviderKind,
        credential: &ProviderCredential,
    ) -> Result<Arc<dyn Provider>, CoreError> {
        if kind != ProviderKind::Fake {
            return Err(CoreError::InvalidInput {
                field: "provider",
                reason: format!("the fake factory builds only fake providers, not {kind}"),
            });
        }
        let fakes = self.fakes.lock().unwrap_or_else(|e| e.into_inner());
        fakes
            .iter()
            .find(|(s, _)| s.expose() == credential.secret.expose())
            .map(|(_, fake)| Arc::clone(fake) as Arc<dyn Provider>)
            .ok_or_else(|| refuse("secret", "the fake factory knows no such credential"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sam_core::{Classify, ErrorCategory, Secret};

    fn credential(
        kind: CredentialKind,
        secret: &str,
        details: &[(&str, &str)],
    ) -> ProviderCredential {
        ProviderCredential {
            kind,
            secret: Secret::new(secret),
            details: details
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    /// Builds `kind` from `credential`: `Ok(())` or the refusal's field and category.
    #[cfg(all(feature = "hetzner", feature = "scaleway", feature = "gcp"))]
    fn check(kind: ProviderKind, credential: &ProviderCredential, expected: Result<(), &str>) {
        let factory = CloudProviderFactory::new();
        match (factory.build(kind, credential), expected) {
            (Ok(provider), Ok(())) => assert_eq!(provider.kind(), kind),
            (Err(e), Err(field)) => {
                assert_eq!(e.category(), ErrorCategory::InvalidConfig, "{e}");
                assert!(e.to_string().contains(field), "{e} should name {field}");
                assert!(
                    !e.to_string().contains(credential.secret.expose()),
                    "{e} must not show the secret"
                );
            }
            (got, want) => panic!("{kind}: got {got:?}, wanted {want:?}"),
        }
    }

    #[cfg(all(feature = "hetzner", feature = "scaleway", feature = "gcp"))]
    #[test]
    fn credentials_are_parsed_with_typed_refusals() {
        use CredentialKind::{ApiKey, ApiToken, ServiceAccount};
        let key_file = include_str!("../tests/data/test-service-account.json");
        let cases: Vec<(ProviderKind, ProviderCredential, Result<(), &str>)> = vec![
            (
                ProviderKind::Hetzner,
                credential(ApiToken, "hcloud-secret", &[]),
                Ok(()),
            ),
            (
                ProviderKind::Hetzner,
                credential(ApiKey, "hcloud-secret", &[]),
                Err("kind"),
            ),
            (
                ProviderKind::Scaleway,
                credential(
                    ApiKey,
                    "scw-secret",
                    &[("project_id", "proj"), ("zones", "fr-par-1, nl-ams-1")],
                ),
                Ok(()),
            ),
            (
                ProviderKind::Scaleway,
                credential(ApiKey, "scw-secret", &[("zones", "fr-par-1")]),
                Err("project_id"),
            ),
            (
                ProviderKind::Scaleway,
                credential(ApiKey, "scw-secret", &[("project_id", "proj")]),
                Err("zones"),
            ),
            (
                ProviderKind::Scaleway,
                credential(
                    ApiKey,
                    "scw-secret",
                    &[("project_id", "proj"), ("zones", "not a zone!")],
                ),
                Err("zones"),
            ),
            (
                ProviderKind::Gcp,
                credential(
                    ServiceAccount,
                    key_file,
                    &[("project", "p"), ("zones", "europe-west1-b")],
                ),
                Ok(()),
            ),
            (
                ProviderKind::Gcp,
                credential(
                    ServiceAccount,
                    "{\"client_email\": \"secret-value\"",
                    &[("zones", "europe-west1-b")],
                ),
                Err("service-account key file"),
            ),
            (
                ProviderKind::Gcp,
                credential(ApiToken, key_file, &[]),
                Err("kind"),
            ),
            (
                ProviderKind::Fake,
                credential(ApiToken, "fake-secret-value", &[]),
                Err("provider"),
            ),
        ];
        for (kind, credential, expected) in &cases {
            check(*kind, credential, *expected);
        }
    }

    #[cfg(feature = "scaleway")]
    #[test]
    fn a_template_gives_the_settings_and_the_credential_the_identity() {
        let template = crate::ScalewayConfig::new(
            Secret::new("platform-key"),
            "platform-project",
            vec![sam_core::Location::new("pl-waw-1").expect("zone")],
        );
        let factory = CloudProviderFactory::new().with_scaleway(template);
        let users = credential(
            CredentialKind::ApiKey,
            "users-key",
            &[("project_id", "users-project")],
        );
        let provider = factory
            .build(ProviderKind::Scaleway, &users)
            .expect("the template's zones serve");
        let shown = format!("{provider:?}");
        assert!(shown.contains("users-project"), "{shown}");
        assert!(!shown.contains("platform-project"), "{shown}");
        assert!(
            !shown.contains("users-key") && !shown.contains("platform-key"),
            "{shown}"
        );
    }

    #[test]
    fn the_fake_factory_builds_the_registered_fake() {
        let factory = FakeProviderFactory::new();
        let fake = Arc::new(FakeProvider::new());
        factory.register("token-a", Arc::clone(&fake));
        let built = factory
            .build(
                ProviderKind::Fake,
                &credential(CredentialKind::ApiToken, "token-a", &[]),
            )
            .expect("registered");
        assert!(Arc::ptr_eq(&(fake as Arc<dyn Provider>), &built));
        let unknown = factory
            .build(
                ProviderKind::Fake,
                &credential(CredentialKind::ApiToken, "token-b", &[]),
            )
            .expect_err("unknown");
        assert_eq!(unknown.category(), ErrorCategory::InvalidConfig);
    }
}
