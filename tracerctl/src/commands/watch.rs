//! `tracerctl watch`: a report every interval until interrupted (or the agent ends the stream).

use std::time::Duration;

use clap::Args;
use tracer_proto::v1 as pb;

use super::{parse_duration, proto_duration, top::TopArgs};
use crate::{
    connect::{Client, status},
    output::Printer,
    views::report::{self, ReportView},
};

/// A report's arguments, and how often.
#[derive(Debug, Args)]
pub(crate) struct WatchArgs {
    #[command(flatten)]
    report: TopArgs,
    /// Time between reports.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    interval: Duration,
}

pub(crate) async fn run(
    client: &mut Client,
    printer: &Printer,
    args: &WatchArgs,
) -> anyhow::Result<()> {
    let request = pb::WatchLeakReportsRequest {
        report: Some(args.report.request()?),
        interval: Some(proto_duration(args.interval)),
    };
    let mut stream = client
        .watch_leak_reports(request)
        .await
        .map_err(status)?
        .into_inner();
    while let Some(report) = stream.message().await.map_err(status)? {
        printer.print(&ReportView::from(&report), |view| {
            report::table(view, printer.full_stacks())
        })?;
    }
    Ok(())
}
