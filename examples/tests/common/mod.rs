//! What the end-to-end tests share: a temporary git repository, and cleanup of the
//! local nodes a data directory started, and a `sam-server` process ([`server`]).

// Each test binary that includes `common` uses a part of it.
#![allow(dead_code)]

pub(crate) mod server;

/// A git repository with one commit.
pub(crate) fn repo() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("README.md"), "# A test repository\n").unwrap();
    for args in [
        &["init", "-q"][..],
        &["add", "."],
        &[
            "-c",
            "user.email=test@example.invalid",
            "-c",
            "user.name=test",
            "commit",
            "-qm",
            "init",
        ],
    ] {
        let status = std::process::Command::new("git")
            .args(args)
            .current_dir(dir.path())
            .status()
            .expect("git runs");
        assert!(status.success(), "git {args:?}");
    }
    dir
}

/// Deletes the nodes a data directory's local provider started (they outlive
/// `sam run`, warm for the next task), through the provider itself.
/// Dropped at the end of a test, also when an assertion failed.
pub(crate) struct StopNodes(pub(crate) std::path::PathBuf);

impl Drop for StopNodes {
    fn drop(&mut self) {
        use sam_core::{Labels, Provider as _};
        let dir = self.0.join("local");
        // Its own thread and runtime: drop may run inside the test's runtime.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async {
                let config = sam_providers::LocalConfig::new(dir, "unused");
                let provider = sam_providers::LocalProvider::new(config).expect("provider");
                for vm in provider.list_vms(&Labels::new()).await.unwrap_or_default() {
                    let _ = provider.delete_vm(&vm.id).await;
                }
            });
        })
        .join();
    }
}
