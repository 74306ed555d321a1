//! The rendezvous server: HTTP and WebSocket on one port. It keeps the registry of online ids,
//! sees each peer's public endpoint from its TCP connection, and times every punch so both ends
//! fire together. It never carries a byte of the punched streams.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

mod admin;
pub mod limits;

use self::limits::{ConnCounts, Guarded, RateLimiter};
use crate::metrics::{Metrics, Outcome};
use crate::net;
use crate::probe::ProbeTable;
use crate::protocol::{
    self, AgentToServer, Auth, ClientToServer, ConnectQuery, ErrorBody, ErrorCode, ExposeQuery,
    JoinQueryError, MAX_MESSAGE_BYTES, Mapping, Mode, ProbeToken, PunchOrder, Role, ServerToAgent,
    ServerToClient, ServiceId, SessionId, SessionKey, Strategy,
};
use crate::relay::{JoinRefused, RelayConfig, RelayHub};
use crate::tls::{self, MaybeTls, ServerTls};

/// How often the server pings an agent; also how often the agent's NAT mapping is refreshed
/// from this side. Well under the 2 hours of a typical TCP NAT timeout, and often enough to
/// keep the RTT estimate fresh.
const AGENT_PING_INTERVAL: Duration = Duration::from_secs(10);
/// An agent silent for this long (no pong, no message) is taken offline: three missed pings.
const AGENT_SILENCE_LIMIT: Duration = Duration::from_secs(35);
/// How long a plain-mode session waits for the agent to arm before failing.
const ARM_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a client control connection may stay open after its punch order.
const SESSION_LIFETIME: Duration = Duration::from_secs(30);
/// Messages queued toward one agent before new sessions to it are refused as busy.
const AGENT_QUEUE: usize = 256;

/// Read buffer of a control WebSocket. What agents and clients send is a few hundred bytes at
/// most (a longer message grows the buffer for as long as it needs), and every online agent
/// holds one: tungstenite's default of 128 KiB, zero-filled on the first read, would cost
/// 128 KiB of memory per agent. Writes go out at once (a write buffer size of 0): there is
/// nothing to batch.
const WS_READ_BUFFER: usize = 512;

/// How long a control request waits for the probe it names (sent at the same moment from the
/// same port, so it normally arrives first).
const PROBE_WAIT: Duration = Duration::from_millis(300);
/// Head start of the direct path before the relay is joined, when a direct path is possible.
const RELAY_HEAD_START: Duration = Duration::from_millis(1500);

/// Default time an id stays reserved for its owner after it went offline: long enough for an
/// agent's reconnect backoff and a service restart.
pub const DEFAULT_ID_GRACE: Duration = Duration::from_secs(60);

/// Limits and features of a server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Most agents registered at once.
    pub max_agents: usize,
    /// Most sessions (client control connections) open at once.
    pub max_sessions: usize,
    /// Relay sessions that have no direct path (off when `None`).
    pub relay: Option<RelayConfig>,
    /// When set, agents and clients must present it (`Authorization: Bearer TOKEN`).
    pub token: Option<String>,
    /// How long an id stays reserved for its owner after the owner went offline.
    pub id_grace: Duration,
    /// Most connections to the control port at once.
    pub max_connections: usize,
    /// Most connections to the control port from one address.
    pub max_connections_per_ip: usize,
    /// Time a new connection has to send its first request head.
    pub head_timeout: Duration,
    /// Connect requests per second per address (bursts of three seconds' worth).
    pub connect_rate: f64,
    /// Registrations per second per address (bursts of five seconds' worth).
    pub expose_rate: f64,
    /// TLS on the control port. Expose and connect requests must then come over TLS; plain
    /// connections may still ask `/v1/whoami`, `/v1/health` and join relays.
    pub tls: Option<ServerTls>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_agents: 200_000,
            max_sessions: 20_000,
            relay: None,
            token: None,
            id_grace: DEFAULT_ID_GRACE,
            max_connections: limits::MAX_CONNECTIONS,
            max_connections_per_ip: limits::MAX_CONNECTIONS_PER_IP,
            head_timeout: limits::HEAD_TIMEOUT,
            connect_rate: 20.0,
            expose_rate: 2.0,
            tls: None,
        }
    }
}

/// What the server knows about one TCP connection.
#[derive(Debug, Clone, Copy)]
struct ConnMeta {
    remote: SocketAddr,
    /// RTT measured by the kernel from the TCP handshake.
    rtt: Option<Duration>,
    /// Whether the connection speaks TLS.
    tls: bool,
}

/// The control port's accept loop: counts connections per source address and in all, gives
/// each one a deadline for its first request head and, on a TLS server, tells TLS from plain
/// HTTP by the first byte and runs TLS handshakes.
struct Accepting {
    listener: TcpListener,
    counts: Arc<ConnCounts>,
    config: ServerConfig,
    /// Connections still being told apart or in their TLS handshake.
    handshakes: JoinSet<Option<(Guarded, SocketAddr)>>,
}

