//! The base image QEMU nodes boot from, built here from Debian's packages.
//!
//! [`build`] runs `debootstrap` into a scratch directory, configures the root file
//! system for a NoCloud boot (cloud-init reads the seed volume the provider attaches;
//! no other data source is probed), copies the kernel and initrd out, and turns the
//! tree into a raw ext4 image with `mkfs.ext4 -d`. Nothing is downloaded but Debian
//! packages. Images are cached under a directory named by the recipe's content key,
//! so a changed recipe builds a new image and an unchanged one is reused.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::Digest as _;

/// Bumped whenever [`build`] changes what it does with a recipe.
const RECIPE_VERSION: u32 = 2;
/// What every node image holds: an init system and a kernel, cloud-init (with the
/// dependency debootstrap does not resolve), and what the boot phases install on a
/// plain image (so a node booted from this image skips apt entirely), unless the
/// recipe is [`ImageRecipe::bare`].
pub const BASE_PACKAGES: &[&str] = &[
    "systemd-sysv",
    "udev",
    "kmod",
    "linux-image-cloud-amd64",
    "initramfs-tools",
    "cloud-init",
    "python3-cffi-backend",
    "procps",
    "iproute2",
    "sudo",
    "ca-certificates",
    "curl",
    "git",
    "iptables",
];

/// The part of [`BASE_PACKAGES`] the boot's `packages` phase installs where they
/// are missing: what a bare image leaves out.
pub const BOOT_PACKAGES: &[&str] = &["ca-certificates", "curl", "git", "iptables"];

/// Where every image's apt looks for its HTTP proxy: a guest address that
/// [`super::QemuConfig::apt_proxy_port`] forwards to a proxy on this machine's
/// loopback (apt-cacher-ng, say). Without the forward apt reaches nothing, as the
/// guest reaches nothing else.
pub const APT_PROXY_GUEST_ADDRESS: std::net::SocketAddrV4 =
    std::net::SocketAddrV4::new(std::net::Ipv4Addr::new(10, 0, 2, 101), 3142);

/// The files of a built image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseImage {
    /// The raw ext4 root file system (a VM gets a copy-on-write overlay of it).
    pub disk: PathBuf,
    /// The kernel.
    pub kernel: PathBuf,
    /// Its initrd.
    pub initrd: PathBuf,
}

impl BaseImage {
    /// The image files as [`build`] lays them out in `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            disk: dir.join("disk.raw"),
            kernel: dir.join("vmlinuz"),
            initrd: dir.join("initrd.img"),
        }
    }

    /// Checks that every file is there and not empty.
    ///
    /// # Errors
    /// [`ImageError::Missing`] naming the first file that is not.
    pub fn check(&self) -> Result<(), ImageError> {
        for path in [&self.disk, &self.kernel, &self.initrd] {
            let ok = std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.len() > 0);
            if !ok {
                return Err(ImageError::Missing { path: path.clone() });
            }
        }
        Ok(())
    }
}

/// What to build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecipe {
    /// The Debian suite (`bookworm`).
    pub suite: String,
    /// The Debian mirror debootstrap installs from.
    pub mirror: String,
    /// Packages beyond [`BASE_PACKAGES`] (what a pre-baked image adds: `nodejs`,
    /// `npm`, `docker.io`, …).
    pub extra_packages: Vec<String>,
    /// The image's size in GiB (the root file system; a VM's overlay may be larger).
    pub size_gib: u32,
    /// Leave out [`BOOT_PACKAGES`], so the boot installs them (through the apt
    /// proxy, [`APT_PROXY_GUEST_ADDRESS`]): the image a cloud VM starts from, for
    /// measuring what pre-baking saves.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub bare: bool,
}

impl Default for ImageRecipe {
    /// Debian bookworm from `deb.debian.org`, the base packages, 3 GiB.
    fn default() -> Self {
        Self {
            suite: "bookworm".into(),
            mirror: "http://deb.debian.org/debian".into(),
            extra_packages: Vec::new(),
            size_gib: 3,
            bare: false,
        }
    }
}

impl ImageRecipe {
    /// The content key: a SHA-256 over the recipe and `RECIPE_VERSION`, 16 hex
    /// digits, the name of the image's cache directory.
    pub fn key(&self) -> String {
        let text = serde_json::to_string(&(RECIPE_VERSION, self))
            .expect("strings and numbers always serialize");
        let digest = sha2::Sha256::digest(text.as_bytes());
        digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
    }

