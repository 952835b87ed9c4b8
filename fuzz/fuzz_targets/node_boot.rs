//! Any `NodeBoot` input is validated and rendered without a panic; what renders is
//! YAML that reads back, and the callback token is only ever written as file data.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use sam_cloudinit::{NodeBoot, NodeRole};
use sam_core::{ProviderKind, Secret};

#[derive(Debug, Arbitrary)]
struct Input {
    node_id: String,
    hostname: Option<String>,
    control_plane_url: String,
    token: String,
    agent_download_url: Option<String>,
    agent_sha256: String,
    agents: Vec<String>,
    agent_port: u16,
    swap_mb: u32,
    swappiness: u32,
    system_max_use: String,
    max_retention: String,
    provider: u8,
    host_role: bool,
    extra_ca_pem: Option<String>,
}

fuzz_target!(|input: Input| {
    // The token may legitimately appear in runcmd as part of another value (a URL,
    // the node id); then the check below says nothing.
    let elsewhere = [
        Some(&input.node_id),
        input.hostname.as_ref(),
        Some(&input.control_plane_url),
        input.agent_download_url.as_ref(),
        Some(&input.agent_sha256),
        Some(&input.system_max_use),
        Some(&input.max_retention),
        input.extra_ca_pem.as_ref(),
    ]
    .into_iter()
    .flatten()
    .any(|value| value.contains(&input.token));
    let mut boot = NodeBoot::new(
        input.node_id,
        input.control_plane_url,
        Secret::new(input.token.clone()),
        input.agent_sha256,
    );
    boot.hostname = input.hostname;
    boot.agent_download_url = input.agent_download_url;
    boot.agents = input.agents;
    boot.agent_port = input.agent_port;
    boot.swap_mb = input.swap_mb;
    boot.swappiness = input.swappiness;
    boot.journald.system_max_use = input.system_max_use;
    boot.journald.max_retention = input.max_retention;
    boot.provider = match input.provider % 4 {
        0 => ProviderKind::Hetzner,
        1 => ProviderKind::Scaleway,
        2 => ProviderKind::Gcp,
        _ => ProviderKind::Local,
    };
    boot.role = if input.host_role {
        NodeRole::Host
    } else {
        NodeRole::Docker
    };
    boot.extra_ca_pem = input.extra_ca_pem;
    let Ok(user_data) = boot.render() else {
        return;
    };
    let text = user_data.expose();
    assert!(text.starts_with("#cloud-config"), "{text}");
    let parsed: serde_json::Value = serde_saphyr::from_str(text)
        .unwrap_or_else(|e| panic!("rendered user data is not YAML: {e}\n{text}"));
    let commands = serde_json::to_string(&parsed["runcmd"]).expect("JSON");
    assert!(
        elsewhere || !commands.contains(&input.token),
        "the token reached a command line: {commands}"
    );
});
