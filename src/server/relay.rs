//! The capped relay: when no direct path exists, both ends join `GET /v1/relay` on the server
//! (an HTTP upgrade to raw bytes) and the server splices the two connections at a bounded rate.
//! The stream handshake then runs end to end through it, so the server can carry the bytes but
//! cannot pose as either end.

use std::collections::HashMap;
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
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            max_pairs: crate::defaults::RELAY_MAX_PAIRS,
            bytes_per_sec: crate::defaults::RELAY_RATE,
        }
    }
}

type Io = Box<dyn Io2>;

/// A bidirectional byte stream (an upgraded HTTP connection).
pub(super) trait Io2: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io2 for T {}

/// Pairs the two ends of relayed sessions and splices them.
pub(super) struct RelayHub {
    config: RelayConfig,
    permits: Arc<Semaphore>,
    waiting: Mutex<HashMap<SessionId, (Role, oneshot::Sender<Io>)>>,
}

/// What to do with an end that just joined.
pub(super) enum Joined {
    /// First end of the session: wait for the second, then splice (holds a relay slot).
    First(oneshot::Receiver<Io>, OwnedSemaphorePermit),
    /// Second end: hand the stream over to the first end's task.
    Second(oneshot::Sender<Io>),
}

/// Why a join was refused.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum JoinRefused {
    /// Every relay slot is taken.
    Busy,
    /// This role of the session has already joined.
    Duplicate,
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
        }
    }

    /// Registers an end of `session`; the caller then upgrades and calls [`RelayHub::run`].
    pub fn join(&self, session: SessionId, role: Role) -> Result<Joined, JoinRefused> {
        let mut waiting = self.waiting.lock().expect("relay lock");
        waiting.retain(|_, (_, tx)| !tx.is_closed());
        match waiting.remove(&session) {
            Some((r, tx)) if r != role => Ok(Joined::Second(tx)),
            Some(entry) => {
                waiting.insert(session, entry);
                Err(JoinRefused::Duplicate)
            }
            None => {
                let permit = self
                    .permits
                    .clone()
                    .try_acquire_owned()
                    .map_err(|_| JoinRefused::Busy)?;
                let (tx, rx) = oneshot::channel();
                waiting.insert(session, (role, tx));
                Ok(Joined::First(rx, permit))
            }
        }
    }

    /// Serves one joined end after its upgrade completed; returns the bytes it carried.
    pub async fn run(&self, joined: Joined, io: Io) -> u64 {
        match joined {
            Joined::Second(tx) => {
                let _ = tx.send(io);
                0
            }
            Joined::First(rx, _permit) => {
                let Ok(Ok(other)) = tokio::time::timeout(PAIRING_TIMEOUT, rx).await else {
                    tracing::debug!("relay: the second end never came");
                    return 0;
                };
                let (a, b) = (io, other);
                let (ar, aw) = tokio::io::split(a);
                let (br, bw) = tokio::io::split(b);
                let rate = self.config.bytes_per_sec;
                let (up, down) =
                    tokio::join!(copy_limited(ar, bw, rate), copy_limited(br, aw, rate));
                let (up, down) = (up.unwrap_or(0), down.unwrap_or(0));
                tracing::info!("relayed session closed: {up} and {down} bytes");
                up + down
            }
        }
    }
}

/// Copies until EOF, then shuts the writer down (keeping half-close), at most `rate` bytes/s.
async fn copy_limited<R, W>(mut r: R, mut w: W, rate: u64) -> std::io::Result<u64>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let rate = rate.max(1);
    let mut buf = vec![0u8; RELAY_BUFFER.min(rate as usize).max(1)];
    let started = Instant::now();
    let mut total = 0u64;
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            w.shutdown().await?;
            return Ok(total);
        }
        w.write_all(&buf[..n]).await?;
        total += n as u64;
        // Token bucket with a one-second burst: sleep until `total` is within budget.
        let earliest = Duration::from_secs_f64(total.saturating_sub(rate) as f64 / rate as f64);
        let elapsed = started.elapsed();
        if earliest > elapsed {
            tokio::time::sleep(earliest - elapsed).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn copy_limited_keeps_the_rate_and_half_close() {
        let (mut a, b) = tokio::io::duplex(1 << 20);
        let (c, mut d) = tokio::io::duplex(1 << 20);
        let (br, _bw) = tokio::io::split(b);
        let (_cr, cw) = tokio::io::split(c);
        let copier = tokio::spawn(copy_limited(br, cw, 100_000));
        let started = Instant::now();
        a.write_all(&vec![7u8; 250_000]).await.unwrap();
        a.shutdown().await.unwrap();
        let mut got = Vec::new();
        d.read_to_end(&mut got).await.unwrap();
        assert_eq!(got.len(), 250_000);
        assert_eq!(copier.await.unwrap().unwrap(), 250_000);
        // One second of burst, then 100 kB/s: at least 1.5 s for 250 kB.
        assert!(
            started.elapsed() >= Duration::from_millis(1400),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn pairing_needs_both_roles_and_a_free_slot() {
        let hub = RelayHub::new(RelayConfig {
            max_pairs: 1,
            bytes_per_sec: 1,
        });
        let (s1, s2) = (
            SessionId::from_bytes([1; 16]),
            SessionId::from_bytes([2; 16]),
        );
        let first = hub.join(s1, Role::Client).ok().unwrap();
        assert!(matches!(first, Joined::First(..)));
        assert_eq!(
            hub.join(s1, Role::Client).err(),
            Some(JoinRefused::Duplicate)
        );
        assert_eq!(hub.join(s2, Role::Client).err(), Some(JoinRefused::Busy));
        assert!(matches!(hub.join(s1, Role::Agent), Ok(Joined::Second(_))));
    }
}
