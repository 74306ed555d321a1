//! Attacks in the NAT lab that need real NATs and many addresses: clients on four outside
//! addresses fake a symmetric NAT (their probe from another port) toward a `--public` agent
//! behind a NAT, whose birthday probes toward them are dropped, so every socket they open waits
//! for the whole punch. Before the server and the agent bounded birthday punches, 240 such
//! requests took the agent to its 20 000-descriptor limit and a real connect from 3 ms to 4.4 s.
//!
//! They need root and iproute2, nftables and iptables; without root they print
//! `skipped: NAT lab needs root (...)` and return, except under CI, where they fail.

#![cfg(target_os = "linux")]

mod lab_support;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use lab_support::{Auth, P2pncLab, SERVER_PORT};
use natlab::{Dial, EchoServer, IcmpErrors, Lab, LabConfig, Nat, Node, Site, pattern};
use p2pnc::protocol::{self, ProbeToken};
use tokio_tungstenite::tungstenite;

const SVC_PORT: u16 = 50302;
/// Requests per attacking address: 240 in all, as in the attack that exhausted the agent.
const REQUESTS_PER_ADDRESS: usize = 60;
/// The attacker's addresses on the outside host (its own, 198.18.0.2, and three more).
const ATTACKERS: [Ipv4Addr; 4] = [
    Ipv4Addr::new(198, 18, 0, 2),
    Ipv4Addr::new(198, 18, 0, 3),
    Ipv4Addr::new(198, 18, 0, 4),
    Ipv4Addr::new(198, 18, 0, 5),
];
/// An attacker's control connection, held open.
type Ws = tungstenite::WebSocket<std::net::TcpStream>;
/// Time for one attacker's connection to the server.
const T: Duration = Duration::from_secs(5);

/// Open descriptors of process `pid`.
fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// A TCP connection from `from` (any port) to `to`.
fn tcp_from(from: Ipv4Addr, to: SocketAddr) -> std::io::Result<std::net::TcpStream> {
    let dial = Dial {
        local: Some(SocketAddr::new(IpAddr::V4(from), 0)),
        ..Default::default()
    };
    natlab::finish_connect(natlab::start_connect(to, dial)?, T, IcmpErrors::Fatal)
}

/// One faked request from `from`: a probe from one port, then a connect request naming it from
/// another, so the server sees an endpoint-dependent NAT. Returns the first control message
/// (a punch order or an error) and the socket, kept open as an attacker would.
fn faked_request(from: Ipv4Addr, peer: &str) -> Result<(serde_json::Value, Ws), String> {
    let control = SocketAddr::from((natlab::RDV_IP, SERVER_PORT));
    let token = ProbeToken::random();
    let mut probe =
        tcp_from(from, protocol::probe_addr(control)).map_err(|e| format!("probe: {e}"))?;
    probe
        .write_all(protocol::probe_line(&token).as_bytes())
        .map_err(|e| e.to_string())?;
    let mut seen = String::new();
    let _ = probe.read_to_string(&mut seen);
    let tcp = tcp_from(from, control).map_err(|e| format!("control: {e}"))?;
    tcp.set_read_timeout(Some(T)).map_err(|e| e.to_string())?;
    let nonce = protocol::Nonce::random();
    let url = format!("ws://{control}/v1/connect?v=2&peer={peer}&nonce={nonce}&probe={token}");
    let (mut ws, _) = tungstenite::client(url, tcp).map_err(|e| format!("upgrade: {e}"))?;
    loop {
        match ws.read().map_err(|e| format!("read: {e}"))? {
            tungstenite::Message::Text(t) => {
                let v = serde_json::from_str(&t).map_err(|e| e.to_string())?;
                return Ok((v, ws));
            }
            _ => continue,
        }
    }
}

/// A real client's connect from host A to the public agent: its setup time.
fn real_connect(lab: &Lab, id: &str) -> Duration {
    let payload = pattern(5, 64 << 10);
    let run = lab.connect_stdio(
        Node::Host(Site::A),
        id,
        None,
        &payload,
        Duration::from_secs(20),
    );
    assert!(
        run.success() && run.stdout == payload,
        "a real connect failed: {:?} after {:?}\n{}",
        run.status,
        run.elapsed,
        run.stderr
    );
    let c = run.connected().expect("a connect report");
    assert_eq!(c.path, "direct", "{}", run.stderr);
    Duration::from_millis(c.ms)
}

