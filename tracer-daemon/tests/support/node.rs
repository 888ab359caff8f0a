//! A Kubernetes node layout built for real on this machine: kubelet-style pod cgroups (systemd
//! and cgroupfs drivers) in the cgroup v2 hierarchy and the v1 memory hierarchy (when mounted),
//! real processes moved into them, and matching kubelet pod log directories in a temp root.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

/// The kubelet's cgroup driver.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Driver {
    /// kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid_>.slice/cri-containerd-<id>.scope
    Systemd,
    /// kubepods/<qos>/pod<uid>/<id>
    Cgroupfs,
}

/// Where the cgroup filesystems are mounted here.
#[derive(Debug)]
pub(crate) struct Mounts {
    unified: Option<PathBuf>,
    memory_v1: Option<PathBuf>,
}

impl Mounts {
    pub(crate) fn read() -> Self {
        let info = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        let mut mounts = Self {
            unified: None,
            memory_v1: None,
        };
        for line in info.lines() {
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let fields: Vec<&str> = left.split(' ').collect();
            let right: Vec<&str> = right.split(' ').collect();
            let (Some(point), Some(fstype)) = (fields.get(4), right.first()) else {
                continue;
            };
            if *fstype == "cgroup2" {
                mounts.unified = Some(PathBuf::from(point));
            } else if *fstype == "cgroup"
                && right
                    .get(2)
                    .is_some_and(|o| o.split(',').any(|o| o == "memory"))
            {
                mounts.memory_v1 = Some(PathBuf::from(point));
            }
        }
        mounts
    }

    pub(crate) fn roots(&self) -> Vec<PathBuf> {
        self.unified
            .iter()
            .chain(self.memory_v1.iter())
            .cloned()
            .collect()
    }

    /// The v1 memory hierarchy, or the unified one when it has the memory controller.
    pub(crate) fn memory_root(&self) -> PathBuf {
        self.memory_v1
            .clone()
            .or_else(|| self.unified.clone())
            .expect("a memory cgroup hierarchy")
    }

    pub(crate) fn memory_is_v1(&self) -> bool {
        self.memory_v1.is_some()
    }
}

/// A fake pod: cgroups and kubelet records for real processes.
pub(crate) struct FakePod {
    pub(crate) namespace: String,
    pub(crate) name: String,
    pub(crate) uid: String,
    driver: Driver,
    qos: &'static str,
    containers: Vec<(String, String)>,
    mounts: Mounts,
    log_root: PathBuf,
    container_log_root: PathBuf,
}

fn random_hex(len: usize) -> String {
    use std::{collections::hash_map::RandomState, hash::BuildHasher as _};
    let mut out = String::new();
    while out.len() < len {
        out.push_str(&format!(
            "{:016x}",
            RandomState::new().hash_one(Instant::now())
        ));
    }
    out.truncate(len);
    out
}

