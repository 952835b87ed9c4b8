//! The node boot input, [`NodeBoot`], and its validation.
//!
//! Validation happens here and nowhere else: [`NodeBoot::check`] turns the input
//! into a [`Checked`] value whose every field has passed an allow-list, and only
//! a [`Checked`] value can be rendered.

use std::net::IpAddr;

use sam_core::{NodeId, NodeRole, ProviderKind, Secret};
use url::{Host, Url};

use crate::agents::{AGENT_ADAPTERS, AgentAdapter, agent_adapter, known_agents};
use crate::config::{CloudConfig, UserData};
use crate::error::{Error, FieldError, Result};

/// Largest swap file accepted, in MiB (64 GiB).
pub const MAX_SWAP_MB: u32 = 65_536;
/// Largest `vm.swappiness` accepted.
pub const MAX_SWAPPINESS: u32 = 100;
/// Longest URL accepted, in bytes.
pub const MAX_URL_LEN: usize = 2048;
/// The image Docker nodes run a workspace in when its repository has no
/// devcontainer; boot pulls it in the background ([`crate::Phase::ImagePull`]).
pub const DEFAULT_LIGHTWEIGHT_IMAGE: &str = sam_core::DEFAULT_LIGHTWEIGHT_IMAGE;
/// Longest image reference accepted, in bytes.
pub const MAX_IMAGE_LEN: usize = 255;
/// Shortest callback token accepted, in bytes.
pub const MIN_TOKEN_LEN: usize = 16;
/// Longest callback token accepted, in bytes.
pub const MAX_TOKEN_LEN: usize = 4096;
/// Largest extra CA bundle accepted, in bytes; keeps the user-data under its cap.
pub const MAX_CA_PEM_BYTES: usize = 16 * 1024;

/// Everything a node needs to boot and call home; the input of the renderer.
///
/// Build one with [`NodeBoot::new`] and change the public fields as needed; nothing
/// is checked until [`NodeBoot::render`] or [`NodeBoot::to_cloud_config`], which
/// validate every field at once and report all failures together.
///
/// There is deliberately no field for a provider credential: cloud tokens stay in
/// the control plane, and the only secret that reaches the VM is the node-scoped
/// callback token.
#[derive(Debug, Clone)]
pub struct NodeBoot {
    /// The node's id, as in the control plane's store (`[A-Za-z0-9._:-]`, 1–128 bytes).
    pub node_id: String,
    /// Host name to set (one DNS label: `[a-z0-9-]`, 1–63 bytes); `None` keeps the provider's.
    pub hostname: Option<String>,
    /// The control plane's base URL: `https`, or plain `http` only for a loopback host.
    pub control_plane_url: String,
    /// The node-scoped token the agent uses to call the control plane.
    ///
    /// Base64url or JWT characters (`[A-Za-z0-9_.=-]`), 16–4096 bytes.
    pub callback_token: Secret,
    /// Where to download the agent binary; `None` means `<control_plane_url>/v1/agent/download`.
    pub agent_download_url: Option<String>,
    /// The agent binary's SHA-256 (64 hex digits), pinned in every boot: a missing
    /// checksum or a mismatch fails the `agent-download` phase.
    pub agent_sha256: String,
    /// The agents whose ACP adapters the node installs, by name (see
    /// [`crate::AGENT_ADAPTERS`]). Default: every known agent.
    pub agents: Vec<String>,
    /// TCP port of the agent's HTTP API (1–65535). Default 8080.
    pub agent_port: u16,
    /// Size of the swap file in MiB, 0–65536; 0 creates no swap. Default 2048.
    pub swap_mb: u32,
    /// `vm.swappiness`, 0–100. Default 60.
    pub swappiness: u32,
    /// Limits for the systemd journal.
    pub journald: JournaldLimits,
    /// The cloud the node runs on; recorded in the agent's configuration. Default Hetzner.
    pub provider: ProviderKind,
    /// How the node runs workspaces. Default [`NodeRole::Docker`].
    pub role: NodeRole,
    /// Extra PEM certificates to trust, for a control plane behind a private CA.
    pub extra_ca_pem: Option<String>,
    /// The lightweight workspace image of a Docker node (written to the agent's
    /// configuration, pulled at boot). Default [`DEFAULT_LIGHTWEIGHT_IMAGE`].
    pub lightweight_image: String,
}

