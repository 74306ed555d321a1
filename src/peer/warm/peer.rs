//! The client's side of warm paths: [`Peer`] keeps one path to a service and opens a stream
//! on it for each connection; it builds the path (a punch through the server, as
//! [`crate::connect`] does, asking for a warm path) when there is none, and again when the
//! last one died.
//!
//! While a path is being built, yamux already runs over a socket that puts what it writes
//! into the punch's early data: the first streams' opening frames and first bytes leave with
//! the stream handshake, so the first connection on a new path costs what a connection
//! without warm paths costs.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use futures_util::AsyncWriteExt as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, Sleep};
use tokio_util::compat::{Compat, FuturesAsyncReadCompatExt, TokioAsyncReadCompatExt};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tokio_util::task::TaskTracker;

use super::{
    KEEPALIVE_INTERVAL, Meter, MuxStream, PING_TIMEOUT, PROBE_AFTER, PathSocket, PathState,
    StreamCount, yamux_config,
};
use crate::peer::client::{self, ConnectOptions, Connection};
use crate::peer::punch::EarlyData;
use crate::peer::session::{ConnectionInfo, Path};
use crate::peer::stream::PeerStream;
use crate::protocol::warm::{KIND_KEEPALIVE, KIND_SERVICE, PING};
use crate::{Error, defaults};

/// After an agent declined to keep a path open (it holds its most warm paths, in all or from
/// this client's address), connections go without warm paths this long before the client
/// asks again: an agent at its limit stays there for a while.
const WARM_RETRY: Duration = Duration::from_secs(60);
/// Bytes the socket of a path being built holds for the punch's early data before writes
/// wait for the path: what [`Peer::open_early`] reads ahead for two connections.
const EARLY_BUFFER: usize = 2 * defaults::EARLY_DATA_MAX;
/// Time a path's driver has to hand out a new stream: it does so at once unless 256 streams
/// wait for the agent's acknowledgement.
const OPEN_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a path has to say goodbye (yamux's go-away, the close record) when it ends.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// A relayed path without streams closes after at most this long, whatever `--warm-idle`
/// says: it holds one of the server's few relay slots (16 by default), which an idle client
/// should give back soon; long enough for the pauses within a burst of connections.
const RELAYED_IDLE: Duration = Duration::from_secs(30);
/// While a path runs through the relay, the client tries for a direct one in the background
/// (a NAT may have become passable: a phone moved from a carrier's network to Wi-Fi, a
/// router was reconfigured). The first try after this long, then each wait doubled up to
/// [`UPGRADE_MAX_WAIT`], at most [`UPGRADE_TRIES`] tries per relayed path: each try costs the
/// server a brokered session and the agent a punch, so a pair that stays blocked costs a
/// handful of them over a quarter of an hour, then nothing.
const UPGRADE_FIRST_WAIT: Duration = Duration::from_secs(5);
const UPGRADE_MAX_WAIT: Duration = Duration::from_secs(240);
const UPGRADE_TRIES: u32 = 8;

/// How a [`Peer`] keeps warm paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WarmOptions {
    /// A path that carries no stream for this long is closed (`--warm-idle`); the next
    /// connection builds a new one. Zero: no warm paths, one punched connection per
    /// connection.
    pub idle: Duration,
}

impl Default for WarmOptions {
    fn default() -> Self {
        WarmOptions {
            idle: defaults::WARM_IDLE,
        }
    }
}

/// A client's handle to one service that keeps a *warm path* to it: one punched, encrypted
/// connection that carries a stream per [`Peer::open`], so that every connection after the
/// first costs no server round trip and no punch (the first byte is on its way at once).
/// A path left without streams for [`WarmOptions::idle`] closes; a path that dies (no answer
/// to a ping within seconds) fails its open streams with an error saying so, and the next
/// open builds a new one. Clones share the path.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use tokio::io::{AsyncReadExt, AsyncWriteExt};
/// # let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// # let server = format!("http://{}", listener.local_addr()?);
/// # let stop = tokio_util::sync::CancellationToken::new();
/// # tokio::spawn(p2pnc::server::run(listener, Default::default(), stop.clone()));
/// # let mut agent = p2pnc::Agent::start(p2pnc::ExposeOptions::new(&server, "streamserver", Some("s3cret"))?).await?;
/// # tokio::spawn(async move {
/// #     while let Some(mut a) = agent.accept().await {
/// #         tokio::spawn(async move {
/// #             let (mut r, mut w) = tokio::io::split(&mut a.stream);
/// #             let _ = tokio::io::copy(&mut r, &mut w).await; // an echo service
/// #         });
/// #     }
/// # });
/// let opts = p2pnc::ConnectOptions::new(&server, "streamserver", Some("s3cret"))?;
/// let peer = p2pnc::Peer::connect(opts, p2pnc::WarmOptions::default()).await?;
/// for _ in 0..3 {
///     let mut conn = peer.open().await?; // no server round trip, no punch
///     assert!(conn.info.warm);
///     conn.stream.write_all(b"hello").await?;
///     let mut reply = [0u8; 5];
///     conn.stream.read_exact(&mut reply).await?;
/// }
/// peer.close().await;
/// # stop.cancel();
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Peer {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer")
            .field("peer", &self.inner.opts.peer)
            .field("warm", &self.inner.warm)
            .finish_non_exhaustive()
    }
}

