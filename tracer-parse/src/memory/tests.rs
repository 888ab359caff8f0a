//! Tests of the memory module.
use super::CgroupVersion::{V1, V2};
use super::*;
use crate::cgroup_namespace::NamespaceRoots;

const V1_FILES: [&str; 4] = [
    "memory.usage_in_bytes",
    "memory.limit_in_bytes",
    "memory.failcnt",
    "memory.oom_control",
];

fn fixture(file: &str) -> &'static str {
    match file {
        "memory.current" => include_str!("../fixtures/memory_v2/memory.current"),
        "memory.max" => include_str!("../fixtures/memory_v2/memory.max"),
        "memory.events" => include_str!("../fixtures/memory_v2/memory.events"),
        "memory.stat" => include_str!("../fixtures/memory_v2/memory.stat"),
        "memory.stat.v1" => include_str!("../fixtures/memory_v1/memory.stat"),
        "memory.usage_in_bytes" => include_str!("../fixtures/memory_v1/memory.usage_in_bytes"),
        "memory.limit_in_bytes" => include_str!("../fixtures/memory_v1/memory.limit_in_bytes"),
        "memory.failcnt" => include_str!("../fixtures/memory_v1/memory.failcnt"),
        "memory.oom_control" => include_str!("../fixtures/memory_v1/memory.oom_control"),
        _ => include_str!("../fixtures/memory_v1/memory.oom_control.before_4_13"),
    }
}

/// The figures of a cgroup whose files are the version's fixtures, with `replace.1` as the
/// content of file `replace.0`.
fn read_fixture(
    version: CgroupVersion,
    replace: (&str, &str),
) -> Result<MemoryFigures, MemoryError> {
    memory_figures(version, |file| {
        let content = if file == replace.0 {
            replace.1
        } else if file == "memory.stat" && version == V1 {
            fixture("memory.stat.v1")
        } else {
            fixture(file)
        };
        Ok(content.to_owned())
    })
}

#[test]
fn v2_cgroup_gives_usage_limit_and_event_counters() {
    let figures = read_fixture(V2, ("", "")).expect("v2 fixture reads");
    let expected = MemoryFigures {
        usage_bytes: 188_416_000,
        limit_bytes: None,
        limit_hits: 12,
        oom_kills: 1,
        high_events: 3,
        under_oom: false,
        anon_bytes: Some(52_809_728),
    };
    assert_eq!(
        figures, expected,
        "\"max\" is unlimited; hits and kills come from memory.events"
    );
    let limited = read_fixture(V2, ("memory.max", "268435456\n")).expect("v2 fixture reads");
    assert_eq!(limited.limit_bytes, Some(268_435_456));
}

#[test]
fn v1_cgroup_gives_usage_failcnt_and_oom_kills_with_huge_limit_as_unlimited() {
    let figures = read_fixture(V1, ("", "")).expect("v1 fixture reads");
    let expected = MemoryFigures {
        usage_bytes: 22_056_960,
        limit_bytes: None,
        limit_hits: 17,
        oom_kills: 2,
        high_events: 0,
        under_oom: false,
        anon_bytes: Some(141_545_472),
    };
    assert_eq!(figures, expected, "9223372036854771712 is v1's unlimited");
    let old_kernel = (
        "memory.oom_control",
        fixture("memory.oom_control.before_4_13"),
    );
    let figures = read_fixture(V1, old_kernel).expect("v1 fixture reads");
    assert_eq!(
        (figures.oom_kills, figures.under_oom),
        (0, true),
        "no oom_kill line, 0 kills"
    );
}

#[test]
fn a_file_the_reader_cannot_give_is_the_readers_error() {
    for (version, missing) in [(V1, "memory.oom_control"), (V2, "memory.max")] {
        let result = memory_figures(version, |file| {
            if file == missing {
                let source = io::Error::from(io::ErrorKind::NotFound);
                return Err(MemoryError::Read {
                    path: PathBuf::from(file),
                    source,
                });
            }
            Ok(fixture(file).to_owned())
        });
        let named =
            matches!(&result, Err(MemoryError::Read { path, .. }) if path == Path::new(missing));
        assert!(named, "{missing}: {result:?}");
    }
}

