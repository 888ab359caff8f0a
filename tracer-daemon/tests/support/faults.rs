//! Fault injection and what it leaves behind: a kill -9 that keeps the daemon's log, what the
//! kernel still holds for a daemon (its BPF programs, links and maps, seen through /proc and
//! bpftool), the daemon's resident memory and Prometheus figures, and raw gRPC requests that
//! tonic's typed clients cannot send (bad frames, bad protobuf).

use std::{
    collections::BTreeSet,
    io::{Read as _, Write as _},
    net::SocketAddr,
    os::unix::net::UnixStream,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use hyper_util::rt::TokioIo;
use serde_json::Value;
use tonic::transport::{Channel, Endpoint, Uri};

use super::{
    TIMEOUT,
    agent::Agent,
    node::{Driver, FakePod},
};

/// An agent killed with SIGKILL.
pub(crate) struct Killed {
    /// Everything it logged up to its death.
    pub(crate) log: String,
    /// From the signal to the process being dead (a zombie): the kernel closes its descriptors,
    /// and so detaches its probes, in that time.
    pub(crate) teardown: Duration,
}

/// Kills the agent with SIGKILL, keeping its log; its state directory is kept for the next
/// agent.
pub(crate) fn kill_9_keeping_log(agent: Agent) -> Killed {
    let pid = agent.pid();
    let start = Instant::now();
    // SAFETY: signalling our own child, which is not reaped yet (its pid cannot be reused).
    let _ = unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    // Dead but not reaped: a zombie. Only `kill_9` below reaps it.
    let deadline = Instant::now() + TIMEOUT;
    while process_state(pid) != Some('Z') {
        assert!(Instant::now() < deadline, "agent {pid} survived SIGKILL");
        std::thread::sleep(Duration::from_millis(1));
    }
    let teardown = start.elapsed();
    // The log pipe is closed now; its reader thread needs a moment to take the rest.
    std::thread::sleep(Duration::from_millis(200));
    let log = agent.stderr();
    agent.kill_9();
    Killed { log, teardown }
}

/// A process's state letter (R, S, Z, ...) from /proc/PID/stat.
pub(crate) fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain anything: the state follows the last ')'.
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// Whether a pid names a live (non-zombie) process.
pub(crate) fn is_alive(pid: u32) -> bool {
    process_state(pid).is_some_and(|state| state != 'Z' && state != 'X')
}

/// A process's resident set size (VmRSS), KiB.
pub(crate) fn vm_rss_kib(pid: u32) -> u64 {
    read_vm_rss_kib(pid).unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"))
}

/// VmRSS, KiB, or `None` when the process is gone (or a zombie, which has no VmRSS).
fn read_vm_rss_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

/// BPF objects a process holds descriptors to (what the kernel frees when it dies).
#[derive(Clone, Debug, Default)]
pub(crate) struct BpfObjects {
    /// Program ids.
    pub(crate) programs: BTreeSet<u64>,
    /// Link ids (uprobes, uprobe sessions, the OOM hook).
    pub(crate) links: BTreeSet<u64>,
    /// Map ids.
    pub(crate) maps: BTreeSet<u64>,
    /// perf_event descriptors (one per classic uprobe).
    pub(crate) perf_events: usize,
}

/// What `pid` holds, from its descriptors: /proc/PID/fd says what each is, fdinfo its id.
pub(crate) fn bpf_objects_of(pid: u32) -> BpfObjects {
    let mut objects = BpfObjects::default();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap_or_else(|e| panic!("list /proc/{pid}/fd: {e}"));
    for fd in fds.flatten() {
        let Ok(target) = std::fs::read_link(fd.path()) else {
            continue;
        };
        let target = target.display().to_string();
        let field = |name: &str| -> Option<u64> {
            let info = std::fs::read_to_string(format!(
                "/proc/{pid}/fdinfo/{}",
                fd.file_name().to_string_lossy()
            ))
            .ok()?;
            info.lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|value| value.trim().parse().ok())
        };
        match target.as_str() {
            "anon_inode:bpf-prog" => objects.programs.extend(field("prog_id:")),
            "anon_inode:bpf-link" | "anon_inode:bpf_link" => {
                objects.links.extend(field("link_id:"));
            }
            "anon_inode:bpf-map" => objects.maps.extend(field("map_id:")),
            "anon_inode:[perf_event]" => objects.perf_events += 1,
            _ => {}
        }
    }
    objects
}

