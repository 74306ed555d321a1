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
        Setup::start_with(Nat::RestrictedDrop, Nat::RestrictedDrop, &[], &[], extra)
    }

    /// The lab with these NATs in front of A and B, the server with `server_args`, the agent
    /// with `agent_args`.
    fn start_with(
        nat_a: Nat,
        nat_b: Nat,
        server_args: &[&str],
        agent_args: &[&str],
        extra: &[&str],
    ) -> Setup {
        let lab = Lab::new(
            LabConfig::new(nat_a, nat_b)
                .delays(DELAY_MS, DELAY_MS, DELAY_MS)
                .second_hosts(false),
        );
        let server = lab.start_server_with(server_args);
        let echo = EchoServer::start(
            &lab,
            Node::Host(Site::B),
            SocketAddr::from(([127, 0, 0, 1], SVC_PORT)),
        );
        let agent = lab.start_agent_with(
            Node::Host(Site::B),
            "svc",
            SVC_PORT,
            Auth::Secret(SECRET),
            agent_args,
        );
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

/// Chunks a connection sends (and reads back) before the path is cut under it.
const CHUNKS_BEFORE_CUT: usize = 4;
const CHUNK: usize = 64 << 10;
/// How soon a stream cut off mid-transfer must fail: the probe of unanswered traffic (2 s)
/// and the ping timeout (5 s), with room for a loaded machine.
const MID_STREAM_FAIL_WITHIN: Duration = Duration::from_secs(12);
/// Local connections at once on one warm path.
const CONCURRENT: usize = 8;
/// `expose --admin` port on host B's loopback.
const AGENT_ADMIN_PORT: u16 = 50319;
/// `--warm-idle` of the idle test, and how long past it the path may take to close.
const IDLE_SECS: u64 = 3;
const IDLE_SLACK: Duration = Duration::from_secs(3);

impl Setup {
    /// A local TCP connection into `connect --listen` on host A (its socket lives in A's
    /// namespace; its I/O may run anywhere).
    fn open(&self) -> std::io::Result<TcpStream> {
        let listen = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, LISTEN_PORT));
        in_netns(&self.lab.ns(Node::Host(Site::A)), || {
            let s = TcpStream::connect_timeout(&listen, CONNECTION_TIMEOUT)?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(CONNECTION_TIMEOUT))?;
            s.set_write_timeout(Some(CONNECTION_TIMEOUT))?;
            Ok(s)
        })
    }

    /// Established TCP connections from host A to B's public address: the warm path's.
    fn paths_to_b(&self) -> usize {
        let dst = self.lab.wan_ip(Site::B);
        self.lab
            .sh(
                Node::Host(Site::A),
                &format!("ss -Htn state established dst {dst}"),
            )
            .lines()
            .filter(|l| !l.trim().is_empty())
            .count()
    }
}

#[natlab::lab_test]
fn a_path_cut_mid_stream_fails_its_open_streams_and_the_next_connection_rebuilds() {
    let s = Setup::start(&[]);
    s.connection(1)
        .unwrap_or_else(|e| panic!("the connection that builds the path: {e}{}", s.ctx()));
    let mut conn = s
        .open()
        .unwrap_or_else(|e| panic!("local connect: {e}{}", s.ctx()));
    let mut back = vec![0u8; CHUNK];
    let mut chunk = 0u64;
    let mut cut = None;
    let failure = loop {
        if chunk == CHUNKS_BEFORE_CUT as u64 {
            s.lab.cut_uplink(Site::B);
            cut = Some(Instant::now());
        }
        let payload = pattern(500 + chunk, CHUNK);
        if let Err(e) = conn.write_all(&payload) {
            break e;
        }
        match conn.read_exact(&mut back) {
            Err(e) => break e,
            Ok(()) => assert!(
                back == payload,
                "chunk {chunk} came back different{}",
                s.ctx()
            ),
        }
        chunk += 1;
        assert!(
            cut.is_none_or(|c| c.elapsed() < 2 * MID_STREAM_FAIL_WITHIN),
            "the stream still carries bytes over a cut path{}",
            s.ctx()
        );
    };
    let cut = cut.unwrap_or_else(|| {
        panic!(
            "the stream failed before the cut, after {chunk} chunks: {failure}{}",
            s.ctx()
        )
    });
    let failed_after = cut.elapsed();
    s.lab.restore_uplink(Site::B);
    eprintln!("the open stream failed {failed_after:?} after the cut: {failure}");
    assert!(
        failed_after < MID_STREAM_FAIL_WITHIN,
        "the open stream failed only {failed_after:?} after the cut{}",
        s.ctx()
    );
    let reports = s.wait_reports(2);
    let why = reports
        .iter()
        .find_map(|r| r["broke"].as_str())
        .unwrap_or_else(|| panic!("no report of the broken stream: {reports:#?}"));
    assert!(
        why.contains("warm path ended: no answer from the agent"),
        "{why}"
    );
    let took = s
        .connection(9)
        .unwrap_or_else(|e| panic!("the connection after the cut: {e}{}", s.ctx()));
    let reports = s.wait_reports(3);
    let last = reports.last().unwrap();
    assert_eq!(last["warm"], false, "a new path: {last}");
    assert_ne!(last["session"], reports[0]["session"], "a new session");
    assert_eq!(s.brokered(), 2, "two paths brokered{}", s.ctx());
    eprintln!(
        "the next connection built a new path: first byte after {took:?} = {:.2} RTT",
        rtts(took)
    );
}

