//! `tracer-daemon run`: the node agent (the DaemonSet's process). Discovers pods' processes
//! from cgroups, traces the selected ones, and serves the gRPC API until SIGTERM or Ctrl-C.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context as _;
use clap::Args;
use tracing::{error, info, warn};

use crate::{
    agent::{
        self, AgentConfig, AgentExit, AgentHandle, DEFAULT_STATE_DIR, Fault, budget::BudgetPolicy,
        escalation::EscalationPolicy,
    },
    api::{
        ApiStats, connections, metrics,
        server::{self, DEFAULT_SOCKET, Health, Listen, ServeOptions, TlsFiles},
    },
    attach::placement::PlacementMode,
    bpf::MapSizes,
    config,
    discover::node::NodePaths,
    evidence::{store::Retention, watch::WatchConfig},
    export::exporter::{self, ExporterSettings},
    report::growth::GrowthConfig,
    tracer::TracerConfig,
};

/// Arguments of `run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Where to serve the API: unix:PATH or tcp:HOST:PORT.
    #[arg(long, env = "TRACER_LISTEN", default_value_t = format!("unix:{DEFAULT_SOCKET}"))]
    pub listen: String,

    /// Group (name or gid) allowed to use the Unix socket: mode 0660 instead of 0600.
    #[arg(long, env = "TRACER_SOCKET_GROUP", value_name = "GROUP")]
    pub socket_group: Option<String>,

    /// PEM certificate chain of a tcp: listener (TLS is required on TCP).
    #[arg(long, env = "TRACER_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of that certificate.
    #[arg(long, env = "TRACER_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA bundle: clients must present a certificate it signed.
    #[arg(long, env = "TRACER_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,

    /// Serve a tcp: listener without TLS (leak reports in plain text to anyone who can reach it).
    #[arg(long)]
    pub insecure: bool,

    /// Also serve grpc.health.v1 alone on this plain TCP address (for kubelet gRPC probes).
    #[arg(long, env = "TRACER_HEALTH_LISTEN", value_name = "HOST:PORT")]
    pub health_listen: Option<std::net::SocketAddr>,

    /// Serve Prometheus metrics at http://HOST:PORT/metrics.
    #[arg(long, env = "TRACER_METRICS", value_name = "HOST:PORT")]
    pub metrics: Option<std::net::SocketAddr>,

    /// This node's name: the `node` label of per-container metrics and k8s.node.name of OTLP
    /// profiles (the DaemonSet sets it from spec.nodeName; the default, the host name, is the
    /// pod's name inside a pod).
    #[arg(long, env = "TRACER_NODE_NAME", default_value_t = host_name())]
    pub node_name: String,

    /// Most containers given their own metric series (those holding the most bytes).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(0..=10_000))]
    pub metrics_max_containers: u64,

    /// Config file (TOML: [selection], [growth], [limits], [watch], [escalation], [budget],
    /// [otlp]).
    #[arg(long, env = "TRACER_CONFIG")]
    pub config: Option<PathBuf>,

    /// The kubelet's pod log directories.
    #[arg(long, env = "TRACER_POD_LOG_ROOT", default_value = "/var/log/pods")]
    pub pod_log_root: PathBuf,

    /// The kubelet's container log symlinks (container id to name).
    #[arg(
        long,
        env = "TRACER_CONTAINER_LOG_ROOT",
        default_value = "/var/log/containers"
    )]
    pub container_log_root: PathBuf,

    /// Trace pods in namespaces matching this glob (repeatable; adds to the config file).
    #[arg(long = "namespace", value_name = "GLOB")]
    pub namespaces: Vec<String>,

    /// Never trace pods in namespaces matching this glob (repeatable).
    #[arg(long = "exclude-namespace", value_name = "GLOB")]
    pub exclude_namespaces: Vec<String>,

    /// Trace pods whose name matches this glob (repeatable).
    #[arg(long = "pod", value_name = "GLOB")]
    pub pods: Vec<String>,

    /// Never trace pods whose name matches this glob (repeatable).
    #[arg(long = "exclude-pod", value_name = "GLOB")]
    pub exclude_pods: Vec<String>,

    /// Most processes traced at once [default: config file, else 256].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=65_536))]
    pub max_processes: Option<u64>,

    /// Span of growth history kept per stack [default: config file, else 5m].
    #[arg(long, value_parser = parse_interval)]
    pub growth_window: Option<Duration>,

    /// Time between growth samples [default: config file, else 10s].
    #[arg(long, value_parser = parse_interval)]
    pub sample_interval: Option<Duration>,

    /// Time between scans of /proc for new processes and pods.
    #[arg(long, default_value = "2s", value_parser = parse_interval)]
    pub discovery_interval: Duration,

    /// Outstanding allocations across the node (kernel memory, ~100 B each) [default: config
    /// file, else 1048576].
    #[arg(long, value_parser = crate::cli::within(config::ALLOCATIONS_RANGE))]
    pub max_allocations: Option<u32>,

    /// Distinct stacks across the node (~600 B each) [default: config file, else 32768].
    #[arg(long, value_parser = crate::cli::within(config::STACKS_RANGE))]
    pub max_stacks: Option<u32>,

    /// Unwind-table rows of binaries without frame pointers (16 B each) [default: config
    /// file, else 524288].
    #[arg(long, value_parser = crate::cli::within(config::UNWIND_ROWS_RANGE))]
    pub max_unwind_rows: Option<u32>,

    /// Where probes go: on the first instruction the kernel emulates (smart) or at entry.
    #[arg(long, value_enum, default_value_t = PlacementMode::Smart)]
    pub probe_placement: PlacementMode,

    /// Record a Poisson sample of allocations, one per N bytes on average, instead of every
    /// allocation (reports become estimates). 0: exact.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=1u64 << 40))]
    pub sample_bytes: u64,

    /// Uprobe sessions where the kernel has them (auto) or never (off).
    #[arg(long, value_enum, default_value_t = crate::cli::trace::Sessions::Auto)]
    pub uprobe_sessions: crate::cli::trace::Sessions,

    /// How allocator probes are attached: uprobe_multi links where the kernel has them (auto;
    /// Linux 6.6+, no CAP_SYS_ADMIN needed), or classic perf_event uprobes (perf-event; needs
    /// CAP_SYS_ADMIN, what kernels before 6.6 use).
    #[arg(long, value_enum, default_value_t = crate::bpf::uprobes::UprobeLinks::Auto)]
    pub uprobe_links: crate::bpf::uprobes::UprobeLinks,

    /// The growth profile records one new page in N, chosen by a hash of its address with a
    /// random key, and weights it by N (its bytes become estimates); a power of two, 1 records
    /// every page exactly.
    #[arg(
        long,
        default_value_t = crate::bpf::DEFAULT_FAULT_SAMPLE_PAGES,
        value_parser = parse_fault_sample_pages,
    )]
    pub growth_sample_pages: u32,

    /// Where evidence is persisted (a hostPath in the DaemonSet).
    #[arg(long, env = "TRACER_STATE_DIR", default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,

    /// Evidence records kept (oldest dropped first).
    #[arg(long, default_value_t = 1000)]
    pub evidence_max_records: usize,

    /// Evidence bytes kept (oldest dropped first), e.g. 268435456.
    #[arg(long, default_value_t = 256 << 20)]
    pub evidence_max_bytes: u64,

    /// Percentages of a container's memory limit that trigger a snapshot when crossed.
    #[arg(long, value_delimiter = ',', default_value = "80,90,95", value_parser = clap::value_parser!(u32).range(1..=100))]
    pub memory_thresholds: Vec<u32>,

    /// Least time between two snapshots of the same kind for one container.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub evidence_cooldown: Duration,

    /// How often traced containers' memory figures are checked.
    #[arg(long, default_value = "500ms", value_parser = parse_interval)]
    pub memory_watch_interval: Duration,

    /// PSI trigger for cgroup v2 memory.pressure ("some|full STALL_US WINDOW_US", the window a
    /// multiple of 2 s without CAP_SYS_RESOURCE); "off" disables it.
    #[arg(long, default_value = "some 500000 2000000")]
    pub pressure_trigger: String,

    /// Health turns NOT_SERVING when the agent has not answered for this long (it turns back
    /// when the agent answers again).
    #[arg(long, default_value = "30s", value_parser = parse_interval)]
    pub unresponsive_after: Duration,

    /// Export per-container profiles (in-use bytes and objects by stack, resident growth) as
    /// OpenTelemetry profiles to this OTLP/gRPC endpoint: https://HOST:PORT, or http://HOST:PORT
    /// with --otlp-insecure [default: config file's [otlp] endpoint, else no export].
    #[arg(long, env = "TRACER_EXPORT_OTLP", value_name = "URL")]
    pub export_otlp: Option<String>,

    /// Time between OTLP exports [default: config file, else 60s].
    #[arg(long, value_parser = parse_interval)]
    pub otlp_interval: Option<Duration>,

    /// Header sent with every OTLP export, e.g. authorization=Bearer TOKEN (repeatable; adds to
    /// the config file's; comma-separated in the environment variable).
    #[arg(
        long = "otlp-header",
        env = "TRACER_OTLP_HEADERS",
        // Tokens: never printed by --help.
        hide_env_values = true,
        value_name = "KEY=VALUE",
        value_delimiter = ','
    )]
    pub otlp_headers: Vec<String>,

    /// PEM CA bundle for an https OTLP endpoint [default: config file, else the node's roots].
    #[arg(long, env = "TRACER_OTLP_CA")]
    pub otlp_ca: Option<PathBuf>,

    /// Allow a plain http:// OTLP endpoint (profiles cross the network unencrypted).
    #[arg(long)]
    pub otlp_insecure: bool,

    /// Stacks per container in each exported profile [default: config file, else 100].
    #[arg(long, value_parser = clap::builder::RangedU64ValueParser::<usize>::new()
        .range(*config::OTLP_TOP_RANGE.start() as u64..=*config::OTLP_TOP_RANGE.end() as u64))]
    pub otlp_top: Option<usize>,

    /// Profile batches waiting for the OTLP endpoint at most; a batch built when the queue is
    /// full is dropped and counted [default: config file, else 16].
    #[arg(long, value_parser = clap::builder::RangedU64ValueParser::<usize>::new()
        .range(*config::OTLP_QUEUE_RANGE.start() as u64..=*config::OTLP_QUEUE_RANGE.end() as u64))]
    pub otlp_queue: Option<usize>,

    /// A batch the OTLP endpoint has not accepted after this long (retried with backoff) is
    /// dropped and counted [default: config file, else 5m].
    #[arg(long, value_parser = parse_interval)]
    pub otlp_max_age: Option<Duration>,

    /// Fault injection for the reliability tests: panic-after=DURATION or stall-after=DURATION.
    #[arg(long, hide = true)]
    pub inject_fault: Option<Fault>,
}

