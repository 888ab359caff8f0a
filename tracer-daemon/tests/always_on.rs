//! Evidence for a pod nobody selected, for real: the agent runs with no selection, a pod in a
//! memory-limited cgroup leaks beside allocator churn, and the agent on its own names where its
//! resident memory grows (the page-fault growth profile, no uprobes), escalates to exact
//! tracing (which then counts what leaks with exact bytes), and keeps both with the reason at
//! the kernel's OOM kill, across an agent restart. A cache that fills and levels off and a busy
//! pod whose memory is flat are never escalated.

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::{agent::*, faults::memory_limited_pod, node::*, *};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const LIMIT: u64 = 64 * MIB;
const LEAK_BYTES: u64 = 256 * KIB;

/// The one container of `pod` in `tracerctl pods` JSON.
fn container<'a>(pods: &'a Value, pod: &FakePod) -> Option<&'a Value> {
    let name = pod.display();
    pods["pods"].as_array()?.iter().find(|p| {
        format!(
            "{}/{}",
            p["namespace"].as_str().unwrap_or(""),
            p["name"].as_str().unwrap_or("")
        ) == name
    })?["containers"]
        .as_array()?
        .first()
}

/// Bytes (since watched) of the growth profile's stacks that pass through `function`.
fn growth_bytes(stacks: &Value, function: &str) -> u64 {
    stacks
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| {
            s["frames"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|f| f["function"] == function)
        })
        .map(|s| s["bytes"].as_u64().unwrap_or(0))
        .sum()
}

/// The metrics endpoint's text (the metrics test parses it with Prometheus's own parser).
fn scrape(address: &str) -> String {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(address).expect("connect to /metrics");
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text).expect("response");
    text
}

/// What the workload has leaked so far.
fn leaked(workload: &mut Workload) -> u64 {
    workload.send("count");
    workload.wait_for("leaked").parse().expect("leaked N")
}

