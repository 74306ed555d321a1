//! p2pnc in the NAT lab (crates/natlab): the server, agents and clients as processes, and
//! what they report in structured form (`--report json` lines, the server's `/status.json`,
//! `nat-check --json`). Tests never read log wording.
//!
//! Included by the lab tests with `mod lab_support;` and by `benches/lab.rs` with
//! `#[path = "../tests/lab_support/mod.rs"]`.

#![allow(dead_code)]

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::process::ExitStatus;
use std::thread;
use std::time::{Duration, Instant};

use natlab::{Lab, Node, Proc, RDV_IP, RDV_NAME, Spawn};
use serde::Deserialize;

/// Port of the rendezvous server on the rendezvous host.
pub const SERVER_PORT: u16 = 50300;
/// The server's admin listener (`/status.json`), on the rendezvous host's loopback.
pub const ADMIN_PORT: u16 = 50309;
/// Time a server or agent has to come up.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// Poll interval while waiting for a process.
const POLL: Duration = Duration::from_millis(20);
/// Time one HTTP request to the server may take.
const HTTP_TIMEOUT: Duration = Duration::from_secs(2);

/// Path of the p2pnc binary built by cargo for this test or bench, or the one named by
/// `P2PNC_LAB_BIN` (to run the same tests or benchmarks against another build, such as the
/// previous release).
pub fn p2pnc_bin() -> &'static str {
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        std::env::var("P2PNC_LAB_BIN")
            .ok()
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_p2pnc").to_string())
    })
}

/// URL of the lab's rendezvous server, by its IPv4 address.
pub fn server_url() -> String {
    format!("http://{RDV_IP}:{SERVER_PORT}")
}

/// URL of the lab's rendezvous server by name: `rdv.lab`, with an A record and, in labs with
/// IPv6, an AAAA record (reached in both families by a server started with
/// [`P2pncLab::start_server_dual_stack`]).
pub fn server_url_by_name() -> String {
    format!("http://{RDV_NAME}:{SERVER_PORT}")
}

/// The server's control port, from the rendezvous host itself.
fn local_server() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, SERVER_PORT))
}

/// How an agent authenticates clients.
#[derive(Clone, Copy, Debug)]
pub enum Auth<'a> {
    Secret(&'a str),
    Public,
}

/// One `--report json` object: a connection that ended (`ok: true`, with how it was set up
/// and what it carried) or one that failed before it carried anything (`ok: false`).
#[derive(Clone, Debug, Deserialize)]
pub struct Report {
    /// `connect` or `accept`.
    pub report: String,
    pub ok: bool,
    pub id: String,
    pub path: Option<String>,
    pub peer_addr: Option<SocketAddr>,
    pub family: Option<String>,
    pub strategy: Option<String>,
    pub setup_ms: Option<u64>,
    pub session: Option<String>,
    pub bytes_sent: Option<u64>,
    pub bytes_received: Option<u64>,
    /// Whether the stream was encrypted.
    pub encrypted: Option<bool>,
    /// Why the stream broke after it was set up.
    pub broke: Option<String>,
    /// The error code of a failure (`peer_offline`, `no_direct_path`, ...).
    pub code: Option<String>,
    pub message: Option<String>,
}

/// How a connection was set up (from an `ok: true` report).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connected {
    /// `direct`, `lan` or `relayed`.
    pub path: String,
    pub addr: SocketAddr,
    pub ms: u64,
    pub strategy: String,
}

impl Report {
    pub fn connected(&self) -> Option<Connected> {
        if !self.ok {
            return None;
        }
        Some(Connected {
            path: self.path.clone()?,
            addr: self.peer_addr?,
            ms: self.setup_ms?,
            strategy: self.strategy.clone().unwrap_or_default(),
        })
    }
}

