//! `tracer-daemon probe-cost` (hidden, for `cargo xtask bench --suite instructions`): attaches
//! the empty program at offset 0 of every function of a binary whose name has a prefix, for
//! one process, and waits. The bench measures what a uprobe costs on each instruction kind.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;

use crate::bpf::{
    FLOOR_ENTRY_PROGRAM, LoadOptions, MapSizes, Probes, uprobe_multi::Placement,
    uprobes::UprobeLinks,
};

/// Arguments of `probe-cost`.
#[derive(Debug, Args)]
pub struct ProbeCostArgs {
    /// The process whose calls are probed.
    #[arg(long)]
    pub pid: u32,
    /// The ELF file holding the functions.
    #[arg(long)]
    pub binary: PathBuf,
    /// Probe every function whose name starts with this.
    #[arg(long)]
    pub symbol_prefix: String,
}

/// Runs `probe-cost` until Ctrl-C.
pub async fn run(args: ProbeCostArgs) -> anyhow::Result<()> {
    let mut probes = Probes::load(
        &MapSizes::default(),
        &LoadOptions {
            sample_bytes: 0,
            sessions: false,
            uprobe_links: UprobeLinks::Auto,
            fault_profile: false,
            fault_sample_pages: 1,
        },
    )?;
    probes.load_floor_programs()?;
    let data = std::fs::read(&args.binary)
        .with_context(|| format!("cannot read {}", args.binary.display()))?;
    let functions = crate::attach::defined_functions(&data).context("not an ELF file")?;
    let mut links = Vec::new();
    for (name, offset) in &functions {
        if !name.starts_with(&args.symbol_prefix) {
            continue;
        }
        let link = probes
            .attach_uprobe(
                FLOOR_ENTRY_PROGRAM,
                &args.binary,
                *offset,
                args.pid,
                Placement::Entry,
            )
            .with_context(|| format!("cannot probe {name}"))?;
        links.push(link);
    }
    let attached = links.len();
    tracing::info!(attached, "attached; probing until interrupted");
    tokio::signal::ctrl_c().await?;
    Ok(())
}
