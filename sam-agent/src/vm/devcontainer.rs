//! Devcontainer discovery: finding a repository's `devcontainer.json` files in the
//! specification's order and reading the part of them a workspace needs.
//!
//! The [specification](https://containers.dev/implementors/spec/) looks in three
//! places, in order of precedence: `.devcontainer/devcontainer.json`,
//! `.devcontainer.json`, and `.devcontainer/<folder>/devcontainer.json` (one level
//! deep). The first two are the *default* configuration ([`DevcontainerConfig::name`]
//! is `None`); the third kind is named after its folder.
//!
//! Which file a workspace uses agrees with the reference implementation,
//! `@devcontainers/cli` (`devcontainer read-configuration` without and with
//! `--config`), checked by a differential test over many repository layouts:
//!
//! - Without a request, the default configuration is used, and a named one never is:
//!   a repository whose only configurations are named has no default one.
//! - A file that exists is the one used, even when it is broken: a broken
//!   `.devcontainer/devcontainer.json` fails, and does not fall back to
//!   `.devcontainer.json`.
//! - Only the chosen file is read, so a broken configuration that is not used fails
//!   nothing ([`select`], [`locate`]); [`discover`] reads them all.
//! - A UTF-8 byte-order mark is skipped, and bytes that are not UTF-8 are read as
//!   U+FFFD.
//!
//! Files are JSON with comments: `//` and `/* */` comments and trailing commas are
//! accepted; everything else JSON5 would allow (single quotes, unquoted keys, hex
//! numbers, missing commas) is an error, which names the file, line and column.
//!
//! Deliberately, this module is stricter than the reference in these ways, each of
//! which the differential test lists with its reason:
//!
//! - Malformed JSON is an error here. The reference recovers what it can and goes on
//!   (`{"image": 'debian'}` reads as `{}` there), which builds a container other than
//!   the one the file describes. A byte-order mark anywhere but at the start, and a
//!   file in UTF-16, are malformed JSON here too.
//! - A property given twice is an error here; the reference takes the last one.
//! - A file that names no image, Dockerfile or Compose file (`{}` too) is an error
//!   here; the reference reads it and only `devcontainer up` fails.
//! - A property this module reads must have the specification's type (`"image": 42`
//!   is an error), and nesting deeper than 512 levels is an error.
//!
//! ```
//! use sam_agent::vm::devcontainer::{self, DevcontainerKind};
//!
//! let repo = tempfile::tempdir()?;
//! std::fs::create_dir_all(repo.path().join(".devcontainer/gpu"))?;
//! std::fs::write(
//!     repo.path().join(".devcontainer/devcontainer.json"),
//!     r#"{ "image": "mcr.microsoft.com/devcontainers/rust:1", // a comment
//!          "postCreateCommand": ["cargo", "fetch"], }"#,
//! )?;
//! std::fs::write(
//!     repo.path().join(".devcontainer/gpu/devcontainer.json"),
//!     r#"{ "build": { "dockerfile": "Dockerfile" } }"#,
//! )?;
//!
//! let found = devcontainer::discover(repo.path())?;
//! assert_eq!(found.len(), 2);
//! assert_eq!(found[0].kind, DevcontainerKind::Image);
//! assert_eq!(found[1].name.as_deref(), Some("gpu"));
//!
//! // No request: the default configuration wins. A name that does not exist is an error.
//! let chosen = devcontainer::select(repo.path(), None)?.unwrap();
//! assert_eq!(chosen.name, None);
//! assert!(devcontainer::select(repo.path(), Some("cuda")).is_err());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Why discovery or selection failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DevcontainerError {
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A file is not valid JSON with comments, or a field has the wrong type.
    #[error("{}:{line}:{column}: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line of the error.
        line: usize,
        /// 1-based column of the error.
        column: usize,
        /// What is wrong there.
        message: String,
    },
    /// A file parses but says neither `image`, `build.dockerfile`, `dockerFile` nor
    /// `dockerComposeFile`.
    #[error("{}: {message}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is missing.
        message: String,
    },
    /// A configuration was requested by name and the repository has none by that name.
    #[error(
        "devcontainer configuration {requested:?} not found; the repository has {}",
        available_list(available)
    )]
    NotFound {
        /// The requested name.
        requested: String,
        /// The names that exist (`default` for the default configuration).
        available: Vec<String>,
    },
}

