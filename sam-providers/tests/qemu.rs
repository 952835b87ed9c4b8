//! The QEMU provider against real QEMU and a real Debian image built by the
//! provider's own image builder: a VM boots from user data with Debian's
//! cloud-init, reaches the control plane's loopback port and nothing else, and
//! every QEMU process of the tests is gone when they end.
//!
//! Needs root (debootstrap), `qemu-system-x86_64`, `qemu-img`, `socat` and
//! `debootstrap`;
//! without them each test skips with a notice, except on CI (`CI=true`), where
//! `.ci/run` installs them and their absence fails the test. The image is built
//! once into `<target>/tmp/qemu-images` (about three minutes) and reused.

use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

use sam_core::testkit::provider::spec;
use sam_core::{ErrorCategory, Labels, Provider, VmState};
use sam_providers::qemu::{Accel, BaseImage, ImageRecipe, QemuConfig, QemuProvider, image};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};

/// Whether the machine can run these tests; prints why not, and fails on CI.
fn available() -> bool {
    let missing: Vec<&str> = [
        ("qemu-system-x86_64", "--version"),
        ("qemu-img", "--version"),
        ("socat", "-V"),
    ]
    .into_iter()
    .filter(|(program, arg)| {
        !std::process::Command::new(program)
            .arg(arg)
            .output()
            .is_ok_and(|o| o.status.success())
    })
    .map(|(program, _)| program)
    .collect();
    let tools = image::check_tools().err().map(|e| e.to_string());
    if missing.is_empty() && tools.is_none() {
        return true;
    }
    let why = format!("missing {missing:?}; {}", tools.unwrap_or_default());
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "the QEMU tests cannot run ({why}), and CI=true requires them (.ci/run installs them)"
    );
    let _ = writeln!(std::io::stderr(), "notice: skipping the QEMU test: {why}");
    false
}

/// The test image, built once per target directory.
fn test_image() -> BaseImage {
    static IMAGE: std::sync::OnceLock<BaseImage> = std::sync::OnceLock::new();
    IMAGE
        .get_or_init(|| {
            let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("qemu-images");
            image::build(&ImageRecipe::default(), &cache, &mut |stage, elapsed| {
                let _ = writeln!(
                    std::io::stderr(),
                    "qemu image: {} ({:.0?})",
                    stage.describe(),
                    elapsed
                );
            })
            .expect("the base image builds")
        })
        .clone()
}

/// A loopback "control plane" that records the first line of each request.
async fn recorder() -> (u16, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut line = String::new();
                let mut reader = tokio::io::BufReader::new(read);
                if reader.read_line(&mut line).await.is_ok() {
                    let _ = tx.send(line.trim().to_owned());
                }
                let _ = write
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    )
                    .await;
            });
        }
    });
    (port, rx)
}

fn provider(root: &Path, control_plane_port: Option<u16>, accel: Accel) -> QemuProvider {
    let mut config = QemuConfig::new(root, test_image());
    config.control_plane_port = control_plane_port;
    config.accel = accel;
    QemuProvider::new(config).expect("a valid config")
}

/// QEMU processes whose command line names `root`.
fn qemu_processes(root: &Path) -> Vec<u32> {
    let needle = root.display().to_string();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
                .is_ok_and(|c| c.contains("qemu-system") && c.contains(&needle))
        })
        .collect()
}

