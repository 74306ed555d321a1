//! The exposing side: registers an id, punches on demand, and hands each proven stream to the
//! caller (the `expose` command forwards it to the service).
//!
//! - `registration`: the punch port, the NAT probe, the port mapping and the expose request;
//! - `budget`: how many sessions, birthday punches and sockets the sessions may hold;
//! - `control_loop`: one registration's control channel, re-registering when it dies;
//! - `inbound`: connections accepted on the punch port, routed to their session;
//! - `warm`: warm paths, whose streams are handed out one by one;
//! - `admin`: `/metrics` and a status page of the warm paths (`expose --admin`);
//! - `service`: the state of the service the agent forwards to, as its owner reports it;
//! - here: the options, [`Agent`], and what the agent does with one punch order.

mod admin;
mod budget;
mod control_loop;
mod inbound;
mod registration;
mod service;
mod warm;

pub use self::budget::{WarmCounts, WarmPathInfo, WarmPaths};
pub use self::service::{ServiceHealth, ServiceState};

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::budget::{Budget, WarmBudget};
use self::inbound::Slots;
use super::control::ServerUrl;
use super::ports::PortsView;
use super::punch::{PunchOptions, StreamSettings};
use super::session::{ConnectionInfo, Established, Session};
use super::stream::PeerStream;
use crate::Error;
use crate::protocol::{
    self, AgentToServer, ErrorCode, Mode, Nonce, PunchOrder, Role, ServiceKeys, SessionId,
    Signature, StaticKey, connect_message, plain_message,
};
use crate::replay::ReplayCache;

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
/// How long a plain-mode session waits for the client's answer to its challenge: a round
/// trip through the server to the client and back, on a slow phone network.
const PLAIN_PROOF_WAIT: Duration = Duration::from_secs(5);

/// How to expose a service.
#[derive(Clone)]
pub struct ExposeOptions {
    /// The rendezvous server, the first choice of several (see [`ExposeOptions::other_servers`]).
    pub server: ServerUrl,
    /// Further rendezvous servers, in order of preference after `server`: the agent registers
    /// with the first that takes the registration, and moves to another when its server is
    /// lost (see [`Agent::start`]).
    pub other_servers: Vec<ServerUrl>,
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
    /// Let clients that ask for it (`connect --no-encrypt`) have raw bytes after the
    /// handshake. Off by default: streams are encrypted.
    pub allow_unencrypted: bool,
    /// Serve the seed's plain mode (one raw connect from the client, no stream handshake):
    /// on by default for the seed's Java API; its streams are never encrypted.
    pub allow_plain: bool,
    /// The agent's static Noise key (`expose --key FILE`): clients that pin it
    /// (`connect --peer-pin`) know they reach this agent even without a secret.
    pub key: Option<StaticKey>,
    /// Warm paths (see [`crate::Peer`]) kept open at once; past that, a client's path
    /// carries the streams it opened with it and closes. 0 keeps none.
    pub max_warm_paths: usize,
    /// Of those, kept open at once for clients behind one public address; past that, as
    /// past [`ExposeOptions::max_warm_paths`].
    pub max_warm_paths_per_address: usize,
}

impl std::fmt::Debug for ExposeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExposeOptions")
            .field("server", &self.server)
            .field("other_servers", &self.other_servers)
            .field("id", &self.id)
            .field("secret", &self.secret.as_ref().map(|_| "<hidden>"))
            .field("punch", &self.punch)
            .field("punch_port", &self.punch_port)
            .field("token", &self.token.as_ref().map(|_| "<hidden>"))
            .field("port_mapping", &self.port_mapping)
            .field("allow_unencrypted", &self.allow_unencrypted)
            .field("allow_plain", &self.allow_plain)
            .field("key", &self.key)
            .field("max_warm_paths", &self.max_warm_paths)
            .field(
                "max_warm_paths_per_address",
                &self.max_warm_paths_per_address,
            )
            .finish()
    }
}

