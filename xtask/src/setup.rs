//! `cargo xtask setup`: installs what building and testing need, idempotently.
//!
//! The recipe follows the facts verified on this kind of machine: the nightly toolchain's
//! rust-src for `-Z build-std=core`, and bpf-linker 0.13 linked against nightly's own libLLVM
//! (so no system LLVM is needed and the two LLVM versions always match).

use std::{
    env,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::{cmd_output, run};

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
];

/// Python packages the tests use as tools that are not ours (pinned): a gRPC client, the
/// Kubernetes schema validator for the rendered manifests, Prometheus' text-format parser.
const PYTHON_PACKAGES: &[&str] = &[
    "grpcio==1.85.3",
    "grpcio-tools==1.85.1",
    "protobuf==7.36.2",
    "kubernetes-validate==1.37.0",
    "prometheus-client==0.26.0",
];

/// The Rust target of the container image's static binaries.
pub(crate) const MUSL_TARGET: &str = "x86_64-unknown-linux-musl";

/// The cargo-fuzz release the fuzz targets are run with.
const CARGO_FUZZ_VERSION: &str = "0.13.2";

pub(crate) fn setup() -> anyhow::Result<()> {
    nightly_components()?;
    bpf_linker()?;
    apt_packages(APT_PACKAGES)?;
    python_env()?;
    musl_target()?;
    cargo_fuzz()?;
    kubectl()?;
    Ok(())
}

fn musl_target() -> anyhow::Result<()> {
    let installed = cmd_output(Command::new("rustup").args(["target", "list", "--installed"]))?;
    if !installed.lines().any(|line| line == MUSL_TARGET) {
        run(Command::new("rustup").args(["target", "add", MUSL_TARGET]))?;
    }
    Ok(())
}

fn cargo_fuzz() -> anyhow::Result<()> {
    let installed = Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|out| {
            out.status.success()
                && String::from_utf8_lossy(&out.stdout).contains(CARGO_FUZZ_VERSION)
        });
    if !installed {
        eprintln!("xtask: installing cargo-fuzz {CARGO_FUZZ_VERSION} (about a minute)");
        run(Command::new("cargo").args([
            "install",
            "cargo-fuzz",
            "--version",
            CARGO_FUZZ_VERSION,
            "--locked",
        ]))?;
    }
    Ok(())
}

/// `kubectl kustomize` renders the manifests offline. This kind of machine ships kubectl; where
/// it does not, Debian's kubernetes-client provides one.
fn kubectl() -> anyhow::Result<()> {
    let present = Command::new("kubectl")
        .args(["version", "--client"])
        .output()
        .is_ok_and(|out| out.status.success());
    if !present {
        apt_packages(&["kubernetes-client"])?;
    }
    Ok(())
}

/// The virtualenv holding the tests' Python packages (under target/, so `cargo clean` resets it).
pub(crate) fn python_env_dir() -> PathBuf {
    crate::workspace_root().join("target/pyenv")
}

/// The Python interpreter of that virtualenv.
pub(crate) fn python() -> PathBuf {
    python_env_dir().join("bin/python")
}

fn python_env() -> anyhow::Result<()> {
    let stamp = python_env_dir().join(".installed");
    let wanted = PYTHON_PACKAGES.join(" ");
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s == wanted) {
        return Ok(());
    }
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
    std::fs::write(&stamp, wanted)
        .with_context(|| format!("failed to write {}", stamp.display()))?;
    Ok(())
}

fn nightly_components() -> anyhow::Result<()> {
    let installed = cmd_output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .context("nightly toolchain missing: `rustup toolchain install nightly` first")?;
    for component in ["rust-src", "llvm-tools"] {
        let present = installed
            .lines()
            .any(|line| line == component || line.starts_with(&format!("{component}-")));
        if !present {
            run(Command::new("rustup").args([
                "component",
                "add",
                component,
                "--toolchain",
                "nightly",
            ]))?;
        }
    }
    Ok(())
}

fn cargo_home() -> PathBuf {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cargo")
        })
}

/// Path of the installed bpf-linker binary.
pub(crate) fn bpf_linker_path() -> PathBuf {
    cargo_home().join("bin").join("bpf-linker")
}

fn bpf_linker() -> anyhow::Result<()> {
    let linker = bpf_linker_path();
    // An empty environment proves the binary finds libLLVM through its RUNPATH alone; when the
    // nightly toolchain changed, the symlinks dangle and this check fails, so it is rebuilt.
    let works = Command::new(&linker)
        .arg("--version")
        .env_clear()
        .output()
        .is_ok_and(|out| {
            out.status.success()
                && String::from_utf8_lossy(&out.stdout).contains(BPF_LINKER_VERSION)
        });
    if works {
        return Ok(());
    }

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

/// Installs the Debian packages that are missing; does nothing when all are present.
pub(crate) fn apt_packages(packages: &[&str]) -> anyhow::Result<()> {
    let missing: Vec<&str> = packages
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
        .collect();
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
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))
    };
    // A fresh machine may have stale package lists; update only when the first try fails.
    install(false).or_else(|_| install(true))
}
