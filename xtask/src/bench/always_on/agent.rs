//! `tracer-daemon run` as the suite drives it: its own config file, socket and state directory
//! in a temp directory, its log kept for the lines that mark profiling and escalation, and
//! `tracerctl pods -o json` read into a tree.

use std::{
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::{
    json::{self, Value},
    node::{FakePod, LogRoots, wait_until},
};

/// The release binaries the suite runs.
pub(super) struct Binaries {
    pub(super) daemon: PathBuf,
    pub(super) tracerctl: PathBuf,
}

/// A running agent; stopped with SIGTERM (then SIGKILL) on drop.
pub(super) struct Agent {
    child: Child,
    dir: PathBuf,
    socket: PathBuf,
    log: Arc<Mutex<String>>,
    tracerctl: PathBuf,
    pub(super) started: Instant,
}

impl Agent {
    /// Starts the agent with `config` (TOML) and waits until it serves its API.
    pub(super) fn start(
        binaries: &Binaries,
        logs: &LogRoots,
        config: &str,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        static STARTS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = STARTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = logs.root.join(format!("agent-{n}"));
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("config.toml"), config)?;
        let socket = dir.join("tracer.sock");
        let mut child = Command::new(&binaries.daemon)
            .arg("run")
            .arg("--listen")
            .arg(format!("unix:{}", socket.display()))
            .arg("--config")
            .arg(dir.join("config.toml"))
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--pod-log-root")
            .arg(logs.pods())
            .arg("--container-log-root")
            .arg(logs.containers())
            .args(extra)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("start tracer-daemon run")?;
        let started = Instant::now();
        let log = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&log);
        let pipe = child.stderr.take().context("the agent's stderr")?;
        let _reader = std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let mut text = sink.lock().unwrap_or_else(|e| e.into_inner());
                text.push_str(&line);
                text.push('\n');
            }
        });
        let mut agent = Self {
            child,
            dir,
            socket,
            log,
            tracerctl: binaries.tracerctl.clone(),
            started,
        };
        let serving = wait_until(
            "the agent serves gRPC",
            Duration::from_secs(60),
            Duration::from_millis(50),
            || {
                if let Ok(Some(status)) = agent.child.try_wait() {
                    bail!("the agent exited ({status}):\n{}", agent.log());
                }
                Ok(agent.log().contains("serving gRPC"))
            },
        );
        if let Err(err) = serving {
            agent.kill();
            return Err(err.context(agent.log()));
        }
        Ok(agent)
    }

    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the agent has logged so far.
    pub(super) fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Log lines containing every one of `words`.
    pub(super) fn lines_with(&self, words: &[&str]) -> usize {
        self.log()
            .lines()
            .filter(|l| words.iter().all(|w| l.contains(w)))
            .count()
    }

    /// Waits until the agent says it profiles the page faults of `pid` (its cgroup is watched
    /// and its unwind tables are loaded).
    pub(super) fn wait_profiled(&self, pid: u32) -> anyhow::Result<()> {
        let needle = format!("pid={pid} ");
        wait_until(
            &format!("the agent profiles pid {pid}"),
            Duration::from_secs(60),
            Duration::from_millis(50),
            || Ok(self.lines_with(&["profiling page faults", &needle]) > 0),
        )
        .with_context(|| self.log())
    }

    /// `tracerctl pods -o json`.
    pub(super) fn pods(&self) -> anyhow::Result<Value> {
        let output = Command::new(&self.tracerctl)
            .arg("--server")
            .arg(format!("unix:{}", self.socket.display()))
            .args(["pods", "-o", "json"])
            .output()
            .context("run tracerctl")?;
        if !output.status.success() {
            bail!(
                "tracerctl pods failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        json::parse(&String::from_utf8_lossy(&output.stdout)).context("tracerctl pods -o json")
    }

    /// Waits until `pod`'s container is listed with `tracing` set to `mode`.
    pub(super) fn wait_tracing(&self, pod: &FakePod, mode: &str) -> anyhow::Result<()> {
        wait_until(
            &format!("{} is listed as {mode}", pod.display()),
            Duration::from_secs(60),
            Duration::from_millis(200),
            || Ok(container(&self.pods()?, pod).get("tracing").as_str() == Some(mode)),
        )
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        let _ = unsafe { kill(self.child.id() as i32, 15) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

unsafe extern "C" {
    fn kill(pid: i32, signal: i32) -> i32;
}

/// The one container of `pod` in `tracerctl pods` JSON (`Null` when not listed).
pub(super) fn container<'a>(pods: &'a Value, pod: &FakePod) -> &'a Value {
    static NULL: Value = Value::Null;
    pods.get("pods")
        .items()
        .iter()
        .find(|p| {
            p.get("namespace").as_str() == Some(pod.namespace.as_str())
                && p.get("name").as_str() == Some(pod.name.as_str())
        })
        .and_then(|p| p.get("containers").items().first())
        .unwrap_or(&NULL)
}
