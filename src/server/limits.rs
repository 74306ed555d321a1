//! Limits that keep the server's memory and tasks bounded under any input, and fair to peers
//! that share an address with an abuser: connections per source address and in all (the
//! oldest connections without a complete request head make room first), a deadline and a size
//! cap for the first request head (slowloris), a budget for the memory of unfinished heads,
//! request rates per source address, and concurrent birthday punches.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::hash::Hash;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};

use crate::protocol::{ErrorBody, ErrorCode};
use crate::tls::MaybeTls;

/// Longest request head (request line and headers) a connection may send: real heads are a
/// few hundred bytes (the longest, an expose request with eight IPv6 candidates, about 2 KiB),
/// while hyper on its own buffers up to 400 KiB for each unfinished one.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;
/// Memory all unfinished request heads may hold together: 4096 heads at the cap. Past it, the
/// oldest unfinished connection is closed to make room.
pub const MAX_PENDING_HEAD_BYTES: usize = 32 * 1024 * 1024;

/// Why a new connection was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnRefusal {
    /// Its address holds its share, and none of those connections may be closed for it.
    PerIp {
        /// What is counted ("connections", "probe connections").
        what: &'static str,
        /// The address.
        ip: IpAddr,
        /// Its share.
        limit: usize,
    },
    /// The server holds as many as it may, none of which may be closed for it.
    Total {
        /// What is counted.
        what: &'static str,
        /// The limit.
        limit: usize,
    },
}

impl fmt::Display for ConnRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnRefusal::PerIp { what, ip, limit } => {
                write!(f, "server busy: too many {what} from {ip} (limit {limit})")
            }
            ConnRefusal::Total { what, limit } => {
                write!(f, "server busy: too many {what} (limit {limit})")
            }
        }
    }
}

/// Why a connection's request head was cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadRefusal {
    /// The head is over [`MAX_HEAD_BYTES`].
    TooLarge,
    /// Unfinished heads hold [`MAX_PENDING_HEAD_BYTES`] and none older can make room.
    Busy,
}

/// How an evicted connection learns it must go.
#[derive(Default)]
struct Signal {
    /// Set under the table's lock: the connection no longer counts.
    evicted: AtomicBool,
    waker: AtomicWaker,
    notify: Notify,
}

/// A connection that may still be evicted: it has no complete request head yet.
struct Evictable {
    ip: IpAddr,
    /// Bytes of its head read so far (held in the server's buffers).
    head: usize,
    signal: Arc<Signal>,
}

#[derive(Default)]
struct Inner {
    next: u64,
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
    /// By admission order, oldest first.
    evictable: BTreeMap<u64, Evictable>,
    evictable_by_ip: HashMap<IpAddr, BTreeSet<u64>>,
    head_bytes: usize,
}

impl Inner {
    /// Closes connection `id`: it stops counting at once and its task is woken to end it.
    fn evict(&mut self, id: u64) {
        let Some(e) = self.evictable.remove(&id) else {
            return;
        };
        self.forget(id, e.ip, e.head);
        e.signal.evicted.store(true, Ordering::SeqCst);
        e.signal.waker.wake();
        e.signal.notify.notify_one();
    }

    /// Uncounts connection `id` from `ip`, holding `head` bytes, already out of `evictable`.
    fn forget(&mut self, id: u64, ip: IpAddr, head: usize) {
        self.total -= 1;
        self.head_bytes -= head;
        if let Some(n) = self.per_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&ip);
            }
        }
        if let Some(ids) = self.evictable_by_ip.get_mut(&ip) {
            ids.remove(&id);
            if ids.is_empty() {
                self.evictable_by_ip.remove(&ip);
            }
        }
    }
}

/// Connections per source address and in all. A new connection over a limit takes the place
/// of the oldest one that has not completed its request head (from its own address when that
/// address is at its share, from anyone when the server is full): a host behind the same
/// carrier-grade NAT as an abuser that holds idle connections still gets in.
pub struct ConnTable {
    what: &'static str,
    max_total: usize,
    max_per_ip: usize,
    max_head_bytes: usize,
    inner: Mutex<Inner>,
}

