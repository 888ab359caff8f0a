//! `tracer-daemon trace --pid PID ...`: the one-shot tracer for a person at a terminal.
//!
//! Prints a report every interval (human text, or one JSON object per line with `--json`),
//! and exits after a last report once every target has exited, or on Ctrl-C.

use std::{
    collections::HashMap,
    fmt::Write as _,
    io::Write as _,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use clap::Args;

use crate::{
    attach::{ProgramSet, placement::PlacementMode},
    bpf::MapSizes,
    config,
    report::{self, ProcessReport, ProcessState, Report},
    tracer::{ReportOptions, Tracer, TracerConfig},
};

/// Arguments of `trace`.
#[derive(Debug, Args)]
pub struct TraceArgs {
    /// Process to trace (repeat for several).
    #[arg(long = "pid", required = true, value_name = "PID")]
    pub pids: Vec<u32>,

    /// Time between reports (e.g. 500ms, 5s, 1m).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub interval: Duration,

    /// Stacks shown per process.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub top: u32,

    /// Only count allocations at least this old (e.g. 10s); 0 counts all.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub min_age: Duration,

    /// Print one JSON object per report (JSON Lines) instead of text.
    #[arg(long)]
    pub json: bool,

    /// Stop after this many reports (default: until the targets exit or Ctrl-C).
    #[arg(long, value_name = "N")]
    pub reports: Option<u64>,

    /// Capacity for outstanding allocations across all targets (kernel memory, preallocated:
    /// about 100 bytes each).
    #[arg(long, default_value_t = crate::bpf::DEFAULT_ALLOCATIONS, value_parser = crate::cli::within(config::ALLOCATIONS_RANGE))]
    pub max_allocations: u32,

    /// Where probes go: on the first instruction the kernel emulates (smart) or at each
    /// function's entry (entry, the way other tools attach).
    #[arg(long, value_enum, default_value_t = PlacementMode::Smart)]
    pub probe_placement: PlacementMode,

    /// Record a Poisson sample of allocations, one per N bytes on average (e.g. 512KiB is
    /// 524288), instead of every allocation; reported bytes and counts become estimates. 0: exact.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=1u64 << 40))]
    pub sample_bytes: u64,

    /// Uprobe sessions (Linux 6.10+) let an unsampled malloc skip its return probe: auto uses
    /// them where the kernel has them, off never does.
    #[arg(long, value_enum, default_value_t = Sessions::Auto)]
    pub uprobe_sessions: Sessions,

    /// How allocator probes are attached: uprobe_multi links where the kernel has them (auto;
    /// Linux 6.6+, no CAP_SYS_ADMIN needed), or classic perf_event uprobes (perf-event; needs
    /// CAP_SYS_ADMIN, what kernels before 6.6 use).
    #[arg(long, value_enum, default_value_t = crate::bpf::uprobes::UprobeLinks::Auto)]
    pub uprobe_links: crate::bpf::uprobes::UprobeLinks,

    /// Show every frame of a stack in text reports (by default the C library's frames below
    /// `main` or a thread's start are folded).
    #[arg(long)]
    pub full_stacks: bool,

    /// Print where each probe goes in each target's allocator, and why, then exit.
    #[arg(long)]
    pub explain_probes: bool,

    /// Attach empty programs at the same points instead of tracing (the kernel's floor cost,
    /// for benchmarks).
    #[arg(long, hide = true)]
    pub empty_programs: bool,

    /// Capacity for distinct stacks (about 600 bytes each).
    #[arg(long, default_value_t = 1 << 15, value_parser = crate::cli::within(config::STACKS_RANGE))]
    pub max_stacks: u32,

    /// Capacity for unwind-table rows of binaries without frame pointers (16 bytes each; a
    /// binary that does not fit is walked by frame pointer, and the report says so).
    #[arg(long, default_value_t = crate::bpf::DEFAULT_UNWIND_ROWS, value_parser = crate::cli::within(config::UNWIND_ROWS_RANGE))]
    pub max_unwind_rows: u32,
}

/// Whether to use uprobe sessions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Sessions {
    /// Where the kernel has them.
    Auto,
    /// Never.
    Off,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{e} (expected e.g. 500ms, 10s, 2m)"))
}

