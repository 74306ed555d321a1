//! p2pnc: direct TCP connections between two hosts behind NATs, brokered by a small rendezvous
//! server.
//!
//! # The flow
//!
//! 1. A rendezvous server ([`server::run`], `p2pnc server`) runs on a public host: HTTP and
//!    WebSocket on one port, a NAT probe port beside it.
//! 2. Next to the service, an [`Agent`] (`p2pnc expose`) registers an id over a WebSocket held
//!    from its *punch port*, so the server sees its NAT mapping; a probe from the same port to
//!    the probe port tells whether that NAT maps endpoint-independently.
//! 3. A client ([`connect`], `p2pnc connect`) asks for the id, with a request signed by the
//!    service secret (which never reaches the server). The server sends both ends a punch order
//!    naming each other's public and private endpoints, timed so that both fire together.
//! 4. Both ends connect from their punch ports to each other at once (TCP simultaneous open,
//!    the agent's first SYN at a TTL that opens only its own NATs); an endpoint-dependent NAT
//!    on one side is met by birthday punching, two of them by the server's relay (when it
//!    runs one). Peers behind one NAT also try each other's LAN addresses.
//! 5. On the first stream whose two ends prove the session (a Noise handshake keyed by the
//!    secret), the client writes its selection; every other stream closes. The stream is a
//!    [`PeerStream`], encrypted by default, and [`ConnectionInfo`] says how it was reached.
//! 6. For many connections, a [`Peer`] keeps one such stream as a *warm path* and opens a
//!    multiplexed stream on it per connection: no server round trip, no new punch.
//!
//! [`nat_check`] reports what this host's NAT does; [`defaults`] holds every default, shared
//! with the command line. The wire protocol is in [`protocol`] and `docs/protocol.md`; how the
//! code is laid out is in `docs/architecture.md`.
//!
//! # Example
//!
//! The whole flow on loopback, in one process: a server, an agent for the id `docs`, and a
//! client whose bytes reach the agent over the punched stream.
//!
//! ```
//! use std::time::Duration;
//!
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//! use tokio_util::sync::CancellationToken;
//!
//! async fn flow() -> Result<(), Box<dyn std::error::Error>> {
//!     // The rendezvous server (on a public host in real use).
//!     let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//!     let url = format!("http://{}", listener.local_addr()?);
//!     let stop = CancellationToken::new();
//!     let server = tokio::spawn(p2pnc::server::run(listener, Default::default(), stop.clone()));
//!
//!     // Next to the service: register the id.
//!     let expose = p2pnc::ExposeOptions::new(&url, "docs", Some("secret"))?;
//!     let mut agent = p2pnc::Agent::start(expose).await?;
//!
//!     // The client: a direct, encrypted stream to the agent.
//!     let opts = p2pnc::ConnectOptions::new(&url, "docs", Some("secret"))?;
//!     let (conn, accepted) = tokio::join!(p2pnc::connect(&opts), agent.accept());
//!     let (mut conn, mut accepted) = (conn?, accepted.ok_or("the agent stopped")?);
//!     println!("{} via {} in {:?}", conn.info.path, conn.info.peer_addr, conn.info.setup);
//!
//!     conn.stream.write_all(b"hello").await?;
//!     let mut got = [0u8; 5];
//!     accepted.stream.read_exact(&mut got).await?;
//!     assert_eq!(&got, b"hello");
//!
//!     agent.shutdown().await;
//!     stop.cancel();
//!     server.await??;
//!     Ok(())
//! }
//!
//! let runtime = tokio::runtime::Runtime::new()?;
//! runtime.block_on(async {
//!     // Every step is on loopback: ten seconds are plenty.
//!     tokio::time::timeout(Duration::from_secs(10), flow()).await?
//! })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

/// The README's examples compile.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

mod error;
mod net;
mod peer;
mod replay;

pub mod defaults;
#[doc(hidden)]
pub mod fuzzing;
pub mod server;
#[doc(hidden)]
pub mod testing;
pub mod tls;

/// The wire protocol (the `p2pnc-protocol` crate).
pub use p2pnc_protocol as protocol;

pub use error::Error;
pub use peer::agent::{Accepted, Agent, ExposeOptions, WarmCounts, WarmPaths};
pub use peer::client::{ConnectOptions, Connection, connect, connect_early};
pub use peer::control::ServerUrl;
pub use peer::nat_depth::NatDepth;
pub use peer::natcheck::{NatReport, nat_check};
pub use peer::portmap::Survey as PortMappingSurvey;
pub use peer::punch::{EarlyData, PunchOptions, PunchTtl};
pub use peer::session::{ConnectionInfo, Path};
pub use peer::stream::{PeerStream, RecordError};
pub use peer::warm::{EchoStream, Peer, WarmOptions};
pub use tls::Trust;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// Size of each copy buffer when forwarding: large enough for tens of Mbit/s per stream with
/// few system calls, and exactly one record's body, so that a chunk copied into an encrypted
/// stream is sealed as one full record (64 KiB made a full record and an 18-byte one).
const FORWARD_BUFFER: usize = protocol::MAX_RECORD_BODY;

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

/// [`forward`] between a peer stream and a local TCP connection (half-close kept; returns the
/// bytes `(from the peer, to the peer)`), with as little copying as the stream allows: an
/// encrypted stream's records are read and sealed, and opened and written, in place (no copy
/// in user space, up to four records per system call); on Linux and Android an unencrypted
/// stream's bytes never reach user space: each direction moves them with `splice(2)` through
/// a pipe. Elsewhere an unencrypted stream is copied as [`forward`] does.
///
/// `splice(2)` cannot suppress `SIGPIPE` when the other side has gone: Rust programs ignore
/// that signal (the standard library's start-up does), a host program of another language
/// must ignore it too.
pub async fn forward_tcp(
    stream: &mut PeerStream,
    local: &mut TcpStream,
) -> std::io::Result<(u64, u64)> {
    stream.forward_tcp(local).await
}
