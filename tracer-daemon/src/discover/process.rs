//! A process as the tracer sees it: identity, name, and its memory mappings (read here,
//! parsed by `tracer_parse::proc_maps`).

use std::io::Read as _;
use std::path::PathBuf;

use procfs::process::Process;
use tracer_parse::proc_maps;
use tracing::warn;

pub use tracer_parse::proc_maps::{ExecMapping, MapsLine, MapsLineError, parse_maps_line};

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

/// What kind of program a process runs, for refusing what cannot be traced with a reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgramKind {
    /// A kernel thread: no user code, no allocator.
    KernelThread,
    /// A 64-bit x86 ELF program (what the tracer decodes and unwinds).
    X86_64,
    /// A 32-bit program (i386 or x32 code).
    Bits32,
    /// A 64-bit program for another architecture (this e_machine).
    OtherMachine(u16),
    /// The executable could not be read.
    Unknown,
}

/// PF_KTHREAD in /proc/PID/stat's flags.
const PF_KTHREAD: u32 = 0x0020_0000;
/// ELF e_machine of x86-64.
const EM_X86_64: u16 = 62;

/// What kind of program `pid` runs, from its stat flags and its executable's ELF header.
pub fn program_kind(pid: u32) -> ProgramKind {
    let Ok(process) = Process::new(pid as i32) else {
        return ProgramKind::Unknown;
    };
    if process
        .stat()
        .is_ok_and(|stat| stat.flags & PF_KTHREAD != 0)
    {
        return ProgramKind::KernelThread;
    }
    let mut header = [0u8; 20];
    let read = std::fs::File::open(format!("/proc/{pid}/exe"))
        .and_then(|mut file| file.read_exact(&mut header));
    if read.is_err() || &header[..4] != b"\x7fELF" {
        return ProgramKind::Unknown;
    }
    let machine = u16::from_le_bytes([header[18], header[19]]);
    match (header[4], machine) {
        (1, _) => ProgramKind::Bits32,
        (2, EM_X86_64) => ProgramKind::X86_64,
        (_, machine) => ProgramKind::OtherMachine(machine),
    }
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

/// What one read of /proc/PID/stat says of a process's address space, to tell cheaply whether
/// its maps are worth reading again. An exec gives a new address space: with address-space
/// randomization its code, stack and argument addresses all move (and its name usually
/// changes); a new mapping that is not laid over an old one (a dlopen, any new file mapped)
/// grows its size. Anything else (a library mapped over a region reserved earlier, or
/// unmapped and replaced by one of the same size) leaves the hint as it was: the caller reads
/// the maps now and then all the same.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddressSpaceHint {
    start_ticks: u64,
    comm: String,
    size_bytes: u64,
    code: (u64, u64),
    stack_start: u64,
    arguments_start: Option<u64>,
    environment_end: Option<u64>,
}

/// Reads a /proc (or cgroupfs) file whole into `buffer`, cleared first. Not `fs::read` or
/// `File::read_to_end`: they ask `statx` and `lseek` for a size hint, and these files' sizes
/// read 0; discovery and the profiled-process checks read thousands of them.
pub fn read_proc_file(path: &std::path::Path, buffer: &mut Vec<u8>) -> std::io::Result<()> {
    const STEP: usize = 4096;
    let mut file = std::fs::File::open(path)?;
    buffer.clear();
    loop {
        let filled = buffer.len();
        buffer.resize(filled + STEP, 0);
        match file.read(&mut buffer[filled..]) {
            Ok(0) => {
                buffer.truncate(filled);
                return Ok(());
            }
            Ok(read) => buffer.truncate(filled + read),
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {
                buffer.truncate(filled);
            }
            Err(error) => return Err(error),
        }
    }
}

