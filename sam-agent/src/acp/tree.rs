//! Stopping an agent's whole process tree.
//!
//! Killing the agent's process group is not enough: a tool the agent starts with
//! `setsid` (a dev server, a background build) leaves the group and the session, and
//! one whose parent exits is re-parented away from the agent. So each agent is started
//! with a marker in its environment, [`TREE_VAR`], which every descendant inherits
//! unless it clears its environment, and [`kill_tree`] kills, until none is left:
//! the agent, every process of its group or session, every descendant by parent
//! links, and every process that carries its marker. (No cgroup is used: the hosts
//! this runs on may have cgroup v1, or no delegation to the agent's user.)

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};

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
            if let Some(p) = i32::try_from(pid)
                .ok()
                .and_then(rustix::process::Pid::from_raw)
            {
                let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
                killed.insert(pid);
            }
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
}
