//! Many servers as one rendezvous service, on Redis (see `docs/cluster.md`).
//!
//! Each member keeps its own agents' control connections. Presence (which member holds which
//! id, the agent's view, the id's owner) lives in Redis with a TTL the holder refreshes; a
//! claim is one Lua script (`presence`), so two members cannot both take an id. A client may
//! ask any member: when another holds the agent, its punch order goes to that member's
//! pub/sub channel, and the agent's answers come back the same way.
//!
//! Redis trouble is not an outage: a member that cannot reach Redis goes on serving the
//! agents it holds, refuses registrations it cannot check, and republishes its presence
//! when Redis is back.
//!
//! The Redis client is the `redis` crate (tokio, connection manager): the most used Rust
//! client, maintained under the Redis organisation, with scripts, pipelines and pub/sub,
//! which is all this needs; its connection manager reconnects by itself.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use redis::AsyncCommands as _;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::broker::AgentView;
use super::metrics::now_unix_ms;
use super::registry::Registry;
use super::session::{SessionEvent, SessionTable};
use crate::protocol::{ErrorCode, Nonce, ServerToAgent, ServiceId, SessionId};

mod presence;

pub(crate) use presence::{AgentRecord, MemberRecord};
use presence::{ClaimAnswer, ClaimArgs, ClaimMode, Scripts};

/// How long a presence lives in Redis unless its holder refreshes it: a member killed without
/// a word frees its ids this long after its last refresh. Three refreshes, so one slow round
/// trip never lets a live agent's presence lapse.
pub const PRESENCE_TTL: Duration = Duration::from_secs(15);
/// How often a member refreshes its agents' presence and its own record.
const REFRESH_INTERVAL: Duration = Duration::from_secs(5);
/// Presences refreshed in one pipeline (each its own [`REDIS_TIMEOUT`]). A claim script costs
/// Redis about 15 µs, so a batch is well under 10 ms of its time even queued behind every
/// other member's batch. One pipeline of a member's whole set (16 000 agents: a quarter of a
/// second of Redis alone, more on a busy host) ran past the timeout, and the member then took
/// Redis for gone and refused registrations; it also held up the member's claims and lookups
/// on the same connection behind it.
const REFRESH_BATCH: usize = 500;
/// How long a member's own record lives unless refreshed (as a presence).
const MEMBER_TTL: Duration = PRESENCE_TTL;
/// How often a member checks that Redis answers (PING): an outage, and the end of one, are
/// noticed within this.
const HEALTH_INTERVAL: Duration = Duration::from_secs(1);
/// Longest wait for one Redis command (or pipeline): Redis answers in well under a
/// millisecond on a LAN, so a second means it is gone or overloaded, and a registration or a
/// connect must not wait longer than that on it.
const REDIS_TIMEOUT: Duration = Duration::from_secs(1);
/// First and longest pause between attempts to resubscribe after Redis went away.
const RESUBSCRIBE_MIN: Duration = Duration::from_millis(100);
/// See [`RESUBSCRIBE_MIN`].
const RESUBSCRIBE_MAX: Duration = Duration::from_secs(2);
/// Messages waiting to be published before new ones are refused (a connect answered busy):
/// a burst of connects, far more than one member brokers in the time Redis takes to answer.
const OUTBOX: usize = 4096;
/// How long a member routes an agent's answers for a session brokered by another member:
/// as long as the client side keeps the session (its 30 s), with room for the hop.
const REMOTE_SESSION_LIFETIME: Duration = Duration::from_secs(40);
/// How many remote sessions a member remembers at most (older ones are dropped first).
const MAX_REMOTE_SESSIONS: usize = 65_536;

/// The batches of [`REFRESH_BATCH`] presences a refresh sends, each in its own pipeline; one
/// (empty) batch when the member holds no agents, which still refreshes its own record.
fn refresh_batches<T>(held: &[T]) -> Vec<&[T]> {
    if held.is_empty() {
        vec![held]
    } else {
        held.chunks(REFRESH_BATCH).collect()
    }
}

/// The store's state as a member last saw it.
const STORE_UNKNOWN: u8 = 0;
/// See [`STORE_UNKNOWN`].
const STORE_UP: u8 = 1;
/// See [`STORE_UNKNOWN`].
const STORE_DOWN: u8 = 2;

/// A server's membership of a cluster.
#[derive(Clone)]
pub struct ClusterConfig {
    /// The Redis every member names, `redis://HOST:PORT[/DB]`.
    pub redis_url: String,
    /// This member's id, unique in the cluster.
    pub member: String,
    /// Where clients and agents reach this member's control port (also where the other
    /// members send the ends of a relayed session to).
    pub advertise: SocketAddr,
}