impl ExposeOptions {
    /// Options with the default punch (see [`crate::defaults`]).
    pub fn new(server: &str, id: &str, secret: Option<&str>) -> Result<Self, Error> {
        protocol::validate_id(id).map_err(|e| Error::Refused(e.code, e.message))?;
        Ok(ExposeOptions {
            server: ServerUrl::parse(server)?,
            other_servers: Vec::new(),
            id: id.to_string(),
            secret: secret.map(str::to_string),
            punch: PunchOptions::default(),
            punch_port: 0,
            token: None,
            port_mapping: true,
            allow_unencrypted: false,
            allow_plain: true,
            key: None,
            max_warm_paths: crate::defaults::AGENT_MAX_WARM_PATHS,
            max_warm_paths_per_address: crate::defaults::AGENT_MAX_WARM_PATHS_PER_ADDRESS,
        })
    }

    /// Options with several servers, in order of preference (at least one).
    pub fn with_servers<S: AsRef<str>>(
        servers: &[S],
        id: &str,
        secret: Option<&str>,
    ) -> Result<Self, Error> {
        let mut servers = ServerUrl::parse_list(servers)?.into_iter();
        let first = servers.next().expect("a parsed list is not empty");
        Ok(ExposeOptions {
            server: first.clone(),
            other_servers: servers.collect(),
            ..ExposeOptions::new(&first.to_string(), id, secret)?
        })
    }

    /// Every server, in order of preference: `server`, then `other_servers`.
    pub fn servers(&self) -> Vec<ServerUrl> {
        std::iter::once(self.server.clone())
            .chain(self.other_servers.iter().cloned())
            .collect()
    }

    /// What the agent brings to every stream handshake: the keys of its secret (derived
    /// here, about 3 ms), its static key, whether it grants raw bytes.
    pub(crate) fn stream_settings(&self) -> StreamSettings {
        StreamSettings {
            keys: self
                .secret
                .as_deref()
                .map(|s| ServiceKeys::derive(s, &self.id)),
            pin: None,
            static_key: self.key.clone(),
            unencrypted: self.allow_unencrypted,
            warm: false,
        }
    }
}

/// A proven stream from a client.
#[derive(Debug)]
pub struct Accepted {
    /// The stream; bytes read here come from the client (decrypted).
    pub stream: PeerStream,
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
    state: Arc<AgentState>,
    /// The service's health, once [`Agent::show_service`] gave it.
    service: Arc<Mutex<Option<ServiceHealth>>>,
}

impl Agent {
    /// Registers with the server and starts serving punch orders. Retries while the server is
    /// unreachable or busy; fails at once if the server refuses the registration (e.g. id
    /// taken).
    ///
    /// With several servers ([`ExposeOptions::other_servers`], or a name with several
    /// addresses) the agent registers with one: the first, in the order given, that takes the
    /// registration. When that server is lost the agent registers with the first other one
    /// that takes it, in the same order (the lost one last); it never leaves a working server
    /// for one earlier in the list. With an alternative to go to, the agent pings its server
    /// every [`FAILOVER_PING_INTERVAL`](crate::defaults::FAILOVER_PING_INTERVAL) and takes it
    /// as lost after [`FAILOVER_SILENCE_LIMIT`](crate::defaults::FAILOVER_SILENCE_LIMIT) of
    /// silence, so a dead server is left within about 5 s.
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
    ///     conn.stream.write_all(b"welcome").await?; // encrypted, to the client
    /// }
    /// # client.await??;
    /// # stop.cancel();
    /// # Ok(()) }
    /// ```
    pub async fn start(opts: ExposeOptions) -> Result<Agent, Error> {
        let servers = opts.servers();
        let stream = opts.stream_settings();
        let mut backoff = BACKOFF_MIN;
        let registration = loop {
            let order = (0..servers.len()).collect();
            let attempt = registration::register_any(&opts, &stream, &servers, order, true);
            match attempt.await {
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
        let fd_limit = crate::net::raise_fd_limit_to(65_536);
        let warm_budget = WarmBudget::new(opts.max_warm_paths, opts.max_warm_paths_per_address);
        let state = Arc::new(AgentState {
            opts,
            stream,
            servers,
            accepted: tx,
            replay: ReplayCache::new(REPLAY_WINDOW, REPLAY_CACHE),
            plain_proofs: Mutex::new(HashMap::new()),
            budget: Budget::new(budget::Limits::for_fd_limit(fd_limit)),
            warm: warm_budget,
            tracker: tracker.clone(),
            stop: stop.clone(),
        });
        let warm = state.clone();
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
            state: warm,
            service: Arc::default(),
        })
    }

