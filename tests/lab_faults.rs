//! Faults in the NAT lab: the rendezvous server restarts, an agent dies (idle and in the
//! middle of a transfer), a site loses its uplink for 30 s, routers forget their connection
//! tracking, and the server is flooded with garbage while real peers connect.
//!
//! What p2pnc did is read from its `--report json` lines and the server's `/status.json`.

#![cfg(target_os = "linux")]

mod lab_support;

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::process::ExitStatus;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use lab_support::{Auth, P2pncLab, Report, SERVER_PORT};
use natlab::{Dial, EchoServer, IcmpErrors, Lab, LabConfig, Nat, Node, Proc, Site, pattern};

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

#[natlab::lab_test]
fn agents_re_register_after_a_server_restart_and_new_connects_succeed() {
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
    let c = run.connected().expect("a connect report");
    assert_eq!(c.path, "direct");
}

#[natlab::lab_test]
fn a_killed_agent_goes_offline_at_once_and_clients_are_told_within_a_second() {
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
    assert_eq!(
        run.failure_code().as_deref(),
        Some("peer_offline"),
        "{}",
        run.stderr
    );
    assert!(
        run.elapsed < Duration::from_secs(1),
        "the refusal took {:?}",
        run.elapsed
    );
}

// ---------------------------------------------------------------------------------------------
// A client streaming through `p2pnc connect --stdio` to an echo service
// ---------------------------------------------------------------------------------------------

/// Size of the pattern an [`EchoStream`] sends over and over.
const STREAM_PATTERN: usize = 1 << 20;
/// Size of each write into `connect`'s stdin.
const STREAM_WRITE: usize = 64 << 10;

/// `p2pnc connect --stdio` to an echo service, fed without pause by a writer thread until
/// [`EchoStream::finish`]; a reader thread checks that what comes back is an exact prefix of
/// what was sent.
struct EchoStream {
    proc: Proc,
    /// Bytes `connect` took on its stdin.
    sent: Arc<AtomicU64>,
    /// Bytes echoed back, every one checked.
    echoed: Arc<AtomicU64>,
    /// Offset of the first echoed byte that differs from what was sent (`u64::MAX`: none).
    mismatch: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    /// While set, the writer sends nothing.
    paused: Arc<AtomicBool>,
    /// Set by the writer while it is paused and between writes.
    idle: Arc<AtomicBool>,
    /// Returns how writing ended.
    writer: Option<JoinHandle<String>>,
    reader: Option<JoinHandle<()>>,
}

impl EchoStream {
    fn start(lab: &Lab, node: Node, peer: &str, seed: u64) -> EchoStream {
        let url = lab_support::server_url();
        let spec = lab
            .p2pnc(&format!("stream-{peer}"))
            .args(["connect", "--report", "json", "--server", &url])
            .args(["--peer", peer, "--secret", SECRET, "--stdio"])
            .pipe_stdin()
            .pipe_stdout();
        let mut proc = lab.spawn_cmd(node, spec);
        let mut stdin = proc.take_stdin().expect("piped stdin");
        let mut stdout = proc.take_stdout().expect("piped stdout");
        let data = Arc::new(pattern(seed, STREAM_PATTERN));
        let sent = Arc::new(AtomicU64::new(0));
        let echoed = Arc::new(AtomicU64::new(0));
        let mismatch = Arc::new(AtomicU64::new(u64::MAX));
        let stop = Arc::new(AtomicBool::new(false));
        let paused = Arc::new(AtomicBool::new(false));
        let idle = Arc::new(AtomicBool::new(false));
        let writer = {
            let (data, sent, stop, paused, idle) = (
                data.clone(),
                sent.clone(),
                stop.clone(),
                paused.clone(),
                idle.clone(),
            );
            thread::spawn(move || {
                let mut at = 0;
                while !stop.load(Ordering::SeqCst) {
                    if paused.load(Ordering::SeqCst) {
                        idle.store(true, Ordering::SeqCst);
                        thread::sleep(Duration::from_millis(2));
                        continue;
                    }
                    idle.store(false, Ordering::SeqCst);
                    if let Err(e) = stdin.write_all(&data[at..at + STREAM_WRITE]) {
                        return format!("write failed: {e}");
                    }
                    sent.fetch_add(STREAM_WRITE as u64, Ordering::SeqCst);
                    at = (at + STREAM_WRITE) % STREAM_PATTERN;
                }
                "stopped".to_string()
            })
        };
        let reader = {
            let (echoed, mismatch) = (echoed.clone(), mismatch.clone());
            thread::spawn(move || {
                let mut buf = vec![0u8; STREAM_WRITE];
                let mut pos = 0u64;
                loop {
                    let n = match stdout.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    for (i, b) in buf[..n].iter().enumerate() {
                        let at = pos + i as u64;
                        if *b != data[(at % STREAM_PATTERN as u64) as usize] {
                            mismatch.store(at, Ordering::SeqCst);
                            return;
                        }
                    }
                    pos += n as u64;
                    echoed.store(pos, Ordering::SeqCst);
                }
            })
        };
        EchoStream {
            proc,
            sent,
            echoed,
            mismatch,
            stop,
            paused,
            idle,
            writer: Some(writer),
            reader: Some(reader),
        }
    }

