//! Boot phases and the cloud-config they become.
//!
//! Every file a phase needs, including the helper scripts, is written through
//! `write_files`; `runcmd` holds only argument vectors. A value from the input
//! reaches a command only as one argument of such a vector (the swap size, the
//! agent URL), and everything else travels as file content.
//!
//! cloud-init runs `runcmd` as a plain `#!/bin/sh` script, where a failing command
//! does not stop the next one. So `runcmd` opens with `set -e`, and each phase's
//! command runs through [`PHASE_SCRIPT`], which logs `PHASE FAILED: <name> (exit
//! <status>)`, reports the failed boot to the control plane ([`BOOT_FAILED_EVENT`])
//! and passes the status on, which stops the boot.
//!
//! A background phase ([`Phase::ImagePull`]) starts its command through
//! [`BACKGROUND_SCRIPT`] and lets the next phases run meanwhile; the command logs
//! its own `PHASE END`, and the boot waits for it, through the phase script under
//! the phase's name, right before the agent starts.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use sam_core::{NodeRole, ProviderKind};
use serde::Serialize;

use crate::agents::{DEVCONTAINER_CLI_PACKAGE, NODE_PACKAGES};
use crate::boot::Checked;
use crate::config::{Account, CloudConfig, Command, FileContent, User, WriteFile};

/// Tag of every boot log line (`journalctl -t sam-boot`).
pub const BOOT_LOG_TAG: &str = "sam-boot";
/// The message logged after the last phase ended.
pub const ALL_PHASES_COMPLETE: &str = "ALL PHASES COMPLETE";
/// Where the agent binary is installed.
pub const AGENT_BINARY_PATH: &str = "/usr/local/bin/sam-vm-agent";
/// The agent's configuration (JSON: `node_id`, `control_plane_url`,
/// `callback_token_file`, `port`, `provider`, `role`, `agent_user`,
/// `lightweight_image`).
pub const AGENT_CONFIG_PATH: &str = "/etc/sam/agent.json";
/// The node-scoped callback token: mode 0600, owned by root.
pub const CALLBACK_TOKEN_PATH: &str = "/etc/sam/callback-token";
/// The agent's systemd unit.
pub const AGENT_UNIT: &str = "sam-vm-agent.service";
/// The unprivileged user that coding agents run as (some refuse to run as root).
pub const AGENT_USER: &str = "sam";

/// The script each phase command runs through: `phase.sh <phase> <program> [<arg>…]`.
pub const PHASE_SCRIPT: &str = "/usr/local/lib/sam-boot/phase.sh";
/// The message that opens the log line of a failed phase:
/// `PHASE FAILED: <name> (exit <status>)`.
pub const PHASE_FAILED: &str = "PHASE FAILED";
/// The `event` of the JSON a node whose boot failed posts to [`BOOT_FAILED_PATH`]:
/// `{"event": "boot_failed", "phase": <name>, "exit_status": <status>, "journal":
/// [<entry>…]}`, with the node's callback token as bearer token. The entries are the
/// boot markers as `journalctl -t sam-boot -o json` prints them (one object each,
/// empty on a node without a journal), the input of the VM agent's boot-timeline
/// parser.
pub const BOOT_FAILED_EVENT: &str = "boot_failed";
/// Where the failed-boot report goes, relative to the control plane's base URL;
/// `{id}` is the node's id.
pub const BOOT_FAILED_PATH: &str = "/v1/nodes/{id}/boot-failed";
/// The agent binary's pinned SHA-256, in `sha256sum --check` format.
pub const AGENT_SHA256_PATH: &str = "/etc/sam/sam-vm-agent.sha256";

