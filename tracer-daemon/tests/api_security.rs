//! Who can reach the API: the Unix socket's mode and group, the socket directory check, TLS on
//! TCP (with client certificates), `--insecure`, and the health-only listener. Real agents,
//! real sockets, real certificates generated here, other users made with setpriv.

mod support;

use std::{
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    process::Command,
};

use support::{agent::*, *};

/// The unprivileged user the tests act as.
const NOBODY: &str = "65534";

/// Runs tracerctl as uid 65534 (optionally with an extra group); returns (exit code, stderr).
fn ctl_as_nobody(server: &str, group: Option<u32>, args: &[&str]) -> (Option<i32>, String) {
    let mut command = Command::new("setpriv");
    let _ = command.args([&format!("--reuid={NOBODY}"), &format!("--regid={NOBODY}")]);
    let _ = match group {
        Some(gid) => command.arg(format!("--groups={gid}")),
        None => command.arg("--clear-groups"),
    };
    let output = command
        .arg(tracerctl_binary())
        .args(["--server", server])
        .args(args)
        .output()
        .expect("run setpriv tracerctl");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn the_socket_is_owner_only_and_another_user_cannot_connect() {
    require_root();
    let root = temp_root("socket-mode");
    let agent = Agent::start(&root, &[]);
    let meta = std::fs::metadata(&agent.socket).expect("socket metadata");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "socket mode");
    let dir_mode = std::fs::metadata(agent.socket.parent().expect("dir"))
        .expect("dir metadata")
        .permissions()
        .mode();
    assert_eq!(dir_mode & 0o022, 0, "socket directory writable by others");

    let (code, _, stderr) = agent.ctl(&["pods"]);
    assert_eq!(code, Some(0), "the owner connects: {stderr}");
    let (code, stderr) = ctl_as_nobody(&agent.server(), None, &["pods"]);
    assert_eq!(code, Some(1), "another user must not connect: {stderr}");
    assert!(stderr.contains("Permission denied"), "{stderr}");
}

#[test]
fn a_socket_group_lets_its_members_in_and_nobody_else() {
    require_root();
    let root = temp_root("socket-group");
    let gid: u32 = 47_113;
    let agent = Agent::start(&root, &["--socket-group", &gid.to_string()]);
    let meta = std::fs::metadata(&agent.socket).expect("socket metadata");
    assert_eq!(meta.permissions().mode() & 0o777, 0o660, "socket mode");
    assert_eq!(meta.gid(), gid, "socket group");

    let (code, stderr) = ctl_as_nobody(&agent.server(), Some(gid), &["pods"]);
    assert_eq!(code, Some(0), "a member of the group connects: {stderr}");
    let (code, stderr) = ctl_as_nobody(&agent.server(), None, &["pods"]);
    assert_eq!(code, Some(1), "a non-member must not connect: {stderr}");
    assert!(stderr.contains("Permission denied"), "{stderr}");

    let (code, stderr) = run_daemon(
        &[
            "run",
            "--listen",
            &format!("unix:{}", root.join("other.sock").display()),
            "--socket-group",
            "no-such-group-here",
        ],
        &[],
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("no group \"no-such-group-here\""),
        "an unknown group is named: {stderr}"
    );
}

#[test]
fn a_socket_directory_others_can_write_is_refused_before_anything_loads() {
    require_root();
    let root = temp_root("socket-dir");
    let open = root.join("open");
    std::fs::create_dir_all(&open).expect("mkdir");
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let (code, stderr) = run_daemon(
        &[
            "run",
            "--listen",
            &format!("unix:{}", open.join("tracer.sock").display()),
            "--state-dir",
            &root.join("state").display().to_string(),
        ],
        &[],
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("is writable by everyone") && stderr.contains(&open.display().to_string()),
        "{stderr}"
    );
    assert!(
        !stderr.contains("agent started"),
        "refused before the BPF programs load: {stderr}"
    );
    let _ = std::fs::remove_dir_all(&root);
}

/// A CA, a server certificate for localhost/127.0.0.1 and a client certificate, as PEM files.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn create(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).expect("mkdir pki");
        let write =
            |name: &str, text: &str| std::fs::write(dir.join(name), text).expect("write pem");
        let ca_key = rcgen::KeyPair::generate().expect("CA key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "tracer test CA");
        let ca = ca_params.self_signed(&ca_key).expect("CA cert");
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        write("ca.pem", &ca.pem());

        let leaf = |names: Vec<String>, file: &str| {
            let key = rcgen::KeyPair::generate().expect("key");
            let cert = rcgen::CertificateParams::new(names)
                .expect("params")
                .signed_by(&key, &issuer)
                .expect("sign");
            write(&format!("{file}.pem"), &cert.pem());
            write(&format!("{file}.key"), &key.serialize_pem());
        };
        leaf(vec!["localhost".into(), "127.0.0.1".into()], "server");
        leaf(vec!["sre-laptop".into()], "client");

        // A second CA nobody trusts, with its own client certificate.
        let rogue_key = rcgen::KeyPair::generate().expect("rogue key");
        let mut rogue_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        rogue_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let rogue = rogue_params.self_signed(&rogue_key).expect("rogue CA");
        write("rogue-ca.pem", &rogue.pem());
        let rogue_issuer = rcgen::Issuer::new(rogue_params, rogue_key);
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["intruder".to_owned()])
            .expect("params")
            .signed_by(&key, &rogue_issuer)
            .expect("sign");
        write("rogue-client.pem", &cert.pem());
        write("rogue-client.key", &key.serialize_pem());
        Self {
            dir: dir.to_owned(),
        }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

