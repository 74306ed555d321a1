//! The control port's accept loop: connection limits, the deadline for the first request
//! head, and telling TLS from plain HTTP by the first byte.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::connect_info::Connected;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::ServerConfig;
use super::limits::{self, ConnCounts, Guarded};
use crate::net;
use crate::tls::{self, MaybeTls};

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

/// The control port's accept loop: counts connections per source address and in all, gives
/// each one a deadline for its first request head and, on a TLS server, tells TLS from plain
/// HTTP by the first byte and runs TLS handshakes.
pub(super) struct Accepting {
    listener: TcpListener,
    counts: Arc<ConnCounts>,
    config: ServerConfig,
    /// Connections still being told apart or in their TLS handshake.
    handshakes: JoinSet<Option<(Guarded, SocketAddr)>>,
}

impl Accepting {
    /// Accepts on `listener` under the limits of `config`.
    pub fn new(listener: TcpListener, config: ServerConfig) -> Self {
        Accepting {
            listener,
            counts: Arc::new(ConnCounts::default()),
            config,
            handshakes: JoinSet::new(),
        }
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
                    let c = &self.config;
                    let Some(slot) =
                        self.counts
                            .admit(addr.ip(), c.max_connections, c.max_connections_per_ip)
                    else {
                        tracing::debug!("refusing {addr}: connection limit");
                        continue; // Dropping the stream closes it.
                    };
                    let _ = stream.set_nodelay(true);
                    let deadline = Instant::now() + c.head_timeout;
                    match &c.tls {
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
/// before `deadline`. `None` when the connection closed, failed or ran out of time.
async fn handshake(
    acceptor: tokio_rustls::TlsAcceptor,
    stream: tokio::net::TcpStream,
    slot: limits::Slot,
    deadline: Instant,
    addr: SocketAddr,
) -> Option<(Guarded, SocketAddr)> {
    let mut first = [0u8; 1];
    match tokio::time::timeout_at(deadline, stream.peek(&mut first)).await {
        Ok(Ok(1)) => {}
        _ => return None,
    }
    if first[0] != tls::HANDSHAKE_RECORD {
        return Some((Guarded::new(MaybeTls::Plain(stream), slot, deadline), addr));
    }
    match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => {
            let tls = MaybeTls::Tls(Box::new(tokio_rustls::TlsStream::Server(tls)));
            Some((Guarded::new(tls, slot, deadline), addr))
        }
        Ok(Err(e)) => {
            tracing::debug!("TLS handshake with {addr} failed: {e}");
            None
        }
        Err(_) => {
            tracing::debug!("TLS handshake with {addr} timed out");
            None
        }
    }
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