/// One counted connection; uncounts itself when dropped.
pub struct Slot {
    table: Arc<ConnTable>,
    id: u64,
    ip: IpAddr,
    signal: Arc<Signal>,
}

impl ConnTable {
    /// A table for at most `max_total` connections, `max_per_ip` from one address, whose
    /// unfinished heads hold at most `max_head_bytes`; `what` names them in refusals.
    pub fn new(
        what: &'static str,
        max_total: usize,
        max_per_ip: usize,
        max_head_bytes: usize,
    ) -> Arc<Self> {
        Arc::new(ConnTable {
            what,
            max_total,
            max_per_ip,
            max_head_bytes,
            inner: Mutex::new(Inner::default()),
        })
    }

    /// Counts a new connection from `ip`, closing the oldest unfinished one to make room if it
    /// must; refuses when there is none to close.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, ConnRefusal> {
        let mut inner = self.inner.lock().expect("connections lock");
        if inner.per_ip.get(&ip).copied().unwrap_or(0) >= self.max_per_ip {
            let oldest = inner
                .evictable_by_ip
                .get(&ip)
                .and_then(|ids| ids.first().copied());
            match oldest {
                Some(id) => inner.evict(id),
                None => {
                    return Err(ConnRefusal::PerIp {
                        what: self.what,
                        ip,
                        limit: self.max_per_ip,
                    });
                }
            }
        }
        if inner.total >= self.max_total {
            match inner.evictable.keys().next().copied() {
                Some(id) => inner.evict(id),
                None => {
                    return Err(ConnRefusal::Total {
                        what: self.what,
                        limit: self.max_total,
                    });
                }
            }
        }
        let id = inner.next;
        inner.next += 1;
        inner.total += 1;
        *inner.per_ip.entry(ip).or_default() += 1;
        let signal = Arc::new(Signal::default());
        inner.evictable.insert(
            id,
            Evictable {
                ip,
                head: 0,
                signal: signal.clone(),
            },
        );
        inner.evictable_by_ip.entry(ip).or_default().insert(id);
        Ok(Slot {
            table: self.clone(),
            id,
            ip,
            signal,
        })
    }

    /// Connections counted now.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.inner.lock().expect("connections lock").total
    }
}

impl Slot {
    /// The connection completed its request head (or no longer waits for one): it may not be
    /// evicted any more, and its head's bytes are no longer counted.
    pub fn head_done(&self) {
        let mut inner = self.table.inner.lock().expect("connections lock");
        if let Some(e) = inner.evictable.remove(&self.id) {
            inner.head_bytes -= e.head;
            if let Some(ids) = inner.evictable_by_ip.get_mut(&e.ip) {
                ids.remove(&self.id);
                if ids.is_empty() {
                    inner.evictable_by_ip.remove(&e.ip);
                }
            }
        }
    }

    /// Counts `n` more bytes of the connection's unfinished head, closing older unfinished
    /// connections if all heads together would exceed their budget.
    pub fn add_head_bytes(&self, n: usize) -> Result<(), HeadRefusal> {
        let mut inner = self.table.inner.lock().expect("connections lock");
        let Some(head) = inner.evictable.get(&self.id).map(|e| e.head) else {
            return Ok(());
        };
        if head + n > MAX_HEAD_BYTES {
            return Err(HeadRefusal::TooLarge);
        }
        while inner.head_bytes + n > self.table.max_head_bytes {
            let victim = inner
                .evictable
                .iter()
                .find(|(id, e)| **id != self.id && e.head > 0)
                .map(|(id, _)| *id);
            match victim {
                Some(id) => inner.evict(id),
                None => return Err(HeadRefusal::Busy),
            }
        }
        inner.head_bytes += n;
        if let Some(e) = inner.evictable.get_mut(&self.id) {
            e.head += n;
        }
        Ok(())
    }

    /// Whether the connection was evicted; registers the task to be woken when it is.
    pub fn poll_evicted(&self, cx: &mut Context<'_>) -> bool {
        self.signal.waker.register(cx.waker());
        self.signal.evicted.load(Ordering::SeqCst)
    }

