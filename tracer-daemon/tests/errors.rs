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
    for name in ["CAP_BPF", "CAP_PERFMON", "CAP_SYS_ADMIN", "CAP_SYS_PTRACE"] {
        assert!(
            stderr.contains(&format!("{name} (for ")),
            "{name} not named: {stderr}"
        );
    }
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
        stderr.contains("maps no ELF file that defines malloc"),
        "{stderr}"
    );
    workload.send("exit");
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
