//! Always-on watching in the agent: every container of every pod not excluded has its memory
//! trend sampled from its cgroup files each sample interval, the escalation policy reviews the
//! trends, and each container says whether it is traced and why.

use std::time::Instant;

use serde::Serialize;
use tracing::info;

use super::{
    Agent,
    escalation::{Candidate, EscalationRecord},
    reports::now_unix_ms,
};
use crate::{
    collect::monotonic_now_ns,
    discover::node::{Container, Pod},
};

/// Whether a container is traced, and why (or why not).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TracingMode {
    /// Selected by the patterns or StartTracing.
    Selected,
    /// Traced by the escalation policy.
    Auto,
    /// Selected or escalated, but tracing its processes cost more than the budget: stopped.
    OverBudget,
    /// Left out of watching by the `[watch]` exclusions.
    Excluded,
    /// Watched (trend, growth profile), not traced.
    Watched,
    /// Neither selected nor watched (watching is off).
    Off,
}

impl TracingMode {
    /// The name the API and tracerctl use.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Selected => "selected",
            Self::Auto => "auto",
            Self::OverBudget => "over_budget",
            Self::Excluded => "excluded",
            Self::Watched => "watched",
            Self::Off => "off",
        }
    }
}

impl TracingMode {
    /// The mode an API name stands for (an unknown name reads as `Off`).
    pub fn from_name(name: &str) -> Self {
        match name {
            "selected" => Self::Selected,
            "auto" => Self::Auto,
            "over_budget" => Self::OverBudget,
            "excluded" => Self::Excluded,
            "watched" => Self::Watched,
            _ => Self::Off,
        }
    }
}

impl Agent {
    /// Whether always-on watching covers this pod.
    pub(super) fn watches(&self, pod: &Pod) -> bool {
        self.config.watch_all.enabled
            && !self
                .exclusions
                .excludes(pod.namespace.as_deref(), pod.name.as_deref())
    }

    /// How a container is traced and why.
    pub(super) fn tracing_mode(
        &self,
        pod: &Pod,
        container: &Container,
    ) -> (TracingMode, Option<String>) {
        let over_budget = container.pids.iter().find_map(|&pid| {
            self.plan
                .failure(pid)
                .filter(|reason| reason.starts_with(super::budget::OVER_BUDGET))
                .map(|reason| format!("pid {pid}: {reason}"))
        });
        let selected = self.plan.selected(pod, container);
        let escalated = self.escalation(container);
        if (selected || escalated.is_some())
            && let Some(reason) = over_budget
        {
            return (TracingMode::OverBudget, Some(reason));
        }
        if selected {
            return (TracingMode::Selected, None);
        }
        if let Some(record) = escalated {
            return (TracingMode::Auto, Some(record.reason.clone()));
        }
        if !self.config.watch_all.enabled {
            return (TracingMode::Off, None);
        }
        if !self.watches(pod) {
            return (
                TracingMode::Excluded,
                Some("matches a [watch] exclusion".to_owned()),
            );
        }
        if self.plan.stopped_by_hand(pod, container) {
            return (
                TracingMode::Watched,
                Some("stopped by hand: never escalated".to_owned()),
            );
        }
        (TracingMode::Watched, None)
    }

    /// The escalation in force for a container, if any.
    pub(super) fn escalation(&self, container: &Container) -> Option<&EscalationRecord> {
        self.escalations.get(&container.id)
    }

    /// One round of always-on watching: every watched container's memory figures into its
    /// trend, then the escalation policy's review; a decision takes effect at once (the node
    /// is reconciled).
    pub(super) fn review_containers(&mut self) {
        let mut round = Vec::new();
        for pod in self.view.pods.values() {
            if !self.watches(pod) {
                continue;
            }
            for container in pod.containers.values() {
                if let Some(figures) = container.memory() {
                    round.push((pod, container, figures));
                }
            }
        }
        self.trends.record(
            monotonic_now_ns(),
            round.iter().map(|(_, c, f)| (c.id.as_str(), *f)),
        );
        let candidates: Vec<Candidate> = round
            .iter()
            .filter_map(|(pod, container, figures)| {
                Some(Candidate {
                    container_id: container.id.clone(),
                    trend: self.trends.trend(&container.id)?,
                    figures: *figures,
                    barred: self.plan.selected(pod, container)
                        || self.plan.stopped_by_hand(pod, container),
                })
            })
            .collect();
        let decisions = self
            .escalations
            .review(Instant::now(), now_unix_ms(), &candidates);
        if decisions.start.is_empty() && decisions.stop.is_empty() {
            return;
        }
        for (container, reason) in &decisions.stop {
            info!(container, reason, "escalation ends: exact tracing stops");
            self.plan.deescalate(container);
        }
        for (container, reason) in &decisions.start {
            info!(container, reason, "escalating: exact tracing starts");
            self.plan.escalate(container);
        }
        let unwanted = self.plan.rescanned(&self.view, &self.traced());
        for pid in unwanted {
            self.untrace(pid);
        }
        self.dispatch();
    }
}
