//! The throughput benchmark: iperf3 from host A to host B through a plain port forward (the
//! baseline), through `connect --listen` → direct path → `expose`, encrypted (the default:
//! over a warm path, and with `--warm-idle 0`, one punched connection per transfer) and with
//! `--no-encrypt` on both ends, and the library used directly (a program that
//! connects with `p2pnc::connect` and pushes bytes into the stream, and one that accepts with
//! `p2pnc::Agent` and counts them: no local proxy on either side); with 20 ms one-way delay
//! and without. Each figure is a ratio to the baseline of the same run, with the CPU time the
//! p2pnc processes spent per GB carried.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant};

use natlab::{Lab, LabConfig, Nat, Node, Proc, Site, Spawn};
use serde::Deserialize;

use crate::lab_support::{self, Auth, P2pncLab, Report, server_url};
use crate::linux::{DELAY_MS, Out, nat_name, pct, sorted};

const SECRET: &str = "bench-secret-51c2";
/// iperf3's server on host B (all addresses: reached by the agents and the port forward).
const IPERF_PORT: u16 = 5201;
/// The port forward to it on B's router (below the ephemeral range: no punch port collides).
const FWD_IPERF_PORT: u16 = 20304;
/// `connect --listen` ports on host A's loopback: encrypted over a warm path, with
/// `--no-encrypt`, and encrypted with `--warm-idle 0` (cold).
const LISTEN_ENCRYPTED: u16 = 9000;
const LISTEN_PLAIN: u16 = 9001;
const LISTEN_COLD: u16 = 9002;
/// First arguments that turn this binary into the library's sender or receiver.
pub const LIB_PUSH_ARG: &str = "__lib-push";
pub const LIB_SINK_ARG: &str = "__lib-sink";
/// Ids of the agents on host B: `expose --no-encrypt` (it grants raw streams to clients that
/// ask, and encrypts the others), and the library receiver (likewise).
const EXPOSE_ID: &str = "iperf-b";
const LIB_ID: &str = "lib-b";

/// Seconds measured per transfer, after `TP_OMIT_SECS` of slow start that are not counted
/// (iperf3's `-O`; the library receiver leaves out the same first second).
const TP_SECS: u64 = 5;
const TP_OMIT_SECS: u64 = 1;
/// Transfers per mode and delay, interleaved across the modes.
const TP_REPS: usize = 3;
/// Time a transfer may take beyond its length (setup of two p2pnc sessions, iperf3's
/// exchange of results) before it counts as hung and is killed.
const TP_SLACK: Duration = Duration::from_secs(20);
/// How long a library sender may take to connect, and one of its writes or reads to finish.
const LIB_CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
const LIB_IO_TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes per write of the library sender (iperf3 writes 128 KiB; larger writes let the
/// stream seal several records per system call).
const LIB_WRITE: usize = 256 << 10;
/// Time for a helper to come up and for reports to be written after a transfer.
const READY_TIMEOUT: Duration = Duration::from_secs(15);
const REPORT_TIMEOUT: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(20);

/// The cases: one-way delay (ms), and the hosts' largest TCP send buffer (`tcp_wmem`'s
/// maximum; `None`: Linux's default, 4 MiB). At 40 ms RTT the default caps one stream near
/// 4 MiB per RTT, about 100 MB/s, below what the lab's path carries: with the default every
/// mode measures how well its sender keeps that buffer full, with 16 MiB whether p2pnc slows
/// the path itself.
const CASES: [(u32, Option<u32>); 3] = [(0, None), (DELAY_MS, None), (DELAY_MS, Some(16 << 20))];

/// Targets of the ratio to the baseline, from the project's specification: (no added delay,
/// 20 ms one-way).
const TARGET_PLAIN: (f64, f64) = (0.8, 0.95);
const TARGET_ENCRYPTED: (f64, f64) = (0.6, 0.95);
/// Target of one bulk stream over a warm path against a cold direct stream (one punched
/// connection per transfer), same run: within 5 %.
const TARGET_WARM_VS_COLD: f64 = 0.95;

/// One way of moving the bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// iperf3 through a port forward (DNAT) on B's router: the baseline.
    Baseline,
    /// iperf3 through `connect --listen` and `expose`, encrypted (the default): the transfer
    /// is a stream on the warm path that `connect --listen` keeps.
    CliEncrypted,
    /// The same with `--warm-idle 0`: each local connection punches its own direct stream.
    CliCold,
    /// The same with `--no-encrypt` on both ends (spliced in the kernel on Linux).
    CliPlain,
    /// The library on both ends, encrypted.
    LibEncrypted,
    /// The library on both ends, unencrypted.
    LibPlain,
}

