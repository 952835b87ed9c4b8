//! The workspace root that `fs/read_text_file` and `fs/write_text_file` are confined to.
//!
//! A path is served only when it names something inside the root after every
//! symlink is resolved: `..` components are refused outright, absolute paths must lie
//! under the root, and the real location (`canonicalize`) must too, so a symlink that
//! points out of the workspace is refused as well. A file that does not exist yet (a
//! write) is checked through its nearest existing ancestor.
//!
//! The check and the file operation are two steps, so a process that swaps a directory
//! for a symlink in between could still win the race; agents run as an unprivileged
//! user inside the workspace, which bounds what that would gain.

use std::io;
use std::path::{Component, Path, PathBuf};

/// Why a path was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PathDenied {
    /// The path contains a `..` component.
    #[error("path {path:?} contains `..`; only paths inside the workspace are served")]
    ParentComponent {
        /// The requested path.
        path: String,
    },
    /// The path, or what a symlink in it points to, lies outside the workspace.
    #[error("path {path:?} is outside the workspace")]
    Outside {
        /// The requested path.
        path: String,
    },
    /// The file system said no.
    #[error("cannot access {path:?}: {source}")]
    Io {
        /// The requested path.
        path: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

impl PathDenied {
    /// Whether the path simply does not exist (as opposed to being refused).
    pub(crate) fn is_not_found(&self) -> bool {
        matches!(self, Self::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }
}

/// A canonical workspace directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WorkspaceRoot {
    /// The root as configured (may contain symlinks).
    given: PathBuf,
    /// The root with every symlink resolved.
    real: PathBuf,
    /// The root as the agent sees it, when it runs elsewhere (a container's mount
    /// of the clone); its paths are taken as the same paths under the root.
    seen: Option<PathBuf>,
}

impl WorkspaceRoot {
    /// Resolves `root`, which must be an existing directory.
    pub(crate) fn new(root: &Path) -> io::Result<Self> {
        let real = root.canonicalize()?;
        if !real.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                format!("{} is not a directory", root.display()),
            ));
        }
        Ok(Self {
            given: root.to_path_buf(),
            real,
            seen: None,
        })
    }

    /// The same root, seen by the agent at `seen` (an absolute path).
    pub(crate) fn seen_at(mut self, seen: &Path) -> Self {
        self.seen = Some(seen.to_path_buf());
        self
    }

    /// The root as the agent sees it: the `cwd` of its sessions.
    pub(crate) fn agent_path(&self) -> &Path {
        self.seen.as_deref().unwrap_or(&self.real)
    }

    /// The root with every symlink resolved.
    #[cfg(test)]
    pub(crate) fn path(&self) -> &Path {
        &self.real
    }

    /// The lexical candidate for `requested`: relative paths are taken from the root.
    fn candidate(&self, requested: &str) -> Result<PathBuf, PathDenied> {
        let path = Path::new(requested);
        if path.components().any(|c| c == Component::ParentDir) {
            return Err(PathDenied::ParentComponent {
                path: requested.to_owned(),
            });
        }
        if path.is_absolute() {
            // Accept the root as the agent sees it, as configured and as resolved;
            // anything else is outside.
            for base in self.seen.iter().chain([&self.real, &self.given]) {
                if let Ok(rest) = path.strip_prefix(base) {
                    return Ok(self.real.join(rest));
                }
            }
            return Err(PathDenied::Outside {
                path: requested.to_owned(),
            });
        }
        Ok(self.real.join(path))
    }

    fn inside(&self, real: &Path, requested: &str) -> Result<(), PathDenied> {
        if real.starts_with(&self.real) {
            Ok(())
        } else {
            Err(PathDenied::Outside {
                path: requested.to_owned(),
            })
        }
    }

    /// The real path of an existing file to read.
    pub(crate) fn resolve_existing(&self, requested: &str) -> Result<PathBuf, PathDenied> {
        let candidate = self.candidate(requested)?;
        let real = candidate.canonicalize().map_err(|source| PathDenied::Io {
            path: requested.to_owned(),
            source,
        })?;
        self.inside(&real, requested)?;
        Ok(real)
    }

    /// Gives `paths` (what a write created) to the owner of the workspace when this
    /// process is root and the workspace belongs to another user: the agent runs as
    /// that user and must be able to change what it asked the host to write.
    pub(crate) fn hand_over(&self, paths: &[PathBuf]) -> io::Result<()> {
        use std::os::unix::fs::MetadataExt as _;
        if !rustix::process::geteuid().is_root() {
            return Ok(());
        }
        let owner = std::fs::metadata(&self.real)?;
        if owner.uid() == 0 {
            return Ok(());
        }
        for path in paths {
            std::os::unix::fs::lchown(path, Some(owner.uid()), Some(owner.gid()))?;
        }
        Ok(())
    }

    /// The real path to write, which may not exist yet; its nearest existing ancestor
    /// (and the file itself, when it is a symlink) must resolve inside the root.
    pub(crate) fn resolve_for_write(&self, requested: &str) -> Result<PathBuf, PathDenied> {
        let candidate = self.candidate(requested)?;
        match candidate.canonicalize() {
            Ok(real) => {
                self.inside(&real, requested)?;
                return Ok(real);
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(PathDenied::Io {
                    path: requested.to_owned(),
                    source,
                });
            }
        }
        // A dangling symlink canonicalizes as "not found": refuse to write through it.
        if candidate.symlink_metadata().is_ok() {
            return Err(PathDenied::Outside {
                path: requested.to_owned(),
            });
        }
        let mut missing = Vec::new();
        let mut ancestor = candidate.as_path();
        loop {
            let Some(parent) = ancestor.parent() else {
                return Err(PathDenied::Outside {
                    path: requested.to_owned(),
                });
            };
            missing.push(ancestor.file_name().map(ToOwned::to_owned));
            ancestor = parent;
            match ancestor.canonicalize() {
                Ok(real) => {
                    self.inside(&real, requested)?;
                    let mut path = real;
                    for name in missing.into_iter().rev().flatten() {
                        path.push(name);
                    }
                    return Ok(path);
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(PathDenied::Io {
                        path: requested.to_owned(),
                        source,
                    });
                }
            }
        }
    }
}

