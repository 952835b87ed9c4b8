//! A differential test of devcontainer discovery against the reference
//! implementation, `@devcontainers/cli`: for many repository layouts, the file
//! `sam_agent::vm::devcontainer::select` picks (or its error) is compared with what
//! `devcontainer read-configuration` picks (or its error), with `--config` for a
//! named configuration.
//!
//! Where the two differ on purpose, [`EXPECTED`] says why; any other difference
//! fails the test, and so does an expected one that went away.
//!
//! The CLI is looked up at `$SAM_DEVCONTAINER_CLI`, then at
//! `$CARGO_TARGET_DIR/devcontainer-cli/node_modules/.bin/devcontainer` (where
//! `.ci/run` installs it with npm). When it is absent the test prints a notice and
//! passes; in CI (`CI=true`) a missing CLI is a failure.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use sam_agent::vm::devcontainer::{self, DevcontainerConfig, DevcontainerError};

/// Layouts where the project deliberately disagrees with the reference, and why. In
/// each the reference reads the same file the project rejects.
const EXPECTED: &[(&str, &str)] = &[
    (
        "single-quoted string",
        "malformed JSON is an error; the reference recovers what it can",
    ),
    (
        "unquoted key",
        "malformed JSON is an error; the reference recovers what it can",
    ),
    (
        "missing comma",
        "malformed JSON is an error; the reference recovers what it can",
    ),
    (
        "hexadecimal number",
        "malformed JSON is an error; the reference recovers what it can",
    ),
    (
        "unterminated object",
        "malformed JSON is an error; the reference recovers what it can",
    ),
    (
        "unterminated block comment",
        "malformed JSON is an error; the reference recovers what it can",
    ),
    (
        "two root values",
        "malformed JSON is an error; the reference recovers what it can",
    ),
    (
        "byte-order mark twice",
        "only a leading byte-order mark is skipped; the reference skips it anywhere",
    ),
    (
        "byte-order mark between tokens",
        "only a leading byte-order mark is skipped; the reference skips it anywhere",
    ),
    (
        "UTF-16 with a byte-order mark",
        "the file is not UTF-8 JSON; the reference reads the garbage as an empty object",
    ),
    (
        "a property twice",
        "a property given twice is an error; the reference takes the last one",
    ),
    (
        "no container source",
        "a file naming no image, Dockerfile or Compose file is an error; the reference reads it and only `devcontainer up` fails",
    ),
    (
        "empty object",
        "a file naming no image, Dockerfile or Compose file is an error; the reference reads it and only `devcontainer up` fails",
    ),
    (
        "image is a number",
        "a property the project reads must have the specification's type",
    ),
    (
        "containerEnv value is a number",
        "a property the project reads must have the specification's type",
    ),
    (
        "nesting 600 deep",
        "nesting deeper than 512 levels is an error; the reference reads it",
    ),
    (
        "broken default, valid named, no request",
        "malformed JSON is an error; the reference recovers what it can",
    ),
    (
        "broken default, valid root file",
        "malformed JSON is an error; the reference recovers what it can",
    ),
    (
        "valid default, broken named, requested",
        "malformed JSON is an error; the reference recovers what it can",
    ),
];

/// The CLI's path, unless the test does not apply here (printed as a notice).
fn cli_or_skip() -> Option<PathBuf> {
    let path = match std::env::var_os("SAM_DEVCONTAINER_CLI") {
        Some(path) => Some(PathBuf::from(path)),
        None => {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
            let path = target.join("devcontainer-cli/node_modules/.bin/devcontainer");
            path.is_file().then_some(path)
        }
    };
    if path.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI must install @devcontainers/cli (see .ci/run)"
        );
        eprintln!(
            "notice: @devcontainers/cli not installed; skipping the devcontainer differential test"
        );
    }
    path
}

/// One repository layout and the configuration asked for.
struct Layout {
    name: String,
    /// Files: path in the repository → contents.
    files: Vec<(String, Vec<u8>)>,
    /// Symbolic links: path in the repository → target.
    links: Vec<(String, String)>,
    /// Empty directories.
    dirs: Vec<String>,
    /// The named configuration asked for.
    requested: Option<String>,
}