const SCRIPT_DIR: &str = "/usr/local/lib/sam-boot";
const REPORT_FAILURE_SCRIPT: &str = "/usr/local/lib/sam-boot/report-boot-failure.sh";
const BOOT_FAILED_URL_PATH: &str = "/etc/sam/boot-failed-url";
const METADATA_ENDPOINTS_PATH: &str = "/etc/sam/metadata-endpoints";
const SWAP_SCRIPT: &str = "/usr/local/lib/sam-boot/swap.sh";
const METADATA_BLOCK_SCRIPT: &str = "/usr/local/lib/sam-boot/metadata-block.sh";
const INSTALL_AGENT_SCRIPT: &str = "/usr/local/lib/sam-boot/install-agent.sh";
/// The script that installs missing packages: `install-packages.sh <package>…`.
pub const INSTALL_PACKAGES_SCRIPT: &str = "/usr/local/lib/sam-boot/install-packages.sh";
/// The script that runs a background phase: `background.sh start|wait <phase> …`.
pub const BACKGROUND_SCRIPT: &str = "/usr/local/lib/sam-boot/background.sh";
/// The longest a background image pull may take before it fails its phase.
const IMAGE_PULL_TIMEOUT_SECS: u32 = 900;
const METADATA_BLOCK_UNIT: &str = "sam-metadata-block.service";
const AGENT_DOWNLOAD_PATH: &str = "/usr/local/bin/sam-vm-agent.download";
const SYSTEMD_UNIT_DIR: &str = "/etc/systemd/system";

/// Packages every node needs (the `packages` phase installs those missing);
/// Docker nodes add `docker.io`.
pub const BASE_PACKAGES: [&str; 4] = ["ca-certificates", "curl", "git", "iptables"];

/// A boot phase. [`Phase::ALL`] is the order boot runs them in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Phase {
    /// Stop apt's timers, so no background upgrade holds the dpkg lock or restarts services.
    AptTimers,
    /// Create the swap file and set swappiness; left out when swap is 0.
    Swap,
    /// Install what the agent needs.
    Packages,
    /// (Re)start Docker with its configuration; Docker nodes only. The last point
    /// where Docker restarts: every later apt install runs with needrestart
    /// suspended, so nothing restarts it under the image pull or a workload.
    Docker,
    /// Pull the lightweight workspace image; Docker nodes only. It runs in the
    /// background beside the Node.js and adapter installs, and the boot waits for it
    /// just before the agent starts.
    ImagePull,
    /// Install Node.js and npm (Debian's packages); left out when the node needs
    /// neither an agent adapter nor the devcontainer CLI.
    Node,
    /// Install the enabled agents' ACP adapters, and on Docker nodes the
    /// devcontainer CLI, globally with npm; left out like [`Phase::Node`].
    Agents,
    /// Apply the journald limits.
    Journald,
    /// Keep workspaces away from the metadata endpoint.
    MetadataBlock,
    /// Add the extra CA certificate to the trusted ones; left out without one.
    Tls,
    /// Download, check and install the agent.
    AgentDownload,
    /// Start the agent: always the last phase.
    AgentStart,
}

impl Phase {
    /// Every phase, in boot order.
    pub const ALL: [Self; 12] = [
        Self::AptTimers,
        Self::Swap,
        Self::Packages,
        Self::Docker,
        Self::ImagePull,
        Self::Node,
        Self::Agents,
        Self::Journald,
        Self::MetadataBlock,
        Self::Tls,
        Self::AgentDownload,
        Self::AgentStart,
    ];

