//! The node agent on a node layout built for real on this machine: kubelet-style pod cgroups
//! (systemd and cgroupfs drivers), real leaking processes moved into them, kubelet pod log
//! directories in a temp root, and the real `tracer-daemon run` serving gRPC on a Unix socket.
//! Asked through tracerctl, a Python grpcio client and raw tonic calls.

mod support;

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::Value;
use support::{node::*, *};

/// A running `tracer-daemon run` with its temp roots.
struct Agent {
    child: Child,
    socket: PathBuf,
    root: PathBuf,
    stderr: Arc<Mutex<String>>,
}

impl Agent {
    fn start(root: &Path, extra: &[&str]) -> Self {
        let socket = root.join("tracer.sock");
        let mut child = Command::new(daemon_binary())
            .args(["run", "--listen", &format!("unix:{}", socket.display())])
            .arg("--pod-log-root")
            .arg(root.join("pods"))
            .arg("--container-log-root")
            .arg(root.join("containers"))
            .args(["--discovery-interval", "200ms", "--sample-interval", "200ms", "--growth-window", "4s"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tracer-daemon run");
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&stderr);
        let pipe = child.stderr.take().expect("stderr");
        let _reader = std::thread::spawn(move || {
            use std::io::BufRead as _;
            for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
                eprintln!("[agent] {line}");
                let mut text = sink.lock().unwrap_or_else(|e| e.into_inner());
                text.push_str(&line);
                text.push('\n');
            }
        });
        let agent = Self { child, socket, root: root.to_owned(), stderr };
        let deadline = Instant::now() + TIMEOUT;
        while !agent.socket.exists() {
            assert!(Instant::now() < deadline, "agent never listened: {}", agent.stderr());
            std::thread::sleep(Duration::from_millis(50));
        }
        agent
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn server(&self) -> String {
        format!("unix:{}", self.socket.display())
    }

    /// Runs tracerctl against this agent; returns (exit code, stdout, stderr).
    fn ctl(&self, args: &[&str]) -> (Option<i32>, String, String) {
        let output = Command::new(env!("CARGO_BIN_EXE_tracerctl"))
            .args(["--server", &self.server()])
            .args(args)
            .output()
            .expect("run tracerctl");
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    fn ctl_json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        let (code, stdout, stderr) = self.ctl(&all);
        assert_eq!(code, Some(0), "tracerctl {args:?} failed: {stderr}");
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("tracerctl output is not JSON ({e}): {stdout}"))
    }

    /// Waits until every pid is listed as traced.
    fn wait_traced(&self, pids: &[u32]) {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let targets = self.ctl_json(&["pods"]);
            let traced: Vec<u64> = targets["pods"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|p| p["containers"].as_array().into_iter().flatten())
                .flat_map(|c| c["processes"].as_array().into_iter().flatten())
                .filter(|p| p["traced"] == true)
                .filter_map(|p| p["pid"].as_u64())
                .collect();
            if pids.iter().all(|pid| traced.contains(&u64::from(*pid))) {
                return;
            }
            assert!(Instant::now() < deadline, "pids {pids:?} never traced: {targets:#}\n{}", self.stderr());
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        let _ = unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn temp_root(name: &str) -> PathBuf {
    let root = std::env::temp_dir().join(format!("tracer-{name}-{}-{}", std::process::id(), now_ms()));
    std::fs::create_dir_all(&root).expect("mkdir");
    root
}

/// (bytes, count) summed over a report's stacks whose innermost frame is `function`.
fn report_totals(report: &Value, function: &str) -> (u64, u64) {
    report["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|c| c["stacks"].as_array().into_iter().flatten())
        .filter(|s| s["frames"][0]["function"] == function)
        .fold((0, 0), |(b, c), s| (b + s["bytes"].as_u64().unwrap_or(0), c + s["count"].as_u64().unwrap_or(0)))
}

#[test]
fn each_pod_report_names_its_own_leaking_function_with_exact_bytes() {
    require_root();
    let root = temp_root("pods");
    let namespace = format!("leaks-{}", std::process::id());
    let (logs, container_logs) = (root.join("pods"), root.join("containers"));
    let systemd = FakePod::create(&namespace, "api-0", Driver::Systemd, "burstable", &["app"], &logs, &container_logs);
    let cgroupfs = FakePod::create(&namespace, "worker-0", Driver::Cgroupfs, "besteffort", &["main"], &logs, &container_logs);

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
    assert_eq!(report_totals(&api_report, "leak_here"), (409_600, 100), "{api_report:#}");
    assert_eq!(report_totals(&api_report, "leak_early"), (0, 0), "another pod's leak: {api_report:#}");

    let worker_report = agent.ctl_json(&["top", &cgroupfs.display(), "-c", "main", "--top", "50"]);
    assert_eq!(report_totals(&worker_report, "leak_early"), (10_000, 10), "{worker_report:#}");
    assert_eq!(report_totals(&worker_report, "leak_here"), (0, 0), "another pod's leak: {worker_report:#}");

    // The same question from a client that is not ours.
    let python = std::env::var("TRACER_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
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
        (b + s["bytes"].as_u64().unwrap_or(0), c + s["count"].as_u64().unwrap_or(0))
    });
    assert_eq!(python_totals, (409_600, 100), "{python_view:#}");
    assert_eq!(python_view["unknown_pod_status"], "NOT_FOUND", "{python_view:#}");

    api.finish();
    worker.finish();
}
