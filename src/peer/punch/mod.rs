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

mod birthday;
mod dial;
mod early;
mod handshake;
mod plan;

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinError, JoinSet};
use tokio::time::Instant;

use self::early::Commit;
pub use self::early::EarlyData;
use self::handshake::Proven;
pub(crate) use self::handshake::handshake;
pub use self::handshake::{HandshakeError, read_head};
use self::plan::Birthday;
pub(crate) use self::plan::{
    ByFamily, Endpoint, Proof, PunchPlan, StreamKeys, StreamSettings, plan, strategy_used,
};
pub use self::plan::{PunchOptions, PunchTtl};
use crate::net;
use crate::peer::relay;
use crate::peer::stream::PeerStream;
use crate::protocol::ClientHead;

/// Streams taken from the punch port whose handshake may run at once in one session; a newer
/// one closes the oldest still unproven. Real peers open a few; more are strays or a flood.
pub(crate) const MAX_INBOUND_HANDSHAKES: usize = 16;

/// A stream that reached the engine from outside: accepted on the punch port.
pub(crate) struct Inbound {
    /// The accepted stream.
    pub stream: TcpStream,
    /// The client's clear head, when the listener already read it to find the session.
    pub head: Option<ClientHead>,
}

/// A stream whose handshake completed.
#[derive(Debug)]
pub(crate) struct Punched {
    proven: Proven,
    /// The peer's address on it (the server's, when relayed).
    peer: SocketAddr,
    /// Whether the stream runs through the server's relay.
    relayed: bool,
    /// Whether the stream is selected: the agent's always are (it saw the client's choice);
    /// a client's when it committed its early data to it.
    selected: bool,
}

/// The stream that won the race.
#[derive(Debug)]
pub(crate) struct Chosen {
    /// The stream, its handshake done.
    pub stream: PeerStream,
    /// The peer's address on it (the server's, when relayed).
    pub peer: SocketAddr,
    /// Whether the stream runs through the server's relay.
    pub relayed: bool,
    /// `None`: a plain stream. `Some(kept)`: a warm path (the client asked for one, and the
    /// stream carries a multiplexer); `kept` when the agent keeps it open for more streams.
    pub warm: Option<bool>,
}

impl Chosen {
    /// Which path the stream takes, given the peer's private candidates.
    pub(crate) fn path(&self, peer_private: &[SocketAddr]) -> crate::Path {
        let local = self.stream.tcp().and_then(|t| t.local_addr().ok());
        path_of(self.relayed, local, self.peer, peer_private)
    }
}

/// The path of a stream from `local` to `peer`: LAN when both of its ends are private
/// addresses, the peer's one of its private candidates. Both ends of one stream see the same
/// two addresses (no NAT between them on a LAN), so they name the same path: a client that
/// reached the agent's public endpoint from a private source address (the agent's host itself,
/// say) is direct on both ends, not direct on one and LAN on the other.
fn path_of(
    relayed: bool,
    local: Option<SocketAddr>,
    peer: SocketAddr,
    peer_private: &[SocketAddr],
) -> crate::Path {
    let private_local = local.is_some_and(|l| {
        let ip = l.ip().to_canonical();
        !ip.is_loopback()
            && match ip {
                std::net::IpAddr::V4(v4) => !v4.is_link_local(),
                std::net::IpAddr::V6(v6) => !v6.is_unicast_link_local(),
            }
    });
    let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
    if relayed {
        crate::Path::Relayed
    } else if private_local && peer_private.contains(&peer) {
        crate::Path::Lan
    } else {
        crate::Path::Direct
    }
}