fn available_list(available: &[String]) -> String {
    if available.is_empty() {
        "no devcontainer configuration".to_owned()
    } else {
        available.join(", ")
    }
}

/// How a configuration builds its container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DevcontainerKind {
    /// A ready image (`image`).
    Image,
    /// A Dockerfile (`build.dockerfile`, or the legacy top-level `dockerFile`).
    Dockerfile,
    /// Docker Compose (`dockerComposeFile` and `service`).
    Compose,
}

/// A lifecycle command (`postCreateCommand` and friends), in any of its three forms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum LifecycleCommand {
    /// A shell command line.
    Shell(String),
    /// A program and its arguments, run without a shell.
    Exec(Vec<String>),
    /// Named commands run in parallel.
    Parallel(BTreeMap<String, LifecycleCommand>),
}

/// The lifecycle commands of a configuration, in the order they run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LifecycleCommands {
    /// `initializeCommand`: on the host, before the container is created.
    pub initialize: Option<LifecycleCommand>,
    /// `onCreateCommand`.
    pub on_create: Option<LifecycleCommand>,
    /// `updateContentCommand`.
    pub update_content: Option<LifecycleCommand>,
    /// `postCreateCommand`.
    pub post_create: Option<LifecycleCommand>,
    /// `postStartCommand`.
    pub post_start: Option<LifecycleCommand>,
    /// `postAttachCommand`.
    pub post_attach: Option<LifecycleCommand>,
}

/// The `build` section.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildConfig {
    /// The Dockerfile, relative to the `devcontainer.json`.
    pub dockerfile: Option<String>,
    /// The build context, relative to the `devcontainer.json`.
    pub context: Option<String>,
    /// Build arguments.
    pub args: BTreeMap<String, String>,
    /// The build target stage.
    pub target: Option<String>,
}

/// A forwarded port: a number, or `host:port` as a string.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ForwardPort {
    /// A port number.
    Number(u16),
    /// `host:port`.
    HostPort(String),
}

/// One `devcontainer.json`, and the subset of it a workspace runtime uses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DevcontainerConfig {
    /// `None` for the default configuration; the folder name for
    /// `.devcontainer/<folder>/devcontainer.json`.
    pub name: Option<String>,
    /// The file.
    pub path: PathBuf,
    /// How the container is built.
    pub kind: DevcontainerKind,
    /// The `name` the file gives itself, for display.
    pub display_name: Option<String>,
    /// `image`.
    pub image: Option<String>,
    /// `build` (for the legacy top-level `dockerFile`, its value as `build.dockerfile`).
    pub build: Option<BuildConfig>,
    /// `dockerComposeFile`, always as a list.
    pub compose_files: Vec<String>,
    /// `service`, for Docker Compose.
    pub service: Option<String>,
    /// `workspaceFolder`.
    pub workspace_folder: Option<String>,
    /// The lifecycle commands.
    pub lifecycle: LifecycleCommands,
    /// `remoteUser`.
    pub remote_user: Option<String>,
    /// `containerUser`.
    pub container_user: Option<String>,
    /// `containerEnv`.
    pub container_env: BTreeMap<String, String>,
    /// `remoteEnv` (a `null` value unsets a variable).
    pub remote_env: BTreeMap<String, Option<String>>,
    /// `forwardPorts`.
    pub forward_ports: Vec<ForwardPort>,
}

/// The file as written; unknown properties are ignored.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawConfig {
    name: Option<String>,
    image: Option<String>,
    build: Option<RawBuild>,
    #[serde(rename = "dockerFile")]
    legacy_docker_file: Option<String>,
    /// Legacy top-level build context, beside `dockerFile`.
    context: Option<String>,
    docker_compose_file: Option<OneOrMany>,
    service: Option<String>,
    workspace_folder: Option<String>,
    initialize_command: Option<LifecycleCommand>,
    on_create_command: Option<LifecycleCommand>,
    update_content_command: Option<LifecycleCommand>,
    post_create_command: Option<LifecycleCommand>,
    post_start_command: Option<LifecycleCommand>,
    post_attach_command: Option<LifecycleCommand>,
    remote_user: Option<String>,
    container_user: Option<String>,
    #[serde(default)]
    container_env: BTreeMap<String, String>,
    #[serde(default)]
    remote_env: BTreeMap<String, Option<String>>,
    #[serde(default)]
    forward_ports: Vec<ForwardPort>,
}