impl NodeBoot {
    /// An input with the given identity and agent checksum, and every other field
    /// at its default.
    pub fn new(
        node_id: impl Into<String>,
        control_plane_url: impl Into<String>,
        callback_token: Secret,
        agent_sha256: impl Into<String>,
    ) -> Self {
        Self {
            node_id: node_id.into(),
            hostname: None,
            control_plane_url: control_plane_url.into(),
            callback_token,
            agent_download_url: None,
            agent_sha256: agent_sha256.into(),
            agents: AGENT_ADAPTERS.iter().map(|a| a.agent.to_owned()).collect(),
            agent_port: 8080,
            swap_mb: 2048,
            swappiness: 60,
            journald: JournaldLimits::default(),
            provider: ProviderKind::Hetzner,
            role: NodeRole::Docker,
            extra_ca_pem: None,
            lightweight_image: DEFAULT_LIGHTWEIGHT_IMAGE.to_owned(),
        }
    }

    /// Validates the input and builds its cloud-config.
    ///
    /// # Errors
    /// [`Error::Invalid`] listing every invalid field.
    pub fn to_cloud_config(&self) -> Result<CloudConfig> {
        Ok(crate::phase::cloud_config(&self.check()?))
    }

    /// Validates the input and renders its user-data.
    ///
    /// # Errors
    /// [`Error::Invalid`] listing every invalid field; [`Error::TooLarge`] or
    /// [`Error::Serialize`] from [`CloudConfig::render`].
    pub fn render(&self) -> Result<UserData> {
        self.to_cloud_config()?.render()
    }

    /// The one place where input is validated.
    fn check(&self) -> Result<Checked<'_>> {
        let mut report = Report::default();
        let node_id = report.field(
            "node_id",
            NodeId::new(self.node_id.as_str()).map_err(|e| e.reason),
        );
        if let Some(hostname) = &self.hostname {
            report.field("hostname", check_hostname(hostname));
        }
        let control_plane_url = report.field(
            "control_plane_url",
            check_url_for(&self.control_plane_url, plain_http_hosts(self.provider)),
        );
        report.field("callback_token", check_token(self.callback_token.expose()));
        let agent_download_url = match &self.agent_download_url {
            Some(url) => report.field(
                "agent_download_url",
                check_url_for(url, plain_http_hosts(self.provider)),
            ),
            None => control_plane_url.as_ref().map(default_download_url),
        };
        report.field("agent_sha256", check_sha256(&self.agent_sha256));
        let agents = report.field("agents", check_agents(&self.agents));
        if self.agent_port == 0 {
            report.fail("agent_port", "must be between 1 and 65535".into());
        }
        if self.swap_mb > MAX_SWAP_MB {
            let reason = format!("must be between 0 and {MAX_SWAP_MB} (0 disables swap)");
            report.fail("swap_mb", reason);
        }
        if self.swappiness > MAX_SWAPPINESS {
            let reason = format!("must be between 0 and {MAX_SWAPPINESS}");
            report.fail("swappiness", reason);
        }
        report.field(
            "journald.system_max_use",
            check_size(&self.journald.system_max_use),
        );
        report.field(
            "journald.max_retention",
            check_duration(&self.journald.max_retention),
        );
        if let Some(pem) = &self.extra_ca_pem {
            report.field("extra_ca_pem", check_pem(pem));
        }
        report.field("lightweight_image", check_image(&self.lightweight_image));

        match (node_id, control_plane_url, agent_download_url, agents) {
            (Some(node_id), Some(control_plane_url), Some(agent_download_url), Some(agents))
                if report.0.is_empty() =>
            {
                Ok(Checked {
                    boot_failed_url: boot_failed_url(&control_plane_url, &node_id),
                    node_id,
                    hostname: self.hostname.clone(),
                    control_plane_url,
                    callback_token: &self.callback_token,
                    agent_download_url,
                    agent_sha256: self.agent_sha256.to_ascii_lowercase(),
                    agents,
                    agent_port: self.agent_port,
                    swap_mb: self.swap_mb,
                    swappiness: self.swappiness,
                    journald: &self.journald,
                    provider: self.provider,
                    role: self.role,
                    extra_ca_pem: self.extra_ca_pem.as_deref().map(canonical_pem),
                    lightweight_image: &self.lightweight_image,
                })
            }
            _ => Err(Error::Invalid { errors: report.0 }),
        }
    }
}

/// Collects the failures of one validation, in field order.
#[derive(Debug, Default)]
struct Report(Vec<FieldError>);

