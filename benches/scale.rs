//! Server-scale load generator: `cargo bench --bench scale -- [--agents N] [--connects M]
//! [--concurrency C] [--sources K] [--server-arg ARG]...`; with `--cluster S [--workers W]`, S
//! servers on one Redis and W load generator processes (`scale/cluster.rs`).
//!
//! It starts the real `p2pnc server` binary (the release build) as a separate process, with its
//! per-address limits raised so that the load is not refused (`--connect-rate`,
//! `--expose-rate`, `--max-connections-per-ip`, `--max-connections`), and then:
//!
//! 1. reads the idle server's resident memory (`VmRSS` in `/proc/PID/status`);
//! 2. registers N agents that speak the wire protocol of `docs/protocol.md` (the WebSocket
//!    upgrade of `GET /v1/expose` with a secret, a private candidate and an owner credential,
//!    then `registered`), from the loopback source addresses 127.0.0.1 … 127.0.0.K, so that no
//!    source address needs more ports than its ephemeral range holds. The agents stay online
//!    like real ones: they answer the server's pings, ping it every 15 s, and check the proof
//!    in every punch order (refusing a wrong one with `reject`). They send no NAT probe;
//! 3. measures the server's CPU use while the agents are idle (pings only), then reads the RSS
//!    again: (RSS with N agents − idle RSS) / N is the memory per agent;
//! 4. brokers M connects from C concurrent clients. Each client opens a TCP connection,
//!    upgrades `GET /v1/connect` for a random online id with a valid proof, and waits for its
//!    punch order. A connect is *brokered* once the server has told both ends to punch: the
//!    client got its order and so did the agent. The client then closes with an RST, as the
//!    plain-mode client does, so that millions of connects leave no TIME_WAIT sockets behind
//!    to exhaust the loopback ports. Reported: brokered connects per second, the latency from
//!    the client's TCP connect to its punch order (percentiles), and the CPU time the server,
//!    this generator and everything else on the machine used meanwhile.
//!
//! The generator runs on one thread: on a small machine the server needs the other cores, and
//! one thread spares the generator the cross-thread wake-ups of a multi-threaded runtime.
//!
//! Every agent holds one file descriptor here and one in the server. The generator raises its
//! open-file limit (the hard limit too, as root with CAP_SYS_RESOURCE) and the server, its
//! child, inherits it. Where the limit cannot be raised far enough, a run without `--agents`
//! registers as many agents as fit and projects the RSS of 100 000 agents from the memory per
//! agent (which the figures at several N show to be flat); `--agents N` beyond the limit is an
//! error.
//!
//! The summary is printed as a markdown table and written to `target/scale-bench.txt`; the
//! server's log goes to `target/scale-server.log`. The benchmark exits 1 when something broke
//! (a registration or connect failed, an agent was dropped); a missed target is reported, not
//! an error.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use p2pnc_protocol::{
    self as protocol, AgentToServer, Auth, ConnectQuery, ErrorCode, ExposeQuery, Mode, Nonce,
    ServerToAgent, ServerToClient, ServiceId, Signature, Verifier,
};
use p256::ecdsa::SigningKey;
use p256::ecdsa::signature::Signer;
use sha2::{Digest, Sha256};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{WebSocketStream, client_async_with_config};
use tokio_util::sync::CancellationToken;

use crate::cluster;

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_p2pnc");

const DEFAULT_AGENTS: usize = 100_000;
const DEFAULT_CONNECTS: usize = 100_000;
const DEFAULT_CONCURRENCY: usize = 128;
/// Registrations in flight at once.
pub(crate) const REGISTER_CONCURRENCY: usize = 256;
/// The server's own cap on registered agents (`ServerConfig::max_agents`).
pub(crate) const SERVER_MAX_AGENTS: usize = 200_000;

/// The targets of this 2-core machine.
const TARGET_RSS_BYTES: u64 = 1 << 30;
pub(crate) const TARGET_AGENTS: usize = 100_000;
const TARGET_CONNECTS_PER_SEC: f64 = 5_000.0;

/// Every network step of the load generator gives up after this.
pub(crate) const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// How often an agent pings the server, as the real agent does.
const AGENT_PING_INTERVAL: Duration = Duration::from_secs(15);
/// Time for the server's memory to settle after the last registration, before reading RSS.
pub(crate) const SETTLE: Duration = Duration::from_secs(5);
/// Source addresses used at least, so that the spreading itself is exercised.
pub(crate) const MIN_SOURCES: usize = 4;
/// Descriptors `p2pnc server` keeps beyond `--max-connections` (`FD_HEADROOM` in
/// src/main.rs), and connections it may take beyond the agents and clients (health checks).
pub(crate) const SERVER_FD_HEADROOM: u64 = 1024;
pub(crate) const SERVER_SPARE_CONNECTIONS: usize = 1024;
/// Share of a source address's ephemeral port range the generator uses.
const PORT_SHARE: f64 = 0.75;

