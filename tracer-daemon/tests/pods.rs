//! The node agent on a node layout built for real on this machine: kubelet-style pod cgroups
//! (systemd and cgroupfs drivers), real leaking processes moved into them, kubelet pod log
//! directories in a temp root, and the real `tracer-daemon run` serving gRPC on a Unix socket.
//! Asked through tracerctl, a Python grpcio client and raw tonic calls.

mod support;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use serde_json::Value;
use support::{agent::*, cgroupns::*, node::*, *};

#[test]
fn each_pod_report_names_its_own_leaking_function_with_exact_bytes() {
    require_root();
    let root = temp_root("pods");
    let namespace = format!("leaks-{}", std::process::id());
    let (logs, container_logs) = (root.join("pods"), root.join("containers"));
    let systemd = FakePod::create(
        &namespace,
        "api-0",
        Driver::Systemd,
        "burstable",
        &["app"],
        &logs,
        &container_logs,
    );
    let cgroupfs = FakePod::create(
        &namespace,
        "worker-0",
        Driver::Cgroupfs,
        "besteffort",
        &["main"],
        &logs,
        &container_logs,
    );

    let mut api = Workload::start(&workload("one_leak_site"), &[]);
    systemd.place(api.pid, "app");
    let mut worker = Workload::start(&workload("aged_leaks"), &[]);
    cgroupfs.place(worker.pid, "main");

    let agent = Agent::start(&root, &["--namespace", &namespace]);
    agent.wait_traced(&[api.pid, worker.pid]);
    let _ = api.run_to_done();
    let _ = worker.run_to_done();

    let api_report = agent.ctl_json(&["top", &systemd.display(), "--top", "50"]);
    assert_eq!(api_report["pod_name"], "api-0", "{api_report:#}");
    assert_eq!(api_report["containers"][0]["name"], "app", "{api_report:#}");
    assert_eq!(
        report_totals(&api_report, "leak_here"),
        (409_600, 100),
        "{api_report:#}"
    );
    assert_eq!(
        report_totals(&api_report, "leak_early"),
        (0, 0),
        "another pod's leak: {api_report:#}"
    );

    let worker_report = agent.ctl_json(&["top", &cgroupfs.display(), "-c", "main", "--top", "50"]);
    assert_eq!(
        report_totals(&worker_report, "leak_early"),
        (10_000, 10),
        "{worker_report:#}"
    );
    assert_eq!(
        report_totals(&worker_report, "leak_here"),
        (0, 0),
        "another pod's leak: {worker_report:#}"
    );

    // The same question from a client that is not ours.
    // `cargo xtask setup` installs grpcio in target/pyenv; xtask test passes it explicitly.
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/pyenv/bin/python");
    let python = std::env::var_os("TRACER_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            if venv.exists() {
                venv
            } else {
                PathBuf::from("python3")
            }
        });
    let proto_root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/leak_report.py");
    let output = Command::new(&python)
        .arg(&script)
        .arg(&proto_root)
        .arg(&agent.socket)
        .arg(systemd.display())
        .output()
        .expect("run the Python client");
    assert!(
        output.status.success(),
        "Python client failed (run `cargo xtask setup` for grpcio): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let python_view: Value = serde_json::from_slice(&output.stdout).expect("Python client JSON");
    let leak_here: Vec<&Value> = python_view["stacks"]
        .as_array()
        .expect("stacks")
        .iter()
        .filter(|s| s["function"] == "leak_here")
        .collect();
    let python_totals = leak_here.iter().fold((0, 0), |(b, c), s| {
        (
            b + s["bytes"].as_u64().unwrap_or(0),
            c + s["count"].as_u64().unwrap_or(0),
        )
    });
    assert_eq!(python_totals, (409_600, 100), "{python_view:#}");
    assert_eq!(
        python_view["unknown_pod_status"], "NOT_FOUND",
        "{python_view:#}"
    );
    // The README quotes this error for a client that forgets the authority option.
    assert_eq!(
        python_view["without_authority"],
        "StatusCode.INTERNAL Stream removed (RST_STREAM (Received RST_STREAM with error code 1))",
        "{python_view:#}"
    );

    api.finish();
    worker.finish();
}

mod grpc {
    //! Raw tonic calls, to check status codes exactly.
    use std::path::Path;

    use hyper_util::rt::TokioIo;
    use tonic::transport::{Channel, Endpoint, Uri};
    use tracer_proto::v1::{self as pb, leak_tracer_client::LeakTracerClient};

