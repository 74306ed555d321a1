//! One service stream of a warm path as a [`crate::PeerStream`] carries it: the agent's
//! status byte ahead of the service's bytes, and errors that say why a stream ended (the
//! path's end, a reset) instead of yamux's own.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_util::compat::Compat;
use tokio_util::sync::WaitForCancellationFutureOwned;

use super::{GATHER, PathState, StreamCount};
use crate::protocol::warm::{MAX_REFUSAL, STATUS_CONNECTED, STATUS_REFUSED};

/// How long a refusal may take to reach the client before the stream is dropped anyway.
const REFUSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Which end of a service stream this is.
enum End {
    /// The client's: the agent's status byte comes first.
    Client(Status),
    /// The agent's: its status byte goes first, with the first bytes it writes (or its
    /// close, or its refusal).
    Agent { status_sent: bool },
}

/// What the client knows of the agent's status.
enum Status {
    Awaiting,
    Connected,
    /// Refused: the reason read so far.
    Refused(Vec<u8>),
}

/// One service stream of a warm path, as a [`crate::PeerStream`] carries it: yamux's stream,
/// the status byte, and errors that say why instead of a silent end when the path died or
/// the other end reset the stream.
pub(crate) struct MuxStream {
    io: Compat<yamux::Stream>,
    path: Arc<PathState>,
    end: End,
    /// Whether this end has closed its sending side.
    closed: bool,
    /// Resolves when the path ends (see [`PathState::closed`]).
    path_end: Pin<Box<WaitForCancellationFutureOwned>>,
    _count: StreamCount,
}

impl MuxStream {
    /// The client's end of a service stream whose kind byte was written, counted in its
    /// path by `count`.
    pub fn client(io: Compat<yamux::Stream>, path: &Arc<PathState>, count: StreamCount) -> Self {
        MuxStream {
            io,
            path: path.clone(),
            end: End::Client(Status::Awaiting),
            closed: false,
            path_end: Box::pin(path.closed.clone().cancelled_owned()),
            _count: count,
        }
    }

    /// The agent's end of a service stream whose kind byte was read.
    pub fn agent(io: Compat<yamux::Stream>, path: &Arc<PathState>) -> Self {
        MuxStream {
            io,
            path: path.clone(),
            end: End::Agent { status_sent: false },
            closed: false,
            path_end: Box::pin(path.closed.clone().cancelled_owned()),
            _count: path.count(),
        }
    }

    /// The peer's address on the path (unspecified before the path is up).
    pub fn peer_addr(&self) -> SocketAddr {
        self.path
            .peer
            .get()
            .map_or(SocketAddr::from(([0, 0, 0, 0], 0)), |p| p.0)
    }

    /// Whether the path's bytes are encrypted.
    pub fn is_encrypted(&self) -> bool {
        self.path.peer.get().is_none_or(|p| p.1)
    }

    /// Agent: tells the client why its stream cannot be served (one line) and closes it.
    /// After the first bytes of the service went out, the stream is reset instead.
    pub async fn refuse(mut self, why: &str) {
        if matches!(self.end, End::Agent { status_sent: false }) {
            self.end = End::Agent { status_sent: true };
            let why = &why.as_bytes()[..why.len().min(MAX_REFUSAL)];
            let mut bytes = Vec::with_capacity(1 + why.len());
            bytes.push(STATUS_REFUSED);
            bytes.extend_from_slice(why);
            let _ = tokio::time::timeout(REFUSE_TIMEOUT, async {
                self.io.write_all(&bytes).await?;
                self.io.shutdown().await
            })
            .await;
        }
    }

    /// A read that found the end: clean, or an error saying why.
    fn eof(&self) -> io::Result<()> {
        if let Some(e) = self.path.error() {
            return Err(e);
        }
        // A FIN while this end still sends leaves the stream half open; only a reset (or the
        // path's end) closes both sides at once.
        if !self.closed && self.io.get_ref().is_closed() {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "the other end reset the stream",
            ));
        }
        Ok(())
    }
}

/// An error of yamux's on a stream of `path` (a read sends window updates: it can fail as a
/// write does), said better when the path ended or the stream was reset.
fn stream_error(path: &PathState, stream: &yamux::Stream, e: io::Error) -> io::Error {
    if let Some(e) = path.error() {
        return e;
    }
    if e.kind() == io::ErrorKind::WriteZero {
        if stream.is_closed() {
            return io::Error::new(
                io::ErrorKind::ConnectionReset,
                "the other end reset the stream",
            );
        }
        // yamux's own words are "N/M: connection is closed": the path is closing and its
        // end is not recorded yet.
        return io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "the warm path ended: it is closing",
        );
    }
    e
}

