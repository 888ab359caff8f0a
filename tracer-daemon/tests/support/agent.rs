//! A running `tracer-daemon run` on temp roots, driven through tracerctl.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::Value;

use super::{TIMEOUT, daemon_binary, now_ms, tracerctl_binary};

/// A running `tracer-daemon run` with its temp roots.
pub(crate) struct Agent {
    child: Child,
    pub(crate) socket: PathBuf,
    root: PathBuf,
    keep_root: bool,
    stderr: Arc<Mutex<String>>,
}

/// How an agent process is started, beyond its arguments.
#[derive(Default)]
pub(crate) struct Launch {
    /// A command the daemon runs under (e.g. setpriv with a user and capabilities).
    pub(crate) wrapper: Vec<String>,
    /// The socket path (default: ROOT/tracer.sock).
    pub(crate) socket: Option<PathBuf>,
    /// Where it listens instead of the socket (the socket is then not waited for).
    pub(crate) listen: Option<String>,
}

impl Agent {
    pub(crate) fn start(root: &Path, extra: &[&str]) -> Self {
        Self::start_with(root, Launch::default(), extra)
    }

    pub(crate) fn start_with(root: &Path, launch: Launch, extra: &[&str]) -> Self {
        let socket = launch.socket.unwrap_or_else(|| root.join("tracer.sock"));
        let listen = launch
            .listen
            .clone()
            .unwrap_or_else(|| format!("unix:{}", socket.display()));
        let mut command = match launch.wrapper.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                let _ = command.args(args).arg(daemon_binary());
                command
            }
            None => Command::new(daemon_binary()),
        };
        let mut child = command
            .args(["run", "--listen", &listen])
            .arg("--pod-log-root")
            .arg(root.join("pods"))
            .arg("--container-log-root")
            .arg(root.join("containers"))
            .args(defaults_unless_given(extra))
            .args(extra)
            .args(if extra.contains(&"--state-dir") {
                Vec::new()
            } else {
                vec![
                    "--state-dir".to_owned(),
                    root.join("state").display().to_string(),
                ]
            })
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
        let agent = Self {
            child,
            socket,
            root: root.to_owned(),
            keep_root: false,
            stderr,
        };
        let deadline = Instant::now() + TIMEOUT;
        // Logged once bound (a socket left by an agent killed with -9 may already exist).
        let listening = |agent: &Self| agent.stderr().contains("serving gRPC");
        while !listening(&agent) {
            assert!(
                Instant::now() < deadline,
                "agent never listened: {}",
                agent.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        agent
    }

    /// Whether the agent process has exited (and with what status).
    pub(crate) fn try_exit(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The agent's pid.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(crate) fn server(&self) -> String {
        format!("unix:{}", self.socket.display())
    }

    /// Runs tracerctl against this agent; returns (exit code, stdout, stderr).
    pub(crate) fn ctl(&self, args: &[&str]) -> (Option<i32>, String, String) {
        let output = Command::new(tracerctl_binary())
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

    pub(crate) fn ctl_json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        let (code, stdout, stderr) = self.ctl(&all);
        assert_eq!(code, Some(0), "tracerctl {args:?} failed: {stderr}");
        serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("tracerctl output is not JSON ({e}): {stdout}"))
    }

    /// Waits until the agent says it profiles the process's page faults (its cgroup is
    /// watched).
    pub(crate) fn wait_profiled(&self, pid: u32) {
        let deadline = Instant::now() + TIMEOUT;
        let line = format!("pid={pid}");
        while !self
            .stderr()
            .lines()
            .any(|l| l.contains("profiling page faults") && l.contains(&line))
        {
            assert!(
                Instant::now() < deadline,
                "pid {pid} never profiled:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until every pid is listed as traced.
    pub(crate) fn wait_traced(&self, pids: &[u32]) {
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
            assert!(
                Instant::now() < deadline,
                "pids {pids:?} never traced: {targets:#}\n{}",
                self.stderr()
            );
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
        if !self.keep_root {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

impl Agent {
    /// Kills the agent with SIGKILL (no cleanup), keeping its roots for the next one.
    pub(crate) fn kill_9(mut self) {
        // SAFETY: signalling our own child.
        let _ = unsafe { libc::kill(self.child.id() as i32, libc::SIGKILL) };
        let _ = self.child.wait();
        self.keep_root = true;
    }

    /// Stops the agent with SIGTERM, keeping its roots for the next one.
    pub(crate) fn stop_keeping_state(mut self) {
        self.keep_root = true;
    }

    /// Waits until tracerctl's JSON for `args` satisfies `done`; returns it.
    pub(crate) fn wait_json(
        &self,
        args: &[&str],
        what: &str,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let value = self.ctl_json(args);
            if done(&value) {
                return value;
            }
            assert!(
                Instant::now() < deadline,
                "never {what}: {value:#}\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
/// Fast discovery and sampling for tests, unless the test sets them itself.
fn defaults_unless_given(extra: &[&str]) -> Vec<&'static str> {
    let mut args = Vec::new();
    for (flag, value) in [
        ("--discovery-interval", "200ms"),
        ("--sample-interval", "200ms"),
        ("--growth-window", "4s"),
    ] {
        if !extra.contains(&flag) {
            args.extend([flag, value]);
        }
    }
    args
}

/// A fresh temp root for one test.
pub(crate) fn temp_root(name: &str) -> PathBuf {
    let root =
        std::env::temp_dir().join(format!("tracer-{name}-{}-{}", std::process::id(), now_ms()));
    std::fs::create_dir_all(&root).expect("mkdir");
    root
}

/// (bytes, count) summed over a report's stacks whose innermost frame is `function`.
pub(crate) fn report_totals(report: &Value, function: &str) -> (u64, u64) {
    report["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|c| c["stacks"].as_array().into_iter().flatten())
        .filter(|s| s["frames"][0]["function"] == function)
        .fold((0, 0), |(b, c), s| {
            (
                b + s["bytes"].as_u64().unwrap_or(0),
                c + s["count"].as_u64().unwrap_or(0),
            )
        })
}
