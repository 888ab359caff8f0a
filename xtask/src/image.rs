//! `cargo xtask image`: the node agent's container image. The binaries are compiled here, as
//! static musl executables, and only copied by `deploy/image/Dockerfile` (`FROM scratch`):
//! machines of this project's kind cannot pull a builder image.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::{cargo, cmd_output, run, setup::MUSL_TARGET, workspace_root};

/// The binaries the image ships, built from the tracer-daemon package.
const BINARIES: &[&str] = &["tracer-daemon", "tracerctl"];

/// Docker's own client from Debian's docker.io; preferred over whatever `docker` comes first
/// on PATH because it matches the engine it ships (a newer client may not talk to it).
const DEBIAN_DOCKER_CLI: &str = "/usr/bin/docker";

#[derive(clap::Args)]
pub(crate) struct ImageArgs {
    /// Name and tag of the image (the default is the one deploy/base/daemonset.yaml runs).
    #[arg(long, default_value_t = format!("leak-tracer:{}", env!("CARGO_PKG_VERSION")))]
    tag: String,

    /// The Docker engine to build with, e.g. unix:///tmp/docker.sock [default: the client's
    /// own default, usually $DOCKER_HOST or /var/run/docker.sock].
    #[arg(long, env = "DOCKER_HOST")]
    docker_host: Option<String>,

    /// The docker client [default: /usr/bin/docker when present, else `docker` on PATH].
    #[arg(long, env = "TRACER_DOCKER_CLI")]
    docker_cli: Option<PathBuf>,

    /// Build the binaries and stage the build context, but do not run `docker build` (the
    /// context's path is printed; build it with any tool that reads a Dockerfile).
    #[arg(long)]
    no_docker: bool,
}

pub(crate) fn image(args: &ImageArgs) -> anyhow::Result<()> {
    let binaries = build_static_binaries()?;
    let context = stage_context(&binaries)?;
    if args.no_docker {
        println!("{}", context.display());
        return Ok(());
    }
    docker_build(args, &context)?;
    eprintln!("xtask: built image {}", args.tag);
    Ok(())
}

/// The cargo target directory (CARGO_TARGET_DIR when set, as cargo itself reads it).
fn target_dir() -> PathBuf {
    let root = workspace_root();
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), |dir| root.join(dir))
}

/// Builds the image's binaries for the musl target in release and checks each is static.
fn build_static_binaries() -> anyhow::Result<Vec<PathBuf>> {
    let mut build = cargo();
    let _ = build.args([
        "build",
        "--release",
        "--package",
        "tracer-daemon",
        "--package",
        "tracerctl",
        "--target",
        MUSL_TARGET,
    ]);
    for binary in BINARIES {
        let _ = build.args(["--bin", binary]);
    }
    run(&mut build)?;
    let out_dir = target_dir().join(MUSL_TARGET).join("release");
    BINARIES
        .iter()
        .map(|name| {
            let path = out_dir.join(name);
            check_static(&path)?;
            Ok(path)
        })
        .collect()
}

/// Fails unless `path` is an x86-64 ELF executable without an interpreter (PT_INTERP): a
/// `FROM scratch` image has no dynamic loader or libc to run anything else.
fn check_static(path: &Path) -> anyhow::Result<()> {
    let bytes =
        std::fs::read(path).with_context(|| format!("failed to read {}", path.display()))?;
    if program_header_types(&bytes)
        .with_context(|| format!("{} is not a 64-bit x86-64 ELF executable", path.display()))?
        .contains(&PT_INTERP)
    {
        bail!(
            "{} is dynamically linked (it names an ELF interpreter); the image has no libc",
            path.display()
        );
    }
    Ok(())
}

/// Program header type of the interpreter's path (dynamically linked executables only).
const PT_INTERP: u32 = 3;

