//! Warm paths in the NAT lab: `p2pnc connect --listen` keeps one punched path to the service
//! and carries every later local connection over it, with no server round trip and no punch;
//! when the path breaks, the connection that meets it fails at once with a reason, and the
//! next one builds a new path.
//!
//! Both sites sit behind port-restricted NATs that drop unsolicited packets, 20 ms from the
//! internet each, the server too: a round trip between any two hosts takes 40 ms.
//!
//! They need root and iproute2, nftables and iptables; without root they print
//! `skipped: NAT lab needs root (...)` and return, except under CI, where they fail.

#![cfg(target_os = "linux")]

mod lab_support;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use lab_support::{Auth, P2pncLab, server_url};
use natlab::{EchoServer, Lab, LabConfig, Nat, Node, Proc, Site, in_netns, pattern};

const SECRET: &str = "lab-warm-secret-04d1";
/// Port of the echo service on host B's loopback.
const SVC_PORT: u16 = 50302;
/// `connect --listen` port on host A's loopback.
const LISTEN_PORT: u16 = 9000;
/// One-way delay of every internet attachment: RTT 40 ms between any two hosts.
const DELAY_MS: u32 = 20;
const RTT: Duration = Duration::from_millis(2 * DELAY_MS as u64);
/// Sequential local connections through one `connect --listen`.
const CONNECTIONS: usize = 20;
/// Bytes each connection echoes after its first byte.
const PAYLOAD: usize = 64 << 10;
/// Pause between two local connections: an application's pace, below the age at which a
/// stream's open probes the path.
const PACE: Duration = Duration::from_millis(100);
/// Time allowed for one local connection (setup and echo).
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(20);
/// How long `connect --listen` takes to come up.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// The lab, its server, the echo service and its agent on B, and `connect --listen` on A
/// (with `extra` arguments).
struct Setup {
    lab: Lab,
    _server: Proc,
    echo: EchoServer,
    agent: Proc,
    listen: Proc,
}

impl Setup {
    fn start(extra: &[&str]) -> Setup {
        let lab = Lab::new(
            LabConfig::new(Nat::RestrictedDrop, Nat::RestrictedDrop)
                .delays(DELAY_MS, DELAY_MS, DELAY_MS)
                .second_hosts(false),
        );
        let server = lab.start_server();
        let echo = EchoServer::start(
            &lab,
            Node::Host(Site::B),
            SocketAddr::from(([127, 0, 0, 1], SVC_PORT)),
        );
        let agent = lab.start_agent(Node::Host(Site::B), "svc", SVC_PORT, Auth::Secret(SECRET));
        let listen = format!("127.0.0.1:{LISTEN_PORT}");
        let spec = lab
            .p2pnc("connect-listen-warm")
            .args(["connect", "--report", "json", "--server", &server_url()])
            .args(["--peer", "svc", "--secret", SECRET, "--listen", &listen])
            .args(extra);
        let mut p = lab.spawn_cmd(Node::Host(Site::A), spec);
        let deadline = Instant::now() + START_TIMEOUT;
        while !lab.listening(Node::Host(Site::A), LISTEN_PORT) {
            if let Some(s) = p.try_status() {
                panic!("connect --listen exited ({s}); stderr:\n{}", p.stderr());
            }
            assert!(
                Instant::now() < deadline,
                "connect --listen not listening within {START_TIMEOUT:?}:\n{}",
                p.stderr()
            );
            thread::sleep(Duration::from_millis(20));
        }
        Setup {
            lab,
            _server: server,
            echo,
            agent,
            listen: p,
        }
    }

    /// One local connection on host A: time from the start of its TCP connect to the first
    /// echoed byte, then `PAYLOAD` bytes echoed byte-exact and a clean end.
    fn connection(&self, seed: u64) -> std::io::Result<Duration> {
        let listen = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, LISTEN_PORT));
        in_netns(&self.lab.ns(Node::Host(Site::A)), || {
            let started = Instant::now();
            let mut s = TcpStream::connect_timeout(&listen, CONNECTION_TIMEOUT)?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(CONNECTION_TIMEOUT))?;
            s.write_all(&[seed as u8])?;
            let mut first = [0u8; 1];
            s.read_exact(&mut first)?;
            let took = started.elapsed();
            if first[0] != seed as u8 {
                return Err(std::io::Error::other("the first echoed byte differs"));
            }
            let payload = pattern(seed, PAYLOAD);
            s.write_all(&payload)?;
            s.shutdown(Shutdown::Write)?;
            let mut back = Vec::new();
            s.read_to_end(&mut back)?;
            if back != payload {
                return Err(std::io::Error::other(format!(
                    "echo differs: {} of {PAYLOAD} bytes back",
                    back.len()
                )));
            }
            Ok(took)
        })
    }

    /// Context for a failed assertion.
    fn ctx(&self) -> String {
        format!(
            "\n--- connect --listen:\n{}\n--- agent:\n{}",
            self.listen.stderr(),
            self.agent.stderr()
        )
    }

    /// The `connect` reports written so far, as JSON.
    fn reports(&self) -> Vec<serde_json::Value> {
        self.listen
            .stderr()
            .lines()
            .filter(|l| l.starts_with('{'))
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|r| r["report"] == "connect")
            .collect()
    }

    /// Waits until at least `n` reports are there.
    fn wait_reports(&self, n: usize) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let r = self.reports();
            if r.len() >= n || Instant::now() >= deadline {
                return r;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sessions the server brokered (each client reports its outcome once).
    fn brokered(&self) -> usize {
        let status = self.lab.server_status();
        status["recent"].as_array().map_or(0, Vec::len)
    }
}