#[test]
fn truncated_or_garbage_files_are_errors_naming_the_file() {
    let error = read_fixture(V2, ("memory.max", "abc\n")).expect_err("garbage limit");
    assert_eq!(
        error.to_string(),
        "memory.max: expected a number or \"max\", got \"abc\""
    );
    for (file, content) in [
        ("memory.max", ""),
        ("memory.current", "1884\u{0}"),
        ("memory.events", "low 0\nhigh 3\nma"),
        ("memory.usage_in_bytes", "-5\n"),
        ("memory.limit_in_bytes", "9223372036854775808000\n"),
        ("memory.failcnt", "\n"),
        ("memory.oom_control", "oom_kill_disable 0\n"),
    ] {
        let version = if V1_FILES.contains(&file) { V1 } else { V2 };
        let result = read_fixture(version, (file, content));
        let names_file =
            matches!(&result, Err(MemoryError::Invalid { file: named, .. }) if *named == file);
        assert!(names_file, "{file} {content:?}: {result:?}");
    }
    let unterminated = read_fixture(V2, ("memory.current", "18841")).expect("no newline is fine");
    assert_eq!(unterminated.usage_bytes, 18841);
}

#[test]
fn malformed_fixture_files_are_errors_naming_the_file_not_panics() {
    for (version, file, content) in [
        (
            V2,
            "memory.max",
            include_str!("../fixtures/memory_v2/memory.max.empty"),
        ),
        (
            V2,
            "memory.events",
            include_str!("../fixtures/memory_v2/memory.events.garbage"),
        ),
        (
            V2,
            "memory.events",
            include_str!("../fixtures/memory_v2/memory.events.truncated"),
        ),
        (
            V1,
            "memory.oom_control",
            include_str!("../fixtures/memory_v1/memory.oom_control.truncated"),
        ),
    ] {
        let result = read_fixture(version, (file, content));
        let names_file =
            matches!(&result, Err(MemoryError::Invalid { file: named, .. }) if *named == file);
        assert!(names_file, "{file} {content:?}: {result:?}");
    }
}

#[test]
fn memory_events_ignore_unknown_keys_and_default_missing_ones_to_zero() {
    let all = parse_memory_events(fixture("memory.events")).expect("fixture parses");
    let expected = MemoryEvents {
        low: 0,
        high: 3,
        max: 12,
        oom: 2,
        oom_kill: 1,
        oom_group_kill: 0,
    };
    assert_eq!(all, expected);
    let partial = parse_memory_events("max 5\nfuture_counter 9\noom_kill 4\n").expect("parses");
    assert_eq!((partial.max, partial.oom_kill, partial.low), (5, 4, 0));
    assert_eq!(
        parse_memory_events("").expect("empty parses"),
        MemoryEvents::default()
    );
    for garbage in [
        "max five\n",
        "max 1 2\n",
        "max -1\n",
        "oom_kill\n",
        "\u{0}\u{1}",
    ] {
        let result = parse_memory_events(garbage);
        assert!(
            matches!(result, Err(MemoryError::Invalid { .. })),
            "{garbage:?}: {result:?}"
        );
    }
}

#[test]
fn oom_control_reads_flags_and_kills_with_or_without_the_oom_kill_line() {
    let current = parse_oom_control(fixture("memory.oom_control")).expect("fixture parses");
    assert_eq!(
        (
            current.oom_kill_disable,
            current.under_oom,
            current.oom_kill
        ),
        (false, false, 2)
    );
    let old = parse_oom_control(fixture("memory.oom_control.before_4_13")).expect("parses");
    assert_eq!(
        (old.oom_kill_disable, old.under_oom, old.oom_kill),
        (true, true, 0)
    );
    for garbage in [
        "",
        "under_oom 0\n",
        "oom_kill_disable 2\nunder_oom 0\n",
        "under_oom x\n",
    ] {
        let result = parse_oom_control(garbage);
        assert!(
            matches!(result, Err(MemoryError::Invalid { .. })),
            "{garbage:?}: {result:?}"
        );
    }
}