/// The `p_type` of every program header of a little-endian ELF64 x86-64 file.
fn program_header_types(elf: &[u8]) -> anyhow::Result<Vec<u32>> {
    const EM_X86_64: u16 = 62;
    let u16_at = |offset: usize| -> anyhow::Result<u16> {
        let bytes = elf
            .get(offset..offset + 2)
            .context("truncated ELF header")?;
        Ok(u16::from_le_bytes([bytes[0], bytes[1]]))
    };
    let u32_at = |offset: usize| -> anyhow::Result<u32> {
        let bytes = elf
            .get(offset..offset + 4)
            .context("truncated ELF header")?;
        Ok(u32::from_le_bytes(bytes.try_into()?))
    };
    let u64_at = |offset: usize| -> anyhow::Result<u64> {
        let bytes = elf
            .get(offset..offset + 8)
            .context("truncated ELF header")?;
        Ok(u64::from_le_bytes(bytes.try_into()?))
    };
    // e_ident: magic, ELFCLASS64, ELFDATA2LSB.
    if elf.get(..6) != Some(b"\x7fELF\x02\x01".as_slice()) {
        bail!("not a little-endian ELF64 file");
    }
    let machine = u16_at(0x12)?;
    if machine != EM_X86_64 {
        bail!("machine {machine}, not x86-64");
    }
    let header_offset = usize::try_from(u64_at(0x20)?)?;
    let entry_size = usize::from(u16_at(0x36)?);
    let count = usize::from(u16_at(0x38)?);
    (0..count)
        .map(|index| u32_at(header_offset + index * entry_size))
        .collect()
}

/// Copies the Dockerfile and the binaries into a fresh build context under target/, so the
/// daemon does not receive the whole target directory as context.
fn stage_context(binaries: &[PathBuf]) -> anyhow::Result<PathBuf> {
    let context = target_dir().join("image/context");
    if context.exists() {
        std::fs::remove_dir_all(&context)
            .with_context(|| format!("failed to clear {}", context.display()))?;
    }
    std::fs::create_dir_all(&context)
        .with_context(|| format!("failed to create {}", context.display()))?;
    let dockerfile = workspace_root().join("deploy/image/Dockerfile");
    let mut files = vec![dockerfile];
    files.extend(binaries.iter().cloned());
    for file in &files {
        let name = file.file_name().context("a staged file has no name")?;
        let _bytes = std::fs::copy(file, context.join(name)).with_context(|| {
            format!("failed to copy {} to {}", file.display(), context.display())
        })?;
    }
    Ok(context)
}

fn docker_build(args: &ImageArgs, context: &Path) -> anyhow::Result<()> {
    let cli = args.docker_cli.clone().unwrap_or_else(|| {
        if Path::new(DEBIAN_DOCKER_CLI).exists() {
            PathBuf::from(DEBIAN_DOCKER_CLI)
        } else {
            PathBuf::from("docker")
        }
    });
    let mut docker = Command::new(cli);
    if let Some(host) = &args.docker_host {
        let _ = docker.env("DOCKER_HOST", host);
    }
    let revision = cmd_output(
        Command::new("git")
            .args(["rev-parse", "HEAD"])
            .current_dir(workspace_root()),
    )
    .map_or_else(|_| "unknown".to_owned(), |out| out.trim().to_owned());
    // The classic builder: BuildKit needs buildx, which Debian's docker.io lacks, and a
    // single COPY stage gains nothing from it.
    run(docker
        .env("DOCKER_BUILDKIT", "0")
        .args(["build", "--tag", &args.tag])
        .args([
            "--build-arg",
            &format!("VERSION={}", env!("CARGO_PKG_VERSION")),
        ])
        .args(["--build-arg", &format!("REVISION={revision}")])
        .arg(context))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 header with `types` as its program headers.
    fn elf_with(types: &[u32]) -> Vec<u8> {
        let mut elf = vec![0u8; 64 + 56 * types.len()];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        elf[0x12..0x14].copy_from_slice(&62u16.to_le_bytes());
        elf[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        elf[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        elf[0x38..0x3a].copy_from_slice(&u16::try_from(types.len()).unwrap_or(0).to_le_bytes());
        for (index, kind) in types.iter().enumerate() {
            let at = 64 + 56 * index;
            elf[at..at + 4].copy_from_slice(&kind.to_le_bytes());
        }
        elf
    }

    #[test]
    fn program_header_types_are_read_in_order() {
        let types = program_header_types(&elf_with(&[6, PT_INTERP, 1])).expect("valid ELF");
        assert_eq!(types, [6, PT_INTERP, 1]);
    }

    #[test]
    fn non_elf_and_truncated_files_are_refused() {
        assert!(program_header_types(b"#!/bin/sh\n").is_err());
        let mut truncated = elf_with(&[1, 1]);
        truncated.truncate(64 + 56);
        assert!(program_header_types(&truncated).is_err());
    }

    #[test]
    fn this_test_binary_is_judged_like_the_image_binaries() {
        // The test binary is built for the host's gnu target: dynamically linked.
        let me = std::env::current_exe().expect("current exe");
        let error = check_static(&me).expect_err("a gnu test binary has an interpreter");
        assert!(
            format!("{error:#}").contains("dynamically linked"),
            "{error:#}"
        );
    }
}
