//! The punch engine: simultaneous open from one shared local port toward every candidate of
//! the peer, retried on a schedule, racing streams the peer opened toward us; the first stream
//! whose two ends prove they belong to the session wins and every other one is closed.
//!
//! Stream handshake (both ends write at once, so it costs half a round trip):
//! 1. each end writes its hello (`protocol::SessionKeys::hello`) as soon as the stream exists;
//! 2. the client, on the first stream whose agent hello verifies, writes one byte
//!    [`SELECT`] and uses that stream; it drops every other;
//! 3. the agent uses the first stream whose client hello verifies *and* that carries the
//!    selection byte; only then does it forward anything to the service.
//!
//! With [`EarlyData`], the client saves the round trip of waiting for the agent's hello: on the
//! first stream to the agent's public (or port-mapped) endpoint it writes its hello, the
//! selection byte and the early bytes at once, then checks the agent's hello before it hands
//! the stream out. Nothing the peer sent reaches the caller before that check, and the agent's
//! side is unchanged. If the check fails, the early bytes are sent again, after the selection
//! byte, on the next proven stream.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::control::ServerUrl;
pub use crate::protocol::SELECT;
use crate::protocol::{HELLO_LEN, PunchOrder, Role, SessionId, SessionKeys};
use crate::relay::RelayError;
use crate::{net, relay};
/// Default TTL of SYNs meant to open our own NAT only: passes our router (hop 1) and dies at
/// the next hop, so the peer's router never sees it (see `net::connect_from`).
pub const DEFAULT_LOW_TTL: u32 = 2;
/// Default time a punch may take before the attempt is given up.
pub const DEFAULT_PUNCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause after a failed attempt (refused, unreachable) before the next SYN to that candidate:
/// long enough that a router's RST does not turn the loop into a SYN flood, short enough that
/// with uneven latencies a later SYN still crosses the peer's.
const RETRY_MIN: Duration = Duration::from_millis(60);
const RETRY_MAX: Duration = Duration::from_millis(160);
/// How long a low-TTL first SYN may stay unanswered before a normal SYN replaces it: several
/// RTTs of a continental path, so a working low-TTL punch is never cut short.
const LOW_TTL_GRACE: Duration = Duration::from_millis(400);

/// Sockets the hard side of a birthday punch opens, and probes the easy side sends: with 256
/// mappings among ~64k ports, 1536 distinct probes hit one with probability
/// 1 - (1 - 256/64512)^1536, about 99.8 %.
pub const HARD_SOCKETS: usize = 256;
/// See [`HARD_SOCKETS`].
pub const EASY_PROBES: usize = 1536;
/// Probes are sent in batches of this many, one batch per [`PROBE_PACE`]: about 12 800 SYNs
/// per second, 120 ms for all of them.
const PROBE_BATCH: usize = 64;
const PROBE_PACE: Duration = Duration::from_millis(5);
/// Time the relay gets, after it is joined, to carry the handshake.
const RELAY_GRACE: Duration = Duration::from_secs(5);
/// Latest relay join a punch order can ask for: the server forgets a session 30 s after its
/// punch order, so a later join finds nothing; a larger `relay_after_ms` would only keep the
/// punch going (or, near `u64::MAX`, overflow the deadline).
pub const MAX_RELAY_AFTER: Duration = Duration::from_secs(30);

/// Birthday punching, for when one end's NAT has endpoint-dependent mapping.
#[derive(Debug, Clone)]
pub enum Birthday {
    /// Our NAT is endpoint-dependent: open `sockets` connections from fresh local ports toward
    /// `target` (the peer's public endpoint), their SYNs at `ttl` so they open our NAT without
    /// reaching the peer's router, and wait for one of the peer's probes to match.
    Hard {
        /// The peer's public endpoint.
        target: SocketAddr,
        /// How many sockets.
        sockets: usize,
        /// TTL of the SYNs (`None`: normal).
        ttl: Option<u32>,
    },
    /// The peer's NAT is endpoint-dependent: from our punch port, connect to `probes` distinct
    /// random ports of `ip` (the peer's public IP).
    Easy {
        /// The peer's public IP.
        ip: IpAddr,
        /// How many probes.
        probes: usize,
    },
}

/// Joining the server's relay as a fallback.
#[derive(Debug, Clone)]
pub struct RelayPlan {
    /// The server.
    pub server: ServerUrl,
    /// Its resolved address.
    pub server_addr: SocketAddr,
    /// The session to join.
    pub session: SessionId,
    /// Our end.
    pub role: Role,
    /// Join after this long unless a direct stream was proven first.
    pub after: Duration,
}