impl std::fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("redis_url", &redacted(&self.redis_url))
            .field("member", &self.member)
            .field("advertise", &self.advertise)
            .finish()
    }
}

/// Why a cluster cannot be joined.
#[derive(Debug, thiserror::Error)]
#[error("invalid cluster URL '{url}': {reason}")]
pub struct ClusterUrlError {
    url: String,
    reason: String,
}

/// Checks a Redis URL without connecting.
pub fn check_redis_url(url: &str) -> Result<(), ClusterUrlError> {
    redis::Client::open(url)
        .map(|_| ())
        .map_err(|e| ClusterUrlError {
            url: redacted(url),
            reason: e.to_string(),
        })
}

/// What members send each other through Redis.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Bus {
    /// To the member holding `id`: pass `msg` to its agent.
    ToAgent {
        id: ServiceId,
        from: String,
        msg: Box<ServerToAgent>,
    },
    /// To the member brokering `session`: what its agent said.
    Event {
        session: SessionId,
        event: WireEvent,
    },
    /// To the member that held `id` under `token`: the owner's new registration elsewhere
    /// replaced it.
    Replaced { id: ServiceId, token: String },
}

/// A [`SessionEvent`] on the wire.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum WireEvent {
    Rejected { code: ErrorCode, message: String },
    Armed,
    Challenge { nonce: Nonce },
}

impl From<SessionEvent> for WireEvent {
    fn from(e: SessionEvent) -> Self {
        match e {
            SessionEvent::Rejected(code, message) => WireEvent::Rejected { code, message },
            SessionEvent::Armed => WireEvent::Armed,
            SessionEvent::Challenge(nonce) => WireEvent::Challenge { nonce },
        }
    }
}

impl From<WireEvent> for SessionEvent {
    fn from(e: WireEvent) -> Self {
        match e {
            WireEvent::Rejected { code, message } => SessionEvent::Rejected(code, message),
            WireEvent::Armed => SessionEvent::Armed,
            WireEvent::Challenge { nonce } => SessionEvent::Challenge(nonce),
        }
    }
}

/// A message to publish, and the session to tell when nobody receives it.
struct Outgoing {
    channel: String,
    payload: String,
    session: Option<SessionId>,
}

/// One of this member's agents as its presence is kept.
struct LocalClaim {
    token: String,
    record: AgentRecord,
    rtt_us: Arc<AtomicU64>,
}

/// Why a registration may not take an id in the cluster.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum ClaimRefused {
    /// Another agent holds or recently held it.
    #[error("{0}")]
    IdTaken(String),
    /// Redis cannot be reached, so nothing can be checked.
    #[error(
        "cluster store unreachable: this server cannot check id '{0}' against the other \
         servers now; registrations wait until it is back"
    )]
    StoreDown(ServiceId),
}

impl ClaimRefused {
    /// The code to answer with.
    pub fn code(&self) -> ErrorCode {
        match self {
            ClaimRefused::IdTaken(_) => ErrorCode::IdTaken,
            ClaimRefused::StoreDown(_) => ErrorCode::Busy,
        }
    }
}

/// An agent held by another member, as a connect to it needs it.
#[derive(Debug, Clone)]
pub(super) struct RemoteAgent {
    pub id: ServiceId,
    pub member: String,
    pub view: AgentView,
    /// The agent's RTT to its member.
    pub rtt: Duration,
    /// The one-way delay of a message from this member to the holder through Redis,
    /// estimated as half of each member's RTT to Redis.
    pub hop: Duration,
}

/// A lookup that Redis could not answer.
#[derive(Debug, Clone, Copy)]
pub(super) struct StoreDown;

/// Counters of the cluster, for `/metrics` and the status page.
#[derive(Default)]
struct Counters {
    /// Connects brokered here toward agents held elsewhere.
    cross_connects: AtomicU64,
    /// Orders that other members routed to agents held here.
    orders_routed_in: AtomicU64,
    /// Times Redis went away.
    outages: AtomicU64,
    /// Registrations refused because Redis could not be reached.
    refused_store_down: AtomicU64,
    /// Local agents dropped because another registration took their id.
    lost: AtomicU64,
}

