//! Faults and bad input, for real: the agent killed with SIGKILL while it traces and while it
//! writes evidence, a thousand short-lived processes in a traced pod, and many concurrent,
//! oversized and malformed gRPC requests. Each test pins what the kernel, the evidence store and
//! the API look like afterwards, and prints its measured figures as `[figure]` lines
//! (RELIABILITY.md quotes them).

mod support;

use std::{
    collections::BTreeSet,
    fmt::Display,
    time::{Duration, Instant},
};

use serde_json::Value;
use support::{agent::*, faults::*, node::*, *};
use tonic::Code;
use tracer_proto::v1::{self as pb, leak_tracer_client::LeakTracerClient};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

/// A measured figure, in the one format RELIABILITY.md quotes.
fn figure(test: &str, what: &str, value: impl Display) {
    eprintln!("[figure] {test}: {what} = {value}");
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// The log must not show a panic (a panicking thread may leave the process up but broken).
fn assert_no_panic(log: &str) {
    assert!(!log.contains("panicked"), "the agent panicked:\n{log}");
}

#[test]
fn sigkill_while_tracing_leaves_no_probe_and_a_new_agent_traces_the_same_process() {
    const TEST: &str = "kill -9 while tracing";
    require_root();
    let root = temp_root("kill9-trace");
    let namespace = format!("kill9-{}", std::process::id());
    let pod = FakePod::create(
        &namespace,
        "steady-0",
        Driver::Systemd,
        "burstable",
        &["app"],
        &root.join("pods"),
        &root.join("containers"),
    );
    let mut leaker = Workload::start(&workload("leak_on_command"), &[]);
    pod.place(leaker.pid, "app");
    let args = ["--namespace", &namespace, "--metrics", "127.0.0.1:0"];
    let agent = Agent::start(&root, &args);
    agent.wait_traced(&[leaker.pid]);
    leaker.send("leak 100 4096");
    assert_eq!(leaker.wait_for("leaked"), "100");
    let report = agent.ctl_json(&["top", &pod.display()]);
    assert_eq!(
        report_totals(&report, "leak_batch"),
        (409_600, 100),
        "{report:#}"
    );

    // What the agent holds in the kernel, from its descriptors; bpftool must see all of it, so
    // that bpftool not listing it after the kill means the kernel let it go.
    let held = bpf_objects_of(agent.pid());
    let programs = bpftool_list("prog");
    let names: BTreeSet<&str> = programs
        .iter()
        .filter(|(id, _)| held.programs.contains(id))
        .filter_map(|(_, p)| p["name"].as_str())
        .collect();
    for name in ["free_enter", "oom_mark_victim"] {
        assert!(names.contains(name), "{name} not loaded: {names:?}");
    }
    assert!(
        names.contains("malloc_session") || names.contains("malloc_enter"),
        "no malloc program: {names:?}"
    );
    let links = bpftool_list("link");
    let uprobe_links = links
        .iter()
        .filter(|(id, _)| held.links.contains(id))
        .filter(|(_, l)| {
            l["type"] == "perf_event" || l["type"] == "uprobe_multi" || l["type"] == 12
        })
        .count();
    assert!(
        uprobe_links >= 2,
        "the agent's uprobe links are not listed by bpftool: {held:?}"
    );
    assert!(
        still_listed(&held).len() >= held.programs.len() + held.links.len() + held.maps.len(),
        "bpftool does not list everything the agent holds: {held:?}"
    );
    figure(
        TEST,
        "kernel objects held by the traced agent",
        format!(
            "{} programs, {} links ({uprobe_links} uprobe links), {} maps, {} perf events",
            held.programs.len(),
            held.links.len(),
            held.maps.len(),
            held.perf_events
        ),
    );

    // Killed while a thread of the traced process is in and out of malloc under the probes.
    leaker.send("churn_start");
    let _ = leaker.wait_for("churning");
    std::thread::sleep(Duration::from_millis(300));
    let killed_pid = agent.pid();
    let killed_at = Instant::now();
    let killed = kill_9_keeping_log(agent);
    assert_no_panic(&killed.log);
    let released = wait_released(&held);
    figure(
        TEST,
        "SIGKILL until the agent is dead (a zombie)",
        format!("{} ms", killed.teardown.as_millis()),
    );
    figure(
        TEST,
        "then until bpftool lists none of its programs, links and maps",
        format!("{} ms", released.as_millis()),
    );
    match tracefs_uprobe_events_of(killed_pid) {
        Some(events) => assert!(
            events.is_empty(),
            "tracefs still has the killed agent's uprobes: {events:?}"
        ),
        None => figure(
            TEST,
            "tracefs uprobe_events",
            "not mounted here (aya uses the uprobe PMU, never tracefs, when the PMU exists)",
        ),
    }
    // The traced process lives on, unharmed by probes pulled out from under it.
    leaker.send("ping");
    let _ = leaker.wait_for("pong");

    let agent = Agent::start(&root, &args);
    agent.wait_traced(&[leaker.pid]);
    let recovered = killed_at.elapsed();
    figure(
        TEST,
        "kill -9 to the new agent tracing the same process",
        format!("{} ms", recovered.as_millis()),
    );
    leaker.send("churn_stop");
    let churned: u64 = leaker.wait_for("churned").parse().expect("calls");
    assert!(churned > 0, "the churn thread never ran");
    figure(
        TEST,
        "malloc/free pairs the churn thread made across the kill",
        churned,
    );

    // By design the new agent starts with empty maps and records only allocations made after
    // it attached: the 100 blocks leaked before are outstanding in the process but not seen.
    let report = agent.ctl_json(&["top", &pod.display()]);
    assert_eq!(
        report_totals(&report, "leak_batch"),
        (0, 0),
        "leaks made before the restart: {report:#}"
    );
    leaker.send("leak 30 8192");
    assert_eq!(leaker.wait_for("leaked"), "130");
    let report = agent.ctl_json(&["top", &pod.display()]);
    assert_eq!(
        report_totals(&report, "leak_batch"),
        (245_760, 30),
        "only the leaks made after the restart: {report:#}"
    );

    // Freeing all 130 blocks: the 30 it saw leave the report, the 100 it never saw are frees of
    // unknown blocks (counted, never subtracted).
    let metrics = metrics_address(&agent);
    let unknown = r#"tracer_bpf_events_total{event="free_of_unknown_block"}"#;
    let unknown_before = metric(&scrape(metrics), unknown);
    leaker.send("free_all");
    assert_eq!(leaker.wait_for("freed"), "130");
    let report = agent.ctl_json(&["top", &pod.display()]);
    assert_eq!(
        report_totals(&report, "leak_batch"),
        (0, 0),
        "after free_all: {report:#}"
    );
    let unknown_after = metric(&scrape(metrics), unknown);
    assert_eq!(
        unknown_after - unknown_before,
        100.0,
        "frees of the blocks leaked before the restart"
    );

    // The new agent's objects are its own, and a graceful stop releases them too.
    let held_again = bpf_objects_of(agent.pid());
    assert!(
        held_again.programs.is_disjoint(&held.programs),
        "the new agent reuses the killed one's programs"
    );
    assert_no_panic(&agent.stderr());
    drop(agent);
    let _ = wait_released(&held_again);
    leaker.finish();
}

/// Every stored record, by id, through the API (listing, then each record in full).
async fn stored_evidence(agent: &Agent) -> Vec<pb::Evidence> {
    let mut client = LeakTracerClient::new(channel(&agent.socket).await);
    let list = client
        .list_evidence(pb::ListEvidenceRequest {
            filter: Some(pb::EvidenceFilter {
                selector: None,
                since: None,
                until: None,
                limit: 1000,
            }),
        })
        .await
        .expect("list evidence")
        .into_inner()
        .evidence;
    let mut records = Vec::new();
    for summary in list.iter().rev() {
        let record = client
            .get_evidence(pb::GetEvidenceRequest { id: summary.id })
            .await
            .unwrap_or_else(|s| panic!("evidence {} is listed but not served: {s}", summary.id))
            .into_inner();
        assert_eq!(
            record.summary.as_ref(),
            Some(summary),
            "record {} differs from its listing",
            summary.id
        );
        records.push(record);
    }
    records
}

fn id_of(record: &pb::Evidence) -> u64 {
    record.summary.as_ref().map_or(0, |s| s.id)
}

/// Where in the evidence flow the agent is killed.
#[derive(Clone, Copy, Debug)]
enum KillPoint {
    /// While the leaker climbs past this many MiB (threshold snapshots are being taken).
    Climbing(u32),
    /// This long after the test saw the OOM-killed leaker die (the OOM record is being taken).
    AfterOomKill(Duration),
}

#[test]
fn sigkill_during_evidence_writes_never_loses_an_acknowledged_record() {
    const TEST: &str = "kill -9 while writing evidence";
    const LIMIT: u64 = 64 * MIB;
    require_root();
    let root = temp_root("kill9-evidence");
    let namespace = format!("kill9-ev-{}", std::process::id());
    let pod = memory_limited_pod(&root, &namespace, "oomer-0", "app", LIMIT);
    let args = ["--namespace", &namespace, "--memory-watch-interval", "50ms"];
    let runtime = runtime();
    let leak = |agent: &Agent| {
        // 1 MiB every 15 ms: the 50 ms memory watch sees each threshold on the way up.
        let leaker = Workload::start(&workload("oom_leaker"), &["leak", "15"]);
        pod.place(leaker.pid, "app");
        agent.wait_traced(&[leaker.pid]);
        leaker
    };

    // 1. A full OOM episode, every record acknowledged and listed; then kill -9 and restart.
    let agent = Agent::start(&root, &args);
    let mut leaker = leak(&agent);
    leaker.send("go");
    let _ = leaker.last_allocated_before_death();
    assert_eq!(leaker.wait_killed(), Some(libc::SIGKILL));
    let _ = agent.wait_json(
        &["oom-events", &pod.display()],
        "recorded the OOM kill",
        |v| v.as_array().is_some_and(|a| !a.is_empty()),
    );
    let before = runtime.block_on(stored_evidence(&agent));
    let listed_before = agent.ctl_json(&["evidence", "--limit", "1000"]);
    assert!(
        before.len() >= 2,
        "expected threshold snapshots and the OOM kill: {before:#?}"
    );
    assert!(
        before
            .iter()
            .any(|r| r.oom.as_ref().is_some_and(|o| o.victim_pid == leaker.pid)),
        "no OOM-kill record for {}",
        leaker.pid
    );
    let killed_at = Instant::now();
    let log = kill_9_keeping_log(agent).log;
    assert_no_panic(&log);
    let mut agent = Agent::start(&root, &args);
    let after = runtime.block_on(stored_evidence(&agent));
    figure(
        TEST,
        "kill -9 to the restarted agent serving evidence",
        format!("{} ms", killed_at.elapsed().as_millis()),
    );
    // Everything served before the kill is served identically after it. The agent went on
    // watching between the snapshot and the kill (a limit_hit record may follow the OOM kill):
    // such later records are new ids, and every record it acknowledged is there.
    assert_eq!(
        after[..before.len().min(after.len())],
        before[..],
        "records changed across kill -9"
    );
    let after_ids: BTreeSet<u64> = after.iter().map(id_of).collect();
    for id in acknowledged_evidence(&log) {
        assert!(after_ids.contains(&id), "acknowledged record {id} is gone");
    }
    // tracerctl's JSON listing of the same records is the same too.
    let before_ids: BTreeSet<u64> = before.iter().map(id_of).collect();
    let same_records = |listing: &Value| -> Vec<Value> {
        listing
            .as_array()
            .expect("evidence list")
            .iter()
            .filter(|e| e["id"].as_u64().is_some_and(|id| before_ids.contains(&id)))
            .cloned()
            .collect()
    };
    let listed_before = same_records(&listed_before);
    assert_eq!(listed_before.len(), before.len(), "{listed_before:#?}");
    assert_eq!(
        same_records(&agent.ctl_json(&["evidence", "--limit", "1000"])),
        listed_before,
        "tracerctl's listing changed across kill -9"
    );
    figure(
        TEST,
        "records served before the kill and identically after it",
        format!(
            "{}/{} ({} more written between the snapshot and the kill)",
            before.len(),
            before.len(),
            after.len() - before.len()
        ),
    );

    // 2. Kills in the middle of the evidence flow, at varied points.
    // Thresholds are at 80, 90 and 95% of 64 MiB (51.2, 57.6, 60.8 MiB); the OOM record is
    // durable some 5-60 ms after the kill in this (debug) build. Each kill costs a restart
    // (about 4 s here, mostly parsing the kernel's BTF), so the points are few and spread
    // over the flow: just past the 90% crossing, and 0, 10 and 30 ms after the OOM kill.
    let points = [
        KillPoint::Climbing(58),
        KillPoint::AfterOomKill(Duration::ZERO),
        KillPoint::AfterOomKill(Duration::from_millis(10)),
        KillPoint::AfterOomKill(Duration::from_millis(30)),
    ];
    let mut known: BTreeSet<u64> = after.iter().map(id_of).collect();
    let (mut acknowledged_total, mut oom_records) = (0, 0);
    let mut reopen_ms = Vec::new();
    for point in points {
        let mut leaker = leak(&agent);
        leaker.send("go");
        match point {
            KillPoint::Climbing(mib) => {
                let _ = leaker.wait_for(&format!("allocated {mib}"));
            }
            KillPoint::AfterOomKill(delay) => {
                assert_eq!(leaker.wait_killed(), Some(libc::SIGKILL));
                std::thread::sleep(delay);
            }
        }
        let log = kill_9_keeping_log(agent).log;
        assert_no_panic(&log);
        let acknowledged = acknowledged_evidence(&log);
        // Killed mid-climb, the leaker goes on to its OOM kill with no agent watching.
        assert_eq!(leaker.wait_killed(), Some(libc::SIGKILL));

        let started = Instant::now();
        agent = Agent::start(&root, &args);
        let stored = runtime.block_on(stored_evidence(&agent));
        reopen_ms.push(started.elapsed().as_millis());
        let ids: Vec<u64> = stored.iter().map(id_of).collect();
        let expected: Vec<u64> = (1..=ids.len() as u64).collect();
        assert_eq!(ids, expected, "ids are not 1..=n: a hole or a duplicate");
        let missing: Vec<u64> = acknowledged
            .iter()
            .chain(&known)
            .filter(|id| !ids.contains(id))
            .copied()
            .collect();
        assert!(
            missing.is_empty(),
            "{point:?}: acknowledged records {missing:?} are gone after kill -9 (store has \
             {ids:?}); log before the kill:\n{log}"
        );
        let this_oom = stored
            .iter()
            .any(|r| r.oom.as_ref().is_some_and(|o| o.victim_pid == leaker.pid));
        oom_records += u32::from(this_oom);
        acknowledged_total += acknowledged.len();
        figure(
            TEST,
            &format!("{point:?}"),
            format!(
                "acknowledged {} records, store has {} (was {}), this kill's OOM record {}",
                acknowledged.len(),
                ids.len(),
                known.len(),
                if this_oom {
                    "stored"
                } else {
                    "not taken before the kill"
                }
            ),
        );
        known = ids.into_iter().collect();
    }
    figure(
        TEST,
        "acknowledged records surviving, over all kills",
        format!(
            "{acknowledged_total}/{acknowledged_total} across {} kills ({} OOM records taken \
             before the kill); store ends with {} records",
            points.len() + 1,
            oom_records,
            known.len()
        ),
    );
    figure(
        TEST,
        "restart to evidence served, per kill (ms)",
        format!("{reopen_ms:?}"),
    );
    assert_no_panic(&agent.stderr());
    agent.stop_keeping_state();
    let _ = std::fs::remove_dir_all(&root);
}

/// Pids the agent lists as traced, anywhere (pods and processes traced by pid).
fn traced_pids(targets: &Value) -> Vec<u64> {
    let in_pods = targets["pods"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|p| p["containers"].as_array().into_iter().flatten())
        .flat_map(|c| c["processes"].as_array().into_iter().flatten());
    let others = targets["other_processes"].as_array().into_iter().flatten();
    in_pods
        .chain(others)
        .filter(|p| p["traced"] == true)
        .filter_map(|p| p["pid"].as_u64())
        .collect()
}

/// The pids the agent lists in one pod (by name), traced or not.
fn pod_pids(targets: &Value, name: &str) -> Vec<u64> {
    targets["pods"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["name"] == name)
        .flat_map(|p| p["containers"].as_array().into_iter().flatten())
        .flat_map(|c| c["processes"].as_array().into_iter().flatten())
        .filter_map(|p| p["pid"].as_u64())
        .collect()
}

/// Waits (up to `patience`) until the agent's listing satisfies `done`; returns it. A call
/// that fails (the agent busy past its deadline) is retried.
fn wait_targets(agent: &Agent, patience: Duration, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + patience;
    loop {
        let (code, stdout, stderr) = agent.ctl(&["pods", "-o", "json"]);
        let last = if code == Some(0) {
            let targets: Value = serde_json::from_str(&stdout).expect("pods JSON");
            if done(&targets) {
                return targets;
            }
            stdout
        } else {
            stderr
        };
        assert!(
            Instant::now() < deadline,
            "the listing never settled in {patience:?}: {last}\n{}",
            agent.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Which of `children` the agent logged as traced.
fn traced_children(log: &str, children: &BTreeSet<u64>) -> BTreeSet<u64> {
    log.lines()
        .filter(|line| line.contains(" tracing pid="))
        .filter_map(|line| {
            let pid = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("pid="))?;
            pid.parse().ok()
        })
        .filter(|pid| children.contains(pid))
        .collect()
}

#[test]
fn a_thousand_short_lived_processes_leave_no_tracked_pid_no_stack_slot_and_bounded_rss() {
    const TEST: &str = "1,000 short-lived processes";
    const CHILDREN: usize = 1000;
    // Few stack slots, so that slots not given back would run out within the run.
    const STACK_SLOTS: usize = 256;
    require_root();
    let root = temp_root("churn");
    let namespace = format!("churn-{}", std::process::id());
    let pod = FakePod::create(
        &namespace,
        "forker-0",
        Driver::Cgroupfs,
        "besteffort",
        &["app"],
        &root.join("pods"),
        &root.join("containers"),
    );
    let mut parent = Workload::start(&workload("process_churn"), &[&CHILDREN.to_string(), "32"]);
    pod.place(parent.pid, "app");
    let mut agent = Agent::start(
        &root,
        &[
            "--namespace",
            &namespace,
            "--metrics",
            "127.0.0.1:0",
            "--max-stacks",
            &STACK_SLOTS.to_string(),
        ],
    );
    agent.wait_traced(&[parent.pid]);
    let metrics = metrics_address(&agent);
    std::thread::sleep(Duration::from_millis(500));
    let rss_before = vm_rss_kib(agent.pid());
    let slots = r#"tracer_map_entries{map="stack_totals"}"#;
    let slots_before = metric(&scrape(metrics), slots);

    let peak = PeakRss::start(agent.pid());
    let latency = LatencyProbe::start(&agent.socket, Duration::from_millis(250));
    let started = Instant::now();
    parent.send("go");
    assert_eq!(parent.wait_for("done"), "0", "children that failed");
    let churn = started.elapsed();
    let children: BTreeSet<u64> = parent.other_pids.iter().map(|&p| u64::from(p)).collect();
    assert_eq!(children.len(), CHILDREN, "distinct child pids");
    assert!(
        agent.try_exit().is_none(),
        "the agent died:\n{}",
        agent.stderr()
    );

    let traced_so_far = traced_children(&agent.stderr(), &children);
    figure(
        TEST,
        "children forked / traced by the agent",
        format!(
            "{CHILDREN} / {} (32 alive at once, 50-350 ms each, {} ms in all)",
            traced_so_far.len(),
            churn.as_millis()
        ),
    );

    // The agent must keep answering while processes come and go (under 50 concurrent clients
    // it answers within 0.6 s). Checked first: while it stalls, nothing below can settle.
    let (answered, worst) = latency.worst();
    figure(
        TEST,
        "ListTargets during the run: calls answered, longest wait",
        format!("{answered}, {} ms", worst.as_millis()),
    );
    // Before the fixes the agent stalled 4-30 s, then 0.9-4.5 s while it attached on its own
    // thread and closed a failed attach's links there (a child exiting mid-attach: 50-500 ms
    // each). Processes are now read on another thread and a failed attach's links close in the
    // background: 0.16-0.21 s here. What is left on the agent's thread is the kernel's uprobe
    // registration, up to about 0.2 s for a process that exits during it. The bound leaves room
    // for a full CI run, where the other reliability tests' workloads share the two cores.
    assert!(
        worst <= Duration::from_secs(2),
        "the agent has not answered ListTargets for {} ms while processes exit ({answered} \
         calls answered in {} ms): something slow is back on the agent's thread (closing uprobe \
         links takes the kernel about 100 ms each; reading processes belongs to the preparer)",
        worst.as_millis(),
        churn.as_millis()
    );

    // Exits are noticed at the next poll and pods rescanned every 200 ms: the tracked list
    // empties again down to the parent.
    let settled_at = Instant::now();
    let parent_only = [u64::from(parent.pid)];
    let targets = wait_targets(&agent, Duration::from_secs(20), |t| {
        traced_pids(t) == parent_only && pod_pids(t, "forker-0") == parent_only
    });
    let settle = settled_at.elapsed();
    let latencies = latency.stop();
    let text = scrape(metrics);
    let records = records_by_process(agent.pid());
    let rss_after = vm_rss_kib(agent.pid());
    let peak = peak.stop();
    let log = agent.stderr();
    let traced_children = traced_children(&log, &children);
    let slowest = latencies.iter().max().copied().unwrap_or_default();
    figure(
        TEST,
        "allocations recorded",
        metric(&text, r#"tracer_bpf_events_total{event="allocation"}"#),
    );
    figure(
        TEST,
        "stack slots in use before / after",
        format!("{slots_before} / {} of {STACK_SLOTS}", metric(&text, slots)),
    );
    figure(
        TEST,
        "after the last exit, until only the parent is listed",
        format!("{} ms", settle.as_millis()),
    );
    figure(
        TEST,
        "agent VmRSS before / peak / after",
        format!("{rss_before} / {peak} / {rss_after} KiB"),
    );
    figure(
        TEST,
        "ListTargets round trips over the whole run",
        format!(
            "{} calls, slowest {} ms",
            latencies.len(),
            slowest.as_millis()
        ),
    );
    figure(
        TEST,
        "processes with records in the maps afterwards (pid: slots, allocations)",
        format!("{records:?}"),
    );

    assert_no_panic(&log);
    for pid in traced_pids(&targets) {
        assert!(
            is_alive(pid as u32),
            "pid {pid} is listed as traced but gone"
        );
    }
    assert_eq!(metric(&text, "tracer_processes_traced"), 1.0, "{text}");
    assert_eq!(metric(&text, "tracer_processes_attached"), 1.0, "{text}");
    for loss in [
        "stack_totals_full",
        "allocations_map_full",
        "thread_state_full",
    ] {
        assert_eq!(
            metric(&text, &format!("tracer_lost_total{{reason=\"{loss}\"}}")),
            0.0,
            "{loss}:\n{text}"
        );
    }
    assert!(
        rss_after <= rss_before + 64 * KIB,
        "RSS grew from {rss_before} to {rss_after} KiB"
    );
    let (code, _, stderr) = agent.ctl(&["top", &pod.display()]);
    assert_eq!(code, Some(0), "{stderr}");

    // Only the parent may still have records: a process that is gone must leave no stack slot
    // and no allocation behind, whether its attach succeeded or failed part-way.
    let orphans: Vec<String> = records
        .iter()
        .filter(|(tgid, _)| **tgid != parent.pid)
        .map(|(tgid, (slots, allocations))| {
            let attach_failed = log.lines().any(|line| {
                line.contains("cannot trace selected process")
                    && line.contains(&format!("pid={tgid} "))
            });
            format!(
                "pid {tgid} ({}, {}): {slots} stack slots, {allocations} allocations",
                if children.contains(&u64::from(*tgid)) {
                    "an exited child"
                } else {
                    "not a child"
                },
                if attach_failed {
                    "its attach failed part-way"
                } else {
                    "was attached"
                }
            )
        })
        .collect();
    assert!(
        orphans.is_empty(),
        "records of processes that are gone stay in the maps for good (their stack slots are \
         never given back):\n{}",
        orphans.join("\n")
    );
    assert_eq!(
        metric(&text, slots),
        slots_before,
        "stack slots not given back:\n{text}"
    );
    parent.finish();

    // Children live 50-350 ms and the agent attaches between discovery rounds, so it catches
    // only some of them (one in 13 to one in 125 in a debug build here, fewest when the
    // machine is loaded); enough must have been traced and detached for the checks above to
    // mean something. Slot recycling itself is shown by tests/leaks.rs (a full stack table
    // gives its slots back).
    assert!(
        traced_children.len() >= 5,
        "only {} of {CHILDREN} children were traced",
        traced_children.len()
    );
}

/// The leak_here bytes of a report.
fn leak_here_bytes(report: &pb::LeakReport) -> u64 {
    report
        .containers
        .iter()
        .flat_map(|c| &c.stacks)
        .filter(|s| s.frames.first().is_some_and(|f| f.function == "leak_here"))
        .map(|s| s.bytes)
        .sum()
}

fn pod_selector(namespace: &str, name: &str) -> Option<pb::Selector> {
    Some(pb::Selector {
        target: Some(pb::selector::Target::Pod(pb::PodName {
            namespace: namespace.into(),
            name: name.into(),
        })),
        container: String::new(),
    })
}

fn report_request(selector: Option<pb::Selector>) -> pb::GetLeakReportRequest {
    pb::GetLeakReportRequest {
        selector,
        top: 10,
        min_age: None,
        sort_by: 0,
    }
}

async fn code_of<T>(call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>) -> Code {
    match call.await {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

#[test]
fn many_clients_and_oversized_or_malformed_requests_get_precise_answers_with_bounded_rss() {
    const TEST: &str = "gRPC load and bad input";
    const CLIENTS: usize = 50;
    const CALLS_PER_CLIENT: usize = 10;
    const STREAMS: usize = 20;
    const CTL_PROCESSES: usize = 10;
    require_root();
    let root = temp_root("grpc-faults");
    let namespace = format!("grpc-faults-{}", std::process::id());
    let pod = FakePod::create(
        &namespace,
        "api-0",
        Driver::Systemd,
        "guaranteed",
        &["app"],
        &root.join("pods"),
        &root.join("containers"),
    );
    let mut leaker = Workload::start(&workload("one_leak_site"), &[]);
    pod.place(leaker.pid, "app");
    let mut agent = Agent::start(&root, &["--namespace", &namespace]);
    agent.wait_traced(&[leaker.pid]);
    let _ = leaker.run_to_done();
    let report = agent.ctl_json(&["top", &pod.display()]);
    assert_eq!(
        report_totals(&report, "leak_here"),
        (409_600, 100),
        "{report:#}"
    );
    let daemon = agent.pid();
    let rss_before = vm_rss_kib(daemon);
    let peak = PeakRss::start(daemon);
    let socket = agent.socket.clone();
    let server = agent.server();
    let ns = namespace.clone();

    runtime().block_on(async move {
        // 1. Load: watch streams, unary clients and tracerctl processes at once.
        let started = Instant::now();
        let stream_for = Duration::from_secs(3);
        let mut streams = Vec::new();
        for _ in 0..STREAMS {
            let socket = socket.clone();
            let ns = ns.clone();
            streams.push(tokio::spawn(async move {
                let mut client = LeakTracerClient::new(channel(&socket).await);
                let mut stream = client
                    .watch_leak_reports(pb::WatchLeakReportsRequest {
                        report: Some(report_request(pod_selector(&ns, "api-0"))),
                        interval: Some(prost_types::Duration {
                            seconds: 0,
                            nanos: 200_000_000,
                        }),
                    })
                    .await
                    .expect("watch")
                    .into_inner();
                let mut reports = 0;
                let deadline = tokio::time::Instant::now() + stream_for;
                while let Ok(message) = tokio::time::timeout_at(deadline, stream.message()).await {
                    let report = message.expect("stream").expect("a report");
                    assert_eq!(leak_here_bytes(&report), 409_600);
                    reports += 1;
                }
                reports
            }));
        }
        let mut clients = Vec::new();
        for i in 0..CLIENTS {
            let socket = socket.clone();
            let ns = ns.clone();
            clients.push(tokio::spawn(async move {
                let channel = channel(&socket).await;
                let mut client = LeakTracerClient::new(channel.clone());
                let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
                let mut slowest = Duration::ZERO;
                for call in 0..CALLS_PER_CLIENT {
                    let sent = Instant::now();
                    match (i + call) % 4 {
                        0 => {
                            let report = client
                                .get_leak_report(report_request(pod_selector(&ns, "api-0")))
                                .await
                                .expect("report");
                            assert_eq!(leak_here_bytes(report.get_ref()), 409_600);
                        }
                        1 => {
                            let targets = client
                                .list_targets(pb::ListTargetsRequest {})
                                .await
                                .expect("targets");
                            assert!(!targets.get_ref().pods.is_empty());
                        }
                        2 => {
                            let _ = client
                                .list_evidence(pb::ListEvidenceRequest { filter: None })
                                .await
                                .expect("evidence");
                        }
                        _ => {
                            let _ = health
                                .check(tonic_health::pb::HealthCheckRequest {
                                    service: "tracer.v1.LeakTracer".into(),
                                })
                                .await
                                .expect("health");
                        }
                    }
                    slowest = slowest.max(sent.elapsed());
                }
                slowest
            }));
        }
        let mut ctl = Vec::new();
        for _ in 0..CTL_PROCESSES {
            let (server, pod) = (server.clone(), format!("{ns}/api-0"));
            ctl.push(tokio::task::spawn_blocking(move || {
                let output = std::process::Command::new(tracerctl_binary())
                    .args(["--server", &server, "top", &pod, "-o", "json"])
                    .output()
                    .expect("run tracerctl");
                assert!(
                    output.status.success(),
                    "{}",
                    String::from_utf8_lossy(&output.stderr)
                );
                let report: Value = serde_json::from_slice(&output.stdout).expect("JSON");
                report_totals(&report, "leak_here")
            }));
        }
        let mut slowest = Duration::ZERO;
        for client in clients {
            slowest = slowest.max(client.await.expect("client task"));
        }
        let unary_done = started.elapsed();
        for run in ctl {
            assert_eq!(run.await.expect("tracerctl task"), (409_600, 100));
        }
        let mut reports = Vec::new();
        for stream in streams {
            reports.push(stream.await.expect("stream task"));
        }
        // 200 ms apart for 3 s: about 15 each; a loaded agent may skip ticks, never stall.
        assert!(
            reports.iter().all(|&n| n >= 5),
            "watch streams starved: {reports:?}"
        );
        figure(
            TEST,
            "concurrent load",
            format!(
                "{CLIENTS} clients x {CALLS_PER_CLIENT} calls + {CTL_PROCESSES} tracerctl + \
                 {STREAMS} watch streams: all answered, unary calls done in {} ms, slowest call \
                 {} ms, reports per stream {}..{}",
                unary_done.as_millis(),
                slowest.as_millis(),
                reports.iter().min().unwrap_or(&0),
                reports.iter().max().unwrap_or(&0)
            ),
        );

        // 2. Streams whose clients went away give their slots back: all of them open again.
        let max = tracer_daemon::api::MAX_WATCH_STREAMS;
        let deadline = Instant::now() + Duration::from_secs(10);
        let reopened = loop {
            let mut open = Vec::new();
            let mut refused = 0;
            for _ in 0..=max {
                let mut client = LeakTracerClient::new(channel(&socket).await);
                let request = pb::WatchLeakReportsRequest {
                    report: Some(report_request(pod_selector(&ns, "api-0"))),
                    interval: Some(prost_types::Duration {
                        seconds: 60,
                        nanos: 0,
                    }),
                };
                match client.watch_leak_reports(request).await {
                    Ok(stream) => open.push(stream.into_inner()),
                    Err(status) => {
                        assert_eq!(status.code(), Code::ResourceExhausted, "{status}");
                        refused += 1;
                    }
                }
            }
            if open.len() == max && refused == 1 {
                break open.len();
            }
            assert!(
                Instant::now() < deadline,
                "only {} of {max} watch slots came back after the clients left",
                open.len()
            );
            drop(open);
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        figure(
            TEST,
            "watch slots free again after the streams' clients left",
            format!("{reopened}/{max} (the next one refused with RESOURCE_EXHAUSTED)"),
        );

        // 3. Oversized requests: refused on the length prefix, before parsing (OUT_OF_RANGE is
        // what tonic gives for a message over max_decoding_message_size).
        let connection = channel(&socket).await;
        let mut client = LeakTracerClient::new(connection.clone());
        let limit = tracer_daemon::api::server::MAX_REQUEST_BYTES;
        let named = |len: usize| report_request(pod_selector(&ns, &"a".repeat(len)));
        // Just under the limit, the request is parsed and the name refused.
        assert_eq!(
            code_of(client.get_leak_report(named(limit - 1024))).await,
            Code::InvalidArgument
        );
        assert_eq!(
            code_of(client.get_leak_report(named(limit + 1))).await,
            Code::OutOfRange
        );
        assert_eq!(
            code_of(client.get_leak_report(named(8 << 20))).await,
            Code::OutOfRange
        );
        let (code, message) = raw_call(
            &connection,
            "GetLeakReport",
            "application/grpc",
            grpc_frame(0, 0x7f7f_7f7f, b"abc"),
        )
        .await;
        assert_eq!(code, Code::OutOfRange, "a 2 GiB length prefix: {message}");

        // 4. Malformed gRPC: INTERNAL is what the gRPC spec gives for a message that cannot be
        // parsed or a frame that breaks the protocol.
        let malformed: [(&str, String, Code); 6] = [
            (
                "field 1 (a message) sent as a varint",
                grpc_frame(0, 2, b"\x08\x01"),
                Code::Internal,
            ),
            (
                "a field longer than the message",
                grpc_frame(0, 3, b"\x0a\x7f\x01"),
                Code::Internal,
            ),
            (
                "a frame cut short",
                grpc_frame(0, 10, b"\x0a\x00"),
                Code::Internal,
            ),
            (
                "the compressed flag without grpc-encoding",
                grpc_frame(1, 0, b""),
                Code::Internal,
            ),
            (
                "an invalid compression flag",
                grpc_frame(7, 0, b""),
                Code::Internal,
            ),
            ("no message at all", String::new(), Code::Internal),
        ];
        for (what, body, expected) in malformed {
            let (code, message) =
                raw_call(&connection, "GetLeakReport", "application/grpc", body).await;
            assert_eq!(code, expected, "{what}: {message}");
        }
        let (code, message) = raw_call(
            &connection,
            "NoSuchMethod",
            "application/grpc",
            grpc_frame(0, 0, b""),
        )
        .await;
        assert_eq!(code, Code::Unimplemented, "unknown method: {message}");

        // 5. Well-formed but wrong requests get the precise code.
        let with = |f: &dyn Fn(&mut pb::GetLeakReportRequest)| {
            let mut request = report_request(pod_selector(&ns, "api-0"));
            f(&mut request);
            request
        };
        let cases: Vec<(&str, pb::GetLeakReportRequest, Code)> = vec![
            ("no selector", report_request(None), Code::InvalidArgument),
            (
                "an empty selector",
                report_request(Some(pb::Selector::default())),
                Code::InvalidArgument,
            ),
            (
                "an invalid namespace",
                report_request(pod_selector("Bad_NS", "x")),
                Code::InvalidArgument,
            ),
            (
                "pid 0",
                report_request(Some(pb::Selector {
                    target: Some(pb::selector::Target::Pid(0)),
                    container: String::new(),
                })),
                Code::InvalidArgument,
            ),
            ("top 5000", with(&|r| r.top = 5000), Code::InvalidArgument),
            (
                "sort_by 99",
                with(&|r| r.sort_by = 99),
                Code::InvalidArgument,
            ),
            (
                "a negative min_age",
                with(&|r| {
                    r.min_age = Some(prost_types::Duration {
                        seconds: -1,
                        nanos: 0,
                    });
                }),
                Code::InvalidArgument,
            ),
            (
                "an unknown pod",
                report_request(pod_selector(&ns, "nope")),
                Code::NotFound,
            ),
            (
                "an unknown container",
                with(&|r| {
                    if let Some(s) = r.selector.as_mut() {
                        s.container = "sidecar".into();
                    }
                }),
                Code::NotFound,
            ),
        ];
        for (what, request, expected) in cases {
            assert_eq!(
                code_of(client.get_leak_report(request)).await,
                expected,
                "{what}"
            );
        }
        assert_eq!(
            code_of(client.get_evidence(pb::GetEvidenceRequest { id: 0 })).await,
            Code::InvalidArgument
        );
        assert_eq!(
            code_of(client.get_evidence(pb::GetEvidenceRequest { id: 1 << 40 })).await,
            Code::NotFound
        );
        assert_eq!(
            code_of(client.list_evidence(pb::ListEvidenceRequest {
                filter: Some(pb::EvidenceFilter {
                    selector: None,
                    since: None,
                    until: None,
                    limit: 1_000_000,
                }),
            }))
            .await,
            Code::InvalidArgument
        );
        assert_eq!(
            code_of(client.start_tracing(pb::StartTracingRequest {
                selector: pod_selector(&ns, "nope"),
            }))
            .await,
            Code::NotFound
        );
        assert_eq!(
            code_of(client.watch_leak_reports(pb::WatchLeakReportsRequest {
                report: Some(report_request(pod_selector(&ns, "api-0"))),
                interval: Some(prost_types::Duration {
                    seconds: 0,
                    nanos: 1_000_000,
                }),
            }))
            .await,
            Code::InvalidArgument
        );

        // 6. Garbage on the socket: the connection is closed, the agent stays up. A connection
        // that stalls after a partial preface must not hold anyone else up.
        let stalled = std::os::unix::net::UnixStream::connect(&socket).expect("connect");
        {
            use std::io::Write as _;
            (&stalled)
                .write_all(b"PRI * HTTP/2.0\r\n")
                .expect("partial preface");
        }
        let mut noise = Vec::with_capacity(4096);
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..4096 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            noise.push(state as u8);
        }
        let mut preface_then_noise = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        preface_then_noise.extend(&noise[..512]);
        let garbage: [(&str, Vec<u8>); 3] = [
            ("4 KiB of random bytes", noise.clone()),
            (
                "an HTTP/1.1 request",
                b"GET /tracer.v1.LeakTracer/ListTargets HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            ),
            ("the HTTP/2 preface then random frames", preface_then_noise),
        ];
        for (what, bytes) in garbage {
            let socket = socket.clone();
            let closed = tokio::task::spawn_blocking(move || {
                garbage_connection(&socket, &bytes, Duration::from_secs(5))
            })
            .await
            .expect("garbage task");
            let closed =
                closed.unwrap_or_else(|| panic!("{what}: connection still open after 5 s"));
            figure(
                TEST,
                &format!("{what}: connection closed after"),
                format!("{} ms", closed.as_millis()),
            );
        }

        // 7. Still right afterwards, on a fresh connection, with the stalled one still open.
        let mut client = LeakTracerClient::new(channel(&socket).await);
        let answered = Instant::now();
        let report = client
            .get_leak_report(report_request(pod_selector(&ns, "api-0")))
            .await
            .expect("report after the bad input");
        assert_eq!(leak_here_bytes(report.get_ref()), 409_600);
        figure(
            TEST,
            "a normal report after the bad input, with a stalled connection open",
            format!("exact bytes in {} ms", answered.elapsed().as_millis()),
        );
        drop(stalled);
    });

    let rss_after = vm_rss_kib(daemon);
    let peak = peak.stop();
    figure(
        TEST,
        "agent VmRSS before / peak / after",
        format!("{rss_before} / {peak} / {rss_after} KiB"),
    );
    assert!(
        rss_after <= rss_before + 64 * KIB,
        "RSS grew from {rss_before} to {rss_after} KiB"
    );
    assert!(
        agent.try_exit().is_none(),
        "the agent died:\n{}",
        agent.stderr()
    );
    assert_no_panic(&agent.stderr());
    let report = agent.ctl_json(&["top", &pod.display()]);
    assert_eq!(
        report_totals(&report, "leak_here"),
        (409_600, 100),
        "{report:#}"
    );
    leaker.finish();
}
