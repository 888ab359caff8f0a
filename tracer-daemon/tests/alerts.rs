//! The shipped alert rules end to end, with real servers: the agent watches a leaking pod in a
//! memory-limited cgroup (not traced: escalation is off, so its top call site comes from the
//! growth profile) and a cache that levels off (traced exactly on request, so its top site comes
//! from the exact report); Debian's Prometheus scrapes it every
//! second and evaluates deploy/prometheus/rules.yaml (only the `for:` durations shortened);
//! Debian's Alertmanager delivers to a webhook receiver in this test. The leak's alerts arrive
//! while the kernel has not OOM-killed it (its cgroup's `oom_kill` count is 0 and it answers),
//! with the pod's labels and the leaking function in the annotation; only then is it told to
//! leak fast, and the kernel kills it. The cache never fires. Every PromQL expression of the
//! Grafana dashboard and the README's fleet queries runs against that Prometheus and returns
//! data.

mod support;

use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::Value;
use support::{agent::*, faults::memory_limited_pod, manifest::workspace_root, node::*, *};

const MIB: u64 = 1 << 20;
/// The leaker's limit: at 256 KiB every 100 ms it would take about 50 s to reach it.
const LIMIT: u64 = 128 * MIB;
/// Every rule's `for:` in the test's copy (the cache grows for 8 s, then holds).
const FOR: &str = "12s";
/// Deliveries the webhook keeps (the receiver is bounded like every listener).
const MAX_DELIVERIES: usize = 1000;
/// How long the leak may take to be alerted on.
const ALERT_DEADLINE: Duration = Duration::from_secs(90);

/// A server process killed (and reaped) on drop, even when the test panics.
struct Server {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Server {
    fn start(name: &'static str, program: &str, args: &[String], dir: &Path) -> Self {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).expect("server log");
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log fd"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {program} (`cargo xtask setup` installs it): {e}")
            });
        Self { name, child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `GET /-/ready` answers 200.
    fn wait_ready(&mut self, port: u16) {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{} exited ({status}):\n{}", self.name, self.log());
            }
            if http_get(port, "/-/ready").is_some_and(|(code, _)| code == 200) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} never ready:\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET path` over HTTP/1.0 (so no chunked body): (status, body), `None` when unreachable.
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(TIMEOUT)).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.to_owned()))
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// An instant query through Prometheus's HTTP API; fails the test unless it parses and runs.
fn query(port: u16, promql: &str) -> Vec<Value> {
    let (code, body) = http_get(
        port,
        &format!("/api/v1/query?query={}", percent_encode(promql)),
    )
    .expect("Prometheus answers");
    let value: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert!(
        code == 200 && value["status"] == "success",
        "query failed ({code}): {promql}\n{body}"
    );
    value["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Alertmanager's webhook deliveries as they arrive: (wall-clock ms, the JSON body).
type Deliveries = Arc<Mutex<Vec<(u64, Value)>>>;

/// A webhook receiver on 127.0.0.1: one request per connection, the body kept (at most
/// [`MAX_DELIVERIES`]), 200 answered.
fn webhook() -> (u16, Deliveries) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the webhook");
    let port = listener.local_addr().expect("address").port();
    let deliveries: Deliveries = Arc::default();
    let kept = Arc::clone(&deliveries);
    let _ = std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            if let Some(body) = read_request(stream) {
                let mut kept = kept.lock().expect("deliveries");
                if kept.len() < MAX_DELIVERIES {
                    kept.push((now_ms(), body));
                }
            }
        }
    });
    (port, deliveries)
}

fn read_request(mut stream: TcpStream) -> Option<Value> {
    stream.set_read_timeout(Some(TIMEOUT)).ok()?;
    let mut bytes = Vec::new();
    let mut buffer = [0_u8; 8192];
    let (head_end, length) = loop {
        let n = stream.read(&mut buffer).ok()?;
        if n == 0 || bytes.len() > 1 << 20 {
            return None;
        }
        bytes.extend_from_slice(&buffer[..n]);
        if let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&bytes[..end]).to_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())?;
            break (end + 4, length);
        }
    };
    while bytes.len() < head_end + length {
        let n = stream.read(&mut buffer).ok()?;
        if n == 0 {
            return None;
        }
        bytes.extend_from_slice(&buffer[..n]);
    }
    let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    serde_json::from_slice(&bytes[head_end..head_end + length]).ok()
}

/// Firing alerts delivered so far for `namespace/pod`: (delivery ms, the alert).
fn delivered(deliveries: &Deliveries, namespace: &str, pod: &str) -> Vec<(u64, Value)> {
    deliveries
        .lock()
        .expect("deliveries")
        .iter()
        .flat_map(|(at, body)| {
            body["alerts"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(move |alert| (*at, alert))
        })
        .filter(|(_, alert)| {
            alert["status"] == "firing"
                && alert["labels"]["namespace"] == namespace
                && alert["labels"]["pod"] == pod
        })
        .collect()
}

/// The shipped rules with every `for:` set to [`FOR`]; the expressions are untouched.
fn rules_for_test() -> String {
    let shipped = std::fs::read_to_string(workspace_root().join("deploy/prometheus/rules.yaml"))
        .expect("read deploy/prometheus/rules.yaml");
    let mut changed = 0;
    let text: Vec<String> = shipped
        .lines()
        .map(|line| match line.split_once("for: ") {
            Some((indent, _)) if indent.trim().is_empty() => {
                changed += 1;
                format!("{indent}for: {FOR}")
            }
            _ => line.to_owned(),
        })
        .collect();
    assert!(changed >= 3, "the rules lost their `for:` durations");
    text.join("\n") + "\n"
}

/// The kernel's OOM kills in a container's memory cgroup (`oom_kill` in memory.events on v2,
/// memory.oom_control on v1).
fn oom_kills(pod: &FakePod) -> u64 {
    let file = if pod.memory_is_v1() {
        "memory.oom_control"
    } else {
        "memory.events"
    };
    let path = pod.memory_dir("app").join(file);
    let events =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    events
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|v| v.trim().parse().ok())
        .expect("oom_kill in memory.events")
}

/// Every `expr` in the dashboard JSON (panels, rows' panels), its variables given values.
fn dashboard_expressions() -> Vec<String> {
    fn walk(value: &Value, found: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                for (key, child) in map {
                    match (key.as_str(), child) {
                        ("expr", Value::String(expr)) => found.push(expr.clone()),
                        _ => walk(child, found),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|item| walk(item, found)),
            _ => {}
        }
    }
    let path = workspace_root().join("deploy/grafana/dashboard.json");
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("read the dashboard"))
            .expect("the dashboard is JSON");
    let mut found = Vec::new();
    walk(&dashboard["panels"], &mut found);
    // The variables' label_values(SELECTOR, LABEL): the selector is PromQL too.
    for variable in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let Some(inner) = variable["query"]["query"]
            .as_str()
            .and_then(|q| q.strip_prefix("label_values("))
            .and_then(|q| q.rsplit_once(','))
            .map(|(selector, _)| selector.to_owned())
        {
            found.push(inner);
        }
    }
    found
        .into_iter()
        .map(|expr| {
            expr.replace("$__rate_interval", "1m")
                .replace("$node", ".+")
                .replace("$namespace", ".+")
        })
        .collect()
}

/// The README's fleet queries: its ```promql blocks, in order.
fn readme_queries() -> Vec<String> {
    let readme = std::fs::read_to_string(workspace_root().join("README.md")).expect("README");
    readme
        .split("```promql\n")
        .skip(1)
        .map(|block| block.split("```").next().unwrap_or("").trim().to_owned())
        .collect()
}