/// How often the watchdog asks the agent whether it is alive.
const HEARTBEAT: Duration = Duration::from_secs(1);

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{e} (expected e.g. 500ms, 10s, 5m)"))
}

/// The period of a periodic task: a duration of at least [`config::MIN_INTERVAL`].
fn parse_interval(text: &str) -> Result<Duration, String> {
    let interval = parse_duration(text)?;
    if interval < config::MIN_INTERVAL {
        return Err(format!(
            "{text:?} is too short: a periodic task needs at least {}",
            humantime::format_duration(config::MIN_INTERVAL)
        ));
    }
    Ok(interval)
}

/// Runs the node agent.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let listen: Listen = args
        .listen
        .parse()
        .map_err(anyhow::Error::msg)
        .context("invalid --listen")?;
    let serve_options = ServeOptions {
        listen,
        socket_group: args
            .socket_group
            .as_deref()
            .map(server::resolve_group)
            .transpose()
            .map_err(anyhow::Error::msg)
            .context("invalid --socket-group")?,
        tls: args
            .tls_cert
            .clone()
            .zip(args.tls_key.clone())
            .map(|(cert, key)| TlsFiles {
                cert,
                key,
                client_ca: args.tls_client_ca.clone(),
            }),
        insecure: args.insecure,
        health_listen: args.health_listen,
    };
    // Refuse a bad combination before loading anything.
    serve_options.prepare()?;
    let file = match &args.config {
        Some(path) => config::load(path)?,
        None => config::ConfigFile::default(),
    };
    let mut selection = file.selection.clone();
    selection.namespaces.extend(args.namespaces.iter().cloned());
    selection
        .exclude_namespaces
        .extend(args.exclude_namespaces.iter().cloned());
    selection.pods.extend(args.pods.iter().cloned());
    selection
        .exclude_pods
        .extend(args.exclude_pods.iter().cloned());
    if let Some(max) = args.max_processes {
        selection.max_processes = Some(usize::try_from(max).unwrap_or(usize::MAX));
    }
    for (flag, list) in [
        ("--namespace", &selection.namespaces),
        ("--exclude-namespace", &selection.exclude_namespaces),
        ("--pod", &selection.pods),
        ("--exclude-pod", &selection.exclude_pods),
    ] {
        config::check_list(&format!("{flag} (with the config file's list)"), list)
            .map_err(anyhow::Error::msg)?;
    }
    if selection.namespaces.is_empty() && selection.pods.is_empty() {
        info!(
            "no --namespace/--pod selection: every pod not excluded is watched, and traced \
             exactly when the escalation policy or StartTracing says so"
        );
    }
    let window = args.growth_window.or(file.growth.window);
    let sample_interval = args
        .sample_interval
        .or(file.growth.sample_interval)
        .unwrap_or(Duration::from_secs(10));
    let growth = GrowthConfig {
        window_ns: window.map_or(GrowthConfig::default().window_ns, |w| {
            u64::try_from(w.as_nanos()).unwrap_or(u64::MAX)
        }),
        ..GrowthConfig::default()
    };
    let max_stacks = args
        .max_stacks
        .or(file.limits.max_stacks)
        .unwrap_or(1 << 15);
    // A bad endpoint, header or CA is refused here, before anything is loaded.
    let otlp = otlp_settings(&args, &file.otlp)?;
    let config = AgentConfig {
        tracer: TracerConfig {
            sizes: MapSizes {
                allocations: args
                    .max_allocations
                    .or(file.limits.max_allocations)
                    .unwrap_or(crate::bpf::DEFAULT_ALLOCATIONS),
                stack_totals: max_stacks,
                stack_traces: max_stacks,
                unwind_rows: args
                    .max_unwind_rows
                    .or(file.limits.max_unwind_rows)
                    .unwrap_or(crate::bpf::DEFAULT_UNWIND_ROWS),
                ..MapSizes::default()
            },
            placement: args.probe_placement,
            sample_bytes: args.sample_bytes,
            sessions: args.uprobe_sessions == crate::cli::trace::Sessions::Auto,
            uprobe_links: args.uprobe_links,
            fault_profile: true,
            fault_sample_pages: args.growth_sample_pages,
        },
        paths: NodePaths {
            pod_log_root: args.pod_log_root.clone(),
            container_log_root: args.container_log_root.clone(),
            ..NodePaths::default()
        },
        selection,
        growth,
        discovery_interval: args.discovery_interval,
        sample_interval,
        state_dir: args.state_dir.clone(),
        retention: Retention {
            max_records: args.evidence_max_records,
            max_bytes: args.evidence_max_bytes,
        },
        watch: WatchConfig {
            thresholds: args.memory_thresholds.clone(),
            cooldown: args.evidence_cooldown,
            pressure_trigger: Some(args.pressure_trigger.clone()).filter(|t| t != "off"),
        },
        watch_interval: args.memory_watch_interval,
        fault: args.inject_fault,
        watch_all: watch_all(&file.watch),
        escalation: escalation_policy(&file.escalation),
        budget: budget_policy(&file.budget),
        ..AgentConfig::default()
    };
    let mut config = config;
    if let Some((settings, interval, top)) = otlp {
        config.otlp = Some(agent::otlp::OtlpExport {
            interval,
            top,
            node_name: args.node_name.clone(),
            queue: exporter::start(&settings)?,
        });
    }
    match connections::raise_file_limit() {
        Ok(limit) => info!(open_files = limit, "file descriptor limit"),
        Err(error) => warn!(%error, "cannot read the file descriptor limit"),
    }
    // A metrics port already taken is a startup error, not a silent gap in monitoring.
    let metrics_listener = match args.metrics {
        Some(addr) => Some(metrics::bind(addr).await?),
        None => None,
    };
    let (handle, exit) = agent::spawn(config)?;
    info!("agent started");
    let health = Health::new();
    let stats = Arc::new(ApiStats::default());
    let (stop, _) = tokio::sync::broadcast::channel::<()>(1);
    if let Some(listener) = metrics_listener {
        let mut stopped = stop.subscribe();
        let metrics = metrics::serve(
            listener,
            handle.clone(),
            usize::try_from(args.metrics_max_containers).unwrap_or(usize::MAX),
            Arc::clone(&stats),
            args.node_name.clone(),
            async move {
                let _ = stopped.recv().await;
            },
        );
        let _task = tokio::spawn(async move {
            if let Err(error) = metrics.await {
                tracing::error!(error = %format!("{error:#}"), "the metrics server stopped");
            }
        });
    }
    let (failed, failure) = tokio::sync::oneshot::channel::<agent::AgentEnd>();
    let _watchdog = tokio::spawn(watch_agent(
        handle.clone(),
        exit,
        health.clone(),
        args.unresponsive_after,
        failed,
    ));
    let ended: Arc<Mutex<Option<agent::AgentEnd>>> = Arc::default();
    let ended_in_shutdown = Arc::clone(&ended);
    server::serve(&serve_options, handle, health, stats, async move {
        tokio::select! {
            () = shutdown_signal() => {}
            Ok(end) = failure => {
                *ended_in_shutdown.lock().unwrap_or_else(|e| e.into_inner()) = Some(end);
            }
        }
        let _ = stop.send(());
    })
    .await?;
    if let Some(end) = ended.lock().unwrap_or_else(|e| e.into_inner()).take() {
        anyhow::bail!("{end}; exiting so that the agent is restarted");
    }
    info!("stopped");
    Ok(())
}