    /// Every package the image holds, base first, without repeats.
    pub fn packages(&self) -> Vec<String> {
        let mut all: Vec<String> = BASE_PACKAGES
            .iter()
            .filter(|p| !(self.bare && BOOT_PACKAGES.contains(p)))
            .map(|p| (*p).to_owned())
            .collect();
        for extra in &self.extra_packages {
            if !all.contains(extra) {
                all.push(extra.clone());
            }
        }
        all
    }

    fn validate(&self) -> Result<(), ImageError> {
        // Debian's rule for package names: lower case, digits, `+ - .`, starting with
        // a letter or digit (never an option).
        let word = |v: &str| {
            v.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                && v.len() <= 64
                && v.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c))
        };
        if !word(&self.suite) {
            return Err(ImageError::Recipe(
                "suite must be a Debian suite name".into(),
            ));
        }
        if let Some(bad) = self.extra_packages.iter().find(|p| !word(p)) {
            return Err(ImageError::Recipe(format!(
                "{bad:?} is not a Debian package name"
            )));
        }
        if !(self.mirror.starts_with("http://") || self.mirror.starts_with("https://"))
            || self
                .mirror
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(ImageError::Recipe("mirror must be an http(s) URL".into()));
        }
        if !(2..=64).contains(&self.size_gib) {
            return Err(ImageError::Recipe(
                "size_gib must be between 2 and 64".into(),
            ));
        }
        Ok(())
    }
}

/// Why an image could not be built or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImageError {
    /// A tool the build needs is not installed.
    #[error(
        "`{tool}` is not installed: install the Debian package {package} (apt-get install {package})"
    )]
    MissingTool {
        /// The program.
        tool: &'static str,
        /// The Debian package that has it.
        package: &'static str,
    },
    /// `debootstrap` needs root (it runs `chroot` and creates device nodes).
    #[error(
        "building an image needs root (debootstrap chroots into the new system): run it as root or with sudo"
    )]
    NeedsRoot,
    /// The recipe is not valid.
    #[error("invalid image recipe: {0}")]
    Recipe(String),
    /// A file of the image is missing.
    #[error("the image file {} is missing or empty: build the image (`sam image build`)", path.display())]
    Missing {
        /// The file.
        path: PathBuf,
    },
    /// A build step failed.
    #[error("{step} failed: {detail}")]
    Step {
        /// The step.
        step: &'static str,
        /// What it printed last, or the I/O error.
        detail: String,
    },
}

/// A build step, reported as it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Stage {
    /// The image was already built: nothing to do.
    Cached,
    /// Installing the packages with debootstrap (the long step: minutes).
    Debootstrap,
    /// Writing the boot configuration into the root file system.
    Configure,
    /// Turning the tree into the disk image.
    MakeFilesystem,
    /// Done.
    Done,
}

impl Stage {
    /// A short description for progress lines.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Cached => "the image is already built",
            Self::Debootstrap => "installing Debian packages with debootstrap (a few minutes)",
            Self::Configure => "configuring the root file system for cloud-init",
            Self::MakeFilesystem => "writing the disk image",
            Self::Done => "image ready",
        }
    }
}

/// Where images are cached by default: `$XDG_CACHE_HOME/sam/images`, else
/// `$HOME/.cache/sam/images`.
///
/// # Errors
/// [`ImageError::Recipe`] when neither variable is set.
pub fn default_cache_dir() -> Result<PathBuf, ImageError> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .ok_or_else(|| {
            ImageError::Recipe(
                "neither XDG_CACHE_HOME nor HOME is set: name a cache directory".into(),
            )
        })?;
    Ok(base.join("sam").join("images"))
}

/// The image of `recipe` in `cache_dir`, when it was built.
pub fn cached(cache_dir: &Path, recipe: &ImageRecipe) -> Option<BaseImage> {
    let image = BaseImage::in_dir(&cache_dir.join(recipe.key()));
    image.check().is_ok().then_some(image)
}

/// Checks that the build's tools are installed and that this process may use them.
///
/// # Errors
/// [`ImageError::MissingTool`] naming the package; [`ImageError::NeedsRoot`].
pub fn check_tools() -> Result<(), ImageError> {
    for (tool, package) in [("debootstrap", "debootstrap"), ("mkfs.ext4", "e2fsprogs")] {
        if find_program(tool).is_none() {
            return Err(ImageError::MissingTool { tool, package });
        }
    }
    if !rustix::process::geteuid().is_root() {
        return Err(ImageError::NeedsRoot);
    }
    Ok(())
}

