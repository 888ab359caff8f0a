//! The shipped Prometheus rules, checked offline: Debian's `promtool check rules` and `promtool
//! test rules` (deploy/prometheus/rules.test.yaml covers every rule, with series that must not
//! fire); the PrometheusRule of deploy/components/prometheus is the rules file wrapped, byte for
//! byte as generated here (`TRACER_BLESS=1` rewrites it); the PodMonitor scrapes the port and
//! path the DaemonSet serves metrics on, with the labels the rules need. kubernetes-validate
//! knows no CRDs, so the two custom resources are read strictly into the fields they may use.
//! The end-to-end run with real servers is tests/alerts.rs.

mod support;

use std::{collections::BTreeMap, process::Command};

use serde::Deserialize;
use support::manifest::{
    daemonset, documents, flag, render, strict, tracer_container, validate, workspace_root,
};

const RULES: &str = "deploy/prometheus/rules.yaml";
const RULE_TESTS: &str = "deploy/prometheus/rules.test.yaml";
const PROMETHEUS_RULE: &str = "deploy/components/prometheus/prometheusrule.yaml";
const OVERLAY: &str = "deploy/overlays/prometheus";

fn read(path: &str) -> String {
    std::fs::read_to_string(workspace_root().join(path))
        .unwrap_or_else(|e| panic!("read {path}: {e}"))
}