#[derive(Debug, Deserialize)]
struct RawBuild {
    dockerfile: Option<String>,
    context: Option<String>,
    #[serde(default)]
    args: BTreeMap<String, String>,
    target: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// JSON with comments and trailing commas; strict JSON otherwise.
fn jsonc_options() -> jsonc_parser::ParseOptions {
    jsonc_parser::ParseOptions {
        allow_comments: true,
        allow_trailing_commas: true,
        allow_loose_object_property_names: false,
        allow_missing_commas: false,
        allow_single_quoted_strings: false,
        allow_hexadecimal_numbers: false,
        allow_unary_plus_numbers: false,
        allow_bare_decimal_point_numbers: false,
        allow_non_finite_numbers: false,
        allow_extended_string_escapes: false,
    }
}

/// Reads one `devcontainer.json`. Bytes that are not UTF-8 read as U+FFFD, as they
/// do for the reference implementation.
///
/// # Errors
/// [`DevcontainerError::Io`], [`DevcontainerError::Parse`] with the position, or
/// [`DevcontainerError::Invalid`] when it names no way to build a container.
pub fn parse(path: &Path, name: Option<String>) -> Result<DevcontainerConfig, DevcontainerError> {
    let bytes = std::fs::read(path).map_err(|source| DevcontainerError::Io {
        path: path.to_owned(),
        source,
    })?;
    parse_text(path, name, &String::from_utf8_lossy(&bytes))
}

/// Parses the text of one `devcontainer.json` that was read from `path` (which only
/// names it in the result and in errors); [`parse`] without the file system. A
/// leading byte-order mark is skipped.
///
/// # Errors
/// [`DevcontainerError::Parse`] with the position, or [`DevcontainerError::Invalid`]
/// when it names no way to build a container.
pub fn parse_text(
    path: &Path,
    name: Option<String>,
    text: &str,
) -> Result<DevcontainerConfig, DevcontainerError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let raw: RawConfig =
        jsonc_parser::parse_to_serde_value(text, &jsonc_options()).map_err(|e| {
            DevcontainerError::Parse {
                path: path.to_owned(),
                line: e.line_display(),
                column: e.column_display(),
                message: not_an_object(text).unwrap_or_else(|| e.kind().to_string()),
            }
        })?;
    let build = match (raw.build, raw.legacy_docker_file) {
        (Some(b), _) => Some(BuildConfig {
            dockerfile: b.dockerfile,
            context: b.context,
            args: b.args,
            target: b.target,
        }),
        (None, Some(dockerfile)) => Some(BuildConfig {
            dockerfile: Some(dockerfile),
            context: raw.context,
            ..BuildConfig::default()
        }),
        (None, None) => None,
    };
    let compose_files = match raw.docker_compose_file {
        Some(OneOrMany::One(file)) => vec![file],
        Some(OneOrMany::Many(files)) => files,
        None => Vec::new(),
    };
    let kind = if !compose_files.is_empty() {
        DevcontainerKind::Compose
    } else if build.as_ref().is_some_and(|b| b.dockerfile.is_some()) {
        DevcontainerKind::Dockerfile
    } else if raw.image.is_some() {
        DevcontainerKind::Image
    } else {
        return Err(DevcontainerError::Invalid {
            path: path.to_owned(),
            message: "it names neither image, build.dockerfile, dockerFile nor dockerComposeFile"
                .to_owned(),
        });
    };
    Ok(DevcontainerConfig {
        name,
        path: path.to_owned(),
        kind,
        display_name: raw.name,
        image: raw.image,
        build,
        compose_files,
        service: raw.service,
        workspace_folder: raw.workspace_folder,
        lifecycle: LifecycleCommands {
            initialize: raw.initialize_command,
            on_create: raw.on_create_command,
            update_content: raw.update_content_command,
            post_create: raw.post_create_command,
            post_start: raw.post_start_command,
            post_attach: raw.post_attach_command,
        },
        remote_user: raw.remote_user,
        container_user: raw.container_user,
        container_env: raw.container_env,
        remote_env: raw.remote_env,
        forward_ports: raw.forward_ports,
    })
}

/// A configuration file in a repository, found but not read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigLocation {
    /// `None` for the default configuration; the folder name for
    /// `.devcontainer/<folder>/devcontainer.json`.
    pub name: Option<String>,
    /// The file.
    pub path: PathBuf,
}

