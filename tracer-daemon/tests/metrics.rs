//! Prometheus metrics, scraped over HTTP from the real agent and parsed by the Prometheus
//! client library's OpenMetrics parser (not ours): per-container leak figures equal the API's
//! (exact bytes of a known leak), and a map filled on purpose shows its losses and fill ratio
//! in both the API and the metrics.

mod support;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::Value;
use support::{agent::*, node::*, *};

/// Scrapes and parses with prometheus_client (installed in target/pyenv by `cargo xtask setup`).
fn scrape(port: u16) -> Value {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/pyenv/bin/python");
    let python = std::env::var_os("TRACER_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or(venv);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/scrape_metrics.py");
    let output = Command::new(&python)
        .arg(&script)
        .arg(format!("http://127.0.0.1:{port}/metrics"))
        .output()
        .expect("run the scrape script (cargo xtask setup installs prometheus_client)");
    assert!(
        output.status.success(),
        "the Prometheus parser refused the exposition: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("scrape JSON")
}

/// The value of the one sample named `name` whose labels include `labels`.
fn sample(scraped: &Value, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let matching: Vec<f64> = scraped["samples"]
        .as_array()
        .expect("samples")
        .iter()
        .filter(|s| s["name"] == name)
        .filter(|s| labels.iter().all(|(k, v)| s["labels"][*k] == *v))
        .filter_map(|s| s["value"].as_f64())
        .collect();
    assert!(
        matching.len() <= 1,
        "{name} {labels:?} matches {matching:?}"
    );
    matching.first().copied()
}

#[test]
fn container_leak_figures_in_metrics_equal_the_reports_exact_bytes() {
    require_root();
    let root = temp_root("metrics");
    let namespace = format!("metrics-{}", std::process::id());
    let pod = FakePod::create(
        &namespace,
        "api-0",
        Driver::Systemd,
        "burstable",
        &["app"],
        &root.join("pods"),
        &root.join("containers"),
    );
    let mut leaker = Workload::start(&workload("one_leak_site"), &[]);
    pod.place(leaker.pid, "app");
    let port = free_port();
    let agent = Agent::start(
        &root,
        &[
            "--namespace",
            &namespace,
            "--metrics",
            &format!("127.0.0.1:{port}"),
        ],
    );
    agent.wait_traced(&[leaker.pid]);
    let _ = leaker.run_to_done();

    let report = agent.ctl_json(&["top", &pod.display(), "--top", "20"]);
    assert_eq!(
        report_totals(&report, "leak_here"),
        (409_600, 100),
        "{report:#}"
    );
    let api_bytes = report["containers"][0]["outstanding_bytes"]
        .as_u64()
        .expect("outstanding_bytes");
    let api_count = report["containers"][0]["outstanding_count"]
        .as_u64()
        .expect("outstanding_count");
    assert!(api_bytes >= 409_600, "{report:#}");

    let scraped = scrape(port);
    assert!(
        scraped["content_type"]
            .as_str()
            .is_some_and(|t| t.starts_with("application/openmetrics-text")),
        "{scraped}"
    );
    let labels = [
        ("namespace", namespace.as_str()),
        ("pod", "api-0"),
        ("container", "app"),
    ];
    assert_eq!(
        sample(&scraped, "tracer_container_outstanding_bytes", &labels),
        Some(api_bytes as f64),
        "{scraped}"
    );
    assert_eq!(
        sample(
            &scraped,
            "tracer_container_outstanding_allocations",
            &labels
        ),
        Some(api_count as f64),
        "{scraped}"
    );
    assert_eq!(sample(&scraped, "tracer_processes_traced", &[]), Some(1.0));
    assert_eq!(
        sample(&scraped, "tracer_processes_attached", &[]),
        Some(1.0)
    );
    assert_eq!(sample(&scraped, "tracer_oom_hook_attached", &[]), Some(1.0));
    let allocations = sample(
        &scraped,
        "tracer_bpf_events_total",
        &[("event", "allocation")],
    )
    .expect("allocation events");
    assert!(allocations >= 100.0 + 1000.0 + 100.0, "{scraped}");
    assert!(
        sample(&scraped, "tracer_resident_memory_bytes", &[]).is_some_and(|rss| rss > 1e6),
        "{scraped}"
    );
    assert_eq!(
        sample(&scraped, "tracer_map_capacity", &[("map", "allocations")]),
        Some(f64::from(tracer_daemon::bpf::DEFAULT_ALLOCATIONS))
    );
    assert!(
        sample(&scraped, "tracer_symbol_cache_misses_total", &[]).is_some_and(|m| m >= 1.0),
        "the report symbolized stacks: {scraped}"
    );
    // The alert rules' top call site: the exact report's, labelled with this node.
    let node = std::env::var("TRACER_NODE_NAME").unwrap_or_else(|_| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .expect("host name")
            .trim()
            .to_owned()
    });
    let site = [
        ("namespace", namespace.as_str()),
        ("pod", "api-0"),
        ("container", "app"),
        ("node", node.as_str()),
        ("function", "leak_here"),
        ("source", "exact"),
    ];
    assert_eq!(
        sample(&scraped, "tracer_container_top_site_info", &site),
        Some(1.0),
        "{scraped}"
    );
    // Bounded cardinality: one container traced, one set of series.
    let series = scraped["samples"]
        .as_array()
        .expect("samples")
        .iter()
        .filter(|s| s["name"] == "tracer_container_outstanding_bytes")
        .count();
    assert_eq!(series, 1, "{scraped}");
}

