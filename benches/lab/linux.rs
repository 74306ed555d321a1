//! The benchmarks (Linux only: the NAT lab is made of network namespaces).

use crate::lab_support::{self, Auth, P2pncLab, Report};
use natlab::{EchoServer, Lab, LabConfig, Nat, Node, Proc, SinkServer, Site, Spawn, in_netns};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpStream};
use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

const SECRET: &str = "bench-secret-51c2";
/// Echo service on host B (all addresses: reached by the agent and by the port forward).
const ECHO_PORT: u16 = 50302;
/// Sink service on host B.
const SINK_PORT: u16 = 50303;
/// Port forwards on B's router (below the ephemeral port range, so no punch port collides).
const FWD_ECHO_PORT: u16 = 20302;
const FWD_SINK_PORT: u16 = 20303;
/// `connect --listen` port on host A's loopback.
const LISTEN_PORT: u16 = 9000;
/// First argument that turns this binary into the plain TCP client of the latency baseline.
const HELPER_ARG: &str = "__tcp-client";

/// One-way delay of every internet attachment (ms): RTT between any two hosts is twice that.
const DELAY_MS: u32 = 20;
const RTT_MS: f64 = 2.0 * DELAY_MS as f64;
/// Measured runs per latency figure, after `LATENCY_WARMUP` unmeasured ones.
const LATENCY_RUNS: usize = 21;
const LATENCY_WARMUP: usize = 2;
/// The 4-RTT bound (handshake to the server, request, simultaneous open, one echo) and the
/// issue's target for the median.
const BOUND_RTT: f64 = 4.0;
const TARGET_RTT: f64 = 4.5;

/// Bytes per throughput transfer (with the 20 ms delay, and without: large enough that a
/// transfer lasts about a second or more), and transfers per path and delay.
const TP_BYTES_DELAYED: usize = 128 << 20;
const TP_BYTES_UNDELAYED: usize = 512 << 20;
const TP_REPS: usize = 5;
const TP_TARGET_RATIO: f64 = 0.8;

/// Attempts per grid cell.
const GRID_ATTEMPTS: usize = 3;
const GRID_PAYLOAD: usize = 4096;

const BENCHES: [&str; 3] = ["latency", "throughput", "grid"];

pub fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some(HELPER_ARG) {
        return tcp_client(args.get(1).map(String::as_str).unwrap_or(""));
    }
    // `cargo bench` passes `--bench` (and maybe other flags): only bare words name benches.
    let mut selected: Vec<&str> = Vec::new();
    for a in args.iter().filter(|a| !a.starts_with('-')) {
        match BENCHES.iter().find(|b| **b == a.as_str()) {
            Some(b) if !selected.contains(b) => selected.push(b),
            Some(_) => {}
            None if a == "all" => selected = BENCHES.to_vec(),
            None => {
                eprintln!("unknown benchmark {a:?}; choose from {BENCHES:?} (all by default)");
                return ExitCode::from(2);
            }
        }
    }
    if selected.is_empty() {
        selected = BENCHES.to_vec();
    }
    if !natlab::require_lab(&[]) {
        return ExitCode::SUCCESS;
    }

    let mut out = Out::default();
    let mut problems = Vec::new();
    out.line(format!(
        "# p2pnc NAT-lab benchmarks ({})",
        selected.join(", ")
    ));
    out.line("");
    out.line(machine_info());
    out.line("");
    let started = Instant::now();
    for b in &selected {
        let t = Instant::now();
        let load = loadavg();
        match *b {
            "latency" => latency(&mut out, &mut problems),
            "throughput" => throughput(&mut out, &mut problems),
            _ => grid(&mut out, &mut problems),
        }
        out.line(format!(
            "({b}: {:.0} s; load average before {load}, after {})",
            t.elapsed().as_secs_f64(),
            loadavg()
        ));
        out.line("");
    }
    if problems.is_empty() {
        out.line(format!(
            "all benchmarks ran in {:.0} s; nothing broken",
            started.elapsed().as_secs_f64()
        ));
    } else {
        out.line(format!("BROKEN ({} problems):", problems.len()));
        for p in &problems {
            out.line(format!("- {}", p.replace('\n', "\n  ")));
        }
    }
    let path = target_dir().join("lab-bench.txt");
    match std::fs::write(&path, &out.text) {
        Ok(()) => println!("(written to {})", path.display()),
        Err(e) => eprintln!("cannot write {}: {e}", path.display()),
    }
    if problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

