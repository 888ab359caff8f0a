//! One read of a process: who it is, its executable mappings, and how the files behind them
//! are reached from here. Taken once when a process is attached and read again (one read of
//! /proc/PID/maps) on each poll, where [`ProcessSnapshot::changed`] says whether new code was
//! mapped (dlopen); attach, unwind and symbolize all work from the snapshot, never from /proc
//! themselves.

use std::{os::unix::fs::MetadataExt as _, path::PathBuf};

use super::process::{self, ExecMapping, ProcessError, ProcessInfo};

/// A file mapped executable in a process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MappedFile {
    /// Its path as the process sees it (inside its mount namespace).
    pub path: String,
    /// The same file as the daemon opens it (through /proc/PID/root).
    pub host_path: PathBuf,
    /// (device, inode): the same file under any path, in any process.
    pub id: Option<(u64, u64)>,
    /// The lowest address it is mapped at.
    pub start: u64,
}

/// What one read of a process gives.
#[derive(Clone, Debug)]
pub struct ProcessSnapshot {
    /// Identity (pid, start time, program).
    pub info: ProcessInfo,
    /// File-backed executable mappings, in address order.
    pub mappings: Vec<ExecMapping>,
    /// Each mapped file once, in address order of its first mapping.
    pub files: Vec<MappedFile>,
    /// The executable's path as the process sees it.
    pub executable: Option<String>,
    /// What the dynamic linker preloads (LD_PRELOAD, /etc/ld.so.preload in its root).
    pub preload: Option<String>,
}

impl ProcessSnapshot {
    /// Reads a live process (one read of /proc/PID/maps).
    pub fn read(pid: u32) -> Result<Self, ProcessError> {
        let info = process::inspect(pid)?;
        let mappings = process::exec_mappings(pid)?;
        Ok(Self::of(info, mappings))
    }

    /// A snapshot from what was read.
    pub fn of(info: ProcessInfo, mappings: Vec<ExecMapping>) -> Self {
        let pid = info.pid;
        let mut files: Vec<MappedFile> = Vec::new();
        for mapping in &mappings {
            match files.iter_mut().find(|file| file.path == mapping.path) {
                Some(file) => file.start = file.start.min(mapping.start),
                None => {
                    let host_path = process::host_path(pid, &mapping.path);
                    let id = std::fs::metadata(&host_path)
                        .ok()
                        .map(|meta| (meta.dev(), meta.ino()));
                    files.push(MappedFile {
                        path: mapping.path.clone(),
                        host_path,
                        id,
                        start: mapping.start,
                    });
                }
            }
        }
        Self {
            executable: process::executable_path(pid),
            preload: process::preload(pid),
            info,
            mappings,
            files,
        }
    }

    /// The process's pid.
    pub fn pid(&self) -> u32 {
        self.info.pid
    }

    /// The file mapped at `path` (as the process sees it).
    pub fn file(&self, path: &str) -> Option<&MappedFile> {
        self.files.iter().find(|file| file.path == path)
    }

    /// Reads the process's mappings again; `Some(new snapshot)` when its executable mappings
    /// changed (a library was loaded or unloaded), `None` when they did not or the process
    /// cannot be read any more. A process that is exiting (an OOM kill's victim before its
    /// parent reaps it) still answers with no mappings at all: that is no change, because
    /// its last report still needs the mappings it had to name its stacks.
    pub fn changed(&self) -> Option<Self> {
        let mappings = process::exec_mappings(self.pid()).ok()?;
        if mappings.is_empty() {
            return None;
        }
        let same = mappings.len() == self.mappings.len()
            && mappings.iter().zip(&self.mappings).all(|(new, old)| {
                new.start == old.start && new.end == old.end && new.path == old.path
            });
        (!same).then(|| Self::of(self.info.clone(), mappings))
    }
}

#[cfg(test)]
mod tests {
    use super::ProcessSnapshot;

    #[test]
    fn an_exited_process_awaiting_its_reaping_keeps_its_last_mappings() {
        let mut child = std::process::Command::new("sh")
            .args(["-c", "read _"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("spawn sh");
        let pid = child.id();
        // spawn returns when the exec has released the old address space, which may be before
        // the kernel has mapped the shell's code into the new one.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let alive = loop {
            let snapshot = ProcessSnapshot::read(pid).expect("the shell's maps");
            if !snapshot.mappings.is_empty() {
                break snapshot;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the shell never mapped its code"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        };
        // It exits and stays a zombie (not waited for): /proc/PID/maps reads empty.
        drop(child.stdin.take());
        while !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|stat| stat.rsplit(')').next().is_some_and(|s| s.starts_with(" Z")))
        {
            assert!(std::time::Instant::now() < deadline, "sh never exited");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(
            super::process::exec_mappings(pid).is_ok_and(|m| m.is_empty()),
            "a zombie's maps read empty"
        );
        let changed = alive.changed();
        let _ = child.wait();
        assert!(
            changed.is_none(),
            "an exiting process's empty maps replaced its mappings: {:?}",
            changed.map(|s| s.mappings)
        );
    }
}
