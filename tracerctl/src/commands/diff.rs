//! `tracerctl diff A B`: what grew between two evidence records of a pod, or between a record
//! and the pod now (`--live`): per call site, the bytes and counts in each and the change,
//! largest growth first.

use clap::Args;
use tracer_proto::v1 as pb;

use crate::{
    connect::{Client, status},
    output::Printer,
    selector,
    views::{
        diff::{self, DiffSide, DiffView, SideStack},
        time_of,
    },
};

/// Stacks fetched from a live pod (the API's most).
const LIVE_TOP: u32 = 1000;

#[derive(Debug, Args)]
pub(crate) struct DiffArgs {
    /// The evidence record to compare from.
    #[arg(value_name = "A")]
    from: u64,
    /// The evidence record to compare to.
    #[arg(
        value_name = "B",
        required_unless_present = "live",
        conflicts_with = "live"
    )]
    to: Option<u64>,
    /// Compare to this pod now instead of a second record.
    #[arg(long, value_name = "NAMESPACE/POD")]
    live: Option<String>,
    /// With --live: this container (by default the one record A is about).
    #[arg(short = 'c', long, requires = "live")]
    container: Option<String>,
    /// Compare growth profiles (resident growth by first touch; the count is pages) instead of
    /// outstanding allocations: what a container that was never traced has.
    #[arg(long)]
    growth: bool,
}

pub(crate) async fn run(
    client: &mut Client,
    printer: &Printer,
    args: &DiffArgs,
) -> anyhow::Result<()> {
    let from = evidence(client, args.from).await?;
    let a = evidence_side(&from, args.growth)?;
    let b = match (args.to, &args.live) {
        (Some(id), _) => evidence_side(&evidence(client, id).await?, args.growth)?,
        (None, Some(pod)) => {
            let summary = from.summary.as_ref();
            let container = args.container.as_deref().or_else(|| {
                summary
                    .map(|s| s.container.as_str())
                    .filter(|c| !c.is_empty())
            });
            let selector = selector::pod(pod, container)?;
            if args.growth {
                live_growth_side(client, selector, pod).await?
            } else {
                live_side(client, selector, pod).await?
            }
        }
        (None, None) => anyhow::bail!("name a second record (B) or --live NAMESPACE/POD"),
    };
    let view = DiffView::new(&a, &b, args.growth);
    printer.print(&view, |v| diff::table(v, printer.full_stacks()))
}

async fn evidence(client: &mut Client, id: u64) -> anyhow::Result<pb::Evidence> {
    Ok(client
        .get_evidence(pb::GetEvidenceRequest { id })
        .await
        .map_err(status)?
        .into_inner())
}

/// One side from an evidence record: its report's stacks, or its growth profile's.
fn evidence_side(record: &pb::Evidence, growth: bool) -> anyhow::Result<DiffSide> {
    let summary = record.summary.clone().unwrap_or_default();
    let mut side = DiffSide::new(
        format!("evidence {} ({})", summary.id, summary.kind),
        summary.taken_at.as_ref(),
        non_empty(&summary.container),
    );
    if growth {
        let Some(profile) = &record.growth_profile else {
            anyhow::bail!(
                "evidence {} has no growth profile (its container was not watched)",
                summary.id
            );
        };
        side.fill_growth(profile);
    } else {
        let Some(report) = &record.report else {
            anyhow::bail!(
                "evidence {} has no outstanding allocations (its container was not traced): \
                 compare growth profiles with --growth",
                summary.id
            );
        };
        side.fill_report(report);
    }
    Ok(side)
}

async fn live_side(
    client: &mut Client,
    selector: pb::Selector,
    pod: &str,
) -> anyhow::Result<DiffSide> {
    let container = non_empty(&selector.container);
    let report = client
        .get_leak_report(pb::GetLeakReportRequest {
            selector: Some(selector),
            top: LIVE_TOP,
            ..Default::default()
        })
        .await
        .map_err(status)?
        .into_inner();
    let mut side = DiffSide::new(format!("{pod} now"), report.taken_at.as_ref(), container);
    for container in &report.containers {
        side.fill_report(container);
    }
    Ok(side)
}

async fn live_growth_side(
    client: &mut Client,
    selector: pb::Selector,
    pod: &str,
) -> anyhow::Result<DiffSide> {
    let container = non_empty(&selector.container);
    let report = client
        .get_growth_profile(pb::GetGrowthProfileRequest {
            selector: Some(selector),
            top: LIVE_TOP,
            order: pb::GrowthProfileOrder::Total as i32,
        })
        .await
        .map_err(status)?
        .into_inner();
    if !report.unavailable_reason.is_empty() {
        anyhow::bail!("no growth profile: {}", report.unavailable_reason);
    }
    let mut side = DiffSide::new(format!("{pod} now"), report.taken_at.as_ref(), container);
    for profile in report.containers.iter().filter_map(|c| c.profile.as_ref()) {
        side.fill_growth(profile);
    }
    Ok(side)
}

impl DiffSide {
    fn new(
        source: String,
        taken_at: Option<&prost_types::Timestamp>,
        container: Option<String>,
    ) -> Self {
        Self {
            source,
            taken_at: time_of(taken_at),
            container,
            stacks_total: 0,
            stacks: Vec::new(),
        }
    }

    fn fill_report(&mut self, report: &pb::ContainerReport) {
        self.stacks_total += report.stacks_total;
        self.stacks.extend(report.stacks.iter().map(|s| SideStack {
            frames: s.frames.clone(),
            bytes: s.bytes,
            count: s.count,
        }));
    }

    fn fill_growth(&mut self, profile: &pb::GrowthProfile) {
        self.stacks_total += profile.stacks_total;
        self.stacks.extend(profile.stacks.iter().map(|s| SideStack {
            frames: s.frames.clone(),
            bytes: s.bytes,
            count: s.pages,
        }));
    }
}

fn non_empty(text: &str) -> Option<String> {
    Some(text.to_owned()).filter(|t| !t.is_empty())
}
