//! The rendezvous server: HTTP and WebSocket on one port. It keeps the registry of online ids,
//! sees each peer's public endpoint from its TCP connection, and times every punch so both ends
//! fire together. It never carries a byte of the punched streams (unless it relays).
//!
//! Inside (see `docs/architecture.md`):
//! - `accept`: the control port's accept loop, limits and TLS sniffing;
//! - `http`: admission and the endpoints;
//! - `registry`: online agents and id ownership;
//! - `agent_conn`: an agent's control connection;
//! - `session`: a client's connect attempt, from request to outcome;
//! - `broker`: the pure planner of a session's two punch orders;
//! - `probe`, `relay`, `metrics`, `admin`, `limits`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

mod accept;
pub(crate) mod admin;
mod agent_conn;
mod broker;
mod cluster;
pub(crate) mod history;
mod http;
pub(crate) mod limits;
pub(crate) mod metrics;
mod probe;
mod registry;
mod relay;
mod session;

use self::cluster::{Cluster, StoreDown};
pub use self::cluster::{ClusterConfig, PRESENCE_TTL, check_redis_url};
use self::limits::{Concurrency, RateLimiter};
use self::metrics::Metrics;
use self::probe::ProbeTable;
use self::registry::Registry;
pub use self::relay::RelayConfig;
use self::relay::RelayHub;
use self::session::{SessionTable, Target};
use crate::defaults;
use crate::net;
use crate::protocol;
use crate::tls::ServerTls;

/// Limits and features of a server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Most agents registered at once.
    pub max_agents: usize,
    /// Most connect attempts (client control connections, each one session) open at once.
    pub max_pending_connects: usize,
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
    /// Membership of a cluster of servers sharing one Redis (see `docs/cluster.md`).
    pub cluster: Option<ClusterConfig>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_agents: defaults::MAX_AGENTS,
            max_pending_connects: defaults::MAX_PENDING_CONNECTS,
            relay: None,
            token: None,
            id_grace: defaults::ID_GRACE,
            max_connections: defaults::MAX_CONNECTIONS,
            max_connections_per_ip: defaults::MAX_CONNECTIONS_PER_IP,
            head_timeout: defaults::HEAD_TIMEOUT,
            connect_rate: defaults::CONNECT_RATE,
            expose_rate: defaults::EXPOSE_RATE,
            tls: None,
            cluster: None,
        }
    }
}

/// Birthday punches at once from one client address, and toward one agent: the easy side of
/// each sends 1536 connection attempts, so a client that fakes a symmetric NAT (its probe from
/// another port) must not make an agent spray without bound. Two at once per agent matches
/// what real users need (a birthday punch takes a few hundred milliseconds) with room to spare.
const BIRTHDAYS_AT_ONCE: usize = 2;
/// How long a birthday punch counts against those bounds at most, however long its session
/// stays open: the punch itself is over by the 5 s punch timeout.
const BIRTHDAY_WINDOW: Duration = Duration::from_secs(6);

/// Birthday punches under way, per client address and per agent.
struct Birthdays {
    per_client: Concurrency<std::net::IpAddr>,
    per_agent: Concurrency<protocol::ServiceId>,
}

/// What every handler shares.
struct Shared {
    config: ServerConfig,
    connect_rate: RateLimiter,
    expose_rate: RateLimiter,
    birthdays: Birthdays,
    registry: Arc<Registry>,
    sessions: Arc<SessionTable>,
    /// `None` when the server has no probe port: mappings are then unknown at once.
    probes: Option<Arc<ProbeTable>>,
    relay: Option<RelayHub>,
    /// The cluster this server is a member of, if any.
    cluster: Option<Arc<Cluster>>,
    metrics: Metrics,
    /// Connect nonces seen lately: a replayed request is refused before it reaches an agent.
    replay: crate::replay::ReplayCache,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

/// How long the server remembers connect nonces, and how many at most: ten minutes of
/// requests at several hundred per second.
const REPLAY_WINDOW: std::time::Duration = std::time::Duration::from_secs(600);
/// See [`REPLAY_WINDOW`].
const REPLAY_CACHE: usize = 262_144;

type AppState = Arc<Shared>;

impl Shared {
    /// The agent `id`: held here, or (in a cluster) by another member. `Err` when it is not
    /// here and the cluster store cannot be asked.
    async fn find_agent(&self, id: &protocol::ServiceId) -> Result<Option<Target>, StoreDown> {
        if let Some(online) = self.registry.lookup(id) {
            return Ok(Some(Target::Local(online)));
        }
        match &self.cluster {
            Some(cluster) => Ok(cluster.lookup(id).await?.map(Target::Remote)),
            None => Ok(None),
        }
    }
}

/// What a client hears when its peer is not held here and the cluster store is unreachable.
fn store_down_message(peer: &str) -> String {
    format!(
        "peer '{peer}' is not on this server, and the cluster store is unreachable: try \
         another server, or again shortly"
    )
}

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
    /// NAT probes, by convention on the control port + 1 (see [`crate::protocol::probe_addr`]).
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

/// A listener for one of the server's ports (control or probe), with a deep accept queue.
pub fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    net::server_listener(addr)
}

/// Raises this process's soft limit on open files toward `want` (never past the hard limit)
/// and returns the limit now in force: every connection to the server is a file descriptor.
pub fn raise_open_file_limit(want: u64) -> u64 {
    net::raise_fd_limit_to(want)
}

/// Serves the rendezvous protocol until `shutdown` is cancelled.
pub async fn serve(
    listeners: Listeners,
    config: ServerConfig,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let Listeners {
        control,
        probe,
        admin,
    } = listeners;
    let probes = probe.as_ref().map(|_| Arc::new(ProbeTable::default()));
    let registry = Arc::new(Registry::new(config.id_grace, config.max_agents));
    let sessions = Arc::new(SessionTable::new(config.max_pending_connects));
    let tasks = TaskTracker::new();
    let cluster = match &config.cluster {
        Some(c) => Some(Cluster::start(
            c.clone(),
            config.id_grace,
            registry.clone(),
            sessions.clone(),
            &tasks,
            shutdown.clone(),
        )?),
        None => None,
    };
    let state = Arc::new(Shared {
        relay: config.relay.map(RelayHub::new),
        connect_rate: RateLimiter::new(config.connect_rate, config.connect_rate * 3.0),
        expose_rate: RateLimiter::new(config.expose_rate, config.expose_rate * 5.0),
        birthdays: Birthdays {
            per_client: Concurrency::new(BIRTHDAYS_AT_ONCE, BIRTHDAY_WINDOW),
            per_agent: Concurrency::new(BIRTHDAYS_AT_ONCE, BIRTHDAY_WINDOW),
        },
        registry,
        sessions,
        cluster,
        config,
        probes: probes.clone(),
        metrics: Metrics::default(),
        replay: crate::replay::ReplayCache::new(REPLAY_WINDOW, REPLAY_CACHE),
        tasks,
        shutdown: shutdown.clone(),
    });
    if let (Some(probe), Some(table)) = (probe, probes) {
        state
            .tasks
            .spawn(probe::serve(probe, table, shutdown.clone()));
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
    let accepting = accept::Accepting::new(control, state.config.clone());
    let app = http::router(state.clone());
    let served = axum::serve(
        accepting,
        app.into_make_service_with_connect_info::<accept::ConnMeta>(),
    )
    .with_graceful_shutdown(shutdown.cancelled_owned())
    .await;
    state.tasks.close();
    state.tasks.wait().await;
    served
}