/// Keeps health true to the agent: NOT_SERVING while it does not answer, and for good (with the
/// process exiting non-zero, through `failed`) once its thread has ended for any reason.
async fn watch_agent(
    agent: AgentHandle,
    exit: AgentExit,
    health: Health,
    unresponsive_after: Duration,
    failed: tokio::sync::oneshot::Sender<agent::AgentEnd>,
) {
    let exit = exit.wait();
    tokio::pin!(exit);
    let mut answering = true;
    let end = loop {
        let answered = tokio::select! {
            end = &mut exit => break end,
            answer = tokio::time::timeout(unresponsive_after, agent.ping()) => {
                matches!(answer, Ok(Ok(())))
            }
        };
        if answered != answering {
            answering = answered;
            health.set(answered).await;
            if answered {
                info!("the agent answers again: health is SERVING");
            } else {
                error!(
                    seconds = unresponsive_after.as_secs_f64(),
                    "the agent has not answered: health is NOT_SERVING"
                );
            }
        }
        tokio::select! {
            end = &mut exit => break end,
            () = tokio::time::sleep(HEARTBEAT) => {}
        }
    };
    health.set(false).await;
    error!(reason = %end, "the agent has stopped: health is NOT_SERVING and the process exits");
    let _ = failed.send(end);
}

