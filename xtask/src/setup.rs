//! `cargo xtask setup`: installs what building and testing need, idempotently.
//!
//! The recipe follows the facts verified on this kind of machine: the nightly toolchain's
//! rust-src for `-Z build-std=core`, and bpf-linker 0.13 linked against nightly's own libLLVM
//! (so no system LLVM is needed and the two LLVM versions always match). Setup first surveys
//! what is missing and fails before installing anything when that needs root it lacks.

use std::{
    env,
    ffi::CString,
    os::unix::{ffi::OsStrExt as _, fs::symlink},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::{cmd_output, is_root, run};

/// The bpf-linker release the BPF build is verified with.
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Debian packages the tests and the demo need (gcc for the C workloads is on the machine;
/// these are the ones a fresh machine lacks): Go for `go tool pprof` on exported profiles,
/// Docker's engine for the container-image test, musl's gcc wrapper for the static build,
/// bpftool for the tests that check no BPF link outlives a killed agent.
const APT_PACKAGES: &[&str] = &[
    "golang-go",
    "docker.io",
    "musl-tools",
    "bpftool",
    // The allocators the stack and allocator tests link their workloads against, and the
    // C++ compiler for the C++ workload.
    "g++",
    "libjemalloc-dev",
    "libgoogle-perftools-dev",
    "libmimalloc-dev",
    // Real programs the tests check the tracer against, and glibc's debug package (the
    // symbolizer must name libc frames from its compressed DWARF).
    "memcached",
    "redis-server",
    "libc6-dbg",
    // The real Prometheus (with promtool) and Alertmanager the shipped rules are tested with.
    "prometheus",
    "prometheus-alertmanager",
];

/// Python packages the tests use as tools that are not ours (pinned): a gRPC client, the
/// Kubernetes schema validator for the rendered manifests, Prometheus' text-format parser, the
/// official OTLP generated code (its profiles v1development matches the Rust crate's).
const PYTHON_PACKAGES: &[&str] = &[
    "grpcio==1.85.3",
    "grpcio-tools==1.85.1",
    "protobuf==7.36.2",
    "kubernetes-validate==1.37.0",
    "prometheus-client==0.26.0",
    "opentelemetry-proto==1.45.2",
];

/// The Rust target of the container image's static binaries.
pub(crate) const MUSL_TARGET: &str = "x86_64-unknown-linux-musl";

/// The cargo-fuzz release the fuzz targets are run with.
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// Installs everything the tests and the demo need; `task` names the command for the message
/// that says how to run it with root.
pub(crate) fn setup(task: &str) -> anyhow::Result<()> {
    let plan = Plan::survey(Scope::Everything)?;
    plan.check_privileges(task, is_root(), writable)?;
    plan.install()
}

/// Installs only what building the BPF object needs: the nightly components and bpf-linker.
pub(crate) fn bpf_toolchain(task: &str) -> anyhow::Result<()> {
    let plan = Plan::survey(Scope::BpfToolchain)?;
    plan.check_privileges(task, is_root(), writable)?;
    plan.install()
}

/// What a task needs installed.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Scope {
    /// The nightly components and bpf-linker.
    BpfToolchain,
    /// All of setup.
    Everything,
}

/// What is missing, found before anything is installed.
struct Plan {
    nightly_components: Vec<&'static str>,
    bpf_linker: bool,
    apt_packages: Vec<&'static str>,
    python_env: bool,
    musl_target: bool,
    cargo_fuzz: bool,
}

impl Plan {
    fn survey(scope: Scope) -> anyhow::Result<Self> {
        let nightly_components = missing_nightly_components()?;
        let bpf_linker = !bpf_linker_works();
        if scope == Scope::BpfToolchain {
            return Ok(Self {
                nightly_components,
                bpf_linker,
                apt_packages: Vec::new(),
                python_env: false,
                musl_target: false,
                cargo_fuzz: false,
            });
        }
        let mut apt_packages = missing_apt_packages(APT_PACKAGES);
        // `kubectl kustomize` renders the manifests offline. This kind of machine ships
        // kubectl; where it does not, Debian's kubernetes-client provides one.
        if !kubectl_works() {
            apt_packages.extend(missing_apt_packages(&["kubernetes-client"]));
        }
        Ok(Self {
            nightly_components,
            bpf_linker,
            apt_packages,
            python_env: !python_env_current(),
            musl_target: !musl_target_installed()?,
            cargo_fuzz: !cargo_fuzz_installed(),
        })
    }

    /// Fails, naming each reason, when an install would need root (apt-get) or write access
    /// this user lacks (the rustup and cargo homes, the target directory): nothing is
    /// installed then, rather than half of it.
    fn check_privileges(
        &self,
        task: &str,
        root: bool,
        writable: impl Fn(&Path) -> bool,
    ) -> anyhow::Result<()> {
        let mut needs = Vec::new();
        if !self.apt_packages.is_empty() && !root {
            needs.push(format!(
                "installing Debian packages with apt-get: {}",
                self.apt_packages.join(" ")
            ));
        }
        let rustup = rustup_home();
        if (!self.nightly_components.is_empty() || self.musl_target) && !writable(&rustup) {
            let mut what: Vec<String> = self
                .nightly_components
                .iter()
                .map(|component| format!("nightly {component}"))
                .collect();
            if self.musl_target {
                what.push(format!("the {MUSL_TARGET} target"));
            }
            needs.push(format!(
                "writing {} (rustup: {})",
                rustup.display(),
                what.join(", ")
            ));
        }
        let cargo = cargo_home();
        if (self.bpf_linker || self.cargo_fuzz) && !writable(&cargo) {
            let mut what = Vec::new();
            if self.bpf_linker {
                what.push(format!("bpf-linker {BPF_LINKER_VERSION}"));
            }
            if self.cargo_fuzz {
                what.push(format!("cargo-fuzz {CARGO_FUZZ_VERSION}"));
            }
            needs.push(format!(
                "writing {} (cargo install {})",
                cargo.display(),
                what.join(", ")
            ));
        }
        if self.python_env && !writable(&python_env_dir()) {
            needs.push(format!(
                "writing {} (the tests' Python packages)",
                python_env_dir().display()
            ));
        }
        if needs.is_empty() {
            return Ok(());
        }
        bail!(
            "`cargo xtask {task}` has to install what is missing and that needs root:\n  - {}\n\
             Nothing was installed. Run it as root: `sudo -E cargo xtask {task}`",
            needs.join("\n  - ")
        )
    }

    fn install(self) -> anyhow::Result<()> {
        for component in &self.nightly_components {
            run(Command::new("rustup").args([
                "component",
                "add",
                component,
                "--toolchain",
                "nightly",
            ]))?;
        }
        if self.bpf_linker {
            install_bpf_linker()?;
        }
        install_apt_packages(&self.apt_packages)?;
        if self.python_env {
            install_python_env()?;
        }
        if self.musl_target {
            run(Command::new("rustup").args(["target", "add", MUSL_TARGET]))?;
        }
        if self.cargo_fuzz {
            install_cargo_fuzz()?;
        }
        Ok(())
    }
}

/// Whether this process may create or change files at `path`: the nearest directory of it
/// that exists is writable for the real user (as `access(2)` judges it).
fn writable(path: &Path) -> bool {
    let Some(existing) = path.ancestors().find(|dir| dir.exists()) else {
        return false;
    };
    let Ok(c_path) = CString::new(existing.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: c_path is a NUL-terminated string that outlives the call.
    unsafe { libc_access(c_path.as_ptr(), W_OK) == 0 }
}

/// `access(2)`'s "may write" mode.
const W_OK: i32 = 2;

unsafe extern "C" {
    #[link_name = "access"]
    fn libc_access(path: *const std::ffi::c_char, mode: i32) -> i32;
}

fn musl_target_installed() -> anyhow::Result<bool> {
    let installed = cmd_output(Command::new("rustup").args(["target", "list", "--installed"]))?;
    Ok(installed.lines().any(|line| line == MUSL_TARGET))
}

fn cargo_fuzz_installed() -> bool {
    Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|out| {
            out.status.success()
                && String::from_utf8_lossy(&out.stdout).contains(CARGO_FUZZ_VERSION)
        })
}

fn install_cargo_fuzz() -> anyhow::Result<()> {
    eprintln!("xtask: installing cargo-fuzz {CARGO_FUZZ_VERSION} (about a minute)");
    run(Command::new("cargo").args([
        "install",
        "cargo-fuzz",
        "--version",
        CARGO_FUZZ_VERSION,
        "--locked",
    ]))
}

fn kubectl_works() -> bool {
    Command::new("kubectl")
        .args(["version", "--client"])
        .output()
        .is_ok_and(|out| out.status.success())
}

/// The virtualenv holding the tests' Python packages (under target/, so `cargo clean` resets it).
pub(crate) fn python_env_dir() -> PathBuf {
    crate::workspace_root().join("target/pyenv")
}

/// The Python interpreter of that virtualenv.
pub(crate) fn python() -> PathBuf {
    python_env_dir().join("bin/python")
}

/// The stamp the virtualenv carries once the pinned packages are in it.
fn python_env_stamp() -> PathBuf {
    python_env_dir().join(".installed")
}

fn python_env_current() -> bool {
    std::fs::read_to_string(python_env_stamp()).is_ok_and(|s| s == PYTHON_PACKAGES.join(" "))
}

fn install_python_env() -> anyhow::Result<()> {
    if !python().exists() {
        run(Command::new("python3")
            .arg("-m")
            .arg("venv")
            .arg(python_env_dir()))?;
    }
    run(Command::new(python())
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .args(PYTHON_PACKAGES))?;
    let stamp = python_env_stamp();
    std::fs::write(&stamp, PYTHON_PACKAGES.join(" "))
        .with_context(|| format!("failed to write {}", stamp.display()))?;
    Ok(())
}

fn missing_nightly_components() -> anyhow::Result<Vec<&'static str>> {
    let installed = cmd_output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .context("nightly toolchain missing: `rustup toolchain install nightly` first")?;
    Ok(["rust-src", "llvm-tools"]
        .into_iter()
        .filter(|component| {
            !installed
                .lines()
                .any(|line| line == *component || line.starts_with(&format!("{component}-")))
        })
        .collect())
}