/// Ids `bpftool -j KIND show` lists (KIND: prog, link or map), with each object's JSON.
pub(crate) fn bpftool_list(kind: &str) -> Vec<(u64, Value)> {
    let output = Command::new("bpftool")
        .args(["-j", kind, "show"])
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run bpftool ({e}): install Debian's `bpftool` package (it is not in \
                 `cargo xtask setup`'s APT_PACKAGES yet)"
            )
        });
    assert!(
        output.status.success(),
        "bpftool {kind} show failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let list: Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("bpftool {kind} show -j is not JSON ({e})"));
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|object| Some((object["id"].as_u64()?, object.clone())))
        .collect()
}

/// The ids of `objects` that bpftool still lists, per kind.
pub(crate) fn still_listed(objects: &BpfObjects) -> Vec<String> {
    let mut left = Vec::new();
    for (kind, ids) in [
        ("prog", &objects.programs),
        ("link", &objects.links),
        ("map", &objects.maps),
    ] {
        for (id, object) in bpftool_list(kind) {
            if ids.contains(&id) {
                left.push(format!("{kind} {id}: {object}"));
            }
        }
    }
    left
}

/// Waits until bpftool lists none of `objects`; returns how long that took.
pub(crate) fn wait_released(objects: &BpfObjects) -> Duration {
    let start = Instant::now();
    loop {
        let left = still_listed(objects);
        if left.is_empty() {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < TIMEOUT,
            "the kernel still holds the killed daemon's BPF objects:\n{}",
            left.join("\n")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Lines of tracefs's uprobe_events that a daemon with this pid created (aya names them
/// `aya_<pid>_...` when it falls back to tracefs), or `None` when tracefs is not mounted.
pub(crate) fn tracefs_uprobe_events_of(pid: u32) -> Option<Vec<String>> {
    ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .iter()
        .find_map(|dir| std::fs::read_to_string(Path::new(dir).join("uprobe_events")).ok())
        .map(|events| {
            events
                .lines()
                .filter(|line| line.contains(&format!("aya_{pid}_")))
                .map(str::to_owned)
                .collect()
        })
}

/// The agent's Prometheus address, from its log (start it with `--metrics 127.0.0.1:0`).
pub(crate) fn metrics_address(agent: &Agent) -> SocketAddr {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let log = agent.stderr();
        if let Some(addr) = log
            .lines()
            .filter(|line| line.contains("serving Prometheus metrics"))
            .find_map(|line| {
                line.split_whitespace()
                    .find_map(|w| w.strip_prefix("addr="))
            })
        {
            return addr.parse().expect("metrics address");
        }
        assert!(
            Instant::now() < deadline,
            "the agent never served metrics:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One scrape of `/metrics` (OpenMetrics text).
pub(crate) fn scrape(addr: SocketAddr) -> String {
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to metrics");
    stream
        .set_read_timeout(Some(TIMEOUT))
        .expect("metrics timeout");
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("send scrape");
    let mut response = String::new();
    let _ = stream
        .read_to_string(&mut response)
        .expect("read metrics response");
    assert!(
        response.starts_with("HTTP/1.1 200"),
        "metrics scrape failed: {response}"
    );
    let body = response
        .split_once("\r\n\r\n")
        .map_or("", |(_, body)| body)
        .to_owned();
    // axum answers with a fixed length here; a chunked body would have size lines between.
    assert!(
        body.contains("# EOF"),
        "unexpected metrics body (chunked?): {body}"
    );
    body
}

/// A sample's value: `series` is the name with its labels exactly as printed, e.g.
/// `tracer_map_entries{map="stack_totals"}`.
pub(crate) fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok())?
        })
        .unwrap_or_else(|| panic!("no {series} in metrics:\n{text}"))
}

/// Evidence ids the daemon logged as saved (logged only after the commit returned).
pub(crate) fn acknowledged_evidence(log: &str) -> Vec<u64> {
    log.lines()
        .filter(|line| line.contains("evidence saved"))
        .filter_map(|line| {
            line.split_whitespace()
                .find_map(|word| word.strip_prefix("evidence="))
                .and_then(|id| id.parse().ok())
        })
        .collect()
}

/// A pod whose containers have a memory limit of `limit_bytes`.
pub(crate) fn memory_limited_pod(
    root: &Path,
    namespace: &str,
    name: &str,
    container: &str,
    limit_bytes: u64,
) -> FakePod {
    let pod = FakePod::create(
        namespace,
        name,
        Driver::Systemd,
        "burstable",
        &[container],
        &root.join("pods"),
        &root.join("containers"),
    );
    pod.limit_memory(container, limit_bytes);
    pod
}

/// A tonic channel over the agent's Unix socket (one HTTP/2 connection).
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

/// One gRPC frame: the compression flag, the big-endian length, the message bytes. A `String`
/// is the only request body tonic takes without more crates, so every byte must be ASCII.
pub(crate) fn grpc_frame(compressed: u8, length: u32, message: &[u8]) -> String {
    let mut frame = vec![compressed];
    frame.extend(length.to_be_bytes());
    frame.extend(message);
    String::from_utf8(frame).expect("a frame of ASCII bytes only (each below 0x80)")
}

/// Sends `body` as-is to `/tracer.v1.LeakTracer/METHOD` with these extra headers; returns the
/// grpc-status (from the headers of a trailers-only answer, else from the trailers) and the
/// grpc-message.
pub(crate) async fn raw_call(
    channel: &Channel,
    method: &str,
    content_type: &str,
    body: String,
) -> (tonic::Code, String) {
    use tonic::codegen::{Body as _, http};
    use tower::ServiceExt as _;

    let request = http::Request::builder()
        .method("POST")
        .uri(format!("http://localhost/tracer.v1.LeakTracer/{method}"))
        .header("content-type", content_type)
        .header("te", "trailers")
        .body(tonic::body::Body::new(body))
        .expect("request");
    let response = channel
        .clone()
        .oneshot(request)
        .await
        .unwrap_or_else(|e| panic!("transport failure on a raw {method} call: {e}"));
    let (parts, mut body) = response.into_parts();
    let status_of = |headers: &http::HeaderMap| {
        headers.get("grpc-status").map(|code| {
            (
                tonic::Code::from_bytes(code.as_bytes()),
                headers
                    .get("grpc-message")
                    .map(|m| String::from_utf8_lossy(m.as_bytes()).into_owned())
                    .unwrap_or_default(),
            )
        })
    };
    if let Some(status) = status_of(&parts.headers) {
        return status;
    }
    loop {
        let frame = std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await;
        match frame {
            Some(Ok(frame)) => {
                if let Some(status) = frame.trailers_ref().and_then(&status_of) {
                    return status;
                }
            }
            Some(Err(status)) => return (status.code(), status.message().to_owned()),
            None => panic!("raw {method} call ended without a grpc-status"),
        }
    }
}

/// Writes `bytes` on a fresh connection to the socket and waits for the server to close it;
/// returns how long that took, or `None` if it was still open after `patience`.
pub(crate) fn garbage_connection(
    socket: &Path,
    bytes: &[u8],
    patience: Duration,
) -> Option<Duration> {
    let mut stream = UnixStream::connect(socket).expect("connect to the agent socket");
    let start = Instant::now();
    stream.write_all(bytes).expect("write garbage");
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .expect("read timeout");
    let mut buffer = [0u8; 4096];
    while start.elapsed() < patience {
        match stream.read(&mut buffer) {
            Ok(0) => return Some(start.elapsed()),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return Some(start.elapsed()),
        }
    }
    None
}

/// The highest VmRSS of a process, sampled every 50 ms on a thread until [`PeakRss::stop`]
/// (or drop).
pub(crate) struct PeakRss {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    sampler: Option<std::thread::JoinHandle<u64>>,
}

impl PeakRss {
    /// Starts sampling `pid`.
    pub(crate) fn start(pid: u32) -> Self {
        use std::sync::{Arc, atomic::AtomicBool};
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let sampler = std::thread::spawn(move || {
            let mut peak = 0;
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(read_vm_rss_kib(pid).unwrap_or(0));
                std::thread::sleep(Duration::from_millis(50));
            }
            peak
        });
        Self {
            stop,
            sampler: Some(sampler),
        }
    }

    /// Stops sampling; returns the peak, KiB.
    pub(crate) fn stop(mut self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.sampler
            .take()
            .map_or(0, |sampler| sampler.join().expect("RSS sampler"))
    }
}