/// Bytes a client sends right behind its selection byte, before the agent's hello arrived (see
/// the module docs). The caller may keep pushing bytes while the punch runs (e.g. what a local
/// application already wrote); the engine takes what is there when it commits to a stream, and
/// whatever is still here afterwards is the caller's to send.
#[derive(Clone, Default)]
pub struct EarlyData {
    buf: Arc<Mutex<Vec<u8>>>,
}

impl fmt::Debug for EarlyData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EarlyData({} bytes)", self.len())
    }
}

impl EarlyData {
    /// An empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes to send.
    pub fn push(&self, bytes: &[u8]) {
        self.buf
            .lock()
            .expect("early data lock")
            .extend_from_slice(bytes);
    }

    /// Takes every byte not sent yet.
    pub fn take(&self) -> Vec<u8> {
        std::mem::take(&mut *self.buf.lock().expect("early data lock"))
    }

    /// Bytes waiting.
    pub fn len(&self) -> usize {
        self.buf.lock().expect("early data lock").len()
    }

    /// Whether no byte is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A client's commitment to one stream before the agent's hello (see [`EarlyData`]).
pub(crate) struct Commit {
    /// Endpoints worth committing to: the agent's public and port-mapped ones, never private
    /// addresses (they may belong to another host) nor birthday guesses.
    targets: Vec<SocketAddr>,
    early: EarlyData,
    /// Whether a stream holds the selection (a commitment waiting for the agent's hello, or
    /// the stream chosen), and bytes of a failed selection that must be sent again.
    state: Mutex<(bool, Vec<u8>)>,
}

impl Commit {
    /// Claims the selection for one stream unless another stream holds it: a commitment
    /// before the agent's hello, or a stream selected the normal way (which keeps the claim for
    /// good, so no handshake still running can commit after it). Returns the bytes to send
    /// after the selection byte; undo with [`Commit::fail`] when the stream fails.
    fn try_claim(&self) -> Option<Vec<u8>> {
        let mut state = self.state.lock().expect("commit lock");
        if state.0 {
            return None;
        }
        state.0 = true;
        let mut bytes = std::mem::take(&mut state.1);
        bytes.extend(self.early.take());
        Some(bytes)
    }

    /// The committed stream failed: its bytes must go out again on another stream.
    fn fail(&self, sent: Vec<u8>) {
        let mut state = self.state.lock().expect("commit lock");
        *state = (false, sent);
    }
}

/// A stream that reached the engine from outside: accepted on the punch port.
pub struct Inbound {
    /// The accepted stream.
    pub stream: TcpStream,
    /// The peer hello, when the listener already read it to find the session.
    pub hello: Option<[u8; HELLO_LEN]>,
}

/// How streams are proven to belong to the session.
#[derive(Debug, Clone)]
pub enum Proof {
    /// Hello exchange and selection byte (see the module docs), as `role`.
    Hello {
        /// Which end we are.
        role: Role,
        /// The session's keys.
        keys: SessionKeys,
    },
    /// No handshake (plain mode): the first stream from an expected address wins.
    Address,
}

/// What to punch.
#[derive(Debug, Clone)]
pub struct PunchPlan {
    /// Our shared local address (unspecified IP, punch port).
    pub local: SocketAddr,
    /// The peer's candidates, most likely first.
    pub targets: Vec<SocketAddr>,
    /// TTL of the first SYN to each candidate (see [`net::connect_from`]); `None` for normal.
    pub first_ttl: Option<u32>,
    /// Give up after this long.
    pub timeout: Duration,
    /// How streams are proven.
    pub proof: Proof,
    /// Birthday punching, when one end's NAT is endpoint-dependent.
    pub birthday: Option<Birthday>,
    /// The relay fallback, when the server offers one.
    pub relay: Option<RelayPlan>,
    /// The client's early data, and the endpoints it may be sent to before the agent's hello.
    pub early: Option<(EarlyData, Vec<SocketAddr>)>,
}

/// Where a plan comes from: one end's view of a punch order.
pub struct Order<'a> {
    /// The punch order from the server.
    pub punch: &'a PunchOrder,
    /// Our shared punch address.
    pub local: SocketAddr,
    /// Which end we are.
    pub role: Role,
    /// How streams are proven.
    pub proof: Proof,
    /// Punch timeout.
    pub timeout: Duration,
    /// TTL of our first SYNs (the agent's, and the hard side's birthday sockets).
    pub low_ttl: Option<u32>,
    /// The server, for the relay.
    pub server: &'a ServerUrl,
    /// The server's resolved address.
    pub server_addr: SocketAddr,
    /// The client's early data (see [`EarlyData`]); ignored for the agent.
    pub early: Option<EarlyData>,
}