struct Inner {
    opts: ConnectOptions,
    warm: WarmOptions,
    /// The path new streams go on (being built, up, or ended and not yet replaced).
    current: Mutex<Option<Arc<WarmPath>>>,
    /// Stops every path.
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// How far a path's build got.
#[derive(Clone)]
enum Build {
    Building,
    /// Up: how it was set up, whether the agent keeps it for more streams, and since when.
    Up {
        info: ConnectionInfo,
        kept: bool,
        at: Instant,
    },
    Failed(Arc<Error>),
}

/// A stream the driver opened, counted in its path from the start.
type Opened = Result<(yamux::Stream, StreamCount), String>;

/// A stream the agent echoes (see [`Peer::open_echo`]); it counts among the path's streams
/// while it lives.
pub struct EchoStream {
    io: Compat<yamux::Stream>,
    _count: super::StreamCount,
}

impl AsyncRead for EchoStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for EchoStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// One path as the [`Peer`] sees it; its driver task owns the connection.
struct WarmPath {
    state: Arc<PathState>,
    opens: mpsc::Sender<oneshot::Sender<Opened>>,
    build: watch::Receiver<Build>,
}

impl WarmPath {
    /// Whether new streams may go on this path: it has not ended, it is being built or kept
    /// open by the agent, and it has room.
    fn usable(&self) -> Usable {
        if self.state.ended().is_some() {
            return Usable::Replace;
        }
        match &*self.build.borrow() {
            Build::Failed(_) => Usable::Replace,
            Build::Up {
                kept: false, at, ..
            } => {
                if at.elapsed() < WARM_RETRY {
                    Usable::Cold
                } else {
                    Usable::Replace
                }
            }
            Build::Building | Build::Up { kept: true, .. } => {
                if self.state.streams() >= defaults::WARM_STREAMS_PER_PATH {
                    Usable::Cold
                } else {
                    Usable::Yes
                }
            }
        }
    }

    /// A new stream on the path, its kind byte written.
    async fn open(&self) -> Result<MuxStream, String> {
        let (stream, count) = self.open_kind(KIND_SERVICE).await?;
        Ok(MuxStream::client(stream, &self.state, count))
    }

    /// A new stream of `kind` on the path, its kind byte written, and its place in the count.
    async fn open_kind(
        &self,
        kind: u8,
    ) -> Result<(Compat<yamux::Stream>, super::StreamCount), String> {
        let (tx, rx) = oneshot::channel();
        let ended = || self.state.ended().unwrap_or("the path ended").to_string();
        self.opens.send(tx).await.map_err(|_| ended())?;
        let (mut stream, count) = match tokio::time::timeout(OPEN_TIMEOUT, rx).await {
            Ok(Ok(opened)) => opened?,
            Ok(Err(_)) => return Err(ended()),
            Err(_) => return Err("no stream from the path in time".into()),
        };
        stream.write_all(&[kind]).await.map_err(|e| e.to_string())?;
        Ok((stream.compat(), count))
    }
}

enum Usable {
    Yes,
    /// Go without a warm path for this connection.
    Cold,
    /// Build a new path.
    Replace,
}

impl Peer {
    /// A handle that builds its first path at the first [`Peer::open`].
    pub fn new(opts: ConnectOptions, warm: WarmOptions) -> Peer {
        Peer {
            inner: Arc::new(Inner {
                opts,
                warm,
                current: Mutex::new(None),
                stop: CancellationToken::new(),
                tasks: TaskTracker::new(),
            }),
        }
    }

    /// A handle whose first path is built now (`connect --warm`); fails as [`crate::connect`]
    /// does. With [`WarmOptions::idle`] zero no path is built (each open connects on its
    /// own).
    pub async fn connect(opts: ConnectOptions, warm: WarmOptions) -> Result<Peer, Error> {
        let peer = Peer::new(opts, warm);
        peer.warm_up().await?;
        Ok(peer)
    }

    /// Builds a path now unless one is up or being built, and waits for it.
    pub async fn warm_up(&self) -> Result<(), Error> {
        if self.inner.warm.idle.is_zero() {
            return Ok(());
        }
        let path = match self.path() {
            Some(p) => p,
            None => return Ok(()),
        };
        let mut build = path.build.clone();
        loop {
            match &*build.borrow_and_update() {
                Build::Building => {}
                Build::Up { .. } => return Ok(()),
                Build::Failed(e) => return Err(e.duplicate()),
            }
            if build.changed().await.is_err() {
                return Err(Error::Protocol("the path's builder stopped".into()));
            }
        }
    }

    /// A stream that the agent answers itself, sending back every byte it gets (the keepalive
    /// kind of stream, see docs/protocol.md), on the warm path (built first when there is
    /// none), and how that path was set up: `p2pnc ping` times round trips and throughput over
    /// the path itself with it. Fails when the agent keeps no warm path.
    pub async fn open_echo(&self) -> Result<(EchoStream, ConnectionInfo), Error> {
        self.warm_up().await?;
        let no_path = || {
            Error::Protocol(
                "the agent keeps no warm path for this client (at its limit, or relayed)".into(),
            )
        };
        let path = self.path().ok_or_else(no_path)?;
        let info = match &*path.build.borrow() {
            Build::Up {
                info, kept: true, ..
            } => info.clone(),
            _ => return Err(no_path()),
        };
        let (io, count) = path
            .open_kind(KIND_KEEPALIVE)
            .await
            .map_err(|why| Error::Io(io::Error::other(why)))?;
        Ok((EchoStream { io, _count: count }, info))
    }

