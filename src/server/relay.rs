//! The capped relay: when no direct path exists, both ends join `GET /v1/relay` on the server
//! (an HTTP upgrade to raw bytes) and the server splices the two connections at a bounded rate.
//! The stream handshake then runs end to end through it, so the server can carry the bytes but
//! cannot pose as either end. Only the two ends of a session get in (each with its ticket,
//! checked in `http`), a spliced pair lives at most `max_lifetime` and is cut after
//! `idle_timeout` without a byte either way, and one address takes part in at most
//! `max_per_ip` relayed sessions at once.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use tokio::time::Instant;

use crate::protocol::{Role, SessionId};

/// How long the first end of a session waits on the server for the second.
const PAIRING_TIMEOUT: Duration = Duration::from_secs(10);
/// Copy buffer of the splice.
const RELAY_BUFFER: usize = 16 * 1024;

/// Limits of the relay, set by the operator.
#[derive(Debug, Clone, Copy)]
pub struct RelayConfig {
    /// Most relayed pairs (sessions whose two ends are spliced) at once.
    pub max_pairs: usize,
    /// Bytes per second per direction of one session.
    pub bytes_per_sec: u64,
    /// Longest a spliced pair may live.
    pub max_lifetime: Duration,
    /// A spliced pair with no byte in either direction for this long is cut.
    pub idle_timeout: Duration,
    /// Most relayed sessions (waiting or spliced) one address takes part in at once.
    pub max_per_ip: usize,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            max_pairs: crate::defaults::RELAY_MAX_PAIRS,
            bytes_per_sec: crate::defaults::RELAY_RATE,
            max_lifetime: crate::defaults::RELAY_MAX_LIFETIME,
            idle_timeout: crate::defaults::RELAY_IDLE_TIMEOUT,
            max_per_ip: crate::defaults::RELAY_MAX_PER_IP,
        }
    }
}

type Io = Box<dyn Io2>;

/// A bidirectional byte stream (an upgraded HTTP connection).
pub(super) trait Io2: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io2 for T {}

/// A session's first end, waiting on the server for the second.
struct Waiting {
    role: Role,
    tx: oneshot::Sender<(Io, Option<IpShare>)>,
    ip: IpAddr,
}

/// Pairs the two ends of relayed sessions and splices them.
pub(super) struct RelayHub {
    config: RelayConfig,
    permits: Arc<Semaphore>,
    waiting: Mutex<HashMap<SessionId, Waiting>>,
    per_ip: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// One address's part in one relayed session; released when dropped.
pub(super) struct IpShare {
    per_ip: Arc<Mutex<HashMap<IpAddr, usize>>>,
    ip: IpAddr,
}

impl Drop for IpShare {
    fn drop(&mut self) {
        let mut per_ip = self.per_ip.lock().expect("relay lock");
        if let Some(n) = per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}

/// What to do with an end that just joined.
pub(super) enum Joined {
    /// First end of the session: wait for the second, then splice (holds a relay slot and its
    /// address's share).
    First(
        oneshot::Receiver<(Io, Option<IpShare>)>,
        OwnedSemaphorePermit,
        IpShare,
    ),
    /// Second end: hand the stream (and its address's share, when another address than the
    /// first end's) over to the first end's task.
    Second(oneshot::Sender<(Io, Option<IpShare>)>, Option<IpShare>),
}

/// Why a join was refused.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum JoinRefused {
    /// Every relay slot is taken.
    Busy,
    /// The joining address takes part in its share of relayed sessions already.
    PerIp {
        /// The address.
        ip: IpAddr,
        /// Its share.
        limit: usize,
    },
    /// This role of the session has already joined.
    Duplicate,
}

impl std::fmt::Display for JoinRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JoinRefused::Busy => f.write_str("server busy: every relay slot is taken"),
            JoinRefused::PerIp { ip, limit } => write!(
                f,
                "server busy: too many relayed sessions from {ip} (limit {limit})"
            ),
            JoinRefused::Duplicate => f.write_str("this end already joined"),
        }
    }
}

/// Why a spliced pair ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ended {
    /// Both directions closed.
    Closed,
    /// It reached its lifetime cap.
    Lifetime,
    /// Nothing crossed it for the idle timeout.
    Idle,
}

impl RelayHub {
    /// Relayed sessions open now (or waiting for their second end).
    pub fn active(&self) -> usize {
        self.config.max_pairs - self.permits.available_permits()
    }