impl Layout {
    fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            files: Vec::new(),
            links: Vec::new(),
            dirs: Vec::new(),
            requested: None,
        }
    }

    fn file(mut self, path: &str, text: impl AsRef<[u8]>) -> Self {
        self.files.push((path.to_owned(), text.as_ref().to_vec()));
        self
    }

    fn link(mut self, path: &str, target: &str) -> Self {
        self.links.push((path.to_owned(), target.to_owned()));
        self
    }

    fn dir(mut self, path: &str) -> Self {
        self.dirs.push(path.to_owned());
        self
    }

    fn request(mut self, name: &str) -> Self {
        self.requested = Some(name.to_owned());
        self
    }

    fn write(&self, root: &Path) {
        let parent = |path: &Path| std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        for (path, text) in &self.files {
            let path = root.join(path);
            parent(&path);
            std::fs::write(path, text).unwrap();
        }
        for (path, target) in &self.links {
            let path = root.join(path);
            parent(&path);
            std::os::unix::fs::symlink(target, path).unwrap();
        }
        for dir in &self.dirs {
            std::fs::create_dir_all(root.join(dir)).unwrap();
        }
    }
}

/// What a configuration builds from, as both sides report it: `image`, the
/// Dockerfile (`build.dockerfile` or the legacy `dockerFile`) and the Compose files.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Source {
    image: Option<String>,
    dockerfile: Option<String>,
    compose: Vec<String>,
}

impl Source {
    fn of_project(config: &DevcontainerConfig) -> Self {
        Self {
            image: config.image.clone(),
            dockerfile: config.build.as_ref().and_then(|b| b.dockerfile.clone()),
            compose: config.compose_files.clone(),
        }
    }

    fn of_reference(config: &ReferenceConfig) -> Self {
        let text = |v: Option<&serde_json::Value>| v.and_then(|v| v.as_str()).map(str::to_owned);
        let compose = match &config.docker_compose_file {
            Some(serde_json::Value::String(file)) => vec![file.clone()],
            Some(serde_json::Value::Array(files)) => files
                .iter()
                .map(|f| f.as_str().unwrap_or("<not a string>").to_owned())
                .collect(),
            _ => Vec::new(),
        };
        Self {
            image: text(config.image.as_ref()),
            dockerfile: text(config.build.as_ref().and_then(|b| b.get("dockerfile")))
                .or_else(|| text(config.docker_file.as_ref())),
            compose,
        }
    }

    /// Equal, reading a value with a `${…}` variable (which the reference substitutes
    /// and the project keeps as written) as matching any value.
    fn matches(&self, reference: &Self) -> bool {
        let same = |a: &Option<String>, b: &Option<String>| match (a, b) {
            (Some(a), Some(_)) if a.contains("${") => true,
            _ => a == b,
        };
        same(&self.image, &reference.image)
            && same(&self.dockerfile, &reference.dockerfile)
            && self.compose.len() == reference.compose.len()
            && self
                .compose
                .iter()
                .zip(&reference.compose)
                .all(|(a, b)| same(&Some(a.clone()), &Some(b.clone())))
    }
}

/// What `read-configuration` prints, in the parts compared. Only these are
/// deserialized: the rest, which may nest deeper than `serde_json` recurses, is
/// skipped.
#[derive(Debug, serde::Deserialize)]
struct ReferenceOutput {
    configuration: ReferenceConfig,
}

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReferenceConfig {
    image: Option<serde_json::Value>,
    build: Option<serde_json::Value>,
    docker_file: Option<serde_json::Value>,
    docker_compose_file: Option<serde_json::Value>,
    config_file_path: ReferencePath,
}

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReferencePath {
    fs_path: PathBuf,
}

