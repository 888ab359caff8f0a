//! A cgroup's memory figures (usage, limit, limit hits, OOM kills) on cgroup v2 and v1, and
//! where the cgroup filesystems are mounted, so leak growth can be set against the limit.
//! Reading the files is the daemon's (`discover::memory`); this module says what they hold.

use std::ffi::OsString;
use std::io;
use std::os::unix::ffi::OsStringExt as _;
use std::path::{Component, Path, PathBuf};

use crate::cgroup_namespace::{NamespaceRoots, levels_above_namespace_root};

/// v1 limits at or above this mean "unlimited": the kernel reports its page-counter maximum
/// (9223372036854771712 with 4 KiB pages), and no real limit comes near 4 EiB.
const V1_UNLIMITED_THRESHOLD_BYTES: u64 = 1 << 62;

/// Why a cgroup's memory figures could not be read.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// A cgroup file could not be read (the cgroup is gone, or the controller is not enabled):
    /// the reader given to [`memory_figures`] says so.
    #[error("cannot read {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the read returned.
        #[source]
        source: io::Error,
    },
    /// A cgroup file does not hold what the kernel writes there (truncated or garbage).
    #[error("{file}: expected {expected}, got {found:?}")]
    Invalid {
        /// The file's name, e.g. `memory.max`.
        file: &'static str,
        /// What the kernel writes there.
        expected: &'static str,
        /// The offending text.
        found: String,
    },
}

impl MemoryError {
    fn invalid(file: &'static str, expected: &'static str, found: impl Into<String>) -> Self {
        Self::Invalid {
            file,
            expected,
            found: found.into(),
        }
    }
}

/// Which cgroup hierarchy a directory belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CgroupVersion {
    /// A v1 hierarchy with the memory controller (`memory.usage_in_bytes` and friends).
    V1,
    /// The unified hierarchy (`memory.current` and friends).
    V2,
}

/// Memory figures of one cgroup.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MemoryFigures {
    /// Memory charged to the cgroup (v2 `memory.current`, v1 `memory.usage_in_bytes`).
    pub usage_bytes: u64,
    /// Hard limit; `None` when unlimited (`max` in v2, the page-counter maximum in v1).
    pub limit_bytes: Option<u64>,
    /// Times usage hit the limit (v2 `memory.events` `max`, v1 `memory.failcnt`).
    pub limit_hits: u64,
    /// Processes the OOM killer killed in the cgroup (v2 `memory.events` `oom_kill`, v1
    /// `memory.oom_control` `oom_kill`, 0 on kernels before 4.13 that lack it).
    pub oom_kills: u64,
    /// Times usage went over `memory.high` and was throttled (v2 only; 0 on v1).
    pub high_events: u64,
    /// The cgroup is out of memory right now with the OOM killer disabled (v1 only; false on v2).
    pub under_oom: bool,
    /// Anonymous memory (v2 `memory.stat` `anon`, v1 `total_rss`): what a leak grows, without
    /// the page cache, which the kernel reclaims before it kills. `None` when memory.stat is
    /// unreadable or lacks the line.
    #[serde(default)]
    pub anon_bytes: Option<u64>,
}

/// The counters of a v2 `memory.events` file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryEvents {
    /// Reclaimed below `memory.low` under pressure.
    pub low: u64,
    /// Went over `memory.high` and was throttled.
    pub high: u64,
    /// Hit `memory.max`.
    pub max: u64,
    /// The OOM killer was invoked.
    pub oom: u64,
    /// A process was killed by the OOM killer.
    pub oom_kill: u64,
    /// The whole cgroup was killed at once (`memory.oom.group`, kernel 5.17+).
    pub oom_group_kill: u64,
}

/// The fields of a v1 `memory.oom_control` file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OomControl {
    /// The OOM killer is disabled for the cgroup: tasks hang instead of dying.
    pub oom_kill_disable: bool,
    /// The cgroup is out of memory right now (only lasts while the killer is disabled).
    pub under_oom: bool,
    /// Processes killed by the OOM killer (0 when the kernel predates the line, before 4.13).
    pub oom_kill: u64,
}