#[test]
fn limits_are_bytes_or_none_for_max_and_v1_huge_values() {
    for (content, expected) in [
        ("max\n", None),
        ("67108864\n", Some(67_108_864)),
        ("0\n", Some(0)),
        ("9223372036854771712\n", None),
        ("9223372036854710272\n", None),
        ("4611686018427387903\n", Some(4_611_686_018_427_387_903)),
    ] {
        assert_eq!(
            parse_limit(content).expect("a limit parses"),
            expected,
            "limit {content:?}"
        );
    }
    for garbage in ["abc\n", "", "-1\n", "max max\n", "18446744073709551616\n"] {
        assert!(parse_limit(garbage).is_err(), "{garbage:?} must not parse");
    }
}

#[test]
fn mountinfo_gives_unified_and_v1_memory_mounts_of_v2_hybrid_and_v1_hosts() {
    let unified = "/sys/fs/cgroup/unified";
    let memory = "/sys/fs/cgroup/memory";
    for (content, expected) in [
        (
            include_str!("../fixtures/mountinfo_v2.txt"),
            (Some("/sys/fs/cgroup"), None),
        ),
        (
            include_str!("../fixtures/mountinfo_hybrid.txt"),
            (Some(unified), Some(memory)),
        ),
        (
            include_str!("../fixtures/mountinfo_v1.txt"),
            (None, Some(memory)),
        ),
        // A subtree mount is skipped, malformed lines too; the first root mount wins.
        (
            include_str!("../fixtures/mountinfo_odd.txt"),
            (Some("/mnt/my cgroup"), Some("/mnt/memory")),
        ),
        ("", (None, None)),
    ] {
        let mounts = parse_mountinfo(content);
        let path = |mount: &Option<CgroupMount>| mount.as_ref().map(|m| m.path.clone());
        let (unified, memory_v1) = (path(&mounts.unified), path(&mounts.memory_v1));
        let actual = (unified.as_deref(), memory_v1.as_deref());
        let expected = (expected.0.map(Path::new), expected.1.map(Path::new));
        assert_eq!(
            actual,
            expected,
            "mountinfo starting {:?}",
            content.lines().next()
        );
        assert!(
            !mounts.unified_has_memory,
            "parse_mountinfo does not read controllers"
        );
        assert_eq!(
            mounts.namespace_roots(),
            NamespaceRoots {
                unified: unified.map(|_| "/"),
                memory_v1: memory_v1.map(|_| "/"),
            },
            "in the host's namespace, the mounts' roots are the namespace's"
        );
    }
}

#[test]
fn mountinfo_in_a_private_cgroup_namespace_gives_the_hosts_hierarchies_mounted_above_it() {
    // A pod's container on a v2 host: the runtime's cgroup mount (its own cgroup) with the
    // DaemonSet's hostPath of the host's /sys/fs/cgroup on top, four levels up.
    let v2 = parse_mountinfo(include_str!(
        "../fixtures/mountinfo_private_namespace_v2.txt"
    ));
    let host = |path: &str, levels| CgroupMount {
        path: PathBuf::from(path),
        levels_above_namespace_root: levels,
        namespace_root: None,
    };
    assert_eq!(v2.unified, Some(host("/sys/fs/cgroup", 4)));
    assert_eq!(v2.memory_v1, None);
    assert_eq!(
        v2.namespace_roots(),
        NamespaceRoots::default(),
        "where the namespace root sits below the mount is not in mountinfo"
    );
    // A hybrid host, v1 memory: each hierarchy has its own namespace root.
    let hybrid = parse_mountinfo(include_str!(
        "../fixtures/mountinfo_private_namespace_hybrid.txt"
    ));
    assert_eq!(hybrid.unified, Some(host("/sys/fs/cgroup/unified", 3)));
    assert_eq!(hybrid.memory_v1, Some(host("/sys/fs/cgroup/memory", 4)));
}

