//! The rendered boot, run: cloud-init's own YAML loader and `shellify` (the code
//! that writes the `runcmd` script on a real node) turn the user-data into the
//! script, which then runs under `sh` in a sandbox.
//!
//! The sandbox relocates every system path the boot writes (`/etc`, `/usr/local`,
//! `/swapfile`) into a temporary directory, and its `PATH` holds only stand-ins for
//! the programs that change the machine (apt-get, systemctl, curl, iptables, …)
//! plus a few harmless real tools (sh, cat, grep, sha256sum, …): a program the
//! sandbox does not know is "not found", so nothing outside the temporary
//! directory is touched. The stand-in `logger` also writes a journal, which the VM
//! agent's own boot-timeline parser reads back.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;
use std::process::Command;

use sam_agent::wire::boot_timeline::BootTimeline;
use sam_cloudinit::{AGENT_SHA256_PATH, ALL_PHASES_COMPLETE, NodeBoot, Phase};
use sam_core::ProviderKind;
use serde::Deserialize;

use crate::support::{
    AGENT_BINARY, TOKEN, default_boot, fixtures, full_boot, python_json, tool_available,
};

/// The interpreter cloud-init runs on (Debian's package installs it there).
const CLOUD_INIT_PYTHON: &str = "/usr/bin/python3";

/// The system paths the boot writes, each relocated into the sandbox.
const RELOCATED: [&str; 4] = ["/etc/", "/usr/local/", "/run/", "/swapfile"];

/// Absolute paths the boot may name as they are: none is written.
const KEPT: [&str; 3] = ["/bin/sh", "/dev/null", "/dev/zero"];

/// Real programs the boot scripts may run in the sandbox: none changes the machine.
const REAL_TOOLS: [&str; 17] = [
    "timeout",
    "sleep",
    "mv",
    "tail",
    "date",
    "sed",
    "sh",
    "env",
    "cat",
    "grep",
    "sha256sum",
    "mktemp",
    "rm",
    "tr",
    "chmod",
    "cp",
    "mkdir",
];

/// Programs replaced by the stand-in below.
const STUBS: [&str; 16] = [
    "logger",
    "dpkg-query",
    "docker",
    "journalctl",
    "apt-get",
    "systemctl",
    "curl",
    "npm",
    "update-ca-certificates",
    "iptables",
    "ip6tables",
    "fallocate",
    "mkswap",
    "swapon",
    "sysctl",
    "install",
];

/// The stand-in: records every call; `logger -t <tag> <message>` appends the message
/// to the boot log, and to a journal as `journalctl -o json` prints it; the program named by `STUB_FAIL` exits with `STUB_FAIL_STATUS`;
/// `journalctl` prints that journal; `curl --output` writes the stand-in agent binary; `curl --header @file` and
/// `--data-binary @-` keep what they send; `iptables -C` finds no rule (as on a fresh
/// node); `fallocate` creates its file; `install` copies; `docker pull` takes a
/// moment, so the phases after it start while it runs; `dpkg-query` finds every
/// package installed when `STUB_INSTALLED` is set (a pre-baked image), else none.
const STUB: &str = r#"#!/bin/sh
name=${0##*/}
{
  printf '%s' "$name"
  for arg in "$@"; do printf ' %s' "$arg"; done
  printf '\n'
} >> "$SANDBOX/calls"
if [ "$name" = logger ] && [ "$1" = -t ] && [ "$2" = sam-boot ]; then
  printf '%s\n' "$3" >> "$SANDBOX/boot.log"
  printf '{"__REALTIME_TIMESTAMP":"%s","SYSLOG_IDENTIFIER":"%s","MESSAGE":"%s"}\n' \
    "$(date +%s%6N)" "$2" "$3" >> "$SANDBOX/journal.json"
fi
if [ "$name" = "${STUB_FAIL:-}" ]; then
  exit "$STUB_FAIL_STATUS"
fi
case "$name" in
  curl)
    while [ $# -gt 0 ]; do
      case "$1" in
        --output) cat "$SANDBOX/agent-binary" > "$2" || exit 23; shift ;;
        --header) case "$2" in @*) cat "${2#@}" >> "$SANDBOX/curl-headers" ;; esac; shift ;;
        --data-binary) [ "$2" = @- ] && cat >> "$SANDBOX/curl-body"; shift ;;
      esac
      shift
    done
    ;;
  iptables | ip6tables) [ "$1" = -C ] && exit 1 ;;
  journalctl) cat "$SANDBOX/journal.json" ;;
  fallocate) for last in "$@"; do :; done; : > "$last" ;;
  docker) sleep 1 ;;
  dpkg-query)
    [ -n "${STUB_INSTALLED:-}" ] || exit 1
    printf 'install ok installed\n' ;;
  install) for arg in "$@"; do src=${dst:-}; dst=$arg; done; cp "$src" "$dst" ;;
