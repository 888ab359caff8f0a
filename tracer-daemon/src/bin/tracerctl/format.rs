//! Human output of tracerctl.

use std::fmt::Write as _;

use tracer_daemon::{
    agent::targets::{NodeTargets, TargetProcess},
    discover::memory::MemoryFigures,
    report::{growth::GrowthClass, pod::PodReport},
};

/// `1.5 MiB`.
pub(crate) fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn human_duration_ns(ns: u64) -> String {
    let seconds = ns as f64 / 1e9;
    if seconds < 1.0 {
        format!("{:.0}ms", seconds * 1e3)
    } else if seconds < 120.0 {
        format!("{seconds:.1}s")
    } else if seconds < 7200.0 {
        format!("{:.1}m", seconds / 60.0)
    } else {
        format!("{:.1}h", seconds / 3600.0)
    }
}

fn memory(m: Option<&MemoryFigures>) -> String {
    match m {
        None => "-".into(),
        Some(m) => match m.limit_bytes {
            Some(limit) => format!(
                "{} / {} ({:.0}%)",
                human_bytes(m.usage_bytes),
                human_bytes(limit),
                m.usage_bytes as f64 * 100.0 / limit.max(1) as f64
            ),
            None => format!("{} / no limit", human_bytes(m.usage_bytes)),
        },
    }
}

pub(crate) fn targets(targets: &NodeTargets) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<40} {:<20} {:<8} {:<26} PROCESSES",
        "POD", "CONTAINER", "TRACED", "MEMORY"
    );
    for pod in &targets.pods {
        let name = match (&pod.namespace, &pod.name) {
            (Some(ns), Some(name)) => format!("{ns}/{name}"),
            _ => format!("uid:{}", pod.uid),
        };
        for container in &pod.containers {
            let traced = container.processes.iter().filter(|p| p.traced).count();
            let processes: Vec<String> = container
                .processes
                .iter()
                .map(|p| match &p.not_traced_reason {
                    Some(reason) if !p.traced => format!("{}({}: {reason})", p.pid, p.comm),
                    _ => format!("{}({})", p.pid, p.comm),
                })
                .collect();
            let _ = writeln!(
                out,
                "{:<40} {:<20} {:<8} {:<26} {}",
                name,
                container
                    .name
                    .as_deref()
                    .unwrap_or(&container.id[..12.min(container.id.len())]),
                format!("{traced}/{}", container.processes.len()),
                memory(container.memory.as_ref()),
                processes.join(" ")
            );
        }
    }
    for process in &targets.other_processes {
        let _ = writeln!(
            out,
            "{:<40} {:<20} {:<8} {:<26} {}({})",
            "-", "-", "1/1", "-", process.pid, process.comm
        );
    }
    out
}

pub(crate) fn report(report: &PodReport) -> String {
    let mut out = String::new();
    let who = match (&report.namespace, &report.pod_name) {
        (Some(ns), Some(name)) => format!("pod {ns}/{name}"),
        _ => report
            .pod_uid
            .as_deref()
            .map_or_else(|| "process".to_owned(), |uid| format!("pod uid {uid}")),
    };
    let _ = writeln!(out, "{who}");
    for container in &report.containers {
        let _ = writeln!(
            out,
            "  container {}: {} outstanding ({} B) in {} allocations; memory {}; leaking {}/s{}",
            container.name.as_deref().unwrap_or("-"),
            human_bytes(container.outstanding_bytes),
            container.outstanding_bytes,
            container.outstanding_count,
            memory(container.memory.as_ref()),
            human_bytes(container.leak_bytes_per_second.max(0.0) as u64),
            container
                .time_to_limit_ns
                .map(|ns| format!("; limit reached in ~{}", human_duration_ns(ns)))
                .unwrap_or_default(),
        );
        let _ = writeln!(
            out,
            "    {:>4} {:>12} {:>9} {:>8} {:>12} {:<16} CALL SITE",
            "#", "BYTES", "ALLOCS", "OLDEST", "GROWTH/s", "TREND"
        );
        for (rank, stack) in container.stacks.iter().enumerate() {
            let (rate, class) = stack.growth.map_or((0.0, "-"), |g| {
                (
                    g.bytes_per_second,
                    match g.class {
                        GrowthClass::InsufficientData => "new",
                        GrowthClass::Growing => "GROWING",
                        GrowthClass::LevellingOff => "levelling off",
                        GrowthClass::Stable => "stable",
                        GrowthClass::Shrinking => "shrinking",
                    },
                )
            });
            let mut frames = stack.frames.iter();
            let site = frames
                .next()
                .map_or_else(|| "[stack lost]".to_owned(), |f| f.display_name());
            let _ = writeln!(
                out,
                "    {:>4} {:>12} {:>9} {:>8} {:>12} {:<16} {} (pid {})",
                rank + 1,
                stack.bytes,
                stack.count,
                human_duration_ns(stack.oldest_age_ns),
                format!("{:+.0}", rate),
                class,
                site,
                stack.pid
            );
            for frame in frames.take(8) {
                let _ = writeln!(out, "    {:>69} {}", "", frame.display_name());
            }
        }
        if container.stacks_total > container.stacks.len() {
            let _ = writeln!(
                out,
                "    ... {} more stacks",
                container.stacks_total - container.stacks.len()
            );
        }
    }
    let lost = report.stats.allocations_lost();
    if lost > 0 {
        let _ = writeln!(
            out,
            "  WARNING: {lost} allocations could not be recorded on this node (maps full)"
        );
    }
    out
}

pub(crate) fn processes(processes: &Vec<TargetProcess>) -> String {
    let mut out = String::new();
    for p in processes {
        let state = if p.traced {
            format!("traced ({})", p.allocator.as_deref().unwrap_or("?"))
        } else {
            format!(
                "not traced: {}",
                p.not_traced_reason.as_deref().unwrap_or("pending")
            )
        };
        let _ = writeln!(out, "{} {} {state}", p.pid, p.comm);
    }
    out
}

#[expect(
    clippy::ptr_arg,
    reason = "print takes fn(&T) and T is the response's Vec"
)]
pub(crate) fn stopped(pids: &Vec<u32>) -> String {
    if pids.is_empty() {
        return "nothing was traced\n".into();
    }
    format!(
        "stopped tracing {}\n",
        pids.iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(" ")
    )
}
