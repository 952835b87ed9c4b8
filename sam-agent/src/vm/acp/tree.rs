//! Stopping an agent's whole process tree.
//!
//! Killing the agent's process group is not enough: a tool the agent starts with
//! `setsid` (a dev server, a background build) leaves the group and the session, and
//! one whose parent exits is re-parented away from the agent.
//!
//! Where this process can create a cgroup (v2, mounted on its own or beside v1 as
//! `unified`, with a writable directory under its own cgroup, as for root or a
//! systemd service with delegation), each agent is moved into a cgroup of its own
//! right after it starts ([`Cgroup`]): nothing it starts can leave it, and
//! `cgroup.kill` stops all of it at once.
//!
//! In every case, and as the only means where no cgroup can be made, each agent is
//! started with a marker in its environment, [`TREE_VAR`], which every descendant
//! inherits unless it clears its environment, and [`kill_tree`] kills, until none is
//! left: the agent, every process of its group or session, every descendant by parent
//! links, and every process that carries its marker.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The environment variable that marks every process of one agent's tree.
pub const TREE_VAR: &str = "SAM_AGENT_TREE";

/// How many passes [`kill_tree`] makes at most: a process forking while it is being
/// killed shows up in the next pass.
const MAX_PASSES: usize = 8;

/// A marker no other agent of any process on this machine shares.
pub(crate) fn new_marker() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "{}-{}-{nanos}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// One process as `/proc/<pid>/stat` describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Proc {
    pid: u32,
    ppid: u32,
    group: u32,
    session: u32,
}

/// Parses the fields after the command name (which may hold spaces and parentheses).
fn parse_stat(pid: u32, stat: &str) -> Option<Proc> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let _state = fields.next()?;
    let ppid = fields.next()?.parse().ok()?;
    let group = fields.next()?.parse().ok()?;
    let session = fields.next()?.parse().ok()?;
    Some(Proc {
        pid,
        ppid,
        group,
        session,
    })
}

fn processes() -> Vec<Proc> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            parse_stat(pid, &stat)
        })
        .collect()
}

fn carries(pid: u32, needle: &[u8]) -> bool {
    std::fs::read(format!("/proc/{pid}/environ"))
        .is_ok_and(|env| env.split(|b| *b == 0).any(|var| var == needle))
}

/// The processes of `root`'s tree among `procs`: `root`, its group and session, and
/// every descendant by parent links; `marked` adds processes found by their marker.
fn members(root: u32, procs: &[Proc], marked: &HashSet<u32>) -> HashSet<u32> {
    let mut tree: HashSet<u32> = procs
        .iter()
        .filter(|p| p.pid == root || p.group == root || p.session == root)
        .map(|p| p.pid)
        .chain(marked.iter().copied())
        .collect();
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for p in procs {
        children.entry(p.ppid).or_default().push(p.pid);
    }
    let mut stack: Vec<u32> = tree.iter().copied().collect();
    stack.push(root);
    while let Some(pid) = stack.pop() {
        for child in children.get(&pid).into_iter().flatten() {
            if tree.insert(*child) {
                stack.push(*child);
            }
        }
    }
    // Never this process, nor init.
    tree.remove(&std::process::id());
    tree.remove(&1);
    tree.remove(&0);
    tree
}

/// Kills every process of the tree rooted at `root` (see the [module docs](self))
/// and returns how many it signalled. Best effort: processes that are gone already
/// are the goal.
pub(crate) fn kill_tree(root: u32, marker: Option<&str>) -> usize {
    let needle = marker.map(|m| format!("{TREE_VAR}={m}").into_bytes());
    let mut killed = HashSet::new();
    for _ in 0..MAX_PASSES {
        let procs = processes();
        let marked: HashSet<u32> = match &needle {
            Some(needle) => procs
                .iter()
                .filter(|p| carries(p.pid, needle))
                .map(|p| p.pid)
                .collect(),
            None => HashSet::new(),
        };
        let alive: Vec<u32> = members(root, &procs, &marked)
            .into_iter()
            .filter(|pid| !is_zombie(*pid))
            .collect();
        if alive.is_empty() {
            break;
        }
        for pid in alive {
            kill(pid);
            killed.insert(pid);
        }
    }
    killed.len()
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |stat| {
        stat.rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next())
            .is_none_or(|state| state == "Z" || state == "X")
    })
}

