//! The exporter against real tonic receivers on loopback (plain and TLS), and its checks of
//! the flags.

use std::{collections::VecDeque, sync::Mutex};

use opentelemetry_proto::tonic::collector::profiles::v1development::{
    ExportProfilesServiceResponse,
    profiles_service_server::{ProfilesService, ProfilesServiceServer},
};
use tonic::{Request, Response, Status};

use super::*;

/// A receiver answering each export with the next scripted code (OK once they run out),
/// recording the authorization header of each accepted export.
#[derive(Clone, Default)]
struct Scripted {
    answers: Arc<Mutex<VecDeque<Code>>>,
    accepted: Arc<Mutex<Vec<Option<String>>>>,
}

#[tonic::async_trait]
impl ProfilesService for Scripted {
    async fn export(
        &self,
        request: Request<ExportProfilesServiceRequest>,
    ) -> Result<Response<ExportProfilesServiceResponse>, Status> {
        let answer = self
            .answers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop_front();
        if let Some(code) = answer.filter(|c| *c != Code::Ok) {
            return Err(Status::new(code, "scripted"));
        }
        let authorization = request.metadata().get("authorization");
        let authorization = authorization
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        self.accepted
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(authorization);
        Ok(Response::new(ExportProfilesServiceResponse::default()))
    }
}

/// Serves `receiver` on a loopback port, over TLS with `identity` (PEM certificate and
/// key) if given; returns the port.
async fn serve_on(receiver: Scripted, identity: Option<(String, String)>) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let port = listener.local_addr().expect("local address").port();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let mut server = tonic::transport::Server::builder();
    if let Some((cert, key)) = identity {
        let identity = tonic::transport::Identity::from_pem(cert, key);
        server = server
            .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
            .expect("server TLS");
    }
    let _server = tokio::spawn(
        server
            .add_service(ProfilesServiceServer::new(receiver))
            .serve_with_incoming(incoming),
    );
    port
}

async fn serve(receiver: Scripted) -> String {
    format!("http://127.0.0.1:{}", serve_on(receiver, None).await)
}