impl Report {
    /// Records `outcome`'s failure against `field`; passes its value on.
    fn field<T>(&mut self, field: &'static str, outcome: Result<T, String>) -> Option<T> {
        outcome
            .map_err(|reason| self.0.push(FieldError { field, reason }))
            .ok()
    }

    /// Records a failure of `field`.
    fn fail(&mut self, field: &'static str, reason: String) {
        self.0.push(FieldError { field, reason });
    }
}

/// Limits written to a journald drop-in, in systemd's own syntax.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournaldLimits {
    /// `SystemMaxUse=`: digits with an optional `K`, `M`, `G` or `T` suffix. Default `500M`.
    pub system_max_use: String,
    /// `MaxRetentionSec=`: digits and a unit (`s`, `min`, `h`, `day`, `week`, `month`,
    /// `year`). Default `7day`, the agent's event-log retention.
    pub max_retention: String,
}

impl Default for JournaldLimits {
    fn default() -> Self {
        Self {
            system_max_use: "500M".into(),
            max_retention: "7day".into(),
        }
    }
}

/// A [`NodeBoot`] whose every field passed validation.
#[derive(Debug)]
pub(crate) struct Checked<'a> {
    pub(crate) node_id: NodeId,
    pub(crate) hostname: Option<String>,
    pub(crate) control_plane_url: Url,
    pub(crate) callback_token: &'a Secret,
    pub(crate) agent_download_url: Url,
    pub(crate) agent_sha256: String,
    pub(crate) agents: Vec<&'static AgentAdapter>,
    pub(crate) boot_failed_url: Url,
    pub(crate) agent_port: u16,
    pub(crate) swap_mb: u32,
    pub(crate) swappiness: u32,
    pub(crate) journald: &'a JournaldLimits,
    pub(crate) provider: ProviderKind,
    pub(crate) role: NodeRole,
    pub(crate) extra_ca_pem: Option<String>,
    pub(crate) lightweight_image: &'a str,
}

/// One DNS label: `[a-z0-9-]`, 1–63 bytes, no leading or trailing hyphen.
fn check_hostname(value: &str) -> Result<(), String> {
    if value.is_empty() || value.len() > 63 {
        return Err("must be 1 to 63 characters".into());
    }
    if let Some(c) = value
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(format!(
            "character {c:?} is not allowed (use a-z, 0-9 and '-')"
        ));
    }
    if value.starts_with('-') || value.ends_with('-') {
        return Err("must not start or end with '-'".into());
    }
    Ok(())
}

/// Characters allowed in a URL: RFC 3986's unreserved and reserved characters and
/// `%`, minus the sub-delimiters a shell would treat specially (`!$&'()*;`) except `&`,
/// which query strings need.
fn is_url_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~:/?#[]@%&+,=".contains(c)
}

/// Parses a URL: `https`, or plain `http` to a loopback host; no user info or fragment.
/// Hosts besides loopback that `provider`'s nodes reach over plain http without
/// leaving the machine: a QEMU guest's forward to the host's loopback.
fn plain_http_hosts(provider: ProviderKind) -> &'static [IpAddr] {
    const QEMU: [IpAddr; 1] = [IpAddr::V4(*sam_core::QEMU_CONTROL_PLANE_ADDRESS.ip())];
    match provider {
        ProviderKind::Qemu => &QEMU,
        _ => &[],
    }
}