/// Every mode (`-- throughput`).
pub const ALL_MODES: &[Mode] = &[
    Mode::Baseline,
    Mode::CliCold,
    Mode::CliEncrypted,
    Mode::CliPlain,
    Mode::LibEncrypted,
    Mode::LibPlain,
];
/// The modes that compare a warm path with a cold stream (`-- warm-throughput`).
pub const WARM_MODES: &[Mode] = &[Mode::Baseline, Mode::CliCold, Mode::CliEncrypted];

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Mode::Baseline => "iperf3, plain TCP via port forward (baseline)",
            Mode::CliEncrypted => {
                "iperf3 via `connect --listen` + `expose`, encrypted, warm path (default)"
            }
            Mode::CliCold => {
                "iperf3 via `connect --listen --warm-idle 0` + `expose`, encrypted, cold"
            }
            Mode::CliPlain => "iperf3 via `connect --listen` + `expose`, `--no-encrypt`",
            Mode::LibEncrypted => "library direct (`p2pnc::connect` → `Agent`), encrypted",
            Mode::LibPlain => "library direct, unencrypted",
        }
    }

    fn encrypted(self) -> bool {
        matches!(
            self,
            Mode::CliEncrypted | Mode::CliCold | Mode::LibEncrypted
        )
    }

    /// The target ratio at `delay` ms, for p2pnc modes.
    fn target(self, delay: u32) -> Option<f64> {
        let (none, delayed) = match self {
            Mode::Baseline => return None,
            m if m.encrypted() => TARGET_ENCRYPTED,
            _ => TARGET_PLAIN,
        };
        Some(if delay == 0 { none } else { delayed })
    }
}

/// One transfer's figures.
struct Sample {
    /// Megabytes (10^6) per second over the measured seconds, at the receiver.
    mbps: f64,
    /// CPU seconds of the p2pnc processes over the whole transfer, and the bytes they
    /// carried in it.
    cpu: Option<(f64, u64)>,
}

/// CPU seconds (user + system) a process has used, from `/proc/PID/stat`.
fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces): state is field 3, utime 14,
    // stime 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / clock_ticks())
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// CPU seconds this process has used (the library sender reports its own).
fn own_cpu_secs() -> f64 {
    // SAFETY: rusage is plain data (all zeroes is a valid value), and getrusage fills it.
    let u = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut u);
        u
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(u.ru_utime) + secs(u.ru_stime)
}

// ---------------------------------------------------------------------------------------------
// The library's two ends (run as `lab __lib-push ...` and `lab __lib-sink ...` in the lab)
// ---------------------------------------------------------------------------------------------

/// What the library receiver prints (one JSON line) per stream.
#[derive(Deserialize)]
struct SinkLine {
    bytes: u64,
    measured_bytes: u64,
    measured_secs: f64,
    encrypted: bool,
}

/// What the library sender prints (one JSON line) when done.
#[derive(Deserialize)]
struct PushLine {
    path: String,
    encrypted: bool,
    cpu_secs: f64,
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().expect("a tokio runtime")
}