    /// A new connection to the service: a stream on the warm path, which is built first when
    /// there is none (see [`Peer::open_early`]).
    pub async fn open(&self) -> Result<Connection, Error> {
        self.open_early(&mut tokio::io::empty()).await
    }

    /// Like [`Peer::open`], reading what `local` already sends while a path is being built
    /// (up to [`defaults::EARLY_DATA_MAX`] bytes) and writing it to the stream, as
    /// [`crate::connect_early`] does: those bytes leave with the stream handshake. On a path
    /// that is up, nothing is read: the stream is there at once. Carry on with
    /// [`crate::forward`] on the same `local`.
    pub async fn open_early<R>(&self, local: &mut R) -> Result<Connection, Error>
    where
        R: AsyncRead + Unpin + ?Sized,
    {
        let started = Instant::now();
        let mut retried = false;
        loop {
            let Some(path) = self.path() else {
                return client::connect_early(&self.inner.opts, local).await;
            };
            let stream = match path.open().await {
                Ok(s) => s,
                // The path ended between the check and the open: build another, once.
                Err(why) if !retried => {
                    tracing::debug!("warm path unusable ({why}); building another");
                    retried = true;
                    continue;
                }
                Err(why) => return Err(Error::Io(io::Error::other(why))),
            };
            return self.finish(&path, stream, local, started).await;
        }
    }

    /// Waits (reading `local` ahead) until the stream's path is up; the connection.
    async fn finish<R>(
        &self,
        path: &WarmPath,
        mut stream: MuxStream,
        local: &mut R,
        started: Instant,
    ) -> Result<Connection, Error>
    where
        R: AsyncRead + Unpin + ?Sized,
    {
        let mut build = path.build.clone();
        let was_up = matches!(&*build.borrow(), Build::Up { .. });
        let mut buf = vec![0u8; 16 * 1024];
        let mut local_open = !was_up;
        let mut sent = 0u64;
        let info = loop {
            match &*build.borrow_and_update() {
                Build::Building => {}
                Build::Up { info, .. } => break info.clone(),
                Build::Failed(e) => return Err(e.duplicate()),
            }
            tokio::select! {
                changed = build.changed() => if changed.is_err() {
                    return Err(Error::Protocol("the path's builder stopped".into()));
                },
                n = local.read(&mut buf), if local_open && sent < defaults::EARLY_DATA_MAX as u64 => match n {
                    Ok(n) if n > 0 => {
                        if let Err(e) = stream.write_all(&buf[..n]).await {
                            // The build failed meanwhile (its error says more), or the path broke.
                            if let Build::Failed(e) = &*build.borrow() {
                                return Err(e.duplicate());
                            }
                            return Err(e.into());
                        }
                        sent += n as u64;
                    }
                    // EOF or an error: the forwarding that follows meets it again.
                    _ => local_open = false,
                },
            }
        };
        let info = ConnectionInfo {
            setup: started.elapsed(),
            warm: was_up,
            ..info
        };
        Ok(Connection {
            stream: PeerStream::mux(stream),
            info,
            early_sent: sent,
        })
    }

    /// The path a new stream goes on, building one when needed; `None` when this connection
    /// goes without.
    fn path(&self) -> Option<Arc<WarmPath>> {
        let inner = &self.inner;
        if inner.warm.idle.is_zero() || inner.stop.is_cancelled() {
            return None;
        }
        let mut current = inner.current.lock().expect("warm path lock");
        if let Some(path) = current.as_ref() {
            match path.usable() {
                Usable::Yes => return Some(path.clone()),
                Usable::Cold => return None,
                Usable::Replace => {}
            }
        }
        let path = Arc::new(self.start_path());
        *current = Some(path.clone());
        Some(path)
    }

    /// Starts building a path: its driver runs yamux at once over a socket whose writes go to
    /// the punch's early data until the punched stream is there.
    fn start_path(&self) -> WarmPath {
        let inner = &self.inner;
        let state = Arc::new(PathState::default());
        let early = EarlyData::new();
        let (stream_tx, stream_rx) = oneshot::channel::<Box<dyn PathStream>>();
        let (build_tx, build) = watch::channel(Build::Building);
        let io = PathIo {
            early: early.clone(),
            state: IoState::Building(stream_rx),
        };
        let opens = spawn_driver(&inner.tasks, &state, io, inner.warm.idle, &inner.stop);
        let opts = ConnectOptions {
            early_data: Some(early),
            ..inner.opts.clone()
        };
        let (stop, builder_state) = (inner.stop.clone(), state.clone());
        let (tasks, weak) = (inner.tasks.clone(), Arc::downgrade(inner));
        inner.tasks.spawn(async move {
            let built = tokio::select! {
                _ = stop.cancelled() => Err(Error::Protocol("the client stopped".into())),
                built = client::connect_path(&opts, true) => built,
            };
            let build = match built {
                Ok((conn, Some(kept))) => {
                    let info = conn.info;
                    if info.path == Path::Relayed {
                        builder_state.set_relayed();
                    }
                    builder_state.set_up(info.peer_addr, info.encrypted, kept);
                    super::quiet_keepalive(&conn.stream);
                    let _ = stream_tx.send(Box::new(conn.stream));
                    tracing::info!(
                        "warm path to '{}' up ({}, {}) in {} ms{}",
                        opts.peer,
                        info.path,
                        info.peer_addr,
                        info.setup.as_millis(),
                        match (kept, info.path) {
                            (true, Path::Relayed) => ": relayed; looking for a direct path",
                            (true, _) => "",
                            (false, _) => ": the agent keeps no more warm paths (at its limit)",
                        }
                    );
                    if kept && info.path == Path::Relayed {
                        tasks.spawn(upgrade(weak, builder_state.clone()));
                    }
                    Build::Up {
                        info,
                        kept,
                        at: Instant::now(),
                    }
                }
                Ok((_, None)) => {
                    let e = Error::Protocol("the agent answered without a warm path".into());
                    builder_state.end(format!("it could not be built: {e}"));
                    Build::Failed(Arc::new(e))
                }
                Err(e) => {
                    builder_state.end(format!("it could not be built: {e}"));
                    Build::Failed(Arc::new(e))
                }
            };
            build_tx.send_replace(build);
        });
        WarmPath {
            state,
            opens,
            build,
        }
    }