    /// The name in the boot log (`PHASE START: <name>`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AptTimers => "apt-timers",
            Self::Swap => "swap",
            Self::Packages => "packages",
            Self::ImagePull => "image-pull",
            Self::Node => "node",
            Self::Agents => "agents",
            Self::Journald => "journald",
            Self::Docker => "docker",
            Self::MetadataBlock => "metadata-block",
            Self::Tls => "tls",
            Self::AgentDownload => "agent-download",
            Self::AgentStart => "agent-start",
        }
    }

    /// Whether the phase runs in the background: started in its place, waited for
    /// before the agent starts.
    pub fn is_background(self) -> bool {
        self == Self::ImagePull
    }

    /// The phase's commands for this node, or `None` when the node skips it.
    fn commands(self, boot: &Checked<'_>) -> Option<Vec<Command>> {
        let docker = boot.role == NodeRole::Docker;
        let commands = match self {
            Self::AptTimers => vec![Command::new([
                "systemctl",
                "disable",
                "--now",
                "apt-daily.timer",
                "apt-daily-upgrade.timer",
            ])],
            Self::Swap if boot.swap_mb == 0 => return None,
            Self::Swap => vec![Command::new([
                SWAP_SCRIPT.to_owned(),
                boot.swap_mb.to_string(),
            ])],
            Self::Packages => {
                let packages = BASE_PACKAGES.iter().chain(docker.then_some(&"docker.io"));
                vec![apt_install(packages.copied())]
            }
            Self::ImagePull if !docker => return None,
            Self::ImagePull => {
                let timeout = IMAGE_PULL_TIMEOUT_SECS.to_string();
                let pull = ["timeout", &timeout, "docker", "pull", "--quiet"];
                let start = [BACKGROUND_SCRIPT, "start", self.as_str()];
                let image = boot.lightweight_image;
                vec![Command::new(start.into_iter().chain(pull).chain([image]))]
            }
            Self::Node | Self::Agents if !needs_node(boot) => return None,
            Self::Node => vec![apt_install(NODE_PACKAGES)],
            Self::Agents => {
                let adapters = boot.agents.iter().map(|a| a.package);
                let cli = docker.then_some(DEVCONTAINER_CLI_PACKAGE);
                // Not `--engine-strict`: the providers' default images (Ubuntu 24.04,
                // Debian 12) ship Node.js 18, while gemini-cli 0.61.0 and the
                // devcontainer CLI 0.89.0 ask for 20; strict, every default Docker
                // node would fail its boot. npm installs them with a warning in the
                // boot log instead; an image with Node.js 20 (Debian 13) avoids it.
                let install = [
                    "npm",
                    "install",
                    "--global",
                    "--no-fund",
                    "--no-audit",
                    "--loglevel=error",
                ];
                vec![Command::new(install.into_iter().chain(adapters).chain(cli))]
            }
            Self::Journald => vec![Command::new(["systemctl", "restart", "systemd-journald"])],
            Self::Docker if !docker => return None,
            Self::Docker => vec![
                Command::new(["systemctl", "enable", "docker.service"]),
                Command::new(["systemctl", "restart", "docker.service"]),
            ],
            Self::MetadataBlock => enable_now(METADATA_BLOCK_UNIT),
            // Installing ca-certificates already built the store: only an extra CA
            // needs a refresh (under emulation the refresh alone took 18-20 s).
            Self::Tls if boot.extra_ca_pem.is_none() => return None,
            Self::Tls => vec![Command::new(["update-ca-certificates"])],
            Self::AgentDownload => vec![Command::new([
                INSTALL_AGENT_SCRIPT,
                boot.agent_download_url.as_str(),
            ])],
            Self::AgentStart => enable_now(AGENT_UNIT),
        };
        Some(commands)
    }
}

/// Whether the node installs Node.js: it runs an agent adapter or the devcontainer CLI.
fn needs_node(boot: &Checked<'_>) -> bool {
    !boot.agents.is_empty() || boot.role == NodeRole::Docker
}

/// Installs those of `packages` that are missing ([`INSTALL_PACKAGES_SCRIPT`]):
/// nothing on a pre-baked image; else `apt-get update` and `apt-get install` without
/// prompts, waiting for the dpkg lock, with needrestart (Ubuntu's images have it)
/// suspended, so an install restarts no service, Docker included.
fn apt_install<'a>(packages: impl IntoIterator<Item = &'a str>) -> Command {
    Command::new([INSTALL_PACKAGES_SCRIPT].into_iter().chain(packages))
}

/// `command`, run through the phase script as part of `phase`.
fn in_phase(phase: Phase, command: Command) -> Command {
    let wrapper = [PHASE_SCRIPT.to_owned(), phase.as_str().to_owned()];
    Command::new(wrapper.into_iter().chain(command.argv().iter().cloned()))
}

fn enable_now(unit: &str) -> Vec<Command> {
    vec![
        Command::new(["systemctl", "daemon-reload"]),
        Command::new(["systemctl", "enable", "--now", unit]),
    ]
}

fn log(message: &str) -> Command {
    Command::new(["logger", "-t", BOOT_LOG_TAG, message])
}

/// The link-local metadata endpoint of Hetzner Cloud, Google Compute Engine and most clouds.
const LINK_LOCAL_METADATA: IpAddr = IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254));

/// Every address where `provider` serves instance metadata (and so the node's
/// user-data, callback token included): what the metadata block rejects.
pub fn metadata_endpoints(provider: ProviderKind) -> &'static [IpAddr] {
    const SCALEWAY: [IpAddr; 2] = [
        IpAddr::V4(Ipv4Addr::new(169, 254, 42, 42)),
        IpAddr::V6(Ipv6Addr::new(0xfd00, 0x42, 0, 0, 0, 0, 0, 0x42)),
    ];
    match provider {
        ProviderKind::Scaleway => &SCALEWAY,
        // Local and fake nodes have no metadata service; the common address is
        // blocked anyway, so a node that meets one is covered.
        _ => &[LINK_LOCAL_METADATA],
    }
}

