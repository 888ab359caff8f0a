//! Project tasks. `cargo xtask demo` and `cargo xtask test` are the two commands the README
//! promises work on a fresh machine; both run `setup` first. `cargo xtask unit` needs no setup
//! and no root.

mod bench;
mod demo;
mod fuzz;
mod image;
mod setup;

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Tasks for the leak tracer workspace")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the nightly components, bpf-linker and Debian packages the build needs.
    ///
    /// It first surveys what is missing; when installing that needs root (apt-get) or write
    /// access this user lacks, it fails before installing anything and says what. With
    /// everything installed it needs no root.
    Setup,
    /// Build the BPF object exactly as the daemon embeds it and print its path.
    ///
    /// Runs `cargo check --package tracer-daemon`: the daemon's build script (aya-build)
    /// compiles tracer-ebpf, the one place the BPF build recipe lives, and the check skips the
    /// daemon's own code generation. The object is the build script's OUT_DIR/tracer.
    BuildEbpf,
    /// Build everything, trace a real leaking process and print its leak report.
    Demo,
    /// Run the unit tests, which need neither root nor any setup.
    ///
    /// Runs `cargo test --workspace --exclude tracer-ebpf --exclude tracer-daemon` (every test
    /// of the other crates, their integration tests included), then `cargo test --package
    /// tracer-daemon --lib --bins` (the daemon's unit tests). The integration tests under
    /// tracer-daemon/tests load BPF programs and need root: `cargo xtask test` runs them. The
    /// BPF object is stubbed (AYA_BUILD_SKIP=1), so neither nightly nor bpf-linker is needed,
    /// and the build goes to target/unit so it never replaces the real daemon other tasks
    /// build.
    Unit {
        /// Extra arguments passed to `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run every test: unit tests and the real-kernel tests (needs root).
    Test {
        /// Extra arguments passed to `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run the benchmarks side by side and print the ratios (needs root).
    Bench(bench::BenchArgs),
    /// Build the container image: static musl binaries in a `FROM scratch` image.
    Image(image::ImageArgs),
}

fn main() -> std::process::ExitCode {
    match run_task(Cli::parse().task) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run_task(task: Task) -> anyhow::Result<()> {
    match task {
        Task::Setup => setup::setup("setup"),
        Task::BuildEbpf => {
            setup::bpf_toolchain("build-ebpf")?;
            build_ebpf()
        }
        Task::Demo => {
            // Root first: setup would otherwise install for a run that cannot happen.
            require_root(
                "the demo loads BPF programs and must run as root (e.g. `sudo -E cargo xtask demo`)",
            )?;
            setup::setup("demo")?;
            demo::demo()
        }
        Task::Unit { args } => unit(&args),
        Task::Test { args } => {
            require_root(
                "the test suite loads BPF programs into the kernel and must run as root \
                 (e.g. `sudo -E cargo xtask test`)",
            )?;
            setup::setup("test")?;
            test(&args)
        }
        Task::Bench(args) => {
            require_root(
                "benchmarks attach uprobes and must run as root (e.g. `sudo -E cargo xtask bench`)",
            )?;
            setup::setup("bench")?;
            bench::bench(&args)
        }
        Task::Image(args) => {
            setup::setup("image")?;
            image::image(&args)
        }
    }
}

fn require_root(why: &str) -> anyhow::Result<()> {
    if !is_root() {
        bail!("{why}");
    }
    Ok(())
}

/// The workspace root (xtask lives one level below it).
pub(crate) fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// A `cargo` command in the workspace with bpf-linker's directory first on PATH (the daemon's
/// build script runs it by name).
pub(crate) fn cargo() -> Command {
    let mut cmd = Command::new("cargo");
    let linker_dir = setup::bpf_linker_path().parent().map(Path::to_path_buf);
    if let Some(dir) = linker_dir {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut dirs = vec![dir];
        dirs.extend(std::env::split_paths(&path));
        if let Ok(joined) = std::env::join_paths(dirs) {
            let _ = cmd.env("PATH", joined);
        }
    }
    let _ = cmd.current_dir(workspace_root());
    cmd
}

/// Checks tracer-daemon so that its build script builds the BPF object (the recipe lives there
/// only), then prints where the object is: the build script's OUT_DIR, as cargo reports it.
fn build_ebpf() -> anyhow::Result<()> {
    let messages = cmd_output(
        cargo()
            .args([
                "check",
                "--package",
                "tracer-daemon",
                "--message-format=json-render-diagnostics",
            ])
            // A stub object is no object: this task exists to build the real one.
            .env_remove("AYA_BUILD_SKIP")
            .stderr(Stdio::inherit()),
    )?;
    let out_dir = messages
        .lines()
        .filter(|line| line.contains(r#""reason":"build-script-executed""#))
        .filter(|line| {
            json_string(line, "package_id").is_some_and(|id| {
                id.starts_with("path+file://")
                    && (id.contains("/tracer-daemon#") || id.contains("#tracer-daemon@"))
            })
        })
        .find_map(|line| json_string(line, "out_dir"))
        .context("cargo reported no build script run for tracer-daemon")?;
    let object = Path::new(&out_dir).join("tracer");
    let size_bytes = std::fs::metadata(&object)
        .with_context(|| format!("failed to read {}", object.display()))?
        .len();
    if size_bytes == 0 {
        bail!("{} is the empty stub, not a BPF object", object.display());
    }
    eprintln!("xtask: BPF object built ({size_bytes} bytes)");
    println!("{}", object.display());
    Ok(())
}

/// The value of the string field `key` in one line of cargo's JSON messages, when it has no
/// escapes (cargo's paths and package ids in this workspace have none).
fn json_string<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let start = line.find(&format!(r#""{key}":""#))? + key.len() + 4;
    let value = &line[start..][..line[start..].find('"')?];
    (!value.contains('\\')).then_some(value)
}

/// The unit tests: no root, no BPF toolchain (see `Task::Unit`).
fn unit(args: &[String]) -> anyhow::Result<()> {
    let cargo_test = |selection: &[&str]| {
        run(Command::new("cargo")
            .current_dir(workspace_root())
            .args(["test", "--target-dir", "target/unit"])
            .args(selection)
            .args(args)
            .env("AYA_BUILD_SKIP", "1"))
    };
    cargo_test(&[
        "--workspace",
        "--exclude",
        "tracer-ebpf",
        "--exclude",
        "tracer-daemon",
    ])?;
    cargo_test(&["--package", "tracer-daemon", "--lib", "--bins"])
}

fn test(args: &[String]) -> anyhow::Result<()> {
    run(cargo()
        .args(["test", "--no-fail-fast"])
        .args(args)
        .env("TRACER_TEST_PYTHON", setup::python()))?;
    fuzz::run_all(20)
}

pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc_geteuid() == 0 }
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

/// Runs a command, failing with its command line when it exits non-zero.
pub(crate) fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("failed to start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// Runs a command and returns its standard output.
pub(crate) fn cmd_output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("failed to start {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8(out.stdout).with_context(|| format!("{cmd:?} printed non-UTF-8"))
}
