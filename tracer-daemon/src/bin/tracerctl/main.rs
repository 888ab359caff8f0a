//! `tracerctl`: the command-line client of the node agent's gRPC API.
//!
//! `tracerctl pods`, `tracerctl top NAMESPACE/POD`, `tracerctl watch NAMESPACE/POD`,
//! `tracerctl trace start|stop NAMESPACE/POD`; human tables by default, `-o json` for scripts.
//! It talks to the same Unix socket the daemon listens on by default.

mod format;

use std::{path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context as _;

use clap::{Args, Parser, Subcommand, ValueEnum};
use hyper_util::rt::TokioIo;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Uri};
use tracer_daemon::{
    agent::{
        selector::{Selector, Target},
        targets::NodeTargets,
    },
    api::server::DEFAULT_SOCKET,
    report::pod::PodReport,
};
use tracer_proto::v1::{self as pb, leak_tracer_client::LeakTracerClient};

/// Client for the leak tracer's node agent.
#[derive(Debug, Parser)]
#[command(name = "tracerctl", version)]
struct Cli {
    /// The agent's API: unix:PATH, https://HOST:PORT (TLS) or http://HOST:PORT (an agent run
    /// with --insecure).
    #[arg(long, global = true, env = "TRACER_SERVER", default_value_t = format!("unix:{DEFAULT_SOCKET}"))]
    server: String,

    /// PEM CA bundle that signed the agent's certificate (https:// servers).
    #[arg(long, global = true, env = "TRACER_TLS_CA")]
    tls_ca: Option<PathBuf>,

    /// PEM client certificate, for agents that require one (with --tls-key).
    #[arg(long, global = true, env = "TRACER_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,

    /// PEM key of the client certificate.
    #[arg(long, global = true, env = "TRACER_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,

    /// Name the agent's certificate must carry, when it differs from the server's host.
    #[arg(long, global = true, env = "TRACER_TLS_SERVER_NAME")]
    tls_server_name: Option<String>,

    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,

