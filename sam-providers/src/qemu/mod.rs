//! Nodes as QEMU virtual machines on this machine: isolated VMs for agents, booted
//! from the same cloud-init user data as a cloud node.
//!
//! A VM is a copy-on-write overlay of the base image ([`image`]), a NoCloud seed
//! (the spec's user data and the VM's meta-data, presented to the guest as a FAT
//! volume labelled `cidata` by QEMU's `vvfat` driver, so no seed image is built) and
//! one QEMU process. QEMU's user-mode network is restricted: the guest reaches
//! nothing but the control plane, which [`CONTROL_PLANE_GUEST_ADDRESS`] forwards to a
//! loopback port of this machine (QEMU starts `socat` for each connection: a
//! forward to a socket would carry one connection only), and the VM agent's port is
//! forwarded to a free loopback port here; nothing listens beyond loopback. Labels, processes and
//! ports are kept in a locked state file as with the local provider, so listing by
//! label, the orphan sweep and adoption after a restart work the same way.
//!
//! KVM is used when a short probe boot shows that it works, TCG otherwise (nested
//! KVM often fails); the choice is logged.

pub mod image;

use std::net::SocketAddrV4;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use async_trait::async_trait;
use sam_core::{
    Catalog, ErrorCategory, Labels, Provider, ProviderCapabilities, ProviderError, ProviderKind,
    VmId, VmInstance, VmSpec,
};
use serde::{Deserialize, Serialize};
use tokio::sync::OnceCell;

pub use self::image::{BaseImage, ImageError, ImageRecipe};
use crate::error::{Error, Result};
use crate::process::{Launch, NODE_LOG, ProcessNodes, io_error, write_private_file};

const KIND: ProviderKind = ProviderKind::Qemu;

/// Where a guest reaches the control plane: QEMU forwards this address to
/// [`QemuConfig::control_plane_port`] on this machine's loopback. A node's control
/// plane URL is `http://10.0.2.100/`.
pub const CONTROL_PLANE_GUEST_ADDRESS: SocketAddrV4 = sam_core::QEMU_CONTROL_PLANE_ADDRESS;
/// The serial console of a VM, in its directory: the kernel's and cloud-init's output.
pub const CONSOLE_LOG: &str = "console.log";
/// How long the KVM probe boot may take before KVM counts as not working.
const PROBE_TIMEOUT: Duration = Duration::from_secs(60);

/// How QEMU runs the guest's CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Accel {
    /// KVM when the probe boot works, TCG otherwise.
    Auto,
    /// Hardware virtualisation (`-accel kvm -cpu host`).
    Kvm,
    /// Software emulation (`-accel tcg,thread=multi -cpu max`): slow, works everywhere.
    Tcg,
}

/// Settings of [`QemuProvider`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QemuConfig {
    /// Where the state file and one directory per VM live.
    pub root_dir: PathBuf,
    /// The image VMs boot from.
    pub image: BaseImage,
    /// `qemu-system-x86_64`.
    pub qemu: PathBuf,
    /// `qemu-img`, which makes each VM's overlay.
    pub qemu_img: PathBuf,
    /// `socat`, which carries each guest connection to the control plane.
    pub socat: PathBuf,
    /// How the guest's CPU runs.
    pub accel: Accel,
    /// The port the VM agent listens on inside the guest.
    pub agent_port: u16,
    /// The loopback port of this machine the guest's [`CONTROL_PLANE_GUEST_ADDRESS`]
    /// reaches (the control plane's callbacks); `None` forwards nothing.
    pub control_plane_port: Option<u16>,
    /// The loopback port of an HTTP proxy for apt on this machine (apt-cacher-ng,
    /// say), which the guest's [`image::APT_PROXY_GUEST_ADDRESS`] reaches: how a
    /// node booted from a bare image installs its packages. `None` forwards
    /// nothing, and apt in the guest reaches no mirror.
    pub apt_proxy_port: Option<u16>,
}