/// `__lib-push URL ID SECRET ENCRYPT(0|1) SECS`: connects with `p2pnc::connect`, writes for
/// SECS seconds, half-closes, waits for the receiver to close, and prints a [`PushLine`].
pub fn lib_push(args: &[String]) -> ExitCode {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let [url, id, secret, encrypt, secs] = args else {
        eprintln!("usage: {LIB_PUSH_ARG} URL ID SECRET ENCRYPT(0|1) SECS");
        return ExitCode::from(2);
    };
    let (encrypt, secs) = (encrypt == "1", secs.parse::<u64>().unwrap_or(TP_SECS));
    let run = async {
        let mut opts = p2pnc::ConnectOptions::new(url, id, Some(secret))?;
        opts.encrypt = encrypt;
        let mut conn = tokio::time::timeout(LIB_CONNECT_TIMEOUT, p2pnc::connect(&opts))
            .await
            .map_err(|_| anyhow::anyhow!("connect timed out"))??;
        let chunk = vec![0x5a_u8; LIB_WRITE];
        let end = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < end {
            tokio::time::timeout(LIB_IO_TIMEOUT, conn.stream.write_all(&chunk)).await??;
        }
        tokio::time::timeout(LIB_IO_TIMEOUT, conn.stream.shutdown()).await??;
        let mut rest = Vec::new();
        tokio::time::timeout(LIB_IO_TIMEOUT, conn.stream.read_to_end(&mut rest)).await??;
        println!(
            "{}",
            serde_json::json!({
                "path": conn.info.path.to_string(),
                "encrypted": conn.stream.is_encrypted(),
                "cpu_secs": own_cpu_secs(),
            })
        );
        anyhow::Ok(())
    };
    match runtime().block_on(run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `__lib-sink URL ID SECRET`: an `Agent` that grants unencrypted streams to clients that
/// ask; reads each stream to EOF and prints a [`SinkLine`] (the measured part leaves out the
/// first `TP_OMIT_SECS` after the first byte), then closes it.
pub fn lib_sink(args: &[String]) -> ExitCode {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let [url, id, secret] = args else {
        eprintln!("usage: {LIB_SINK_ARG} URL ID SECRET");
        return ExitCode::from(2);
    };
    let run = async {
        let mut opts = p2pnc::ExposeOptions::new(url, id, Some(secret))?;
        opts.allow_unencrypted = true;
        opts.port_mapping = false;
        let mut agent = p2pnc::Agent::start(opts).await?;
        while let Some(mut accepted) = agent.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; LIB_WRITE];
                let (mut total, mut first, mut mark) = (0u64, None, None);
                loop {
                    let read = tokio::time::timeout(LIB_IO_TIMEOUT, accepted.stream.read(&mut buf));
                    let n = match read.await {
                        Ok(Ok(0)) => break,
                        Ok(Ok(n)) => n,
                        Ok(Err(e)) => return eprintln!("stream failed: {e}"),
                        Err(_) => return eprintln!("stream stalled"),
                    };
                    let now = Instant::now();
                    let t0 = *first.get_or_insert(now);
                    total += n as u64;
                    if mark.is_none() && now - t0 >= Duration::from_secs(TP_OMIT_SECS) {
                        mark = Some((now, total));
                    }
                }
                let end = Instant::now();
                let (t_mark, b_mark) = mark.unwrap_or((first.unwrap_or(end), 0));
                println!(
                    "{}",
                    serde_json::json!({
                        "bytes": total,
                        "measured_bytes": total - b_mark,
                        "measured_secs": (end - t_mark).as_secs_f64(),
                        "encrypted": accepted.stream.is_encrypted(),
                    })
                );
                let _ = std::io::stdout().flush();
                let _ = tokio::time::timeout(LIB_IO_TIMEOUT, accepted.stream.shutdown()).await;
            });
        }
        anyhow::Ok(())
    };
    match runtime().block_on(run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The benchmark
// ---------------------------------------------------------------------------------------------

/// The processes of the run.
struct Setup {
    connect_encrypted: Proc,
    connect_cold: Proc,
    connect_plain: Proc,
    expose: Proc,
    lib_sink: Proc,
    fwd: SocketAddrV4,
}

/// Runs iperf3's client on host A toward `addr`; returns its JSON report.
fn iperf(lab: &Lab, addr: SocketAddr) -> Result<serde_json::Value, String> {
    let (ip, port) = (addr.ip().to_string(), addr.port().to_string());
    let (secs, omit) = (TP_SECS.to_string(), TP_OMIT_SECS.to_string());
    let spec = Spawn::new("iperf3")
        .name("iperf3-client")
        .args(["-c", &ip, "-p", &port, "-t", &secs, "-O", &omit, "-J"])
        .args(["--connect-timeout", "5000"])
        .pipe_stdout();
    let mut p = lab.spawn_cmd(Node::Host(Site::A), spec);
    let mut stdout = p.take_stdout().expect("piped stdout");
    let reader = thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let status = p.wait_timeout(Duration::from_secs(TP_SECS + TP_OMIT_SECS) + TP_SLACK);
    if status.is_none() {
        p.kill();
    }
    let text = reader.join().unwrap_or_default();
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| format!("iperf3 printed no JSON ({e}); stderr:\n{}", p.stderr()))?;
    if let Some(e) = json["error"].as_str() {
        return Err(format!("iperf3: {e}"));
    }
    match status {
        Some(s) if s.success() => Ok(json),
        s => Err(format!("iperf3 ended with {s:?}; stderr:\n{}", p.stderr())),
    }
}

