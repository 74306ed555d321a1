//! The control port's accept loop: connection limits (with a one-line answer to every
//! connection refused), the deadline for the first request head, and telling TLS from plain
//! HTTP by the first byte.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::connect_info::Connected;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::ServerConfig;
use super::limits::{self, ConnTable, Guarded, MAX_HEAD_BYTES, MAX_PENDING_HEAD_BYTES};
use crate::net;
use crate::protocol::{self, ErrorCode};
use crate::tls::{self, MaybeTls};

/// Refused connections being answered at once: each answer reads the request head, writes a
/// few hundred bytes and waits briefly for the peer to close; past this many, a refused
/// connection is closed without an answer.
const MAX_ANSWERING: usize = 256;
/// Time a refused connection gets to deliver its head (and its TLS handshake) and to read the
/// answer, each.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause between looks at a plain connection's first bytes on a TLS server, while its request
/// line has not arrived whole (it nearly always comes in the first segment).
const PEEK_RETRY: Duration = Duration::from_millis(5);
/// Bytes of a plain request that show its path on a TLS server: `GET /v1/connect?` is 16.
const REQUEST_LINE_PREFIX: usize = 32;

/// What the server knows about one TCP connection.
#[derive(Debug, Clone, Copy)]
pub(super) struct ConnMeta {
    /// The peer's address: its public endpoint.
    pub remote: SocketAddr,
    /// RTT measured by the kernel from the TCP handshake.
    pub rtt: Option<Duration>,
    /// Whether the connection speaks TLS.
    pub tls: bool,
}

/// The control port's accept loop: counts connections per source address and in all (making
/// room by closing the oldest ones without a complete request head, and answering `503` with
/// the limit's name when it cannot), gives each one a deadline for its first request head and,
/// on a TLS server, tells TLS from plain HTTP by the first byte and runs TLS handshakes.
pub(super) struct Accepting {
    listener: TcpListener,
    conns: Arc<ConnTable>,
    config: ServerConfig,
    /// Connections still being told apart or in their TLS handshake.
    handshakes: JoinSet<Option<(Guarded, SocketAddr)>>,
    /// Refused connections being answered.
    answering: JoinSet<()>,
}

impl Accepting {
    /// Accepts on `listener` under the limits of `config`.
    pub fn new(listener: TcpListener, config: ServerConfig) -> Self {
        Accepting {
            listener,
            conns: ConnTable::new(
                "connections",
                config.max_connections,
                config.max_connections_per_ip,
                MAX_PENDING_HEAD_BYTES,
            ),
            config,
            handshakes: JoinSet::new(),
            answering: JoinSet::new(),
        }
    }

    /// Answers a refused connection with `503 busy` and the reason, unless too many are being
    /// answered already.
    fn refuse(&mut self, stream: TcpStream, addr: SocketAddr, why: String) {
        while self.answering.try_join_next().is_some() {}
        if self.answering.len() >= MAX_ANSWERING {
            tracing::debug!("refusing {addr} without an answer: {why}");
            return;
        }
        tracing::debug!("refusing {addr}: {why}");
        let acceptor = self.config.tls.as_ref().map(|t| t.acceptor.clone());
        self.answering.spawn(async move {
            let io = match acceptor {
                None => Some(MaybeTls::Plain(stream)),
                Some(acceptor) => tls_or_plain(acceptor, stream).await,
            };
            if let Some(mut io) = io {
                answer(&mut io, ErrorCode::Busy, &why, true).await;
            }
        });
    }
}

