//! CPU time of the test process and of every process it started (moto, Dovecot, a bootstrap),
//! for benchmarks that must say where a run's CPU went on a machine the whole local stack shares.
//!
//! A [`CpuSnapshot`] reads `/proc/<pid>/stat` of this process and all its descendants. Each
//! descendant counts towards the *tree* of the child of this process it descends from (Dovecot's
//! `imap` processes towards `dovecot`, moto's towards `python3`); a process that ended and was
//! reaped meanwhile is in its reaper's child times, so [`CpuSnapshot::since`] misses only the
//! processes that ended unreaped.

use std::collections::BTreeMap;
use std::collections::HashMap;

/// One process as `/proc` showed it.
#[derive(Clone, Debug)]
struct Process {
    comm: String,
    parent: u32,
    /// Start time in clock ticks since boot: tells a reused pid from the process before it.
    started: u64,
    /// utime + stime, seconds.
    own: f64,
    /// cutime + cstime (reaped children), seconds.
    reaped: f64,
}

/// The processes of this process's tree at one moment.
#[derive(Clone, Debug)]
pub struct CpuSnapshot {
    processes: HashMap<u32, Process>,
}

/// CPU seconds spent between two snapshots by one tree.
#[derive(Clone, Debug, PartialEq)]
pub struct TreeCpu {
    /// The name of the tree's root process (`comm`), or `test process` for this one's own time.
    pub name: String,
    /// The root's pid.
    pub pid: u32,
    /// CPU seconds, the root and its descendants (reaped ones included).
    pub seconds: f64,
}

fn read_process(pid: u32) -> Option<Process> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (head, rest) = stat.rsplit_once(')')?;
    let comm = head.split_once('(')?.1.to_owned();
    // after the command name: state, ppid (fields 3, 4), ..., utime..cstime (14..=17),
    // starttime (22)
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let number = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    let tick = 100.0; // USER_HZ on Linux
    Some(Process {
        comm,
        parent: u32::try_from(number(1)?).ok()?,
        started: number(19)?,
        own: (number(11)? + number(12)?) as f64 / tick,
        reaped: (number(13)? + number(14)?) as f64 / tick,
    })
}

impl CpuSnapshot {
    /// This process and its descendants now.
    pub fn now() -> Self {
        let mut all: HashMap<u32, Process> = HashMap::new();
        if let Ok(entries) = std::fs::read_dir("/proc") {
            for entry in entries.flatten() {
                if let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok())
                    && let Some(process) = read_process(pid)
                {
                    all.insert(pid, process);
                }
            }
        }
        let me = std::process::id();
        let processes = all
            .iter()
            .filter(|(pid, _)| top_child(&all, **pid, me).is_some() || **pid == me)
            .map(|(pid, p)| (*pid, p.clone()))
            .collect();
        CpuSnapshot { processes }
    }

    /// CPU seconds per tree since `before`: this process's own time first (`test process`),
    /// then each child's tree, largest first. Reaped children of this process (short-lived
    /// tools it ran) are in `test process (reaped children)`.
    pub fn since(&self, before: &CpuSnapshot) -> Vec<TreeCpu> {
        let me = std::process::id();
        let spent = |pid: u32, p: &Process| match before.processes.get(&pid) {
            Some(b) if b.started == p.started => (p.own - b.own, p.reaped - b.reaped),
            _ => (p.own, p.reaped),
        };
        let mut trees: BTreeMap<u32, TreeCpu> = BTreeMap::new();
        let mut own = 0.0;
        let mut reaped_by_me = 0.0;
        for (pid, p) in &self.processes {
            let (o, r) = spent(*pid, p);
            if *pid == me {
                own = o;
                reaped_by_me = r;
                continue;
            }
            let Some(root) = top_child(&self.processes, *pid, me) else {
                continue;
            };
            let tree = trees.entry(root).or_insert_with(|| TreeCpu {
                name: self.processes[&root].comm.clone(),
                pid: root,
                seconds: 0.0,
            });
            tree.seconds += o + r;
        }
        let mut out = vec![
            TreeCpu {
                name: "test process".into(),
                pid: me,
                seconds: own,
            },
            TreeCpu {
                name: "test process (reaped children)".into(),
                pid: me,
                seconds: reaped_by_me,
            },
        ];
        let mut children: Vec<TreeCpu> = trees.into_values().collect();
        children.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
        out.extend(children);
        out
    }
}

/// The child of `me` that `pid` descends from (`pid` itself when it is one), None when `pid`
/// is not a descendant.
fn top_child(all: &HashMap<u32, Process>, pid: u32, me: u32) -> Option<u32> {
    let mut at = pid;
    for _ in 0..64 {
        let parent = all.get(&at)?.parent;
        if parent == me {
            return Some(at);
        }
        if parent <= 1 {
            return None;
        }
        at = parent;
    }
    None
}

/// `name pid: 1.23 s` per tree with at least 0.01 s, joined by `; `.
pub fn describe(trees: &[TreeCpu]) -> String {
    trees
        .iter()
        .filter(|t| t.seconds >= 0.01)
        .map(|t| format!("{} {}: {:.2} s", t.name, t.pid, t.seconds))
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_tree_that_burns_cpu_is_counted_with_its_reaped_grandchild() {
        let before = CpuSnapshot::now();
        // A shell whose own child spins, ends and is reaped by it; then the shell becomes
        // `sleep` (exec keeps its reaped children's time): the spin is in the tree only as
        // reaped time.
        let mut child = std::process::Command::new("sh")
            .args([
                "-c",
                "sh -c 'i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done'; exec sleep 60",
            ])
            .spawn()
            .expect("sh");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let spent = loop {
            let trees = CpuSnapshot::now().since(&before);
            let tree = trees.iter().find(|t| t.pid == child.id()).cloned();
            if tree.as_ref().is_some_and(|t| t.name == "sleep")
                || std::time::Instant::now() > deadline
            {
                break (tree, trees);
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        };
        child.kill().ok();
        child.wait().ok();
        let (tree, trees) = spent;
        let tree = tree.unwrap_or_else(|| panic!("the child's tree: {trees:?}"));
        assert!(tree.seconds >= 0.05, "{trees:?}");
        assert!(describe(&trees).contains(&format!("sleep {}:", child.id())));
    }
}