// ---------------------------------------------------------------------------------------------
// Output
// ---------------------------------------------------------------------------------------------

/// Text printed to stdout as it comes and kept for `target/lab-bench.txt`.
#[derive(Default)]
struct Out {
    text: String,
}

impl Out {
    fn line(&mut self, s: impl AsRef<str>) {
        let s = s.as_ref();
        println!("{s}");
        self.text.push_str(s);
        self.text.push('\n');
    }
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"))
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn command_line(program: &str, args: &[&str]) -> Option<String> {
    let o = Command::new(program).args(args).output().ok()?;
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
}

/// Date, version, CPUs, kernel, load and other NAT labs running on the machine.
fn machine_info() -> String {
    let date = command_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]).unwrap_or_default();
    let rev = command_line(
        "git",
        &[
            "-C",
            env!("CARGO_MANIFEST_DIR"),
            "describe",
            "--always",
            "--dirty",
        ],
    )
    .unwrap_or_else(|| "?".into());
    let cpus = thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mine = format!("{}{}-", natlab::NS_PREFIX, std::process::id());
    let others: std::collections::BTreeSet<String> = natlab::list_namespaces()
        .into_iter()
        .filter(|n| n.starts_with(natlab::NS_PREFIX) && !n.starts_with(&mine))
        .filter_map(|n| n.rsplit_once('-').map(|(lab, _)| lab.to_string()))
        .collect();
    format!(
        "{date}; p2pnc {} (git {rev}), {} build; {cpus} CPUs, kernel {}; load average {}; \
         other NAT labs running: {}",
        env!("CARGO_PKG_VERSION"),
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        kernel.trim(),
        loadavg(),
        others.len()
    )
}

/// Nearest-rank percentile of sorted values.
fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

fn nat_name(nat: Nat) -> &'static str {
    match nat {
        Nat::None => "none (public)",
        Nat::FullCone => "full cone",
        Nat::RestrictedRst => "port-restricted, RST",
        Nat::RestrictedDrop => "port-restricted, drop",
        Nat::Symmetric { rst: false } => "symmetric, drop",
        Nat::Symmetric { rst: true } => "symmetric, RST",
    }
}

// ---------------------------------------------------------------------------------------------
// Latency
// ---------------------------------------------------------------------------------------------

