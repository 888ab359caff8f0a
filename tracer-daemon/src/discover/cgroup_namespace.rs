//! Seeing cgroup paths as the host does, from inside a cgroup namespace of the agent's own
//! (containerd's default for pods on cgroup v2, which Kubernetes cannot turn off). There,
//! `/proc/PID/cgroup` and the roots of the cgroup mounts in `/proc/self/mountinfo` are
//! relative to the agent's own cgroup (`/../../kubepods.slice/...`). Once at startup, the
//! agent finds that cgroup's place in each mounted host hierarchy; every path then resolves
//! to the host's directory (`tracer_parse::cgroup_namespace`). Joining the host's namespace
//! instead would take CAP_SYS_ADMIN.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use tracing::{info, warn};

use crate::discover::{
    cgroup::{self, CgroupError},
    memory::{CgroupMount, CgroupMounts},
};

pub use tracer_parse::cgroup_namespace::*;

/// Cgroups looked at, at most, in a hierarchy while looking for the agent's own: a node runs a
/// few thousand; this bounds the work when a mount is not what it seems.
const MAX_CGROUPS_VISITED: usize = 100_000;

/// Looks made for the agent's own cgroup when it moves while looked for.
const ATTEMPTS: usize = 3;

/// A hierarchy the agent reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hierarchy {
    /// cgroup v2.
    Unified,
    /// The cgroup v1 hierarchy with the memory controller.
    MemoryV1,
}

impl Hierarchy {
    fn as_str(self) -> &'static str {
        match self {
            Self::Unified => "unified",
            Self::MemoryV1 => "memory (v1)",
        }
    }
}

/// Why the agent's cgroup namespace root was not found in a hierarchy.
#[derive(Debug, thiserror::Error)]
pub enum LocateError {
    /// /proc/self/cgroup could not be read.
    #[error("cannot read /proc/self/cgroup")]
    ReadOwnCgroup(#[source] io::Error),
    /// /proc/self/cgroup does not parse.
    #[error("cannot parse /proc/self/cgroup")]
    ParseOwnCgroup(#[source] CgroupError),
    /// /proc/self/cgroup has no line for the hierarchy.
    #[error("/proc/self/cgroup has no line for the {hierarchy} hierarchy")]
    NoOwnLine {
        /// The hierarchy's name.
        hierarchy: &'static str,
    },
    /// The agent's own cgroup is not below its namespace root (it was moved out after the
    /// namespace was made): which directory the root is cannot be told from its pid.
    #[error("this agent's own cgroup {path} lies outside its cgroup namespace root")]
    OutsideNamespaceRoot {
        /// Its path, relative to the namespace root.
        path: String,
    },
    /// No cgroup at the namespace root's depth lists the agent's pid.
    #[error(
        "no cgroup {levels} levels below {} holds this agent (pid {pid}, cgroup {own_path} \
         relative to its namespace root); looked at {visited} cgroups",
        mount.display()
    )]
    NotFound {
        /// The mount looked in.
        mount: PathBuf,
        /// How deep the namespace root lies below the mount's root.
        levels: usize,
        /// The agent's pid, as its own pid namespace numbers it.
        pid: u32,
        /// The agent's cgroup relative to its namespace root.
        own_path: String,
        /// Directories looked at.
        visited: usize,
    },
    /// The walk stopped at its bound.
    #[error("stopped after looking at {visited} cgroups below {}", mount.display())]
    TooManyCgroups {
        /// The mount looked in.
        mount: PathBuf,
        /// Directories looked at.
        visited: usize,
    },
    /// The namespace root's name is not UTF-8, which the resolved paths must be.
    #[error("the cgroup namespace root {} is not UTF-8", path.display())]
    NotUtf8 {
        /// The directory found.
        path: PathBuf,
    },
    /// The agent's cgroup changed while it was looked for, every time.
    #[error("this agent's cgroup changed while it was looked for, {ATTEMPTS} times")]
    Moving,
}

