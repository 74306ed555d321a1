//! Several rendezvous servers in the NAT lab: an agent behind a NAT registered with one server
//! moves to the other when its server is killed or hangs, and a client given both connects
//! directly.
//!
//! What p2pnc did is read from its `--report json` lines and the servers' `/v1/peers/{id}`.

#![cfg(target_os = "linux")]

mod lab_support;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use lab_support::{Auth, P2pncLab};
use natlab::{EchoServer, Lab, LabConfig, Nat, Node, RDV_IP, Site, pattern};

const SECRET: &str = "lab-failover-secret";
const SVC_PORT: u16 = 50302;
/// The second server's control port on the rendezvous host (its probe port is the next).
const SECOND_PORT: u16 = 50310;
/// The bound on an agent's move to another server once its own is gone.
const FAILOVER: Duration = Duration::from_secs(5);
/// The bound on the first connect through the other server, from the kill.
const RECONNECT: Duration = Duration::from_secs(10);

/// `GET /v1/peers/{id}` on the server at `port` of the rendezvous host (0 when it does not
/// answer).
fn peer_status(lab: &Lab, port: u16, id: &str) -> u16 {
    let at = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    lab.http_get(
        Node::Rdv,
        at,
        &format!("/v1/peers/{id}"),
        Duration::from_secs(1),
    )
    .map_or(0, |(status, _)| status)
}

/// Waits until the server at `port` answers `want` for `id`; how long that took, or panics
/// after `limit`.
fn wait_peer(lab: &Lab, port: u16, id: &str, want: u16, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let got = peer_status(lab, port, id);
        if got == want {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "/v1/peers/{id} on port {port} still answers {got} after {limit:?}, wanted {want}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// How the agent's server goes away.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// `kill -9`: the host's kernel closes the connections at once.
    Killed,
    /// SIGSTOP: the connections stay open and nothing answers, as with a hung server (or, to
    /// the agent, a host gone dark): only the agent's pings can tell.
    Hung,
}

/// Two servers on the rendezvous host, an agent behind a NAT registered with the first; the
/// first goes away by `fault`; the agent must be on the second within [`FAILOVER`] and a
/// client given both servers through on the direct path within [`RECONNECT`].
fn agent_moves_when_its_server(fault: Fault) {
    let lab = Lab::new(LabConfig::new(Nat::RestrictedDrop, Nat::RestrictedRst).delays(20, 20, 20));
    let mut first = lab.start_server();
    let listen = format!("0.0.0.0:{SECOND_PORT}");
    let spec = lab.p2pnc("server-2").args(["server", "--listen", &listen]);
    let _second = lab.spawn_cmd(Node::Rdv, spec);
    let second_url = format!("http://{RDV_IP}:{SECOND_PORT}");
    let _echo = EchoServer::start(
        &lab,
        Node::Host(Site::B),
        SocketAddr::from(([127, 0, 0, 1], SVC_PORT)),
    );
    // The lab's server first, the second after it: the agent registers with the first.
    let agent = lab.start_agent_with(
        Node::Host(Site::B),
        "svc",
        SVC_PORT,
        Auth::Secret(SECRET),
        &["--server", &second_url],
    );
    wait_peer(&lab, SECOND_PORT, "svc", 404, Duration::from_secs(10));

    match fault {
        Fault::Killed => first.kill(),
        Fault::Hung => {
            let pid = libc::pid_t::try_from(first.pid()).expect("a pid");
            // SAFETY: kill(2) with a valid signal on a process this test started.
            assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0, "SIGSTOP");
        }
    }
    let gone = Instant::now();
    let moved = wait_peer(&lab, SECOND_PORT, "svc", 200, FAILOVER);
    eprintln!("{fault:?}: agent registered with the second server {moved:?} after the fault");

    let payload = pattern(11, 1 << 20);
    let run = lab.connect_stdio_with(
        Node::Host(Site::A),
        "svc",
        Some(SECRET),
        &payload,
        RECONNECT,
        &["--server", &second_url],
    );
    assert!(
        run.success(),
        "connect through the second server failed:\n{}\n--- agent:\n{}",
        run.stderr,
        agent.stderr()
    );
    assert!(run.stdout == payload, "echo differs");
    let c = run.connected().expect("a connect report");
    assert_eq!(c.path, "direct");
    let done = gone.elapsed();
    eprintln!("{fault:?}: first echo through the second server {done:?} after the fault");
    assert!(done < RECONNECT, "{done:?}");
}

#[natlab::lab_test]
fn an_agent_behind_a_nat_moves_to_the_second_server_when_its_server_is_killed() {
    agent_moves_when_its_server(Fault::Killed);
}

#[natlab::lab_test]
fn an_agent_behind_a_nat_moves_to_the_second_server_when_its_server_hangs() {
    agent_moves_when_its_server(Fault::Hung);
}
