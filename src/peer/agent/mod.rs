//! The exposing side: registers an id, punches on demand, and hands each proven stream to the
//! caller (the `expose` command forwards it to the service).
//!
//! - `registration`: the punch port, the NAT probe, the port mapping and the expose request;
//! - `budget`: how many sessions, birthday punches and sockets the sessions may hold;
//! - `control_loop`: one registration's control channel, re-registering when it dies;
//! - `inbound`: connections accepted on the punch port, routed to their session;
//! - here: the options, [`Agent`], and what the agent does with one punch order.

mod budget;
mod control_loop;
mod inbound;
mod registration;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::budget::Budget;
use self::inbound::Slots;
use super::control::ServerUrl;
use super::ports::PortsView;
use super::punch::PunchOptions;
use super::session::{ConnectionInfo, Established, Session};
use crate::Error;
use crate::protocol::{self, AgentToServer, ErrorCode, Mode, Nonce, PunchOrder, Role};

/// Reconnect backoff bounds.
const BACKOFF_MIN: Duration = Duration::from_millis(250);
/// See [`BACKOFF_MIN`].
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Connect nonces remembered against replay, and for how long.
const REPLAY_CACHE: usize = 4096;
/// See [`REPLAY_CACHE`].
const REPLAY_WINDOW: Duration = Duration::from_secs(600);
/// Proven streams waiting for [`Agent::accept`].
const ACCEPT_QUEUE: usize = 64;
/// How long a proven stream waits for room in a full accept queue before it is dropped.
const ACCEPT_WAIT: Duration = Duration::from_secs(10);

/// How to expose a service.
#[derive(Clone)]
pub struct ExposeOptions {
    /// The rendezvous server.
    pub server: ServerUrl,
    /// The id to register.
    pub id: String,
    /// The service secret; `None` exposes the service to anyone who knows the id.
    pub secret: Option<String>,
    /// How each punch is made (its timeout; the TTL of the first SYN to each candidate).
    pub punch: PunchOptions,
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
            .field("punch", &self.punch)
            .field("punch_port", &self.punch_port)
            .field("token", &self.token.as_ref().map(|_| "<hidden>"))
            .field("port_mapping", &self.port_mapping)
            .finish()
    }
}

