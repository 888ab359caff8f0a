//! Which pods and containers the node agent traces: glob patterns on namespace and pod name
//! (include and exclude) from the config file and flags, plus explicit starts and stops made
//! at runtime through the API, and a cap on traced processes.
//!
//! Tracing is opt-in: with no include pattern and no explicit start, nothing is traced.

use std::collections::HashSet;

use glob::Pattern;
use serde::Deserialize;

/// Why a selection could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SelectError {
    /// A pattern is not a valid glob.
    #[error("invalid pattern {pattern:?} in {field}: {source}")]
    Pattern {
        /// Which list.
        field: &'static str,
        /// The pattern.
        pattern: String,
        #[source]
        source: glob::PatternError,
    },
}

/// The `[selection]` table of the config file (every field optional).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SelectionConfig {
    /// Namespaces to trace (globs, e.g. "shop-*"); empty: any namespace, if `pods` is set.
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// Namespaces never traced.
    #[serde(default)]
    pub exclude_namespaces: Vec<String>,
    /// Pod names to trace (globs); empty: any pod, if `namespaces` is set.
    #[serde(default)]
    pub pods: Vec<String>,
    /// Pod names never traced.
    #[serde(default)]
    pub exclude_pods: Vec<String>,
    /// Most processes traced at once on this node.
    #[serde(default)]
    pub max_processes: Option<usize>,
}

/// Default cap on traced processes.
pub const DEFAULT_MAX_PROCESSES: usize = 256;

/// A pod (and optionally one of its containers) named at runtime.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Explicit {
    /// Pod uid.
    pub pod_uid: String,
    /// Container name; `None` for the whole pod.
    pub container: Option<String>,
}

/// The compiled selection.
#[derive(Debug, Default)]
pub struct Selection {
    namespaces: Vec<Pattern>,
    exclude_namespaces: Vec<Pattern>,
    pods: Vec<Pattern>,
    exclude_pods: Vec<Pattern>,
    /// Most processes traced at once.
    pub max_processes: usize,
    started: HashSet<Explicit>,
    stopped: HashSet<Explicit>,
}

fn compile(field: &'static str, patterns: &[String]) -> Result<Vec<Pattern>, SelectError> {
    patterns
        .iter()
        .map(|p| {
            Pattern::new(p).map_err(|source| SelectError::Pattern {
                field,
                pattern: p.clone(),
                source,
            })
        })
        .collect()
}

impl Selection {
    /// Compiles a selection from config.
    pub fn new(config: &SelectionConfig) -> Result<Self, SelectError> {
        Ok(Self {
            namespaces: compile("namespaces", &config.namespaces)?,
            exclude_namespaces: compile("exclude_namespaces", &config.exclude_namespaces)?,
            pods: compile("pods", &config.pods)?,
            exclude_pods: compile("exclude_pods", &config.exclude_pods)?,
            max_processes: config.max_processes.unwrap_or(DEFAULT_MAX_PROCESSES),
            started: HashSet::new(),
            stopped: HashSet::new(),
        })
    }

    /// Whether a container of a pod is selected. `namespace`/`name` are `None` when the
    /// kubelet's log directories do not name the pod (then only explicit starts select it).
    pub fn selects(
        &self,
        pod_uid: &str,
        namespace: Option<&str>,
        name: Option<&str>,
        container: Option<&str>,
    ) -> bool {
        let whole_pod = Explicit {
            pod_uid: pod_uid.to_owned(),
            container: None,
        };
        let this_container = container.map(|c| Explicit {
            pod_uid: pod_uid.to_owned(),
            container: Some(c.to_owned()),
        });
        let named = |set: &HashSet<Explicit>| {
            set.contains(&whole_pod) || this_container.as_ref().is_some_and(|c| set.contains(c))
        };
        if named(&self.stopped) {
            return false;
        }
        if named(&self.started) {
            return true;
        }
        if self.namespaces.is_empty() && self.pods.is_empty() {
            return false;
        }
        let (Some(namespace), Some(name)) = (namespace, name) else {
            return false;
        };
        let matches_any =
            |patterns: &[Pattern], text: &str| patterns.iter().any(|p| p.matches(text));
        (self.namespaces.is_empty() || matches_any(&self.namespaces, namespace))
            && (self.pods.is_empty() || matches_any(&self.pods, name))
            && !matches_any(&self.exclude_namespaces, namespace)
            && !matches_any(&self.exclude_pods, name)
    }

    /// Whether the pod or this container of it was stopped by hand (StopTracing): that wins over
    /// patterns and over automatic escalation.
    pub fn stopped(&self, pod_uid: &str, container: Option<&str>) -> bool {
        self.stopped.iter().any(|e| {
            e.pod_uid == pod_uid && (e.container.is_none() || e.container.as_deref() == container)
        })
    }

    /// Whether the pod or this container of it was started by hand (StartTracing).
    pub fn started(&self, pod_uid: &str, container: Option<&str>) -> bool {
        self.started.iter().any(|e| {
            e.pod_uid == pod_uid && (e.container.is_none() || e.container.as_deref() == container)
        })
    }