/// What the agent reads from [`AGENT_CONFIG_PATH`].
#[derive(Debug, Serialize)]
struct AgentConfig<'a> {
    node_id: &'a str,
    control_plane_url: &'a str,
    callback_token_file: &'a str,
    port: u16,
    provider: ProviderKind,
    role: NodeRole,
    agent_user: &'a str,
    lightweight_image: &'a str,
}

/// Builds the cloud-config of a validated input.
pub(crate) fn cloud_config(boot: &Checked<'_>) -> CloudConfig {
    // `set` stays the shell's builtin when quoted, as cloud-init quotes every
    // element: this is what makes a failed phase stop the boot.
    let mut runcmd = vec![Command::new(["set", "-e"])];
    let mut running = Vec::new();
    for phase in Phase::ALL {
        if phase == Phase::AgentStart {
            // Everything the agent needs is there before it starts.
            for background in running.drain(..) {
                runcmd.push(in_phase(
                    background,
                    Command::new([BACKGROUND_SCRIPT, "wait", background.as_str()]),
                ));
            }
        }
        if let Some(commands) = phase.commands(boot) {
            runcmd.push(log(&format!("PHASE START: {}", phase.as_str())));
            runcmd.extend(commands.into_iter().map(|command| in_phase(phase, command)));
            if phase.is_background() {
                running.push(phase);
            } else {
                runcmd.push(log(&format!("PHASE END: {}", phase.as_str())));
            }
        }
    }
    runcmd.push(log(ALL_PHASES_COMPLETE));

    CloudConfig {
        hostname: boot.hostname.clone(),
        package_update: false,
        package_upgrade: false,
        users: vec![
            User::Default,
            User::Account(Account {
                name: AGENT_USER.into(),
                gecos: Some("SAM coding agents".into()),
                shell: Some("/bin/bash".into()),
                lock_passwd: true,
            }),
        ],
        write_files: write_files(boot),
        bootcmd: Vec::new(),
        runcmd,
    }
}

fn write_files(boot: &Checked<'_>) -> Vec<WriteFile> {
    let agent_config = AgentConfig {
        node_id: boot.node_id.as_str(),
        control_plane_url: boot.control_plane_url.as_str(),
        callback_token_file: CALLBACK_TOKEN_PATH,
        port: boot.agent_port,
        provider: boot.provider,
        role: boot.role,
        agent_user: AGENT_USER,
        lightweight_image: boot.lightweight_image,
    };
    let agent_config = serde_json::to_string_pretty(&agent_config)
        .expect("strings, numbers and unit enums always serialize");
    let journald = format!(
        "[Journal]\nSystemMaxUse={}\nMaxRetentionSec={}\n",
        boot.journald.system_max_use, boot.journald.max_retention
    );

    let mut files = vec![
        secret_file(CALLBACK_TOKEN_PATH, boot),
        text(AGENT_CONFIG_PATH, format!("{agent_config}\n"), "0644"),
    ];
    let line = format!("{}  {AGENT_DOWNLOAD_PATH}\n", boot.agent_sha256);
    files.push(text(AGENT_SHA256_PATH, line, "0644"));
    files.push(text(
        BOOT_FAILED_URL_PATH,
        format!("{}\n", boot.boot_failed_url),
        "0644",
    ));
    let endpoints: String = metadata_endpoints(boot.provider)
        .iter()
        .map(|ip| match ip {
            IpAddr::V4(v4) => format!("ipv4 {v4}\n"),
            IpAddr::V6(v6) => format!("ipv6 {v6}\n"),
        })
        .collect();
    files.push(text(METADATA_ENDPOINTS_PATH, endpoints, "0644"));
    if boot.swap_mb > 0 {
        let sysctl = format!("vm.swappiness = {}\n", boot.swappiness);
        files.push(text("/etc/sysctl.d/60-sam-swap.conf", sysctl, "0644"));
        files.push(script(SWAP_SCRIPT, include_str!("files/swap.sh")));
    }
    files.push(text(
        "/etc/systemd/journald.conf.d/60-sam.conf",
        journald,
        "0644",
    ));
    if boot.role == NodeRole::Docker {
        let daemon = include_str!("files/daemon.json");
        files.push(text("/etc/docker/daemon.json", daemon.into(), "0644"));
    }
    if let Some(pem) = &boot.extra_ca_pem {
        let path = "/usr/local/share/ca-certificates/sam-extra-ca.crt";
        files.push(text(path, pem.clone(), "0644"));
    }
    files.extend([
        script(PHASE_SCRIPT, include_str!("files/phase.sh")),
        script(
            REPORT_FAILURE_SCRIPT,
            include_str!("files/report-boot-failure.sh"),
        ),
        script(
            METADATA_BLOCK_SCRIPT,
            include_str!("files/metadata-block.sh"),
        ),
        script(INSTALL_AGENT_SCRIPT, include_str!("files/install-agent.sh")),
        script(BACKGROUND_SCRIPT, include_str!("files/background.sh")),
        script(
            INSTALL_PACKAGES_SCRIPT,
            include_str!("files/install-packages.sh"),
        ),
        unit(
            METADATA_BLOCK_UNIT,
            include_str!("files/sam-metadata-block.service"),
        ),
        unit(AGENT_UNIT, include_str!("files/sam-vm-agent.service")),
    ]);
    files
}