    /// Waits until the connection is evicted.
    pub async fn evicted(&self) {
        loop {
            let notified = self.signal.notify.notified();
            if self.signal.evicted.load(Ordering::SeqCst) {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut inner = self.table.inner.lock().expect("connections lock");
        if self.signal.evicted.load(Ordering::SeqCst) {
            return; // Uncounted when it was evicted.
        }
        let head = inner.evictable.remove(&self.id).map_or(0, |e| e.head);
        inner.forget(self.id, self.ip, head);
    }
}

/// An HTTP response that refuses a request: the code's status, `Connection: close` and the
/// JSON error body, as one buffer.
pub fn error_response(code: ErrorCode, message: &str) -> Vec<u8> {
    let body = serde_json::to_string(&ErrorBody {
        error: code,
        message: message.to_string(),
    })
    .expect("an error body always serialises");
    let status = code.http_status();
    let reason = match status {
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        409 => "Conflict",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Error",
    };
    format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// An accepted connection that must deliver its first request head (up to the blank line)
/// before a deadline and within [`MAX_HEAD_BYTES`], that holds its connection slot while it
/// lives, and that ends when the slot is evicted before its head is complete.
pub struct Guarded {
    inner: MaybeTls,
    /// Bytes of `\r\n\r\n` matched so far; 4 once the head is complete.
    matched: u8,
    /// Dropped once the head is complete: a pending timer holds the waker of the task that
    /// last polled it, and with it that task's memory, until it fires.
    deadline: Option<Pin<Box<Sleep>>>,
    slot: Slot,
}

impl Guarded {
    /// Wraps an accepted stream that must deliver its head by `deadline`.
    pub fn new(inner: MaybeTls, slot: Slot, deadline: Instant) -> Self {
        Guarded {
            inner,
            matched: 0,
            deadline: Some(Box::pin(tokio::time::sleep_until(deadline))),
            slot,
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

    /// Ends the connection with an error answer, written without waiting (best effort: the
    /// peer sent an unfinished head, so no response of hyper's is under way).
    fn end(&mut self, cx: &mut Context<'_>, code: ErrorCode, message: &str) -> io::Error {
        let answer = error_response(code, message);
        let _ = Pin::new(&mut self.inner).poll_write(cx, &answer);
        let _ = Pin::new(&mut self.inner).poll_flush(cx);
        io::Error::new(io::ErrorKind::ConnectionAborted, message.to_string())
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
        if this.matched < 4 && this.slot.poll_evicted(cx) {
            let why = "server busy: connection closed to make room for newer ones";
            return Poll::Ready(Err(this.end(cx, ErrorCode::Busy, why)));
        }
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
        if this.matched < 4 {
            let (matched, used) = head_bytes(this.matched, &buf.filled()[before..]);
            if let Err(refused) = this.slot.add_head_bytes(used) {
                let (code, why) = match refused {
                    HeadRefusal::TooLarge => (
                        ErrorCode::BadRequest,
                        format!("request head over {MAX_HEAD_BYTES} bytes"),
                    ),
                    HeadRefusal::Busy => (
                        ErrorCode::Busy,
                        "server busy: too many unfinished requests".to_string(),
                    ),
                };
                return Poll::Ready(Err(this.end(cx, code, &why)));
            }
            this.matched = matched;
            if matched == 4 {
                this.deadline = None;
                this.slot.head_done();
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// How much of the blank line that ends a request head (`\r\n\r\n`) has been read, after
/// `bytes` follow a state of `matched` bytes; 4 once the head is complete (and from then on).
pub fn head_progress(matched: u8, bytes: &[u8]) -> u8 {
    head_bytes(matched, bytes).0
}

/// Like [`head_progress`], and how many of `bytes` belong to the head (all of them unless the
/// head ends among them).
pub fn head_bytes(mut matched: u8, bytes: &[u8]) -> (u8, usize) {
    for (i, &b) in bytes.iter().enumerate() {
        if matched >= 4 {
            return (matched, i);
        }
        matched = if b == HEAD_END[matched as usize] {
            matched + 1
        } else if b == b'\r' {
            1
        } else {
            0
        };
    }
    (matched, bytes.len())
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

/// Addresses (or keys) tracked before idle entries are swept.
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

/// Per key, the uses counted: (id, counted until), oldest first.
type Uses<K> = HashMap<K, VecDeque<(u64, Instant)>>;

/// Concurrent uses per key, each counted until its guard drops or, at the latest, a window
/// after it began: a holder that keeps its guard longer than the work it stands for (a client
/// that keeps its control connection open) cannot keep others out.
pub struct Concurrency<K> {
    max: usize,
    window: Duration,
    next: Mutex<u64>,
    uses: Arc<Mutex<Uses<K>>>,
}

/// One counted use; uncounts itself when dropped.
pub struct Use<K: Hash + Eq> {
    uses: Arc<Mutex<Uses<K>>>,
    key: K,
    id: u64,
}

impl<K: Hash + Eq + Clone> Concurrency<K> {
    /// At most `max` uses per key at once, each counted for at most `window`.
    pub fn new(max: usize, window: Duration) -> Self {
        Concurrency {
            max,
            window,
            next: Mutex::new(0),
            uses: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// The most uses per key.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Counts a use of `key`, or `None` when it has `max` already.
    pub fn try_use(&self, key: K) -> Option<Use<K>> {
        let now = Instant::now();
        let id = {
            let mut next = self.next.lock().expect("concurrency lock");
            *next += 1;
            *next
        };
        let mut uses = self.uses.lock().expect("concurrency lock");
        if uses.len() >= MAX_TRACKED {
            uses.retain(|_, q| q.iter().any(|(_, until)| *until > now));
        }
        let q = uses.entry(key.clone()).or_default();
        q.retain(|(_, until)| *until > now);
        if q.len() >= self.max {
            return None;
        }
        q.push_back((id, now + self.window));
        Some(Use {
            uses: self.uses.clone(),
            key,
            id,
        })
    }
}

impl<K: Hash + Eq> Drop for Use<K> {
    fn drop(&mut self) {
        let mut uses = self.uses.lock().expect("concurrency lock");
        if let Some(q) = uses.get_mut(&self.key) {
            q.retain(|(id, _)| *id != self.id);
            if q.is_empty() {
                uses.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const A: &str = "192.0.2.1";
    const B: &str = "192.0.2.2";

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn connection_counts_are_capped_per_address_and_released_on_drop() {
        let table = ConnTable::new("connections", 3, 2, 1 << 20);
        let s1 = table.admit(ip(A)).unwrap();
        let s2 = table.admit(ip(A)).unwrap();
        s1.head_done();
        s2.head_done();
        let refused = table.admit(ip(A)).err().unwrap();
        assert_eq!(
            refused.to_string(),
            "server busy: too many connections from 192.0.2.1 (limit 2)"
        );
        let s3 = table.admit(ip(B)).unwrap();
        s3.head_done();
        let refused = table.admit(ip(B)).err().unwrap();
        assert_eq!(
            refused.to_string(),
            "server busy: too many connections (limit 3)"
        );
        drop(s1);
        assert!(table.admit(ip(A)).is_ok(), "released");
    }

    #[test]
    fn the_oldest_unfinished_connection_of_a_full_address_makes_room() {
        let table = ConnTable::new("connections", 10, 2, 1 << 20);
        let idle1 = table.admit(ip(A)).unwrap();
        let idle2 = table.admit(ip(A)).unwrap();
        let newcomer = table.admit(ip(A)).expect("the oldest idle one makes room");
        assert!(idle1.signal.evicted.load(Ordering::SeqCst));
        assert!(!idle2.signal.evicted.load(Ordering::SeqCst));
        assert_eq!(table.len(), 2);
        drop(idle1);
        assert_eq!(table.len(), 2, "an evicted slot is not uncounted twice");
        newcomer.head_done();
        idle2.head_done();
        assert!(
            table.admit(ip(A)).is_err(),
            "finished ones are never evicted"
        );
    }

    #[test]
    fn a_full_server_evicts_the_oldest_unfinished_connection_from_anyone() {
        let table = ConnTable::new("connections", 2, 10, 1 << 20);
        let a = table.admit(ip(A)).unwrap();
        let b = table.admit(ip(B)).unwrap();
        b.head_done();
        let _c = table.admit(ip(B)).unwrap();
        assert!(a.signal.evicted.load(Ordering::SeqCst));
        assert!(table.admit(ip(B)).is_ok(), "c is unfinished: it goes");
    }

    #[test]
    fn heads_are_capped_each_and_together() {
        let table = ConnTable::new("connections", 10, 10, MAX_HEAD_BYTES + 100);
        let old = table.admit(ip(A)).unwrap();
        assert_eq!(
            old.add_head_bytes(MAX_HEAD_BYTES + 1),
            Err(HeadRefusal::TooLarge)
        );
        old.add_head_bytes(MAX_HEAD_BYTES).unwrap();
        let new = table.admit(ip(B)).unwrap();
        new.add_head_bytes(200).unwrap();
        assert!(
            old.signal.evicted.load(Ordering::SeqCst),
            "the oldest head made room"
        );
        let done = table.admit(ip(B)).unwrap();
        done.add_head_bytes(100).unwrap();
        done.head_done();
        // Nothing older with bytes to evict but `new` itself: a head that does not fit fails.
        let big = table.admit(ip(A)).unwrap();
        big.add_head_bytes(MAX_HEAD_BYTES).unwrap();
        assert!(new.signal.evicted.load(Ordering::SeqCst));
        assert_eq!(big.add_head_bytes(1000), Err(HeadRefusal::TooLarge));
    }

    #[test]
    fn head_bytes_stop_at_the_end_of_the_head() {
        assert_eq!(head_bytes(0, b"GET / HTTP/1.1\r\n\r\nabc"), (4, 18));
        assert_eq!(head_bytes(2, b"\r\nxyz"), (4, 2));
        assert_eq!(head_bytes(0, b"GET"), (0, 3));
        assert_eq!(head_bytes(4, b"abc"), (4, 0));
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

    #[tokio::test(start_paused = true)]
    async fn concurrent_uses_end_with_their_guard_or_their_window() {
        let c = Concurrency::new(2, Duration::from_secs(6));
        let one = c.try_use("svc").unwrap();
        let _two = c.try_use("svc").unwrap();
        assert!(c.try_use("svc").is_none());
        assert!(c.try_use("other").is_some());
        drop(one);
        let _three = c.try_use("svc").expect("a guard that dropped");
        assert!(c.try_use("svc").is_none());
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(c.try_use("svc").is_some(), "held past the window");
    }

    async fn accepted(
        listener: &tokio::net::TcpListener,
        table: &Arc<ConnTable>,
        timeout: Duration,
    ) -> (TcpStream, Guarded) {
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, from) = listener.accept().await.unwrap();
        let slot = table.admit(from.ip()).unwrap();
        (
            client,
            Guarded::new(MaybeTls::Plain(server), slot, Instant::now() + timeout),
        )
    }

    #[tokio::test]
    async fn a_connection_without_a_request_head_is_cut_at_the_deadline() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let table = ConnTable::new("connections", 10, 10, 1 << 20);
        let mut buf = [0u8; 64];

        let (mut client, mut slow) = accepted(&listener, &table, Duration::from_millis(200)).await;
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        assert!(slow.read(&mut buf).await.unwrap() > 0);
        let err = slow.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);

        // A complete head lifts the deadline.
        let (mut client, mut done) = accepted(&listener, &table, Duration::from_millis(100)).await;
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        assert_eq!(done.read(&mut buf).await.unwrap(), 18);
        tokio::time::sleep(Duration::from_millis(200)).await;
        client.write_all(b"x").await.unwrap();
        assert_eq!(done.read(&mut buf).await.unwrap(), 1);
    }

    #[tokio::test]
    async fn an_oversized_head_is_answered_and_cut() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let table = ConnTable::new("connections", 10, 10, 1 << 20);
        let (mut client, mut server) = accepted(&listener, &table, Duration::from_secs(5)).await;
        client
            .write_all(&vec![b'a'; MAX_HEAD_BYTES + 10])
            .await
            .unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        let mut got = 0;
        let err = loop {
            match server.read(&mut buf).await {
                Ok(n) => got += n,
                Err(e) => break e,
            }
        };
        assert!(got <= MAX_HEAD_BYTES, "{got}");
        assert!(err.to_string().contains("request head over"), "{err}");
        drop(server);
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(2), client.read_to_end(&mut answer)).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    }
}