impl axum::serve::Listener for Accepting {
    type Io = Guarded;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Guarded, SocketAddr) {
        loop {
            let accepted = tokio::select! {
                Some(done) = self.handshakes.join_next(), if !self.handshakes.is_empty() => {
                    if let Ok(Some(conn)) = done {
                        return conn;
                    }
                    continue;
                }
                accepted = self.listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, addr)) => {
                    // On a dual-stack port, IPv4 peers come as IPv4-mapped IPv6 addresses.
                    let addr = SocketAddr::new(addr.ip().to_canonical(), addr.port());
                    let slot = match self.conns.admit(addr.ip()) {
                        Ok(slot) => slot,
                        Err(refused) => {
                            self.refuse(stream, addr, refused.to_string());
                            continue;
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    let deadline = Instant::now() + self.config.head_timeout;
                    match &self.config.tls {
                        None => {
                            let plain = MaybeTls::Plain(stream);
                            return (Guarded::new(plain, slot, deadline), addr);
                        }
                        Some(tls) => {
                            let acceptor = tls.acceptor.clone();
                            self.handshakes
                                .spawn(handshake(acceptor, stream, slot, deadline, addr));
                        }
                    }
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// Tells a TLS client from a plain one by its first byte, and runs the TLS handshake, all
/// before `deadline`. A plain expose or connect request is answered `400` as soon as its
/// request line shows what it is. `None` when the connection closed, failed, ran out of time
/// or was evicted to make room for a newer one.
async fn handshake(
    acceptor: tokio_rustls::TlsAcceptor,
    stream: TcpStream,
    slot: limits::Slot,
    deadline: Instant,
    addr: SocketAddr,
) -> Option<(Guarded, SocketAddr)> {
    let work = async {
        let mut first = [0u8; 1];
        match tokio::time::timeout_at(deadline, stream.peek(&mut first)).await {
            Ok(Ok(1)) => {}
            _ => return None,
        }
        if first[0] != tls::HANDSHAKE_RECORD {
            if plain_control_request(&stream, deadline).await {
                let mut plain = MaybeTls::Plain(stream);
                let why = "this server speaks TLS: use an https:// server URL";
                answer(&mut plain, ErrorCode::BadRequest, why, false).await;
                return None;
            }
            return Some(MaybeTls::Plain(stream));
        }
        match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
            Ok(Ok(tls)) => Some(MaybeTls::Tls(Box::new(tokio_rustls::TlsStream::Server(
                tls,
            )))),
            Ok(Err(e)) => {
                tracing::debug!("TLS handshake with {addr} failed: {e}");
                None
            }
            Err(_) => {
                tracing::debug!("TLS handshake with {addr} timed out");
                None
            }
        }
    };
    let io = tokio::select! {
        io = work => io?,
        _ = slot.evicted() => return None,
    };
    Some((Guarded::new(io, slot, deadline), addr))
}

/// Whether a plain connection's request line (peeked, not read) names the expose or connect
/// endpoint: on a TLS server such a request carries a token or proof in clear, and is answered
/// at once without reading the rest.
async fn plain_control_request(stream: &TcpStream, deadline: Instant) -> bool {
    let mut buf = [0u8; REQUEST_LINE_PREFIX];
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => return false,
        };
        let seen = &buf[..n];
        let path = seen
            .iter()
            .position(|&b| b == b' ')
            .map(|sp| &seen[sp + 1..]);
        if let Some(path) = path {
            let names = |p: &str| path.starts_with(p.as_bytes());
            let control = [protocol::EXPOSE_PATH, protocol::CONNECT_PATH];
            if control.iter().any(|p| names(p)) {
                return true;
            }
            // Enough of the path to know it is something else.
            if path.len() >= protocol::CONNECT_PATH.len() || seen.contains(&b'\n') {
                return false;
            }
        }
        if n == buf.len() || Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(PEEK_RETRY).await;
    }
}

/// On a TLS server, the connection as TLS when its first byte is a TLS handshake record (the
/// handshake done), else plain; `None` when it fails or takes longer than [`ANSWER_TIMEOUT`].
async fn tls_or_plain(acceptor: tokio_rustls::TlsAcceptor, stream: TcpStream) -> Option<MaybeTls> {
    let work = async {
        let mut first = [0u8; 1];
        if stream.peek(&mut first).await.ok()? != 1 {
            return None;
        }
        if first[0] != tls::HANDSHAKE_RECORD {
            return Some(MaybeTls::Plain(stream));
        }
        let tls = acceptor.accept(stream).await.ok()?;
        Some(MaybeTls::Tls(Box::new(tokio_rustls::TlsStream::Server(
            tls,
        ))))
    };
    tokio::time::timeout(ANSWER_TIMEOUT, work).await.ok()?
}

/// Answers a connection with an error response and closes it gently: reads its request head
/// first (when `read_head` is set, so the peer has sent all it meant to before the answer
/// comes), then writes, shuts down, and reads until the peer closes, so that the peer's unread
/// bytes do not turn the close into a reset that could destroy the answer.
async fn answer(io: &mut MaybeTls, code: ErrorCode, message: &str, read_head: bool) {
    let mut buf = vec![0u8; 1024];
    if read_head {
        let read = async {
            let (mut matched, mut total) = (0u8, 0usize);
            while matched < 4 && total < MAX_HEAD_BYTES {
                let n = io.read(&mut buf).await.ok().filter(|n| *n > 0)?;
                matched = limits::head_progress(matched, &buf[..n]);
                total += n;
            }
            Some(())
        };
        if tokio::time::timeout(ANSWER_TIMEOUT, read).await.is_err() {
            return;
        }
    }
    let response = limits::error_response(code, message);
    let close = async {
        io.write_all(&response).await.ok()?;
        io.shutdown().await.ok()?;
        while io.read(&mut buf).await.ok()? > 0 {}
        Some(())
    };
    let _ = tokio::time::timeout(ANSWER_TIMEOUT, close).await;
}

impl Connected<axum::serve::IncomingStream<'_, Accepting>> for ConnMeta {
    fn connect_info(stream: axum::serve::IncomingStream<'_, Accepting>) -> Self {
        ConnMeta {
            remote: *stream.remote_addr(),
            rtt: net::tcp_rtt(stream.io().tcp()),
            tls: stream.io().is_tls(),
        }
    }
}
