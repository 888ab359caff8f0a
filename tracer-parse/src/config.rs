//! The node agent's config file (TOML; the DaemonSet mounts it from a ConfigMap). Every key is
//! optional, unknown keys are errors (a typo must not silently select nothing), and flags given
//! on the command line add to or override what the file says. Reading the file is the
//! daemon's (`config::load`).

use std::{ops::RangeInclusive, time::Duration};

use serde::Deserialize;

use crate::select::SelectionConfig;

/// Largest config file read: a ConfigMap holds at most 1 MiB, and a file past that is a mistake
/// (a generated list gone wrong), not a config.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Most patterns in each list of `[selection]`: globs cover many pods each, so a few dozen are
/// plenty; the bound keeps a runaway list from costing the agent memory on every match.
pub const MAX_LIST_ENTRIES: usize = 256;

/// Longest pattern (a Kubernetes name is at most 253 bytes).
pub const MAX_PATTERN_BYTES: usize = 253;

/// Shortest interval of any periodic task (a zero period would spin or panic the agent).
pub const MIN_INTERVAL: Duration = Duration::from_millis(1);

/// Allowed outstanding allocations across the node (`max_allocations`, about 100 B of kernel
/// memory each, preallocated).
pub const ALLOCATIONS_RANGE: RangeInclusive<u32> = 1..=1 << 25;
/// Allowed distinct stacks (`max_stacks`, about 600 B each).
pub const STACKS_RANGE: RangeInclusive<u32> = 1..=1 << 20;
/// Allowed unwind-table rows (`max_unwind_rows`, 16 B each).
pub const UNWIND_ROWS_RANGE: RangeInclusive<u32> = 1..=1 << 25;
/// Allowed traced processes at once (`max_processes`).
pub const PROCESSES_RANGE: RangeInclusive<usize> = 1..=65_536;

/// The whole file.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Which pods to trace.
    #[serde(default)]
    pub selection: SelectionConfig,
    /// Growth windows.
    #[serde(default)]
    pub growth: GrowthSection,
    /// Map capacities.
    #[serde(default)]
    pub limits: LimitsSection,
    /// Which containers are watched without being selected (`[watch]`).
    #[serde(default)]
    pub watch: WatchSection,
    /// When the agent starts exact tracing by itself (`[escalation]`).
    #[serde(default)]
    pub escalation: EscalationSection,
    /// How much exact tracing may cost a process (`[budget]`).
    #[serde(default)]
    pub budget: BudgetSection,
    /// Exporting profiles over OTLP (`[otlp]`).
    #[serde(default)]
    pub otlp: OtlpSection,
}

/// Allowed stacks per container in each exported profile (`[otlp] top`).
pub const OTLP_TOP_RANGE: RangeInclusive<usize> = 1..=10_000;
/// Allowed profile batches waiting for the OTLP endpoint (`[otlp] queue`).
pub const OTLP_QUEUE_RANGE: RangeInclusive<usize> = 1..=1024;

/// `[otlp]`: exporting per-container profiles to an OTLP/gRPC endpoint; flags override it.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct OtlpSection {
    /// `http://HOST:PORT` or `https://HOST:PORT` (absent: no export).
    pub endpoint: Option<String>,
    /// Time between exports.
    #[serde(default, with = "humantime_serde_option")]
    pub interval: Option<Duration>,
    /// Headers sent with every export (e.g. `authorization`).
    pub headers: Option<std::collections::BTreeMap<String, String>>,
    /// PEM CA bundle for an https endpoint.
    pub ca: Option<std::path::PathBuf>,
    /// Allow a plain `http://` endpoint.
    pub insecure: Option<bool>,
    /// Stacks per container in each profile.
    pub top: Option<usize>,
    /// Profile batches waiting to be sent at most.
    pub queue: Option<usize>,
    /// A batch not sent after this long is dropped.
    #[serde(default, with = "humantime_serde_option")]
    pub max_age: Option<Duration>,
}

/// `[budget]`: the overhead budget per traced process.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BudgetSection {
    /// `false`: a process stays traced whatever tracing costs it.
    pub enabled: Option<bool>,
    /// Percent of one core tracing may take from a process (1..=100).
    pub max_core_percent: Option<u32>,
    /// Mean bytes between sampled allocations for a process over the budget (0: no sampling
    /// step, it stops being traced at once; else 1..=2^40).
    pub sample_bytes: Option<u64>,
}