/// The plain TCP client of the latency baseline (run as `lab __tcp-client IP:PORT` in a lab
/// namespace): connects, copies stdin to the socket (half-closing at EOF) and the socket to
/// stdout, unbuffered, until EOF.
fn tcp_client(addr: &str) -> ExitCode {
    let run = || -> io::Result<()> {
        let addr: SocketAddr = addr
            .parse()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{addr:?}: {e}")))?;
        let sock = TcpStream::connect(addr)?;
        let mut w = sock.try_clone()?;
        thread::spawn(move || {
            let _ = io::copy(&mut io::stdin().lock(), &mut w);
            let _ = w.shutdown(Shutdown::Write);
        });
        let mut r = sock;
        let mut stdout = io::stdout().lock();
        let mut buf = [0u8; 16384];
        loop {
            let n = r.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            stdout.write_all(&buf[..n])?;
            stdout.flush()?;
        }
    };
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Spawns `spec` on `node` with one byte already written to its stdin and times the
/// spawn → first echoed byte on stdout; then closes stdin and expects a clean exit 0 with
/// nothing more on stdout. Returns the time and the process's stderr.
fn spawn_to_first_echo(lab: &Lab, node: Node, spec: Spawn) -> Result<(Duration, String), String> {
    let name = spec.label().to_string();
    let t0 = Instant::now();
    let mut p = lab.spawn_cmd(node, spec.pipe_stdin().pipe_stdout());
    let mut stdin = p.take_stdin().expect("piped stdin");
    let mut stdout = p.take_stdout().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    let reader = thread::spawn(move || {
        let mut b = [0u8; 1];
        let first = stdout.read_exact(&mut b).map(|()| (Instant::now(), b[0]));
        let _ = tx.send(first);
        let mut rest = Vec::new();
        let _ = stdout.read_to_end(&mut rest);
        rest.len()
    });
    let wrote = stdin.write_all(b"x");
    let got = rx.recv_timeout(Duration::from_secs(20));
    if got.is_err() {
        p.kill();
    }
    drop(stdin);
    let status = p.wait_timeout(Duration::from_secs(10));
    if status.is_none() {
        p.kill();
    }
    let extra = reader.join().unwrap_or(0);
    let stderr = p.stderr();
    let fail = |why: String| -> Result<(Duration, String), String> {
        Err(format!("{name}: {why}; stderr:\n{}", stderr.trim_end()))
    };
    if let Err(e) = wrote {
        return fail(format!("writing to its stdin: {e}"));
    }
    let (t1, byte) = match got {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => return fail(format!("no byte echoed: {e}")),
        Err(_) => return fail("no byte echoed within 20 s".into()),
    };
    if byte != b'x' || extra != 0 {
        return fail(format!(
            "echoed {byte:#04x} and {extra} more bytes, not exactly the byte 'x'"
        ));
    }
    match status {
        Some(s) if s.success() => {}
        Some(s) => return fail(format!("exited with {s} after the echo")),
        None => return fail("did not exit within 10 s after stdin was closed".into()),
    }
    Ok((t1 - t0, stderr))
}

fn latency(out: &mut Out, problems: &mut Vec<String>) {
    out.line(format!(
        "## latency: spawn of the client process to the first echoed byte \
         ({DELAY_MS} ms one-way per site and for the server: RTT {RTT_MS:.0} ms between any two hosts)"
    ));
    out.line("");
    out.line(format!(
        "{LATENCY_RUNS} runs per row (after {LATENCY_WARMUP} warm-up runs), p2pnc and plain runs \
         interleaved. plain TCP = a minimal Rust client (this bench binary) through a port forward \
         on B's router to the same echo service: TCP handshake + echo = 2 RTT + process start."
    ));
    out.line("");
    out.line("| NATs (client A, agent B) | client | p10 ms | median ms | p90 ms | median RTT |");
    out.line("|---|---|---:|---:|---:|---:|");
    let mut notes = Vec::new();
    for nat in [Nat::RestrictedDrop, Nat::RestrictedRst] {
        let lab = Lab::new(
            LabConfig::new(nat, nat)
                .delays(DELAY_MS, DELAY_MS, DELAY_MS)
                .second_hosts(false),
        );
        let _server = lab.start_server();
        let _echo = EchoServer::start(
            &lab,
            Node::Host(Site::B),
            SocketAddr::from((Ipv4Addr::UNSPECIFIED, ECHO_PORT)),
        );
        let agent = lab.start_agent(
            Node::Host(Site::B),
            "svc-b",
            ECHO_PORT,
            Auth::Secret(SECRET),
        );
        let fwd = lab.port_forward(
            Site::B,
            FWD_ECHO_PORT,
            SocketAddrV4::new(lab.host_ip(Site::B), ECHO_PORT),
        );
        let url = lab_support::server_url();
        let p2p_spec = || {
            lab.p2pnc("connect")
                .args(["connect", "--report", "json", "--server", &url])
                .args(["--peer", "svc-b", "--secret", SECRET, "--stdio"])
        };
        let helper = std::env::current_exe().expect("current_exe");
        let helper = helper.to_str().expect("UTF-8 path of the bench binary");
        let fwd_s = fwd.to_string();
        let plain_args = [HELPER_ARG, fwd_s.as_str()];
        let wan_b = lab.wan_ip(Site::B);

        let (mut p2p, mut plain, mut setup, mut after) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for i in 0..LATENCY_WARMUP + LATENCY_RUNS {
            let measured = i >= LATENCY_WARMUP;
            match spawn_to_first_echo(&lab, Node::Host(Site::A), p2p_spec()) {
                Ok((t, stderr)) => match lab_support::reports(&stderr)
                    .iter()
                    .find_map(Report::connected)
                {
                    Some(c) if c.path == "direct" && c.addr.ip() == wan_b => {
                        if measured {
                            p2p.push(t.as_secs_f64() * 1e3);
                            setup.push(c.ms as f64);
                            after.push(t.as_secs_f64() * 1e3 - c.ms as f64);
                        }
                    }
                    c => problems.push(format!(
                        "latency {}: run {i}: not a direct session to {wan_b} ({c:?}); \
                         connect stderr:\n{}\nagent stderr:\n{}",
                        nat_name(nat),
                        stderr.trim_end(),
                        agent.stderr().trim_end()
                    )),
                },
                Err(e) => problems.push(format!("latency {}: run {i}: {e}", nat_name(nat))),
            }
            let plain_spec = Spawn::new(helper).args(plain_args).name("plain");
            match spawn_to_first_echo(&lab, Node::Host(Site::A), plain_spec) {
                Ok((t, _)) if measured => plain.push(t.as_secs_f64() * 1e3),
                Ok(_) => {}
                Err(e) => {
                    problems.push(format!("latency {} baseline: run {i}: {e}", nat_name(nat)))
                }
            }
        }
        let pair = format!("{0} ↔ {0}", nat_name(nat));
        let row = |out: &mut Out, first: &str, what: &str, v: &[f64]| {
            if v.is_empty() {
                out.line(format!("| {first} | {what} | – | – | – | – |"));
                return;
            }
            out.line(format!(
                "| {first} | {what} ({} runs) | {:.0} | {:.0} | {:.0} | {:.2} |",
                v.len(),
                pct(v, 0.1),
                pct(v, 0.5),
                pct(v, 0.9),
                pct(v, 0.5) / RTT_MS
            ));
        };
        let (p2p, plain, setup, after) = (sorted(p2p), sorted(plain), sorted(setup), sorted(after));
        row(out, &pair, "`p2pnc connect --stdio`, direct", &p2p);
        row(out, "", "plain TCP via port forward", &plain);
        if !p2p.is_empty() && !plain.is_empty() {
            let start = pct(&plain, 0.5) - 2.0 * RTT_MS;
            let net = pct(&p2p, 0.5) - start;
            out.line(format!(
                "| | p2pnc minus process start (plain median − 2 RTT = {start:.0} ms) | | {net:.0} | | {:.2} |",
                net / RTT_MS
            ));
            notes.push(format!(
                "- {pair}: p2pnc median {:.2} RTT raw, {:.2} RTT net of process start \
                 (bound {BOUND_RTT} RTT = {:.0} ms; target median ≤ {TARGET_RTT} RTT = {:.0} ms: {}); \
                 setup time reported by connect (`setup_ms`): median {:.0} ms ({:.2} RTT), \
                 p10 {:.0}, p90 {:.0}; spawn-to-echo minus that, per run: median {:.0} ms \
                 (process start, and the echo when it does not come with the agent's hello)",
                pct(&p2p, 0.5) / RTT_MS,
                net / RTT_MS,
                BOUND_RTT * RTT_MS,
                TARGET_RTT * RTT_MS,
                match (
                    pct(&p2p, 0.5) <= TARGET_RTT * RTT_MS,
                    net <= TARGET_RTT * RTT_MS
                ) {
                    (true, _) => "met",
                    (false, true) => "met net of process start, not raw",
                    (false, false) => "NOT met",
                },
                pct(&setup, 0.5),
                pct(&setup, 0.5) / RTT_MS,
                pct(&setup, 0.1),
                pct(&setup, 0.9),
                pct(&after, 0.5)
            ));
        }
        eprintln!("latency {pair}: done");
    }
    out.line("");
    for n in notes {
        out.line(n);
    }
}

// ---------------------------------------------------------------------------------------------
// Throughput
// ---------------------------------------------------------------------------------------------

/// From `node`, connects to a sink at `addr`, waits for its `R` (so path setup is not
/// timed), then times sending `len` bytes and half-closing until the sink's count comes back.
fn push(lab: &Lab, node: Node, addr: SocketAddr, len: usize, chunk: &[u8]) -> io::Result<Duration> {
    in_netns(&lab.ns(node), || {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(60)))?;
        s.set_write_timeout(Some(Duration::from_secs(60)))?;
        natlab::sink_push(s, len, chunk)
    })
}

