//! Snapshots of the rendered user-data and the properties of its files.

use sam_cloudinit::{
    AGENT_UNIT, CALLBACK_TOKEN_PATH, CLOUD_CONFIG_HEADER, MAX_USER_DATA_BYTES, NodeRole,
};
use serde::Deserialize;

use crate::support::{AGENT_SHA256, TOKEN, default_boot, fixtures, full_boot, host_boot};

/// What the tests read back from rendered user-data.
#[derive(Debug, Deserialize)]
pub(crate) struct Rendered {
    pub(crate) runcmd: Vec<Vec<String>>,
    pub(crate) write_files: Vec<RenderedFile>,
}

/// One `write_files` entry, read back.
#[derive(Debug, Deserialize)]
pub(crate) struct RenderedFile {
    pub(crate) path: String,
    pub(crate) content: String,
    pub(crate) owner: String,
    pub(crate) permissions: String,
}

impl Rendered {
    pub(crate) fn parse(text: &str) -> Self {
        serde_saphyr::from_str(text).unwrap_or_else(|e| panic!("unreadable output: {e}\n{text}"))
    }

    pub(crate) fn file(&self, path: &str) -> &RenderedFile {
        self.write_files
            .iter()
            .find(|f| f.path == path)
            .unwrap_or_else(|| panic!("{path} is not written"))
    }
}

#[test]
fn default_render_matches_snapshot() {
    let text = default_boot().render().unwrap().into_string();
    insta::assert_snapshot!("default", text);
}

#[test]
fn full_render_matches_snapshot() {
    let text = full_boot().render().unwrap().into_string();
    insta::assert_snapshot!("all-options", text);
}

/// The token is the content of one root-only file, and appears nowhere else:
/// not in a command, not in the unit, not in the agent's configuration.
#[test]
fn token_lives_only_in_its_root_only_file() {
    for (name, boot) in fixtures() {
        let text = boot.render().unwrap().into_string();
        assert_eq!(text.matches(TOKEN).count(), 1, "{name}");
        let rendered = Rendered::parse(&text);
        let token_file = rendered.file(CALLBACK_TOKEN_PATH);
        assert_eq!(token_file.content, TOKEN, "{name}");
        assert_eq!(token_file.permissions, "0600", "{name}");
        assert_eq!(token_file.owner, "root:root", "{name}");
        let unit = rendered.file(&format!("/etc/systemd/system/{AGENT_UNIT}"));
        assert!(unit.content.contains(CALLBACK_TOKEN_PATH), "{name}");
        assert!(!unit.content.contains("Environment"), "{name}");
        assert!(!unit.content.contains("Requires="), "{name}");
        assert!(!unit.content.contains("Require=docker"), "{name}");
    }
}

#[test]
fn output_starts_with_the_header_and_fits_the_cap() {
    for (name, boot) in fixtures() {
        let user_data = boot.render().unwrap();
        assert!(
            user_data
                .expose()
                .starts_with(&format!("{CLOUD_CONFIG_HEADER}\n")),
            "{name}"
        );
        assert!(user_data.len() <= MAX_USER_DATA_BYTES, "{name}");
    }
}

/// Every agent, the devcontainer CLI and the largest CA bundle accepted still fit
/// the smallest provider cap.
#[test]
fn every_agent_and_the_largest_ca_bundle_fit_the_cap() {
    let block = include_str!("extra-ca.pem");
    let copies = sam_cloudinit::MAX_CA_PEM_BYTES / block.len();
    let boot = sam_cloudinit::NodeBoot {
        agents: sam_cloudinit::AGENT_ADAPTERS
            .iter()
            .map(|a| a.agent.to_owned())
            .collect(),
        extra_ca_pem: Some(block.repeat(copies)),
        ..full_boot()
    };
    let user_data = boot.render().unwrap();
    assert!(user_data.len() <= MAX_USER_DATA_BYTES, "{user_data:?}");
}

#[test]
fn swap_size_is_an_argument_and_swappiness_is_data() {
    let rendered = Rendered::parse(full_boot().render().unwrap().expose());
    assert!(rendered.runcmd.contains(&vec![
        sam_cloudinit::PHASE_SCRIPT.to_owned(),
        "swap".into(),
        "/usr/local/lib/sam-boot/swap.sh".into(),
        "8192".into()
    ]));
    let sysctl = rendered.file("/etc/sysctl.d/60-sam-swap.conf");
    assert_eq!(sysctl.content, "vm.swappiness = 10\n");
}

#[test]
fn the_agent_configuration_carries_the_inputs_as_json() {
    let rendered = Rendered::parse(full_boot().render().unwrap().expose());
    let config: serde_json::Value =
        serde_json::from_str(&rendered.file(sam_cloudinit::AGENT_CONFIG_PATH).content).unwrap();
    assert_eq!(
        config,
        serde_json::json!({
            "node_id": "node:7_a.b",
            "control_plane_url": "https://cp.example.com:8443/sam",
            "callback_token_file": CALLBACK_TOKEN_PATH,
            "port": 9443,
            "provider": "scaleway",
            "role": "docker",
            "agent_user": "sam",
            "lightweight_image": format!("registry.example.com:5000/team/workspace@sha256:{}", "e".repeat(64)),
        })
    );
    let sha = rendered.file(sam_cloudinit::AGENT_SHA256_PATH);
    assert_eq!(
        sha.content,
        format!("{AGENT_SHA256}  /usr/local/bin/sam-vm-agent.download\n")
    );
}

/// The VM agent reads the configuration the boot writes: the node's role selects
/// its runtime, and its agent user is named (resolving it needs the node's user
/// database, which has `sam` only on a node).
#[test]
fn the_vm_agent_reads_the_role_and_user_the_boot_writes() {
    for (boot, role) in [
        (full_boot(), NodeRole::Docker),
        (host_boot(), NodeRole::Host),
    ] {
        let rendered = Rendered::parse(boot.render().unwrap().expose());
        let text = &rendered.file(sam_cloudinit::AGENT_CONFIG_PATH).content;
        let config = sam_agent::NodeConfig::parse(text).unwrap();
        assert_eq!(config.role(), role);
        assert_eq!(
            config.agent_user.as_deref(),
            Some(sam_cloudinit::AGENT_USER)
        );
        assert_eq!(
            config.callback_token_file.as_deref(),
            Some(std::path::Path::new(CALLBACK_TOKEN_PATH))
        );
    }
}
