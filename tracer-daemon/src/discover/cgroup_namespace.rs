//! Seeing cgroup paths as the host does. In a pod with its own cgroup namespace (containerd's
//! default on cgroup v2, which Kubernetes cannot turn off), `/proc/PID/cgroup` and the cgroup
//! mounts in `/proc/self/mountinfo` show paths relative to the agent's own cgroup
//! (`/../../kubepods.slice/...`), which name no directory under the host's `/sys/fs/cgroup`
//! that the DaemonSet mounts. With hostPID and CAP_SYS_ADMIN the agent joins the host's cgroup
//! namespace (PID 1's) at startup, before any other thread exists (a namespace is joined per
//! thread and inherited by the threads it creates), so every path reads as the host's.

use std::{fs::File, io, os::fd::AsRawFd as _, path::Path};

pub use tracer_parse::cgroup_namespace::*;

/// What joining did.
#[derive(Debug, PartialEq, Eq)]
pub enum Joined {
    /// The agent already shares the host's cgroup namespace.
    AlreadyHost,
    /// The agent left its own cgroup namespace for the host's.
    Joined,
}

/// The environment variable naming a process in the host's namespaces, when PID 1 is not one
/// the agent may inspect (a sandboxed init; the tests).
pub const HOST_PID_ENV: &str = "TRACER_HOST_PID";

/// Joins the host's cgroup namespace (PID 1's, or `TRACER_HOST_PID`'s) when it differs from
/// ours. Call before starting threads.
pub fn join_host() -> io::Result<Joined> {
    let pid = std::env::var(HOST_PID_ENV)
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        .unwrap_or(1);
    join(Path::new(&format!("/proc/{pid}/ns/cgroup")))
}

fn join(target: &Path) -> io::Result<Joined> {
    let ours = std::fs::read_link("/proc/self/ns/cgroup")?;
    let theirs = std::fs::read_link(target)?;
    if ours == theirs {
        return Ok(Joined::AlreadyHost);
    }
    let namespace = File::open(target)?;
    // SAFETY: setns with a namespace descriptor we own and the matching type; it changes only
    // this thread's cgroup namespace.
    let result = unsafe { libc::setns(namespace.as_raw_fd(), libc::CLONE_NEWCGROUP) };
    if result != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Joined::Joined)
}
