//! The agent's figures for Prometheus: its own health and, per traced container, how much
//! memory its leak sites hold and how fast that grows. Label cardinality is bounded: at most
//! `max_containers` containers (those holding the most bytes) get their own series.

use std::collections::BTreeMap;

use super::{Agent, reports::Resolved};
use crate::{
    collect::stats::BpfStats,
    report::{first_touch::FirstTouchOrder, pod::SortBy},
    tracer::TracerHealth,
};

/// A traced container's leak figures.
#[derive(Clone, Debug, PartialEq)]
pub struct ContainerLeak {
    /// Namespace ("" when the kubelet's records do not name it).
    pub namespace: String,
    /// Pod name (the uid when unnamed).
    pub pod: String,
    /// Container name ("" when unknown).
    pub container: String,
    /// Outstanding bytes over its traced processes.
    pub outstanding_bytes: u64,
    /// Outstanding allocations.
    pub outstanding_count: u64,
    /// Leak rate of its growing stacks, bytes per second.
    pub leak_bytes_per_second: f64,
    /// Time until its memory limit at that rate, seconds (`None`: no limit or no growth).
    pub time_to_limit_seconds: Option<f64>,
    /// Its memory limit, bytes.
    pub memory_limit_bytes: Option<u64>,
    /// Its top call site by outstanding bytes (exact tracing).
    pub top_site: Option<TopSite>,
}

/// A container's top call site for the alert's annotation: one per container, its name cut
/// to [`TOP_SITE_MAX_CHARS`], so the label's values stay bounded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopSite {
    /// The function (or `module+0x...` when unnamed), cut to [`TOP_SITE_MAX_CHARS`].
    pub function: String,
    /// `exact` (the traced report's top stack by bytes) or `growth_profile` (resident growth
    /// by first touch, the site touching most new memory within the window).
    pub source: &'static str,
}

/// The longest call-site name a metric label carries (C++ names can run to kilobytes).
pub const TOP_SITE_MAX_CHARS: usize = 120;

impl TopSite {
    fn new(frame: &crate::symbolize::Frame, source: &'static str) -> Self {
        let name = frame
            .function
            .clone()
            .unwrap_or_else(|| frame.display_name());
        Self {
            function: name.chars().take(TOP_SITE_MAX_CHARS).collect(),
            source,
        }
    }
}

/// A watched container's trend and whether it is traced.
#[derive(Clone, Debug, PartialEq)]
pub struct ContainerWatch {
    /// Namespace ("" when unnamed).
    pub namespace: String,
    /// Pod name (the uid when unnamed).
    pub pod: String,
    /// Container name ("" when unknown).
    pub container: String,
    /// Anonymous memory now, bytes.
    pub anon_bytes: u64,
    /// Its growth over the window, bytes per second.
    pub growth_bytes_per_second: f64,
    /// The growth class (`growing`, `levelling_off`, `stable`, `shrinking`,
    /// `insufficient_data`).
    pub class: &'static str,
    /// Projected time to the limit while growing, seconds.
    pub time_to_limit_seconds: Option<f64>,
    /// `selected`, `auto` or `watched`.
    pub tracing: &'static str,
    /// While growing and not traced: the growth profile's top site within the window.
    pub top_site: Option<TopSite>,
}

