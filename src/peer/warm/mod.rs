//! Warm paths: one punched, proven stream that carries many streams (a yamux session on top
//! of the stream's records), so that a client's later connections to the same service need
//! neither the server nor a punch (`docs/protocol.md`, "Warm paths").
//!
//! - here: what both ends share: the path's state, the socket under yamux (it counts the
//!   traffic liveness is judged by, and writes each yamux frame as one record), yamux's
//!   settings;
//! - [`stream`]: [`MuxStream`], one stream of a path as a [`crate::PeerStream`] carries it;
//! - [`peer`]: the client's [`Peer`], which builds a path on demand and keeps it alive;
//! - the agent's side is `agent::warm`.

pub(crate) mod peer;
mod stream;

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

use crate::defaults;
use crate::peer::stream::poll_drain_buf;

pub use self::peer::{EchoStream, Peer, WarmOptions};
pub(crate) use self::stream::MuxStream;

/// Silence after which the client pings its agent: traffic every 25 s keeps the NAT mappings
/// of the path alive under the 30 s idle timeout that some NATs and stateful firewalls apply
/// (RFC 5382 asks for two hours on established TCP, which not every device honours), and the
/// agent hears from its client at least that often.
pub(crate) const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(25);
/// How long a ping may wait for any byte from the other end before the path counts as dead:
/// many round trips of a slow mobile network, and a retransmitted segment or two.
pub(crate) const PING_TIMEOUT: Duration = Duration::from_secs(5);
/// A stream opened on a path that has been silent this long sends a ping along, so a path
/// that died since its last traffic is found within [`PING_TIMEOUT`] instead of at the next
/// keepalive. Shorter than any keepalive, longer than a burst of connections.
pub(crate) const PROBE_AFTER: Duration = Duration::from_secs(2);
/// An agent that has heard nothing from its client for this long ends the path: two missed
/// keepalives and a ping timeout.
pub(crate) const AGENT_SILENCE: Duration =
    Duration::from_secs(2 * KEEPALIVE_INTERVAL.as_secs() + PING_TIMEOUT.as_secs());
/// Idle time before the kernel's keepalive probes on a warm path's TCP connection: past the
/// pings, which keep it busier, so the probes add no traffic while the pings flow.
const TCP_KEEPALIVE_IDLE: Duration = AGENT_SILENCE;

/// Lets the pings, not the kernel's keepalive probes, keep a warm path's TCP connection alive
/// (the probes stay as a backstop; see [`crate::net::watch_liveness_after`]).
pub(crate) fn quiet_keepalive(stream: &crate::PeerStream) {
    if let Some(tcp) = stream.tcp()
        && let Err(e) = crate::net::watch_liveness_after(tcp, TCP_KEEPALIVE_IDLE)
    {
        tracing::debug!("keepalive on the warm path: {e}");
    }
}

/// Plaintext the socket under yamux gathers before it writes: a frame's header and body go
/// out as one record; a larger write passes straight through.
const GATHER: usize = 64 * 1024;
/// Receive window a path may grow beyond yamux's 256 KiB per stream, shared by its streams:
/// enough for one stream to fill a long fat path (yamux doubles a stream's window while it
/// keeps up), while a peer that sends into streams nobody reads cannot make a path buffer more
/// than this plus 256 KiB a stream.
const WINDOW_GROWTH: usize = 32 * 1024 * 1024;
/// Bytes read (and echoed) at a time on a keepalive stream: pings are single bytes, but
/// `p2pnc ping --bytes` measures throughput through the echo, which 16 KiB chunks (a quarter
/// of a record) carry at the path's speed where 64-byte ones would cost a frame each.
const PING_CHUNK: usize = 16 * 1024;
/// Largest body of a yamux data frame: with its 12-byte header, one record.
const FRAME_BODY: usize = crate::protocol::MAX_RECORD_BODY - 12;

/// The yamux settings of both ends. Streams beyond the per-path limit are refused by the
/// agent with a status; yamux's own limit, past which it would end the whole path, leaves
/// room for the keepalive stream and streams still closing.
pub(crate) fn yamux_config() -> yamux::Config {
    let streams = 2 * defaults::WARM_STREAMS_PER_PATH + 2;
    let mut config = yamux::Config::default();
    config.set_split_send_size(FRAME_BODY);
    config.set_max_num_streams(streams);
    config.set_max_connection_receive_window(Some(
        streams * yamux::DEFAULT_CREDIT as usize + WINDOW_GROWTH,
    ));
    config
}

/// What both ends of a warm path share with its streams.
#[derive(Default)]
pub(crate) struct PathState {
    /// Why the path ended, once it has.
    ended: OnceLock<String>,
    /// The peer's address and whether the path is encrypted, once it is up.
    peer: OnceLock<(SocketAddr, bool)>,
    /// Once it is up: whether the agent keeps it open for more streams.
    kept: OnceLock<bool>,
    /// Service streams open now.
    streams: AtomicUsize,
    /// Whether the path runs through the server's relay.
    relayed: AtomicBool,
    /// The task driving the path, woken when a stream closes.
    driver: AtomicWaker,
    /// Cancelled when the path ends. yamux wakes no stream of a connection that is closed
    /// gracefully (it forgets them), so every stream also waits on this: without it, a stream
    /// reading when its agent stops would wait forever.
    closed: CancellationToken,
}