    /// The id of the service.
    pub fn id(&self) -> &str {
        &self.inner.opts.peer
    }

    /// Closes every path (open streams end with an error) and waits for their tasks.
    pub async fn close(&self) {
        self.inner.stop.cancel();
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }
}

/// While the relayed path `relayed` carries new streams, tries for a direct path now and
/// then (see [`UPGRADE_FIRST_WAIT`]); once one is up, new streams go on it, and the relayed
/// path carries its open streams to their end. Stops when the relayed path ends or is no
/// longer the one new streams take, or when the [`Peer`] goes.
async fn upgrade(peer: std::sync::Weak<Inner>, relayed: Arc<PathState>) {
    let mut wait = UPGRADE_FIRST_WAIT;
    for attempt in 1..=UPGRADE_TRIES {
        let Some(stop) = peer.upgrade().map(|inner| inner.stop.clone()) else {
            return;
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(UPGRADE_MAX_WAIT);
        let Some(inner) = peer.upgrade() else { return };
        let is_current = |inner: &Inner| {
            let current = inner.current.lock().expect("warm path lock");
            current
                .as_ref()
                .is_some_and(|p| Arc::ptr_eq(&p.state, &relayed))
        };
        if relayed.ended().is_some() || !is_current(&inner) {
            return;
        }
        let opts = inner.opts.clone();
        let stop = inner.stop.clone();
        drop(inner);
        let tried = tokio::select! {
            _ = stop.cancelled() => return,
            tried = client::connect_direct_path(&opts, true) => tried,
        };
        let conn = match tried {
            Ok((conn, Some(true))) if conn.info.path != Path::Relayed => conn,
            Ok((conn, _)) => {
                tracing::debug!(
                    "direct path to '{}', try {attempt}: the agent keeps no more warm paths",
                    opts.peer
                );
                drop(conn);
                continue;
            }
            Err(e) => {
                tracing::debug!("direct path to '{}', try {attempt}: {e}", opts.peer);
                continue;
            }
        };
        let Some(inner) = peer.upgrade() else { return };
        let info = conn.info.clone();
        let path = Arc::new(adopt(&inner, conn));
        let mut current = inner.current.lock().expect("warm path lock");
        if current
            .as_ref()
            .is_some_and(|p| Arc::ptr_eq(&p.state, &relayed))
        {
            *current = Some(path);
            tracing::info!(
                "warm path to '{}' now direct ({}) after {attempt} tries; new connections \
                 take it, open ones stay on the relay",
                opts.peer,
                info.peer_addr
            );
        }
        return;
    }
    tracing::info!(
        "no direct path after {UPGRADE_TRIES} tries; the relayed path stays until it closes"
    );
}

/// A path that is up on `conn` (a proven stream whose agent keeps it for more streams).
fn adopt(inner: &Inner, conn: Connection) -> WarmPath {
    let info = conn.info;
    let state = Arc::new(PathState::default());
    state.set_up(info.peer_addr, info.encrypted, true);
    super::quiet_keepalive(&conn.stream);
    let io = PathIo {
        early: EarlyData::new(),
        state: IoState::Up(Box::new(conn.stream)),
    };
    let opens = spawn_driver(&inner.tasks, &state, io, inner.warm.idle, &inner.stop);
    let (_, build) = watch::channel(Build::Up {
        info,
        kept: true,
        at: Instant::now(),
    });
    WarmPath {
        state,
        opens,
        build,
    }
}

/// Starts the task that drives a path over `io`; the channel to ask it for streams.
fn spawn_driver(
    tasks: &TaskTracker,
    state: &Arc<PathState>,
    io: PathIo,
    idle: Duration,
    stop: &CancellationToken,
) -> mpsc::Sender<oneshot::Sender<Opened>> {
    let (opens_tx, opens) = mpsc::channel(16);
    let meter = Meter::new();
    let conn = yamux::Connection::new(
        PathSocket::new(io, meter.clone()).compat(),
        yamux_config(),
        yamux::Mode::Client,
    );
    let driver = Driver {
        conn,
        opens,
        waiting: None,
        opens_closed: false,
        keepalive: None,
        ping_bytes: Vec::new(),
        ping_sent: None,
        timer: Box::pin(tokio::time::sleep(KEEPALIVE_INTERVAL)),
        meter,
        state: state.clone(),
        idle,
        busy: false,
        idle_since: Instant::now(),
        stopped: Box::pin(stop.clone().cancelled_owned()),
        closing: None,
    };
    tasks.spawn(driver.run());
    opens_tx
}

/// What a path runs on: the punched stream (a [`PeerStream`]; an in-memory pipe in tests).
trait PathStream: AsyncRead + AsyncWrite + Send + Unpin {}

impl<S: AsyncRead + AsyncWrite + Send + Unpin> PathStream for S {}

/// The socket under a path's yamux: until the punched stream arrives, writes go to the
/// punch's early data (at most [`EARLY_BUFFER`] bytes) and reads wait; then what the punch
/// did not send goes first, and everything passes to the stream.
struct PathIo {
    early: EarlyData,
    state: IoState,
}

enum IoState {
    Building(oneshot::Receiver<Box<dyn PathStream>>),
    /// Up, with early data the punch left to send.
    Unsent(Box<dyn PathStream>, Vec<u8>, usize),
    Up(Box<dyn PathStream>),
    Failed,
}

impl PathIo {
    /// Moves on from building once the stream is there; `Ready(Ok)` when up.
    fn poll_up(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            match &mut self.state {
                IoState::Building(rx) => match Pin::new(rx).poll(cx) {
                    Poll::Ready(Ok(stream)) => {
                        self.state = IoState::Unsent(stream, self.early.take(), 0);
                    }
                    Poll::Ready(Err(_)) => self.state = IoState::Failed,
                    Poll::Pending => return Poll::Pending,
                },
                IoState::Unsent(stream, rest, pos) => {
                    while *pos < rest.len() {
                        let n = ready!(Pin::new(stream.as_mut()).poll_write(cx, &rest[*pos..]))?;
                        if n == 0 {
                            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                        }
                        *pos += n;
                    }
                    let IoState::Unsent(stream, ..) =
                        std::mem::replace(&mut self.state, IoState::Failed)
                    else {
                        unreachable!("matched above")
                    };
                    self.state = IoState::Up(stream);
                }
                IoState::Up(_) => return Poll::Ready(Ok(())),
                IoState::Failed => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::NotConnected,
                        "the path could not be built",
                    )));
                }
            }
        }
    }

    fn stream(&mut self) -> &mut Box<dyn PathStream> {
        match &mut self.state {
            IoState::Up(s) => s,
            _ => unreachable!("called once up"),
        }
    }
}

