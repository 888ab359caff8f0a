//! One module per subcommand: its arguments, the request it sends and what it prints.

pub(crate) mod diff;
pub(crate) mod evidence;
pub(crate) mod growth;
pub(crate) mod oom_events;
pub(crate) mod pods;
pub(crate) mod pprof;
pub(crate) mod top;
pub(crate) mod trace;
pub(crate) mod watch;

use std::time::Duration;

use tracer_proto::v1 as pb;

use crate::selector;

/// A duration as `500ms`, `10s`, `1m` (humantime's syntax, as the agent's flags take).
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{e} (expected e.g. 500ms, 10s, 1m)"))
}

fn proto_duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: d.subsec_nanos() as i32,
    }
}

/// Evidence of one pod (`NAMESPACE/POD`) or of all, at most `limit` records.
fn evidence_filter(pod: Option<&str>, limit: u32) -> anyhow::Result<pb::EvidenceFilter> {
    Ok(pb::EvidenceFilter {
        selector: pod.map(|pod| selector::pod(pod, None)).transpose()?,
        since: None,
        until: None,
        limit,
    })
}
