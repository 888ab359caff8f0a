//! The node as the agent sees it: every process in a kubelet pod cgroup, grouped into pods
//! and containers, named from the kubelet's log directories. Rebuilt by scanning /proc; odd or
//! vanishing entries are skipped, never fatal.

use std::{
    borrow::Cow,
    collections::{BTreeMap, BTreeSet, HashMap},
    path::{Path, PathBuf},
};

use tracing::{debug, warn};

use crate::discover::{
    cgroup::{self, QosClass, Runtime},
    memory::{self, CgroupMounts, CgroupVersion, MemoryError, MemoryFigures},
    pods,
};

/// Where the node's records live (configurable for tests).
#[derive(Clone, Debug)]
pub struct NodePaths {
    /// procfs mount.
    pub proc_root: PathBuf,
    /// The kubelet's pod log directories (`<namespace>_<name>_<uid>/<container>/`).
    pub pod_log_root: PathBuf,
    /// The kubelet's container log symlinks (`<pod>_<namespace>_<container>-<id>.log`).
    pub container_log_root: PathBuf,
}

impl Default for NodePaths {
    fn default() -> Self {
        Self {
            proc_root: PathBuf::from("/proc"),
            pod_log_root: PathBuf::from("/var/log/pods"),
            container_log_root: PathBuf::from("/var/log/containers"),
        }
    }
}

/// A container of a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Container {
    /// Runtime container id.
    pub id: String,
    /// Name from the kubelet's records, when found.
    pub name: Option<String>,
    /// Runtime from the cgroup name.
    pub runtime: Runtime,
    /// The memory cgroup directory and its version, when found.
    pub memory_dir: Option<(PathBuf, CgroupVersion)>,
    /// The container's cgroup v2 directory (PSI files live there), when found.
    pub unified_dir: Option<PathBuf>,
    /// Processes in it.
    pub pids: BTreeSet<u32>,
}

impl Container {
    /// Current memory figures of the container's cgroup.
    ///
    /// `None` when the cgroup is gone (the container exited), and with a warning when a file
    /// holds what the kernel never writes there.
    pub fn memory(&self) -> Option<MemoryFigures> {
        let (dir, version) = self.memory_dir.as_ref()?;
        match memory::read_memory(dir, *version) {
            Ok(figures) => Some(figures),
            Err(error @ MemoryError::Invalid { .. }) => {
                warn!(container = %self.id, dir = %dir.display(), %error, "skipping malformed memory cgroup file");
                None
            }
            Err(error) => {
                debug!(container = %self.id, %error, "memory cgroup unreadable");
                None
            }
        }
    }
}

/// A pod on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pod {
    /// Pod uid.
    pub uid: String,
    /// Namespace, from the kubelet's pod log directory.
    pub namespace: Option<String>,
    /// Name, from the kubelet's pod log directory.
    pub name: Option<String>,
    /// QoS class from the cgroup layout.
    pub qos: QosClass,
    /// Containers by id.
    pub containers: BTreeMap<String, Container>,
}

impl Pod {
    /// `namespace/name`, or the uid when the kubelet's records do not name the pod.
    pub fn display_name(&self) -> String {
        match (&self.namespace, &self.name) {
            (Some(namespace), Some(name)) => format!("{namespace}/{name}"),
            _ => format!("pod {}", self.uid),
        }
    }
}

/// A process in a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeProcess {
    /// Pid.
    pub pid: u32,
    /// Command name.
    pub comm: String,
    /// Pod uid.
    pub pod_uid: String,
    /// Container id.
    pub container_id: String,
}

/// Pods and their processes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeView {
    /// Pods by uid.
    pub pods: BTreeMap<String, Pod>,
    /// Processes in pods, by pid.
    pub processes: HashMap<u32, NodeProcess>,
}

impl NodeView {
    /// The pod with this namespace and name.
    pub fn pod_by_name(&self, namespace: &str, name: &str) -> Option<&Pod> {
        self.pods
            .values()
            .find(|p| p.namespace.as_deref() == Some(namespace) && p.name.as_deref() == Some(name))
    }
}