fn rustup_home() -> PathBuf {
    env::var_os("RUSTUP_HOME").map_or_else(|| home().join(".rustup"), PathBuf::from)
}

fn cargo_home() -> PathBuf {
    env::var_os("CARGO_HOME").map_or_else(|| home().join(".cargo"), PathBuf::from)
}

fn home() -> PathBuf {
    PathBuf::from(env::var_os("HOME").unwrap_or_else(|| "/root".into()))
}

/// Path of the installed bpf-linker binary.
pub(crate) fn bpf_linker_path() -> PathBuf {
    cargo_home().join("bin").join("bpf-linker")
}

/// Whether the installed bpf-linker is the pinned release and runs on its own.
fn bpf_linker_works() -> bool {
    // An empty environment proves the binary finds libLLVM through its RUNPATH alone; when the
    // nightly toolchain changed, the symlinks dangle and this check fails, so it is rebuilt.
    Command::new(bpf_linker_path())
        .arg("--version")
        .env_clear()
        .output()
        .is_ok_and(|out| {
            out.status.success()
                && String::from_utf8_lossy(&out.stdout).contains(BPF_LINKER_VERSION)
        })
}

fn install_bpf_linker() -> anyhow::Result<()> {
    let sysroot = PathBuf::from(
        cmd_output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?.trim(),
    );
    let libllvm = find_libllvm(&sysroot.join("lib"))?;
    let soname = libllvm
        .file_name()
        .and_then(|name| name.to_str())
        .context("libLLVM file name is not UTF-8")?
        .to_owned();
    // "libLLVM.so.22.1-rust-1.97.0-nightly" -> 22
    let major: u32 = soname
        .trim_start_matches("libLLVM.so.")
        .split(['.', '-'])
        .next()
        .and_then(|major| major.parse().ok())
        .with_context(|| format!("cannot read the LLVM major version from {soname}"))?;

    // The prefix must outlive `cargo clean`: the linker's RUNPATH points into it.
    let prefix = cargo_home().join("bpf-linker-llvm").join(&soname);
    let lib = prefix.join("lib");
    std::fs::create_dir_all(&lib).with_context(|| format!("failed to create {}", lib.display()))?;
    for name in ["libLLVM.so", soname.as_str()] {
        let link = lib.join(name);
        let _ignored = std::fs::remove_file(&link);
        symlink(&libllvm, &link).with_context(|| {
            format!("failed to link {} -> {}", link.display(), libllvm.display())
        })?;
    }
    eprintln!("xtask: building bpf-linker {BPF_LINKER_VERSION} against {soname} (about a minute)");
    run(Command::new("cargo")
        .args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--locked",
            "--force",
            "--no-default-features",
            "--features",
            &format!("llvm-{major}"),
        ])
        .env("LLVM_PREFIX", &prefix))?;
    Ok(())
}

