//! The deployment manifests under deploy/, checked offline as far as they can be without a
//! cluster: each render (`kubectl kustomize`) against the Kubernetes 1.32 schema, then read
//! back typed to pin what the agent needs (host PID namespace, capabilities, host paths, probe
//! and metrics ports matching the flags, taints, one agent per node, x86-64 Linux nodes only)
//! and that its config files parse with the daemon's own parser. Negative fixtures prove both
//! checks can fail.

mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    path::Path,
    process::Command,
};

use k8s_openapi::{
    api::{
        apps::v1::DaemonSet,
        core::v1::{ConfigMap, PodSpec, Probe, Service, ServiceAccount, Volume},
    },
    apimachinery::pkg::util::intstr::IntOrString,
};
use support::manifest::{
    INSTALL, capabilities, daemonset, documents, flag, object, quantity_bytes, render,
    tracer_container, try_daemonset, validate, validate_file,
};
use tracer_daemon::{config, select::Selection};

/// The example overlay an SRE starts from.
const EXAMPLE: &str = "deploy/overlays/example";
/// The install plus the TLS gRPC listener (the remote-api component).
const REMOTE_API: &str = "deploy/overlays/remote-api";
/// The install for kernels before 6.6, which adds CAP_SYS_ADMIN back.
const KERNEL_BEFORE_6_6: &str = "deploy/overlays/kernel-before-6.6";
/// Every directory meant to be applied.
const RENDERS: [&str; 4] = [INSTALL, EXAMPLE, REMOTE_API, KERNEL_BEFORE_6_6];

/// The capabilities the agent adds: the minimum tests/least_privilege.rs found (and the daemon's
/// `bpf::REQUIRED_CAPABILITIES`). No SYS_ADMIN: the probes are uprobe_multi links.
const EXPECTED_CAPABILITIES: [&str; 3] = ["BPF", "PERFMON", "SYS_PTRACE"];

/// Measured daemon RSS at a million outstanding allocations (BENCHMARKS.md), rounded up.
const DAEMON_RSS_BYTES: u64 = 55 << 20;
/// Kernel memory per outstanding-allocation slot, charged to the pod's memory cgroup (bpftool's
/// memlock of the preallocated map: 234,882,128 B for 2^21 slots with 32-byte records; each
/// record has since grown by 8 bytes, the sampling mean it was made under).
const BYTES_PER_ALLOCATION_SLOT: u64 = 120;
/// Kernel memory per stack slot (stack trace plus per-stack totals).
const BYTES_PER_STACK_SLOT: u64 = 600;
/// The ring buffer (1 MiB) and the per-thread scratch map.
const OTHER_MAPS_BYTES: u64 = 2 << 20;
/// Kernel memory per unwind-table row (12-byte rows in 16-byte array slots).
const BYTES_PER_UNWIND_ROW: u64 = 16;
/// The unwind-mapping trie at its 262144-node capacity (about 100 B a node).
const UNWIND_MAPPINGS_BYTES: u64 = 262_144 * 100;
/// The growth profile's maps: 16384 fault stacks (2,229,376 B memlock), the 131072-slot
/// retouch table (8 B a slot) and 4096 watched cgroups.
const GROWTH_PROFILE_MAPS_BYTES: u64 = 7 << 19;
/// The evidence store's page cache (redb), which only the limit needs to cover.
const STORE_CACHE_BYTES: u64 = 16 << 20;

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/manifests")
        .join(name)
}

fn fixture_text(name: &str) -> String {
    std::fs::read_to_string(fixture(name)).expect("read the manifest fixture")
}

fn pod_spec(daemonset: &DaemonSet) -> &PodSpec {
    daemonset
        .spec
        .as_ref()
        .and_then(|spec| spec.template.spec.as_ref())
        .expect("the DaemonSet has a pod template")
}

fn args(daemonset: &DaemonSet) -> &[String] {
    tracer_container(daemonset)
        .args
        .as_deref()
        .expect("the tracer container has args")
}

/// The port of a `HOST:PORT` flag.
fn flag_port(args: &[String], name: &str, dir: &str) -> i32 {
    let value = flag(args, name).unwrap_or_else(|| panic!("{dir}: no --{name} in {args:?}"));
    let address: SocketAddr = value
        .parse()
        .unwrap_or_else(|e| panic!("{dir}: --{name}={value} is not HOST:PORT: {e}"));
    i32::from(address.port())
}