impl AsyncRead for PathIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        ready!(self.poll_up(cx))?;
        Pin::new(self.stream().as_mut()).poll_read(cx, buf)
    }
}

impl AsyncWrite for PathIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        match this.poll_up(cx) {
            Poll::Ready(r) => r?,
            Poll::Pending => {
                // Still building: the bytes go with the handshake, up to a bound.
                if this.early.len() >= EARLY_BUFFER {
                    return Poll::Pending;
                }
                this.early.push(buf);
                return Poll::Ready(Ok(buf.len()));
            }
        }
        Pin::new(this.stream().as_mut()).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.poll_up(cx) {
            Poll::Ready(r) => r?,
            Poll::Pending => return Poll::Ready(Ok(())),
        }
        Pin::new(self.stream().as_mut()).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.poll_up(cx) {
            Poll::Ready(r) => r?,
            Poll::Pending => return Poll::Ready(Ok(())),
        }
        Pin::new(self.stream().as_mut()).poll_shutdown(cx)
    }
}

/// The task that owns a path's yamux connection: hands out streams, pings, judges liveness,
/// and closes the path when it is idle, unwanted or dead.
struct Driver {
    conn: yamux::Connection<Compat<PathSocket<PathIo>>>,
    opens: mpsc::Receiver<oneshot::Sender<Opened>>,
    /// An open request waiting for yamux.
    waiting: Option<oneshot::Sender<Opened>>,
    /// Whether the [`Peer`] let go of the path (no more opens will come).
    opens_closed: bool,
    /// The stream pings go on, opened with the first ping.
    keepalive: Option<yamux::Stream>,
    /// Bytes still to write on the keepalive stream.
    ping_bytes: Vec<u8>,
    /// When the unanswered ping left, if one did.
    ping_sent: Option<Instant>,
    timer: Pin<Box<Sleep>>,
    meter: Arc<Meter>,
    state: Arc<PathState>,
    idle: Duration,
    /// Whether streams were open at the last look, and since when there are none.
    busy: bool,
    idle_since: Instant,
    /// Done when the [`Peer`] closes.
    stopped: Pin<Box<WaitForCancellationFutureOwned>>,
    /// Why the path is closing, once it is, and until when it may take.
    closing: Option<(String, Instant)>,
}

impl Driver {
    /// How long the path may stay without streams: shorter for a relayed one.
    fn idle(&self) -> Duration {
        if self.state.relayed() {
            self.idle.min(RELAYED_IDLE)
        } else {
            self.idle
        }
    }