/// The `--report json` lines in a process's stderr, in order.
pub fn reports(stderr: &str) -> Vec<Report> {
    stderr
        .lines()
        .filter(|l| l.starts_with('{'))
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Waits until `p` has written at least `n` reports; returns them (fewer after `timeout`).
pub fn wait_reports(p: &Proc, n: usize, timeout: Duration) -> Vec<Report> {
    let deadline = Instant::now() + timeout;
    loop {
        let r = reports(&p.stderr());
        if r.len() >= n || Instant::now() >= deadline {
            return r;
        }
        thread::sleep(POLL);
    }
}

/// Outcome of one `p2pnc connect --stdio` run.
#[derive(Debug)]
pub struct ConnectRun {
    /// Exit status; `None` when it did not exit in time (it was killed).
    pub status: Option<ExitStatus>,
    pub stdout: Vec<u8>,
    pub stderr: String,
    pub elapsed: Duration,
}

impl ConnectRun {
    /// The run's `connect` report.
    pub fn report(&self) -> Option<Report> {
        reports(&self.stderr)
            .into_iter()
            .find(|r| r.report == "connect")
    }

    /// How the connection was set up, if it was.
    pub fn connected(&self) -> Option<Connected> {
        self.report()?.connected()
    }

    /// The error code of a connect that failed before carrying anything.
    pub fn failure_code(&self) -> Option<String> {
        self.report().filter(|r| !r.ok).and_then(|r| r.code)
    }

    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }
}

/// p2pnc's processes in a lab. Every p2pnc command runs with `--report json` and without
/// the caller's `P2PNC_*` environment.
pub trait P2pncLab {
    /// A p2pnc command to spawn (hermetic environment).
    fn p2pnc(&self, name: &str) -> Spawn;
    /// Starts `p2pnc server` on the rendezvous host and waits until `/v1/health` answers.
    fn start_server(&self) -> Proc;
    /// Like [`P2pncLab::start_server`], with extra arguments (e.g. `--relay`).
    fn start_server_with(&self, extra: &[&str]) -> Proc;
    /// Starts `p2pnc server` with its default listen address (IPv6 and IPv4 on one socket),
    /// with extra arguments, and waits until `/v1/health` answers.
    fn start_server_dual_stack(&self, extra: &[&str]) -> Proc;
    /// Status of `GET /v1/peers/ID` on the server.
    fn peer_status(&self, id: &str) -> io::Result<u16>;
    /// The server's `/status.json` (its admin listener): the first page of the services.
    fn server_status(&self) -> serde_json::Value;
    /// The server's `/status.json?q=ID`: the services whose id contains `id` (see
    /// [`service`] for the one whose id it is).
    fn server_status_of(&self, id: &str) -> serde_json::Value;
    /// Starts `p2pnc expose` on `node` for `127.0.0.1:service_port` and waits until the
    /// server lists the id.
    fn start_agent(&self, node: Node, id: &str, service_port: u16, auth: Auth) -> Proc;
    /// [`P2pncLab::start_agent`] with extra `expose` arguments.
    fn start_agent_with(
        &self,
        node: Node,
        id: &str,
        service_port: u16,
        auth: Auth,
        extra: &[&str],
    ) -> Proc;
    /// [`P2pncLab::start_agent_with`] toward the server at `url`.
    fn start_agent_at(
        &self,
        url: &str,
        node: Node,
        id: &str,
        service_port: u16,
        auth: Auth,
        extra: &[&str],
    ) -> Proc;
    /// Runs `p2pnc connect --stdio` on `node`, writes `payload` to its stdin (then closes
    /// it), collects stdout until EOF, and waits up to `timeout` for it to exit.
    fn connect_stdio(
        &self,
        node: Node,
        peer: &str,
        secret: Option<&str>,
        payload: &[u8],
        timeout: Duration,
    ) -> ConnectRun;
    /// [`P2pncLab::connect_stdio`] with extra `connect` arguments.
    fn connect_stdio_with(
        &self,
        node: Node,
        peer: &str,
        secret: Option<&str>,
        payload: &[u8],
        timeout: Duration,
        extra: &[&str],
    ) -> ConnectRun;
    /// [`P2pncLab::connect_stdio_with`] toward the server at `url`.
    #[allow(clippy::too_many_arguments)]
    fn connect_stdio_at(
        &self,
        url: &str,
        node: Node,
        peer: &str,
        secret: Option<&str>,
        payload: &[u8],
        timeout: Duration,
        extra: &[&str],
    ) -> ConnectRun;
    /// Starts `p2pnc connect --listen LISTEN` on `node` and waits until it listens.
    fn start_connect_listen(
        &self,
        node: Node,
        peer: &str,
        secret: Option<&str>,
        listen: SocketAddrV4,
    ) -> Proc;
    /// [`P2pncLab::start_connect_listen`] with extra `connect` arguments.
    fn start_connect_listen_with(
        &self,
        node: Node,
        peer: &str,
        secret: Option<&str>,
        listen: SocketAddrV4,
        extra: &[&str],
    ) -> Proc;
    /// `p2pnc nat-check --json` on `node`.
    fn nat_check(&self, node: Node) -> Result<serde_json::Value, String>;
}

