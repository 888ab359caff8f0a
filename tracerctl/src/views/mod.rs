//! What tracerctl prints, made from the API's messages: serde views whose JSON keeps the
//! shape scripts already read (the agent's own report types' field names, units in the names,
//! absent values as `null`), and the text tables people read.

/// A recorded answer of a real agent (`tests/fixtures/CASE/rpc.0.pb`, decoded as `$message`)
/// and what the daemon package's tracerctl printed for it (`stdout`); see `tests/replay.rs`.
#[cfg(test)]
macro_rules! fixture {
    ($message:ty, $case:literal) => {{
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/", $case);
        let bytes = std::fs::read(format!("{dir}/rpc.0.pb")).expect("a recorded answer");
        let printed = std::fs::read_to_string(format!("{dir}/stdout")).expect("what was printed");
        let message = <$message as prost::Message>::decode(bytes.as_slice()).expect("decodes");
        (message, printed)
    }};
}

pub(crate) mod diff;
pub(crate) mod evidence;
pub(crate) mod growth;
pub(crate) mod report;
pub(crate) mod targets;

use serde::Serialize;
use tracer_proto::v1 as pb;

/// A cgroup's memory figures.
#[derive(Clone, Copy, Debug, Serialize)]
pub(crate) struct MemoryView {
    usage_bytes: u64,
    limit_bytes: Option<u64>,
    limit_hits: u64,
    oom_kills: u64,
    /// Not in the API (the agent keeps it for its own watch): always 0, kept so the JSON
    /// keeps the agent's shape.
    high_events: u64,
    /// Not in the API either: always false.
    under_oom: bool,
}

impl From<&pb::MemoryFigures> for MemoryView {
    fn from(m: &pb::MemoryFigures) -> Self {
        Self {
            usage_bytes: m.usage_bytes,
            limit_bytes: m.limit_bytes,
            limit_hits: m.limit_hits,
            oom_kills: m.oom_kills,
            high_events: 0,
            under_oom: false,
        }
    }
}

/// `usage / limit (percent)`, or `usage / no limit`, or `-` when unknown.
fn memory_text(memory: Option<&MemoryView>) -> String {
    match memory {
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

/// `1.5 MiB`.
fn human_bytes(bytes: u64) -> String {
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

/// `250ms`, `9.1s`, `2.5m`, `3.0h`.
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

/// A duration in ns (negative parts count as 0).
fn ns_of(duration: &prost_types::Duration) -> u64 {
    (duration.seconds.max(0) as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(duration.nanos.max(0) as u64)
}

/// A time to the second, or `-`.
pub(crate) fn time_of(t: Option<&prost_types::Timestamp>) -> String {
    let Some(t) = t else { return "-".into() };
    let secs = u64::try_from(t.seconds).unwrap_or(0);
    let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
    humantime::format_rfc3339_seconds(when).to_string()
}

/// Some text, or `None` for the API's empty string.
fn non_empty(text: &str) -> Option<&str> {
    Some(text).filter(|t| !t.is_empty())
}

/// JSON as tracerctl prints it: one line.
#[cfg(test)]
fn json_line(value: &impl Serialize) -> String {
    serde_json::to_string(value).expect("serializes") + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_read_as_people_write_them() {
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(64 << 20), "64.0 MiB");
        assert_eq!(human_duration_ns(284_000_000), "284ms");
        assert_eq!(human_duration_ns(9_100_000_000), "9.1s");
        assert_eq!(human_duration_ns(150_000_000_000), "2.5m");
        assert_eq!(human_duration_ns(3 * 3600 * 1_000_000_000), "3.0h");
    }

    #[test]
    fn memory_reads_usage_against_the_limit() {
        let memory = |limit_bytes| {
            MemoryView::from(&pb::MemoryFigures {
                usage_bytes: 48 << 20,
                limit_bytes,
                limit_hits: 0,
                oom_kills: 0,
                anon_bytes: None,
            })
        };
        assert_eq!(
            memory_text(Some(&memory(Some(64 << 20)))),
            "48.0 MiB / 64.0 MiB (75%)"
        );
        assert_eq!(memory_text(Some(&memory(None))), "48.0 MiB / no limit");
        assert_eq!(memory_text(None), "-");
    }
}