esac
exit 0
"#;

/// What cloud-init makes of the user-data.
#[derive(Debug, Deserialize)]
struct Loaded {
    /// The `runcmd` script, as `shellify` writes it.
    script: String,
    /// The `write_files` entries.
    files: Vec<LoadedFile>,
}

#[derive(Debug, Deserialize)]
struct LoadedFile {
    path: String,
    content: String,
    permissions: String,
}

/// Whether cloud-init's Python modules can run here (see [`tool_available`]).
fn cloud_init_modules_available() -> bool {
    tool_available(CLOUD_INIT_PYTHON, &["-c", "import cloudinit.util"])
}

/// Loads `user_data` with cloud-init's loader and writes its `runcmd` script with
/// cloud-init's `shellify`.
fn load(user_data: &str) -> Loaded {
    let program = "import json, sys\n\
                   from cloudinit import util\n\
                   cfg = util.load_yaml(sys.stdin.read())\n\
                   json.dump({'script': util.shellify(cfg['runcmd']), \
                   'files': cfg.get('write_files', [])}, sys.stdout)";
    python_json(CLOUD_INIT_PYTHON, program, user_data)
}

/// How a sandboxed run should go.
#[derive(Debug, Default, Clone)]
struct Faults {
    /// A program that fails, and its exit status.
    fail: Option<(&'static str, u8)>,
    /// What the download serves instead of the pinned agent binary.
    agent_binary: Option<&'static [u8]>,
    /// Remove the pinned checksum before the boot runs.
    remove_checksum: bool,
    /// Every package is already installed (a pre-baked image).
    prebaked: bool,
}

/// One sandboxed boot and what it left behind.
struct Sandbox {
    root: tempfile::TempDir,
}

impl Sandbox {
    /// Writes `boot`'s files into a fresh sandbox, relocated.
    fn new(boot: &NodeBoot) -> (Self, String) {
        let root = tempfile::tempdir().expect("temp dir");
        // What every Debian image has before cloud-init runs.
        std::fs::create_dir_all(root.path().join("usr/local/bin")).unwrap();
        std::fs::create_dir_all(root.path().join("etc")).unwrap();
        std::fs::write(root.path().join("etc/fstab"), "").unwrap();
        let sandbox = Self { root };
        let loaded = load(boot.render().expect("valid boot").expose());
        for file in &loaded.files {
            let path = PathBuf::from(sandbox.relocate(&file.path));
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, sandbox.relocate(&file.content)).unwrap();
            let mode = u32::from_str_radix(&file.permissions, 8).expect("octal mode");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        let script = sandbox.relocate(&loaded.script);
        sandbox.install_programs();
        (sandbox, script)
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.root.path().join(relative)
    }

    /// `text` with every system path the boot writes moved into the sandbox; panics
    /// if it names another absolute path, which would escape the sandbox.
    fn relocate(&self, text: &str) -> String {
        let root = self.root.path().to_str().expect("UTF-8 temp dir");
        let mut moved = text.to_owned();
        for prefix in RELOCATED {
            moved = moved.replace(prefix, &format!("{root}{prefix}"));
        }
        let separators = |c: char| c.is_whitespace() || "'\"=<>();|`".contains(c);
        for word in moved.split(separators) {
            assert!(
                !word.starts_with('/') || word.starts_with(root) || KEPT.contains(&word),
                "{word} escapes the sandbox in:\n{moved}"
            );
        }
        moved
    }