#[test]
fn a_leak_is_alerted_before_its_oom_kill_and_a_cache_that_levels_off_is_not() {
    require_root();
    let root = temp_root("alerts");
    let namespace = format!("alerts-{}", std::process::id());
    let node = format!("node-{}", std::process::id());
    let leaky = memory_limited_pod(&root, &namespace, "leaky-0", "app", LIMIT);
    let cache_pod = memory_limited_pod(&root, &namespace, "cache-0", "app", LIMIT);
    let mut leaker = Workload::start(&workload("pod_leak"), &["leak", "100"]);
    leaky.place(leaker.pid, "app");
    let mut cache = Workload::start(&workload("pod_leak"), &["cache", "24", "8"]);
    cache_pod.place(cache.pid, "app");

    let metrics_port = free_port();
    // Untraced, the leak is named by the growth profile; the cache is traced on request.
    let config = root.join("tracer.toml");
    std::fs::write(&config, "[escalation]\nenabled = false\n").expect("config");
    let args = [
        "--config".to_owned(),
        config.display().to_string(),
        "--state-dir".to_owned(),
        root.join("state").display().to_string(),
        "--memory-watch-interval".to_owned(),
        "50ms".to_owned(),
        "--metrics".to_owned(),
        format!("127.0.0.1:{metrics_port}"),
        "--node-name".to_owned(),
        node.clone(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let agent = Agent::start(&root, &args);

    // Alertmanager delivering at once to the webhook; Prometheus scraping every second.
    let (hook_port, deliveries) = webhook();
    let servers = root.join("servers");
    std::fs::create_dir_all(&servers).expect("mkdir");
    let am_port = free_port();
    std::fs::write(
        servers.join("alertmanager.yml"),
        format!(
            "route:\n  receiver: hook\n  group_by: [alertname, namespace, pod, container]\n  \
             group_wait: 0s\n  group_interval: 1s\n  repeat_interval: 1h\nreceivers:\n  - name: hook\n    \
             webhook_configs:\n      - url: http://127.0.0.1:{hook_port}/alerts\n        send_resolved: false\n"
        ),
    )
    .expect("write alertmanager.yml");
    let mut alertmanager = Server::start(
        "alertmanager",
        "prometheus-alertmanager",
        &[
            format!(
                "--config.file={}",
                servers.join("alertmanager.yml").display()
            ),
            format!("--storage.path={}", servers.join("am-data").display()),
            format!("--web.listen-address=127.0.0.1:{am_port}"),
            "--cluster.listen-address=".to_owned(),
        ],
        &servers,
    );
    std::fs::write(servers.join("rules.yaml"), rules_for_test()).expect("write rules");
    let prometheus_port = free_port();
    std::fs::write(
        servers.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - rules.yaml\n\
             alerting:\n  alertmanagers:\n    - static_configs:\n        - targets: ['127.0.0.1:{am_port}']\n\
             scrape_configs:\n  - job_name: leak-tracer\n    honor_labels: true\n    \
             static_configs:\n      - targets: ['127.0.0.1:{metrics_port}']\n"
        ),
    )
    .expect("write prometheus.yml");
    let mut prometheus = Server::start(
        "prometheus",
        "prometheus",
        &[
            format!("--config.file={}", servers.join("prometheus.yml").display()),
            format!("--storage.tsdb.path={}", servers.join("tsdb").display()),
            format!("--web.listen-address=127.0.0.1:{prometheus_port}"),
        ],
        &servers,
    );
    alertmanager.wait_ready(am_port);
    prometheus.wait_ready(prometheus_port);

    agent.wait_profiled(leaker.pid);
    agent.wait_profiled(cache.pid);
    let (code, _, stderr) = agent.ctl(&["trace", "start", &cache_pod.display()]);
    assert_eq!(code, Some(0), "{stderr}");
    agent.wait_traced(&[cache.pid]);
    let started = Instant::now();
    leaker.send("go");
    cache.send("go");
    let _ = leaker.wait_for("started");
    let _ = cache.wait_for("started");

    // Both leak alerts for the leaker, while the kernel has not killed it.
    let wanted = ["ContainerMemoryWillHitLimit", "ContainerLeakingSteadily"];
    let deadline = Instant::now() + ALERT_DEADLINE;
    let alerts = loop {
        let kills = oom_kills(&leaky);
        let alerts = delivered(&deliveries, &namespace, "leaky-0");
        if wanted.iter().all(|name| {
            alerts
                .iter()
                .any(|(_, a)| a["labels"]["alertname"] == *name)
        }) {
            // The kernel's count read after the deliveries were: 0 means no kill before them.
            assert_eq!(
                kills, 0,
                "OOM-killed before the alerts arrived: {alerts:#?}"
            );
            break alerts;
        }
        assert_eq!(
            kills,
            0,
            "the kernel OOM-killed the leaker before the alerts arrived (after {:?}); delivered: \
             {alerts:#?}\nALERTS: {:#?}\nprometheus:\n{}",
            started.elapsed(),
            query(prometheus_port, "ALERTS"),
            prometheus.log()
        );
        assert!(
            Instant::now() < deadline,
            "no alerts within {ALERT_DEADLINE:?}: {alerts:#?}\nALERTS: {:#?}\nseries: {:#?}\n{}",
            query(prometheus_port, "ALERTS"),
            query(
                prometheus_port,
                r#"{__name__=~"tracer:.*|tracer_container_trend|tracer_container_top_site_info"}"#
            ),
            alertmanager.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let alerted_after = started.elapsed();
    // Still alive and leaking: it answers.
    leaker.send("count");
    let _ = leaker.wait_for("leaked");
    assert_eq!(oom_kills(&leaky), 0);
    for name in wanted {
        let (_, alert) = alerts
            .iter()
            .find(|(_, a)| a["labels"]["alertname"] == name)
            .expect("delivered");
        let labels = &alert["labels"];
        assert_eq!(labels["namespace"], namespace.as_str(), "{alert:#}");
        assert_eq!(labels["pod"], "leaky-0", "{alert:#}");
        assert_eq!(labels["container"], "app", "{alert:#}");
        assert_eq!(labels["node"], node.as_str(), "{alert:#}");
        let annotations = &alert["annotations"];
        let site = annotations["top_call_site"].as_str().unwrap_or("");
        assert_eq!(site, "leak_records (growth_profile)", "{alert:#}");
        let rate = annotations["leak_rate"].as_str().unwrap_or("");
        assert!(rate.ends_with("B/s") && !rate.starts_with('0'), "{alert:#}");
        let time = annotations["time_to_limit"].as_str().unwrap_or("");
        assert!(time.ends_with('s') && time != "no limit", "{alert:#}");
        let command = annotations["command"].as_str().unwrap_or("");
        assert!(
            command.contains(&format!("spec.nodeName={node}"))
                && command.contains(" -- /tracerctl growth ")
                && command.contains(&format!("{namespace}/leaky-0")),
            "{alert:#}"
        );
        // The command works: run on the agent, it names the leaking function.
        let (_, ctl_args) = command.split_once(" -- /tracerctl ").expect("tracerctl");
        let ctl_args: Vec<&str> = ctl_args.split_whitespace().collect();
        let (code, out, err) = agent.ctl(&ctl_args);
        assert!(
            code == Some(0) && out.contains("leak_records"),
            "{command}: {out}{err}"
        );
    }

    // The cache's series (other tests on this machine may have a cache-0 pod too).
    let cache_series = format!(r#"namespace="{namespace}",pod="cache-0""#);
    // Never traced (its site came from the growth profile); the traced cache's came from
    // the exact report.
    let (_, pods, _) = agent.ctl(&["pods"]);
    assert!(!agent.stderr().contains("escalating"), "{pods}");
    let sites = query(
        prometheus_port,
        &format!(r#"tracer_container_top_site_info{{{cache_series}}}"#),
    );
    assert!(
        sites.len() == 1
            && sites[0]["metric"]["function"] == "fill_cache"
            && sites[0]["metric"]["source"] == "exact",
        "{sites:#?}"
    );

    // The README's fleet queries, asked while it leaks: the leaker listed, the cache not, in
    // the promised order (other pods on this machine, e.g. other tests', may be listed too).
    let fleet = readme_queries();
    assert_eq!(fleet.len(), 2, "the README's fleet queries: {fleet:#?}");
    for (promql, fastest_first) in fleet.iter().zip([true, false]) {
        let result = query(prometheus_port, promql);
        let ours: Vec<&Value> = result
            .iter()
            .filter(|r| r["metric"]["namespace"] == namespace.as_str())
            .collect();
        assert!(
            ours.len() == 1 && ours[0]["metric"]["pod"] == "leaky-0",
            "{promql}: {result:#?}"
        );
        let values: Vec<f64> = result
            .iter()
            .map(|r| {
                r["value"][1]
                    .as_str()
                    .and_then(|v| v.parse().ok())
                    .expect("value")
            })
            .collect();
        assert!(
            values.windows(2).all(|w| if fastest_first {
                w[0] >= w[1]
            } else {
                w[0] <= w[1]
            }),
            "{promql}: {result:#?}"
        );
    }
    // Every dashboard expression parses and returns data.
    let expressions = dashboard_expressions();
    assert!(expressions.len() >= 18, "{expressions:#?}");
    for promql in &expressions {
        let result = query(prometheus_port, promql);
        assert!(!result.is_empty(), "no data for the dashboard's {promql}");
    }

    // Now let it run into its limit: the kernel kills it, and the agent records the kill.
    leaker.send("step 1");
    assert_eq!(leaker.wait_killed(), Some(libc::SIGKILL), "not OOM-killed");
    assert!(
        oom_kills(&leaky) >= 1,
        "the kill was not the kernel's OOM kill"
    );
    let _ = agent.wait_json(
        &["oom-events", &leaky.display()],
        "recorded the OOM kill",
        |v| v.as_array().is_some_and(|a| !a.is_empty()),
    );

    // The cache filled (over 8 s) and levelled off over the same period: its alerts went
    // pending while it grew (the expressions matched it), and `for:` kept them from firing.
    let cache_alerts = delivered(&deliveries, &namespace, "cache-0");
    assert!(cache_alerts.is_empty(), "{cache_alerts:#?}");
    let fired = query(
        prometheus_port,
        &format!(r#"max_over_time(ALERTS{{{cache_series},alertstate="firing"}}[10m])"#),
    );
    assert!(fired.is_empty(), "the cache fired: {fired:#?}");
    let pending = query(
        prometheus_port,
        &format!(r#"max_over_time(ALERTS{{{cache_series},alertstate="pending"}}[10m])"#),
    );
    assert!(
        !pending.is_empty(),
        "the cache never even matched a rule, so its silence shows nothing; its trend: {:#?}",
        query(
            prometheus_port,
            &format!(r#"count_over_time(tracer_container_trend{{{cache_series}}}[10m])"#)
        )
    );
    let grown = query(
        prometheus_port,
        &format!(r#"max_over_time(tracer_container_anon_bytes{{{cache_series}}}[10m])"#),
    );
    let grown: f64 = grown
        .first()
        .and_then(|r| r["value"][1].as_str())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(grown >= 24.0 * MIB as f64, "the cache held {grown} B");
    eprintln!(
        "alerted after {alerted_after:?}, test took {:?}",
        started.elapsed()
    );
    cache.finish();
}