impl Drop for PeakRss {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Round-trip times of ListTargets through its own connection, one call every `every` on a
/// thread, until [`LatencyProbe::stop`] or drop: how long a client waits for the agent.
pub(crate) struct LatencyProbe {
    state: std::sync::Arc<std::sync::Mutex<ProbeState>>,
    prober: Option<std::thread::JoinHandle<()>>,
}

#[derive(Default)]
struct ProbeState {
    stop: bool,
    times: Vec<Duration>,
    in_flight_since: Option<Instant>,
}

impl LatencyProbe {
    /// Starts probing the agent at `socket`.
    pub(crate) fn start(socket: &Path, every: Duration) -> Self {
        use tracer_proto::v1::{ListTargetsRequest, leak_tracer_client::LeakTracerClient};
        let state = std::sync::Arc::new(std::sync::Mutex::new(ProbeState::default()));
        let shared = std::sync::Arc::clone(&state);
        let socket = socket.to_owned();
        let prober = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async {
                let mut client = LeakTracerClient::new(channel(&socket).await);
                loop {
                    let sent = Instant::now();
                    {
                        let mut state = shared.lock().unwrap_or_else(|e| e.into_inner());
                        if state.stop {
                            return;
                        }
                        state.in_flight_since = Some(sent);
                    }
                    // An error (a deadline passed) is an answer too: its time is what counts.
                    let _ = client.list_targets(ListTargetsRequest {}).await;
                    {
                        let mut state = shared.lock().unwrap_or_else(|e| e.into_inner());
                        state.in_flight_since = None;
                        state.times.push(sent.elapsed());
                    }
                    tokio::time::sleep(every).await;
                }
            });
        });
        Self {
            state,
            prober: Some(prober),
        }
    }

    /// The longest wait so far, counting the call still in flight: (calls answered, longest).
    pub(crate) fn worst(&self) -> (usize, Duration) {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let answered = state.times.iter().max().copied().unwrap_or_default();
        let waiting = state
            .in_flight_since
            .map(|t| t.elapsed())
            .unwrap_or_default();
        (state.times.len(), answered.max(waiting))
    }

    /// Stops probing, waiting for the call in flight; returns every round-trip time.
    pub(crate) fn stop(mut self) -> Vec<Duration> {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).stop = true;
        if let Some(prober) = self.prober.take() {
            prober.join().expect("latency prober");
        }
        std::mem::take(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()).times)
    }
}

