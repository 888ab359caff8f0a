//! A private Docker engine for one test (Debian's docker.io, every root and socket in a temp
//! dir, no bridge or iptables rules), the image built by `cargo xtask image`, and containers
//! that are removed, and their logs printed on failure, whatever happens to the test.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use super::TIMEOUT;

/// Debian's docker.io engine, installed by `cargo xtask setup`.
const DOCKERD: &str = "/usr/sbin/dockerd";

/// docker.io's own client: it speaks the engine's API version (a newer client elsewhere on
/// PATH may not).
const DOCKER_CLI: &str = "/usr/bin/docker";

/// Capabilities Docker 20.10 refuses to name (`unknown capability: "CAP_BPF"`; `--cap-add ALL`
/// leaves them out too), though the kernel, runc and Kubernetes runtimes (containerd >= 1.5,
/// CRI-O) know them. Containers run with [`EXTRA_CAPS_RUNTIME`] get them.
pub(crate) const CAPS_DOCKER_CANNOT_NAME: &[&str] = &["BPF", "PERFMON"];

/// The runtime (`docker run --runtime`) that is runc plus [`CAPS_DOCKER_CANNOT_NAME`]: what a
/// Kubernetes runtime does with `capabilities.add: [BPF, PERFMON]`.
pub(crate) const EXTRA_CAPS_RUNTIME: &str = "runc-bpf-perfmon";

/// Writes the [`EXTRA_CAPS_RUNTIME`] wrapper: on `create`/`run` it adds the capabilities to the
/// bounding, effective and permitted sets in the bundle's config.json (compact JSON, as
/// containerd writes it), then hands every call to runc unchanged.
fn write_extra_caps_runtime(path: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    let runc = ["/usr/sbin/runc", "/usr/bin/runc"]
        .into_iter()
        .find(|runc| Path::new(runc).exists())
        .expect("runc (docker.io depends on it)");
    let caps: Vec<String> = CAPS_DOCKER_CANNOT_NAME
        .iter()
        .map(|cap| format!("\"CAP_{cap}\""))
        .collect();
    let caps = caps.join(",");
    let script = format!(
        r#"#!/bin/sh
# runc, adding {caps} to new containers' capability sets (written by the container image test).
bundle=
previous=
for arg in "$@"; do
  case "$previous" in --bundle|-b) bundle=$arg ;; esac
  case "$arg" in --bundle=*) bundle=${{arg#--bundle=}} ;; esac
  previous=$arg
done
if [ -n "$bundle" ] && [ -f "$bundle/config.json" ]; then
  sed -i \
    -e 's/"\(bounding\|effective\|permitted\)":\["/"\1":[{caps},"/g' \
    -e 's/"\(bounding\|effective\|permitted\)":\[\]/"\1":[{caps}]/g' \
    "$bundle/config.json" || exit 1
fi
exec {runc} "$@"
"#
    );
    std::fs::write(path, script).expect("write the runtime wrapper");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .expect("make the runtime wrapper executable");
}

/// A temp directory that is removed on drop, after unmounting anything a dead engine left
/// mounted below it (removing through a live mount would reach into other filesystems).
pub(crate) struct TempRoot {
    pub(crate) path: PathBuf,
}

impl TempRoot {
    pub(crate) fn new(name: &str) -> Self {
        Self {
            path: super::agent::temp_root(name),
        }
    }
}

impl Drop for TempRoot {
    fn drop(&mut self) {
        unmount_below(&self.path);
        if let Err(error) = std::fs::remove_dir_all(&self.path) {
            eprintln!("cannot remove {}: {error}", self.path.display());
        }
    }
}

/// Lazily unmounts every mount point at or below `dir`, deepest first.
fn unmount_below(dir: &Path) {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(PathBuf::from)
        .filter(|point| point.starts_with(dir))
        .collect();
    points.sort_by_key(|point| std::cmp::Reverse(point.components().count()));
    for point in points {
        let Ok(c_path) = std::ffi::CString::new(point.as_os_str().as_encoded_bytes()) else {
            continue;
        };
        // SAFETY: a valid NUL-terminated path; MNT_DETACH has no other preconditions.
        let _ = unsafe { libc::umount2(c_path.as_ptr(), libc::MNT_DETACH) };
    }
}

/// A running `dockerd` whose data, exec state, pid file and socket all live in `dir`.
pub(crate) struct Dockerd {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
    /// The cgroup its containers go under (instead of the shared `/docker`), removed on drop.
    cgroup_parent: String,
}