/// Direct connections to `ip` among the first `n` reports of a `connect --listen` process
/// (waiting up to 5 s for them: each connection reports when it ends).
fn direct_reports(p: &Proc, n: usize, ip: Ipv4Addr) -> usize {
    lab_support::wait_reports(p, n, Duration::from_secs(5))
        .iter()
        .take(n)
        .filter_map(Report::connected)
        .filter(|c| c.path == "direct" && c.addr.ip() == ip)
        .count()
}

fn throughput(out: &mut Out, problems: &mut Vec<String>) {
    let (nat_a, nat_b) = (Nat::RestrictedDrop, Nat::RestrictedRst);
    out.line(format!(
        "## throughput: one way, host A → host B (A: {}, B: {})",
        nat_name(nat_a),
        nat_name(nat_b)
    ));
    out.line("");
    out.line(format!(
        "{TP_REPS} transfers per row, p2pnc and plain interleaved; timed from the first byte \
         sent (after path setup) to the sink's byte count coming back. p2pnc = local TCP into \
         `connect --listen` on A → direct path → `expose` on B → sink; plain = TCP through a port \
         forward (DNAT) on B's router to the same sink. MB = 10^6 bytes."
    ));
    out.line("");
    out.line(
        "| one-way delay | bytes per transfer | path | median MB/s | min | max | p2pnc / plain |",
    );
    out.line("|---|---|---|---:|---:|---:|---:|");
    let lab = Lab::new(
        LabConfig::new(nat_a, nat_b)
            .delays(DELAY_MS, DELAY_MS, DELAY_MS)
            .second_hosts(false),
    );
    let _server = lab.start_server();
    let _sink = SinkServer::start(
        &lab,
        Node::Host(Site::B),
        SocketAddr::from((Ipv4Addr::UNSPECIFIED, SINK_PORT)),
    );
    let agent = lab.start_agent(
        Node::Host(Site::B),
        "sink-b",
        SINK_PORT,
        Auth::Secret(SECRET),
    );
    let fwd = lab.port_forward(
        Site::B,
        FWD_SINK_PORT,
        SocketAddrV4::new(lab.host_ip(Site::B), SINK_PORT),
    );
    let listen = SocketAddrV4::new(Ipv4Addr::LOCALHOST, LISTEN_PORT);
    let conn = lab.start_connect_listen(Node::Host(Site::A), "sink-b", Some(SECRET), listen);
    let chunk = natlab::pattern(7, 1 << 20);
    let wan_b = lab.wan_ip(Site::B);
    let a = Node::Host(Site::A);
    for (delay, len) in [(DELAY_MS, TP_BYTES_DELAYED), (0, TP_BYTES_UNDELAYED)] {
        lab.set_delays(delay, delay, delay);
        let (mut plain, mut p2p) = (Vec::new(), Vec::new());
        for rep in 0..TP_REPS {
            match push(&lab, a, SocketAddr::V4(fwd), len, &chunk) {
                Ok(t) => plain.push(len as f64 / t.as_secs_f64() / 1e6),
                Err(e) => {
                    problems.push(format!("throughput {delay} ms: plain transfer {rep}: {e}"))
                }
            }
            let reported = lab_support::reports(&conn.stderr()).len();
            let direct_before = direct_reports(&conn, reported, wan_b);
            let rdv_before = lab.rdv_bytes();
            let res = push(&lab, a, SocketAddr::V4(listen), len, &chunk);
            let rdv = lab.rdv_bytes() - rdv_before;
            let direct = direct_reports(&conn, reported + 1, wan_b) - direct_before;
            match res {
                Ok(t) if direct == 1 && rdv < (len / 8) as u64 => {
                    p2p.push(len as f64 / t.as_secs_f64() / 1e6)
                }
                res => problems.push(format!(
                    "throughput {delay} ms: p2pnc transfer {rep}: {res:?}, {direct} new direct \
                     sessions (want 1), rendezvous host moved {rdv} bytes; connect stderr:\n{}\n\
                     agent stderr:\n{}",
                    conn.stderr().trim_end(),
                    agent.stderr().trim_end()
                )),
            }
            eprintln!("throughput {delay} ms: transfer {rep} done");
        }
        let (plain, p2p) = (sorted(plain), sorted(p2p));
        let label = if delay == 0 {
            "0 ms (no added delay)".to_string()
        } else {
            format!("{delay} ms (RTT {} ms)", 2 * delay)
        };
        let cells = |v: &[f64]| {
            if v.is_empty() {
                "– | – | –".to_string()
            } else {
                format!("{:.0} | {:.0} | {:.0}", pct(v, 0.5), v[0], v[v.len() - 1])
            }
        };
        let ratio = if plain.is_empty() || p2p.is_empty() {
            "–".to_string()
        } else {
            let r = pct(&p2p, 0.5) / pct(&plain, 0.5);
            format!(
                "{r:.2} ({} target ≥ {TP_TARGET_RATIO})",
                if r >= TP_TARGET_RATIO {
                    "meets"
                } else {
                    "BELOW"
                }
            )
        };
        out.line(format!(
            "| {label} | {} MiB | plain TCP via port forward ({} runs) | {} | |",
            len >> 20,
            plain.len(),
            cells(&plain)
        ));
        out.line(format!(
            "| | | p2pnc, direct ({} runs) | {} | {ratio} |",
            p2p.len(),
            cells(&p2p)
        ));
    }
    let ds = lab.delay_stats();
    out.line("");
    out.line(format!(
        "delay box: {} packets, at most {} held at once, {} errors, kernel queue drops {} + {}",
        ds.packets, ds.max_held, ds.errors, ds.kernel_dropped, ds.kernel_user_dropped
    ));
}