pub(crate) struct Opts {
    pub(crate) agents: usize,
    /// Whether `--agents` was given (else it may be lowered to fit the open-file limit).
    agents_given: bool,
    pub(crate) connects: usize,
    pub(crate) concurrency: usize,
    sources: Option<usize>,
    /// Extra arguments for `p2pnc server`.
    pub(crate) server_args: Vec<String>,
    /// `--cluster N`: N servers on one Redis.
    cluster: Option<usize>,
    /// `--workers W`: load generator processes in cluster mode.
    pub(crate) workers: Option<usize>,
}

fn usage() -> String {
    format!(
        "usage: cargo bench --bench scale -- [--agents N] [--connects M] [--concurrency C] \
         [--sources K] [--server-arg ARG]... [--cluster S [--workers W]]\n  defaults: \
         {DEFAULT_AGENTS} agents, {DEFAULT_CONNECTS} connects, {DEFAULT_CONCURRENCY} concurrent \
         clients, enough source addresses for the load;\n  --server-arg passes ARG on to \
         `p2pnc server` (e.g. --server-arg -q);\n  --cluster S runs S servers on one Redis, and \
         W load generator processes (default: enough for the open-file limit)"
    )
}

fn parse_args() -> Result<Opts, String> {
    let mut o = Opts {
        agents: DEFAULT_AGENTS,
        agents_given: false,
        connects: DEFAULT_CONNECTS,
        concurrency: DEFAULT_CONCURRENCY,
        sources: None,
        server_args: Vec::new(),
        cluster: None,
        workers: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut number = |name: &str| -> Result<usize, String> {
            args.next()
                .and_then(|v| v.replace('_', "").parse().ok())
                .ok_or_else(|| format!("{name} needs a number\n{}", usage()))
        };
        match a.as_str() {
            // `cargo bench` passes `--bench`.
            "--bench" => {}
            "--agents" => {
                o.agents = number("--agents")?;
                o.agents_given = true;
            }
            "--connects" => o.connects = number("--connects")?,
            "--concurrency" => o.concurrency = number("--concurrency")?,
            "--sources" => o.sources = Some(number("--sources")?),
            "--cluster" => o.cluster = Some(number("--cluster")?),
            "--workers" => o.workers = Some(number("--workers")?),
            "--server-arg" => o.server_args.push(
                args.next()
                    .ok_or_else(|| format!("--server-arg needs a value\n{}", usage()))?,
            ),
            "-h" | "--help" => return Err(usage()),
            _ => return Err(format!("unknown argument {a:?}\n{}", usage())),
        }
    }
    if o.cluster
        .is_some_and(|n| n == 0 || n > cluster::MAX_MEMBERS)
    {
        return Err(format!("--cluster must be 1 to {}", cluster::MAX_MEMBERS));
    }
    if o.workers
        .is_some_and(|w| w == 0 || w > cluster::MAX_WORKERS)
    {
        return Err(format!("--workers must be 1 to {}", cluster::MAX_WORKERS));
    }
    if o.workers.is_some() && o.cluster.is_none() {
        return Err("--workers needs --cluster".into());
    }
    let max_agents = SERVER_MAX_AGENTS * o.cluster.unwrap_or(1);
    if o.agents == 0 || o.agents > max_agents {
        return Err(format!("--agents must be 1 to {max_agents}"));
    }
    if o.concurrency == 0 || o.concurrency > 10_000 {
        return Err("--concurrency must be 1 to 10000".into());
    }
    if o.sources.is_some_and(|k| k == 0 || k > 254) {
        return Err("--sources must be 1 to 254".into());
    }
    Ok(o)
}

pub fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some(cluster::WORKER_FLAG) {
        return cluster::worker_main();
    }
    let opts = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = match opts.cluster {
        Some(members) => runtime.block_on(cluster::run(opts, members)),
        None => runtime.block_on(run(opts)),
    };
    runtime.shutdown_timeout(Duration::from_secs(5));
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// What the agents and clients count.
#[derive(Default)]
pub(crate) struct Stats {
    pub(crate) registered: AtomicUsize,
    pub(crate) register_failed: AtomicUsize,
    /// Agents whose control connection ended before the benchmark stopped them.
    pub(crate) agents_lost: AtomicUsize,
    /// Punch orders agents received with a valid proof.
    pub(crate) agent_orders: AtomicU64,
    /// Punch orders agents refused (a wrong proof: must not happen here).
    pub(crate) agent_rejects: AtomicU64,
    /// The first few errors, for the report.
    pub(crate) errors: Mutex<Vec<String>>,
}

impl Stats {
    pub(crate) fn error(&self, e: String) {
        let mut errors = self.errors.lock().expect("errors lock");
        if errors.len() < 5 {
            errors.push(e);
        }
    }
}

