//! `cargo xtask bench`: side-by-side benchmarks.

#[derive(clap::Args)]
pub(crate) struct BenchArgs {}

pub(crate) fn bench(_args: &BenchArgs) -> anyhow::Result<()> {
    anyhow::bail!("bench: not written yet")
}