    /// Stops writing for now, and waits up to `timeout` until everything sent came back.
    /// Returns false if it did not.
    fn pause(&mut self, timeout: Duration) -> bool {
        self.paused.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + timeout;
        // A write in progress finishes first.
        while !self.idle.load(Ordering::SeqCst) {
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(2));
        }
        let all = self.sent();
        self.wait_echoed(all, deadline.saturating_duration_since(Instant::now()))
    }

    fn resume(&self) {
        self.idle.store(false, Ordering::SeqCst);
        self.paused.store(false, Ordering::SeqCst);
    }

    fn sent(&self) -> u64 {
        self.sent.load(Ordering::SeqCst)
    }

    fn echoed(&self) -> u64 {
        self.echoed.load(Ordering::SeqCst)
    }

    /// Panics if an echoed byte differed from the byte sent at that offset.
    fn assert_exact(&self) {
        let at = self.mismatch.load(Ordering::SeqCst);
        assert!(
            at == u64::MAX,
            "the echo differs from what was sent at byte {at}"
        );
    }

    /// Polls until `n` bytes in all were echoed; false if `timeout` passed first or the
    /// process exited.
    fn wait_echoed(&mut self, n: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.echoed() < n {
            if Instant::now() >= deadline || self.proc.try_status().is_some() {
                return self.echoed() >= n;
            }
            thread::sleep(Duration::from_millis(5));
        }
        true
    }

    /// Waits for the process to exit by itself; `None` after `timeout`.
    fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.proc.wait_timeout(timeout)
    }

    fn stderr(&self) -> String {
        self.proc.stderr()
    }

    /// Stops writing (stdin closes, which half-closes the stream), waits up to `timeout` for
    /// the process to exit, kills it after that, and joins both threads. Returns the exit
    /// status (`None`: it had to be killed) and how writing ended.
    fn finish(&mut self, timeout: Duration) -> (Option<ExitStatus>, String) {
        self.stop.store(true, Ordering::SeqCst);
        let status = self.proc.wait_timeout(timeout);
        self.proc.kill();
        let how = self
            .writer
            .take()
            .map(|w| w.join().expect("writer thread"))
            .unwrap_or_default();
        if let Some(r) = self.reader.take() {
            r.join().expect("reader thread");
        }
        (status, how)
    }
}

impl Drop for EchoStream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.proc.kill();
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

/// The `connect` report of a p2pnc client, once it has ended.
fn connect_report(stderr: &str) -> Option<Report> {
    lab_support::reports(stderr)
        .into_iter()
        .find(|r| r.report == "connect")
}

/// How a client's connection ended, from its report: `failed CODE: MESSAGE`, `broke: WHY`,
/// `ended`, or `no report`.
fn how_it_ended(stderr: &str) -> String {
    match connect_report(stderr) {
        Some(Report {
            ok: false,
            code,
            message,
            ..
        }) => format!(
            "failed {}: {}",
            code.unwrap_or_default(),
            message.unwrap_or_default()
        ),
        Some(Report {
            broke: Some(why), ..
        }) => format!("broke: {why}"),
        Some(_) => "ended".into(),
        None => "no report".into(),
    }
}

/// The path of a client's connection, from its report.
fn reported_path(stderr: &str) -> String {
    connect_report(stderr)
        .and_then(|r| r.connected())
        .map(|c| c.path)
        .unwrap_or_else(|| panic!("no `ok` connect report in:\n{stderr}"))
}

/// When the server registered `id` (its `/status.json` `since_unix_ms`), if it is online.
/// A new value means the agent registered again.
fn registered_since(lab: &Lab, id: &str) -> Option<u64> {
    lab_support::service(&lab.server_status_of(id), id).and_then(|s| s["since_unix_ms"].as_u64())
}

// ---------------------------------------------------------------------------------------------
// kill -9 of an agent in the middle of a transfer
// ---------------------------------------------------------------------------------------------

