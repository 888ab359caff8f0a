//! Prometheus metrics at `--metrics ADDR` (`GET /metrics`, OpenMetrics text made by
//! prometheus-client): the agent's health (programs and probes, processes, BPF events and losses,
//! map fill, symbol cache, evidence, RSS) and per traced container its outstanding bytes, leak
//! rate and time to its memory limit. Per-container series are bounded (`--metrics-max-containers`,
//! the containers holding the most bytes), so a node with many pods cannot blow up cardinality.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, info::Info},
    registry::{Registry, Unit},
};
use tracing::{info, warn};

use crate::{
    agent::{AgentHandle, metrics::NodeMetrics},
    api::{
        ApiStats,
        connections::{Bounded, METRICS_LIMITS},
        server::ServeError,
    },
};

/// The OpenMetrics content type prometheus-client's text encoder writes.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// How long a scrape waits for the agent before answering 503.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone)]
struct Scrape {
    agent: AgentHandle,
    max_containers: usize,
    api: Arc<ApiStats>,
    node: Arc<str>,
}

/// Binds the metrics address (before the agent starts, so a taken port is a startup error).
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, ServeError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Listen {
            what: addr.to_string(),
            source,
        })
}

/// Serves `/metrics` on `listener` until `shutdown` resolves (at most
/// [`METRICS_LIMITS`] connections at once, idle ones closed).
pub async fn serve(
    listener: tokio::net::TcpListener,
    agent: AgentHandle,
    max_containers: usize,
    api: Arc<ApiStats>,
    node: String,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let addr = listener
        .local_addr()
        .map_or_else(|_| "?".to_owned(), |a| a.to_string());
    let listener = Bounded::new(
        listener,
        "metrics",
        METRICS_LIMITS,
        Arc::clone(&api.metrics),
    );
    let app = Router::new()
        .route("/metrics", get(scrape))
        .with_state(Scrape {
            agent,
            max_containers,
            api,
            node: node.into(),
        });
    info!(%addr, max_connections = METRICS_LIMITS.max_connections, "serving Prometheus metrics at /metrics");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|source| ServeError::Listen {
            what: addr.to_string(),
            source,
        })
}