fn text(path: &str, content: String, permissions: &str) -> WriteFile {
    WriteFile {
        path: path.into(),
        content: FileContent::Text(content),
        owner: "root:root".into(),
        permissions: permissions.into(),
        defer: false,
    }
}

fn secret_file(path: &str, boot: &Checked<'_>) -> WriteFile {
    WriteFile {
        content: FileContent::Secret(boot.callback_token.clone()),
        ..text(path, String::new(), "0600")
    }
}

fn script(path: &str, content: &str) -> WriteFile {
    debug_assert!(path.starts_with(SCRIPT_DIR));
    text(path, content.into(), "0755")
}

fn unit(name: &str, content: &str) -> WriteFile {
    text(
        &format!("{SYSTEMD_UNIT_DIR}/{name}"),
        content.into(),
        "0644",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The static files name the same paths as the constants the agent relies on.
    #[test]
    fn static_files_agree_with_the_path_constants() {
        let agent_unit = include_str!("files/sam-vm-agent.service");
        for path in [AGENT_BINARY_PATH, AGENT_CONFIG_PATH, CALLBACK_TOKEN_PATH] {
            assert!(agent_unit.contains(path), "{path} missing from the unit");
        }
        assert!(agent_unit.contains(METADATA_BLOCK_UNIT));
        for hard_dependency in ["Requires=", "Requisite=", "BindsTo=", "PartOf="] {
            assert!(!agent_unit.contains(hard_dependency), "{hard_dependency}");
        }
        assert!(!agent_unit.contains("Environment"));
        let metadata_unit = include_str!("files/sam-metadata-block.service");
        assert!(metadata_unit.contains(METADATA_BLOCK_SCRIPT));
        let install = include_str!("files/install-agent.sh");
        for path in [AGENT_BINARY_PATH, AGENT_SHA256_PATH, AGENT_DOWNLOAD_PATH] {
            assert!(install.contains(path), "{path} missing from the installer");
        }
        let block = include_str!("files/metadata-block.sh");
        assert!(block.contains(&format!("--uid-owner {AGENT_USER} ")));
        assert!(block.contains(METADATA_ENDPOINTS_PATH));
        let phase = include_str!("files/phase.sh");
        assert!(phase.contains(REPORT_FAILURE_SCRIPT));
        assert!(phase.contains(&format!("{PHASE_FAILED}: $phase (exit $status)")));
        assert!(phase.contains(&format!("-t {BOOT_LOG_TAG} ")));
        let report = include_str!("files/report-boot-failure.sh");
        for needle in [BOOT_FAILED_URL_PATH, CALLBACK_TOKEN_PATH, BOOT_FAILED_EVENT] {
            assert!(
                report.contains(needle),
                "{needle} missing from the reporter"
            );
        }
    }

    #[test]
    fn metadata_endpoints_per_provider() {
        let shown = |p| -> Vec<String> {
            metadata_endpoints(p)
                .iter()
                .map(ToString::to_string)
                .collect()
        };
        assert_eq!(
            shown(ProviderKind::Scaleway),
            ["169.254.42.42", "fd00:42::42"]
        );
        for provider in [
            ProviderKind::Hetzner,
            ProviderKind::Gcp,
            ProviderKind::Local,
        ] {
            assert_eq!(shown(provider), ["169.254.169.254"], "{provider:?}");
        }
    }
}