// ---------------------------------------------------------------------------------------------
// Grid
// ---------------------------------------------------------------------------------------------

const GRID_KINDS: [Nat; 6] = [
    Nat::None,
    Nat::FullCone,
    Nat::RestrictedRst,
    Nat::RestrictedDrop,
    Nat::Symmetric { rst: false },
    Nat::Symmetric { rst: true },
];

enum Attempt {
    Ok { path: String, ms: u64 },
    Failed(String),
}

/// One `connect --stdio` session from `client`'s host to `peer`, echoing a small payload.
/// The last `n` lines of a log.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// One `connect --stdio` session from `client`'s host to `peer` (served by `agent`), echoing
/// a small payload.
fn grid_attempt(lab: &Lab, client: Site, peer: &str, agent: &Proc, seed: u64) -> Attempt {
    let payload = natlab::pattern(seed, GRID_PAYLOAD);
    let timeout = Duration::from_secs(20);
    let run = lab.connect_stdio(Node::Host(client), peer, Some(SECRET), &payload, timeout);
    let fail = |why: String| {
        Attempt::Failed(format!(
            "{why}\nconnect stderr:\n{}\nagent stderr (tail):\n{}",
            tail(&run.stderr, 8),
            tail(&agent.stderr(), 8)
        ))
    };
    match run.status {
        None => return fail(format!("connect did not exit within {timeout:?} (killed)")),
        Some(s) if !s.success() => return fail(format!("exit {s} after {:?}", run.elapsed)),
        Some(_) => {}
    }
    if run.stdout != payload {
        return fail(format!(
            "echoed {} of {GRID_PAYLOAD} bytes (or different bytes)",
            run.stdout.len()
        ));
    }
    let Some(c) = run.connected() else {
        return fail("no `ok` connect report".into());
    };
    let want = lab.public_ip(client.other());
    if c.path == "direct" && c.addr.ip() != want {
        return fail(format!("direct to {}, expected {want}", c.addr));
    }
    Attempt::Ok {
        path: c.path,
        ms: c.ms,
    }
}

