use super::*;

/// The shared corpus: every file with the kind its index says it uses.
fn corpus() -> Vec<(PathBuf, DevcontainerKind)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/cases/devcontainer");
    let index = std::fs::read_to_string(dir.join("index.md"))
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let cases: Vec<_> = index
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let file = cells[1].trim_matches('`');
            let kind = match cells[7] {
                "image" => DevcontainerKind::Image,
                "build.dockerfile" | "dockerFile(legacy top-level)" => DevcontainerKind::Dockerfile,
                v if v.starts_with("dockerComposeFile") => DevcontainerKind::Compose,
                other => panic!("index.md names an unknown variant {other:?}"),
            };
            (dir.join(file), kind)
        })
        .collect();
    let on_disk = std::fs::read_dir(&dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "json")
        })
        .count();
    assert_eq!(cases.len(), on_disk, "index.md lists every file");
    cases
}

/// A repository with `files` (path in the repo → contents).
fn repo(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (path, text) in files {
        let path = dir.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    dir
}

#[test]
fn every_corpus_file_in_every_location() {
    for (file, kind) in corpus() {
        let text = std::fs::read_to_string(&file).unwrap();
        for (location, name) in [
            (".devcontainer/devcontainer.json", None),
            (".devcontainer.json", None),
            (
                ".devcontainer/some-folder/devcontainer.json",
                Some("some-folder"),
            ),
        ] {
            let dir = repo(&[(location, &text)]);
            let found = discover(dir.path()).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            assert_eq!(found.len(), 1, "{}", file.display());
            let config = &found[0];
            assert_eq!(config.kind, kind, "{}", file.display());
            assert_eq!(config.name.as_deref(), name);
            assert_eq!(config.path, dir.path().join(location));
            let selected = select(dir.path(), name).unwrap().unwrap();
            assert_eq!(&selected, config);
        }
    }
}

fn corpus_file(prefix: &str) -> String {
    let (path, _) = corpus()
        .into_iter()
        .find(|(p, _)| p.file_name().unwrap().to_str().unwrap().starts_with(prefix))
        .unwrap();
    std::fs::read_to_string(path).unwrap()
}

#[test]
fn corpus_fields() {
    let dir = repo(&[
        (
            ".devcontainer/kube/devcontainer.json",
            &corpus_file("kube-rs-kube"),
        ),
        (
            ".devcontainer/sam/devcontainer.json",
            &corpus_file("raphaeltm-simple-agent-manager"),
        ),
        (
            ".devcontainer/compose/devcontainer.json",
            &corpus_file("devcontainers-templates__src-docker-existing-docker-compose"),
        ),
        (
            ".devcontainer/pg/devcontainer.json",
            &corpus_file("devcontainers-templates__src-rust-postgres"),
        ),
        (
            ".devcontainer/rust/devcontainer.json",
            &corpus_file("devcontainers-images__src-rust"),
        ),
    ]);
    let found = discover(dir.path()).unwrap();
    let names: Vec<_> = found.iter().map(|c| c.name.clone().unwrap()).collect();
    assert_eq!(names, ["compose", "kube", "pg", "rust", "sam"]);
    let [compose, kube, pg, rust, sam] = <[DevcontainerConfig; 5]>::try_from(found).unwrap();

    // Legacy top-level `dockerFile`.
    assert_eq!(kube.kind, DevcontainerKind::Dockerfile);
    assert_eq!(
        kube.build.unwrap().dockerfile.as_deref(),
        Some("./Dockerfile")
    );
    assert_eq!(kube.remote_user.as_deref(), Some("code"));
    assert_eq!(kube.display_name.as_deref(), Some("kube-dev"));

    // Comments after array elements; string lifecycle commands.
    assert_eq!(
        sam.image.as_deref(),
        Some("mcr.microsoft.com/devcontainers/typescript-node:24-bookworm")
    );
    assert_eq!(
        sam.forward_ports,
        [
            ForwardPort::Number(8787),
            ForwardPort::Number(5173),
            ForwardPort::Number(3001)
        ]
    );
    assert_eq!(
        sam.lifecycle.post_create,
        Some(LifecycleCommand::Shell(
            "bash .devcontainer/post-create.sh".to_owned()
        ))
    );
    assert_eq!(
        sam.container_env.get("CODEX_HOME").map(String::as_str),
        Some("/workspaces/simple-agent-manager/.codex")
    );

    // `dockerComposeFile` as a list and as a string.
    assert_eq!(
        compose.compose_files,
        ["../docker-compose.yml", "docker-compose.yml"]
    );
    assert_eq!(compose.service.as_deref(), Some("your-service-name-here"));
    assert_eq!(pg.compose_files, ["docker-compose.yml"]);
    assert_eq!(pg.service.as_deref(), Some("app"));

    let build = rust.build.unwrap();
    assert_eq!(build.dockerfile.as_deref(), Some("./Dockerfile"));
    assert_eq!(build.context.as_deref(), Some("."));
    assert_eq!(rust.remote_user.as_deref(), Some("vscode"));
}

#[test]
fn lifecycle_command_forms() {
    let dir = repo(&[(
        ".devcontainer.json",
        r#"{
            "image": "debian",
            "onCreateCommand": "echo hi",
            "postCreateCommand": ["cargo", "fetch"],
            "postStartCommand": { "server": "npm start", "db": ["pg_ctl", "start"] },
            "forwardPorts": [3000, "db:5432"],
            "remoteEnv": { "PATH": "${containerEnv:PATH}:/extra", "UNSET": null },
        }"#,
    )]);
    let config = select(dir.path(), None).unwrap().unwrap();
    use LifecycleCommand::*;
    assert_eq!(
        config.lifecycle.on_create,
        Some(Shell("echo hi".to_owned()))
    );
    assert_eq!(
        config.lifecycle.post_create,
        Some(Exec(vec!["cargo".to_owned(), "fetch".to_owned()]))
    );
    let Some(Parallel(parallel)) = config.lifecycle.post_start else {
        panic!("object form")
    };
    assert_eq!(parallel["server"], Shell("npm start".to_owned()));
    assert_eq!(
        parallel["db"],
        Exec(vec!["pg_ctl".to_owned(), "start".to_owned()])
    );
    assert_eq!(
        config.forward_ports[1],
        ForwardPort::HostPort("db:5432".to_owned())
    );
    assert_eq!(config.remote_env["UNSET"], None);
}