impl ExposeOptions {
    /// Options with the default punch (see [`crate::defaults`]).
    pub fn new(server: &str, id: &str, secret: Option<&str>) -> Result<Self, Error> {
        protocol::validate_id(id).map_err(|e| Error::Refused(e.code, e.message))?;
        Ok(ExposeOptions {
            server: ServerUrl::parse(server)?,
            id: id.to_string(),
            secret: secret.map(str::to_string),
            punch: PunchOptions::default(),
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
    /// Cancelled to stop every task the agent owns.
    stop: CancellationToken,
    tracker: TaskTracker,
    public: SocketAddr,
    mapped: Option<SocketAddr>,
    stopped: Arc<Mutex<Option<String>>>,
}

impl Agent {
    /// Registers with the server and starts serving punch orders. Retries while the server is
    /// unreachable or busy; fails at once if the server refuses the registration (e.g. id
    /// taken).
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
        let servers = opts.server.resolve_all().await?;
        let mut backoff = BACKOFF_MIN;
        let registration = loop {
            match registration::register(&opts, &servers, opts.punch_port).await {
                Ok(r) => break r,
                Err(Error::ServerUnreachable(why) | Error::Busy(why)) => {
                    tracing::warn!("{why}; retrying in {backoff:?}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
                Err(e) => return Err(e),
            }
        };
        let public = registration.public;
        let mapped = registration.portmap.as_ref().map(|m| m.external);
        let (tx, incoming) = mpsc::channel(ACCEPT_QUEUE);
        let stop = CancellationToken::new();
        let tracker = TaskTracker::new();
        let stopped = Arc::new(Mutex::new(None));
        let fd_limit = crate::net::raise_fd_limit_to(65_536);
        let state = Arc::new(AgentState {
            stopped: stopped.clone(),
            opts,
            servers,
            accepted: tx,
            replay: Mutex::new(HashMap::new()),
            budget: Budget::new(budget::Limits::for_fd_limit(fd_limit)),
        });
        tracker.spawn(control_loop::control_loop(
            state,
            registration,
            stop.clone(),
            tracker.clone(),
        ));
        tracker.close();
        Ok(Agent {
            incoming,
            stop,
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
        self.stop.cancel();
        self.tracker.wait().await;
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

struct AgentState {
    opts: ExposeOptions,
    /// Why the agent stopped by itself, if it did.
    stopped: Arc<Mutex<Option<String>>>,
    /// The server's addresses, every family.
    servers: Vec<SocketAddr>,
    accepted: mpsc::Sender<Accepted>,
    replay: Mutex<HashMap<Nonce, Instant>>,
    /// What the sessions may hold together.
    budget: Budget,
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

impl AgentState {
    /// Whether the client behind `order` may have a session: it proved the secret (when there
    /// is one) and its nonce is fresh. Otherwise the rejection for the server to pass on.
    fn admit(&self, order: &PunchOrder) -> Result<Nonce, AgentToServer> {
        let reject = |code: ErrorCode, message: &str| AgentToServer::Reject {
            session: order.session.into(),
            code,
            message: message.into(),
        };
        // The server always forwards the client's nonce; an order without one proves nothing.
        let Some(nonce) = order.nonce else {
            tracing::warn!(client = %order.peer_public, "punch order without a nonce refused");
            return Err(reject(ErrorCode::SecretRejected, "no nonce"));
        };
        if let Some(secret) = &self.opts.secret {
            let ok = order.proof.as_deref().is_some_and(|proof| {
                protocol::verify_connect_proof(secret, &self.opts.id, &nonce, proof)
            });
            if !ok {
                tracing::warn!(client = %order.peer_public, "secret rejected");
                return Err(reject(ErrorCode::SecretRejected, "secret rejected"));
            }
        }
        if !self.fresh_nonce(nonce) {
            tracing::warn!(client = %order.peer_public, "replayed connect request refused");
            return Err(reject(ErrorCode::SecretRejected, "replayed request"));
        }
        Ok(nonce)
    }

    /// Hands a proven stream to the application. A burst may fill the queue: wait for the
    /// application rather than drop a stream whose client already counts it as connected.
    async fn deliver(&self, established: Established) {
        let Established { stream, info } = established;
        tracing::info!(
            "client connected ({}, {}) in {} ms",
            info.path,
            info.peer_addr,
            info.setup.as_millis()
        );
        let session = info.session;
        let accepted = Accepted { stream, info };
        if let Err(e) = self.accepted.send_timeout(accepted, ACCEPT_WAIT).await {
            let why = match e {
                mpsc::error::SendTimeoutError::Timeout(_) => {
                    "the application accepted nothing for 10 s"
                }
                mpsc::error::SendTimeoutError::Closed(_) => "the agent is shutting down",
            };
            tracing::warn!(%session, "dropping a proven stream: {why}");
        }
    }
}

/// Carries out one punch order: checks the client, punches from the punch `ports`, and hands
/// the proven stream to the application.
async fn session(
    state: Arc<AgentState>,
    slots: Slots,
    ports: PortsView,
    order: PunchOrder,
    msgs: mpsc::Sender<AgentToServer>,
) {
    let started = Instant::now();
    if let Err(reject) = state.admit(&order) {
        let _ = msgs.send(reject).await;
        return;
    }
    let at = ports.endpoint(&state.opts.server);
    let secret = state.opts.secret.as_deref();
    let session = Session::new(
        order,
        Role::Agent,
        secret,
        &at,
        &state.opts.punch,
        None,
        started,
    );
    let client = session.order().peer_public;
    let strategy = session.order().strategy;
    let _share = match state.budget.reserve(strategy, session.targets().len()) {
        Ok(share) => share,
        Err(over) => {
            tracing::warn!(%client, %strategy, "refusing a session, this agent is busy: {over}");
            let reject = AgentToServer::Reject {
                session: session.id().into(),
                code: ErrorCode::Busy,
                message: format!(
                    "peer '{}' is busy: {over}; try again in a few seconds",
                    state.opts.id
                ),
            };
            let _ = msgs.send(reject).await;
            return;
        }
    };
    let plain = session.order().mode == Mode::Plain;
    let (inbound_tx, inbound) = mpsc::channel(8);
    // Plain mode: the client connects from one of the addresses aimed at, without a hello.
    let plain_from = plain.then(|| session.targets().to_vec());
    let _slot = slots.open(session.id(), inbound_tx, plain_from);
    let armed = AgentToServer::Armed {
        session: session.id().into(),
    };
    let on_fired = || {
        if plain {
            let _ = msgs.try_send(armed);
        }
    };
    match session.run(inbound, on_fired).await {
        Ok(established) => state.deliver(established).await,
        Err(failure) => tracing::warn!(%client, "punch failed: {failure}"),
    }
}
