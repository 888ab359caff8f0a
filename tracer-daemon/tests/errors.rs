//! Bad input gets a clear error and a non-zero exit: each case runs the real binary.

mod support;

use support::*;

#[test]
fn an_unknown_pid_is_named_in_the_error() {
    let (code, stderr) = run_daemon(&["trace", "--pid", "999999999"], &[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("no such process: pid 999999999"),
        "{stderr}"
    );
}

#[test]
fn malformed_arguments_are_usage_errors() {
    let (code, stderr) = run_daemon(&["trace", "--pid", "1", "--interval", "soon"], &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("expected e.g. 500ms"), "{stderr}");
    let (code, stderr) = run_daemon(&["trace", "--pid", "1", "--top", "0"], &[]);
    assert_eq!(code, Some(2), "{stderr}");
    let (code, stderr) = run_daemon(&["trace"], &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--pid"), "{stderr}");
}

#[test]
fn an_unprivileged_user_is_told_which_capabilities_are_missing() {
    require_root();
    let pid = std::process::id().to_string();
    let output = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .args([daemon_binary(), "trace", "--pid", &pid])
        .output()
        .expect("run setpriv");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    for name in ["CAP_BPF", "CAP_PERFMON", "CAP_SYS_PTRACE"] {
        assert!(
            stderr.contains(&format!("{name} (for ")),
            "{name} not named: {stderr}"
        );
    }
    // Needed only where probes cannot be uprobe_multi links (tests/least_privilege.rs).
    assert!(!stderr.contains("CAP_SYS_ADMIN (for "), "{stderr}");
}

#[test]
fn a_kernel_without_btf_or_uprobes_is_named() {
    require_root();
    let pid = std::process::id().to_string();
    let fake = tempdir("sysfs");
    let (code, stderr) = run_daemon(
        &["trace", "--pid", &pid],
        &[("TRACER_SYSFS_ROOT", fake.to_str().expect("utf8"))],
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("the kernel has no uprobes"), "{stderr}");

    let uprobe = fake.join("bus/event_source/devices/uprobe");
    std::fs::create_dir_all(&uprobe).expect("mkdir");
    std::fs::write(uprobe.join("type"), "7\n").expect("write");
    let (code, stderr) = run_daemon(
        &["trace", "--pid", &pid],
        &[("TRACER_SYSFS_ROOT", fake.to_str().expect("utf8"))],
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("the kernel has no BTF"), "{stderr}");
}

#[test]
fn a_process_with_no_allocator_symbol_is_refused() {
    require_root();
    let mut workload = Workload::start(&workload_with("no_allocator", &["-static", "-s"]), &[]);
    let pid = workload.pid.to_string();
    let (code, stderr) = run_daemon(&["trace", "--pid", &pid], &[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("maps no ELF file that defines malloc")
            && stderr.contains("statically linked and stripped of .symtab"),
        "what is really missing is said: {stderr}"
    );
    workload.send("exit");
}

/// Runs `tracer-daemon run` with a config file holding `config`; returns (exit code, stderr).
fn run_with_config(name: &str, config: &str, extra: &[&str]) -> (Option<i32>, String) {
    let dir = tempdir(name);
    let path = dir.join("config.toml");
    std::fs::write(&path, config).expect("write config");
    let socket = format!("unix:{}", dir.join("run/tracer.sock").display());
    let state = dir.join("state").display().to_string();
    let mut args = vec![
        "run",
        "--listen",
        &socket,
        "--state-dir",
        &state,
        "--config",
        path.to_str().expect("utf8"),
    ];
    args.extend_from_slice(extra);
    run_daemon(&args, &[])
}

#[test]
fn zero_intervals_and_capacities_are_refused_at_startup_naming_the_key() {
    for flag in [
        "--discovery-interval",
        "--memory-watch-interval",
        "--sample-interval",
        "--growth-window",
    ] {
        let (code, stderr) = run_daemon(&["run", flag, "0s"], &[]);
        assert_eq!(code, Some(2), "{flag}: {stderr}");
        assert!(
            stderr.contains(flag) && stderr.contains("too short"),
            "{flag}: {stderr}"
        );
    }
    let (code, stderr) = run_daemon(&["run", "--max-stacks", "0"], &[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("--max-stacks") && stderr.contains("1..="),
        "{stderr}"
    );
    for (config, key) in [
        (
            "[growth]\nsample_interval = \"0s\"\n",
            "[growth] sample_interval",
        ),
        (
            "[limits]\nmax_stacks = 0\n",
            "[limits] max_stacks = 0 is out of range",
        ),
        (
            "[limits]\nmax_allocations = 0\n",
            "[limits] max_allocations",
        ),
    ] {
        let (code, stderr) = run_with_config("bad-config", config, &[]);
        assert_eq!(code, Some(1), "{config}: {stderr}");
        assert!(stderr.contains(key), "{config}: {stderr}");
        assert!(
            !stderr.contains("failed to create map") && !stderr.contains("agent started"),
            "refused before anything loads: {stderr}"
        );
    }
}

#[test]
fn an_oversized_config_or_list_is_refused_with_its_bound() {
    // 1.2 million namespace globs in a 100 MB file once took the agent to 2.7 GB and an abort.
    let dir = tempdir("huge-config");
    let path = dir.join("config.toml");
    {
        use std::io::Write as _;
        let mut file = std::io::BufWriter::new(std::fs::File::create(&path).expect("create"));
        writeln!(file, "[selection]\nnamespaces = [").expect("write");
        for i in 0..1_200_000 {
            writeln!(file, "  \"namespace-{i:08}-*\",").expect("write");
        }
        writeln!(file, "]").expect("write");
    }
    let (code, stderr) = run_daemon(
        &[
            "run",
            "--config",
            path.to_str().expect("utf8"),
            "--state-dir",
            "/nonexistent",
        ],
        &[],
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("config.toml is") && stderr.contains("at most 1048576"),
        "{stderr}"
    );
    let many: Vec<String> = (0..300).map(|i| format!("\"ns-{i}\"")).collect();
    let (code, stderr) = run_with_config(
        "long-list",
        &format!("[selection]\nexclude_pods = [{}]\n", many.join(", ")),
        &[],
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("[selection] exclude_pods has 300 entries; at most 256"),
        "{stderr}"
    );
}

fn tempdir(name: &str) -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "{name}-{}-{}",
        std::process::id(),
        now_ms()
    ));
    std::fs::create_dir_all(&dir).expect("mkdir");
    dir
}
