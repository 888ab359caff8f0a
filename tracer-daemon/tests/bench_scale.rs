//! Benchmark (not a timed test; `cargo xtask bench --suite scale` runs it): the agent with a
//! million outstanding allocations across 131072 distinct stacks in one traced pod. Prints the
//! agent's resident memory and CPU, and GetLeakReport latency percentiles over the real socket.

mod support;

use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use support::{agent::*, node::*, *};
use tonic::transport::{Endpoint, Uri};
use tracer_proto::v1::{self as pb, leak_tracer_client::LeakTracerClient};

fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    fields
        .get(11)
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        + fields
            .get(12)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
}

/// GetLeakReport queries measured after the first.
const QUERIES: usize = 200;

#[test]
#[ignore = "a benchmark: run by `cargo xtask bench`"]
fn report_latency_and_agent_memory_at_a_million_allocations() {
    require_root();
    let root = temp_root("bench-scale");
    let namespace = format!("scale-{}", std::process::id());
    let pod = FakePod::create(
        &namespace,
        "stacks-0",
        Driver::Systemd,
        "burstable",
        &["app"],
        &root.join("pods"),
        &root.join("containers"),
    );
    let mut workload = Workload::start(&workload("many_stacks"), &[]);
    pod.place(workload.pid, "app");
    let agent = Agent::start(
        &root,
        &[
            "--namespace",
            &namespace,
            "--max-allocations",
            "1100000",
            "--max-stacks",
            "110000",
            "--sample-interval",
            "2s",
        ],
    );
    agent.wait_traced(&[workload.pid]);
    let _ = workload.run_to_done();
    // Let the agent sample (ages scan, growth windows) a few times.
    std::thread::sleep(Duration::from_secs(6));
    let ticks_before = cpu_ticks(agent.pid());
    let idle_started = Instant::now();
    std::thread::sleep(Duration::from_secs(10));
    let idle_cpu = (cpu_ticks(agent.pid()) - ticks_before) as f64
        / 100.0
        / idle_started.elapsed().as_secs_f64();

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let socket = agent.socket.clone();
    let mut latencies: Vec<f64> = runtime.block_on(async move {
        let channel = Endpoint::from_static("http://localhost")
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let socket = socket.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(
                        tokio::net::UnixStream::connect(socket).await?,
                    ))
                }
            }))
            .await
            .expect("connect");
        let mut client = LeakTracerClient::new(channel).max_decoding_message_size(64 << 20);
        let mut latencies = Vec::new();
        for _ in 0..=QUERIES {
            let request = pb::GetLeakReportRequest {
                selector: Some(pb::Selector {
                    target: Some(pb::selector::Target::Pod(pb::PodName {
                        namespace: namespace.clone(),
                        name: "stacks-0".into(),
                    })),
                    container: String::new(),
                }),
                top: 20,
                min_age: None,
                sort_by: 0,
            };
            let start = Instant::now();
            let report = client.get_leak_report(request).await.expect("report");
            latencies.push(start.elapsed().as_secs_f64() * 1000.0);
            let count: u64 = report
                .get_ref()
                .containers
                .iter()
                .map(|c| c.outstanding_count)
                .sum();
            assert_eq!(count, 1_000_000, "all allocations are in the report");
        }
        latencies
    });
    // The first query pays for the connection and the first symbolization of the top stacks;
    // it is reported on its own.
    let first = latencies.remove(0);
    latencies.sort_by(f64::total_cmp);
    let p = |q: f64| latencies[((latencies.len() as f64 * q).ceil() as usize).saturating_sub(1)];
    let rss_mib = status_kib(agent.pid(), "VmRSS:") as f64 / 1024.0;
    let hwm_mib = status_kib(agent.pid(), "VmHWM:") as f64 / 1024.0;
    println!(
        "BENCH scale allocations=1000000 stacks=100000 rss_mib={rss_mib:.1} peak_rss_mib={hwm_mib:.1} idle_cpu_percent={:.1} queries={QUERIES} first_report_ms={first:.1} report_p50_ms={:.1} report_p99_ms={:.1}",
        idle_cpu * 100.0,
        p(0.5),
        p(0.99)
    );
    workload.finish();
}