    /// The stand-ins and the real tools, each in its own directory of the `PATH`.
    fn install_programs(&self) {
        let stubs = self.path("stubs");
        let tools = self.path("tools");
        std::fs::create_dir_all(&stubs).unwrap();
        std::fs::create_dir_all(&tools).unwrap();
        std::fs::create_dir_all(self.path("tmp")).unwrap();
        let stub = self.path("stub");
        std::fs::write(&stub, STUB).unwrap();
        std::fs::set_permissions(&stub, std::fs::Permissions::from_mode(0o755)).unwrap();
        for name in STUBS {
            std::os::unix::fs::symlink(&stub, stubs.join(name)).unwrap();
        }
        for name in REAL_TOOLS {
            let real = find_program(name).unwrap_or_else(|| panic!("{name} is not installed"));
            std::os::unix::fs::symlink(real, tools.join(name)).unwrap();
        }
    }

    /// Runs `script` under `sh` with `faults`; returns its exit status.
    fn run(&self, script: &str, faults: &Faults) -> i32 {
        std::fs::write(
            self.path("agent-binary"),
            faults.agent_binary.unwrap_or(AGENT_BINARY),
        )
        .unwrap();
        if faults.remove_checksum {
            let checksum = self.relocate(AGENT_SHA256_PATH);
            std::fs::remove_file(checksum).expect("the checksum is written");
        }
        let script_path = self.path("runcmd");
        std::fs::write(&script_path, script).unwrap();
        let path = format!(
            "{}:{}",
            self.path("stubs").display(),
            self.path("tools").display()
        );
        let mut command = Command::new(find_program("sh").expect("sh"));
        command
            .arg(&script_path)
            .env_clear()
            .env("PATH", path)
            .env("HOME", self.root.path())
            .env("TMPDIR", self.path("tmp"))
            .env("SANDBOX", self.root.path());
        if faults.prebaked {
            command.env("STUB_INSTALLED", "1");
        }
        if let Some((program, status)) = faults.fail {
            command
                .env("STUB_FAIL", program)
                .env("STUB_FAIL_STATUS", status.to_string());
        }
        let output = command.output().expect("run sh");
        std::fs::write(self.path("stderr"), &output.stderr).unwrap();
        output.status.code().expect("sh exited")
    }

    fn read(&self, relative: &str) -> String {
        std::fs::read_to_string(self.path(relative)).unwrap_or_default()
    }

    /// The boot log's messages (what `logger -t sam-boot` received), in order.
    fn boot_log(&self) -> Vec<String> {
        self.read("boot.log").lines().map(str::to_owned).collect()
    }

    /// Every stand-in call, as `program arg…`.
    fn calls(&self) -> Vec<String> {
        self.read("calls").lines().map(str::to_owned).collect()
    }
}

fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// The phases `boot` runs, by name, in order.
fn rendered_phases(script: &str) -> Vec<&'static str> {
    Phase::ALL
        .iter()
        .map(|p| p.as_str())
        .filter(|name| script.contains(&format!("PHASE START: {name}'")))
        .collect()
}

/// Whether the phase named `name` runs in the background.
fn is_background(name: &str) -> bool {
    Phase::ALL
        .iter()
        .any(|p| p.as_str() == name && p.is_background())
}

/// The boot log of a boot that fails in `failed` with `status`, or completes,
/// without the `PHASE END` of background phases (see [`sequential`]). A background
/// phase fails where the boot waits for it, before the agent starts.
fn expected_log(phases: &[&str], failed: Option<(&str, u8)>) -> Vec<String> {
    let mut log = Vec::new();
    let mut running = Vec::new();
    for phase in phases {
        if *phase == "agent-start" {
            for name in running.drain(..) {
                if let Some((failed, status)) = failed
                    && failed == name
                {
                    log.push(format!("PHASE FAILED: {name} (exit {status})"));
                    return log;
                }
            }
        }
        log.push(format!("PHASE START: {phase}"));
        if is_background(phase) {
            running.push(*phase);
            continue;
        }
        if let Some((name, status)) = failed
            && name == *phase
        {
            log.push(format!("PHASE FAILED: {name} (exit {status})"));
            return log;
        }
        log.push(format!("PHASE END: {phase}"));
    }
    log.push(ALL_PHASES_COMPLETE.to_owned());
    log
}