/// A cgroup's memory figures from its files; `read` gives a file's content by name (e.g.
/// `memory.max`): from the cgroup's directory in the daemon, from fixtures in tests.
///
/// v2 reads `memory.current`, `memory.max` and `memory.events`; v1 reads
/// `memory.usage_in_bytes`, `memory.limit_in_bytes`, `memory.failcnt` and `memory.oom_control`.
/// The first file that `read` fails on or that does not parse is the error. Both also read
/// `memory.stat` for the anonymous memory, which is optional: without it `anon_bytes` is `None`.
pub fn memory_figures(
    version: CgroupVersion,
    read: impl Fn(&'static str) -> Result<String, MemoryError>,
) -> Result<MemoryFigures, MemoryError> {
    let number = |file: &'static str| parse_count(file, &read(file)?);
    let limit = |file: &'static str| parse_limit_in(file, &read(file)?);
    Ok(match version {
        CgroupVersion::V2 => {
            let events = parse_memory_events(&read("memory.events")?)?;
            MemoryFigures {
                usage_bytes: number("memory.current")?,
                limit_bytes: limit("memory.max")?,
                limit_hits: events.max,
                oom_kills: events.oom_kill,
                high_events: events.high,
                under_oom: false,
                anon_bytes: read("memory.stat")
                    .ok()
                    .and_then(|s| stat_value(&s, "anon")),
            }
        }
        CgroupVersion::V1 => {
            let oom_control = parse_oom_control(&read("memory.oom_control")?)?;
            MemoryFigures {
                usage_bytes: number("memory.usage_in_bytes")?,
                limit_bytes: limit("memory.limit_in_bytes")?,
                limit_hits: number("memory.failcnt")?,
                oom_kills: oom_control.oom_kill,
                high_events: 0,
                under_oom: oom_control.under_oom,
                anon_bytes: read("memory.stat")
                    .ok()
                    .and_then(|s| stat_value(&s, "total_rss").or_else(|| stat_value(&s, "rss"))),
            }
        }
    })
}

/// The value of one `key value` line of a `memory.stat` file; `None` when the line is missing
/// or not a number.
pub fn stat_value(content: &str, key: &str) -> Option<u64> {
    content.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        if k == key {
            v.trim().parse().ok()
        } else {
            None
        }
    })
}

/// Parses a v2 `memory.events` file: `key value` lines; unknown keys are ignored (newer
/// kernels add some) and missing ones are 0.
pub fn parse_memory_events(content: &str) -> Result<MemoryEvents, MemoryError> {
    let mut events = MemoryEvents::default();
    for (key, value) in key_values("memory.events", content)? {
        let counter = match key {
            "low" => &mut events.low,
            "high" => &mut events.high,
            "max" => &mut events.max,
            "oom" => &mut events.oom,
            "oom_kill" => &mut events.oom_kill,
            "oom_group_kill" => &mut events.oom_group_kill,
            _ => continue,
        };
        *counter = value;
    }
    Ok(events)
}

/// Parses a v1 `memory.oom_control` file; `oom_kill_disable` and `under_oom` must be there,
/// `oom_kill` is 0 when absent (kernels before 4.13).
pub fn parse_oom_control(content: &str) -> Result<OomControl, MemoryError> {
    const FILE: &str = "memory.oom_control";
    let (mut oom_kill_disable, mut under_oom, mut oom_kill) = (None, None, 0);
    for (key, value) in key_values(FILE, content)? {
        match key {
            "oom_kill_disable" => oom_kill_disable = Some(parse_flag(FILE, key, value)?),
            "under_oom" => under_oom = Some(parse_flag(FILE, key, value)?),
            "oom_kill" => oom_kill = value,
            _ => {}
        }
    }
    let missing = |key: &str| {
        let found = format!("no {key} line in {content:?}");
        MemoryError::invalid(FILE, "oom_kill_disable and under_oom lines", found)
    };
    Ok(OomControl {
        oom_kill_disable: oom_kill_disable.ok_or_else(|| missing("oom_kill_disable"))?,
        under_oom: under_oom.ok_or_else(|| missing("under_oom"))?,
        oom_kill,
    })
}

/// Parses a memory limit (v2 `memory.max`, v1 `memory.limit_in_bytes`): `max` and v1's huge
/// page-counter maximum give `None` (unlimited), a number gives that many bytes. Errors call
/// the file `memory limit`; [`memory_figures`] names the real one.
pub fn parse_limit(content: &str) -> Result<Option<u64>, MemoryError> {
    parse_limit_in("memory limit", content)
}

fn parse_limit_in(file: &'static str, content: &str) -> Result<Option<u64>, MemoryError> {
    let value = content.trim();
    if value == "max" {
        return Ok(None);
    }
    let bytes = (value.parse::<u64>())
        .map_err(|_| MemoryError::invalid(file, "a number or \"max\"", value))?;
    Ok((bytes < V1_UNLIMITED_THRESHOLD_BYTES).then_some(bytes))
}

fn parse_count(file: &'static str, content: &str) -> Result<u64, MemoryError> {
    let value = content.trim();
    (value.parse::<u64>()).map_err(|_| MemoryError::invalid(file, "a number", value))
}

