//! The daemon as the DaemonSet runs it: a non-root user holding exactly the capabilities the
//! manifest lists (read from the rendered manifest, so the two cannot drift; no CAP_SYS_ADMIN:
//! the probes are uprobe_multi links), tracing a leaking process in a pod and serving its
//! report; with each of those capabilities dropped in turn, failing at startup with a message
//! that names the missing one; and the path kernels before 6.6 take (perf_event uprobes), which
//! needs the CAP_SYS_ADMIN that deploy/overlays/kernel-before-6.6 adds.

mod support;

use std::{os::unix::fs::PermissionsExt as _, path::Path, process::Command, time::Duration};

use support::{agent::*, cgroupns::*, node::*, *};

/// The unprivileged user the daemon runs as here.
const UID: u32 = 65534;

/// setpriv's arguments for uid 65534 holding exactly `caps` (manifest names, e.g. "BPF").
fn setpriv_with(caps: &[String]) -> Vec<String> {
    let list = caps
        .iter()
        .map(|c| format!("+{}", c.to_lowercase()))
        .collect::<Vec<_>>()
        .join(",");
    let mut args = vec![
        "setpriv".to_owned(),
        format!("--reuid={UID}"),
        format!("--regid={UID}"),
        "--clear-groups".to_owned(),
        // Nothing beyond the list, even in the bounding set.
        "--inh-caps=-all".to_owned() + if list.is_empty() { "" } else { "," } + &list,
    ];
    if !list.is_empty() {
        args.push(format!("--ambient-caps={list}"));
    }
    args
}

fn owned_by_the_user(dir: &Path) {
    std::fs::create_dir_all(dir).expect("mkdir");
    std::os::unix::fs::chown(dir, Some(UID), Some(UID)).expect("chown");
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

/// A test root the unprivileged daemon can reach, with its state and socket dirs its own.
fn unprivileged_root(label: &str) -> std::path::PathBuf {
    let root = temp_root(label);
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    owned_by_the_user(&root.join("state"));
    owned_by_the_user(&root.join("run"));
    root
}

/// Runs the daemon as uid 65534 holding exactly `caps`, with `args`, in a cgroup and cgroup
/// namespace of its own as in a pod, tracing a leaking process in another pod, and checks it
/// holds only those capabilities and reports the leak exactly; returns its log.
fn trace_a_leaking_pod_with(label: &str, caps: &[String], args: &[&str]) -> String {
    assert!(!caps.is_empty(), "the manifest lists no capabilities");
    let root = unprivileged_root(label);
    let namespace = format!("{label}-{}", std::process::id());
    let pod = FakePod::create(
        &namespace,
        "api-0",
        Driver::Systemd,
        "burstable",
        &["app"],
        &root.join("pods"),
        &root.join("containers"),
    );
    let mut leaker = Workload::start(&workload("one_leak_site"), &[]);
    pod.place(leaker.pid, "app");

    let mut all_args = vec!["--namespace", namespace.as_str()];
    all_args.extend_from_slice(args);
    // As in a pod: its own container cgroup and cgroup namespace (joining the host's would take
    // CAP_SYS_ADMIN), the pod under test elsewhere in the tree.
    let own = AgentPodCgroups::new(label);
    let agent = Agent::start_with(
        &root,
        Launch {
            wrapper: own.wrapper(&setpriv_with(caps)),
            socket: Some(root.join("run/tracer.sock")),
            ..Launch::default()
        },
        &all_args,
    );
    assert_own_cgroup_namespace(agent.pid());
    for resolved in own.resolved_lines() {
        assert!(agent.stderr().contains(&resolved), "{}", agent.stderr());
    }
    // Really unprivileged: not uid 0, and exactly the listed capabilities.
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", agent.pid())).expect("daemon status");
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("Uid:") && l.contains(&UID.to_string())),
        "{status}"
    );
    let effective = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).expect("hex"))
        .expect("CapEff");
    assert_eq!(
        effective.count_ones() as usize,
        caps.len(),
        "the daemon holds exactly the manifest's capabilities: {caps:?}, CapEff {effective:x}"
    );

    agent.wait_traced(&[leaker.pid]);
    let _ = leaker.run_to_done();
    let report = agent.ctl_json(&["top", &pod.display(), "--top", "20"]);
    assert_eq!(
        report_totals(&report, "leak_here"),
        (409_600, 100),
        "{report:#}\n{}",
        agent.stderr()
    );
    agent.stderr()
}

