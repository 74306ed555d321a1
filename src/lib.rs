//! p2pnc: direct TCP connections between two hosts behind NATs, brokered by a small rendezvous
//! server.
//!
//! - [`server::run`] serves the rendezvous protocol.
//! - [`Agent`] registers an id next to a service and yields each client's proven stream.
//! - [`connect`] reaches an agent by id and returns a direct [`tokio::net::TcpStream`].
//!
//! The wire protocol is in [`protocol`] and `docs/protocol.md`.

/// The README's examples compile.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

pub mod agent;
pub mod client;
pub mod config;
pub mod control;
pub mod defaults;
pub mod demo;
#[doc(hidden)]
pub mod fuzzing;
pub mod natcheck;
pub mod net;
pub mod portmap;
pub mod probe;
pub mod punch;
pub mod relay;
pub mod server;
pub mod tls;

/// The wire protocol (the `p2pnc-protocol` crate).
pub use p2pnc_protocol as protocol;

use std::net::SocketAddr;
use std::time::Duration;

pub use agent::{Accepted, Agent, ExposeOptions};
pub use client::{ConnectOptions, Connection, connect, connect_early};
pub use control::ServerUrl;
use protocol::ErrorCode;
pub use punch::EarlyData;
use tokio::io::{AsyncRead, AsyncWrite};

/// How a stream reached its peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Path {
    /// A punched TCP connection between the two public endpoints (or to a public host).
    Direct,
    /// A direct TCP connection inside one LAN, to the peer's private address.
    Lan,
    /// Through the rendezvous server's relay (no direct path existed).
    Relayed,
}

impl Path {
    /// The outcome label of this path (`direct`, `lan`, `relayed`).
    pub fn label(self) -> &'static str {
        match self {
            Path::Direct => "direct",
            Path::Lan => "lan",
            Path::Relayed => "relayed",
        }
    }
}

impl std::fmt::Display for Path {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Path::Direct => "direct",
            Path::Lan => "lan",
            Path::Relayed => "relayed",
        })
    }
}

/// How a connection was set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// Which path the stream takes.
    pub path: Path,
    /// The peer's address on the stream.
    pub peer_addr: SocketAddr,
    /// Time from the start of the call (client) or the punch order (agent) to a proven stream.
    pub setup: Duration,
    /// The session id, as the server and the logs name it.
    pub session: protocol::SessionId,
    /// How the punch was made (`simultaneous`, `birthday_hard`, `mapped`, ...).
    pub strategy: protocol::Strategy,
}

impl ConnectionInfo {
    /// The one-line JSON report of `--report json`: path, peer address and family, strategy,
    /// setup time and session id.
    pub fn report(&self) -> serde_json::Value {
        serde_json::json!({
            "ok": true,
            "path": self.path.label(),
            "peer_addr": self.peer_addr.to_string(),
            "family": if self.peer_addr.is_ipv4() { "ipv4" } else { "ipv6" },
            "strategy": self.strategy.to_string(),
            "setup_ms": self.setup.as_millis() as u64,
            "session": self.session.to_string(),
        })
    }
}

/// Everything that can go wrong, each with a message a user can act on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The server URL cannot be used.
    #[error("bad server URL '{0}': {1}")]
    BadServerUrl(String, String),
    /// The server could not be reached or went away.
    #[error("server unreachable: {0}")]
    ServerUnreachable(String),
    /// No agent is registered under this id.
    #[error("peer '{0}' is not online")]
    PeerOffline(String),
    /// The agent refused the secret.
    #[error("secret rejected by peer '{0}'")]
    SecretRejected(String),
    /// The agent requires a secret and none was given.
    #[error("peer '{0}' requires a secret (--secret)")]
    SecretRequired(String),
    /// Punching found no path in time.
    #[error("no direct path to '{peer}': {detail}")]
    NoDirectPath {
        /// The peer id.
        peer: String,
        /// What was tried.
        detail: String,
    },
    /// The server refused the request.
    #[error("server refused ({0}): {1}")]
    Refused(ErrorCode, String),
    /// The TLS connection to the server failed.
    #[error("TLS with {0}")]
    Tls(String),
    /// The server broke the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A local I/O error.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    /// A stable machine-readable code for this error: the server's code when the server
    /// refused, otherwise one of `bad_server_url`, `server_unreachable`, `peer_offline`,
    /// `secret_rejected`, `secret_required`, `no_direct_path`, `tls`, `protocol`, `io`.
    pub fn code(&self) -> String {
        match self {
            Error::BadServerUrl(..) => "bad_server_url".into(),
            Error::ServerUnreachable(_) => "server_unreachable".into(),
            Error::PeerOffline(_) => ErrorCode::PeerOffline.to_string(),
            Error::SecretRejected(_) => ErrorCode::SecretRejected.to_string(),
            Error::SecretRequired(_) => ErrorCode::SecretRequired.to_string(),
            Error::NoDirectPath { .. } => ErrorCode::NoDirectPath.to_string(),
            Error::Refused(code, _) => code.to_string(),
            Error::Tls(_) => "tls".into(),
            Error::Protocol(_) => "protocol".into(),
            Error::Io(_) => "io".into(),
        }
    }

    /// The one-line JSON report of a failed connection (`--report json`).
    pub fn report(&self) -> serde_json::Value {
        serde_json::json!({ "ok": false, "code": self.code(), "message": self.to_string() })
    }
}

/// Size of each copy buffer when forwarding: large enough for tens of Mbit/s per stream with
/// few system calls.
const FORWARD_BUFFER: usize = 64 * 1024;

/// Copies both directions until both have closed, keeping TCP half-close: when one side
/// finishes sending, the other side's write half is shut down and the reverse direction goes
/// on. Returns the bytes copied `(a to b, b to a)`.
pub async fn forward<A, B>(a: &mut A, b: &mut B) -> std::io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    tokio::io::copy_bidirectional_with_sizes(a, b, FORWARD_BUFFER, FORWARD_BUFFER).await
}