impl axum::serve::Listener for Accepting {
    type Io = Guarded;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Guarded, SocketAddr) {
        loop {
            let accepted = tokio::select! {
                Some(done) = self.handshakes.join_next(), if !self.handshakes.is_empty() => {
                    if let Ok(Some(conn)) = done {
                        return conn;
                    }
                    continue;
                }
                accepted = self.listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, addr)) => {
                    let c = &self.config;
                    let Some(slot) =
                        self.counts
                            .admit(addr.ip(), c.max_connections, c.max_connections_per_ip)
                    else {
                        tracing::debug!("refusing {addr}: connection limit");
                        continue; // Dropping the stream closes it.
                    };
                    let _ = stream.set_nodelay(true);
                    let deadline = Instant::now() + c.head_timeout;
                    match &c.tls {
                        None => {
                            let plain = MaybeTls::Plain(stream);
                            return (Guarded::new(plain, slot, deadline), addr);
                        }
                        Some(tls) => {
                            let acceptor = tls.acceptor.clone();
                            self.handshakes
                                .spawn(handshake(acceptor, stream, slot, deadline, addr));
                        }
                    }
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// Tells a TLS client from a plain one by its first byte, and runs the TLS handshake, all
/// before `deadline`. `None` when the connection closed, failed or ran out of time.
async fn handshake(
    acceptor: tokio_rustls::TlsAcceptor,
    stream: tokio::net::TcpStream,
    slot: limits::Slot,
    deadline: Instant,
    addr: SocketAddr,
) -> Option<(Guarded, SocketAddr)> {
    let mut first = [0u8; 1];
    match tokio::time::timeout_at(deadline, stream.peek(&mut first)).await {
        Ok(Ok(1)) => {}
        _ => return None,
    }
    if first[0] != tls::HANDSHAKE_RECORD {
        return Some((Guarded::new(MaybeTls::Plain(stream), slot, deadline), addr));
    }
    match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => {
            let tls = MaybeTls::Tls(Box::new(tokio_rustls::TlsStream::Server(tls)));
            Some((Guarded::new(tls, slot, deadline), addr))
        }
        Ok(Err(e)) => {
            tracing::debug!("TLS handshake with {addr} failed: {e}");
            None
        }
        Err(_) => {
            tracing::debug!("TLS handshake with {addr} timed out");
            None
        }
    }
}

impl Connected<axum::serve::IncomingStream<'_, Accepting>> for ConnMeta {
    fn connect_info(stream: axum::serve::IncomingStream<'_, Accepting>) -> Self {
        ConnMeta {
            remote: *stream.remote_addr(),
            rtt: net::tcp_rtt(stream.io().tcp()),
            tls: stream.io().is_tls(),
        }
    }
}

struct AgentEntry {
    generation: u64,
    /// Boxed: a channel allocates its first 32 slots up front, and every online agent has one.
    tx: mpsc::Sender<Box<ServerToAgent>>,
    public: SocketAddr,
    private: Vec<SocketAddr>,
    auth: Auth,
    mapping: Mapping,
    /// The public endpoint the agent's router forwards to its punch port, when it is on the
    /// agent's public address.
    mapped: Option<SocketAddr>,
    /// The owner credential the agent presented, if any.
    owner: Option<String>,
    /// Cancelled when the owner's restart replaces this registration.
    kick: CancellationToken,
    /// When it registered (Unix milliseconds).
    since_unix_ms: u64,
    /// Smoothed RTT in microseconds (0 = unknown).
    rtt_us: Arc<AtomicU64>,
}

enum SessionEvent {
    Rejected(ErrorCode, String),
    Armed,
}

struct Shared {
    config: ServerConfig,
    connect_rate: RateLimiter,
    expose_rate: RateLimiter,
    /// Ids whose owner went offline recently: id → (owner, when).
    reserved: Mutex<HashMap<ServiceId, (String, Instant)>>,
    /// `None` when the server has no probe port: mappings are then unknown at once.
    probes: Option<Arc<ProbeTable>>,
    relay: Option<RelayHub>,
    metrics: Metrics,
    tasks: TaskTracker,
    agents: Mutex<HashMap<ServiceId, AgentEntry>>,
    sessions: Mutex<HashMap<SessionId, mpsc::Sender<SessionEvent>>>,
    generation: AtomicU64,
    shutdown: CancellationToken,
}

type AppState = Arc<Shared>;