impl PathState {
    /// Marks the path ended (the first reason stays).
    pub fn end(&self, why: impl Into<String>) {
        let _ = self.ended.set(why.into());
        self.closed.cancel();
    }

    /// Resolves once the path has ended.
    pub fn closed(&self) -> WaitForCancellationFuture<'_> {
        self.closed.cancelled()
    }

    /// Why the path ended, if it has.
    pub fn ended(&self) -> Option<&str> {
        self.ended.get().map(String::as_str)
    }

    /// The error of a stream whose path ended.
    fn error(&self) -> Option<io::Error> {
        self.ended().map(|why| {
            io::Error::new(
                io::ErrorKind::ConnectionAborted,
                format!("the warm path ended: {why}"),
            )
        })
    }

    /// Records that the path is up: the peer's address, the path's encryption, and whether
    /// the agent keeps it for more streams.
    pub fn set_up(&self, peer: SocketAddr, encrypted: bool, kept: bool) {
        let _ = self.peer.set((peer, encrypted));
        let _ = self.kept.set(kept);
    }

    /// Marks the path as one through the server's relay.
    pub fn set_relayed(&self) {
        self.relayed.store(true, Ordering::SeqCst);
    }

    /// Whether the path runs through the server's relay.
    pub fn relayed(&self) -> bool {
        self.relayed.load(Ordering::SeqCst)
    }

    /// `None` while the path is being built; once up, whether it is kept for more streams.
    pub fn kept(&self) -> Option<bool> {
        self.kept.get().copied()
    }

    /// Service streams open now.
    pub fn streams(&self) -> usize {
        self.streams.load(Ordering::SeqCst)
    }

    /// Counts a service stream until the guard is dropped.
    pub fn count(self: &Arc<Self>) -> StreamCount {
        self.streams.fetch_add(1, Ordering::SeqCst);
        StreamCount(self.clone())
    }

    /// Registers the driver's waker: it is woken whenever a stream closes.
    pub fn watch_streams(&self, cx: &Context<'_>) {
        self.driver.register(cx.waker());
    }
}

/// A service stream's place in its path's count.
pub(crate) struct StreamCount(Arc<PathState>);

impl Drop for StreamCount {
    fn drop(&mut self) {
        self.0.streams.fetch_sub(1, Ordering::SeqCst);
        self.0.driver.wake();
    }
}

/// Traffic on a path's socket: what liveness is judged by.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Traffic {
    /// When the last byte arrived.
    pub last_rx: Instant,
    /// When the last byte was written.
    pub last_tx: Instant,
    /// Bytes received and sent (plaintext, yamux framing included).
    pub rx: u64,
    pub tx: u64,
    /// Whether bytes were written since the last byte arrived.
    pub unanswered: bool,
}

/// The traffic of one path, shared by its socket and its driver.
pub(crate) struct Meter(Mutex<Traffic>);

impl Meter {
    /// A meter that counts the path as heard from and written to now.
    pub fn new() -> Arc<Self> {
        let now = Instant::now();
        Arc::new(Meter(Mutex::new(Traffic {
            last_rx: now,
            last_tx: now,
            rx: 0,
            tx: 0,
            unanswered: false,
        })))
    }

    pub fn get(&self) -> Traffic {
        *self.0.lock().expect("meter lock")
    }

    fn received(&self, n: usize) {
        let mut t = self.0.lock().expect("meter lock");
        t.rx += n as u64;
        t.last_rx = Instant::now();
        t.unanswered = false;
    }

    fn sent(&self, n: usize) {
        let mut t = self.0.lock().expect("meter lock");
        t.tx += n as u64;
        t.last_tx = Instant::now();
        t.unanswered = true;
    }
}

/// The socket yamux runs on: counts what passes (see [`Meter`]) and gathers writes until
/// yamux flushes, so that a frame's 12-byte header and its body become one record and one
/// segment instead of two.
pub(crate) struct PathSocket<S> {
    inner: S,
    meter: Arc<Meter>,
    wbuf: Vec<u8>,
    wpos: usize,
}

impl<S> PathSocket<S> {
    pub fn new(inner: S, meter: Arc<Meter>) -> Self {
        PathSocket {
            inner,
            meter,
            wbuf: Vec::new(),
            wpos: 0,
        }
    }
}

impl<S: AsyncWrite + Unpin> PathSocket<S> {
    /// Writes what was gathered.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let meter = &self.meter;
        poll_drain_buf(&mut self.inner, &mut self.wbuf, &mut self.wpos, cx, |n| {
            meter.sent(n)
        })
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for PathSocket<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        let got = buf.filled().len() - before;
        if got > 0 {
            self.meter.received(got);
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for PathSocket<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.wbuf.len() + buf.len() > GATHER {
            ready!(this.poll_drain(cx))?;
        }
        if buf.len() >= GATHER {
            let n = ready!(Pin::new(&mut this.inner).poll_write(cx, buf))?;
            this.meter.sent(n);
            return Poll::Ready(Ok(n));
        }
        this.wbuf.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The agent's side of the keepalive stream (its kind byte read): sends back every byte, until
/// the stream or the path ends.
pub(crate) async fn echo_pings<S: AsyncRead + AsyncWrite + Unpin>(mut io: S) {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; PING_CHUNK];
    loop {
        match io.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if io.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}
