//! How the agent runs: its configuration (from flags and the config file) and the faults the
//! tests inject.

use std::{path::PathBuf, time::Duration};

use super::{budget::BudgetPolicy, escalation::EscalationPolicy};
use crate::{
    discover::node::NodePaths,
    evidence::{store::Retention, watch::WatchConfig},
    report::growth::GrowthConfig,
    select::SelectionConfig,
    tracer::TracerConfig,
};

/// How the agent runs.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// BPF map sizes, probe placement, sampling.
    pub tracer: TracerConfig,
    /// Where the node's records are.
    pub paths: NodePaths,
    /// Which pods to trace.
    pub selection: SelectionConfig,
    /// Growth windows.
    pub growth: GrowthConfig,
    /// How often exits and mmap records are processed.
    pub poll_interval: Duration,
    /// How often /proc is rescanned for new processes and pods.
    pub discovery_interval: Duration,
    /// How often every stack's bytes are sampled into the growth windows.
    pub sample_interval: Duration,
    /// Where evidence is persisted (a hostPath in the DaemonSet).
    pub state_dir: PathBuf,
    /// How much evidence is kept.
    pub retention: Retention,
    /// When evidence is taken.
    pub watch: WatchConfig,
    /// How often traced containers' memory figures are checked.
    pub watch_interval: Duration,
    /// Stacks kept per evidence snapshot.
    pub evidence_top: usize,
    /// A failure to inject, for the tests of what happens when the agent fails.
    pub fault: Option<Fault>,
    /// Which containers are watched without being selected.
    pub watch_all: WatchAll,
    /// When the agent starts exact tracing by itself.
    pub escalation: EscalationPolicy,
    /// How much exact tracing may cost a process.
    pub budget: BudgetPolicy,
    /// Where profiles are exported over OTLP (`None`: nowhere).
    pub otlp: Option<super::otlp::OtlpExport>,
}

/// Always-on watching: every container of every pod not excluded has its memory trend
/// followed (and its first-touch growth profiled), with no uprobes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchAll {
    /// Off: only selected pods are looked at.
    pub enabled: bool,
    /// Namespace globs not watched.
    pub exclude_namespaces: Vec<String>,
    /// Pod-name globs not watched.
    pub exclude_pods: Vec<String>,
}

impl Default for WatchAll {
    fn default() -> Self {
        Self {
            enabled: true,
            exclude_namespaces: tracer_parse::config::DEFAULT_WATCH_EXCLUDED_NAMESPACES
                .map(str::to_owned)
                .to_vec(),
            exclude_pods: Vec::new(),
        }
    }
}

/// A failure injected on purpose (`tracer-daemon run --inject-fault`, hidden): the tests prove
/// that health turns NOT_SERVING and the process exits when the agent's thread fails, which no
/// real input is known to cause any more.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The agent's thread panics this long after it started.
    PanicAfter(Duration),
    /// The agent's thread stops answering (blocks) this long after it started.
    StallAfter(Duration),
}

impl std::str::FromStr for Fault {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (kind, after) = text.split_once('=').ok_or_else(|| {
            format!("{text:?}: expected panic-after=DURATION or stall-after=DURATION")
        })?;
        let after = humantime::parse_duration(after).map_err(|e| format!("{text:?}: {e}"))?;
        match kind {
            "panic-after" => Ok(Self::PanicAfter(after)),
            "stall-after" => Ok(Self::StallAfter(after)),
            _ => Err(format!(
                "{text:?}: expected panic-after=DURATION or stall-after=DURATION"
            )),
        }
    }
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            tracer: TracerConfig::default(),
            paths: NodePaths::default(),
            selection: SelectionConfig::default(),
            growth: GrowthConfig::default(),
            poll_interval: Duration::from_millis(200),
            discovery_interval: Duration::from_secs(2),
            sample_interval: Duration::from_secs(10),
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            retention: Retention::default(),
            watch: WatchConfig::default(),
            watch_interval: Duration::from_millis(500),
            evidence_top: 100,
            fault: None,
            watch_all: WatchAll::default(),
            escalation: EscalationPolicy::default(),
            budget: BudgetPolicy::default(),
            otlp: None,
        }
    }
}

/// Stacks whose growth is tracked (the largest by bytes, node-wide).
pub const GROWTH_TRACKED_STACKS: usize = 4096;

/// Where evidence lives when nobody says otherwise.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/tracer";