/// A member of a cluster: the handle every handler shares.
pub(super) struct Cluster {
    config: ClusterConfig,
    redis: ConnectionManager,
    client: redis::Client,
    scripts: Scripts,
    /// Whether Redis answered lately: [`STORE_UNKNOWN`] until the first answer or failure.
    store: AtomicU8,
    /// This member's smoothed RTT to Redis, microseconds.
    redis_rtt_us: AtomicU64,
    /// Presence of the agents held here, by id.
    claims: Mutex<HashMap<ServiceId, LocalClaim>>,
    /// Sessions brokered by another member whose agent is held here: session → that member.
    remote_sessions: Mutex<HashMap<SessionId, (String, Instant)>>,
    outbox: mpsc::Sender<Outgoing>,
    /// Asks the refresh loop for a refresh now (Redis came back).
    refresh_now: Notify,
    /// Asks the subscriber to reconnect (Redis went away).
    resubscribe: Notify,
    id_grace: Duration,
    registry: Arc<Registry>,
    sessions: Arc<SessionTable>,
    counters: Counters,
    started_unix_ms: u64,
    /// The server's tasks: the member's own, and each release of a claim.
    tasks: TaskTracker,
}

impl Cluster {
    /// Joins the cluster: starts the member's tasks (health, refresh, publisher, subscriber)
    /// on `tasks`; they end with `shutdown`. Redis need not be up yet.
    pub fn start(
        config: ClusterConfig,
        id_grace: Duration,
        registry: Arc<Registry>,
        sessions: Arc<SessionTable>,
        tasks: &TaskTracker,
        shutdown: CancellationToken,
    ) -> std::io::Result<Arc<Self>> {
        let invalid = |e: redis::RedisError| std::io::Error::other(format!("--cluster: {e}"));
        let client = redis::Client::open(config.redis_url.as_str()).map_err(invalid)?;
        let manager_config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(REDIS_TIMEOUT))
            .set_response_timeout(Some(REDIS_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(RESUBSCRIBE_MAX);
        let redis = ConnectionManager::new_lazy_with_config(client.clone(), manager_config)
            .map_err(invalid)?;
        let (outbox, outgoing) = mpsc::channel(OUTBOX);
        let cluster = Arc::new(Cluster {
            config,
            redis,
            client,
            scripts: Scripts::new(),
            store: AtomicU8::new(STORE_UNKNOWN),
            redis_rtt_us: AtomicU64::new(0),
            claims: Mutex::new(HashMap::new()),
            remote_sessions: Mutex::new(HashMap::new()),
            outbox,
            refresh_now: Notify::new(),
            resubscribe: Notify::new(),
            id_grace,
            registry,
            sessions,
            counters: Counters::default(),
            started_unix_ms: now_unix_ms(),
            tasks: tasks.clone(),
        });
        tracing::info!(
            member = %cluster.config.member, advertise = %cluster.config.advertise,
            "joining the cluster on {}", redacted(&cluster.config.redis_url)
        );
        tasks.spawn(cluster.clone().health(shutdown.clone()));
        tasks.spawn(cluster.clone().refresh_loop(shutdown.clone()));
        tasks.spawn(cluster.clone().publisher(outgoing, shutdown.clone()));
        tasks.spawn(cluster.clone().subscriber(shutdown));
        Ok(cluster)
    }

    /// Where this member's control port is reached.
    pub fn advertise(&self) -> SocketAddr {
        self.config.advertise
    }

    /// Whether Redis answered lately.
    pub fn is_up(&self) -> bool {
        self.store.load(Ordering::Relaxed) == STORE_UP
    }

    /// Records whether Redis answered; logs each transition once.
    fn set_up(&self, up: bool, why: &str) {
        let now = if up { STORE_UP } else { STORE_DOWN };
        if self.store.swap(now, Ordering::Relaxed) == now {
            return;
        }
        if up {
            tracing::info!(
                member = %self.config.member,
                "cluster store reachable: routing across the cluster; republishing this \
                 server's agents"
            );
            self.refresh_now.notify_one();
        } else {
            self.counters.outages.fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                member = %self.config.member,
                "cluster store unreachable ({why}): serving only the agents this server holds; \
                 new registrations are refused until it is back"
            );
            self.resubscribe.notify_one();
        }
    }

