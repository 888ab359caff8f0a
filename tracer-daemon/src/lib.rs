//! The leak tracer's node agent: discovers processes, attaches allocator probes, collects what
//! the kernel recorded, symbolizes and ranks leak sites.
//!
//! Data flows through the modules in this order: `discover` → `attach` → `collect` →
//! `symbolize` → `report`; `tracer` ties them together for one set of processes, `agent` runs
//! it as the node agent (with `select` deciding what to trace), `api` serves it over gRPC,
//! `export` sends its profiles over OTLP, and `cli` is the command line of `tracer-daemon`;
//! `tracerctl` is the client. What the daemon reads from outside (cgroup and /proc files,
//! kubelet log names, the config file, `select`'s globs) is parsed by `tracer-parse`: the
//! daemon reads, and re-exports the parsers at the paths they had here.

pub mod agent;
pub mod api;
pub mod attach;
pub mod bpf;
pub mod cli;
pub mod collect;
pub mod config;
pub mod discover;
pub mod evidence;
pub mod export;
pub mod report;
pub mod symbolize;
pub mod tracer;
pub mod unwind;

pub use tracer_parse::select;

/// An error with its causes, `outer: inner: innermost`, for logs and API messages (a
/// `thiserror` message alone leaves out the cause, e.g. "No space left on device").
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // Some errors repeat their source's message in their own (transparent ones).
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
