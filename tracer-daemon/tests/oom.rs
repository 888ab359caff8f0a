//! Evidence before OOMKilled, for real: a leaking process in a pod cgroup with a 64 MiB limit is
//! really OOM-killed by this kernel while the real agent watches it. Its threshold snapshots
//! and the OOM kill are recorded for the right pod, name the leaking function with exact bytes,
//! survive a kill -9 and restart of the agent, and export to a pprof that `go tool pprof`
//! reads.

mod support;

use std::{path::Path, process::Command};

use serde_json::Value;
use support::{agent::*, faults::memory_limited_pod, node::*, *};

const MIB: u64 = 1 << 20;
const LIMIT: u64 = 64 * MIB;

fn agent_args(namespace: &str, state_dir: &Path) -> Vec<String> {
    vec![
        "--namespace".into(),
        namespace.into(),
        "--state-dir".into(),
        state_dir.display().to_string(),
        "--memory-watch-interval".into(),
        "50ms".into(),
    ]
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

fn leak_bytes(evidence: &Value, function: &str) -> u64 {
    evidence["report"]["stacks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["frames"][0]["function"] == function)
        .map(|s| s["bytes"].as_u64().unwrap_or(0))
        .sum()
}

/// A pod whose one leaking process (1 MiB from leak_until_oom every `step_ms`) the kernel
/// OOM-killed while a real agent traced it, and the OOM events the agent recorded. At 40 ms a
/// step, the climb from 80% of the limit to the kill takes half a second: ten of the agent's
/// memory-watch rounds, enough for a threshold snapshot on a loaded machine (at 15 ms a test
/// run beside the others once saw none).
struct KilledLeak {
    root: std::path::PathBuf,
    args: Vec<String>,
    pod: FakePod,
    agent: Agent,
    victim: u32,
    /// The victim's last "allocated N": its outstanding MiB at leak_until_oom.
    last: u64,
    events: Value,
}

fn oom_kill_a_leak(tag: &str, pod_name: &str, step_ms: &str) -> KilledLeak {
    require_root();
    let root = temp_root(tag);
    let namespace = format!("{tag}-{}", std::process::id());
    let pod = memory_limited_pod(&root, &namespace, pod_name, "app", LIMIT);
    let mut leaker = Workload::start(&workload("oom_leaker"), &["leak", step_ms]);
    pod.place(leaker.pid, "app");
    let args = agent_args(&namespace, &root.join("state"));
    let agent = Agent::start(&root, &strs(&args));
    agent.wait_traced(&[leaker.pid]);

    leaker.send("go");
    let last = leaker.last_allocated_before_death();
    assert_eq!(
        leaker.wait_killed(),
        Some(libc::SIGKILL),
        "the kernel should have killed it"
    );
    let events = agent.wait_json(
        &["oom-events", &pod.display()],
        "recorded the OOM kill",
        |v| v.as_array().is_some_and(|a| !a.is_empty()),
    );
    KilledLeak {
        root,
        args,
        pod,
        agent,
        victim: leaker.pid,
        last,
        events,
    }
}

#[test]
fn an_oom_killed_leak_is_recorded_before_and_at_the_kill_and_survives_restarts() {
    let KilledLeak {
        root,
        args,
        pod,
        agent,
        victim,
        last,
        events,
    } = oom_kill_a_leak("oom", "leaky-0", "40");
    let event = &events[0];
    assert_eq!(event["victim_pid"], u64::from(victim), "{event:#}");
    assert_eq!(event["source"], "kernel hook", "{event:#}");
    assert_eq!(event["container"], "app", "{event:#}");
    assert_eq!(event["pod"], pod.display(), "{event:#}");
    assert!(
        event["top_call_site"]
            .as_str()
            .unwrap_or("")
            .starts_with("leak_until_oom"),
        "{event:#}"
    );
    let id = event["evidence_id"].as_u64().expect("evidence id");
    let evidence = agent.ctl_json(&["evidence", &id.to_string()]);
    assert_eq!(
        leak_bytes(&evidence, "leak_until_oom"),
        last * MIB,
        "the victim's last outstanding bytes: {evidence:#}"
    );

    // Snapshots were taken on the way up, before the kill.
    let listed = agent.ctl_json(&["evidence", "--pod", &pod.display()]);
    let thresholds: Vec<&Value> = listed
        .as_array()
        .expect("list")
        .iter()
        .filter(|e| e["kind"] == "threshold")
        .collect();
    assert!(
        !thresholds.is_empty(),
        "no threshold snapshot before the OOM kill: {listed:#}"
    );
    let highest = thresholds
        .iter()
        .max_by_key(|e| e["id"].as_u64())
        .expect("one");
    let before = agent.ctl_json(&["evidence", &highest["id"].as_u64().expect("id").to_string()]);
    assert!(
        before["summary"]
            .as_str()
            .unwrap_or("")
            .contains("% of limit"),
        "{before:#}"
    );
    assert!(
        leak_bytes(&before, "leak_until_oom") >= LIMIT * 8 / 10 - 4 * MIB,
        "{before:#}"
    );

    // Where cgroup v2 offers PSI, the container's memory-pressure trigger was registered.
    if pod
        .unified_dir("app")
        .is_some_and(|d| d.join("memory.pressure").exists())
    {
        assert!(
            agent
                .stderr()
                .contains("PSI memory-pressure trigger registered"),
            "{}",
            agent.stderr()
        );
    }

    // kill -9 of the agent, a new agent on the same state: everything is still served.
    agent.kill_9();
    let agent = Agent::start(&root, &strs(&args));
    let events = agent.ctl_json(&["oom-events", &pod.display()]);
    assert_eq!(events[0]["evidence_id"], id, "{events:#}");
    let again = agent.ctl_json(&["evidence", &id.to_string()]);
    assert_eq!(
        leak_bytes(&again, "leak_until_oom"),
        last * MIB,
        "{again:#}"
    );

    // The stored evidence exports to a profile that go tool pprof reads.
    let profile = root.join("oom.pb.gz");
    let (code, _, stderr) = agent.ctl(&[
        "pprof",
        "--evidence",
        &id.to_string(),
        "--out",
        profile.to_str().expect("utf8"),
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    let output = Command::new("go")
        .args(["tool", "pprof", "-top", "-sample_index=inuse_space"])
        .arg(&profile)
        .env("HOME", &root)
        .output()
        .expect("run go tool pprof (Debian's golang-go; cargo xtask setup installs it)");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "go tool pprof failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        text.contains("leak_until_oom"),
        "pprof -top does not list the leak:\n{text}"
    );
    agent.stop_keeping_state();
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn the_victim_is_the_leaker_not_the_process_whose_allocation_tripped_the_limit() {
    require_root();
    let root = temp_root("victim");
    let state = root.join("state");
    let namespace = format!("victim-{}", std::process::id());
    let pod = memory_limited_pod(&root, &namespace, "two-procs-0", "app", LIMIT);
    let mut leaker = Workload::start(&workload("oom_leaker"), &["hold", "52"]);
    pod.place(leaker.pid, "app");
    let mut nibbler = Workload::start(&workload("oom_leaker"), &["nibble", "20"]);
    pod.place(nibbler.pid, "app");
    let args = agent_args(&namespace, &state);
    let agent = Agent::start(&root, &strs(&args));
    agent.wait_traced(&[leaker.pid, nibbler.pid]);

    let _ = leaker.run_to_done();
    nibbler.send("go");
    assert_eq!(
        leaker.wait_killed(),
        Some(libc::SIGKILL),
        "the big leaker is the OOM victim"
    );
    let events = agent.wait_json(
        &["oom-events", &pod.display()],
        "recorded the OOM kill",
        |v| v.as_array().is_some_and(|a| !a.is_empty()),
    );
    let first = events.as_array().expect("events").last().expect("oldest");
    assert_eq!(
        first["victim_pid"],
        u64::from(leaker.pid),
        "victim: {first:#}"
    );
    assert_eq!(
        first["trigger_pid"],
        u64::from(nibbler.pid),
        "trigger: {first:#}"
    );
    assert_eq!(first["victim_comm"], "oom_leaker");
    let evidence = agent.ctl_json(&[
        "evidence",
        &first["evidence_id"].as_u64().expect("id").to_string(),
    ]);
    assert_eq!(
        leak_bytes(&evidence, "leak_until_oom"),
        52 * MIB,
        "{evidence:#}"
    );
    drop(nibbler);
    agent.stop_keeping_state();
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn trace_logs_an_oom_kill_of_a_process_it_does_not_trace_only_at_debug_level() {
    require_root();
    let root = temp_root("oom-untraced");
    let namespace = format!("oom-untraced-{}", std::process::id());
    let pod = memory_limited_pod(&root, &namespace, "oomer-0", "app", LIMIT);
    // `trace` follows one quiet process; another one, untraced, is OOM-killed meanwhile.
    let quiet = Workload::start(&workload("one_leak_site"), &[]);
    let trace = Trace::start(&[quiet.pid], &["--interval", "200ms"]);
    let mut leaker = Workload::start(&workload("oom_leaker"), &["leak", "15"]);
    pod.place(leaker.pid, "app");
    leaker.send("go");
    let _ = leaker.last_allocated_before_death();
    assert_eq!(leaker.wait_killed(), Some(libc::SIGKILL));
    std::thread::sleep(std::time::Duration::from_millis(500));
    let log = trace.stderr();
    assert!(
        !log.lines()
            .any(|l| l.contains("WARN") && l.contains("OOM kill")),
        "an OOM kill of a process trace does not follow is not a warning:\n{log}"
    );
    drop(trace);
    quiet.finish();
}

/// The row of `function`'s call site in `tracerctl diff -o json`.
fn diff_row<'a>(diff: &'a Value, function: &str) -> Option<&'a Value> {
    diff["stacks"]
        .as_array()?
        .iter()
        .find(|s| s["frames"][0]["function"] == function)
}

/// `go tool pprof -top` in bytes: the flat bytes of each function that has any.
fn pprof_flat_bytes(args: &[&str], home: &Path) -> Vec<(String, i64)> {
    let output = Command::new("go")
        .args([
            "tool",
            "pprof",
            "-top",
            "-unit=B",
            "-sample_index=inuse_space",
        ])
        .args(args)
        .env("HOME", home)
        .output()
        .expect("run go tool pprof (Debian's golang-go; cargo xtask setup installs it)");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "go tool pprof {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    // "flat flat% sum% cum cum% name": flat in bytes as "-41943040B".
    text.lines()
        .skip_while(|l| !l.trim_start().starts_with("flat"))
        .skip(1)
        .filter_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            let flat = words.first()?.strip_suffix('B')?.parse().ok()?;
            Some((words.get(5..)?.join(" "), flat))
        })
        .collect()
}

#[test]
fn diff_names_what_grew_between_an_oom_kill_and_the_pod_now_and_pprof_base_agrees() {
    let KilledLeak {
        root,
        pod,
        agent,
        last,
        events,
        ..
    } = oom_kill_a_leak("diff", "diffed-0", "15");
    let kill = events[0]["evidence_id"].as_u64().expect("id").to_string();

    // The container's next processes, each 1 MiB and then ten minutes asleep: one from
    // leak_until_oom (the same call path as the victim's), one from nibble_memory.
    let mut again = Workload::start(&workload("oom_leaker"), &["leak", "600000"]);
    pod.place(again.pid, "app");
    let mut nibbler = Workload::start(&workload("oom_leaker"), &["nibble", "600000"]);
    pod.place(nibbler.pid, "app");
    agent.wait_traced(&[again.pid, nibbler.pid]);
    for workload in [&mut again, &mut nibbler] {
        workload.send("go");
        let _ = workload.wait_for("allocated 1");
    }
    let live = ["diff", &kill, "--live", &pod.display()];
    let diff = agent.wait_json(&live, "saw the new processes' memory", |d| {
        diff_row(d, "nibble_memory").is_some_and(|r| r["bytes_b"] == MIB)
            && diff_row(d, "leak_until_oom").is_some_and(|r| r["bytes_b"] == MIB)
    });
    let grew = &diff["stacks"][0];
    assert_eq!(
        grew["frames"][0]["function"], "nibble_memory",
        "largest growth first: {diff:#}"
    );
    assert_eq!(
        (&grew["bytes_a"], &grew["bytes_b"], &grew["bytes_change"]),
        (&Value::from(0), &Value::from(MIB), &Value::from(MIB)),
        "{diff:#}"
    );
    assert_eq!(
        (&grew["count_a"], &grew["count_b"]),
        (&Value::from(0), &Value::from(1))
    );
    // Matched across processes by what the frames name (other addresses, same code).
    let leak = diff_row(&diff, "leak_until_oom").expect("leak_until_oom in both");
    let shrank = MIB as i64 - (last * MIB) as i64;
    assert_eq!(leak["bytes_a"], last * MIB, "A is the OOM kill: {diff:#}");
    assert_eq!(leak["bytes_change"], shrank, "{diff:#}");
    assert_eq!(
        (&leak["count_a"], &leak["count_b"]),
        (&Value::from(last), &Value::from(1))
    );
    assert_eq!(diff["stacks"].as_array().map(Vec::len), Some(2), "{diff:#}");
    assert_eq!(diff["a"]["container"], "app", "{diff:#}");
    let (code, table, stderr) = agent.ctl(&live);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        table.contains("+1.0 MiB") && table.contains("nibble_memory"),
        "{table}"
    );

    // The same change as a pprof profile: with --base, and as -diff_base of two exports.
    let with_base = root.join("with-base.pb.gz");
    let kill_profile = root.join("kill.pb.gz");
    let now_profile = root.join("now.pb.gz");
    for (args, out) in [
        (
            vec![pod.display(), "--base".into(), kill.clone()],
            &with_base,
        ),
        (vec!["--evidence".into(), kill.clone()], &kill_profile),
        (vec![pod.display()], &now_profile),
    ] {
        let mut all: Vec<&str> = vec!["pprof"];
        all.extend(args.iter().map(String::as_str));
        all.extend(["--out", out.to_str().expect("utf8")]);
        let (code, _, stderr) = agent.ctl(&all);
        assert_eq!(code, Some(0), "{stderr}");
    }
    let flat = pprof_flat_bytes(&[with_base.to_str().expect("utf8")], &root);
    // Only samples through leak_until_oom: their flat bytes (all in malloc) add up to its change.
    let focused = |extra: &[&str]| -> i64 {
        let mut args = vec!["-focus=^leak_until_oom$"];
        args.extend(extra);
        pprof_flat_bytes(&args, &root).iter().map(|(_, b)| *b).sum()
    };
    assert_eq!(
        focused(&[with_base.to_str().expect("utf8")]),
        shrank,
        "pprof --base: {flat:?}"
    );
    assert_eq!(
        focused(&[
            &format!("-diff_base={}", kill_profile.display()),
            now_profile.to_str().expect("utf8"),
        ]),
        shrank,
        "go tool pprof -diff_base of the two exports"
    );

    // Two records: a second leaker OOM-killed beside the two sleepers, and the first kill.
    let mut second = Workload::start(&workload("oom_leaker"), &["leak", "15"]);
    pod.place(second.pid, "app");
    agent.wait_traced(&[second.pid]);
    second.send("go");
    let second_last = second.last_allocated_before_death();
    assert_eq!(second.wait_killed(), Some(libc::SIGKILL));
    let events = agent.wait_json(
        &["oom-events", &pod.display()],
        "recorded the second OOM kill",
        |v| v.as_array().is_some_and(|a| a.len() == 2),
    );
    assert_eq!(events[0]["victim_pid"], u64::from(second.pid), "{events:#}");
    let second_kill = events[0]["evidence_id"].as_u64().expect("id").to_string();
    let records = agent.ctl_json(&["diff", &kill, &second_kill]);
    let row = diff_row(&records, "leak_until_oom").expect("leak_until_oom in both");
    assert_eq!(
        (&row["bytes_a"], &row["bytes_b"]),
        (
            &Value::from(last * MIB),
            &Value::from((1 + second_last) * MIB)
        ),
        "the second kill's container held its victim's last bytes and the sleeper's: {records:#}"
    );
    let nibbled = diff_row(&records, "nibble_memory").expect("nibble_memory in B");
    assert_eq!(nibbled["bytes_change"], MIB, "{records:#}");
    drop(nibbler);
    drop(again);
    agent.stop_keeping_state();
    let _ = std::fs::remove_dir_all(&root);
}