/// Scans /proc and the kubelet's records.
pub fn scan(paths: &NodePaths, mounts: &CgroupMounts) -> NodeView {
    let identities = pods::read_pod_log_dirs(&paths.pod_log_root);
    let container_names = pods::read_container_log_names(&paths.container_log_root);
    let mut view = NodeView::default();
    let Ok(entries) = std::fs::read_dir(&paths.proc_root) else {
        return view;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let dir = entry.path();
        // A process can exit between the listing and these reads: skip it quietly.
        let Ok(bytes) = std::fs::read(dir.join("cgroup")) else {
            continue;
        };
        // Cgroup names are any bytes (a container may create nested cgroups); pod and container
        // ids are ASCII, so a lossy conversion still finds them, but names no directory.
        let content = String::from_utf8_lossy(&bytes);
        let exact_paths = matches!(content, Cow::Borrowed(_));
        let cgroups = match cgroup::process_cgroups(&content) {
            Ok(cgroups) => cgroups,
            Err(error) => {
                warn!(pid, %error, "skipping process with a malformed /proc/PID/cgroup");
                continue;
            }
        };
        let Some(pod_cgroup) = cgroups.pod.clone() else {
            continue;
        };
        let Some(container_id) = pod_cgroup.container_id.clone() else {
            continue;
        };
        let comm = read_comm(&dir).unwrap_or_default();
        let identity = identities.get(&pod_cgroup.pod_uid);
        let pod = view
            .pods
            .entry(pod_cgroup.pod_uid.clone())
            .or_insert_with(|| Pod {
                uid: pod_cgroup.pod_uid.clone(),
                namespace: identity.map(|i| i.namespace.clone()),
                name: identity.map(|i| i.name.clone()),
                qos: pod_cgroup.qos,
                containers: BTreeMap::new(),
            });
        let container = pod
            .containers
            .entry(container_id.clone())
            .or_insert_with(|| Container {
                id: container_id.clone(),
                name: container_names
                    .get(&container_id)
                    .map(|c| c.container.clone()),
                runtime: pod_cgroup.runtime,
                memory_dir: None,
                unified_dir: None,
                pids: BTreeSet::new(),
            });
        if exact_paths && container.memory_dir.is_none() {
            container.memory_dir = memory::memory_cgroup_dir(
                mounts,
                cgroups.unified.as_deref(),
                cgroups.memory_v1.as_deref(),
            );
        }
        if exact_paths && container.unified_dir.is_none() {
            container.unified_dir = mounts
                .unified
                .as_deref()
                .zip(cgroups.unified.as_deref())
                .and_then(|(mount, path)| memory::join_cgroup_path(mount, path));
        }
        let _ = container.pids.insert(pid);
        let _ = view.processes.insert(
            pid,
            NodeProcess {
                pid,
                comm,
                pod_uid: pod_cgroup.pod_uid.clone(),
                container_id,
            },
        );
    }
    name_single_containers(&mut view, &identities);
    view
}

/// Without the container log symlinks, a pod with one container directory and one container
/// that is not the sandbox ("pause") can still be named.
fn name_single_containers(view: &mut NodeView, identities: &HashMap<String, pods::PodIdentity>) {
    for pod in view.pods.values_mut() {
        let Some(identity) = identities.get(&pod.uid) else {
            continue;
        };
        let [only_name] = identity.containers.as_slice() else {
            continue;
        };
        let unnamed: Vec<&String> = pod
            .containers
            .values()
            .filter(|c| c.name.is_none())
            .filter(|c| {
                !c.pids
                    .iter()
                    .all(|pid| view.processes.get(pid).is_some_and(|p| p.comm == "pause"))
            })
            .map(|c| &c.id)
            .collect();
        if let [id] = unnamed.as_slice() {
            let id = (*id).clone();
            if let Some(container) = pod.containers.get_mut(&id) {
                container.name = Some(only_name.clone());
            }
        }
    }
}