/// Why a punch failed: the last error met on each candidate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PunchFailure {
    /// Per candidate: the last error and how many attempts were made.
    pub attempts: BTreeMap<SocketAddr, (String, u32)>,
    /// Streams that connected but failed the handshake.
    pub rejected_streams: u32,
    /// Of those, streams whose peer answered but could not prove the session (another
    /// secret, another key, an impostor).
    pub unproven: u32,
    /// How long was tried.
    pub waited: Duration,
    /// What birthday punching did, if it ran.
    pub birthday: Option<String>,
    /// Why the relay failed, if it was tried.
    pub relay: Option<String>,
    /// The public address both ends are behind, when they share one.
    pub shared_public: Option<std::net::IpAddr>,
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
        if let Some(ip) = self.shared_public {
            write!(
                f,
                "; both ends are behind the same public address {ip} (one NAT in front of both, \
                 such as a carrier-grade NAT): their public endpoints meet only if that NAT \
                 hairpins, and this one does not seem to"
            )?;
        }
        Ok(())
    }
}

enum Event {
    Connected(SocketAddr, TcpStream),
    Failed(SocketAddr, String),
}

/// The state of one punch while it runs.
struct Race {
    plan: PunchPlan,
    deadline: Instant,
    failure: PunchFailure,
    commit: Option<Arc<Commit>>,
    /// Streams proven while a committed one waits for the agent's hello.
    standby: Vec<Punched>,
    handshakes: JoinSet<Result<Punched, HandshakeError>>,
    /// Handshakes of streams taken from the punch port, oldest first.
    inbound: VecDeque<AbortHandle>,
}

/// Runs the punch described by `plan`, taking extra streams from `inbound`, until one stream
/// is proven or the timeout passes. All other streams are closed when this returns.
///
/// `on_fired` is called once the first SYN to every candidate has left.
pub(crate) async fn run(
    plan: PunchPlan,
    mut inbound: mpsc::Receiver<Inbound>,
    on_fired: impl FnOnce(),
) -> Result<Chosen, PunchFailure> {
    let started = Instant::now();
    let relay_at = started + plan.relay.as_ref().map_or(Duration::ZERO, |r| r.after);
    let mut relay_pending = plan.relay.is_some();
    let mut race = Race::new(plan, started);
    let mut dialers: JoinSet<()> = JoinSet::new();
    let mut events = race.fire(&mut dialers);
    on_fired();
    let mut inbound_open = true;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(race.deadline) => break,
            _ = tokio::time::sleep_until(relay_at), if relay_pending => {
                relay_pending = false;
                race.join_relay();
            }
            Some(ev) = events.recv() => race.event(ev),
            got = inbound.recv(), if inbound_open => match got {
                Some(i) => race.prove_inbound(i.stream, i.head),
                None => inbound_open = false,
            },
            Some(done) = race.handshakes.join_next_with_id() => {
                let done = race.finished(done);
                if let Some(winner) = race.proven(done).await {
                    return Ok(live(winner));
                }
            }
        }
    }
    race.failure.waited = started.elapsed();
    Err(race.failure)
}

impl Race {
    fn new(plan: PunchPlan, started: Instant) -> Self {
        let commit = plan
            .early
            .clone()
            .map(|(early, targets)| Arc::new(Commit::new(early, targets)));
        Race {
            deadline: plan.deadline(started),
            failure: PunchFailure {
                shared_public: plan.shared_public,
                ..PunchFailure::default()
            },
            plan,
            commit,
            standby: Vec::new(),
            handshakes: JoinSet::new(),
            inbound: VecDeque::new(),
        }
    }

