//! The node as the agent sees it: every process in a kubelet pod cgroup, grouped into pods
//! and containers, named from the kubelet's log directories. Rebuilt by scanning /proc; odd or
//! vanishing entries are skipped, never fatal.

use std::{
    borrow::Cow,
    collections::{BTreeMap, BTreeSet, HashMap},
    path::PathBuf,
};

use tracing::{debug, warn};

use crate::discover::{
    cgroup::{self, QosClass, Runtime},
    cgroup_namespace::NamespaceRoots,
    memory::{self, CgroupMounts, CgroupVersion, MemoryError, MemoryFigures},
    pods,
    process::read_proc_file,
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

/// Scans /proc and the kubelet's records once (see [`Scanner`] for scans repeated).
pub fn scan(paths: &NodePaths, mounts: &CgroupMounts) -> NodeView {
    Scanner::default().scan(paths, mounts)
}

/// A process in a pod is read again in full (its cgroup and name) at least once every this
/// many scans, even when it is the same process as at the last scan: a process moved to
/// another cgroup, or renamed (an exec, `prctl`), is seen within this many discovery
/// intervals. New processes, and processes not in a pod, are read at every scan.
pub const REREAD_EVERY_SCANS: u64 = 8;

/// What a scan remembers of a process in a pod, for the next.
#[derive(Clone, Debug)]
struct KnownProcess {
    /// The inode of its /proc directory: a new process under a reused pid has another.
    inode: u64,
    cgroups: cgroup::ProcessCgroups,
    /// Whether its cgroup paths were read exactly (valid UTF-8).
    exact_paths: bool,
    comm: String,
}

/// Scans the node again and again, remembering its processes in pods: a process that was in
/// a pod at the last scan and is still the same process (its /proc directory has the same
/// inode) is not read again, but for one scan in [`REREAD_EVERY_SCANS`] (spread by pid).
/// Reading every process's cgroup and name every 2 s was most of what the agent costs on a
/// node of a thousand processes (BENCHMARKS.md, "Always-on watching").
#[derive(Debug, Default)]
pub struct Scanner {
    known: HashMap<u32, KnownProcess>,
    scans: u64,
}

impl Scanner {
    /// Scans /proc and the kubelet's records.
    pub fn scan(&mut self, paths: &NodePaths, mounts: &CgroupMounts) -> NodeView {
        use std::os::unix::fs::DirEntryExt as _;
        let identities = pods::read_pod_log_dirs(&paths.pod_log_root);
        let container_names = pods::read_container_log_names(&paths.container_log_root);
        let mut view = NodeView::default();
        let Ok(entries) = std::fs::read_dir(&paths.proc_root) else {
            return view;
        };
        self.scans += 1;
        let roots = mounts.namespace_roots();
        let mut known = HashMap::with_capacity(self.known.len());
        // One buffer for every process's files.
        let mut bytes = Vec::with_capacity(4096);
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            // procfs gives 1 for an entry it could not instantiate: never trust that.
            let inode = entry.ino();
            let due = (u64::from(pid) + self.scans).is_multiple_of(REREAD_EVERY_SCANS);
            let remembered = self
                .known
                .remove(&pid)
                .filter(|process| process.inode == inode && inode > 1 && !due);
            let process = match remembered {
                Some(process) => process,
                None => match read_process(pid, entry.path(), inode, &mut bytes, &roots) {
                    Some(process) => process,
                    None => continue,
                },
            };
            let (cgroups, exact_paths) = (&process.cgroups, process.exact_paths);
            let Some(pod_cgroup) = cgroups.pod.clone() else {
                continue;
            };
            let Some(container_id) = pod_cgroup.container_id.clone() else {
                continue;
            };
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
                container.unified_dir = (mounts.unified.as_ref())
                    .zip(cgroups.unified.as_deref())
                    .and_then(|(mount, path)| memory::join_cgroup_path(&mount.path, path));
            }
            let _ = container.pids.insert(pid);
            let _ = view.processes.insert(
                pid,
                NodeProcess {
                    pid,
                    comm: process.comm.clone(),
                    pod_uid: pod_cgroup.pod_uid.clone(),
                    container_id,
                },
            );
            let _ = known.insert(pid, process);
        }
        self.known = known;
        name_single_containers(&mut view, &identities);
        view
    }
}

