//! Limits that keep the server's memory and tasks bounded under any input: connections per
//! source address and in all, a deadline for the first request head (slowloris), and request
//! rates per source address.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use crate::tls::MaybeTls;

/// Per-address and total connection counts.
#[derive(Default)]
pub struct ConnCounts {
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    total: Mutex<usize>,
}

/// One counted connection; uncounts itself when dropped.
pub struct Slot {
    counts: Arc<ConnCounts>,
    ip: IpAddr,
}

impl ConnCounts {
    /// Counts a new connection from `ip`, or refuses it when a limit is reached.
    pub fn admit(
        self: &Arc<Self>,
        ip: IpAddr,
        max_total: usize,
        max_per_ip: usize,
    ) -> Option<Slot> {
        let mut total = self.total.lock().expect("counts lock");
        let mut per_ip = self.per_ip.lock().expect("counts lock");
        let n = per_ip.entry(ip).or_default();
        if *total >= max_total || *n >= max_per_ip {
            if *n == 0 {
                per_ip.remove(&ip);
            }
            return None;
        }
        *n += 1;
        *total += 1;
        Some(Slot {
            counts: self.clone(),
            ip,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        *self.counts.total.lock().expect("counts lock") -= 1;
        let mut per_ip = self.counts.per_ip.lock().expect("counts lock");
        if let Some(n) = per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}

/// An accepted connection that must deliver its first request head (up to the blank line)
/// before a deadline, and that holds its connection slot while it lives.
pub struct Guarded {
    inner: MaybeTls,
    /// Bytes of `\r\n\r\n` matched so far; 4 once the head is complete.
    matched: u8,
    /// Dropped once the head is complete: a pending timer holds the waker of the task that
    /// last polled it, and with it that task's memory, until it fires.
    deadline: Option<Pin<Box<Sleep>>>,
    _slot: Slot,
}

impl Guarded {
    /// Wraps an accepted stream that must deliver its head by `deadline`.
    pub fn new(inner: MaybeTls, slot: Slot, deadline: Instant) -> Self {
        Guarded {
            inner,
            matched: 0,
            deadline: Some(Box::pin(tokio::time::sleep_until(deadline))),
            _slot: slot,
        }
    }

    /// The TCP stream.
    pub fn tcp(&self) -> &TcpStream {
        self.inner.tcp()
    }

    /// Whether the connection speaks TLS.
    pub fn is_tls(&self) -> bool {
        self.inner.is_tls()
    }
}

const HEAD_END: &[u8; 4] = b"\r\n\r\n";

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(deadline) = &mut this.deadline
            && deadline.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no complete request head in time",
            )));
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        this.matched = head_progress(this.matched, &buf.filled()[before..]);
        if this.matched == 4 {
            this.deadline = None;
        }
        Poll::Ready(Ok(()))
    }
}

/// How much of the blank line that ends a request head (`\r\n\r\n`) has been read, after
/// `bytes` follow a state of `matched` bytes; 4 once the head is complete (and from then on).
pub fn head_progress(mut matched: u8, bytes: &[u8]) -> u8 {
    for &b in bytes {
        if matched >= 4 {
            break;
        }
        matched = if b == HEAD_END[matched as usize] {
            matched + 1
        } else if b == b'\r' {
            1
        } else {
            0
        };
    }
    matched
}

impl AsyncWrite for Guarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Token buckets per source address.
pub struct RateLimiter {
    per_sec: f64,
    burst: f64,
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

/// Addresses tracked before idle buckets are swept.
const MAX_TRACKED: usize = 100_000;

impl RateLimiter {
    /// `per_sec` requests per second per address, bursts of `burst`.
    pub fn new(per_sec: f64, burst: f64) -> Self {
        RateLimiter {
            per_sec,
            burst,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `ip`; false when its bucket is empty.
    pub fn allow(&self, ip: IpAddr) -> bool {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().expect("rate lock");
        if buckets.len() >= MAX_TRACKED {
            let full = self.burst / self.per_sec;
            buckets.retain(|_, (_, t)| now.duration_since(*t).as_secs_f64() < full);
        }
        let (tokens, last) = buckets.entry(ip).or_insert((self.burst, now));
        *tokens =
            (*tokens + now.duration_since(*last).as_secs_f64() * self.per_sec).min(self.burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn connection_counts_are_capped_per_address_and_released_on_drop() {
        let counts = Arc::new(ConnCounts::default());
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let s1 = counts.admit(a, 3, 2).unwrap();
        let _s2 = counts.admit(a, 3, 2).unwrap();
        assert!(counts.admit(a, 3, 2).is_none(), "per address");
        let _s3 = counts.admit(b, 3, 2).unwrap();
        assert!(counts.admit(b, 3, 2).is_none(), "in all");
        drop(s1);
        assert!(counts.admit(a, 3, 2).is_some(), "released");
    }

    #[tokio::test(start_paused = true)]
    async fn buckets_refill_at_their_rate() {
        let r = RateLimiter::new(2.0, 3.0);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert!((0..3).all(|_| r.allow(ip)), "the burst");
        assert!(!r.allow(ip));
        assert!(
            r.allow("192.0.2.9".parse().unwrap()),
            "other addresses are not affected"
        );
        tokio::time::advance(Duration::from_millis(500)).await;
        assert!(r.allow(ip), "one token after half a second");
        assert!(!r.allow(ip));
    }

    async fn accepted(
        listener: &tokio::net::TcpListener,
        counts: &Arc<ConnCounts>,
        timeout: Duration,
    ) -> (TcpStream, Guarded) {
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, from) = listener.accept().await.unwrap();
        let slot = counts.admit(from.ip(), 10, 10).unwrap();
        (
            client,
            Guarded::new(MaybeTls::Plain(server), slot, Instant::now() + timeout),
        )
    }

    #[tokio::test]
    async fn a_connection_without_a_request_head_is_cut_at_the_deadline() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let counts = Arc::new(ConnCounts::default());
        let mut buf = [0u8; 64];

        let (mut client, mut slow) = accepted(&listener, &counts, Duration::from_millis(200)).await;
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        assert!(slow.read(&mut buf).await.unwrap() > 0);
        let err = slow.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);

        // A complete head lifts the deadline.
        let (mut client, mut done) = accepted(&listener, &counts, Duration::from_millis(100)).await;
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        assert_eq!(done.read(&mut buf).await.unwrap(), 18);
        tokio::time::sleep(Duration::from_millis(200)).await;
        client.write_all(b"x").await.unwrap();
        assert_eq!(done.read(&mut buf).await.unwrap(), 1);
    }
}