/// Namespaces not watched unless the config says otherwise: the node's own system pods (CNI,
/// kube-proxy, DNS: an automatic uprobe there would slow the node's networking, and their
/// memory is the cluster operator's to size) and the tracer's own namespace (it must never
/// trace itself).
pub const DEFAULT_WATCH_EXCLUDED_NAMESPACES: [&str; 2] = ["kube-system", "leak-tracer"];

/// `[watch]`: every container of every pod is watched (memory trend from its cgroup files,
/// growth profile from first-touch page faults) unless excluded here.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct WatchSection {
    /// `false`: only selected pods are looked at (the agent before always-on watching).
    pub enabled: Option<bool>,
    /// Namespace globs not watched (default [`DEFAULT_WATCH_EXCLUDED_NAMESPACES`]; `[]`
    /// watches every namespace).
    pub exclude_namespaces: Option<Vec<String>>,
    /// Pod-name globs not watched (default none).
    pub exclude_pods: Option<Vec<String>>,
}

/// `[escalation]`: the policy that starts exact tracing of a watched container by itself.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EscalationSection {
    /// `false`: only selections and StartTracing start exact tracing.
    pub enabled: Option<bool>,
    /// Escalate a growing container whose projected time to its limit is under this.
    #[serde(default, with = "humantime_serde_option")]
    pub time_to_limit: Option<Duration>,
    /// Escalate a growing container whose usage is at least this percentage of its limit.
    pub usage_percent: Option<u32>,
    /// Most containers escalated at once.
    pub max_containers: Option<usize>,
    /// How long an escalation lasts when the container stops growing before then; one still
    /// growing at the end is kept.
    #[serde(default, with = "humantime_serde_option")]
    pub max_duration: Option<Duration>,
}

/// `[growth]`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct GrowthSection {
    /// Span of history per stack, e.g. "5m".
    #[serde(default, with = "humantime_serde_option")]
    pub window: Option<Duration>,
    /// Time between samples, e.g. "10s".
    #[serde(default, with = "humantime_serde_option")]
    pub sample_interval: Option<Duration>,
}

/// `[limits]`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    /// Outstanding allocations across the node.
    pub max_allocations: Option<u32>,
    /// Distinct stacks across the node.
    pub max_stacks: Option<u32>,
    /// Unwind-table rows of binaries without frame pointers.
    pub max_unwind_rows: Option<u32>,
}

/// Parses config text and checks every value against its bounds.
pub fn parse(text: &str) -> Result<ConfigFile, String> {
    if text.len() as u64 > MAX_CONFIG_BYTES {
        return Err(format!(
            "{} bytes of config; at most {MAX_CONFIG_BYTES} are read",
            text.len()
        ));
    }
    let config: ConfigFile = toml::from_str(text).map_err(|e| e.to_string())?;
    config.validate()?;
    Ok(config)
}

