//! The stream a connection hands out: encrypted records over TCP by default, or raw TCP when
//! both ends agreed to go without (`--no-encrypt`) or for the seed's plain mode, or one of the
//! streams of a warm path (see `warm`).
//!
//! Records are `length (u16) || AES-GCM(type || body)` under the keys of the stream's Noise
//! handshake (see `p2pnc_protocol::stream`). Reads open records in place in one buffer; writes
//! seal up to four records per system call. Shutting the write side down sends a `close`
//! record before the FIN, so that an attacker who cuts the TCP stream short is noticed: EOF
//! without it is an error.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::SocketAddr;
use std::ops::Range;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::net;
use crate::peer::warm::MuxStream;
use crate::protocol::{
    MAX_RECORD_BODY, RECORD_BODY_AT, RECORD_OVERHEAD, RecordCipher, record, seal_record,
    seal_record_in_place,
};

/// Plaintext taken per write: several records, sealed together and written with one call.
const WRITE_BATCH: usize = 4 * MAX_RECORD_BODY;
/// Ciphertext read per system call.
const READ_CHUNK: usize = 256 * 1024;
/// Records sealed per read and write when forwarding from a local connection that has the
/// bytes ready: about 256 KiB per system call.
const FORWARD_RECORDS: usize = 4;
/// Room for one record of the largest size while forwarding.
const FORWARD_SLOT: usize = MAX_RECORD_BODY + RECORD_OVERHEAD;
/// How long a refusal may take to reach the client before the stream is dropped anyway.
const REFUSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Why a stream of records failed.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// A record did not decrypt: it was changed, replayed, reordered or forged.
    #[error("record {0} failed authentication (tampered, replayed or out of order)")]
    Auth(u64),
    /// The TCP stream ended without a `close` record.
    #[error("the stream was cut short: the peer's side ended without closing it")]
    Truncated,
    /// A record of a type this version does not know.
    #[error("record {0} has an unknown type {1:#04x}")]
    UnknownType(u64, u8),
    /// A record without even its type byte.
    #[error("record {0} is empty")]
    Empty(u64),
    /// The agent could not reach its service.
    #[error("{0}")]
    Refused(String),
}

impl From<RecordError> for io::Error {
    fn from(e: RecordError) -> Self {
        let kind = match e {
            RecordError::Truncated => io::ErrorKind::UnexpectedEof,
            RecordError::Refused(_) => io::ErrorKind::ConnectionRefused,
            _ => io::ErrorKind::InvalidData,
        };
        io::Error::new(kind, e)
    }
}

/// A byte stream whose bytes travel in sealed records.
pub(crate) struct SecureStream<S> {
    inner: S,
    send: RecordCipher,
    recv: RecordCipher,
    /// Plaintext that arrived with the handshake (the client's early data), read first.
    prefix: Vec<u8>,
    prefix_pos: usize,
    /// `rbuf[ppos..pend]`: plaintext opened in place and not yet read; `rbuf[rpos..]`:
    /// ciphertext not yet opened.
    rbuf: Vec<u8>,
    ppos: usize,
    pend: usize,
    rpos: usize,
    read_done: bool,
    /// Sealed records not yet written: `wbuf[wpos..]`.
    wbuf: Vec<u8>,
    wpos: usize,
    close_queued: bool,
}