/// The `p2pnc server` process, killed on drop.
pub(crate) struct ServerProc {
    child: Child,
    pub(crate) addr: SocketAddr,
    log: PathBuf,
}

impl ServerProc {
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its resident memory; an error with the end of its log if it has exited.
    pub(crate) fn rss(&mut self) -> Result<u64, String> {
        if let Ok(Some(status)) = self.child.try_wait() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            return Err(format!(
                "the server exited ({status}); its log ends:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            ));
        }
        rss_bytes(self.pid()).ok_or_else(|| "cannot read the server's RSS".into())
    }

    /// SIGTERM, then SIGKILL if it has not exited within 5 s.
    pub(crate) fn stop(&mut self) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"))
}

/// Starts the server with limits that let the load through, and waits for its address.
/// `listen` names its addresses (`--listen`, `--probe-listen`, and in a cluster its
/// membership); its log goes to `log_path`.
pub(crate) async fn start_server(
    max_connections: usize,
    listen: &[String],
    extra: &[String],
    log_path: PathBuf,
) -> Result<ServerProc, String> {
    let log = std::fs::File::create(&log_path)
        .map_err(|e| format!("cannot create {}: {e}", log_path.display()))?;
    let big = "1000000000";
    let child = Command::new(BIN)
        .arg("server")
        .args(listen)
        .args(["--connect-rate", big, "--expose-rate", big])
        .args(["--max-connections-per-ip", big, "--max-connections"])
        .arg(max_connections.to_string())
        .args(extra)
        .env("P2PNC_LOG", "p2pnc=info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot start {BIN}: {e}"))?;
    let mut server = ServerProc {
        child,
        addr: "0.0.0.0:0".parse().expect("an address"),
        log: log_path.clone(),
    };
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        let listening = text
            .lines()
            .find_map(|l| l.split("listening on ").nth(1))
            .and_then(|rest| rest.split(',').next())
            .and_then(|a| a.parse().ok());
        if let Some(addr) = listening {
            server.addr = addr;
            return Ok(server);
        }
        if let Ok(Some(status)) = server.child.try_wait() {
            return Err(format!("the server exited ({status}):\n{text}"));
        }
        if Instant::now() > deadline {
            return Err(format!("the server logged no address in time:\n{text}"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `VmRSS` of a process, in bytes.
pub(crate) fn rss_bytes(pid: u32) -> Option<u64> {
    proc_status_kib(pid, "VmRSS:").map(|k| k * 1024)
}

pub(crate) fn proc_status_kib(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// CPU seconds (user + system) a process has used.
pub(crate) fn proc_cpu_secs(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // utime and stime are fields 14 and 15 of the line: 12 and 13 after the name.
    (f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0)) as f64 / clock_ticks()
}

/// CPU seconds this process has used.
pub(crate) fn self_cpu_secs() -> f64 {
    proc_cpu_secs(std::process::id())
}

/// Busy CPU seconds of the whole machine (all cores).
pub(crate) fn machine_busy_secs() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return 0.0;
    };
    let Some(cpu) = stat.lines().next() else {
        return 0.0;
    };
    let f: Vec<u64> = cpu
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let busy: u64 = f
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, v)| v)
        .sum();
    busy as f64 / clock_ticks()
}

/// CPU use of the server, of this load generator and of everything else over an interval.
struct CpuMeter {
    server_pid: u32,
    at: Instant,
    server: f64,
    me: f64,
    machine: f64,
}

struct CpuUse {
    wall: f64,
    server: f64,
    me: f64,
    others: f64,
}

impl CpuMeter {
    fn start(server_pid: u32) -> Self {
        CpuMeter {
            server_pid,
            at: Instant::now(),
            server: proc_cpu_secs(server_pid),
            me: self_cpu_secs(),
            machine: machine_busy_secs(),
        }
    }

    fn stop(&self) -> CpuUse {
        let server = proc_cpu_secs(self.server_pid) - self.server;
        let me = self_cpu_secs() - self.me;
        let machine = machine_busy_secs() - self.machine;
        CpuUse {
            wall: self.at.elapsed().as_secs_f64(),
            server,
            me,
            others: (machine - server - me).max(0.0),
        }
    }
}

/// Raises this process's open-file limit to `want` (raising the hard limit too when allowed,
/// as root), so that the server, its child, inherits it. Returns the soft limit in force.
pub(crate) fn raise_nofile(want: u64) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid, initialised rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_max < want {
            let raised = libc::rlimit {
                rlim_cur: want,
                rlim_max: want,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return want;
            }
        }
    }
    p2pnc::server::raise_open_file_limit(want)
}

