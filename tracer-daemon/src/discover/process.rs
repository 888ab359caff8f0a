//! A process as the tracer sees it: identity, name, and its memory mappings.

use std::path::PathBuf;

use procfs::process::{MMPermissions, MMapPath, Process};

/// Why a process could not be inspected.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// There is no process with this pid (or it has exited).
    #[error("no such process: pid {pid} does not exist (has it exited?)")]
    NotFound {
        /// The pid asked for.
        pid: u32,
    },
    /// The process exists but its /proc files could not be read.
    #[error(
        "cannot read /proc/{pid}/{file}: reading another process's memory map needs root or \
         CAP_SYS_PTRACE"
    )]
    Unreadable {
        /// The pid asked for.
        pid: u32,
        /// Which /proc file.
        file: &'static str,
        #[source]
        source: procfs::ProcError,
    },
}

/// Identity of a live process.
#[derive(Clone, Debug)]
pub struct ProcessInfo {
    /// Process id (tgid) in the daemon's pid namespace.
    pub pid: u32,
    /// Command name (`comm`).
    pub comm: String,
    /// Start time in clock ticks since boot: with the pid, identifies the process across pid
    /// reuse.
    pub start_ticks: u64,
    /// (device, inode) of the program it runs: changes when it execs another program.
    pub exe: Option<(u64, u64)>,
}

/// A file-backed executable mapping of a process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecMapping {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// File offset of `start`.
    pub file_offset: u64,
    /// Path as the process sees it (inside its mount namespace).
    pub path: String,
}

fn map_error(pid: u32, file: &'static str, source: procfs::ProcError) -> ProcessError {
    match source {
        procfs::ProcError::NotFound(_) => ProcessError::NotFound { pid },
        source => ProcessError::Unreadable { pid, file, source },
    }
}

/// Reads a live process's identity.
pub fn inspect(pid: u32) -> Result<ProcessInfo, ProcessError> {
    if pid == 0 {
        return Err(ProcessError::NotFound { pid });
    }
    let process = Process::new(pid as i32).map_err(|e| map_error(pid, "stat", e))?;
    let stat = process.stat().map_err(|e| map_error(pid, "stat", e))?;
    if stat.state == 'Z' || stat.state == 'X' {
        return Err(ProcessError::NotFound { pid });
    }
    Ok(ProcessInfo {
        pid,
        comm: stat.comm,
        start_ticks: stat.starttime,
        exe: exe_identity(pid),
    })
}

fn exe_identity(pid: u32) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(format!("/proc/{pid}/exe")).ok()?;
    Some((meta.dev(), meta.ino()))
}

/// What became of a traced process since it was inspected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Liveness {
    /// Same process, same program.
    Alive,
    /// Same process, now running another program (it called execve).
    Execed,
    /// Exited (or the pid now belongs to another process).
    Gone,
}

/// Checks a process against what was inspected earlier.
pub fn liveness(info: &ProcessInfo) -> Liveness {
    match inspect(info.pid) {
        Ok(now) if now.start_ticks == info.start_ticks => {
            if now.exe.is_some() && info.exe.is_some() && now.exe != info.exe {
                Liveness::Execed
            } else {
                Liveness::Alive
            }
        }
        _ => Liveness::Gone,
    }
}

/// The process's file-backed executable mappings, in address order.
pub fn exec_mappings(pid: u32) -> Result<Vec<ExecMapping>, ProcessError> {
    let process = Process::new(pid as i32).map_err(|e| map_error(pid, "maps", e))?;
    let maps = process.maps().map_err(|e| map_error(pid, "maps", e))?;
    Ok(maps
        .into_iter()
        .filter(|map| map.perms.contains(MMPermissions::EXECUTE))
        .filter_map(|map| match map.pathname {
            MMapPath::Path(path) => Some(ExecMapping {
                start: map.address.0,
                end: map.address.1,
                file_offset: map.offset,
                path: path.to_string_lossy().into_owned(),
            }),
            _ => None,
        })
        .collect())
}

/// The path at which the daemon can open a file the process maps, through the process's own
/// root, so a container's files are found even though the daemon's mount namespace differs.
pub fn host_path(pid: u32, path: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/root{path}"))
}
