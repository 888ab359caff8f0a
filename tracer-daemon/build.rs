//! Builds the BPF object (tracer-ebpf) with aya-build so the daemon embeds it: one binary to
//! ship. With AYA_BUILD_SKIP=1 (for quick `cargo check`/clippy without the BPF toolchain) an
//! empty stub is embedded instead, and the daemon refuses to load it with a clear message.

use std::{env, fs, path::PathBuf};

use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR not set")?);
    let workspace = manifest_dir
        .parent()
        .context("the daemon crate has no parent dir")?;
    let ebpf_dir = workspace.join("tracer-ebpf");
    let common_dir = workspace.join("tracer-common");
    println!("cargo:rerun-if-changed={}", common_dir.display());
    println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");

    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        fs::write(out_dir.join("tracer"), b"").context("failed to write the stub BPF object")?;
        return Ok(());
    }
    let root_dir = ebpf_dir.to_str().context("tracer-ebpf path is not UTF-8")?;
    let package = aya_build::Package {
        name: "tracer-ebpf",
        root_dir,
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::default())
}