/// Binds the control port `addr` and the probe port next to it. With port 0, finds a pair
/// of free consecutive ports.
pub async fn bind_pair(addr: SocketAddr) -> std::io::Result<(TcpListener, TcpListener)> {
    const TRIES: usize = 50;
    let mut last = None;
    for _ in 0..TRIES {
        let control = net::server_listener(addr)?;
        let probe_addr = protocol::probe_addr(control.local_addr()?);
        match net::server_listener(probe_addr) {
            Ok(probe) => return Ok((control, probe)),
            Err(e) if addr.port() == 0 => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.expect("tried at least once"))
}

/// Serves the rendezvous protocol on `listener` until `shutdown` is cancelled, without a probe
/// port (peers' NAT mappings stay unknown). See [`serve`] for the full server.
pub async fn run(
    listener: TcpListener,
    config: ServerConfig,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    serve(Listeners::control(listener), config, shutdown).await
}

/// The sockets a server serves.
pub struct Listeners {
    /// HTTP and WebSocket: the control port.
    pub control: TcpListener,
    /// NAT probes, by convention on the control port + 1 (see [`crate::probe`]).
    pub probe: Option<TcpListener>,
    /// The admin listener: `/metrics` and the status page. Keep it off public addresses.
    pub admin: Option<TcpListener>,
}

impl Listeners {
    /// Only a control port: no probe (mappings stay unknown), no admin.
    pub fn control(control: TcpListener) -> Self {
        Listeners {
            control,
            probe: None,
            admin: None,
        }
    }
}

/// Serves the rendezvous protocol until `shutdown` is cancelled.
pub async fn serve(
    listeners: Listeners,
    config: ServerConfig,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let Listeners {
        control: listener,
        probe,
        admin,
    } = listeners;
    let probes = probe.as_ref().map(|_| Arc::new(ProbeTable::default()));
    let state = Arc::new(Shared {
        relay: config.relay.map(RelayHub::new),
        connect_rate: RateLimiter::new(config.connect_rate, config.connect_rate * 3.0),
        expose_rate: RateLimiter::new(config.expose_rate, config.expose_rate * 5.0),
        config,
        reserved: Mutex::new(HashMap::new()),
        probes: probes.clone(),
        metrics: Metrics::default(),
        tasks: TaskTracker::new(),
        agents: Mutex::new(HashMap::new()),
        sessions: Mutex::new(HashMap::new()),
        generation: AtomicU64::new(1),
        shutdown: shutdown.clone(),
    });
    if let (Some(probe), Some(table)) = (probe, probes) {
        state
            .tasks
            .spawn(crate::probe::serve(probe, table, shutdown.clone()));
    }
    if let Some(admin) = admin {
        let app = admin::router(state.clone());
        let stop = shutdown.clone();
        state.tasks.spawn(async move {
            if let Err(e) = axum::serve(admin, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
            {
                tracing::error!("admin listener failed: {e}");
            }
        });
    }
    let app = Router::new()
        .route("/", get(index))
        .route("/v1/health", get(health))
        .route("/v1/peers/{id}", get(peer))
        .route("/v1/whoami", get(whoami))
        .route(protocol::EXPOSE_PATH, get(expose))
        .route(protocol::CONNECT_PATH, get(connect))
        .route(protocol::RELAY_PATH, get(relay_join))
        .fallback(|| async { error(ErrorCode::NotFound, "no such endpoint".into()) })
        .method_not_allowed_fallback(|| async {
            error(
                ErrorCode::BadRequest,
                "method not allowed: every endpoint takes GET".into(),
            )
        })
        .with_state(state.clone());
    let accepting = Accepting {
        listener,
        counts: Arc::new(ConnCounts::default()),
        config: state.config.clone(),
        handshakes: JoinSet::new(),
    };
    let served = axum::serve(
        accepting,
        app.into_make_service_with_connect_info::<ConnMeta>(),
    )
    .with_graceful_shutdown(shutdown.cancelled_owned())
    .await;
    state.tasks.close();
    state.tasks.wait().await;
    served
}

/// Whether an agent may take an id.
enum Claim {
    /// The id is free.
    Free,
    /// The id's owner restarted: replace its registration.
    Replace,
    /// Someone else holds or recently held it.
    Refused(String),
}

impl Shared {
    /// Decides whether `owner` may register `id` now. Call with the agents lock held.
    fn claim(
        &self,
        agents: &HashMap<ServiceId, AgentEntry>,
        id: &ServiceId,
        owner: Option<&str>,
    ) -> Claim {
        if let Some(entry) = agents.get(id) {
            return match (entry.owner.as_deref(), owner) {
                (Some(a), Some(b)) if constant_time_eq(a, b) => Claim::Replace,
                _ => Claim::Refused(id_taken(id)),
            };
        }
        let mut reserved = self.reserved.lock().expect("reserved lock");
        let grace = self.config.id_grace;
        reserved.retain(|_, (_, at)| at.elapsed() < grace);
        match (reserved.get(id), owner) {
            (None, _) => Claim::Free,
            (Some((a, _)), Some(b)) if constant_time_eq(a, b) => Claim::Free,
            (Some((_, at)), _) => Claim::Refused(format!(
                "id '{id}' belongs to another agent that went offline {} s ago; it stays \
                 reserved for {} s",
                at.elapsed().as_secs(),
                grace.as_secs()
            )),
        }
    }

    /// The refusal of a request that lacks the server's token, if the server has one.
    fn token_refusal(&self, headers: &axum::http::HeaderMap) -> Option<Response> {
        let want = self.config.token.as_ref()?;
        let got = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.strip_prefix("Bearer "));
        match got {
            Some(got) if constant_time_eq(got, want) => None,
            Some(_) => Some(self.reject(ErrorCode::Unauthorized, "server token rejected".into())),
            None => Some(self.reject(
                ErrorCode::Unauthorized,
                "this server requires a token (--token or P2PNC_TOKEN)".into(),
            )),
        }
    }

    /// The refusal of an expose or connect request that lacks the token or comes too fast.
    fn admission_refusal(
        &self,
        headers: &axum::http::HeaderMap,
        from: &ConnMeta,
        rate: &RateLimiter,
        what: &str,
    ) -> Option<Response> {
        if self.config.tls.is_some() && !from.tls {
            return Some(self.reject(
                ErrorCode::BadRequest,
                "this server speaks TLS: use an https:// server URL".into(),
            ));
        }
        if let Some(refused) = self.token_refusal(headers) {
            return Some(refused);
        }
        (!rate.allow(from.remote.ip())).then(|| {
            self.reject(
                ErrorCode::RateLimited,
                format!("too many {what}; slow down"),
            )
        })
    }

    /// Refuses a request before any upgrade, counting it.
    fn reject(&self, code: ErrorCode, message: String) -> Response {
        self.metrics.rejected(&code.to_string());
        error(code, message)
    }
}

fn constant_time_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn error(code: ErrorCode, message: String) -> Response {
    let status = StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
    (
        status,
        Json(ErrorBody {
            error: code,
            message,
        }),
    )
        .into_response()
}

async fn index() -> &'static str {
    concat!(
        "p2pnc rendezvous server ",
        env!("CARGO_PKG_VERSION"),
        "\nEndpoints: /v1/health, /v1/peers/{id}, /v1/expose (WebSocket), /v1/connect (WebSocket)\n"
    )
}

