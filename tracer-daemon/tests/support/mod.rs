//! Test support: compiles the C workloads, runs them under the real `tracer-daemon` binary and
//! reads its JSON reports. Everything is real: real processes, real probes, real kernel.
#![allow(
    dead_code,
    reason = "each test binary uses a different part of the support code"
)]

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::{
        Arc, Mutex,
        mpsc::{self, Receiver},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use serde_json::Value;

pub(crate) mod agent;
pub(crate) mod cgroupns;
pub(crate) mod docker;
pub(crate) mod faults;
pub(crate) mod links;
pub(crate) mod manifest;
pub(crate) mod node;

/// How long any single wait may take before the test fails with a message.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(30);

/// A free TCP port on loopback.
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// The real-kernel tests need root (CI runs them as root); fail loudly rather than skip.
pub(crate) fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "these tests load BPF programs and must run as root (CI does)"
    );
}

/// Compiles `tests/workloads/<name>.c` (once per test binary) and returns the executable.
pub(crate) fn workload(name: &str) -> PathBuf {
    workload_with(name, &[])
}

/// Like [`workload`] with extra compiler flags (the binary's name carries them).
pub(crate) fn workload_with(name: &str, extra_flags: &[&str]) -> PathBuf {
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    let src_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/workloads");
    let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("workloads");
    std::fs::create_dir_all(&out_dir).expect("create workload dir");
    let suffix: String = extra_flags
        .iter()
        .map(|f| f.replace(['-', '=', '/'], "_"))
        .collect();
    let out = out_dir.join(format!("{name}{suffix}"));
    if built.contains(&out) {
        return out;
    }
    let src = src_dir.join(format!("{name}.c"));
    let tmp = out_dir.join(format!(".{name}{suffix}.{}", std::process::id()));
    let status = Command::new("gcc")
        .args([
            "-O2",
            "-g",
            "-fno-omit-frame-pointer",
            "-fno-optimize-sibling-calls",
            "-pthread",
        ])
        .args(extra_flags)
        .arg("-I")
        .arg(&src_dir)
        .arg("-o")
        .arg(&tmp)
        .arg(&src)
        .status()
        .expect("run gcc");
    assert!(status.success(), "gcc failed on {}", src.display());
    std::fs::rename(&tmp, &out).expect("install workload");
    let _ = built.insert(out.clone());
    out
}

/// Workloads this test binary has built: each is built once, so a test never replaces the
/// executable another test's process is running (its mappings would then name a deleted file,
/// which an agent without CAP_SYS_ADMIN cannot open through /proc/PID/map_files to symbolize).
static BUILT: Mutex<std::collections::BTreeSet<PathBuf>> =
    Mutex::new(std::collections::BTreeSet::new());

/// How a workload is built beyond [`workload`]'s defaults: another compiler (g++, musl-gcc),
/// flags that replace the frame-pointer defaults, libraries linked after the source.
pub(crate) struct Build<'a> {
    /// The source file in tests/workloads.
    pub(crate) source: &'a str,
    /// The compiler driver.
    pub(crate) compiler: &'a str,
    /// Flags before the source (after -O2 -g -pthread).
    pub(crate) flags: &'a [&'a str],
    /// Link arguments after the source.
    pub(crate) libs: &'a [&'a str],
    /// The executable's name (unique per variant).
    pub(crate) output: &'a str,
}

/// Builds a workload as described (once per test binary and name).
pub(crate) fn build_workload(build: &Build<'_>) -> PathBuf {
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    let src_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/workloads");
    let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("workloads");
    std::fs::create_dir_all(&out_dir).expect("create workload dir");
    let out = out_dir.join(build.output);
    if built.contains(&out) {
        return out;
    }
    let src = src_dir.join(build.source);
    let tmp = out_dir.join(format!(".{}.{}", build.output, std::process::id()));
    let output = Command::new(build.compiler)
        .args(["-O2", "-g", "-pthread"])
        .args(build.flags)
        .arg("-I")
        .arg(&src_dir)
        .arg("-o")
        .arg(&tmp)
        .arg(&src)
        .args(build.libs)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {} (cargo xtask setup installs it): {e}",
                build.compiler
            )
        });
    assert!(
        output.status.success(),
        "{} failed on {}: {}",
        build.compiler,
        src.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    std::fs::rename(&tmp, &out).expect("install workload");
    let _ = built.insert(out.clone());
    out
}