    /// Runs one Redis call with [`REDIS_TIMEOUT`]; a failure marks Redis down.
    async fn call<T>(
        &self,
        what: &str,
        work: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreDown> {
        match tokio::time::timeout(REDIS_TIMEOUT, work).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                self.set_up(false, &format!("{what}: {e}"));
                Err(StoreDown)
            }
            Err(_) => {
                self.set_up(
                    false,
                    &format!("{what}: no answer within {REDIS_TIMEOUT:?}"),
                );
                Err(StoreDown)
            }
        }
    }

    fn presence_ttl_ms(&self) -> u64 {
        PRESENCE_TTL.as_millis() as u64
    }

    fn owner_ttl_ms(&self) -> u64 {
        (PRESENCE_TTL + self.id_grace).as_millis() as u64
    }

    /// Claims `id` for a registration of this member; the claim lasts as long as the guard.
    pub async fn claim(
        self: &Arc<Self>,
        id: &ServiceId,
        view: &AgentView,
        takeover: bool,
        rtt_us: Arc<AtomicU64>,
    ) -> Result<ClaimGuard, ClaimRefused> {
        if !self.is_up() {
            self.counters
                .refused_store_down
                .fetch_add(1, Ordering::Relaxed);
            return Err(ClaimRefused::StoreDown(id.clone()));
        }
        let token = hex::encode(rand::random::<[u8; 12]>());
        let record = AgentRecord {
            member: self.config.member.clone(),
            token: token.clone(),
            verifier: presence::verifier_word(view.verifier.as_ref()),
            view: view.clone(),
            rtt_us: rtt_us.load(Ordering::Relaxed),
            member_redis_rtt_us: self.redis_rtt_us.load(Ordering::Relaxed),
            since_unix_ms: now_unix_ms(),
        };
        let args = ClaimArgs {
            id,
            record: &record,
            mode: if takeover {
                ClaimMode::Takeover
            } else {
                ClaimMode::Wait
            },
            presence_ttl_ms: self.presence_ttl_ms(),
            owner_ttl_ms: self.owner_ttl_ms(),
        };
        let mut redis = self.redis.clone();
        let words: Result<Vec<String>, StoreDown> = self
            .call(
                "claim",
                args.invocation(&self.scripts).invoke_async(&mut redis),
            )
            .await;
        let Ok(words) = words else {
            self.counters
                .refused_store_down
                .fetch_add(1, Ordering::Relaxed);
            return Err(ClaimRefused::StoreDown(id.clone()));
        };
        let answer = presence::claim_answer(&words).map_err(|e| {
            tracing::error!("{e}");
            ClaimRefused::StoreDown(id.clone())
        })?;
        match answer {
            ClaimAnswer::Ok { replaced } => {
                if let Some((member, old)) = replaced
                    && member != self.config.member
                {
                    tracing::info!(%id, %member, "the owner re-registered here; replacing its registration there");
                    self.publish(
                        &member,
                        &Bus::Replaced {
                            id: id.clone(),
                            token: old,
                        },
                        None,
                    );
                }
                self.claims.lock().expect("claims lock").insert(
                    id.clone(),
                    LocalClaim {
                        token: token.clone(),
                        record,
                        rtt_us,
                    },
                );
                Ok(ClaimGuard {
                    cluster: self.clone(),
                    id: id.clone(),
                    token,
                })
            }
            ClaimAnswer::Taken(member) => Err(ClaimRefused::IdTaken(format!(
                "id '{id}' is already registered by another agent (on server {member})"
            ))),
            ClaimAnswer::Wait(member) => Err(ClaimRefused::IdTaken(format!(
                "id '{id}' is held by another instance of this service (on server {member}); \
                 this one waits until it goes offline"
            ))),
            ClaimAnswer::Reserved(ms) => Err(ClaimRefused::IdTaken(format!(
                "id '{id}' belongs to another agent that went offline; it stays reserved for \
                 {} s more",
                ms.div_ceil(1000)
            ))),
            ClaimAnswer::Lost => Err(ClaimRefused::IdTaken(format!(
                "id '{id}' is already registered by another agent"
            ))),
        }
    }

    /// The agent `id` when another member holds it; `Ok(None)` when nobody does (or this
    /// member, whose registry the caller asked first).
    pub async fn lookup(&self, id: &ServiceId) -> Result<Option<RemoteAgent>, StoreDown> {
        if !self.is_up() {
            return Err(StoreDown);
        }
        let mut redis = self.redis.clone();
        let key = presence::agent_key(id);
        let raw: Option<String> = self
            .call(
                "lookup",
                redis::cmd("GET").arg(&key).query_async(&mut redis),
            )
            .await?;
        let Some(raw) = raw else { return Ok(None) };
        let record: AgentRecord = match serde_json::from_str(&raw) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(%id, "unreadable presence record in the cluster store: {e}");
                return Ok(None);
            }
        };
        if record.member == self.config.member {
            return Ok(None);
        }
        let mine = self.redis_rtt_us.load(Ordering::Relaxed);
        Ok(Some(RemoteAgent {
            id: id.clone(),
            member: record.member,
            view: record.view,
            rtt: Duration::from_micros(record.rtt_us),
            hop: Duration::from_micros((mine + record.member_redis_rtt_us) / 2),
        }))
    }

    /// Sends `msg` toward the agent `to` through its member; false when the outbox is full.
    /// If nobody receives it, `session` (if any) is told the peer is gone.
    pub fn send_to_agent(
        &self,
        to: &RemoteAgent,
        session: Option<SessionId>,
        msg: ServerToAgent,
    ) -> bool {
        if matches!(msg, ServerToAgent::Punch(_)) {
            self.counters.cross_connects.fetch_add(1, Ordering::Relaxed);
        }
        let bus = Bus::ToAgent {
            id: to.id.clone(),
            from: self.config.member.clone(),
            msg: Box::new(msg),
        };
        self.publish(&to.member, &bus, session)
    }

    /// Routes an agent's answer for a session brokered elsewhere; false when the session is
    /// none this member knows of.
    pub fn forward_event(&self, session: SessionId, event: SessionEvent) -> bool {
        let member = {
            let map = self.remote_sessions.lock().expect("remote sessions lock");
            match map.get(&session) {
                Some((m, at)) if at.elapsed() < REMOTE_SESSION_LIFETIME => m.clone(),
                _ => return false,
            }
        };
        let bus = Bus::Event {
            session,
            event: event.into(),
        };
        self.publish(&member, &bus, None)
    }

    fn publish(&self, member: &str, bus: &Bus, session: Option<SessionId>) -> bool {
        let payload = serde_json::to_string(bus).expect("a bus message serializes");
        self.outbox
            .try_send(Outgoing {
                channel: presence::channel(member),
                payload,
                session,
            })
            .is_ok()
    }

    /// Publishes the outbox in order; a message nobody received ends its session.
    async fn publisher(
        self: Arc<Self>,
        mut outgoing: mpsc::Receiver<Outgoing>,
        shutdown: CancellationToken,
    ) {
        loop {
            let out = tokio::select! {
                _ = shutdown.cancelled() => return,
                out = outgoing.recv() => match out { Some(o) => o, None => return },
            };
            let mut redis = self.redis.clone();
            let received: Result<u64, StoreDown> = self
                .call(
                    "publish",
                    redis::cmd("PUBLISH")
                        .arg(&out.channel)
                        .arg(&out.payload)
                        .query_async(&mut redis),
                )
                .await;
            if let (Ok(0) | Err(_), Some(session)) = (received, out.session) {
                let message =
                    "the server holding the peer did not take the order; try again".into();
                // A session that has ended meanwhile needs no telling.
                let _ = self.sessions.deliver(
                    session,
                    SessionEvent::Rejected(ErrorCode::PeerGone, message),
                );
            }
        }
    }

    /// Reads this member's channel, resubscribing after every loss of Redis.
    async fn subscriber(self: Arc<Self>, shutdown: CancellationToken) {
        let channel = presence::channel(&self.config.member);
        let mut pause = RESUBSCRIBE_MIN;
        loop {
            let subscribed = async {
                let mut pubsub = self.client.get_async_pubsub().await?;
                pubsub.subscribe(&channel).await?;
                Ok::<_, redis::RedisError>(pubsub)
            };
            let pubsub = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = tokio::time::timeout(REDIS_TIMEOUT, subscribed) => r,
            };
            match pubsub {
                Ok(Ok(pubsub)) => {
                    pause = RESUBSCRIBE_MIN;
                    let mut messages = pubsub.into_on_message();
                    loop {
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = self.resubscribe.notified() => break,
                            msg = messages.next() => match msg {
                                Some(msg) => self.inbound(msg.get_payload_bytes()),
                                None => {
                                    self.set_up(false, "the subscription ended");
                                    break;
                                }
                            },
                        }
                    }
                }
                Ok(Err(e)) => tracing::debug!("cannot subscribe to {channel}: {e}"),
                Err(_) => tracing::debug!("cannot subscribe to {channel}: timed out"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(pause) => {}
            }
            pause = (pause * 2).min(RESUBSCRIBE_MAX);
        }
    }

    /// Handles one message from this member's channel.
    fn inbound(&self, payload: &[u8]) {
        let bus: Bus = match serde_json::from_slice(payload) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!("unreadable message on the cluster channel: {e}");
                return;
            }
        };
        match bus {
            Bus::ToAgent { id, from, msg } => {
                let session = match &*msg {
                    ServerToAgent::Punch(order) => Some(order.session),
                    _ => None,
                };
                let Some(agent) = self.registry.lookup(&id) else {
                    if let Some(session) = session {
                        let event = WireEvent::Rejected {
                            code: ErrorCode::PeerGone,
                            message: format!("peer '{id}' went offline"),
                        };
                        self.publish(&from, &Bus::Event { session, event }, None);
                    }
                    return;
                };
                if let Some(session) = session {
                    self.counters
                        .orders_routed_in
                        .fetch_add(1, Ordering::Relaxed);
                    let mut map = self.remote_sessions.lock().expect("remote sessions lock");
                    if map.len() >= MAX_REMOTE_SESSIONS {
                        map.retain(|_, (_, at)| at.elapsed() < REMOTE_SESSION_LIFETIME);
                    }
                    if map.len() < MAX_REMOTE_SESSIONS {
                        map.insert(session, (from.clone(), Instant::now()));
                    }
                }
                if agent.tx.try_send(msg).is_err()
                    && let Some(session) = session
                {
                    let event = WireEvent::Rejected {
                        code: ErrorCode::Busy,
                        message: format!("peer '{id}' has too many pending sessions"),
                    };
                    self.publish(&from, &Bus::Event { session, event }, None);
                }
            }
            Bus::Event { session, event } => {
                // A session that has ended meanwhile needs no telling.
                let _ = self.sessions.deliver(session, event.into());
            }
            Bus::Replaced { id, token } => {
                let mine = self
                    .claims
                    .lock()
                    .expect("claims lock")
                    .get(&id)
                    .is_some_and(|c| c.token == token);
                if mine {
                    self.registry.kick(&id);
                }
            }
        }
    }

    /// Pings Redis every [`HEALTH_INTERVAL`]: the RTT, and whether it is up.
    async fn health(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(HEALTH_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let mut redis = self.redis.clone();
            let sent = Instant::now();
            let pong: Result<String, StoreDown> = self
                .call("ping", redis::cmd("PING").query_async(&mut redis))
                .await;
            if pong.is_ok() {
                let sample = sent.elapsed().as_micros() as u64;
                let old = self.redis_rtt_us.load(Ordering::Relaxed);
                let new = if old == 0 {
                    sample
                } else {
                    (old * 7 + sample) / 8
                };
                self.redis_rtt_us.store(new, Ordering::Relaxed);
                self.set_up(true, "");
            }
        }
    }

    /// Refreshes this member's record and its agents' presence every [`REFRESH_INTERVAL`]
    /// (at once when Redis comes back: the republication); drops local agents whose id
    /// another registration took meanwhile.
    async fn refresh_loop(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(REFRESH_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
                _ = self.refresh_now.notified() => {}
            }
            if self.is_up() {
                self.refresh().await;
            }
            self.remote_sessions
                .lock()
                .expect("remote sessions lock")
                .retain(|_, (_, at)| at.elapsed() < REMOTE_SESSION_LIFETIME);
        }
        // A clean stop frees this member's ids at once (their owners keep the grace period).
        let held: Vec<(ServiceId, String)> = {
            let claims = self.claims.lock().expect("claims lock");
            claims
                .iter()
                .map(|(id, c)| (id.clone(), c.token.clone()))
                .collect()
        };
        if self.is_up() && !held.is_empty() {
            for batch in refresh_batches(&held) {
                let mut pipe = redis::pipe();
                pipe.load_script(&self.scripts.release).ignore();
                for (id, token) in batch {
                    pipe.invoke_script(&self.release_invocation(id, token));
                }
                let mut redis = self.redis.clone();
                let released: Result<(), StoreDown> = self
                    .call("release on stop", pipe.query_async(&mut redis))
                    .await;
                if released.is_err() {
                    break; // The rest expire by themselves.
                }
            }
        }
    }

    /// One refresh: the member's record and every local presence, in pipelines of
    /// [`REFRESH_BATCH`].
    async fn refresh(&self) {
        let rtt = self.redis_rtt_us.load(Ordering::Relaxed);
        let held: Vec<(ServiceId, AgentRecord)> = {
            let mut claims = self.claims.lock().expect("claims lock");
            claims
                .iter_mut()
                .map(|(id, c)| {
                    c.record.rtt_us = c.rtt_us.load(Ordering::Relaxed);
                    c.record.member_redis_rtt_us = rtt;
                    (id.clone(), c.record.clone())
                })
                .collect()
        };
        let me = MemberRecord {
            member: self.config.member.clone(),
            advertise: self.config.advertise,
            agents: held.len() as u64,
            redis_rtt_us: rtt,
            since_unix_ms: self.started_unix_ms,
            version: env!("CARGO_PKG_VERSION").into(),
        };
        let mut member_record = Some(serde_json::to_string(&me).expect("a record serializes"));
        for batch in refresh_batches(&held) {
            let mut pipe = redis::pipe();
            if let Some(record) = member_record.take() {
                pipe.cmd("SET")
                    .arg(presence::member_key(&self.config.member))
                    .arg(record)
                    .arg("PX")
                    .arg(MEMBER_TTL.as_millis() as u64)
                    .ignore();
            }
            pipe.load_script(&self.scripts.claim).ignore();
            for (id, record) in batch {
                let args = ClaimArgs {
                    id,
                    record,
                    mode: ClaimMode::Keep,
                    presence_ttl_ms: self.presence_ttl_ms(),
                    owner_ttl_ms: self.owner_ttl_ms(),
                };
                pipe.invoke_script(&args.invocation(&self.scripts));
            }
            let mut redis = self.redis.clone();
            let answers: Result<Vec<Vec<String>>, StoreDown> =
                self.call("refresh", pipe.query_async(&mut redis)).await;
            let Ok(answers) = answers else { return };
            for ((id, record), words) in batch.iter().zip(answers) {
                if presence::claim_answer(&words) == Ok(ClaimAnswer::Lost) {
                    let ours = self
                        .claims
                        .lock()
                        .expect("claims lock")
                        .get(id)
                        .is_some_and(|c| c.token == record.token);
                    if ours {
                        self.counters.lost.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(%id, "another registration took this id while the cluster store was away; dropping the local one");
                        self.registry.kick(id);
                    }
                }
            }
        }
    }

    fn release_invocation<'s>(
        &'s self,
        id: &ServiceId,
        token: &str,
    ) -> redis::ScriptInvocation<'s> {
        let mut inv = self.scripts.release.prepare_invoke();
        inv.key(presence::agent_key(id))
            .key(presence::owner_key(id))
            .arg(token)
            .arg(self.id_grace.as_millis() as u64);
        inv
    }

    /// Releases a claim whose registration ended (in the background: the caller may be a
    /// destructor).
    fn release(self: &Arc<Self>, id: ServiceId, token: String) {
        {
            let mut claims = self.claims.lock().expect("claims lock");
            if claims.get(&id).is_some_and(|c| c.token == token) {
                claims.remove(&id);
            }
        }
        if !self.is_up() {
            return; // The presence expires by itself.
        }
        let cluster = self.clone();
        // One bounded call (REDIS_TIMEOUT), owned by the server's tracker.
        self.tasks.spawn(async move {
            let mut redis = cluster.redis.clone();
            let inv = cluster.release_invocation(&id, &token);
            let _: Result<i64, StoreDown> =
                cluster.call("release", inv.invoke_async(&mut redis)).await;
        });
    }

    /// Every member's record, sorted by member id.
    pub async fn members(&self) -> Result<Vec<MemberRecord>, StoreDown> {
        if !self.is_up() {
            return Err(StoreDown);
        }
        let mut redis = self.redis.clone();
        let keys: Vec<String> = self
            .call("members", async {
                let mut keys = Vec::new();
                let mut iter: redis::AsyncIter<String> =
                    redis.scan_match(presence::member_pattern()).await?;
                while let Some(k) = iter.next_item().await {
                    keys.push(k?);
                }
                Ok(keys)
            })
            .await?;
        if keys.is_empty() {
            return Ok(vec![]);
        }
        let mut redis = self.redis.clone();
        let raw: Vec<Option<String>> = self
            .call(
                "members",
                redis::cmd("MGET").arg(&keys).query_async(&mut redis),
            )
            .await?;
        let mut out: Vec<MemberRecord> = raw
            .into_iter()
            .flatten()
            .filter_map(|r| serde_json::from_str(&r).ok())
            .collect();
        out.sort_by(|a, b| a.member.cmp(&b.member));
        Ok(out)
    }

    /// The cluster's lines of `/metrics`.
    pub fn render_metrics(&self, out: &mut String) {
        let c = &self.counters;
        let gauges = [
            (
                "p2pnc_cluster_store_up",
                "Whether the cluster store (Redis) answered lately (1) or not (0).",
                u64::from(self.is_up()),
            ),
            (
                "p2pnc_cluster_store_rtt_microseconds",
                "Smoothed round-trip time to the cluster store.",
                self.redis_rtt_us.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, v) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        let counters = [
            (
                "p2pnc_cluster_cross_connects_total",
                "Connects brokered here toward agents another server holds.",
                &c.cross_connects,
            ),
            (
                "p2pnc_cluster_orders_routed_in_total",
                "Punch orders other servers routed to agents held here.",
                &c.orders_routed_in,
            ),
            (
                "p2pnc_cluster_store_outages_total",
                "Times the cluster store became unreachable.",
                &c.outages,
            ),
            (
                "p2pnc_cluster_registrations_refused_store_down_total",
                "Registrations refused because the cluster store was unreachable.",
                &c.refused_store_down,
            ),
            (
                "p2pnc_cluster_agents_lost_total",
                "Local agents dropped because another registration took their id.",
                &c.lost,
            ),
        ];
        for (name, help, v) in counters {
            let v = v.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        }
    }

    /// What the status page shows of the cluster.
    pub async fn status(&self) -> ClusterStatus {
        let members = self.members().await.ok();
        ClusterStatus {
            member: self.config.member.clone(),
            advertise: self.config.advertise.to_string(),
            store: redacted(&self.config.redis_url),
            store_up: self.is_up(),
            store_rtt_ms: self.redis_rtt_us.load(Ordering::Relaxed) as f64 / 1000.0,
            cross_connects: self.counters.cross_connects.load(Ordering::Relaxed),
            orders_routed_in: self.counters.orders_routed_in.load(Ordering::Relaxed),
            outages: self.counters.outages.load(Ordering::Relaxed),
            members,
        }
    }
}