/// A CA's certificate (PEM) and a certificate it signed for 127.0.0.1 with its key.
fn pki() -> (String, (String, String)) {
    let ca_key = rcgen::KeyPair::generate().expect("CA key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).expect("CA cert");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .expect("params")
        .signed_by(&key, &issuer)
        .expect("sign");
    (ca.pem(), (cert.pem(), key.serialize_pem()))
}

#[tokio::test]
async fn an_https_endpoint_is_trusted_through_the_given_ca_only() {
    let (ca, identity) = pki();
    let (rogue_ca, _) = pki();
    let receiver = Scripted::default();
    let port = serve_on(receiver.clone(), Some(identity)).await;
    let dir = std::env::temp_dir().join(format!("otlp-tls-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let exporter = |ca_file: &str, pem: &str| {
        let path = dir.join(ca_file);
        std::fs::write(&path, pem).expect("write CA");
        let settings = ExporterSettings {
            ca: Some(path),
            insecure: false,
            ..plain(
                &format!("https://127.0.0.1:{port}"),
                Duration::from_secs(60),
                4,
            )
        };
        start(&settings).expect("starts")
    };
    let trusted = exporter("ca.pem", &ca);
    trusted.offer(ExportProfilesServiceRequest::default());
    let figures = until(&trusted, |f| f.sent == 1).await;
    assert_eq!(figures.failed_attempts, 0);
    let fooled = exporter("rogue.pem", &rogue_ca);
    fooled.offer(ExportProfilesServiceRequest::default());
    let figures = until(&fooled, |f| f.failed_attempts >= 1).await;
    assert_eq!(figures.sent, 0, "a certificate from another CA is refused");
    assert_eq!(receiver.accepted.lock().expect("accepted").len(), 1);
    let _ = std::fs::remove_dir_all(&dir);
}

fn plain(endpoint: &str, max_age: Duration, queue_batches: usize) -> ExporterSettings {
    ExporterSettings {
        insecure: true,
        headers: vec![("authorization".into(), "Bearer token".into())],
        queue_batches,
        max_age,
        ..settings(endpoint)
    }
}

/// Polls the figures until `done` (the exporter's backoff is real time).
async fn until(queue: &ExportQueue, done: impl Fn(&ExportFigures) -> bool) -> ExportFigures {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let figures = queue.figures();
        if done(&figures) {
            return figures;
        }
        assert!(Instant::now() < deadline, "never reached: {figures:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_failed_export_is_retried_with_its_headers_until_accepted() {
    let receiver = Scripted::default();
    receiver
        .answers
        .lock()
        .expect("fresh")
        .extend([Code::Unavailable, Code::ResourceExhausted]);
    let endpoint = serve(receiver.clone()).await;
    let queue = start(&plain(&endpoint, Duration::from_secs(60), 4)).expect("starts");
    queue.offer(ExportProfilesServiceRequest::default());
    let figures = until(&queue, |f| f.sent == 1).await;
    assert_eq!((figures.failed_attempts, figures.pending), (2, 0));
    let accepted = receiver.accepted.lock().expect("accepted").clone();
    assert_eq!(accepted, [Some("Bearer token".to_owned())]);
}

#[tokio::test]
async fn refused_and_expired_batches_are_dropped_and_counted_by_reason() {
    let receiver = Scripted::default();
    let mut answers = vec![Code::InvalidArgument];
    answers.extend([Code::Unavailable; 64]);
    receiver.answers.lock().expect("fresh").extend(answers);
    let endpoint = serve(receiver.clone()).await;
    let queue = start(&plain(&endpoint, Duration::from_secs(1), 4)).expect("starts");
    queue.offer(ExportProfilesServiceRequest::default());
    let _ = until(&queue, |f| f.dropped_rejected == 1).await;
    queue.offer(ExportProfilesServiceRequest::default());
    let figures = until(&queue, |f| f.dropped_expired == 1).await;
    assert_eq!((figures.built, figures.sent, figures.pending), (2, 0, 0));
    assert!(figures.failed_attempts >= 2, "{figures:?}");
    assert!(receiver.accepted.lock().expect("accepted").is_empty());
}

#[tokio::test]
async fn a_full_queue_drops_the_new_batch_and_counts_it() {
    // Nothing listens there: the first batch stays in flight, retried.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let queue = start(&plain(
        &format!("http://127.0.0.1:{port}"),
        Duration::from_secs(60),
        1,
    ))
    .expect("starts");
    queue.offer(ExportProfilesServiceRequest::default());
    let _ = until(&queue, |f| f.failed_attempts >= 1).await;
    queue.offer(ExportProfilesServiceRequest::default());
    queue.offer(ExportProfilesServiceRequest::default());
    let figures = queue.figures();
    assert_eq!(
        (figures.built, figures.dropped_queue_full, figures.pending),
        (3, 1, 2),
        "one in flight, one queued, one dropped"
    );
}

fn settings(endpoint: &str) -> ExporterSettings {
    ExporterSettings {
        endpoint: endpoint.to_owned(),
        headers: Vec::new(),
        ca: None,
        insecure: false,
        queue_batches: 4,
        max_age: Duration::from_secs(60),
    }
}

#[test]
fn plain_http_needs_insecure_and_says_so() {
    let error = check(&settings("http://collector:4317")).expect_err("refused");
    assert!(error.to_string().contains("--otlp-insecure"), "{error}");
    let insecure = ExporterSettings {
        insecure: true,
        ..settings("http://collector:4317")
    };
    check(&insecure).expect("accepted with --otlp-insecure");
    let ca = ExporterSettings {
        ca: Some("/ca.pem".into()),
        ..insecure
    };
    let error = check(&ca).expect_err("a CA without TLS");
    assert!(error.to_string().contains("https"), "{error}");
}

#[test]
fn bad_endpoints_and_headers_name_the_flag() {
    for endpoint in ["collector:4317", "ftp://collector", "not a url"] {
        let error = check(&settings(endpoint)).expect_err(endpoint).to_string();
        assert!(error.contains("--export-otlp"), "{endpoint}: {error}");
    }
    assert!(parse_header("no-equals").is_err());
    for header in [("Bad Key", "v"), ("authorization", "line\nbreak")] {
        let with_header = ExporterSettings {
            headers: vec![(header.0.into(), header.1.into())],
            ..settings("https://collector:4317")
        };
        let error = check(&with_header).expect_err("bad header").to_string();
        assert!(error.contains("--otlp-header"), "{error}");
    }
    let fine = parse_header("authorization=Bearer abc=").expect("parses");
    assert_eq!(fine, ("authorization".into(), "Bearer abc=".into()));
    let missing_ca = ExporterSettings {
        ca: Some("/nonexistent/ca.pem".into()),
        ..settings("https://collector:4317")
    };
    let error = check(&missing_ca).expect_err("unreadable CA").to_string();
    assert!(error.contains("/nonexistent/ca.pem"), "{error}");
}

#[test]
fn retrying_is_for_an_endpoint_down_not_for_a_refused_batch() {
    assert!(retryable(Code::Unavailable) && retryable(Code::DeadlineExceeded));
    assert!(!retryable(Code::InvalidArgument) && !retryable(Code::Unauthenticated));
}
