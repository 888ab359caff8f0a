//! `tracerctl evidence [ID]`: one evidence record with its stacks, or the list of records
//! (with the store's warning when it is not whole).

use clap::Args;
use tracer_proto::v1 as pb;

use super::evidence_filter;
use crate::{
    connect::{Client, status},
    output::Printer,
    views::evidence::{self, EvidenceView, SummaryView},
};

#[derive(Debug, Args)]
pub(crate) struct EvidenceArgs {
    /// Record id.
    id: Option<u64>,
    /// When listing: only this pod.
    #[arg(long, value_name = "NAMESPACE/POD")]
    pod: Option<String>,
    /// When listing: at most this many.
    #[arg(long, default_value_t = 20)]
    limit: u32,
}

pub(crate) async fn run(
    client: &mut Client,
    printer: &Printer,
    args: &EvidenceArgs,
) -> anyhow::Result<()> {
    match args.id {
        Some(id) => {
            let record = client
                .get_evidence(pb::GetEvidenceRequest { id })
                .await
                .map_err(status)?
                .into_inner();
            printer.print(&EvidenceView::from(&record), |view| {
                evidence::table(view, printer.full_stacks())
            })
        }
        None => {
            let request = pb::ListEvidenceRequest {
                filter: Some(evidence_filter(args.pod.as_deref(), args.limit)?),
            };
            let response = client
                .list_evidence(request)
                .await
                .map_err(status)?
                .into_inner();
            if !response.store_warning.is_empty() {
                // On stderr, so `-o json` stays parseable and the warning is still seen.
                eprintln!(
                    "WARNING: the evidence store is not whole: {}",
                    response.store_warning
                );
            }
            let list: Vec<SummaryView<'_>> =
                response.evidence.iter().map(SummaryView::from).collect();
            printer.print(&list, |l| evidence::list_table(l))
        }
    }
}