    /// The next proven stream; `None` once the agent has stopped. An agent replaced by
    /// another instance of its service (same secret) does not stop: it waits, registering
    /// again once the id is free.
    pub async fn accept(&mut self) -> Option<Accepted> {
        self.incoming.recv().await
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

    /// The agent's warm paths (clients that use [`crate::Peer`], such as `connect
    /// --listen`): how many are open, and how many paths and streams they carried so far.
    /// The handle reads them for as long as it is kept.
    pub fn warm_paths(&self) -> WarmPaths {
        self.state.warm.watch()
    }

    /// Shows the state of the service this agent's streams go to on the status page and
    /// `/metrics` of [`Agent::serve_admin`]: the agent never connects to the service itself,
    /// so its owner reports through `health` what its probes and forwards met. A second
    /// call replaces the first.
    pub fn show_service(&self, health: ServiceHealth) {
        *self.service.lock().expect("service lock") = Some(health);
    }

    /// Serves `/metrics` (Prometheus text) and a status page of this agent's warm paths and
    /// the streams on each, and of its service (see [`Agent::show_service`]), on `listener`,
    /// until `stop` (`expose --admin`). Keep it off public addresses: it names the clients'
    /// addresses.
    pub fn serve_admin(
        &self,
        listener: tokio::net::TcpListener,
        stop: CancellationToken,
    ) -> impl Future<Output = std::io::Result<()>> + Send + 'static {
        admin::serve(listener, self, stop)
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
    /// The keys and settings of every stream handshake.
    stream: StreamSettings,
    /// Every server, in order of preference ([`ExposeOptions::servers`]).
    servers: Vec<ServerUrl>,
    accepted: mpsc::Sender<Accepted>,
    replay: ReplayCache,
    /// Plain-mode sessions waiting for the client's answer to their challenge.
    plain_proofs: Mutex<HashMap<SessionId, oneshot::Sender<Signature>>>,
    /// What the sessions may hold together.
    budget: Budget,
    /// The warm paths kept open.
    warm: WarmBudget,
    /// Owns the tasks that outlive a registration: warm paths and their streams.
    tracker: TaskTracker,
    /// Cancelled when the agent stops.
    stop: CancellationToken,
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
        if order.mode == Mode::Plain && !self.opts.allow_plain {
            tracing::warn!(client = %order.peer_public, "plain mode refused (--no-plain)");
            return Err(reject(
                ErrorCode::PlainRefused,
                "this service refuses plain mode (it runs with --no-plain)",
            ));
        }
        if let Some(keys) = &self.stream.keys {
            // The server checked it too; it is not trusted to have done so.
            let message = connect_message(&self.opts.id, order.mode, &nonce);
            let ok = order
                .proof
                .is_some_and(|proof| keys.verifier().verifies(&message, &proof));
            if !ok {
                tracing::warn!(client = %order.peer_public, "secret rejected");
                return Err(reject(ErrorCode::SecretRejected, "secret rejected"));
            }
        }
        if !self.replay.fresh(nonce) {
            tracing::warn!(client = %order.peer_public, "replayed connect request refused");
            return Err(reject(ErrorCode::SecretRejected, "replayed request"));
        }
        Ok(nonce)
    }

    /// Hands a proven stream to the application. A burst may fill the queue: wait for the
    /// application rather than drop a stream whose client already counts it as connected.
    async fn deliver(&self, established: Established) {
        let Established { stream, info, .. } = established;
        tracing::info!(
            "client connected ({}, {}) in {} ms",
            info.path,
            info.peer_addr,
            info.setup.as_millis()
        );
        self.hand_over(stream, info).await;
    }

