//! What the agent should trace, and what it still has to do about it: the pod selection (by
//! namespace, name and QoS, plus explicit starts and stops), processes traced by pid, the
//! selected processes waiting to be attached, those being read for attaching, and those that
//! could not be traced and why. Bookkeeping only: no /proc, no kernel; the agent acts on what
//! it says.

use std::collections::{HashMap, HashSet, VecDeque};

use crate::{
    discover::node::{Container, NodeView, Pod},
    select::{Explicit, SelectError, Selection, SelectionConfig},
};

/// The agent's tracing plan.
pub struct Reconciler {
    selection: Selection,
    /// Pids traced by pid (outside the pod selection).
    explicit_pids: HashSet<u32>,
    /// Selected processes that could not be traced, and why.
    failures: HashMap<u32, String>,
    /// Selected processes in pods at the last rescan.
    wanted: HashSet<u32>,
    /// Selected, not traced, not yet being read, newest first.
    pending: VecDeque<u32>,
    /// Being read for attaching (see `preparer`).
    in_flight: HashSet<u32>,
    /// Containers (by id) the escalation policy traces.
    escalated: HashSet<String>,
}

impl Reconciler {
    /// A plan for this selection; nothing wanted until the first [`Reconciler::rescanned`].
    pub fn new(config: &SelectionConfig) -> Result<Self, SelectError> {
        Ok(Self {
            selection: Selection::new(config)?,
            explicit_pids: HashSet::new(),
            failures: HashMap::new(),
            wanted: HashSet::new(),
            pending: VecDeque::new(),
            in_flight: HashSet::new(),
            escalated: HashSet::new(),
        })
    }

    /// Whether a container is to be traced: selected, or escalated and not stopped by hand.
    pub fn selects(&self, pod: &Pod, container: &Container) -> bool {
        self.selected(pod, container)
            || (self.escalated.contains(&container.id) && !self.stopped_by_hand(pod, container))
    }

    /// Whether a container is selected by the patterns or StartTracing (not by escalation).
    pub fn selected(&self, pod: &Pod, container: &Container) -> bool {
        self.selection.selects(
            &pod.uid,
            pod.namespace.as_deref(),
            pod.name.as_deref(),
            container.name.as_deref(),
        )
    }

    /// Whether StopTracing named the pod or the container: that wins over escalation.
    pub fn stopped_by_hand(&self, pod: &Pod, container: &Container) -> bool {
        self.selection.stopped(&pod.uid, container.name.as_deref())
    }

    /// Whether StartTracing named the pod or the container: a person's choice, which the
    /// overhead budget does not overrule.
    pub fn started_by_hand(&self, pod: &Pod, container: &Container) -> bool {
        self.selection.started(&pod.uid, container.name.as_deref())
    }

    /// Traces a container for the escalation policy (from the next rescan).
    pub fn escalate(&mut self, container_id: &str) {
        let _ = self.escalated.insert(container_id.to_owned());
    }

    /// Stops tracing a container for the escalation policy (from the next rescan).
    pub fn deescalate(&mut self, container_id: &str) {
        let _ = self.escalated.remove(container_id);
    }