    /// A hub with these limits.
    pub fn new(config: RelayConfig) -> Self {
        RelayHub {
            permits: Arc::new(Semaphore::new(config.max_pairs)),
            config,
            waiting: Mutex::new(HashMap::new()),
            per_ip: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Counts one more relayed session for `ip`, or refuses when it has its share.
    fn share(&self, ip: IpAddr) -> Result<IpShare, JoinRefused> {
        let mut per_ip = self.per_ip.lock().expect("relay lock");
        let n = per_ip.entry(ip).or_default();
        if *n >= self.config.max_per_ip {
            if *n == 0 {
                per_ip.remove(&ip);
            }
            return Err(JoinRefused::PerIp {
                ip,
                limit: self.config.max_per_ip,
            });
        }
        *n += 1;
        Ok(IpShare {
            per_ip: self.per_ip.clone(),
            ip,
        })
    }

    /// Registers an end of `session` joining from `ip` (the caller has checked its ticket);
    /// the caller then upgrades and calls [`RelayHub::run`].
    pub fn join(&self, session: SessionId, role: Role, ip: IpAddr) -> Result<Joined, JoinRefused> {
        let mut waiting = self.waiting.lock().expect("relay lock");
        waiting.retain(|_, w| !w.tx.is_closed());
        match waiting.remove(&session) {
            Some(w) if w.role != role => {
                // Both ends from one address count once.
                let share = if w.ip == ip {
                    None
                } else {
                    match self.share(ip) {
                        Ok(s) => Some(s),
                        Err(refused) => {
                            waiting.insert(session, w);
                            return Err(refused);
                        }
                    }
                };
                Ok(Joined::Second(w.tx, share))
            }
            Some(w) => {
                waiting.insert(session, w);
                Err(JoinRefused::Duplicate)
            }
            None => {
                let share = self.share(ip)?;
                let permit = self
                    .permits
                    .clone()
                    .try_acquire_owned()
                    .map_err(|_| JoinRefused::Busy)?;
                let (tx, rx) = oneshot::channel();
                waiting.insert(session, Waiting { role, tx, ip });
                Ok(Joined::First(rx, permit, share))
            }
        }
    }

    /// Serves one joined end after its upgrade completed. Returns, from the end that spliced
    /// the pair (the first to join), the bytes the pair carried and why it ended.
    pub async fn run(&self, joined: Joined, io: Io) -> Option<(u64, Ended)> {
        match joined {
            Joined::Second(tx, share) => {
                let _ = tx.send((io, share));
                None
            }
            Joined::First(rx, _permit, _share) => {
                let Ok(Ok((other, _other_share))) = tokio::time::timeout(PAIRING_TIMEOUT, rx).await
                else {
                    tracing::debug!("relay: the second end never came");
                    return None;
                };
                let (up, down, ended) = self.splice(io, other).await;
                match ended {
                    Ended::Closed => {
                        tracing::info!("relayed session closed: {up} and {down} bytes")
                    }
                    Ended::Lifetime => tracing::info!(
                        "relayed session cut at its lifetime cap of {:?}: {up} and {down} bytes",
                        self.config.max_lifetime
                    ),
                    Ended::Idle => tracing::info!(
                        "relayed session cut after {:?} idle: {up} and {down} bytes",
                        self.config.idle_timeout
                    ),
                }
                Some((up + down, ended))
            }
        }
    }

    /// Splices `a` and `b` until both directions close, the lifetime cap passes, or nothing
    /// crossed for the idle timeout. Returns the bytes each way and why it ended.
    async fn splice(&self, a: Io, b: Io) -> (u64, u64, Ended) {
        let started = Instant::now();
        let clock = Activity {
            started,
            last_ms: AtomicU64::new(0),
        };
        let (up, down) = (AtomicU64::new(0), AtomicU64::new(0));
        let (ar, aw) = tokio::io::split(a);
        let (br, bw) = tokio::io::split(b);
        let rate = self.config.bytes_per_sec;
        let both = async {
            tokio::join!(
                copy_limited(ar, bw, rate, &clock, &up),
                copy_limited(br, aw, rate, &clock, &down)
            )
        };
        let ended = tokio::select! {
            _ = both => Ended::Closed,
            why = watchdog(&clock, self.config.max_lifetime, self.config.idle_timeout) => why,
        };
        (
            up.load(Ordering::Relaxed),
            down.load(Ordering::Relaxed),
            ended,
        )
    }
}

/// When a spliced pair last carried a byte.
struct Activity {
    started: Instant,
    /// Milliseconds after `started`.
    last_ms: AtomicU64,
}

impl Activity {
    fn touch(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.started + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// Returns once the pair has lived `lifetime` or carried nothing for `idle`.
async fn watchdog(clock: &Activity, lifetime: Duration, idle: Duration) -> Ended {
    let end_of_life = clock.started + lifetime;
    loop {
        let idle_at = clock.last() + idle;
        let now = Instant::now();
        if now >= end_of_life {
            return Ended::Lifetime;
        }
        if now >= idle_at {
            return Ended::Idle;
        }
        tokio::time::sleep_until(idle_at.min(end_of_life)).await;
    }
}

/// Copies until EOF, then shuts the writer down (keeping half-close), at most `rate` bytes/s;
/// counts what it carried in `total` and marks activity on `clock`.
async fn copy_limited<R, W>(
    mut r: R,
    mut w: W,
    rate: u64,
    clock: &Activity,
    total: &AtomicU64,
) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let rate = rate.max(1);
    let mut buf = vec![0u8; RELAY_BUFFER.min(rate as usize).max(1)];
    let started = Instant::now();
    let mut carried = 0u64;
    loop {
        let n = r.read(&mut buf).await?;
        clock.touch();
        if n == 0 {
            w.shutdown().await?;
            return Ok(());
        }
        w.write_all(&buf[..n]).await?;
        carried += n as u64;
        total.store(carried, Ordering::Relaxed);
        // Token bucket with a one-second burst: sleep until `carried` is within budget.
        let earliest = Duration::from_secs_f64(carried.saturating_sub(rate) as f64 / rate as f64);
        let elapsed = started.elapsed();
        if earliest > elapsed {
            tokio::time::sleep(earliest - elapsed).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(max_pairs: usize, max_per_ip: usize) -> RelayConfig {
        RelayConfig {
            max_pairs,
            bytes_per_sec: 1 << 20,
            max_lifetime: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(60),
            max_per_ip,
        }
    }

    fn clock() -> Activity {
        Activity {
            started: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    #[tokio::test]
    async fn copy_limited_keeps_the_rate_and_half_close() {
        let (mut a, b) = tokio::io::duplex(1 << 20);
        let (c, mut d) = tokio::io::duplex(1 << 20);
        let (br, _bw) = tokio::io::split(b);
        let (_cr, cw) = tokio::io::split(c);
        let (clock, total) = (Arc::new(clock()), Arc::new(AtomicU64::new(0)));
        let (c2, t2) = (clock.clone(), total.clone());
        let copier = tokio::spawn(async move { copy_limited(br, cw, 100_000, &c2, &t2).await });
        let started = Instant::now();
        a.write_all(&vec![7u8; 250_000]).await.unwrap();
        a.shutdown().await.unwrap();
        let mut got = Vec::new();
        d.read_to_end(&mut got).await.unwrap();
        assert_eq!(got.len(), 250_000);
        copier.await.unwrap().unwrap();
        assert_eq!(total.load(Ordering::Relaxed), 250_000);
        // One second of burst, then 100 kB/s: at least 1.5 s for 250 kB.
        assert!(
            started.elapsed() >= Duration::from_millis(1400),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn pairing_needs_both_roles_and_a_free_slot() {
        let hub = RelayHub::new(config(1, 4));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let (s1, s2) = (
            SessionId::from_bytes([1; 16]),
            SessionId::from_bytes([2; 16]),
        );
        let first = hub.join(s1, Role::Client, ip).ok().unwrap();
        assert!(matches!(first, Joined::First(..)));
        assert_eq!(
            hub.join(s1, Role::Client, ip).err(),
            Some(JoinRefused::Duplicate)
        );
        assert_eq!(
            hub.join(s2, Role::Client, ip).err(),
            Some(JoinRefused::Busy)
        );
        assert!(matches!(
            hub.join(s1, Role::Agent, ip),
            Ok(Joined::Second(_, None))
        ));
    }

    #[test]
    fn one_address_takes_part_in_at_most_its_share_of_relayed_sessions() {
        let hub = RelayHub::new(config(16, 2));
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let s = |n: u8| SessionId::from_bytes([n; 16]);
        let first = hub.join(s(1), Role::Client, a).ok().unwrap();
        let _second = hub.join(s(2), Role::Client, a).ok().unwrap();
        let refused = hub.join(s(3), Role::Client, a).err().unwrap();
        assert_eq!(
            refused.to_string(),
            "server busy: too many relayed sessions from 192.0.2.1 (limit 2)"
        );
        assert!(
            hub.join(s(3), Role::Client, b).is_ok(),
            "others still get in"
        );
        // The other end of a's session from a's own address counts once.
        assert!(matches!(
            hub.join(s(1), Role::Agent, a),
            Ok(Joined::Second(_, None))
        ));
        drop(first);
        assert!(hub.join(s(4), Role::Client, a).is_ok(), "released");
    }

    #[tokio::test(start_paused = true)]
    async fn a_pair_is_cut_when_idle_and_at_its_lifetime() {
        let hub = RelayHub::new(RelayConfig {
            idle_timeout: Duration::from_secs(5),
            max_lifetime: Duration::from_secs(20),
            ..config(4, 4)
        });
        // Idle: nothing crosses.
        let (a, _a_peer) = tokio::io::duplex(1024);
        let (b, _b_peer) = tokio::io::duplex(1024);
        let started = Instant::now();
        let (_, _, ended) = hub.splice(Box::new(a), Box::new(b)).await;
        assert_eq!(ended, Ended::Idle);
        assert_eq!(started.elapsed().as_secs(), 5);
        // Busy: a byte every second keeps it from idling, until its lifetime.
        let (a, mut a_peer) = tokio::io::duplex(1024);
        let (b, mut b_peer) = tokio::io::duplex(1024);
        let talker = tokio::spawn(async move {
            let mut buf = [0u8; 1];
            loop {
                if a_peer.write_all(b"x").await.is_err() {
                    return;
                }
                if b_peer.read_exact(&mut buf).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        let started = Instant::now();
        let (up, _, ended) = hub.splice(Box::new(a), Box::new(b)).await;
        assert_eq!(ended, Ended::Lifetime);
        assert_eq!(started.elapsed().as_secs(), 20);
        assert!(up >= 19, "{up}");
        talker.await.unwrap();
    }
}