fn find_libllvm(dir: &Path) -> anyhow::Result<PathBuf> {
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("failed to read {}", dir.display()))?;
    for entry in entries {
        let path = entry?.path();
        if path
            .file_name()
            .and_then(|name| name.to_str())
            .is_some_and(|name| name.starts_with("libLLVM.so."))
        {
            return Ok(path);
        }
    }
    bail!(
        "no libLLVM.so.* in {}: is the nightly `rustc` component installed?",
        dir.display()
    )
}

/// The packages of `packages` dpkg does not have installed.
fn missing_apt_packages(packages: &[&'static str]) -> Vec<&'static str> {
    packages
        .iter()
        .copied()
        .filter(|package| {
            !Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", package])
                .output()
                .is_ok_and(|out| {
                    String::from_utf8_lossy(&out.stdout).contains("install ok installed")
                })
        })
        .collect()
}

/// Installs the Debian packages that are missing; does nothing when all are present. The
/// caller checks for root first.
pub(crate) fn apt_packages(packages: &[&'static str]) -> anyhow::Result<()> {
    install_apt_packages(&missing_apt_packages(packages))
}

fn install_apt_packages(missing: &[&str]) -> anyhow::Result<()> {
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing Debian packages: {}", missing.join(" "));
    let install = |update_first: bool| -> anyhow::Result<()> {
        if update_first {
            run(Command::new("apt-get").args(["update", "-q"]))?;
        }
        run(Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))
    };
    // A fresh machine may have stale package lists; update only when the first try fails.
    install(false).or_else(|_| install(true))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nothing_missing() -> Plan {
        Plan {
            nightly_components: Vec::new(),
            bpf_linker: false,
            apt_packages: Vec::new(),
            python_env: false,
            musl_target: false,
            cargo_fuzz: false,
        }
    }

    #[test]
    fn nothing_to_install_needs_no_root_and_no_write_access() {
        let checked = nothing_missing().check_privileges("setup", false, |_| false);
        assert!(checked.is_ok(), "{checked:?}");
    }

    #[test]
    fn a_missing_debian_package_without_root_fails_naming_apt_get_and_sudo() {
        let plan = Plan {
            apt_packages: vec!["golang-go", "bpftool"],
            ..nothing_missing()
        };
        let error = plan
            .check_privileges("test", false, |_| true)
            .expect_err("apt-get needs root");
        let message = format!("{error:#}");
        assert!(message.contains("apt-get: golang-go bpftool"), "{message}");
        assert!(message.contains("`sudo -E cargo xtask test`"), "{message}");
        assert!(message.contains("Nothing was installed"), "{message}");
        assert!(plan.check_privileges("test", true, |_| true).is_ok());
    }

    #[test]
    fn an_unwritable_cargo_home_is_named_with_what_would_be_installed_there() {
        let plan = Plan {
            bpf_linker: true,
            ..nothing_missing()
        };
        let error = plan
            .check_privileges("setup", false, |path| path != cargo_home())
            .expect_err("cargo install cannot write there");
        let message = format!("{error:#}");
        assert!(
            message.contains(&format!(
                "writing {} (cargo install bpf-linker {BPF_LINKER_VERSION})",
                cargo_home().display()
            )),
            "{message}"
        );
        assert!(!message.contains("apt-get"), "{message}");
    }
}
