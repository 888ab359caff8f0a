//! Memory cgroup files (memory.max, memory.events, memory.oom_control, the v1 limit, a whole
//! cgroup's files), /proc/self/mountinfo, and cgroup paths joined to a mount: what parses writes back to the
//! same values, and no joined path leaves the mount.

#![no_main]

use std::path::{Component, Path};

use libfuzzer_sys::fuzz_target;
use tracer_parse::memory::{self, CgroupMount, CgroupMounts, CgroupVersion};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match memory::parse_limit(text) {
        Ok(Some(bytes)) => {
            assert!(bytes < 1 << 62, "unlimited taken as a limit: {bytes}");
            assert_eq!(
                memory::parse_limit(&format!("{bytes}\n")).ok(),
                Some(Some(bytes))
            );
        }
        Ok(None) => assert!(text.trim() == "max" || text.trim().parse::<u64>().is_ok()),
        Err(_) => {}
    }
    if let Ok(events) = memory::parse_memory_events(text) {
        let written = format!(
            "low {}\nhigh {}\nmax {}\noom {}\noom_kill {}\noom_group_kill {}\n",
            events.low, events.high, events.max, events.oom, events.oom_kill, events.oom_group_kill
        );
        assert_eq!(memory::parse_memory_events(&written).ok(), Some(events));
    }
    if let Ok(control) = memory::parse_oom_control(text) {
        let written = format!(
            "oom_kill_disable {}\nunder_oom {}\noom_kill {}\n",
            u8::from(control.oom_kill_disable),
            u8::from(control.under_oom),
            control.oom_kill
        );
        assert_eq!(memory::parse_oom_control(&written).ok(), Some(control));
    }
    for version in [CgroupVersion::V1, CgroupVersion::V2] {
        // Every file holding the input: what does not parse is an error, never a panic.
        let _ = memory::memory_figures(version, |_| Ok(text.to_owned()));
    }
    let mut mounts = memory::parse_mountinfo(text);
    mounts.unified_has_memory = true;
    let cgroup_root = Path::new("/sys/fs/cgroup");
    for line in text.lines() {
        if let Some(directory) = memory::join_cgroup_path(cgroup_root, line) {
            assert_inside(&directory, cgroup_root, line);
        }
        let (unified, memory_v1) = line.split_once(' ').unwrap_or((line, line));
        let fixed = CgroupMounts {
            unified: Some(CgroupMount::at_namespace_root(cgroup_root.join("unified"))),
            memory_v1: Some(CgroupMount::at_namespace_root(cgroup_root.join("memory"))),
            unified_has_memory: true,
        };
        for mounts in [&mounts, &fixed] {
            if let Some((directory, _)) =
                memory::memory_cgroup_dir(mounts, Some(unified), Some(memory_v1))
            {
                let mount = [&mounts.memory_v1, &mounts.unified]
                    .into_iter()
                    .flatten()
                    .map(|mount| &mount.path)
                    .find(|mount| directory.starts_with(mount))
                    .unwrap_or_else(|| panic!("{directory:?} is below no mount of {mounts:?}"));
                assert_inside(&directory, mount, line);
            }
        }
    }
});

fn assert_inside(directory: &Path, mount: &Path, cgroup_path: &str) {
    assert!(
        directory.starts_with(mount),
        "{cgroup_path:?} left {mount:?}: {directory:?}"
    );
    let climbs = directory.strip_prefix(mount).map(|below| {
        below
            .components()
            .any(|part| !matches!(part, Component::Normal(_)))
    });
    assert_eq!(
        climbs.ok(),
        Some(false),
        "{cgroup_path:?} gave {directory:?}"
    );
}