/// `poll` of a stream of `path`, unless it waits and the path has ended (see
/// [`PathState::closed`]): then the path's error; errors said better by [`stream_error`].
fn settle<T>(
    poll: Poll<io::Result<T>>,
    path_end: &mut Pin<Box<WaitForCancellationFutureOwned>>,
    path: &PathState,
    stream: &yamux::Stream,
    cx: &mut Context<'_>,
) -> Poll<io::Result<T>> {
    if poll.is_pending() && path_end.as_mut().poll(cx).is_ready() {
        let e = path.error();
        return Poll::Ready(Err(
            e.unwrap_or_else(|| io::ErrorKind::ConnectionAborted.into())
        ));
    }
    poll.map_err(|e| stream_error(path, stream, e))
}

impl AsyncRead for MuxStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            let status = match &mut this.end {
                End::Agent { .. } | End::Client(Status::Connected) => {
                    let before = buf.filled().len();
                    ready!(settle(
                        Pin::new(&mut this.io).poll_read(cx, buf),
                        &mut this.path_end,
                        &this.path,
                        this.io.get_ref(),
                        cx
                    ))?;
                    if buf.filled().len() == before && buf.remaining() > 0 {
                        return Poll::Ready(this.eof());
                    }
                    return Poll::Ready(Ok(()));
                }
                End::Client(status) => status,
            };
            match status {
                Status::Awaiting => {
                    let before = buf.filled().len();
                    ready!(settle(
                        Pin::new(&mut this.io).poll_read(cx, buf),
                        &mut this.path_end,
                        &this.path,
                        this.io.get_ref(),
                        cx
                    ))?;
                    let got = buf.filled().len() - before;
                    if got == 0 {
                        this.eof()?;
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the agent closed the stream without a word",
                        )));
                    }
                    let first = buf.filled()[before];
                    let rest = buf.filled()[before + 1..].to_vec();
                    buf.set_filled(before);
                    match first {
                        STATUS_CONNECTED => {
                            *status = Status::Connected;
                            if !rest.is_empty() {
                                buf.put_slice(&rest);
                                return Poll::Ready(Ok(()));
                            }
                        }
                        STATUS_REFUSED => *status = Status::Refused(rest),
                        other => {
                            return Poll::Ready(Err(io::Error::new(
                                io::ErrorKind::InvalidData,
                                format!("unknown status {other:#04x} on a warm stream"),
                            )));
                        }
                    }
                }
                Status::Refused(why) => {
                    let mut chunk = [0u8; 256];
                    let mut rb = ReadBuf::new(&mut chunk);
                    ready!(settle(
                        Pin::new(&mut this.io).poll_read(cx, &mut rb),
                        &mut this.path_end,
                        &this.path,
                        this.io.get_ref(),
                        cx
                    ))?;
                    let got = rb.filled();
                    if !got.is_empty() && why.len() < MAX_REFUSAL {
                        why.extend_from_slice(got);
                        continue;
                    }
                    let why = String::from_utf8_lossy(&why[..why.len().min(MAX_REFUSAL)]);
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::ConnectionRefused,
                        why.trim().to_string(),
                    )));
                }
                Status::Connected => unreachable!("handled above"),
            }
        }
    }
}

impl AsyncWrite for MuxStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if matches!(this.end, End::Agent { status_sent: false }) {
            // The status byte leaves with the first bytes of the service.
            let take = buf.len().min(GATHER);
            let mut first = Vec::with_capacity(1 + take);
            first.push(STATUS_CONNECTED);
            first.extend_from_slice(&buf[..take]);
            let n = ready!(settle(
                Pin::new(&mut this.io).poll_write(cx, &first),
                &mut this.path_end,
                &this.path,
                this.io.get_ref(),
                cx
            ))?;
            this.end = End::Agent { status_sent: true };
            if n > 1 {
                return Poll::Ready(Ok(n - 1));
            }
        }
        let poll = Pin::new(&mut this.io).poll_write(cx, buf);
        settle(poll, &mut this.path_end, &this.path, this.io.get_ref(), cx)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let poll = Pin::new(&mut this.io).poll_flush(cx);
        settle(poll, &mut this.path_end, &this.path, this.io.get_ref(), cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if matches!(this.end, End::Agent { status_sent: false }) {
            ready!(settle(
                Pin::new(&mut this.io).poll_write(cx, &[STATUS_CONNECTED]),
                &mut this.path_end,
                &this.path,
                this.io.get_ref(),
                cx
            ))?;
            this.end = End::Agent { status_sent: true };
        }
        ready!(settle(
            Pin::new(&mut this.io).poll_shutdown(cx),
            &mut this.path_end,
            &this.path,
            this.io.get_ref(),
            cx
        ))?;
        this.closed = true;
        Poll::Ready(Ok(()))
    }
}