/// Ports of one source address's ephemeral range this generator may use.
pub(crate) fn ports_per_source() -> usize {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let v: Vec<usize> = s
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            (v.len() == 2 && v[1] > v[0]).then(|| v[1] - v[0] + 1)
        })
        .unwrap_or(28_232);
    (range as f64 * PORT_SHARE) as usize
}

fn source(i: usize, sources: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, 1 + (i % sources) as u8)
}

/// Control sockets of the generator keep small buffers: control messages are small, and a
/// hundred thousand default 128 KiB read buffers would dwarf the server being measured.
fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_write_buffer_size(64 * 1024)
        .max_message_size(Some(protocol::MAX_MESSAGE_BYTES))
        .max_frame_size(Some(protocol::MAX_MESSAGE_BYTES))
}

/// A TCP connection from `src` (any port) to the server, and the WebSocket upgrade of
/// `path?query` on it. A refusal's error says the server's status and body.
async fn open_ws(
    src: Ipv4Addr,
    server: SocketAddr,
    path: &str,
    query: &str,
) -> Result<WebSocketStream<TcpStream>, String> {
    let socket = TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
    socket
        .bind(SocketAddr::new(src.into(), 0))
        .map_err(|e| format!("bind {src}: {e}"))?;
    let tcp = tokio::time::timeout(STEP_TIMEOUT, socket.connect(server))
        .await
        .map_err(|_| "TCP connect timed out".to_string())?
        .map_err(|e| format!("TCP connect from {src}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let request = format!("ws://{server}{path}?{query}")
        .into_client_request()
        .map_err(|e| format!("request: {e}"))?;
    let handshake = client_async_with_config(request, tcp, Some(ws_config()));
    match tokio::time::timeout(STEP_TIMEOUT, handshake).await {
        Err(_) => Err("WebSocket upgrade timed out".into()),
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(tungstenite::Error::Http(resp))) => Err(format!(
            "refused: HTTP {} {}",
            resp.status(),
            resp.body()
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default()
        )),
        Ok(Err(e)) => Err(format!("WebSocket upgrade: {e}")),
    }
}

/// The next text message, decoded; pings are answered by tungstenite meanwhile.
async fn next_msg<T: serde::de::DeserializeOwned>(
    ws: &mut WebSocketStream<TcpStream>,
) -> Result<T, String> {
    loop {
        let got = tokio::time::timeout(STEP_TIMEOUT, ws.next())
            .await
            .map_err(|_| "no message in time".to_string())?;
        match got {
            Some(Ok(Message::Text(t))) => return protocol::decode(&t).map_err(|e| e.to_string()),
            Some(Ok(Message::Close(_))) | None => return Err("closed".into()),
            Some(Err(e)) => return Err(e.to_string()),
            Some(Ok(_)) => {}
        }
    }
}

pub(crate) fn agent_id(i: usize) -> String {
    format!("scale-agent-{i}")
}

/// Agent `i`'s signing key. A real agent derives its key from its secret and id with PBKDF2
/// (about 3 ms each: 5 CPU-minutes for 100 000 agents); the server only ever sees the public
/// half (the verifier) and signatures, so the generator makes each agent's P-256 key from a
/// hash of its index instead, cheaply and the same in every process of a run.
pub(crate) fn signing_key(i: usize) -> SigningKey {
    (0u32..)
        .find_map(|c| {
            let d: [u8; 32] = Sha256::digest(format!("p2pnc scale bench agent {i}/{c}")).into();
            SigningKey::from_bytes(&d.into()).ok()
        })
        .expect("a scalar in range")
}

/// The verifier (public key) of agent `i`.
fn verifier(key: &SigningKey) -> Verifier {
    let point = key.verifying_key().to_encoded_point(false);
    Verifier::from_bytes(
        point
            .as_bytes()
            .try_into()
            .expect("an uncompressed P-256 point is 65 bytes"),
    )
}

/// Signs `message` as the protocol's signatures are made (ECDSA P-256 SHA-256, `r || s`).
fn sign(key: &SigningKey, message: &[u8]) -> Signature {
    let sig: p256::ecdsa::Signature = key.sign(message);
    Signature::from_bytes(sig.to_bytes().into())
}

/// Registers agent `i` and keeps it online until `stop`.
pub(crate) async fn agent(
    i: usize,
    src: Ipv4Addr,
    server: SocketAddr,
    permits: Arc<Semaphore>,
    stats: Arc<Stats>,
    stop: CancellationToken,
) {
    let id = agent_id(i);
    let registered = {
        let _permit = permits.acquire().await;
        register(i, src, server).await
    };
    let (mut ws, ver) = match registered {
        Ok(online) => {
            stats.registered.fetch_add(1, Ordering::Relaxed);
            online
        }
        Err(e) => {
            stats.register_failed.fetch_add(1, Ordering::Relaxed);
            stats.error(format!("registering {id}: {e}"));
            return;
        }
    };
    let phase = AGENT_PING_INTERVAL.mul_f64(rand::random::<f64>());
    let mut ping =
        tokio::time::interval_at(tokio::time::Instant::now() + phase, AGENT_PING_INTERVAL);
    enum Event {
        Stop,
        Ping,
        Msg(Option<Result<Message, tungstenite::Error>>),
    }
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => Event::Stop,
            _ = ping.tick() => Event::Ping,
            m = ws.next() => Event::Msg(m),
        };
        let reply = match event {
            Event::Stop => {
                let _ = tokio::time::timeout(STEP_TIMEOUT, ws.close(None)).await;
                return;
            }
            Event::Ping => Some(Message::Ping(Default::default())),
            Event::Msg(Some(Ok(Message::Text(t)))) => match protocol::decode::<ServerToAgent>(&t) {
                Ok(ServerToAgent::Punch(p)) => {
                    let proven = match (p.nonce, p.proof) {
                        (Some(nonce), Some(proof)) => {
                            ver.verifies(&protocol::connect_message(&id, p.mode, &nonce), &proof)
                        }
                        _ => false,
                    };
                    if proven {
                        stats.agent_orders.fetch_add(1, Ordering::Relaxed);
                        None
                    } else {
                        stats.agent_rejects.fetch_add(1, Ordering::Relaxed);
                        let reject = AgentToServer::Reject {
                            session: p.session.into(),
                            code: ErrorCode::SecretRejected,
                            message: "secret rejected".into(),
                        };
                        Some(Message::Text(protocol::encode(&reject).into()))
                    }
                }
                Ok(other) => {
                    stats.agents_lost.fetch_add(1, Ordering::Relaxed);
                    stats.error(format!("{id} got {other:?}"));
                    return;
                }
                Err(e) => {
                    stats.agents_lost.fetch_add(1, Ordering::Relaxed);
                    stats.error(format!("{id}: bad message: {e}"));
                    return;
                }
            },
            Event::Msg(Some(Ok(_))) => None,
            Event::Msg(end) => {
                if !stop.is_cancelled() {
                    stats.agents_lost.fetch_add(1, Ordering::Relaxed);
                    stats.error(format!("{id} lost its control connection: {end:?}"));
                }
                return;
            }
        };
        if let Some(msg) = reply {
            match tokio::time::timeout(STEP_TIMEOUT, ws.send(msg)).await {
                Ok(Ok(())) => {}
                _ => {
                    stats.agents_lost.fetch_add(1, Ordering::Relaxed);
                    stats.error(format!("{id}: cannot write to the server"));
                    return;
                }
            }
        }
    }
}