fn parse_flag(file: &'static str, key: &str, value: u64) -> Result<bool, MemoryError> {
    match value {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(MemoryError::Invalid {
            file,
            expected: "0 or 1",
            found: format!("{key} {value}"),
        }),
    }
}

/// `key value` lines with numeric values; blank lines are skipped, anything else is an error.
fn key_values<'content>(
    file: &'static str,
    content: &'content str,
) -> Result<Vec<(&'content str, u64)>, MemoryError> {
    let mut pairs = Vec::new();
    for line in content.lines().filter(|line| !line.trim().is_empty()) {
        let invalid = || MemoryError::Invalid {
            file,
            expected: "\"key number\" lines",
            found: line.to_owned(),
        };
        let mut fields = line.split_whitespace();
        let (Some(key), Some(value), None) = (fields.next(), fields.next(), fields.next()) else {
            return Err(invalid());
        };
        pairs.push((key, value.parse::<u64>().map_err(|_| invalid())?));
    }
    Ok(pairs)
}

/// Where the cgroup filesystems are mounted on this host.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CgroupMounts {
    /// The cgroup2 mount: at `/sys/fs/cgroup` on v2 hosts, `/sys/fs/cgroup/unified` on hybrid
    /// ones.
    pub unified: Option<CgroupMount>,
    /// The v1 mount whose super options include `memory`, e.g. `/sys/fs/cgroup/memory`.
    pub memory_v1: Option<CgroupMount>,
    /// `<unified>/cgroup.controllers` lists `memory` (see [`lists_memory_controller`]);
    /// [`parse_mountinfo`] leaves it false.
    pub unified_has_memory: bool,
}

impl CgroupMounts {
    /// This process's cgroup namespace roots below the mounts' roots, to resolve the paths
    /// of /proc/PID/cgroup with ([`crate::cgroup::process_cgroups`]).
    pub fn namespace_roots(&self) -> NamespaceRoots<'_> {
        NamespaceRoots {
            unified: namespace_root(self.unified.as_ref()),
            memory_v1: namespace_root(self.memory_v1.as_ref()),
        }
    }
}

fn namespace_root(mount: Option<&CgroupMount>) -> Option<&str> {
    mount?.namespace_root.as_deref()
}

/// One mounted cgroup hierarchy, and where this process's cgroup namespace root sits in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupMount {
    /// Where it is mounted.
    pub path: PathBuf,
    /// How many levels the mount's root lies above this process's cgroup namespace root: 0
    /// when mountinfo shows the root as `/` (the host's namespace, or a mount of the
    /// namespace's own subtree), `n` for `/..` written `n` times (the host's hierarchy mounted
    /// into a container with a namespace of its own).
    pub levels_above_namespace_root: usize,
    /// The namespace root's path below the mount's root (e.g.
    /// `/kubepods.slice/.../cri-containerd-<id>.scope`): `/` when the mount's root is the
    /// namespace root; `None` while not known. Below a mount's root, names are not in
    /// mountinfo: the daemon finds them by looking for its own cgroup in the mount.
    pub namespace_root: Option<String>,
}

impl CgroupMount {
    /// A mount whose root is this process's namespace root (as in the host's namespace).
    pub fn at_namespace_root(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            levels_above_namespace_root: 0,
            namespace_root: Some("/".to_owned()),
        }
    }
}

/// Finds the cgroup mounts in /proc/self/mountinfo content; malformed lines are ignored.
///
/// Only mounts whose root is this process's cgroup namespace root or one of its ancestors
/// count (mountinfo's fourth field is `/` or `/..` repeated, see
/// [`levels_above_namespace_root`]): the paths in /proc/PID/cgroup, relative to that root, can
/// be placed below those. Of several, the one reaching highest wins (the host's hierarchy
/// mounted into a container rather than the container's own cgroup), then the first; a mount
/// hidden by another mounted on top of it at the same place does not count.
pub fn parse_mountinfo(content: &str) -> CgroupMounts {
    let lines: Vec<MountinfoLine<'_>> = content.lines().filter_map(parse_mountinfo_line).collect();
    let hidden = |line: &MountinfoLine<'_>| {
        lines
            .iter()
            .any(|above| above.parent_id == line.mount_id && above.mount_point == line.mount_point)
    };
    let mut mounts = CgroupMounts::default();
    for line in &lines {
        let Some(levels) = levels_above_namespace_root(line.root) else {
            continue;
        };
        let slot = match line.filesystem_type {
            "cgroup2" => &mut mounts.unified,
            "cgroup" if has_memory_option(line.super_options) => &mut mounts.memory_v1,
            _ => continue,
        };
        let reaches_higher = slot
            .as_ref()
            .is_none_or(|chosen| levels > chosen.levels_above_namespace_root);
        if reaches_higher && !hidden(line) {
            *slot = Some(CgroupMount {
                path: line.mount_point.clone(),
                levels_above_namespace_root: levels,
                namespace_root: (levels == 0).then(|| "/".to_owned()),
            });
        }
    }
    mounts
}