/// The containerPort with this name.
fn container_port(daemonset: &DaemonSet, name: &str) -> i32 {
    tracer_container(daemonset)
        .ports
        .iter()
        .flatten()
        .find(|port| port.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("no containerPort named {name}"))
        .container_port
}

fn volume<'a>(pod: &'a PodSpec, name: &str) -> &'a Volume {
    pod.volumes
        .iter()
        .flatten()
        .find(|volume| volume.name == name)
        .unwrap_or_else(|| panic!("no volume named {name}"))
}

/// The config file text of the ConfigMap the DaemonSet mounts (its generated name included).
fn mounted_config(rendered: &str, dir: &str) -> String {
    let daemonset = daemonset(rendered);
    let config_path = flag(args(&daemonset), "config").expect("--config");
    let mount = tracer_container(&daemonset)
        .volume_mounts
        .iter()
        .flatten()
        .find(|mount| Path::new(config_path).starts_with(&mount.mount_path))
        .unwrap_or_else(|| panic!("{dir}: nothing is mounted where --config={config_path} is"));
    let config_map_name = volume(pod_spec(&daemonset), &mount.name)
        .config_map
        .as_ref()
        .unwrap_or_else(|| panic!("{dir}: {} is not a ConfigMap volume", mount.name))
        .name
        .clone();
    let file_name = Path::new(config_path)
        .strip_prefix(&mount.mount_path)
        .expect("under the mount")
        .to_str()
        .expect("UTF-8 path");
    let config_map: ConfigMap = documents(rendered)
        .into_iter()
        .filter(|document| {
            document["kind"].as_str() == Some("ConfigMap")
                && document["metadata"]["name"].as_str() == Some(config_map_name.as_str())
        })
        .map(|document| support::manifest::strict(document).expect("a valid ConfigMap"))
        .next()
        .unwrap_or_else(|| panic!("{dir}: the render has no ConfigMap {config_map_name}"));
    config_map
        .data
        .and_then(|mut data| data.remove(file_name))
        .unwrap_or_else(|| panic!("{dir}: ConfigMap {config_map_name} has no {file_name}"))
}

/// Whether a rolling-update bound is zero (absent counts as the API's defaults: surge 0,
/// unavailable 1).
fn is_zero(bound: Option<&IntOrString>) -> bool {
    match bound {
        Some(IntOrString::Int(n)) => *n == 0,
        Some(IntOrString::String(s)) => s == "0%" || s == "0",
        None => false,
    }
}

#[test]
fn every_render_passes_the_kubernetes_schema_strictly() {
    for dir in RENDERS {
        let report = validate(dir, &render(dir))
            .unwrap_or_else(|report| panic!("{dir} fails the schema check:\n{report}"));
        // An empty or unparsed stream would pass too: make sure the agent itself was checked.
        assert!(
            report.contains("passed for resource daemonset/leak-tracer"),
            "{dir}: the validator did not check the DaemonSet:\n{report}"
        );
    }
}

#[test]
fn the_schema_check_fails_on_a_typo_and_on_a_wrong_type() {
    validate_file(&fixture("daemonset-valid.yaml"))
        .unwrap_or_else(|report| panic!("the control fixture must pass:\n{report}"));
    let typo = validate_file(&fixture("daemonset-unknown-field.yaml"))
        .expect_err("a misspelt field must fail the schema check");
    assert!(typo.contains("readOnlyRootFileSystem"), "{typo}");
    let wrong_type = validate_file(&fixture("daemonset-wrong-type.yaml"))
        .expect_err("a string where a boolean belongs must fail the schema check");
    assert!(wrong_type.contains("hostPID"), "{wrong_type}");
}

#[test]
fn the_typed_check_fails_on_an_unknown_field_or_a_wrong_type() {
    try_daemonset(&fixture_text("daemonset-valid.yaml"))
        .unwrap_or_else(|e| panic!("the control fixture must pass: {e}"));
    let typo = try_daemonset(&fixture_text("daemonset-unknown-field.yaml"))
        .expect_err("serde_ignored must catch the misspelt field");
    assert!(
        typo.contains("spec.template.spec.containers.0.securityContext.readOnlyRootFileSystem"),
        "{typo}"
    );
    let wrong_type = try_daemonset(&fixture_text("daemonset-wrong-type.yaml"))
        .expect_err("a string is not a boolean");
    assert!(
        wrong_type.contains("spec.template.spec.hostPID"),
        "{wrong_type}"
    );

    // The same typo in the real render is caught too.
    let rendered = render(INSTALL);
    assert!(rendered.contains("readOnlyRootFilesystem: true"));
    let misspelt = rendered.replace(
        "readOnlyRootFilesystem: true",
        "readOnlyRootFileSystem: true",
    );
    let error = try_daemonset(&misspelt).expect_err("typo in the render");
    assert!(error.contains("readOnlyRootFileSystem"), "{error}");
}

