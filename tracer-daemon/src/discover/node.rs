//! The node as the agent sees it: every process in a kubelet pod cgroup, grouped into pods
//! and containers, named from the kubelet's log directories. Rebuilt by scanning /proc; odd or
//! vanishing entries are skipped, never fatal.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    path::{Path, PathBuf},
};

use tracing::debug;

use crate::discover::{
    cgroup::{self, QosClass, Runtime},
    memory::{self, CgroupMounts, CgroupVersion, MemoryFigures},
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
    pub fn memory(&self) -> Option<MemoryFigures> {
        let (dir, version) = self.memory_dir.as_ref()?;
        memory::read_memory(dir, *version).ok()
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
        let Ok(content) = std::fs::read_to_string(dir.join("cgroup")) else {
            continue;
        };
        let cgroups = match cgroup::process_cgroups(&content) {
            Ok(cgroups) => cgroups,
            Err(error) => {
                debug!(pid, %error, "unreadable cgroup file; skipped");
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
                memory_dir: memory::memory_cgroup_dir(
                    mounts,
                    cgroups.unified.as_deref(),
                    cgroups.memory_v1.as_deref(),
                ),
                unified_dir: mounts
                    .unified
                    .as_deref()
                    .zip(cgroups.unified.as_deref())
                    .and_then(|(mount, path)| memory::join_cgroup_path(mount, path)),
                pids: BTreeSet::new(),
            });
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