/// Waits up to `limit` for no QEMU process of `root` to be left.
async fn none_left(root: &Path, limit: Duration) -> Vec<u32> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let left = qemu_processes(root);
        if left.is_empty() || tokio::time::Instant::now() > deadline {
            return left;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_vm_boots_from_user_data_and_reaches_only_the_control_plane() {
    if !available() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let (port, mut requests) = recorder().await;
    let qemu = provider(root.path(), Some(port), Accel::Auto);
    let accel = qemu.accel().await;
    let mut spec = spec(&qemu, "boot");
    let nonce = format!("n{}", std::process::id());
    // The guest reports once it ran the user data, then tries the outside world
    // (a public address and the host's own gateway): with the network restricted,
    // only the control plane's forward answers.
    spec.user_data = format!(
        "#cloud-config\nruncmd:\n  - [ sh, -c, 'curl -sS -m 20 http://10.0.2.100/booted/{nonce}; \
         if curl -sS -m 5 http://1.1.1.1/ || curl -sS -m 5 http://10.0.2.2:{port}/; \
         then curl -sS -m 20 http://10.0.2.100/escaped/{nonce}; \
         else curl -sS -m 20 http://10.0.2.100/contained/{nonce}; fi' ]\n"
    );
    let started = std::time::Instant::now();
    let vm = qemu.create_vm(&spec).await.expect("create");
    assert_eq!(vm.state, VmState::Pending);
    let running = qemu.poll_create(&vm).await.expect("the VM runs");
    assert_eq!(running.state, VmState::Running);
    assert!(
        running
            .address
            .as_deref()
            .is_some_and(|a| a.starts_with("127.0.0.1:")),
        "{running:?}"
    );

    let mut seen = Vec::new();
    let outcome = tokio::time::timeout(Duration::from_secs(600), async {
        while let Some(line) = requests.recv().await {
            seen.push(line.clone());
            if line.contains("/contained/") || line.contains("/escaped/") {
                return line;
            }
        }
        String::new()
    })
    .await;
    let booted = started.elapsed();
    let console = root
        .path()
        .join("vms")
        .join(vm.id.as_str())
        .join("console.log");
    let console = std::fs::read_to_string(console).unwrap_or_default();
    let tail: Vec<&str> = console.lines().rev().take(40).collect();
    let line = outcome.unwrap_or_else(|_| {
        panic!(
            "no word from the guest in 10 minutes; requests {seen:?}; console tail:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )
    });
    assert!(
        seen.iter().any(|l| l.contains(&format!("/booted/{nonce}"))),
        "{seen:?}"
    );
    assert!(line.contains(&format!("/contained/{nonce}")), "{seen:?}");
    let _ = writeln!(
        std::io::stderr(),
        "qemu: {accel:?} boot to runcmd in {booted:.1?}"
    );

    // Listed by its labels, then deleted: no process, no files.
    let listed = qemu.list_vms(&spec.labels).await.unwrap();
    assert_eq!(listed.len(), 1);
    qemu.delete_vm(&vm.id).await.expect("delete");
    assert_eq!(qemu.get_vm(&vm.id).await.unwrap(), None);
    assert!(!root.path().join("vms").join(vm.id.as_str()).exists());
    assert_eq!(
        none_left(root.path(), Duration::from_secs(10)).await,
        Vec::<u32>::new()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_provider_adopts_its_vms_and_a_dead_vm_reads_failed() {
    if !available() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let first = provider(root.path(), None, Accel::Tcg);
    let spec = spec(&first, "adopt");
    let vm = first.create_vm(&spec).await.expect("create");
    let second = provider(root.path(), None, Accel::Tcg);
    let adopted = second.list_vms(&spec.labels).await.unwrap();
    assert_eq!(adopted.len(), 1);
    assert_eq!(adopted[0].state, VmState::Running);

    // QEMU killed from outside: the VM reads failed (it cannot start again), and
    // its creation fails.
    for pid in qemu_processes(root.path()) {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
    assert_eq!(
        none_left(root.path(), Duration::from_secs(10)).await,
        Vec::<u32>::new()
    );
    let mut stopped = VmState::Running;
    for _ in 0..100 {
        stopped = second
            .get_vm(&vm.id)
            .await
            .unwrap()
            .expect("recorded")
            .state;
        if stopped == VmState::Failed {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(stopped, VmState::Failed);
    let error = first.poll_create(&vm).await.expect_err("QEMU is gone");
    assert!(error.to_string().contains("exited"), "{error}");
    second.delete_vm(&vm.id).await.unwrap();
    assert!(second.list_vms(&Labels::new()).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupt_image_fails_the_vm_with_its_reason_and_leaks_nothing() {
    if !available() {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let images = tempfile::tempdir().unwrap();
    let good = test_image();
    let bad = BaseImage::in_dir(images.path());
    std::fs::write(&bad.disk, b"not a disk image").unwrap();
    std::fs::write(&bad.kernel, b"not a kernel").unwrap();
    std::fs::copy(&good.initrd, &bad.initrd).unwrap();
    let mut config = QemuConfig::new(root.path(), bad);
    config.accel = Accel::Tcg;
    let qemu = QemuProvider::new(config).unwrap();
    let vm = qemu
        .create_vm(&spec(&qemu, "corrupt"))
        .await
        .expect("QEMU starts");
    let mut outcome = qemu.poll_create(&vm).await;
    for _ in 0..200 {
        if outcome.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        outcome = qemu.poll_create(&vm).await;
    }
    let error = outcome.expect_err("a kernel that is not one ends QEMU");
    assert!(error.to_string().contains("node.log"), "{error}");
    // The VM reads failed, with QEMU's own words as the reason the control plane
    // shows when it replaces the node.
    let failed = qemu.get_vm(&vm.id).await.unwrap().expect("recorded");
    assert_eq!(failed.state, VmState::Failed);
    let reason = failed.failure.expect("a failed VM says why");
    assert!(
        reason.contains("kernel") && reason.contains("node.log"),
        "{reason}"
    );
    qemu.delete_vm(&vm.id).await.unwrap();
    assert_eq!(
        none_left(root.path(), Duration::from_secs(10)).await,
        Vec::<u32>::new()
    );
}

/// A 64 KiB tmpfs mounted on a new directory, unmounted when dropped.
struct TinyDisk(tempfile::TempDir);

impl TinyDisk {
    /// `None`, with a notice, where this process may not mount (not root, or no
    /// `CAP_SYS_ADMIN`); on CI that fails the test.
    fn mount() -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
            .arg(dir.path())
            .output()
            .is_ok_and(|o| o.status.success());
        if mounted {
            return Some(Self(dir));
        }
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "cannot mount a tmpfs for the full-disk test, and CI=true requires it"
        );
        let _ = writeln!(
            std::io::stderr(),
            "notice: skipping the full-disk test: cannot mount a tmpfs here"
        );
        None
    }
}

impl Drop for TinyDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.0.path())
            .status();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_is_a_quota_error_that_names_the_disk_and_leaks_nothing() {
    if !available() {
        return;
    }
    let Some(disk) = TinyDisk::mount() else {
        return;
    };
    let root = disk.0.path().join("qemu");
    let mut config = QemuConfig::new(&root, test_image());
    config.accel = Accel::Tcg;
    let qemu = QemuProvider::new(config).unwrap();
    // Fill what is left, so the VM's first file cannot be written.
    let _ = std::fs::write(disk.0.path().join("filler"), vec![0_u8; 64 * 1024]);
    let error = qemu
        .create_vm(&spec(&qemu, "full"))
        .await
        .expect_err("nothing fits on a full disk");
    assert_eq!(error.category(), ErrorCategory::QuotaExceeded, "{error}");
    assert!(error.to_string().contains("no space left"), "{error}");
    assert!(qemu.list_vms(&Labels::new()).await.unwrap().is_empty());
    assert_eq!(
        none_left(&root, Duration::from_secs(5)).await,
        Vec::<u32>::new()
    );
}

/// Keeps the root directory alive as long as the provider, for the conformance
/// suite; its VMs are deleted by the suite, and a drop kills any left.
struct Fixture {
    provider: QemuProvider,
    root: tempfile::TempDir,
}

impl std::ops::Deref for Fixture {
    type Target = QemuProvider;
    fn deref(&self) -> &QemuProvider {
        &self.provider
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for pid in qemu_processes(self.root.path()) {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

/// The conformance suite with real QEMU processes; on a machine without QEMU (the
/// notice says so) it checks the provider's bookkeeping with stand-ins: a "QEMU"
/// that runs until killed and a "qemu-img" that succeeds.
async fn fixture() -> Fixture {
    let root = tempfile::tempdir().unwrap();
    let provider = if available() {
        provider(root.path(), None, Accel::Tcg)
    } else {
        let tools = root.path().join("stand-ins");
        std::fs::create_dir(&tools).unwrap();
        let image = BaseImage::in_dir(&tools);
        for path in [&image.disk, &image.kernel, &image.initrd] {
            std::fs::write(path, b"x").unwrap();
        }
        let script = |name: &str, body: &str| {
            let path = tools.join(name);
            std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .unwrap();
            path
        };
        let mut config = QemuConfig::new(root.path(), image);
        // It answers the provider's `--version` check at once, as QEMU does; before,
        // that check waited out the stand-in's sleep, ten minutes per case.
        config.qemu = script(
            "qemu-system-x86_64",
            "[ \"$1\" = --version ] && exit 0\nexec sleep 600",
        );
        config.qemu_img = script("qemu-img", "exit 0");
        config.socat = script("socat", "exit 0");
        config.accel = Accel::Tcg;
        QemuProvider::new(config).unwrap()
    };
    Fixture { provider, root }
}

mod conformance {
    sam_core::provider_conformance!(super::fixture());
}