    /// Starts the birthday punch and a dialer per candidate on `dialers`, the first SYN to
    /// every candidate leaving now (IPv4 ones after the IPv6 head start, when there are both);
    /// their connections arrive on the returned channel.
    fn fire(&mut self, dialers: &mut JoinSet<()>) -> mpsc::Receiver<Event> {
        let plan = &self.plan;
        let deadline = self.deadline;
        let (event_tx, events) = mpsc::channel::<Event>(plan.targets.len().max(1) * 4 + 16);
        if let Some(b) = plan.birthday.clone()
            && let Some(local) = plan.local_for(&b.family())
        {
            self.failure.birthday = Some(match &b {
                Birthday::Hard {
                    target, sockets, ..
                } => {
                    format!("birthday punch: {sockets} sockets toward {target}, none matched")
                }
                Birthday::Easy { ip, probes } => {
                    format!("birthday punch: {probes} probes to {ip}, none matched")
                }
            });
            let delay = plan.delay_for(&b.family());
            let tx = event_tx.clone();
            dialers.spawn(async move {
                tokio::time::sleep(delay).await;
                birthday::birthday(b, local, deadline, tx).await
            });
        }
        for &target in &plan.targets {
            let Some(local) = plan.local_for(&target) else {
                continue;
            };
            let ttl = *plan.first_ttl.of(&target);
            let tx = event_tx.clone();
            let delay = plan.delay_for(&target);
            if delay.is_zero() {
                // Fire the first SYN synchronously so every candidate is hit at the same moment.
                let first = net::start_connect(local, target, ttl);
                dialers.spawn(dial::dial(
                    local,
                    target,
                    first,
                    ttl.is_some(),
                    deadline,
                    tx,
                ));
            } else {
                dialers.spawn(async move {
                    tokio::time::sleep(delay).await;
                    let first = net::start_connect(local, target, ttl);
                    dial::dial(local, target, first, ttl.is_some(), deadline, tx).await
                });
            }
        }
        events
    }

    /// Joins the relay and runs the handshake over it.
    fn join_relay(&mut self) {
        let r = self.plan.relay.clone().expect("relay planned");
        let (proof, deadline) = (self.plan.proof.clone(), self.deadline);
        self.handshakes.spawn(async move {
            let stream =
                relay::join(&r.server, r.server_addr, &r.session, r.role, &r.ticket).await?;
            let mut p = handshake(stream, None, proof, deadline, None).await?;
            p.relayed = true;
            Ok(p)
        });
    }

    /// A dialer's news: a stream to prove, or a failed attempt to remember.
    fn event(&mut self, ev: Event) {
        match ev {
            Event::Connected(target, stream) => {
                self.prove(stream, None);
                self.failure.attempts.remove(&target);
            }
            Event::Failed(target, err) => {
                let e = self
                    .failure
                    .attempts
                    .entry(target)
                    .or_insert((String::new(), 0));
                e.0 = err;
                e.1 += 1;
            }
        }
    }

    /// Runs the handshake on a stream (the client's head already read, for some accepted
    /// ones).
    fn prove(&mut self, stream: TcpStream, head: Option<ClientHead>) {
        let (proof, commit) = (self.plan.proof.clone(), self.commit.clone());
        self.handshakes
            .spawn(handshake(stream, head, proof, self.deadline, commit));
    }

    /// Runs the handshake on a stream taken from the punch port, closing the oldest such
    /// stream still unproven when [`MAX_INBOUND_HANDSHAKES`] are under way: a flood of
    /// connections to the punch port holds a bounded number of sockets.
    fn prove_inbound(&mut self, stream: TcpStream, head: Option<ClientHead>) {
        let (proof, commit) = (self.plan.proof.clone(), self.commit.clone());
        let handle = self
            .handshakes
            .spawn(handshake(stream, head, proof, self.deadline, commit));
        self.inbound.push_back(handle);
        if self.inbound.len() > MAX_INBOUND_HANDSHAKES
            && let Some(oldest) = self.inbound.pop_front()
        {
            tracing::debug!("too many streams from the punch port at once: closing the oldest");
            oldest.abort();
        }
    }

    /// A handshake task ended: it is no longer under way.
    fn finished(
        &mut self,
        done: Result<(tokio::task::Id, Result<Punched, HandshakeError>), JoinError>,
    ) -> Result<Result<Punched, HandshakeError>, JoinError> {
        let id = match &done {
            Ok((id, _)) => *id,
            Err(e) => e.id(),
        };
        self.inbound.retain(|h| h.id() != id);
        done.map(|(_, r)| r)
    }