fn is_symmetric(n: Nat) -> bool {
    matches!(n, Nat::Symmetric { .. })
}

/// `direct 183 ms`, or for mixed outcomes `direct×2 183 ms, relayed×1 960 ms, failed×1`.
fn grid_cell(attempts: &[Attempt]) -> String {
    let mut groups: Vec<(String, Vec<f64>)> = Vec::new();
    for a in attempts {
        let (k, ms) = match a {
            Attempt::Ok { path, ms } => (path.clone(), Some(*ms as f64)),
            Attempt::Failed(_) => ("failed".to_string(), None),
        };
        match groups.iter_mut().find(|g| g.0 == k) {
            Some(g) => g.1.extend(ms),
            None => groups.push((k, ms.into_iter().collect())),
        }
    }
    let count = |k: &str| {
        attempts
            .iter()
            .filter(|a| match a {
                Attempt::Ok { path, .. } => path == k,
                Attempt::Failed(_) => k == "failed",
            })
            .count()
    };
    groups.sort_by_key(|g| std::cmp::Reverse(count(&g.0)));
    let mixed = groups.len() > 1;
    groups
        .into_iter()
        .map(|(k, ms)| {
            let n = if mixed {
                format!("×{}", count(&k))
            } else {
                String::new()
            };
            if ms.is_empty() {
                format!("{k}{n}")
            } else {
                format!("{k}{n} {:.0} ms", pct(&sorted(ms), 0.5))
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn grid(out: &mut Out, problems: &mut Vec<String>) {
    let n = GRID_KINDS.len();
    out.line(format!(
        "## grid: client NAT (rows) × agent NAT (columns), server with `--relay`, \
         RTT {RTT_MS:.0} ms between any two hosts"
    ));
    out.line("");
    out.line(format!(
        "Each cell: the path of {GRID_ATTEMPTS} `connect --stdio` sessions ({GRID_PAYLOAD}-byte \
         echo each) and their median setup time (`setup_ms` of the connect report); mixed \
         outcomes show counts. One lab per NAT pair (both directions)."
    ));
    out.line("");
    let mut cells: Vec<Vec<Vec<Attempt>>> = (0..n)
        .map(|_| (0..n).map(|_| Vec::new()).collect())
        .collect();
    for i in 0..n {
        for j in i..n {
            let t = Instant::now();
            let (ka, kb) = (GRID_KINDS[i], GRID_KINDS[j]);
            let lab = Lab::new(
                LabConfig::new(ka, kb)
                    .delays(DELAY_MS, DELAY_MS, DELAY_MS)
                    .second_hosts(false),
            );
            let _server = lab.start_server_with(&["--relay"]);
            let svc = SocketAddr::from((Ipv4Addr::LOCALHOST, ECHO_PORT));
            let _echo_b = EchoServer::start(&lab, Node::Host(Site::B), svc);
            let agent_b = lab.start_agent(
                Node::Host(Site::B),
                "svc-b",
                ECHO_PORT,
                Auth::Secret(SECRET),
            );
            let a_side = (i != j).then(|| {
                (
                    EchoServer::start(&lab, Node::Host(Site::A), svc),
                    lab.start_agent(
                        Node::Host(Site::A),
                        "svc-a",
                        ECHO_PORT,
                        Auth::Secret(SECRET),
                    ),
                )
            });
            for k in 0..GRID_ATTEMPTS as u64 {
                cells[i][j].push(grid_attempt(&lab, Site::A, "svc-b", &agent_b, 2 * k));
                if let Some((_, agent_a)) = &a_side {
                    cells[j][i].push(grid_attempt(&lab, Site::B, "svc-a", agent_a, 2 * k + 1));
                }
            }
            eprintln!(
                "grid {} / {}: {} | {} ({:.1} s)",
                nat_name(ka),
                nat_name(kb),
                grid_cell(&cells[i][j]),
                grid_cell(&cells[j][i]),
                t.elapsed().as_secs_f64()
            );
        }
    }
    let mut header = "| client ↓ agent → |".to_string();
    let mut rule = "|---|".to_string();
    for k in GRID_KINDS {
        header.push_str(&format!(" {} |", nat_name(k)));
        rule.push_str("---|");
    }
    out.line(header);
    out.line(rule);
    let mut notes = Vec::new();
    for (i, row) in cells.iter().enumerate() {
        let mut line = format!("| **{}** |", nat_name(GRID_KINDS[i]));
        for (j, cell) in row.iter().enumerate() {
            line.push_str(&format!(" {} |", grid_cell(cell)));
            let pair = format!(
                "client {} → agent {}",
                nat_name(GRID_KINDS[i]),
                nat_name(GRID_KINDS[j])
            );
            let expect_direct = !(is_symmetric(GRID_KINDS[i]) && is_symmetric(GRID_KINDS[j]));
            for (k, a) in cell.iter().enumerate() {
                match a {
                    Attempt::Failed(why) => {
                        problems.push(format!("grid {pair}, attempt {k}: failed: {why}"))
                    }
                    Attempt::Ok { path, ms } if expect_direct && path != "direct" => {
                        notes.push(format!(
                            "- {pair}, attempt {k}: {path} in {ms} ms, where a direct path exists"
                        ))
                    }
                    Attempt::Ok { .. } => {}
                }
            }
        }
        out.line(line);
    }
    out.line("");
    out.line(
        "Expected: direct everywhere except symmetric ↔ symmetric (relayed); \
         symmetric ↔ anything else uses birthday punching.",
    );
    for n in notes {
        out.line(n);
    }
}