/// Lines `line..line + limit` (1-based) of `text`, with their line endings.
pub(crate) fn slice_lines(text: &str, line: Option<u64>, limit: Option<u64>) -> String {
    let skip = line.map_or(0, |l| l.saturating_sub(1));
    let take = limit.unwrap_or(u64::MAX);
    text.split_inclusive('\n')
        .skip(usize::try_from(skip).unwrap_or(usize::MAX))
        .take(usize::try_from(take).unwrap_or(usize::MAX))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> (tempfile::TempDir, WorkspaceRoot) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("ws")).unwrap();
        std::fs::write(dir.path().join("ws/a.txt"), "a\n").unwrap();
        std::fs::write(dir.path().join("secret.txt"), "s\n").unwrap();
        let root = WorkspaceRoot::new(&dir.path().join("ws")).unwrap();
        (dir, root)
    }

    /// `Ok(suffix)` means allowed and resolving to `root/suffix`; `Err(())` refused.
    fn check_read(root: &WorkspaceRoot, requested: &str, expected: Result<&str, ()>) {
        let got = root.resolve_existing(requested);
        match expected {
            Ok(suffix) => assert_eq!(got.unwrap(), root.path().join(suffix), "{requested}"),
            Err(()) => assert!(got.is_err(), "{requested} must be refused, got {got:?}"),
        }
    }

    #[test]
    fn reads_stay_inside() {
        let (dir, root) = root();
        let outside = dir.path().join("secret.txt");
        std::os::unix::fs::symlink(&outside, root.path().join("escape")).unwrap();
        std::os::unix::fs::symlink("a.txt", root.path().join("inner-link")).unwrap();
        let absolute = root.path().join("a.txt");
        check_read(&root, "a.txt", Ok("a.txt"));
        check_read(&root, "./a.txt", Ok("a.txt"));
        check_read(&root, absolute.to_str().unwrap(), Ok("a.txt"));
        check_read(&root, "inner-link", Ok("a.txt"));
        check_read(&root, "../secret.txt", Err(()));
        check_read(&root, "../../etc/passwd", Err(()));
        check_read(&root, "/etc/passwd", Err(()));
        check_read(&root, outside.to_str().unwrap(), Err(()));
        check_read(&root, "escape", Err(()));
        check_read(&root, "missing.txt", Err(()));
        assert!(
            root.resolve_existing("missing.txt")
                .unwrap_err()
                .is_not_found()
        );
        assert!(!root.resolve_existing("escape").unwrap_err().is_not_found());
    }

    #[test]
    fn writes_stay_inside() {
        let (dir, root) = root();
        std::os::unix::fs::symlink(dir.path(), root.path().join("up")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("nowhere"), root.path().join("dangling"))
            .unwrap();
        assert_eq!(
            root.resolve_for_write("new/dir/file.txt").unwrap(),
            root.path().join("new/dir/file.txt")
        );
        assert_eq!(
            root.resolve_for_write("a.txt").unwrap(),
            root.path().join("a.txt")
        );
        for bad in ["up/secret.txt", "up/new.txt", "dangling", "../x", "/tmp/x"] {
            assert!(
                root.resolve_for_write(bad).is_err(),
                "{bad} must be refused"
            );
        }
    }

    /// An agent in a container sees the clone at its mount point: its paths there
    /// are the same files on the host, and the host's own paths still work.
    #[test]
    fn paths_as_a_container_sees_them_map_onto_the_clone() {
        let (dir, root) = root();
        let root = root.seen_at(Path::new("/workspaces/ws1"));
        assert_eq!(root.agent_path(), Path::new("/workspaces/ws1"));
        check_read(&root, "/workspaces/ws1/a.txt", Ok("a.txt"));
        check_read(&root, "a.txt", Ok("a.txt"));
        check_read(
            &root,
            root.path().join("a.txt").to_str().unwrap(),
            Ok("a.txt"),
        );
        check_read(&root, "/workspaces/ws1/../ws2/a.txt", Err(()));
        check_read(&root, "/workspaces/ws2/a.txt", Err(()));
        check_read(&root, "/workspaces/ws1-other/a.txt", Err(()));
        check_read(&root, "/workspaces", Err(()));
        assert_eq!(
            root.resolve_for_write("/workspaces/ws1/new/file.txt")
                .unwrap(),
            root.path().join("new/file.txt")
        );
        assert!(
            root.resolve_for_write(dir.path().join("secret.txt").to_str().unwrap())
                .is_err()
        );
    }

    #[test]
    fn line_slices() {
        let text = "1\n2\n3\n4";
        assert_eq!(slice_lines(text, None, None), text);
        assert_eq!(slice_lines(text, Some(2), Some(2)), "2\n3\n");
        assert_eq!(slice_lines(text, Some(4), Some(10)), "4");
        assert_eq!(slice_lines(text, Some(9), None), "");
        assert_eq!(slice_lines(text, Some(0), Some(1)), "1\n");
    }
}