/// Why a file that is valid JSON with comments is no configuration, when its value
/// is not an object: serde's words for it ("invalid length 0, expected struct") say
/// little. Only called on the error path.
fn not_an_object(text: &str) -> Option<String> {
    use jsonc_parser::JsonValue;
    let what = match jsonc_parser::parse_to_value(text, &jsonc_options()).ok()? {
        None => "nothing",
        Some(JsonValue::Object(_)) => return None,
        Some(JsonValue::Array(_)) => "an array",
        Some(JsonValue::String(_)) => "a string",
        Some(JsonValue::Number(_)) => "a number",
        Some(JsonValue::Boolean(_)) => "a boolean",
        Some(JsonValue::Null) => "null",
    };
    Some(format!(
        "a devcontainer.json must hold a JSON object; this one holds {what}"
    ))
}

/// Every configuration file in `repo_root`, in the specification's order, without
/// reading any: the default (`.devcontainer/devcontainer.json`, then
/// `.devcontainer.json`), then the named ones (`.devcontainer/<folder>/devcontainer.json`)
/// sorted by folder name. A folder whose name is not UTF-8 is skipped.
///
/// # Errors
/// [`DevcontainerError::Io`] when `.devcontainer` cannot be listed.
pub fn list(repo_root: &Path) -> Result<Vec<ConfigLocation>, DevcontainerError> {
    let mut found = Vec::new();
    for default in [".devcontainer/devcontainer.json", ".devcontainer.json"] {
        let path = repo_root.join(default);
        if path.is_file() {
            found.push(ConfigLocation { name: None, path });
        }
    }
    let folder = repo_root.join(".devcontainer");
    if folder.is_dir() {
        let io_error = |source| DevcontainerError::Io {
            path: folder.clone(),
            source,
        };
        let mut named = Vec::new();
        for entry in std::fs::read_dir(&folder).map_err(io_error)? {
            let entry = entry.map_err(io_error)?;
            let path = entry.path().join("devcontainer.json");
            if let Some(name) = entry.file_name().to_str()
                && path.is_file()
            {
                named.push(ConfigLocation {
                    name: Some(name.to_owned()),
                    path,
                });
            }
        }
        named.sort_by(|a, b| a.name.cmp(&b.name));
        found.extend(named);
    }
    Ok(found)
}

/// Every configuration in `repo_root`, read, in the order of [`list`].
///
/// # Errors
/// As [`list`], and the first file that cannot be read or parsed, naming it and the
/// position.
pub fn discover(repo_root: &Path) -> Result<Vec<DevcontainerConfig>, DevcontainerError> {
    list(repo_root)?
        .into_iter()
        .map(|location| parse(&location.path, location.name))
        .collect()
}

/// The configuration file a workspace uses, without reading it.
///
/// - `requested` names a configuration: that one, or [`DevcontainerError::NotFound`]
///   (never a fallback). The name `default` is not special: a folder may be called so.
/// - No request: the default configuration (`.devcontainer/devcontainer.json` before
///   `.devcontainer.json`), never a named one.
/// - `Ok(None)`: the repository has no default configuration and none was requested,
///   so the workspace uses the lightweight profile.
///
/// # Errors
/// As [`list`], and [`DevcontainerError::NotFound`].
pub fn locate(
    repo_root: &Path,
    requested: Option<&str>,
) -> Result<Option<ConfigLocation>, DevcontainerError> {
    let mut found = list(repo_root)?;
    let Some(requested) = requested else {
        return Ok(found.into_iter().find(|c| c.name.is_none()));
    };
    match found
        .iter()
        .position(|c| c.name.as_deref() == Some(requested))
    {
        Some(index) => Ok(Some(found.swap_remove(index))),
        None => Err(DevcontainerError::NotFound {
            requested: requested.to_owned(),
            available: found
                .into_iter()
                .map(|c| c.name.unwrap_or_else(|| "default".to_owned()))
                .collect(),
        }),
    }
}

/// The configuration a workspace uses ([`locate`]), read. Only that file is read, so
/// a broken configuration elsewhere in the repository does not matter.
///
/// # Errors
/// As [`locate`], and the chosen file's [`parse`] errors.
pub fn select(
    repo_root: &Path,
    requested: Option<&str>,
) -> Result<Option<DevcontainerConfig>, DevcontainerError> {
    locate(repo_root, requested)?
        .map(|location| parse(&location.path, location.name))
        .transpose()
}

#[cfg(test)]
mod tests;