/// Reads a live process's [`AddressSpaceHint`] (one read of its stat; a zombie reads as gone).
pub fn address_space_hint(pid: u32) -> Result<AddressSpaceHint, ProcessError> {
    use procfs::FromRead as _;
    let mut content = Vec::with_capacity(512);
    read_proc_file(
        std::path::Path::new(&format!("/proc/{pid}/stat")),
        &mut content,
    )
    .map_err(|e| map_error(pid, "stat", e.into()))?;
    let stat = procfs::process::Stat::from_read(content.as_slice())
        .map_err(|e| map_error(pid, "stat", e))?;
    if stat.state == 'Z' || stat.state == 'X' {
        return Err(ProcessError::NotFound { pid });
    }
    Ok(AddressSpaceHint {
        start_ticks: stat.starttime,
        comm: stat.comm,
        size_bytes: stat.vsize,
        code: (stat.startcode, stat.endcode),
        stack_start: stat.startstack,
        arguments_start: stat.arg_start,
        environment_end: stat.env_end,
    })
}

/// The process's file-backed executable mappings, in address order.
///
/// Malformed lines are skipped with a warning (see [`parse_exec_mappings`]).
pub fn exec_mappings(pid: u32) -> Result<Vec<ExecMapping>, ProcessError> {
    let process = Process::new(pid as i32).map_err(|e| map_error(pid, "maps", e))?;
    let mut file = process
        .open_relative("maps")
        .map_err(|e| map_error(pid, "maps", e))?;
    let mut content = Vec::new();
    file.read_to_end(&mut content)
        .map_err(|e| map_error(pid, "maps", e.into()))?;
    Ok(parse_exec_mappings(pid, &content))
}

/// The file-backed executable mappings in /proc/PID/maps content, in file order; malformed
/// lines (a truncated read, code mapped from a non-UTF-8 file name) are skipped with a warning
/// naming the line.
pub fn parse_exec_mappings(pid: u32, content: &[u8]) -> Vec<ExecMapping> {
    proc_maps::exec_mappings(content)
        .filter_map(|parsed| match parsed {
            Ok(mapping) => Some(mapping),
            Err(proc_maps::MalformedLine { line_number, error }) => {
                warn!(pid, line_number, %error, "skipping malformed /proc/PID/maps line");
                None
            }
        })
        .collect()
}

/// The path at which the daemon can open a file the process maps, through the process's own
/// root, so a container's files are found even though the daemon's mount namespace differs.
/// A chroot'd process in the daemon's mount namespace has its maps written from the daemon's
/// root; then the path is used as it is.
pub fn host_path(pid: u32, path: &str) -> PathBuf {
    let rooted = PathBuf::from(format!("/proc/{pid}/root{path}"));
    if !rooted.exists() && std::path::Path::new(path).exists() {
        return PathBuf::from(path);
    }
    rooted
}

/// What the dynamic linker preloads in a process: its LD_PRELOAD, then its root's
/// /etc/ld.so.preload (names or paths, separated by spaces or colons). `None` when neither is
/// set or readable.
pub fn preload(pid: u32) -> Option<String> {
    let from_environment = Process::new(i32::try_from(pid).ok()?)
        .ok()
        .and_then(|process| process.environ().ok())
        .and_then(|environ| {
            environ
                .get(std::ffi::OsStr::new("LD_PRELOAD"))
                .and_then(|value| value.to_str().map(str::to_owned))
        });
    let from_file = std::fs::read_to_string(format!("/proc/{pid}/root/etc/ld.so.preload")).ok();
    let joined: Vec<String> = from_environment.into_iter().chain(from_file).collect();
    (!joined.is_empty()).then(|| joined.join(" "))
}