#[test]
fn the_agent_runs_as_root_with_only_its_listed_capabilities() {
    assert_eq!(
        capabilities(),
        EXPECTED_CAPABILITIES,
        "the installed agent's added capabilities"
    );
    for dir in RENDERS {
        let rendered = render(dir);
        let daemonset = daemonset(&rendered);
        let pod = pod_spec(&daemonset);
        assert_eq!(pod.host_pid, Some(true), "{dir}: hostPID");
        assert_ne!(pod.host_network, Some(true), "{dir}: hostNetwork");
        assert_eq!(pod.automount_service_account_token, Some(false), "{dir}");
        let account: ServiceAccount = object(&rendered);
        assert_eq!(
            account.automount_service_account_token,
            Some(false),
            "{dir}"
        );
        assert_eq!(pod.service_account_name.as_deref(), Some("leak-tracer"));

        let context = tracer_container(&daemonset)
            .security_context
            .as_ref()
            .expect("a securityContext");
        assert_ne!(context.privileged, Some(true), "{dir}: privileged");
        assert_eq!(context.allow_privilege_escalation, Some(false), "{dir}");
        assert_eq!(context.read_only_root_filesystem, Some(true), "{dir}");
        assert_eq!(context.run_as_user, Some(0), "{dir}: runAsUser");
        let capabilities = context.capabilities.as_ref().expect("capabilities");
        assert_eq!(capabilities.drop.as_deref(), Some(&["ALL".to_owned()][..]));
        let added: BTreeSet<&str> = capabilities
            .add
            .iter()
            .flatten()
            .map(String::as_str)
            .collect();
        let mut expected = BTreeSet::from(EXPECTED_CAPABILITIES);
        if dir == KERNEL_BEFORE_6_6 {
            // perf_event uprobes, where the kernel has no uprobe_multi links.
            let _ = expected.insert("SYS_ADMIN");
        }
        assert_eq!(added, expected, "{dir}");
        assert!(
            !added.contains("SYS_RESOURCE") && !added.contains("DAC_OVERRIDE"),
            "{dir}: capabilities beyond the measured minimum"
        );
        let seccomp = context.seccomp_profile.as_ref().expect("a seccomp profile");
        assert_eq!(seccomp.type_, "Unconfined", "{dir}: bpf() needs it");
    }
}

#[test]
fn the_agent_mounts_the_host_paths_it_needs_with_the_right_access() {
    for dir in RENDERS {
        let daemonset = daemonset(&render(dir));
        let pod = pod_spec(&daemonset);
        let args = args(&daemonset);
        let mounts: BTreeMap<&str, (bool, &Volume)> = tracer_container(&daemonset)
            .volume_mounts
            .iter()
            .flatten()
            .map(|mount| {
                (
                    mount.mount_path.as_str(),
                    (mount.read_only == Some(true), volume(pod, &mount.name)),
                )
            })
            .collect();
        let host_path = |mount_path: &str| {
            let (read_only, volume) = mounts
                .get(mount_path)
                .unwrap_or_else(|| panic!("{dir}: nothing mounted at {mount_path}"));
            let source = volume
                .host_path
                .as_ref()
                .unwrap_or_else(|| panic!("{dir}: {mount_path} is not a hostPath"));
            (*read_only, source.path.as_str(), source.type_.as_deref())
        };

        // Read-only views of the host, each at its host path (the /var/log/containers symlinks
        // point into /var/log/pods, so both must keep their host paths).
        for path in [
            "/sys/fs/cgroup",
            "/sys/kernel",
            "/var/log/pods",
            "/var/log/containers",
        ] {
            let (read_only, host, _) = host_path(path);
            assert!(read_only, "{dir}: {path} must be read-only");
            assert_eq!(host, path, "{dir}: {path} must be the host's {path}");
        }
        assert_eq!(flag(args, "pod-log-root"), Some("/var/log/pods"), "{dir}");
        assert_eq!(
            flag(args, "container-log-root"),
            Some("/var/log/containers"),
            "{dir}"
        );

        // The state dir and the socket dir are the daemon's to write, and survive the pod.
        let state_dir = flag(args, "state-dir").expect("--state-dir");
        let (read_only, _, kind) = host_path(state_dir);
        assert!(!read_only, "{dir}: the state dir must be writable");
        assert_eq!(kind, Some("DirectoryOrCreate"), "{dir}: state dir");
        let (read_only, host, kind) = host_path("/run/tracer");
        assert!(!read_only, "{dir}: the socket dir must be writable");
        assert_eq!((host, kind), ("/run/tracer", Some("DirectoryOrCreate")));
        let listen = flag(args, "listen").expect("--listen");
        if let Some(socket) = listen.strip_prefix("unix:") {
            assert_eq!(
                Path::new(socket).parent(),
                Some(Path::new("/run/tracer")),
                "{dir}: the socket must be in the mounted socket dir"
            );
        }

        // The config comes from the ConfigMap, read-only.
        let (read_only, config_volume) = mounts.get("/etc/tracer").expect("/etc/tracer");
        assert!(*read_only && config_volume.config_map.is_some(), "{dir}");
        assert!(
            flag(args, "config").is_some_and(|path| path.starts_with("/etc/tracer/")),
            "{dir}: --config must be in the ConfigMap mount"
        );
    }
    // The example overlay moves the state dir on the host and nowhere else.
    let example = daemonset(&render(EXAMPLE));
    let state = volume(pod_spec(&example), "state")
        .host_path
        .as_ref()
        .expect("hostPath");
    assert_eq!(state.path, "/data/leak-tracer");
}