/// Finds where this agent's cgroup namespace root sits below each mount that lies above it
/// (fills in [`CgroupMount::namespace_root`]), and logs once what that gives. What is not found
/// is left unknown with a warning: those hierarchies' paths then name no directory, which
/// costs pods' memory figures (not the agent).
pub fn locate_namespace_roots(mounts: &mut CgroupMounts) {
    let pid = std::process::id();
    let mut private = false;
    for (hierarchy, mount) in [
        (Hierarchy::Unified, mounts.unified.as_mut()),
        (Hierarchy::MemoryV1, mounts.memory_v1.as_mut()),
    ] {
        let Some(mount) = mount else {
            continue;
        };
        let levels = mount.levels_above_namespace_root;
        if levels == 0 {
            continue;
        }
        private = true;
        match locate(mount, hierarchy, pid) {
            Ok(root) => {
                let host_dir = mount.path.join(root.trim_start_matches('/'));
                info!(
                    hierarchy = hierarchy.as_str(),
                    mount = %mount.path.display(),
                    levels,
                    "cgroup paths resolved against this agent's cgroup namespace root {} \
                     (private cgroup namespace)",
                    host_dir.display()
                );
                mount.namespace_root = Some(root);
            }
            Err(error) => warn!(
                hierarchy = hierarchy.as_str(),
                mount = %mount.path.display(),
                error = %crate::error_chain(&error),
                "cannot find this agent's cgroup namespace root in the host's cgroup hierarchy, \
                 so pods' cgroups there cannot be read: no memory figures or limits (nor, in \
                 the unified hierarchy, growth profiles and pressure triggers). Run the agent \
                 with hostPID, the host's /sys/fs/cgroup mounted, and leave its pod's cgroup \
                 as the runtime made it"
            ),
        }
    }
    if private || (mounts.unified.is_none() && mounts.memory_v1.is_none()) {
        return;
    }
    if shares_init_cgroup_namespace() == Some(false) {
        warn!(
            "this agent has a cgroup namespace of its own, but no cgroup mount reaching above \
             it: only its own cgroup's descendants can be read. Mount the host's \
             /sys/fs/cgroup (hostPath)"
        );
    } else {
        info!("cgroup paths read as they are: this agent shares the host's cgroup namespace");
    }
}

/// The place of the namespace root below `mount`, looked for until the agent's own cgroup
/// stays the same during a look.
fn locate(mount: &CgroupMount, hierarchy: Hierarchy, pid: u32) -> Result<String, LocateError> {
    for _ in 0..ATTEMPTS {
        let own = own_path(hierarchy)?;
        let found = find_namespace_root(
            &mount.path,
            mount.levels_above_namespace_root,
            &own,
            pid,
            MAX_CGROUPS_VISITED,
        );
        if own_path(hierarchy)? == own {
            return found;
        }
    }
    Err(LocateError::Moving)
}

/// This agent's cgroup in `hierarchy`, relative to its namespace root.
fn own_path(hierarchy: Hierarchy) -> Result<String, LocateError> {
    let content = fs::read_to_string("/proc/self/cgroup").map_err(LocateError::ReadOwnCgroup)?;
    let lines = cgroup::parse_proc_cgroup(&content).map_err(LocateError::ParseOwnCgroup)?;
    lines
        .into_iter()
        .find(|line| match hierarchy {
            Hierarchy::Unified => line.hierarchy_id == 0,
            Hierarchy::MemoryV1 => {
                line.hierarchy_id != 0 && line.controllers.iter().any(|c| c == "memory")
            }
        })
        .map(|line| line.path)
        .ok_or(LocateError::NoOwnLine {
            hierarchy: hierarchy.as_str(),
        })
}

/// The directory `levels` below `mount` whose `<own_path>/cgroup.procs` lists `pid`, as a path
/// below `mount` (`/a/b`): the cgroup namespace root of the process `pid`, whose cgroup is
/// `own_path` relative to that root. A process is in one cgroup per hierarchy, so the first
/// found is it. Directories that vanish or cannot be read are passed over; symlinks are not
/// followed; at most `max_visited` directories are looked at.
fn find_namespace_root(
    mount: &Path,
    levels: usize,
    own_path: &str,
    pid: u32,
    max_visited: usize,
) -> Result<String, LocateError> {
    let below_root = own_path.trim_start_matches('/');
    if below_root.split('/').any(|part| part == "..") {
        return Err(LocateError::OutsideNamespaceRoot {
            path: own_path.to_owned(),
        });
    }
    let mut stack = vec![(mount.to_path_buf(), 0_usize)];
    let mut visited = 0_usize;
    while let Some((dir, depth)) = stack.pop() {
        visited += 1;
        if visited > max_visited {
            return Err(LocateError::TooManyCgroups {
                mount: mount.to_owned(),
                visited: max_visited,
            });
        }
        if depth == levels {
            if lists_pid(&dir.join(below_root).join("cgroup.procs"), pid) {
                let below_mount = dir.strip_prefix(mount).unwrap_or(Path::new(""));
                let below_mount = (below_mount.to_str())
                    .ok_or_else(|| LocateError::NotUtf8 { path: dir.clone() })?;
                return Ok(format!("/{below_mount}"));
            }
            continue;
        }
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
                stack.push((entry.path(), depth + 1));
            }
        }
    }
    Err(LocateError::NotFound {
        mount: mount.to_owned(),
        levels,
        pid,
        own_path: own_path.to_owned(),
        visited,
    })
}

/// Whether a `cgroup.procs` file lists `pid`; a file gone or unreadable lists nothing.
fn lists_pid(procs: &Path, pid: u32) -> bool {
    fs::read_to_string(procs).is_ok_and(|content| {
        content
            .lines()
            .any(|line| line.trim().parse::<u32>() == Ok(pid))
    })
}

