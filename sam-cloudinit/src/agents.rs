//! What a node installs so coding agents can run on it: Node.js, the ACP adapters
//! of the enabled agents, and the devcontainer CLI.
//!
//! [`AGENT_ADAPTERS`] is the one table of pinned adapter versions; a node installs
//! only the adapters its [`crate::NodeBoot::agents`] names.

/// One agent's ACP adapter, as an npm package installed globally on the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AgentAdapter {
    /// The agent's name, as tasks and [`crate::NodeBoot::agents`] spell it.
    pub agent: &'static str,
    /// The npm package and its pinned version (`name@version`).
    pub package: &'static str,
}

/// Every agent a node can install, with its pinned ACP adapter.
pub const AGENT_ADAPTERS: [AgentAdapter; 4] = [
    AgentAdapter {
        agent: "claude",
        package: "@zed-industries/claude-agent-acp@0.23.1",
    },
    AgentAdapter {
        agent: "codex",
        package: "@zed-industries/codex-acp@0.16.0",
    },
    AgentAdapter {
        agent: "gemini",
        package: "@google/gemini-cli@0.61.0",
    },
    AgentAdapter {
        agent: "opencode",
        package: "opencode-ai@1.18.33",
    },
];

/// The devcontainer CLI, installed on `docker` nodes, pinned.
pub const DEVCONTAINER_CLI_PACKAGE: &str = "@devcontainers/cli@0.89.0";

/// The Debian packages that provide Node.js and npm.
pub(crate) const NODE_PACKAGES: [&str; 2] = ["nodejs", "npm"];

/// The adapter of `agent`, if it is in [`AGENT_ADAPTERS`].
pub fn agent_adapter(agent: &str) -> Option<&'static AgentAdapter> {
    AGENT_ADAPTERS.iter().find(|a| a.agent == agent)
}

/// The names of every known agent, comma-separated, for error messages.
pub(crate) fn known_agents() -> String {
    AGENT_ADAPTERS
        .iter()
        .map(|a| a.agent)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_package_is_pinned_to_an_exact_version() {
        let packages = AGENT_ADAPTERS
            .iter()
            .map(|a| a.package)
            .chain([DEVCONTAINER_CLI_PACKAGE]);
        for package in packages {
            let (name, version) = package.rsplit_once('@').expect("name@version");
            assert!(!name.is_empty() && !name.ends_with('/'), "{package}");
            let parts: Vec<&str> = version.split('.').collect();
            assert_eq!(parts.len(), 3, "{package}");
            assert!(
                parts
                    .iter()
                    .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit())),
                "{package}"
            );
        }
    }

    #[test]
    fn lookup_by_agent_name() {
        assert_eq!(
            agent_adapter("codex").map(|a| a.package),
            Some("@zed-industries/codex-acp@0.16.0")
        );
        assert_eq!(agent_adapter("aider"), None);
        assert_eq!(known_agents(), "claude, codex, gemini, opencode");
    }
}