    /// Show every frame of a stack in tables (by default the C library's frames below `main`
    /// or a thread's start are folded).
    #[arg(long, global = true)]
    full_stacks: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Output {
    /// Tables for people.
    Table,
    /// JSON for scripts (one object per report when watching).
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List pods, containers and processes on the node, and what is traced.
    Pods,
    /// Show the call sites holding memory in a pod (or one container, or one pid).
    Top(ReportArgs),
    /// Show a report every interval until interrupted.
    Watch {
        #[command(flatten)]
        report: ReportArgs,
        /// Time between reports.
        #[arg(long, default_value = "5s", value_parser = parse_duration)]
        interval: Duration,
    },
    /// Start or stop tracing a pod (or one container, or one pid).
    Trace {
        #[command(subcommand)]
        action: TraceAction,
    },
    /// OOM kills recorded on the node (survive daemon restarts), newest first.
    OomEvents {
        /// Only this pod.
        #[arg(value_name = "NAMESPACE/POD")]
        pod: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// One evidence record with its stacks; without an id, list the records.
    Evidence {
        /// Record id.
        id: Option<u64>,
        /// When listing: only this pod.
        #[arg(long, value_name = "NAMESPACE/POD")]
        pod: Option<String>,
        /// When listing: at most this many.
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Write a gzipped pprof profile (for `go tool pprof`) of a pod or a stored evidence.
    Pprof {
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
        /// Write here instead of standard output.
        #[arg(long = "out", value_name = "FILE")]
        out: Option<std::path::PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum TraceAction {
    /// Start tracing.
    Start(TargetArgs),
    /// Stop tracing and drop the records.
    Stop(TargetArgs),
}

#[derive(Debug, Args)]
struct TargetArgs {
    /// NAMESPACE/POD.
    #[arg(
        value_name = "NAMESPACE/POD",
        required_unless_present = "pid",
        conflicts_with = "pid"
    )]
    pod: Option<String>,
    /// Only this container of the pod.
    #[arg(short = 'c', long)]
    container: Option<String>,
    /// A process by pid instead of a pod.
    #[arg(long)]
    pid: Option<u32>,
}

#[derive(Debug, Args)]
struct ReportArgs {
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

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{e} (expected e.g. 500ms, 10s, 1m)"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    format::show_full_stacks(cli.full_stacks);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut client = connect(&cli).await?;
    match cli.command {
        Command::Pods => {
            let response = client
                .list_targets(pb::ListTargetsRequest {})
                .await
                .map_err(status)?;
            let targets = NodeTargets::from(response.get_ref());
            print(cli.output, &targets, format::targets)?;
        }
        Command::Top(args) => {
            let request = report_request(&args)?;
            let response = client.get_leak_report(request).await.map_err(status)?;
            print(
                cli.output,
                &PodReport::from(response.get_ref()),
                format::report,
            )?;
        }
        Command::Watch { report, interval } => {
            let request = pb::WatchLeakReportsRequest {
                report: Some(report_request(&report)?),
                interval: Some(proto_duration(interval)),
            };
            let mut stream = client
                .watch_leak_reports(request)
                .await
                .map_err(status)?
                .into_inner();
            while let Some(report) = stream.message().await.map_err(status)? {
                print(cli.output, &PodReport::from(&report), format::report)?;
            }
        }
        Command::Trace {
            action: TraceAction::Start(target),
        } => {
            let request = pb::StartTracingRequest {
                selector: Some(selector(&target)?),
            };
            let response = client.start_tracing(request).await.map_err(status)?;
            let processes: Vec<_> = response
                .get_ref()
                .processes
                .iter()
                .map(Into::into)
                .collect();
            print(cli.output, &processes, format::processes)?;
        }
        Command::OomEvents { pod, limit } => {
            let filter = evidence_filter(pod.as_deref(), limit)?;
            let response = client
                .list_oom_events(pb::ListOomEventsRequest {
                    filter: Some(filter),
                })
                .await
                .map_err(status)?;
            let events: Vec<format::OomEventView> = response
                .get_ref()
                .events
                .iter()
                .map(format::OomEventView::from)
                .collect();
            print(cli.output, &events, format::oom_events)?;
        }
        Command::Evidence { id: Some(id), .. } => {
            let response = client
                .get_evidence(pb::GetEvidenceRequest { id })
                .await
                .map_err(status)?;
            let view = format::EvidenceView::from(response.get_ref());
            print(cli.output, &view, format::evidence)?;
        }
        Command::Evidence {
            id: None,
            pod,
            limit,
        } => {
            let filter = evidence_filter(pod.as_deref(), limit)?;
            let response = client
                .list_evidence(pb::ListEvidenceRequest {
                    filter: Some(filter),
                })
                .await
                .map_err(status)?;
            let warning = &response.get_ref().store_warning;
            if !warning.is_empty() {
                eprintln!("WARNING: the evidence store is not whole: {warning}");
            }
            let list: Vec<format::SummaryView> = response
                .get_ref()
                .evidence
                .iter()
                .map(format::SummaryView::from)
                .collect();
            print(cli.output, &list, format::evidence_list)?;
        }
        Command::Pprof {
            pod,
            container,
            evidence,
            out,
        } => {
            let source = match (pod, evidence) {
                (_, Some(id)) => pb::export_pprof_request::Source::EvidenceId(id),
                (Some(pod), None) => {
                    pb::export_pprof_request::Source::Selector(selector(&TargetArgs {
                        pod: Some(pod),
                        container,
                        pid: None,
                    })?)
                }
                (None, None) => anyhow::bail!("name a pod (NAMESPACE/POD) or --evidence ID"),
            };
            let response = client
                .export_pprof(pb::ExportPprofRequest {
                    source: Some(source),
                })
                .await
                .map_err(status)?;
            let bytes = &response.get_ref().gzipped_profile;
            match out {
                Some(path) => std::fs::write(&path, bytes)
                    .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?,
                None => {
                    use std::io::{IsTerminal as _, Write as _};
                    let mut stdout = std::io::stdout().lock();
                    if stdout.is_terminal() {
                        anyhow::bail!(
                            "the profile is binary: redirect it (> profile.pb.gz) or use --out FILE"
                        );
                    }
                    stdout.write_all(bytes)?;
                }
            }
        }
        Command::Trace {
            action: TraceAction::Stop(target),
        } => {
            let request = pb::StopTracingRequest {
                selector: Some(selector(&target)?),
            };
            let response = client.stop_tracing(request).await.map_err(status)?;
            print(cli.output, &response.get_ref().pids, format::stopped)?;
        }
    }
    Ok(())
}

fn print<T: serde::Serialize>(
    output: Output,
    value: &T,
    table: fn(&T) -> String,
) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    match output {
        Output::Json => {
            serde_json::to_writer(&mut out, value)?;
            writeln!(out)?;
        }
        Output::Table => write!(out, "{}", table(value))?,
    }
    out.flush()?;
    Ok(())
}

fn status(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", status.code(), status.message())
}

fn selector(target: &TargetArgs) -> anyhow::Result<pb::Selector> {
    let domain = match (&target.pod, target.pid) {
        (_, Some(pid)) => Selector::new(Target::Pid(pid), target.container.clone())?,
        (Some(pod), None) => Selector::parse_pod(pod, target.container.clone())?,
        (None, None) => anyhow::bail!("name a pod (NAMESPACE/POD) or --pid"),
    };
    let proto_target = match domain.target {
        Target::Pod { namespace, name } => {
            pb::selector::Target::Pod(pb::PodName { namespace, name })
        }
        Target::PodUid(uid) => pb::selector::Target::PodUid(uid),
        Target::Pid(pid) => pb::selector::Target::Pid(pid),
    };
    Ok(pb::Selector {
        target: Some(proto_target),
        container: domain.container.unwrap_or_default(),
    })
}

fn evidence_filter(pod: Option<&str>, limit: u32) -> anyhow::Result<pb::EvidenceFilter> {
    let selector = match pod {
        Some(pod) => Some(selector(&TargetArgs {
            pod: Some(pod.to_owned()),
            container: None,
            pid: None,
        })?),
        None => None,
    };
    Ok(pb::EvidenceFilter {
        selector,
        since: None,
        until: None,
        limit,
    })
}

fn report_request(args: &ReportArgs) -> anyhow::Result<pb::GetLeakReportRequest> {
    Ok(pb::GetLeakReportRequest {
        selector: Some(selector(&args.target)?),
        top: args.top,
        min_age: args.min_age.map(proto_duration),
        sort_by: match args.sort {
            Sort::Bytes => pb::SortBy::Bytes,
            Sort::Growth => pb::SortBy::Growth,
        } as i32,
    })
}

fn proto_duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

/// The client's TLS settings from its flags, for an https:// server.
fn client_tls(cli: &Cli) -> anyhow::Result<ClientTlsConfig> {
    let read = |what: &str, path: &PathBuf| {
        std::fs::read(path).with_context(|| format!("cannot read {what} {}", path.display()))
    };
    let mut tls = ClientTlsConfig::new();
    tls = match &cli.tls_ca {
        Some(ca) => tls.ca_certificate(Certificate::from_pem(read("--tls-ca", ca)?)),
        None => anyhow::bail!(
            "--server {} uses TLS: give --tls-ca with the CA that signed the agent's certificate",
            cli.server
        ),
    };
    if let (Some(cert), Some(key)) = (&cli.tls_cert, &cli.tls_key) {
        tls = tls.identity(Identity::from_pem(
            read("--tls-cert", cert)?,
            read("--tls-key", key)?,
        ));
    }
    if let Some(name) = &cli.tls_server_name {
        tls = tls.domain_name(name.clone());
    }
    Ok(tls)
}

async fn connect(cli: &Cli) -> anyhow::Result<LeakTracerClient<Channel>> {
    let server = cli.server.as_str();
    let channel = if let Some(path) = server.strip_prefix("unix:") {
        let path = path.to_owned();
        Endpoint::from_static("http://localhost")
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(
                        tokio::net::UnixStream::connect(path).await?,
                    ))
                }
            }))
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot connect to {server}: {} (is tracer-daemon run listening there, and \
                     may this user use its socket?)",
                    error_chain(&e)
                )
            })?
    } else if server.starts_with("https://") {
        Endpoint::from_shared(server.to_owned())?
            .tls_config(client_tls(cli)?)?
            .connect()
            .await
            .map_err(|e| anyhow::anyhow!("cannot connect to {server}: {}", error_chain(&e)))?
    } else if server.starts_with("http://") {
        Endpoint::from_shared(server.to_owned())?
            .connect()
            .await
            .map_err(|e| anyhow::anyhow!("cannot connect to {server}: {}", error_chain(&e)))?
    } else {
        anyhow::bail!(
            "--server {server:?}: expected unix:PATH, https://HOST:PORT or http://HOST:PORT"
        );
    };
    Ok(LeakTracerClient::new(channel)
        .max_decoding_message_size(tracer_daemon::api::server::MAX_RESPONSE_BYTES))
}

/// An error and its sources on one line (TLS failures hide the reason in the sources).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