/// The cluster on the status page.
#[derive(Debug, Serialize)]
pub(crate) struct ClusterStatus {
    pub member: String,
    pub advertise: String,
    /// The Redis URL without its password.
    pub store: String,
    pub store_up: bool,
    pub store_rtt_ms: f64,
    pub cross_connects: u64,
    pub orders_routed_in: u64,
    pub outages: u64,
    /// Every member (absent while the store is unreachable).
    pub members: Option<Vec<MemberRecord>>,
}

/// A Redis URL with its password hidden, for logs and the status page.
fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://…@{}", &url[..s], &url[at + 1..]),
        _ => url.to_string(),
    }
}

/// A registration's claim in the cluster; dropping it releases the id (if it is still this
/// registration's).
pub(super) struct ClaimGuard {
    cluster: Arc<Cluster>,
    id: ServiceId,
    token: String,
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        self.cluster
            .release(self.id.clone(), std::mem::take(&mut self.token));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_redis_password_stays_out_of_logs() {
        assert_eq!(
            redacted("redis://:pw@10.0.0.1:6379/0"),
            "redis://…@10.0.0.1:6379/0"
        );
        assert_eq!(redacted("redis://10.0.0.1:6379"), "redis://10.0.0.1:6379");
    }

    #[test]
    fn a_refresh_is_sent_in_batches_that_redis_answers_in_time() {
        assert_eq!(refresh_batches::<u32>(&[]), vec![&[] as &[u32]]);
        let held: Vec<usize> = (0..2 * REFRESH_BATCH + 1).collect();
        let batches = refresh_batches(&held);
        let sizes: Vec<usize> = batches.iter().map(|b| b.len()).collect();
        assert_eq!(sizes, [REFRESH_BATCH, REFRESH_BATCH, 1]);
        // Every presence once, in order.
        assert_eq!(batches.concat(), held);
        // A batch's claims (about 15 µs of Redis each) take a small part of the timeout.
        assert!(Duration::from_micros(15) * REFRESH_BATCH as u32 <= REDIS_TIMEOUT / 50);
    }

    #[test]
    fn claim_answers_are_read() {
        let w = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            presence::claim_answer(&w(&["ok", "", ""])),
            Ok(ClaimAnswer::Ok { replaced: None })
        );
        assert_eq!(
            presence::claim_answer(&w(&["ok", "m2", "t"])),
            Ok(ClaimAnswer::Ok {
                replaced: Some(("m2".into(), "t".into()))
            })
        );
        assert_eq!(
            presence::claim_answer(&w(&["reserved", "1500"])),
            Ok(ClaimAnswer::Reserved(1500))
        );
        assert!(presence::claim_answer(&w(&["what"])).is_err());
    }
}
