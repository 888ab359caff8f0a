//! tracerctl against recorded answers of a real agent: each case in `tests/fixtures/` holds the
//! arguments, the agent's answer to the one call they make (protobuf messages recorded from
//! `tracer-daemon run` during its real-kernel tests, or a status), and what the tracerctl of
//! the daemon package printed for them. A fake agent on a Unix socket replays the answer; the
//! request tracerctl sends and everything it prints (stdout, stderr, exit code) must be
//! byte-for-byte what was recorded. No root needed.
//!
//! A case's files: `args` (one per line, without `--server`), `rpc.N.pb` (the answer's
//! messages, several for a stream), `status` (code number, then the message: the call fails,
//! after the messages for a stream), and the expected `method`, `request.pb`, `stdout`,
//! `stderr`, `code`. Cases without an answer fail or print before any call (selectors, usage,
//! help).
//!
//! `TRACERCTL_BLESS_WITH=BINARY cargo test -p tracerctl --test replay` rewrites the expected
//! files from BINARY's behaviour (name it `tracerctl`: usage lines carry the file's name).
//! They were made with the tracerctl of the daemon package at commit d57fbf4, the client this
//! package replaced. The answers were recorded through a proxy during the daemon's tests
//! `pods`, `oom`, `metrics`, `evidence_store` and `api_limits`, and from `tracer-daemon run`
//! tracing `cache_and_leak` by pid (once with `--sample-bytes 4096`).

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::Command,
    sync::{Arc, Mutex},
};

use prost::Message;
use tonic::{Request, Response, Status};
use tracer_proto::v1::{
    self as pb,
    leak_tracer_server::{LeakTracer, LeakTracerServer},
};

/// One recorded case.
struct Case {
    dir: PathBuf,
    args: Vec<String>,
    /// The answer's messages.
    messages: Vec<Vec<u8>>,
    /// The status the call ends with, when it fails.
    status: Option<Status>,
}

impl Case {
    fn load(dir: &Path) -> Self {
        let read = |name: &str| std::fs::read(dir.join(name));
        let args = String::from_utf8(read("args").expect("every case has args"))
            .expect("args are UTF-8")
            .lines()
            .map(str::to_owned)
            .collect();
        let messages = (0..)
            .map_while(|n| read(&format!("rpc.{n}.pb")).ok())
            .collect();
        let status = read("status").ok().map(|text| {
            let text = String::from_utf8(text).expect("status is UTF-8");
            let (code, message) = text.split_once('\n').unwrap_or((&text, ""));
            let code: i32 = code.trim().parse().expect("status code number");
            Status::new(tonic::Code::from(code), message)
        });
        Self {
            dir: dir.to_owned(),
            args,
            messages,
            status,
        }
    }
}

/// The call a client made: the method and its request, encoded.
type Seen = Arc<Mutex<Option<(&'static str, Vec<u8>)>>>;

/// A fake agent answering every call with one case's recorded answer.
#[derive(Clone)]
struct Replay {
    messages: Arc<Vec<Vec<u8>>>,
    status: Option<Status>,
    seen: Seen,
}

type ReportStream =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::LeakReport, Status>> + Send>>;

impl Replay {
    fn saw(&self, method: &'static str, request: &impl Message) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        assert!(seen.is_none(), "a second call ({method}) in one case");
        *seen = Some((method, request.encode_to_vec()));
    }

    fn decode<T: Message + Default>(bytes: &[u8]) -> T {
        T::decode(bytes).expect("a recorded message decodes")
    }

    fn unary<Req: Message, Resp: Message + Default>(
        &self,
        method: &'static str,
        request: Request<Req>,
    ) -> Result<Response<Resp>, Status> {
        self.saw(method, request.get_ref());
        match (&self.status, self.messages.first()) {
            (Some(status), _) => Err(status.clone()),
            (None, Some(bytes)) => Ok(Response::new(Self::decode(bytes))),
            (None, None) => panic!("{method}: the case has neither an answer nor a status"),
        }
    }
}

#[tonic::async_trait]
impl LeakTracer for Replay {
    async fn list_targets(
        &self,
        request: Request<pb::ListTargetsRequest>,
    ) -> Result<Response<pb::ListTargetsResponse>, Status> {
        self.unary("ListTargets", request)
    }

    async fn get_leak_report(
        &self,
        request: Request<pb::GetLeakReportRequest>,
    ) -> Result<Response<pb::LeakReport>, Status> {
        self.unary("GetLeakReport", request)
    }

    type WatchLeakReportsStream = ReportStream;

    async fn watch_leak_reports(
        &self,
        request: Request<pb::WatchLeakReportsRequest>,
    ) -> Result<Response<ReportStream>, Status> {
        self.saw("WatchLeakReports", request.get_ref());
        if let (Some(status), true) = (&self.status, self.messages.is_empty()) {
            return Err(status.clone());
        }
        let items: Vec<Result<pb::LeakReport, Status>> = self
            .messages
            .iter()
            .map(|bytes| Ok(Self::decode(bytes)))
            .chain(self.status.clone().map(Err))
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(items))))
    }

    async fn start_tracing(
        &self,
        request: Request<pb::StartTracingRequest>,
    ) -> Result<Response<pb::StartTracingResponse>, Status> {
        self.unary("StartTracing", request)
    }

    async fn stop_tracing(
        &self,
        request: Request<pb::StopTracingRequest>,
    ) -> Result<Response<pb::StopTracingResponse>, Status> {
        self.unary("StopTracing", request)
    }

    async fn list_oom_events(
        &self,
        request: Request<pb::ListOomEventsRequest>,
    ) -> Result<Response<pb::ListOomEventsResponse>, Status> {
        self.unary("ListOomEvents", request)
    }

    async fn list_evidence(
        &self,
        request: Request<pb::ListEvidenceRequest>,
    ) -> Result<Response<pb::ListEvidenceResponse>, Status> {
        self.unary("ListEvidence", request)
    }

    async fn get_evidence(
        &self,
        request: Request<pb::GetEvidenceRequest>,
    ) -> Result<Response<pb::Evidence>, Status> {
        self.unary("GetEvidence", request)
    }

    async fn get_growth_profile(
        &self,
        request: Request<pb::GetGrowthProfileRequest>,
    ) -> Result<Response<pb::GrowthProfileReport>, Status> {
        self.unary("GetGrowthProfile", request)
    }

    async fn export_pprof(
        &self,
        request: Request<pb::ExportPprofRequest>,
    ) -> Result<Response<pb::PprofProfile>, Status> {
        self.unary("ExportPprof", request)
    }
}

