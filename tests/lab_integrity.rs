//! Integrity of bulk transfers in the NAT lab: 1 GiB each way, both directions at the same
//! time, between `p2pnc connect --stdio` on host A and a service behind `p2pnc expose` on host
//! B, over the direct punched path and over the server's relay. Each end hashes (SHA-256) what
//! it sends and what it receives; the hashes and byte counts must match across the ends.
//!
//! The lab runs without its delay box (no added latency, no user-space hop), so the figures
//! measure p2pnc and the kernel, not the lab.

#![cfg(target_os = "linux")]

mod lab_support;

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use lab_support::{Auth, Connected, P2pncLab, SERVER_PORT};
use natlab::{Lab, LabConfig, Nat, Node, RDV_IP, Site, in_netns};
use sha2::{Digest, Sha256};

const SECRET: &str = "lab-integrity-secret";
const SVC_PORT: u16 = 50302;
/// Bytes each way.
const LEN: u64 = 1 << 30;
/// Block of the generated stream, and of every read and write.
const BLOCK: usize = 64 << 10;
/// Size of the random table blocks are cut from.
const TABLE: usize = 4 << 20;
/// Longest time a whole transfer may take (a debug build on two shared cores).
const TRANSFER_LIMIT: Duration = Duration::from_secs(600);
/// Longest silence on the service's socket.
const IO_TIMEOUT: Duration = Duration::from_secs(120);

/// A deterministic pseudo-random byte stream: each 64 KiB block is a window of a 4 MiB random
/// table at a pseudo-random offset, with the block's index in its first 8 bytes, so that a
/// lost, repeated or reordered block changes the hash as surely as a flipped bit. Producing a
/// block is one copy (a byte-wise generator is far too slow in a debug build).
struct Generator {
    table: Arc<Vec<u8>>,
    state: u64,
    index: u64,
}

impl Generator {
    fn new(table: Arc<Vec<u8>>, seed: u64) -> Generator {
        Generator {
            table,
            state: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
            index: 0,
        }
    }

    fn fill(&mut self, block: &mut [u8; BLOCK]) {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        let at = (self.state.wrapping_mul(0x2545_F491_4F6C_DD1D) % (TABLE - BLOCK) as u64) as usize;
        block.copy_from_slice(&self.table[at..at + BLOCK]);
        block[..8].copy_from_slice(&self.index.to_le_bytes());
        self.index += 1;
    }
}

/// What one end saw in one direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tally {
    bytes: u64,
    sha256: [u8; 32],
}

impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} bytes, sha256 ", self.bytes)?;
        for b in &self.sha256[..8] {
            write!(f, "{b:02x}")?;
        }
        write!(f, "…")
    }
}

/// One direction at one end, and when it finished.
type Done = (Tally, Instant);

/// Writes `LEN` bytes of the stream `seed` to `w`, hashing them; returns the tally and when
/// the last byte was handed over.
fn send(mut w: impl Write, table: Arc<Vec<u8>>, seed: u64) -> io::Result<Done> {
    let mut g = Generator::new(table, seed);
    let mut block = Box::new([0u8; BLOCK]);
    let mut h = Sha256::new();
    let mut sent = 0;
    while sent < LEN {
        g.fill(&mut block);
        h.update(&block[..]);
        w.write_all(&block[..])?;
        sent += BLOCK as u64;
    }
    w.flush()?;
    Ok((
        Tally {
            bytes: sent,
            sha256: h.finalize().into(),
        },
        Instant::now(),
    ))
}

/// Reads `r` to EOF, hashing; returns the tally and when EOF came.
fn receive(mut r: impl Read) -> io::Result<Done> {
    let mut buf = vec![0u8; BLOCK];
    let mut h = Sha256::new();
    let mut got = 0u64;
    loop {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                h.update(&buf[..n]);
                got += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io::Error::new(e.kind(), format!("after {got} bytes: {e}"))),
        }
    }
    Ok((
        Tally {
            bytes: got,
            sha256: h.finalize().into(),
        },
        Instant::now(),
    ))
}

/// Both ends of one transfer.
struct Transfer {
    /// Client → service: what the client sent and what the service received.
    up: (Tally, Tally),
    /// Service → client: what the service sent and what the client received.
    down: (Tally, Tally),
    /// From starting `connect` to the end of setup (the report's `setup_ms`).
    setup: Duration,
    /// From the end of setup until each direction's last byte arrived.
    up_time: Duration,
    down_time: Duration,
    /// How the connection was set up (its report).
    connected: Connected,
    /// Bytes through the rendezvous host's interface during the transfer.
    rdv_bytes: u64,
}