impl PunchPlan {
    /// The plan that carries out a punch order, by its strategy.
    pub fn for_order(o: Order<'_>) -> PunchPlan {
        use crate::protocol::Strategy;
        let p = o.punch;
        let private = p
            .peer_private
            .iter()
            .copied()
            .filter(|a| *a != p.peer_public);
        // A port mapping on the peer's router takes connections from anywhere: first.
        let mut targets: Vec<SocketAddr> = p.peer_mapped.into_iter().collect();
        let mut birthday = None;
        match p.strategy {
            Strategy::BirthdayHard => {
                birthday = Some(Birthday::Hard {
                    target: p.peer_public,
                    sockets: HARD_SOCKETS,
                    ttl: o.low_ttl,
                })
            }
            Strategy::BirthdayEasy => {
                birthday = Some(Birthday::Easy {
                    ip: p.peer_public.ip(),
                    probes: EASY_PROBES,
                })
            }
            Strategy::RelayOnly | Strategy::Mapped => {}
            _ if targets.contains(&p.peer_public) => {}
            _ => targets.push(p.peer_public),
        }
        // Before private candidates are added: only public and mapped endpoints are trusted
        // with early data.
        let early = match (o.role, o.early) {
            (Role::Client, Some(early)) => Some((early, targets.clone())),
            _ => None,
        };
        targets.extend(private);
        PunchPlan {
            local: o.local,
            targets,
            first_ttl: match o.role {
                Role::Agent => o.low_ttl,
                Role::Client => None,
            },
            timeout: o.timeout,
            proof: o.proof,
            birthday,
            relay: p.relay_after_ms.map(|ms| RelayPlan {
                server: o.server.clone(),
                server_addr: o.server_addr,
                session: p.session,
                role: o.role,
                after: Duration::from_millis(ms).min(MAX_RELAY_AFTER),
            }),
            early,
        }
    }
}

impl PunchPlan {
    /// When a punch started at `started` gives up: after its timeout, or later when the relay
    /// is joined late.
    pub fn deadline(&self, started: Instant) -> Instant {
        let deadline = started + self.timeout;
        match &self.relay {
            Some(r) => deadline.max(started + r.after + RELAY_GRACE),
            None => deadline,
        }
    }
}

/// A stream that won the race.
#[derive(Debug)]
pub struct Punched {
    /// The stream, with any handshake consumed.
    pub stream: TcpStream,
    /// The peer's address on it (the server's, when relayed).
    pub peer: SocketAddr,
    /// Whether the stream runs through the server's relay.
    pub relayed: bool,
    /// Whether the client already wrote its selection byte (and early data) on it.
    selected: bool,
}

impl Punched {
    /// Which path the stream takes, given the peer's private candidates.
    pub fn path(&self, peer_private: &[SocketAddr]) -> crate::Path {
        if self.relayed {
            crate::Path::Relayed
        } else if peer_private.contains(&self.peer) {
            crate::Path::Lan
        } else {
            crate::Path::Direct
        }
    }
}

/// Why a punch failed: the last error met on each candidate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PunchFailure {
    /// Per candidate: the last error and how many attempts were made.
    pub attempts: BTreeMap<SocketAddr, (String, u32)>,
    /// Streams that connected but failed the handshake.
    pub rejected_streams: u32,
    /// How long was tried.
    pub waited: Duration,
    /// What birthday punching did, if it ran.
    pub birthday: Option<String>,
    /// Why the relay failed, if it was tried.
    pub relay: Option<String>,
}

impl fmt::Display for PunchFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "no stream within {:.1} s", self.waited.as_secs_f64())?;
        for (addr, (err, n)) in &self.attempts {
            write!(f, "; {addr}: {err} ({n} attempts)")?;
        }
        if let Some(b) = &self.birthday {
            write!(f, "; {b}")?;
        }
        if let Some(r) = &self.relay {
            write!(f, "; {r}")?;
        }
        if self.rejected_streams > 0 {
            write!(
                f,
                "; {} streams failed the session handshake",
                self.rejected_streams
            )?;
        }
        Ok(())
    }
}

enum Event {
    Connected(SocketAddr, TcpStream),
    Failed(SocketAddr, String),
}

