//! The exposing side: registers an id, punches on demand, and hands each proven stream to the
//! caller (the `expose` command forwards it to the service).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::SinkExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::control::{self, ControlSocket, Incoming, ServerUrl};
use crate::portmap::{self, PortMap};
use crate::probe;
use crate::protocol::{
    self, AgentToServer, Auth, ErrorCode, ExposeQuery, Mode, Nonce, ProbeToken, PunchOrder, Role,
    ServerToAgent, ServiceId, SessionId, SessionKeys,
};
use crate::punch::{self, Inbound, Order, Proof, PunchPlan};
use crate::{ConnectionInfo, Error, net};

/// How often the agent pings the server; this also keeps its NAT mapping alive.
const PING_INTERVAL: Duration = Duration::from_secs(15);
/// A server silent for this long is taken as gone and the agent reconnects.
const SERVER_SILENCE_LIMIT: Duration = Duration::from_secs(40);
/// Reconnect backoff bounds.
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Time a stray connection to the punch port gets to present its hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a plain-mode session waits for the client's ordinary connect: the seed's callers
/// connect right after their call returns, with a 5 s connect timeout.
const PLAIN_WINDOW: Duration = Duration::from_secs(10);
/// Connect nonces remembered against replay, and for how long.
const REPLAY_CACHE: usize = 4096;
const REPLAY_WINDOW: Duration = Duration::from_secs(600);
/// Proven streams waiting for [`Agent::accept`].
const ACCEPT_QUEUE: usize = 64;
/// How long a proven stream waits for room in a full accept queue before it is dropped.
const ACCEPT_WAIT: Duration = Duration::from_secs(10);
/// Default TTL of the first SYN of a punch (see [`punch::DEFAULT_LOW_TTL`]).
pub const DEFAULT_PUNCH_TTL: u32 = punch::DEFAULT_LOW_TTL;

/// How to expose a service.
#[derive(Clone)]
pub struct ExposeOptions {
    /// The rendezvous server.
    pub server: ServerUrl,
    /// The id to register.
    pub id: String,
    /// The service secret; `None` exposes the service to anyone who knows the id.
    pub secret: Option<String>,
    /// How long one punch may take.
    pub punch_timeout: Duration,
    /// TTL of the first SYN of each punch (`None`: normal TTL).
    pub punch_ttl: Option<u32>,
    /// Local punch port (0: any).
    pub punch_port: u16,
    /// The server's token, if it requires one.
    pub token: Option<String>,
    /// Ask the local router to forward a public port to the punch port (PCP, NAT-PMP or
    /// UPnP-IGD) and announce it to the server. Never tried toward a server on a loopback or
    /// private address.
    pub port_mapping: bool,
}

impl std::fmt::Debug for ExposeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExposeOptions")
            .field("server", &self.server)
            .field("id", &self.id)
            .field("secret", &self.secret.as_ref().map(|_| "<hidden>"))
            .field("punch_timeout", &self.punch_timeout)
            .field("punch_ttl", &self.punch_ttl)
            .field("punch_port", &self.punch_port)
            .field("token", &self.token.as_ref().map(|_| "<hidden>"))
            .field("port_mapping", &self.port_mapping)
            .finish()
    }
}

impl ExposeOptions {
    /// Options with default timeouts.
    pub fn new(server: &str, id: &str, secret: Option<&str>) -> Result<Self, Error> {
        protocol::validate_id(id).map_err(|e| Error::Refused(e.code, e.message))?;
        Ok(ExposeOptions {
            server: ServerUrl::parse(server)?,
            id: id.to_string(),
            secret: secret.map(str::to_string),
            punch_timeout: punch::DEFAULT_PUNCH_TIMEOUT,
            punch_ttl: Some(DEFAULT_PUNCH_TTL),
            punch_port: 0,
            token: None,
            port_mapping: true,
        })
    }
}

