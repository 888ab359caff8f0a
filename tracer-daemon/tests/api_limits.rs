//! What a hostile or careless client can cost the agent: watch streams nobody reads hold at
//! most one report each under a node-wide budget, and thousands of idle connections to the
//! health and metrics ports are capped, timed out and counted, while the main API and the
//! agent's own work (discovering and attaching processes) go on. Real agent, real sockets.

#![expect(
    clippy::unwrap_used,
    reason = "tests panic with a message on the first surprise"
)]

mod support;

use std::{
    net::SocketAddr,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use support::{agent::*, faults::*, *};
use tracer_proto::v1::{self as pb, leak_tracer_client::LeakTracerClient};

const MIB: u64 = 1024;

fn figure(what: &str, value: impl std::fmt::Display) {
    eprintln!("[figure] API limits: {what} = {value}");
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn pid_selector(pid: u32) -> Option<pb::Selector> {
    Some(pb::Selector {
        target: Some(pb::selector::Target::Pid(pid)),
        container: String::new(),
    })
}

#[test]
fn watch_streams_nobody_reads_cost_a_bounded_amount_and_skips_are_counted() {
    const STREAMS: usize = 64;
    require_root();
    let root = temp_root("unread-watch");
    // 3,000 stacks, each 18 frames deep: a top-1000 report is about 2 MB encoded.
    let mut many = Workload::start(&workload("many_stacks"), &["3000"]);
    let agent = Agent::start(&root, &["--metrics", "127.0.0.1:0"]);
    let started = agent.ctl_json(&["trace", "start", "--pid", &many.pid.to_string()]);
    assert_eq!(started[0]["traced"], true, "{started:#}");
    let _ = many.run_to_done();
    let metrics = metrics_address(&agent);
    let daemon = agent.pid();
    // One report first: symbolizing loads each binary's symbols and debug info once (caches
    // the agent keeps whatever the streams do).
    let (code, _, stderr) = agent.ctl(&["top", "--pid", &many.pid.to_string(), "--top", "1000"]);
    assert_eq!(code, Some(0), "{stderr}");
    let rss_before = vm_rss_kib(daemon);
    let peak = PeakRss::start(daemon);
    let socket = agent.socket.clone();
    let pid = many.pid;
    let report_bytes = runtime().block_on(async move {
        let request = || pb::WatchLeakReportsRequest {
            report: Some(pb::GetLeakReportRequest {
                selector: pid_selector(pid),
                top: 1000,
                min_age: None,
                sort_by: 0,
            }),
            interval: Some(prost_types::Duration {
                seconds: 0,
                nanos: 100_000_000,
            }),
        };
        let mut held = Vec::new();
        for _ in 0..STREAMS {
            let mut client =
                LeakTracerClient::new(channel(&socket).await).max_decoding_message_size(64 << 20);
            let stream = client
                .watch_leak_reports(request())
                .await
                .expect("watch")
                .into_inner();
            // Never read: the client's HTTP/2 window fills and the agent must stop there.
            held.push((client, stream));
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
        let rss_with_streams = vm_rss_kib(daemon);
        let text = scrape(metrics);
        let skipped = metric(&text, "tracer_watch_reports_skipped_total");
        let queued = metric(&text, "tracer_watch_queued_bytes");
        figure("streams open, unread", STREAMS);
        figure("agent RSS before, KiB", rss_before);
        figure("agent RSS with the streams, KiB", rss_with_streams);
        figure("watch reports skipped", skipped);
        figure("watch queued bytes", queued);
        assert!(
            skipped > 0.0,
            "slow clients' reports are skipped and counted"
        );
        assert!(
            queued <= f64::from(64u32 << 20),
            "the queue budget holds: {queued}"
        );
        drop(held);
        // Once they have gone, a client that reads gets reports, and after a pause of ten
        // intervals a fresh one saying how many it missed.
        let mut client =
            LeakTracerClient::new(channel(&socket).await).max_decoding_message_size(64 << 20);
        let mut stream = client
            .watch_leak_reports(request())
            .await
            .expect("watch")
            .into_inner();
        let first = stream.message().await.unwrap().unwrap();
        let report_bytes = prost::Message::encoded_len(&first);
        figure("one top-1000 report, encoded bytes", report_bytes);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut latest = stream.message().await.unwrap().unwrap();
        for _ in 0..3 {
            if latest.reports_skipped > 0 {
                break;
            }
            latest = stream.message().await.unwrap().unwrap();
        }
        figure(
            "reports skipped during a 1 s pause at 100 ms",
            latest.reports_skipped,
        );
        assert!(latest.reports_skipped >= 1, "{}", latest.reports_skipped);
        report_bytes
    });
    let peak_kib = peak.stop();
    tokio_free_settle();
    let rss_after = vm_rss_kib(daemon);
    figure("agent peak RSS, KiB", peak_kib);
    figure("agent RSS after the streams closed, KiB", rss_after);
    // Unread streams hold what tonic keeps for them, charged against the 64 MiB budget; the
    // rest is reports being built (two at a time). Before these bounds, 64 unread streams took
    // the agent from 78 MB to about 2 GB.
    let bound_kib = 64 * MIB + 4 * (report_bytes as u64 / 1024) + 48 * MIB;
    assert!(
        peak_kib.saturating_sub(rss_before) < bound_kib,
        "unread streams grew the agent by {} KiB (bound {bound_kib} KiB)",
        peak_kib.saturating_sub(rss_before)
    );
    // And the agent still answers.
    let report = agent.ctl_json(&["top", "--pid", &pid.to_string()]);
    assert!(report["containers"].is_array(), "{report:#}");
    many.finish();
}

/// Gives the allocator a moment after many frees (RSS is sampled, not waited on).
fn tokio_free_settle() {
    std::thread::sleep(Duration::from_millis(500));
}

/// A child process holding `count` idle TCP connections to `addr` (a process of its own: each
/// process may hold 20,000 descriptors here).
fn idle_connections(addr: SocketAddr, count: usize) -> Child {
    let script = format!(
        "import socket, sys, time\n\
         held = []\n\
         for _ in range({count}):\n\
         \x20   s = socket.socket()\n\
         \x20   s.setblocking(False)\n\
         \x20   try:\n\
         \x20       s.connect(('{ip}', {port}))\n\
         \x20   except BlockingIOError:\n\
         \x20       pass\n\
         \x20   held.append(s)\n\
         print('open', flush=True)\n\
         time.sleep(600)\n",
        ip = addr.ip(),
        port = addr.port(),
    );
    let mut child = Command::new("python3")
        .args(["-c", &script])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "open");
    child
}

#[test]
fn thousands_of_idle_connections_are_capped_and_never_starve_the_api_or_attaching() {
    const PER_PORT: usize = 9_500;
    require_root();
    let root = temp_root("idle-conns");
    let health_port = free_port();
    let health: SocketAddr = format!("127.0.0.1:{health_port}").parse().unwrap();
    let agent = Agent::start(
        &root,
        &[
            "--metrics",
            "127.0.0.1:0",
            "--health-listen",
            &health.to_string(),
        ],
    );
    let metrics = metrics_address(&agent);
    let daemon = agent.pid();
    let rss_before = vm_rss_kib(daemon);
    let fds_before = open_fds(daemon);
    let mut flood = vec![
        idle_connections(health, PER_PORT),
        idle_connections(metrics, PER_PORT),
    ];
    std::thread::sleep(Duration::from_secs(2));
    let fds_during = open_fds(daemon);
    let rss_during = vm_rss_kib(daemon);
    figure("idle connections opened", 2 * PER_PORT);
    figure(
        "agent descriptors before / during",
        format!("{fds_before} / {fds_during}"),
    );
    figure(
        "agent RSS before / during, KiB",
        format!("{rss_before} / {rss_during}"),
    );
    assert!(
        fds_during < fds_before + 2 * 32 + 64,
        "the agent holds {fds_during} descriptors (was {fds_before})"
    );
    // The main API answers, and the agent can still open what attaching needs.
    let asked = Instant::now();
    let targets = agent.ctl_json(&["pods"]);
    figure(
        "ListTargets during the flood, ms",
        asked.elapsed().as_millis(),
    );
    assert!(targets.is_object(), "{targets:#}");
    let mut leaker = Workload::start(&workload("one_leak_site"), &[]);
    let started = agent.ctl_json(&["trace", "start", "--pid", &leaker.pid.to_string()]);
    assert_eq!(
        started[0]["traced"], true,
        "attaching during the flood: {started:#}"
    );
    let _ = leaker.run_to_done();
    let report = agent.ctl_json(&["top", "--pid", &leaker.pid.to_string()]);
    assert_eq!(
        report_totals(&report, "leak_here"),
        (409_600, 100),
        "{report:#}"
    );
    assert!(
        rss_during.saturating_sub(rss_before) < 32 * MIB,
        "idle connections grew the agent by {} KiB",
        rss_during.saturating_sub(rss_before)
    );
    // Silent connections are closed after the idle timeout (10 s), freeing the ports.
    std::thread::sleep(Duration::from_secs(11));
    let text = scrape(metrics);
    for listener in ["health", "metrics"] {
        let refused = metric(
            &text,
            &format!("tracer_connections_refused_total{{listener=\"{listener}\"}}"),
        );
        let timed_out = metric(
            &text,
            &format!("tracer_connections_timed_out_total{{listener=\"{listener}\"}}"),
        );
        figure(
            &format!("{listener}: refused / timed out"),
            format!("{refused} / {timed_out}"),
        );
        assert!(refused > 1_000.0, "{listener}: {refused} refused");
        assert!(timed_out >= 1.0, "{listener}: {timed_out} timed out");
    }
    for child in &mut flood {
        let _ = child.kill();
        let _ = child.wait();
    }
    leaker.finish();
}

/// Descriptors a process holds.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}