/// Lines a child prints, read on a thread.
fn line_reader(stream: impl std::io::Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let _reader = std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// A running C workload speaking the harness protocol.
pub(crate) struct Workload {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    /// Its pid.
    pub(crate) pid: u32,
    /// Extra pids it reported (forked children), in order.
    pub(crate) other_pids: Vec<u32>,
}

impl Workload {
    /// Starts a workload and waits for its "ready".
    pub(crate) fn start(executable: &Path, args: &[&str]) -> Self {
        Self::start_with_env(executable, args, &[])
    }

    /// Like [`Workload::start`] with extra environment variables (e.g. LD_PRELOAD).
    pub(crate) fn start_with_env(executable: &Path, args: &[&str], envs: &[(&str, &str)]) -> Self {
        let mut child = Command::new(executable)
            .args(args)
            .envs(envs.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", executable.display()));
        let stdin = child.stdin.take();
        let lines = line_reader(child.stdout.take().expect("stdout"));
        let pid = child.id();
        let mut workload = Self {
            child,
            stdin,
            lines,
            pid,
            other_pids: Vec::new(),
        };
        let _ = workload.wait_for("ready");
        workload
    }

    /// Waits for a line starting with `word`; returns the rest of the line.
    pub(crate) fn wait_for(&mut self, word: &str) -> String {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("workload {} never printed {word:?}", self.pid));
            if let Some(rest) = line.strip_prefix(word) {
                return rest.trim().to_owned();
            }
            if let Some(pid) = line.strip_prefix("child ") {
                self.other_pids.push(pid.trim().parse().expect("child pid"));
            }
        }
    }

    /// Sends a command line.
    pub(crate) fn send(&mut self, word: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{word}").expect("write to workload");
        stdin.flush().expect("flush workload stdin");
    }

    /// Sends "go" and waits for "done"; returns the wall-clock time (ms) when done was seen.
    pub(crate) fn run_to_done(&mut self) -> u64 {
        self.send("go");
        let _ = self.wait_for("done");
        now_ms()
    }

    /// The last "allocated N" line before the workload died (it is read to the end).
    pub(crate) fn last_allocated_before_death(&mut self) -> u64 {
        let mut last = 0;
        let deadline = Instant::now() + TIMEOUT;
        loop {
            match self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(line) => {
                    if let Some(n) = line.strip_prefix("allocated ") {
                        last = n.trim().parse().expect("allocated N");
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return last,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!("workload {} is still alive", self.pid)
                }
            }
        }
    }

    /// Waits for the workload to die; returns its signal.
    pub(crate) fn wait_killed(&mut self) -> Option<i32> {
        use std::os::unix::process::ExitStatusExt as _;
        self.child.wait().ok().and_then(|s| s.signal())
    }

    /// Lets the workload exit and reaps it.
    pub(crate) fn finish(mut self) {
        self.send("exit");
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Wall clock, ms since the epoch (the reports' clock).
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64
}

/// The daemon binary under test.
pub(crate) fn daemon_binary() -> &'static str {
    env!("CARGO_BIN_EXE_tracer-daemon")
}

/// The tracerctl binary, beside the daemon's. It is its own package (`tracerctl/`), so cargo
/// gives these tests no `CARGO_BIN_EXE_tracerctl`. `cargo test` at the workspace root builds
/// it (tracerctl's own integration test needs it); `cargo test -p tracer-daemon` does not.
pub(crate) fn tracerctl_binary() -> PathBuf {
    let path = Path::new(daemon_binary()).with_file_name("tracerctl");
    assert!(
        path.is_file(),
        "tracerctl is not built at {}: it is its own package, which `cargo test -p \
         tracer-daemon` does not build; run `cargo build -p tracerctl` first (or `cargo test` \
         at the workspace root, which builds both)",
        path.display()
    );
    path
}

/// A running `tracer-daemon trace --json`.
pub(crate) struct Trace {
    child: Child,
    reports: Receiver<String>,
    stderr: Arc<Mutex<String>>,
}

impl Trace {
    /// Starts tracing these pids with a short interval, and waits until the probes are
    /// attached (the daemon logs it).
    pub(crate) fn start(pids: &[u32], extra: &[&str]) -> Self {
        let mut cmd = Command::new(daemon_binary());
        let _ = cmd.args(["trace", "--json"]);
        if !extra.contains(&"--interval") {
            let _ = cmd.args(["--interval", "200ms"]);
        }
        for pid in pids {
            let _ = cmd.arg("--pid").arg(pid.to_string());
        }
        let mut child = cmd
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tracer-daemon");
        let reports = line_reader(child.stdout.take().expect("stdout"));
        let stderr = Arc::new(Mutex::new(String::new()));
        let stderr_lines = line_reader(child.stderr.take().expect("stderr"));
        let sink = Arc::clone(&stderr);
        let _collector = std::thread::spawn(move || {
            for line in stderr_lines {
                eprintln!("[tracer] {line}");
                let mut text = sink.lock().unwrap_or_else(|e| e.into_inner());
                text.push_str(&line);
                text.push('\n');
            }
        });
        let mut trace = Self {
            child,
            reports,
            stderr,
        };
        let deadline = Instant::now() + TIMEOUT;
        while !trace.stderr().contains("attached; first report") {
            if let Ok(Some(status)) = trace.child.try_wait() {
                panic!(
                    "tracer-daemon exited with {status}; stderr:\n{}",
                    trace.stderr()
                );
            }
            assert!(
                Instant::now() < deadline,
                "tracer never attached; stderr:\n{}",
                trace.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        trace
    }

    /// The next report.
    pub(crate) fn next_report(&mut self) -> Value {
        match self.reports.recv_timeout(TIMEOUT) {
            Ok(line) => serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("report is not JSON ({e}): {line}")),
            Err(_) => panic!("no report from tracer-daemon; stderr:\n{}", self.stderr()),
        }
    }

    /// The first report whose data was read at or after `time_ms`.
    pub(crate) fn report_after(&mut self, time_ms: u64) -> Value {
        loop {
            let report = self.next_report();
            if report["timestamp_unix_ms"].as_u64().expect("timestamp") >= time_ms {
                return report;
            }
        }
    }

    /// Waits until the tracer's log contains `text`.
    pub(crate) fn wait_stderr(&self, text: &str) {
        self.wait_stderr_count(text, 1);
    }

    /// Waits until the tracer's log contains `text` at least `count` times.
    pub(crate) fn wait_stderr_count(&self, text: &str, count: usize) {
        let deadline = Instant::now() + TIMEOUT;
        while self.stderr().matches(text).count() < count {
            assert!(
                Instant::now() < deadline,
                "tracer never logged {text:?} x{count}:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything the tracer wrote to stderr so far.
    pub(crate) fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits for the tracer to exit by itself; returns the reports it printed last.
    pub(crate) fn wait_exit(mut self) -> (std::process::ExitStatus, Vec<Value>) {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait tracer") {
                std::thread::sleep(Duration::from_millis(50));
                let rest = self
                    .reports
                    .try_iter()
                    .map(|line| serde_json::from_str(&line).expect("report JSON"))
                    .collect();
                return (status, rest);
            }
            assert!(
                Instant::now() < deadline,
                "tracer did not exit; stderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Trace {
    fn drop(&mut self) {
        // SAFETY: kill on our own child's pid.
        let _ = unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A process's entry in a report.
pub(crate) fn process(report: &Value, pid: u32) -> &Value {
    report["processes"]
        .as_array()
        .expect("processes")
        .iter()
        .find(|p| p["pid"].as_u64() == Some(u64::from(pid)))
        .unwrap_or_else(|| panic!("pid {pid} not in report: {report:#}"))
}

/// The function names of a stack, innermost first.
pub(crate) fn functions(stack: &Value) -> Vec<String> {
    stack["frames"]
        .as_array()
        .expect("frames")
        .iter()
        .map(|f| f["function"].as_str().unwrap_or("?").to_owned())
        .collect()
}

/// The stacks of a process whose innermost frame is `function`.
pub(crate) fn stacks_from<'a>(report: &'a Value, pid: u32, function: &str) -> Vec<&'a Value> {
    process(report, pid)["stacks"]
        .as_array()
        .expect("stacks")
        .iter()
        .filter(|s| functions(s).first().map(String::as_str) == Some(function))
        .collect()
}

/// The one stack of a process whose innermost frame is `function` (fails otherwise).
pub(crate) fn stack_from<'a>(report: &'a Value, pid: u32, function: &str) -> &'a Value {
    let stacks = stacks_from(report, pid, function);
    assert_eq!(
        stacks.len(),
        1,
        "expected one stack from {function} in pid {pid}: {report:#}"
    );
    stacks[0]
}

/// (bytes, count) of a stack.
pub(crate) fn bytes_count(stack: &Value) -> (u64, u64) {
    (
        stack["bytes"].as_u64().expect("bytes"),
        stack["count"].as_u64().expect("count"),
    )
}

/// (bytes, count) summed over the stacks of a process whose innermost frame is `function`.
pub(crate) fn function_totals(report: &Value, pid: u32, function: &str) -> (u64, u64) {
    stacks_from(report, pid, function)
        .into_iter()
        .map(bytes_count)
        .fold((0, 0), |(b, c), (sb, sc)| (b + sb, c + sc))
}

/// Runs `tracer-daemon` with these arguments to completion; returns (exit code, stderr).
pub(crate) fn run_daemon(args: &[&str], envs: &[(&str, &str)]) -> (Option<i32>, String) {
    let output = Command::new(daemon_binary())
        .args(args)
        .envs(envs.iter().copied())
        .output()
        .expect("run tracer-daemon");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A Go program built here from `main_go` (Debian's golang-go, installed by `cargo xtask
/// setup`), in its own directory under the test target dir.
pub(crate) fn go_program(name: &str, main_go: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join("main.go"), main_go).expect("write main.go");
    std::fs::write(dir.join("go.mod"), format!("module {name}\n\ngo 1.19\n")).expect("go.mod");
    let program = dir.join(name);
    let built = Command::new("go")
        .args(["build", "-o"])
        .arg(&program)
        .arg(".")
        .current_dir(&dir)
        .env("GOCACHE", dir.join("cache"))
        .env("GOFLAGS", "-mod=mod")
        .env("GOTOOLCHAIN", "local")
        .status()
        .expect("run go build (golang-go is installed by cargo xtask setup)");
    assert!(built.success(), "go build failed");
    program
}