/// When the agent dies, host B's kernel closes its end of the stream: with unread data in the
/// receive queue it sends a RST at once; with an empty queue it sends a FIN, and a RST for the
/// client's next segment. Both NATs keep the flow, so either reaches the client. A client that
/// is still sending therefore fails (EPIPE or ECONNRESET) within about one trip; the bytes
/// still buffered in the dead agent are lost, and the client's error is the only sign of it.
/// (A client that had already finished sending and then sees only the FIN cannot tell a crash
/// from a clean close: TCP gives it nothing more to go on.)
#[natlab::lab_test]
fn an_agent_killed_mid_transfer_ends_the_clients_stream_with_an_error_at_once() {
    let lab = Lab::new(LabConfig::new(Nat::RestrictedDrop, Nat::RestrictedRst).delays(20, 20, 20));
    let _server = lab.start_server();
    let echo = EchoServer::start(
        &lab,
        Node::Host(Site::B),
        SocketAddr::from(([127, 0, 0, 1], SVC_PORT)),
    );
    let mut agent = lab.start_agent(Node::Host(Site::B), "svc", SVC_PORT, Auth::Secret(SECRET));
    // What host B's kernel sends toward the client when the agent dies, seen on B's router
    // before its NAT (the control channel to the server is not counted).
    let to_client = format!("iifname \"lan\" ip daddr {}", lab.wan_ip(Site::A));
    lab.watch(
        Node::Router(Site::B),
        "rst",
        &format!("{to_client} tcp flags & rst == rst"),
    );
    lab.watch(
        Node::Router(Site::B),
        "fin",
        &format!("{to_client} tcp flags & fin == fin"),
    );

    let mut stream = EchoStream::start(&lab, Node::Host(Site::A), "svc", 11);
    let moving = stream.wait_echoed(8 << 20, Duration::from_secs(30));
    assert!(
        moving,
        "the stream did not get going: {} bytes echoed\n--- connect:\n{}",
        stream.echoed(),
        stream.stderr()
    );

    let rst_before = lab.watched(Node::Router(Site::B), "rst");
    let fin_before = lab.watched(Node::Router(Site::B), "fin");
    agent.kill();
    let killed = Instant::now();
    let status = stream.wait_exit(Duration::from_secs(10));
    let took = killed.elapsed();
    let (rst, fin) = (
        lab.watched(Node::Router(Site::B), "rst") - rst_before,
        lab.watched(Node::Router(Site::B), "fin") - fin_before,
    );
    let (sent, echoed, served) = (stream.sent(), stream.echoed(), echo.bytes());
    let stderr = stream.stderr();
    let (_, how) = stream.finish(Duration::from_secs(1));
    eprintln!(
        "agent killed mid-transfer: connect exited {status:?} {took:?} after kill -9 \
         ({}); host B sent {rst} RST and {fin} FIN toward the client; the client had taken \
         {sent} bytes, the service got {served}, {echoed} came back; writer: {how}",
        how_it_ended(&stderr)
    );
    let status = status.unwrap_or_else(|| {
        panic!("connect still running 10 s after the agent was killed\n--- connect:\n{stderr}")
    });
    assert!(
        !status.success(),
        "connect exited 0 although the agent died with {} bytes not delivered\n{stderr}",
        sent - served
    );
    assert_eq!(
        reported_path(&stderr),
        "direct",
        "the stream was not direct:\n{stderr}"
    );
    assert!(
        how_it_ended(&stderr).starts_with("broke: "),
        "connect failed without reporting that the stream broke:\n{stderr}"
    );
    assert!(
        rst >= 1,
        "host B sent no RST toward the client ({fin} FIN) after the agent died"
    );
    assert!(
        served < sent,
        "the service got every byte ({served} of {sent}): the transfer was not cut mid-way"
    );
    stream.assert_exact();
}

// ---------------------------------------------------------------------------------------------
// A site cut off the internet for 30 s
// ---------------------------------------------------------------------------------------------

/// How long the agent's site stays cut off.
const OUTAGE: Duration = Duration::from_secs(30);

#[natlab::lab_test]
fn an_agent_cut_off_for_30_s_recovers_by_itself() {
    let lab = Lab::new(LabConfig::new(Nat::RestrictedRst, Nat::RestrictedDrop).delays(20, 20, 20));
    let _server = lab.start_server();
    let svc = SocketAddr::from(([127, 0, 0, 1], SVC_PORT));
    let _echo = EchoServer::start(&lab, Node::Host(Site::B), svc);
    let agent = lab.start_agent(Node::Host(Site::B), "svc", SVC_PORT, Auth::Secret(SECRET));
    // A second agent on the other site, which the cut does not touch: it must stay registered
    // on its first control connection all along (an idle channel is not a dead one).
    let _echo2 = EchoServer::start(&lab, Node::Host2(Site::A), svc);
    let bystander = lab.start_agent(
        Node::Host2(Site::A),
        "bystander",
        SVC_PORT,
        Auth::Secret(SECRET),
    );
    let (svc_since, bystander_since) = (
        registered_since(&lab, "svc"),
        registered_since(&lab, "bystander"),
    );
    let payload = pattern(3, 64 << 10);
    let before = lab.connect_stdio(
        Node::Host(Site::A),
        "svc",
        Some(SECRET),
        &payload,
        Duration::from_secs(20),
    );
    assert!(
        before.success() && before.stdout == payload,
        "connect before the cut failed:\n{}",
        before.stderr
    );

    lab.cut_uplink(Site::B);
    let cut = Instant::now();
    // A client asking for the agent while its site is dark.
    thread::sleep(Duration::from_secs(3));
    let asked = cut.elapsed();
    let during = lab.connect_stdio(
        Node::Host(Site::A),
        "svc",
        Some(SECRET),
        b"not delivered",
        Duration::from_secs(20),
    );
    eprintln!(
        "connect {asked:?} into the outage: exit {:?} after {:?}: {}",
        during.status,
        during.elapsed,
        how_it_ended(&during.stderr)
    );
    // The server's view of the agent until the uplink comes back.
    let mut offline_at = None;
    while cut.elapsed() < OUTAGE {
        if offline_at.is_none() && lab.peer_status("svc").ok() == Some(404) {
            offline_at = Some(cut.elapsed());
        }
        thread::sleep(Duration::from_millis(250));
    }
    lab.restore_uplink(Site::B);
    let restored = Instant::now();
    eprintln!(
        "uplink of site B restored after {:?}; server listed the agent as offline: {}",
        cut.elapsed(),
        offline_at.map_or("not during the outage".to_string(), |t| format!(
            "from {t:?} into the outage"
        ))
    );

    // Recovery: either the agent registers again, or its control connection, which neither
    // end gave up, catches up in both directions (nothing unacknowledged on either end).
    let agent_to_server = format!("{}:{SERVER_PORT}", lab.rdv_ip());
    let server_to_agent = lab.wan_ip(Site::B).to_string();
    let mut caught_up = (None, None);
    let recovered = loop {
        let since = restored.elapsed();
        assert!(
            since < Duration::from_secs(90),
            "the agent did not recover within 90 s after the uplink came back (registered \
             again: no; control connection caught up: agent side {:?}, server side {:?})\n\
             --- agent:\n{}",
            caught_up.0,
            caught_up.1,
            agent.stderr()
        );
        if registered_since(&lab, "svc").is_some_and(|t| Some(t) != svc_since) {
            break format!("registered again {since:?} after the restore");
        }
        if caught_up.0.is_none() && lab.unacked_bytes(Node::Host(Site::B), &agent_to_server) == [0]
        {
            caught_up.0 = Some(since);
        }
        if caught_up.1.is_none() && lab.unacked_bytes(Node::Rdv, &server_to_agent) == [0] {
            caught_up.1 = Some(since);
        }
        if let (Some(a), Some(s)) = caught_up {
            break format!(
                "kept its control connection, which caught up {a:?} (agent to server) and \
                 {s:?} (server to agent) after the restore"
            );
        }
        thread::sleep(Duration::from_millis(100));
    };
    let (at, failures) = until_direct(&lab, &agent, restored, Duration::from_secs(90));
    eprintln!(
        "after the restore the agent {recovered}; a connect started {at:?} after the restore \
         went direct; failures before: {failures:?}"
    );

    // The client during the outage got a clear, timely refusal.
    assert!(
        !during.success(),
        "a connect during the outage succeeded:\n{}",
        during.stderr
    );
    assert!(
        during.elapsed < Duration::from_secs(10),
        "a connect during the outage took {:?} to fail:\n{}",
        during.elapsed,
        during.stderr
    );
    let code = during.failure_code();
    assert!(
        matches!(code.as_deref(), Some("peer_offline" | "no_direct_path")),
        "unclear error during the outage: {}",
        how_it_ended(&during.stderr)
    );
    assert!(
        failures.is_empty(),
        "connects failed after the agent had recovered: {failures:?}"
    );
    assert_eq!(
        registered_since(&lab, "bystander"),
        bystander_since,
        "the agent on the other site re-registered although nothing happened to it:\n{}",
        bystander.stderr()
    );
    assert_eq!(lab.peer_status("bystander").ok(), Some(200));
}