#[natlab::lab_test]
fn concurrent_streams_on_one_path_are_byte_exact_and_half_close_each() {
    let admin = SocketAddr::from(([127, 0, 0, 1], AGENT_ADMIN_PORT));
    let admin_arg = admin.to_string();
    let s = Setup::start_with(
        Nat::RestrictedDrop,
        Nat::RestrictedDrop,
        &[],
        &["--admin", &admin_arg],
        &["--warm"],
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.brokered() == 0 {
        assert!(
            Instant::now() < deadline,
            "no path built at start{}",
            s.ctx()
        );
        thread::sleep(Duration::from_millis(50));
    }
    // Each connection writes its payload, half-closes, and reads the whole echo after its
    // own FIN: the other direction of the stream goes on.
    let results: Vec<std::io::Result<Duration>> = thread::scope(|scope| {
        let handles: Vec<_> = (0..CONCURRENT)
            .map(|i| {
                let s = &s;
                scope.spawn(move || s.connection(700 + i as u64))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("connection thread"))
            .collect()
    });
    for (i, r) in results.iter().enumerate() {
        if let Err(e) = r {
            panic!("concurrent connection #{i}: {e}{}", s.ctx());
        }
    }
    let reports = s.wait_reports(CONCURRENT);
    assert_eq!(reports.len(), CONCURRENT, "reports{}", s.ctx());
    let session = &reports[0]["session"];
    assert!(
        reports
            .iter()
            .all(|r| r["session"] == *session && r["warm"] == true && r["ok"] == true),
        "all on the one warm path: {reports:#?}"
    );
    assert_eq!(s.brokered(), 1, "one session brokered{}", s.ctx());
    assert_eq!(s.echo.connections(), CONCURRENT as u64);
    // The agent's admin listener counts them: one path open, CONCURRENT streams carried.
    let (status, metrics) = s
        .lab
        .http_get(Node::Host(Site::B), admin, "/metrics", CONNECTION_TIMEOUT)
        .unwrap_or_else(|e| panic!("the agent's /metrics: {e}{}", s.ctx()));
    assert_eq!(status, 200, "{metrics}");
    for line in [
        "p2pnc_agent_warm_paths_open 1".to_string(),
        format!("p2pnc_agent_warm_streams_total {CONCURRENT}"),
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line:?} not in the agent's /metrics:\n{metrics}"
        );
    }
}

