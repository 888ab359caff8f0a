//! A process as the tracer sees it: identity, name, and its memory mappings.

use std::io::Read as _;
use std::path::PathBuf;

use procfs::process::Process;
use tracing::warn;

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

/// Why a line of /proc/PID/maps was skipped.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MapsLineError {
    /// The line ends before one of the five fields that precede the path (a truncated read).
    #[error("the line ends before the {field} field")]
    MissingField {
        /// The first missing field.
        field: &'static str,
    },
    /// A field does not hold what the kernel writes there.
    #[error("{field} {text:?} is not {expected}")]
    InvalidField {
        /// Which field.
        field: &'static str,
        /// What the kernel writes there.
        expected: &'static str,
        /// The text found.
        text: String,
    },
    /// The address range is empty or reversed.
    #[error("address range {start:#x}-{end:#x} is empty")]
    EmptyRange {
        /// First address.
        start: u64,
        /// One past the last address.
        end: u64,
    },
    /// The line is not UTF-8 (a mapped file's name need not be), and maps code.
    #[error("the line is not UTF-8")]
    NotUtf8,
}

/// One line of /proc/PID/maps, as far as the tracer reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapsLine<'line> {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// The `x` permission is set.
    pub executable: bool,
    /// File offset of `start`.
    pub file_offset: u64,
    /// Everything after the inode: a file's path (possibly ending in ` (deleted)`), a
    /// bracketed name such as `[heap]`, or empty for an anonymous mapping.
    pub path: &'line str,
}

/// Parses one line of /proc/PID/maps:
/// `start-end perms offset major:minor inode [path]`, numbers in hex but the decimal inode.
///
/// Stricter than procfs's parser, which panics on some paths (a file named `/SYSV`) and fails
/// the whole file on one bad line.
pub fn parse_maps_line(line: &str) -> Result<MapsLine<'_>, MapsLineError> {
    let mut rest = line;
    let mut field = |name: &'static str| {
        let trimmed = rest.trim_start_matches(' ');
        let end = trimmed.find(' ').unwrap_or(trimmed.len());
        let (field, tail) = trimmed.split_at(end);
        rest = tail;
        (!field.is_empty())
            .then_some(field)
            .ok_or(MapsLineError::MissingField { field: name })
    };
    let (range, perms, offset, device, inode) = (
        field("address range")?,
        field("permissions")?,
        field("offset")?,
        field("device")?,
        field("inode")?,
    );
    let invalid =
        |field: &'static str, expected: &'static str, text: &str| MapsLineError::InvalidField {
            field,
            expected,
            text: text.to_owned(),
        };
    let (start, end) = range
        .split_once('-')
        .and_then(|(start, end)| Some((parse_hex(start)?, parse_hex(end)?)))
        .ok_or_else(|| invalid("address range", "hex start-end", range))?;
    if start >= end {
        return Err(MapsLineError::EmptyRange { start, end });
    }
    let executable = match perms.as_bytes() {
        [
            b'r' | b'-',
            b'w' | b'-',
            execute @ (b'x' | b'-'),
            b'p' | b's',
        ] => *execute == b'x',
        _ => return Err(invalid("permissions", "four flags like r-xp", perms)),
    };
    let file_offset = parse_hex(offset).ok_or_else(|| invalid("offset", "hex", offset))?;
    let valid_device = device
        .split_once(':')
        .is_some_and(|(major, minor)| parse_hex(major).is_some() && parse_hex(minor).is_some());
    if !valid_device {
        return Err(invalid("device", "hex major:minor", device));
    }
    if inode.is_empty() || !inode.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err(invalid("inode", "decimal", inode));
    }
    Ok(MapsLine {
        start,
        end,
        executable,
        file_offset,
        path: rest.trim_start_matches(' '),
    })
}

/// The file-backed executable mappings in /proc/PID/maps content, in file order; malformed
/// lines (a truncated read, code mapped from a non-UTF-8 file name) are skipped with a warning
/// naming the line.
pub fn parse_exec_mappings(pid: u32, content: &[u8]) -> Vec<ExecMapping> {
    let mut mappings = Vec::new();
    for (index, line) in content.split(|byte| *byte == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        let parsed = match str::from_utf8(line) {
            Ok(line) => parse_maps_line(line),
            // A file name may be any bytes; only an executable mapping of one is worth a word.
            Err(_) => match parse_maps_line(&String::from_utf8_lossy(line)) {
                Ok(lossy) if !lossy.executable => continue,
                _ => Err(MapsLineError::NotUtf8),
            },
        };
        let line = match parsed {
            Ok(line) => line,
            Err(error) => {
                let line_number = index + 1;
                warn!(pid, line_number, %error, "skipping malformed /proc/PID/maps line");
                continue;
            }
        };
        // Only files can be opened through /proc/PID/root: not `[vdso]`, not anonymous memory.
        if line.executable && line.path.starts_with('/') {
            mappings.push(ExecMapping {
                start: line.start,
                end: line.end,
                file_offset: line.file_offset,
                path: line.path.to_owned(),
            });
        }
    }
    mappings
}