impl QemuConfig {
    /// VMs under `root_dir` booting `image`, with QEMU from `PATH`, the accelerator
    /// chosen by probe, and the agent on port 8080.
    pub fn new(root_dir: impl Into<PathBuf>, image: BaseImage) -> Self {
        Self {
            root_dir: root_dir.into(),
            image,
            qemu: "qemu-system-x86_64".into(),
            qemu_img: "qemu-img".into(),
            socat: "socat".into(),
            accel: Accel::Auto,
            agent_port: 8080,
            control_plane_port: None,
            apt_proxy_port: None,
        }
    }
}

/// Runs each node as a QEMU VM on this machine (see the module documentation).
#[derive(Debug)]
pub struct QemuProvider {
    config: QemuConfig,
    catalog: Catalog,
    nodes: ProcessNodes,
    accel: OnceCell<Accel>,
}

impl QemuProvider {
    /// Checks the config: QEMU and `qemu-img` run, the image is complete.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the field: a missing QEMU (with the Debian
    /// package to install), a missing or empty image file, a zero agent port;
    /// [`Error::Setup`] when the root directory cannot be created.
    pub fn new(config: QemuConfig) -> Result<Self> {
        for (field, program, flag, package) in [
            ("qemu", &config.qemu, "--version", "qemu-system-x86"),
            ("qemu_img", &config.qemu_img, "--version", "qemu-utils"),
            ("socat", &config.socat, "-V", "socat"),
        ] {
            let works = Command::new(program)
                .arg(flag)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !works {
                return Err(Error::config(
                    KIND,
                    field,
                    format!(
                        "`{} {flag}` does not run: install the Debian package {package}",
                        program.display()
                    ),
                ));
            }
        }
        config
            .image
            .check()
            .map_err(|e| Error::config(KIND, "image", e.to_string()))?;
        if config.agent_port == 0 {
            return Err(Error::config(KIND, "agent_port", "must not be 0"));
        }
        let mut config = config;
        // QEMU runs in each VM's own directory: a relative image path (`sam run
        // --qemu-image ./images/x`) would name nothing there.
        for path in [
            &mut config.image.disk,
            &mut config.image.kernel,
            &mut config.image.initrd,
        ] {
            *path = std::fs::canonicalize(&*path)
                .map_err(|e| Error::config(KIND, "image", format!("{}: {e}", path.display())))?;
        }
        // The forward's command goes into QEMU's comma-separated option list and
        // through a shell: an absolute path of plain characters only.
        config.socat = find_program(&config.socat).ok_or_else(|| {
            Error::config(KIND, "socat", "not found: install the Debian package socat")
        })?;
        if !config.socat.to_str().is_some_and(|p| {
            p.chars()
                .all(|c| c.is_ascii_alphanumeric() || "/._-+".contains(c))
        }) {
            return Err(Error::config(
                KIND,
                "socat",
                "its path must be plain (letters, digits, / . _ - +)",
            ));
        }
        let nodes = ProcessNodes::new(KIND, &config.root_dir)?;
        let accel = OnceCell::new_with(match config.accel {
            Accel::Auto => None,
            fixed => Some(fixed),
        });
        Ok(Self {
            config,
            catalog: crate::catalog(KIND, &[]),
            nodes,
            accel,
        })
    }

    /// The accelerator VMs use: the configured one, or the probe's verdict (probed
    /// once, logged).
    pub async fn accel(&self) -> Accel {
        *self
            .accel
            .get_or_init(|| async {
                let chosen = probe_kvm(&self.config).await;
                tracing::info!(accel = ?chosen, "QEMU accelerator chosen by probe boot");
                chosen
            })
            .await
    }