/// Runs `trace`.
pub async fn run(args: TraceArgs) -> anyhow::Result<()> {
    if args.interval < Duration::from_millis(10) {
        anyhow::bail!("--interval must be at least 10ms");
    }
    // Check the targets before loading anything, so a typo'd pid fails fast and clearly.
    for &pid in &args.pids {
        let _ = crate::discover::process::inspect(pid)?;
    }
    let sizes = MapSizes {
        allocations: args.max_allocations,
        stack_totals: args.max_stacks,
        stack_traces: args.max_stacks,
        unwind_rows: args.max_unwind_rows,
        ..MapSizes::default()
    };
    if args.explain_probes {
        for &pid in &args.pids {
            let snapshot = crate::discover::snapshot::ProcessSnapshot::read(pid)
                .with_context(|| format!("cannot inspect pid {pid}"))?;
            let library = crate::attach::find_allocator(
                &snapshot,
                &mut crate::attach::ElfCatalog::default(),
                args.probe_placement,
            )
            .with_context(|| format!("cannot inspect pid {pid}"))?;
            println!("pid {pid}: {}", crate::attach::explain(&library));
        }
        return Ok(());
    }
    let mut tracer = Tracer::new(&TracerConfig {
        sizes,
        placement: args.probe_placement,
        sample_bytes: args.sample_bytes,
        sessions: args.uprobe_sessions == Sessions::Auto,
        uprobe_links: args.uprobe_links,
        // Tracing given pids needs no page-fault profile.
        fault_profile: false,
        fault_sample_pages: 1,
    })?;
    for &pid in &args.pids {
        let programs = if args.empty_programs {
            ProgramSet::Empty
        } else {
            ProgramSet::Tracing
        };
        tracer
            .trace_with(pid, programs)
            .with_context(|| format!("cannot trace pid {pid}"))?;
    }
    tracing::info!(pids = ?args.pids, "attached; first report in {}", humantime::format_duration(args.interval));
    let options = ReportOptions {
        min_age_ns: u64::try_from(args.min_age.as_nanos()).unwrap_or(u64::MAX),
    };
    let mut session = Session {
        top: args.top as usize,
        ..Session::default()
    };

    let poll_every = args.interval.min(Duration::from_millis(200));
    let mut next_report = Instant::now() + args.interval;
    let mut reports = 0u64;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    // Woken as soon as the kernel side writes a record: an exec is followed at once.
    // SAFETY: the descriptor belongs to `tracer`, which outlives `events` (dropped first, at
    // the end of this function).
    let events = tracer.events_fd().and_then(|fd| {
        unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(
                EventsFd(fd),
                tokio::io::Interest::READABLE,
            )
        }
        .ok()
    });
    loop {
        let deadline = tokio::time::sleep(poll_every);
        tokio::pin!(deadline);
        let interrupted = loop {
            tokio::select! {
                () = &mut deadline => break false,
                _ = &mut ctrl_c => break true,
                ready = async {
                    match &events {
                        Some(events) => events.readable().await,
                        None => std::future::pending().await,
                    }
                } => {
                    if let Ok(mut guard) = ready {
                        guard.clear_ready();
                    }
                    tracer.drain_events();
                }
            }
        };
        tracer.poll();
        let finished = interrupted || tracer.all_ended();
        if finished || Instant::now() >= next_report {
            let report = session.report(&mut tracer, &options)?;
            print_report(&report, args.json, args.full_stacks)?;
            reports += 1;
            next_report += args.interval;
            if Instant::now() > next_report {
                next_report = Instant::now() + args.interval;
            }
        }
        if finished || args.reports.is_some_and(|n| reports >= n) {
            return Ok(());
        }
    }
}

/// The ring buffer's descriptor, owned by the tracer (which outlives the loop waiting on it).
struct EventsFd(std::os::fd::RawFd);

impl std::os::fd::AsRawFd for EventsFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0
    }
}

/// What one `trace` run remembers between reports: the sequence and the previous bytes, for
/// growth since the previous report.
#[derive(Default)]
struct Session {
    top: usize,
    sequence: u64,
    previous_stack_bytes: HashMap<(u32, String), u64>,
    previous_process_bytes: HashMap<u32, u64>,
    /// Allocations lost when a loss was last logged.
    logged_lost: u64,
}