fn read_comm(dir: &Path) -> Option<String> {
    Some(
        std::fs::read_to_string(dir.join("comm"))
            .ok()?
            .trim_end()
            .to_owned(),
    )
}

#[cfg(test)]
mod tests {
    use std::{
        fs,
        sync::atomic::{AtomicUsize, Ordering},
    };

    use super::*;
    use crate::discover::test_log::{assert_one_warning, capture_warnings};

    /// A real-format input of tracer-parse's fixtures (its tests pin how each parses).
    macro_rules! fixture {
        ($name:literal) => {
            include_bytes!(concat!("../../../tracer-parse/src/fixtures/", $name))
        };
    }

    const WEB_UID: &str = "03f3f104-3215-44f2-9686-d4dd1f05a7ed";
    const WEB_CONTAINER: &str = "09d185410c4e25236cc24717f881589bb0978b24eafd101624e627a4dd8d3439";

    /// A fake node (proc root, kubelet log roots) under the temp dir, removed on drop.
    struct FakeNode {
        paths: NodePaths,
        root: PathBuf,
    }

    impl FakeNode {
        fn new(label: &str) -> Self {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let unique = NEXT.fetch_add(1, Ordering::Relaxed);
            let root = std::env::temp_dir().join(format!(
                "tracer-node-{label}-{}-{unique}",
                std::process::id()
            ));
            let _ = fs::remove_dir_all(&root);
            let paths = NodePaths {
                proc_root: root.join("proc"),
                pod_log_root: root.join("pods"),
                container_log_root: root.join("containers"),
            };
            for dir in [
                &paths.proc_root,
                &paths.pod_log_root,
                &paths.container_log_root,
            ] {
                fs::create_dir_all(dir).expect("create the fake node's dirs");
            }
            Self { paths, root }
        }