    /// Writes the overlay and the seed, then starts QEMU.
    fn spawn(
        &self,
        spec: &VmSpec,
        accel: Accel,
        launch: &Launch<'_>,
    ) -> Result<Child, ProviderError> {
        let dir = launch.data_dir;
        let shape = self
            .catalog
            .server_types
            .iter()
            .find(|t| t.name == spec.server_type);
        let Some(shape) = shape else {
            return Err(ProviderError::new(
                KIND,
                ErrorCategory::InvalidConfig,
                format!("unknown server type {}", spec.server_type),
            ));
        };
        // The overlay: the base image stays untouched, each VM writes its own blocks.
        let disk = dir.join("disk.qcow2");
        let base = std::fs::canonicalize(&self.config.image.disk)
            .map_err(|e| io_error(KIND, "find the base image", e))?;
        let output = Command::new(&self.config.qemu_img)
            .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
            .arg(&base)
            .arg(&disk)
            .arg(format!("{}G", shape.disk_gb.unwrap_or(10)))
            .stdin(Stdio::null())
            .output()
            .map_err(|e| io_error(KIND, "run qemu-img", e))?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let what = format!("qemu-img could not create the VM's disk: {}", stderr.trim());
            if stderr.contains("No space left on device") {
                return Err(crate::process::disk_full(KIND, &what));
            }
            return Err(ProviderError::new(KIND, ErrorCategory::Unknown, what));
        }
        // The NoCloud seed: the user data holds the node's token, owner only.
        let seed = dir.join("seed");
        std::fs::create_dir(&seed).map_err(|e| io_error(KIND, "create the seed", e))?;
        write_private_file(&seed.join("user-data"), spec.user_data.as_bytes())
            .map_err(|e| io_error(KIND, "write the user data", e))?;
        let meta = format!(
            "instance-id: {}\nlocal-hostname: {}\n",
            launch.id,
            hostname(&spec.name)
        );
        write_private_file(&seed.join("meta-data"), meta.as_bytes())
            .map_err(|e| io_error(KIND, "write the meta-data", e))?;

        let log = std::fs::File::create(dir.join(NODE_LOG))
            .map_err(|e| io_error(KIND, "create the VM log", e))?;
        let log_err = log
            .try_clone()
            .map_err(|e| io_error(KIND, "create the VM log", e))?;
        let mut command = Command::new(&self.config.qemu);
        command
            .args(vm_args(
                &self.config,
                accel,
                shape.vcpu,
                shape.memory_gb,
                dir,
                launch.port,
            ))
            .current_dir(dir)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        command.spawn().map_err(|e| {
            ProviderError::new(
                KIND,
                ErrorCategory::InvalidConfig,
                format!("could not start {}", self.config.qemu.display()),
            )
            .with_source(e)
        })
    }
}

/// `program` as given when it is a path, else found on `PATH`.
fn find_program(program: &Path) -> Option<PathBuf> {
    if program.components().count() > 1 {
        return program.is_file().then(|| program.to_path_buf());
    }
    image::find_program(program.to_str()?)
}

/// A host name from a VM name: lower-case letters, digits and hyphens, at most 63.
fn hostname(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    let trimmed = cleaned.trim_matches('-');
    if trimmed.is_empty() {
        "sam-node".into()
    } else {
        trimmed.to_owned()
    }
}