/// An agent's own cgroup (v2); see the [module docs](self).
#[derive(Debug)]
pub(crate) struct Cgroup {
    dir: PathBuf,
}

/// How long [`Cgroup::remove`] waits for a killed cgroup to empty.
const CGROUP_EMPTY_WAIT: Duration = Duration::from_secs(5);

impl Cgroup {
    /// Makes a cgroup for the agent marked `marker` under this process's own cgroup
    /// and moves `pid` into it; `None` (after removing what it made) where cgroups v2
    /// cannot be used here.
    pub(crate) fn adopt(marker: &str, pid: u32) -> Option<Self> {
        let mount = cgroup2_mount(&std::fs::read_to_string("/proc/self/mountinfo").ok()?)?;
        let own = own_cgroup(&std::fs::read_to_string("/proc/self/cgroup").ok()?)?;
        let dir = mount
            .join(own.trim_start_matches('/'))
            .join(format!("sam-agent-{marker}"));
        std::fs::create_dir(&dir).ok()?;
        let cgroup = Self { dir };
        if std::fs::write(cgroup.dir.join("cgroup.procs"), pid.to_string()).is_err() {
            let _ = std::fs::remove_dir(&cgroup.dir);
            return None;
        }
        Some(cgroup)
    }

    /// The processes in the cgroup.
    pub(crate) fn pids(&self) -> Vec<u32> {
        std::fs::read_to_string(self.dir.join("cgroup.procs"))
            .map(|text| text.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }

    /// Kills every process in the cgroup: with `cgroup.kill` (Linux 5.14 and later),
    /// else one by one.
    pub(crate) fn kill(&self) {
        if std::fs::write(self.dir.join("cgroup.kill"), "1").is_ok() {
            return;
        }
        for _ in 0..MAX_PASSES {
            let pids = self.pids();
            if pids.is_empty() {
                return;
            }
            for pid in pids {
                kill(pid);
            }
        }
    }

    /// Removes the cgroup once it is empty: in the background when a tokio runtime
    /// runs (a killed process leaves its cgroup only once reaped), else at once if it
    /// can.
    pub(crate) fn remove(self) {
        let dir = self.dir;
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    let deadline = tokio::time::Instant::now() + CGROUP_EMPTY_WAIT;
                    while std::fs::remove_dir(&dir).is_err()
                        && tokio::time::Instant::now() < deadline
                    {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                });
            }
            Err(_) => {
                let _ = std::fs::remove_dir(&dir);
            }
        }
    }

    /// Where it is.
    #[cfg(test)]
    pub(crate) fn dir(&self) -> &std::path::Path {
        &self.dir
    }
}

/// The mount point of the cgroup v2 hierarchy in a `/proc/self/mountinfo` text.
fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (mount, fs) = line.split_once(" - ")?;
        if fs.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        mount.split_whitespace().nth(4).map(PathBuf::from)
    })
}

/// This process's cgroup v2 path in a `/proc/self/cgroup` text (`0::<path>`).
fn own_cgroup(cgroups: &str) -> Option<String> {
    cgroups
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .map(str::to_owned)
}

