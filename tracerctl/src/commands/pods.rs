//! `tracerctl pods`: pods, containers and processes on the node, and what is traced.

use tracer_proto::v1 as pb;

use crate::{
    connect::{Client, status},
    output::Printer,
    views::targets::{self, NodeTargetsView},
};

pub(crate) async fn run(client: &mut Client, printer: &Printer) -> anyhow::Result<()> {
    let response = client
        .list_targets(pb::ListTargetsRequest {})
        .await
        .map_err(status)?
        .into_inner();
    printer.print(&NodeTargetsView::from(&response), targets::table)
}