/// Everything the metrics endpoint shows, read in one go on the agent's thread.
#[derive(Clone, Debug, Default)]
pub struct NodeMetrics {
    /// The tracer's processes, maps and caches.
    pub tracer: TracerHealth,
    /// The BPF programs' counters.
    pub bpf: BpfStats,
    /// Whether bytes and counts are sampled estimates.
    pub estimated: bool,
    /// Evidence records saved since start, and saves that failed.
    pub evidence_saved: u64,
    /// Saves that failed.
    pub evidence_failed: u64,
    /// Records and payload bytes in the store now.
    pub evidence_records: u64,
    /// Payload bytes in the store now.
    pub evidence_bytes: u64,
    /// What the store found wrong with itself.
    pub evidence_store: crate::evidence::store::StoreHealth,
    /// Selected processes that could not be traced.
    pub trace_failures: u64,
    /// Per container, most bytes first, at most `max_containers`.
    pub containers: Vec<ContainerLeak>,
    /// Containers left out by that bound.
    pub containers_not_shown: u64,
    /// Watched containers, fastest growing first, at most `max_containers`.
    pub watched: Vec<ContainerWatch>,
    /// Containers watched now.
    pub containers_watched: u64,
    /// Containers the escalation policy traces now.
    pub containers_escalated: u64,
    /// Whether the growth profile's kernel hooks are attached.
    pub fault_hook_attached: bool,
    /// Processes that stopped being traced for the overhead budget since start.
    pub processes_over_budget: u64,
    /// Processes the overhead budget switched to sampling since start.
    pub processes_budget_sampled: u64,
    /// The largest share of a core tracing costs any traced process now.
    pub max_tracing_core_share: f64,
    /// What the budget prices each kind of probe hit at.
    pub probe_cost: crate::bpf::probe_cost::ProbeCost,
    /// The OTLP exporter's figures, when it runs.
    pub otlp: Option<crate::export::exporter::ExportFigures>,
}

