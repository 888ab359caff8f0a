//! What ListTargets returns: pods, containers and processes with memory figures and whether
//! each is traced (and why not, when it should be).

use serde::Serialize;

use super::watch_all::TracingMode;
use crate::{discover::memory::MemoryFigures, report::trend::ContainerTrend};

/// A process.
#[derive(Clone, Debug, Serialize)]
pub struct TargetProcess {
    /// Pid.
    pub pid: u32,
    /// Command name.
    pub comm: String,
    /// True when its allocator is probed.
    pub traced: bool,
    /// The allocator library probed.
    pub allocator: Option<String>,
    /// Why a selected process is not traced.
    pub not_traced_reason: Option<String>,
    /// How stacks are unwound through each of its executable files.
    pub unwinding: Vec<crate::unwind::loader::BinaryUnwinding>,
    /// What tracing costs it now, as a share of one core (measured while traced).
    pub tracing_core_share: Option<f64>,
    /// While traced: mean bytes between sampled allocations (0: exact).
    pub sample_bytes: u64,
    /// Why it is sampled, when the budget switched it.
    pub sampling_reason: Option<String>,
}

/// A container.
#[derive(Clone, Debug, Serialize)]
pub struct ContainerTarget {
    /// Name, when known.
    pub name: Option<String>,
    /// Runtime id.
    pub id: String,
    /// Runtime.
    pub runtime: String,
    /// Memory figures now.
    pub memory: Option<MemoryFigures>,
    /// Processes.
    pub processes: Vec<TargetProcess>,
    /// Whether it is traced, and why.
    pub tracing: TracingMode,
    /// The reason behind `tracing`, when there is more to say (an escalation's trigger).
    pub tracing_reason: Option<String>,
    /// Its memory trend, when watched.
    pub trend: Option<ContainerTrend>,
}

/// A pod.
#[derive(Clone, Debug, Serialize)]
pub struct PodTarget {
    /// Namespace, when known.
    pub namespace: Option<String>,
    /// Name, when known.
    pub name: Option<String>,
    /// Uid.
    pub uid: String,
    /// QoS class.
    pub qos_class: String,
    /// Whether the selection includes it.
    pub selected: bool,
    /// Containers.
    pub containers: Vec<ContainerTarget>,
}

/// Everything on the node.
#[derive(Clone, Debug, Default, Serialize)]
pub struct NodeTargets {
    /// Pods, by namespace and name.
    pub pods: Vec<PodTarget>,
    /// Processes traced by pid outside any pod.
    pub other_processes: Vec<TargetProcess>,
}
