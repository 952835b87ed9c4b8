//! A typed subset of cloud-config and its renderer.
//!
//! The model covers what node boot needs: users, files, commands and the package
//! switches. Commands are argument vectors, never shell lines: cloud-init quotes
//! each element before it reaches a shell, so a value in a command stays one
//! argument whatever it contains.
//!
//! Rendering goes through serde-saphyr with its YAML 1.1 quoting heuristics on,
//! because cloud-init reads YAML 1.1: `yes`, `on`, `0600` and `12:30` are emitted
//! quoted and stay strings.

use std::fmt;

use sam_core::Secret;
use serde::{Serialize, Serializer};

use crate::error::{Error, Result};

/// The first line of every rendered document; cloud-init reads nothing else as cloud-config.
pub const CLOUD_CONFIG_HEADER: &str = "#cloud-config";

/// The largest user-data accepted, in bytes: Hetzner Cloud's cap, the smallest of the providers.
pub const MAX_USER_DATA_BYTES: usize = 32 * 1024;

/// A cloud-config document.
///
/// Empty lists are left out of the output. `package_update` and `package_upgrade`
/// are always written, so a reader sees that boot does not upgrade the image.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CloudConfig {
    /// The host name to set, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Whether cloud-init runs `apt-get update` before the `runcmd` phases.
    pub package_update: bool,
    /// Whether cloud-init upgrades every package at boot.
    pub package_upgrade: bool,
    /// Users to create.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<User>,
    /// Files written before any command runs (or just before `runcmd`, if deferred).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub write_files: Vec<WriteFile>,
    /// Commands run early on every boot.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub bootcmd: Vec<Command>,
    /// Commands run once, on the first boot, after everything else cloud-init does.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub runcmd: Vec<Command>,
}

impl CloudConfig {
    /// Renders the document as user-data: [`CLOUD_CONFIG_HEADER`], then YAML.
    ///
    /// # Errors
    /// [`Error::Serialize`] if the serializer fails, and [`Error::TooLarge`] if the
    /// result exceeds [`MAX_USER_DATA_BYTES`].
    pub fn render(&self) -> Result<UserData> {
        // Long single-line strings stay on one line: folding them would only make
        // the output harder to read and to compare.
        let options = serde_saphyr::ser_options! { folded_wrap_chars: usize::MAX };
        let body = serde_saphyr::to_string_with_options(self, options).map_err(Error::Serialize)?;
        let text = format!("{CLOUD_CONFIG_HEADER}\n{body}");
        if text.len() > MAX_USER_DATA_BYTES {
            return Err(Error::TooLarge {
                size: text.len(),
                limit: MAX_USER_DATA_BYTES,
            });
        }
        Ok(UserData(text))
    }
}

/// An entry of `users`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum User {
    /// The image's default user, kept as the image configures it (`- default`).
    Default,
    /// A user account to create.
    Account(Account),
}

impl Serialize for User {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Default => serializer.serialize_str("default"),
            Self::Account(account) => account.serialize(serializer),
        }
    }
}

/// A user account created by cloud-init.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Account {
    /// The login name.
    pub name: String,
    /// A description (the GECOS field).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gecos: Option<String>,
    /// The login shell.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shell: Option<String>,
    /// Whether password login is locked.
    pub lock_passwd: bool,
}

/// An entry of `write_files`.
#[derive(Debug, Clone, Serialize)]
pub struct WriteFile {
    /// Absolute path of the file.
    pub path: String,
    /// What the file contains.
    pub content: FileContent,
    /// `user:group` owning the file.
    pub owner: String,
    /// Octal mode, as a string (`"0644"`); cloud-init's schema wants a string.
    pub permissions: String,
    /// Write the file in the final stage, just before `runcmd`, instead of the init stage.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub defer: bool,
}

/// The content of a [`WriteFile`].
///
/// A [`FileContent::Secret`] is written to the user-data but printed as `***` by
/// `Debug`, like [`Secret`] itself.
#[derive(Debug, Clone)]
pub enum FileContent {
    /// Ordinary text.
    Text(String),
    /// A secret, such as the node's callback token.
    Secret(Secret),
}

impl Serialize for FileContent {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Text(text) => serializer.serialize_str(text),
            Self::Secret(secret) => serializer.serialize_str(secret.expose()),
        }
    }
}

/// A command of `bootcmd` or `runcmd`, as an argument vector.
///
/// cloud-init single-quotes every element before handing the line to a shell, so
/// an element is always exactly one argument, whatever characters it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Command(Vec<String>);

impl Command {
    /// A command from its program and arguments.
    pub fn new<I, S>(argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self(argv.into_iter().map(Into::into).collect())
    }

    /// The program and its arguments.
    pub fn argv(&self) -> &[String] {
        &self.0
    }
}

/// Rendered user-data: the text a provider receives.
///
/// It holds the node's callback token, so `Debug` prints only its length; read
/// the text with [`UserData::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct UserData(String);

impl UserData {
    /// The user-data text, token included.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The user-data text as an owned string, token included.
    pub fn into_string(self) -> String {
        self.0
    }

    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the text is empty; never true for rendered output.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for UserData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UserData({} bytes)", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(content: FileContent) -> WriteFile {
        WriteFile {
            path: "/etc/example".into(),
            content,
            owner: "root:root".into(),
            permissions: "0600".into(),
            defer: false,
        }
    }

    #[test]
    fn render_starts_with_the_header_and_quotes_octal_modes() {
        let config = CloudConfig {
            write_files: vec![file(FileContent::Text("x".into()))],
            ..CloudConfig::default()
        };
        let text = config.render().unwrap().into_string();
        assert!(text.starts_with("#cloud-config\n"), "{text}");
        assert!(text.contains("permissions: \"0600\""), "{text}");
    }

    #[test]
    fn oversized_output_is_rejected_with_its_size() {
        let config = CloudConfig {
            write_files: vec![file(FileContent::Text("x".repeat(MAX_USER_DATA_BYTES)))],
            ..CloudConfig::default()
        };
        match config.render() {
            Err(Error::TooLarge { size, limit }) => {
                assert!(size > limit);
                assert_eq!(limit, MAX_USER_DATA_BYTES);
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
    }

    #[test]
    fn secrets_are_rendered_but_never_debug_printed() {
        let config = CloudConfig {
            write_files: vec![file(FileContent::Secret(Secret::new("tok-123456789")))],
            ..CloudConfig::default()
        };
        assert!(!format!("{config:?}").contains("tok-123456789"));
        let rendered = config.render().unwrap();
        assert!(rendered.expose().contains("tok-123456789"));
        assert!(!format!("{rendered:?}").contains("tok-123456789"));
    }
}
