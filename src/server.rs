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
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::net;
use crate::protocol::{
    self, AgentMsg, Auth, ConnectQuery, ErrorBody, ErrorCode, ExposeQuery, MAX_MESSAGE_BYTES,
    Mapping, Mode, Punch, ServerMsg, Strategy,
};

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

/// Limits of a server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Most agents registered at once.
    pub max_agents: usize,
    /// Most sessions (client control connections) open at once.
    pub max_sessions: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_agents: 200_000,
            max_sessions: 20_000,
        }
    }
}

/// What the server knows about one TCP connection.
#[derive(Debug, Clone, Copy)]
struct ConnMeta {
    remote: SocketAddr,
    /// RTT measured by the kernel from the TCP handshake.
    rtt: Option<Duration>,
}

struct Accepting(TcpListener);

impl axum::serve::Listener for Accepting {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (TcpStream, SocketAddr) {
        loop {
            match self.0.accept().await {
                Ok((stream, addr)) => {
                    let _ = stream.set_nodelay(true);
                    return (stream, addr);
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
        self.0.local_addr()
    }
}

impl Connected<axum::serve::IncomingStream<'_, Accepting>> for ConnMeta {
    fn connect_info(stream: axum::serve::IncomingStream<'_, Accepting>) -> Self {
        ConnMeta {
            remote: *stream.remote_addr(),
            rtt: net::tcp_rtt(stream.io()),
        }
    }
}

struct AgentEntry {
    generation: u64,
    tx: mpsc::Sender<ServerMsg>,
    public: SocketAddr,
    private: Vec<SocketAddr>,
    auth: Auth,
    /// Smoothed RTT in microseconds (0 = unknown).
    rtt_us: Arc<AtomicU64>,
}

enum SessionEvent {
    Rejected(ErrorCode, String),
    Armed,
}

struct Shared {
    config: ServerConfig,
    agents: Mutex<HashMap<String, AgentEntry>>,
    sessions: Mutex<HashMap<String, mpsc::Sender<SessionEvent>>>,
    generation: AtomicU64,
    shutdown: CancellationToken,
}

type AppState = Arc<Shared>;

/// Serves the rendezvous protocol on `listener` until `shutdown` is cancelled.
pub async fn run(
    listener: TcpListener,
    config: ServerConfig,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let state = Arc::new(Shared {
        config,
        agents: Mutex::new(HashMap::new()),
        sessions: Mutex::new(HashMap::new()),
        generation: AtomicU64::new(1),
        shutdown: shutdown.clone(),
    });
    let app = Router::new()
        .route("/", get(index))
        .route("/v1/health", get(health))
        .route("/v1/peers/{id}", get(peer))
        .route(protocol::EXPOSE_PATH, get(expose))
        .route(protocol::CONNECT_PATH, get(connect))
        .fallback(|| async { error(ErrorCode::BadRequest, "no such endpoint".into()) })
        .with_state(state);
    axum::serve(
        Accepting(listener),
        app.into_make_service_with_connect_info::<ConnMeta>(),
    )
    .with_graceful_shutdown(shutdown.cancelled_owned())
    .await
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

async fn peer(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    if state.agents.lock().expect("agents lock").contains_key(&id) {
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
                .max_frame_size(MAX_MESSAGE_BYTES),
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
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let q = match ExposeQuery::parse(query.as_deref().unwrap_or("")) {
        Ok(q) => q,
        Err(e) => return error(e.code, e.message),
    };
    {
        let agents = state.agents.lock().expect("agents lock");
        if agents.contains_key(&q.id) {
            return error(ErrorCode::IdTaken, id_taken(&q.id));
        }
        if agents.len() >= state.config.max_agents {
            return error(ErrorCode::Busy, "server has too many agents".into());
        }
    }
    upgrade(ws, |ws| {
        ws.on_upgrade(move |socket| agent_session(state, meta, q, socket))
    })
}

fn id_taken(id: &str) -> String {
    format!("id '{id}' is already registered by another agent")
}

async fn send(socket: &mut WebSocket, msg: &ServerMsg) -> bool {
    socket
        .send(Message::Text(protocol::encode(msg).into()))
        .await
        .is_ok()
}

async fn agent_session(state: AppState, meta: ConnMeta, q: ExposeQuery, mut socket: WebSocket) {
    let generation = state.generation.fetch_add(1, Ordering::Relaxed);
    let (tx, mut rx) = mpsc::channel(AGENT_QUEUE);
    let rtt_us = Arc::new(AtomicU64::new(meta.rtt.map_or(0, |d| d.as_micros() as u64)));
    let inserted = {
        let mut agents = state.agents.lock().expect("agents lock");
        let free = !agents.contains_key(&q.id);
        if free {
            agents.insert(
                q.id.clone(),
                AgentEntry {
                    generation,
                    tx,
                    public: meta.remote,
                    private: q.private.clone(),
                    auth: q.auth,
                    rtt_us: rtt_us.clone(),
                },
            );
        }
        free
    };
    if !inserted {
        let msg = ServerMsg::Error {
            code: ErrorCode::IdTaken,
            message: id_taken(&q.id),
        };
        send(&mut socket, &msg).await;
        return;
    }
    tracing::info!(id = %q.id, public = %meta.remote, auth = ?q.auth, "agent registered");
    let registered = ServerMsg::Registered {
        id: q.id.clone(),
        public: meta.remote,
        mapping: Mapping::Unknown,
    };
    if send(&mut socket, &registered).await {
        agent_loop(&state, &mut socket, &mut rx, &rtt_us).await;
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
    rx: &mut mpsc::Receiver<ServerMsg>,
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
                    Message::Text(text) => match protocol::decode::<AgentMsg>(&text) {
                        Ok(m) => route_agent_msg(state, m),
                        Err(e) => {
                            let reply = ServerMsg::Error { code: ErrorCode::BadRequest, message: e };
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
                        let reply = ServerMsg::Error {
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

fn route_agent_msg(state: &Shared, msg: AgentMsg) {
    let (session, event) = match msg {
        AgentMsg::Reject {
            session,
            code,
            message,
        } => (session, SessionEvent::Rejected(code, message)),
        AgentMsg::Armed { session } => (session, SessionEvent::Armed),
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
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let q = match ConnectQuery::parse(query.as_deref().unwrap_or("")) {
        Ok(q) => q,
        Err(e) => return error(e.code, e.message),
    };
    let auth = state
        .agents
        .lock()
        .expect("agents lock")
        .get(&q.peer)
        .map(|a| a.auth);
    match auth {
        None => {
            return error(
                ErrorCode::PeerOffline,
                format!("peer '{}' is not online", q.peer),
            );
        }
        Some(Auth::Secret) if q.proof.is_none() => {
            return error(
                ErrorCode::SecretRequired,
                format!("peer '{}' requires a secret", q.peer),
            );
        }
        Some(_) => {}
    }
    if state.sessions.lock().expect("sessions lock").len() >= state.config.max_sessions {
        return error(ErrorCode::Busy, "server has too many open sessions".into());
    }
    upgrade(ws, |ws| {
        ws.on_upgrade(move |socket| client_session(state, meta, q, socket))
    })
}

fn random_hex<const N: usize>() -> String {
    hex::encode(rand::random::<[u8; N]>())
}

/// Removes a session from the table when its client connection ends, however it ends.
struct SessionGuard<'a>(&'a Shared, String);

impl Drop for SessionGuard<'_> {
    fn drop(&mut self) {
        self.0
            .sessions
            .lock()
            .expect("sessions lock")
            .remove(&self.1);
    }
}

async fn client_session(state: AppState, meta: ConnMeta, q: ConnectQuery, mut socket: WebSocket) {
    let session = random_hex::<16>();
    let (events_tx, mut events) = mpsc::channel(4);
    state
        .sessions
        .lock()
        .expect("sessions lock")
        .insert(session.clone(), events_tx);
    let _guard = SessionGuard(&state, session.clone());

    let agent = {
        let agents = state.agents.lock().expect("agents lock");
        agents.get(&q.peer).map(|a| {
            (
                a.tx.clone(),
                a.public,
                a.private.clone(),
                a.auth,
                Duration::from_micros(a.rtt_us.load(Ordering::Relaxed)),
            )
        })
    };
    let Some((agent_tx, agent_public, agent_private, auth, agent_rtt)) = agent else {
        let msg = ServerMsg::Error {
            code: ErrorCode::PeerOffline,
            message: format!("peer '{}' is not online", q.peer),
        };
        send(&mut socket, &msg).await;
        return;
    };
    // Private candidates only help peers behind the same NAT; elsewhere they would send SYNs
    // into unrelated networks.
    let same_nat = agent_public.ip() == meta.remote.ip();
    let key = random_hex::<32>();
    let to_agent = Punch {
        session: session.clone(),
        key: key.clone(),
        peer_public: meta.remote,
        peer_private: if same_nat { q.private.clone() } else { vec![] },
        you: agent_public,
        mode: q.mode,
        auth,
        nonce: Some(q.nonce.clone()),
        proof: q.proof.clone(),
        strategy: Strategy::Simultaneous,
        your_mapping: Mapping::Unknown,
        peer_mapping: Mapping::Unknown,
        relay_after_ms: None,
    };
    let to_client = ServerMsg::Punch(Punch {
        session: session.clone(),
        key,
        peer_public: agent_public,
        peer_private: if same_nat { agent_private } else { vec![] },
        you: meta.remote,
        mode: q.mode,
        auth,
        nonce: None,
        proof: None,
        strategy: Strategy::Simultaneous,
        your_mapping: Mapping::Unknown,
        peer_mapping: Mapping::Unknown,
        relay_after_ms: None,
    });
    tracing::info!(%session, peer = %q.peer, client = %meta.remote, mode = ?q.mode, "session");

    if agent_tx.try_send(ServerMsg::Punch(to_agent)).is_err() {
        let msg = ServerMsg::Error {
            code: ErrorCode::Busy,
            message: format!("peer '{}' has too many pending sessions", q.peer),
        };
        send(&mut socket, &msg).await;
        return;
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
            Ok(Some(SessionEvent::Armed)) => send(&mut socket, &to_client).await,
            Ok(Some(SessionEvent::Rejected(code, message))) => {
                send(&mut socket, &ServerMsg::Error { code, message }).await;
                return;
            }
            Ok(None) | Err(_) => {
                let msg = ServerMsg::Error {
                    code: ErrorCode::PeerGone,
                    message: format!("peer '{}' did not answer in time", q.peer),
                };
                send(&mut socket, &msg).await;
                return;
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
                    send(&mut socket, &ServerMsg::Error { code, message }).await;
                    return;
                }
                Some(SessionEvent::Armed) => {}
                None => return,
            },
            got = socket.recv() => match got {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => {}
            },
        }
    }
}