// ---------------------------------------------------------------------------------------------
// Connection tracking flushed on a router
// ---------------------------------------------------------------------------------------------

/// Waits until a connect from host A to `svc` goes direct, trying at most every 5 s once the
/// server lists the agent; returns the time from `since` to the start of the successful
/// connect and the failures before it. Panics after `limit`.
fn until_direct(
    lab: &Lab,
    agent: &Proc,
    since: Instant,
    limit: Duration,
) -> (Duration, Vec<String>) {
    let payload = pattern(5, 64 << 10);
    let mut failures = Vec::new();
    let mut last_try: Option<Instant> = None;
    loop {
        assert!(
            since.elapsed() < limit,
            "no direct connect within {limit:?}; failures: {failures:#?}\n--- agent:\n{}",
            agent.stderr()
        );
        let due = last_try.is_none_or(|t| t.elapsed() >= Duration::from_secs(5));
        if due && lab.peer_status("svc").ok() == Some(200) {
            let at = since.elapsed();
            last_try = Some(Instant::now());
            let run = lab.connect_stdio(
                Node::Host(Site::A),
                "svc",
                Some(SECRET),
                &payload,
                Duration::from_secs(20),
            );
            if run.success() && run.stdout == payload {
                assert_eq!(reported_path(&run.stderr), "direct", "{}", run.stderr);
                return (at, failures);
            }
            failures.push(format!(
                "{at:?}: {:?} in {:?}: {}",
                run.status,
                run.elapsed,
                how_it_ended(&run.stderr)
            ));
            continue;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// What became of an established stream after a router forgot it.
#[derive(Debug, PartialEq, Eq)]
enum Fate {
    /// Bytes flowed again, this long after the flush.
    Survived(Duration),
    /// `connect` exited with an error this long after the flush.
    Failed(Duration, String),
}

/// An idle, established stream; `site`'s router flushes its connection tracking; then the
/// client sends first (so the first packet a flushed agent-side router sees comes from the
/// internet). Waits up to `limit` for the stream to move again or fail.
fn flush_under_idle_stream(
    lab: &Lab,
    stream: &mut EchoStream,
    site: Site,
    limit: Duration,
) -> Fate {
    assert!(
        stream.pause(Duration::from_secs(20)),
        "the stream did not drain before the flush: {} sent, {} echoed",
        stream.sent(),
        stream.echoed()
    );
    let drained = stream.echoed();
    lab.flush_conntrack(Node::Router(site));
    let flushed = Instant::now();
    stream.resume();
    if stream.wait_echoed(drained + (1 << 20), limit) {
        return Fate::Survived(flushed.elapsed());
    }
    match stream.wait_exit(Duration::ZERO) {
        Some(status) => {
            assert!(
                !status.success(),
                "connect exited 0 in the middle of a stream"
            );
            Fate::Failed(flushed.elapsed(), how_it_ended(&stream.stderr()))
        }
        None => panic!(
            "the stream hangs: no byte echoed and no error {limit:?} after router {site:?} \
             flushed its connection tracking ({} sent, {} echoed)\n--- connect:\n{}",
            stream.sent(),
            stream.echoed(),
            stream.stderr()
        ),
    }
}

/// Keepalive idle time of proven streams (src/net.rs) plus the client's retransmission
/// backoff, with room: a stream that a router lost must move again or fail within this.
const STREAM_RECOVERY: Duration = Duration::from_secs(45);

/// Lab, server, echo service and agent on B, and an echoing stream from A that got going.
fn flush_setup(a: Nat, b: Nat) -> (Lab, Proc, Proc, EchoServer, EchoStream) {
    let lab = Lab::new(LabConfig::new(a, b).delays(20, 20, 20));
    let server = lab.start_server();
    let echo = EchoServer::start(
        &lab,
        Node::Host(Site::B),
        SocketAddr::from(([127, 0, 0, 1], SVC_PORT)),
    );
    let agent = lab.start_agent(Node::Host(Site::B), "svc", SVC_PORT, Auth::Secret(SECRET));
    let mut stream = EchoStream::start(&lab, Node::Host(Site::A), "svc", 21);
    assert!(
        stream.wait_echoed(4 << 20, Duration::from_secs(30)),
        "the stream did not get going:\n{}",
        stream.stderr()
    );
    (lab, server, agent, echo, stream)
}

#[natlab::lab_test]
fn an_rst_router_forgetting_its_flows_resets_the_stream_and_the_agent_recovers() {
    let (lab, _server, agent, _echo, mut stream) =
        flush_setup(Nat::RestrictedDrop, Nat::RestrictedRst);
    let since = registered_since(&lab, "svc");
    let flushed = Instant::now();
    let fate = flush_under_idle_stream(&lab, &mut stream, Site::B, STREAM_RECOVERY);
    eprintln!("conntrack -F on the agent's RST router under an idle stream: {fate:?}");
    stream.assert_exact();
    // Router B, knowing no flow any more, answers the client's packet itself with a RST.
    match &fate {
        Fate::Failed(took, why) => assert!(
            *took < Duration::from_secs(5) && why.starts_with("broke: "),
            "the stream failed late or unclearly: {fate:?}"
        ),
        Fate::Survived(_) => {
            panic!("the stream survived although the flushed RST router must reset it: {fate:?}")
        }
    }
    // The control channel: the router resets the server's next ping, and the agent finds out
    // at its own next ping and registers again.
    assert_eq!(reported_path(&stream.stderr()), "direct");
    let (at, failures) = until_direct(&lab, &agent, flushed, Duration::from_secs(60));
    eprintln!(
        "after the flush: a connect started {at:?} later went direct; registered again: {}; \
         failures before: {failures:?}",
        registered_since(&lab, "svc") != since
    );
}

#[natlab::lab_test]
fn a_drop_router_forgetting_its_flows_keeps_the_stream_and_the_agent() {
    let (lab, _server, agent, echo, mut stream) =
        flush_setup(Nat::RestrictedRst, Nat::RestrictedDrop);
    let registered = registered_since(&lab, "svc");
    // Router B drops the client's packets (they match no flow) until something from host B
    // re-creates the mapping: the agent's keepalive probe, as the agent has nothing to send.
    let fate = flush_under_idle_stream(&lab, &mut stream, Site::B, STREAM_RECOVERY);
    eprintln!("conntrack -F on the agent's drop router under an idle stream: {fate:?}");
    assert!(
        matches!(fate, Fate::Survived(_)),
        "the stream did not survive: {fate:?}"
    );
    // The client's router forgets too: the client sends first, which re-creates its mapping.
    let fate = flush_under_idle_stream(&lab, &mut stream, Site::A, STREAM_RECOVERY);
    eprintln!("conntrack -F on the client's router under an idle stream: {fate:?}");
    assert!(
        matches!(fate, Fate::Survived(t) if t < Duration::from_secs(5)),
        "the stream did not go on at once: {fate:?}"
    );
    let (status, how) = stream.finish(Duration::from_secs(30));
    let (sent, echoed) = (stream.sent(), stream.echoed());
    eprintln!(
        "stream finished: {status:?}, {sent} bytes sent, {echoed} echoed byte-exact, {} at the \
         service",
        echo.bytes()
    );
    stream.assert_exact();
    assert_eq!(reported_path(&stream.stderr()), "direct");
    assert!(
        status.is_some_and(|s| s.success()) && echoed == sent,
        "the stream did not end cleanly after surviving: {status:?}, {echoed} of {sent} bytes \
         echoed; writer: {how}\n{}",
        stream.stderr()
    );
    let since = Instant::now();
    let (at, failures) = until_direct(&lab, &agent, since, Duration::from_secs(30));
    eprintln!(
        "then a new connect went direct ({at:?}, failures before: {failures:?}); the agent \
         registered again: {}",
        registered_since(&lab, "svc") != registered
    );
}

// ---------------------------------------------------------------------------------------------
// The server flooded from a host of its own while real peers connect
// ---------------------------------------------------------------------------------------------

/// Concurrent hostile requests while real peers register and connect.
const FLOOD_THREADS: usize = 8;
/// Shortest duration of the flood of hostile requests.
const FLOOD_MIN: Duration = Duration::from_secs(4);
/// Idle connections opened at once (the server admits 256 per address by default).
const IDLE_CONNECTIONS: usize = 300;
/// The server's default `--max-connections-per-ip`.
const PER_IP_DEFAULT: usize = 256;
/// The server's deadline for a complete request head (src/server/limits.rs).
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

fn rdv_control() -> SocketAddr {
    SocketAddr::from((natlab::RDV_IP, SERVER_PORT))
}

/// Sends `bytes` on a fresh connection (as many as the server takes) and reads the answer
/// until the server closes, for at most 5 s. Returns `HTTP <status>` when an answer came, or
/// how the connection ended without one.
fn hostile(bytes: &[u8]) -> String {
    let t = Duration::from_secs(5);
    let mut s = match std::net::TcpStream::connect_timeout(&rdv_control(), t) {
        Ok(s) => s,
        Err(e) => return format!("connect failed: {e}"),
    };
    let _ = s.set_read_timeout(Some(t));
    let _ = s.set_write_timeout(Some(t));
    let _ = s.write_all(bytes);
    let mut answer = Vec::new();
    let mut buf = [0u8; 16 << 10];
    let end = loop {
        match s.read(&mut buf) {
            Ok(0) => break "closed",
            Ok(n) => answer.extend_from_slice(&buf[..n.min(4096 - answer.len().min(4096))]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                break "no answer within 5 s";
            }
            Err(_) => break "reset",
        }
    };
    let text = String::from_utf8_lossy(&answer);
    match text.strip_prefix("HTTP/1.1 ").and_then(|r| r.get(..3)) {
        Some(code) => format!("HTTP {code}"),
        None => format!("{end} without an answer"),
    }
}

/// The hostile requests of the flood, by name.
fn hostile_requests() -> Vec<(&'static str, Vec<u8>)> {
    let mut huge_headers = b"GET /v1/health HTTP/1.1\r\nHost: x\r\n".to_vec();
    for i in 0..512 {
        huge_headers.extend_from_slice(format!("X-Fill-{i}: {}\r\n", "a".repeat(2048)).as_bytes());
    }
    huge_headers.extend_from_slice(b"\r\n");
    let mut many_headers = b"GET /v1/health HTTP/1.1\r\nHost: x\r\n".to_vec();
    for _ in 0..10_000 {
        many_headers.extend_from_slice(b"X: y\r\n");
    }
    many_headers.extend_from_slice(b"\r\n");
    let huge_query = format!(
        "GET /v1/connect?v=2&peer=svc&nonce=00112233445566778899aabbccddeeff&pad={} \
         HTTP/1.1\r\nHost: x\r\n\r\n",
        "a".repeat(1 << 20)
    )
    .into_bytes();
    let mut binary_line = b"GET /\x00\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
    binary_line.extend_from_slice(&pattern(9, 1024));
    vec![
        ("random bytes", pattern(8, 4096)),
        ("binary request line", binary_line),
        ("1 MiB of headers", huge_headers),
        ("10 000 headers", many_headers),
        ("1 MiB query", huge_query),
    ]
}

/// A masked client WebSocket frame whose header announces `len` payload bytes, followed by
/// `payload` (which may be shorter).
fn ws_frame(fin: bool, opcode: u8, len: u64, payload: &[u8]) -> Vec<u8> {
    let mask = [0x5a, 0x0f, 0xc3, 0x96];
    let mut f = vec![if fin { 0x80 } else { 0 } | opcode];
    match len {
        0..=125 => f.push(0x80 | len as u8),
        126..=0xffff => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            f.push(0x80 | 127);
            f.extend_from_slice(&len.to_be_bytes());
        }
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// Registers `id` over a raw WebSocket from the current namespace, sends `frames` and waits
/// up to 5 s for the server to close. Returns how long the server took to close after the
/// frames went out, or what went wrong.
fn oversized_ws(id: &str, frames: &[u8]) -> Result<Duration, String> {
    let t = Duration::from_secs(5);
    let mut s = std::net::TcpStream::connect_timeout(&rdv_control(), t)
        .map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(t)).map_err(|e| e.to_string())?;
    write!(
        s,
        "GET /v1/expose?v=2&id={id}&auth=public HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\n\
         Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        rdv_control()
    )
    .map_err(|e| format!("upgrade request: {e}"))?;
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut b)
            .map_err(|e| format!("upgrade answer: {e}"))?;
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    if !head.starts_with("HTTP/1.1 101") {
        return Err(format!("no upgrade: {}", head.lines().next().unwrap_or("")));
    }
    let sent = Instant::now();
    // The server may close before taking everything.
    let _ = s.write_all(frames);
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Ok(sent.elapsed()),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err("still open 5 s after the oversized frames".into());
            }
            Err(_) => return Ok(sent.elapsed()),
        }
    }
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