async fn shutdown_signal() {
    let mut terminate =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}

/// Always-on watching from the config file's `[watch]` (defaults where it is silent).
fn watch_all(section: &config::WatchSection) -> agent::WatchAll {
    let default = agent::WatchAll::default();
    agent::WatchAll {
        enabled: section.enabled.unwrap_or(default.enabled),
        exclude_namespaces: section
            .exclude_namespaces
            .clone()
            .unwrap_or(default.exclude_namespaces),
        exclude_pods: section.exclude_pods.clone().unwrap_or(default.exclude_pods),
    }
}

/// The escalation policy from the config file's `[escalation]` (defaults where it is silent).
fn escalation_policy(section: &config::EscalationSection) -> EscalationPolicy {
    let default = EscalationPolicy::default();
    EscalationPolicy {
        enabled: section.enabled.unwrap_or(default.enabled),
        time_to_limit: section.time_to_limit.unwrap_or(default.time_to_limit),
        usage_ratio: section
            .usage_percent
            .map_or(default.usage_ratio, |p| f64::from(p) / 100.0),
        max_containers: section.max_containers.unwrap_or(default.max_containers),
        max_duration: section.max_duration.unwrap_or(default.max_duration),
    }
}

/// The overhead budget from the config file's `[budget]` (defaults where it is silent).
fn budget_policy(section: &config::BudgetSection) -> BudgetPolicy {
    let default = BudgetPolicy::default();
    BudgetPolicy {
        enabled: section.enabled.unwrap_or(default.enabled),
        max_core_share: section
            .max_core_percent
            .map_or(default.max_core_share, |p| f64::from(p) / 100.0),
        sample_bytes: section.sample_bytes.unwrap_or(default.sample_bytes),
    }
}