/// What a run of tracerctl did.
struct Outcome {
    method: String,
    request: Vec<u8>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    code: String,
}

/// Runs `binary` with the case's arguments against a fake agent replaying its answer.
fn run_case(
    runtime: &tokio::runtime::Runtime,
    binary: &Path,
    case: &Case,
    scratch: &Path,
) -> Outcome {
    let socket = scratch.join("agent.sock");
    let _ = std::fs::remove_file(&socket);
    let seen = Seen::default();
    let replay = Replay {
        messages: Arc::new(case.messages.clone()),
        status: case.status.clone(),
        seen: Arc::clone(&seen),
    };
    let listener = {
        let _guard = runtime.enter();
        tokio::net::UnixListener::bind(&socket).expect("bind the fake agent's socket")
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = runtime.spawn(
        tonic::transport::Server::builder()
            .add_service(LeakTracerServer::new(replay))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::UnixListenerStream::new(listener),
                async {
                    let _ = stopped.await;
                },
            ),
    );
    let mut command = Command::new(binary);
    for (name, _) in std::env::vars_os() {
        // The environment's TRACER_* settings would change what is printed (help shows them).
        if name.to_string_lossy().starts_with("TRACER_") {
            let _ = command.env_remove(name);
        }
    }
    let output = command
        .arg("--server")
        .arg(format!("unix:{}", socket.display()))
        .args(&case.args)
        .output()
        .expect("run tracerctl");
    let _ = stop.send(());
    runtime
        .block_on(server)
        .expect("the fake agent's task")
        .expect("the fake agent");
    let (method, request) = seen
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
        .map_or_else(
            || ("none".to_owned(), Vec::new()),
            |(m, r)| (m.to_owned(), r),
        );
    Outcome {
        method,
        request,
        stdout: output.stdout,
        stderr: output.stderr,
        code: output
            .status
            .code()
            .map_or_else(|| "signal".to_owned(), |c| c.to_string()),
    }
}

/// Where two outputs part: the first differing line of text, or the sizes of binary output.
fn first_difference(expected: &[u8], actual: &[u8]) -> String {
    let (Ok(expected), Ok(actual)) = (std::str::from_utf8(expected), std::str::from_utf8(actual))
    else {
        return format!(
            "{} bytes expected, {} bytes printed",
            expected.len(),
            actual.len()
        );
    };
    let mut expected_lines = expected.split_inclusive('\n');
    let mut actual_lines = actual.split_inclusive('\n');
    for line in 1.. {
        match (expected_lines.next(), actual_lines.next()) {
            (Some(e), Some(a)) if e == a => continue,
            (e, a) => {
                return format!(
                    "line {line}\n  expected: {:?}\n  actual:   {:?}",
                    e.unwrap_or("<end>"),
                    a.unwrap_or("<end>")
                );
            }
        }
    }
    unreachable!("the outputs differ")
}

fn cases() -> Vec<Case> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .expect("tests/fixtures")
        .map(|entry| entry.expect("fixture entry").path())
        .filter(|path| path.join("args").is_file())
        .collect();
    dirs.sort();
    assert!(!dirs.is_empty(), "no cases under {}", root.display());
    dirs.iter().map(|dir| Case::load(dir)).collect()
}

#[test]
fn every_recorded_case_sends_the_same_request_and_prints_the_same_bytes() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let scratch = std::env::temp_dir().join(format!("tracerctl-replay-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).expect("scratch dir");
    let bless = std::env::var_os("TRACERCTL_BLESS_WITH").map(PathBuf::from);
    let binary = bless
        .clone()
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_tracerctl")));
    let mut failures = String::new();
    let cases = cases();
    for case in &cases {
        let outcome = run_case(&runtime, &binary, case, &scratch);
        let files: [(&str, &[u8]); 5] = [
            ("method", outcome.method.as_bytes()),
            ("request.pb", &outcome.request),
            ("stdout", &outcome.stdout),
            ("stderr", &outcome.stderr),
            ("code", outcome.code.as_bytes()),
        ];
        for (name, actual) in files {
            let path = case.dir.join(name);
            if bless.is_some() {
                std::fs::write(&path, actual).expect("write an expected file");
                continue;
            }
            let expected = std::fs::read(&path).unwrap_or_default();
            if expected != actual {
                let _ = writeln!(
                    failures,
                    "{}: {name} differs: {}",
                    case.dir.display(),
                    first_difference(&expected, actual)
                );
            }
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);
    assert!(failures.is_empty(), "{failures}");
    assert!(cases.len() >= 20, "only {} cases", cases.len());
}