impl<S> SecureStream<S> {
    /// Wraps `inner` after the handshake, with the ciphers as the handshake left them and the
    /// plaintext that came with it.
    pub fn new(inner: S, send: RecordCipher, recv: RecordCipher, prefix: Vec<u8>) -> Self {
        SecureStream {
            inner,
            send,
            recv,
            prefix,
            prefix_pos: 0,
            rbuf: Vec::new(),
            ppos: 0,
            pend: 0,
            rpos: 0,
            read_done: false,
            wbuf: Vec::new(),
            wpos: 0,
            close_queued: false,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Seals records of `kind` carrying `body` (split as needed) onto the write buffer.
    fn queue(&mut self, kind: u8, body: &[u8]) {
        if body.is_empty() {
            seal_record(&mut self.send, kind, body, &mut self.wbuf);
        }
        for chunk in body.chunks(MAX_RECORD_BODY) {
            seal_record(&mut self.send, kind, chunk, &mut self.wbuf);
        }
    }

    /// Opens the next complete record in the read buffer: `Ok(true)` when it yielded
    /// plaintext or the end, `Ok(false)` when more ciphertext is needed.
    fn open(&mut self) -> Result<bool, RecordError> {
        match open_next(&mut self.rbuf, &mut self.rpos, &mut self.recv)? {
            None => Ok(false),
            Some(Opened::Data(body)) => {
                (self.ppos, self.pend) = (body.start, body.end);
                Ok(true)
            }
            Some(Opened::Close) => {
                self.read_done = true;
                Ok(true)
            }
        }
    }
}

/// What the next record of a read buffer held.
enum Opened {
    /// Plaintext, at this range of the buffer.
    Data(Range<usize>),
    /// The peer's `close`: it sends nothing more.
    Close,
}

/// Opens, in place, the record at `buf[*pos..]` and moves `pos` past it; `None` when the
/// record is not complete yet.
fn open_next(
    buf: &mut [u8],
    pos: &mut usize,
    recv: &mut RecordCipher,
) -> Result<Option<Opened>, RecordError> {
    let avail = &buf[*pos..];
    if avail.len() < 2 {
        return Ok(None);
    }
    let len = u16::from_be_bytes([avail[0], avail[1]]) as usize;
    if avail.len() < 2 + len {
        return Ok(None);
    }
    let start = *pos + 2;
    let n = recv.count() + 1;
    let got = recv
        .open(&mut buf[start..start + len])
        .ok_or(RecordError::Auth(n))?;
    *pos = start + len;
    if got == 0 {
        return Err(RecordError::Empty(n));
    }
    let body = start + 1..start + got;
    match buf[start] {
        record::DATA => Ok(Some(Opened::Data(body))),
        record::CLOSE => Ok(Some(Opened::Close)),
        record::REFUSED => Err(RecordError::Refused(
            String::from_utf8_lossy(&buf[body]).into_owned(),
        )),
        t => Err(RecordError::UnknownType(n, t)),
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for SecureStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.prefix_pos < this.prefix.len() {
            let n = buf.remaining().min(this.prefix.len() - this.prefix_pos);
            buf.put_slice(&this.prefix[this.prefix_pos..this.prefix_pos + n]);
            this.prefix_pos += n;
            return Poll::Ready(Ok(()));
        }
        loop {
            if this.ppos < this.pend {
                let n = buf.remaining().min(this.pend - this.ppos);
                buf.put_slice(&this.rbuf[this.ppos..this.ppos + n]);
                this.ppos += n;
                return Poll::Ready(Ok(()));
            }
            if this.read_done {
                return Poll::Ready(Ok(()));
            }
            if this.open()? {
                continue;
            }
            // More ciphertext is needed: drop what was read, then read a large chunk.
            if this.rpos > 0 {
                this.rbuf.drain(..this.rpos);
                (this.rpos, this.ppos, this.pend) = (0, 0, 0);
            }
            let have = this.rbuf.len();
            this.rbuf.reserve(READ_CHUNK);
            let mut rb = ReadBuf::uninit(this.rbuf.spare_capacity_mut());
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut rb))?;
            let got = rb.filled().len();
            // SAFETY: the reader initialised `got` bytes right after the old length.
            unsafe { this.rbuf.set_len(have + got) };
            if got == 0 {
                return Poll::Ready(Err(RecordError::Truncated.into()));
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> SecureStream<S> {
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        poll_drain_buf(&mut self.inner, &mut self.wbuf, &mut self.wpos, cx, |_| {})
    }
}

/// Writes `buf[*pos..]` to `w`, calling `sent` with each write's count, then empties `buf`: the
/// pending output of a stream that gathers what it writes.
pub(crate) fn poll_drain_buf<W: AsyncWrite + Unpin>(
    w: &mut W,
    buf: &mut Vec<u8>,
    pos: &mut usize,
    cx: &mut Context<'_>,
    mut sent: impl FnMut(usize),
) -> Poll<io::Result<()>> {
    while *pos < buf.len() {
        let n = ready!(Pin::new(&mut *w).poll_write(cx, &buf[*pos..]))?;
        if n == 0 {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        sent(n);
        *pos += n;
    }
    buf.clear();
    *pos = 0;
    Poll::Ready(Ok(()))
}

impl<S: AsyncWrite + Unpin> AsyncWrite for SecureStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.close_queued {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        ready!(this.poll_drain(cx))?;
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let take = buf.len().min(WRITE_BATCH);
        this.queue(record::DATA, &buf[..take]);
        // Start writing at once; the rest goes out on the next write or flush.
        if let Poll::Ready(Err(e)) = this.poll_drain(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(take))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.close_queued {
            ready!(this.poll_drain(cx))?;
            this.queue(record::CLOSE, &[]);
            this.close_queued = true;
        }
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

impl SecureStream<TcpStream> {
    /// Forwards between this stream and `local` (see [`crate::forward_tcp`]) without copying
    /// in user space: bytes from `local` are read straight into records (up to
    /// [`FORWARD_RECORDS`] with one read) and sealed in place; records from the peer are
    /// opened in place and written to `local` from the read buffer, all that one read
    /// brought with one write.
    async fn forward_tcp(&mut self, local: &TcpStream) -> io::Result<(u64, u64)> {
        // What an earlier write left unsent goes first.
        std::future::poll_fn(|cx| self.poll_drain(cx)).await?;
        let SecureStream {
            inner: peer,
            send,
            recv,
            prefix,
            prefix_pos,
            rbuf,
            ppos,
            pend,
            rpos,
            read_done,
            close_queued,
            ..
        } = self;
        let peer: &TcpStream = peer;
        let down = async {
            let head = &prefix[*prefix_pos..];
            net::write_all_shared(local, head).await?;
            *prefix_pos = prefix.len();
            let mut total = head.len() as u64;
            let mut ranges = Vec::with_capacity(READ_CHUNK / MAX_RECORD_BODY + 2);
            ranges.push(*ppos..*pend);
            *ppos = *pend;
            loop {
                while !*read_done {
                    match open_next(rbuf, rpos, recv)? {
                        Some(Opened::Data(body)) => ranges.push(body),
                        Some(Opened::Close) => *read_done = true,
                        None => break,
                    }
                }
                total += ranges.iter().map(|r| r.len() as u64).sum::<u64>();
                write_ranges(local, rbuf, &mut ranges).await?;
                if *read_done {
                    break;
                }
                // Keep the incomplete record, read a large chunk behind it.
                rbuf.drain(..*rpos);
                (*rpos, *ppos, *pend) = (0, 0, 0);
                rbuf.reserve(READ_CHUNK);
                if read_buf(peer, rbuf).await? == 0 {
                    return Err(RecordError::Truncated.into());
                }
            }
            net::shutdown_write(local)?;
            Ok::<_, io::Error>(total)
        };
        let up = async {
            if *close_queued {
                return Ok(0);
            }
            let mut buf = vec![0u8; FORWARD_RECORDS * FORWARD_SLOT];
            let mut total = 0u64;
            loop {
                // One read fills the bodies of up to FORWARD_RECORDS records.
                let n = {
                    let mut slots = buf.chunks_mut(FORWARD_SLOT);
                    let mut bodies: [IoSliceMut; FORWARD_RECORDS] = std::array::from_fn(|_| {
                        let slot = slots.next().expect("FORWARD_RECORDS slots");
                        IoSliceMut::new(&mut slot[RECORD_BODY_AT..][..MAX_RECORD_BODY])
                    });
                    read_vectored(local, &mut bodies).await?
                };
                let mut end = 0;
                if n == 0 {
                    end = seal_record_in_place(send, record::CLOSE, &mut buf, 0);
                    *close_queued = true;
                }
                // A full body makes a record exactly one slot long, so the records follow
                // each other without a gap.
                let mut left = n;
                while left > 0 {
                    let body = left.min(MAX_RECORD_BODY);
                    end += seal_record_in_place(send, record::DATA, &mut buf[end..], body);
                    left -= body;
                }
                total += n as u64;
                net::write_all_shared(peer, &buf[..end]).await?;
                if n == 0 {
                    break;
                }
            }
            net::shutdown_write(peer)?;
            Ok(total)
        };
        tokio::try_join!(down, up)
    }
}

/// Reads into `bufs` in order, from a stream shared with a writer (readiness, then a
/// non-blocking read).
async fn read_vectored(from: &TcpStream, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
    loop {
        from.readable().await?;
        match from.try_read_vectored(bufs) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            r => return r,
        }
    }
}

/// Appends what `from` has to `buf`'s spare capacity.
async fn read_buf(from: &TcpStream, buf: &mut Vec<u8>) -> io::Result<usize> {
    loop {
        from.readable().await?;
        match from.try_read_buf(buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            r => return r,
        }
    }
}

/// Writes the `ranges` of `buf` to `to`, as few system calls as the socket allows, and
/// empties `ranges`.
async fn write_ranges(
    to: &TcpStream,
    buf: &[u8],
    ranges: &mut Vec<Range<usize>>,
) -> io::Result<()> {
    ranges.retain(|r| !r.is_empty());
    let mut i = 0;
    while i < ranges.len() {
        let slices: Vec<IoSlice> = ranges[i..]
            .iter()
            .map(|r| IoSlice::new(&buf[r.clone()]))
            .collect();
        to.writable().await?;
        let mut n = match to.try_write_vectored(&slices) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        while n > 0 {
            let len = ranges[i].len();
            if n >= len {
                n -= len;
                i += 1;
            } else {
                ranges[i].start += n;
                n = 0;
            }
        }
    }
    ranges.clear();
    Ok(())
}

/// A proven stream to the peer: bytes written here reach the other end, encrypted unless
/// both ends agreed otherwise.
pub struct PeerStream {
    inner: Inner,
    peer: SocketAddr,
}

enum Inner {
    Secure(Box<SecureStream<TcpStream>>),
    Raw {
        tcp: TcpStream,
        /// Bytes that came with the handshake, read first.
        prefix: Vec<u8>,
        pos: usize,
    },
    /// One stream of a warm path.
    Mux(Box<MuxStream>),
}

impl std::fmt::Debug for PeerStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerStream")
            .field("peer", &self.peer)
            .field("encrypted", &self.is_encrypted())
            .field("warm", &matches!(self.inner, Inner::Mux(_)))
            .finish()
    }
}

impl PeerStream {
    pub(crate) fn secure(
        tcp: TcpStream,
        peer: SocketAddr,
        send: RecordCipher,
        recv: RecordCipher,
        prefix: Vec<u8>,
    ) -> Self {
        PeerStream {
            inner: Inner::Secure(Box::new(SecureStream::new(tcp, send, recv, prefix))),
            peer,
        }
    }

    pub(crate) fn raw(tcp: TcpStream, peer: SocketAddr, prefix: Vec<u8>) -> Self {
        PeerStream {
            inner: Inner::Raw {
                tcp,
                prefix,
                pos: 0,
            },
            peer,
        }
    }

    /// One stream of a warm path.
    pub(crate) fn mux(stream: MuxStream) -> Self {
        PeerStream {
            peer: stream.peer_addr(),
            inner: Inner::Mux(Box::new(stream)),
        }
    }

    /// Whether the bytes travel encrypted (the default; raw only with `--no-encrypt` on both
    /// ends, or in the seed's plain mode).
    pub fn is_encrypted(&self) -> bool {
        match &self.inner {
            Inner::Secure(_) => true,
            Inner::Raw { .. } => false,
            Inner::Mux(m) => m.is_encrypted(),
        }
    }

    /// Whether this is one of the streams of a warm path (many share one TCP connection).
    pub fn is_warm(&self) -> bool {
        matches!(self.inner, Inner::Mux(_))
    }

    /// The peer's address on the stream (the server's, when relayed).
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// The TCP connection underneath, for its address and socket options (`set_nodelay`,
    /// `SockRef::from`); reading or writing it directly would break the stream. `None` for a
    /// stream of a warm path, whose TCP connection the path's other streams share.
    pub fn tcp(&self) -> Option<&TcpStream> {
        match &self.inner {
            Inner::Secure(s) => Some(s.get_ref()),
            Inner::Raw { tcp, .. } => Some(tcp),
            Inner::Mux(_) => None,
        }
    }

    /// Forwards between this stream and `local` (see [`crate::forward_tcp`]).
    pub(crate) async fn forward_tcp(&mut self, local: &mut TcpStream) -> io::Result<(u64, u64)> {
        match &mut self.inner {
            Inner::Secure(s) => s.forward_tcp(local).await,
            #[cfg(any(target_os = "linux", target_os = "android"))]
            Inner::Raw { tcp, prefix, pos } => {
                // Bytes that came with the handshake and were not read yet go first.
                let head = std::mem::take(prefix);
                let head = &head[(*pos).min(head.len())..];
                *pos = 0;
                crate::net::splice_bidirectional(tcp, head, local).await
            }
            #[cfg(not(any(target_os = "linux", target_os = "android")))]
            Inner::Raw { .. } => crate::forward(self, local).await,
            // A warm path's stream: yamux frames, encrypted (or not) by the path underneath.
            Inner::Mux(_) => crate::forward(self, local).await,
        }
    }

    /// Tells the client that the service could not be reached (`why`, one line), and closes:
    /// the client's read fails with that reason instead of a reset. On an unencrypted stream
    /// there is no way to say why; it is closed.
    pub async fn refuse(self, why: &str) {
        use tokio::io::AsyncWriteExt;
        let mut s = match self.inner {
            Inner::Secure(s) => s,
            Inner::Mux(m) => return m.refuse(why).await,
            Inner::Raw { .. } => return,
        };
        let body = &why.as_bytes()[..why.len().min(MAX_RECORD_BODY)];
        s.queue(record::REFUSED, body);
        let _ = tokio::time::timeout(REFUSE_TIMEOUT, async {
            std::future::poll_fn(|cx| s.poll_drain(cx)).await?;
            s.inner.shutdown().await
        })
        .await;
    }
}

impl AsyncRead for PeerStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.inner {
            Inner::Secure(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Inner::Raw { tcp, prefix, pos } => {
                if *pos < prefix.len() {
                    let n = buf.remaining().min(prefix.len() - *pos);
                    buf.put_slice(&prefix[*pos..*pos + n]);
                    *pos += n;
                    return Poll::Ready(Ok(()));
                }
                Pin::new(tcp).poll_read(cx, buf)
            }
            Inner::Mux(m) => Pin::new(m.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.inner {
            Inner::Secure(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Inner::Raw { tcp, .. } => Pin::new(tcp).poll_write(cx, buf),
            Inner::Mux(m) => Pin::new(m.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.inner {
            Inner::Secure(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Inner::Raw { tcp, .. } => Pin::new(tcp).poll_flush(cx),
            Inner::Mux(m) => Pin::new(m.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.inner {
            Inner::Secure(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Inner::Raw { tcp, .. } => Pin::new(tcp).poll_shutdown(cx),
            Inner::Mux(m) => Pin::new(m.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// Bound on every forwarding test: megabytes over loopback take milliseconds.
    const FORWARD_TEST_TIMEOUT: Duration = Duration::from_secs(30);

    async fn tcp_pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (a, b) = tokio::join!(
            TcpStream::connect(listener.local_addr().unwrap()),
            listener.accept()
        );
        (a.unwrap(), b.unwrap().0)
    }

    fn random_bytes(len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        rand::fill(&mut v[..]);
        v
    }

    /// Runs [`PeerStream::forward_tcp`] between `stream` and a local connection whose other
    /// end plays the application, while `remote` (the peer's end of `stream`) sends `LEN`
    /// random bytes and half-closes. The application sends `LEN` random bytes, reads to EOF,
    /// then answers after the half-close. Checks every byte and both counts.
    async fn forward_both_ways<R>(mut stream: PeerStream, mut remote: R, head: &[u8])
    where
        R: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        const LEN: usize = 8 << 20;
        const REPLY: &[u8] = b"reply after the half-close";
        let (down, up) = (random_bytes(LEN), random_bytes(LEN));
        let (app, mut local) = tcp_pair().await;
        let work = async {
            let forwarding =
                tokio::spawn(async move { stream.forward_tcp(&mut local).await.unwrap() });
            let sent = down.clone();
            let far = tokio::spawn(async move {
                remote.write_all(&sent).await.unwrap();
                remote.shutdown().await.unwrap();
                let mut got = Vec::new();
                remote.read_to_end(&mut got).await.unwrap();
                got
            });
            let (mut app_r, mut app_w) = app.into_split();
            let sent = up.clone();
            let writer = tokio::spawn(async move {
                app_w.write_all(&sent).await.unwrap();
                app_w
            });
            let mut got = Vec::new();
            app_r.read_to_end(&mut got).await.unwrap();
            let mut app_w = writer.await.unwrap();
            app_w.write_all(REPLY).await.unwrap();
            app_w.shutdown().await.unwrap();
            (got, far.await.unwrap(), forwarding.await.unwrap())
        };
        let (got, far_got, counts) = tokio::time::timeout(FORWARD_TEST_TIMEOUT, work)
            .await
            .expect("forwarding finished in time");
        assert_eq!(got.len(), head.len() + LEN);
        assert!(
            got[..head.len()] == *head,
            "the handshake's bytes come first"
        );
        assert!(
            got[head.len()..] == down[..],
            "bytes from the peer, in order"
        );
        assert_eq!(far_got.len(), LEN + REPLY.len());
        assert!(far_got[..LEN] == up[..], "bytes to the peer, in order");
        assert_eq!(&far_got[LEN..], REPLY, "sent after the peer's half-close");
        assert_eq!(
            counts,
            ((head.len() + LEN) as u64, (LEN + REPLY.len()) as u64)
        );
    }

    #[tokio::test]
    async fn an_unencrypted_stream_forwards_every_byte_with_half_close() {
        let (remote, tcp) = tcp_pair().await;
        let peer = tcp.peer_addr().unwrap();
        let mut stream = PeerStream::raw(tcp, peer, b"early data from the hello".to_vec());
        // The application read part of the early data before forwarding.
        let mut first = [0u8; 6];
        stream.read_exact(&mut first).await.unwrap();
        assert_eq!(&first, b"early ");
        forward_both_ways(stream, remote, b"data from the hello").await;
    }

    #[tokio::test]
    async fn an_encrypted_stream_forwards_every_byte_with_half_close() {
        let (remote, tcp) = tcp_pair().await;
        let peer = tcp.peer_addr().unwrap();
        let (k1, k2) = ([3u8; 32], [4u8; 32]);
        let mut stream = PeerStream::secure(
            tcp,
            peer,
            RecordCipher::new(&k1),
            RecordCipher::new(&k2),
            b"early".to_vec(),
        );
        let mut remote = SecureStream::new(
            remote,
            RecordCipher::new(&k2),
            RecordCipher::new(&k1),
            Vec::new(),
        );
        // The application read the early data and part of a record before forwarding: the
        // rest of that record waits opened in the stream's buffer.
        remote.write_all(b"abcdef").await.unwrap();
        let mut first = [0u8; 7];
        stream.read_exact(&mut first[..5]).await.unwrap();
        stream.read_exact(&mut first[5..]).await.unwrap();
        assert_eq!(&first, b"earlyab");
        forward_both_ways(stream, remote, b"cdef").await;
    }

    #[tokio::test]
    async fn an_encrypted_stream_cut_short_while_forwarding_is_an_error() {
        let (remote, tcp) = tcp_pair().await;
        let peer = tcp.peer_addr().unwrap();
        let mut stream = PeerStream::secure(
            tcp,
            peer,
            RecordCipher::new(&[5; 32]),
            RecordCipher::new(&[6; 32]),
            Vec::new(),
        );
        let (_app, mut local) = tcp_pair().await;
        let forwarding = tokio::spawn(async move { stream.forward_tcp(&mut local).await });
        // A FIN without a `close` record: what an attacker who cuts the stream short sends.
        drop(remote);
        let err = tokio::time::timeout(FORWARD_TEST_TIMEOUT, forwarding)
            .await
            .expect("forwarding ended in time")
            .unwrap()
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{err}");
        assert!(err.to_string().contains("cut short"), "{err}");
    }

    #[tokio::test]
    async fn a_reset_from_the_peer_ends_forwarding_with_an_error() {
        let (remote, tcp) = tcp_pair().await;
        let peer = tcp.peer_addr().unwrap();
        let mut stream = PeerStream::raw(tcp, peer, Vec::new());
        let (_app, mut local) = tcp_pair().await;
        let forwarding = tokio::spawn(async move { stream.forward_tcp(&mut local).await });
        // SO_LINGER 0: the close sends a RST instead of a FIN.
        socket2::SockRef::from(&remote)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(remote);
        let result = tokio::time::timeout(FORWARD_TEST_TIMEOUT, forwarding)
            .await
            .expect("forwarding ended in time")
            .unwrap();
        let err = result.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");
    }

    fn pair() -> (
        SecureStream<tokio::io::DuplexStream>,
        SecureStream<tokio::io::DuplexStream>,
    ) {
        let (a, b) = tokio::io::duplex(1 << 20);
        let (k1, k2) = ([1u8; 32], [2u8; 32]);
        let sa = SecureStream::new(a, RecordCipher::new(&k1), RecordCipher::new(&k2), vec![]);
        let sb = SecureStream::new(
            b,
            RecordCipher::new(&k2),
            RecordCipher::new(&k1),
            b"early".to_vec(),
        );
        (sa, sb)
    }

    #[tokio::test]
    async fn records_carry_bytes_both_ways_with_half_close() {
        let (mut a, mut b) = pair();
        let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let sent = big.clone();
        let writer = tokio::spawn(async move {
            a.write_all(&sent).await.unwrap();
            a.shutdown().await.unwrap();
            let mut back = Vec::new();
            a.read_to_end(&mut back).await.unwrap();
            back
        });
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.unwrap();
        assert_eq!(&got[..5], b"early");
        assert_eq!(&got[5..], &big[..]);
        b.write_all(b"reply after half-close").await.unwrap();
        b.shutdown().await.unwrap();
        assert_eq!(writer.await.unwrap(), b"reply after half-close");
    }

    #[tokio::test]
    async fn a_tampered_record_ends_the_stream_with_an_error_naming_it() {
        let (raw_a, mut raw_b) = tokio::io::duplex(1 << 16);
        let mut a = SecureStream::new(
            raw_a,
            RecordCipher::new(&[1; 32]),
            RecordCipher::new(&[2; 32]),
            vec![],
        );
        a.write_all(b"first").await.unwrap();
        a.write_all(b"second").await.unwrap();
        a.flush().await.unwrap();
        let mut wire = vec![0u8; 2 * (2 + 1 + 5 + 16) + 1];
        raw_b.read_exact(&mut wire).await.unwrap();
        let (c, mut d) = tokio::io::duplex(1 << 16);
        let mut b = SecureStream::new(
            c,
            RecordCipher::new(&[2; 32]),
            RecordCipher::new(&[1; 32]),
            vec![],
        );
        wire[2 + 24 + 3] ^= 0x40; // a bit of the second record's ciphertext
        d.write_all(&wire).await.unwrap();
        let mut buf = [0u8; 5];
        b.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"first");
        let err = b.read(&mut buf).await.unwrap_err();
        assert!(
            err.to_string().contains("record 2 failed authentication"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_stream_cut_without_a_close_record_is_an_error() {
        let (raw_a, raw_b) = tokio::io::duplex(1 << 16);
        let mut b = SecureStream::new(
            raw_b,
            RecordCipher::new(&[2; 32]),
            RecordCipher::new(&[1; 32]),
            vec![],
        );
        drop(raw_a);
        let err = b.read(&mut [0u8; 4]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert!(err.to_string().contains("cut short"), "{err}");
    }
}
