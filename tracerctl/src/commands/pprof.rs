//! `tracerctl pprof`: a gzipped pprof profile (for `go tool pprof`) of a live pod or of a
//! stored evidence record (outstanding allocations, or with --growth the growth profile),
//! written as the agent made it; with --base, the change from another evidence record.

use std::{io::Write as _, path::PathBuf};

use clap::Args;
use tracer_proto::v1 as pb;

use crate::{
    connect::{Client, status},
    selector,
};

#[derive(Debug, Args)]
pub(crate) struct PprofArgs {
    /// A live pod.
    #[arg(
        value_name = "NAMESPACE/POD",
        required_unless_present = "evidence",
        conflicts_with = "evidence"
    )]
    pod: Option<String>,
    /// Only this container of the pod.
    #[arg(short = 'c', long)]
    container: Option<String>,
    /// A stored evidence record instead.
    #[arg(long, value_name = "ID")]
    evidence: Option<u64>,
    /// The growth profile (first_touch_space: bytes by the page fault that first touched them)
    /// instead of outstanding allocations.
    #[arg(long)]
    growth: bool,
    /// Show the change from this evidence record: its samples are added negated and labelled
    /// `pprof::base`, as `go tool pprof -diff_base` merges a base profile.
    #[arg(long, value_name = "ID")]
    base: Option<u64>,
    /// Write here instead of standard output.
    #[arg(long = "out", value_name = "FILE")]
    out: Option<PathBuf>,
}

pub(crate) async fn run(client: &mut Client, args: &PprofArgs) -> anyhow::Result<()> {
    use pb::export_pprof_request::Source;
    let source = match (&args.pod, args.evidence) {
        (_, Some(id)) => Source::EvidenceId(id),
        (Some(pod), None) => Source::Selector(selector::pod(pod, args.container.as_deref())?),
        (None, None) => anyhow::bail!("name a pod (NAMESPACE/POD) or --evidence ID"),
    };
    let response = client
        .export_pprof(pb::ExportPprofRequest {
            source: Some(source),
            // Unspecified is outstanding allocations, and what older agents understand.
            kind: if args.growth {
                pb::ProfileKind::FirstTouch
            } else {
                pb::ProfileKind::Unspecified
            } as i32,
            base_evidence_id: args.base.unwrap_or(0),
        })
        .await
        .map_err(status)?
        .into_inner();
    let bytes = &response.gzipped_profile;
    match &args.out {
        Some(path) => std::fs::write(path, bytes)
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?,
        None => {
            use std::io::IsTerminal as _;
            let mut stdout = std::io::stdout().lock();
            if stdout.is_terminal() {
                anyhow::bail!(
                    "the profile is binary: redirect it (> profile.pb.gz) or use --out FILE"
                );
            }
            stdout.write_all(bytes)?;
            stdout.flush()?;
        }
    }
    Ok(())
}