async fn health(State(state): State<AppState>) -> Json<serde_json::Value> {
    let agents = state.agents.lock().expect("agents lock").len();
    let sessions = state.sessions.lock().expect("sessions lock").len();
    Json(serde_json::json!({
        "ok": true,
        "version": env!("CARGO_PKG_VERSION"),
        "protocol": protocol::PROTOCOL_VERSION,
        "agents": agents,
        "sessions": sessions,
    }))
}

async fn whoami(ConnectInfo(meta): ConnectInfo<ConnMeta>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "addr": meta.remote }))
}

async fn peer(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: axum::http::HeaderMap,
) -> Response {
    if let Some(refused) = state.token_refusal(&headers) {
        return refused;
    }
    if state
        .agents
        .lock()
        .expect("agents lock")
        .contains_key(id.as_str())
    {
        Json(serde_json::json!({"id": id, "online": true})).into_response()
    } else {
        error(ErrorCode::PeerOffline, format!("peer '{id}' is not online"))
    }
}

/// Applies the frame limits and upgrades, or explains that a WebSocket upgrade was expected.
fn upgrade(
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    then: impl FnOnce(WebSocketUpgrade) -> Response,
) -> Response {
    match ws {
        Ok(ws) => then(
            ws.max_message_size(MAX_MESSAGE_BYTES)
                .max_frame_size(MAX_MESSAGE_BYTES)
                .read_buffer_size(WS_READ_BUFFER)
                .write_buffer_size(0),
        ),
        Err(e) => error(
            ErrorCode::BadRequest,
            format!("this endpoint needs a WebSocket upgrade: {e}"),
        ),
    }
}

async fn expose(
    State(state): State<AppState>,
    ConnectInfo(meta): ConnectInfo<ConnMeta>,
    RawQuery(query): RawQuery,
    headers: axum::http::HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    if let Some(refused) =
        state.admission_refusal(&headers, &meta, &state.expose_rate, "registrations")
    {
        return refused;
    }
    let q = match ExposeQuery::parse(query.as_deref().unwrap_or("")) {
        Ok(q) => q,
        Err(e) => return state.reject(e.code, e.message),
    };
    {
        let agents = state.agents.lock().expect("agents lock");
        if let Claim::Refused(why) = state.claim(&agents, &q.id, q.owner.as_deref()) {
            return state.reject(ErrorCode::IdTaken, why);
        }
        if agents.len() >= state.config.max_agents {
            return state.reject(ErrorCode::Busy, "server has too many agents".into());
        }
    }
    upgrade(ws, |ws| {
        ws.on_upgrade(move |socket| agent_session(state, meta, q, socket))
    })
}

fn id_taken(id: &str) -> String {
    format!("id '{id}' is already registered by another agent")
}

async fn send<T: serde::Serialize>(socket: &mut WebSocket, msg: &T) -> bool {
    socket
        .send(Message::Text(protocol::encode(msg).into()))
        .await
        .is_ok()
}

