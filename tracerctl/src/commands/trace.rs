//! `tracerctl trace start|stop`: start or stop tracing a pod, a container or a process.

use clap::Subcommand;
use tracer_proto::v1 as pb;

use crate::{
    connect::{Client, status},
    output::Printer,
    selector::TargetArgs,
    views::targets::{self, ProcessView},
};

#[derive(Debug, Subcommand)]
pub(crate) enum TraceAction {
    /// Start tracing.
    Start(TargetArgs),
    /// Stop tracing and drop the records.
    Stop(TargetArgs),
}

pub(crate) async fn run(
    client: &mut Client,
    printer: &Printer,
    action: &TraceAction,
) -> anyhow::Result<()> {
    match action {
        TraceAction::Start(target) => {
            let request = pb::StartTracingRequest {
                selector: Some(target.selector()?),
            };
            let response = client
                .start_tracing(request)
                .await
                .map_err(status)?
                .into_inner();
            let processes: Vec<ProcessView<'_>> =
                response.processes.iter().map(ProcessView::from).collect();
            printer.print(&processes, |p| targets::processes_table(p))
        }
        TraceAction::Stop(target) => {
            let request = pb::StopTracingRequest {
                selector: Some(target.selector()?),
            };
            let response = client
                .stop_tracing(request)
                .await
                .map_err(status)?
                .into_inner();
            printer.print(&response.pids, |pids| targets::stopped_table(pids))
        }
    }
}