    /// A handshake ended; returns the winning stream if there is one now. A proven stream is
    /// used unless a committed one may still win.
    async fn proven(
        &mut self,
        done: Result<Result<Punched, HandshakeError>, JoinError>,
    ) -> Option<Chosen> {
        match done {
            Ok(Ok(punched)) if punched.selected => match handshake::select(punched, &[]).await {
                Ok(chosen) => return Some(chosen),
                Err(why) => {
                    tracing::debug!("selected stream failed: {why}");
                    self.failure.rejected_streams += 1;
                }
            },
            Ok(Ok(punched)) => self.standby.push(punched),
            Ok(Err(why @ HandshakeError::Relay(_))) => self.failure.relay = Some(why.to_string()),
            Ok(Err(why)) => {
                tracing::debug!("punched stream rejected: {why}");
                self.failure.rejected_streams += 1;
                if matches!(why, HandshakeError::Unproven { .. }) {
                    self.failure.unproven += 1;
                }
            }
            Err(e) if e.is_cancelled() => {}
            Err(e) => tracing::warn!("handshake task failed: {e}"),
        }
        while !self.standby.is_empty() {
            let bytes = match &self.commit {
                None => Vec::new(),
                Some(c) => match c.try_claim() {
                    Some(bytes) => bytes,
                    None => break, // a commitment is pending
                },
            };
            let punched = self.standby.remove(0);
            match handshake::select(punched, &bytes).await {
                Ok(chosen) => return Some(chosen),
                Err(why) => {
                    tracing::debug!("selected stream failed: {why}");
                    self.failure.rejected_streams += 1;
                    if let Some(c) = &self.commit {
                        c.fail(bytes);
                    }
                }
            }
        }
        None
    }
}