async fn agent_session(state: AppState, meta: ConnMeta, q: ExposeQuery, mut socket: WebSocket) {
    let mapping = probed_mapping(&state, meta.remote, q.probe.as_ref()).await;
    // A mapping on another address than the one we see leads nowhere: the router that made
    // it sits behind another NAT.
    let mapped = q.mapped.filter(|m| {
        let usable = m.ip() == meta.remote.ip();
        if !usable {
            tracing::info!(
                id = %q.id, mapped = %m, public = %meta.remote,
                "ignoring a port mapping that is not on the agent's public address"
            );
        }
        usable
    });
    let generation = state.generation.fetch_add(1, Ordering::Relaxed);
    let (tx, mut rx) = mpsc::channel(AGENT_QUEUE);
    let rtt_us = Arc::new(AtomicU64::new(meta.rtt.map_or(0, |d| d.as_micros() as u64)));
    let kick = CancellationToken::new();
    let claimed = {
        let mut agents = state.agents.lock().expect("agents lock");
        let claim = state.claim(&agents, &q.id, q.owner.as_deref());
        if let Claim::Replace = claim
            && let Some(old) = agents.remove(&q.id)
        {
            tracing::info!(id = %q.id, "the owner re-registered; replacing its old registration");
            old.kick.cancel();
        }
        match claim {
            Claim::Refused(why) => Err(why),
            Claim::Free | Claim::Replace => {
                agents.insert(
                    q.id.clone(),
                    AgentEntry {
                        generation,
                        tx,
                        public: meta.remote,
                        private: q.private.clone(),
                        auth: q.auth,
                        mapping,
                        mapped,
                        owner: q.owner.clone(),
                        kick: kick.clone(),
                        since_unix_ms: crate::metrics::now_unix_ms(),
                        rtt_us: rtt_us.clone(),
                    },
                );
                Ok(())
            }
        }
    };
    if let Err(message) = claimed {
        let msg = ServerToAgent::Error {
            code: ErrorCode::IdTaken,
            message,
        };
        send(&mut socket, &msg).await;
        return;
    }
    tracing::info!(
        id = %q.id, public = %meta.remote, auth = ?q.auth, %mapping, mapped = ?mapped,
        "agent registered"
    );
    let registered = ServerToAgent::Registered {
        id: q.id.clone(),
        public: meta.remote,
        mapping,
    };
    if send(&mut socket, &registered).await {
        tokio::select! {
            _ = agent_loop(&state, &mut socket, &mut rx, &rtt_us) => {}
            _ = kick.cancelled() => {
                let msg = ServerToAgent::Error {
                    code: ErrorCode::IdTaken,
                    message: "replaced by a new registration of the same owner".into(),
                };
                send(&mut socket, &msg).await;
            }
        }
    }
    if let Some(owner) = &q.owner {
        state
            .reserved
            .lock()
            .expect("reserved lock")
            .insert(q.id.clone(), (owner.clone(), Instant::now()));
    }
    let mut agents = state.agents.lock().expect("agents lock");
    if agents
        .get(&q.id)
        .is_some_and(|e| e.generation == generation)
    {
        agents.remove(&q.id);
    }
    drop(agents);
    tracing::info!(id = %q.id, "agent offline");
}

async fn agent_loop(
    state: &Shared,
    socket: &mut WebSocket,
    rx: &mut mpsc::Receiver<Box<ServerToAgent>>,
    rtt_us: &AtomicU64,
) {
    let mut ping = tokio::time::interval(AGENT_PING_INTERVAL);
    let mut last_heard = Instant::now();
    let mut ping_sent: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            Some(msg) = rx.recv() => {
                if !send(socket, &msg).await {
                    return;
                }
            }
            _ = ping.tick() => {
                if last_heard.elapsed() > AGENT_SILENCE_LIMIT {
                    tracing::info!("agent silent for {:?}, dropping it", last_heard.elapsed());
                    return;
                }
                if socket.send(Message::Ping(Default::default())).await.is_err() {
                    return;
                }
                ping_sent = Some(Instant::now());
            }
            got = socket.recv() => {
                let msg = match got {
                    Some(Ok(m)) => m,
                    Some(Err(e)) => {
                        tracing::debug!("agent connection error: {e}");
                        return;
                    }
                    None => return,
                };
                last_heard = Instant::now();
                match msg {
                    Message::Text(text) => match protocol::decode::<AgentToServer>(&text) {
                        Ok(m) => route_agent_msg(state, m),
                        Err(e) => {
                            let reply = ServerToAgent::Error {
                                code: ErrorCode::BadRequest,
                                message: e.to_string(),
                            };
                            send(socket, &reply).await;
                            return;
                        }
                    },
                    Message::Pong(_) => {
                        if let Some(sent) = ping_sent.take() {
                            let sample = sent.elapsed().as_micros() as u64;
                            let old = rtt_us.load(Ordering::Relaxed);
                            let new = if old == 0 { sample } else { (old * 7 + sample) / 8 };
                            rtt_us.store(new, Ordering::Relaxed);
                        }
                    }
                    Message::Ping(_) => {}
                    Message::Binary(_) => {
                        let reply = ServerToAgent::Error {
                            code: ErrorCode::BadRequest,
                            message: "binary frames are not part of the protocol".into(),
                        };
                        send(socket, &reply).await;
                        return;
                    }
                    Message::Close(_) => return,
                }
            }
        }
    }
}

async fn probed_mapping(
    state: &Shared,
    control: SocketAddr,
    token: Option<&ProbeToken>,
) -> Mapping {
    match (token, &state.probes) {
        (Some(t), Some(table)) => Mapping::classify(control, table.wait(t, PROBE_WAIT).await),
        _ => Mapping::Unknown,
    }
}