    /// Hands a stream to the application (see [`AgentState::deliver`]).
    async fn hand_over(&self, stream: PeerStream, info: ConnectionInfo) {
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

impl AgentState {
    /// Plain mode with a secret: challenges the client (through the server) to sign the
    /// agent's fresh nonce together with the endpoint the server saw it at, the one endpoint
    /// the raw connection will be accepted from. A captured proof opens nothing.
    async fn challenge_plain(
        &self,
        order: &PunchOrder,
        nonce: Nonce,
        msgs: &mpsc::Sender<AgentToServer>,
    ) -> Result<(), String> {
        let Some(keys) = &self.stream.keys else {
            return Ok(()); // A public service lets anyone connect.
        };
        let challenge = Nonce::random();
        let (tx, rx) = oneshot::channel();
        self.plain_proofs
            .lock()
            .expect("plain proofs lock")
            .insert(order.session, tx);
        let sent = msgs
            .send(AgentToServer::Challenge {
                session: order.session.into(),
                nonce: challenge,
            })
            .await;
        let answer = match sent {
            Ok(()) => tokio::time::timeout(PLAIN_PROOF_WAIT, rx).await,
            Err(_) => return Err("the control channel closed".into()),
        };
        self.plain_proofs
            .lock()
            .expect("plain proofs lock")
            .remove(&order.session);
        let signature = match answer {
            Ok(Ok(sig)) => sig,
            _ => return Err("no answer to the plain-mode challenge in time".into()),
        };
        let message = plain_message(&self.opts.id, &nonce, &challenge, &order.peer_public);
        if keys.verifier().verifies(&message, &signature) {
            Ok(())
        } else {
            Err("the plain-mode answer does not verify".into())
        }
    }

    /// Passes a client's answer to the plain-mode session waiting for it.
    fn plain_proof(&self, session: Option<SessionId>, signature: Signature) {
        let waiting = session.and_then(|s| {
            self.plain_proofs
                .lock()
                .expect("plain proofs lock")
                .remove(&s)
        });
        match waiting {
            Some(tx) => {
                let _ = tx.send(signature);
            }
            None => tracing::debug!("a plain-mode answer for no waiting session"),
        }
    }
}

/// Carries out one punch order: checks the client, punches from the punch `ports`, and hands
/// the proven stream to the application.
async fn session(
    state: Arc<AgentState>,
    server: ServerUrl,
    slots: Slots,
    ports: PortsView,
    order: PunchOrder,
    msgs: mpsc::Sender<AgentToServer>,
) {
    let started = Instant::now();
    let nonce = match state.admit(&order) {
        Ok(nonce) => nonce,
        Err(reject) => {
            let _ = msgs.send(reject).await;
            return;
        }
    };
    if order.mode == Mode::Plain
        && let Err(why) = state.challenge_plain(&order, nonce, &msgs).await
    {
        tracing::warn!(client = %order.peer_public, "plain mode refused: {why}");
        let reject = AgentToServer::Reject {
            session: order.session.into(),
            code: ErrorCode::SecretRejected,
            message: why,
        };
        let _ = msgs.send(reject).await;
        return;
    }
    let at = ports.endpoint(&server);
    // A client may ask to keep the stream as a warm path: granted while a place is free, in
    // all and for the client's address.
    let warm_share = state.warm.reserve(order.peer_public.ip());
    let settings = StreamSettings {
        warm: warm_share.is_ok(),
        ..state.stream.clone()
    };
    let session = Session::new(
        order,
        Role::Agent,
        &settings,
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
    // Plain mode: the client connects from one of the addresses aimed at, without a handshake.
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
    let ran = session.run(inbound, on_fired).await;
    // The punch is over: its budget and slot are free, whatever the stream becomes.
    drop((_share, _slot));
    match ran {
        Ok(established) => match established.warm {
            None => state.deliver(established).await,
            Some(kept) => {
                // Kept exactly when a share was taken (the grant follows it).
                debug_assert_eq!(kept, warm_share.is_ok());
                let share = warm_share;
                // The path outlives this registration's tasks: the agent's tracker owns it.
                let path = warm::serve(state.clone(), established, share);
                state.tracker.spawn(path);
            }
        },
        Err(failure) => tracing::warn!(%client, "punch failed: {failure}"),
    }
}