/// One side's answer. Paths are relative to the repository.
#[derive(Debug)]
enum Outcome {
    /// This file, read.
    Read(PathBuf, Source),
    /// No configuration (the reference: "not found" for a file that does not exist).
    Nothing,
    /// An error, about this file when it names one that exists.
    Failed(Option<PathBuf>, String),
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Read(path, source) => write!(f, "reads {} as {source:?}", path.display()),
            Self::Nothing => f.write_str("no configuration"),
            Self::Failed(_, message) => write!(f, "fails: {message}"),
        }
    }
}

fn project(root: &Path, requested: Option<&str>) -> Outcome {
    let relative = |path: &Path| path.strip_prefix(root).unwrap().to_path_buf();
    match devcontainer::select(root, requested) {
        Ok(Some(config)) => Outcome::Read(relative(&config.path), Source::of_project(&config)),
        Ok(None) => Outcome::Nothing,
        Err(DevcontainerError::NotFound { .. }) => Outcome::Nothing,
        Err(
            ref e @ (DevcontainerError::Parse { ref path, .. }
            | DevcontainerError::Invalid { ref path, .. }
            | DevcontainerError::Io { ref path, .. }),
        ) => Outcome::Failed(Some(relative(path)), e.to_string()),
        Err(e) => Outcome::Failed(None, e.to_string()),
    }
}

/// A `docker` for the CLI: `read-configuration` only runs `docker ps -q -a --filter …`
/// to look for an existing container (observed with 0.89.0), and an empty answer
/// means none.
fn docker_stub(dir: &Path) -> PathBuf {
    let path = dir.join("docker");
    std::fs::write(&path, "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn reference(cli: &Path, docker: &Path, root: &Path, requested: Option<&str>) -> Outcome {
    let mut command = Command::new(cli);
    command
        .arg("read-configuration")
        .arg("--workspace-folder")
        .arg(root)
        .arg("--docker-path")
        .arg(docker)
        .args(["--log-level", "debug"])
        .current_dir(root);
    if let Some(name) = requested {
        command.arg("--config").arg(
            root.join(".devcontainer")
                .join(name)
                .join("devcontainer.json"),
        );
    }
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", cli.display()));
    if output.status.success() {
        let stdout = String::from_utf8_lossy(&output.stdout);
        let output: ReferenceOutput = serde_json::from_str(stdout.trim())
            .unwrap_or_else(|e| panic!("read-configuration printed {stdout:?}: {e}"));
        let config = &output.configuration;
        let path = config
            .config_file_path
            .fs_path
            .strip_prefix(root)
            .unwrap()
            .to_path_buf();
        return Outcome::Read(path, Source::of_reference(config));
    }
    // The first error line, e.g. "Error: Dev container config (/…/devcontainer.json) not found."
    let stderr = String::from_utf8_lossy(&output.stderr);
    let message = stderr
        .lines()
        .find_map(|l| {
            l.split_once("] ")
                .map(|(_, m)| m)
                .filter(|m| m.contains("Error"))
        })
        .unwrap_or(stderr.trim())
        .to_owned();
    let path = message
        .split_once("Dev container config (")
        .and_then(|(_, rest)| rest.split_once(')'))
        .map(|(path, _)| Path::new(path).strip_prefix(root).unwrap().to_path_buf());
    match path {
        // "not found" for a file that does not exist: no configuration. (For an
        // empty file the reference says "not found" too; that file is chosen and fails.)
        Some(path) if message.ends_with("not found.") && !root.join(&path).is_file() => {
            Outcome::Nothing
        }
        path => Outcome::Failed(path, message),
    }
}

/// Whether both sides agree: the same file read alike, no configuration on both, or
/// both failing (on the same file when both name one).
fn agree(project: &Outcome, reference: &Outcome) -> bool {
    match (project, reference) {
        (Outcome::Read(a, x), Outcome::Read(b, y)) => a == b && x.matches(y),
        (Outcome::Nothing, Outcome::Nothing) => true,
        (Outcome::Failed(a, _), Outcome::Failed(b, _)) => match (a, b) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        },
        _ => false,
    }
}

