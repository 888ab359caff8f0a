//! The shipped container image, for real: `cargo xtask image` builds it into a private Docker
//! engine, and it runs the way the rendered DaemonSet says (its image, command and arguments,
//! capabilities, security context, host PID namespace and mounts, with the hostPaths swapped
//! for temp dirs). The containerized agent must find a leaking process of a pod on the host
//! and report its leak, with exact bytes, over the socket it creates in a host directory.

mod support;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::{Container as PodContainer, PodSpec};
use serde_json::{Value, json};
use support::{
    agent::report_totals,
    docker::*,
    manifest::{INSTALL, daemonset, documents, flag, render, tracer_container},
    node::*,
    *,
};

/// One site leaks 100 blocks of 4096 bytes in `leak_here` (tests/workloads/one_leak_site.c).
const LEAK: (u64, u64) = (409_600, 100);

#[test]
fn the_image_runs_as_the_daemonset_says_and_reports_a_host_pods_leak_on_a_host_socket() {
    require_root();
    let rendered = render(INSTALL);
    let daemonset = daemonset(&rendered);
    let pod_spec = daemonset
        .spec
        .as_ref()
        .and_then(|spec| spec.template.spec.as_ref())
        .expect("the DaemonSet has a pod spec");
    let agent = tracer_container(&daemonset);
    let image_name = agent
        .image
        .clone()
        .expect("the tracer container names an image");

    let root = TempRoot::new("image");
    let dockerd = Dockerd::start(&root.path.join("docker"));
    dockerd.build_image();
    let image = dockerd.inspect_image(&image_name);
    let config = &image["Config"];
    assert_eq!(config["Entrypoint"], json!(["/tracer-daemon"]), "{image:#}");
    assert_eq!(config["Cmd"], json!(["run"]), "{image:#}");
    assert_eq!(
        config["Labels"]["org.opencontainers.image.version"],
        env!("CARGO_PKG_VERSION"),
        "{image:#}"
    );

    // The node: a pod's cgroups and kubelet log records, and temp dirs for the hostPaths.
    let dir = |name: &str| {
        let path = root.path.join(name);
        std::fs::create_dir_all(&path).expect("mkdir");
        path
    };
    let host_paths = BTreeMap::from([
        ("/sys/fs/cgroup", PathBuf::from("/sys/fs/cgroup")),
        ("/sys/kernel", PathBuf::from("/sys/kernel")),
        ("/var/log/pods", dir("pods")),
        ("/var/log/containers", dir("containers")),
        ("/var/lib/tracer", dir("state")),
        ("/run/tracer", dir("run")),
    ]);
    let namespace = format!("image-{}", std::process::id());
    let pod = FakePod::create(
        &namespace,
        "leaky-0",
        Driver::Systemd,
        "burstable",
        &["app"],
        &host_paths["/var/log/pods"],
        &host_paths["/var/log/containers"],
    );
    let mut leaker = Workload::start(&workload("one_leak_site"), &[]);
    pod.place(leaker.pid, "app");

    let mut args = docker_run_options(pod_spec, agent, &rendered, &host_paths, &dir("configs"));
    args.push(image_name.clone());
    args.extend(agent.args.clone().unwrap_or_default());
    // The test's selection and pace; everything else is the DaemonSet's.
    args.extend(
        [
            "--namespace",
            &namespace,
            "--discovery-interval",
            "200ms",
            "--sample-interval",
            "200ms",
        ]
        .map(str::to_owned),
    );
    let name = format!("leak-tracer-test-{}", std::process::id());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let container = dockerd.run_detached(&name, &args);

    // The socket the agent creates inside appears in the host directory.
    let socket = host_paths["/run/tracer"].join("tracer.sock");
    let deadline = Instant::now() + TIMEOUT;
    while !socket.exists() {
        container.assert_running();
        assert!(
            Instant::now() < deadline,
            "the containerized agent never listened on {}; logs:\n{}",
            socket.display(),
            container.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let ctl = Tracerctl {
        server: format!("unix:{}", socket.display()),
    };
    ctl.wait_traced(leaker.pid, &container);
    let _ = leaker.run_to_done();

    let report = ctl.json(&["top", &pod.display(), "--top", "50"]);
    assert_eq!(report["pod_name"], "leaky-0", "{report:#}");
    assert_eq!(report["containers"][0]["name"], "app", "{report:#}");
    assert_eq!(report_totals(&report, "leak_here"), LEAK, "{report:#}");
    assert_eq!(
        report["containers"][0]["stacks"][0]["frames"][0]["function"], "leak_here",
        "the leak is the top stack: {report:#}"
    );

    // The image's own tracerctl, as `kubectl exec POD -- /tracerctl` runs it, agrees.
    let inside = dockerd.docker_ok(&[
        "exec",
        &name,
        "/tracerctl",
        "top",
        &pod.display(),
        "--top",
        "50",
        "-o",
        "json",
    ]);
    let inside: Value = serde_json::from_str(&inside)
        .unwrap_or_else(|e| panic!("in-image tracerctl output is not JSON ({e}): {inside}"));
    assert_eq!(report_totals(&inside, "leak_here"), LEAK, "{inside:#}");

    // The evidence store lives in the state hostPath.
    let state_entries = std::fs::read_dir(&host_paths["/var/lib/tracer"])
        .expect("read the state dir")
        .count();
    assert!(state_entries > 0, "nothing written to the state dir");
    // With the DaemonSet's --log-format=json, every line the kubelet collects is one JSON object.
    let daemonset_args = agent.args.clone().unwrap_or_default();
    let json_logs = flag(&daemonset_args, "log-format") == Some("json");
    let logs = container.logs();
    for line in logs
        .lines()
        .filter(|line| json_logs && !line.trim().is_empty())
    {
        let record: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("a log line is not JSON ({e}): {line}\n{logs}"));
        assert!(record["level"].is_string(), "{line}");
    }
    container.assert_running();
    leaker.finish();
}

/// `docker run` options for the DaemonSet's agent container: its command, security context,
/// host PID namespace and mounts. `host_paths` maps each hostPath the manifest mounts to the
/// directory standing in for it; a mount the test does not know fails the test, so the
/// manifest cannot grow one this test silently skips.
fn docker_run_options(
    pod_spec: &PodSpec,
    agent: &PodContainer,
    rendered: &str,
    host_paths: &BTreeMap<&str, PathBuf>,
    config_maps: &Path,
) -> Vec<String> {
    let mut options: Vec<String> = vec!["--network".into(), "none".into()];
    assert_eq!(pod_spec.host_pid, Some(true), "the agent needs hostPID");
    options.push("--pid=host".into());
    if let Some(command) = &agent.command {
        assert_eq!(command.len(), 1, "one entrypoint: {command:?}");
        options.extend(["--entrypoint".into(), command[0].clone()]);
    }

    let context = agent
        .security_context
        .as_ref()
        .expect("the agent has a security context");
    assert_ne!(
        context.privileged,
        Some(true),
        "the agent must not be privileged"
    );
    let capabilities = context.capabilities.as_ref().expect("capabilities");
    assert_eq!(
        capabilities.drop.as_deref(),
        Some(["ALL".to_owned()].as_slice()),
        "the agent drops every capability first"
    );
    options.extend(["--cap-drop".into(), "ALL".into()]);
    let mut unnameable = Vec::new();
    for cap in capabilities.add.iter().flatten() {
        if CAPS_DOCKER_CANNOT_NAME.contains(&cap.as_str()) {
            unnameable.push(cap.as_str());
        } else {
            options.extend(["--cap-add".into(), cap.clone()]);
        }
    }
    if !unnameable.is_empty() {
        assert_eq!(
            unnameable, CAPS_DOCKER_CANNOT_NAME,
            "the runtime wrapper adds exactly these"
        );
        options.extend(["--runtime".into(), EXTRA_CAPS_RUNTIME.into()]);
    }
    if let Some(user) = context.run_as_user {
        let group = context.run_as_group.unwrap_or(user);
        options.extend(["--user".into(), format!("{user}:{group}")]);
    }
    if context.read_only_root_filesystem == Some(true) {
        options.push("--read-only".into());
    }
    if context.allow_privilege_escalation == Some(false) {
        options.extend(["--security-opt".into(), "no-new-privileges".into()]);
    }
    let seccomp = context.seccomp_profile.as_ref().map(|p| p.type_.as_str());
    assert_eq!(
        seccomp,
        Some("Unconfined"),
        "what the DaemonSet asks for changed"
    );
    options.extend(["--security-opt".into(), "seccomp=unconfined".into()]);
    let apparmor = context.app_armor_profile.as_ref().map(|p| p.type_.as_str());
    if apparmor == Some("Unconfined") {
        options.extend(["--security-opt".into(), "apparmor=unconfined".into()]);
    }

    let volumes = pod_spec.volumes.as_deref().unwrap_or_default();
    for mount in agent.volume_mounts.iter().flatten() {
        let volume = volumes
            .iter()
            .find(|v| v.name == mount.name)
            .unwrap_or_else(|| panic!("volume {} is not defined", mount.name));
        let source = if let Some(host_path) = &volume.host_path {
            host_paths
                .get(host_path.path.as_str())
                .unwrap_or_else(|| {
                    panic!(
                        "the DaemonSet mounts hostPath {}: give it a stand-in in this test",
                        host_path.path
                    )
                })
                .clone()
        } else if let Some(config_map) = &volume.config_map {
            let dir = config_maps.join(&volume.name);
            write_config_map(rendered, &config_map.name, &dir);
            dir
        } else {
            panic!(
                "volume {} is neither a hostPath nor a ConfigMap",
                volume.name
            )
        };
        let mode = if mount.read_only == Some(true) {
            ":ro"
        } else {
            ""
        };
        options.extend([
            "--volume".into(),
            format!("{}:{}{mode}", source.display(), mount.mount_path),
        ]);
    }
    options
}

/// Writes each key of the rendered ConfigMap `name` as a file in `dir`, as the kubelet does.
fn write_config_map(rendered: &str, name: &str, dir: &Path) {
    let config_map = documents(rendered)
        .into_iter()
        .find(|d| {
            d["kind"].as_str() == Some("ConfigMap") && d["metadata"]["name"].as_str() == Some(name)
        })
        .unwrap_or_else(|| panic!("ConfigMap {name} is not in the render"));
    std::fs::create_dir_all(dir).expect("create the ConfigMap dir");
    let data = config_map["data"]
        .as_mapping()
        .unwrap_or_else(|| panic!("ConfigMap {name} has no data"));
    for (key, value) in data {
        let key = key.as_str().expect("ConfigMap keys are strings");
        let value = value.as_str().expect("ConfigMap values are strings");
        std::fs::write(dir.join(key), value).expect("write a ConfigMap file");
    }
}

/// The host-built tracerctl against an agent's socket.
struct Tracerctl {
    server: String,
}

impl Tracerctl {
    fn json(&self, args: &[&str]) -> Value {
        let output = Command::new(tracerctl_binary())
            .args(["--server", &self.server])
            .args(args)
            .args(["-o", "json"])
            .output()
            .expect("run tracerctl");
        assert!(
            output.status.success(),
            "tracerctl {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
            panic!(
                "tracerctl output is not JSON ({e}): {}",
                String::from_utf8_lossy(&output.stdout)
            )
        })
    }

    /// Waits until the agent lists `pid` as traced (its probes are attached).
    fn wait_traced(&self, pid: u32, container: &Container<'_>) {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let targets = self.json(&["pods"]);
            let traced = targets["pods"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|p| p["containers"].as_array().into_iter().flatten())
                .flat_map(|c| c["processes"].as_array().into_iter().flatten())
                .any(|p| p["pid"] == u64::from(pid) && p["traced"] == true);
            if traced {
                return;
            }
            container.assert_running();
            assert!(
                Instant::now() < deadline,
                "pid {pid} never traced: {targets:#}\nlogs:\n{}",
                container.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