    pub(crate) async fn channel(socket: &Path) -> Channel {
        let socket = socket.to_owned();
        Endpoint::from_static("http://localhost")
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let socket = socket.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(
                        tokio::net::UnixStream::connect(socket).await?,
                    ))
                }
            }))
            .await
            .expect("connect to the agent")
    }

    pub(crate) fn pod(namespace: &str, name: &str) -> Option<pb::Selector> {
        Some(pb::Selector {
            target: Some(pb::selector::Target::Pod(pb::PodName {
                namespace: namespace.into(),
                name: name.into(),
            })),
            container: String::new(),
        })
    }

    pub(crate) fn report(selector: Option<pb::Selector>, top: u32) -> pb::GetLeakReportRequest {
        pb::GetLeakReportRequest {
            selector,
            top,
            min_age: None,
            sort_by: 0,
        }
    }

    pub(crate) async fn code(
        client: &mut LeakTracerClient<Channel>,
        request: pb::GetLeakReportRequest,
    ) -> tonic::Code {
        match client.get_leak_report(request).await {
            Ok(_) => tonic::Code::Ok,
            Err(status) => status.code(),
        }
    }
}

#[test]
fn bad_requests_get_precise_status_codes_and_the_agent_stays_up() {
    use tracer_proto::v1::{self as pb, leak_tracer_client::LeakTracerClient};

    require_root();
    let root = temp_root("codes");
    let namespace = format!("codes-{}", std::process::id());
    let (logs, container_logs) = (root.join("pods"), root.join("containers"));
    let traced = FakePod::create(
        &namespace,
        "traced",
        Driver::Systemd,
        "guaranteed",
        &["app"],
        &logs,
        &container_logs,
    );
    let untraced = FakePod::create(
        &namespace,
        "untraced",
        Driver::Cgroupfs,
        "guaranteed",
        &["app"],
        &logs,
        &container_logs,
    );
    let mut leaker = Workload::start(&workload("one_leak_site"), &[]);
    traced.place(leaker.pid, "app");
    let bystander = Workload::start(&workload("aged_leaks"), &[]);
    untraced.place(bystander.pid, "app");
    let agent = Agent::start(
        &root,
        &["--namespace", &namespace, "--exclude-pod", "untraced"],
    );
    agent.wait_traced(&[leaker.pid]);
    let _ = leaker.run_to_done();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let channel = grpc::channel(&agent.socket).await;
        let mut client = LeakTracerClient::new(channel.clone());
        use tonic::Code;
        assert_eq!(
            grpc::code(&mut client, grpc::report(grpc::pod(&namespace, "nope"), 10)).await,
            Code::NotFound
        );
        assert_eq!(
            grpc::code(&mut client, grpc::report(None, 10)).await,
            Code::InvalidArgument
        );
        assert_eq!(
            grpc::code(&mut client, grpc::report(grpc::pod("Bad_NS", "x"), 10)).await,
            Code::InvalidArgument
        );
        assert_eq!(
            grpc::code(
                &mut client,
                grpc::report(grpc::pod(&namespace, "traced"), 5000)
            )
            .await,
            Code::InvalidArgument
        );
        assert_eq!(
            grpc::code(
                &mut client,
                grpc::report(grpc::pod(&namespace, "untraced"), 10)
            )
            .await,
            Code::FailedPrecondition
        );
        let with_container = |container: &str| {
            let mut selector = grpc::pod(&namespace, "traced");
            if let Some(s) = selector.as_mut() {
                s.container = container.into();
            }
            grpc::report(selector, 10)
        };
        assert_eq!(
            grpc::code(&mut client, with_container("sidecar")).await,
            Code::NotFound
        );
        assert_eq!(
            grpc::code(&mut client, with_container("app")).await,
            Code::Ok
        );
        let pid_selector = Some(pb::Selector {
            target: Some(pb::selector::Target::Pid(0)),
            container: String::new(),
        });
        assert_eq!(
            grpc::code(&mut client, grpc::report(pid_selector, 10)).await,
            Code::InvalidArgument
        );
        // An oversized request (a 1 MiB pod name) is refused before it is even parsed.
        let huge = "a".repeat(1 << 20);
        let code = grpc::code(&mut client, grpc::report(grpc::pod(&namespace, &huge), 10)).await;
        assert_eq!(code, Code::OutOfRange, "oversized request");

        // Many concurrent clients and streams: every unary call answers; watch streams beyond the
        // cap are refused with RESOURCE_EXHAUSTED, never a crash.
        let mut calls = Vec::new();
        for i in 0..64 {
            let mut client = LeakTracerClient::new(channel.clone());
            let request = grpc::report(grpc::pod(&namespace, "traced"), 10);
            calls.push(tokio::spawn(async move {
                if i % 2 == 0 {
                    client.get_leak_report(request).await.map(|_| ())
                } else {
                    client
                        .list_targets(pb::ListTargetsRequest {})
                        .await
                        .map(|_| ())
                }
            }));
        }
        for call in calls {
            call.await.expect("task").expect("concurrent call");
        }
        let mut streams = Vec::new();
        let mut refused = 0;
        for _ in 0..(tracer_daemon_max_watch_streams() + 8) {
            let mut client = LeakTracerClient::new(grpc::channel(&agent.socket).await);
            let request = pb::WatchLeakReportsRequest {
                report: Some(grpc::report(grpc::pod(&namespace, "traced"), 5)),
                interval: Some(prost_types::Duration {
                    seconds: 1,
                    nanos: 0,
                }),
            };
            match client.watch_leak_reports(request).await {
                Ok(stream) => streams.push(stream.into_inner()),
                Err(status) => {
                    assert_eq!(status.code(), Code::ResourceExhausted, "{status}");
                    refused += 1;
                }
            }
        }
        assert_eq!(refused, 8, "streams beyond the cap must be refused");
        let first = streams[0]
            .message()
            .await
            .expect("stream")
            .expect("a report");
        assert_eq!(first.pod.as_ref().map(|p| p.name.as_str()), Some("traced"));
        drop(streams);

        // Still healthy and still right.
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
        let serving = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: "tracer.v1.LeakTracer".into(),
            })
            .await
            .expect("health check");
        assert_eq!(
            serving.into_inner().status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        );
        let report = client
            .get_leak_report(grpc::report(grpc::pod(&namespace, "traced"), 10))
            .await
            .expect("report");
        let leak: u64 = report
            .get_ref()
            .containers
            .iter()
            .flat_map(|c| &c.stacks)
            .filter(|s| s.frames.first().is_some_and(|f| f.function == "leak_here"))
            .map(|s| s.bytes)
            .sum();
        assert_eq!(leak, 409_600);
    });
    leaker.finish();
    bystander.finish();
}

