//! `tracerctl oom-events`: the OOM kills recorded on the node, newest first.

use clap::Args;
use tracer_proto::v1 as pb;

use super::evidence_filter;
use crate::{
    connect::{Client, status},
    output::Printer,
    views::evidence::{self, OomEventView},
};

#[derive(Debug, Args)]
pub(crate) struct OomEventsArgs {
    /// Only this pod.
    #[arg(value_name = "NAMESPACE/POD")]
    pod: Option<String>,
    /// At most this many.
    #[arg(long, default_value_t = 20)]
    limit: u32,
}

pub(crate) async fn run(
    client: &mut Client,
    printer: &Printer,
    args: &OomEventsArgs,
) -> anyhow::Result<()> {
    let request = pb::ListOomEventsRequest {
        filter: Some(evidence_filter(args.pod.as_deref(), args.limit)?),
    };
    let response = client
        .list_oom_events(request)
        .await
        .map_err(status)?
        .into_inner();
    let events: Vec<OomEventView<'_>> = response.events.iter().map(OomEventView::from).collect();
    printer.print(&events, |e| evidence::oom_events_table(e))
}
