//! The stream a connection hands out: encrypted records over TCP by default, or raw TCP when
//! both ends agreed to go without (`--no-encrypt`) or for the seed's plain mode, or one of the
//! streams of a warm path (see `warm`).
//!
//! Records are `length (u16) || AES-GCM(type || body)` under the keys of the stream's Noise
//! handshake (see `p2pnc_protocol::stream`). Reads open records in place in one buffer; writes
//! seal up to four records per system call. Shutting the write side down sends a `close`
//! record before the FIN, so that an attacker who cuts the TCP stream short is noticed: EOF
//! without it is an error.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::peer::warm::MuxStream;
use crate::protocol::{MAX_RECORD_BODY, RecordCipher, record, seal_record};

/// Plaintext taken per write: several records, sealed together and written with one call.
const WRITE_BATCH: usize = 4 * MAX_RECORD_BODY;
/// Ciphertext read per system call.
const READ_CHUNK: usize = 256 * 1024;
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
        let avail = &self.rbuf[self.rpos..];
        if avail.len() < 2 {
            return Ok(false);
        }
        let len = u16::from_be_bytes([avail[0], avail[1]]) as usize;
        if avail.len() < 2 + len {
            return Ok(false);
        }
        let start = self.rpos + 2;
        let n = self.recv.count() + 1;
        let got = self
            .recv
            .open(&mut self.rbuf[start..start + len])
            .ok_or(RecordError::Auth(n))?;
        self.rpos = start + len;
        if got == 0 {
            return Err(RecordError::Empty(n));
        }
        let body = start + 1..start + got;
        match self.rbuf[start] {
            record::DATA => (self.ppos, self.pend) = (body.start, body.end),
            record::CLOSE => self.read_done = true,
            record::REFUSED => {
                let why = String::from_utf8_lossy(&self.rbuf[body]).into_owned();
                return Err(RecordError::Refused(why));
            }
            t => return Err(RecordError::UnknownType(n, t)),
        }
        Ok(true)
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
        while self.wpos < self.wbuf.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.wbuf[self.wpos..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.wpos += n;
        }
        self.wbuf.clear();
        self.wpos = 0;
        Poll::Ready(Ok(()))
    }
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
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

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