#[test]
fn probes_and_the_scrape_annotation_use_the_ports_the_daemon_listens_on() {
    for dir in RENDERS {
        let daemonset = daemonset(&render(dir));
        let args = args(&daemonset);
        let container = tracer_container(&daemonset);

        let health = flag_port(args, "health-listen", dir);
        assert_eq!(container_port(&daemonset, "health"), health, "{dir}");
        let probes: [(&str, Option<&Probe>); 3] = [
            ("startupProbe", container.startup_probe.as_ref()),
            ("livenessProbe", container.liveness_probe.as_ref()),
            ("readinessProbe", container.readiness_probe.as_ref()),
        ];
        for (name, probe) in probes {
            let probe = probe.unwrap_or_else(|| panic!("{dir}: no {name}"));
            let grpc = probe
                .grpc
                .as_ref()
                .unwrap_or_else(|| panic!("{dir}: {name} must be a gRPC probe"));
            assert_eq!(grpc.port, health, "{dir}: {name} port vs --health-listen");
            assert_eq!(grpc.service.as_deref().unwrap_or(""), "", "{dir}: {name}");
            assert!(
                probe.http_get.is_none() && probe.tcp_socket.is_none() && probe.exec.is_none(),
                "{dir}: {name} has one handler"
            );
        }

        let metrics = flag_port(args, "metrics", dir);
        assert_ne!(
            metrics, health,
            "{dir}: metrics and health need their own ports"
        );
        assert_eq!(container_port(&daemonset, "metrics"), metrics, "{dir}");
        let annotations = daemonset
            .spec
            .as_ref()
            .and_then(|spec| spec.template.metadata.as_ref())
            .and_then(|metadata| metadata.annotations.as_ref())
            .expect("pod template annotations");
        let annotation = |key: &str| annotations.get(key).map(String::as_str);
        assert_eq!(annotation("prometheus.io/scrape"), Some("true"), "{dir}");
        assert_eq!(
            annotation("prometheus.io/port"),
            Some(metrics.to_string().as_str()),
            "{dir}: the scrape port vs --metrics"
        );
        assert_eq!(annotation("prometheus.io/path"), Some("/metrics"), "{dir}");
    }
}