        fn write(&self, path: PathBuf, content: &[u8]) {
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent).expect("create a parent dir");
            }
            fs::write(&path, content).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        }

        fn process(&self, pid: &str, comm: &str, cgroup: &[u8]) {
            let dir = self.paths.proc_root.join(pid);
            self.write(dir.join("comm"), format!("{comm}\n").as_bytes());
            self.write(dir.join("cgroup"), cgroup);
        }

        fn pod_dir(&self, name: &str) {
            self.write(
                self.paths.pod_log_root.join(name).join("app/0.log"),
                b"log\n",
            );
        }
    }

    impl Drop for FakeNode {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.root);
        }
    }

    #[test]
    fn malformed_proc_cgroup_files_are_skipped_with_a_warning_and_the_good_pod_is_found() {
        let node = FakeNode::new("scan");
        let good = fixture!("proc_cgroup_v2_systemd_containerd.txt");
        node.process("101", "web", good);
        node.process(
            "102",
            "truncated-v1",
            fixture!("proc_cgroup_truncated_v1.txt"),
        );
        node.process(
            "103",
            "truncated-v2",
            fixture!("proc_cgroup_truncated_v2.txt"),
        );
        node.process("104", "garbage", fixture!("proc_cgroup_garbage.txt"));
        node.process(
            "105",
            "worker",
            fixture!("proc_cgroup_v2_nested_non_utf8.txt"),
        );
        node.process("106", "empty", b"");
        node.write(node.paths.proc_root.join("107/comm"), b"exited\n");
        node.write(node.paths.proc_root.join("self/cgroup"), good);
        node.pod_dir(&format!("default_web-0_{WEB_UID}"));
        node.pod_dir("default_web-0");
        node.pod_dir(&format!("a_b_c_{WEB_UID}"));
        node.write(
            node.paths
                .container_log_root
                .join(format!("web-0_default_app-{WEB_CONTAINER}.log")),
            b"",
        );
        node.write(
            node.paths.container_log_root.join("web-0_default_app.log"),
            b"",
        );
        let mounts = CgroupMounts {
            unified: Some(PathBuf::from("/sys/fs/cgroup")),
            memory_v1: None,
            unified_has_memory: true,
        };

        let (view, log) = capture_warnings(|| scan(&node.paths, &mounts));

        let pod = view.pods.get(WEB_UID).expect("the good pod is found");
        assert_eq!(pod.display_name(), "default/web-0");
        let container = &pod.containers[WEB_CONTAINER];
        assert_eq!(container.name.as_deref(), Some("app"));
        assert_eq!(
            container.pids,
            BTreeSet::from([101, 105]),
            "a process in a non-UTF-8 nested cgroup still belongs to its container"
        );
        let memory_dir = container.memory_dir.as_ref().map(|(dir, _)| dir.to_str());
        assert_eq!(
            memory_dir,
            Some(Some(
                "/sys/fs/cgroup/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod03f3f104_3215_44f2_9686_d4dd1f05a7ed.slice/cri-containerd-09d185410c4e25236cc24717f881589bb0978b24eafd101624e627a4dd8d3439.scope"
            )),
            "the directory comes from the process whose path is exact"
        );
        let mut pids: Vec<u32> = view.processes.keys().copied().collect();
        pids.sort_unstable();
        assert_eq!(pids, [101, 105], "only the processes in pods");
        assert_eq!(view.pods.len(), 1, "{view:#?}");

        assert_one_warning(&log, &["malformed /proc/PID/cgroup", "pid=102", "line 6"]);
        assert_one_warning(&log, &["malformed /proc/PID/cgroup", "pid=104", "line 1"]);
        assert_one_warning(&log, &["skipping pod log directory", "default_web-0 "]);
        assert_one_warning(&log, &["skipping pod log directory", "a_b_c_"]);
        assert_one_warning(
            &log,
            &["skipping container log name", "web-0_default_app.log"],
        );
        let warnings = log.iter().filter(|line| line.contains("WARN")).count();
        assert_eq!(
            warnings, 5,
            "a cut path (103), an empty file (106) or a process gone (107) warns of nothing: {log:#?}"
        );
    }

    #[test]
    fn malformed_memory_files_give_no_figures_with_a_warning() {
        let node = FakeNode::new("memory");
        let dir = node.root.join("cgroup");
        node.write(
            dir.join("memory.current"),
            fixture!("memory_v2/memory.current"),
        );
        node.write(
            dir.join("memory.events"),
            fixture!("memory_v2/memory.events"),
        );
        node.write(dir.join("memory.max"), fixture!("memory_v2/memory.max"));
        let container = Container {
            id: WEB_CONTAINER.to_owned(),
            name: None,
            runtime: Runtime::Containerd,
            memory_dir: Some((dir.clone(), CgroupVersion::V2)),
            unified_dir: None,
            pids: BTreeSet::new(),
        };
        let (figures, log) = capture_warnings(|| container.memory());
        assert_eq!(figures.map(|figures| figures.limit_hits), Some(12));
        assert!(log.is_empty(), "{log:?}");

        for (file, content) in [
            ("memory.max", &fixture!("memory_v2/memory.max.empty")[..]),
            ("memory.events", fixture!("memory_v2/memory.events.garbage")),
            (
                "memory.events",
                fixture!("memory_v2/memory.events.truncated"),
            ),
        ] {
            let good = fs::read(dir.join(file)).expect("read the good file");
            node.write(dir.join(file), content);
            let (figures, log) = capture_warnings(|| container.memory());
            assert_eq!(figures, None, "{file} {content:?}");
            assert_one_warning(&log, &["malformed memory cgroup file", file, WEB_CONTAINER]);
            node.write(dir.join(file), &good);
        }

        fs::remove_dir_all(&dir).expect("remove the cgroup");
        let (figures, log) = capture_warnings(|| container.memory());
        assert_eq!(figures, None, "the container exited");
        assert!(log.is_empty(), "a cgroup gone is no warning: {log:?}");
    }
}
