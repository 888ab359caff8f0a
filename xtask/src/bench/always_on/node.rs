//! Kubelet-style pods built for real on this machine for the agent to find: a pod cgroup and
//! one container cgroup in the cgroup v2 hierarchy and the v1 memory hierarchy (hybrid hosts
//! have both; the fault programs key on the v2 cgroup, memory figures come from v1), the
//! kubelet's pod log directory and container log symlink (which name the pod), systemd driver.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

/// Where the cgroup filesystems are mounted.
struct Mounts {
    unified: Option<PathBuf>,
    memory_v1: Option<PathBuf>,
}

impl Mounts {
    fn read() -> anyhow::Result<Self> {
        let info = std::fs::read_to_string("/proc/self/mountinfo").context("read mountinfo")?;
        let mut mounts = Self {
            unified: None,
            memory_v1: None,
        };
        for line in info.lines() {
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let point = left.split(' ').nth(4);
            let right: Vec<&str> = right.split(' ').collect();
            let (Some(point), Some(fstype)) = (point, right.first()) else {
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
        if mounts.unified.is_none() {
            bail!("no cgroup v2 hierarchy is mounted: the growth profile needs one");
        }
        Ok(mounts)
    }

    fn roots(&self) -> impl Iterator<Item = &PathBuf> {
        self.unified.iter().chain(self.memory_v1.iter())
    }
}

/// Pod log directories and container log symlinks (what `--pod-log-root` and
/// `--container-log-root` point at), in a temp directory removed on drop.
pub(super) struct LogRoots {
    pub(super) root: PathBuf,
}

impl LogRoots {
    pub(super) fn create(name: &str) -> anyhow::Result<Self> {
        let root = std::env::temp_dir().join(format!("xtask-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("pods"))?;
        std::fs::create_dir_all(root.join("containers"))?;
        Ok(Self { root })
    }

    pub(super) fn pods(&self) -> PathBuf {
        self.root.join("pods")
    }

    pub(super) fn containers(&self) -> PathBuf {
        self.root.join("containers")
    }
}

impl Drop for LogRoots {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// A burstable pod with one container, `app`.
pub(super) struct FakePod {
    pub(super) namespace: String,
    pub(super) name: String,
    /// The container's cgroup directory in each hierarchy (v2 first).
    container_dirs: Vec<PathBuf>,
    pod_dirs: Vec<PathBuf>,
    /// The v1 memory directory, when memory is on v1.
    memory_v1_dir: Option<PathBuf>,
}

fn unique_hex(len: usize) -> String {
    use std::{collections::hash_map::RandomState, hash::BuildHasher as _};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut out = String::new();
    while out.len() < len {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        out.push_str(&format!("{:016x}", RandomState::new().hash_one(n)));
    }
    out.truncate(len);
    out
}

impl FakePod {
    pub(super) fn create(logs: &LogRoots, namespace: &str, name: &str) -> anyhow::Result<Self> {
        let mounts = Mounts::read()?;
        let hex = unique_hex(32);
        let uid = format!(
            "{}-{}-{}-{}-{}",
            &hex[..8],
            &hex[8..12],
            &hex[12..16],
            &hex[16..20],
            &hex[20..32]
        );
        let id = unique_hex(64);
        let pod_path = format!(
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice",
            uid.replace('-', "_")
        );
        let container_path = format!("{pod_path}/cri-containerd-{id}.scope");
        let pod = Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            container_dirs: mounts.roots().map(|r| r.join(&container_path)).collect(),
            pod_dirs: mounts.roots().map(|r| r.join(&pod_path)).collect(),
            memory_v1_dir: mounts.memory_v1.as_ref().map(|r| r.join(&container_path)),
        };
        for dir in &pod.container_dirs {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("failed to create cgroup {}", dir.display()))?;
        }
        let log_dir = logs
            .pods()
            .join(format!("{namespace}_{name}_{uid}"))
            .join("app");
        std::fs::create_dir_all(&log_dir)?;
        std::fs::write(log_dir.join("0.log"), "")?;
        let link = logs
            .containers()
            .join(format!("{name}_{namespace}_app-{id}.log"));
        std::os::unix::fs::symlink(log_dir.join("0.log"), link)?;
        Ok(pod)
    }

    /// `namespace/name`.
    pub(super) fn display(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Moves a process into the container's cgroups.
    pub(super) fn place(&self, pid: u32) -> anyhow::Result<()> {
        for dir in &self.container_dirs {
            let procs = dir.join("cgroup.procs");
            std::fs::write(&procs, pid.to_string())
                .with_context(|| format!("failed to move {pid} into {}", procs.display()))?;
        }
        Ok(())
    }

    /// Sets the container's memory limit.
    pub(super) fn limit_memory(&self, bytes: u64) -> anyhow::Result<()> {
        let file = match &self.memory_v1_dir {
            Some(dir) => dir.join("memory.limit_in_bytes"),
            None => self.container_dirs[0].join("memory.max"),
        };
        std::fs::write(&file, bytes.to_string())
            .with_context(|| format!("failed to write {}", file.display()))
    }
}

impl Drop for FakePod {
    fn drop(&mut self) {
        // Its processes are gone or going: the container cgroups first, then the pod's.
        let deadline = Instant::now() + Duration::from_secs(5);
        for dir in &self.container_dirs {
            while std::fs::remove_dir(dir).is_err() && dir.exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        for dir in &self.pod_dirs {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// Processes this suite started that must not outlive it: killed and reaped on drop.
#[derive(Default)]
pub(super) struct Children(pub(super) Vec<Child>);

impl Children {
    /// Starts `sleep` for long enough and returns its pid.
    pub(super) fn sleeper(&mut self) -> anyhow::Result<u32> {
        let child = Command::new("sleep")
            .arg("86400")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .context("start sleep")?;
        let pid = child.id();
        self.0.push(child);
        Ok(pid)
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
        }
        for child in &mut self.0 {
            let _ = child.wait();
        }
    }
}

/// Resident and peak resident memory (KiB) of a process, from /proc/PID/status.
pub(super) fn status_kib(pid: u32, field: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(field))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// utime + stime of a process, in clock ticks (100 per second here).
pub(super) fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("read /proc/{pid}/stat"))?;
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i)
            .context("short /proc/PID/stat")?
            .parse()
            .context("a /proc/PID/stat field is not a number")
    };
    // utime and stime: fields 14 and 15, the 12th and 13th after the command's ')'.
    Ok(field(11)? + field(12)?)
}

/// Waits for `done` (polling every `every`) until `timeout`.
pub(super) fn wait_until(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut done: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while !done()? {
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting until {what}");
        }
        std::thread::sleep(every);
    }
    Ok(())
}
