//! Faults in the NAT lab: the rendezvous server restarts, an agent dies.

mod natlab;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use natlab::{Auth, EchoServer, Lab, LabConfig, Nat, Node, SERVER_PORT, Site, pattern};

const SECRET: &str = "lab-faults-secret";
const SVC_PORT: u16 = 50302;

fn server_addr() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, SERVER_PORT))
}

/// Polls `/v1/peers/{id}` on the rendezvous host until it answers `want`; returns how long
/// that took, or panics after `limit`.
fn wait_peer(lab: &Lab, id: &str, want: u16, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let got = lab
            .http_get(
                Node::Rdv,
                server_addr(),
                &format!("/v1/peers/{id}"),
                Duration::from_secs(1),
            )
            .map(|(status, _)| status)
            .unwrap_or(0);
        if got == want {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "/v1/peers/{id} still answers {got} after {limit:?}, wanted {want}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn agents_re_register_after_a_server_restart_and_new_connects_succeed() {
    if !natlab::require_lab() {
        return;
    }
    let lab = Lab::new(LabConfig::new(Nat::RestrictedRst, Nat::RestrictedDrop).delays(20, 20, 20));
    let mut server = lab.start_server();
    let _echo = EchoServer::start(
        &lab,
        Node::Host(Site::B),
        SocketAddr::from(([127, 0, 0, 1], SVC_PORT)),
    );
    let agent = lab.start_agent(Node::Host(Site::B), "svc", SVC_PORT, Auth::Secret(SECRET));
    wait_peer(&lab, "svc", 200, Duration::from_secs(10));

    server.kill();
    let restarted = Instant::now();
    let _server = lab.start_server();
    let up = wait_peer(&lab, "svc", 200, Duration::from_secs(5));
    eprintln!(
        "agent registered again {:?} after the restart began",
        restarted.elapsed()
    );
    assert!(up <= Duration::from_secs(5));

    let payload = pattern(7, 1 << 20);
    let run = lab.connect_stdio(
        Node::Host(Site::A),
        "svc",
        Some(SECRET),
        &payload,
        Duration::from_secs(20),
    );
    assert!(
        run.success(),
        "connect after the restart failed:\n{}\n--- agent:\n{}",
        run.stderr,
        agent.stderr()
    );
    assert!(run.stdout == payload, "echo differs after the restart");
    let c = run.connected("svc").expect("connected line");
    assert_eq!(c.path, "direct");
}

#[test]
fn a_killed_agent_goes_offline_at_once_and_clients_are_told_within_a_second() {
    if !natlab::require_lab() {
        return;
    }
    let lab = Lab::new(LabConfig::new(Nat::RestrictedDrop, Nat::RestrictedRst).delays(20, 20, 20));
    let _server = lab.start_server();
    let _echo = EchoServer::start(
        &lab,
        Node::Host(Site::B),
        SocketAddr::from(([127, 0, 0, 1], SVC_PORT)),
    );
    let mut agent = lab.start_agent(Node::Host(Site::B), "svc", SVC_PORT, Auth::Secret(SECRET));
    wait_peer(&lab, "svc", 200, Duration::from_secs(10));

    // SIGKILL: the kernel resets the agent's control connection, so the server knows at once.
    agent.kill();
    let offline = wait_peer(&lab, "svc", 404, Duration::from_secs(2));
    eprintln!("agent offline {offline:?} after kill -9");

    let run = lab.connect_stdio(
        Node::Host(Site::A),
        "svc",
        Some(SECRET),
        b"x",
        Duration::from_secs(10),
    );
    assert!(!run.success(), "connected to a dead agent");
    assert!(
        run.stderr.contains("peer 'svc' is not online"),
        "{}",
        run.stderr
    );
    assert!(
        run.elapsed < Duration::from_secs(1),
        "the refusal took {:?}",
        run.elapsed
    );
}