/// Why a stream was not proven.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The peer's hello did not verify: another session, another secret, or not a peer.
    #[error("bad hello from {0}")]
    BadHello(SocketAddr),
    /// The client's hello verified but the next byte was not [`SELECT`].
    #[error("bad selection byte from {0}")]
    BadSelection(SocketAddr),
    /// Reading or writing the stream failed.
    #[error("{peer}: {source}")]
    Io {
        /// The peer's address.
        peer: SocketAddr,
        /// What failed.
        source: std::io::Error,
    },
    /// The deadline passed first.
    #[error("{0}: handshake timed out")]
    TimedOut(SocketAddr),
    /// The stream has no peer address (it closed at once).
    #[error("{0}")]
    NoPeer(std::io::Error),
    /// The client's selection could not be written.
    #[error("{0}")]
    Select(std::io::Error),
    /// Joining the relay failed.
    #[error("relay: {0}")]
    Relay(#[from] RelayError),
}

/// Runs the punch described by `plan`, taking extra streams from `inbound`, until one stream
/// is proven or the timeout passes. All other streams are closed when this returns.
///
/// `on_fired` is called once the first SYN to every candidate has left.
pub async fn run(
    plan: PunchPlan,
    mut inbound: mpsc::Receiver<Inbound>,
    on_fired: impl FnOnce(),
) -> Result<Punched, PunchFailure> {
    let started = Instant::now();
    let deadline = plan.deadline(started);
    let mut failure = PunchFailure::default();
    let commit = plan.early.clone().map(|(early, targets)| {
        Arc::new(Commit {
            targets,
            early,
            state: Mutex::new((false, Vec::new())),
        })
    });
    // Streams proven while a committed one waits for the agent's hello.
    let mut standby: Vec<Punched> = Vec::new();
    let mut dialers: JoinSet<()> = JoinSet::new();
    let mut handshakes: JoinSet<Result<Punched, HandshakeError>> = JoinSet::new();
    let (event_tx, mut events) = mpsc::channel::<Event>(plan.targets.len().max(1) * 4 + 16);

    if let Some(b) = plan.birthday.clone() {
        failure.birthday = Some(match &b {
            Birthday::Hard {
                target, sockets, ..
            } => {
                format!("birthday punch: {sockets} sockets toward {target}, none matched")
            }
            Birthday::Easy { ip, probes } => {
                format!("birthday punch: {probes} probes to {ip}, none matched")
            }
        });
        dialers.spawn(birthday(b, plan.local, deadline, event_tx.clone()));
    }

    for &target in &plan.targets {
        // Fire the first SYN synchronously so every candidate is hit at the same moment.
        let first = net::start_connect(plan.local, target, plan.first_ttl);
        let tx = event_tx.clone();
        let low_ttl = plan.first_ttl.is_some();
        dialers.spawn(dial(plan.local, target, first, low_ttl, deadline, tx));
    }
    drop(event_tx);
    on_fired();

    let mut inbound_open = true;
    let relay_at = started + plan.relay.as_ref().map_or(Duration::ZERO, |r| r.after);
    let mut relay_pending = plan.relay.is_some();
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => break,
            _ = tokio::time::sleep_until(relay_at), if relay_pending => {
                relay_pending = false;
                let r = plan.relay.clone().expect("relay planned");
                let proof = plan.proof.clone();
                handshakes.spawn(async move {
                    let stream = relay::join(&r.server, r.server_addr, &r.session, r.role).await?;
                    let mut p = handshake(stream, None, proof, deadline, None).await?;
                    p.relayed = true;
                    Ok(p)
                });
            }
            Some(ev) = events.recv() => match ev {
                Event::Connected(target, stream) => {
                    let (proof, commit) = (plan.proof.clone(), commit.clone());
                    handshakes.spawn(handshake(stream, None, proof, deadline, commit));
                    failure.attempts.remove(&target);
                }
                Event::Failed(target, err) => {
                    let e = failure.attempts.entry(target).or_insert((String::new(), 0));
                    e.0 = err;
                    e.1 += 1;
                }
            },
            got = inbound.recv(), if inbound_open => match got {
                Some(i) => {
                    let (proof, commit) = (plan.proof.clone(), commit.clone());
                    handshakes.spawn(handshake(i.stream, i.hello, proof, deadline, commit));
                }
                None => inbound_open = false,
            },
            Some(done) = handshakes.join_next() => {
                match done {
                    Ok(Ok(punched)) if punched.selected => return Ok(live(punched)),
                    Ok(Ok(punched)) => standby.push(punched),
                    Ok(Err(why @ HandshakeError::Relay(_))) => failure.relay = Some(why.to_string()),
                    Ok(Err(why)) => {
                        tracing::debug!("punched stream rejected: {why}");
                        failure.rejected_streams += 1;
                    }
                    Err(e) => tracing::warn!("handshake task failed: {e}"),
                }
                // A proven stream is used unless a committed one may still win.
                while !standby.is_empty() {
                    let bytes = match &commit {
                        None => Vec::new(),
                        Some(c) => match c.try_claim() {
                            Some(bytes) => bytes,
                            None => break, // a commitment is pending
                        },
                    };
                    let punched = standby.remove(0);
                    match select(punched, &plan.proof, &bytes).await {
                        Ok(p) => return Ok(live(p)),
                        Err(why) => {
                            tracing::debug!("selected stream failed: {why}");
                            failure.rejected_streams += 1;
                            if let Some(c) = &commit {
                                c.fail(bytes);
                            }
                        }
                    }
                }
            }
        }
    }
    failure.waited = started.elapsed();
    Err(failure)
}

