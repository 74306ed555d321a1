//! The benchmarks (Linux only: the NAT lab is made of network namespaces).

use crate::lab_support::{self, Auth, P2pncLab, Report};
use natlab::{Cgn, EchoServer, Firewall, Lab, LabConfig, Nat, Node, Proc, Site, Spawn, in_netns};
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpStream};
use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

const SECRET: &str = "bench-secret-51c2";
/// Echo service on host B (all addresses: reached by the agent and by the port forward).
const ECHO_PORT: u16 = 50302;
/// Port forwards on B's router (below the ephemeral port range, so no punch port collides).
const FWD_ECHO_PORT: u16 = 20302;
/// `connect --listen` port on host A's loopback (the warm-path bench).
const LISTEN_PORT: u16 = 9000;
/// First argument that turns this binary into the plain TCP client of the latency baseline.
const HELPER_ARG: &str = "__tcp-client";

/// One-way delay of every internet attachment (ms): RTT between any two hosts is twice that.
pub(crate) const DELAY_MS: u32 = 20;
const RTT_MS: f64 = 2.0 * DELAY_MS as f64;
/// Measured runs per latency figure, after `LATENCY_WARMUP` unmeasured ones.
const LATENCY_RUNS: usize = 21;
const LATENCY_WARMUP: usize = 2;
/// Least time between the starts of two measured connects from one host. Each `connect`
/// process sweeps the routers in front of it once, and routers answer ICMP at about one
/// message per second per destination (Linux: a burst of 6, then one a second): back-to-back
/// connects several times a second silence the home router and the CGN, and each connect whose
/// sweep finds nothing falls back to TTL 2, which a CGN swallows. One connect a second, a
/// user's pace at most, keeps them answering.
const LATENCY_PACE: Duration = Duration::from_secs(1);
/// The 4-RTT bound (handshake to the server, request, simultaneous open, one echo) and the
/// issue's target for the median.
const BOUND_RTT: f64 = 4.0;
const TARGET_RTT: f64 = 4.5;
/// How much longer than the single-NAT case a NAT444 or IPv6 connect may take to its first
/// echo, in RTTs (the target for carrier-grade NAT).
const MAX_EXTRA_RTT: f64 = 0.5;

/// Attempts per grid cell.
const GRID_ATTEMPTS: usize = 3;
const GRID_PAYLOAD: usize = 4096;

const BENCHES: [&str; 6] = [
    "latency",
    "throughput",
    "grid",
    "warm",
    "warm-throughput",
    "ranges",
];