/// `tracerctl pods` over TLS, trusting `ca` and presenting `client` (PKI file stem) if given;
/// returns (exit code, stderr).
fn pods_over_tls(server: &str, pki: &Pki, ca: &str, client: Option<&str>) -> (Option<i32>, String) {
    let mut args = vec![
        "--server".to_owned(),
        server.to_owned(),
        "--tls-ca".to_owned(),
        pki.path(ca),
    ];
    if let Some(stem) = client {
        args.extend([
            "--tls-cert".to_owned(),
            pki.path(&format!("{stem}.pem")),
            "--tls-key".to_owned(),
            pki.path(&format!("{stem}.key")),
        ]);
    }
    args.push("pods".to_owned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, _, stderr) = tracerctl(&args);
    (code, stderr)
}

fn tracerctl(args: &[&str]) -> (Option<i32>, String, String) {
    let output = Command::new(tracerctl_binary())
        .args(args)
        .output()
        .expect("run tracerctl");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn tcp_needs_tls_and_a_client_certificate_signed_by_the_configured_ca() {
    require_root();
    let root = temp_root("tls");
    let pki = Pki::create(&root.join("pki"));
    let port = free_port();
    let listen = format!("tcp:127.0.0.1:{port}");

    // TCP without TLS and without --insecure: refused with what to do.
    let (code, stderr) = run_daemon(&["run", "--listen", &listen], &[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("needs TLS")
            && stderr.contains("--tls-cert")
            && stderr.contains("--insecure"),
        "{stderr}"
    );

    let agent = Agent::start_with(
        &root,
        Launch {
            listen: Some(listen),
            ..Launch::default()
        },
        &[
            "--tls-cert",
            &pki.path("server.pem"),
            "--tls-key",
            &pki.path("server.key"),
            "--tls-client-ca",
            &pki.path("ca.pem"),
        ],
    );
    let server = format!("https://localhost:{port}");
    let (code, stdout, stderr) = tracerctl(&[
        "--server",
        &server,
        "--tls-ca",
        &pki.path("ca.pem"),
        "--tls-cert",
        &pki.path("client.pem"),
        "--tls-key",
        &pki.path("client.key"),
        "pods",
        "-o",
        "json",
    ]);
    assert_eq!(
        code,
        Some(0),
        "a client with a good certificate: {stderr}\n{}",
        agent.stderr()
    );
    let _: serde_json::Value = serde_json::from_str(&stdout).expect("JSON over TLS");

    // No client certificate: the handshake or the first call fails.
    let (code, stderr) = pods_over_tls(&server, &pki, "ca.pem", None);
    assert_eq!(
        code,
        Some(1),
        "no client certificate must be refused: {stderr}"
    );

    // A client certificate from another CA.
    let (code, stderr) = pods_over_tls(&server, &pki, "ca.pem", Some("rogue-client"));
    assert_eq!(
        code,
        Some(1),
        "a certificate from an unknown CA must be refused: {stderr}"
    );

    // The client does not trust a server its CA did not sign.
    let (code, stderr) = pods_over_tls(&server, &pki, "rogue-ca.pem", Some("client"));
    assert_eq!(
        code,
        Some(1),
        "an untrusted server must be refused: {stderr}"
    );
    assert!(stderr.contains("cannot connect"), "{stderr}");

    // Plain HTTP/2 to the TLS port.
    let (code, _, stderr) = tracerctl(&["--server", &format!("http://127.0.0.1:{port}"), "pods"]);
    assert_eq!(
        code,
        Some(1),
        "plain text to the TLS port must fail: {stderr}"
    );

    // https without a CA to check the server against: told what to give.
    let (code, _, stderr) = tracerctl(&["--server", &server, "pods"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("--tls-ca"), "{stderr}");
}

#[test]
fn insecure_tcp_works_only_when_asked_and_says_so() {
    require_root();
    let root = temp_root("insecure");
    let port = free_port();
    let agent = Agent::start_with(
        &root,
        Launch {
            listen: Some(format!("tcp:127.0.0.1:{port}")),
            ..Launch::default()
        },
        &["--insecure"],
    );
    assert!(
        agent.stderr().contains("WARN") && agent.stderr().contains("--insecure"),
        "a warning is logged: {}",
        agent.stderr()
    );
    let (code, _, stderr) = tracerctl(&["--server", &format!("http://127.0.0.1:{port}"), "pods"]);
    assert_eq!(code, Some(0), "{stderr}");
}

#[test]
fn the_health_listener_answers_grpc_health_and_nothing_else() {
    require_root();
    let root = temp_root("health");
    let port = free_port();
    let agent = Agent::start(&root, &["--health-listen", &format!("127.0.0.1:{port}")]);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
            .expect("endpoint")
            .connect()
            .await
            .expect("connect to the health listener");
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
        let status = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await
            .expect("health check")
            .into_inner()
            .status;
        assert_eq!(
            status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        );
        // The leak API is not served there.
        let mut api = tracer_proto::v1::leak_tracer_client::LeakTracerClient::new(channel);
        let error = api
            .list_targets(tracer_proto::v1::ListTargetsRequest {})
            .await
            .expect_err("the health listener must not serve the API");
        assert_eq!(error.code(), tonic::Code::Unimplemented, "{error:?}");
    });
    drop(agent);
}

#[test]
fn a_file_at_the_socket_path_is_never_replaced() {
    require_root();
    let root = temp_root("socket-file");
    let path = root.join("tracer.sock");
    std::fs::write(&path, "precious\n").expect("write");
    let (code, stderr) = run_daemon(
        &[
            "run",
            "--listen",
            &format!("unix:{}", path.display()),
            "--state-dir",
            &root.join("state").display().to_string(),
        ],
        &[],
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("is a regular file, not a socket: refusing to replace it"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("agent started"),
        "refused before loading: {stderr}"
    );
    assert_eq!(
        std::fs::read_to_string(&path).expect("still there"),
        "precious\n"
    );
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn a_second_agent_never_takes_over_a_live_socket_and_a_stale_one_is_replaced() {
    require_root();
    let root = temp_root("socket-taken");
    let first = Agent::start(&root, &[]);
    let (code, stderr) = run_daemon(
        &[
            "run",
            "--listen",
            &first.server(),
            "--state-dir",
            &root.join("other-state").display().to_string(),
        ],
        &[],
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("another process is serving") && stderr.contains("tracer.sock"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("agent started"),
        "refused before loading: {stderr}"
    );
    let (code, _, stderr) = first.ctl(&["pods"]);
    assert_eq!(code, Some(0), "the first agent still answers: {stderr}");
    // Killed with -9, its socket stays behind, unanswered: the next agent replaces it.
    let socket = first.socket.clone();
    first.kill_9();
    assert!(socket.exists(), "a killed agent leaves its socket");
    let launch = Launch {
        socket: Some(socket),
        ..Launch::default()
    };
    let second = Agent::start_with(&root, launch, &[]);
    let (code, _, stderr) = second.ctl(&["pods"]);
    assert_eq!(code, Some(0), "{stderr}");
}

#[test]
fn every_directory_above_the_socket_is_checked_and_a_sticky_one_is_allowed() {
    require_root();
    let root = temp_root("socket-ancestors");
    let open = root.join("open");
    let below = open.join("run");
    std::fs::create_dir_all(&below).expect("mkdir");
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    std::fs::set_permissions(&below, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let (code, stderr) = run_daemon(
        &[
            "run",
            "--listen",
            &format!("unix:{}", below.join("tracer.sock").display()),
            "--state-dir",
            &root.join("state").display().to_string(),
        ],
        &[],
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{}, an ancestor of the socket directory",
            open.display()
        )) && stderr.contains("writable by everyone"),
        "a world-writable grandparent lets anyone rename the socket directory: {stderr}"
    );
    // With the sticky bit (as /tmp has), nobody else can rename an entry we own there.
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).expect("chmod");
    let launch = Launch {
        socket: Some(below.join("tracer.sock")),
        ..Launch::default()
    };
    let agent = Agent::start_with(&root, launch, &[]);
    let (code, _, stderr) = agent.ctl(&["pods"]);
    assert_eq!(code, Some(0), "{stderr}");
}

#[test]
fn with_umask_000_the_socket_never_exists_with_a_wider_mode() {
    require_root();
    let root = temp_root("socket-umask");
    let socket = root.join("tracer.sock");
    // Watch the path from before the agent starts: every mode it ever shows must be 0600.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (socket, stop) = (socket.clone(), std::sync::Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut seen = std::collections::BTreeSet::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(meta) = std::fs::symlink_metadata(&socket) {
                    let _ = seen.insert(meta.permissions().mode() & 0o7777);
                }
            }
            seen
        })
    };
    let launch = Launch {
        wrapper: vec![
            "sh".into(),
            "-c".into(),
            "umask 000; exec \"$@\"".into(),
            "sh".into(),
        ],
        ..Launch::default()
    };
    let agent = Agent::start_with(&root, launch, &[]);
    let (code, stderr) = ctl_as_nobody(&agent.server(), None, &["pods"]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let seen = watcher.join().expect("watcher");
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        vec![0o600],
        "modes the socket showed while the agent started with umask 000"
    );
    assert_eq!(code, Some(1), "another user must not connect: {stderr}");
    let leftovers: Vec<_> = std::fs::read_dir(&root)
        .expect("read root")
        .filter_map(Result::ok)
        .filter(|entry| {
            entry
                .file_name()
                .to_string_lossy()
                .starts_with(".tracer-bind")
        })
        .collect();
    assert!(
        leftovers.is_empty(),
        "the private bind directory is removed"
    );
}