const IMAGE: &str = r#"{ "image": "mcr.microsoft.com/devcontainers/base:bookworm" }"#;
const BROKEN: &str = r#"{ "image": 'single-quoted' }"#;

fn image(name: &str) -> String {
    format!(r#"{{ "image": "{name}" }}"#)
}

fn nested(depth: usize) -> String {
    format!(
        r#"{{ "image": "deep", "x": {}{} }}"#,
        "[".repeat(depth),
        "]".repeat(depth)
    )
}

/// The real files of the shared corpus, with their names.
fn corpus() -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/cases/devcontainer");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).unwrap())
        })
        .collect();
    files.sort();
    assert!(files.len() >= 10, "the corpus has its files");
    files
}

fn layouts() -> Vec<Layout> {
    let default = ".devcontainer/devcontainer.json";
    let root = ".devcontainer.json";
    let named = |n: &str| format!(".devcontainer/{n}/devcontainer.json");
    let mut all = vec![
        // Where configurations are found, and which wins.
        Layout::new("no configuration").file("README.md", "hi"),
        Layout::new("default folder").file(default, IMAGE),
        Layout::new("root file").file(root, IMAGE),
        Layout::new("both defaults")
            .file(default, image("a"))
            .file(root, image("b")),
        Layout::new("one named, no request").file(&named("gpu"), image("g")),
        Layout::new("one named, requested")
            .file(&named("gpu"), image("g"))
            .request("gpu"),
        Layout::new("several named, no request")
            .file(&named("b"), image("b"))
            .file(&named("a"), image("a")),
        Layout::new("several named, second requested")
            .file(&named("a"), image("a"))
            .file(&named("b"), image("b"))
            .file(&named("c"), image("c"))
            .request("b"),
        Layout::new("default and named, no request")
            .file(default, image("d"))
            .file(&named("gpu"), image("g")),
        Layout::new("default and named, named requested")
            .file(default, image("d"))
            .file(&named("gpu"), image("g"))
            .request("gpu"),
        Layout::new("root file and named, named requested")
            .file(root, image("r"))
            .file(&named("gpu"), image("g"))
            .request("gpu"),
        Layout::new("a folder called default, requested")
            .file(default, image("d"))
            .file(&named("default"), image("named-default"))
            .request("default"),
        Layout::new("missing named, with a default")
            .file(default, image("d"))
            .request("cuda"),
        Layout::new("missing named, no configuration")
            .file("README.md", "hi")
            .request("cuda"),
        Layout::new("named folder without a file, requested")
            .file(default, image("d"))
            .dir(".devcontainer/empty")
            .request("empty"),
        Layout::new("hidden named folder, requested")
            .file(&named(".hidden"), image("h"))
            .request(".hidden"),
        Layout::new("named folder with a space, requested")
            .file(&named("my config"), image("s"))
            .request("my config"),
        Layout::new("two levels deep only").file(".devcontainer/a/b/devcontainer.json", IMAGE),
        Layout::new("other file name only").file(".devcontainer/other.json", IMAGE),
        Layout::new("capitalised folder only").file(".DevContainer/devcontainer.json", IMAGE),
        Layout::new("capitalised file only").file(".devcontainer/DevContainer.json", IMAGE),
        Layout::new("default path is a directory")
            .dir(default)
            .file(root, image("r")),
        Layout::new("root path is a directory")
            .dir(root)
            .file(&named("x"), image("x")),
        Layout::new(".devcontainer is a file").file(".devcontainer", "{}").file(root, image("r")),
        Layout::new("default is a symlink")
            .file("config/dc.json", image("linked"))
            .link(default, "../config/dc.json"),
        Layout::new("default is a dangling symlink")
            .link(default, "../nowhere.json")
            .file(root, image("r")),
        Layout::new("named folder is a symlink, requested")
            .file("configs/gpu/devcontainer.json", image("g"))
            .link(".devcontainer/gpu", "../configs/gpu")
            .request("gpu"),
        // JSON with comments, and what the project accepts of it.
        Layout::new("comments and trailing commas").file(
            default,
            "// leading\n{\n  /* block */ \"image\": \"c\", // after\n  \"forwardPorts\": [3000, 3001,],\n}\n",
        ),
        Layout::new("only a comment").file(default, "// nothing here\n"),
        Layout::new("byte-order mark").file(default, format!("\u{feff}{}", image("bom"))),
        Layout::new("byte-order mark, root file").file(root, format!("\u{feff}{}", image("bom"))),
        Layout::new("byte-order mark, named, requested")
            .file(&named("x"), format!("\u{feff}{}", image("bom")))
            .request("x"),
        Layout::new("byte-order mark twice")
            .file(default, format!("\u{feff}\u{feff}{}", image("bom"))),
        Layout::new("byte-order mark between tokens")
            .file(default, "{ \"image\": \"a\",\u{feff} \"name\": \"b\" }"),
        Layout::new("no-break space between tokens")
            .file(default, "{ \"image\":\u{a0}\"nbsp\" }"),
        Layout::new("not UTF-8 in a string").file(default, b"{ \"name\": \"caf\xe9\", \"image\": \"latin1\" }"),
        Layout::new("UTF-16 with a byte-order mark").file(
            default,
            image("utf16")
                .encode_utf16()
                .flat_map(u16::to_le_bytes)
                .fold(vec![0xff, 0xfe], |mut v, b| {
                    v.push(b);
                    v
                }),
        ),
        Layout::new("single-quoted string").file(default, BROKEN),
        Layout::new("unquoted key").file(default, "{ image: \"a\" }"),
        Layout::new("missing comma").file(default, "{ \"image\": \"a\"\n \"name\": \"b\" }"),
        Layout::new("hexadecimal number")
            .file(default, "{ \"image\": \"a\", \"forwardPorts\": [0x50] }"),
        Layout::new("unterminated object").file(default, "{ \"image\": \"a\",\n"),
        Layout::new("unterminated block comment").file(default, "{ \"image\": \"a\" } /* open"),
        Layout::new("two root values").file(default, format!("{}{}", image("a"), image("b"))),
        Layout::new("a property twice").file(default, "{ \"image\": \"a\", \"image\": \"b\" }"),
        Layout::new("empty file").file(default, ""),
        Layout::new("whitespace only").file(default, "  \n\t\n"),
        Layout::new("empty file, valid root file")
            .file(default, "")
            .file(root, image("r")),
        Layout::new("an array").file(default, "[]"),
        Layout::new("null").file(default, "null"),
        Layout::new("a string").file(default, "\"image\""),
        Layout::new("a number").file(default, "42"),
        Layout::new("empty object").file(default, "{}"),
        Layout::new("no container source").file(default, r#"{ "name": "nothing" }"#),
        Layout::new("image is a number").file(default, r#"{ "image": 42 }"#),
        Layout::new("containerEnv value is a number")
            .file(default, r#"{ "image": "a", "containerEnv": { "N": 1 } }"#),
        Layout::new("nesting 600 deep").file(default, nested(600)),
        Layout::new("nesting 100000 deep").file(default, nested(100_000)),
        Layout::new("a variable in the image")
            .file(default, r#"{ "image": "x:${localWorkspaceFolderBasename}" }"#),
        Layout::new("legacy dockerFile").file(default, r#"{ "dockerFile": "Dockerfile" }"#),
        Layout::new("build.dockerfile").file(
            default,
            r#"{ "build": { "dockerfile": "Dockerfile", "context": ".." } }"#,
        ),
        Layout::new("compose file as a string")
            .file(default, r#"{ "dockerComposeFile": "compose.yml", "service": "app" }"#),
        Layout::new("compose files as a list").file(
            default,
            r#"{ "dockerComposeFile": ["a.yml", "b.yml"], "service": "app" }"#,
        ),
        // A broken configuration next to a valid one.
        Layout::new("broken default, valid named, no request")
            .file(default, BROKEN)
            .file(&named("gpu"), image("g")),
        Layout::new("broken default, valid named, requested")
            .file(default, BROKEN)
            .file(&named("gpu"), image("g"))
            .request("gpu"),
        Layout::new("valid default, broken named, no request")
            .file(default, image("d"))
            .file(&named("gpu"), BROKEN),
        Layout::new("valid default, broken named, requested")
            .file(default, image("d"))
            .file(&named("gpu"), BROKEN)
            .request("gpu"),
        Layout::new("valid default, empty named, no request")
            .file(default, image("d"))
            .file(&named("gpu"), ""),
        Layout::new("valid named, other named broken, requested")
            .file(&named("a"), "[]")
            .file(&named("b"), image("b"))
            .request("b"),
        Layout::new("broken default, valid root file")
            .file(default, BROKEN)
            .file(root, image("r")),
        Layout::new("valid default, broken root file")
            .file(default, image("d"))
            .file(root, "[]"),
    ];
    // Every real file of the corpus at each location.
    for (file, text) in corpus() {
        all.push(Layout::new(format!("{file} as the default")).file(default, &text));
        all.push(Layout::new(format!("{file} as the root file")).file(root, &text));
        all.push(
            Layout::new(format!("{file} as a named config"))
                .file(&named("some-folder"), &text)
                .file(default, image("other"))
                .request("some-folder"),
        );
    }
    all
}

#[test]
fn discovery_agrees_with_devcontainers_cli() {
    let Some(cli) = cli_or_skip() else {
        return;
    };
    let tools = tempfile::tempdir().unwrap();
    let docker = docker_stub(tools.path());
    let layouts = layouts();
    let names: Vec<&str> = layouts.iter().map(|l| l.name.as_str()).collect();
    for (name, _) in EXPECTED {
        assert!(
            names.contains(name),
            "EXPECTED names a layout that does not exist: {name}"
        );
    }

    // The CLI takes about half a second a run: two at a time.
    let results: Vec<(String, Outcome, Outcome)> = std::thread::scope(|scope| {
        let chunks: Vec<_> = layouts.chunks(layouts.len().div_ceil(2)).collect();
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|chunk| {
                let (cli, docker) = (&cli, &docker);
                scope.spawn(move || {
                    chunk
                        .iter()
                        .map(|layout| {
                            let repo = tempfile::tempdir().unwrap();
                            let root = repo.path().canonicalize().unwrap();
                            layout.write(&root);
                            let requested = layout.requested.as_deref();
                            (
                                layout.name.clone(),
                                project(&root, requested),
                                reference(cli, docker, &root, requested),
                            )
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });

    let mut unexpected = Vec::new();
    let mut expected = 0;
    for (name, ours, theirs) in &results {
        let agrees = agree(ours, theirs);
        match (EXPECTED.iter().find(|(n, _)| n == name), agrees) {
            (None, true) => {}
            (None, false) => unexpected.push(format!(
                "{name}: new divergence\n  project:   {ours}\n  reference: {theirs}"
            )),
            (Some(_), true) => unexpected.push(format!(
                "{name}: listed in EXPECTED but both agree now ({ours}); remove it"
            )),
            (Some((_, why)), false) => {
                // An expected divergence is only ever about a file's contents: the
                // project fails on the very file the reference reads.
                let same_file = matches!(
                    (ours, theirs),
                    (Outcome::Failed(Some(a), _), Outcome::Read(b, _)) if a == b
                );
                if same_file {
                    expected += 1;
                    eprintln!("expected divergence, {name}: {why}");
                } else {
                    unexpected.push(format!(
                        "{name}: diverges otherwise than EXPECTED says ({why})\n  project:   {ours}\n  reference: {theirs}"
                    ));
                }
            }
        }
    }
    eprintln!(
        "{} layouts compared with @devcontainers/cli: {} agree, {expected} differ as documented",
        results.len(),
        results.len() - expected,
    );
    assert!(unexpected.is_empty(), "{}", unexpected.join("\n"));
}