    /// After a rescan of the node: forgets pods and processes that are gone, queues every
    /// selected process not yet traced, and returns the traced ones no longer selected (to be
    /// detached; processes traced by pid stay).
    pub fn rescanned(&mut self, view: &NodeView, traced: &HashSet<u32>) -> Vec<u32> {
        self.selection
            .retain_pods(|uid| view.pods.contains_key(uid));
        self.escalated.retain(|id| {
            view.pods
                .values()
                .any(|pod| pod.containers.contains_key(id))
        });
        let explicit = &self.explicit_pids;
        self.failures
            .retain(|pid, _| view.processes.contains_key(pid) || explicit.contains(pid));
        self.wanted.clear();
        let mut unwanted = Vec::new();
        for pod in view.pods.values() {
            for container in pod.containers.values() {
                let selected = self.selects(pod, container);
                for &pid in &container.pids {
                    if selected {
                        let _ = self.wanted.insert(pid);
                    } else if traced.contains(&pid) && !self.explicit_pids.contains(&pid) {
                        unwanted.push(pid);
                    }
                }
            }
        }
        let mut queued: Vec<u32> = self
            .wanted
            .iter()
            .copied()
            .filter(|pid| {
                !traced.contains(pid)
                    && !self.failures.contains_key(pid)
                    && !self.in_flight.contains(pid)
            })
            .collect();
        // Newest first (pids grow with time, wrap-around aside): under churn the youngest
        // process is the likeliest to be alive when its probes go in, and an attach to a
        // process that exits meanwhile costs the kernel up to 0.2 s for nothing.
        queued.sort_unstable_by(|a, b| b.cmp(a));
        self.pending = queued.into();
        unwanted
    }

    /// The next selected process to read for attaching, while fewer than `max_in_flight` are
    /// being read and those being read would not take the last places under the selection's
    /// process limit. Once the limit is reached, a process is not read: it is recorded as a
    /// failure with the reason.
    pub fn next_to_prepare(&mut self, traced: &HashSet<u32>, max_in_flight: usize) -> Option<u32> {
        while self.in_flight.len() < max_in_flight {
            let pid = self.pending.pop_front()?;
            if traced.contains(&pid) || self.failures.contains_key(&pid) {
                continue;
            }
            let max = self.selection.max_processes;
            if traced.len() >= max {
                self.fail(pid, format!("max processes reached ({max})"));
                continue;
            }
            if traced.len() + self.in_flight.len() >= max {
                // Those being read may fail and leave room: ask again when they are back.
                self.pending.push_front(pid);
                return None;
            }
            let _ = self.in_flight.insert(pid);
            return Some(pid);
        }
        None
    }

    /// A process came back from being read: whether it is still wanted (attach it).
    pub fn prepared(&mut self, pid: u32) -> bool {
        self.in_flight.remove(&pid)
            && (self.wanted.contains(&pid) || self.explicit_pids.contains(&pid))
    }

    /// Whether processes are waiting to be read or being read.
    pub fn busy(&self) -> bool {
        !self.pending.is_empty() || !self.in_flight.is_empty()
    }

    /// Records why a process cannot be traced; it is not tried again until it is started
    /// explicitly or leaves and comes back.
    pub fn fail(&mut self, pid: u32, reason: String) {
        let _ = self.failures.insert(pid, reason);
    }

    /// Why a process could not be traced, if it could not.
    pub fn failure(&self, pid: u32) -> Option<&str> {
        self.failures.get(&pid).map(String::as_str)
    }

    /// Processes that could not be traced.
    pub fn failure_count(&self) -> usize {
        self.failures.len()
    }

    /// Tries a process again (an explicit start).
    pub fn retry(&mut self, pid: u32) {
        let _ = self.failures.remove(&pid);
    }

    /// A process traced by pid, outside the selection.
    pub fn start_pid(&mut self, pid: u32) {
        self.retry(pid);
        let _ = self.explicit_pids.insert(pid);
    }

    /// Whether a process is traced by pid.
    pub fn is_explicit(&self, pid: u32) -> bool {
        self.explicit_pids.contains(&pid)
    }

    /// A process that is no longer wanted (stopped, or ended): not traced by pid any more, and
    /// not attached if it comes back from being read before the next rescan.
    pub fn forget_pid(&mut self, pid: u32) {
        let _ = self.explicit_pids.remove(&pid);
        let _ = self.wanted.remove(&pid);
    }

    /// Selects a pod (or one of its containers) until stopped.
    pub fn start_pod(&mut self, explicit: Explicit) {
        self.selection.start(explicit);
    }

    /// Deselects a pod (or one of its containers).
    pub fn stop_pod(&mut self, explicit: Explicit) {
        self.selection.stop(explicit);
    }
}