impl Drop for LatencyProbe {
    fn drop(&mut self) {
        // The thread ends after its call in flight; nobody waits for it.
        self.state.lock().unwrap_or_else(|e| e.into_inner()).stop = true;
    }
}

/// Per process (tgid), how many stack slots (`STACK_SLOTS` entries) and outstanding allocations
/// (`ALLOCS` entries) the agent's maps hold, read with bpftool from the maps the agent has open.
/// Both maps' keys start with the tgid (tracer-common's `StackKey` and `AllocKey`).
pub(crate) fn records_by_process(agent_pid: u32) -> std::collections::BTreeMap<u32, (u64, u64)> {
    let held = bpf_objects_of(agent_pid);
    let mut records = std::collections::BTreeMap::new();
    for (id, map) in bpftool_list("map") {
        let column = match map["name"].as_str() {
            Some("STACK_SLOTS") => 0,
            Some("ALLOCS") => 1,
            _ => continue,
        };
        if !held.maps.contains(&id) {
            continue;
        }
        let output = Command::new("bpftool")
            .args(["-j", "map", "dump", "id", &id.to_string()])
            .output()
            .expect("run bpftool map dump");
        let entries: Value = serde_json::from_slice(&output.stdout)
            .unwrap_or_else(|e| panic!("bpftool map dump id {id} is not JSON ({e})"));
        for entry in entries.as_array().into_iter().flatten() {
            let bytes: Vec<u8> = entry["key"]
                .as_array()
                .into_iter()
                .flatten()
                .take(4)
                .filter_map(|b| u8::from_str_radix(b.as_str()?.trim_start_matches("0x"), 16).ok())
                .collect();
            let Ok(tgid) = <[u8; 4]>::try_from(bytes) else {
                continue;
            };
            let counts: &mut (u64, u64) = records.entry(u32::from_le_bytes(tgid)).or_default();
            if column == 0 {
                counts.0 += 1;
            } else {
                counts.1 += 1;
            }
        }
    }
    records
}