/// Waits until the server answers `/v1/health` on the rendezvous host, or panics with its
/// stderr.
fn wait_server_ready(lab: &Lab, p: &mut Proc) {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok((200, _)) = lab.http_get(Node::Rdv, local_server(), "/v1/health", HTTP_TIMEOUT) {
            return;
        }
        if let Some(s) = p.try_status() {
            panic!(
                "p2pnc server exited ({s}) before it was ready; stderr:\n{}",
                p.stderr()
            );
        }
        assert!(
            Instant::now() < deadline,
            "timeout: p2pnc server: GET /v1/health did not answer 200 within \
             {START_TIMEOUT:?}; stderr:\n{}",
            p.stderr()
        );
        thread::sleep(POLL);
    }
}

impl P2pncLab for Lab {
    fn p2pnc(&self, name: &str) -> Spawn {
        Spawn::new(p2pnc_bin())
            .name(name)
            .env_remove_prefix("P2PNC_")
    }

    fn start_server(&self) -> Proc {
        self.start_server_with(&[])
    }

    fn start_server_with(&self, extra: &[&str]) -> Proc {
        let listen = format!("0.0.0.0:{SERVER_PORT}");
        let admin = format!("127.0.0.1:{ADMIN_PORT}");
        let spec = self
            .p2pnc("server")
            .args(["server", "--listen", &listen, "--admin", &admin])
            .args(extra);
        let mut p = self.spawn_cmd(Node::Rdv, spec);
        wait_server_ready(self, &mut p);
        p
    }

    fn start_server_dual_stack(&self, extra: &[&str]) -> Proc {
        let admin = format!("127.0.0.1:{ADMIN_PORT}");
        let spec = self
            .p2pnc("server")
            .args(["server", "--admin", &admin])
            .args(extra);
        let mut p = self.spawn_cmd(Node::Rdv, spec);
        wait_server_ready(self, &mut p);
        p
    }

    fn peer_status(&self, id: &str) -> io::Result<u16> {
        self.http_get(
            Node::Rdv,
            local_server(),
            &format!("/v1/peers/{id}"),
            HTTP_TIMEOUT,
        )
        .map(|(s, _)| s)
    }

    fn server_status(&self) -> serde_json::Value {
        status_json(self, "/status.json")
    }

    fn server_status_of(&self, id: &str) -> serde_json::Value {
        let path = format!("/status.json?q={}", p2pnc::protocol::percent_encode(id));
        status_json(self, &path)
    }

    fn start_agent(&self, node: Node, id: &str, service_port: u16, auth: Auth) -> Proc {
        self.start_agent_with(node, id, service_port, auth, &[])
    }

    fn start_agent_with(
        &self,
        node: Node,
        id: &str,
        service_port: u16,
        auth: Auth,
        extra: &[&str],
    ) -> Proc {
        self.start_agent_at(&server_url(), node, id, service_port, auth, extra)
    }