/// Reads a process's cgroup (its paths resolved against `roots`, this agent's cgroup
/// namespace roots) and, when it is in a pod's container, its name. `None` for a process in no
/// container, or gone before it was read (skipped quietly), or whose cgroup file is malformed
/// (with a warning).
fn read_process(
    pid: u32,
    mut dir: PathBuf,
    inode: u64,
    bytes: &mut Vec<u8>,
    roots: &NamespaceRoots<'_>,
) -> Option<KnownProcess> {
    dir.push("cgroup");
    read_proc_file(&dir, bytes).ok()?;
    let _ = dir.pop();
    // Cgroup names are any bytes (a container may create nested cgroups); pod and container
    // ids are ASCII, so a lossy conversion still finds them, but names no directory.
    let content = String::from_utf8_lossy(bytes);
    let exact_paths = matches!(content, Cow::Borrowed(_));
    let cgroups = match cgroup::process_cgroups(&content, roots) {
        Ok(cgroups) => cgroups,
        Err(error) => {
            warn!(pid, %error, "skipping process with a malformed /proc/PID/cgroup");
            return None;
        }
    };
    cgroups.pod.as_ref()?.container_id.as_ref()?;
    let comm = read_comm(&mut dir, bytes).unwrap_or_default();
    Some(KnownProcess {
        inode,
        cgroups,
        exact_paths,
        comm,
    })
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

/// A process's name, from `dir` (its /proc directory; given back as it was).
fn read_comm(dir: &mut PathBuf, buffer: &mut Vec<u8>) -> Option<String> {
    dir.push("comm");
    let read = read_proc_file(dir, buffer);
    let _ = dir.pop();
    read.ok()?;
    Some(String::from_utf8_lossy(buffer).trim_end().to_owned())
}

#[cfg(test)]
mod tests {
    use std::{
        fs,
        sync::atomic::{AtomicUsize, Ordering},
    };

    use super::*;
    use crate::discover::{
        memory::CgroupMount,
        test_log::{assert_one_warning, capture_warnings},
    };

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
            unified: Some(CgroupMount::at_namespace_root("/sys/fs/cgroup")),
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
    fn an_agent_in_its_own_cgroup_namespace_finds_a_pod_beside_its_own_and_its_directories() {
        // The v1 memory hierarchy: the agent's namespace root is its own container's cgroup;
        // the pod beside it reads as /../../pod<uid>/<id>. The unified hierarchy is unknown
        // (its root was not found): no directory there, and nothing else lost.
        let node = FakeNode::new("private");
        node.process(
            "201",
            "worker",
            fixture!("proc_cgroup_v1_cgroupfs_private_namespace.txt"),
        );
        let mounts = CgroupMounts {
            unified: Some(CgroupMount {
                path: PathBuf::from("/host/cgroup/unified"),
                levels_above_namespace_root: 4,
                namespace_root: None,
            }),
            memory_v1: Some(CgroupMount {
                path: PathBuf::from("/host/cgroup/memory"),
                levels_above_namespace_root: 4,
                namespace_root: Some("/kubepods/burstable/pod0c1d0a4e/aaaa".to_owned()),
            }),
            unified_has_memory: false,
        };
        let view = scan(&node.paths, &mounts);
        let pod = &view.pods["6a4ce4a0-ba47-11ea-b2a7-0cc47ac5979e"];
        assert_eq!(pod.qos, QosClass::Burstable);
        let container = pod.containers.values().next().expect("its container");
        assert_eq!(
            container.memory_dir,
            Some((
                PathBuf::from(
                    "/host/cgroup/memory/kubepods/burstable/pod6a4ce4a0-ba47-11ea-b2a7-0cc47ac5979e/17db96a24ae1e9dd57143e62b1cb0d2d35e693c65c774c7470e87b0572e07c1a"
                ),
                CgroupVersion::V1
            ))
        );
        assert_eq!(container.unified_dir, None);
    }

    #[test]
    fn a_rescan_rereads_new_processes_at_once_and_known_ones_within_the_bound() {
        let node = FakeNode::new("rescan");
        let web = fixture!("proc_cgroup_v2_systemd_containerd.txt");
        node.process("101", "web", web);
        let mounts = CgroupMounts::default();
        let mut scanner = Scanner::default();
        let view = scanner.scan(&node.paths, &mounts);
        assert_eq!(view.processes[&101].comm, "web");

        // Renamed in place (the same /proc directory): seen within the bound, not before
        // its turn.
        node.process("101", "renamed", web);
        // A new process: found at the very next scan.
        node.process("102", "sidecar", web);
        let mut seen_renamed_after = None;
        for scan in 1..=REREAD_EVERY_SCANS {
            let view = scanner.scan(&node.paths, &mounts);
            assert_eq!(view.processes[&102].comm, "sidecar", "scan {scan}");
            if view.processes[&101].comm == "renamed" {
                seen_renamed_after = Some(scan);
                break;
            }
        }
        assert!(
            seen_renamed_after.is_some(),
            "a known process is read again within {REREAD_EVERY_SCANS} scans"
        );

        // The pid reused by another process (another /proc directory: another inode),
        // in no pod: gone from the view at once.
        let other = node.paths.proc_root.join("next-101");
        node.write(other.join("comm"), b"other\n");
        node.write(other.join("cgroup"), b"0::/user.slice\n");
        fs::remove_dir_all(node.paths.proc_root.join("101")).expect("remove 101");
        fs::rename(&other, node.paths.proc_root.join("101")).expect("reuse 101");
        let view = scanner.scan(&node.paths, &mounts);
        assert!(!view.processes.contains_key(&101), "{view:#?}");
        assert!(view.processes.contains_key(&102));

        // Ended: gone at once.
        fs::remove_dir_all(node.paths.proc_root.join("102")).expect("remove 102");
        let view = scanner.scan(&node.paths, &mounts);
        assert!(view.processes.is_empty(), "{view:#?}");
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