#[test]
fn of_several_cgroup_mounts_the_visible_one_reaching_highest_wins() {
    let own = "10 1 0:27 / /sys/fs/cgroup ro - cgroup2 cgroup rw";
    let host = "11 10 0:27 /../.. /sys/fs/cgroup ro - cgroup2 cgroup2 rw";
    let beside = "12 1 0:27 /../pod-b /mnt/beside ro - cgroup2 cgroup2 rw";
    let mounts = parse_mountinfo(&format!("{own}\n{host}\n{beside}\n"));
    let unified = mounts.unified.expect("a mount");
    assert_eq!(
        (unified.levels_above_namespace_root, unified.namespace_root),
        (2, None)
    );
    // The same two the other way round: the runtime's own mount hides the host's.
    let hidden = "20 1 0:27 /../.. /sys/fs/cgroup ro - cgroup2 cgroup2 rw";
    let on_top = "21 20 0:27 / /sys/fs/cgroup ro - cgroup2 cgroup rw";
    let mounts = parse_mountinfo(&format!("{hidden}\n{on_top}\n"));
    assert_eq!(
        mounts.unified,
        Some(CgroupMount::at_namespace_root("/sys/fs/cgroup"))
    );
}

#[test]
fn the_memory_controller_is_listed_as_a_whole_word() {
    assert!(lists_memory_controller(
        "cpuset cpu io memory hugetlb pids rdma misc\n"
    ));
    assert!(
        !lists_memory_controller("hugetlb\n"),
        "a hybrid host's unified hierarchy"
    );
    assert!(
        !lists_memory_controller("memory_recursiveprot\n"),
        "whole words only"
    );
}

#[test]
fn memory_cgroup_dir_prefers_v1_memory_then_unified_with_memory() {
    let pod = "/kubepods/burstable/pod6a4ce4a0-ba47-11ea-b2a7-0cc47ac5979e";
    let hybrid = parse_mountinfo(include_str!("../fixtures/mountinfo_hybrid.txt"));
    let v1_dir = PathBuf::from(format!("/sys/fs/cgroup/memory{pod}"));
    assert_eq!(
        memory_cgroup_dir(&hybrid, Some("/"), Some(pod)),
        Some((v1_dir, V1))
    );
    assert_eq!(
        memory_cgroup_dir(&hybrid, Some(pod), None),
        None,
        "hybrid v2 lacks memory"
    );
    let mut v2 = parse_mountinfo(include_str!("../fixtures/mountinfo_v2.txt"));
    v2.unified_has_memory = true;
    let v2_dir = PathBuf::from(format!("/sys/fs/cgroup{pod}"));
    assert_eq!(memory_cgroup_dir(&v2, Some(pod), None), Some((v2_dir, V2)));
    let root = Some((PathBuf::from("/sys/fs/cgroup"), V2));
    assert_eq!(
        memory_cgroup_dir(&v2, Some("/"), None),
        root,
        "the root cgroup is the mount"
    );
    assert_eq!(
        memory_cgroup_dir(&v2, Some("/../../x.slice"), None),
        None,
        "no climbing out"
    );
    assert_eq!(
        memory_cgroup_dir(&v2, None, Some(pod)),
        None,
        "a v1 path needs a v1 mount"
    );
    v2.unified_has_memory = false;
    assert_eq!(
        memory_cgroup_dir(&v2, Some(pod), None),
        None,
        "v2 without memory controller"
    );
}

#[test]
fn anonymous_memory_comes_from_memory_stat_and_is_optional() {
    let unreadable = memory_figures(V2, |file| {
        if file == "memory.stat" {
            Err(MemoryError::invalid("memory.stat", "a file", "nothing"))
        } else {
            Ok(fixture(file).to_owned())
        }
    })
    .expect("the other files read");
    assert_eq!(unreadable.anon_bytes, None, "memory.stat is optional");
    let v1_without_total =
        read_fixture(V1, ("memory.stat", "cache 8192\nrss 4096\n")).expect("v1 fixture reads");
    assert_eq!(
        v1_without_total.anon_bytes,
        Some(4096),
        "v1 falls back to rss"
    );
    assert_eq!(
        stat_value("anon_thp 0\nanon 12\n", "anon"),
        Some(12),
        "whole keys only"
    );
    assert_eq!(stat_value("anon x\n", "anon"), None);
}