/// A URL a node calls: `https`, or plain `http` to a loopback host or one of
/// `http_hosts`.
fn check_url_for(value: &str, http_hosts: &[IpAddr]) -> Result<Url, String> {
    if value.is_empty() {
        return Err("must not be empty".into());
    }
    if value.len() > MAX_URL_LEN {
        return Err(format!("longer than {MAX_URL_LEN} bytes"));
    }
    // The url crate silently drops tabs and newlines, so check the raw text first.
    if let Some(c) = value.chars().find(|c| !is_url_char(*c)) {
        return Err(format!("character {c:?} is not allowed in a URL"));
    }
    // Dot-segments would be resolved away by the parser; refuse them instead.
    let lower = value.to_ascii_lowercase();
    if lower.contains("/..") || lower.contains("../") || lower.contains("%2e") {
        return Err("must not contain '..' path segments".into());
    }
    let url = Url::parse(value).map_err(|e| format!("not a valid URL ({e})"))?;
    match url.scheme() {
        "https" => {}
        "http" if is_loopback(&url) => {}
        "http" if matches!(url.host(), Some(Host::Ipv4(ip)) if http_hosts.contains(&IpAddr::V4(ip))) =>
            {}
        "http" => return Err("plain http is only allowed for a loopback host; use https".into()),
        other => return Err(format!("scheme {other:?} is not allowed; use https")),
    }
    if url.host().is_none() {
        return Err("must name a host".into());
    }
    if url.fragment().is_some() {
        return Err("must not have a fragment ('#')".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry a user name or password".into());
    }
    Ok(url)
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(Host::Domain(domain)) => domain.eq_ignore_ascii_case("localhost"),
        Some(Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    }
}

/// `<control plane>/v1/agent/download`, keeping any path prefix of the control plane.
fn default_download_url(control_plane_url: &Url) -> Url {
    below(control_plane_url, &["v1", "agent", "download"])
}

/// `<control plane>/v1/nodes/<node id>/boot-failed` ([`crate::BOOT_FAILED_PATH`]).
fn boot_failed_url(control_plane_url: &Url, node_id: &NodeId) -> Url {
    below(
        control_plane_url,
        &["v1", "nodes", node_id.as_str(), "boot-failed"],
    )
}

/// `base` without query and fragment, with `segments` appended to its path.
fn below(base: &Url, segments: &[&str]) -> Url {
    let mut url = base.clone();
    url.set_query(None);
    url.set_fragment(None);
    if let Ok(mut path) = url.path_segments_mut() {
        path.pop_if_empty().extend(segments);
    }
    url
}

/// Known agent names, each at most once; the reason names the known ones.
fn check_agents(agents: &[String]) -> Result<Vec<&'static AgentAdapter>, String> {
    let mut adapters: Vec<&'static AgentAdapter> = Vec::new();
    for name in agents {
        let adapter = agent_adapter(name).ok_or_else(|| {
            let shown: String = name.chars().take(32).collect();
            format!("unknown agent {shown:?} (known: {})", known_agents())
        })?;
        if !adapters.contains(&adapter) {
            adapters.push(adapter);
        }
    }
    Ok(adapters)
}

/// The token's length and character set; the reason never quotes the token.
fn check_token(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("must not be empty".into());
    }
    if !(MIN_TOKEN_LEN..=MAX_TOKEN_LEN).contains(&value.len()) {
        return Err(format!(
            "must be {MIN_TOKEN_LEN} to {MAX_TOKEN_LEN} bytes long"
        ));
    }
    if !value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "_.=-".contains(c))
    {
        return Err("contains a character outside [A-Za-z0-9_.=-]".into());
    }
    Ok(())
}

/// An image reference (`registry/name:tag` or `name@sha256:…`): 1–255 bytes of
/// `[A-Za-z0-9._:/@-]`, starting with a letter or digit (it becomes one argument of
/// `docker pull`, never an option), with no empty or `..` path component.
fn check_image(value: &str) -> Result<(), String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || "._:/@-".contains(c);
    if value.is_empty() || value.len() > MAX_IMAGE_LEN {
        Err(format!("must be 1 to {MAX_IMAGE_LEN} bytes"))
    } else if !value.starts_with(|c: char| c.is_ascii_alphanumeric())
        || !value.chars().all(allowed)
        || value.contains("..")
        || value.contains("//")
    {
        Err(
            "must be an image reference: letters, digits and . _ : / @ -, \
             starting with a letter or digit, without .. or //"
                .into(),
        )
    } else {
        Ok(())
    }
}

fn check_sha256(value: &str) -> Result<(), String> {
    if value.len() == 64 && value.chars().all(|c| c.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err("must be 64 hexadecimal digits".into())
    }
}

/// Splits `value` into a run of 1–6 decimal digits not starting with 0, and the rest.
fn split_number(value: &str) -> Option<(&str, &str)> {
    let end = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let (digits, rest) = value.split_at(end);
    (!digits.is_empty() && digits.len() <= 6 && !digits.starts_with('0')).then_some((digits, rest))
}

/// A journald size: `500M`, `2G`, `104857`.
fn check_size(value: &str) -> Result<(), String> {
    match split_number(value) {
        Some((_, "" | "K" | "M" | "G" | "T")) => Ok(()),
        _ => Err("must be 1 to 6 digits with an optional K, M, G or T suffix (e.g. 500M)".into()),
    }
}