/// Runs one transfer: a service on host B (in this process) that sends the stream `seed+1`
/// while hashing what it receives, `expose` in front of it, and `connect --stdio` on host A
/// fed with the stream `seed` while its output is hashed. `encrypt: false` runs both ends with
/// `--no-encrypt` (and `expose` splices the stream to the service in the kernel).
fn transfer(lab: &Lab, seed: u64, encrypt: bool) -> Transfer {
    let no_encrypt: &[&str] = if encrypt { &[] } else { &["--no-encrypt"] };
    // The service takes a single connection: no probe connections from `expose`.
    let mut agent_args = vec!["--service-probe", "0"];
    if !encrypt {
        agent_args.push("--no-encrypt");
    }
    let table = Arc::new(natlab::pattern(seed ^ 0x7ab1e, TABLE));
    let svc_ns = lab.ns(Node::Host(Site::B));
    let listener = in_netns(&svc_ns, || {
        TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], SVC_PORT)))
    })
    .expect("service listener");
    let _agent = lab.start_agent_with(
        Node::Host(Site::B),
        "svc",
        SVC_PORT,
        Auth::Secret(SECRET),
        &agent_args,
    );
    let rdv_before = lab.rdv_bytes();

    // The service: one connection, both directions at once.
    let service = {
        let table = table.clone();
        thread::spawn(move || -> Result<(Done, Done), String> {
            listener.set_nonblocking(true).map_err(|e| e.to_string())?;
            let deadline = Instant::now() + Duration::from_secs(60);
            let conn = loop {
                match listener.accept() {
                    Ok((c, _)) => break c,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        if Instant::now() >= deadline {
                            return Err("no connection reached the service in 60 s".into());
                        }
                        thread::sleep(Duration::from_millis(5));
                    }
                    Err(e) => return Err(format!("accept: {e}")),
                }
            };
            conn.set_nonblocking(false).map_err(|e| e.to_string())?;
            conn.set_read_timeout(Some(IO_TIMEOUT))
                .map_err(|e| e.to_string())?;
            conn.set_write_timeout(Some(IO_TIMEOUT))
                .map_err(|e| e.to_string())?;
            let w = conn.try_clone().map_err(|e| e.to_string())?;
            let sender = thread::spawn(move || {
                let r = send(&w, table, seed + 1);
                let _ = w.shutdown(Shutdown::Write);
                r
            });
            let received = receive(&conn).map_err(|e| format!("service receiving: {e}"))?;
            let sent = sender
                .join()
                .map_err(|_| "service sender panicked".to_string())?
                .map_err(|e| format!("service sending: {e}"))?;
            Ok((sent, received))
        })
    };

    // The client.
    let url = lab_support::server_url();
    let started = Instant::now();
    let spec = lab
        .p2pnc("connect-bulk")
        .args(["connect", "--report", "json", "--server", &url])
        .args(["--peer", "svc", "--secret", SECRET, "--stdio"])
        .args(no_encrypt)
        .pipe_stdin()
        .pipe_stdout();
    let mut client = lab.spawn_cmd(Node::Host(Site::A), spec);
    let stdin = client.take_stdin().expect("piped stdin");
    let stdout = client.take_stdout().expect("piped stdout");
    let writer = {
        let table = table.clone();
        thread::spawn(move || send(stdin, table, seed))
    };
    let reader = thread::spawn(move || receive(stdout));
    let status = client.wait_timeout(TRANSFER_LIMIT);
    if status.is_none() {
        client.kill();
    }
    let stderr = client.stderr();
    let ctx = |what: &str| format!("{what}\n--- connect:\n{stderr}\n{}", lab.diagnostics());
    let client_sent = writer.join().expect("client writer");
    let client_got = reader.join().expect("client reader");
    let service = service.join().expect("service thread");
    let rdv_bytes = lab.rdv_bytes() - rdv_before;
    let status = status.unwrap_or_else(|| {
        panic!(
            "{}",
            ctx(&format!("connect did not finish within {TRANSFER_LIMIT:?}"))
        )
    });
    assert!(
        status.success(),
        "{}",
        ctx(&format!("connect failed ({status})"))
    );
    let ((up_sent, _), (down_got, down_end)) = (
        client_sent.unwrap_or_else(|e| panic!("{}", ctx(&format!("client sending: {e}")))),
        client_got.unwrap_or_else(|e| panic!("{}", ctx(&format!("client receiving: {e}")))),
    );
    let ((down_sent, _), (up_got, up_end)) = service.unwrap_or_else(|e| panic!("{}", ctx(&e)));
    let reports = lab_support::reports(&stderr);
    let connected = reports
        .iter()
        .find_map(lab_support::Report::connected)
        .unwrap_or_else(|| panic!("{}", ctx("no `ok` connect report")));
    assert!(
        reports.iter().any(|r| r.encrypted == Some(encrypt)),
        "{}",
        ctx(&format!("no report of a stream with encrypted: {encrypt}"))
    );
    let setup = Duration::from_millis(connected.ms);
    let setup_end = started + setup;
    Transfer {
        up: (up_sent, up_got),
        down: (down_sent, down_got),
        setup,
        up_time: up_end.saturating_duration_since(setup_end),
        down_time: down_end.saturating_duration_since(setup_end),
        connected,
        rdv_bytes,
    }
}