/// Starts an agent and connects to it from host A; returns (time until the server listed
/// the agent, the client's setup time). Panics unless the connect went direct, byte-exact.
fn legit_round(lab: &Lab, node: Node, id: &str) -> (Duration, Duration, Proc) {
    let started = Instant::now();
    let agent = lab.start_agent(node, id, SVC_PORT, Auth::Secret(SECRET));
    let listed = started.elapsed();
    let payload = pattern(4, 256 << 10);
    let run = lab.connect_stdio(
        Node::Host(Site::A),
        id,
        Some(SECRET),
        &payload,
        Duration::from_secs(20),
    );
    assert!(
        run.success() && run.stdout == payload,
        "connect to '{id}' failed: {:?} after {:?}\n{}\n--- agent:\n{}",
        run.status,
        run.elapsed,
        run.stderr,
        agent.stderr()
    );
    let c = run.connected().expect("a connect report");
    assert_eq!(c.path, "direct", "{}", run.stderr);
    (listed, Duration::from_millis(c.ms), agent)
}

#[natlab::lab_test]
fn a_flooded_server_keeps_serving_real_peers() {
    let lab = Lab::new(
        LabConfig::new(Nat::RestrictedRst, Nat::RestrictedDrop)
            .delays(20, 20, 20)
            .outside_host(true),
    );
    let server = lab.start_server();
    let svc = SocketAddr::from(([127, 0, 0, 1], SVC_PORT));
    let _echo = EchoServer::start(&lab, Node::Host(Site::B), svc);
    let _echo2 = EchoServer::start(&lab, Node::Host2(Site::B), svc);
    let rss_before = rss_kib(server.pid());
    let (base_listed, base_setup, _base_agent) = legit_round(&lab, Node::Host(Site::B), "svc");
    eprintln!("no flood: agent listed in {base_listed:?}, connect setup {base_setup:?}");

    // Phase 1: garbage, oversized requests and oversized WebSocket frames.
    let out_ns = lab.ns(Node::Outside);
    let ws_cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "frame announcing 1 TiB",
            ws_frame(true, 1, 1 << 40, &pattern(1, 64 << 10)),
        ),
        (
            "64 KiB frame",
            ws_frame(true, 1, 64 << 10, &pattern(2, 64 << 10)),
        ),
        ("40 KiB message in 8 KiB fragments", {
            let part = pattern(3, 8 << 10);
            let mut f = ws_frame(false, 1, part.len() as u64, &part);
            for i in 0..4 {
                f.extend(ws_frame(i == 3, 0, part.len() as u64, &part));
            }
            f
        }),
    ];
    let ws_results: Vec<(String, Result<Duration, String>)> = natlab::in_netns(&out_ns, || {
        ws_cases
            .iter()
            .enumerate()
            .map(|(i, (name, frames))| (name.to_string(), oversized_ws(&format!("ws{i}"), frames)))
            .collect()
    });
    let stop = Arc::new(AtomicBool::new(false));
    let requests = Arc::new(hostile_requests());
    let flood: Vec<JoinHandle<Vec<(String, String)>>> = (0..FLOOD_THREADS)
        .map(|k| {
            let (stop, requests, ns) = (stop.clone(), requests.clone(), out_ns.clone());
            thread::spawn(move || {
                natlab::in_netns(&ns, || {
                    let mut seen = Vec::new();
                    let mut i = k;
                    while !stop.load(Ordering::SeqCst) {
                        let (name, bytes) = &requests[i % requests.len()];
                        seen.push((name.to_string(), hostile(bytes)));
                        i += 1;
                    }
                    seen
                })
            })
        })
        .collect();
    let flood_started = Instant::now();
    thread::sleep(Duration::from_secs(1));
    let mut rss_peak = rss_kib(server.pid());
    let (flood_listed, flood_setup, _flood_agent) =
        legit_round(&lab, Node::Host2(Site::B), "svc-flood");
    rss_peak = rss_peak.max(rss_kib(server.pid()));
    while flood_started.elapsed() < FLOOD_MIN {
        thread::sleep(Duration::from_millis(50));
    }
    rss_peak = rss_peak.max(rss_kib(server.pid()));
    stop.store(true, Ordering::SeqCst);
    let flood_lasted = flood_started.elapsed();
    let mut tally = std::collections::BTreeMap::<(String, String), usize>::new();
    for h in flood {
        for seen in h.join().expect("flood thread") {
            *tally.entry(seen).or_default() += 1;
        }
    }
    let flooded: usize = tally.values().sum();
    eprintln!(
        "under a flood of {flooded} hostile requests in {flood_lasted:?}: agent listed in {flood_listed:?}, connect \
         setup {flood_setup:?}; answers: {tally:#?}\noversized WebSocket frames: {ws_results:#?}"
    );

    // Phase 2: idle connections, half silent, half stuck in the middle of a request head.
    let overflows_before = lab.netstat(Node::Rdv, "TcpExt", "ListenOverflows");
    // All SYNs leave at once; each connection's age is counted from its own handshake.
    let idle: Vec<std::net::TcpStream> = natlab::in_netns(&out_ns, || {
        let to = SocketAddrV4::new(natlab::RDV_IP, SERVER_PORT);
        let pending: Vec<_> = (0..IDLE_CONNECTIONS)
            .map(|_| natlab::start_connect(to.into(), Dial::default()).expect("idle connection"))
            .collect();
        pending
            .into_iter()
            .enumerate()
            .map(|(i, p)| {
                let mut s = natlab::finish_connect(p, Duration::from_secs(5), IcmpErrors::Fatal)
                    .expect("idle connection");
                if i % 2 == 1 {
                    let _ = s.write_all(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n");
                }
                s.set_nonblocking(true).expect("nonblocking");
                s
            })
            .collect()
    });
    let opened = Instant::now();
    let mut closed_at: Vec<Option<Duration>> = vec![None; idle.len()];
    let poll_closed = |closed_at: &mut Vec<Option<Duration>>| {
        let mut buf = [0u8; 1024];
        for (s, at) in idle.iter().zip(closed_at.iter_mut()) {
            if at.is_some() {
                continue;
            }
            let mut s = s;
            loop {
                match s.read(&mut buf) {
                    Ok(0) => break *at = Some(opened.elapsed()),
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(_) => break *at = Some(opened.elapsed()),
                }
            }
        }
        closed_at.iter().filter(|c| c.is_some()).count()
    };
    // Those over the per-address cap are closed at once.
    while poll_closed(&mut closed_at) < IDLE_CONNECTIONS - PER_IP_DEFAULT
        && opened.elapsed() < Duration::from_secs(1)
    {
        thread::sleep(Duration::from_millis(10));
    }
    let refused_in = opened.elapsed();
    thread::sleep(Duration::from_millis(200));
    let refused_at_once = poll_closed(&mut closed_at);
    let overflows = lab.netstat(Node::Rdv, "TcpExt", "ListenOverflows") - overflows_before;
    let (idle_listed, idle_setup, _idle_agent) =
        legit_round(&lab, Node::Host2(Site::B), "svc-idle");
    rss_peak = rss_peak.max(rss_kib(server.pid()));
    let held_during_connect = idle.len() - poll_closed(&mut closed_at);
    while poll_closed(&mut closed_at) < idle.len() && opened.elapsed() < Duration::from_secs(30) {
        thread::sleep(Duration::from_millis(100));
    }
    let last_closed = closed_at.iter().flatten().max().copied();
    for (kind, parity) in [("silent", 0), ("partial head", 1)] {
        let mut t: Vec<Duration> = closed_at
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 2 == parity)
            .filter_map(|(_, c)| *c)
            .collect();
        t.sort();
        eprintln!(
            "{kind} connections closed after: first {:?}, median {:?}, last {:?}",
            t.first(),
            t.get(t.len() / 2),
            t.last()
        );
    }
    let rss_after = rss_kib(server.pid());
    eprintln!(
        "{IDLE_CONNECTIONS} idle connections: {overflows} overflowed the server's accept queue, \
         {refused_at_once} closed at once (in {refused_in:?}), \
         {held_during_connect} still held while a real agent registered in {idle_listed:?} and \
         a client connected (setup {idle_setup:?}); the last closed {last_closed:?} after \
         opening; server RSS {rss_before} KiB before, peak {rss_peak} KiB, {rss_after} KiB after"
    );

    for ((kind, answer), n) in &tally {
        assert!(
            answer.starts_with("HTTP 4")
                || answer.starts_with("closed")
                || answer == "reset without an answer",
            "{n} '{kind}' request(s) got: {answer}"
        );
    }
    for (name, r) in &ws_results {
        let took = r
            .as_ref()
            .unwrap_or_else(|e| panic!("oversized WebSocket input ({name}): {e}"));
        assert!(
            *took < Duration::from_secs(5),
            "{name}: closed after {took:?}"
        );
    }
    for i in 0..ws_results.len() {
        assert_eq!(
            lab.peer_status(&format!("ws{i}")).ok(),
            Some(404),
            "the registration of a connection closed for an oversized frame is still listed"
        );
    }
    let normal = base_setup * 3 + Duration::from_millis(500);
    for (what, setup) in [("garbage", flood_setup), ("idle connections", idle_setup)] {
        assert!(
            setup <= normal,
            "under {what}, the connect setup took {setup:?} (without a flood: {base_setup:?})"
        );
    }
    for (what, listed) in [("garbage", flood_listed), ("idle connections", idle_listed)] {
        assert!(
            listed <= base_listed * 3 + Duration::from_secs(1),
            "under {what}, the agent took {listed:?} to be listed (without a flood: \
             {base_listed:?})"
        );
    }
    assert_eq!(
        overflows, 0,
        "the burst overflowed the server's accept queue: handshakes were dropped"
    );
    assert_eq!(
        refused_at_once,
        IDLE_CONNECTIONS - PER_IP_DEFAULT,
        "the per-address cap of {PER_IP_DEFAULT} connections did not hold"
    );
    assert_eq!(
        held_during_connect, PER_IP_DEFAULT,
        "the real peers were not served while the attacker held every slot it may have"
    );
    let last = last_closed
        .unwrap_or_else(|| panic!("idle connections were still open 30 s after they were opened"));
    assert!(
        last >= HEAD_TIMEOUT - Duration::from_secs(1)
            && last < HEAD_TIMEOUT + Duration::from_secs(5),
        "the idle connections were closed after {last:?}, not at the {HEAD_TIMEOUT:?} head deadline"
    );
    assert!(
        rss_peak < rss_before + 64 * 1024,
        "server memory grew from {rss_before} KiB to {rss_peak} KiB under the flood"
    );
}