/// The winning stream, watched for a dead path (see [`net::watch_liveness`]).
fn live(punched: Punched) -> Punched {
    if let Err(e) = net::watch_liveness(&punched.stream) {
        tracing::debug!("keepalive on the stream: {e}");
    }
    punched
}

/// The client selects exactly one stream: the first proven one, unless it committed to one
/// before (see [`EarlyData`]).
async fn select(
    mut punched: Punched,
    proof: &Proof,
    early: &[u8],
) -> Result<Punched, HandshakeError> {
    if let Proof::Hello {
        role: Role::Client, ..
    } = proof
    {
        let mut msg = vec![SELECT];
        msg.extend_from_slice(early);
        punched
            .stream
            .write_all(&msg)
            .await
            .map_err(HandshakeError::Select)?;
    }
    Ok(punched)
}

/// Runs the hard or easy side of a birthday punch; reports only connections.
async fn birthday(b: Birthday, local: SocketAddr, deadline: Instant, events: mpsc::Sender<Event>) {
    net::raise_fd_limit();
    let mut waits = JoinSet::new();
    let wait = |stream: TcpStream, target: SocketAddr, events: mpsc::Sender<Event>| async move {
        let left = deadline.saturating_duration_since(Instant::now());
        if let Ok(s) = net::finish_connect(stream, left).await {
            let _ = events.send(Event::Connected(target, s)).await;
        }
    };
    match b {
        Birthday::Hard {
            target,
            sockets,
            ttl,
        } => {
            for _ in 0..sockets {
                match net::start_connect(net::any_addr(&target, 0), target, ttl) {
                    Ok(s) => {
                        waits.spawn(wait(s, target, events.clone()));
                    }
                    Err(e) => {
                        tracing::warn!("birthday socket failed: {e}");
                        break;
                    }
                }
            }
        }
        Birthday::Easy { ip, probes } => {
            let ports =
                rand::seq::index::sample(&mut rand::rng(), 65536 - 1024, probes.min(64_000));
            let ports: Vec<u16> = ports.into_iter().map(|p| (p + 1024) as u16).collect();
            for batch in ports.chunks(PROBE_BATCH) {
                for &port in batch {
                    let target = SocketAddr::new(ip, port);
                    match net::start_connect(local, target, None) {
                        Ok(s) => {
                            waits.spawn(wait(s, target, events.clone()));
                        }
                        Err(e) => tracing::debug!("probe to {target}: {e}"),
                    }
                }
                if Instant::now() >= deadline {
                    break;
                }
                tokio::time::sleep(PROBE_PACE).await;
            }
        }
    }
    while waits.join_next().await.is_some() {}
}

/// Keeps one connect in flight toward `target` until one connects or the deadline passes.
async fn dial(
    local: SocketAddr,
    target: SocketAddr,
    first: std::io::Result<TcpStream>,
    low_ttl: bool,
    deadline: Instant,
    events: mpsc::Sender<Event>,
) {
    let mut pending = first;
    // A low-TTL first SYN that dies before leaving our own NAT (the NAT is more than one hop
    // away: a container, a carrier-grade NAT) opens nothing; give it a short grace, then
    // re-arm with a normal TTL.
    let mut wait_cap = if low_ttl {
        LOW_TTL_GRACE
    } else {
        Duration::MAX
    };
    loop {
        let result = match pending {
            Ok(stream) => {
                let left = deadline.saturating_duration_since(Instant::now());
                net::finish_connect(stream, left.min(wait_cap)).await
            }
            Err(e) => Err(e),
        };
        wait_cap = Duration::MAX;
        match result {
            Ok(stream) => {
                let _ = events.send(Event::Connected(target, stream)).await;
                return;
            }
            Err(e) => {
                let _ = events.send(Event::Failed(target, short_error(&e))).await;
            }
        }
        let pause = rand::random_range(RETRY_MIN..RETRY_MAX);
        if Instant::now() + pause >= deadline {
            return;
        }
        tokio::time::sleep(pause).await;
        pending = net::start_connect(local, target, None);
    }
}

