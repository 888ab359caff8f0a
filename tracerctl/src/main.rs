//! `tracerctl`: the command-line client of the node agent's gRPC API (`tracer.v1`).
//!
//! It depends on the API alone: requests are built from the command line, responses are printed
//! from the protobuf messages (`views`), human tables by default and `-o json` for scripts. It
//! talks to the Unix socket the agent listens on by default.

mod commands;
mod connect;
mod output;
mod selector;
mod views;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::{connect::ServerArgs, output::Printer};

/// Client for the leak tracer's node agent.
#[derive(Debug, Parser)]
#[command(name = "tracerctl", version)]
struct Cli {
    #[command(flatten)]
    server: ServerArgs,

    #[command(flatten)]
    printer: Printer,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List pods, containers and processes on the node, and what is traced.
    Pods,
    /// Show the call sites holding memory in a pod (or one container, or one pid).
    Top(commands::top::TopArgs),
    /// Show where a pod's resident memory grew, by first touch (any watched pod, no tracing).
    Growth(commands::growth::GrowthArgs),
    /// Show a report every interval until interrupted.
    Watch(commands::watch::WatchArgs),
    /// Start or stop tracing a pod (or one container, or one pid).
    Trace {
        #[command(subcommand)]
        action: commands::trace::TraceAction,
    },
    /// OOM kills recorded on the node (survive daemon restarts), newest first.
    OomEvents(commands::oom_events::OomEventsArgs),
    /// One evidence record with its stacks; without an id, list the records.
    Evidence(commands::evidence::EvidenceArgs),
    /// Write a gzipped pprof profile (for `go tool pprof`) of a pod or a stored evidence.
    Pprof(commands::pprof::PprofArgs),
    /// What grew between two evidence records, or between a record and a pod now.
    Diff(commands::diff::DiffArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut client = connect::connect(&cli.server).await?;
    let printer = &cli.printer;
    match cli.command {
        Command::Pods => commands::pods::run(&mut client, printer).await,
        Command::Top(args) => commands::top::run(&mut client, printer, &args).await,
        Command::Growth(args) => commands::growth::run(&mut client, printer, &args).await,
        Command::Watch(args) => commands::watch::run(&mut client, printer, &args).await,
        Command::Trace { action } => commands::trace::run(&mut client, printer, &action).await,
        Command::OomEvents(args) => commands::oom_events::run(&mut client, printer, &args).await,
        Command::Evidence(args) => commands::evidence::run(&mut client, printer, &args).await,
        Command::Pprof(args) => commands::pprof::run(&mut client, &args).await,
        Command::Diff(args) => commands::diff::run(&mut client, printer, &args).await,
    }
}