/// QEMU's arguments for one VM.
fn vm_args(
    config: &QemuConfig,
    accel: Accel,
    vcpu: u32,
    memory_gb: u32,
    dir: &Path,
    host_port: u16,
) -> Vec<String> {
    let path = |p: &Path| p.display().to_string();
    let (accel, cpu) = match accel {
        Accel::Kvm => ("kvm", "host"),
        Accel::Tcg | Accel::Auto => ("tcg,thread=multi", "max"),
    };
    let mut netdev = format!(
        "user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:{host_port}-:{}",
        config.agent_port
    );
    let forwards = [
        (CONTROL_PLANE_GUEST_ADDRESS, config.control_plane_port),
        (image::APT_PROXY_GUEST_ADDRESS, config.apt_proxy_port),
    ];
    for (guest, port) in forwards {
        if let Some(port) = port {
            netdev.push_str(&format!(
                ",guestfwd=tcp:{}:{}-cmd:{} - TCP:127.0.0.1:{port}",
                guest.ip(),
                guest.port(),
                config.socat.display()
            ));
        }
    }
    vec![
        "-accel".into(),
        accel.into(),
        "-cpu".into(),
        cpu.into(),
        "-smp".into(),
        vcpu.max(1).to_string(),
        "-m".into(),
        format!("{}M", memory_gb.max(1) * 1024),
        "-display".into(),
        "none".into(),
        "-monitor".into(),
        "none".into(),
        "-serial".into(),
        format!("file:{}", path(&dir.join(CONSOLE_LOG))),
        "-no-reboot".into(),
        "-kernel".into(),
        path(&config.image.kernel),
        "-initrd".into(),
        path(&config.image.initrd),
        "-append".into(),
        "root=/dev/vda rw console=ttyS0".into(),
        "-drive".into(),
        format!(
            "file={},if=virtio,format=qcow2",
            path(&dir.join("disk.qcow2"))
        ),
        "-drive".into(),
        format!(
            "if=virtio,driver=vvfat,dir={},label=cidata,read-only=on",
            path(&dir.join("seed"))
        ),
        "-netdev".into(),
        netdev,
        "-device".into(),
        "virtio-net-pci,netdev=net0".into(),
    ]
}