impl Session {
    /// Builds the next report; ended processes appear in it once more, then are dropped.
    fn report(&mut self, tracer: &mut Tracer, options: &ReportOptions) -> anyhow::Result<Report> {
        // Taken before the maps are read: everything recorded before this instant is in it.
        let timestamp_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        tracer.poll();
        tracer.refresh_ages()?;
        let mut processes = Vec::new();
        for process in tracer.process_stacks(&tracer.pids(), options)? {
            let assembled = report::assemble::assemble(
                process.stacks,
                &|_, _| None,
                report::pod::SortBy::Bytes,
                self.top,
                &mut |raw| tracer.symbolize_stacks(raw),
            );
            processes.push(ProcessReport {
                pid: process.pid,
                comm: process.comm,
                state: process.state,
                allocator: process.allocator,
                unwinding: process.unwinding,
                outstanding_bytes: assembled.outstanding_bytes,
                outstanding_count: assembled.outstanding_count,
                growth_bytes: 0,
                stacks_total: assembled.stacks_total,
                stacks: assembled.stacks,
            });
        }
        self.sequence += 1;
        for process in &mut processes {
            let pid = process.pid;
            for stack in &mut process.stacks {
                let previous = self
                    .previous_stack_bytes
                    .insert((pid, stack.stack_id.clone()), stack.bytes);
                stack.growth_bytes = signed_delta(stack.bytes, previous.unwrap_or(0));
            }
            let previous = self
                .previous_process_bytes
                .insert(pid, process.outstanding_bytes);
            process.growth_bytes = signed_delta(process.outstanding_bytes, previous.unwrap_or(0));
        }
        let stats = tracer.stats();
        let incomplete_reason = stats.incomplete_reason();
        let lost = stats.allocations_lost();
        if lost > self.logged_lost {
            self.logged_lost = lost;
            if let Some(reason) = &incomplete_reason {
                tracing::warn!(allocations_lost = lost, "report incomplete: {reason}");
            }
        }
        let report = Report {
            sequence: self.sequence,
            timestamp_unix_ms,
            sample_bytes: tracer.sample_bytes(),
            estimated: tracer.sample_bytes() > 0,
            min_age_ns: options.min_age_ns,
            processes,
            incomplete: incomplete_reason.is_some(),
            incomplete_reason,
            stats,
        };
        for pid in tracer.reap_ended() {
            self.previous_stack_bytes.retain(|(p, _), _| *p != pid);
            let _ = self.previous_process_bytes.remove(&pid);
        }
        Ok(report)
    }
}

fn signed_delta(now: u64, before: u64) -> i64 {
    i64::try_from(i128::from(now) - i128::from(before)).unwrap_or(i64::MAX)
}

fn print_report(report: &Report, json: bool, full_stacks: bool) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer(&mut out, report)?;
        writeln!(out)?;
    } else {
        out.write_all(format_text(report, full_stacks).as_bytes())?;
    }
    out.flush()?;
    Ok(())
}

/// The human form of a report (`full_stacks`: every frame, none folded).
pub fn format_text(report: &Report, full_stacks: bool) -> String {
    let mut text = String::new();
    let _ = writeln!(text, "=== leak report #{} ===", report.sequence);
    if let Some(reason) = &report.incomplete_reason {
        let _ = writeln!(text, "WARNING: INCOMPLETE REPORT: {reason}");
    }
    if report.estimated {
        let _ = writeln!(
            text,
            "(sampled: one allocation per {} bytes on average; bytes and counts marked ~ are estimates)",
            report.sample_bytes
        );
    }
    let approx = if report.estimated { "~" } else { "" };
    for process in &report.processes {
        let state = match process.state {
            ProcessState::Running => "",
            ProcessState::Ended => " [ended]",
            ProcessState::OomKilled => " [OOM-killed]",
        };
        let _ = writeln!(
            text,
            "pid {} ({}){state}: {approx}{} outstanding in {approx}{} allocations from {} stacks, {} since last report",
            process.pid,
            process.comm,
            bytes(process.outstanding_bytes),
            process.outstanding_count,
            process.stacks_total,
            signed_bytes(process.growth_bytes),
        );
        for (rank, stack) in process.stacks.iter().enumerate() {
            let _ = writeln!(
                text,
                "  #{:<3}{:>15}  {:>9} allocs  oldest {:>8}  {:>14}  [{:?}]",
                rank + 1,
                format!("{approx}{}", bytes(stack.bytes)),
                format!("{approx}{}", stack.count),
                age(stack.oldest_age_ns),
                signed_bytes(stack.growth_bytes),
                stack.kind,
            );
            let (shown, folded) = report::frames_to_show(&stack.frames, full_stacks);
            for frame in shown.iter().take(12) {
                let _ = writeln!(text, "        {}", frame.display_name());
            }
            if folded > 0 {
                let _ = writeln!(
                    text,
                    "        ({folded} C library frames below; --full-stacks shows them)"
                );
            }
            if stack.frames.is_empty() {
                let _ = writeln!(text, "        [stack lost]");
            }
        }
    }
    text
}

fn bytes(n: u64) -> String {
    format!("{n} B")
}

fn signed_bytes(n: i64) -> String {
    format!("{n:+} B")
}

fn age(ns: u64) -> String {
    let secs = ns as f64 / 1e9;
    if secs < 1.0 {
        format!("{:.0}ms", secs * 1e3)
    } else {
        format!("{secs:.1}s")
    }
}