    async fn run(mut self) {
        let why = std::future::poll_fn(|cx| self.poll(cx)).await;
        let streams = self.state.streams();
        self.state.end(why.clone());
        let t = self.meter.get();
        tracing::info!(
            "warm path ended ({} bytes sent, {} received; {streams} streams open): {why}",
            t.tx,
            t.rx
        );
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<String> {
        loop {
            self.state.watch_streams(cx);
            let now = Instant::now();
            let up = self.state.kept();
            let streams = self.state.streams();
            if streams > 0 {
                self.busy = true;
            } else if self.busy {
                self.busy = false;
                self.idle_since = now;
            }
            if self.closing.is_none() {
                let idle = streams == 0 && self.waiting.is_none();
                let why = if self.stopped.as_mut().poll(cx).is_ready() {
                    Some("the client stopped".to_string())
                } else if idle && up == Some(false) {
                    Some("its streams are done and the agent keeps it no longer".into())
                } else if idle && up.is_some() && self.opens_closed {
                    Some("no longer used".into())
                } else if idle && up == Some(true) && now >= self.idle_since + self.idle() {
                    Some(format!("idle for {} s", self.idle().as_secs()))
                } else {
                    None
                };
                if let Some(why) = why {
                    self.closing = Some((why, now + CLOSE_TIMEOUT));
                }
            }
            if let Some((why, until)) = &self.closing {
                if now >= *until {
                    return Poll::Ready(why.clone());
                }
                if self.conn.poll_close(cx).is_ready() {
                    return Poll::Ready(why.clone());
                }
                self.timer.as_mut().reset(*until);
                if self.timer.as_mut().poll(cx).is_ready() {
                    continue;
                }
                return Poll::Pending;
            }
            // Drive the connection; the client takes no streams from the agent.
            let tx_before = self.meter.get().tx;
            match self.conn.poll_next_inbound(cx) {
                Poll::Ready(Some(Ok(_stream))) => continue,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(e.to_string()),
                Poll::Ready(None) => return Poll::Ready("the agent closed it".into()),
                Poll::Pending => {}
            }
            if self.waiting.is_none() && !self.opens_closed {
                match self.opens.poll_recv(cx) {
                    Poll::Ready(Some(req)) => self.waiting = Some(req),
                    Poll::Ready(None) => {
                        self.opens_closed = true;
                        continue;
                    }
                    Poll::Pending => {}
                }
            }
            if let Some(req) = self.waiting.take() {
                match self.conn.poll_new_outbound(cx) {
                    Poll::Ready(Ok(stream)) => {
                        let _ = req.send(Ok((stream, self.state.count())));
                        // A path silent for a while may have died since: ask, so that a dead
                        // one is found within the ping timeout.
                        if up.is_some()
                            && self.ping_sent.is_none()
                            && now.duration_since(self.meter.get().last_rx) >= PROBE_AFTER
                        {
                            self.ping_bytes.push(PING);
                        }
                        continue;
                    }
                    Poll::Ready(Err(e)) => {
                        let _ = req.send(Err(e.to_string()));
                        return Poll::Ready(e.to_string());
                    }
                    Poll::Pending => self.waiting = Some(req),
                }
            }
            let mut wake = None;
            if up.is_some() {
                let t = self.meter.get();
                if let Some(sent) = self.ping_sent {
                    if t.last_rx >= sent {
                        self.ping_sent = None;
                    } else if now >= sent + PING_TIMEOUT {
                        return Poll::Ready(format!(
                            "no answer from the agent within {} s",
                            PING_TIMEOUT.as_secs()
                        ));
                    }
                }
                let keepalive_due = t.last_rx.min(t.last_tx) + KEEPALIVE_INTERVAL;
                // Streams are sending and nothing has come back for a while (not even yamux's
                // window updates): ask, so that a path cut mid-stream fails its streams
                // within the ping timeout instead of at the next keepalive.
                let unanswered_due = (streams > 0 && t.unanswered).then(|| t.last_rx + PROBE_AFTER);
                let due = unanswered_due.map_or(keepalive_due, |u| u.min(keepalive_due));
                if self.ping_sent.is_none() && self.ping_bytes.is_empty() && now >= due {
                    if now >= keepalive_due && t.tx > tx_before {
                        // Driven after a silence, yamux just sent a ping of its own (its
                        // round-trip measurement, at most every 10 s): that is the keepalive,
                        // and its answer is awaited like ours. A ping of ours too would only
                        // double the traffic.
                        self.ping_sent = Some(now);
                    } else {
                        self.ping_bytes.push(PING);
                    }
                }
                match self.poll_keepalive(cx, now) {
                    Ok(true) => continue,
                    Ok(false) => {}
                    Err(why) => return Poll::Ready(why),
                }
                wake = Some(match self.ping_sent {
                    Some(sent) => sent + PING_TIMEOUT,
                    None => due,
                });
                if up == Some(true) && streams == 0 && self.waiting.is_none() {
                    let idle_at = self.idle_since + self.idle();
                    wake = wake.map(|w| w.min(idle_at));
                }
            }
            if let Some(at) = wake {
                self.timer.as_mut().reset(at.max(now));
                if self.timer.as_mut().poll(cx).is_ready() {
                    continue;
                }
            }
            return Poll::Pending;
        }
    }

    /// Writes pending pings on the keepalive stream (opening it with the first one) and
    /// reads the agent's answers. `Ok(true)` when it wrote: the connection must be driven
    /// again to send it. `Err` when the path cannot go on.
    fn poll_keepalive(&mut self, cx: &mut Context<'_>, now: Instant) -> Result<bool, String> {
        if !self.ping_bytes.is_empty() && self.keepalive.is_none() {
            match self.conn.poll_new_outbound(cx) {
                Poll::Ready(Ok(stream)) => {
                    self.keepalive = Some(stream);
                    self.ping_bytes.insert(0, KIND_KEEPALIVE);
                }
                Poll::Ready(Err(e)) => return Err(e.to_string()),
                Poll::Pending => {}
            }
        }
        let Some(ka) = self.keepalive.as_mut() else {
            return Ok(false);
        };
        let mut wrote = false;
        use futures_util::{AsyncRead as _, AsyncWrite as _};
        while !self.ping_bytes.is_empty() {
            match Pin::new(&mut *ka).poll_write(cx, &self.ping_bytes) {
                Poll::Ready(Ok(n)) => {
                    self.ping_bytes.drain(..n);
                    self.ping_sent.get_or_insert(now);
                    wrote = true;
                }
                Poll::Ready(Err(e)) => return Err(format!("its keepalive stream failed: {e}")),
                Poll::Pending => break,
            }
        }
        let mut sink = [0u8; 64];
        loop {
            match Pin::new(&mut *ka).poll_read(cx, &mut sink) {
                Poll::Ready(Ok(0)) => return Err("the agent closed its keepalive stream".into()),
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Err(format!("its keepalive stream failed: {e}")),
                Poll::Pending => return Ok(wrote),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    use tokio::io::DuplexStream;
    use tokio::task::JoinSet;

    use super::*;
    use crate::peer::warm::echo_pings;
    use crate::protocol::{SessionId, Strategy};

    /// The agent's end, reduced to what a path needs: pings echoed, service streams echoed
    /// after their status byte. Ends with the connection.
    async fn fake_agent(io: DuplexStream) {
        let path = Arc::new(PathState::default());
        let mut conn = yamux::Connection::new(io.compat(), yamux_config(), yamux::Mode::Server);
        let mut streams = JoinSet::new();
        while let Some(Ok(stream)) = std::future::poll_fn(|cx| conn.poll_next_inbound(cx)).await {
            let path = path.clone();
            streams.spawn(async move {
                let mut io = stream.compat();
                let mut kind = [0u8; 1];
                if io.read_exact(&mut kind).await.is_err() {
                    return;
                }
                if kind[0] == KIND_KEEPALIVE {
                    return echo_pings(io).await;
                }
                let stream = MuxStream::agent(io, &path);
                let (mut r, mut w) = tokio::io::split(stream);
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    }

    /// A link between the two ends that can be cut (from then on it swallows every byte, as
    /// a dead route does) and counts what the client sends.
    #[derive(Clone, Default)]
    struct Link {
        cut: Arc<AtomicBool>,
        upstream: Arc<AtomicU64>,
    }

    impl Link {
        fn start(&self, client: DuplexStream, agent: DuplexStream) {
            let (cr, cw) = tokio::io::split(client);
            let (ar, aw) = tokio::io::split(agent);
            tokio::spawn(self.clone().pass(cr, aw, true));
            tokio::spawn(self.clone().pass(ar, cw, false));
        }

        async fn pass(
            self,
            mut from: impl AsyncRead + Unpin,
            mut to: impl AsyncWrite + Unpin,
            upstream: bool,
        ) {
            let mut buf = [0u8; 16 * 1024];
            while let Ok(n) = from.read(&mut buf).await {
                if n == 0 {
                    let _ = to.shutdown().await;
                    return;
                }
                if self.cut.load(Ordering::SeqCst) {
                    continue;
                }
                if upstream {
                    self.upstream.fetch_add(n as u64, Ordering::SeqCst);
                }
                if to.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }

    /// A path that is up over `link` to a fake agent, closed after `idle` without streams.
    fn path(
        link: &Link,
        idle: Duration,
        tasks: &TaskTracker,
        stop: &CancellationToken,
    ) -> WarmPath {
        let (client, a) = tokio::io::duplex(1 << 20);
        let (b, agent) = tokio::io::duplex(1 << 20);
        link.start(a, b);
        tokio::spawn(fake_agent(agent));
        let state = Arc::new(PathState::default());
        let peer = SocketAddr::from(([127, 0, 0, 1], 9));
        state.set_up(peer, true, true);
        let io = PathIo {
            early: EarlyData::new(),
            state: IoState::Up(Box::new(client)),
        };
        let opens = spawn_driver(tasks, &state, io, idle, stop);
        let info = ConnectionInfo {
            path: Path::Direct,
            peer_addr: peer,
            setup: Duration::ZERO,
            session: SessionId::from_bytes([7; 16]),
            strategy: Strategy::Simultaneous,
            encrypted: true,
            warm: false,
        };
        let (_tx, build) = watch::channel(Build::Up {
            info,
            kept: true,
            at: Instant::now(),
        });
        WarmPath {
            state,
            opens,
            build,
        }
    }

    use std::net::SocketAddr;

    async fn roundtrip(stream: &mut MuxStream, bytes: &[u8]) {
        stream.write_all(bytes).await.unwrap();
        let mut back = vec![0u8; bytes.len()];
        stream.read_exact(&mut back).await.unwrap();
        assert_eq!(back, bytes);
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_path_is_kept_alive_by_a_ping_every_keepalive_interval() {
        let (link, tasks, stop) = (
            Link::default(),
            TaskTracker::new(),
            CancellationToken::new(),
        );
        let path = path(&link, Duration::from_secs(3600), &tasks, &stop);
        let mut stream = path.open().await.unwrap();
        roundtrip(&mut stream, b"hello").await;
        let before = link.upstream.load(Ordering::SeqCst);
        // Three keepalive intervals of silence, each ended by one ping (and its answer).
        tokio::time::sleep(3 * KEEPALIVE_INTERVAL + Duration::from_secs(1)).await;
        let idle_bytes = link.upstream.load(Ordering::SeqCst) - before;
        assert!(path.state.ended().is_none(), "{:?}", path.state.ended());
        // In real time, yamux's own ping (its round-trip measurement) is the keepalive. It
        // counts its 10 s on the real clock, which hardly moves in paused time: here each
        // keepalive is a ping of ours on the keepalive stream, its 12-byte header and one
        // byte (the first one also the stream's kind), and nothing else.
        assert_eq!(idle_bytes, 3 * 13 + 1, "bytes sent in three idle intervals");
        roundtrip(&mut stream, b"still there").await;
        stop.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn a_path_that_stops_answering_fails_its_streams_within_the_ping_timeout() {
        let (link, tasks, stop) = (
            Link::default(),
            TaskTracker::new(),
            CancellationToken::new(),
        );
        let path = path(&link, Duration::from_secs(3600), &tasks, &stop);
        let mut stream = path.open().await.unwrap();
        roundtrip(&mut stream, b"hello").await;
        let cut = Instant::now();
        link.cut.store(true, Ordering::SeqCst);
        let err = stream.read(&mut [0u8; 8]).await.unwrap_err();
        let took = cut.elapsed();
        assert_eq!(
            err.to_string(),
            "the warm path ended: no answer from the agent within 5 s"
        );
        // Found at the next keepalive, one ping timeout later.
        assert!(
            took <= KEEPALIVE_INTERVAL + PING_TIMEOUT + Duration::from_secs(1),
            "{took:?}"
        );
        assert!(matches!(path.usable(), Usable::Replace));
        assert!(path.open().await.is_err(), "no stream on a dead path");
    }

    #[tokio::test(start_paused = true)]
    async fn a_path_cut_while_a_stream_sends_fails_it_within_a_probe_and_a_ping_timeout() {
        let (link, tasks, stop) = (
            Link::default(),
            TaskTracker::new(),
            CancellationToken::new(),
        );
        let path = path(&link, Duration::from_secs(3600), &tasks, &stop);
        let mut stream = path.open().await.unwrap();
        roundtrip(&mut stream, b"hello").await;
        link.cut.store(true, Ordering::SeqCst);
        let cut = Instant::now();
        let (mut r, mut w) = tokio::io::split(stream);
        let writer = tokio::spawn(async move {
            let chunk = [7u8; 16 * 1024];
            while w.write_all(&chunk).await.is_ok() {}
        });
        let err = r.read(&mut [0u8; 8]).await.unwrap_err();
        let took = cut.elapsed();
        assert_eq!(
            err.to_string(),
            "the warm path ended: no answer from the agent within 5 s"
        );
        // Not at the next keepalive (25 s): what is sent and not answered for the probe
        // time is asked about at once.
        assert!(
            took <= PROBE_AFTER + PING_TIMEOUT + Duration::from_secs(1),
            "{took:?}"
        );
        writer.await.unwrap();
        stop.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_opened_on_a_quiet_path_finds_it_dead_within_the_ping_timeout() {
        let (link, tasks, stop) = (
            Link::default(),
            TaskTracker::new(),
            CancellationToken::new(),
        );
        let path = path(&link, Duration::from_secs(3600), &tasks, &stop);
        let mut first = path.open().await.unwrap();
        roundtrip(&mut first, b"hello").await;
        drop(first);
        tokio::time::sleep(KEEPALIVE_INTERVAL / 2).await;
        link.cut.store(true, Ordering::SeqCst);
        let opened = Instant::now();
        let mut stream = path.open().await.unwrap();
        stream.write_all(b"request").await.unwrap();
        let err = stream.read(&mut [0u8; 8]).await.unwrap_err();
        assert!(
            err.to_string().contains("no answer from the agent"),
            "{err}"
        );
        assert!(
            opened.elapsed() <= PING_TIMEOUT + Duration::from_secs(1),
            "{:?}",
            opened.elapsed()
        );
        stop.cancel();
    }

    #[tokio::test(start_paused = true)]
    async fn a_path_without_streams_closes_after_its_idle_time() {
        let (link, tasks, stop) = (
            Link::default(),
            TaskTracker::new(),
            CancellationToken::new(),
        );
        let idle = Duration::from_secs(60);
        let path = path(&link, idle, &tasks, &stop);
        let mut stream = path.open().await.unwrap();
        roundtrip(&mut stream, b"hello").await;
        tokio::time::sleep(2 * idle).await;
        assert!(path.state.ended().is_none(), "a stream is open: not idle");
        let last = Instant::now();
        drop(stream);
        while path.state.ended().is_none() {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        assert_eq!(path.state.ended(), Some("idle for 60 s"));
        let after = last.elapsed();
        assert!(
            after >= idle && after <= idle + Duration::from_secs(2),
            "{after:?}"
        );
    }
}