fn kill(pid: u32) {
    if let Some(p) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    {
        let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pid: u32, ppid: u32, group: u32, session: u32) -> Proc {
        Proc {
            pid,
            ppid,
            group,
            session,
        }
    }

    #[test]
    fn stat_lines_with_odd_command_names_parse() {
        assert_eq!(
            parse_stat(42, "42 (a (weird) name) S 7 42 42 0 -1 4194560 ..."),
            Some(p(42, 7, 42, 42))
        );
        assert_eq!(parse_stat(1, "garbage"), None);
        assert_eq!(parse_stat(1, "1 (x) S nope 1 1"), None);
    }

    #[test]
    fn the_tree_holds_group_session_descendants_and_marked() {
        let procs = [
            p(100, 50, 100, 50),   // the agent, leader of its group
            p(101, 100, 100, 50),  // a child in its group
            p(102, 101, 102, 102), // a setsid grandchild: own group and session
            p(103, 102, 102, 102), // its child
            p(104, 1, 104, 104),   // an orphan re-parented to init, found by marker only
            p(200, 50, 200, 50),   // a sibling of the agent: not ours
            p(1, 0, 1, 1),
        ];
        let marked = HashSet::from([104]);
        let mut tree: Vec<u32> = members(100, &procs, &marked).into_iter().collect();
        tree.sort_unstable();
        assert_eq!(tree, [100, 101, 102, 103, 104]);
        let mut unmarked: Vec<u32> = members(100, &procs, &HashSet::new()).into_iter().collect();
        unmarked.sort_unstable();
        assert_eq!(unmarked, [100, 101, 102, 103]);
    }

    #[test]
    fn markers_differ() {
        assert_ne!(new_marker(), new_marker());
    }

    #[test]
    fn the_cgroup2_mount_and_path_are_found() {
        let hybrid = "35 25 0:30 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n\
                      41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup2_mount(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let v1_only = "35 25 0:30 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        assert_eq!(cgroup2_mount(v1_only), None);
        assert_eq!(
            own_cgroup("9:name=systemd:/\n0::/system.slice/sam.service\n"),
            Some("/system.slice/sam.service".to_owned())
        );
        assert_eq!(own_cgroup("4:memory:/x\n"), None);
    }

    fn alive(pid: u32) -> bool {
        !is_zombie(pid)
    }

    /// Starts `sh`, which starts `sleep` in a session of its own and exits: the
    /// orphaned `sleep` is reachable only by its marker or its cgroup.
    fn orphaned_tool(marker: &str) -> (u32, u32) {
        let output = std::process::Command::new("sh")
            .args([
                "-c",
                "setsid sleep 600 </dev/null >/dev/null 2>&1 & echo $$ $!",
            ])
            .env(TREE_VAR, marker)
            .output()
            .expect("sh runs");
        let text = String::from_utf8_lossy(&output.stdout);
        let mut pids = text.split_whitespace().map(|p| p.parse().unwrap());
        (pids.next().unwrap(), pids.next().unwrap())
    }

    #[tokio::test]
    async fn the_marker_finds_an_orphan_that_left_the_session() {
        let marker = new_marker();
        let (sh, tool) = orphaned_tool(&marker);
        assert!(alive(tool));
        assert!(kill_tree(sh, Some(&marker)) >= 1);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while alive(tool) {
            assert!(tokio::time::Instant::now() < deadline, "{tool} survived");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn a_cgroup_holds_and_kills_what_the_agent_started() {
        let marker = new_marker();
        // The tool starts only once the shell has been moved (a line on its stdin).
        let mut child = tokio::process::Command::new("sh")
            .args([
                "-c",
                "read go; setsid sleep 600 </dev/null >/dev/null 2>&1 & echo $!; sleep 600",
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let pid = child.id().unwrap();
        let Some(cgroup) = Cgroup::adopt(&marker, pid) else {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI runs as root on a host with cgroup v2: the cgroup must be made"
            );
            eprintln!("notice: no writable cgroup v2 here; the cgroup path is not tested");
            return;
        };
        assert!(cgroup.dir().ends_with(format!("sam-agent-{marker}")));
        // The tool is started after the move, so it lands in the cgroup too.
        let mut stdin = child.stdin.take().unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut stdin, b"go\n")
            .await
            .unwrap();
        let mut line = String::new();
        let stdout = child.stdout.take().unwrap();
        tokio::io::AsyncBufReadExt::read_line(&mut tokio::io::BufReader::new(stdout), &mut line)
            .await
            .unwrap();
        let tool: u32 = line.trim().parse().unwrap();
        assert!(cgroup.pids().contains(&tool), "{:?}", cgroup.pids());
        cgroup.kill();
        let _ = child.wait().await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while alive(tool) {
            assert!(tokio::time::Instant::now() < deadline, "{tool} survived");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let dir = cgroup.dir().to_path_buf();
        cgroup.remove();
        while dir.exists() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} left behind",
                dir.display()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