/// The OTLP exporter's settings, interval and stacks per container from the flags over the
/// config file's `[otlp]`; `None` when no endpoint is given. Checked here, so that a bad flag
/// stops the agent before it loads anything.
fn otlp_settings(
    args: &RunArgs,
    section: &config::OtlpSection,
) -> anyhow::Result<Option<(ExporterSettings, Duration, usize)>> {
    let Some(endpoint) = args
        .export_otlp
        .clone()
        .or_else(|| section.endpoint.clone())
    else {
        if !args.otlp_headers.is_empty() || args.otlp_ca.is_some() || args.otlp_insecure {
            anyhow::bail!(
                "--otlp-header, --otlp-ca and --otlp-insecure need --export-otlp URL (or [otlp] \
                 endpoint in the config file)"
            );
        }
        return Ok(None);
    };
    let mut headers: Vec<(String, String)> = section
        .headers
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    for header in &args.otlp_headers {
        headers.push(exporter::parse_header(header)?);
    }
    let settings = ExporterSettings {
        endpoint,
        headers,
        ca: args.otlp_ca.clone().or_else(|| section.ca.clone()),
        insecure: args.otlp_insecure || section.insecure.unwrap_or(false),
        queue_batches: args.otlp_queue.or(section.queue).unwrap_or(16),
        max_age: args
            .otlp_max_age
            .or(section.max_age)
            .unwrap_or(Duration::from_secs(300)),
    };
    exporter::check(&settings)?;
    let interval = args
        .otlp_interval
        .or(section.interval)
        .unwrap_or(Duration::from_secs(60));
    let top = args.otlp_top.or(section.top).unwrap_or(100);
    Ok(Some((settings, interval, top)))
}

/// A growth-profile sampling period: a power of two from 1 to 65,536.
fn parse_fault_sample_pages(value: &str) -> Result<u32, String> {
    let pages: u32 = value.parse().map_err(|e| format!("{e}"))?;
    if !pages.is_power_of_two() || pages > crate::bpf::MAX_FAULT_SAMPLE_PAGES {
        return Err(format!(
            "{pages} is not a power of two from 1 to {}",
            crate::bpf::MAX_FAULT_SAMPLE_PAGES
        ));
    }
    Ok(pages)
}

/// The UTS host name, "" when unreadable.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .unwrap_or_default()
}
