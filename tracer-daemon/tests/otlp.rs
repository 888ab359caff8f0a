//! OTLP profiles export from the real agent tracing a real C leaker, received by a receiver
//! built from the official generated code (PyPI's opentelemetry-proto, served with grpcio;
//! tests/clients/otlp_receiver.py): the leaking function with its exact bytes and count, the
//! sample types and the resource attributes arrive as sent; with the receiver stopped the agent
//! keeps answering at its normal pace, and after a restart every batch built was either received
//! or counted as dropped in the metrics.

mod support;

use std::{
    collections::BTreeSet,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use support::{agent::*, node::*, *};

/// The Python of the test environment (`cargo xtask setup` makes it).
fn python() -> PathBuf {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/pyenv/bin/python");
    std::env::var_os("TRACER_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or(venv)
}

fn client(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/clients/{name}"))
}

/// The receiver, serving on 127.0.0.1:`port` and appending what it decodes to `out`.
struct Receiver(Child);

impl Receiver {
    fn start(port: u16, out: &Path) -> Self {
        let mut child = Command::new(python())
            .arg(client("otlp_receiver.py"))
            .arg(port.to_string())
            .arg(out)
            .stdout(Stdio::piped())
            .spawn()
            .expect("run the OTLP receiver (cargo xtask setup installs opentelemetry-proto)");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("stdout");
        let _ = BufReader::new(stdout).read_line(&mut line);
        assert_eq!(
            line.trim(),
            format!("listening {port}"),
            "the receiver did not start"
        );
        Self(child)
    }

    /// Kills it at once, as a crashed collector goes.
    fn kill(mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Every request received so far.
fn received(out: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(out).unwrap_or_default();
    text.lines()
        .map(|line| serde_json::from_str(line).expect("the receiver writes JSON lines"))
        .collect()
}

/// The resource of process `pid` in a request.
fn process(request: &Value, pid: u32) -> Option<&Value> {
    request["resources"]
        .as_array()?
        .iter()
        .find(|r| r["attributes"]["process.pid"] == pid)
}

/// A process's profile of this sample type.
fn profile<'a>(resource: &'a Value, kind: &str) -> Option<&'a Value> {
    resource["profiles"]
        .as_array()?
        .iter()
        .find(|p| p["type"] == kind)
}

/// The sum of a profile's values over the samples whose leaf location's innermost line is
/// `function`.
fn leaf_total(profile: &Value, function: &str) -> i64 {
    profile["samples"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["stack"][0][0] == function)
        .filter_map(|s| s["values"][0].as_i64())
        .sum()
}

/// A request's batch, told apart by its time (one per interval).
fn batch_time(request: &Value) -> u64 {
    request["resources"][0]["profiles"][0]["time_unix_nano"]
        .as_u64()
        .expect("a profile time")
}

/// The agent's OTLP figures from its Prometheus endpoint, parsed by prometheus_client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Figures {
    built: u64,
    sent: u64,
    dropped_queue_full: u64,
    dropped_exporter_stopped: u64,
    dropped_expired: u64,
    dropped_rejected: u64,
    pending: u64,
    failures: u64,
}

fn figures(port: u16) -> Figures {
    let output = Command::new(python())
        .arg(client("scrape_metrics.py"))
        .arg(format!("http://127.0.0.1:{port}/metrics"))
        .output()
        .expect("run the scrape script");
    assert!(output.status.success(), "{output:?}");
    let scraped: Value = serde_json::from_slice(&output.stdout).expect("scrape JSON");
    let value = |name: &str, reason: Option<&str>| {
        let samples = scraped["samples"].as_array().expect("samples").iter();
        let found = samples
            .filter(|s| s["name"] == name)
            .find(|s| reason.is_none_or(|r| s["labels"]["reason"] == r));
        let value = found.and_then(|s| s["value"].as_f64());
        value.unwrap_or_else(|| panic!("no {name} {reason:?} in {scraped}")) as u64
    };
    let dropped = |reason| value("tracer_otlp_batches_dropped_total", Some(reason));
    Figures {
        built: value("tracer_otlp_batches_built_total", None),
        sent: value("tracer_otlp_batches_sent_total", None),
        dropped_queue_full: dropped("queue_full"),
        dropped_exporter_stopped: dropped("exporter_stopped"),
        dropped_expired: dropped("expired"),
        dropped_rejected: dropped("rejected"),
        pending: value("tracer_otlp_batches_pending", None),
        failures: value("tracer_otlp_export_failures_total", None),
    }
}

/// Polls `check` until it returns `Some`, for at most [`TIMEOUT`].
fn poll<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(found) = check() {
            return found;
        }
        assert!(Instant::now() < deadline, "never {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn exported_profiles_carry_the_exact_leak_and_a_receiver_restart_loses_only_counted_batches() {
    require_root();
    let root = temp_root("otlp");
    let namespace = format!("otlp-{}", std::process::id());
    let pod = FakePod::create(
        &namespace,
        "api-0",
        Driver::Systemd,
        "burstable",
        &["app"],
        &root.join("pods"),
        &root.join("containers"),
    );
    let executable = workload("one_leak_site");
    let mut leaker = Workload::start(&executable, &[]);
    pod.place(leaker.pid, "app");
    let (otlp_port, metrics_port) = (free_port(), free_port());
    let out = root.join("received.jsonl");
    let receiver = Receiver::start(otlp_port, &out);
    let agent = Agent::start(
        &root,
        &[
            "--namespace",
            &namespace,
            "--export-otlp",
            &format!("http://127.0.0.1:{otlp_port}"),
            "--otlp-insecure",
            "--otlp-interval",
            "300ms",
            "--otlp-queue",
            "3",
            "--node-name",
            "node-otlp",
            "--metrics",
            &format!("127.0.0.1:{metrics_port}"),
        ],
    );
    agent.wait_traced(&[leaker.pid]);
    let _ = leaker.run_to_done();

    // The leak arrives exactly: 100 blocks of 4096 bytes from leak_here (the ground truth of
    // tests/workloads/one_leak_site.c), the other call sites having freed everything; the
    // container's growth profile beside it.
    let request = poll("received the leak and the growth profile", || {
        received(&out).into_iter().rev().find(|request| {
            process(request, leaker.pid).is_some_and(|p| {
                profile(p, "inuse_space").is_some_and(|p| leaf_total(p, "leak_here") == 409_600)
                    && profile(p, "resident_growth").is_some()
            })
        })
    });
    let resource = process(&request, leaker.pid).expect("the leaker's resource");
    let objects = profile(resource, "inuse_objects").expect("an inuse_objects profile");
    assert_eq!(leaf_total(objects, "leak_here"), 100, "{resource:#}");
    let space = profile(resource, "inuse_space").expect("inuse_space");
    assert_eq!(
        (&space["unit"], &objects["unit"], &space["scope"]),
        (&"bytes".into(), &"count".into(), &"tracer-daemon".into()),
    );
    let calls: BTreeSet<&str> = space["samples"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["stack"][0][0].as_str())
        .collect();
    assert!(!calls.contains("churn_and_free"), "freed: {calls:?}");
    eprintln!("received for the leaker: {resource}");
    // The growth profile is a profile of its own, saying it is sampled (one page in 16 by
    // default): its bytes are never mixed into outstanding-allocation bytes.
    let growth = profile(resource, "resident_growth").expect("resident_growth");
    assert_eq!(growth["unit"], "bytes");
    assert_eq!(
        growth["attributes"]["tracer.growth.sampled_one_page_in"],
        16
    );
    for profile in resource["profiles"].as_array().expect("profiles") {
        let kind = (profile["type"].as_str(), profile["unit"].as_str());
        assert!(
            matches!(
                kind,
                (Some("inuse_space"), Some("bytes"))
                    | (Some("inuse_objects"), Some("count"))
                    | (Some("resident_growth"), Some("bytes"))
            ),
            "{kind:?}"
        );
    }
    let exe = std::fs::canonicalize(&executable).expect("the workload's path");
    let expected = serde_json::json!({
        "k8s.namespace.name": namespace,
        "k8s.pod.name": "api-0",
        "k8s.pod.uid": pod.uid,
        "k8s.container.name": "app",
        "k8s.node.name": "node-otlp",
        "process.pid": leaker.pid,
        "process.executable.path": exe.display().to_string(),
        "process.executable.name": exe.file_name().expect("a file name").to_string_lossy(),
        "service.name": "app",
    });
    assert_eq!(resource["attributes"], expected);

    // The receiver goes down: exports fail, the queue fills, batches are dropped and counted,
    // and the agent answers as before.
    let before = figures(metrics_port);
    receiver.kill();
    let down = poll("dropped batches while the receiver was down", || {
        let now = figures(metrics_port);
        (now.dropped_queue_full > before.dropped_queue_full && now.failures > before.failures)
            .then_some(now)
    });
    for _ in 0..5 {
        let started = Instant::now();
        let report = agent.ctl_json(&["top", &pod.display(), "--top", "20"]);
        let took = started.elapsed();
        assert_eq!(report_totals(&report, "leak_here"), (409_600, 100));
        assert!(
            took < Duration::from_secs(2),
            "the agent took {took:?} to answer while the OTLP endpoint was down"
        );
    }
    assert_eq!((down.dropped_expired, down.dropped_rejected), (0, 0));

    // Back up on the same port: what was queued is delivered, and every batch built is either
    // received (once) or counted as dropped.
    let _receiver = Receiver::start(otlp_port, &out);
    let (figures, times) = poll("every batch received or counted", || {
        let now = figures(metrics_port);
        let times: BTreeSet<u64> = received(&out).iter().map(batch_time).collect();
        let accounted = now.pending == 0
            && now.sent == times.len() as u64
            && now.sent
                + now.dropped_queue_full
                + now.dropped_expired
                + now.dropped_rejected
                + now.dropped_exporter_stopped
                == now.built
            && now.sent > down.sent;
        accounted.then_some((now, times))
    });
    eprintln!("{figures:?}, {} batches received", times.len());
    assert_eq!(
        (
            figures.dropped_expired,
            figures.dropped_rejected,
            figures.dropped_exporter_stopped
        ),
        (0, 0, 0)
    );
    assert!(figures.dropped_queue_full >= 1, "{figures:?}");
    let last = received(&out)
        .into_iter()
        .rev()
        .find(|r| batch_time(r) == *times.last().expect("a batch"))
        .expect("the last batch");
    let after = process(&last, leaker.pid).and_then(|p| profile(p, "inuse_space"));
    assert_eq!(after.map(|p| leaf_total(p, "leak_here")), Some(409_600));
    leaker.finish();
}

#[test]
fn bad_otlp_settings_stop_the_agent_before_it_loads_naming_the_flag() {
    let root = temp_root("otlp-flags");
    let socket = format!("unix:{}", root.join("run/tracer.sock").display());
    let state = root.join("state").display().to_string();
    for (flags, says) in [
        (
            &["--export-otlp", "http://collector:4317"][..],
            "--otlp-insecure",
        ),
        (&["--export-otlp", "collector:4317"][..], "--export-otlp"),
        (
            &[
                "--export-otlp",
                "https://c:4317",
                "--otlp-header",
                "Bad Key=v",
            ][..],
            "--otlp-header",
        ),
        (
            &[
                "--export-otlp",
                "https://c:4317",
                "--otlp-header",
                "novalue",
            ][..],
            "--otlp-header",
        ),
        (
            &[
                "--export-otlp",
                "https://c:4317",
                "--otlp-ca",
                "/nonexistent.pem",
            ][..],
            "/nonexistent.pem",
        ),
        (&["--otlp-insecure"][..], "need --export-otlp"),
    ] {
        let mut args = vec!["run", "--listen", &socket, "--state-dir", &state];
        args.extend_from_slice(flags);
        let (code, stderr) = run_daemon(&args, &[]);
        assert_eq!(code, Some(1), "{flags:?}: {stderr}");
        assert!(stderr.contains(says), "{flags:?}: {stderr}");
        assert!(
            !stderr.contains("agent started"),
            "refused before anything loads: {stderr}"
        );
    }
    let (code, stderr) = run_daemon(&["run", "--otlp-queue", "0"], &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--otlp-queue"), "{stderr}");
    let _ = std::fs::remove_dir_all(&root);
}