/// The executable's path as the process sees it, when it can be read (`None` for a process
/// that is gone or whose executable was deleted).
pub fn executable_path(pid: u32) -> Option<String> {
    let path = Process::new(i32::try_from(pid).ok()?).ok()?.exe().ok()?;
    path.to_str().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discover::test_log::{assert_one_warning, capture_warnings};

    fn paths(mappings: &[ExecMapping]) -> Vec<&str> {
        mappings
            .iter()
            .map(|mapping| mapping.path.as_str())
            .collect()
    }

    #[test]
    fn a_maps_file_cut_mid_line_keeps_the_lines_before_with_a_warning() {
        let content = include_bytes!("../../../tracer-parse/src/fixtures/proc_maps_truncated.txt");
        let (mappings, log) = capture_warnings(|| parse_exec_mappings(7, content));
        assert_eq!(
            paths(&mappings),
            ["/usr/bin/cat", "/memfd:jit-code (deleted)"],
            "the cut libc line is skipped, the lines before it are kept"
        );
        assert_one_warning(
            &log,
            &[
                "malformed /proc/PID/maps line",
                "pid=7",
                "line_number=21",
                "device",
            ],
        );
    }

    #[test]
    fn each_malformed_maps_line_is_one_warning_naming_the_line_and_the_reason() {
        // Which lines are malformed is tracer-parse's (proc_maps tests); here: how loudly.
        let content: &[u8] = b"00452000-00400000 r-xp 00000000 08:02 173521 /usr/bin/a\n\
            00400000-00452000 r-xp 00000000 08:02 173521 /usr/bin/\xff\n\
            00400000-00452000 r--p 00000000 08:02 173521 /data/\xff.db\n\
            00400000-00452000 r-xp 00000000 08:02 173521 /usr/bin/dbus-daemon\n";
        let (mappings, log) = capture_warnings(|| parse_exec_mappings(7, content));
        assert_eq!(paths(&mappings), ["/usr/bin/dbus-daemon"]);
        let warnings = log.iter().filter(|line| line.contains("WARN")).count();
        assert_eq!(
            warnings, 2,
            "one warning per bad line, none for data mapped from a non-UTF-8 name: {log:#?}"
        );
        assert_one_warning(&log, &["pid=7", "line_number=1", "is empty"]);
        assert_one_warning(&log, &["pid=7", "line_number=2", "not UTF-8"]);
    }

    #[test]
    fn the_address_space_hint_changes_when_a_file_is_mapped_and_at_an_exec() {
        use std::os::fd::AsRawFd as _;
        let me = std::process::id();
        let before = address_space_hint(me).expect("own stat");
        assert_eq!(
            address_space_hint(me).expect("own stat"),
            before,
            "nothing changed"
        );
        let file = std::fs::File::open(std::env::current_exe().expect("current exe"))
            .expect("open own binary");
        // SAFETY: a fresh read-only private mapping of a file, unmapped below, never read.
        let mapped = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                1 << 20,
                libc::PROT_READ | libc::PROT_EXEC,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        assert_ne!(mapped, libc::MAP_FAILED);
        let after = address_space_hint(me).expect("own stat");
        // SAFETY: the mapping made above, of that length.
        let _ = unsafe { libc::munmap(mapped, 1 << 20) };
        assert_ne!(after, before, "a new file mapping grows the address space");

        let mut child = std::process::Command::new("sh")
            .args(["-c", "read _ ; exec sleep 30"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("spawn sh");
        let pid = child.id();
        // spawn returns once sh is exec'd; whatever sh maps next, its name differs from
        // sleep's, so the hint read here differs from the one after the exec.
        let shell = address_space_hint(pid).expect("the shell's stat");
        drop(child.stdin.take());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while address_space_hint(pid).is_ok_and(|hint| hint.comm != "sleep") {
            assert!(
                std::time::Instant::now() < deadline,
                "sh never exec'd sleep"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let exec = address_space_hint(pid).expect("sleep's stat");
        let _ = child.kill();
        let _ = child.wait();
        assert_ne!(
            exec, shell,
            "another program: its code (and, randomized, its stack) moved"
        );
    }

    #[test]
    fn this_process_maps_its_own_test_binary() {
        let mappings = exec_mappings(std::process::id()).expect("own maps are readable");
        let exe = std::env::current_exe().expect("current exe");
        let exe = exe.to_str().expect("UTF-8 exe path");
        assert!(
            mappings.iter().any(|mapping| mapping.path == exe),
            "{exe} not among {mappings:?}"
        );
    }
}