/// Checks both directions and prints the figures.
fn judge(label: &str, t: &Transfer) {
    let mbs = |d: Duration| LEN as f64 / d.as_secs_f64() / 1e6;
    eprintln!(
        "{label}: {} via {} (setup {:?}); both directions at once: A→B {:.0} MB/s ({:?}), \
         B→A {:.0} MB/s ({:?}), {:.0} MB/s together; up: sent {}, received {}; down: sent {}, \
         received {}; rendezvous host moved {} bytes",
        t.connected.path,
        t.connected.addr,
        t.setup,
        mbs(t.up_time),
        t.up_time,
        mbs(t.down_time),
        t.down_time,
        2.0 * LEN as f64 / t.up_time.max(t.down_time).as_secs_f64() / 1e6,
        t.up.0,
        t.up.1,
        t.down.0,
        t.down.1,
        t.rdv_bytes
    );
    assert_eq!(t.up.0.bytes, LEN, "{label}: the client did not send it all");
    assert_eq!(
        t.down.0.bytes, LEN,
        "{label}: the service did not send it all"
    );
    assert_eq!(
        t.up.1, t.up.0,
        "{label}: client → service: received {} but sent {}",
        t.up.1, t.up.0
    );
    assert_eq!(
        t.down.1, t.down.0,
        "{label}: service → client: received {} but sent {}",
        t.down.1, t.down.0
    );
}

#[natlab::lab_test]
fn a_gib_each_way_crosses_the_direct_path_intact() {
    let lab = Lab::new(
        LabConfig::new(Nat::RestrictedRst, Nat::RestrictedDrop)
            .without_delay_box()
            .second_hosts(false),
    );
    let _server = lab.start_server();
    let t = transfer(&lab, 1, true);
    judge("direct", &t);
    assert_eq!(t.connected.path, "direct");
    assert_eq!(t.connected.addr.ip(), lab.wan_ip(Site::B));
    assert!(
        t.rdv_bytes < LEN / 100,
        "the rendezvous host moved {} bytes during a direct transfer",
        t.rdv_bytes
    );
}

/// With `--no-encrypt` on both ends the agent splices the stream to its service inside the
/// kernel: the same bytes, in order, with half-close.
#[natlab::lab_test]
fn a_gib_each_way_crosses_the_direct_path_intact_unencrypted() {
    let lab = Lab::new(
        LabConfig::new(Nat::RestrictedRst, Nat::RestrictedDrop)
            .without_delay_box()
            .second_hosts(false),
    );
    let _server = lab.start_server();
    let t = transfer(&lab, 3, false);
    judge("direct, unencrypted", &t);
    assert_eq!(t.connected.path, "direct");
    assert_eq!(t.connected.addr.ip(), lab.wan_ip(Site::B));
}

#[natlab::lab_test]
fn a_gib_each_way_crosses_the_relay_intact() {
    // Two symmetric NATs: no direct path, so the server relays. Its rate cap is lifted far
    // above what the lab can carry.
    let lab = Lab::new(
        LabConfig::new(Nat::Symmetric { rst: true }, Nat::Symmetric { rst: false })
            .without_delay_box()
            .second_hosts(false),
    );
    let _server = lab.start_server_with(&["--relay", "--relay-rate", &(64u64 << 30).to_string()]);
    let t = transfer(&lab, 2, true);
    judge("relayed", &t);
    assert_eq!(t.connected.path, "relayed");
    assert_eq!(t.connected.addr, SocketAddr::from((RDV_IP, SERVER_PORT)));
    // Each direction enters and leaves the rendezvous host once.
    assert!(
        t.rdv_bytes >= 4 * LEN,
        "the rendezvous host moved only {} bytes for a relayed transfer of {} bytes each way",
        t.rdv_bytes,
        LEN
    );
}
