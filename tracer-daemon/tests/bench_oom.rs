//! Benchmark (not a timed test; `cargo xtask bench` runs it and writes BENCHMARKS.md): how long
//! from the kernel choosing an OOM victim to the evidence being durable on disk. Each round a
//! traced leaking process in a fresh 64 MiB pod cgroup is really OOM-killed; the agent logs the
//! latency it measured (kernel timestamp of mark_victim to after the fsync'd commit).

mod support;

use support::{agent::*, node::*, *};

#[test]
#[ignore = "a benchmark: run by `cargo xtask bench`"]
fn oom_kill_to_durable_evidence() {
    require_root();
    let rounds: usize = std::env::var("TRACER_BENCH_OOM_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(10);
    let root = temp_root("bench-oom");
    let namespace = format!("bench-{}", std::process::id());
    let agent = Agent::start(
        &root,
        &[
            "--namespace",
            &namespace,
            "--memory-watch-interval",
            "500ms",
        ],
    );
    let mut latencies = Vec::new();
    for round in 0..rounds {
        let pod = FakePod::create(
            &namespace,
            &format!("leak-{round}"),
            Driver::Systemd,
            "burstable",
            &["app"],
            &root.join("pods"),
            &root.join("containers"),
        );
        pod.limit_memory("app", 64u64 << 20);
        let mut leaker = Workload::start(&workload("oom_leaker"), &["leak", "2"]);
        pod.place(leaker.pid, "app");
        agent.wait_traced(&[leaker.pid]);
        let before = agent.stderr().matches("durable_after_ms=").count();
        leaker.send("go");
        let _ = leaker.last_allocated_before_death();
        let _ = leaker.wait_killed();
        let _ = agent.wait_json(&["oom-events", &pod.display()], "recorded the kill", |v| {
            v.as_array().is_some_and(|a| !a.is_empty())
        });
        let log = agent.stderr();
        let value = log
            .split("durable_after_ms=")
            .nth(before + 1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
            .expect("a durable_after_ms log line");
        latencies.push(value);
    }
    let values: Vec<String> = latencies.iter().map(|v| format!("{v:.3}")).collect();
    println!("BENCH oom_durable_ms {}", values.join(" "));
}