impl ConfigFile {
    /// Checks every list, interval and capacity against its bounds; the error names the key
    /// and the allowed values.
    pub fn validate(&self) -> Result<(), String> {
        let selection = &self.selection;
        for (key, list) in [
            ("namespaces", &selection.namespaces),
            ("exclude_namespaces", &selection.exclude_namespaces),
            ("pods", &selection.pods),
            ("exclude_pods", &selection.exclude_pods),
        ] {
            check_list(&format!("[selection] {key}"), list)?;
        }
        if let Some(list) = &self.watch.exclude_namespaces {
            check_list("[watch] exclude_namespaces", list)?;
        }
        if let Some(list) = &self.watch.exclude_pods {
            check_list("[watch] exclude_pods", list)?;
        }
        if let Some(percent) = self.budget.max_core_percent {
            check_range("[budget] max_core_percent", percent, &(1..=100))?;
        }
        if let Some(bytes) = self.budget.sample_bytes
            && bytes != 0
        {
            check_range("[budget] sample_bytes", bytes, &(1..=1 << 40))?;
        }
        let escalation = &self.escalation;
        if let Some(percent) = escalation.usage_percent {
            check_range("[escalation] usage_percent", percent, &(1..=100))?;
        }
        if let Some(max) = escalation.max_containers {
            check_range("[escalation] max_containers", max, &(0..=1024))?;
        }
        for (key, interval) in [
            ("[escalation] time_to_limit", escalation.time_to_limit),
            ("[escalation] max_duration", escalation.max_duration),
        ] {
            if let Some(interval) = interval {
                check_interval(key, interval)?;
            }
        }
        if let Some(max) = selection.max_processes {
            check_range("[selection] max_processes", max, &PROCESSES_RANGE)?;
        }
        if let Some(interval) = self.growth.sample_interval {
            check_interval("[growth] sample_interval", interval)?;
        }
        if let Some(window) = self.growth.window {
            check_interval("[growth] window", window)?;
        }
        let otlp = &self.otlp;
        for (key, interval) in [
            ("[otlp] interval", otlp.interval),
            ("[otlp] max_age", otlp.max_age),
        ] {
            if let Some(interval) = interval {
                check_interval(key, interval)?;
            }
        }
        if let Some(top) = otlp.top {
            check_range("[otlp] top", top, &OTLP_TOP_RANGE)?;
        }
        if let Some(queue) = otlp.queue {
            check_range("[otlp] queue", queue, &OTLP_QUEUE_RANGE)?;
        }
        let limits = &self.limits;
        for (key, value, range) in [
            (
                "max_allocations",
                limits.max_allocations,
                &ALLOCATIONS_RANGE,
            ),
            ("max_stacks", limits.max_stacks, &STACKS_RANGE),
            (
                "max_unwind_rows",
                limits.max_unwind_rows,
                &UNWIND_ROWS_RANGE,
            ),
        ] {
            if let Some(value) = value {
                check_range(&format!("[limits] {key}"), value, range)?;
            }
        }
        Ok(())
    }
}

/// A list of patterns within [`MAX_LIST_ENTRIES`] entries of [`MAX_PATTERN_BYTES`] each.
pub fn check_list(key: &str, list: &[String]) -> Result<(), String> {
    if list.len() > MAX_LIST_ENTRIES {
        return Err(format!(
            "{key} has {} entries; at most {MAX_LIST_ENTRIES} are allowed (one glob such as \
             \"shop-*\" covers many names)",
            list.len()
        ));
    }
    if let Some(long) = list.iter().find(|p| p.len() > MAX_PATTERN_BYTES) {
        return Err(format!(
            "{key} has a pattern of {} bytes; at most {MAX_PATTERN_BYTES} are allowed",
            long.len()
        ));
    }
    Ok(())
}

/// A value within its allowed range.
pub fn check_range<T: PartialOrd + std::fmt::Display>(
    key: &str,
    value: T,
    range: &RangeInclusive<T>,
) -> Result<(), String> {
    if range.contains(&value) {
        Ok(())
    } else {
        Err(format!(
            "{key} = {value} is out of range: allowed {}..={}",
            range.start(),
            range.end()
        ))
    }
}

/// An interval of a periodic task: at least [`MIN_INTERVAL`].
pub fn check_interval(key: &str, interval: Duration) -> Result<(), String> {
    if interval >= MIN_INTERVAL {
        Ok(())
    } else {
        Err(format!(
            "{key} = {} is too short: a periodic task needs at least {} (e.g. \"10s\")",
            humantime::format_duration(interval),
            humantime::format_duration(MIN_INTERVAL)
        ))
    }
}

mod humantime_serde_option {
    use std::time::Duration;

    use serde::{Deserialize as _, Deserializer};

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        let Some(text) = Option::<String>::deserialize(d)? else {
            return Ok(None);
        };
        humantime::parse_duration(&text)
            .map(Some)
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn otlp_bounds_name_the_key() {
        for (text, key) in [
            ("[otlp]\nqueue = 0", "[otlp] queue"),
            ("[otlp]\ntop = 0", "[otlp] top"),
            ("[otlp]\ninterval = \"0s\"", "[otlp] interval"),
        ] {
            let error = parse(text).expect_err(text);
            assert!(error.contains(key), "{text}: {error}");
        }
        assert!(
            parse("[otlp]\nendpont = \"x\"").is_err(),
            "typos are errors"
        );
    }