/// Registers agent `i`; returns its control connection and its verifier.
async fn register(
    i: usize,
    src: Ipv4Addr,
    server: SocketAddr,
) -> Result<(WebSocketStream<TcpStream>, Verifier), String> {
    let id = agent_id(i);
    let key = signing_key(i);
    let ver = verifier(&key);
    let query = ExposeQuery {
        id: ServiceId::new(&id).map_err(|e| e.to_string())?,
        auth: Auth::Secret,
        // What a real agent sends: its interface address with its punch port.
        private: vec![SocketAddr::new(src.into(), 50_302)],
        probe: None,
        probe_other: None,
        verifier: Some(ver),
        key: None,
        mapped: None,
        takeover: true,
    }
    .to_query();
    let mut ws = open_ws(src, server, protocol::EXPOSE_PATH, &query).await?;
    let ServerToAgent::Challenge { nonce } = next_msg::<ServerToAgent>(&mut ws).await? else {
        return Err("expected the registration challenge".into());
    };
    let signature = sign(&key, &protocol::register_message(&id, &nonce));
    let prove = protocol::encode(&AgentToServer::Prove { signature });
    tokio::time::timeout(STEP_TIMEOUT, ws.send(Message::Text(prove.into())))
        .await
        .map_err(|_| "timed out answering the challenge".to_string())?
        .map_err(|e| e.to_string())?;
    match next_msg::<ServerToAgent>(&mut ws).await? {
        ServerToAgent::Registered { .. } => Ok((ws, ver)),
        other => Err(format!("expected 'registered', got {other:?}")),
    }
}

/// One client's connect to agent `which` through `server`: upgrade, then wait for the punch
/// order. Returns the time from the TCP connect to the order.
pub(crate) async fn connect_once(
    src: Ipv4Addr,
    server: SocketAddr,
    which: usize,
) -> Result<Duration, String> {
    let peer = agent_id(which);
    let nonce = Nonce::random();
    let message = protocol::connect_message(&peer, Mode::Punch, &nonce);
    let query = ConnectQuery {
        proof: Some(sign(&signing_key(which), &message)),
        peer: ServiceId::new(&peer).map_err(|e| e.to_string())?,
        nonce,
        private: vec![],
        mode: Mode::Punch,
        probe: None,
        probe_other: None,
    }
    .to_query();
    let started = Instant::now();
    let mut ws = open_ws(src, server, protocol::CONNECT_PATH, &query).await?;
    let got = next_msg::<ServerToClient>(&mut ws).await;
    let took = started.elapsed();
    // An RST instead of a FIN: no TIME_WAIT left on this source address's ports.
    let _ = socket2::SockRef::from(ws.get_ref()).set_linger(Some(Duration::ZERO));
    drop(ws);
    match got? {
        ServerToClient::Punch(_) => Ok(took),
        ServerToClient::Error { code, message } => Err(format!("{code}: {message}")),
        other => Err(format!("expected a punch order, got {other:?}")),
    }
}

