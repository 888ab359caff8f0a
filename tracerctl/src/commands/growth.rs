//! `tracerctl growth`: where a pod's resident memory grew, by the stack of the page fault that
//! first touched it (any watched pod, traced or not).

use clap::Args;
use tracer_proto::v1 as pb;

use crate::{
    connect::{Client, status},
    output::Printer,
    selector,
    views::growth::{self, GrowthReportView},
};

#[derive(Debug, Args)]
pub(crate) struct GrowthArgs {
    /// The pod.
    #[arg(value_name = "NAMESPACE/POD")]
    pod: String,
    /// Only this container of the pod.
    #[arg(short = 'c', long)]
    container: Option<String>,
    /// Call sites shown per container.
    #[arg(long, default_value_t = 10)]
    top: u32,
    /// Rank by bytes since the processes were watched (where the memory went) instead of
    /// bytes within the window (where it grows now).
    #[arg(long)]
    since_watched: bool,
}

pub(crate) async fn run(
    client: &mut Client,
    printer: &Printer,
    args: &GrowthArgs,
) -> anyhow::Result<()> {
    let response = client
        .get_growth_profile(pb::GetGrowthProfileRequest {
            selector: Some(selector::pod(&args.pod, args.container.as_deref())?),
            top: args.top,
            order: if args.since_watched {
                pb::GrowthProfileOrder::Total
            } else {
                pb::GrowthProfileOrder::Window
            } as i32,
        })
        .await
        .map_err(status)?
        .into_inner();
    printer.print(&GrowthReportView::from(&response), |view| {
        growth::table(view, printer.full_stacks())
    })
}