#[test]
fn the_agent_tolerates_every_taint_and_never_runs_twice_on_a_node() {
    for dir in RENDERS {
        let daemonset = daemonset(&render(dir));
        let pod = pod_spec(&daemonset);
        for effect in ["NoSchedule", "NoExecute"] {
            assert!(
                pod.tolerations.iter().flatten().any(|toleration| {
                    toleration.operator.as_deref() == Some("Exists")
                        && toleration.key.is_none()
                        && toleration.effect.as_deref() == Some(effect)
                }),
                "{dir}: no toleration of every {effect} taint"
            );
        }
        // Two agents on one node would share its evidence store, whose lock the running one
        // holds: a surge's new pod could never become ready. So no surge, and progress needs
        // maxUnavailable above zero.
        let strategy = daemonset
            .spec
            .as_ref()
            .and_then(|spec| spec.update_strategy.as_ref())
            .expect("an updateStrategy");
        assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"), "{dir}");
        let rolling = strategy.rolling_update.as_ref().expect("rollingUpdate");
        assert!(
            is_zero(rolling.max_surge.as_ref()),
            "{dir}: maxSurge must be 0, got {:?}",
            rolling.max_surge
        );
        assert!(
            !is_zero(rolling.max_unavailable.as_ref()),
            "{dir}: maxUnavailable 0 with maxSurge 0 never updates anything"
        );
        let grace = pod
            .termination_grace_period_seconds
            .expect("a grace period");
        assert!((10..=60).contains(&grace), "{dir}: grace period {grace}s");
    }
    let base = daemonset(&render(INSTALL));
    assert_eq!(
        pod_spec(&base).priority_class_name.as_deref(),
        Some("system-node-critical")
    );
}

#[test]
fn the_agent_is_scheduled_on_x86_64_linux_nodes_only() {
    // Probe placement and the BPF unwinder know x86-64 only (see attach::check_traceable).
    for dir in RENDERS {
        let daemonset = daemonset(&render(dir));
        let selector = pod_spec(&daemonset)
            .node_selector
            .as_ref()
            .unwrap_or_else(|| panic!("{dir}: no nodeSelector"));
        for (label, value) in [
            ("kubernetes.io/os", "linux"),
            ("kubernetes.io/arch", "amd64"),
        ] {
            assert_eq!(
                selector.get(label).map(String::as_str),
                Some(value),
                "{dir}: nodeSelector {selector:?}"
            );
        }
    }
}

#[test]
fn the_shipped_config_files_parse_with_the_daemons_own_parser() {
    let base_text = mounted_config(&render(INSTALL), INSTALL);
    let base = config::parse(&base_text)
        .unwrap_or_else(|e| panic!("deploy/base/config.toml is invalid: {e}"));
    // Tracing is opt-in: the plain install traces nothing until asked.
    assert!(
        base.selection.namespaces.is_empty() && base.selection.pods.is_empty(),
        "{base:?}"
    );
    Selection::new(&base.selection).expect("the base's globs compile");

    let example_text = mounted_config(&render(EXAMPLE), EXAMPLE);
    assert_ne!(
        example_text, base_text,
        "the example overlay replaces the config"
    );
    let example = config::parse(&example_text)
        .unwrap_or_else(|e| panic!("deploy/overlays/example/config.toml is invalid: {e}"));
    assert!(!example.selection.namespaces.is_empty(), "{example:?}");
    assert!(!example.selection.pods.is_empty(), "{example:?}");
    Selection::new(&example.selection).expect("the example's globs compile");

    // And the parser is the strict one: a typo in the shipped file would stop the daemon.
    let typo = base_text.replace("exclude_namespaces", "exclude_namespace");
    assert_ne!(typo, base_text);
    config::parse(&typo).expect_err("unknown keys are errors");
}

#[test]
fn memory_requests_cover_the_configured_bpf_maps() {
    for dir in [INSTALL, EXAMPLE] {
        let rendered = render(dir);
        let file = config::parse(&mounted_config(&rendered, dir)).expect("valid config");
        // The daemon's defaults when [limits] leaves them out (cli/run.rs).
        let allocations = u64::from(file.limits.max_allocations.unwrap_or(1 << 20));
        let stacks = u64::from(file.limits.max_stacks.unwrap_or(1 << 15));
        let unwind_rows = u64::from(file.limits.max_unwind_rows.unwrap_or(1 << 19));
        let working_set = DAEMON_RSS_BYTES
            + allocations * BYTES_PER_ALLOCATION_SLOT
            + stacks * BYTES_PER_STACK_SLOT
            + OTHER_MAPS_BYTES
            + unwind_rows * BYTES_PER_UNWIND_ROW
            + UNWIND_MAPPINGS_BYTES
            + GROWTH_PROFILE_MAPS_BYTES;

        let daemonset = daemonset(&rendered);
        let resources = tracer_container(&daemonset)
            .resources
            .as_ref()
            .expect("resources");
        let memory = |set: &Option<BTreeMap<String, _>>, which: &str| {
            quantity_bytes(
                set.as_ref()
                    .and_then(|set| set.get("memory"))
                    .unwrap_or_else(|| panic!("{dir}: no memory {which}")),
            )
        };
        let request = memory(&resources.requests, "request");
        let limit = memory(&resources.limits, "limit");
        assert!(
            request >= working_set,
            "{dir}: memory request {request} B is below the agent's working set {working_set} B \
             ({allocations} allocation slots, {stacks} stack slots)"
        );
        assert!(
            limit >= request + STORE_CACHE_BYTES,
            "{dir}: memory limit {limit} B leaves no room above the request {request} B"
        );
        assert!(
            limit <= 4 * request,
            "{dir}: memory limit {limit} B is far above what the figures call for"
        );
        for set in [&resources.requests, &resources.limits] {
            assert!(
                set.as_ref().is_some_and(|set| set.contains_key("cpu")),
                "{dir}: CPU request and limit"
            );
        }
    }
}