/// Whether this process shares PID 1's cgroup namespace; `None` when PID 1's cannot be read
/// (a sandboxed init, or no hostPID).
fn shares_init_cgroup_namespace() -> Option<bool> {
    let ours = fs::read_link("/proc/self/ns/cgroup").ok()?;
    let init = fs::read_link("/proc/1/ns/cgroup").ok()?;
    Some(ours == init)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A directory tree standing for a mounted hierarchy, removed on drop.
    struct Tree(PathBuf);

    impl Tree {
        fn new() -> Self {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let unique = format!(
                "tracer-cgroupns-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            );
            let tree = Self(std::env::temp_dir().join(unique));
            fs::create_dir_all(&tree.0).expect("create the tree");
            tree
        }

        /// A cgroup at `path` (below the tree) whose `cgroup.procs` lists `pids`.
        fn cgroup(&self, path: &str, pids: &[u32]) {
            let dir = self.0.join(path);
            fs::create_dir_all(&dir).expect("create a cgroup dir");
            let procs: String = pids.iter().map(|pid| format!("{pid}\n")).collect();
            fs::write(dir.join("cgroup.procs"), procs).expect("write cgroup.procs");
        }
    }

    impl Drop for Tree {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    const PID: u32 = 4242;

    #[test]
    fn the_namespace_root_is_the_directory_at_its_depth_holding_this_process() {
        let tree = Tree::new();
        tree.cgroup("kubepods/burstable/pod-a/ctr-a", &[1, 42_420, 24_242]);
        tree.cgroup("kubepods/burstable/pod-b/ctr-b", &[7, PID]);
        tree.cgroup("kubepods/burstable/pod-b/ctr-c", &[]);
        tree.cgroup("system.slice/containerd.service/x", &[PID + 1]);
        fs::write(tree.0.join("kubepods/burstable/pod-b/odd"), "").expect("a file");
        let found = find_namespace_root(&tree.0, 4, "/", PID, 1000);
        assert_eq!(
            found.ok().as_deref(),
            Some("/kubepods/burstable/pod-b/ctr-b")
        );
    }

    #[test]
    fn a_process_below_its_namespace_root_finds_the_root_above_its_cgroup() {
        let tree = Tree::new();
        tree.cgroup("kubepods/pod-a/ctr-a/init", &[PID]);
        tree.cgroup("kubepods/pod-a/ctr-b/init", &[]);
        let found = find_namespace_root(&tree.0, 3, "/init", PID, 1000);
        assert_eq!(found.ok().as_deref(), Some("/kubepods/pod-a/ctr-a"));
        let outside = find_namespace_root(&tree.0, 3, "/../ctr-b/init", PID, 1000);
        assert!(
            matches!(outside, Err(LocateError::OutsideNamespaceRoot { .. })),
            "{outside:?}"
        );
    }

    #[test]
    fn not_finding_this_process_or_too_many_cgroups_are_errors_saying_so() {
        let tree = Tree::new();
        tree.cgroup("a/b", &[PID]);
        tree.cgroup("c/d", &[]);
        let error = find_namespace_root(&tree.0, 1, "/", PID, 1000).expect_err("too shallow");
        let message = error.to_string();
        assert!(
            message.contains("no cgroup 1 levels below") && message.contains("pid 4242"),
            "{message}"
        );
        let error = find_namespace_root(&tree.0, 2, "/", PID, 2).expect_err("bounded");
        assert!(
            matches!(error, LocateError::TooManyCgroups { visited: 2, .. }),
            "{error:?}"
        );
        let gone = tree.0.join("gone");
        let error = find_namespace_root(&gone, 2, "/", PID, 1000).expect_err("no mount");
        assert!(
            matches!(error, LocateError::NotFound { visited: 1, .. }),
            "{error:?}"
        );
    }

    #[test]
    fn symlinks_are_not_followed() {
        let tree = Tree::new();
        let elsewhere = Tree::new();
        elsewhere.cgroup("b", &[PID]);
        fs::create_dir_all(tree.0.join("a")).expect("a dir");
        std::os::unix::fs::symlink(&elsewhere.0, tree.0.join("a/link")).expect("a symlink");
        let error = find_namespace_root(&tree.0, 3, "/", PID, 1000).expect_err("not followed");
        assert!(matches!(error, LocateError::NotFound { .. }), "{error:?}");
    }

    #[test]
    fn this_process_finds_its_own_cgroup_here() {
        // In the host's namespace, levels 0: the mount's root is the namespace root.
        let mounts = crate::discover::memory::read_cgroup_mounts();
        for (hierarchy, mount) in [
            (Hierarchy::Unified, &mounts.unified),
            (Hierarchy::MemoryV1, &mounts.memory_v1),
        ] {
            let Some(mount) = mount else {
                continue;
            };
            let own = own_path(hierarchy).expect("this process's cgroup");
            if own.contains("..") || mount.levels_above_namespace_root != 0 {
                continue;
            }
            let found =
                find_namespace_root(&mount.path, 0, &own, std::process::id(), 1000).expect("found");
            assert_eq!(found, "/", "{hierarchy:?}");
        }
    }
}
