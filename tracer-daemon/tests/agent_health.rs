//! The agent is never half-dead: when its thread fails, grpc.health says NOT_SERVING on the
//! socket and on the health port and the process exits non-zero (so the kubelet restarts it);
//! while its thread does not answer, health says NOT_SERVING and turns back when it answers.
//! The failures are injected with the hidden `--inject-fault` flag: no real input is known to
//! make the thread fail any more (a zero interval once did; it is now refused at startup).

#![expect(
    clippy::unwrap_used,
    reason = "tests panic with a message on the first surprise"
)]

mod support;

use std::time::{Duration, Instant};

use support::{agent::*, *};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// What the health port answers for the whole server ("" service): `None` when it cannot be
/// reached (the process has gone).
fn health_of(port: u16) -> Option<ServingStatus> {
    runtime().block_on(async move {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
            .unwrap()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(2))
            .connect()
            .await
            .ok()?;
        let answer = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .ok()?;
        ServingStatus::try_from(answer.into_inner().status).ok()
    })
}

#[test]
fn a_dead_agent_thread_turns_health_not_serving_and_the_process_exits_non_zero() {
    require_root();
    let root = temp_root("agent-panics");
    let port = free_port();
    let mut agent = Agent::start(
        &root,
        &[
            "--health-listen",
            &format!("127.0.0.1:{port}"),
            "--inject-fault",
            "panic-after=3s",
        ],
    );
    assert_eq!(health_of(port), Some(ServingStatus::Serving));
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        // Never SERVING once the agent has said the thread is gone (it says so after setting
        // NOT_SERVING): NOT_SERVING, or no answer as the process ends.
        let said_gone = agent.stderr().contains("the agent has stopped");
        let health = health_of(port);
        if let Some(status) = agent.try_exit() {
            break status;
        }
        if said_gone {
            assert_ne!(
                health,
                Some(ServingStatus::Serving),
                "SERVING after the agent's thread died:\n{}",
                agent.stderr()
            );
        }
        assert!(
            Instant::now() < deadline,
            "the agent never exited:\n{}",
            agent.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let log = agent.stderr();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains("the agent has stopped: health is NOT_SERVING")
            && log.contains("injected fault: the agent's thread panics"),
        "{log}"
    );
    assert!(
        log.contains("exiting so that the agent is restarted"),
        "{log}"
    );
}

#[test]
fn an_agent_that_stops_answering_turns_health_not_serving_and_keeps_running() {
    require_root();
    let root = temp_root("agent-stalls");
    let port = free_port();
    let mut agent = Agent::start(
        &root,
        &[
            "--health-listen",
            &format!("127.0.0.1:{port}"),
            "--inject-fault",
            "stall-after=2s",
            "--unresponsive-after",
            "2s",
        ],
    );
    assert_eq!(health_of(port), Some(ServingStatus::Serving));
    let deadline = Instant::now() + TIMEOUT;
    while health_of(port) != Some(ServingStatus::NotServing) {
        assert!(
            Instant::now() < deadline,
            "never NOT_SERVING:\n{}",
            agent.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        agent.try_exit().is_none(),
        "stalled, not dead: it keeps running"
    );
    assert!(
        agent
            .stderr()
            .contains("the agent has not answered: health is NOT_SERVING"),
        "{}",
        agent.stderr()
    );
}