/// `log` without the `PHASE END` lines of background phases, which land wherever
/// their command happens to end; checks each lands after its own start and before
/// the agent's.
fn sequential(log: &[String]) -> Vec<String> {
    let position = |line: &str| log.iter().position(|l| l == line);
    log.iter()
        .enumerate()
        .filter(|(at, line)| {
            let Some(name) = line
                .strip_prefix("PHASE END: ")
                .filter(|n| is_background(n))
            else {
                return true;
            };
            let started = position(&format!("PHASE START: {name}")).expect("started");
            let agent = position("PHASE START: agent-start").unwrap_or(usize::MAX);
            assert!(
                started < *at && *at < agent,
                "{name} ended out of place: {log:#?}"
            );
            false
        })
        .map(|(_, line)| line.clone())
        .collect()
}

/// The single check of a sandboxed boot: the exit status and the boot log.
fn check(boot: &NodeBoot, faults: &Faults, failed: Option<(&str, u8)>) -> Sandbox {
    let (sandbox, script) = Sandbox::new(boot);
    let phases = rendered_phases(&script);
    if let Some((phase, _)) = failed {
        assert!(phases.contains(&phase), "{phase} is not in {phases:?}");
    }
    let status = sandbox.run(&script, faults);
    let calls = format!(
        "{}\nstderr:\n{}",
        sandbox.calls().join("\n"),
        sandbox.read("stderr")
    );
    assert_eq!(
        sequential(&sandbox.boot_log()),
        expected_log(&phases, failed),
        "calls:\n{calls}"
    );
    assert_eq!(
        status,
        failed.map_or(0, |(_, status)| i32::from(status)),
        "calls:\n{calls}"
    );
    // What the VM agent's own parser makes of the journal: every phase up to the
    // failed one, which never ended, and complete only without a failure.
    let timeline = BootTimeline::from_journal_json(&sandbox.read("journal.json"));
    let read: Vec<(&str, bool)> = timeline
        .phases
        .iter()
        .map(|p| (p.name.as_str(), p.ended_at.is_some()))
        .collect();
    let ran = match failed {
        // A background phase fails where the boot waits for it: every phase before
        // the agent's start ran.
        Some((phase, _)) if is_background(phase) => {
            &phases[..phases.iter().position(|p| *p == "agent-start").unwrap()]
        }
        Some((phase, _)) => &phases[..=phases.iter().position(|p| *p == phase).unwrap()],
        None => &phases[..],
    };
    // A background phase still running when another phase failed may or may not
    // have ended by then: its flag is left out of the comparison.
    let undecided = |name: &str| {
        is_background(name) && failed.is_some_and(|(f, _)| f != name && !is_background(f))
    };
    let read: Vec<(&str, Option<bool>)> = read
        .into_iter()
        .map(|(p, ended)| (p, (!undecided(p)).then_some(ended)))
        .collect();
    let expected: Vec<(&str, Option<bool>)> = ran
        .iter()
        .map(|p| {
            let ended = failed.is_none_or(|(name, _)| name != *p);
            (*p, (!undecided(p)).then_some(ended))
        })
        .collect();
    assert_eq!(read, expected);
    assert_eq!(timeline.complete, failed.is_none());
    sandbox
}