impl FakePod {
    /// Creates the pod's cgroups (one per container) and kubelet records.
    pub(crate) fn create(
        namespace: &str,
        name: &str,
        driver: Driver,
        qos: &'static str,
        containers: &[&str],
        log_root: &Path,
        container_log_root: &Path,
    ) -> Self {
        let hex = random_hex(32);
        let uid = format!(
            "{}-{}-{}-{}-{}",
            &hex[..8],
            &hex[8..12],
            &hex[12..16],
            &hex[16..20],
            &hex[20..32]
        );
        let pod = Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            uid,
            driver,
            qos,
            containers: containers
                .iter()
                .map(|c| ((*c).to_owned(), random_hex(64)))
                .collect(),
            mounts: Mounts::read(),
            log_root: log_root.to_owned(),
            container_log_root: container_log_root.to_owned(),
        };
        for (container, id) in &pod.containers {
            for root in pod.mounts.roots() {
                std::fs::create_dir_all(root.join(pod.container_path(id)))
                    .expect("create container cgroup");
            }
            let dir = log_root
                .join(format!("{}_{}_{}", pod.namespace, pod.name, pod.uid))
                .join(container);
            std::fs::create_dir_all(&dir).expect("create pod log dir");
            std::fs::write(dir.join("0.log"), "").expect("create log file");
            std::fs::create_dir_all(container_log_root).expect("create container log dir");
            let link = container_log_root.join(format!(
                "{}_{}_{}-{}.log",
                pod.name, pod.namespace, container, id
            ));
            let _ = std::os::unix::fs::symlink(dir.join("0.log"), link);
        }
        pod
    }

    fn pod_path(&self) -> String {
        match self.driver {
            Driver::Systemd => {
                let uid = self.uid.replace('-', "_");
                if self.qos == "guaranteed" {
                    format!("kubepods.slice/kubepods-pod{uid}.slice")
                } else {
                    format!(
                        "kubepods.slice/kubepods-{q}.slice/kubepods-{q}-pod{uid}.slice",
                        q = self.qos
                    )
                }
            }
            Driver::Cgroupfs => {
                if self.qos == "guaranteed" {
                    format!("kubepods/pod{}", self.uid)
                } else {
                    format!("kubepods/{}/pod{}", self.qos, self.uid)
                }
            }
        }
    }

    fn container_path(&self, id: &str) -> String {
        match self.driver {
            Driver::Systemd => format!("{}/cri-containerd-{id}.scope", self.pod_path()),
            Driver::Cgroupfs => format!("{}/{id}", self.pod_path()),
        }
    }

    fn id_of(&self, container: &str) -> &str {
        &self
            .containers
            .iter()
            .find(|(c, _)| c == container)
            .expect("known container")
            .1
    }

    /// The container's memory cgroup directory.
    pub(crate) fn memory_dir(&self, container: &str) -> PathBuf {
        self.mounts
            .memory_root()
            .join(self.container_path(self.id_of(container)))
    }

    /// The container's cgroup v2 directory, when cgroup v2 is mounted.
    pub(crate) fn unified_dir(&self, container: &str) -> Option<PathBuf> {
        Some(
            self.mounts
                .unified
                .as_ref()?
                .join(self.container_path(self.id_of(container))),
        )
    }

    /// Whether memory is on cgroup v1 here.
    pub(crate) fn memory_is_v1(&self) -> bool {
        self.mounts.memory_is_v1()
    }

    /// Sets a container's memory limit (v2 `memory.max`, v1 `memory.limit_in_bytes`).
    pub(crate) fn limit_memory(&self, container: &str, bytes: u64) {
        let file = if self.memory_is_v1() {
            "memory.limit_in_bytes"
        } else {
            "memory.max"
        };
        std::fs::write(self.memory_dir(container).join(file), bytes.to_string())
            .expect("set memory limit");
    }

    /// Moves a process into a container's cgroups.
    pub(crate) fn place(&self, pid: u32, container: &str) {
        let id = self.id_of(container).to_owned();
        for root in self.mounts.roots() {
            let procs = root.join(self.container_path(&id)).join("cgroup.procs");
            std::fs::write(&procs, pid.to_string())
                .unwrap_or_else(|e| panic!("move {pid} into {}: {e}", procs.display()));
        }
    }

    /// `namespace/name`.
    pub(crate) fn display(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

impl Drop for FakePod {
    fn drop(&mut self) {
        // The processes are gone (or going): remove container cgroups, then the pod's.
        let deadline = Instant::now() + Duration::from_secs(5);
        for root in self.mounts.roots() {
            for (_, id) in &self.containers {
                let dir = root.join(self.container_path(id));
                while std::fs::remove_dir(&dir).is_err()
                    && dir.exists()
                    && Instant::now() < deadline
                {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            let _ = std::fs::remove_dir(root.join(self.pod_path()));
        }
        let _ = std::fs::remove_dir_all(
            self.log_root
                .join(format!("{}_{}_{}", self.namespace, self.name, self.uid)),
        );
    }
}