pub fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some(HELPER_ARG) => return tcp_client(args.get(1).map(String::as_str).unwrap_or("")),
        Some(crate::throughput::LIB_PUSH_ARG) => return crate::throughput::lib_push(&args[1..]),
        Some(crate::throughput::LIB_SINK_ARG) => return crate::throughput::lib_sink(&args[1..]),
        _ => {}
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
    // Leaves out the cases with IPv6: for a build without IPv6 support (`P2PNC_LAB_BIN`).
    let ipv4_only = args.iter().any(|a| a == "--ipv4-only");
    // The throughput benchmark measures with iperf3 (Debian package iperf3).
    let mut tools: Vec<&str> = Vec::new();
    if selected.contains(&"throughput") || selected.contains(&"warm-throughput") {
        tools.push("iperf3");
    }
    // The range-request benchmark serves its file with nginx (Debian package nginx-light).
    if selected.contains(&"ranges") {
        tools.push("nginx");
    }
    if !natlab::require_lab(&tools) {
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
            "latency" => latency(&mut out, &mut problems, ipv4_only),
            "throughput" => {
                crate::throughput::throughput(&mut out, &mut problems, crate::throughput::ALL_MODES)
            }
            "warm-throughput" => crate::throughput::throughput(
                &mut out,
                &mut problems,
                crate::throughput::WARM_MODES,
            ),
            "warm" => warm(&mut out, &mut problems),
            "ranges" => crate::ranges::ranges(&mut out, &mut problems),
            _ => grid(&mut out, &mut problems, ipv4_only),
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
pub(crate) struct Out {
    text: String,
}

impl Out {
    pub(crate) fn line(&mut self, s: impl AsRef<str>) {
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
pub(crate) fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

pub(crate) fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

pub(crate) fn nat_name(nat: Nat) -> &'static str {
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

/// One row of the latency table.
struct LatencyCase {
    /// What stands in front of the client (A) and the agent (B).
    name: &'static str,
    cfg: LabConfig,
    /// The server on IPv6 and IPv4, reached by name (else on IPv4, by address).
    dual_stack: bool,
    /// The address a direct session must reach.
    want: fn(&Lab) -> IpAddr,
    /// Measure plain TCP through a port forward on B's home router too (B has one NAT).
    plain: bool,
    /// The single-NAT row (index) with the same strategy, that this one is compared with.
    base: usize,
}

fn latency_cases() -> Vec<LatencyCase> {
    let base = |a: Nat, b: Nat| {
        LabConfig::new(a, b)
            .delays(DELAY_MS, DELAY_MS, DELAY_MS)
            .second_hosts(false)
    };
    let (drop, rst) = (Nat::RestrictedDrop, Nat::RestrictedRst);
    let symmetric = Nat::Symmetric { rst: false };
    let cone_cgn = Cgn::new(Nat::RestrictedDrop);
    let b_v4: fn(&Lab) -> IpAddr = |lab| lab.public_ip(Site::B).into();
    let b_v6: fn(&Lab) -> IpAddr = |lab| lab.host_ip6(Site::B).into();
    let v4 = |name, cfg, plain, base| LatencyCase {
        name,
        cfg,
        dual_stack: false,
        want: b_v4,
        plain,
        base,
    };
    let v6 = |name, cfg, base| LatencyCase {
        name,
        cfg,
        dual_stack: true,
        want: b_v6,
        plain: false,
        base,
    };
    vec![
        v4(
            "port-restricted, drop ↔ port-restricted, drop",
            base(drop, drop),
            true,
            0,
        ),
        v4(
            "port-restricted, RST ↔ port-restricted, RST",
            base(rst, rst),
            true,
            0,
        ),
        // The single-NAT row of birthday punching: compared with nothing.
        v4(
            "symmetric, drop ↔ port-restricted, drop (birthday)",
            base(symmetric, drop),
            false,
            2,
        ),
        v4(
            "drop ↔ NAT444 (cone CGN in front of B's drop router)",
            base(drop, drop).cgn(Site::B, cone_cgn),
            false,
            0,
        ),
        v4(
            "NAT444 ↔ NAT444 (cone CGNs in front of drop routers)",
            base(drop, drop)
                .cgn(Site::A, cone_cgn)
                .cgn(Site::B, cone_cgn),
            false,
            0,
        ),
        v4(
            "NAT444 (symmetric CGN in front of A's drop router) ↔ drop (birthday)",
            base(drop, drop).cgn(Site::A, Cgn::new(symmetric)),
            false,
            2,
        ),
        v6(
            "IPv6 ↔ IPv6, drop firewalls (dual stack, IPv4 drop routers)",
            base(drop, drop)
                .ipv6(Site::A, Firewall::Drop)
                .ipv6(Site::B, Firewall::Drop),
            0,
        ),
        v6(
            "IPv6 ↔ IPv6, RST firewalls (dual stack, IPv4 RST routers)",
            base(rst, rst)
                .ipv6(Site::A, Firewall::Rst)
                .ipv6(Site::B, Firewall::Rst),
            1,
        ),
    ]
}

/// The medians of one latency case: (spawn to first echo, setup reported by connect), ms.
type Medians = (f64, f64);

fn latency(out: &mut Out, problems: &mut Vec<String>, ipv4_only: bool) {
    out.line(format!(
        "## latency: spawn of the client process to the first echoed byte \
         ({DELAY_MS} ms one-way per site and for the server: RTT {RTT_MS:.0} ms between any two hosts)"
    ));
    out.line("");
    out.line(format!(
        "{LATENCY_RUNS} runs per row (after {LATENCY_WARMUP} warm-up runs), p2pnc and plain runs \
         interleaved. plain TCP = a minimal Rust client (this bench binary) through a port forward \
         on B's router to the same echo service: TCP handshake + echo = 2 RTT + process start. \
         One p2pnc connect a second at most (routers answer the TTL sweeps' ICMP at about one \
         a second per destination). The NAT444 and IPv6 rows are compared with the single-NAT \
         row of the same run with the same strategy (Δ median): drop ↔ drop, or for the \
         symmetric CGN symmetric ↔ drop (birthday punching)."
    ));
    out.line("");
    out.line(
        "| NATs (client A, agent B) | client | p10 ms | median ms | p90 ms | median RTT | Δ median vs single NAT, same strategy |",
    );
    out.line("|---|---|---:|---:|---:|---:|---:|");
    let mut notes = Vec::new();
    let cases = latency_cases();
    let mut medians: Vec<Option<Medians>> = vec![None; cases.len()];
    for (i, case) in cases.iter().enumerate() {
        if ipv4_only && case.dual_stack {
            continue;
        }
        let base = (case.base != i).then(|| (cases[case.base].name, medians[case.base]));
        medians[i] = latency_case(out, problems, &mut notes, case, base);
        eprintln!("latency {}: done", case.name);
    }
    out.line("");
    for n in notes {
        out.line(n);
    }
}

/// Measures one case, writes its rows and notes; returns its medians.
fn latency_case(
    out: &mut Out,
    problems: &mut Vec<String>,
    notes: &mut Vec<String>,
    case: &LatencyCase,
    base: Option<(&str, Option<Medians>)>,
) -> Option<Medians> {
    let single = base.and_then(|(_, m)| m);
    let lab = Lab::new(case.cfg);
    let (url, _server) = if case.dual_stack {
        let server = lab.start_server_dual_stack(&[]);
        (lab_support::server_url_by_name(), server)
    } else {
        (lab_support::server_url(), lab.start_server())
    };
    let _echo = EchoServer::start(
        &lab,
        Node::Host(Site::B),
        SocketAddr::from((Ipv4Addr::UNSPECIFIED, ECHO_PORT)),
    );
    let agent = lab.start_agent_at(
        &url,
        Node::Host(Site::B),
        "svc-b",
        ECHO_PORT,
        Auth::Secret(SECRET),
        &[],
    );
    let fwd = case.plain.then(|| {
        lab.port_forward(
            Site::B,
            FWD_ECHO_PORT,
            SocketAddrV4::new(lab.host_ip(Site::B), ECHO_PORT),
        )
    });
    let p2p_spec = || {
        lab.p2pnc("connect")
            .args(["connect", "--report", "json", "--server", &url])
            .args(["--peer", "svc-b", "--secret", SECRET, "--stdio"])
    };
    let helper = std::env::current_exe().expect("current_exe");
    let helper = helper.to_str().expect("UTF-8 path of the bench binary");
    let want = (case.want)(&lab);
    let name = case.name;

    let (mut p2p, mut plain, mut setup, mut after) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..LATENCY_WARMUP + LATENCY_RUNS {
        let measured = i >= LATENCY_WARMUP;
        let next = Instant::now() + LATENCY_PACE;
        match spawn_to_first_echo(&lab, Node::Host(Site::A), p2p_spec()) {
            Ok((t, stderr)) => match lab_support::reports(&stderr)
                .iter()
                .find_map(Report::connected)
            {
                Some(c) if c.path == "direct" && c.addr.ip() == want => {
                    if measured {
                        p2p.push(t.as_secs_f64() * 1e3);
                        setup.push(c.ms as f64);
                        after.push(t.as_secs_f64() * 1e3 - c.ms as f64);
                    }
                }
                c => problems.push(format!(
                    "latency {name}: run {i}: not a direct session to {want} ({c:?}); \
                     connect stderr:\n{}\nagent stderr:\n{}",
                    stderr.trim_end(),
                    agent.stderr().trim_end()
                )),
            },
            Err(e) => problems.push(format!("latency {name}: run {i}: {e}")),
        }
        if let Some(fwd) = fwd {
            let fwd_s = fwd.to_string();
            let plain_spec = Spawn::new(helper).args([HELPER_ARG, &fwd_s]).name("plain");
            match spawn_to_first_echo(&lab, Node::Host(Site::A), plain_spec) {
                Ok((t, _)) if measured => plain.push(t.as_secs_f64() * 1e3),
                Ok(_) => {}
                Err(e) => problems.push(format!("latency {name} baseline: run {i}: {e}")),
            }
        }
        thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    let (p2p, plain, setup, after) = (sorted(p2p), sorted(plain), sorted(setup), sorted(after));
    let delta = |v: f64, base: Option<f64>| match base {
        Some(b) => format!("{:+.0} ms = {:+.2} RTT", v - b, (v - b) / RTT_MS),
        None => String::new(),
    };
    let row = |out: &mut Out, first: &str, what: &str, v: &[f64], base: Option<f64>| {
        if v.is_empty() {
            out.line(format!("| {first} | {what} | – | – | – | – | |"));
            return;
        }
        out.line(format!(
            "| {first} | {what} ({} runs) | {:.0} | {:.0} | {:.0} | {:.2} | {} |",
            v.len(),
            pct(v, 0.1),
            pct(v, 0.5),
            pct(v, 0.9),
            pct(v, 0.5) / RTT_MS,
            delta(pct(v, 0.5), base)
        ));
    };
    row(
        out,
        name,
        "`p2pnc connect --stdio`, direct",
        &p2p,
        single.map(|s| s.0),
    );
    if case.plain {
        row(out, "", "plain TCP via port forward", &plain, None);
    }
    if p2p.is_empty() {
        return None;
    }
    let medians = (pct(&p2p, 0.5), pct(&setup, 0.5));
    if !plain.is_empty() {
        let start = pct(&plain, 0.5) - 2.0 * RTT_MS;
        let net = pct(&p2p, 0.5) - start;
        out.line(format!(
            "| | p2pnc minus process start (plain median − 2 RTT = {start:.0} ms) | | {net:.0} | | {:.2} | |",
            net / RTT_MS
        ));
        notes.push(format!(
            "- {name}: p2pnc median {:.2} RTT raw, {:.2} RTT net of process start \
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
    if let (Some((base_name, _)), Some((first_echo, setup_ms))) = (base, single)
        && !case.plain
    {
        let d = (medians.0 - first_echo) / RTT_MS;
        notes.push(format!(
            "- {name}: median to the first echo {:.0} ms, {d:+.2} RTT from the {base_name} row \
             (target within {MAX_EXTRA_RTT} RTT: {}); setup median {:.0} ms ({:+.2} RTT)",
            medians.0,
            if d <= MAX_EXTRA_RTT { "met" } else { "NOT met" },
            medians.1,
            (medians.1 - setup_ms) / RTT_MS
        ));
    }
    Some(medians)
}

// ---------------------------------------------------------------------------------------------
// Grid
// ---------------------------------------------------------------------------------------------

/// What stands in front of a site's host in the grid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum GridKind {
    /// A home router of this kind; IPv4 only.
    Home(Nat),
    /// A port-restricted (drop) home router behind a carrier-grade NAT of this kind (NAT444);
    /// IPv4 only.
    Cgn(Nat),
    /// Dual stack: IPv6 behind this firewall (RFC 6092), IPv4 behind a port-restricted home
    /// router that drops (firewall drop) or answers with RST (firewall RST) alike.
    Dual(Firewall),
    /// IPv6 only, behind a firewall that drops.
    V6Only,
}

const GRID_KINDS: [GridKind; 11] = [
    GridKind::Home(Nat::None),
    GridKind::Home(Nat::FullCone),
    GridKind::Home(Nat::RestrictedRst),
    GridKind::Home(Nat::RestrictedDrop),
    GridKind::Home(Nat::Symmetric { rst: false }),
    GridKind::Home(Nat::Symmetric { rst: true }),
    GridKind::Cgn(Nat::RestrictedDrop),
    GridKind::Cgn(Nat::Symmetric { rst: false }),
    GridKind::Dual(Firewall::Drop),
    GridKind::Dual(Firewall::Rst),
    GridKind::V6Only,
];

impl GridKind {
    fn name(self) -> String {
        match self {
            GridKind::Home(n) => nat_name(n).to_string(),
            GridKind::Cgn(Nat::Symmetric { .. }) => "NAT444, symmetric CGN".into(),
            GridKind::Cgn(_) => "NAT444, cone CGN".into(),
            GridKind::Dual(Firewall::Rst) => "IPv6 (RST) + IPv4 (RST)".into(),
            GridKind::Dual(_) => "IPv6 (drop) + IPv4 (drop)".into(),
            GridKind::V6Only => "IPv6 only (drop)".into(),
        }
    }

    /// The home router's IPv4 NAT.
    fn home_nat(self) -> Nat {
        match self {
            GridKind::Home(n) => n,
            GridKind::Dual(Firewall::Rst) => Nat::RestrictedRst,
            GridKind::Cgn(_) | GridKind::Dual(_) | GridKind::V6Only => Nat::RestrictedDrop,
        }
    }

    fn has_v6(self) -> bool {
        matches!(self, GridKind::Dual(_) | GridKind::V6Only)
    }

    fn has_v4(self) -> bool {
        self != GridKind::V6Only
    }

    /// Whether its IPv4 mapping is endpoint-dependent.
    fn symmetric_v4(self) -> bool {
        matches!(self, GridKind::Home(n) | GridKind::Cgn(n) if n.is_symmetric())
    }

    /// `cfg` with this kind at `site` (its home router's NAT already set).
    fn apply(self, cfg: LabConfig, site: Site) -> LabConfig {
        match self {
            GridKind::Home(_) => cfg,
            GridKind::Cgn(n) => cfg.cgn(site, Cgn::new(n)),
            GridKind::Dual(fw) => cfg.ipv6(site, fw),
            GridKind::V6Only => cfg
                .ipv6(site, Firewall::Drop)
                .host_stack(Node::Host(site), natlab::Stack::V6),
        }
    }
}

/// Whether a pair has a direct path: over IPv6 when both have it, else over IPv4 unless both
/// map endpoint-dependently.
fn grid_direct(a: GridKind, b: GridKind) -> bool {
    (a.has_v6() && b.has_v6())
        || (a.has_v4() && b.has_v4() && !(a.symmetric_v4() && b.symmetric_v4()))
}

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

/// One `connect --stdio` session from `client`'s host to `peer` (served by `agent`) through
/// the server at `url`, echoing a small payload; a direct one must reach `want`.
fn grid_attempt(
    lab: &Lab,
    url: &str,
    (client, want): (Site, IpAddr),
    peer: &str,
    agent: &Proc,
    seed: u64,
) -> Attempt {
    let payload = natlab::pattern(seed, GRID_PAYLOAD);
    let timeout = Duration::from_secs(20);
    let node = Node::Host(client);
    let run = lab.connect_stdio_at(url, node, peer, Some(SECRET), &payload, timeout, &[]);
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
    if c.path == "direct" && c.addr.ip() != want {
        return fail(format!("direct to {}, expected {want}", c.addr));
    }
    Attempt::Ok {
        path: c.path,
        ms: c.ms,
    }
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

fn grid(out: &mut Out, problems: &mut Vec<String>, ipv4_only: bool) {
    let kinds: Vec<GridKind> = GRID_KINDS
        .into_iter()
        .filter(|k| !(ipv4_only && k.has_v6()))
        .collect();
    let n = kinds.len();
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
            let (ka, kb) = (kinds[i], kinds[j]);
            let cfg = LabConfig::new(ka.home_nat(), kb.home_nat())
                .delays(DELAY_MS, DELAY_MS, DELAY_MS)
                .second_hosts(false);
            let lab = Lab::new(kb.apply(ka.apply(cfg, Site::A), Site::B));
            // IPv4-only pairs as before: the server on IPv4, by address. With IPv6 anywhere,
            // the server on both families, by name.
            let dual = ka.has_v6() || kb.has_v6();
            let (url, _server) = if dual {
                let server = lab.start_server_dual_stack(&["--relay"]);
                (lab_support::server_url_by_name(), server)
            } else {
                (
                    lab_support::server_url(),
                    lab.start_server_with(&["--relay"]),
                )
            };
            // A direct stream reaches the agent's IPv6 address when both have IPv6.
            let want = |site: Site| -> IpAddr {
                if ka.has_v6() && kb.has_v6() {
                    lab.host_ip6(site).into()
                } else {
                    lab.public_ip(site).into()
                }
            };
            let svc = SocketAddr::from((Ipv4Addr::LOCALHOST, ECHO_PORT));
            let _echo_b = EchoServer::start(&lab, Node::Host(Site::B), svc);
            let expose = |site: Site, id: &str| {
                let auth = Auth::Secret(SECRET);
                lab.start_agent_at(&url, Node::Host(site), id, ECHO_PORT, auth, &[])
            };
            let agent_b = expose(Site::B, "svc-b");
            let a_side = (i != j).then(|| {
                (
                    EchoServer::start(&lab, Node::Host(Site::A), svc),
                    expose(Site::A, "svc-a"),
                )
            });
            for k in 0..GRID_ATTEMPTS as u64 {
                let to_b = (Site::A, want(Site::B));
                cells[i][j].push(grid_attempt(&lab, &url, to_b, "svc-b", &agent_b, 2 * k));
                if let Some((_, agent_a)) = &a_side {
                    let to_a = (Site::B, want(Site::A));
                    let attempt = grid_attempt(&lab, &url, to_a, "svc-a", agent_a, 2 * k + 1);
                    cells[j][i].push(attempt);
                }
            }
            eprintln!(
                "grid {} / {}: {} | {} ({:.1} s)",
                ka.name(),
                kb.name(),
                grid_cell(&cells[i][j]),
                grid_cell(&cells[j][i]),
                t.elapsed().as_secs_f64()
            );
        }
    }
    let mut header = "| client ↓ agent → |".to_string();
    let mut rule = "|---|".to_string();
    for &k in &kinds {
        header.push_str(&format!(" {} |", k.name()));
        rule.push_str("---|");
    }
    out.line(header);
    out.line(rule);
    let mut notes = Vec::new();
    for (i, row) in cells.iter().enumerate() {
        let mut line = format!("| **{}** |", kinds[i].name());
        for (j, cell) in row.iter().enumerate() {
            line.push_str(&format!(" {} |", grid_cell(cell)));
            let pair = format!("client {} → agent {}", kinds[i].name(), kinds[j].name());
            let expect_direct = grid_direct(kinds[i], kinds[j]);
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
        "Expected: direct everywhere except where no direct path exists: symmetric (home router \
         or CGN) ↔ symmetric without IPv6 on both ends, and IPv6-only ↔ IPv4-only (relayed); \
         symmetric ↔ anything else uses birthday punching; ends that both have IPv6 connect \
         over it. NAT444: a port-restricted (drop) home router behind the CGN. Dual-stack \
         kinds: IPv4 behind a port-restricted router of the firewall's kind.",
    );
    for n in notes {
        out.line(n);
    }
}

// ---------------------------------------------------------------------------------------------
// Warm paths
// ---------------------------------------------------------------------------------------------

/// Local connections per row of the warm-path bench (cold and warm interleaved).
const WARM_RUNS: usize = 21;
/// Pause between two local connections: an application's pace, below the silence after which
/// a stream's open pings the path along.
const WARM_PACE: Duration = Duration::from_millis(200);
/// Quiet before each connection of the "after quiet" row: past the 2 s after which an open
/// sends a ping along with the stream.
const WARM_QUIET: Duration = Duration::from_secs(3);
const WARM_QUIET_RUNS: usize = 5;
/// Idle window for the keepalive traffic: five keepalive intervals of 25 s.
const IDLE_WINDOW: Duration = Duration::from_secs(125);
/// The target for later connections' median, in RTTs: one round trip, and processing.
const WARM_TARGET_RTT: f64 = 1.2;
/// IPv4 and TCP headers with the timestamp option, per segment.
const SEGMENT_HEADERS: u64 = 20 + 32;

/// From `node`, connects to a `connect --listen` at `port` on its loopback, writes one byte
/// and times until it comes back; then echoes `len` bytes more, byte-exact, to a clean end.
fn first_echo(lab: &Lab, node: Node, port: u16, seed: u64, len: usize) -> io::Result<Duration> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    in_netns(&lab.ns(node), || {
        let started = Instant::now();
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(20)))?;
        s.write_all(&[seed as u8])?;
        let mut first = [0u8; 1];
        s.read_exact(&mut first)?;
        let took = started.elapsed();
        let payload = natlab::pattern(seed, len);
        s.write_all(&payload)?;
        s.shutdown(Shutdown::Write)?;
        let mut back = Vec::new();
        s.read_to_end(&mut back)?;
        if first[0] != seed as u8 || back != payload {
            return Err(io::Error::other("echo differs"));
        }
        Ok(took)
    })
}

/// TCP counters of one connection (`ss -tinp`).
#[derive(Debug, Default, Clone, Copy)]
struct TcpCounters {
    bytes_sent: u64,
    bytes_received: u64,
    segs_out: u64,
    segs_in: u64,
}

impl TcpCounters {
    /// Bytes on the wire both ways: payload and IPv4 + TCP headers.
    fn wire_bytes(&self) -> u64 {
        self.bytes_sent + self.bytes_received + (self.segs_out + self.segs_in) * SEGMENT_HEADERS
    }

    fn segments(&self) -> u64 {
        self.segs_out + self.segs_in
    }

    fn minus(&self, before: &TcpCounters) -> TcpCounters {
        TcpCounters {
            bytes_sent: self.bytes_sent - before.bytes_sent,
            bytes_received: self.bytes_received - before.bytes_received,
            segs_out: self.segs_out - before.segs_out,
            segs_in: self.segs_in - before.segs_in,
        }
    }
}

/// Established TCP connections on `node` toward `dst`: (owning pid, local port, counters).
fn tcp_counters(lab: &Lab, node: Node, dst: Ipv4Addr) -> Vec<(u32, u16, TcpCounters)> {
    let filter = format!("dst {dst}");
    let out = lab.run(node, "ss", &["-tinpH", "state", "established", &filter]);
    let text = String::from_utf8_lossy(&out.stdout);
    let mut found: Vec<(u32, u16, TcpCounters)> = Vec::new();
    let field = |line: &str, key: &str| -> u64 {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    for line in text.lines() {
        if let Some(users) = line.split("pid=").nth(1) {
            let pid = users
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .and_then(|p| p.parse().ok())
                .unwrap_or(0);
            // Columns: Recv-Q Send-Q Local:Port Peer:Port users (state filtered out).
            let port = line
                .split_whitespace()
                .nth(2)
                .and_then(|l| l.rsplit(':').next())
                .and_then(|p| p.parse().ok())
                .unwrap_or(0);
            found.push((pid, port, TcpCounters::default()));
        } else if let Some(last) = found.last_mut()
            && line.contains("segs_out:")
        {
            last.2 = TcpCounters {
                bytes_sent: field(line, "bytes_sent:"),
                bytes_received: field(line, "bytes_received:"),
                segs_out: field(line, "segs_out:"),
                segs_in: field(line, "segs_in:"),
            };
        }
    }
    found
}

/// The warm-path reports (`"warm": true`) among a `connect --listen` process's reports.
pub(crate) fn warm_reports(p: &Proc) -> usize {
    p.stderr()
        .lines()
        .filter(|l| l.starts_with('{'))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|r| r["report"] == "connect" && r["ok"] == true && r["warm"] == true)
        .count()
}

fn warm(out: &mut Out, problems: &mut Vec<String>) {
    let nat = Nat::RestrictedDrop;
    out.line(format!(
        "## warm paths: local TCP connect to the first echoed byte through `connect --listen` \
         ({DELAY_MS} ms one-way per site and for the server: RTT {RTT_MS:.0} ms; A and B: {})",
        nat_name(nat)
    ));
    out.line("");
    out.line(format!(
        "{WARM_RUNS} local connections per row, one every {} ms, cold and warm interleaved; each \
         writes one byte and times its echo, then echoes 4 KiB. cold = `connect --listen \
         --warm-idle 0` (every local connection punches its own path); warm = `connect --listen` \
         (the first local connection builds the warm path, the later ones open a stream on it).",
        WARM_PACE.as_millis()
    ));
    out.line("");
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
        "echo-b",
        ECHO_PORT,
        Auth::Secret(SECRET),
    );
    let a = Node::Host(Site::A);
    let start = |port: u16, extra: &[&str]| {
        let listen = format!("127.0.0.1:{port}");
        let spec = lab
            .p2pnc(&format!("connect-listen-{port}"))
            .args([
                "connect",
                "--report",
                "json",
                "--server",
                &lab_support::server_url(),
            ])
            .args(["--peer", "echo-b", "--secret", SECRET, "--listen", &listen])
            .args(extra);
        let p = lab.spawn_cmd(a, spec);
        let deadline = Instant::now() + Duration::from_secs(15);
        while !lab.listening(a, port) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        p
    };
    let (warm_port, cold_port) = (LISTEN_PORT, LISTEN_PORT + 1);
    let warm_p = start(warm_port, &[]);
    let cold_p = start(cold_port, &["--warm-idle", "0"]);
    let (mut cold, mut warm) = (Vec::new(), Vec::new());
    let mut failed = Vec::new();
    for i in 0..WARM_RUNS {
        let seed = 1000 + 2 * i as u64;
        match first_echo(&lab, a, cold_port, seed, 4096) {
            Ok(t) => cold.push(t.as_secs_f64() * 1e3),
            Err(e) => failed.push(format!("cold #{i}: {e}")),
        }
        thread::sleep(WARM_PACE);
        match first_echo(&lab, a, warm_port, seed + 1, 4096) {
            Ok(t) => warm.push(t.as_secs_f64() * 1e3),
            Err(e) => failed.push(format!("warm #{i}: {e}")),
        }
        thread::sleep(WARM_PACE);
    }
    let mut quiet = Vec::new();
    for i in 0..WARM_QUIET_RUNS {
        thread::sleep(WARM_QUIET);
        match first_echo(&lab, a, warm_port, 3000 + i as u64, 4096) {
            Ok(t) => quiet.push(t.as_secs_f64() * 1e3),
            Err(e) => failed.push(format!("warm after quiet #{i}: {e}")),
        }
    }
    eprintln!("warm: latency done");
    let first = warm.first().copied();
    let later = sorted(warm.iter().skip(1).copied().collect());
    let (cold, quiet) = (sorted(cold), sorted(quiet));
    out.line("| local connections | runs | p10 ms | median ms | p90 ms | median RTT |");
    out.line("|---|---:|---:|---:|---:|---:|");
    let row = |out: &mut Out, name: &str, v: &[f64]| {
        if v.is_empty() {
            out.line(format!("| {name} | 0 | – | – | – | – |"));
        } else {
            out.line(format!(
                "| {name} | {} | {:.0} | {:.0} | {:.0} | {:.2} |",
                v.len(),
                pct(v, 0.1),
                pct(v, 0.5),
                pct(v, 0.9),
                pct(v, 0.5) / RTT_MS
            ));
        }
    };
    row(
        out,
        "cold: each punches its own path (`--warm-idle 0`)",
        &cold,
    );
    row(
        out,
        "warm path: the first (it builds the path)",
        &first.into_iter().collect::<Vec<_>>(),
    );
    row(out, "warm path: the later ones", &later);
    row(
        out,
        &format!(
            "warm path: after {} s of quiet (a ping goes along)",
            WARM_QUIET.as_secs()
        ),
        &quiet,
    );
    out.line("");
    if !later.is_empty() {
        let m = pct(&later, 0.5) / RTT_MS;
        out.line(format!(
            "Later connections: median {m:.2} RTT (target ≤ {WARM_TARGET_RTT} RTT: {}); cold \
             median {:.2} RTT.",
            if m <= WARM_TARGET_RTT {
                "met"
            } else {
                "NOT met"
            },
            if cold.is_empty() {
                f64::NAN
            } else {
                pct(&cold, 0.5) / RTT_MS
            }
        ));
    }
    // Each connection reports when it ends, just after its echo came back.
    let want = WARM_RUNS - 1 + WARM_QUIET_RUNS;
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut warm_ok = warm_reports(&warm_p);
    while warm_ok < want && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
        warm_ok = warm_reports(&warm_p);
    }
    if warm_ok < want {
        problems.push(format!(
            "warm paths: {warm_ok} of {want} later connections reported warm; connect stderr:\n{}",
            tail(&warm_p.stderr(), 30)
        ));
    }
    if !failed.is_empty() {
        problems.push(format!(
            "warm paths: failed connections: {failed:?}\n--- warm connect:\n{}\n--- agent:\n{}",
            tail(&warm_p.stderr(), 30),
            tail(&agent.stderr(), 30)
        ));
    }

    // Idle: the warm path with no stream, beside one idle plain connection (its own punched
    // path, held open by TCP keepalive) for comparison; counted on host A for both ways.
    let held = in_netns(&lab.ns(a), || {
        let s = TcpStream::connect_timeout(
            &SocketAddr::from((Ipv4Addr::LOCALHOST, cold_port)),
            Duration::from_secs(10),
        )?;
        s.set_read_timeout(Some(Duration::from_secs(20)))?;
        (&s).write_all(b"x")?;
        let mut one = [0u8; 1];
        (&s).read_exact(&mut one)?;
        Ok::<_, io::Error>(s)
    });
    let held = match held {
        Ok(s) => s,
        Err(e) => {
            problems.push(format!("warm paths: the idle plain connection failed: {e}"));
            return;
        }
    };
    thread::sleep(Duration::from_secs(1));
    let dst = lab.public_ip(Site::B);
    let before = tcp_counters(&lab, a, dst);
    thread::sleep(IDLE_WINDOW);
    let after = tcp_counters(&lab, a, dst);
    drop(held);
    let per_minute = |pid: u32| -> Option<(f64, f64)> {
        let b = before.iter().find(|c| c.0 == pid)?;
        let x = after.iter().find(|c| c.0 == pid && c.1 == b.1)?;
        let d = x.2.minus(&b.2);
        let m = 60.0 / IDLE_WINDOW.as_secs_f64();
        Some((d.wire_bytes() as f64 * m, d.segments() as f64 * m))
    };
    out.line(format!(
        "Idle for {} s (bytes on the wire at host A, both ways, IPv4 and TCP headers included):",
        IDLE_WINDOW.as_secs()
    ));
    out.line("");
    out.line("| idle connection | bytes per minute | segments per minute |");
    out.line("|---|---:|---:|");
    for (name, pid) in [
        (
            "warm path, no stream (a ping after 25 s of silence)",
            warm_p.pid(),
        ),
        ("plain connection (TCP keepalive after 15 s)", cold_p.pid()),
    ] {
        match per_minute(pid) {
            Some((bytes, segs)) => out.line(format!("| {name} | {bytes:.0} | {segs:.1} |")),
            None => {
                out.line(format!("| {name} | – | – |"));
                problems.push(format!(
                    "warm paths: no connection of pid {pid} to {dst} in `ss`: before {before:?}, \
                     after {after:?}"
                ));
            }
        }
    }
    out.line("");
}