/// The receiver's rate of an iperf3 report, in MB/s.
fn iperf_mbps(json: &serde_json::Value) -> Result<f64, String> {
    json["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|b| b / 8.0 / 1e6)
        .ok_or_else(|| "iperf3's report has no end.sum_received.bits_per_second".into())
}

/// The bytes iperf3 sent over the whole transfer, the left-out seconds included.
fn iperf_bytes(json: &serde_json::Value) -> u64 {
    json["intervals"]
        .as_array()
        .map(|v| v.iter().filter_map(|i| i["sum"]["bytes"].as_u64()).sum())
        .unwrap_or(0)
}

/// The JSON lines a process printed to stdout.
fn json_lines<T: for<'de> Deserialize<'de>>(p: &Proc) -> Vec<T> {
    p.stdout()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn cpu_of(procs: &[&Proc]) -> f64 {
    procs.iter().filter_map(|p| cpu_secs(p.pid())).sum()
}

/// One transfer in `mode`.
fn transfer(lab: &Lab, s: &Setup, mode: Mode) -> Result<Sample, String> {
    let wan_b = lab.wan_ip(Site::B);
    let rdv_before = lab.rdv_bytes();
    let sample = match mode {
        Mode::Baseline => {
            let json = iperf(lab, SocketAddr::V4(s.fwd))?;
            Sample {
                mbps: iperf_mbps(&json)?,
                cpu: None,
            }
        }
        Mode::CliEncrypted | Mode::CliCold | Mode::CliPlain => {
            let (conn, port) = match mode {
                Mode::CliEncrypted => (&s.connect_encrypted, LISTEN_ENCRYPTED),
                Mode::CliCold => (&s.connect_cold, LISTEN_COLD),
                _ => (&s.connect_plain, LISTEN_PLAIN),
            };
            let reported = lab_support::reports(&conn.stderr()).len();
            let cpu_before = cpu_of(&[conn, &s.expose]);
            let json = iperf(lab, SocketAddr::from((Ipv4Addr::LOCALHOST, port)))?;
            // iperf3 made two connections (control and data): two reports, both direct (two
            // sessions, or streams on one warm path).
            let reports = lab_support::wait_reports(conn, reported + 2, REPORT_TIMEOUT);
            let cpu = cpu_of(&[conn, &s.expose]) - cpu_before;
            let new: Vec<&Report> = reports.iter().skip(reported).collect();
            let direct = new
                .iter()
                .filter_map(|r| r.connected())
                .filter(|c| c.path == "direct" && c.addr.ip() == wan_b)
                .count();
            let encrypted = new
                .iter()
                .filter(|r| r.encrypted == Some(mode.encrypted()))
                .count();
            if new.len() != 2 || direct != 2 || encrypted != 2 {
                return Err(format!(
                    "{} sessions, {direct} direct to B, {encrypted} with encryption as asked \
                     (want 2 of each); connect stderr:\n{}",
                    new.len(),
                    conn.stderr().trim_end()
                ));
            }
            for r in &new {
                // iperf3 resets its data connection when it is done: that session's report
                // says it broke.
                eprintln!(
                    "{mode:?}: session reported sent {:?}, received {:?}, broke {:?}",
                    r.bytes_sent, r.bytes_received, r.broke
                );
            }
            Sample {
                mbps: iperf_mbps(&json)?,
                cpu: Some((cpu, iperf_bytes(&json))),
            }
        }
        Mode::LibEncrypted | Mode::LibPlain => {
            let before = json_lines::<SinkLine>(&s.lib_sink).len();
            let sink_cpu = cpu_of(&[&s.lib_sink]);
            let helper = std::env::current_exe().expect("current_exe");
            let encrypt = if mode.encrypted() { "1" } else { "0" };
            let secs = (TP_SECS + TP_OMIT_SECS).to_string();
            let url = server_url();
            let spec = Spawn::new(helper).name("lib-push").args([
                LIB_PUSH_ARG,
                &url,
                LIB_ID,
                SECRET,
                encrypt,
                &secs,
            ]);
            let mut p = lab.spawn_cmd(Node::Host(Site::A), spec);
            let status = p.wait_timeout(Duration::from_secs(TP_SECS + TP_OMIT_SECS) + TP_SLACK);
            let push: Option<PushLine> = json_lines(&p).into_iter().next();
            let deadline = Instant::now() + REPORT_TIMEOUT;
            while json_lines::<SinkLine>(&s.lib_sink).len() <= before && Instant::now() < deadline {
                thread::sleep(POLL);
            }
            let sink_cpu = cpu_of(&[&s.lib_sink]) - sink_cpu;
            let sink = json_lines::<SinkLine>(&s.lib_sink).into_iter().nth(before);
            match (status, push, sink) {
                (Some(st), Some(push), Some(sink))
                    if st.success()
                        && push.path == "direct"
                        && push.encrypted == mode.encrypted()
                        && sink.encrypted == mode.encrypted()
                        && sink.measured_secs > 0.0 =>
                {
                    Sample {
                        mbps: sink.measured_bytes as f64 / sink.measured_secs / 1e6,
                        cpu: Some((push.cpu_secs + sink_cpu, sink.bytes)),
                    }
                }
                (status, push, _) => {
                    return Err(format!(
                        "library sender ended with {status:?}, path {:?}; its stderr:\n{}\n\
                         receiver's stderr:\n{}",
                        push.map(|p| (p.path, p.encrypted)),
                        p.stderr().trim_end(),
                        s.lib_sink.stderr().trim_end()
                    ));
                }
            }
        }
    };
    let rdv = lab.rdv_bytes() - rdv_before;
    // A few kilobytes of control traffic; a relayed transfer would move gigabytes.
    if mode != Mode::Baseline && rdv > (sample.mbps * 1e6 * TP_SECS as f64 / 8.0) as u64 {
        return Err(format!(
            "the rendezvous host moved {rdv} bytes: not a direct path"
        ));
    }
    Ok(sample)
}

/// Starts the library receiver on host B and waits until the server lists it.
fn start_lib_sink(lab: &Lab) -> Proc {
    let helper = std::env::current_exe().expect("current_exe");
    let url = server_url();
    let spec = Spawn::new(helper)
        .name("lib-sink")
        .args([LIB_SINK_ARG, &url, LIB_ID, SECRET]);
    let mut p = lab.spawn_cmd(Node::Host(Site::B), spec);
    let deadline = Instant::now() + READY_TIMEOUT;
    while lab.peer_status(LIB_ID).ok() != Some(200) {
        if let Some(s) = p.try_status() {
            panic!("library receiver exited ({s}); stderr:\n{}", p.stderr());
        }
        assert!(
            Instant::now() < deadline,
            "library receiver not registered within {READY_TIMEOUT:?}; stderr:\n{}",
            p.stderr()
        );
        thread::sleep(POLL);
    }
    p
}

fn start_iperf_server(lab: &Lab) -> Proc {
    let spec =
        Spawn::new("iperf3")
            .name("iperf3-server")
            .args(["-s", "-p", &IPERF_PORT.to_string()]);
    let mut p = lab.spawn_cmd(Node::Host(Site::B), spec);
    let deadline = Instant::now() + READY_TIMEOUT;
    while !lab.listening(Node::Host(Site::B), IPERF_PORT) {
        if let Some(s) = p.try_status() {
            panic!("iperf3 -s exited ({s}); stderr:\n{}", p.stderr());
        }
        assert!(
            Instant::now() < deadline,
            "iperf3 -s not listening within {READY_TIMEOUT:?}"
        );
        thread::sleep(POLL);
    }
    p
}

/// Runs the transfers of `modes` (the first must be the baseline).
pub fn throughput(out: &mut Out, problems: &mut Vec<String>, modes: &[Mode]) {
    assert_eq!(
        modes.first(),
        Some(&Mode::Baseline),
        "the baseline comes first"
    );
    let (nat_a, nat_b) = (Nat::RestrictedDrop, Nat::RestrictedRst);
    out.line(format!(
        "## throughput: one way, host A → host B (A: {}, B: {})",
        nat_name(nat_a),
        nat_name(nat_b)
    ));
    out.line("");
    out.line(format!(
        "{TP_REPS} transfers per row, the modes interleaved; each transfer {TP_SECS} s measured \
         after {TP_OMIT_SECS} s of slow start left out (iperf3 -t {TP_SECS} -O {TP_OMIT_SECS}, \
         one stream; the library receiver likewise), rate at the receiver. Ratio: the row's \
         median over the baseline's median at the same delay, same run. CPU: user + system \
         seconds of the p2pnc processes on both ends (connect and expose; the library's sender \
         and receiver) per GB they carried. MB = 10^6 bytes, GB = 10^9."
    ));
    out.line("");
    out.line("| one-way delay | mode | median MB/s | min–max | ratio to baseline (target) | CPU s per GB |");
    out.line("|---|---|---:|---:|---:|---:|");
    let lab = Lab::new(
        LabConfig::new(nat_a, nat_b)
            .delays(DELAY_MS, DELAY_MS, DELAY_MS)
            .second_hosts(false),
    );
    // Every transfer starts from the same TCP state: the hosts do not carry a slow-start
    // threshold or window learnt by the previous connection to the same address over to the
    // next (Linux caches them per destination), which would favour whichever mode ran after a
    // good transfer.
    for node in [Node::Host(Site::A), Node::Host(Site::B)] {
        lab.sh(node, "echo 1 > /proc/sys/net/ipv4/tcp_no_metrics_save");
    }
    let _server = lab.start_server();
    let _iperf = start_iperf_server(&lab);
    let b = Node::Host(Site::B);
    let expose = lab.start_agent_with(
        b,
        EXPOSE_ID,
        IPERF_PORT,
        Auth::Secret(SECRET),
        &["--no-encrypt"],
    );
    let fwd = lab.port_forward(
        Site::B,
        FWD_IPERF_PORT,
        SocketAddrV4::new(lab.host_ip(Site::B), IPERF_PORT),
    );
    let a = Node::Host(Site::A);
    let listen = |port| SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
    let setup = Setup {
        // `--warm`: the path is up before the first transfer, which then measures a stream
        // on it like the later ones.
        connect_encrypted: lab.start_connect_listen_with(
            a,
            EXPOSE_ID,
            Some(SECRET),
            listen(LISTEN_ENCRYPTED),
            &["--warm"],
        ),
        connect_cold: lab.start_connect_listen_with(
            a,
            EXPOSE_ID,
            Some(SECRET),
            listen(LISTEN_COLD),
            &["--warm-idle", "0"],
        ),
        connect_plain: lab.start_connect_listen_with(
            a,
            EXPOSE_ID,
            Some(SECRET),
            listen(LISTEN_PLAIN),
            &["--no-encrypt"],
        ),
        expose,
        lib_sink: start_lib_sink(&lab),
        fwd,
    };
    let mut verdicts = Vec::new();
    let hosts = [Node::Host(Site::A), Node::Host(Site::B)];
    let default_wmem = lab.sh(hosts[0], "cat /proc/sys/net/ipv4/tcp_wmem");
    for (delay, wmem_max) in CASES {
        lab.set_delays(delay, delay, delay);
        let wmem = match wmem_max {
            Some(max) => format!("4096 16384 {max}"),
            None => default_wmem.trim().to_string(),
        };
        for node in hosts {
            lab.sh(node, &format!("echo {wmem} > /proc/sys/net/ipv4/tcp_wmem"));
        }
        let mut samples: Vec<Vec<Sample>> = modes.iter().map(|_| Vec::new()).collect();
        for rep in 0..TP_REPS {
            for (i, &mode) in modes.iter().enumerate() {
                match transfer(&lab, &setup, mode) {
                    Ok(s) => samples[i].push(s),
                    Err(e) => problems.push(format!(
                        "throughput {delay} ms, {mode:?}, transfer {rep}: {e}"
                    )),
                }
            }
            eprintln!("throughput {delay} ms: round {rep} done");
        }
        let mut label = if delay == 0 {
            "none".to_string()
        } else {
            format!("{delay} ms (RTT {} ms)", 2 * delay)
        };
        if let Some(max) = wmem_max {
            label.push_str(&format!(", send buffers up to {} MiB", max >> 20));
        }
        let rates: Vec<Vec<f64>> = samples
            .iter()
            .map(|v| sorted(v.iter().map(|s| s.mbps).collect()))
            .collect();
        let base = rates[0].first().map(|_| pct(&rates[0], 0.5));
        let median_of = |m: Mode| {
            let i = modes.iter().position(|&x| x == m)?;
            rates[i].first().map(|_| pct(&rates[i], 0.5))
        };
        if let (Some(warm), Some(cold)) = (median_of(Mode::CliEncrypted), median_of(Mode::CliCold))
        {
            let ratio = warm / cold;
            let met = ratio >= TARGET_WARM_VS_COLD;
            verdicts.push(format!(
                "- {label}, warm path vs cold direct stream (both encrypted, through `connect \
                 --listen`): {warm:.0} / {cold:.0} MB/s = {ratio:.2}, target ≥ \
                 {TARGET_WARM_VS_COLD}: {}",
                if met { "met" } else { "NOT met" }
            ));
        }
        for (i, &mode) in modes.iter().enumerate() {
            let r = &rates[i];
            let (median, range) = if r.is_empty() {
                ("–".to_string(), "–".to_string())
            } else {
                (
                    format!("{:.0}", pct(r, 0.5)),
                    format!("{:.0}–{:.0}", r[0], r[r.len() - 1]),
                )
            };
            let ratio = match (base, mode.target(delay), r.is_empty()) {
                (_, None, _) => "1".to_string(),
                (Some(base), Some(target), false) => {
                    let ratio = pct(r, 0.5) / base;
                    let met = ratio >= target;
                    verdicts.push(format!(
                        "- {label}, {}: {ratio:.2} of the baseline, target ≥ {target}: {}",
                        mode.label(),
                        if met { "met" } else { "NOT met" }
                    ));
                    format!(
                        "{ratio:.2} (≥ {target}: {})",
                        if met { "met" } else { "NOT met" }
                    )
                }
                _ => "–".to_string(),
            };
            let cpu: Vec<f64> = samples[i]
                .iter()
                .filter_map(|s| s.cpu)
                .filter(|&(_, bytes)| bytes > 0)
                .map(|(secs, bytes)| secs / (bytes as f64 / 1e9))
                .collect();
            let cpu = if cpu.is_empty() {
                "–".to_string()
            } else {
                format!("{:.2}", pct(&sorted(cpu), 0.5))
            };
            out.line(format!(
                "| {} | {} | {median} | {range} | {ratio} | {cpu} |",
                if i == 0 { label.as_str() } else { "" },
                mode.label()
            ));
        }
    }
    out.line("");
    for v in verdicts {
        out.line(v);
    }
    let ds = lab.delay_stats();
    out.line("");
    out.line(format!(
        "delay box: {} packets, at most {} held at once, {} errors, kernel queue drops {} + {}",
        ds.packets, ds.max_held, ds.errors, ds.kernel_dropped, ds.kernel_user_dropped
    ));
    let _ = std::io::stdout().flush();
}