/// Builds the image of `recipe` into `<cache_dir>/<key>` unless it is there,
/// reporting each [`Stage`] to `progress`. Blocking: minutes on a cold cache.
///
/// # Errors
/// [`ImageError`]: an invalid recipe, a missing tool, no root, a failed step. A
/// failed build leaves nothing in the cache.
pub fn build(
    recipe: &ImageRecipe,
    cache_dir: &Path,
    progress: &mut dyn FnMut(Stage, Duration),
) -> Result<BaseImage, ImageError> {
    recipe.validate()?;
    if let Some(image) = cached(cache_dir, recipe) {
        progress(Stage::Cached, Duration::ZERO);
        return Ok(image);
    }
    check_tools()?;
    let io = |step: &'static str| {
        move |e: std::io::Error| ImageError::Step {
            step,
            detail: e.to_string(),
        }
    };
    std::fs::create_dir_all(cache_dir).map_err(io("creating the cache directory"))?;
    let scratch = cache_dir.join(format!(".build-{}-{}", recipe.key(), std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    let result = build_in(recipe, &scratch, progress);
    let outcome = result.and_then(|()| {
        let target = cache_dir.join(recipe.key());
        let _ = std::fs::remove_dir_all(&target);
        std::fs::rename(scratch.join("image"), &target)
            .map_err(io("moving the image into the cache"))?;
        Ok(BaseImage::in_dir(&target))
    });
    let _ = std::fs::remove_dir_all(&scratch);
    outcome
}

fn build_in(
    recipe: &ImageRecipe,
    scratch: &Path,
    progress: &mut dyn FnMut(Stage, Duration),
) -> Result<(), ImageError> {
    let rootfs = scratch.join("rootfs");
    let image_dir = scratch.join("image");
    std::fs::create_dir_all(&image_dir).map_err(|e| ImageError::Step {
        step: "creating the build directory",
        detail: e.to_string(),
    })?;

    let started = Instant::now();
    progress(Stage::Debootstrap, Duration::ZERO);
    let mut debootstrap = Command::new("debootstrap");
    debootstrap
        .arg("--variant=minbase")
        .arg(format!("--include={}", recipe.packages().join(",")))
        .arg(&recipe.suite)
        .arg(&rootfs)
        .arg(&recipe.mirror);
    run("debootstrap", &mut debootstrap)?;

    progress(Stage::Configure, started.elapsed());
    configure(&rootfs).map_err(|e| ImageError::Step {
        step: "configuring the root file system",
        detail: e.to_string(),
    })?;
    let image = BaseImage::in_dir(&image_dir);
    let boot = rootfs.join("boot");
    let kernel = newest(&boot, "vmlinuz-")?;
    let initrd = newest(&boot, "initrd.img-")?;
    for (from, to) in [(&kernel, &image.kernel), (&initrd, &image.initrd)] {
        std::fs::copy(from, to).map_err(|e| ImageError::Step {
            step: "copying the kernel out",
            detail: e.to_string(),
        })?;
    }

    progress(Stage::MakeFilesystem, started.elapsed());
    let mut mkfs = Command::new("mkfs.ext4");
    mkfs.args(["-q", "-L", "sam-root", "-d"])
        .arg(&rootfs)
        .arg(&image.disk)
        .arg(format!("{}G", recipe.size_gib));
    run("mkfs.ext4", &mut mkfs)?;
    let recipe_json = serde_json::to_vec_pretty(recipe).expect("a recipe always serializes");
    std::fs::write(image_dir.join("recipe.json"), recipe_json).map_err(|e| ImageError::Step {
        step: "writing the recipe",
        detail: e.to_string(),
    })?;
    progress(Stage::Done, started.elapsed());
    Ok(())
}

/// What a NoCloud boot from a plain virtio disk needs in the root file system.
fn configure(rootfs: &Path) -> std::io::Result<()> {
    std::fs::write(rootfs.join("etc/fstab"), "/dev/vda / ext4 defaults 0 1\n")?;
    std::fs::write(rootfs.join("etc/hostname"), "sam-node\n")?;
    // The provider attaches the seed volume: probing the other data sources (EC2's
    // metadata address, …) only slows the boot and talks to nobody.
    std::fs::write(
        rootfs.join("etc/cloud/cloud.cfg.d/90-sam-datasource.cfg"),
        "datasource_list: [ NoCloud, None ]\n",
    )?;
    // apt goes through the proxy QEMU may forward; nothing else would answer.
    std::fs::write(
        rootfs.join("etc/apt/apt.conf.d/90-sam-proxy"),
        format!("Acquire::http::Proxy \"http://{APT_PROXY_GUEST_ADDRESS}/\";\n"),
    )?;
    // cloud-init renders the guest's network for systemd-networkd here (there is
    // no ifupdown), so networkd must start at boot.
    let wants = rootfs.join("etc/systemd/system/multi-user.target.wants");
    std::fs::create_dir_all(&wants)?;
    let link = wants.join("systemd-networkd.service");
    if !link.exists() {
        std::os::unix::fs::symlink("/lib/systemd/system/systemd-networkd.service", link)?;
    }
    Ok(())
}

/// The newest file in `dir` whose name starts with `prefix`.
fn newest(dir: &Path, prefix: &str) -> Result<PathBuf, ImageError> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| ImageError::Step {
            step: "finding the kernel",
            detail: e.to_string(),
        })?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| {
            path.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix))
        })
        .collect();
    found.sort();
    found.pop().ok_or_else(|| ImageError::Step {
        step: "finding the kernel",
        detail: format!("no {prefix}* in {}", dir.display()),
    })
}