impl Dockerd {
    /// Starts the engine and waits until it answers.
    pub(crate) fn start(dir: &Path) -> Self {
        assert!(
            Path::new(DOCKERD).exists() && Path::new(DOCKER_CLI).exists(),
            "{DOCKERD} or {DOCKER_CLI} missing: `cargo xtask setup` installs docker.io"
        );
        std::fs::create_dir_all(dir).expect("create the docker dir");
        let socket = dir.join("docker.sock");
        let log = dir.join("dockerd.log");
        let runtime = dir.join(EXTRA_CAPS_RUNTIME);
        let cgroup_parent = format!("tracer-test-docker-{}", std::process::id());
        write_extra_caps_runtime(&runtime);
        let log_file = std::fs::File::create(&log).expect("create the dockerd log");
        let child = Command::new(DOCKERD)
            .arg("--data-root")
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("--pidfile")
            .arg(dir.join("dockerd.pid"))
            .arg("--host")
            .arg(format!("unix://{}", socket.display()))
            // No bridge, NAT or forwarding changes on the machine: the test's containers use
            // `--network none`.
            .args(["--bridge=none", "--iptables=false", "--ip-forward=false"])
            .arg("--cgroup-parent")
            .arg(format!("/{cgroup_parent}"))
            .arg("--add-runtime")
            .arg(format!("{EXTRA_CAPS_RUNTIME}={}", runtime.display()))
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("dup the dockerd log"))
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|e| panic!("start {DOCKERD}: {e}"));
        let mut dockerd = Self {
            child,
            socket,
            log,
            cgroup_parent,
        };
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Ok(Some(status)) = dockerd.child.try_wait() {
                panic!("dockerd exited with {status}:\n{}", dockerd.log());
            }
            if dockerd.socket.exists() && dockerd.docker(&["version"]).status.success() {
                return dockerd;
            }
            assert!(
                Instant::now() < deadline,
                "dockerd never answered:\n{}",
                dockerd.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The engine's address, as `DOCKER_HOST` or `--docker-host` take it.
    pub(crate) fn host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// Runs the docker client against this engine.
    pub(crate) fn docker(&self, args: &[&str]) -> Output {
        Command::new(DOCKER_CLI)
            .args(["--host", &self.host()])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run the docker client")
    }

    /// Like [`Self::docker`], failing the test (with the engine's log) unless it succeeds;
    /// returns its stdout.
    pub(crate) fn docker_ok(&self, args: &[&str]) -> String {
        let output = self.docker(args);
        assert!(
            output.status.success(),
            "docker {args:?} failed: {}\ndockerd log:\n{}",
            String::from_utf8_lossy(&output.stderr),
            self.log()
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Builds the image into this engine the way users do: `cargo xtask image`, with its
    /// default tag.
    pub(crate) fn build_image(&self) {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("workspace root");
        // The cargo running this test, so the same toolchain builds the image's binaries.
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let started = Instant::now();
        let status = Command::new(cargo)
            .args(["xtask", "image", "--docker-host", &self.host()])
            .current_dir(workspace)
            .stdin(Stdio::null())
            .status()
            .expect("run cargo xtask image");
        assert!(
            status.success(),
            "cargo xtask image failed: {status}\ndockerd log:\n{}",
            self.log()
        );
        eprintln!(
            "cargo xtask image took {:.0} s",
            started.elapsed().as_secs_f64()
        );
    }

    /// `docker image inspect` of an image.
    pub(crate) fn inspect_image(&self, tag: &str) -> Value {
        let text = self.docker_ok(&["image", "inspect", tag]);
        let mut images: Vec<Value> =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("inspect JSON ({e}): {text}"));
        assert_eq!(images.len(), 1, "{text}");
        images.remove(0)
    }

    /// Starts a detached container named `name`; `args` are `docker run`'s options, the image
    /// and its command.
    pub(crate) fn run_detached(&self, name: &str, args: &[&str]) -> Container<'_> {
        let mut all = vec!["run", "--detach", "--name", name];
        all.extend_from_slice(args);
        let output = self.docker(&all);
        // Whatever happened, a container by that name may exist: the guard removes it.
        let container = Container {
            dockerd: self,
            name: name.to_owned(),
        };
        assert!(
            output.status.success(),
            "docker run failed: {}\ndockerd log:\n{}",
            String::from_utf8_lossy(&output.stderr),
            self.log()
        );
        container
    }

    /// The engine's log so far (its last 200 lines).
    pub(crate) fn log(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(200)..].join("\n")
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- dockerd log ---\n{}\n---", self.log());
        }
        // SIGTERM: dockerd stops its containers and its own containerd, and unmounts.
        // SAFETY: signalling our own child.
        let _ = unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !matches!(self.child.try_wait(), Ok(Some(_))) {
            if Instant::now() >= deadline {
                eprintln!("dockerd ignored SIGTERM for 20 s; killing it");
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // runc leaves the (now empty) parent cgroup in every hierarchy.
        let cgroup_root = Path::new("/sys/fs/cgroup");
        let hierarchies = std::fs::read_dir(cgroup_root)
            .into_iter()
            .flatten()
            .flatten()
            .map(|entry| entry.path())
            .chain([cgroup_root.to_path_buf()]);
        for hierarchy in hierarchies {
            let _ = std::fs::remove_dir(hierarchy.join(&self.cgroup_parent));
        }
    }
}

/// A container of a [`Dockerd`], force-removed on drop; its logs are printed first when the
/// test is failing.
pub(crate) struct Container<'a> {
    dockerd: &'a Dockerd,
    name: String,
}

impl Container<'_> {
    /// Its output so far (stdout and stderr).
    pub(crate) fn logs(&self) -> String {
        let output = self.dockerd.docker(&["logs", &self.name]);
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    }

    /// Its state (`running`, `exited`, ...) and exit code.
    pub(crate) fn state(&self) -> (String, i64) {
        let text = self.dockerd.docker_ok(&[
            "inspect",
            "--format",
            "{{.State.Status}} {{.State.ExitCode}}",
            &self.name,
        ]);
        let (status, code) = text.trim().split_once(' ').unwrap_or((text.trim(), "-1"));
        (status.to_owned(), code.parse().unwrap_or(-1))
    }

    /// Fails the test, with the container's logs, unless it is still running.
    pub(crate) fn assert_running(&self) {
        let (status, code) = self.state();
        assert_eq!(
            status,
            "running",
            "container {} stopped (exit code {code}); logs:\n{}",
            self.name,
            self.logs()
        );
    }
}

impl Drop for Container<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- docker logs {} ---\n{}\n---", self.name, self.logs());
        }
        // Stop with SIGTERM first so the daemon detaches its probes cleanly.
        let _ = self.dockerd.docker(&["stop", "--time", "10", &self.name]);
        let _ = self.dockerd.docker(&["rm", "--force", &self.name]);
    }
}
