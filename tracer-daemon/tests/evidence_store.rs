//! The evidence store on a disk that fills up: saves fail with their cause in the log, the
//! metrics and the API, and saving recovers by itself once space is back; a start that fails on
//! a full disk leaves nothing that blocks the next one. Real agent, real OOM kills, a real
//! filesystem (a small tmpfs) really full.

#![expect(
    clippy::unwrap_used,
    reason = "tests panic with a message on the first surprise"
)]

mod support;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use support::{agent::*, faults::*, *};

const MIB: u64 = 1024 * 1024;

/// A tmpfs of `size` mounted at `dir`, unmounted on drop.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(dir: &Path, size: &str) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .status()
            .unwrap();
        assert!(status.success(), "mount tmpfs on {}", dir.display());
        Self(dir.to_owned())
    }

    /// Fills the disk with a file, to the last byte; returns its path.
    fn fill(&self) -> PathBuf {
        let filler = self.0.join("filler");
        let _ = Command::new("dd")
            .args(["if=/dev/zero", "bs=4096"])
            .arg(format!("of={}", filler.display()))
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Runs one OOM episode of a leaker in the pod; returns once the agent has seen the kill.
fn oom_episode(agent: &Agent, pod: &node::FakePod) {
    let mut leaker = Workload::start(&workload("oom_leaker"), &["leak", "15"]);
    pod.place(leaker.pid, "app");
    agent.wait_traced(&[leaker.pid]);
    leaker.send("go");
    let _ = leaker.last_allocated_before_death();
    assert_eq!(leaker.wait_killed(), Some(libc::SIGKILL));
}

fn wait_log(agent: &Agent, text: &str) -> String {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let log = agent.stderr();
        if let Some(line) = log.lines().find(|l| l.contains(text)) {
            return line.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "the agent never logged {text:?}:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_full_disk_fails_saves_with_their_cause_and_saving_recovers_by_itself() {
    require_root();
    let root = temp_root("disk-full");
    let namespace = format!("disk-full-{}", std::process::id());
    let pod = memory_limited_pod(&root, &namespace, "oomer-0", "app", 64 * MIB);
    let disk = SmallDisk::mount(&root.join("state"), "2m");
    let agent = Agent::start(
        &root,
        &[
            "--namespace",
            &namespace,
            "--memory-watch-interval",
            "50ms",
            "--metrics",
            "127.0.0.1:0",
        ],
    );
    let metrics = metrics_address(&agent);
    let filler = disk.fill();

    // 1. The disk is full: every save fails, and says why.
    oom_episode(&agent, &pod);
    let failed = wait_log(&agent, "cannot save evidence");
    assert!(
        failed.contains("No space left on device"),
        "the cause is logged: {failed}"
    );
    let text = scrape(metrics);
    assert!(
        metric(&text, "tracer_evidence_save_failures_total") >= 1.0,
        "{text}"
    );
    assert_eq!(metric(&text, "tracer_evidence_last_save_failed"), 1.0);
    let (code, _, stderr) = agent.ctl(&["evidence"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("the last save failed") && stderr.contains("No space left on device"),
        "tracerctl shows the store's state: {stderr}"
    );

    // 2. Space is back: the next saves work without a restart, ids continuing.
    std::fs::remove_file(&filler).unwrap();
    let saved_before = acknowledged_evidence(&agent.stderr()).len();
    oom_episode(&agent, &pod);
    let _ = agent.wait_json(
        &["oom-events", &pod.display()],
        "recorded the OOM kill after space came back",
        |v| v.as_array().is_some_and(|a| !a.is_empty()),
    );
    assert!(acknowledged_evidence(&agent.stderr()).len() > saved_before);
    let text = scrape(metrics);
    assert!(
        metric(&text, "tracer_evidence_store_reopened_total") >= 1.0,
        "{text}"
    );
    assert_eq!(
        metric(&text, "tracer_evidence_last_save_failed"),
        0.0,
        "{text}"
    );
    let (code, _, stderr) = agent.ctl(&["evidence"]);
    assert_eq!(code, Some(0));
    assert!(
        !stderr.contains("WARNING"),
        "the store is whole again: {stderr}"
    );
    drop(agent);
    drop(disk);
}

#[test]
fn a_start_that_fails_on_a_full_disk_never_blocks_the_next_start() {
    require_root();
    let root = temp_root("disk-full-start");
    let state = root.join("state");
    let disk = SmallDisk::mount(&state, "1m");
    let filler = disk.fill();
    let (code, stderr) = run_daemon(
        &[
            "run",
            "--listen",
            &format!("unix:{}", root.join("tracer.sock").display()),
            "--state-dir",
            &state.display().to_string(),
        ],
        &[],
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("No space left on device"),
        "the cause is named: {stderr}"
    );
    let left: Vec<String> = std::fs::read_dir(&state)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name != "filler")
        .collect();
    assert!(
        !left.iter().any(|name| name == "evidence.redb"),
        "a store that was never initialized is never left at its name: {left:?}"
    );
    std::fs::remove_file(&filler).unwrap();
    let agent = Agent::start(&root, &["--state-dir", &state.display().to_string()]);
    let (code, _, stderr) = agent.ctl(&["evidence"]);
    assert_eq!(code, Some(0), "{stderr}");
    drop(agent);
    drop(disk);
}
