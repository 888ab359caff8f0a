//! `cargo xtask demo`: builds the tracer, starts a small leaking "service" (xtask/demo/
//! leaky_service.c), traces it for three reports and prints them.

use std::{
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use anyhow::Context as _;

use crate::{run, workspace_root};

/// Runs the demo; the caller has checked for root (the probes need it).
pub(crate) fn demo() -> anyhow::Result<()> {
    let root = workspace_root();
    run(crate::cargo().args(["build", "--release", "--package", "tracer-daemon"]))?;
    let out_dir = root.join("target/demo");
    std::fs::create_dir_all(&out_dir)?;
    let service = out_dir.join("leaky_service");
    run(Command::new("gcc")
        .args(["-O2", "-g", "-fno-omit-frame-pointer", "-o"])
        .arg(&service)
        .arg(root.join("xtask/demo/leaky_service.c")))?;

    let mut child = Command::new(&service)
        .stdout(Stdio::inherit())
        .spawn()
        .with_context(|| format!("failed to start {}", service.display()))?;
    thread::sleep(Duration::from_millis(300));
    eprintln!(
        "\nxtask: tracing leaky_service (pid {}) for three reports, 3 s apart. Expect \
         parse_headers at the top, growing by ~2 KiB per 10 requests, and cache_response \
         holding a steady 128 KiB.\n",
        child.id()
    );
    let traced = run(Command::new(root.join("target/release/tracer-daemon"))
        .args([
            "trace",
            "--pid",
            &child.id().to_string(),
            "--interval",
            "3s",
            "--reports",
            "3",
            "--top",
            "5",
        ])
        .env("TRACER_LOG", "warn"));
    let _ = child.kill();
    let _ = child.wait();
    traced
}