/// What a failed boot posted to the control plane.
fn check_report(sandbox: &Sandbox, url: &str, phase: &str, status: u8) {
    let calls = sandbox.calls();
    let posts: Vec<&String> = calls
        .iter()
        .filter(|c| c.starts_with("curl ") && c.contains("boot-failed"))
        .collect();
    assert_eq!(posts.len(), 1, "{calls:#?}");
    assert!(posts[0].ends_with(&format!(" {url}")), "{}", posts[0]);
    assert!(
        calls.iter().all(|c| !c.contains(TOKEN)),
        "the token reached a command line: {calls:#?}"
    );
    let headers = sandbox.read("curl-headers");
    assert_eq!(
        headers,
        format!("Authorization: Bearer {TOKEN}\nContent-Type: application/json\n")
    );
    let mut body: serde_json::Value =
        serde_json::from_str(&sandbox.read("curl-body")).expect("the report is JSON");
    let journal = body["journal"].take();
    assert_eq!(
        body,
        serde_json::json!({
            "event": "boot_failed",
            "phase": phase,
            "exit_status": status,
            "journal": null,
        })
    );
    // The journal in the report reads as the node's own: up to the failed phase.
    let lines: Vec<String> = journal
        .as_array()
        .expect("the journal is a list")
        .iter()
        .map(ToString::to_string)
        .collect();
    let reported = BootTimeline::from_journal_json(&lines.join("\n"));
    let logged = BootTimeline::from_journal_json(&sandbox.read("journal.json"));
    let unended: Vec<&str> = reported
        .phases
        .iter()
        .filter(|p| p.ended_at.is_none())
        .map(|p| p.name.as_str())
        .filter(|name| *name == phase || !is_background(name))
        .collect();
    assert_eq!(unended, [phase], "only the failed phase never ended");
    if !is_background(phase) {
        assert_eq!(reported.phases.last().map(|p| p.name.as_str()), Some(phase));
    }
    assert_eq!(reported, logged);
    let leftovers = std::fs::read_dir(sandbox.path("tmp")).unwrap().count();
    assert_eq!(leftovers, 0, "the header file was left behind");
}

#[test]
fn every_fixture_boots_to_the_end_with_working_programs() {
    if !cloud_init_modules_available() {
        return;
    }
    for (name, boot) in fixtures() {
        let sandbox = check(&boot, &Faults::default(), None);
        let installed = std::fs::read(sandbox.path("usr/local/bin/sam-vm-agent"))
            .unwrap_or_else(|e| panic!("{name}: the agent is not installed: {e}"));
        assert_eq!(installed, AGENT_BINARY, "{name}");
        let calls = sandbox.calls();
        assert!(
            calls.iter().all(|c| !c.contains("boot-failed")),
            "{name}: {calls:#?}"
        );
        // The agent is started last.
        let last = calls.iter().rfind(|c| !c.starts_with("logger ")).unwrap();
        assert_eq!(
            last, "systemctl enable --now sam-vm-agent.service",
            "{name}"
        );
    }
}

#[test]
fn a_failing_package_install_stops_the_boot_and_reports_it() {
    if !cloud_init_modules_available() {
        return;
    }
    let faults = Faults {
        fail: Some(("apt-get", 100)),
        ..Faults::default()
    };
    let sandbox = check(&default_boot(), &faults, Some(("packages", 100)));
    let calls = sandbox.calls();
    // `apt-get update` failed, so nothing after it ran.
    let apt: Vec<&String> = calls.iter().filter(|c| c.contains("apt-get")).collect();
    assert_eq!(apt, ["apt-get update -q"], "{calls:#?}");
    for later in [
        "npm ",
        "systemctl restart",
        "update-ca-certificates",
        "sam-vm-agent",
    ] {
        assert!(
            calls.iter().all(|c| !c.contains(later)),
            "{later} ran after the failure: {calls:#?}"
        );
    }
    check_report(
        &sandbox,
        "https://sam.example.com/v1/nodes/node-01/boot-failed",
        "packages",
        100,
    );
}

#[test]
fn a_checksum_mismatch_fails_the_agent_download() {
    if !cloud_init_modules_available() {
        return;
    }
    let faults = Faults {
        agent_binary: Some(b"#!/bin/sh\necho tampered\n"),
        ..Faults::default()
    };
    let sandbox = check(&full_boot(), &faults, Some(("agent-download", 5)));
    assert!(!sandbox.path("usr/local/bin/sam-vm-agent").exists());
    assert!(!sandbox.path("usr/local/bin/sam-vm-agent.download").exists());
    check_report(
        &sandbox,
        "https://cp.example.com:8443/sam/v1/nodes/node:7_a.b/boot-failed",
        "agent-download",
        5,
    );
}