/// A journald duration: `7day`, `12h`, `30min`.
fn check_duration(value: &str) -> Result<(), String> {
    match split_number(value) {
        Some((_, "s" | "min" | "h" | "day" | "week" | "month" | "year")) => Ok(()),
        _ => Err(
            "must be 1 to 6 digits and a unit: s, min, h, day, week, month or year (e.g. 7day)"
                .into(),
        ),
    }
}

const PEM_BEGIN: &str = "-----BEGIN CERTIFICATE-----";
const PEM_END: &str = "-----END CERTIFICATE-----";

/// One or more PEM `CERTIFICATE` blocks and nothing else.
fn check_pem(value: &str) -> Result<(), String> {
    if value.len() > MAX_CA_PEM_BYTES {
        return Err(format!("longer than {MAX_CA_PEM_BYTES} bytes"));
    }
    let mut inside = false;
    let mut blocks = 0;
    for line in value.lines().map(|l| l.trim_end_matches('\r')) {
        match (inside, line) {
            (false, "") => {}
            (false, PEM_BEGIN) => inside = true,
            (true, PEM_END) => {
                inside = false;
                blocks += 1;
            }
            (true, body)
                if !body.is_empty()
                    && body.len() <= 76
                    && body
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "+/=".contains(c)) => {}
            _ => {
                return Err("must hold only PEM CERTIFICATE blocks of base64 lines".into());
            }
        }
    }
    if inside || blocks == 0 {
        return Err("must hold at least one complete PEM CERTIFICATE block".into());
    }
    Ok(())
}

