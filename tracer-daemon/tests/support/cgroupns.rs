//! An agent started as a pod's container starts: in a container cgroup of its own (two levels
//! below kubepods/burstable, in each hierarchy) and a private cgroup namespace rooted there, as
//! containerd gives every pod on cgroup v2. Other pods' /proc/PID/cgroup paths then read
//! relative to it (`/../../pod<uid>/<id>`).

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use super::node::Mounts;

/// The agent's own pod and container cgroups, removed on drop.
pub(crate) struct AgentPodCgroups {
    /// The pod's cgroup below kubepods/burstable, relative to a hierarchy's root.
    pub(crate) pod: String,
    /// Its container's cgroup in each hierarchy.
    pub(crate) containers: Vec<PathBuf>,
}

impl AgentPodCgroups {
    /// Cgroups named after `label` and this test process (created by the launch script).
    pub(crate) fn new(label: &str) -> Self {
        let pod = format!("kubepods/burstable/{label}-{}", std::process::id());
        let containers = (Mounts::read().roots().iter())
            .map(|root| root.join(&pod).join("agent"))
            .collect();
        Self { pod, containers }
    }

    /// An `Agent` launch wrapper: moves itself into the container cgroups, enters a new cgroup
    /// namespace there, then runs `inner` (another wrapper, e.g. setpriv's) before the daemon.
    pub(crate) fn wrapper(&self, inner: &[String]) -> Vec<String> {
        let quote = |word: &str| format!("'{}'", word.replace('\'', r"'\''"));
        let dirs: Vec<String> = (self.containers.iter())
            .map(|d| quote(&d.display().to_string()))
            .collect();
        let inner: Vec<String> = inner.iter().map(|w| quote(w)).collect();
        let script = format!(
            "for d in {}; do mkdir -p \"$d\" && echo $$ > \"$d/cgroup.procs\" || exit 1; done; \
             exec unshare --cgroup {} \"$0\" \"$@\"",
            dirs.join(" "),
            inner.join(" ")
        );
        vec!["sh".into(), "-c".into(), script]
    }

    /// The log line the agent writes for each hierarchy's namespace root it found.
    pub(crate) fn resolved_lines(&self) -> Vec<String> {
        (self.containers.iter())
            .map(|dir| {
                format!(
                    "cgroup paths resolved against this agent's cgroup namespace root {} \
                     (private cgroup namespace)",
                    dir.display()
                )
            })
            .collect()
    }
}

impl Drop for AgentPodCgroups {
    fn drop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        for dir in (self.containers.iter())
            .flat_map(|d| [Some(d.as_path()), d.parent()].into_iter().flatten())
        {
            while std::fs::remove_dir(dir).is_err() && dir.exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// Every thread of `pid` is in another cgroup namespace than this test's (the host's here).
pub(crate) fn assert_own_cgroup_namespace(pid: u32) {
    let ours = std::fs::read_link("/proc/self/ns/cgroup").expect("our cgroup namespace");
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("the agent's threads");
    for task in tasks.flatten() {
        let Ok(theirs) = std::fs::read_link(task.path().join("ns/cgroup")) else {
            continue;
        };
        assert_ne!(
            theirs,
            ours,
            "thread {} of the agent joined this test's cgroup namespace",
            task.file_name().to_string_lossy()
        );
    }
}