#[natlab::lab_test]
fn an_idle_path_closes_after_warm_idle_and_the_next_connection_builds_another() {
    let idle = IDLE_SECS.to_string();
    let s = Setup::start(&["--warm-idle", &idle]);
    s.connection(1)
        .unwrap_or_else(|e| panic!("the connection that builds the path: {e}{}", s.ctx()));
    assert_eq!(s.paths_to_b(), 1, "the warm path is up{}", s.ctx());
    let done = Instant::now();
    let deadline = done + Duration::from_secs(IDLE_SECS) + IDLE_SLACK;
    while s.paths_to_b() > 0 {
        assert!(
            Instant::now() < deadline,
            "the warm path still open {:?} after its last stream{}",
            done.elapsed(),
            s.ctx()
        );
        thread::sleep(Duration::from_millis(100));
    }
    let closed_after = done.elapsed();
    eprintln!("the idle path closed {closed_after:?} after its last stream");
    assert!(
        closed_after >= Duration::from_secs(IDLE_SECS) - Duration::from_millis(500),
        "closed after {closed_after:?}, before --warm-idle {IDLE_SECS}{}",
        s.ctx()
    );
    s.connection(2)
        .unwrap_or_else(|e| panic!("the connection after the idle close: {e}{}", s.ctx()));
    let reports = s.wait_reports(2);
    assert_eq!(reports[1]["warm"], false, "a new path: {reports:#?}");
    assert_ne!(
        reports[1]["session"], reports[0]["session"],
        "a new session"
    );
    assert_eq!(s.brokered(), 2, "two paths brokered{}", s.ctx());
}

/// How long a relayed session may take to move new streams to a direct path once one is
/// possible: the first background try comes 5 s after the relayed path is up, the next 10 s
/// later; room for a loaded machine.
const UPGRADE_WITHIN: Duration = Duration::from_secs(30);

#[natlab::lab_test]
fn a_relayed_session_moves_new_streams_to_a_direct_path_once_one_exists() {
    // Both ends behind symmetric NATs: no direct path, the session starts on the relay.
    let sym = Nat::Symmetric { rst: false };
    let s = Setup::start_with(sym, sym, &["--relay"], &[], &[]);
    let mut held = s
        .open()
        .unwrap_or_else(|e| panic!("local connect: {e}{}", s.ctx()));
    held.write_all(b"r").unwrap();
    let mut first = [0u8; 1];
    held.read_exact(&mut first)
        .unwrap_or_else(|e| panic!("the first (relayed) connection: {e}{}", s.ctx()));
    s.connection(2)
        .unwrap_or_else(|e| panic!("a connection on the relayed path: {e}{}", s.ctx()));
    let reports = s.wait_reports(1);
    assert_eq!(
        reports[0]["path"], "relayed",
        "the session starts on the relay: {reports:#?}"
    );
    // A's router becomes a port-restricted cone: a direct path exists now (birthday
    // punching against B's symmetric NAT).
    s.lab.set_nat(Site::A, Nat::RestrictedDrop);
    let changed = Instant::now();
    let mut seed = 10;
    let upgraded = loop {
        s.connection(seed)
            .unwrap_or_else(|e| panic!("connection {seed} during the upgrade: {e}{}", s.ctx()));
        // Connection 2 and those from 10 on have ended; the held one has not.
        let reports = s.wait_reports((seed - 8) as usize);
        let last = reports.last().cloned().unwrap();
        if last["path"] == "direct" {
            break last;
        }
        assert!(
            changed.elapsed() < UPGRADE_WITHIN,
            "new connections still relayed {:?} after the NAT became passable: \
             {reports:#?}{}",
            changed.elapsed(),
            s.ctx()
        );
        seed += 1;
        thread::sleep(Duration::from_millis(500));
    };
    eprintln!(
        "new connections went direct {:?} after the NAT became passable: {upgraded}",
        changed.elapsed()
    );
    assert_eq!(
        upgraded["warm"], true,
        "a stream on the new path: {upgraded}"
    );
    // The connection opened on the relay goes on there, byte-exact, half-close kept.
    let payload = pattern(77, PAYLOAD);
    held.write_all(&payload).unwrap();
    held.shutdown(Shutdown::Write).unwrap();
    let mut back = Vec::new();
    held.read_to_end(&mut back)
        .unwrap_or_else(|e| panic!("the relayed connection after the upgrade: {e}{}", s.ctx()));
    assert!(
        back == payload,
        "the relayed connection's echo differs: {} of {PAYLOAD} bytes{}",
        back.len(),
        s.ctx()
    );
    let reports = s.wait_reports((seed - 7) as usize);
    let relayed_done = reports
        .iter()
        .filter(|r| r["path"] == "relayed" && r["ok"] == true)
        .count();
    assert!(
        relayed_done >= 2,
        "the relayed connections' reports: {reports:#?}"
    );
}