/// Results of the connect phase.
struct Brokered {
    ok: usize,
    failed: usize,
    elapsed: Duration,
    latencies_us: Vec<u32>,
    cpu: CpuUse,
}

async fn connect_phase(
    opts: &Opts,
    sources: usize,
    server: &ServerProc,
    stats: &Arc<Stats>,
) -> Brokered {
    let next = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let meter = CpuMeter::start(server.pid());
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..opts.concurrency {
        let (next, failed, stats) = (next.clone(), failed.clone(), stats.clone());
        let (addr, agents, connects) = (server.addr, opts.agents, opts.connects);
        let src = source(w, sources);
        workers.spawn(async move {
            let mut latencies = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < connects {
                match connect_once(src, addr, rand::random_range(0..agents)).await {
                    Ok(t) => latencies.push(t.as_micros().min(u32::MAX as u128) as u32),
                    Err(e) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        stats.error(format!("connect: {e}"));
                    }
                }
            }
            latencies
        });
    }
    let mut latencies_us = Vec::with_capacity(opts.connects);
    while let Some(done) = workers.join_next().await {
        latencies_us.extend(done.expect("a connect worker panicked"));
    }
    let elapsed = started.elapsed();
    let cpu = meter.stop();
    Brokered {
        ok: latencies_us.len(),
        failed: failed.load(Ordering::Relaxed),
        elapsed,
        latencies_us,
        cpu,
    }
}

pub(crate) fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

pub(crate) fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

pub(crate) fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

pub(crate) fn command_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "?".into())
}

