//! Separate debug files for binaries stripped of `.symtab`: found by build id under
//! `/usr/lib/debug/.build-id`, then by `.gnu_debuglink` next to the binary, in its `.debug`
//! directory and under `/usr/lib/debug`, first inside the process's own root (a container's
//! debug packages), then on the node.

use std::{fs::File, path::PathBuf};

use object::{Object as _, ObjectSection as _, ObjectSegment as _};

/// What a binary needs from a debug file, learned from its own ELF headers.
#[derive(Debug, Default)]
pub(crate) struct DebugLookup {
    /// File offset to virtual address, for the segment of each mapping (debug files keep the
    /// addresses, not the file layout).
    segments: Vec<(u64, u64, u64)>,
    build_id: Option<Vec<u8>>,
    debuglink: Option<String>,
    /// The binary has its own `.symtab`: no debug file is looked for.
    has_symtab: bool,
}

impl DebugLookup {
    /// Reads a binary's build id, debug link and segments (None: not an ELF file).
    pub(crate) fn of(data: &[u8]) -> Option<Self> {
        let file = object::File::parse(data).ok()?;
        Some(Self {
            segments: file
                .segments()
                .map(|segment| {
                    let (offset, size) = segment.file_range();
                    (offset, size, segment.address())
                })
                .collect(),
            build_id: file.build_id().ok().flatten().map(<[u8]>::to_vec),
            debuglink: file
                .gnu_debuglink()
                .ok()
                .flatten()
                .and_then(|(name, _crc)| std::str::from_utf8(name).ok().map(str::to_owned)),
            has_symtab: file
                .section_by_name(".symtab")
                .is_some_and(|section| section.size() > 0),
        })
    }

    /// The virtual address of a file offset.
    pub(crate) fn virtual_address(&self, file_offset: u64) -> Option<u64> {
        self.segments
            .iter()
            .find(|&&(offset, size, _)| file_offset >= offset && file_offset < offset + size)
            .map(|&(offset, _, address)| address + (file_offset - offset))
    }

    /// Opens the debug file of a binary mapped by `pid` at `path` (as the process sees it),
    /// when the binary lacks `.symtab` and one is installed.
    pub(crate) fn open(&self, pid: u32, path: &str) -> Option<File> {
        if self.has_symtab {
            return None;
        }
        candidates(
            pid,
            path,
            self.build_id.as_deref(),
            self.debuglink.as_deref(),
        )
        .into_iter()
        .filter_map(|candidate| File::open(candidate).ok())
        .find(|file| self.matches(file))
    }

    /// A debug file with another build id belongs to another build.
    fn matches(&self, file: &File) -> bool {
        let Some(wanted) = &self.build_id else {
            return true;
        };
        let Ok(data) = std::fs::read(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(file)
        )) else {
            return false;
        };
        object::File::parse(&*data)
            .ok()
            .and_then(|debug| debug.build_id().ok().flatten().map(<[u8]>::to_vec))
            .is_none_or(|found| &found == wanted)
    }
}

/// Where debug files are looked for, in order.
fn candidates(
    pid: u32,
    path: &str,
    build_id: Option<&[u8]>,
    debuglink: Option<&str>,
) -> Vec<PathBuf> {
    let roots = [format!("/proc/{pid}/root"), String::new()];
    let mut out = Vec::new();
    if let Some(id) = build_id.filter(|id| id.len() >= 2) {
        let hex: String = id.iter().map(|byte| format!("{byte:02x}")).collect();
        for root in &roots {
            out.push(PathBuf::from(format!(
                "{root}/usr/lib/debug/.build-id/{}/{}.debug",
                &hex[..2],
                &hex[2..]
            )));
        }
    }
    if let Some(name) = debuglink.filter(|name| !name.is_empty() && !name.contains('/')) {
        let dir = path.rsplit_once('/').map_or("", |(dir, _)| dir);
        for root in &roots {
            out.push(PathBuf::from(format!("{root}{dir}/{name}")));
            out.push(PathBuf::from(format!("{root}{dir}/.debug/{name}")));
            out.push(PathBuf::from(format!("{root}/usr/lib/debug{dir}/{name}")));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_id_comes_first_then_the_debug_link_inside_the_process_root_then_the_node() {
        let paths = candidates(
            7,
            "/app/bin/server",
            Some(&[0xab, 0xcd, 0xef]),
            Some("server.debug"),
        );
        let paths: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
        assert_eq!(
            paths,
            [
                "/proc/7/root/usr/lib/debug/.build-id/ab/cdef.debug",
                "/usr/lib/debug/.build-id/ab/cdef.debug",
                "/proc/7/root/app/bin/server.debug",
                "/proc/7/root/app/bin/.debug/server.debug",
                "/proc/7/root/usr/lib/debug/app/bin/server.debug",
                "/app/bin/server.debug",
                "/app/bin/.debug/server.debug",
                "/usr/lib/debug/app/bin/server.debug",
            ]
        );
    }

    #[test]
    fn a_debug_link_with_a_path_in_it_is_ignored() {
        assert!(candidates(7, "/app/server", None, Some("../../etc/shadow")).is_empty());
    }
}