#[test]
fn a_pod_nobody_selected_is_profiled_escalated_and_its_oom_kill_keeps_both() {
    require_root();
    let root = temp_root("always-on");
    let state = root.join("state");
    let namespace = format!("always-on-{}", std::process::id());
    let pod = memory_limited_pod(&root, &namespace, "api-0", "app", LIMIT);
    let mut leaker = Workload::start(&workload("pod_leak"), &["leak", "50"]);
    pod.place(leaker.pid, "app");
    // No --namespace, no --pod: nothing is selected.
    let metrics_port = free_port().to_string();
    let metrics = format!("127.0.0.1:{metrics_port}");
    let args = [
        "--state-dir",
        state.to_str().expect("utf-8"),
        "--memory-watch-interval",
        "50ms",
        "--metrics",
        &metrics,
    ];
    let agent = Agent::start(&root, &args);
    let pods = agent.wait_json(&["pods"], "watched the pod", |v| {
        container(v, &pod).is_some_and(|c| c["tracing"] == "watched")
    });
    let processes = &container(&pods, &pod).expect("listed")["processes"];
    assert_eq!(processes[0]["traced"], false, "nothing selected: {pods:#}");
    agent.wait_profiled(leaker.pid);

    leaker.send("go");
    let _ = leaker.wait_for("started");
    let before_escalation = leaked(&mut leaker);

    // The agent escalates by itself once the trend says growing (4 s windows in tests).
    let pods = agent.wait_json(&["pods"], "escalated the leaking pod", |v| {
        container(v, &pod).is_some_and(|c| c["tracing"] == "auto")
    });
    let app = container(&pods, &pod).expect("listed");
    assert_eq!(app["trend"]["class"], "growing", "{app:#}");
    let reason = app["tracing_reason"].as_str().unwrap_or("");
    assert!(
        reason.starts_with("growing at") && reason.contains("to the limit"),
        "{app:#}"
    );
    agent.wait_traced(&[leaker.pid]);
    let traced_at = leaked(&mut leaker);
    let exposition = scrape(&metrics);
    assert!(
        exposition
            .lines()
            .any(|l| l.starts_with("tracer_container_trend{")
                && l.contains(r#"class="growing""#)
                && l.contains(r#"tracing="auto""#)
                && l.contains(r#"pod="api-0""#)),
        "{exposition}"
    );
    // (Other tests' pods on this node, unnamed here, may be escalated too.)
    let escalated: u64 = exposition
        .lines()
        .find_map(|l| l.strip_prefix("tracer_containers_escalated "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(escalated >= 1, "{exposition}");

    // The growth profile names the leaking function, within 20% of what it leaked.
    let low = leaked(&mut leaker);
    let growth = agent.ctl_json(&["growth", &pod.display(), "--since-watched"]);
    let high = leaked(&mut leaker);
    let profile = &growth["containers"][0]["profile"];
    let grown = growth_bytes(&profile["stacks"], "leak_records");
    assert!(
        grown * 10 >= low * 8 && grown * 10 <= high * 12,
        "leak_records first touched {grown} B; it leaked {low}..{high} B: {growth:#}"
    );
    let churn = growth_bytes(&profile["stacks"], "trim_and_retouch");
    assert!(
        churn * 4 < grown,
        "trimmed and retouched churn ({churn} B) must not rank with the leak ({grown} B)"
    );
    assert!(
        profile["retouched_bytes"].as_u64().unwrap_or(0) > 0,
        "the churn's retouches are counted apart: {growth:#}"
    );

    // Exact tracing counts what leaked since it attached, to the byte.
    std::thread::sleep(Duration::from_millis(500));
    let from = leaked(&mut leaker);
    let report = agent.ctl_json(&["top", &pod.display(), "--top", "20"]);
    let to = leaked(&mut leaker);
    let (bytes, count) = report_totals(&report, "leak_records");
    assert_eq!(bytes, count * LEAK_BYTES, "whole leaks only: {report:#}");
    assert!(
        bytes >= from - traced_at && bytes <= to - before_escalation,
        "exact bytes {bytes} must cover every leak after the attach ({} B) and none before \
         escalation ({} B at most): {report:#}",
        from - traced_at,
        to - before_escalation
    );

    // The kernel kills it at the limit; the evidence holds both kinds and the reason.
    let last = leaked(&mut leaker);
    assert_eq!(leaker.wait_killed(), Some(libc::SIGKILL), "not OOM-killed");
    let events = agent.wait_json(
        &["oom-events", &pod.display()],
        "recorded the OOM kill",
        |v| v.as_array().is_some_and(|a| !a.is_empty()),
    );
    let event = &events[0];
    assert_eq!(event["source"], "kernel hook", "{event:#}");
    for site in ["top_call_site", "top_growth_site"] {
        assert!(
            event[site]
                .as_str()
                .unwrap_or("")
                .starts_with("leak_records"),
            "{site}: {event:#}"
        );
    }
    assert!(
        event["escalation_reason"]
            .as_str()
            .unwrap_or("")
            .starts_with("growing at"),
        "{event:#}"
    );
    let id = event["evidence_id"]
        .as_u64()
        .expect("evidence id")
        .to_string();
    let check = |evidence: &Value| {
        let exact = evidence["report"]["stacks"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|s| s["frames"][0]["function"] == "leak_records")
            .map(|s| s["bytes"].as_u64().unwrap_or(0))
            .sum::<u64>();
        assert!(
            exact > 0 && exact.is_multiple_of(LEAK_BYTES),
            "exact bytes at the kill: {evidence:#}"
        );
        let grown = growth_bytes(&evidence["growth_profile"]["stacks"], "leak_records");
        assert!(
            grown * 10 >= last * 8 && grown <= LIMIT,
            "first-touch bytes at the kill {grown}, leaked at least {last}: {evidence:#}"
        );
        assert!(
            evidence["escalation"]
                .as_str()
                .unwrap_or("")
                .starts_with("growing at"),
            "{evidence:#}"
        );
    };
    check(&agent.ctl_json(&["evidence", &id]));

    // It survives the agent's restart.
    agent.kill_9();
    let agent = Agent::start(&root, &args);
    check(&agent.ctl_json(&["evidence", &id]));
    let (code, table, _) = agent.ctl(&["evidence", &id]);
    assert_eq!(code, Some(0));
    assert!(
        table.contains("traced by the escalation policy: growing at")
            && table.contains("resident growth by first touch"),
        "{table}"
    );
}

#[test]
fn a_cache_that_levels_off_and_a_busy_flat_pod_are_never_escalated() {
    require_root();
    let root = temp_root("always-on-quiet");
    let namespace = format!("always-on-quiet-{}", std::process::id());
    let cache_pod = memory_limited_pod(&root, &namespace, "cache-0", "app", LIMIT);
    let busy_pod = memory_limited_pod(&root, &namespace, "busy-0", "app", LIMIT);
    let mut cache = Workload::start(&workload("pod_leak"), &["cache", "24"]);
    cache_pod.place(cache.pid, "app");
    let mut busy = Workload::start(&workload("pod_leak"), &["churn"]);
    busy_pod.place(busy.pid, "app");
    let agent = Agent::start(&root, &[]);
    agent.wait_profiled(cache.pid);
    agent.wait_profiled(busy.pid);
    cache.send("go");
    busy.send("go");
    let _ = cache.wait_for("started");
    let _ = busy.wait_for("started");

    // Three growth windows (4 s each in tests).
    let until = Instant::now() + Duration::from_secs(12);
    let mut last = Value::Null;
    while Instant::now() < until {
        last = agent.ctl_json(&["pods"]);
        for pod in [&cache_pod, &busy_pod] {
            let c = container(&last, pod).expect("listed");
            assert_eq!(c["tracing"], "watched", "{}: {c:#}", pod.display());
            assert_eq!(c["processes"][0]["traced"], false, "{c:#}");
        }
        // The kernel's word too: no uprobe link anywhere on the machine names them.
        for pid in [cache.pid, busy.pid] {
            let links = support::links::uprobe_links_on(pid);
            assert!(links.is_empty(), "pid {pid} has uprobes: {links:#?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let cache_trend = &container(&last, &cache_pod).expect("listed")["trend"];
    assert!(
        matches!(
            cache_trend["class"].as_str(),
            Some("levelling_off" | "stable")
        ),
        "the filled cache: {cache_trend:#}"
    );
    // (Other tests' pods on this node may escalate: only these two matter here.)
    for pod in [&cache_pod, &busy_pod] {
        let id = container(&last, pod).expect("listed")["id"]
            .as_str()
            .expect("id")
            .to_owned();
        assert!(
            !agent
                .stderr()
                .lines()
                .any(|l| l.contains("escalating") && l.contains(&id)),
            "{}",
            agent.stderr()
        );
    }
    // The link check sees uprobes when there are some: traced by hand, the busy pod has them.
    let _ = agent.ctl_json(&["trace", "start", "--pid", &busy.pid.to_string()]);
    agent.wait_traced(&[busy.pid]);
    let links = support::links::uprobe_links_on(busy.pid);
    assert!(
        links.iter().any(|l| l.contains("libc.so")),
        "traced by hand, the busy pod's process has uprobes on its libc: {links:#?}"
    );
    let _ = agent.ctl_json(&["trace", "stop", "--pid", &busy.pid.to_string()]);
    // The cache's growth profile still says where its memory went.
    let growth = agent.ctl_json(&["growth", &cache_pod.display(), "--since-watched"]);
    let filled = growth_bytes(&growth["containers"][0]["profile"]["stacks"], "fill_cache");
    assert!(
        filled * 10 >= 24 * MIB * 8 && filled <= 24 * MIB * 12 / 10,
        "fill_cache first touched {filled} B of 24 MiB: {growth:#}"
    );
    cache.finish();
    busy.finish();
}

/// The Go workload (built here with Debian's golang-go).
fn go_map_leak() -> std::path::PathBuf {
    go_program("go_map_leak", include_str!("workloads/go_map_leak/main.go"))
}

#[test]
fn a_go_program_leaking_into_a_map_is_named_by_its_growth_profile() {
    require_root();
    let root = temp_root("always-on-go");
    let namespace = format!("always-on-go-{}", std::process::id());
    let pod = memory_limited_pod(&root, &namespace, "go-0", "app", LIMIT);
    // A growing pod would be escalated: this test is about the growth profile alone.
    let config = root.join("tracer.toml");
    std::fs::write(&config, "[escalation]\nenabled = false\n").expect("config");
    let mut leaker = Workload::start(&go_map_leak(), &[]);
    pod.place(leaker.pid, "app");
    let agent = Agent::start(&root, &["--config", config.to_str().expect("utf-8")]);
    agent.wait_profiled(leaker.pid);
    leaker.send("go");
    let _ = leaker.wait_for("started");
    // About 8 MiB leaked, well below the limit.
    std::thread::sleep(Duration::from_millis(1600));
    let low = leaked(&mut leaker);
    let growth = agent.ctl_json(&["growth", &pod.display(), "--since-watched"]);
    let high = leaked(&mut leaker);
    let grown = growth_bytes(
        &growth["containers"][0]["profile"]["stacks"],
        "main.leakIntoMap",
    );
    assert!(
        grown * 10 >= low * 8 && grown * 10 <= high * 12,
        "main.leakIntoMap first touched {grown} B; it leaked {low}..{high} B: {growth:#}"
    );
    let pods = agent.ctl_json(&["pods"]);
    assert_eq!(
        container(&pods, &pod).expect("listed")["tracing"],
        "watched",
        "escalation is off: {pods:#}"
    );
    leaker.finish();
}

/// Starts an agent with `config` over a limited pod running `pod_leak hot`, and waits until
/// the agent escalates it and traces it.
/// Returns the agent's metrics address too.
fn hot_leaker_escalated(name: &str, config: &str) -> (Agent, FakePod, Workload, String) {
    let root = temp_root(name);
    let namespace = format!("{name}-{}", std::process::id());
    let pod = memory_limited_pod(&root, &namespace, "hot-0", "app", LIMIT);
    let mut leaker = Workload::start(&workload("pod_leak"), &["hot", "100"]);
    pod.place(leaker.pid, "app");
    let config_file = root.join("tracer.toml");
    std::fs::write(&config_file, config).expect("config");
    let metrics = format!("127.0.0.1:{}", free_port());
    let agent = Agent::start(
        &root,
        &[
            "--config",
            config_file.to_str().expect("utf-8"),
            "--metrics",
            &metrics,
        ],
    );
    agent.wait_profiled(leaker.pid);
    leaker.send("go");
    let _ = leaker.wait_for("started");
    let _ = agent.wait_json(&["pods"], "escalated the hot leaker", |v| {
        container(v, &pod).is_some_and(|c| c["tracing"] == "auto")
    });
    agent.wait_traced(&[leaker.pid]);
    (agent, pod, leaker, metrics)
}

#[test]
fn a_hot_leaking_process_is_escalated_then_sampled_then_stopped_by_the_budget_with_its_records_kept()
 {
    require_root();
    let (agent, pod, leaker, metrics) =
        hot_leaker_escalated("budget", "[budget]\nmax_core_percent = 5\n");
    let pods = agent.wait_json(&["pods"], "stopped tracing it for the budget", |v| {
        container(v, &pod).is_some_and(|c| c["tracing"] == "over_budget")
    });
    let app = container(&pods, &pod).expect("listed");
    let process = &app["processes"][0];
    assert_eq!(process["traced"], false, "{app:#}");
    // Stopped only once sampling was not enough: the cost that stopped it was measured sampled.
    let reason = process["not_traced_reason"].as_str().unwrap_or("");
    assert!(
        reason.starts_with("over the tracing budget: ")
            && reason.contains("% of a core")
            && reason.contains("sampled every 524288 bytes")
            && reason.contains("against 5.0%"),
        "{app:#}"
    );
    assert!(
        app["tracing_reason"]
            .as_str()
            .unwrap_or("")
            .contains("over the tracing budget"),
        "{app:#}"
    );
    // First the switch to sampling, with its exact records up to then as evidence; then the
    // stop, with what it held by then (exact and estimated) as evidence.
    let listed = agent.ctl_json(&["evidence", "--pod", &pod.display()]);
    let record_of = |kind: &str| {
        let record = listed
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind} evidence: {listed:#}"));
        let id = record["id"].as_u64().expect("id");
        (id, agent.ctl_json(&["evidence", &id.to_string()]))
    };
    let (sampled_id, sampled) = record_of("budget_sampled");
    let (stopped_id, stopped) = record_of("over_budget");
    assert!(sampled_id < stopped_id, "sampled first: {listed:#}");
    let leaked = |evidence: &serde_json::Value| -> u64 {
        evidence["report"]["stacks"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|s| s["frames"][0]["function"] == "leak_records")
            .map(|s| s["bytes"].as_u64().unwrap_or(0))
            .sum()
    };
    let exact = leaked(&sampled);
    assert!(
        exact > 0 && exact.is_multiple_of(LEAK_BYTES),
        "the leak's exact bytes until it was sampled: {sampled:#}"
    );
    assert!(
        leaked(&stopped) >= exact,
        "its exact records stay through sampling: {exact} B, then {stopped:#}"
    );
    // The price per probe hit was measured on this node at startup.
    let log = agent.stderr();
    assert!(log.contains("measured the cost of a probe hit"), "{log}");
    let switched = log
        .find("tracing switches to sampling")
        .unwrap_or_else(|| panic!("{log}"));
    let stops = log
        .find("tracing stops; its records are saved as evidence")
        .unwrap_or_else(|| panic!("{log}"));
    assert!(switched < stops, "{log}");
    // Counted (at least this one: other tests' agents on this node watch every pod too).
    let exposition = scrape(&metrics);
    for counter in [
        "tracer_processes_budget_sampled_total",
        "tracer_processes_over_budget_total",
    ] {
        let count: u64 = exposition
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{counter} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{counter}: {exposition}"));
        assert!(count >= 1, "{counter}: {exposition}");
    }
    leaker.finish();
}

#[test]
fn with_the_budget_off_a_hot_leaking_process_stays_traced_and_its_cost_is_shown() {
    require_root();
    let (agent, pod, leaker, metrics) =
        hot_leaker_escalated("budget-off", "[budget]\nenabled = false\n");
    let pods = agent.wait_json(&["pods"], "measured what tracing costs it", |v| {
        container(v, &pod).is_some_and(|c| {
            c["processes"][0]["tracing_core_share"]
                .as_f64()
                .is_some_and(|share| share > 0.05)
        })
    });
    // Well past the two reviews a budget takes (sample interval 200 ms in tests).
    std::thread::sleep(Duration::from_secs(2));
    let pods_later = agent.ctl_json(&["pods"]);
    for v in [&pods, &pods_later] {
        let app = container(v, &pod).expect("listed");
        assert_eq!(app["tracing"], "auto", "{app:#}");
        assert_eq!(app["processes"][0]["traced"], true, "{app:#}");
        assert!(
            app["processes"][0]["sample_bytes"].is_null(),
            "exact: {app:#}"
        );
    }
    assert!(
        !agent
            .stderr()
            .lines()
            .any(|l| l.contains("tracing switches to sampling")
                && l.contains(&format!("pid={}", leaker.pid))),
        "{}",
        agent.stderr()
    );
    // The programs' own run time was measured while it ran (kernel BPF statistics), and the
    // price of a hit is in the metrics.
    let deadline = Instant::now() + TIMEOUT;
    let measured = loop {
        let log = agent.stderr();
        if let Some(line) = log
            .lines()
            .find(|l| l.contains("measured the tracing programs' run time"))
        {
            break line.to_owned();
        }
        assert!(Instant::now() < deadline, "never measured:\n{log}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let field = |name: &str| -> f64 {
        measured
            .split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} in {measured}"))
    };
    assert!(
        field("entry_runs") > 0.0 && field("free_runs") > 0.0 && field("entry_program_ns") > 0.0,
        "{measured}"
    );
    let exposition = scrape(&metrics);
    assert!(
        exposition
            .lines()
            .any(|l| l.starts_with(r#"tracer_probe_hit_cost_seconds{kind="free"}"#)),
        "{exposition}"
    );
    leaker.finish();
}