fn short_error(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
        std::io::ErrorKind::TimedOut => "no answer".into(),
        _ => e.to_string(),
    }
}

/// Proves one stream. The deadline bounds every read. A client with early data commits to the
/// stream at once when it leads to one of the commit's targets and no other commitment is
/// pending.
pub(crate) async fn handshake(
    mut stream: TcpStream,
    peer_hello: Option<[u8; HELLO_LEN]>,
    proof: Proof,
    deadline: Instant,
    commit: Option<Arc<Commit>>,
) -> Result<Punched, HandshakeError> {
    let peer = stream.peer_addr().map_err(HandshakeError::NoPeer)?;
    let (role, keys) = match proof {
        Proof::Address => {
            return Ok(Punched {
                stream,
                peer,
                relayed: false,
                selected: false,
            });
        }
        Proof::Hello { role, keys } => (role, keys),
    };
    let commit = commit.filter(|c| role == Role::Client && c.targets.contains(&peer));
    let mut committed: Option<Vec<u8>> = None;
    let work = async {
        let mut first = keys.hello(role).to_vec();
        if let Some(bytes) = commit.as_ref().and_then(|c| c.try_claim()) {
            first.push(SELECT);
            first.extend_from_slice(&bytes);
            committed = Some(bytes);
        }
        stream.write_all(&first).await?;
        let hello = match peer_hello {
            Some(h) => h,
            None => {
                let mut h = [0u8; HELLO_LEN];
                stream.read_exact(&mut h).await?;
                h
            }
        };
        if !keys.verify_hello(role.peer(), &hello) {
            return Ok(Err(HandshakeError::BadHello(peer)));
        }
        // The agent waits for the client's choice; the client makes it in `run`.
        if role == Role::Agent && stream.read_u8().await? != SELECT {
            return Ok(Err(HandshakeError::BadSelection(peer)));
        }
        Ok::<_, std::io::Error>(Ok(()))
    };
    let result = match tokio::time::timeout_at(deadline, work).await {
        Ok(Ok(Ok(()))) => Ok(()),
        Ok(Ok(Err(why))) => Err(why),
        Ok(Err(source)) => Err(HandshakeError::Io { peer, source }),
        Err(_) => Err(HandshakeError::TimedOut(peer)),
    };
    let selected = committed.is_some();
    if let (Err(_), Some(c), Some(sent)) = (&result, &commit, committed) {
        c.fail(sent);
    }
    result.map(|()| Punched {
        stream,
        peer,
        relayed: false,
        selected,
    })
}