fn tracer_daemon_max_watch_streams() -> usize {
    tracer_daemon::api::MAX_WATCH_STREAMS
}

#[test]
fn start_and_stop_tracing_at_runtime_through_tracerctl() {
    require_root();
    let root = temp_root("startstop");
    let namespace = format!("runtime-{}", std::process::id());
    let (logs, container_logs) = (root.join("pods"), root.join("containers"));
    let pod = FakePod::create(
        &namespace,
        "api-1",
        Driver::Systemd,
        "besteffort",
        &["app"],
        &logs,
        &container_logs,
    );
    let mut leaker = Workload::start(&workload("one_leak_site"), &[]);
    pod.place(leaker.pid, "app");
    // No selection: nothing is traced until asked.
    let agent = Agent::start(&root, &[]);
    std::thread::sleep(Duration::from_millis(600));
    let (code, _, stderr) = agent.ctl(&["top", &pod.display()]);
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("FailedPrecondition") && stderr.contains("not traced"),
        "{stderr}"
    );

    let started = agent.ctl_json(&["trace", "start", &pod.display()]);
    assert_eq!(started[0]["pid"], u64::from(leaker.pid), "{started:#}");
    assert_eq!(started[0]["traced"], true, "{started:#}");
    // How stacks are unwound through each file, over the API: the workload keeps frame
    // pointers, Debian's glibc does not.
    let method_of = |suffix: &str| {
        started[0]["unwinding"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|b| b["binary"].as_str().is_some_and(|b| b.ends_with(suffix)))
            .map(|b| b["method"].clone())
            .unwrap_or_else(|| panic!("{suffix} not in the unwinding list: {started:#}"))
    };
    assert_eq!(method_of("/one_leak_site"), "frame pointers", "{started:#}");
    assert_eq!(method_of("/libc.so.6"), "unwind table", "{started:#}");
    let _ = leaker.run_to_done();
    let report = agent.ctl_json(&["top", &pod.display()]);
    assert_eq!(
        report_totals(&report, "leak_here"),
        (409_600, 100),
        "{report:#}"
    );
    // A person's table stops at main; --full-stacks (and JSON) keep libc's frames below it.
    let (code, table, _) = agent.ctl(&["top", &pod.display()]);
    assert_eq!(code, Some(0));
    assert!(
        !table.contains("__libc_start") && table.contains("frames below; --full-stacks shows them"),
        "{table}"
    );
    let (code, full, _) = agent.ctl(&["top", &pod.display(), "--full-stacks"]);
    assert_eq!(code, Some(0));
    assert!(full.contains("__libc_start"), "{full}");

    let stopped = agent.ctl_json(&["trace", "stop", &pod.display()]);
    assert_eq!(stopped, serde_json::json!([leaker.pid]));
    // It stays stopped across discovery rounds.
    std::thread::sleep(Duration::from_millis(600));
    let (code, _, stderr) = agent.ctl(&["top", &pod.display()]);
    assert_eq!(code, Some(1), "{stderr}");
    let (code, _, stderr) = agent.ctl(&["top", &format!("{namespace}/missing")]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("NotFound"), "{stderr}");
    leaker.finish();
}