#[test]
fn precedence_and_selection() {
    let image = |name: &str| format!(r#"{{ "image": "{name}" }}"#);
    let (a, b, c, d) = (image("a"), image("b"), image("c"), image("d"));
    let dir = repo(&[
        (".devcontainer.json", &b),
        (".devcontainer/devcontainer.json", &a),
        (".devcontainer/zeta/devcontainer.json", &d),
        (".devcontainer/alpha/devcontainer.json", &c),
        // Not one level deep, and not a devcontainer.json: both ignored.
        (".devcontainer/alpha/deeper/devcontainer.json", &d),
        (".devcontainer/other.json", &d),
    ]);
    let images: Vec<_> = discover(dir.path())
        .unwrap()
        .into_iter()
        .map(|c| (c.name, c.image.unwrap()))
        .collect();
    let named = |n: &str| Some(n.to_owned());
    assert_eq!(
        images,
        [
            (None, "a".to_owned()),
            (None, "b".to_owned()),
            (named("alpha"), "c".to_owned()),
            (named("zeta"), "d".to_owned()),
        ]
    );
    let pick = |requested| select(dir.path(), requested).map(|c| c.and_then(|c| c.image));
    assert_eq!(pick(None).unwrap().as_deref(), Some("a"));
    assert_eq!(pick(Some("zeta")).unwrap().as_deref(), Some("d"));
    let Err(DevcontainerError::NotFound {
        requested,
        available,
    }) = pick(Some("gpu"))
    else {
        panic!("a missing named config is an error");
    };
    assert_eq!(requested, "gpu");
    assert_eq!(available, ["default", "default", "alpha", "zeta"]);

    // Only `.devcontainer.json`: it is the default.
    let dir = repo(&[(".devcontainer.json", &b)]);
    assert_eq!(
        select(dir.path(), None).unwrap().unwrap().image.as_deref(),
        Some("b")
    );
    // Only named configurations: no default, as for `@devcontainers/cli`, which looks
    // at named ones only when given one with `--config`.
    let dir = repo(&[
        (".devcontainer/x/devcontainer.json", &c),
        (".devcontainer/w/devcontainer.json", &d),
    ]);
    assert_eq!(select(dir.path(), None).unwrap(), None);
    assert_eq!(
        select(dir.path(), Some("w"))
            .unwrap()
            .unwrap()
            .name
            .as_deref(),
        Some("w")
    );
}

#[test]
fn no_configuration_is_the_lightweight_profile() {
    let dir = repo(&[("README.md", "hi")]);
    assert!(discover(dir.path()).unwrap().is_empty());
    assert!(select(dir.path(), None).unwrap().is_none());
    let err = select(dir.path(), Some("default")).unwrap_err();
    assert!(
        err.to_string().contains("no devcontainer configuration"),
        "{err}"
    );
}

/// A broken file: (contents, expected line, expected column, words in the message).
fn check_broken(text: &str, line: usize, column: usize, words: &str) {
    let dir = repo(&[(".devcontainer/devcontainer.json", text)]);
    let err = discover(dir.path()).unwrap_err();
    let DevcontainerError::Parse {
        path,
        line: l,
        column: c,
        message,
    } = &err
    else {
        panic!("{text:?}: expected a parse error, got {err}");
    };
    assert_eq!(path, &dir.path().join(".devcontainer/devcontainer.json"));
    assert_eq!((*l, *c), (line, column), "{text:?}: {err}");
    assert!(
        message.to_lowercase().contains(words),
        "{text:?}: {message}"
    );
    assert!(err.to_string().contains("devcontainer.json:"), "{err}");
}

#[test]
fn broken_files_name_the_position() {
    check_broken("{\n  \"image\": 'debian'\n}", 2, 12, "single-quoted");
    check_broken("{\n  image: \"debian\"\n}", 2, 3, "");
    check_broken(
        "{\n  \"image\": \"a\"\n  \"name\": \"b\"\n}",
        2,
        15,
        "comma",
    );
    check_broken("{\n  \"image\": \"debian\",\n", 3, 1, "");
    check_broken("{ \"forwardPorts\": [0x50] }", 1, 20, "hexadecimal");
    check_broken("{ \"image\": 42 }", 1, 12, "");
}

#[test]
fn a_file_without_a_container_source_is_invalid() {
    let dir = repo(&[(".devcontainer.json", r#"{ "name": "nothing" }"#)]);
    let err = discover(dir.path()).unwrap_err();
    assert!(matches!(err, DevcontainerError::Invalid { .. }), "{err}");
    assert!(err.to_string().contains(".devcontainer.json"), "{err}");
}

#[test]
fn kinds_serialize_snake_case() {
    let kinds = [
        DevcontainerKind::Image,
        DevcontainerKind::Dockerfile,
        DevcontainerKind::Compose,
    ];
    assert_eq!(
        serde_json::to_string(&kinds).unwrap(),
        r#"["image","dockerfile","compose"]"#
    );
}

/// A file that does not parse (the reference reads it as `{}`).
const BROKEN: &str = r#"{ "image": 'single-quoted' }"#;

#[test]
fn only_the_chosen_file_is_read() {
    let dir = repo(&[
        (".devcontainer/devcontainer.json", r#"{ "image": "a" }"#),
        (".devcontainer/broken/devcontainer.json", BROKEN),
        (".devcontainer/gpu/devcontainer.json", r#"{ "image": "g" }"#),
    ]);
    let image = |requested| select(dir.path(), requested).unwrap().unwrap().image;
    assert_eq!(image(None).as_deref(), Some("a"));
    assert_eq!(image(Some("gpu")).as_deref(), Some("g"));
    let err = select(dir.path(), Some("broken")).unwrap_err();
    assert!(matches!(err, DevcontainerError::Parse { .. }), "{err}");
    assert!(
        err.to_string().contains("broken/devcontainer.json:1:12"),
        "{err}"
    );
    // `discover` reads every file, so it reports the broken one.
    assert!(discover(dir.path()).is_err());
    // A broken configuration still counts as existing: it is not "not found".
    let Err(DevcontainerError::NotFound { available, .. }) = select(dir.path(), Some("cuda"))
    else {
        panic!("cuda does not exist");
    };
    assert_eq!(available, ["default", "broken", "gpu"]);
}

#[test]
fn a_broken_default_does_not_fall_back() {
    // The reference uses `.devcontainer/devcontainer.json` whenever it is a file.
    for first in [BROKEN, "", "[]"] {
        let dir = repo(&[
            (".devcontainer/devcontainer.json", first),
            (".devcontainer.json", r#"{ "image": "b" }"#),
        ]);
        assert!(select(dir.path(), None).is_err(), "{first:?}");
        let location = locate(dir.path(), None).unwrap().unwrap();
        assert_eq!(
            location.path,
            dir.path().join(".devcontainer/devcontainer.json")
        );
    }
    // A directory where the file would be is not a configuration.
    let dir = repo(&[
        (".devcontainer/devcontainer.json/x", "not a config"),
        (".devcontainer.json", r#"{ "image": "b" }"#),
    ]);
    let chosen = select(dir.path(), None).unwrap().unwrap();
    assert_eq!(chosen.path, dir.path().join(".devcontainer.json"));
}

#[test]
fn a_byte_order_mark_is_skipped() {
    let text = "\u{feff}{ \"image\": \"bom\" }";
    let dir = repo(&[(".devcontainer/devcontainer.json", text)]);
    let config = select(dir.path(), None).unwrap().unwrap();
    assert_eq!(config.image.as_deref(), Some("bom"));
    // Only a leading one is skipped; the reference skips one anywhere (a documented
    // difference).
    let twice = format!("\u{feff}{text}");
    assert!(parse_text(Path::new("devcontainer.json"), None, &twice).is_err());
}

#[test]
fn bytes_that_are_not_utf8_read_as_replacement_characters() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(".devcontainer.json");
    std::fs::write(&path, b"{ \"name\": \"caf\xe9\", \"image\": \"debian\" }").unwrap();
    let config = select(dir.path(), None).unwrap().unwrap();
    assert_eq!(config.display_name.as_deref(), Some("caf\u{fffd}"));
    assert_eq!(config.image.as_deref(), Some("debian"));
}

#[test]
fn deep_nesting_is_an_error_not_a_crash() {
    for depth in [600, 100_000] {
        let text = format!(
            r#"{{ "image": "a", "x": {}{} }}"#,
            "[".repeat(depth),
            "]".repeat(depth)
        );
        let err = parse_text(Path::new("devcontainer.json"), None, &text).unwrap_err();
        assert!(err.to_string().contains("nesting"), "{err}");
    }
}

#[test]
fn a_file_that_is_not_an_object_says_so() {
    for (text, what) in [
        ("", "nothing"),
        ("// only a comment\n", "nothing"),
        ("[]", "an array"),
        ("null", "null"),
        ("\"image\"", "a string"),
        ("42", "a number"),
        ("true", "a boolean"),
    ] {
        let err = parse_text(Path::new("devcontainer.json"), None, text).unwrap_err();
        assert!(
            err.to_string()
                .contains(&format!("must hold a JSON object; this one holds {what}")),
            "{text:?}: {err}"
        );
    }
    // An object with a wrong field keeps serde's message, which names the field.
    let err = parse_text(Path::new("devcontainer.json"), None, r#"{ "image": 42 }"#).unwrap_err();
    assert!(!err.to_string().contains("JSON object"), "{err}");
}
