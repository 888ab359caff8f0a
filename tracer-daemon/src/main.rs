//! `tracer-daemon`: wiring only; see the library for the stages.

use std::process::ExitCode;

use clap::Parser as _;
use tracer_daemon::cli::{Cli, Command, LogFormat};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    keep_large_buffers_returnable();
    let cli = Cli::parse();
    let filter = EnvFilter::try_new(&cli.log).unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only for a person at a terminal; a DaemonSet's log collector gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.with_ansi(ansi).init(),
        LogFormat::Json => logs.json().with_current_span(false).init(),
    }

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Trace(args) => tracer_daemon::cli::trace::run(args).await,
            Command::Run(args) => tracer_daemon::cli::run::run(*args).await,
            Command::ProbeCost(args) => tracer_daemon::cli::probe_cost::run(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Reports of deep stacks are megabytes each, built and dropped over and over. glibc raises its
/// mmap threshold after the first such buffer is freed and then serves the next ones from its
/// heaps, where freed memory is rarely returned: the agent's RSS would keep its peak for good.
/// A fixed threshold keeps every buffer past 1 MiB in its own mapping, returned when freed.
/// (The container image's musl allocator returns large buffers by itself.)
fn keep_large_buffers_returnable() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes the allocator's settings; called before any thread exists.
    unsafe {
        let _ = libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}