    fn start_agent_at(
        &self,
        url: &str,
        node: Node,
        id: &str,
        service_port: u16,
        auth: Auth,
        extra: &[&str],
    ) -> Proc {
        let to = format!("127.0.0.1:{service_port}");
        let mut spec = self
            .p2pnc(&format!("expose-{id}"))
            .args(["expose", "--report", "json", "--server", url])
            .args(["--id", id, "--to", &to]);
        spec = match auth {
            Auth::Secret(s) => spec.args(["--secret", s]),
            Auth::Public => spec.arg("--public"),
        };
        let mut p = self.spawn_cmd(node, spec.args(extra));
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(200) = self.peer_status(id) {
                return p;
            }
            if let Some(s) = p.try_status() {
                panic!(
                    "p2pnc expose --id {id} exited ({s}) before registering; stderr:\n{}",
                    p.stderr()
                );
            }
            assert!(
                Instant::now() < deadline,
                "timeout: p2pnc expose --id {id} not listed by the server (GET /v1/peers/{id} \
                 != 200) within {START_TIMEOUT:?}; stderr:\n{}",
                p.stderr()
            );
            thread::sleep(POLL);
        }
    }

    fn connect_stdio(
        &self,
        node: Node,
        peer: &str,
        secret: Option<&str>,
        payload: &[u8],
        timeout: Duration,
    ) -> ConnectRun {
        self.connect_stdio_with(node, peer, secret, payload, timeout, &[])
    }

    fn connect_stdio_with(
        &self,
        node: Node,
        peer: &str,
        secret: Option<&str>,
        payload: &[u8],
        timeout: Duration,
        extra: &[&str],
    ) -> ConnectRun {
        self.connect_stdio_at(&server_url(), node, peer, secret, payload, timeout, extra)
    }

    fn connect_stdio_at(
        &self,
        url: &str,
        node: Node,
        peer: &str,
        secret: Option<&str>,
        payload: &[u8],
        timeout: Duration,
        extra: &[&str],
    ) -> ConnectRun {
        let mut spec = self
            .p2pnc(&format!("connect-{peer}"))
            .args(["connect", "--report", "json", "--server", url])
            .args(["--peer", peer, "--stdio"])
            .args(extra)
            .pipe_stdin()
            .pipe_stdout();
        if let Some(s) = secret {
            spec = spec.args(["--secret", s]);
        }
        let start = Instant::now();
        let mut p = self.spawn_cmd(node, spec);
        let mut stdin = p.take_stdin().expect("piped stdin");
        let mut stdout = p.take_stdout().expect("piped stdout");
        let (status, out) = thread::scope(|s| {
            s.spawn(move || {
                // The process may exit early (e.g. on a refused secret): ignore EPIPE.
                let _ = stdin.write_all(payload);
                drop(stdin);
            });
            let reader = s.spawn(move || {
                let mut out = Vec::new();
                let _ = stdout.read_to_end(&mut out);
                out
            });
            let status = p.wait_timeout(timeout);
            if status.is_none() {
                p.kill();
            }
            (status, reader.join().expect("stdout reader"))
        });
        ConnectRun {
            status,
            stdout: out,
            stderr: p.stderr(),
            elapsed: start.elapsed(),
        }
    }

    fn start_connect_listen(
        &self,
        node: Node,
        peer: &str,
        secret: Option<&str>,
        listen: SocketAddrV4,
    ) -> Proc {
        self.start_connect_listen_with(node, peer, secret, listen, &[])
    }

    fn start_connect_listen_with(
        &self,
        node: Node,
        peer: &str,
        secret: Option<&str>,
        listen: SocketAddrV4,
        extra: &[&str],
    ) -> Proc {
        let url = server_url();
        let listen_s = listen.to_string();
        let mut spec = self
            .p2pnc(&format!("connect-listen-{peer}"))
            .args(["connect", "--report", "json", "--server", &url])
            .args(["--peer", peer, "--listen", &listen_s])
            .args(extra);
        if let Some(s) = secret {
            spec = spec.args(["--secret", s]);
        }
        let mut p = self.spawn_cmd(node, spec);
        // Ready when the port listens (a test connection would start a session).
        let deadline = Instant::now() + START_TIMEOUT;
        while !self.listening(node, listen.port()) {
            if let Some(s) = p.try_status() {
                panic!(
                    "p2pnc connect --listen {listen} exited ({s}); stderr:\n{}",
                    p.stderr()
                );
            }
            assert!(
                Instant::now() < deadline,
                "timeout: p2pnc connect --listen {listen} not listening within \
                 {START_TIMEOUT:?}; stderr:\n{}",
                p.stderr()
            );
            thread::sleep(POLL);
        }
        p
    }

    fn nat_check(&self, node: Node) -> Result<serde_json::Value, String> {
        let out = self.run(
            node,
            p2pnc_bin(),
            &["nat-check", "--server", &server_url(), "--json"],
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let ctx = || {
            format!(
                "nat-check --json on {node:?} exited {}; stdout:\n{stdout}\nstderr:\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
        };
        if !out.status.success() {
            return Err(ctx());
        }
        serde_json::from_str(stdout.trim()).map_err(|e| format!("not JSON ({e}): {}", ctx()))
    }
}

/// `GET path` on the server's admin listener, as JSON.
fn status_json(lab: &Lab, path: &str) -> serde_json::Value {
    let admin = SocketAddr::from((Ipv4Addr::LOCALHOST, ADMIN_PORT));
    let (code, body) = lab
        .http_get(Node::Rdv, admin, path, HTTP_TIMEOUT)
        .unwrap_or_else(|e| panic!("GET {path} from the server's admin port: {e}"));
    assert_eq!(code, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
}

/// The `/status.json` entry of an online service, if listed.
pub fn service<'a>(status: &'a serde_json::Value, id: &str) -> Option<&'a serde_json::Value> {
    status["services"]
        .as_array()?
        .iter()
        .find(|s| s["id"] == id)
}