/// A proven stream from a client.
#[derive(Debug)]
pub struct Accepted {
    /// The stream; bytes read here come from the client.
    pub stream: TcpStream,
    /// How it was reached.
    pub info: ConnectionInfo,
}

/// A registered agent. Dropping it unregisters and stops every task it owns.
pub struct Agent {
    incoming: mpsc::Receiver<Accepted>,
    token: CancellationToken,
    tracker: TaskTracker,
    public: SocketAddr,
    mapped: Option<SocketAddr>,
    stopped: Arc<Mutex<Option<String>>>,
}

impl Agent {
    /// Registers with the server and starts serving punch orders. Retries while the server is
    /// unreachable; fails at once if the server refuses the registration (e.g. id taken).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    /// # let server = format!("http://{}", listener.local_addr()?);
    /// # let stop = tokio_util::sync::CancellationToken::new();
    /// # tokio::spawn(p2pnc::server::run(listener, Default::default(), stop.clone()));
    /// use tokio::io::AsyncWriteExt;
    /// // `server` is the rendezvous server's URL, e.g. "http://203.0.113.10:50300".
    /// let opts = p2pnc::ExposeOptions::new(&server, "streamserver", Some("s3cret"))?;
    /// let mut agent = p2pnc::Agent::start(opts).await?;
    /// # let client = p2pnc::ConnectOptions::new(&server, "streamserver", Some("s3cret"))?;
    /// # let client = tokio::spawn(async move { p2pnc::connect(&client).await });
    /// if let Some(mut conn) = agent.accept().await {
    ///     println!("client via {} in {:?}", conn.info.peer_addr, conn.info.setup);
    ///     conn.stream.write_all(b"welcome").await?; // a tokio TcpStream to the client
    /// }
    /// # client.await??;
    /// # stop.cancel();
    /// # Ok(()) }
    /// ```
    pub async fn start(opts: ExposeOptions) -> Result<Agent, Error> {
        let server_addr = opts.server.resolve().await?;
        let mut backoff = BACKOFF_MIN;
        let registration = loop {
            match register(&opts, server_addr, opts.punch_port).await {
                Ok(r) => break r,
                Err(Error::ServerUnreachable(why)) => {
                    tracing::warn!("server unreachable ({why}); retrying in {backoff:?}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
                Err(e) => return Err(e),
            }
        };
        let public = registration.public;
        let mapped = registration.portmap.as_ref().map(|m| m.external);
        let (tx, incoming) = mpsc::channel(ACCEPT_QUEUE);
        let token = CancellationToken::new();
        let tracker = TaskTracker::new();
        let stopped = Arc::new(Mutex::new(None));
        let state = Arc::new(AgentState {
            stopped: stopped.clone(),
            opts,
            server_addr,
            accepted: tx,
            replay: Mutex::new(HashMap::new()),
        });
        tracker.spawn(control_loop(
            state,
            registration,
            token.clone(),
            tracker.clone(),
        ));
        tracker.close();
        Ok(Agent {
            incoming,
            token,
            tracker,
            public,
            mapped,
            stopped,
        })
    }

    /// The next proven stream; `None` once the agent has stopped.
    pub async fn accept(&mut self) -> Option<Accepted> {
        self.incoming.recv().await
    }

    /// Why the agent stopped by itself (for example: another instance with the same secret
    /// took over its id), once [`Agent::accept`] has returned `None`.
    pub fn stop_reason(&self) -> Option<String> {
        self.stopped.lock().expect("stopped lock").clone()
    }

    /// The agent's public endpoint as the server saw it at the first registration.
    pub fn public_addr(&self) -> SocketAddr {
        self.public
    }

    /// The public endpoint the local router forwarded to the punch port at the first
    /// registration (PCP, NAT-PMP or UPnP-IGD), if it did.
    pub fn mapped_addr(&self) -> Option<SocketAddr> {
        self.mapped
    }

    /// Unregisters and waits until every task has stopped.
    pub async fn shutdown(self) {
        self.token.cancel();
        self.tracker.wait().await;
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

struct AgentState {
    opts: ExposeOptions,
    /// Why the agent stopped by itself, if it did.
    stopped: Arc<Mutex<Option<String>>>,
    server_addr: SocketAddr,
    accepted: mpsc::Sender<Accepted>,
    replay: Mutex<HashMap<Nonce, Instant>>,
}

impl AgentState {
    /// Records a nonce; false if it was seen before (a replayed request).
    fn fresh_nonce(&self, nonce: Nonce) -> bool {
        let mut seen = self.replay.lock().expect("replay lock");
        let now = Instant::now();
        if seen.len() >= REPLAY_CACHE {
            seen.retain(|_, t| now.duration_since(*t) < REPLAY_WINDOW);
        }
        if seen.len() >= REPLAY_CACHE {
            // Still full of fresh nonces: forget the oldest.
            if let Some(oldest) = seen.iter().min_by_key(|(_, t)| **t).map(|(k, _)| *k) {
                seen.remove(&oldest);
            }
        }
        seen.insert(nonce, now).is_none()
    }
}

struct Registration {
    mapping: crate::protocol::Mapping,
    ws: ControlSocket,
    listener: TcpListener,
    local: SocketAddr,
    public: SocketAddr,
    /// The router's port mapping of the punch port, not yet kept alive.
    portmap: Option<PortMap>,
}

/// Binds a punch port, probes the NAT, maps the port on the router if it can, and registers.
/// A mapping made for a registration that fails is deleted again.
async fn register(
    opts: &ExposeOptions,
    server_addr: SocketAddr,
    port: u16,
) -> Result<Registration, Error> {
    let listener = net::shared_listener(net::any_addr(&server_addr, port))?;
    let port = listener.local_addr()?.port();
    let (probe, portmap) = probe_and_map(opts, server_addr, port).await;
    let mapped = portmap.as_ref().map(|m| m.external);
    match register_with(opts, server_addr, listener, probe, mapped).await {
        Ok(reg) => Ok(Registration { portmap, ..reg }),
        Err(e) => {
            if let Some(m) = portmap {
                m.remove_quietly().await;
            }
            Err(e)
        }
    }
}

/// The NAT probe from the punch port and, at the same time, a port mapping of it on the
/// router (bounded by [`portmap::REQUEST_TIMEOUT`]). A probe showing that this host is not
/// behind a NAT ends the mapping attempt. Returns the probe token (if the probe went through)
/// and the mapping.
async fn probe_and_map(
    opts: &ExposeOptions,
    server_addr: SocketAddr,
    port: u16,
) -> (Option<ProbeToken>, Option<PortMap>) {
    let shared = net::any_addr(&server_addr, port);
    let token = ProbeToken::random();
    let probe_addr = protocol::probe_addr(server_addr);
    let probed = probe::probe(shared, probe_addr, &token);
    let want = opts.port_mapping && portmap::worth_trying(server_addr.ip());
    let mapping = async move {
        if !want {
            return None;
        }
        match PortMap::request(port, portmap::REQUEST_TIMEOUT).await {
            Ok(m) => {
                tracing::info!(
                    "port mapping: {} forwards {} to punch port {} (lease {} s)",
                    m.protocol,
                    m.external,
                    m.internal_port,
                    m.lifetime.as_secs()
                );
                Some(m)
            }
            Err(e) => {
                tracing::info!("no port mapping: {e}");
                None
            }
        }
    };
    tokio::pin!(probed, mapping);
    let mut mapped = None;
    let seen = loop {
        tokio::select! {
            r = &mut probed => break r,
            m = &mut mapping, if mapped.is_none() => mapped = Some(m),
        }
    };
    let (probe, not_behind_nat) = match seen {
        Ok(seen) => {
            tracing::debug!("NAT probe: {shared} is {seen} toward {probe_addr}");
            let here = net::local_candidates(port, &server_addr)
                .iter()
                .any(|a| a.ip() == seen.ip());
            (Some(token), here)
        }
        Err(e) => {
            tracing::warn!("NAT probe to {probe_addr} failed ({e}); mapping stays unknown");
            (None, false)
        }
    };
    let portmap = match mapped {
        Some(m) => m,
        None if not_behind_nat => None,
        None => mapping.await,
    };
    (probe, portmap)
}

/// The control connection from the punch port and its first answer.
async fn register_with(
    opts: &ExposeOptions,
    server_addr: SocketAddr,
    listener: TcpListener,
    probe: Option<ProbeToken>,
    mapped: Option<SocketAddr>,
) -> Result<Registration, Error> {
    let port = listener.local_addr()?.port();
    let shared = net::any_addr(&server_addr, port);
    let query = ExposeQuery {
        id: ServiceId::new(&opts.id).map_err(|e| Error::Refused(e.code, e.message))?,
        auth: if opts.secret.is_some() {
            Auth::Secret
        } else {
            Auth::Public
        },
        private: net::local_candidates(port, &server_addr),
        probe,
        owner: opts
            .secret
            .as_deref()
            .map(|s| protocol::owner_credential(s, &opts.id)),
        mapped,
    };
    let (mut ws, local) = control::open(
        &opts.server,
        server_addr,
        shared,
        protocol::EXPOSE_PATH,
        &query.to_query(),
        opts.token.as_deref(),
    )
    .await?;
    let first = tokio::time::timeout(control::SERVER_TIMEOUT, control::recv(&mut ws))
        .await
        .map_err(|_| Error::ServerUnreachable("no registration answer in time".into()))??;
    match first {
        Some(ServerToAgent::Registered {
            public, mapping, ..
        }) => Ok(Registration {
            mapping,
            ws,
            listener,
            local,
            public,
            portmap: None,
        }),
        Some(ServerToAgent::Error { code, message }) => Err(Error::Refused(code, message)),
        Some(other) => Err(Error::Protocol(format!("unexpected message {other:?}"))),
        None => Err(Error::ServerUnreachable(
            "server closed the connection during registration".into(),
        )),
    }
}

async fn control_loop(
    state: Arc<AgentState>,
    mut reg: Registration,
    token: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        tracing::info!(
            "registered as '{}' (public endpoint {}, punch port {}, NAT mapping {})",
            state.opts.id,
            reg.public,
            reg.local.port(),
            reg.mapping
        );
        // The mapping lives as long as this registration: renewed meanwhile, deleted after.
        let keeper = reg.portmap.take().map(|m| {
            if m.external.ip() != reg.public.ip() {
                tracing::warn!(
                    "the {} mapping {} is not on the public address {} the server sees \
                     (another NAT in front of the router?); the server will not use it",
                    m.protocol,
                    m.external,
                    reg.public.ip()
                );
            }
            m.keep(&tracker, token.child_token())
        });
        let stop = serve_registration(&state, reg, &token).await;
        if let Some(keeper) = keeper {
            keeper.release().await;
        }
        if let Some(reason) = stop {
            tracing::error!("stopping: {reason}");
            *state.stopped.lock().expect("stopped lock") = Some(reason);
            return;
        }
        let mut backoff = BACKOFF_MIN;
        reg = loop {
            tokio::select! {
                _ = token.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            // A new port each time: the old 4-tuple to the server may sit in TIME_WAIT.
            let port = state.opts.punch_port;
            match register(&state.opts, state.server_addr, port).await {
                Ok(r) => break r,
                Err(e) => {
                    tracing::warn!("re-registration failed ({e}); retrying in {backoff:?}");
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        };
    }
}

/// One registration: serves punch orders and the punch port until the control channel dies.
/// Returns a reason when the agent must stop rather than reconnect.
async fn serve_registration(
    state: &Arc<AgentState>,
    reg: Registration,
    token: &CancellationToken,
) -> Option<String> {
    let Registration {
        mut ws,
        listener,
        local,
        ..
    } = reg;
    let slots: Slots = Arc::new(Mutex::new(HashMap::new()));
    let mut tasks = JoinSet::new();
    let (msg_tx, mut msg_rx) = mpsc::channel::<AgentToServer>(64);
    let mut ping = tokio::time::interval(PING_INTERVAL);
    let mut last_heard = Instant::now();
    loop {
        tokio::select! {
            _ = token.cancelled() => {
                let _ = tokio::time::timeout(Duration::from_millis(200), ws.close(None)).await;
                return None;
            }
            // Every frame counts as a sign of life, pings and pongs included.
            got = control::recv_frame::<ServerToAgent>(&mut ws) => {
                last_heard = Instant::now();
                match got {
                    Ok(Incoming::Message(ServerToAgent::Punch(p))) => {
                        tasks.spawn(session(state.clone(), slots.clone(), local, p, msg_tx.clone()));
                    }
                    Ok(Incoming::Message(ServerToAgent::Error { code: ErrorCode::IdTaken, message })) => {
                        // Another instance with the same secret took over the id: two agents
                        // must not take turns replacing each other.
                        return Some(message);
                    }
                    Ok(Incoming::Message(ServerToAgent::Error { code, message })) => {
                        tracing::warn!("server error {code}: {message}");
                        return None;
                    }
                    Ok(Incoming::Message(_) | Incoming::Alive) => {}
                    Ok(Incoming::Closed) => {
                        tracing::warn!("server closed the control channel");
                        return None;
                    }
                    Err(e) => {
                        tracing::warn!("{e}");
                        return None;
                    }
                }
            }
            Some(msg) = msg_rx.recv() => {
                if control::send(&mut ws, &msg).await.is_err() {
                    return None;
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, from)) => {
                    tasks.spawn(dispatch_inbound(slots.clone(), stream, from));
                }
                Err(e) => {
                    tracing::warn!("punch port accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = ping.tick() => {
                if last_heard.elapsed() > SERVER_SILENCE_LIMIT {
                    tracing::warn!("server silent for {:?}; reconnecting", last_heard.elapsed());
                    return None;
                }
                if ws.send(Message::Ping(Default::default())).await.is_err() {
                    return None;
                }
            }
            Some(_) = tasks.join_next() => {}
        }
    }
}

/// Where inbound streams of live sessions go: by session id, or (plain mode) by address.
type Slots = Arc<Mutex<HashMap<SessionId, Slot>>>;

struct Slot {
    inbound: mpsc::Sender<Inbound>,
    /// Plain mode: the addresses the client may connect from.
    plain_from: Option<Vec<SocketAddr>>,
}

async fn dispatch_inbound(slots: Slots, mut stream: TcpStream, from: SocketAddr) {
    let plain = slots
        .lock()
        .expect("slots lock")
        .values()
        .find(|s| s.plain_from.as_ref().is_some_and(|a| a.contains(&from)))
        .map(|s| s.inbound.clone());
    if let Some(tx) = plain {
        let _ = tx
            .send(Inbound {
                stream,
                hello: None,
            })
            .await;
        return;
    }
    let hello = match punch::read_hello(&mut stream, HELLO_TIMEOUT).await {
        Ok(h) => h,
        Err(e) => {
            tracing::debug!("stray connection from {from}: {e}");
            return;
        }
    };
    let tx = protocol::hello_session(&hello).and_then(|id| {
        slots
            .lock()
            .expect("slots lock")
            .get(&id)
            .map(|s| s.inbound.clone())
    });
    match tx {
        Some(tx) => {
            let _ = tx
                .send(Inbound {
                    stream,
                    hello: Some(hello),
                })
                .await;
        }
        None => tracing::debug!("connection from {from} names no live session"),
    }
}

/// Removes a session's slot however the session ends.
struct SlotGuard(Slots, SessionId);

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.0.lock().expect("slots lock").remove(&self.1);
    }
}

async fn session(
    state: Arc<AgentState>,
    slots: Slots,
    local: SocketAddr,
    p: PunchOrder,
    msgs: mpsc::Sender<AgentToServer>,
) {
    let started = Instant::now();
    let reject = |code: ErrorCode, message: String| AgentToServer::Reject {
        session: p.session.into(),
        code,
        message,
    };
    // The server always forwards the client's nonce; an order without one proves nothing.
    let Some(nonce) = p.nonce else {
        tracing::warn!(client = %p.peer_public, "punch order without a nonce refused");
        let _ = msgs
            .send(reject(ErrorCode::SecretRejected, "no nonce".into()))
            .await;
        return;
    };
    if let Some(secret) = &state.opts.secret {
        let ok = p.proof.as_deref().is_some_and(|proof| {
            protocol::verify_connect_proof(secret, &state.opts.id, &nonce, proof)
        });
        if !ok {
            tracing::warn!(client = %p.peer_public, "secret rejected");
            let _ = msgs
                .send(reject(ErrorCode::SecretRejected, "secret rejected".into()))
                .await;
            return;
        }
    }
    if !state.fresh_nonce(nonce) {
        tracing::warn!(client = %p.peer_public, "replayed connect request refused");
        let _ = msgs
            .send(reject(ErrorCode::SecretRejected, "replayed request".into()))
            .await;
        return;
    }
    let keys = SessionKeys::derive(p.session, &p.key, state.opts.secret.as_deref());
    let mut plan = PunchPlan::for_order(Order {
        punch: &p,
        local,
        role: Role::Agent,
        proof: match p.mode {
            Mode::Punch => Proof::Hello {
                role: Role::Agent,
                keys: keys.clone(),
            },
            Mode::Plain => Proof::Address,
        },
        timeout: match p.mode {
            Mode::Punch => state.opts.punch_timeout,
            Mode::Plain => PLAIN_WINDOW,
        },
        low_ttl: state.opts.punch_ttl,
        early: None,
        server: &state.opts.server,
        server_addr: state.server_addr,
    });
    if p.mode == Mode::Plain {
        // The seed's caller connects once, from its control port: aim only there.
        plan.targets = std::iter::once(p.peer_public)
            .chain(p.peer_private.iter().copied())
            .collect();
    }
    let (inbound_tx, inbound) = mpsc::channel(8);
    slots.lock().expect("slots lock").insert(
        keys.session_id(),
        Slot {
            inbound: inbound_tx,
            plain_from: (p.mode == Mode::Plain).then(|| plan.targets.clone()),
        },
    );
    let _guard = SlotGuard(slots, keys.session_id());
    let armed = AgentToServer::Armed {
        session: p.session.into(),
    };
    let on_fired = || {
        if p.mode == Mode::Plain {
            let _ = msgs.try_send(armed);
        }
    };
    match punch::run(plan, inbound, on_fired).await {
        Ok(punched) => {
            let info = ConnectionInfo {
                path: punched.path(&p.peer_private),
                peer_addr: punched.peer,
                setup: started.elapsed(),
                session: p.session,
                strategy: p.strategy,
            };
            tracing::info!(
                "client connected ({}, {}) in {} ms",
                info.path,
                info.peer_addr,
                info.setup.as_millis()
            );
            // A burst may fill the queue: wait for the application rather than drop a stream
            // whose client already counts it as connected.
            let accepted = Accepted {
                stream: punched.stream,
                info,
            };
            if let Err(e) = state.accepted.send_timeout(accepted, ACCEPT_WAIT).await {
                let why = match e {
                    mpsc::error::SendTimeoutError::Timeout(_) => {
                        "the application accepted nothing for 10 s"
                    }
                    mpsc::error::SendTimeoutError::Closed(_) => "the agent is shutting down",
                };
                tracing::warn!(session = %p.session, "dropping a proven stream: {why}");
            }
        }
        Err(failure) => {
            tracing::warn!(client = %p.peer_public, "punch failed: {failure}");
        }
    }
}
