//! Reading a cgroup's memory figures and this host's cgroup mounts from their files. What the
//! files hold is parsed by `tracer_parse::memory`, re-exported here whole.

use std::fs;
use std::path::Path;

use tracing::warn;

pub use tracer_parse::memory::*;

/// Reads the memory figures of the cgroup directory `dir` (the files [`memory_figures`]
/// names).
pub fn read_memory(dir: &Path, version: CgroupVersion) -> Result<MemoryFigures, MemoryError> {
    memory_figures(version, |file| {
        let path = dir.join(file);
        // Not `fs::read_to_string`: see `read_proc_file`; this runs for every watched
        // container each sample interval.
        let mut bytes = Vec::new();
        super::process::read_proc_file(&path, &mut bytes)
            .and_then(|()| {
                String::from_utf8(bytes)
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
            })
            .map_err(|source| MemoryError::Read { path, source })
    })
}

/// Reads /proc/self/mountinfo and `<unified>/cgroup.controllers`, and finds this agent's
/// cgroup namespace root in each mount (see [`super::cgroup_namespace`]); what cannot be read
/// is left out with a warning.
pub fn read_cgroup_mounts() -> CgroupMounts {
    let mut mounts = match fs::read_to_string("/proc/self/mountinfo") {
        Ok(content) => parse_mountinfo(&content),
        Err(error) => {
            warn!(%error, "cannot read /proc/self/mountinfo; assuming no cgroup mounts");
            return CgroupMounts::default();
        }
    };
    if let Some(unified) = &mounts.unified {
        let path = unified.path.join("cgroup.controllers");
        match fs::read_to_string(&path) {
            Ok(content) => mounts.unified_has_memory = lists_memory_controller(&content),
            Err(error) => {
                warn!(path = %path.display(), %error, "cannot read the unified hierarchy's controllers");
            }
        }
    }
    super::cgroup_namespace::locate_namespace_roots(&mut mounts);
    mounts
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A temp dir holding a v2 cgroup's memory files but `skip`, removed on drop.
    struct CgroupDir(PathBuf);

    impl CgroupDir {
        fn v2_without(skip: &str) -> Self {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let unique = format!(
                "tracer-memory-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            );
            let dir = Self(std::env::temp_dir().join(unique));
            fs::create_dir_all(&dir.0).expect("create the temp cgroup dir");
            for (name, content) in [
                (
                    "memory.current",
                    include_str!("../../../tracer-parse/src/fixtures/memory_v2/memory.current"),
                ),
                (
                    "memory.max",
                    include_str!("../../../tracer-parse/src/fixtures/memory_v2/memory.max"),
                ),
                (
                    "memory.events",
                    include_str!("../../../tracer-parse/src/fixtures/memory_v2/memory.events"),
                ),
            ] {
                if name != skip {
                    fs::write(dir.0.join(name), content)
                        .unwrap_or_else(|error| panic!("{name}: {error}"));
                }
            }
            dir
        }
    }

    impl Drop for CgroupDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn a_cgroup_directory_is_read_through_its_files() {
        let dir = CgroupDir::v2_without("");
        let figures = read_memory(&dir.0, CgroupVersion::V2).expect("the v2 files read");
        assert_eq!((figures.usage_bytes, figures.limit_hits), (188_416_000, 12));
    }

    #[test]
    fn missing_files_are_read_errors_naming_the_path() {
        for file in ["memory.current", "memory.max", "memory.events"] {
            let dir = CgroupDir::v2_without(file);
            let error = read_memory(&dir.0, CgroupVersion::V2).expect_err("a file is missing");
            let MemoryError::Read { path, .. } = &error else {
                panic!("expected a read error for {file}, got {error:?}");
            };
            assert_eq!(path, &dir.0.join(file), "{error}");
        }
    }

    #[test]
    fn read_cgroup_mounts_matches_this_hosts_mountinfo() {
        let content = fs::read_to_string("/proc/self/mountinfo").expect("Linux has mountinfo");
        let (mounts, parsed) = (read_cgroup_mounts(), parse_mountinfo(&content));
        let path = |mount: &Option<CgroupMount>| mount.as_ref().map(|m| m.path.clone());
        assert_eq!(
            (path(&mounts.unified), path(&mounts.memory_v1)),
            (path(&parsed.unified), path(&parsed.memory_v1))
        );
        let controllers = (parsed.unified)
            .and_then(|unified| fs::read_to_string(unified.path.join("cgroup.controllers")).ok())
            .unwrap_or_default();
        assert_eq!(
            mounts.unified_has_memory,
            lists_memory_controller(&controllers),
            "{controllers:?}"
        );
    }
}