#[natlab::lab_test]
fn clients_faking_a_symmetric_nat_cannot_exhaust_a_public_agent() {
    let lab = Lab::new(
        LabConfig::new(Nat::RestrictedRst, Nat::RestrictedDrop)
            .second_hosts(false)
            .outside_host(true),
    );
    // The attacker's extra addresses, and a firewall that drops the agent's birthday probes:
    // each one then holds its socket until the punch gives up.
    for a in &ATTACKERS[1..] {
        lab.run_ok(
            Node::Outside,
            "ip",
            &["addr", "add", &format!("{a}/24"), "dev", "eth0"],
        );
    }
    lab.run_ok(
        Node::Outside,
        "iptables",
        &["-A", "INPUT", "-p", "tcp", "--syn", "-j", "DROP"],
    );
    let _server = lab.start_server();
    let _echo = EchoServer::start(
        &lab,
        Node::Host(Site::B),
        SocketAddr::from(([127, 0, 0, 1], SVC_PORT)),
    );
    let agent = lab.start_agent(Node::Host(Site::B), "open", SVC_PORT, Auth::Public);
    let base_setup = real_connect(&lab, "open");
    let base_fds = fd_count(agent.pid());

    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (stop, pid) = (stop.clone(), agent.pid());
        thread::spawn(move || {
            let mut peak = 0;
            while !stop.load(Ordering::SeqCst) {
                peak = peak.max(fd_count(pid));
                thread::sleep(Duration::from_millis(20));
            }
            peak
        })
    };
    let out_ns = lab.ns(Node::Outside);
    let attack_started = Instant::now();
    let attackers: Vec<_> = ATTACKERS
        .iter()
        .map(|&from| {
            let ns = out_ns.clone();
            thread::spawn(move || {
                natlab::in_netns(&ns, || {
                    let mut answers = Vec::new();
                    let mut held = Vec::new();
                    for _ in 0..REQUESTS_PER_ADDRESS {
                        match faked_request(from, "open") {
                            Ok((answer, ws)) => {
                                answers.push(answer);
                                held.push(ws);
                            }
                            Err(e) => answers.push(serde_json::json!({ "failed": e })),
                        }
                    }
                    (answers, held)
                })
            })
        })
        .collect();
    // A real client connects while the attack runs.
    thread::sleep(Duration::from_millis(300));
    let attacked_setup = real_connect(&lab, "open");
    let mut answers = Vec::new();
    let mut held = Vec::new();
    for a in attackers {
        let (mut got, ws) = a.join().expect("attacker thread");
        answers.append(&mut got);
        held.push(ws);
    }
    let attack_lasted = attack_started.elapsed();
    // The birthday sockets of the punches it did get live until their deadline.
    thread::sleep(Duration::from_secs(6));
    stop.store(true, Ordering::SeqCst);
    let peak_fds = sampler.join().expect("sampler");
    drop(held);

    let birthdays = answers
        .iter()
        .filter(|a| a["type"] == "punch" && a["strategy"] == "birthday_hard")
        .count();
    let busy = answers.iter().filter(|a| a["code"] == "busy").count();
    eprintln!(
        "{} faked requests in {attack_lasted:?}: {birthdays} birthday orders, {busy} refused busy; \
         agent descriptors {base_fds} before, peak {peak_fds}; real connect setup {base_setup:?} \
         before, {attacked_setup:?} under attack",
        answers.len()
    );
    let odd: Vec<_> = answers
        .iter()
        .filter(|a| a["type"] != "punch" && a["code"] != "busy")
        .collect();
    assert!(odd.is_empty(), "unexpected answers: {odd:?}");
    assert_eq!(birthdays + busy, ATTACKERS.len() * REQUESTS_PER_ADDRESS);
    // Two birthday punches at once toward the agent, each counted for at most 6 s: the
    // attack lasts a few seconds, so a handful at most in all.
    let windows = attack_lasted.as_secs() as usize / 6 + 1;
    assert!(
        birthdays <= 2 * windows,
        "{birthdays} birthday punches ordered in {attack_lasted:?}"
    );
    let bound = base_fds + 2 * p2pnc::defaults::EASY_PROBES + 256;
    assert!(
        peak_fds <= bound,
        "the agent held {peak_fds} descriptors (at most {bound} allowed)"
    );
    let normal = base_setup * 3 + Duration::from_millis(500);
    assert!(
        attacked_setup <= normal,
        "under attack a real connect took {attacked_setup:?} (without: {base_setup:?})"
    );
}
