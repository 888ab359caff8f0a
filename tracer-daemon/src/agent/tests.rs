//! The agent on the in-memory kernel side, no root: real child processes, read by the real
//! preparer thread and attached by the real tracer; the node view is put together here (finding
//! pods in cgroups is the integration tests' part), and the BPF programs' part is played by the
//! test through [`FakeKernel`].

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    time::Duration,
};

use super::*;
use crate::{
    bpf::fake::FakeKernel,
    collect,
    discover::{
        cgroup::{QosClass, Runtime},
        node::{Container, NodePaths, NodeProcess, Pod},
    },
    evidence::model::Trigger,
    select::SelectionConfig,
    tracer::tests::{Sleeper, code_address, oom_kill_of},
};

/// A directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("tracer-agent-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create a temporary directory");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An agent on the fake kernel side, selecting namespace "shop", with its state in `dir`; the
/// node paths lead nowhere, so only the views the test sets are seen.
fn agent(dir: &TempDir, max_processes: Option<usize>) -> (Agent, FakeKernel) {
    let kernel = FakeKernel::default();
    let config = AgentConfig {
        state_dir: dir.0.join("state"),
        paths: NodePaths {
            proc_root: dir.0.join("no-proc"),
            pod_log_root: dir.0.join("no-pods"),
            container_log_root: dir.0.join("no-containers"),
        },
        selection: SelectionConfig {
            namespaces: vec!["shop".into()],
            max_processes,
            ..SelectionConfig::default()
        },
        ..AgentConfig::default()
    };
    let tracer = Tracer::with_kernel(Box::new(kernel.clone()), &config.tracer);
    let agent =
        Agent::with_tracer(config, tracer, CgroupMounts::default()).expect("start the agent");
    (agent, kernel)
}

/// One pod, `namespace/cart`, with container "app" (id "c1") holding `pids`.
fn view(namespace: &str, pids: &[u32]) -> NodeView {
    let container = Container {
        id: "c1".into(),
        name: Some("app".into()),
        runtime: Runtime::Containerd,
        memory_dir: None,
        unified_dir: None,
        pids: pids.iter().copied().collect::<BTreeSet<u32>>(),
    };
    let pod = Pod {
        uid: "uid-1".into(),
        namespace: Some(namespace.into()),
        name: Some("cart".into()),
        qos: QosClass::Burstable,
        containers: BTreeMap::from([("c1".to_owned(), container)]),
    };
    NodeView {
        processes: pids
            .iter()
            .map(|&pid| {
                let process = NodeProcess {
                    pid,
                    comm: "sleep".into(),
                    pod_uid: "uid-1".into(),
                    container_id: "c1".into(),
                };
                (pid, process)
            })
            .collect(),
        pods: BTreeMap::from([("uid-1".to_owned(), pod)]),
    }
}

impl Agent {
    /// What a discovery pass does, with this view instead of a scan.
    fn rescan_with(&mut self, view: NodeView) {
        self.view = view;
        let unwanted = self.plan.rescanned(&self.view, &self.traced());
        for pid in unwanted {
            self.untrace(pid);
        }
        self.dispatch();
    }

