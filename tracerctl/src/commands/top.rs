//! `tracerctl top`: the call sites holding memory in a pod, a container or a process.

use std::time::Duration;

use clap::{Args, ValueEnum};
use tracer_proto::v1 as pb;

use super::{parse_duration, proto_duration};
use crate::{
    connect::{Client, status},
    output::Printer,
    selector::TargetArgs,
    views::report::{self, ReportView},
};

/// What a report is about and how it is cut.
#[derive(Debug, Args)]
pub(crate) struct TopArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Stacks shown per container.
    #[arg(long, default_value_t = 10)]
    top: u32,
    /// Only count allocations at least this old (e.g. 1m).
    #[arg(long, value_parser = parse_duration)]
    min_age: Option<Duration>,
    /// Order stacks by outstanding bytes or by growth rate.
    #[arg(long, value_enum, default_value_t = Sort::Bytes)]
    sort: Sort,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Sort {
    Bytes,
    Growth,
}

impl TopArgs {
    /// The request these arguments make.
    pub(crate) fn request(&self) -> anyhow::Result<pb::GetLeakReportRequest> {
        Ok(pb::GetLeakReportRequest {
            selector: Some(self.target.selector()?),
            top: self.top,
            min_age: self.min_age.map(proto_duration),
            sort_by: match self.sort {
                Sort::Bytes => pb::SortBy::Bytes,
                Sort::Growth => pb::SortBy::Growth,
            } as i32,
        })
    }
}

pub(crate) async fn run(
    client: &mut Client,
    printer: &Printer,
    args: &TopArgs,
) -> anyhow::Result<()> {
    let response = client
        .get_leak_report(args.request()?)
        .await
        .map_err(status)?
        .into_inner();
    printer.print(&ReportView::from(&response), |view| {
        report::table(view, printer.full_stacks())
    })
}