impl Agent {
    /// Reads every figure; per-container totals come from the per-stack totals (nothing is
    /// symbolized).
    pub(super) fn metrics(&mut self, max_containers: usize) -> NodeMetrics {
        self.tracer.poll();
        let (evidence_records, evidence_bytes) = self.store.usage().unwrap_or((0, 0));
        let mut containers = Vec::new();
        let traced: std::collections::HashSet<u32> = self.tracer.pids().into_iter().collect();
        let pods: Vec<_> = self.view.pods.values().cloned().collect();
        for pod in pods {
            let resolved = Resolved {
                containers: pod
                    .containers
                    .values()
                    .filter(|c| c.pids.iter().any(|p| traced.contains(p)))
                    .map(|c| (Some(c.id.clone()), c.pids.iter().copied().collect()))
                    .collect::<BTreeMap<_, Vec<u32>>>(),
                pod: Some(pod.clone()),
            };
            if resolved.containers.is_empty() {
                continue;
            }
            // The top stack only (its symbols are cached after the first scrape).
            let Ok(reports) = self.container_reports(&resolved, 0, SortBy::Bytes, 1) else {
                continue;
            };
            for report in reports {
                containers.push(ContainerLeak {
                    namespace: pod.namespace.clone().unwrap_or_default(),
                    pod: pod.name.clone().unwrap_or_else(|| pod.uid.clone()),
                    container: report.name.clone().unwrap_or_default(),
                    outstanding_bytes: report.outstanding_bytes,
                    outstanding_count: report.outstanding_count,
                    leak_bytes_per_second: report.leak_bytes_per_second,
                    time_to_limit_seconds: report.time_to_limit_ns.map(|ns| ns as f64 / 1e9),
                    memory_limit_bytes: report.memory.as_ref().and_then(|m| m.limit_bytes),
                    top_site: report
                        .stacks
                        .first()
                        .and_then(|s| s.frames.first())
                        .map(|f| TopSite::new(f, "exact")),
                });
            }
        }
        containers.sort_by(|a, b| {
            b.outstanding_bytes.cmp(&a.outstanding_bytes).then_with(|| {
                (&a.namespace, &a.pod, &a.container).cmp(&(&b.namespace, &b.pod, &b.container))
            })
        });
        let containers_not_shown = containers.len().saturating_sub(max_containers) as u64;
        containers.truncate(max_containers);
        let mut watched = Vec::new();
        for (uid, pod) in &self.view.pods {
            for container in pod.containers.values() {
                let Some(trend) = self.trends.trend(&container.id) else {
                    continue;
                };
                let key = (uid.clone(), container.id.clone());
                watched.push((
                    key,
                    ContainerWatch {
                        namespace: pod.namespace.clone().unwrap_or_default(),
                        pod: pod.name.clone().unwrap_or_else(|| pod.uid.clone()),
                        container: container.name.clone().unwrap_or_default(),
                        anon_bytes: trend.anon_bytes,
                        growth_bytes_per_second: trend.growth.bytes_per_second,
                        class: class_name(trend.growth.class),
                        time_to_limit_seconds: trend.time_to_limit_ns.map(|ns| ns as f64 / 1e9),
                        tracing: self.tracing_mode(pod, container).0.as_str(),
                        top_site: None,
                    },
                ));
            }
        }
        let containers_watched = watched.len() as u64;
        watched.sort_by(|(_, a), (_, b)| {
            b.growth_bytes_per_second
                .total_cmp(&a.growth_bytes_per_second)
                .then_with(|| {
                    (&a.namespace, &a.pod, &a.container).cmp(&(&b.namespace, &b.pod, &b.container))
                })
        });
        watched.truncate(max_containers);
        // Growth-profile sites for the exported growing containers that exact tracing does
        // not name (each read walks the fault map: growing ones only).
        for ((uid, id), w) in &mut watched {
            let named = containers.iter().any(|c| {
                (&c.namespace, &c.pod, &c.container) == (&w.namespace, &w.pod, &w.container)
                    && c.top_site.is_some()
            });
            if w.class != "growing" || named {
                continue;
            }
            let Some(container) = self.view.pods.get(uid).and_then(|p| p.containers.get(id)) else {
                continue;
            };
            let container = container.clone();
            w.top_site = self
                .growth_profile(&container, FirstTouchOrder::Window, 1)
                .and_then(|p| p.stacks.into_iter().next())
                .and_then(|s| s.site().map(|f| TopSite::new(f, "growth_profile")));
        }
        let watched = watched.into_iter().map(|(_, w)| w).collect();
        NodeMetrics {
            tracer: self.tracer.health(),
            bpf: self.tracer.stats(),
            estimated: traced
                .iter()
                .any(|&pid| self.tracer.sample_bytes_of(pid).unwrap_or(0) > 0)
                || self.tracer.sample_bytes() > 0,
            evidence_saved: self.evidence_saved,
            evidence_failed: self.evidence_failed,
            evidence_records: evidence_records as u64,
            evidence_bytes,
            evidence_store: self.store.health(),
            trace_failures: self.plan.failure_count() as u64,
            containers,
            containers_not_shown,
            watched,
            containers_watched,
            containers_escalated: self.escalations.containers().count() as u64,
            fault_hook_attached: *self.tracer.fault_hook() == crate::bpf::FaultHook::Attached,
            processes_over_budget: self.over_budget,
            processes_budget_sampled: self.budget_sampled,
            probe_cost: self.budget.probe_cost(),
            otlp: self.config.otlp.as_ref().map(|o| o.queue.figures()),
            max_tracing_core_share: self
                .tracer
                .pids()
                .into_iter()
                .filter_map(|pid| self.tracing_cost(pid))
                .map(|c| c.core_share)
                .fold(0.0, f64::max),
        }
    }
}

/// A growth class as the metrics label it.
fn class_name(class: crate::report::growth::GrowthClass) -> &'static str {
    use crate::report::growth::GrowthClass;
    match class {
        GrowthClass::InsufficientData => "insufficient_data",
        GrowthClass::Growing => "growing",
        GrowthClass::LevellingOff => "levelling_off",
        GrowthClass::Stable => "stable",
        GrowthClass::Shrinking => "shrinking",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_top_site_name_is_cut_to_the_bound_on_a_character_boundary() {
        let unnamed = crate::symbolize::Frame {
            addr: 0x5000,
            function: None,
            file: None,
            line: None,
            module: Some("/app/bin".into()),
            module_offset: Some(0x1234),
            inlined: false,
        };
        let frame = crate::symbolize::Frame {
            function: Some("é".repeat(TOP_SITE_MAX_CHARS * 4)),
            ..unnamed.clone()
        };
        let site = TopSite::new(&frame, "exact");
        assert_eq!(site.function.chars().count(), TOP_SITE_MAX_CHARS);
        assert_eq!(TopSite::new(&unnamed, "exact").function, "/app/bin+0x1234");
    }
}
