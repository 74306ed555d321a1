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

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::net;
use crate::protocol::{HELLO_LEN, Role, SessionKeys};

/// The byte a client writes on the stream it chose.
pub const SELECT: u8 = 1;
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
}

/// A stream that won the race.
#[derive(Debug)]
pub struct Punched {
    /// The stream, with any handshake consumed.
    pub stream: TcpStream,
    /// The peer's address on it.
    pub peer: SocketAddr,
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
}

impl fmt::Display for PunchFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "no stream within {:.1} s", self.waited.as_secs_f64())?;
        for (addr, (err, n)) in &self.attempts {
            write!(f, "; {addr}: {err} ({n} attempts)")?;
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
    let deadline = started + plan.timeout;
    let mut failure = PunchFailure::default();
    let mut dialers: JoinSet<()> = JoinSet::new();
    let mut handshakes: JoinSet<Result<Punched, String>> = JoinSet::new();
    let (event_tx, mut events) = mpsc::channel::<Event>(plan.targets.len().max(1) * 4);

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
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => break,
            Some(ev) = events.recv() => match ev {
                Event::Connected(target, stream) => {
                    handshakes.spawn(handshake(stream, None, plan.proof.clone(), deadline));
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
                    handshakes.spawn(handshake(i.stream, i.hello, plan.proof.clone(), deadline));
                }
                None => inbound_open = false,
            },
            Some(done) = handshakes.join_next() => match done {
                Ok(Ok(mut punched)) => {
                    // The client selects exactly one stream: the first proven one.
                    let selected = match &plan.proof {
                        Proof::Hello { role: Role::Client, .. } => {
                            punched.stream.write_all(&[SELECT]).await.map_err(|e| e.to_string())
                        }
                        _ => Ok(()),
                    };
                    match selected {
                        Ok(()) => return Ok(punched),
                        Err(why) => {
                            tracing::debug!("selected stream failed: {why}");
                            failure.rejected_streams += 1;
                        }
                    }
                }
                Ok(Err(why)) => {
                    tracing::debug!("punched stream rejected: {why}");
                    failure.rejected_streams += 1;
                }
                Err(e) => tracing::warn!("handshake task failed: {e}"),
            },
        }
    }
    failure.waited = started.elapsed();
    Err(failure)
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
    let mut wait_cap = if low_ttl { LOW_TTL_GRACE } else { Duration::MAX };
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

/// Proves one stream. The deadline bounds every read.
async fn handshake(
    mut stream: TcpStream,
    peer_hello: Option<[u8; HELLO_LEN]>,
    proof: Proof,
    deadline: Instant,
) -> Result<Punched, String> {
    let peer = stream.peer_addr().map_err(|e| e.to_string())?;
    let (role, keys) = match proof {
        Proof::Address => return Ok(Punched { stream, peer }),
        Proof::Hello { role, keys } => (role, keys),
    };
    let work = async {
        stream.write_all(&keys.hello(role)).await?;
        let hello = match peer_hello {
            Some(h) => h,
            None => {
                let mut h = [0u8; HELLO_LEN];
                stream.read_exact(&mut h).await?;
                h
            }
        };
        if !keys.verify_hello(role.peer(), &hello) {
            return Ok(Err(format!("bad hello from {peer}")));
        }
        // The agent waits for the client's choice; the client makes it in `run`.
        if role == Role::Agent && stream.read_u8().await? != SELECT {
            return Ok(Err(format!("bad selection byte from {peer}")));
        }
        Ok::<_, std::io::Error>(Ok(()))
    };
    match tokio::time::timeout_at(deadline, work).await {
        Ok(Ok(Ok(()))) => Ok(Punched { stream, peer }),
        Ok(Ok(Err(why))) => Err(why),
        Ok(Err(e)) => Err(format!("{peer}: {e}")),
        Err(_) => Err(format!("{peer}: handshake timed out")),
    }
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

    fn keys() -> SessionKeys {
        SessionKeys::derive(&"11".repeat(16), &"22".repeat(32), Some("pw")).unwrap()
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
        let wrong = SessionKeys::derive(&"11".repeat(16), &"22".repeat(32), Some("x")).unwrap();
        let (c, a) = pair(wrong, keys()).await;
        let (c, a) = (c.unwrap_err(), a.unwrap_err());
        assert!(c.rejected_streams >= 1, "{c}");
        assert!(
            a.rejected_streams >= 1 || a.waited >= Duration::from_secs(2),
            "{a}"
        );
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
        };
        let err = run(plan, rx, || {}).await.unwrap_err();
        let (why, n) = &err.attempts[&target];
        assert_eq!(why, "connection refused");
        assert!(*n >= 2, "retried: {err}");
        assert!(err.to_string().contains("connection refused"), "{err}");
    }
}