/// The strategies of (client, agent), or `None` when no direct path can exist. A port mapping
/// on the agent's router takes connections from anywhere: unless both NATs are cone (where
/// the usual punch goes on, the mapping being one more candidate), the client connects to it
/// and the agent waits.
fn strategies(client: Mapping, agent: Mapping, agent_mapped: bool) -> Option<(Strategy, Strategy)> {
    use Mapping::EndpointDependent as Hard;
    match (client == Hard, agent == Hard) {
        (false, false) => Some((Strategy::Simultaneous, Strategy::Simultaneous)),
        _ if agent_mapped => Some((Strategy::Simultaneous, Strategy::Mapped)),
        (true, false) => Some((Strategy::BirthdayHard, Strategy::BirthdayEasy)),
        (false, true) => Some((Strategy::BirthdayEasy, Strategy::BirthdayHard)),
        (true, true) => None,
    }
}

fn route_agent_msg(state: &Shared, msg: AgentToServer) {
    let (session, event) = match msg {
        AgentToServer::Reject {
            session,
            code,
            message,
        } => (session, SessionEvent::Rejected(code, message)),
        AgentToServer::Armed { session } => (session, SessionEvent::Armed),
        _ => return,
    };
    // Text that is no session id names no session, like an id the server does not know.
    let Some(session) = session.id() else {
        return;
    };
    let tx = state
        .sessions
        .lock()
        .expect("sessions lock")
        .get(&session)
        .cloned();
    if let Some(tx) = tx {
        let _ = tx.try_send(event);
    }
}

async fn connect(
    State(state): State<AppState>,
    ConnectInfo(meta): ConnectInfo<ConnMeta>,
    RawQuery(query): RawQuery,
    headers: axum::http::HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    if let Some(refused) =
        state.admission_refusal(&headers, &meta, &state.connect_rate, "connect requests")
    {
        return refused;
    }
    let q = match ConnectQuery::parse(query.as_deref().unwrap_or("")) {
        Ok(q) => q,
        Err(e) => return state.reject(e.code, e.message),
    };
    let auth = state
        .agents
        .lock()
        .expect("agents lock")
        .get(&q.peer)
        .map(|a| a.auth);
    match auth {
        None => {
            return state.reject(
                ErrorCode::PeerOffline,
                format!("peer '{}' is not online", q.peer),
            );
        }
        Some(Auth::Secret) if q.proof.is_none() => {
            return state.reject(
                ErrorCode::SecretRequired,
                format!("peer '{}' requires a secret", q.peer),
            );
        }
        Some(_) => {}
    }
    if state.sessions.lock().expect("sessions lock").len() >= state.config.max_sessions {
        return state.reject(ErrorCode::Busy, "server has too many open sessions".into());
    }
    upgrade(ws, |ws| {
        ws.on_upgrade(move |socket| client_session(state, meta, q, socket))
    })
}

/// Removes a session from the table when its client connection ends, however it ends.
struct SessionGuard<'a>(&'a Shared, SessionId);

impl Drop for SessionGuard<'_> {
    fn drop(&mut self) {
        self.0
            .sessions
            .lock()
            .expect("sessions lock")
            .remove(&self.1);
    }
}

/// Records how a session ended, exactly once; a session dropped without an ending counts as
/// abandoned.
struct Tally<'a> {
    metrics: &'a Metrics,
    peer: String,
    pair: (Mapping, Mapping),
    strategy: Strategy,
    done: bool,
}

impl Tally<'_> {
    fn end(&mut self, outcome: Outcome, setup: Option<Duration>, reason: Option<String>) {
        if !std::mem::replace(&mut self.done, true) {
            self.metrics
                .record(&self.peer, self.pair, self.strategy, outcome, setup, reason);
        }
    }
}

impl Drop for Tally<'_> {
    fn drop(&mut self) {
        self.end(Outcome::Abandoned, None, None);
    }
}

/// Tells the client why its request failed, and records it.
async fn refuse(socket: &mut WebSocket, tally: &mut Tally<'_>, code: ErrorCode, message: String) {
    tally.metrics.rejected(&code.to_string());
    tally.end(Outcome::Rejected, None, Some(message.clone()));
    send(socket, &ServerToClient::Error { code, message }).await;
}