/// Runs a build step; its last output lines are the error when it fails.
fn run(step: &'static str, command: &mut Command) -> Result<(), ImageError> {
    let output = command.output().map_err(|e| ImageError::Step {
        step,
        detail: e.to_string(),
    })?;
    if output.status.success() {
        return Ok(());
    }
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let tail: Vec<&str> = text.lines().rev().take(5).collect();
    Err(ImageError::Step {
        step,
        detail: format!(
            "{} ({})",
            tail.into_iter().rev().collect::<Vec<_>>().join(" | "),
            output.status
        ),
    })
}

/// The program `name` on `PATH`, or in `/usr/sbin` and `/sbin` (where Debian puts
/// debootstrap and mkfs.ext4, outside a non-root user's `PATH`).
pub(crate) fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_follows_the_recipe() {
        let base = ImageRecipe::default();
        assert_eq!(base.key(), ImageRecipe::default().key());
        assert_eq!(base.key().len(), 16);
        let prebaked = ImageRecipe {
            extra_packages: vec!["nodejs".into()],
            ..ImageRecipe::default()
        };
        assert_ne!(base.key(), prebaked.key());
        assert_eq!(
            prebaked.packages().last().map(String::as_str),
            Some("nodejs")
        );
        let repeated = ImageRecipe {
            extra_packages: vec!["curl".into()],
            ..ImageRecipe::default()
        };
        assert_eq!(repeated.packages().len(), BASE_PACKAGES.len());
        let bare = ImageRecipe {
            bare: true,
            ..ImageRecipe::default()
        };
        assert_ne!(base.key(), bare.key());
        assert_eq!(
            bare.packages().len(),
            BASE_PACKAGES.len() - BOOT_PACKAGES.len()
        );
        assert!(!bare.packages().iter().any(|p| p == "git"));
        // A recipe written before `bare` existed reads as not bare.
        let old: ImageRecipe = serde_json::from_str(
            r#"{"suite":"bookworm","mirror":"http://deb.debian.org/debian","extra_packages":[],"size_gib":3}"#,
        )
        .unwrap();
        assert_eq!(old, ImageRecipe::default());
    }

    #[test]
    fn bad_recipes_are_refused_before_anything_runs() {
        let cache = tempfile::tempdir().unwrap();
        for recipe in [
            ImageRecipe {
                suite: "bookworm; rm -rf /".into(),
                ..ImageRecipe::default()
            },
            ImageRecipe {
                extra_packages: vec!["--no-check-gpg".into()],
                ..ImageRecipe::default()
            },
            ImageRecipe {
                mirror: "file:///etc".into(),
                ..ImageRecipe::default()
            },
            ImageRecipe {
                size_gib: 1,
                ..ImageRecipe::default()
            },
        ] {
            let error = build(&recipe, cache.path(), &mut |_, _| {}).unwrap_err();
            assert!(matches!(error, ImageError::Recipe(_)), "{error}");
        }
        assert_eq!(std::fs::read_dir(cache.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_missing_or_empty_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let image = BaseImage::in_dir(dir.path());
        let error = image.check().unwrap_err();
        assert!(error.to_string().contains("disk.raw"), "{error}");
        assert!(error.to_string().contains("sam image build"), "{error}");
        for path in [&image.disk, &image.kernel, &image.initrd] {
            std::fs::write(path, b"x").unwrap();
        }
        std::fs::write(&image.initrd, b"").unwrap();
        assert!(
            image
                .check()
                .unwrap_err()
                .to_string()
                .contains("initrd.img")
        );
    }
}