#[test]
fn per_container_series_are_capped_and_the_rest_counted() {
    require_root();
    let root = temp_root("metrics-cap");
    let namespace = format!("metrics-cap-{}", std::process::id());
    let (logs, container_logs) = (root.join("pods"), root.join("containers"));
    let pods: Vec<FakePod> = (0..3)
        .map(|i| {
            FakePod::create(
                &namespace,
                &format!("worker-{i}"),
                Driver::Cgroupfs,
                "besteffort",
                &["main"],
                &logs,
                &container_logs,
            )
        })
        .collect();
    let mut workloads: Vec<Workload> = pods
        .iter()
        .map(|pod| {
            let workload = Workload::start(&workload("one_leak_site"), &[]);
            pod.place(workload.pid, "main");
            workload
        })
        .collect();
    let port = free_port();
    let agent = Agent::start(
        &root,
        &[
            "--namespace",
            &namespace,
            "--metrics",
            &format!("127.0.0.1:{port}"),
            "--metrics-max-containers",
            "2",
        ],
    );
    let pids: Vec<u32> = workloads.iter().map(|w| w.pid).collect();
    agent.wait_traced(&pids);
    for workload in &mut workloads {
        let _ = workload.run_to_done();
    }
    let scraped = scrape(port);
    let series = scraped["samples"]
        .as_array()
        .expect("samples")
        .iter()
        .filter(|s| s["name"] == "tracer_container_outstanding_bytes")
        .count();
    assert_eq!(series, 2, "{scraped}");
    let sites = scraped["samples"]
        .as_array()
        .expect("samples")
        .iter()
        .filter(|s| s["name"] == "tracer_container_top_site_info")
        .count();
    assert_eq!(sites, 2, "one top site per exported container: {scraped}");
    assert_eq!(
        sample(&scraped, "tracer_containers_not_shown", &[]),
        Some(1.0)
    );
}

#[test]
fn a_full_allocation_map_shows_its_losses_in_the_api_and_the_metrics() {
    require_root();
    let root = temp_root("metrics-full");
    let namespace = format!("metrics-full-{}", std::process::id());
    let pod = FakePod::create(
        &namespace,
        "small-0",
        Driver::Systemd,
        "burstable",
        &["app"],
        &root.join("pods"),
        &root.join("containers"),
    );
    let mut leaker = Workload::start(&workload("one_leak_site"), &[]);
    pod.place(leaker.pid, "app");
    let port = free_port();
    let capacity = 64;
    let agent = Agent::start(
        &root,
        &[
            "--namespace",
            &namespace,
            "--metrics",
            &format!("127.0.0.1:{port}"),
            "--max-allocations",
            &capacity.to_string(),
        ],
    );
    agent.wait_traced(&[leaker.pid]);
    let _ = leaker.run_to_done();

    let report = agent.wait_json(
        &["top", &pod.display(), "--top", "20"],
        "a full allocation map",
        |r| {
            r["stats"]["allocs_map_full"]
                .as_u64()
                .is_some_and(|n| n > 0)
        },
    );
    let lost = report["stats"]["allocs_map_full"]
        .as_u64()
        .expect("allocs_map_full");
    // What was recorded is still right: every recorded leak_here allocation is 4096 bytes.
    let (bytes, count) = report_totals(&report, "leak_here");
    assert!(count > 0 && count < 100, "{report:#}");
    assert_eq!(bytes, count * 4096, "{report:#}");

    // The background scan counts the map's entries; wait for a round after the leak.
    let deadline = std::time::Instant::now() + TIMEOUT;
    let scraped = loop {
        let scraped = scrape(port);
        if sample(&scraped, "tracer_map_entries", &[("map", "allocations")])
            == Some(f64::from(capacity))
        {
            break scraped;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "map never full in metrics: {scraped}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert_eq!(
        sample(&scraped, "tracer_map_fill_ratio", &[("map", "allocations")]),
        Some(1.0)
    );
    let metric_lost = sample(
        &scraped,
        "tracer_lost_total",
        &[("reason", "allocations_map_full")],
    )
    .expect("lost counter");
    assert!(
        metric_lost >= lost as f64,
        "metrics {metric_lost} vs API {lost} (the counter only grows)"
    );
    // Incomplete is impossible to miss: in the JSON (a top-level flag with the reason), the
    // text tracerctl prints first, and the agent's log.
    assert_eq!(report["incomplete"], true, "{report:#}");
    let reason = report["incomplete_reason"].as_str().expect("reason");
    assert!(
        reason.contains("the allocation map was full") && reason.contains("--max-allocations"),
        "{reason}"
    );
    let (code, text, stderr) = agent.ctl(&["top", &pod.display()]);
    assert_eq!(code, Some(0), "{stderr}");
    let second_line = text.lines().nth(1).unwrap_or_default();
    assert!(
        second_line.contains("WARNING: INCOMPLETE REPORT")
            && second_line.contains("max-allocations"),
        "{text}"
    );
    let deadline = std::time::Instant::now() + TIMEOUT;
    while !agent.stderr().contains("reports are incomplete") {
        assert!(
            std::time::Instant::now() < deadline,
            "never logged:\n{}",
            agent.stderr()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

#[test]
fn json_logs_are_one_object_per_line_with_level_and_message() {
    require_root();
    let root = temp_root("json-logs");
    let agent = Agent::start(&root, &["--log-format", "json"]);
    let (code, _, stderr) = agent.ctl(&["pods"]);
    assert_eq!(code, Some(0), "{stderr}");
    let logs = agent.stderr();
    let lines: Vec<&str> = logs.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() >= 2, "{logs}");
    for line in &lines {
        let value: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        assert!(value["level"].is_string(), "{line}");
        assert!(value["timestamp"].is_string(), "{line}");
        assert!(value["fields"]["message"].is_string(), "{line}");
    }
    assert!(lines.iter().any(|l| l.contains("serving gRPC")), "{logs}");
}
