//! `cargo xtask demo`: traces a real leaking example process and prints its report.

pub(crate) fn demo() -> anyhow::Result<()> {
    anyhow::bail!("demo: not written yet")
}