    /// Selects a pod (or one container) from now on, whatever the patterns say.
    pub fn start(&mut self, explicit: Explicit) {
        let _ = self.stopped.remove(&explicit);
        if explicit.container.is_none() {
            self.stopped.retain(|e| e.pod_uid != explicit.pod_uid);
        }
        let _ = self.started.insert(explicit);
    }

    /// Deselects a pod (or one container) from now on, whatever the patterns say.
    pub fn stop(&mut self, explicit: Explicit) {
        let _ = self.started.remove(&explicit);
        if explicit.container.is_none() {
            self.started.retain(|e| e.pod_uid != explicit.pod_uid);
        }
        let _ = self.stopped.insert(explicit);
    }

    /// Forgets explicit choices about pods that no longer exist.
    pub fn retain_pods(&mut self, alive: impl Fn(&str) -> bool) {
        self.started.retain(|e| alive(&e.pod_uid));
        self.stopped.retain(|e| alive(&e.pod_uid));
    }
}

/// Pods left out of always-on watching (`[watch]` exclusions): by namespace and pod-name
/// globs. A pod the kubelet's records do not name is never excluded (it cannot be matched).
#[derive(Debug, Default)]
pub struct Exclusions {
    namespaces: Vec<Pattern>,
    pods: Vec<Pattern>,
}

impl Exclusions {
    /// Compiles the globs.
    pub fn new(namespaces: &[String], pods: &[String]) -> Result<Self, SelectError> {
        Ok(Self {
            namespaces: compile("[watch] exclude_namespaces", namespaces)?,
            pods: compile("[watch] exclude_pods", pods)?,
        })
    }

    /// Whether the pod is excluded.
    pub fn excludes(&self, namespace: Option<&str>, name: Option<&str>) -> bool {
        let matches = |patterns: &[Pattern], text: Option<&str>| {
            text.is_some_and(|text| patterns.iter().any(|p| p.matches(text)))
        };
        matches(&self.namespaces, namespace) || matches(&self.pods, name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn selection(config: SelectionConfig) -> Selection {
        Selection::new(&config).expect("valid config")
    }

    #[test]
    fn exclusions_match_namespace_or_pod_globs_and_never_unnamed_pods() {
        let e = Exclusions::new(&["kube-*".into()], &["batch-*".into()]).expect("valid");
        assert!(e.excludes(Some("kube-system"), Some("coredns-1")));
        assert!(e.excludes(Some("shop"), Some("batch-7")));
        assert!(!e.excludes(Some("shop"), Some("api-0")));
        assert!(
            !e.excludes(None, None),
            "an unnamed pod cannot be matched: it is watched"
        );
    }

    #[test]
    fn nothing_is_selected_without_patterns_or_explicit_starts() {
        let s = selection(SelectionConfig::default());
        assert!(!s.selects("u1", Some("shop"), Some("api-0"), Some("app")));
    }

    #[test]
    fn namespace_and_pod_patterns_must_both_match_and_excludes_win() {
        let s = selection(SelectionConfig {
            namespaces: vec!["shop-*".into()],
            exclude_namespaces: vec!["shop-canary".into()],
            pods: vec!["api-*".into(), "worker".into()],
            ..SelectionConfig::default()
        });
        assert!(s.selects("u", Some("shop-eu"), Some("api-7"), None));
        assert!(s.selects("u", Some("shop-us"), Some("worker"), None));
        assert!(!s.selects("u", Some("shop-eu"), Some("web-1"), None));
        assert!(!s.selects("u", Some("billing"), Some("api-7"), None));
        assert!(!s.selects("u", Some("shop-canary"), Some("api-7"), None));
    }

    #[test]
    fn explicit_start_and_stop_override_patterns_per_pod_and_container() {
        let mut s = selection(SelectionConfig {
            namespaces: vec!["*".into()],
            ..SelectionConfig::default()
        });
        s.stop(Explicit {
            pod_uid: "u1".into(),
            container: Some("sidecar".into()),
        });
        assert!(s.selects("u1", Some("ns"), Some("p"), Some("app")));
        assert!(!s.selects("u1", Some("ns"), Some("p"), Some("sidecar")));
        s.stop(Explicit {
            pod_uid: "u1".into(),
            container: None,
        });
        assert!(!s.selects("u1", Some("ns"), Some("p"), Some("app")));
        s.start(Explicit {
            pod_uid: "u1".into(),
            container: None,
        });
        assert!(s.selects("u1", Some("ns"), Some("p"), Some("sidecar")));
    }

    #[test]
    fn an_unnamed_pod_is_selected_only_explicitly() {
        let mut s = selection(SelectionConfig {
            namespaces: vec!["*".into()],
            ..SelectionConfig::default()
        });
        assert!(!s.selects("u9", None, None, None));
        s.start(Explicit {
            pod_uid: "u9".into(),
            container: None,
        });
        assert!(s.selects("u9", None, None, None));
    }

    #[test]
    fn an_invalid_glob_names_the_field_and_pattern() {
        let error = Selection::new(&SelectionConfig {
            pods: vec!["api-[".into()],
            ..SelectionConfig::default()
        })
        .expect_err("invalid");
        assert!(error.to_string().contains("\"api-[\" in pods"), "{error}");
    }
}