/// Boots the kernel under KVM with no root file system: a working KVM reaches the
/// kernel's panic (and `-no-reboot` ends QEMU) within seconds; a broken one aborts,
/// reports an internal error or hangs.
async fn probe_kvm(config: &QemuConfig) -> Accel {
    if !Path::new("/dev/kvm").exists() {
        return Accel::Tcg;
    }
    let mut command = tokio::process::Command::new(&config.qemu);
    command
        .args([
            "-accel", "kvm", "-cpu", "host", "-m", "256M", "-display", "none",
        ])
        .args([
            "-monitor",
            "none",
            "-serial",
            "stdio",
            "-no-reboot",
            "-kernel",
        ])
        .arg(&config.image.kernel)
        .args(["-append", "console=ttyS0 panic=-1 root=/dev/sam-kvm-probe"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let Ok(child) = command.spawn() else {
        return Accel::Tcg;
    };
    match tokio::time::timeout(PROBE_TIMEOUT, child.wait_with_output()).await {
        Ok(Ok(output)) => {
            let text = String::from_utf8_lossy(&output.stdout);
            if output.status.success() && text.contains("Kernel panic") {
                Accel::Kvm
            } else {
                tracing::info!(status = %output.status, stderr = %String::from_utf8_lossy(&output.stderr).trim(), "KVM probe boot failed");
                Accel::Tcg
            }
        }
        _ => Accel::Tcg,
    }
}

#[async_trait]
impl Provider for QemuProvider {
    fn kind(&self) -> ProviderKind {
        KIND
    }

    fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    fn capabilities(&self) -> ProviderCapabilities {
        ProviderCapabilities::default()
    }

    async fn check_credentials(&self) -> Result<(), ProviderError> {
        // No credentials: check that the state is readable instead.
        self.nodes.load().await.map(|_| ())
    }

    async fn create_vm(&self, spec: &VmSpec) -> Result<VmInstance, ProviderError> {
        let accel = self.accel().await;
        self.nodes
            .create(spec, |launch| self.spawn(spec, accel, &launch))
            .await
    }

    async fn poll_create(&self, vm: &VmInstance) -> Result<VmInstance, ProviderError> {
        self.nodes.poll_create(vm).await
    }

    async fn get_vm(&self, id: &VmId) -> Result<Option<VmInstance>, ProviderError> {
        self.nodes.get(id).await
    }

    async fn delete_vm(&self, id: &VmId) -> Result<(), ProviderError> {
        self.nodes.delete(id).await
    }

    async fn list_vms(&self, labels: &Labels) -> Result<Vec<VmInstance>, ProviderError> {
        self.nodes.list(labels).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(dir: &Path) -> BaseImage {
        let image = BaseImage::in_dir(dir);
        for path in [&image.disk, &image.kernel, &image.initrd] {
            std::fs::write(path, b"not really").unwrap();
        }
        image
    }

    #[test]
    fn the_network_reaches_only_loopback_and_the_control_plane() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = QemuConfig::new(dir.path(), image(dir.path()));
        config.control_plane_port = Some(18080);
        config.socat = "/usr/bin/socat".into();
        let args = vm_args(&config, Accel::Tcg, 2, 2, dir.path(), 40001);
        let netdev = &args[args.iter().position(|a| a == "-netdev").unwrap() + 1];
        assert_eq!(
            netdev,
            "user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:40001-:8080,\
             guestfwd=tcp:10.0.2.100:80-cmd:/usr/bin/socat - TCP:127.0.0.1:18080"
        );
        assert!(args.windows(2).any(|w| w == ["-accel", "tcg,thread=multi"]));
        assert!(args.windows(2).any(|w| w == ["-m", "2048M"]));
        config.apt_proxy_port = Some(3142);
        let args = vm_args(&config, Accel::Tcg, 2, 2, dir.path(), 40001);
        let netdev = &args[args.iter().position(|a| a == "-netdev").unwrap() + 1];
        assert!(
            netdev
                .ends_with(",guestfwd=tcp:10.0.2.101:3142-cmd:/usr/bin/socat - TCP:127.0.0.1:3142"),
            "{netdev}"
        );
        let seed = args.iter().find(|a| a.contains("vvfat")).unwrap();
        assert!(
            seed.contains("label=cidata") && seed.contains("read-only=on"),
            "{seed}"
        );
    }

    #[test]
    fn host_names_are_dns_labels() {
        assert_eq!(hostname("sam-Node_1.x"), "sam-node-1-x");
        assert_eq!(hostname("___"), "sam-node");
        assert_eq!(hostname(&"a".repeat(80)).len(), 63);
    }

    #[test]
    fn a_missing_qemu_or_image_is_invalid_config_naming_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = QemuConfig::new(dir.path(), image(dir.path()));
        config.qemu = dir.path().join("no-qemu");
        let error = QemuProvider::new(config).unwrap_err().to_string();
        assert!(error.contains("qemu-system-x86"), "{error}");

        let empty = tempfile::tempdir().unwrap();
        let mut config = QemuConfig::new(dir.path(), BaseImage::in_dir(empty.path()));
        config.qemu = "true".into();
        config.qemu_img = "true".into();
        config.socat = "true".into();
        let error = QemuProvider::new(config).unwrap_err().to_string();
        assert!(error.contains("sam image build"), "{error}");
    }

    /// QEMU runs in the VM's directory: an image named relative to this process's
    /// directory is made absolute (a relative `--qemu-image` once failed every VM).
    #[test]
    fn a_relative_image_path_is_made_absolute() {
        let dir = tempfile::tempdir().unwrap();
        let cwd = std::env::current_dir().unwrap();
        let up: PathBuf = cwd.components().skip(1).map(|_| "..").collect();
        let relative = up.join(dir.path().strip_prefix("/").unwrap());
        let mut config = QemuConfig::new(dir.path(), image(&relative));
        assert!(config.image.kernel.is_relative());
        config.qemu = "true".into();
        config.qemu_img = "true".into();
        config.socat = "true".into();
        let provider = QemuProvider::new(config).unwrap();
        for path in [
            &provider.config.image.disk,
            &provider.config.image.kernel,
            &provider.config.image.initrd,
        ] {
            assert!(path.is_absolute() && path.is_file(), "{}", path.display());
        }
    }
}