/// Reads a hello from a freshly accepted stream, within `timeout`.
pub async fn read_hello(
    stream: &mut TcpStream,
    timeout: Duration,
) -> std::io::Result<[u8; HELLO_LEN]> {
    let mut h = [0u8; HELLO_LEN];
    match tokio::time::timeout(timeout, stream.read_exact(&mut h)).await {
        Ok(r) => r.map(|_| h),
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "no hello in time",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::shared_listener;

    use crate::protocol::SessionKey;

    const SESSION: SessionId = SessionId::from_bytes([0x11; 16]);
    const KEY: SessionKey = SessionKey::from_bytes([0x22; 32]);

    fn keys() -> SessionKeys {
        SessionKeys::derive(SESSION, &KEY, Some("pw"))
    }

    /// Two engines on loopback, each with its own listener feeding its inbound channel.
    async fn pair(
        client_keys: SessionKeys,
        agent_keys: SessionKeys,
    ) -> (Result<Punched, PunchFailure>, Result<Punched, PunchFailure>) {
        let la = shared_listener("127.0.0.1:0".parse().unwrap()).unwrap();
        let lb = shared_listener("127.0.0.1:0".parse().unwrap()).unwrap();
        let (a, b) = (la.local_addr().unwrap(), lb.local_addr().unwrap());
        let feed = |l: tokio::net::TcpListener| {
            let (tx, rx) = mpsc::channel(8);
            let task = tokio::spawn(async move {
                while let Ok((stream, _)) = l.accept().await {
                    let _ = tx
                        .send(Inbound {
                            stream,
                            hello: None,
                        })
                        .await;
                }
            });
            (rx, task)
        };
        let (ra, ta) = feed(la);
        let (rb, tb) = feed(lb);
        let plan = |local, target, role, keys| PunchPlan {
            local,
            targets: vec![target],
            first_ttl: None,
            timeout: Duration::from_secs(2),
            proof: Proof::Hello { role, keys },
            birthday: None,
            relay: None,
            early: None,
        };
        let out = tokio::join!(
            run(plan(a, b, Role::Client, client_keys), ra, || {}),
            run(plan(b, a, Role::Agent, agent_keys), rb, || {}),
        );
        ta.abort();
        tb.abort();
        out
    }

    #[tokio::test]
    async fn both_ends_agree_on_one_proven_stream() {
        let (c, a) = pair(keys(), keys()).await;
        let (mut c, mut a) = (c.unwrap(), a.unwrap());
        c.stream.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        a.stream.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        assert_eq!(c.peer, a.stream.local_addr().unwrap());
    }

    #[tokio::test]
    async fn a_wrong_secret_never_yields_a_stream() {
        let wrong = SessionKeys::derive(SESSION, &KEY, Some("x"));
        let (c, a) = pair(wrong, keys()).await;
        let (c, a) = (c.unwrap_err(), a.unwrap_err());
        assert!(c.rejected_streams >= 1, "{c}");
        assert!(
            a.rejected_streams >= 1 || a.waited >= Duration::from_secs(2),
            "{a}"
        );
    }

    fn order_plan(p: &PunchOrder, role: Role) -> PunchPlan {
        let server = ServerUrl::parse("http://203.0.113.10:50300").unwrap();
        PunchPlan::for_order(Order {
            punch: p,
            local: "0.0.0.0:4000".parse().unwrap(),
            role,
            proof: Proof::Address,
            timeout: Duration::from_secs(1),
            low_ttl: Some(2),
            server: &server,
            server_addr: "203.0.113.10:50300".parse().unwrap(),
            early: Some(EarlyData::new()),
        })
    }

    #[test]
    fn a_peer_mapping_is_the_first_target_and_a_mapped_agent_sends_nothing_outward() {
        use crate::protocol::{Auth, Mapping, Mode, Strategy};
        let public: SocketAddr = "198.51.100.10:40000".parse().unwrap();
        let mapped: SocketAddr = "198.51.100.10:40001".parse().unwrap();
        let lan: SocketAddr = "10.0.1.2:40000".parse().unwrap();
        let to_client = PunchOrder {
            session: SessionId::from_bytes([0x0f; 16]),
            key: SessionKey::from_bytes([0xa5; 32]),
            peer_public: public,
            peer_private: vec![lan],
            you: "192.0.2.20:51000".parse().unwrap(),
            mode: Mode::Punch,
            auth: Auth::Secret,
            nonce: None,
            proof: None,
            strategy: Strategy::Simultaneous,
            your_mapping: Mapping::EndpointDependent,
            peer_mapping: Mapping::EndpointDependent,
            relay_after_ms: None,
            peer_mapped: Some(mapped),
        };
        let plan = order_plan(&to_client, Role::Client);
        assert_eq!(plan.targets, vec![mapped, public, lan]);
        let (_, commit_to) = plan.early.as_ref().expect("the client may send early data");
        assert_eq!(
            commit_to,
            &vec![mapped, public],
            "never to a private address"
        );
        assert!(plan.birthday.is_none());
        // The mapping is the public endpoint itself (a router that preserved the port).
        let same = PunchOrder {
            peer_mapped: Some(public),
            ..to_client.clone()
        };
        assert_eq!(order_plan(&same, Role::Client).targets, vec![public, lan]);
        // Without a mapping: as before.
        let plain = PunchOrder {
            peer_mapped: None,
            ..to_client.clone()
        };
        assert_eq!(order_plan(&plain, Role::Client).targets, vec![public, lan]);
        // The agent with a mapping waits for the client: only LAN candidates.
        let to_agent = PunchOrder {
            strategy: Strategy::Mapped,
            peer_mapped: None,
            ..to_client
        };
        let plan = order_plan(&to_agent, Role::Agent);
        assert_eq!(plan.targets, vec![lan]);
        assert!(plan.birthday.is_none() && plan.relay.is_none() && plan.early.is_none());
    }

    #[test]
    fn a_late_relay_in_an_order_is_capped_and_the_deadline_stays_near() {
        use crate::protocol::{self, ServerToClient};
        // From a faulty or hostile server, such an order overflowed the deadline (a panic).
        let text = r#"{"type":"punch","session":"0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f",
            "key":"a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5",
            "peer_public":"198.51.100.2:40000","you":"198.51.100.3:51000","mode":"punch",
            "auth":"secret","relay_after_ms":18446744073709551615}"#;
        let Ok(ServerToClient::Punch(p)) = protocol::decode::<ServerToClient>(text) else {
            panic!("a punch order");
        };
        for role in [Role::Client, Role::Agent] {
            let plan = order_plan(&p, role);
            assert_eq!(plan.relay.as_ref().unwrap().after, MAX_RELAY_AFTER);
            let started = Instant::now();
            assert_eq!(
                plan.deadline(started),
                started + MAX_RELAY_AFTER + RELAY_GRACE
            );
        }
    }

    #[tokio::test]
    async fn unreachable_candidate_fails_with_its_error_by_the_deadline() {
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = closed.local_addr().unwrap();
        drop(closed);
        let (_tx, rx) = mpsc::channel(1);
        let plan = PunchPlan {
            local: "127.0.0.1:0".parse().unwrap(),
            targets: vec![target],
            first_ttl: None,
            timeout: Duration::from_millis(600),
            proof: Proof::Address,
            birthday: None,
            relay: None,
            early: None,
        };
        let err = run(plan, rx, || {}).await.unwrap_err();
        let (why, n) = &err.attempts[&target];
        assert_eq!(why, "connection refused");
        assert!(*n >= 2, "retried: {err}");
        assert!(err.to_string().contains("connection refused"), "{err}");
    }

    /// A client with early data and two commit targets: `first` (tried first) and the real
    /// agent's punch port. Returns the client's stream and what the agent read after the
    /// punch: the early bytes, then "+late".
    async fn early_to(first: Option<SocketAddr>) -> (Punched, Vec<u8>) {
        let la = shared_listener("127.0.0.1:0".parse().unwrap()).unwrap();
        let agent_addr = la.local_addr().unwrap();
        let (tx, rx) = mpsc::channel(8);
        let feeder = tokio::spawn(async move {
            while let Ok((stream, _)) = la.accept().await {
                let _ = tx
                    .send(Inbound {
                        stream,
                        hello: None,
                    })
                    .await;
            }
        });
        let early = EarlyData::new();
        early.push(b"early bytes");
        let targets: Vec<SocketAddr> = first.into_iter().chain([agent_addr]).collect();
        let client = PunchPlan {
            local: "127.0.0.1:0".parse().unwrap(),
            targets: targets.clone(),
            first_ttl: None,
            timeout: Duration::from_secs(3),
            proof: Proof::Hello {
                role: Role::Client,
                keys: keys(),
            },
            birthday: None,
            relay: None,
            early: Some((early.clone(), targets)),
        };
        let (_none_tx, none) = mpsc::channel(1);
        let agent = PunchPlan {
            local: agent_addr,
            targets: vec![],
            first_ttl: None,
            timeout: Duration::from_secs(3),
            proof: Proof::Hello {
                role: Role::Agent,
                keys: keys(),
            },
            birthday: None,
            relay: None,
            early: None,
        };
        let (c, a) = tokio::join!(run(client, none, || {}), run(agent, rx, || {}));
        feeder.abort();
        let (mut c, mut a) = (c.unwrap(), a.unwrap());
        assert!(early.is_empty(), "the engine took the early bytes");
        c.stream.write_all(b"+late").await.unwrap();
        c.stream.shutdown().await.unwrap();
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(3), a.stream.read_to_end(&mut got))
            .await
            .unwrap()
            .unwrap();
        (c, got)
    }

    #[tokio::test]
    async fn early_data_leaves_with_the_selection_and_arrives_once_in_order() {
        let (c, got) = early_to(None).await;
        assert!(c.selected, "committed before the agent's hello");
        assert_eq!(got, b"early bytes+late");
    }

    #[tokio::test]
    async fn early_data_sent_to_an_impostor_is_sent_again_to_the_real_agent() {
        // Something else answers at the first target: it reads whatever comes and answers
        // with a hello that is not the agent's.
        let impostor = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let impostor_addr = impostor.local_addr().unwrap();
        let seen = tokio::spawn(async move {
            let (mut s, _) = impostor.accept().await.unwrap();
            s.write_all(&[0x42; HELLO_LEN]).await.unwrap();
            let mut got = vec![0u8; HELLO_LEN + 1 + 11];
            let _ = s.read_exact(&mut got).await;
            got
        });
        let (c, got) = early_to(Some(impostor_addr)).await;
        assert_ne!(
            c.peer, impostor_addr,
            "the impostor's stream is never handed out"
        );
        assert_eq!(
            got, b"early bytes+late",
            "the agent gets every byte exactly once"
        );
        // Whether the impostor got the early bytes depends on which stream connected first;
        // if it did, they followed a selection byte and the client's hello only.
        let impostor_got = seen.await.unwrap();
        if impostor_got[HELLO_LEN] == SELECT {
            assert_eq!(&impostor_got[HELLO_LEN + 1..], b"early bytes");
        }
    }
}