#[test]
fn the_manifests_capabilities_are_enough_to_trace_a_pod_as_a_non_root_user() {
    require_root();
    let caps = support::manifest::capabilities();
    assert!(
        !caps.iter().any(|c| c == "SYS_ADMIN"),
        "the install must not need SYS_ADMIN: {caps:?}"
    );
    let log = trace_a_leaking_pod_with("least-privilege", &caps, &[]);
    assert!(
        log.contains("allocator probes attach through uprobe_multi links"),
        "{log}"
    );
}

#[test]
fn the_overlay_for_kernels_before_6_6_traces_through_perf_event_uprobes() {
    require_root();
    // This kernel has uprobe_multi: `--uprobe-links perf-event` takes the path an older one
    // takes, with the overlay's capabilities.
    let caps = support::manifest::capabilities_of("deploy/overlays/kernel-before-6.6");
    assert!(caps.iter().any(|c| c == "SYS_ADMIN"), "{caps:?}");
    let log = trace_a_leaking_pod_with(
        "least-privilege-old-kernel",
        &caps,
        &["--uprobe-links", "perf-event"],
    );
    assert!(
        log.contains("uprobe_multi links unavailable")
            && log.contains("perf_event uprobes, which need CAP_SYS_ADMIN"),
        "{log}"
    );
}

#[test]
fn without_uprobe_multi_the_install_stops_naming_cap_sys_admin_and_the_overlay() {
    require_root();
    let caps = support::manifest::capabilities();
    let root = unprivileged_root("least-privilege-no-multi");
    let (status, stderr) = run_until_exit(&caps, &root, &["--uprobe-links", "perf-event"]);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("CAP_SYS_ADMIN (for perf_event_open of the kernel's uprobe PMU")
            && stderr.contains("deploy/overlays/kernel-before-6.6"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&root);
}

/// Starts the daemon as uid 65534 holding exactly `caps` and waits for it to stop (it must,
/// within the test timeout); returns how it ended and its log.
fn run_until_exit(
    caps: &[String],
    root: &Path,
    args: &[&str],
) -> (std::process::ExitStatus, String) {
    let wrapper = setpriv_with(caps);
    let mut child = Command::new(&wrapper[0])
        .args(&wrapper[1..])
        .arg(daemon_binary())
        .args([
            "run",
            "--listen",
            &format!("unix:{}", root.join("run/tracer.sock").display()),
            "--state-dir",
            &root.join("state").display().to_string(),
            "--pod-log-root",
            &root.join("pods").display().to_string(),
        ])
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the daemon");
    let deadline = std::time::Instant::now() + TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "with {caps:?} and {args:?} the daemon must stop at startup, not run"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    let _ = std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr);
    (status, stderr)
}

#[test]
fn each_capability_dropped_from_the_manifests_list_is_named_at_startup() {
    require_root();
    let caps = support::manifest::capabilities();
    let root = unprivileged_root("least-privilege-drop");
    for dropped in &caps {
        let kept: Vec<String> = caps.iter().filter(|c| *c != dropped).cloned().collect();
        let (status, stderr) = run_until_exit(&kept, &root, &[]);
        assert_eq!(status.code(), Some(1), "without CAP_{dropped}: {stderr}");
        assert!(
            stderr.contains(&format!("CAP_{dropped} (for ")),
            "the message must name CAP_{dropped}: {stderr}"
        );
        for other in &kept {
            assert!(
                !stderr.contains(&format!("CAP_{other} (for ")),
                "CAP_{other} is held and must not be named: {stderr}"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&root);
}
