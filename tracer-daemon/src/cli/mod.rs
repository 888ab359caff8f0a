//! Command line of `tracer-daemon`.

pub mod probe_cost;
pub mod run;
pub mod trace;

use std::ops::RangeInclusive;

use clap::{Parser, Subcommand, ValueEnum, builder::RangedU64ValueParser};

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    Text,
    /// One JSON object per line (timestamp, level, target, fields).
    Json,
}

/// eBPF memory-leak tracer: names the call sites that hold memory in a process or pod.
#[derive(Debug, Parser)]
#[command(name = "tracer-daemon", version)]
pub struct Cli {
    /// Log filter (tracing's env-filter syntax, e.g. `info`, `tracer_daemon=debug`).
    #[arg(long, env = "TRACER_LOG", default_value = "info", global = true)]
    pub log: String,

    /// Log lines as text for people or JSON for log collectors.
    #[arg(long, env = "TRACER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Trace running processes and print their leak report every interval.
    Trace(trace::TraceArgs),
    /// Run as the node agent: trace selected pods and serve the gRPC API.
    Run(Box<run::RunArgs>),
    /// Attach empty probes to a binary's functions (benchmark helper).
    #[command(hide = true)]
    ProbeCost(probe_cost::ProbeCostArgs),
}

/// A flag's parser for a capacity within `range` (the config file checks the same range).
pub(crate) fn within(range: RangeInclusive<u32>) -> RangedU64ValueParser<u32> {
    RangedU64ValueParser::new().range(u64::from(*range.start())..=u64::from(*range.end()))
}