#[test]
fn the_image_pull_runs_beside_the_node_install_and_is_awaited_before_the_agent() {
    if !cloud_init_modules_available() {
        return;
    }
    let boot = full_boot();
    let sandbox = check(&boot, &Faults::default(), None);
    let calls = sandbox.calls();
    let at = |prefix: &str| {
        calls
            .iter()
            .position(|c| c.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix}: {calls:#?}"))
    };
    // The pull started before Node's install, and pulled the configured image.
    let pull = format!("docker pull --quiet {}", boot.lightweight_image);
    assert!(calls.contains(&pull), "{calls:#?}");
    let node_install = calls
        .iter()
        .position(|c| c.starts_with("apt-get install") && c.ends_with(" nodejs npm"))
        .unwrap_or_else(|| panic!("no Node.js install: {calls:#?}"));
    assert!(at("docker pull") < node_install, "{calls:#?}");
    // Docker restarted before the pull, never after.
    let restart = at("systemctl restart docker.service");
    assert!(restart < at("docker pull"), "{calls:#?}");
    assert_eq!(
        calls
            .iter()
            .filter(|c| c.contains("restart docker"))
            .count(),
        1,
        "{calls:#?}"
    );
    // The agent's configuration names the same image.
    let config: serde_json::Value =
        serde_json::from_str(&sandbox.read("etc/sam/agent.json")).expect("agent.json");
    assert_eq!(config["lightweight_image"], boot.lightweight_image.as_str());
}

#[test]
fn a_failed_image_pull_stops_the_boot_before_the_agent_starts() {
    if !cloud_init_modules_available() {
        return;
    }
    let faults = Faults {
        fail: Some(("docker", 125)),
        ..Faults::default()
    };
    let sandbox = check(&default_boot(), &faults, Some(("image-pull", 125)));
    let calls = sandbox.calls();
    assert!(
        calls.iter().all(|c| !c.contains("sam-vm-agent.service")),
        "the agent started: {calls:#?}"
    );
    check_report(
        &sandbox,
        "https://sam.example.com/v1/nodes/node-01/boot-failed",
        "image-pull",
        125,
    );
}

#[test]
fn a_prebaked_image_boots_without_apt() {
    if !cloud_init_modules_available() {
        return;
    }
    let faults = Faults {
        prebaked: true,
        ..Faults::default()
    };
    for boot in [default_boot(), full_boot()] {
        let sandbox = check(&boot, &faults, None);
        let calls = sandbox.calls();
        assert!(
            calls.iter().all(|c| !c.starts_with("apt-get")),
            "apt ran on a pre-baked image: {calls:#?}"
        );
        assert!(
            calls.iter().any(|c| c.starts_with("dpkg-query")),
            "{calls:#?}"
        );
    }
}

/// The package check against this machine's real `dpkg-query`: packages it has
/// are skipped, a missing one goes to (the stand-in) apt.
#[test]
fn installed_packages_are_found_by_the_real_dpkg_query() {
    if !cloud_init_modules_available()
        || !crate::support::tool_available("dpkg-query", &["--version"])
    {
        return;
    }
    let (sandbox, _) = Sandbox::new(&default_boot());
    let script = sandbox.path("usr/local/lib/sam-boot/install-packages.sh");
    let tools = sandbox.path("real");
    std::fs::create_dir_all(&tools).unwrap();
    for name in ["dpkg-query", "grep", "env", "sh"] {
        std::os::unix::fs::symlink(find_program(name).expect(name), tools.join(name)).unwrap();
    }
    std::os::unix::fs::symlink(sandbox.path("stub"), tools.join("apt-get")).unwrap();
    let run = |packages: &[&str]| {
        let output = Command::new(find_program("sh").unwrap())
            .arg(&script)
            .args(packages)
            .env_clear()
            .env("PATH", &tools)
            .env("SANDBOX", sandbox.root.path())
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        std::fs::read_to_string(sandbox.path("calls")).unwrap_or_default()
    };
    // Every Debian system has these two.
    assert_eq!(run(&["dpkg", "coreutils"]), "");
    let calls = run(&["dpkg", "sam-no-such-package"]);
    assert!(
        calls.ends_with("apt-get install -y -q --no-install-recommends -o DPkg::Lock::Timeout=300 sam-no-such-package\n"),
        "{calls}"
    );
    assert!(calls.starts_with("apt-get update -q\n"), "{calls}");
}

#[test]
fn a_missing_checksum_fails_the_agent_download() {
    if !cloud_init_modules_available() {
        return;
    }
    let faults = Faults {
        remove_checksum: true,
        ..Faults::default()
    };
    let sandbox = check(&default_boot(), &faults, Some(("agent-download", 3)));
    assert!(!sandbox.path("usr/local/bin/sam-vm-agent").exists());
}

#[test]
fn an_unreachable_download_fails_even_when_the_report_cannot_be_sent() {
    if !cloud_init_modules_available() {
        return;
    }
    // curl fails for the download and for the report: the boot still stops, says
    // where, and keeps the download's status.
    let faults = Faults {
        fail: Some(("curl", 7)),
        ..Faults::default()
    };
    let (sandbox, script) = Sandbox::new(&default_boot());
    let status = sandbox.run(&script, &faults);
    assert_eq!(status, 4);
    let log = sequential(&sandbox.boot_log());
    let phases = rendered_phases(&script);
    let mut expected = expected_log(&phases, Some(("agent-download", 4)));
    expected.push("the boot failure could not be reported".to_owned());
    assert_eq!(log, expected);
}

/// The metadata block of each provider, run against stand-in `iptables` and
/// `ip6tables`: which rules it inserts.
#[test]
fn the_metadata_block_covers_every_endpoint_of_the_provider() {
    if !cloud_init_modules_available() {
        return;
    }
    let rules = |provider: ProviderKind| -> Vec<String> {
        let boot = NodeBoot {
            provider,
            ..default_boot()
        };
        let (sandbox, _) = Sandbox::new(&boot);
        let block = sandbox.path("usr/local/lib/sam-boot/metadata-block.sh");
        let script = format!("'{}'\n", block.display());
        assert_eq!(sandbox.run(&script, &Faults::default()), 0);
        sandbox
            .calls()
            .into_iter()
            .filter(|c| c.contains(" -I "))
            .collect()
    };
    let expected = |addresses: &[(&str, &str)]| -> Vec<String> {
        let mut rules = Vec::new();
        for (tables, address) in addresses {
            rules.push(format!("{tables} -I DOCKER-USER -d {address} -j REJECT"));
            rules.push(format!(
                "{tables} -I OUTPUT -d {address} -m owner --uid-owner sam -j REJECT"
            ));
        }
        rules
    };
    let by_provider: BTreeMap<&str, Vec<String>> = [
        ("scaleway", ProviderKind::Scaleway),
        ("hetzner", ProviderKind::Hetzner),
        ("gcp", ProviderKind::Gcp),
    ]
    .into_iter()
    .map(|(name, provider)| (name, rules(provider)))
    .collect();
    assert_eq!(
        by_provider["scaleway"],
        expected(&[
            ("iptables", "169.254.42.42/32"),
            ("ip6tables", "fd00:42::42/128")
        ])
    );
    for name in ["hetzner", "gcp"] {
        assert_eq!(
            by_provider[name],
            expected(&[("iptables", "169.254.169.254/32")]),
            "{name}"
        );
    }
}

/// The sandbox refuses a path it would not relocate.
#[test]
#[should_panic(expected = "/var/log/boot escapes the sandbox")]
fn the_sandbox_refuses_an_escaping_path() {
    let sandbox = Sandbox {
        root: tempfile::tempdir().unwrap(),
    };
    let relocated = sandbox.relocate("cat /etc/sam/x > /dev/null");
    assert!(relocated.contains(sandbox.root.path().to_str().unwrap()));
    sandbox.relocate("echo done >>/var/log/boot");
}