/// The directory holding a process's memory cgroup, and its version: the v1 memory controller
/// if mounted and the process has a memory line, else the unified hierarchy if it has the
/// memory controller.
///
/// The paths are below the mounts' roots (resolved, see [`crate::cgroup::process_cgroups`]).
/// `None` also when a path climbs out of the mount with `..`: the directory would not be the
/// process's cgroup.
pub fn memory_cgroup_dir(
    mounts: &CgroupMounts,
    unified_path: Option<&str>,
    memory_v1_path: Option<&str>,
) -> Option<(PathBuf, CgroupVersion)> {
    if let (Some(mount), Some(path)) = (&mounts.memory_v1, memory_v1_path) {
        return Some((join_cgroup_path(&mount.path, path)?, CgroupVersion::V1));
    }
    match (&mounts.unified, unified_path) {
        (Some(mount), Some(path)) if mounts.unified_has_memory => {
            Some((join_cgroup_path(&mount.path, path)?, CgroupVersion::V2))
        }
        _ => None,
    }
}

/// `mount` joined with a cgroup path below its root; `None` for paths that climb out of the
/// mount.
pub fn join_cgroup_path(mount: &Path, cgroup_path: &str) -> Option<PathBuf> {
    let mut directory = mount.to_path_buf();
    for component in Path::new(cgroup_path).components() {
        match component {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(part) => directory.push(part),
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(directory)
}

fn has_memory_option(super_options: &str) -> bool {
    super_options.split(',').any(|option| option == "memory")
}

/// Whether a `cgroup.controllers` file lists the memory controller.
pub fn lists_memory_controller(controllers: &str) -> bool {
    controllers
        .split_whitespace()
        .any(|controller| controller == "memory")
}

/// The fields of one mountinfo line that matter here.
struct MountinfoLine<'line> {
    /// This mount's id.
    mount_id: u64,
    /// The id of the mount it is mounted on.
    parent_id: u64,
    /// Root of the mount within its filesystem (`/` unless a subtree is mounted; for cgroups,
    /// relative to the reader's cgroup namespace root).
    root: &'line str,
    /// Where it is mounted, octal escapes decoded.
    mount_point: PathBuf,
    /// `cgroup2`, `cgroup`, `tmpfs`, ...
    filesystem_type: &'line str,
    /// Per-superblock options: for v1 cgroups, the controllers (`rw,memory`).
    super_options: &'line str,
}

/// `id parent major:minor root mount-point options [optional...] - type source super-options`.
fn parse_mountinfo_line(line: &str) -> Option<MountinfoLine<'_>> {
    let (before, after) = line.split_once(" - ")?;
    let fields: Vec<&str> = before.split(' ').collect();
    let [mount_id, parent_id, device, root, mount_point, _options, ..] = fields[..] else {
        return None;
    };
    let mount_id = mount_id.parse::<u64>().ok()?;
    let parent_id = parent_id.parse::<u64>().ok()?;
    device.contains(':').then_some(())?;
    let after_fields: Vec<&str> = after.split(' ').collect();
    let [filesystem_type, _source, super_options, ..] = after_fields[..] else {
        return None;
    };
    Some(MountinfoLine {
        mount_id,
        parent_id,
        root,
        mount_point: unescape_octal(mount_point),
        filesystem_type,
        super_options,
    })
}

/// Decodes the kernel's `\ooo` escapes (space, tab, newline, backslash) in mountinfo paths.
fn unescape_octal(escaped: &str) -> PathBuf {
    let mut decoded = Vec::with_capacity(escaped.len());
    let mut rest = escaped.as_bytes();
    while let Some((&byte, tail)) = rest.split_first() {
        match tail {
            [
                high @ b'0'..=b'3',
                middle @ b'0'..=b'7',
                low @ b'0'..=b'7',
                remaining @ ..,
            ] if byte == b'\\' => {
                decoded.push((high - b'0') * 64 + (middle - b'0') * 8 + (low - b'0'));
                rest = remaining;
            }
            _ => {
                decoded.push(byte);
                rest = tail;
            }
        }
    }
    PathBuf::from(OsString::from_vec(decoded))
}

#[cfg(test)]
mod tests;