async fn scrape(State(scrape): State<Scrape>) -> Response {
    let figures =
        tokio::time::timeout(SCRAPE_TIMEOUT, scrape.agent.metrics(scrape.max_containers)).await;
    let figures = match figures {
        Ok(Ok(figures)) => figures,
        Ok(Err(error)) => {
            return (StatusCode::SERVICE_UNAVAILABLE, format!("{error}\n")).into_response();
        }
        Err(_) => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "the agent did not answer within 5 s\n",
            )
                .into_response();
        }
    };
    match render(&figures, &scrape.api, &scrape.node) {
        Ok(text) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        Err(error) => {
            warn!(%error, "cannot encode metrics");
            (StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics\n").into_response()
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ContainerLabels {
    namespace: String,
    pod: String,
    container: String,
    node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TrendLabels {
    namespace: String,
    pod: String,
    container: String,
    class: String,
    tracing: String,
    node: String,
}

/// One container's top call site (one series per exported container, the name cut short).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TopSiteLabels {
    namespace: String,
    pod: String,
    container: String,
    node: String,
    function: String,
    source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    event: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HitLabels {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MapLabels {
    map: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

fn gauge(value: u64) -> Gauge {
    let gauge = Gauge::default();
    set(&gauge, value);
    gauge
}

/// Sets an integer gauge to a count (saturating: gauges are signed).
fn set(gauge: &Gauge, value: u64) {
    let _ = gauge.set(i64::try_from(value).unwrap_or(i64::MAX));
}

fn counter(value: u64) -> Counter {
    let counter = Counter::default();
    let _ = counter.inc_by(value);
    counter
}

/// BPF counters that count work done, by their `event` label.
const EVENTS: &[(&str, &str)] = &[
    ("allocations_recorded", "allocation"),
    ("frees_matched", "free"),
    ("frees_unknown", "free_of_unknown_block"),
];

/// BPF counters that count something lost, by their `reason` label.
const LOSSES: &[(&str, &str)] = &[
    ("allocs_map_full", "allocations_map_full"),
    ("stack_totals_map_full", "stack_totals_full"),
    ("stacks_lost", "stack_not_captured"),
    ("stack_traces_map_full", "stack_traces_map_full"),
    ("thread_state_full", "thread_state_full"),
    ("events_dropped", "ring_buffer_full"),
    ("unarmed_allocations", "process_not_armed"),
    ("fault_profile_map_full", "fault_profile_full"),
    ("fault_pending_expired", "fault_too_slow_or_no_anon_page"),
    ("fault_pending_other_thread", "fault_resumed_on_another_cpu"),
];

/// Renders the figures as OpenMetrics text; per-container series carry `node`.
pub fn render(
    figures: &NodeMetrics,
    api: &ApiStats,
    node: &str,
) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::with_prefix("tracer");
    registry.register(
        "build",
        "The agent's version",
        Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
    );
    let health = &figures.tracer;
    registry.register(
        "processes_traced",
        "Processes traced now",
        gauge(health.processes as u64),
    );
    registry.register(
        "processes_attached",
        "Traced processes with their allocator probes attached now",
        gauge(health.attached as u64),
    );
    registry.register(
        "trace_failures",
        "Selected processes that could not be traced (see the agent's log)",
        gauge(figures.trace_failures),
    );
    registry.register(
        "oom_hook_attached",
        "1 when OOM kills are seen at the kernel's hook, 0 when only through cgroup counters",
        gauge(u64::from(health.oom_hook_attached)),
    );
    registry.register(
        "sampled",
        "1 when some bytes and counts are sampled estimates (--sample-bytes, or a process the overhead budget switched to sampling), 0 when all are exact",
        gauge(u64::from(figures.estimated)),
    );
    let events = Family::<EventLabels, Counter>::default();
    for &(stat, event) in EVENTS {
        let _ = events
            .get_or_create(&EventLabels {
                event: event.to_owned(),
            })
            .inc_by(figures.bpf.0.get(stat).copied().unwrap_or(0));
    }
    registry.register(
        "bpf_events",
        "Allocator calls the BPF programs recorded (rate() gives events per second)",
        events,
    );
    let lost = Family::<ReasonLabels, Counter>::default();
    for &(stat, reason) in LOSSES {
        let _ = lost
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc_by(figures.bpf.0.get(stat).copied().unwrap_or(0));
    }
    registry.register(
        "lost",
        "Allocations, stacks or events the tracer could not record, by reason; reports are exact for what was recorded",
        lost,
    );
    let entries = Family::<MapLabels, Gauge>::default();
    let capacity = Family::<MapLabels, Gauge>::default();
    let fill = Family::<MapLabels, FloatGauge>::default();
    for (map, used, slots) in [
        ("allocations", health.allocations, health.allocation_slots),
        ("stack_totals", health.stacks, health.stack_slots),
    ] {
        let labels = MapLabels {
            map: map.to_owned(),
        };
        set(&entries.get_or_create(&labels), used);
        set(&capacity.get_or_create(&labels), slots);
        let ratio = if slots == 0 {
            0.0
        } else {
            used as f64 / slots as f64
        };
        let _ = fill.get_or_create(&labels).set(ratio);
    }
    registry.register("map_entries", "Entries in the BPF map", entries);
    registry.register(
        "map_capacity",
        "Capacity of the BPF map (preallocated)",
        capacity,
    );
    registry.register(
        "map_fill_ratio",
        "Entries over capacity; at 1 new allocations are lost (see tracer_lost_total)",
        fill,
    );
    let cache = &health.symbol_cache;
    registry.register(
        "symbol_cache_entries",
        "Symbolized stacks held",
        gauge(cache.entries as u64),
    );
    registry.register(
        "symbol_cache_hits",
        "Stacks symbolized from the cache",
        counter(cache.hits),
    );
    registry.register(
        "symbol_cache_misses",
        "Stacks symbolized afresh",
        counter(cache.misses),
    );
    registry.register(
        "evidence_saved",
        "Evidence records saved since the agent started",
        counter(figures.evidence_saved),
    );
    registry.register(
        "evidence_save_failures",
        "Evidence records that could not be saved since the agent started",
        counter(figures.evidence_failed),
    );
    registry.register(
        "evidence_records",
        "Evidence records in the store",
        gauge(figures.evidence_records),
    );
    registry.register_with_unit(
        "evidence_payload",
        "Evidence payload in the store",
        Unit::Bytes,
        gauge(figures.evidence_bytes),
    );
    let store = &figures.evidence_store;
    registry.register(
        "evidence_store_damaged",
        "1 when the evidence store was found damaged at start (records lost, or the file moved aside; see the log)",
        gauge(u64::from(store.damage.is_some())),
    );
    registry.register(
        "evidence_ids_lost",
        "Evidence ids given before that the store can no longer serve (rolled back by damage)",
        gauge(store.lost_ids),
    );
    registry.register(
        "evidence_store_reopened",
        "Times the evidence store was reopened after a failed write (a full disk, an I/O error)",
        counter(store.reopened),
    );
    registry.register(
        "evidence_last_save_failed",
        "1 when the last evidence save failed (see the log for the cause)",
        gauge(u64::from(store.last_failure.is_some())),
    );
    registry.register_with_unit(
        "resident_memory",
        "The agent's resident set size",
        Unit::Bytes,
        gauge(resident_bytes()),
    );

    let outstanding = Family::<ContainerLabels, Gauge>::default();
    let allocations = Family::<ContainerLabels, Gauge>::default();
    let rate = Family::<ContainerLabels, FloatGauge>::default();
    let time_to_limit = Family::<ContainerLabels, FloatGauge>::default();
    let limit = Family::<ContainerLabels, Gauge>::default();
    for container in &figures.containers {
        let labels = ContainerLabels {
            namespace: container.namespace.clone(),
            pod: container.pod.clone(),
            container: container.container.clone(),
            node: node.to_owned(),
        };
        set(
            &outstanding.get_or_create(&labels),
            container.outstanding_bytes,
        );
        set(
            &allocations.get_or_create(&labels),
            container.outstanding_count,
        );
        let _ = rate
            .get_or_create(&labels)
            .set(container.leak_bytes_per_second);
        if let Some(seconds) = container.time_to_limit_seconds {
            let _ = time_to_limit.get_or_create(&labels).set(seconds);
        }
        if let Some(bytes) = container.memory_limit_bytes {
            set(&limit.get_or_create(&labels), bytes);
        }
    }
    registry.register_with_unit(
        "container_outstanding",
        "Bytes allocated by the container's traced processes and not freed (estimated when tracer_sampled is 1)",
        Unit::Bytes,
        outstanding,
    );
    registry.register(
        "container_outstanding_allocations",
        "Allocations of the container's traced processes not freed",
        allocations,
    );
    registry.register(
        "container_leak_rate_bytes_per_second",
        "Growth rate of the container's growing leak sites over the growth window",
        rate,
    );
    registry.register_with_unit(
        "container_time_to_limit",
        "Time until the container reaches its memory limit at the current leak rate (absent: no limit or no growth)",
        Unit::Seconds,
        time_to_limit,
    );
    registry.register_with_unit(
        "container_memory_limit",
        "The container's memory limit",
        Unit::Bytes,
        limit,
    );
    registry.register(
        "containers_not_shown",
        "Traced containers left out of the per-container series (--metrics-max-containers)",
        gauge(figures.containers_not_shown),
    );
    register_watched(&mut registry, figures, node);
    register_api(&mut registry, api);
    if let Some(otlp) = &figures.otlp {
        register_otlp(&mut registry, otlp);
    }
    let mut text = String::new();
    encode(&mut text, &registry)?;
    Ok(text)
}

/// Always-on watching: every watched container's trend and how it is traced (the fastest
/// growing `--metrics-max-containers` get series), and the growth profile's hook.
fn register_watched(registry: &mut Registry, figures: &NodeMetrics, node: &str) {
    registry.register(
        "containers_watched",
        "Containers watched now (memory trend and growth profile, no uprobes)",
        gauge(figures.containers_watched),
    );
    registry.register(
        "containers_escalated",
        "Containers the escalation policy traces exactly now",
        gauge(figures.containers_escalated),
    );
    registry.register(
        "processes_over_budget",
        "Processes that stopped being traced because tracing cost them more than [budget] allows",
        counter(figures.processes_over_budget),
    );
    registry.register(
        "processes_budget_sampled",
        "Processes switched to byte sampling because exact tracing cost them more than [budget] allows",
        counter(figures.processes_budget_sampled),
    );
    let hit_cost = Family::<HitLabels, FloatGauge>::default();
    for (kind, ns) in [
        ("entry", figures.probe_cost.per_entry_ns()),
        ("return", figures.probe_cost.per_return_ns()),
        ("free", figures.probe_cost.per_free_ns()),
    ] {
        let _ = hit_cost
            .get_or_create(&HitLabels {
                kind: kind.to_owned(),
            })
            .set(ns / 1e9);
    }
    registry.register_with_unit(
        "probe_hit_cost",
        "What the budget prices one probe hit of each kind at: the trap measured at startup plus the program's run time measured now and then",
        Unit::Seconds,
        hit_cost,
    );
    let share = FloatGauge::default();
    let _ = share.set(figures.max_tracing_core_share);
    registry.register(
        "max_tracing_core_share",
        "The largest share of one core that tracing costs any traced process now",
        share,
    );
    registry.register(
        "fault_hook_attached",
        "1 when the growth profile's page-fault programs are attached",
        gauge(u64::from(figures.fault_hook_attached)),
    );
    let anon = Family::<ContainerLabels, Gauge>::default();
    let rate = Family::<ContainerLabels, FloatGauge>::default();
    let time_to_limit = Family::<ContainerLabels, FloatGauge>::default();
    let trend = Family::<TrendLabels, Gauge>::default();
    for c in &figures.watched {
        let labels = ContainerLabels {
            namespace: c.namespace.clone(),
            pod: c.pod.clone(),
            container: c.container.clone(),
            node: node.to_owned(),
        };
        set(&anon.get_or_create(&labels), c.anon_bytes);
        let _ = rate.get_or_create(&labels).set(c.growth_bytes_per_second);
        if let Some(seconds) = c.time_to_limit_seconds {
            let _ = time_to_limit.get_or_create(&labels).set(seconds);
        }
        set(
            &trend.get_or_create(&TrendLabels {
                namespace: c.namespace.clone(),
                pod: c.pod.clone(),
                container: c.container.clone(),
                class: c.class.to_owned(),
                tracing: c.tracing.to_owned(),
                node: node.to_owned(),
            }),
            1,
        );
    }
    registry.register_with_unit(
        "container_anon",
        "A watched container's anonymous memory (memory.stat anon, v1 total_rss)",
        Unit::Bytes,
        anon,
    );
    registry.register(
        "container_growth_rate_bytes_per_second",
        "A watched container's anonymous-memory growth over the growth window",
        rate,
    );
    registry.register_with_unit(
        "container_trend_time_to_limit",
        "Time until a growing watched container reaches its limit at its growth rate",
        Unit::Seconds,
        time_to_limit,
    );
    let sites = Family::<TopSiteLabels, Gauge>::default();
    let exact = figures
        .containers
        .iter()
        .map(|c| (&c.namespace, &c.pod, &c.container, &c.top_site));
    let profiled = figures
        .watched
        .iter()
        .map(|c| (&c.namespace, &c.pod, &c.container, &c.top_site));
    let mut seen = std::collections::HashSet::new();
    for (namespace, pod, container, site) in exact.chain(profiled) {
        let Some(site) = site else { continue };
        // Exact first: a container both traced and profiled gets one series.
        if seen.insert((namespace, pod, container)) {
            set(
                &sites.get_or_create(&TopSiteLabels {
                    namespace: namespace.clone(),
                    pod: pod.clone(),
                    container: container.clone(),
                    node: node.to_owned(),
                    function: site.function.clone(),
                    source: site.source.to_owned(),
                }),
                1,
            );
        }
    }
    registry.register(
        "container_top_site_info",
        "1 per exported container with a known top call site: the function (cut to 120 characters) and its source, exact (the traced report's top stack by bytes) or growth_profile (most new resident memory first touched within the window)",
        sites,
    );
    registry.register(
        "container_trend",
        "1 per watched container, labelled with its growth class and how it is traced (selected, auto, watched)",
        trend,
    );
}

/// The API layer's listeners and watch streams.
fn register_api(registry: &mut Registry, api: &ApiStats) {
    let open = Family::<ListenerLabels, Gauge>::default();
    let refused = Family::<ListenerLabels, Counter>::default();
    let timed_out = Family::<ListenerLabels, Counter>::default();
    let accept_errors = Family::<ListenerLabels, Counter>::default();
    for (name, stats) in [
        ("api", &api.api),
        ("health", &api.health),
        ("metrics", &api.metrics),
    ] {
        let labels = ListenerLabels {
            listener: name.to_owned(),
        };
        set(
            &open.get_or_create(&labels),
            stats.open.load(Ordering::Relaxed),
        );
        let _ = refused
            .get_or_create(&labels)
            .inc_by(stats.refused.load(Ordering::Relaxed));
        let _ = timed_out
            .get_or_create(&labels)
            .inc_by(stats.timed_out.load(Ordering::Relaxed));
        let _ = accept_errors
            .get_or_create(&labels)
            .inc_by(stats.accept_errors.load(Ordering::Relaxed));
    }
    registry.register(
        "connections_open",
        "Connections open now, by listener",
        open,
    );
    registry.register(
        "connections_refused",
        "Connections closed on arrival because the listener was at its cap",
        refused,
    );
    registry.register(
        "connections_timed_out",
        "Connections closed after staying silent past the listener's idle timeout",
        timed_out,
    );
    registry.register(
        "accept_errors",
        "Failed accepts (e.g. out of file descriptors), by listener",
        accept_errors,
    );
    registry.register(
        "watch_reports_sent",
        "Reports sent on WatchLeakReports streams",
        counter(api.watch_reports_sent.load(Ordering::Relaxed)),
    );
    registry.register(
        "watch_reports_skipped",
        "Reports WatchLeakReports streams skipped because their client read slower than the interval or the queue budget was spent",
        counter(api.watch_reports_skipped.load(Ordering::Relaxed)),
    );
    registry.register_with_unit(
        "watch_queued",
        "Encoded watch-stream reports waiting for their clients (bounded node-wide)",
        Unit::Bytes,
        gauge(api.watch_queued_bytes()),
    );
}

/// The OTLP exporter (`--export-otlp`): every batch built is sent, dropped (by reason) or
/// pending.
fn register_otlp(registry: &mut Registry, otlp: &crate::export::exporter::ExportFigures) {
    registry.register(
        "otlp_batches_built",
        "Profile batches built for the OTLP endpoint (one per --otlp-interval)",
        counter(otlp.built),
    );
    registry.register(
        "otlp_batches_sent",
        "Profile batches the OTLP endpoint accepted",
        counter(otlp.sent),
    );
    let dropped = Family::<ReasonLabels, Counter>::default();
    for (reason, count) in [
        ("queue_full", otlp.dropped_queue_full),
        ("exporter_stopped", otlp.dropped_exporter_stopped),
        ("expired", otlp.dropped_expired),
        ("rejected", otlp.dropped_rejected),
    ] {
        let labels = ReasonLabels {
            reason: reason.to_owned(),
        };
        let _ = dropped.get_or_create(&labels).inc_by(count);
    }
    registry.register(
        "otlp_batches_dropped",
        "Profile batches never sent: the queue was full (--otlp-queue), retries outlasted --otlp-max-age, the endpoint refused them, or the exporter had stopped",
        dropped,
    );
    registry.register(
        "otlp_batches_pending",
        "Profile batches queued or being sent now",
        gauge(otlp.pending),
    );
    registry.register(
        "otlp_export_failures",
        "OTLP export attempts that failed (each retried with backoff or dropped)",
        counter(otlp.failed_attempts),
    );
    registry.register(
        "otlp_profiles_rejected",
        "Profiles the OTLP endpoint rejected within batches it accepted (partial success)",
        counter(otlp.profiles_rejected),
    );
}

/// This process's resident set size, bytes (0 when /proc cannot say).
fn resident_bytes() -> u64 {
    procfs::process::Process::myself()
        .and_then(|me| me.statm())
        .map_or(0, |statm| statm.resident * procfs::page_size())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::metrics::{ContainerLeak, ContainerWatch, TopSite};

    fn site(function: &str, source: &'static str) -> Option<TopSite> {
        Some(TopSite {
            function: function.to_owned(),
            source,
        })
    }

    #[test]
    fn top_sites_are_one_series_per_container_exact_first_with_the_node() {
        let leak = |pod: &str, top_site| ContainerLeak {
            namespace: "shop".into(),
            pod: pod.into(),
            container: "app".into(),
            outstanding_bytes: 1,
            outstanding_count: 1,
            leak_bytes_per_second: 0.0,
            time_to_limit_seconds: None,
            memory_limit_bytes: None,
            top_site,
        };
        let watch = |pod: &str, top_site| ContainerWatch {
            namespace: "shop".into(),
            pod: pod.into(),
            container: "app".into(),
            anon_bytes: 1,
            growth_bytes_per_second: 1.0,
            class: "growing",
            time_to_limit_seconds: Some(60.0),
            tracing: "watched",
            top_site,
        };
        let figures = NodeMetrics {
            containers: vec![leak("traced-0", site("leak_here", "exact"))],
            watched: vec![
                watch("traced-0", site("touch_pages", "growth_profile")),
                watch("watched-0", site("leak_records", "growth_profile")),
                watch("unknown-0", None),
            ],
            ..NodeMetrics::default()
        };
        let text = render(&figures, &ApiStats::default(), "node-a").expect("render");
        let sites: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("tracer_container_top_site_info{"))
            .collect();
        assert_eq!(sites.len(), 2, "{text}");
        for (pod, function, source) in [
            ("traced-0", "leak_here", "exact"),
            ("watched-0", "leak_records", "growth_profile"),
        ] {
            assert!(
                sites.iter().any(|l| l.contains(&format!(r#"pod="{pod}""#))
                    && l.contains(&format!(r#"function="{function}""#))
                    && l.contains(&format!(r#"source="{source}""#))
                    && l.contains(r#"node="node-a""#)),
                "{text}"
            );
        }
        assert!(
            text.lines()
                .filter(|l| l.starts_with("tracer_container_trend{"))
                .all(|l| l.contains(r#"node="node-a""#)),
            "{text}"
        );
    }
}
