//! The page-fault growth profile on the real kernel: the real BPF object loaded by `Tracer`,
//! real cgroup v2 directories, and real C workloads with known ground truth
//! (tests/workloads/growth_leak.c, touch_pages.c).

mod support;

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use support::{Build, Workload, build_workload, node::Mounts, require_root};
use tracer_common::{FaultKey, FaultTotals, Stat};
use tracer_daemon::{
    bpf::FaultHook,
    symbolize::Frame,
    tracer::{Tracer, TracerConfig},
};

/// A cgroup v2 directory of its own, removed (after its processes are gone) on drop.
struct Cgroup {
    dir: PathBuf,
}

impl Cgroup {
    fn create(name: &str) -> Self {
        let root = Mounts::read()
            .roots()
            .into_iter()
            .find(|root| root.join("cgroup.procs").exists() && is_cgroup2(root))
            .expect("a cgroup v2 hierarchy is mounted");
        let dir = root.join(format!("{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("create cgroup {}: {e}", dir.display()));
        Self { dir }
    }

    /// The id `bpf_get_current_cgroup_id` returns for its tasks: its directory's inode.
    fn id(&self) -> u64 {
        std::fs::metadata(&self.dir).expect("cgroup dir").ino()
    }

    fn place(&self, pid: u32) {
        let procs = self.dir.join("cgroup.procs");
        std::fs::write(&procs, pid.to_string())
            .unwrap_or_else(|e| panic!("move {pid} into {}: {e}", procs.display()));
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::remove_dir(&self.dir).is_err()
            && self.dir.exists()
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn is_cgroup2(path: &Path) -> bool {
    path.join("cgroup.controllers").exists()
}

fn growth_leak() -> PathBuf {
    build_workload(&Build {
        source: "growth_leak.c",
        compiler: "gcc",
        flags: &["-fno-omit-frame-pointer", "-fno-optimize-sibling-calls"],
        libs: &[],
        output: "growth_leak",
    })
}

/// One test at a time: the fault programs keep a watched fault pending in one slot per CPU, so
/// another test's watched process faulting on the same CPU while a huge page is zeroed (the
/// zeroing yields the CPU) takes that slot, and the huge page is not counted.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn tracer() -> Tracer {
    tracer_sampling(TracerConfig::default().fault_sample_pages)
}

/// A tracer whose growth profile records one new page in `sample_pages` (1: every page).
fn tracer_sampling(sample_pages: u32) -> Tracer {
    let config = TracerConfig {
        fault_sample_pages: sample_pages,
        ..TracerConfig::default()
    };
    let tracer = Tracer::new(&config).expect("load the real BPF object");
    match tracer.fault_hook() {
        FaultHook::Attached => {}
        FaultHook::Unavailable(reason) => {
            panic!("this kernel (6.18 here) must have the fault hooks: {reason}")
        }
    }
    tracer
}

/// Fault totals summed by leak site: the innermost frame in the workload's own code (below it,
/// glibc's memset or malloc internals may fault at several instructions).
fn by_site(
    tracer: &mut Tracer,
    pid: u32,
    totals: &[(FaultKey, FaultTotals)],
    workload: &Path,
) -> Vec<(String, FaultTotals, Vec<String>)> {
    let mine: Vec<&(FaultKey, FaultTotals)> =
        totals.iter().filter(|(key, _)| key.tgid == pid).collect();
    let stacks: Vec<(u32, u64)> = mine.iter().map(|(key, _)| (pid, key.stack_id)).collect();
    let frames = tracer.symbolize_fault_stacks(&stacks);
    let name = workload.file_name().and_then(|n| n.to_str()).unwrap_or("?");
    let mut sites: HashMap<String, (FaultTotals, Vec<String>)> = HashMap::new();
    for ((_, totals), frames) in mine.iter().zip(&frames) {
        let site = frames
            .iter()
            .find(|f: &&Frame| f.module.as_deref().is_some_and(|m| m.ends_with(name)))
            .and_then(|f| f.function.clone())
            .unwrap_or_else(|| "?".to_owned());
        let names: Vec<String> = frames
            .iter()
            .map(|f| {
                f.function
                    .clone()
                    .unwrap_or_else(|| format!("{:#x}", f.addr))
            })
            .collect();
        let entry = sites
            .entry(site)
            .or_insert_with(|| (FaultTotals::default(), names));
        entry.0.bytes += totals.bytes;
        entry.0.pages += totals.pages;
        entry.0.retouched_bytes += totals.retouched_bytes;
        entry.0.faults += totals.faults;
    }
    let mut sites: Vec<(String, FaultTotals, Vec<String>)> = sites
        .into_iter()
        .map(|(site, (totals, names))| (site, totals, names))
        .collect();
    sites.sort_by_key(|site| std::cmp::Reverse(site.1.bytes));
    sites
}

/// At the default sampling (one page in 16, by address). The leak is 30 blocks of 256 KiB,
/// 1,920 pages, of which about 120 are recorded and weighted 16. Were the pages kept by
/// independent draws, the estimate's relative error would have a standard deviation of
/// sqrt((16 - 1) / 1920) = 8.8%, and 20% would be 2.3 of them (a 2% chance of failing); but the
/// pages are kept by Fibonacci hashing of their numbers, which keeps within a page or two of 1
/// in 16 over every run of consecutive pages: each block's 64 pages give 4 +- 1 kept pages
/// (+-25% of a block), and 30 blocks' errors, independent, add up to about sqrt(30) * 0.6 = 3.3
/// pages of 120, 2.7%: 20% is more than 7 of those.
#[test]
fn a_leak_is_the_top_growth_site_and_trimmed_churn_is_a_retouch() {
    require_root();
    let _one = one_at_a_time();
    leak_and_churn(tracer());
}

/// The same with every page recorded (sampling off): the exact mode stays available.
#[test]
fn with_sampling_off_every_page_is_counted_exactly() {
    require_root();
    let _one = one_at_a_time();
    let tracer = tracer_sampling(1);
    assert_eq!(tracer.fault_sample_pages(), 1);
    leak_and_churn(tracer);
}

fn leak_and_churn(mut tracer: Tracer) {
    let executable = growth_leak();
    let sampling = tracer.fault_sample_pages();
    let watched = Cgroup::create(&format!("growth-profile-watched-{sampling}"));
    let unwatched = Cgroup::create(&format!("growth-profile-unwatched-{sampling}"));

    let mut leaker = Workload::start(&executable, &["30"]);
    let mut bystander = Workload::start(&executable, &["30"]);
    watched.place(leaker.pid);
    unwatched.place(bystander.pid);
    tracer.watch_cgroup(watched.id()).expect("watch");
    tracer.profile_pid(leaker.pid).expect("profile the leaker");
    assert_eq!(tracer.profiled_pids(), [leaker.pid]);

    leaker.send("go");
    bystander.send("go");
    let churned: u64 = leaker.wait_for("churned").parse().expect("churned N");
    let leaked: u64 = leaker.wait_for("leaked").parse().expect("leaked N");
    let _ = leaker.wait_for("done");
    let _ = bystander.wait_for("done");
    let totals = tracer.fault_totals().expect("read the profile");
    let stats = tracer.stats();
    let sites = by_site(&mut tracer, leaker.pid, &totals, &executable);
    let summary = format!(
        "sites: {sites:#?}\nstats: {stats:?}\nfault problems: {:?}",
        stats.fault_incomplete_reason()
    );

    let (top, top_totals, top_frames) = &sites[0];
    assert_eq!(top, "leak_records", "{summary}");
    assert!(
        top_frames.iter().any(|f| f == "main"),
        "the walk reaches main through glibc's memset: {summary}"
    );
    let low = leaked - leaked / 5;
    let high = leaked + leaked / 5;
    assert!(
        (low..=high).contains(&top_totals.bytes),
        "leak_records grew {} bytes, leaked {leaked}: {summary}",
        top_totals.bytes
    );
    let churn = |site: &str| {
        sites
            .iter()
            .find(|(s, _, _)| s == site)
            .map(|(_, totals, _)| *totals)
            .unwrap_or_default()
    };
    let trimmed = churn("trim_and_retouch");
    assert!(churned >= 20, "the churn ran {churned} rounds");
    assert!(
        trimmed.retouched_bytes >= (churned / 2) * (1 << 20),
        "glibc trimmed the 1 MiB block and each round touched it again: {summary}"
    );
    assert!(
        trimmed.bytes * 4 < top_totals.bytes,
        "trim-and-retouch is churn, far below the leak: {summary}"
    );
    assert!(
        churn("malloc_free_churn").bytes * 4 < top_totals.bytes,
        "{summary}"
    );
    assert!(stats.get(Stat::FAULTS_COUNTED) > 0, "{summary}");
    assert!(stats.get(Stat::FAULT_RETOUCHES) > 0, "{summary}");
    assert_eq!(stats.get(Stat::FAULT_PROFILE_MAP_FULL), 0, "{summary}");
    assert!(
        totals.iter().all(|(key, _)| key.tgid != bystander.pid),
        "a process of an unwatched cgroup records nothing: {summary}"
    );
    assert!(
        totals
            .iter()
            .filter(|(key, _)| key.tgid == leaker.pid)
            .all(|(key, _)| key.cgroup_id == watched.id()),
        "{summary}"
    );

    // Once it ends, its records go at the reap.
    let leaker_pid = leaker.pid;
    leaker.finish();
    bystander.finish();
    tracer.poll();
    let _ = tracer.reap_ended();
    assert!(tracer.profiled_pids().is_empty());
    let left = tracer.fault_totals().expect("read the profile");
    assert!(
        left.iter().all(|(key, _)| key.tgid != leaker_pid),
        "{left:?}"
    );
    tracer.unwatch_cgroup(watched.id());
}

/// Transparent huge pages, where this kernel gives them (THP `always` or `madvise`): a first
/// touch that maps a 2 MiB page counts its 512 pages, once. Exact mode, so that every one of
/// the few faults is recorded; the ground truth is the kernel's own `AnonHugePages`.
#[test]
fn a_huge_page_first_touch_counts_its_512_pages() {
    require_root();
    let _one = one_at_a_time();
    let thp =
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    if thp.is_empty() || thp.contains("[never]") {
        eprintln!(
            "SKIPPED: transparent huge pages are off on this kernel ({:?}): nothing to count",
            thp.trim()
        );
        return;
    }
    const HUGE_PAGES: u64 = 8;
    let executable = build_workload(&Build {
        source: "huge_touch.c",
        compiler: "gcc",
        flags: &["-fno-omit-frame-pointer"],
        libs: &[],
        output: "huge_touch",
    });
    let mut tracer = tracer_sampling(1);
    let cgroup = Cgroup::create("growth-profile-huge");
    let mut workload = Workload::start(&executable, &[&HUGE_PAGES.to_string()]);
    cgroup.place(workload.pid);
    tracer.watch_cgroup(cgroup.id()).expect("watch");
    tracer.profile_pid(workload.pid).expect("profile");
    workload.send("go");
    let _ = workload.wait_for("touched");
    let rollup = std::fs::read_to_string(format!("/proc/{}/smaps_rollup", workload.pid))
        .expect("smaps_rollup");
    let huge_kib: u64 = rollup
        .lines()
        .find_map(|l| l.strip_prefix("AnonHugePages:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("AnonHugePages in smaps_rollup");
    let huge = huge_kib / 2048;
    let totals = tracer.fault_totals().expect("read the profile");
    let stats = tracer.stats();
    let sites = by_site(&mut tracer, workload.pid, &totals, &executable);
    let summary = format!("AnonHugePages {huge_kib} kB\nsites: {sites:#?}\nstats: {stats:?}");
    assert!(
        huge > 0,
        "the kernel gave no huge page (no free 2 MiB block?): {summary}"
    );
    let (site, touched, _) = &sites[0];
    assert_eq!(site, "touch_huge", "{summary}");
    let mine: Vec<&FaultTotals> = totals
        .iter()
        .filter(|(key, _)| key.tgid == workload.pid)
        .map(|(_, totals)| totals)
        .collect();
    let huge_faults: u64 = mine.iter().map(|t| t.huge_faults).sum();
    assert_eq!(huge_faults, huge, "one huge fault per huge page: {summary}");
    // Each huge page 512 pages, and any 2 MiB that fell back to a small page one.
    let small = HUGE_PAGES - huge;
    assert_eq!(touched.pages, huge * 512 + small, "{summary}");
    assert_eq!(touched.bytes, touched.pages * 4096, "{summary}");
    assert!(stats.get(Stat::FAULT_HUGE_PAGES) >= huge, "{summary}");
    workload.finish();
    tracer.poll();
    let _ = tracer.reap_ended();
    tracer.unwatch_cgroup(cgroup.id());
}

/// How long `touch_pages` took to touch `mib` MiB, page by page, in `cgroup` (profiled first
/// when a tracer is given): seconds of wall time and of the touching thread's CPU time.
fn touch_seconds(cgroup: &Cgroup, mib: u64, mut profile: Option<&mut Tracer>) -> Touched {
    let executable = build_workload(&Build {
        source: "touch_pages.c",
        compiler: "gcc",
        flags: &[],
        libs: &[],
        output: "touch_pages",
    });
    let mut workload = Workload::start(&executable, &[&mib.to_string()]);
    cgroup.place(workload.pid);
    if let Some(tracer) = profile.as_deref_mut() {
        tracer.profile_pid(workload.pid).expect("profile");
    }
    workload.send("go");
    let touched = workload.wait_for("touched");
    let mut ns = touched
        .split_whitespace()
        .map(|n| n.parse::<f64>().expect("touched <ns> <cpu_ns>"));
    let (wall, cpu) = (ns.next().expect("wall ns"), ns.next().expect("cpu ns"));
    workload.finish();
    if let Some(tracer) = profile {
        tracer.poll();
        let _ = tracer.reap_ended();
    }
    Touched {
        wall: wall / 1e9,
        cpu: cpu / 1e9,
    }
}

/// One `touch_pages` run, seconds.
#[derive(Clone, Copy, Debug)]
struct Touched {
    wall: f64,
    cpu: f64,
}

/// The fault programs of a tracer loaded after `before` (program ids then loaded), by name:
/// (runs, run time in ns). Only meaningful while BPF run-time stats are enabled.
fn fault_program_stats(before: &[u32]) -> Vec<(String, u64, u64)> {
    let mut stats: Vec<(String, u64, u64)> = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|info| !before.contains(&info.id()))
        .filter_map(|info| {
            let name = info.name_as_str()?.to_owned();
            name.starts_with("fault_").then(|| {
                (
                    name,
                    info.run_count(),
                    u64::try_from(info.run_time().as_nanos()).unwrap_or(u64::MAX),
                )
            })
        })
        .collect();
    stats.sort();
    stats
}

fn loaded_program_ids() -> Vec<u32> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .map(|info| info.id())
        .collect()
}

/// Runs and ns per run of each fault program between two snapshots, per fault of the workload.
fn print_program_costs(
    phase: &str,
    from: &[(String, u64, u64)],
    to: &[(String, u64, u64)],
    faults: f64,
) {
    for ((name, runs_to, ns_to), (_, runs_from, ns_from)) in to.iter().zip(from) {
        let runs = runs_to - runs_from;
        let ns = ns_to - ns_from;
        println!(
            "  {phase:>9} {name:<18} {:>6.2} runs/fault {:>6.0} ns/run {:>6.0} ns/fault",
            runs as f64 / faults,
            ns as f64 / (runs.max(1)) as f64,
            ns as f64 / faults,
        );
    }
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

/// Not a timed test: measures what the fault programs cost a process that does nothing but
/// touch new memory, page by page (2 GiB, 524,288 faults, no THP). Each round runs the three
/// cases back to back: without the programs loaded, with them attached but the cgroup not
/// watched (what every other process of the node pays), and watched and profiled; medians of
/// the rounds. Prints the ratios:
/// `cargo test -p tracer-daemon --test growth_profile -- --ignored --nocapture`.
/// `TRACER_MEASURE_ROUNDS` (default 7) and `TRACER_MEASURE_MIB` (2048) change the size;
/// `TRACER_MEASURE_SAMPLE_PAGES` sets the sampling period (default: the agent's; 1 is exact);
/// `TRACER_MEASURE_BPF_STATS=1` turns on the kernel's BPF run-time stats (which add two clock
/// reads to every run) and prints runs and run time per fault for each program.
#[test]
#[ignore = "a measurement, run by hand"]
fn measure_the_cost_of_the_fault_programs() {
    require_root();
    let _one = one_at_a_time();
    let mib: u64 = env_or("TRACER_MEASURE_MIB", 2048);
    let rounds: usize = env_or("TRACER_MEASURE_ROUNDS", 7);
    let sample_pages: u32 = env_or(
        "TRACER_MEASURE_SAMPLE_PAGES",
        TracerConfig::default().fault_sample_pages,
    );
    let stats_enabled = (env_or("TRACER_MEASURE_BPF_STATS", 0) == 1).then(|| {
        aya::sys::enable_stats(aya::sys::Stats::RunTime).expect("enable BPF run-time stats")
    });
    let cgroup = Cgroup::create("growth-profile-cost");
    let (mut without, mut unwatched, mut watched) = (Vec::new(), Vec::new(), Vec::new());
    let faults = (mib << 20) as f64 / 4096.0;
    let mut counted = 0;
    for _ in 0..rounds {
        without.push(touch_seconds(&cgroup, mib, None));
        let before = loaded_program_ids();
        let mut tracer = tracer_sampling(sample_pages);
        let loaded = fault_program_stats(&before);
        unwatched.push(touch_seconds(&cgroup, mib, None));
        let after_unwatched = fault_program_stats(&before);
        tracer.watch_cgroup(cgroup.id()).expect("watch");
        watched.push(touch_seconds(&cgroup, mib, Some(&mut tracer)));
        let after_watched = fault_program_stats(&before);
        if stats_enabled.is_some() {
            print_program_costs("unwatched", &loaded, &after_unwatched, faults);
            print_program_costs("watched", &after_unwatched, &after_watched, faults);
        }
        counted += tracer.stats().get(Stat::FAULTS_COUNTED);
        tracer.unwatch_cgroup(cgroup.id());
    }
    let median = |runs: &[Touched], of: fn(&Touched) -> f64| {
        let mut runs: Vec<f64> = runs.iter().map(of).collect();
        runs.sort_by(f64::total_cmp);
        runs[runs.len() / 2]
    };
    for (clock, of) in [
        ("wall", (|t: &Touched| t.wall) as fn(&Touched) -> f64),
        ("cpu", |t: &Touched| t.cpu),
    ] {
        let runs = |cases: &[Touched]| cases.iter().map(of).collect::<Vec<f64>>();
        println!(
            "{clock} (s): without {:.3?}\n  unwatched {:.3?}\n  watched {:.3?}",
            runs(&without),
            runs(&unwatched),
            runs(&watched)
        );
        let (without, unwatched, watched) = (
            median(&without, of),
            median(&unwatched, of),
            median(&watched, of),
        );
        println!(
            "{clock} time touching {mib} MiB page by page ({faults} faults), median of {rounds} \
             rounds:\n  \
             without the programs: {without:.3} s ({:.0} ns/fault)\n  \
             attached, cgroup not watched: {unwatched:.3} s ({:.2}x, {:+.0} ns/fault)\n  \
             watched and profiled: {watched:.3} s ({:.2}x, {:+.0} ns/fault)",
            without * 1e9 / faults,
            unwatched / without,
            (unwatched - without) * 1e9 / faults,
            watched / without,
            (watched - without) * 1e9 / faults,
        );
    }
    println!("faults counted in all: {counted}");
}

/// A traced process's allocator calls have their return probes pending while they run, and
/// the kernel keeps each one by writing its trampoline's address over the caller's return
/// address on the stack. The pages glibc's malloc first touches itself (the header of the next
/// chunk, where small blocks are carved from the top of the heap) are walked from inside
/// malloc: without putting the caller back, their stacks named the trampoline, an address in
/// no binary, where `leak_here` is. one_leak_site leaks 100 blocks of 4,096 bytes from
/// leak_here, each touched by memset; with every page recorded, the pages first touched under
/// leak_here are the leak's, within a page at either end of the heap run.
#[test]
fn a_traced_process_faulting_inside_malloc_names_mallocs_caller() {
    require_root();
    let _one = one_at_a_time();
    let mut tracer = tracer_sampling(1);
    let executable = support::workload("one_leak_site");
    let watched = Cgroup::create("growth-profile-traced");
    let mut leaker = Workload::start(&executable, &[]);
    watched.place(leaker.pid);
    tracer.watch_cgroup(watched.id()).expect("watch");
    tracer.profile_pid(leaker.pid).expect("profile the leaker");
    tracer.trace(leaker.pid).expect("trace the leaker");
    leaker.send("go");
    let _ = leaker.wait_for("done");
    let totals = tracer.fault_totals().expect("read the profile");
    let mine: Vec<&(FaultKey, FaultTotals)> = totals
        .iter()
        .filter(|(key, _)| key.tgid == leaker.pid)
        .collect();
    let stacks: Vec<(u32, u64)> = mine
        .iter()
        .map(|(key, _)| (leaker.pid, key.stack_id))
        .collect();
    let frames = tracer.symbolize_fault_stacks(&stacks);
    let names = |frames: &[Frame]| -> Vec<String> {
        frames
            .iter()
            .map(|f| {
                f.function
                    .clone()
                    .unwrap_or_else(|| format!("{:#x}", f.addr))
            })
            .collect()
    };
    let summary: Vec<(u64, Vec<String>)> = mine
        .iter()
        .zip(&frames)
        .map(|((_, t), f)| (t.bytes, names(f)))
        .collect();
    for (_, names) in &summary {
        assert!(
            names.iter().all(|n| !n.starts_with("0x")),
            "a frame in no binary (the return probe's trampoline?): {summary:#?}"
        );
    }
    let in_malloc: Vec<&(u64, Vec<String>)> = summary
        .iter()
        .filter(|(_, names)| names.iter().any(|n| n == "__libc_malloc"))
        .collect();
    assert!(
        !in_malloc.is_empty(),
        "no page first touched in malloc: {summary:#?}"
    );
    for (_, names) in &in_malloc {
        let malloc = names
            .iter()
            .position(|n| n == "__libc_malloc")
            .expect("malloc");
        assert!(
            names.get(malloc + 1).is_some_and(|n| [
                "leak_here",
                "churn_and_free",
                "calloc_and_free"
            ]
            .contains(&n.as_str())),
            "malloc's caller is the next frame: {summary:#?}"
        );
    }
    let leaked: u64 = summary
        .iter()
        .filter(|(_, names)| names.iter().any(|n| n == "leak_here"))
        .map(|(bytes, _)| bytes)
        .sum();
    let page = 4096;
    assert!(
        (100 * 4096 - page..=100 * 4096 + 2 * page).contains(&leaked),
        "leak_here first touched {leaked} bytes, leaked 409,600: {summary:#?}"
    );
    leaker.finish();
}