#[test]
fn every_flag_in_the_manifests_is_one_the_daemon_accepts() {
    let help = Command::new(support::daemon_binary())
        .args(["run", "--help"])
        .output()
        .expect("run tracer-daemon run --help");
    assert!(help.status.success(), "tracer-daemon run --help failed");
    let help = String::from_utf8_lossy(&help.stdout);
    let known: BTreeSet<&str> = help
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .filter(|word| word.starts_with("--") && word.len() > 2)
        .collect();
    for dir in RENDERS {
        let daemonset = daemonset(&render(dir));
        let container = tracer_container(&daemonset);
        assert_eq!(
            container.command.as_deref(),
            Some(&["/tracer-daemon".to_owned()][..]),
            "{dir}: command"
        );
        let args = args(&daemonset);
        assert_eq!(args.first().map(String::as_str), Some("run"), "{dir}");
        let mut seen = BTreeSet::new();
        for arg in args.iter().filter(|arg| arg.starts_with("--")) {
            let name = arg.split_once('=').map_or(arg.as_str(), |(name, _)| name);
            assert!(
                known.contains(name),
                "{dir}: tracer-daemon run does not accept {name}; its flags: {known:?}"
            );
            assert!(seen.insert(name), "{dir}: {name} given twice");
        }
    }
}

#[test]
fn the_remote_api_is_an_opt_in_tls_listener_behind_a_headless_service() {
    // The install has no TCP listener and no Service.
    let base = render(INSTALL);
    assert!(
        documents(&base)
            .iter()
            .all(|document| document["kind"].as_str() != Some("Service")),
        "the base must not expose the API"
    );
    let base_daemonset = daemonset(&base);
    assert_eq!(
        flag(args(&base_daemonset), "listen"),
        Some("unix:/run/tracer/tracer.sock")
    );

    let rendered = render(REMOTE_API);
    let daemonset = daemonset(&rendered);
    let args = args(&daemonset);
    let listen = flag(args, "listen").expect("--listen");
    let address: SocketAddr = listen
        .strip_prefix("tcp:")
        .unwrap_or_else(|| panic!("--listen={listen} is not TCP"))
        .parse()
        .expect("tcp:HOST:PORT");
    assert_eq!(
        container_port(&daemonset, "grpc"),
        i32::from(address.port())
    );

    // The certificate files are in the mounted Secret.
    let container = tracer_container(&daemonset);
    let (mount_path, secret) = container
        .volume_mounts
        .iter()
        .flatten()
        .find_map(|mount| {
            let secret = volume(pod_spec(&daemonset), &mount.name).secret.as_ref()?;
            Some((mount.mount_path.as_str(), secret))
        })
        .expect("a Secret volume for the certificates");
    assert_eq!(secret.secret_name.as_deref(), Some("leak-tracer-tls"));
    for name in ["tls-cert", "tls-key", "tls-client-ca"] {
        let path = flag(args, name).unwrap_or_else(|| panic!("no --{name}"));
        assert!(
            Path::new(path).starts_with(mount_path),
            "--{name}={path} is outside the Secret mount {mount_path}"
        );
    }

    // Headless (each agent knows only its node), selecting exactly the agents' pods, on the
    // port the listener uses.
    let service: Service = object(&rendered);
    let spec = service.spec.expect("a Service spec");
    assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
    let labels = daemonset
        .spec
        .as_ref()
        .and_then(|spec| spec.template.metadata.as_ref())
        .and_then(|metadata| metadata.labels.clone())
        .expect("pod labels");
    let selector = spec.selector.expect("a selector");
    assert!(
        !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v)),
        "the Service selector {selector:?} must match the agents' labels {labels:?}"
    );
    let port = spec.ports.iter().flatten().next().expect("a Service port");
    assert_eq!(
        port.target_port,
        Some(IntOrString::String("grpc".to_owned()))
    );
}