async fn client_session(state: AppState, meta: ConnMeta, q: ConnectQuery, mut socket: WebSocket) {
    let session = SessionId::random();
    let (events_tx, mut events) = mpsc::channel(4);
    state
        .sessions
        .lock()
        .expect("sessions lock")
        .insert(session, events_tx);
    let _guard = SessionGuard(&state, session);

    let client_mapping = probed_mapping(&state, meta.remote, q.probe.as_ref()).await;
    let agent = {
        let agents = state.agents.lock().expect("agents lock");
        agents.get(&q.peer).map(|a| {
            (
                a.tx.clone(),
                a.public,
                a.private.clone(),
                a.auth,
                a.mapping,
                Duration::from_micros(a.rtt_us.load(Ordering::Relaxed)),
                a.mapped,
            )
        })
    };
    let mut tally = Tally {
        metrics: &state.metrics,
        peer: q.peer.to_string(),
        pair: (
            client_mapping,
            agent.as_ref().map_or(Mapping::Unknown, |a| a.4),
        ),
        strategy: Strategy::Simultaneous,
        done: false,
    };
    let Some((agent_tx, agent_public, agent_private, auth, agent_mapping, agent_rtt, agent_mapped)) =
        agent
    else {
        let message = format!("peer '{}' is not online", q.peer);
        return refuse(&mut socket, &mut tally, ErrorCode::PeerOffline, message).await;
    };
    // Private candidates only help peers behind the same NAT; elsewhere they would send SYNs
    // into unrelated networks.
    let same_nat = agent_public.ip() == meta.remote.ip();
    // Plain mode keeps to the seed's single connect toward the agent's public endpoint.
    let agent_mapped = agent_mapped.filter(|_| q.mode == Mode::Punch);
    let direct = match q.mode {
        Mode::Punch => strategies(client_mapping, agent_mapping, agent_mapped.is_some()),
        Mode::Plain => Some((Strategy::Simultaneous, Strategy::Simultaneous)),
    };
    let relay_after = match (&state.relay, direct, q.mode) {
        (None, _, _) | (_, _, Mode::Plain) => None,
        (Some(_), Some(_), _) => Some(RELAY_HEAD_START.as_millis() as u64),
        (Some(_), None, _) => Some(0),
    };
    let (client_strategy, agent_strategy) =
        direct.unwrap_or((Strategy::RelayOnly, Strategy::RelayOnly));
    tally.strategy = client_strategy;
    if direct.is_none() && relay_after.is_none() && !same_nat {
        let message = format!(
            "no direct path: this client's NAT is {client_mapping} and peer '{}''s NAT is \
             {agent_mapping} (both symmetric), and this server does not relay",
            q.peer
        );
        return refuse(&mut socket, &mut tally, ErrorCode::NoDirectPath, message).await;
    }
    let key = SessionKey::random();
    let to_agent = PunchOrder {
        session,
        key,
        peer_public: meta.remote,
        peer_private: if same_nat { q.private.clone() } else { vec![] },
        you: agent_public,
        mode: q.mode,
        auth,
        nonce: Some(q.nonce),
        proof: q.proof.clone(),
        strategy: agent_strategy,
        your_mapping: agent_mapping,
        peer_mapping: client_mapping,
        relay_after_ms: relay_after,
        peer_mapped: None,
    };
    let to_client = ServerToClient::Punch(PunchOrder {
        session,
        key,
        peer_public: agent_public,
        peer_private: if same_nat { agent_private } else { vec![] },
        you: meta.remote,
        mode: q.mode,
        auth,
        nonce: None,
        proof: None,
        strategy: client_strategy,
        your_mapping: client_mapping,
        peer_mapping: agent_mapping,
        relay_after_ms: relay_after,
        peer_mapped: agent_mapped,
    });
    tracing::info!(
        %session, peer = %q.peer, client = %meta.remote, mode = ?q.mode,
        %client_mapping, %agent_mapping, strategy = %client_strategy, relay = ?relay_after,
        mapped = ?agent_mapped, "session"
    );

    if agent_tx
        .try_send(Box::new(ServerToAgent::Punch(to_agent)))
        .is_err()
    {
        let message = format!("peer '{}' has too many pending sessions", q.peer);
        return refuse(&mut socket, &mut tally, ErrorCode::Busy, message).await;
    }
    let sent = match q.mode {
        Mode::Punch => {
            // Both ends should fire at the same moment: hold the order to the nearer end back
            // by the difference of the one-way delays. The agent's order went first, so only
            // the client's is ever held; a nearer agent fires a little early, which the low
            // TTL of its first SYN makes harmless.
            let client_rtt = meta.rtt.unwrap_or_default();
            let hold = agent_rtt.saturating_sub(client_rtt) / 2;
            if !hold.is_zero() {
                tokio::time::sleep(hold.min(Duration::from_millis(500))).await;
            }
            send(&mut socket, &to_client).await
        }
        Mode::Plain => match tokio::time::timeout(ARM_TIMEOUT, events.recv()).await {
            Ok(Some(SessionEvent::Armed)) => {
                // The seed's caller connects after it got its addresses; the server never
                // learns how that went.
                tally.done = true;
                send(&mut socket, &to_client).await
            }
            Ok(Some(SessionEvent::Rejected(code, message))) => {
                return refuse(&mut socket, &mut tally, code, message).await;
            }
            Ok(None) | Err(_) => {
                let message = format!("peer '{}' did not answer in time", q.peer);
                return refuse(&mut socket, &mut tally, ErrorCode::PeerGone, message).await;
            }
        },
    };
    if !sent {
        return;
    }
    let lifetime = tokio::time::sleep(SESSION_LIFETIME);
    tokio::pin!(lifetime);
    loop {
        tokio::select! {
            _ = &mut lifetime => return,
            _ = state.shutdown.cancelled() => return,
            ev = events.recv() => match ev {
                Some(SessionEvent::Rejected(code, message)) => {
                    return refuse(&mut socket, &mut tally, code, message).await;
                }
                Some(SessionEvent::Armed) => {}
                None => return,
            },
            got = socket.recv() => match got {
                Some(Ok(Message::Text(text))) => match protocol::decode::<ClientToServer>(&text) {
                    Ok(ClientToServer::Result { outcome, setup_ms, reason }) => {
                        let outcome = match outcome.as_str() {
                            "direct" => Outcome::Direct,
                            "lan" => Outcome::Lan,
                            "relayed" => Outcome::Relayed,
                            _ => Outcome::Failed,
                        };
                        tally.end(outcome, setup_ms.map(Duration::from_millis), reason);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        let reply = ServerToClient::Error {
                            code: ErrorCode::BadRequest,
                            message: e.to_string(),
                        };
                        send(&mut socket, &reply).await;
                        return;
                    }
                },
                Some(Ok(Message::Binary(_))) => {
                    let reply = ServerToClient::Error {
                        code: ErrorCode::BadRequest,
                        message: "binary frames are not part of the protocol".into(),
                    };
                    send(&mut socket, &reply).await;
                    return;
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => {}
            },
        }
    }
}

/// `GET /v1/relay?v=1&session=S&role=client|agent` with `Upgrade: p2pnc-relay`.
async fn relay_join(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    mut req: axum::extract::Request,
) -> Response {
    let Some(hub) = &state.relay else {
        return state.reject(
            ErrorCode::BadRequest,
            "this server does not relay (start it with --relay)".into(),
        );
    };
    let (session, role) = match protocol::parse_join_query(query.as_deref().unwrap_or("")) {
        Ok((session, role)) => (Some(session), role),
        // Not a session id: it names no live session, as the check below tells.
        Err(JoinQueryError::UnknownSession) => (None, Role::Client),
        Err(e @ JoinQueryError::Malformed) => {
            return state.reject(ErrorCode::BadRequest, e.to_string());
        }
    };
    let upgrade_ok = req
        .headers()
        .get(axum::http::header::UPGRADE)
        .and_then(|h| h.to_str().ok())
        .is_some_and(|h| h.eq_ignore_ascii_case(protocol::UPGRADE_TOKEN));
    if !upgrade_ok {
        return state.reject(
            ErrorCode::BadRequest,
            format!("relay needs 'Upgrade: {}'", protocol::UPGRADE_TOKEN),
        );
    }
    let live = session.filter(|s| {
        state
            .sessions
            .lock()
            .expect("sessions lock")
            .contains_key(s)
    });
    let Some(session) = live else {
        return state.reject(ErrorCode::PeerGone, "no such live session".into());
    };
    let joined = match hub.join(session, role) {
        Ok(j) => j,
        Err(JoinRefused::Busy) => {
            return state.reject(ErrorCode::Busy, "every relay slot is taken".into());
        }
        Err(JoinRefused::Duplicate) => {
            return state.reject(ErrorCode::BadRequest, "this end already joined".into());
        }
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let task_state = state.clone();
    state.tasks.spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let io = Box::new(hyper_util::rt::TokioIo::new(upgraded));
                if let Some(hub) = &task_state.relay {
                    let carried = hub.run(joined, io).await;
                    task_state.metrics.relayed_bytes(carried);
                }
            }
            Err(e) => tracing::debug!("relay upgrade failed: {e}"),
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(axum::http::header::CONNECTION, "upgrade")
        .header(axum::http::header::UPGRADE, protocol::UPGRADE_TOKEN)
        .body(axum::body::Body::empty())
        .expect("static response")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_owner_credential_differing_in_any_bit_is_not_the_owner() {
        let owner = protocol::owner_credential("s3cret", "svc");
        assert!(constant_time_eq(&owner, &owner.clone()));
        for i in 0..owner.len() {
            // The seven low bits: flipping them keeps the text ASCII.
            for bit in 0..7 {
                let mut other = owner.clone().into_bytes();
                other[i] ^= 1 << bit;
                let other = String::from_utf8(other).unwrap();
                assert!(!constant_time_eq(&owner, &other), "byte {i} bit {bit}");
            }
        }
        assert!(!constant_time_eq(&owner, &owner[..63]));
        assert!(!constant_time_eq(&owner, &format!("{owner}0")));
    }

    #[test]
    fn a_mapped_agent_is_reached_directly_whatever_the_nats() {
        use Mapping::{EndpointDependent as Hard, EndpointIndependent as Easy, Unknown};
        use Strategy::*;
        let table = [
            // Without a mapping: the table of docs/protocol.md.
            (Easy, Easy, false, Some((Simultaneous, Simultaneous))),
            (Unknown, Easy, false, Some((Simultaneous, Simultaneous))),
            (Hard, Easy, false, Some((BirthdayHard, BirthdayEasy))),
            (Easy, Hard, false, Some((BirthdayEasy, BirthdayHard))),
            (Hard, Hard, false, None),
            // With one: the client connects to it and the agent waits, unless both are cones.
            (Easy, Easy, true, Some((Simultaneous, Simultaneous))),
            (Hard, Easy, true, Some((Simultaneous, Mapped))),
            (Easy, Hard, true, Some((Simultaneous, Mapped))),
            (Hard, Hard, true, Some((Simultaneous, Mapped))),
        ];
        for (client, agent, mapped, want) in table {
            assert_eq!(
                strategies(client, agent, mapped),
                want,
                "{client} {agent} {mapped}"
            );
        }
    }
}