/// Hex digits only (no sign, no `0x`): what the kernel prints.
fn parse_hex(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|byte| byte.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(text, 16).ok()
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
    fn real_maps_give_the_executable_file_mappings_only() {
        let content = include_bytes!("fixtures/proc_maps_cat.txt");
        let (mappings, log) = capture_warnings(|| parse_exec_mappings(7, content));
        assert_eq!(
            paths(&mappings),
            [
                "/usr/bin/cat",
                "/memfd:jit-code (deleted)",
                "/usr/lib/x86_64-linux-gnu/libc.so.6",
                "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
            ],
            "no [vdso], [vsyscall], anonymous or non-executable mapping"
        );
        let libc = &mappings[2];
        assert_eq!(
            (libc.start, libc.end, libc.file_offset),
            (0x7f96_b29b_1000, 0x7f96_b2b0_7000, 0x26000)
        );
        assert!(log.is_empty(), "a real file warns of nothing: {log:?}");
    }

    #[test]
    fn a_maps_file_cut_mid_line_keeps_the_lines_before_with_a_warning() {
        let content = include_bytes!("fixtures/proc_maps_truncated.txt");
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
    fn malformed_maps_lines_are_skipped_one_by_one_with_a_warning_each() {
        let good = "00400000-00452000 r-xp 00000000 08:02 173521      /usr/bin/dbus-daemon";
        let bad_lines: [&[u8]; 9] = [
            b"00400000-00452000 r-xp",
            b"00400000 r-xp 00000000 08:02 173521 /usr/bin/a",
            b"00452000-00400000 r-xp 00000000 08:02 173521 /usr/bin/a",
            b"00400000-00452000 rwxpq 00000000 08:02 173521 /usr/bin/a",
            b"00400000-00452000 r-xp +0000000 08:02 173521 /usr/bin/a",
            b"00400000-00452000 r-xp 00000000 0802 173521 /usr/bin/a",
            b"00400000-00452000 r-xp 00000000 08:02 -1 /usr/bin/a",
            b"00400000-00452000 r-xp 00000000 08:02 173521 /usr/bin/\xff\xfe",
            b"\x00\x01garbage",
        ];
        let mut content = Vec::new();
        for bad in bad_lines {
            content.extend_from_slice(bad);
            content.push(b'\n');
        }
        content.extend_from_slice(b"00400000-00452000 r--p 00000000 08:02 173521 /data/\xff.db\n");
        content.extend_from_slice(good.as_bytes());
        let (mappings, log) = capture_warnings(|| parse_exec_mappings(7, &content));
        assert_eq!(paths(&mappings), ["/usr/bin/dbus-daemon"]);
        let warnings = log.iter().filter(|line| line.contains("WARN")).count();
        assert_eq!(
            warnings,
            bad_lines.len(),
            "one warning per bad line, none for data mapped from a non-UTF-8 name: {log:#?}"
        );
        assert_one_warning(&log, &["line_number=8", "not UTF-8"]);
        assert_one_warning(&log, &["line_number=3", "is empty"]);
    }

    #[test]
    fn file_names_that_panic_procfs_are_plain_paths() {
        // procfs 0.18 slices `/SYSV` names as System V shared memory (`/SYSV%08x`) and panics
        // on shorter ones: a pod could crash the daemon by running a program named so.
        for name in ["/SYSV", "/SYSVx", "/SYSV00000000 (deleted)", "/SYSVé"] {
            let line = format!("7f0000000000-7f0000001000 r-xp 00000000 00:01 5 {name}\n");
            let mappings = parse_exec_mappings(7, line.as_bytes());
            assert_eq!(paths(&mappings), [name], "{line:?}");
        }
        let stack = parse_maps_line("7f0000000000-7f0000001000 r-xp 00000000 00:00 0 [stack:é")
            .expect("a bracketed name parses");
        assert_eq!(stack.path, "[stack:é", "kept as is, and not a file");
    }

    #[test]
    fn anonymous_lines_have_an_empty_path_with_or_without_the_trailing_space() {
        for line in [
            "7f100a7bd000-7f100a7df000 rw-p 00000000 00:00 0 ",
            "7f100a7bd000-7f100a7df000 rw-p 00000000 00:00 0",
        ] {
            let parsed = parse_maps_line(line).expect("an anonymous mapping parses");
            assert_eq!((parsed.path, parsed.executable), ("", false), "{line:?}");
        }
        let spaced = parse_maps_line("00400000-00401000 r-xp 00000000 08:02 1   /opt/my app/bin")
            .expect("a path with spaces parses");
        assert_eq!(spaced.path, "/opt/my app/bin");
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