    /// Takes the preparer's next answer and acts on it, as the event loop does.
    async fn take_prepared(&mut self) {
        let (pid, result) = tokio::time::timeout(Duration::from_secs(10), self.preparer.next())
            .await
            .expect("the preparer answers")
            .expect("the preparer is running");
        self.attach_prepared(pid, result);
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_selected_process_is_read_off_the_agents_thread_and_attached_on_it() {
    let dir = TempDir::new("attach");
    let (mut agent, kernel) = agent(&dir, None);
    let sleeper = Sleeper::sleeping();
    let pid = sleeper.pid();
    // Another namespace: not selected, never read.
    agent.rescan_with(view("other", &[pid]));
    assert!(!agent.plan.busy(), "nothing selected");
    agent.rescan_with(view("shop", &[pid]));
    // Sent to be read: the agent's thread has not touched the kernel for it yet.
    assert!(agent.plan.busy());
    assert!(kernel.state().history.is_empty());
    assert!(!agent.target_process(pid).traced);
    agent.take_prepared().await;
    assert!(kernel.state().armed.contains(&pid), "armed once attached");
    let target = agent.target_process(pid);
    assert!(target.traced);
    assert_eq!(
        target
            .allocator
            .as_deref()
            .map(|a| a.ends_with("libc.so.6")),
        Some(true)
    );
    assert!(!agent.plan.busy());
    // Found again at the next rescan: not read twice.
    agent.rescan_with(view("shop", &[pid]));
    assert!(!agent.plan.busy());
    // Deselected (its pod left the namespace's selection): detached.
    agent.rescan_with(view("other", &[pid]));
    assert!(!agent.target_process(pid).traced);
    assert_eq!(kernel.state().history, [(pid, true), (pid, false)]);
}

#[tokio::test(flavor = "current_thread")]
async fn a_process_deselected_while_it_is_read_is_never_attached() {
    let dir = TempDir::new("deselected");
    let (mut agent, kernel) = agent(&dir, None);
    let sleeper = Sleeper::sleeping();
    let pid = sleeper.pid();
    agent.rescan_with(view("shop", &[pid]));
    agent.rescan_with(NodeView::default());
    agent.take_prepared().await;
    assert!(kernel.state().history.is_empty(), "never attached");
    assert!(!agent.target_process(pid).traced);
    assert!(!agent.plan.busy());
}

#[tokio::test(flavor = "current_thread")]
async fn a_process_stopped_while_it_is_read_is_never_attached() {
    let dir = TempDir::new("stopped");
    let (mut agent, kernel) = agent(&dir, None);
    let sleeper = Sleeper::sleeping();
    let pid = sleeper.pid();
    agent.rescan_with(view("shop", &[pid]));
    let stop = Selector::parse_pod("shop/cart", None).expect("selector");
    assert_eq!(agent.stop(&stop).expect("stop"), Vec::<u32>::new());
    agent.take_prepared().await;
    assert!(kernel.state().history.is_empty(), "never attached");
    // Stopped until started again, whatever the selection says at the next rescans.
    agent.rescan_with(view("shop", &[pid]));
    assert!(!agent.plan.busy());
}

#[tokio::test(flavor = "current_thread")]
async fn what_cannot_be_traced_says_why_and_is_not_read_again() {
    let dir = TempDir::new("refused");
    let (mut agent, kernel) = agent(&dir, Some(1));
    // pid 2 is kthreadd, a kernel thread: read, refused with why.
    agent.rescan_with(view("shop", &[2]));
    agent.take_prepared().await;
    let reason = agent.target_process(2).not_traced_reason;
    assert!(
        reason
            .as_deref()
            .is_some_and(|r| r.contains("kernel thread")),
        "{reason:?}"
    );
    // The limit is one process; read newest first, the second sleeper takes the place and
    // the first is refused without being read.
    let (first, second) = (Sleeper::sleeping(), Sleeper::sleeping());
    let (older, newer) = if first.pid() < second.pid() {
        (first.pid(), second.pid())
    } else {
        (second.pid(), first.pid())
    };
    agent.rescan_with(view("shop", &[2, older, newer]));
    agent.take_prepared().await;
    assert_eq!(agent.target_process(newer).not_traced_reason, None);
    assert!(agent.target_process(newer).traced);
    assert_eq!(
        agent.target_process(older).not_traced_reason.as_deref(),
        Some("max processes reached (1)")
    );
    assert_eq!(agent.metrics(10).trace_failures, 2);
    agent.rescan_with(view("shop", &[2, older, newer]));
    assert!(!agent.plan.busy(), "failures are not retried by discovery");
    assert_eq!(kernel.state().history, [(newer, true)]);
}

#[tokio::test(flavor = "current_thread")]
async fn an_oom_kill_is_saved_as_evidence_for_the_victims_container_with_its_last_records() {
    let dir = TempDir::new("oom");
    let (mut agent, kernel) = agent(&dir, None);
    let mut sleeper = Sleeper::sleeping();
    let pid = sleeper.pid();
    agent.rescan_with(view("shop", &[pid]));
    agent.take_prepared().await;
    let site = code_address(&agent.tracer, pid);
    let now = collect::monotonic_now_ns();
    {
        let mut state = kernel.state();
        for i in 0..3 {
            state.allocate(pid, &[site], 0x50_000 + i * 0x1000, 1000, now);
        }
        state.allocate(pid, &[site], 0x60_000, 24, now);
        state.free(pid, 0x60_000);
        state.oom_kills.push_back(oom_kill_of(pid, now));
    }
    // The kill reaches the agent as the ring buffer's wake-up does it.
    agent.tracer.drain_events();
    agent.handle_oom_kills();
    // The victim goes; its records go with it at the next poll.
    let _ = sleeper.0.kill();
    let _ = sleeper.0.wait();
    agent.poll();
    assert!(kernel.state().allocations.is_empty(), "records dropped");
    let listing = agent
        .list_evidence(&EvidenceQuery {
            oom_kills_only: true,
            limit: 10,
            ..EvidenceQuery::default()
        })
        .expect("list evidence");
    assert_eq!(listing.records.len(), 1);
    let evidence = &listing.records[0];
    assert!(
        matches!(&evidence.trigger, Trigger::OomKill { kill: Some(kill) } if kill.victim_pid == Some(pid))
    );
    let report = evidence.report.as_ref().expect("the container's report");
    assert_eq!(report.id.as_deref(), Some("c1"));
    assert_eq!(report.name.as_deref(), Some("app"));
    assert_eq!(report.pids, [pid]);
    assert_eq!(
        (report.outstanding_bytes, report.outstanding_count),
        (3000, 3)
    );
    assert_eq!(report.stacks.len(), 1);
    assert_eq!((report.stacks[0].bytes, report.stacks[0].count), (3000, 3));
    // Stored, not only listed: read back by id.
    let stored = agent.get_evidence(evidence.id).expect("read back");
    assert_eq!(stored.report.map(|r| r.outstanding_bytes), Some(3000));
}

#[tokio::test(flavor = "current_thread")]
async fn an_oom_kill_reported_before_a_rescan_is_recorded_against_the_victims_container() {
    let dir = TempDir::new("oom-rescan");
    let (mut agent, kernel) = agent(&dir, None);
    let sleeper = Sleeper::sleeping();
    let pid = sleeper.pid();
    agent.rescan_with(view("shop", &[pid]));
    agent.take_prepared().await;
    // The kill waits in the ring buffer when discovery comes round; the scan no longer finds
    // the victim or its container (here: it finds nothing at all).
    kernel
        .state()
        .oom_kills
        .push_back(oom_kill_of(pid, collect::monotonic_now_ns()));
    agent.discover();
    assert!(agent.view.pods.is_empty());
    let listing = agent
        .list_evidence(&EvidenceQuery {
            oom_kills_only: true,
            limit: 10,
            ..EvidenceQuery::default()
        })
        .expect("list evidence");
    assert_eq!(listing.records.len(), 1);
    let report = listing.records[0]
        .report
        .as_ref()
        .expect("the container's report");
    assert_eq!(report.id.as_deref(), Some("c1"));
    assert_eq!(report.pids, [pid]);
}
