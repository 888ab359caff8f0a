//! Lines of /proc/PID/maps, and the file-backed executable mappings among them: where a
//! process's code comes from. Reading the file is the daemon's (`discover::process`).

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

/// A line of /proc/PID/maps content that [`exec_mappings`] skipped.
#[derive(Debug, PartialEq, Eq)]
pub struct MalformedLine {
    /// 1-based line number.
    pub line_number: usize,
    /// What is wrong with it.
    pub error: MapsLineError,
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

/// The file-backed executable mappings in /proc/PID/maps content, in file order, and the
/// malformed lines among them (a truncated read, code mapped from a non-UTF-8 file name), each
/// in its place: the caller decides how loudly to skip them.
///
/// A non-UTF-8 line that maps data, not code, is left out silently: a file name may be any
/// bytes, and only code is worth a word.
pub fn exec_mappings(
    content: &[u8],
) -> impl Iterator<Item = Result<ExecMapping, MalformedLine>> + '_ {
    let lines = content.split(|byte| *byte == b'\n').enumerate();
    lines.filter_map(|(index, line)| {
        if line.is_empty() {
            return None;
        }
        let parsed = match str::from_utf8(line) {
            Ok(line) => parse_maps_line(line),
            Err(_) => match parse_maps_line(&String::from_utf8_lossy(line)) {
                Ok(lossy) if !lossy.executable => return None,
                _ => Err(MapsLineError::NotUtf8),
            },
        };
        let line = match parsed {
            Ok(line) => line,
            Err(error) => {
                let line_number = index + 1;
                return Some(Err(MalformedLine { line_number, error }));
            }
        };
        // Only files can be opened through /proc/PID/root: not `[vdso]`, not anonymous memory.
        (line.executable && line.path.starts_with('/')).then(|| {
            Ok(ExecMapping {
                start: line.start,
                end: line.end,
                file_offset: line.file_offset,
                path: line.path.to_owned(),
            })
        })
    })
}

/// Hex digits only (no sign, no `0x`): what the kernel prints.
fn parse_hex(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|byte| byte.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(text, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The mappings and the malformed lines of `content`, each in file order.
    fn split(content: &[u8]) -> (Vec<ExecMapping>, Vec<MalformedLine>) {
        let (mut mappings, mut malformed) = (Vec::new(), Vec::new());
        for item in exec_mappings(content) {
            match item {
                Ok(mapping) => mappings.push(mapping),
                Err(line) => malformed.push(line),
            }
        }
        (mappings, malformed)
    }

    fn paths(mappings: &[ExecMapping]) -> Vec<&str> {
        mappings
            .iter()
            .map(|mapping| mapping.path.as_str())
            .collect()
    }

    #[test]
    fn real_maps_give_the_executable_file_mappings_only() {
        let (mappings, malformed) = split(include_bytes!("fixtures/proc_maps_cat.txt"));
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
        assert_eq!(malformed, [], "a real file has no malformed line");
    }

    #[test]
    fn a_maps_file_cut_mid_line_keeps_the_lines_before() {
        let (mappings, malformed) = split(include_bytes!("fixtures/proc_maps_truncated.txt"));
        assert_eq!(
            paths(&mappings),
            ["/usr/bin/cat", "/memfd:jit-code (deleted)"],
            "the cut libc line is skipped, the lines before it are kept"
        );
        let [cut] = &malformed[..] else {
            panic!("one malformed line: {malformed:?}");
        };
        let expected = MalformedLine {
            line_number: 21,
            error: MapsLineError::MissingField { field: "device" },
        };
        assert_eq!(*cut, expected);
    }

    #[test]
    fn malformed_maps_lines_are_skipped_one_by_one_naming_the_line() {
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
        let (mappings, malformed) = split(&content);
        assert_eq!(paths(&mappings), ["/usr/bin/dbus-daemon"]);
        let line_numbers: Vec<usize> = malformed.iter().map(|line| line.line_number).collect();
        assert_eq!(
            line_numbers,
            (1..=bad_lines.len()).collect::<Vec<_>>(),
            "each bad line once, not data mapped from a non-UTF-8 name: {malformed:?}"
        );
        assert_eq!(malformed[7].error, MapsLineError::NotUtf8);
        assert_eq!(
            malformed[2].error,
            MapsLineError::EmptyRange {
                start: 0x452000,
                end: 0x400000
            }
        );
        assert_eq!(
            malformed[0].error,
            MapsLineError::MissingField { field: "offset" }
        );
    }

    #[test]
    fn file_names_that_panic_procfs_are_plain_paths() {
        // procfs 0.18 slices `/SYSV` names as System V shared memory (`/SYSV%08x`) and panics
        // on shorter ones: a pod could crash the daemon by running a program named so.
        for name in ["/SYSV", "/SYSVx", "/SYSV00000000 (deleted)", "/SYSVé"] {
            let line = format!("7f0000000000-7f0000001000 r-xp 00000000 00:01 5 {name}\n");
            let (mappings, malformed) = split(line.as_bytes());
            assert_eq!(paths(&mappings), [name], "{line:?}: {malformed:?}");
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
}