#[test]
fn a_leak_is_classed_growing_and_a_filled_cache_levelling_off_with_time_to_limit() {
    require_root();
    let root = temp_root("growth");
    let namespace = format!("growth-{}", std::process::id());
    let (logs, container_logs) = (root.join("pods"), root.join("containers"));
    let pod = FakePod::create(
        &namespace,
        "cache-0",
        Driver::Cgroupfs,
        "burstable",
        &["app"],
        &logs,
        &container_logs,
    );
    pod.limit_memory("app", 256u64 << 20);
    let mut workload = Workload::start(&workload("cache_and_leak"), &[]);
    pod.place(workload.pid, "app");
    let agent = Agent::start(&root, &["--namespace", &namespace]);
    agent.wait_traced(&[workload.pid]);
    let _ = workload.run_to_done();
    // Before half the 4 s window has passed nothing is classed, yet the measured rate shows,
    // marked provisional with the time until it is classed. A rate needs two background scans
    // of the leak's stack; under load (the other tests' agents and workloads) the low-priority
    // scanner may take longer than its 200 ms for them, so ask until it has them.
    let deadline = Instant::now() + Duration::from_secs(10);
    let early = loop {
        std::thread::sleep(Duration::from_millis(200));
        let early = agent.ctl_json(&["top", &pod.display(), "--sort", "growth"]);
        let growth = early["containers"][0]["stacks"]
            .as_array()
            .expect("stacks")
            .iter()
            .find(|s| s["frames"][0]["function"] == "leak_slowly")
            .map(|s| s["growth"].clone())
            .unwrap_or_default();
        // A stack the scanner has not sampled yet has no growth at all (no class either).
        let measured = growth["samples"].as_u64().is_some_and(|n| n >= 2)
            || growth["class"]
                .as_str()
                .is_some_and(|class| class != "insufficient_data");
        if measured || Instant::now() > deadline {
            break early;
        }
    };
    let early_container = &early["containers"][0];
    let leak = early_container["stacks"]
        .as_array()
        .expect("stacks")
        .iter()
        .find(|s| s["frames"][0]["function"] == "leak_slowly")
        .unwrap_or_else(|| panic!("leak_slowly missing: {early:#}"));
    if leak["growth"]["class"] == "insufficient_data" {
        assert!(
            early_container["provisional_leak_bytes_per_second"]
                .as_f64()
                .is_some_and(|r| r > 10_000.0),
            "the measured rate shows before the leak is classed: {early:#}"
        );
        assert!(
            early_container["classed_in_ns"].as_u64().is_some(),
            "{early:#}"
        );
        let (code, text, _) = agent.ctl(&["top", &pod.display(), "--sort", "growth"]);
        assert_eq!(code, Some(0));
        assert!(
            text.contains("/s provisional, from call sites classed in ~")
                && text.contains("new (in "),
            "{text}"
        );
    }
    // The window is 4 s with a sample every 200 ms: once its samples span half of it the leak
    // is classed; by then the cache has been flat for the whole recent half while the leak
    // kept growing.
    let class_in = |report: &Value, function: &str| -> String {
        report["containers"][0]["stacks"]
            .as_array()
            .expect("stacks")
            .iter()
            .find(|s| s["frames"][0]["function"] == function)
            .map(|s| s["growth"]["class"].as_str().unwrap_or("?").to_owned())
            .unwrap_or_else(|| panic!("{function} missing: {report:#}"))
    };
    let deadline = Instant::now() + TIMEOUT;
    let report = loop {
        let report = agent.ctl_json(&["top", &pod.display(), "--sort", "growth"]);
        if class_in(&report, "leak_slowly") != "insufficient_data" || Instant::now() > deadline {
            break report;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let class_of = |function: &str| class_in(&report, function);
    assert_eq!(class_of("leak_slowly"), "growing", "{report:#}");
    // The samples behind the class reach the client (they were 0 in every report).
    let leak = report["containers"][0]["stacks"]
        .as_array()
        .expect("stacks")
        .iter()
        .find(|s| s["frames"][0]["function"] == "leak_slowly")
        .expect("leak_slowly");
    assert!(
        leak["growth"]["samples"].as_u64().is_some_and(|n| n >= 4),
        "{leak:#}"
    );
    assert!(
        leak["growth"]["span_ns"]
            .as_u64()
            .is_some_and(|ns| ns >= 2_000_000_000),
        "{leak:#}"
    );
    assert_eq!(class_of("fill_cache"), "levelling_off", "{report:#}");
    let container = &report["containers"][0];
    assert_eq!(
        container["stacks"][0]["frames"][0]["function"], "leak_slowly",
        "sorted by growth: {report:#}"
    );
    let rate = container["leak_bytes_per_second"].as_f64().expect("rate");
    assert!(
        (20_000.0..80_000.0).contains(&rate),
        "leak rate {rate} B/s is not ~50 KB/s: {report:#}"
    );
    assert_eq!(
        container["memory"]["limit_bytes"],
        256u64 << 20,
        "{report:#}"
    );
    let ttl = container["time_to_limit_ns"]
        .as_u64()
        .expect("time to limit");
    let usage = container["memory"]["usage_bytes"].as_u64().expect("usage");
    let expected = ((256u64 << 20) - usage) as f64 / rate * 1e9;
    assert!(
        (ttl as f64 - expected).abs() < expected * 0.01,
        "time to limit {ttl} vs {expected}"
    );
    workload.finish();
}

#[test]
fn containers_started_after_the_agent_are_followed_up_to_the_process_cap() {
    require_root();
    let root = temp_root("follow");
    let namespace = format!("follow-{}", std::process::id());
    let (logs, container_logs) = (root.join("pods"), root.join("containers"));
    let agent = Agent::start(&root, &["--namespace", &namespace, "--max-processes", "1"]);
    // The pod and its processes appear after the agent is running.
    let pod = FakePod::create(
        &namespace,
        "late-0",
        Driver::Systemd,
        "burstable",
        &["app", "sidecar"],
        &logs,
        &container_logs,
    );
    let mut first = Workload::start(&workload("one_leak_site"), &[]);
    pod.place(first.pid, "app");
    agent.wait_traced(&[first.pid]);
    let second = Workload::start(&workload("aged_leaks"), &[]);
    pod.place(second.pid, "sidecar");
    let deadline = Instant::now() + TIMEOUT;
    let reason = loop {
        let targets = agent.ctl_json(&["pods"]);
        let reason = targets["pods"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|p| p["containers"].as_array().into_iter().flatten())
            .flat_map(|c| c["processes"].as_array().into_iter().flatten())
            .find(|p| p["pid"] == u64::from(second.pid))
            .and_then(|p| p["not_traced_reason"].as_str().map(str::to_owned));
        if let Some(reason) = reason {
            break reason;
        }
        assert!(
            Instant::now() < deadline,
            "second process never listed: {targets:#}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(reason.contains("max processes reached (1)"), "{reason}");
    let _ = first.run_to_done();
    let report = agent.ctl_json(&["top", &pod.display(), "-c", "app"]);
    assert_eq!(
        report_totals(&report, "leak_here"),
        (409_600, 100),
        "{report:#}"
    );
    first.finish();
    second.finish();
}

#[test]
fn an_agent_in_its_own_cgroup_namespace_still_reads_pods_memory_as_the_host_does() {
    // containerd gives every pod its own cgroup namespace on cgroup v2: the agent's view of
    // /proc/PID/cgroup and of its cgroup mounts is then relative to its own cgroup. Here the
    // agent starts in a fresh cgroup namespace rooted, in each hierarchy, at a container cgroup
    // of its own two levels below kubepods/burstable, as in such a pod. The pod under test, a
    // cgroupfs-driver pod beside it, then reads as /../../pod<uid>/<id>: neither its directory
    // nor even that it is a pod (kubepods/burstable is not in that path) is known until the
    // path is resolved against the place of the agent's namespace root, which the agent must
    // find without leaving its namespace (joining the host's takes CAP_SYS_ADMIN).
    require_root();
    let root = temp_root("cgroupns");
    let namespace = format!("cgroupns-{}", std::process::id());
    let pod = FakePod::create(
        &namespace,
        "limited-0",
        Driver::Cgroupfs,
        "burstable",
        &["app"],
        &root.join("pods"),
        &root.join("containers"),
    );
    pod.limit_memory("app", 192u64 << 20);
    let mut workload = Workload::start(&workload("one_leak_site"), &[]);
    pod.place(workload.pid, "app");

    // The agent's own pod and container cgroups, one per hierarchy, beside the pod's (dropped
    // after the agent, once it has left them).
    let own = AgentPodCgroups::new("tracer-agent");
    let agent = Agent::start_with(
        &root,
        Launch {
            wrapper: own.wrapper(&[]),
            ..Launch::default()
        },
        &["--namespace", &namespace],
    );
    // It runs in its own cgroup and its own cgroup namespace, and says where it found that
    // namespace's root in each hierarchy.
    let agent_cgroup =
        std::fs::read_to_string(format!("/proc/{}/cgroup", agent.pid())).expect("agent cgroup");
    assert!(agent_cgroup.contains(&own.pod), "{agent_cgroup}");
    assert_own_cgroup_namespace(agent.pid());
    for resolved in own.resolved_lines() {
        assert!(agent.stderr().contains(&resolved), "{}", agent.stderr());
    }

    agent.wait_traced(&[workload.pid]);
    let _ = workload.run_to_done();
    let report = agent.ctl_json(&["top", &pod.display()]);
    assert_eq!(
        report_totals(&report, "leak_here"),
        (409_600, 100),
        "{report:#}"
    );
    assert_eq!(
        report["containers"][0]["memory"]["limit_bytes"],
        192u64 << 20,
        "{report:#}"
    );
    assert_own_cgroup_namespace(agent.pid());
}

#[test]
fn starting_the_tracer_itself_or_a_kernel_thread_fails_with_the_reason() {
    require_root();
    let root = temp_root("refused");
    let agent = Agent::start(&root, &[]);
    let own = agent.pid().to_string();
    for (pid, reason) in [(own.as_str(), "the tracer itself"), ("2", "kernel thread")] {
        let (code, stdout, stderr) = agent.ctl(&["trace", "start", "--pid", pid]);
        assert_eq!(code, Some(1), "pid {pid}: {stdout}{stderr}");
        assert!(
            stderr.contains("FailedPrecondition") && stderr.contains(reason),
            "pid {pid}: {stderr}"
        );
    }
    let targets = agent.ctl_json(&["pods"]);
    assert!(
        targets["other_processes"]
            .as_array()
            .is_none_or(Vec::is_empty),
        "a refused pid is not listed as traced: {targets:#}"
    );
}

#[test]
fn a_pod_that_started_a_moment_ago_is_found_without_waiting_for_discovery() {
    require_root();
    let root = temp_root("fresh-pod");
    let namespace = format!("fresh-{}", std::process::id());
    // Discovery so slow that only the lookup made for the request can find the pod.
    let agent = Agent::start(&root, &["--discovery-interval", "1h"]);
    let pod = FakePod::create(
        &namespace,
        "api-0",
        Driver::Systemd,
        "besteffort",
        &["app"],
        &root.join("pods"),
        &root.join("containers"),
    );
    let mut leaker = Workload::start(&workload("one_leak_site"), &[]);
    pod.place(leaker.pid, "app");
    let started = agent.ctl_json(&["trace", "start", &pod.display()]);
    assert_eq!(started[0]["pid"], u64::from(leaker.pid), "{started:#}");
    assert_eq!(started[0]["traced"], true, "{started:#}");
    let _ = leaker.run_to_done();
    let report = agent.ctl_json(&["top", &pod.display()]);
    assert_eq!(
        report_totals(&report, "leak_here"),
        (409_600, 100),
        "{report:#}"
    );
    leaker.finish();
}