/// `promtool ARGS` in deploy/prometheus: (success, stdout + stderr).
fn promtool(args: &[&str]) -> (bool, String) {
    let output = Command::new("promtool")
        .args(args)
        .current_dir(workspace_root().join("deploy/prometheus"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run promtool (`cargo xtask setup` installs it): {e}"));
    (
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

/// A rules file as Prometheus reads it (unknown fields refused).
#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    groups: Vec<RuleGroup>,
}

#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct RuleGroup {
    name: String,
    rules: Vec<Rule>,
}

#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct Rule {
    record: Option<String>,
    alert: Option<String>,
    expr: String,
    #[serde(rename = "for")]
    for_: Option<String>,
    labels: Option<BTreeMap<String, String>>,
    annotations: Option<BTreeMap<String, String>>,
}

fn rule_file() -> RuleFile {
    serde_norway::from_str(&read(RULES)).expect("rules.yaml as Prometheus reads it")
}

/// The PrometheusRule text generated from the rules file: a header, and the file's `groups:`
/// (from that line on) under `spec:`.
fn prometheus_rule() -> String {
    let rules = read(RULES);
    let groups = rules
        .find("\ngroups:")
        .map(|at| &rules[at + 1..])
        .expect("rules.yaml has groups:");
    let mut text = String::from(
        "# GENERATED from deploy/prometheus/rules.yaml by tests/alert_rules.rs: edit that file, \
         then\n# `TRACER_BLESS=1 cargo test -p tracer-daemon --test alert_rules` rewrites this one.\n\
         apiVersion: monitoring.coreos.com/v1\nkind: PrometheusRule\nmetadata:\n  name: leak-tracer\n  \
         namespace: leak-tracer\n  labels:\n    app.kubernetes.io/name: leak-tracer\n    \
         app.kubernetes.io/part-of: leak-tracer\nspec:\n",
    );
    for line in groups.lines() {
        if !line.is_empty() {
            text.push_str("  ");
        }
        text.push_str(line);
        text.push('\n');
    }
    text
}

#[test]
fn promtool_accepts_the_shipped_rules() {
    let (ok, output) = promtool(&["check", "rules", "rules.yaml"]);
    assert!(ok, "{output}");
    let count: usize = rule_file().groups.iter().map(|g| g.rules.len()).sum();
    assert!(
        output.contains(&format!("SUCCESS: {count} rules found")),
        "{output}"
    );
}

#[test]
fn promtool_unit_tests_cover_every_rule_and_pass() {
    let (ok, output) = promtool(&["test", "rules", "rules.test.yaml"]);
    assert!(ok && output.contains("SUCCESS"), "{output}");
    // Every alert is tested firing and not firing; every recording rule is queried.
    let tests: serde_norway::Value =
        serde_norway::from_str(&read(RULE_TESTS)).expect("rules.test.yaml");
    let cases: Vec<&serde_norway::Value> = tests["tests"]
        .as_sequence()
        .expect("tests")
        .iter()
        .flat_map(|t| t["alert_rule_test"].as_sequence().into_iter().flatten())
        .collect();
    let expressions: Vec<&str> = tests["tests"]
        .as_sequence()
        .expect("tests")
        .iter()
        .flat_map(|t| t["promql_expr_test"].as_sequence().into_iter().flatten())
        .filter_map(|t| t["expr"].as_str())
        .collect();
    for rule in rule_file().groups.iter().flat_map(|g| &g.rules) {
        if let Some(alert) = &rule.alert {
            let fired = |fires: bool| {
                cases.iter().any(|c| {
                    c["alertname"].as_str() == Some(alert)
                        && c["exp_alerts"]
                            .as_sequence()
                            .is_some_and(|a| a.is_empty() != fires)
                })
            };
            assert!(fired(true), "{alert}: no unit test where it fires");
            assert!(fired(false), "{alert}: no unit test where it must not fire");
        }
        if let Some(record) = &rule.record {
            assert!(
                expressions.iter().any(|e| e.contains(record.as_str())),
                "{record}: no unit test queries it"
            );
        }
    }
}

#[test]
fn the_prometheus_rule_is_the_rules_file_wrapped() {
    let expected = prometheus_rule();
    let path = workspace_root().join(PROMETHEUS_RULE);
    if std::env::var_os("TRACER_BLESS").is_some() {
        std::fs::write(&path, &expected).expect("write the PrometheusRule");
    }
    let actual = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        actual == expected,
        "{PROMETHEUS_RULE} is not {RULES} wrapped: edit {RULES} only, then run \
         `TRACER_BLESS=1 cargo test -p tracer-daemon --test alert_rules`"
    );
    // And as data: the rendered PrometheusRule's groups are the rules file's.
    let rendered = documents(&render(OVERLAY));
    let rule = rendered
        .iter()
        .find(|d| d["kind"].as_str() == Some("PrometheusRule"))
        .expect("the overlay renders the PrometheusRule");
    assert_eq!(
        rule["apiVersion"].as_str(),
        Some("monitoring.coreos.com/v1")
    );
    let spec: RuleFile = strict(rule["spec"].clone()).expect("spec as a rules file");
    assert_eq!(spec, rule_file());
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PodMonitorSpec {
    selector: Selector,
    pod_metrics_endpoints: Vec<Endpoint>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Selector {
    match_labels: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Endpoint {
    port: String,
    path: String,
    interval: String,
    honor_labels: bool,
    relabelings: Vec<Relabeling>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Relabeling {
    source_labels: Vec<String>,
    target_label: String,
}

#[test]
fn the_pod_monitor_scrapes_the_agents_metrics_port_with_the_labels_the_rules_need() {
    let rendered = render(OVERLAY);
    // The core resources still pass the Kubernetes schema (the custom ones are read below).
    let core: Vec<String> = documents(&rendered)
        .into_iter()
        .filter(|d| {
            !d["apiVersion"]
                .as_str()
                .unwrap_or("")
                .starts_with("monitoring.coreos.com/")
        })
        .map(|d| serde_norway::to_string(&d).expect("YAML"))
        .collect();
    let report = validate(OVERLAY, &core.join("---\n"))
        .unwrap_or_else(|report| panic!("{OVERLAY} fails the schema check:\n{report}"));
    assert!(
        report.contains("passed for resource daemonset/leak-tracer"),
        "{report}"
    );

    let ds = daemonset(&rendered);
    let monitor = documents(&rendered)
        .into_iter()
        .find(|d| d["kind"].as_str() == Some("PodMonitor"))
        .expect("the overlay renders the PodMonitor");
    assert_eq!(
        monitor["apiVersion"].as_str(),
        Some("monitoring.coreos.com/v1")
    );
    assert_eq!(
        monitor["metadata"]["namespace"].as_str(),
        ds.metadata.namespace.as_deref(),
        "the PodMonitor selects pods in its own namespace"
    );
    let spec: PodMonitorSpec = strict(monitor["spec"].clone()).expect("PodMonitor spec");
    let pod_labels = ds
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .expect("pod template labels");
    for (key, value) in &spec.selector.match_labels {
        assert_eq!(pod_labels.get(key), Some(value), "selector {key}");
    }
    let [endpoint] = spec.pod_metrics_endpoints.as_slice() else {
        panic!("one endpoint: {spec:?}")
    };
    let container = tracer_container(&ds);
    let port = container
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some(endpoint.port.as_str()))
        .unwrap_or_else(|| panic!("no container port named {}", endpoint.port));
    let metrics: std::net::SocketAddr = flag(container.args.as_deref().unwrap_or(&[]), "metrics")
        .expect("--metrics")
        .parse()
        .expect("--metrics HOST:PORT");
    assert_eq!(i32::from(metrics.port()), port.container_port);
    assert_eq!(endpoint.path, "/metrics");
    assert!(!endpoint.interval.is_empty());
    // The agent's namespace/pod/container labels must win over the target's.
    assert!(endpoint.honor_labels);
    assert!(endpoint.relabelings.iter().any(|r| {
        r.source_labels == ["__meta_kubernetes_pod_node_name"] && r.target_label == "node"
    }));
    // The agent names its node from the pod spec, through the env var its flag reads.
    let env = container
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "TRACER_NODE_NAME")
        .expect("TRACER_NODE_NAME in the DaemonSet");
    let field = env
        .value_from
        .as_ref()
        .and_then(|v| v.field_ref.as_ref())
        .expect("from a fieldRef");
    assert_eq!(field.field_path, "spec.nodeName");
    let help = Command::new(support::daemon_binary())
        .args(["run", "--help"])
        .output()
        .expect("run tracer-daemon --help");
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("--node-name") && help.contains("env: TRACER_NODE_NAME"),
        "{help}"
    );
}