async fn run(mut opts: Opts) -> Result<bool, String> {
    let per_source = ports_per_source();
    // Each agent and client holds a descriptor here and one in the server, which keeps
    // SERVER_FD_HEADROOM more for itself.
    let overhead = (opts.concurrency + SERVER_SPARE_CONNECTIONS) as u64 + SERVER_FD_HEADROOM;
    let want = opts.agents as u64 + overhead;
    let fds = raise_nofile(want);
    let mut notes = Vec::new();
    if fds < want {
        let fit = fds.saturating_sub(overhead) as usize;
        let why = format!(
            "the open-file limit is {fds} and cannot be raised here (raising the hard limit \
             needs root with CAP_SYS_RESOURCE)"
        );
        if opts.agents_given || fit < 1000 {
            return Err(format!(
                "{} agents need {want} open files in this process and in the server, but {why}",
                opts.agents
            ));
        }
        notes.push(format!(
            "{why}: this run registers {fit} agents instead of {}, and projects the RSS of \
             {TARGET_AGENTS} agents from the memory per agent",
            opts.agents
        ));
        opts.agents = fit;
    }
    let sources = opts
        .sources
        .unwrap_or_else(|| (opts.agents + opts.concurrency).div_ceil(per_source))
        .clamp(MIN_SOURCES, 254);
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mut out = header("p2pnc server scale");
    if !opts.server_args.is_empty() {
        let _ = writeln!(out, "Extra server flags: {}\n", opts.server_args.join(" "));
    }
    for n in &notes {
        let _ = writeln!(out, "Note: {n}.\n");
    }
    print!("{out}");

    let max_connections = opts.agents + opts.concurrency + SERVER_SPARE_CONNECTIONS;
    let listen = ["--listen", "127.0.0.1:0", "--probe-listen", "127.0.0.1:0"].map(String::from);
    let log = target_dir().join("scale-server.log");
    let mut server = start_server(max_connections, &listen, &opts.server_args, log).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = server.rss()?;
    println!(
        "server pid {} on {}, idle RSS {}",
        server.pid(),
        server.addr,
        mib(idle)
    );

    // Registration.
    let stats = Arc::new(Stats::default());
    let stop = CancellationToken::new();
    let permits = Arc::new(Semaphore::new(REGISTER_CONCURRENCY));
    let tasks = tokio_util::task::TaskTracker::new();
    let reg_started = Instant::now();
    let reg_meter = CpuMeter::start(server.pid());
    for i in 0..opts.agents {
        tasks.spawn(agent(
            i,
            source(i, sources),
            server.addr,
            permits.clone(),
            stats.clone(),
            stop.clone(),
        ));
    }
    tasks.close();
    let reg_deadline = Instant::now() + STEP_TIMEOUT + Duration::from_millis(opts.agents as u64);
    let mut last_report = Instant::now();
    loop {
        let done = stats.registered.load(Ordering::Relaxed)
            + stats.register_failed.load(Ordering::Relaxed);
        if done == opts.agents {
            break;
        }
        if Instant::now() > reg_deadline {
            stop.cancel();
            return Err(format!(
                "only {done} of {} registrations ended in time",
                opts.agents
            ));
        }
        if last_report.elapsed() > Duration::from_secs(5) {
            println!("  {done} agents registered…");
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let reg_elapsed = reg_started.elapsed();
    let reg_cpu = reg_meter.stop();
    let registered = stats.registered.load(Ordering::Relaxed);
    println!(
        "{registered} agents registered in {:.1} s; settling {SETTLE:?}",
        reg_elapsed.as_secs_f64()
    );
    let idle_meter = CpuMeter::start(server.pid());
    tokio::time::sleep(SETTLE).await;
    let keepalive = idle_meter.stop();
    let with_agents = server.rss()?;
    let online = server_agents(server.addr).await;
    let per_agent = with_agents.saturating_sub(idle) as f64 / registered.max(1) as f64;

    // Connects.
    println!(
        "brokering {} connects from {} concurrent clients…",
        opts.connects, opts.concurrency
    );
    let b = connect_phase(&opts, sources, &server, &stats).await;
    // The agent's order leaves before the client's: it has arrived or is in flight.
    let deadline = Instant::now() + STEP_TIMEOUT;
    while (stats.agent_orders.load(Ordering::Relaxed) as usize) < b.ok && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let agent_orders = stats.agent_orders.load(Ordering::Relaxed) as usize;
    let after_connects = rss_bytes(server.pid()).unwrap_or(0);
    let hwm = proc_status_kib(server.pid(), "VmHWM:").unwrap_or(0) * 1024;

    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(30), tasks.wait()).await;
    server.stop();

    let brokered = b.ok.min(agent_orders);
    let rate = brokered as f64 / b.elapsed.as_secs_f64();
    let mut lat = b.latencies_us.clone();
    lat.sort_unstable();
    let met = |ok: bool| if ok { "met" } else { "NOT met" };
    let projected = idle as f64 + per_agent * TARGET_AGENTS as f64;
    let rss_ok = if registered >= TARGET_AGENTS {
        with_agents <= TARGET_RSS_BYTES
    } else {
        projected <= TARGET_RSS_BYTES as f64
    };
    let rate_ok = rate >= TARGET_CONNECTS_PER_SEC;
    let mut t = String::new();
    let _ = writeln!(t, "| figure | value | target |");
    let _ = writeln!(t, "|---|---:|---|");
    let _ = writeln!(
        t,
        "| agents registered (server's count) | {registered} ({}) | {TARGET_AGENTS} |",
        online.map_or("?".into(), |n| n.to_string())
    );
    let _ = writeln!(
        t,
        "| registration | {:.0} agents/s from {sources} source addresses | |",
        registered as f64 / reg_elapsed.as_secs_f64()
    );
    let _ = writeln!(t, "| server RSS idle | {} | |", mib(idle));
    if registered >= TARGET_AGENTS {
        let _ = writeln!(
            t,
            "| server RSS with the agents | {} | ≤ 1024 MiB: {} |",
            mib(with_agents),
            met(rss_ok)
        );
        let _ = writeln!(t, "| memory per agent | {per_agent:.0} bytes | |");
    } else {
        let _ = writeln!(t, "| server RSS with the agents | {} | |", mib(with_agents));
        let _ = writeln!(t, "| memory per agent | {per_agent:.0} bytes | |");
        let _ = writeln!(
            t,
            "| server RSS for {TARGET_AGENTS} agents, projected (idle + {TARGET_AGENTS} × per agent) | {} | ≤ 1024 MiB: {} |",
            mib(projected as u64),
            met(rss_ok)
        );
    }
    let _ = writeln!(
        t,
        "| connects brokered (both ends told to punch) | {brokered} of {} | |",
        opts.connects
    );
    let _ = writeln!(
        t,
        "| brokered connects/s ({} concurrent clients) | {rate:.0} | ≥ {TARGET_CONNECTS_PER_SEC:.0}: {} |",
        opts.concurrency,
        met(rate_ok)
    );
    let _ = writeln!(
        t,
        "| latency TCP connect → punch order, p50 / p90 / p99 / max | {:.2} / {:.2} / {:.2} / {:.2} ms | |",
        percentile(&lat, 0.5),
        percentile(&lat, 0.9),
        percentile(&lat, 0.99),
        percentile(&lat, 1.0)
    );
    let _ = writeln!(
        t,
        "| server CPU per brokered connect | {:.0} µs (server-bound capacity ≈ {:.0}/s per core) | |",
        b.cpu.server * 1e6 / brokered.max(1) as f64,
        brokered as f64 / b.cpu.server.max(1e-9)
    );
    let pair_cpu = b.cpu.server + b.cpu.me;
    let _ = writeln!(
        t,
        "| brokered connects per CPU-second of server + generator | {:.0} (with all {cpus} cores to themselves: ≈ {:.0}/s, an estimate) | |",
        brokered as f64 / pair_cpu.max(1e-9),
        brokered as f64 / pair_cpu.max(1e-9) * cpus as f64
    );
    let _ = writeln!(
        t,
        "| CPU during connects: server / load generator / others | {:.2} / {:.2} / {:.2} cores (of {cpus}) | |",
        b.cpu.server / b.cpu.wall,
        b.cpu.me / b.cpu.wall,
        b.cpu.others / b.cpu.wall
    );
    let _ = writeln!(
        t,
        "| server CPU with the agents idle (pings both ways) | {:.3} cores | |",
        keepalive.server / keepalive.wall
    );
    let _ = writeln!(
        t,
        "| CPU during registration: server / load generator / others | {:.2} / {:.2} / {:.2} cores | |",
        reg_cpu.server / reg_cpu.wall,
        reg_cpu.me / reg_cpu.wall,
        reg_cpu.others / reg_cpu.wall
    );
    let _ = writeln!(
        t,
        "| server RSS after the connects (peak) | {} ({}) | |",
        mib(after_connects),
        mib(hwm)
    );
    let _ = writeln!(t, "\nload average after: {}", loadavg());
    out.push('\n');
    out.push_str(&t);
    println!("\n{t}");

    let mut problems = Vec::new();
    let failed_reg = stats.register_failed.load(Ordering::Relaxed);
    if failed_reg > 0 {
        problems.push(format!("{failed_reg} registrations failed"));
    }
    if online.is_some_and(|n| n != registered) {
        problems.push(format!(
            "the server counts {online:?} agents, not {registered}"
        ));
    }
    if b.failed > 0 {
        problems.push(format!("{} connects failed", b.failed));
    }
    if agent_orders != b.ok {
        problems.push(format!(
            "agents got {agent_orders} punch orders for {} clients' orders",
            b.ok
        ));
    }
    let rejects = stats.agent_rejects.load(Ordering::Relaxed);
    if rejects > 0 {
        problems.push(format!("agents refused {rejects} proofs"));
    }
    let lost = stats.agents_lost.load(Ordering::Relaxed);
    if lost > 0 {
        problems.push(format!("{lost} agents lost their control connection"));
    }
    let errors = stats.errors.lock().expect("errors lock").clone();
    let logs = format!(
        "server log {}",
        target_dir().join("scale-server.log").display()
    );
    Ok(finish_report(
        out,
        &problems,
        &errors,
        "scale-bench.txt",
        &logs,
    ))
}

/// Ends a report: what broke and the first errors (when something did), then the whole report
/// printed and written to `target/FILE`, with `logs` saying where the servers' logs are.
/// Whether nothing broke.
pub(crate) fn finish_report(
    mut out: String,
    problems: &[String],
    errors: &[String],
    file: &str,
    logs: &str,
) -> bool {
    if !problems.is_empty() {
        let text = format!(
            "BROKEN: {}\nfirst errors:\n  {}\n",
            problems.join("; "),
            errors.join("\n  ")
        );
        print!("{text}");
        out.push_str(&text);
    }
    let path = target_dir().join(file);
    match std::fs::write(&path, &out) {
        Ok(()) => println!("(written to {}; {logs})", path.display()),
        Err(e) => eprintln!("cannot write {}: {e}", path.display()),
    }
    problems.is_empty()
}

/// The report's title line and the machine it ran on.
pub(crate) fn header(title: &str) -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!(
        "# {title}\n\n{} · {} · {cpus} CPUs · kernel {} · load average before {}\n\n",
        command_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        command_line(
            "git",
            &[
                "-C",
                env!("CARGO_MANIFEST_DIR"),
                "describe",
                "--always",
                "--dirty"
            ]
        ),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim(),
        loadavg()
    )
}

/// The number of agents the server reports online (`GET /v1/health`).
pub(crate) async fn server_agents(server: SocketAddr) -> Option<usize> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let work = async {
        let mut s = TcpStream::connect(server).await.ok()?;
        s.write_all(b"GET /v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).await.ok()?;
        let body = text.split("\r\n\r\n").nth(1)?;
        let v: serde_json::Value = serde_json::from_str(body).ok()?;
        v["agents"].as_u64().map(|n| n as usize)
    };
    tokio::time::timeout(STEP_TIMEOUT, work)
        .await
        .ok()
        .flatten()
}