fn rtts(d: Duration) -> f64 {
    d.as_secs_f64() / RTT.as_secs_f64()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[natlab::lab_test]
fn later_connections_ride_the_warm_path_in_about_one_round_trip() {
    let s = Setup::start(&[]);
    let rdv_before = s.lab.rdv_bytes();
    let mut times = Vec::new();
    for i in 0..CONNECTIONS {
        let took = s
            .connection(100 + i as u64)
            .unwrap_or_else(|e| panic!("local connection #{i}: {e}{}", s.ctx()));
        times.push(took);
        thread::sleep(PACE);
    }
    let rdv = s.lab.rdv_bytes() - rdv_before;
    let later = median(times[1..].to_vec());
    eprintln!(
        "first connection {:?} = {:.2} RTT; later ones: median {:?} = {:.2} RTT, max {:?}; \
         rendezvous host traffic {rdv} B",
        times[0],
        rtts(times[0]),
        later,
        rtts(later),
        times[1..].iter().max().unwrap()
    );
    let reports = s.wait_reports(CONNECTIONS);
    assert_eq!(reports.len(), CONNECTIONS, "reports{}", s.ctx());
    let warm = reports.iter().filter(|r| r["warm"] == true).count();
    assert_eq!(
        warm,
        CONNECTIONS - 1,
        "all but the first on the warm path{}",
        s.ctx()
    );
    let session = &reports[0]["session"];
    assert!(
        reports
            .iter()
            .all(|r| r["session"] == *session && r["path"] == "direct" && r["ok"] == true),
        "one direct path for all: {reports:#?}"
    );
    assert_eq!(
        s.brokered(),
        1,
        "one session brokered by the server{}",
        s.ctx()
    );
    assert_eq!(s.echo.connections(), CONNECTIONS as u64);
    // No payload crossed the rendezvous host: one punch's control traffic only.
    assert!(
        rdv < (PAYLOAD as u64) / 2,
        "rendezvous host carried {rdv} B{}",
        s.ctx()
    );
    // The precise figure is the bench's (`cargo bench --bench lab -- warm`); here a bound
    // that a machine under load still meets: a warm connection is one round trip plus
    // processing.
    assert!(
        later < 2 * RTT,
        "later connections took {later:?} (median) = {:.2} RTT{}",
        rtts(later),
        s.ctx()
    );
    assert!(
        times[0] > later,
        "the first connection ({:?}) punched, the later ones did not ({later:?})",
        times[0]
    );
}

#[natlab::lab_test]
fn a_broken_path_fails_the_connection_that_meets_it_and_the_next_one_rebuilds() {
    let s = Setup::start(&["--warm"]);
    // `--warm` builds the path at start: even the first connection rides it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.brokered() == 0 {
        assert!(
            Instant::now() < deadline,
            "no path built at start{}",
            s.ctx()
        );
        thread::sleep(Duration::from_millis(50));
    }
    for i in 0..2 {
        s.connection(i)
            .unwrap_or_else(|e| panic!("local connection #{i}: {e}{}", s.ctx()));
    }
    // Quiet long enough that the next stream asks the path whether it is still there.
    thread::sleep(Duration::from_millis(2500));
    s.lab.cut_uplink(Site::B);
    let cut = Instant::now();
    let broken = s.connection(7);
    let failed_after = cut.elapsed();
    s.lab.restore_uplink(Site::B);
    assert!(
        broken.is_err(),
        "a connection over the cut path succeeded{}",
        s.ctx()
    );
    assert!(
        failed_after < Duration::from_secs(8),
        "the connection on the dead path failed only after {failed_after:?}{}",
        s.ctx()
    );
    let reports = s.wait_reports(3);
    let why = reports
        .iter()
        .find_map(|r| r["broke"].as_str())
        .unwrap_or_else(|| panic!("no report of the broken connection: {reports:#?}"));
    assert!(
        why.contains("warm path ended: no answer from the agent"),
        "{why}"
    );
    eprintln!("the dead path was found {failed_after:?} after the cut: {why}");
    // The next connection builds a new path and goes through.
    let took = s
        .connection(8)
        .unwrap_or_else(|e| panic!("the connection after the break: {e}{}", s.ctx()));
    let reports = s.wait_reports(4);
    let last = reports.last().unwrap();
    assert_eq!(last["warm"], false, "a new path: {last}");
    assert_ne!(last["session"], reports[0]["session"], "a new session");
    assert_eq!(s.brokered(), 2, "two paths brokered{}", s.ctx());
    eprintln!(
        "the next connection built a new path: first byte after {took:?} = {:.2} RTT",
        rtts(took)
    );
}