    #[test]
    fn a_full_config_parses() {
        let config = parse(
            r#"
            [selection]
            namespaces = ["shop-*"]
            exclude_pods = ["*-canary"]
            max_processes = 32
            [growth]
            window = "10m"
            sample_interval = "15s"
            [limits]
            max_allocations = 1000000
            [watch]
            exclude_namespaces = []
            exclude_pods = ["batch-*"]
            [escalation]
            time_to_limit = "2h"
            usage_percent = 80
            max_containers = 3
            max_duration = "20m"
            [budget]
            max_core_percent = 10
            sample_bytes = 1048576
            [otlp]
            endpoint = "https://collector:4317"
            interval = "30s"
            headers = { authorization = "Bearer t" }
            top = 50
            queue = 8
            max_age = "10m"
            "#,
        )
        .expect("valid");
        assert_eq!(
            config.otlp.endpoint.as_deref(),
            Some("https://collector:4317")
        );
        assert_eq!(config.otlp.interval, Some(Duration::from_secs(30)));
        let headers = config.otlp.headers.clone().unwrap_or_default();
        assert_eq!(
            headers.get("authorization").map(String::as_str),
            Some("Bearer t")
        );
        assert_eq!((config.otlp.top, config.otlp.queue), (Some(50), Some(8)));
        assert_eq!(config.watch.exclude_namespaces, Some(Vec::new()));
        assert_eq!(config.watch.exclude_pods, Some(vec!["batch-*".to_owned()]));
        assert_eq!(
            config.escalation.time_to_limit,
            Some(Duration::from_secs(7200))
        );
        assert_eq!(config.escalation.usage_percent, Some(80));
        assert_eq!(config.escalation.max_containers, Some(3));
        assert_eq!(config.budget.max_core_percent, Some(10));
        assert_eq!(config.budget.sample_bytes, Some(1 << 20));
        assert_eq!(config.selection.namespaces, ["shop-*"]);
        assert_eq!(config.selection.max_processes, Some(32));
        assert_eq!(config.growth.window, Some(Duration::from_secs(600)));
        assert_eq!(config.limits.max_allocations, Some(1_000_000));
    }

    #[test]
    fn escalation_bounds_are_checked_naming_the_key() {
        let error = parse("[escalation]\nusage_percent = 130\n").expect_err("over 100");
        assert!(
            error.contains("[escalation] usage_percent = 130"),
            "{error}"
        );
        let error = parse("[escalation]\nmax_duration = \"0s\"\n").expect_err("zero");
        assert!(error.contains("[escalation] max_duration"), "{error}");
    }

    #[test]
    fn a_typo_is_an_error_naming_the_key_and_line() {
        let error = parse("[selection]\nnamespace = [\"shop\"]\n").expect_err("typo");
        assert!(
            error.contains("namespace") && error.contains("line 2"),
            "{error}"
        );
        let error = parse("[growth]\nwindow = \"soon\"\n").expect_err("bad duration");
        assert!(error.contains("window"), "{error}");
    }

    #[test]
    fn zero_intervals_and_capacities_name_the_key_and_the_allowed_values() {
        let error = parse("[growth]\nsample_interval = \"0s\"\n").expect_err("zero");
        assert!(
            error.contains("[growth] sample_interval") && error.contains("at least 1ms"),
            "{error}"
        );
        let error = parse("[limits]\nmax_stacks = 0\n").expect_err("zero");
        assert!(
            error.contains("[limits] max_stacks = 0") && error.contains("1..=1048576"),
            "{error}"
        );
        let error = parse("[selection]\nmax_processes = 0\n").expect_err("zero");
        assert!(error.contains("[selection] max_processes"), "{error}");
    }

    #[test]
    fn lists_and_texts_past_their_bounds_are_refused_with_the_bound() {
        let many: Vec<String> = (0..=MAX_LIST_ENTRIES)
            .map(|i| format!("\"ns-{i}\""))
            .collect();
        let text = format!("[selection]\nnamespaces = [{}]\n", many.join(","));
        let error = parse(&text).expect_err("too many");
        assert!(
            error.contains("[selection] namespaces has 257 entries") && error.contains("256"),
            "{error}"
        );
        let mut huge = String::from("# padding\n");
        while huge.len() as u64 <= MAX_CONFIG_BYTES {
            huge.push_str("# padding padding padding padding padding padding padding\n");
        }
        let error = parse(&huge).expect_err("too large");
        assert!(error.contains("at most 1048576"), "{error}");
    }

    #[test]
    fn an_empty_file_is_the_defaults() {
        assert_eq!(parse("").expect("valid"), ConfigFile::default());
    }
}