/// A checked PEM bundle with `\n` line ends, no blank lines and a final newline.
fn canonical_pem(value: &str) -> String {
    value
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| !l.is_empty())
        .map(|l| format!("{l}\n"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boot() -> NodeBoot {
        NodeBoot::new(
            "node-1",
            "https://cp.example.com",
            Secret::new("abcdefghijklmnop"),
            "a".repeat(64),
        )
    }

    #[test]
    fn default_download_url_keeps_the_path_prefix() {
        let check = |base: &str, expected: &str| {
            let url = default_download_url(&Url::parse(base).unwrap());
            assert_eq!(url.as_str(), expected, "{base}");
        };
        check(
            "https://cp.example.com",
            "https://cp.example.com/v1/agent/download",
        );
        check(
            "https://cp.example.com/sam?x=1",
            "https://cp.example.com/sam/v1/agent/download",
        );
        check(
            "http://127.0.0.1:8080/sam/",
            "http://127.0.0.1:8080/sam/v1/agent/download",
        );
    }

    #[test]
    fn loopback_http_is_allowed_and_other_http_is_not() {
        let check_url = |url| check_url_for(url, plain_http_hosts(ProviderKind::Hetzner));
        for url in [
            "http://127.0.0.1:3000",
            "http://localhost",
            "http://[::1]:80/x",
        ] {
            assert!(check_url(url).is_ok(), "{url}");
        }
        for url in [
            "http://cp.example.com",
            "http://10.0.0.1",
            "http://10.0.2.100/",
            "ftp://cp.example.com",
            "https://user:pw@cp.example.com",
            "file:///etc/passwd",
        ] {
            assert!(check_url(url).is_err(), "{url}");
        }
    }

    #[test]
    fn a_qemu_node_reaches_its_forward_over_plain_http_and_nothing_else() {
        let qemu = plain_http_hosts(ProviderKind::Qemu);
        assert!(check_url_for("http://10.0.2.100/", qemu).is_ok());
        assert!(check_url_for("http://10.0.2.100/v1/agent/download", qemu).is_ok());
        for url in [
            "http://10.0.2.2/",
            "http://10.0.2.101/",
            "http://cp.example.com",
        ] {
            assert!(check_url_for(url, qemu).is_err(), "{url}");
        }
        let mut boot = NodeBoot::new(
            "n-1",
            "http://10.0.2.100/",
            Secret::new("t".repeat(32)),
            "a".repeat(64),
        );
        assert_eq!(
            boot.render().unwrap_err().invalid_fields(),
            ["control_plane_url"]
        );
        boot.provider = ProviderKind::Qemu;
        assert!(boot.render().is_ok());
    }

    #[test]
    fn journald_patterns() {
        for ok in ["500M", "1G", "104857", "64K"] {
            assert_eq!(check_size(ok), Ok(()), "{ok}");
        }
        for bad in ["", "0M", "500MB", "-1M", "1234567M", "5 M", "500m"] {
            assert!(check_size(bad).is_err(), "{bad:?}");
        }
        for ok in ["7day", "12h", "30min", "1year"] {
            assert_eq!(check_duration(ok), Ok(()), "{ok}");
        }
        for bad in ["", "7", "7days", "day", "07day", "7day\nStorage=none"] {
            assert!(check_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn every_invalid_field_is_reported_at_once() {
        let mut input = boot();
        input.node_id = String::new();
        input.control_plane_url = "http://cp.example.com".into();
        input.swap_mb = MAX_SWAP_MB + 1;
        input.swappiness = MAX_SWAPPINESS + 1;
        input.agent_port = 0;
        input.agent_sha256 = String::new();
        input.agents = vec!["claude".into(), "aider".into()];
        let err = input.check().unwrap_err();
        assert_eq!(
            err.invalid_fields(),
            [
                "node_id",
                "control_plane_url",
                "agent_sha256",
                "agents",
                "agent_port",
                "swap_mb",
                "swappiness"
            ]
        );
        let message = err.to_string();
        assert!(
            message.contains("unknown agent \"aider\" (known: claude, codex, gemini, opencode)"),
            "{message}"
        );
    }

    #[test]
    fn agents_are_deduplicated_in_order() {
        let mut input = boot();
        input.agents = vec!["codex".into(), "claude".into(), "codex".into()];
        let checked = input.check().unwrap();
        let names: Vec<&str> = checked.agents.iter().map(|a| a.agent).collect();
        assert_eq!(names, ["codex", "claude"]);
        input.agents.clear();
        assert!(input.check().unwrap().agents.is_empty());
    }

    #[test]
    fn boot_failed_url_keeps_the_path_prefix_and_names_the_node() {
        let check = |base: &str, node: &str, expected: &str| {
            let node = NodeId::new(node).unwrap();
            let url = boot_failed_url(&Url::parse(base).unwrap(), &node);
            assert_eq!(url.as_str(), expected, "{base}");
        };
        check(
            "https://cp.example.com",
            "n-1",
            "https://cp.example.com/v1/nodes/n-1/boot-failed",
        );
        check(
            "https://cp.example.com:8443/sam/?q=1",
            "node:7_a.b",
            "https://cp.example.com:8443/sam/v1/nodes/node:7_a.b/boot-failed",
        );
    }

    #[test]
    fn pem_bundles_are_checked_and_canonicalised() {
        let pem = "-----BEGIN CERTIFICATE-----\r\nQUJD\r\n-----END CERTIFICATE-----\r\n\r\n";
        assert_eq!(check_pem(pem), Ok(()));
        assert_eq!(
            canonical_pem(pem),
            "-----BEGIN CERTIFICATE-----\nQUJD\n-----END CERTIFICATE-----\n"
        );
        for bad in [
            "",
            "QUJD",
            "-----BEGIN CERTIFICATE-----\nQUJD\n",
            "-----BEGIN CERTIFICATE-----\nQU JD\n-----END CERTIFICATE-----\n",
            "-----BEGIN PRIVATE KEY-----\nQUJD\n-----END PRIVATE KEY-----\n",
        ] {
            assert!(check_pem(bad).is_err(), "{bad:?}");
        }
    }
}

/// The control plane's [`sam_core::BootRenderer`] for cloud nodes: each node's
/// user data is a [`NodeBoot`] for that node, its token and its provider, rendered.
///
/// The public fields are the settings every node shares; [`NodeBoot::new`]'s
/// defaults apply to the rest.
#[derive(Debug, Clone)]
pub struct CloudInitBoot {
    /// The control plane's base URL the nodes call back to: `https`, or plain `http`
    /// only for a loopback host.
    pub control_plane_url: String,
    /// TCP port of the agent's HTTP API, where the control plane reaches it.
    pub agent_port: u16,
    /// Where to download the agent binary; `None` means
    /// `<control_plane_url>/v1/agent/download`.
    pub agent_download_url: Option<String>,
    /// The agent binary's SHA-256 (64 hex digits), pinned in every node's boot.
    pub agent_sha256: String,
    /// The agents whose ACP adapters every node installs. Default: every known agent.
    pub agents: Vec<String>,
    /// The lightweight workspace image of Docker nodes. Default
    /// [`DEFAULT_LIGHTWEIGHT_IMAGE`].
    pub lightweight_image: String,
    /// How the nodes run workspaces. Default [`NodeRole::Docker`].
    pub role: NodeRole,
}

impl CloudInitBoot {
    /// Nodes calling back to `control_plane_url`, with the agent whose SHA-256 is
    /// `agent_sha256` on port 8080, downloaded from the control plane, and every
    /// known agent's adapter.
    pub fn new(control_plane_url: impl Into<String>, agent_sha256: impl Into<String>) -> Self {
        Self {
            control_plane_url: control_plane_url.into(),
            agent_port: 8080,
            agent_download_url: None,
            agent_sha256: agent_sha256.into(),
            agents: AGENT_ADAPTERS.iter().map(|a| a.agent.to_owned()).collect(),
            lightweight_image: DEFAULT_LIGHTWEIGHT_IMAGE.to_owned(),
            role: NodeRole::Docker,
        }
    }

    /// Checks the settings every node shares, by rendering a boot with them.
    ///
    /// # Errors
    /// As [`NodeBoot::render`], naming the field at fault.
    pub fn validate(&self) -> Result<()> {
        self.validate_for(ProviderKind::Hetzner)
    }

    /// As [`CloudInitBoot::validate`], for the nodes of `provider` (a QEMU node
    /// calls its control plane over plain http through QEMU's forward).
    ///
    /// # Errors
    /// As [`NodeBoot::render`], naming the field at fault.
    pub fn validate_for(&self, provider: ProviderKind) -> Result<()> {
        let token = Secret::new("a-placeholder-token-to-validate-with");
        self.boot_for("validate", provider, &token)
            .render()
            .map(drop)
    }

    /// The boot input of `node` with `token`.
    pub fn node_boot(&self, node: &sam_core::NodeRecord, token: &Secret) -> NodeBoot {
        self.boot_for(node.id.as_str(), node.provider, token)
    }

    fn boot_for(&self, node_id: &str, provider: ProviderKind, token: &Secret) -> NodeBoot {
        let mut boot = NodeBoot::new(
            node_id,
            self.control_plane_url.clone(),
            token.clone(),
            self.agent_sha256.clone(),
        );
        boot.agent_port = self.agent_port;
        boot.agent_download_url = self.agent_download_url.clone();
        boot.agents = self.agents.clone();
        boot.lightweight_image = self.lightweight_image.clone();
        boot.role = self.role;
        boot.provider = provider;
        boot
    }
}

impl sam_core::BootRenderer for CloudInitBoot {
    fn user_data(
        &self,
        node: &sam_core::NodeRecord,
        token: &Secret,
    ) -> std::result::Result<String, sam_core::Error> {
        let user_data =
            self.node_boot(node, token)
                .render()
                .map_err(|e| sam_core::Error::InvalidInput {
                    field: "user_data",
                    reason: e.to_string(),
                })?;
        Ok(user_data.expose().to_owned())
    }
}

#[cfg(test)]
mod cloud_init_boot {
    use sam_core::BootRenderer as _;

    use super::*;

    #[test]
    fn renders_each_nodes_boot_with_its_token_and_names_bad_settings() {
        let node = sam_core::testkit::fixtures::node("n-1", 0);
        let token = Secret::new("node-scoped-token-0123456789");
        let mut boot = CloudInitBoot::new("https://sam.example.com", "b".repeat(64));
        boot.agent_port = 9090;
        let text = boot.user_data(&node, &token).unwrap();
        assert!(text.starts_with(crate::CLOUD_CONFIG_HEADER), "{text}");
        assert!(text.contains(node.id.as_str()), "{text}");
        assert!(text.contains("node-scoped-token-0123456789"), "{text}");
        assert!(text.contains("9090"), "{text}");
        assert_eq!(boot.node_boot(&node, &token).provider, node.provider);

        assert!(text.contains(&"b".repeat(64)), "{text}");

        assert!(boot.validate().is_ok());
        boot.agents = vec!["aider".into()];
        assert_eq!(boot.validate().unwrap_err().invalid_fields(), ["agents"]);
        boot.control_plane_url = "http://sam.example.com".into();
        boot.agent_sha256 = "not-a-checksum".into();
        let error = boot.user_data(&node, &token).unwrap_err().to_string();
        assert!(error.contains("control_plane_url"), "{error}");
        assert!(error.contains("agent_sha256"), "{error}");
    }
}