/// The winning stream, watched for a dead path (see [`net::watch_liveness`]).
fn live(chosen: Chosen) -> Chosen {
    if let Some(tcp) = chosen.stream.tcp()
        && let Err(e) = net::watch_liveness(tcp)
    {
        tracing::debug!("keepalive on the stream: {e}");
    }
    chosen
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[test]
    fn both_ends_of_a_stream_name_the_same_path() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        let (client_lan, agent_lan) = (a("192.0.2.2:40001"), a("192.0.2.2:40002"));
        // The client on the agent's host reaches the agent's public endpoint (127.0.0.1 as the
        // server saw it) from its private address: direct on both ends.
        let client = path_of(false, Some(client_lan), a("127.0.0.1:40002"), &[agent_lan]);
        let agent = path_of(false, Some(a("127.0.0.1:40002")), client_lan, &[client_lan]);
        assert_eq!((client, agent), (crate::Path::Direct, crate::Path::Direct));
        // Between the private addresses: LAN on both ends.
        let client = path_of(false, Some(client_lan), agent_lan, &[agent_lan]);
        let agent = path_of(false, Some(agent_lan), client_lan, &[client_lan]);
        assert_eq!((client, agent), (crate::Path::Lan, crate::Path::Lan));
        // An IPv4-mapped peer on a dual-stack socket is the same address.
        let mapped = a("[::ffff:192.0.2.2]:40001");
        let agent = path_of(false, Some(agent_lan), mapped, &[client_lan]);
        assert_eq!(agent, crate::Path::Lan);
        assert_eq!(
            path_of(true, None, client_lan, &[client_lan]),
            crate::Path::Relayed
        );
    }
    use crate::defaults;
    use crate::net::shared_listener;
    use crate::protocol::{Role, SessionId};

    const SESSION: SessionId = SessionId::from_bytes([0x11; 16]);
    const PSK: [u8; 32] = [0x22; 32];

    fn keys(role: Role, psk: [u8; 32]) -> Proof {
        Proof::Noise(Box::new(StreamKeys {
            role,
            session: SESSION,
            psk,
            pin: None,
            static_key: None,
            unencrypted: false,
            warm: false,
        }))
    }

    /// A plan from `local` (its family's only punch address) toward `targets`, 3 s long, with
    /// normal TTLs and no birthday punch, relay or early data.
    fn simple(local: SocketAddr, targets: Vec<SocketAddr>, proof: Proof) -> PunchPlan {
        PunchPlan {
            locals: ByFamily {
                v4: Some(local).filter(SocketAddr::is_ipv4),
                v6: Some(local).filter(SocketAddr::is_ipv6),
            },
            targets,
            first_ttl: ByFamily::default(),
            v4_delay: Duration::ZERO,
            shared_public: None,
            timeout: Duration::from_secs(3),
            proof,
            birthday: None,
            relay: None,
            early: None,
        }
    }

    /// Two engines on loopback, each with its own listener feeding its inbound channel.
    async fn pair(
        client_psk: [u8; 32],
        agent_psk: [u8; 32],
    ) -> (Result<Chosen, PunchFailure>, Result<Chosen, PunchFailure>) {
        let la = shared_listener("127.0.0.1:0".parse().unwrap()).unwrap();
        let lb = shared_listener("127.0.0.1:0".parse().unwrap()).unwrap();
        let (a, b) = (la.local_addr().unwrap(), lb.local_addr().unwrap());
        let feed = |l: tokio::net::TcpListener| {
            let (tx, rx) = mpsc::channel(8);
            let task = tokio::spawn(async move {
                while let Ok((stream, _)) = l.accept().await {
                    let _ = tx.send(Inbound { stream, head: None }).await;
                }
            });
            (rx, task)
        };
        let (ra, ta) = feed(la);
        let (rb, tb) = feed(lb);
        let plan = |local, target, role, psk| PunchPlan {
            timeout: Duration::from_secs(2),
            ..simple(local, vec![target], keys(role, psk))
        };
        let out = tokio::join!(
            run(plan(a, b, Role::Client, client_psk), ra, || {}),
            run(plan(b, a, Role::Agent, agent_psk), rb, || {}),
        );
        ta.abort();
        tb.abort();
        out
    }

    #[tokio::test]
    async fn both_ends_agree_on_one_proven_stream() {
        let (c, a) = pair(PSK, PSK).await;
        let (mut c, mut a) = (c.unwrap(), a.unwrap());
        assert!(c.stream.is_encrypted() && a.stream.is_encrypted());
        c.stream.write_all(b"ping").await.unwrap();
        c.stream.flush().await.unwrap();
        let mut buf = [0u8; 4];
        a.stream.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        assert_eq!(c.peer, a.stream.tcp().unwrap().local_addr().unwrap());
    }

    #[tokio::test]
    async fn a_wrong_secret_never_yields_a_stream() {
        let (c, a) = pair([0x33; 32], PSK).await;
        let (c, a) = (c.unwrap_err(), a.unwrap_err());
        assert!(c.rejected_streams >= 1, "{c}");
        assert!(
            a.unproven >= 1,
            "the agent saw a handshake it could not verify: {a}"
        );
        assert!(
            a.rejected_streams >= 1 || a.waited >= Duration::from_secs(2),
            "{a}"
        );
    }

    /// An agent engine listening on a punch port on ::1 and one on 127.0.0.1 (or only the
    /// IPv4 one), and a client engine racing toward both the way a dual-stack order has it.
    /// Returns the client's winning peer address and how long its punch took.
    async fn race(ipv6_listens: bool) -> (SocketAddr, Duration) {
        let l4 = shared_listener("127.0.0.1:0".parse().unwrap()).unwrap();
        let l6 = shared_listener("[::1]:0".parse().unwrap()).unwrap();
        let (a4, a6) = (l4.local_addr().unwrap(), l6.local_addr().unwrap());
        let listeners = if ipv6_listens { vec![l4, l6] } else { vec![l4] };
        let (tx, rx) = mpsc::channel(8);
        let mut feeders = JoinSet::new();
        for l in listeners {
            let tx = tx.clone();
            feeders.spawn(async move {
                while let Ok((stream, _)) = l.accept().await {
                    let _ = tx.send(Inbound { stream, head: None }).await;
                }
            });
        }
        let client = PunchPlan {
            locals: ByFamily {
                v4: Some("127.0.0.1:0".parse().unwrap()),
                v6: Some("[::1]:0".parse().unwrap()),
            },
            v4_delay: defaults::IPV6_HEAD_START,
            ..simple(
                "127.0.0.1:0".parse().unwrap(),
                vec![a6, a4],
                keys(Role::Client, PSK),
            )
        };
        let agent = simple(a4, vec![], keys(Role::Agent, PSK));
        let (_none_tx, none) = mpsc::channel(1);
        let started = Instant::now();
        let (c, a) = tokio::join!(
            async {
                let c = run(client, none, || {}).await;
                (c, started.elapsed())
            },
            run(agent, rx, || {})
        );
        feeders.shutdown().await;
        let ((c, took), _a) = (c, a.unwrap());
        (c.unwrap().peer, took)
    }

    #[tokio::test]
    async fn ipv6_wins_the_race_when_it_works_and_ipv4_follows_its_head_start_when_not() {
        let (peer, _) = race(true).await;
        assert!(peer.is_ipv6(), "IPv6 leads: {peer}");
        let (peer, took) = race(false).await;
        assert!(peer.is_ipv4(), "{peer}");
        assert!(
            took >= defaults::IPV6_HEAD_START,
            "IPv4 waited its turn: {took:?}"
        );
    }

    #[tokio::test]
    async fn unreachable_candidate_fails_with_its_error_by_the_deadline() {
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = closed.local_addr().unwrap();
        drop(closed);
        let (_tx, rx) = mpsc::channel(1);
        let plan = PunchPlan {
            timeout: Duration::from_millis(600),
            ..simple("127.0.0.1:0".parse().unwrap(), vec![target], Proof::Address)
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
    async fn early_to(first: Option<SocketAddr>) -> (Chosen, Vec<u8>) {
        let la = shared_listener("127.0.0.1:0".parse().unwrap()).unwrap();
        let agent_addr = la.local_addr().unwrap();
        let (tx, rx) = mpsc::channel(8);
        let feeder = tokio::spawn(async move {
            while let Ok((stream, _)) = la.accept().await {
                let _ = tx.send(Inbound { stream, head: None }).await;
            }
        });
        let early = EarlyData::new();
        early.push(b"early bytes");
        let targets: Vec<SocketAddr> = first.into_iter().chain([agent_addr]).collect();
        let proof = keys(Role::Client, PSK);
        let client = PunchPlan {
            early: Some((early.clone(), targets.clone())),
            ..simple("127.0.0.1:0".parse().unwrap(), targets, proof)
        };
        let (_none_tx, none) = mpsc::channel(1);
        let proof = keys(Role::Agent, PSK);
        let agent = simple(agent_addr, vec![], proof);
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
        let (_, got) = early_to(None).await;
        assert_eq!(got, b"early bytes+late");
    }

    #[tokio::test]
    async fn early_data_sent_to_an_impostor_is_sent_again_to_the_real_agent() {
        // Something else answers at the first target: it reads whatever comes and answers
        // with bytes that are no handshake.
        let impostor = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let impostor_addr = impostor.local_addr().unwrap();
        let seen = tokio::spawn(async move {
            let (mut s, _) = impostor.accept().await.unwrap();
            s.write_all(&[0x42; 64]).await.unwrap();
            let mut got = vec![0u8; 512];
            let n = tokio::time::timeout(Duration::from_secs(1), s.read(&mut got))
                .await
                .map_or(0, |r| r.unwrap_or(0));
            got.truncate(n);
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
        // Whether the impostor got the client's first message depends on which stream
        // connected first; if it did, the early bytes were sealed under the session's key.
        let impostor_got = seen.await.unwrap();
        assert!(
            !impostor_got.windows(11).any(|w| w == b"early bytes"),
            "the early data never travels in clear"
        );
    }
}
