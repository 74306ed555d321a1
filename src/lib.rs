//! p2pnc: direct TCP connections between two hosts behind NATs, brokered by a small rendezvous
//! server.
//!
//! # The flow
//!
//! 1. A **server** ([`server::serve`], `p2pnc server`) runs on a public host. It only brokers:
//!    no byte of a stream passes through it (unless both ends need its relay).
//! 2. An **agent** ([`Agent`], `p2pnc expose`) runs next to the service behind a NAT. It
//!    registers an id with the server over one control connection and proves that it holds the
//!    service's secret (the secret never leaves the host: it derives a signing key).
//! 3. A **client** ([`connect`], `p2pnc connect`) asks the server for that id with a proof of
//!    the same secret. The server checks the proof and orders both ends to open a TCP
//!    connection to each other at the same moment (*hole punching*: each end's SYN opens its
//!    own NAT for the other's); it tries the LAN, IPv6 and port mappings too, and picks the
//!    relay only when no direct path can exist.
//! 4. The punched connection carries a **stream hello**: a Noise handshake keyed by the secret,
//!    so both ends know they talk to each other (not to an impostor, nor to the server) and
//!    everything after it is encrypted. The client's first bytes ride in the same flight.
//! 5. The caller gets a [`PeerStream`] (`AsyncRead + AsyncWrite`, half-close kept) and
//!    [`ConnectionInfo`] (path, peer address, strategy, setup time). [`forward_tcp`] carries it
//!    to a local TCP connection; [`Peer`] keeps the path warm and opens further streams on it in
//!    one round trip.
//!
//! # Example
//!
//! The whole flow on loopback, in one program (it runs as this crate's doc test): a server, an
//! agent that echoes, and a client.
//!
//! ```
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//! use tokio_util::sync::CancellationToken;
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     // 1. The rendezvous server (normally `p2pnc server` on a public host).
//!     let (control, probe) = p2pnc::server::bind_pair("127.0.0.1:0".parse()?).await?;
//!     let url = format!("http://{}", control.local_addr()?);
//!     let listeners = p2pnc::server::Listeners { control, probe: Some(probe), admin: None };
//!     let stop = CancellationToken::new();
//!     let server = tokio::spawn(p2pnc::server::serve(listeners, Default::default(), stop.clone()));
//!
//!     // 2. The agent next to the service: it registers "demo" and echoes what a client sends.
//!     let expose = p2pnc::ExposeOptions::new(&url, "demo", Some("our secret"))?;
//!     let mut agent = p2pnc::Agent::start(expose).await?;
//!     let service = tokio::spawn(async move {
//!         let mut accepted = agent.accept().await.expect("the agent runs");
//!         let mut line = [0; 5];
//!         accepted.stream.read_exact(&mut line).await?;
//!         accepted.stream.write_all(&line).await?;
//!         accepted.stream.shutdown().await
//!     });
//!
//!     // 3. The client: the server brokers, both ends punch, the stream is direct and encrypted.
//!     let opts = p2pnc::ConnectOptions::new(&url, "demo", Some("our secret"))?;
//!     let mut conn = p2pnc::connect(&opts).await?;
//!     println!("{} via {} in {:?}", conn.info.path, conn.info.peer_addr, conn.info.setup);
//!     assert!(conn.stream.is_encrypted());
//!     conn.stream.write_all(b"hello").await?;
//!     let mut echo = Vec::new();
//!     conn.stream.read_to_end(&mut echo).await?; // until the agent's half-close
//!     assert_eq!(echo, b"hello");
//!
//!     service.await??;
//!     stop.cancel();
//!     server.await??;
//!     Ok(())
//! }
//! ```
//!
//! A wrong secret fails before any byte reaches the service ([`Error`] says which), and so does
//! an agent that registered without the secret the client was given.
//!
//! # Where to go next
//!
//! - [`server::run`] serves the rendezvous protocol with the command line's settings.
//! - [`Agent`] registers an id next to a service and yields each client's proven stream.
//! - [`connect`] reaches an agent by id and returns a direct, encrypted [`PeerStream`];
//!   [`connect_early`] also sends what a local socket already wrote, in the punch's flight.
//! - [`Peer`] keeps a warm path to an agent and opens a stream on it per connection.
//! - [`nat_check`] reports what this host's NAT does.
//! - [`defaults`] holds every default, shared with the command line.
//!
//! The wire protocol is in [`protocol`] and `docs/protocol.md`; the threat model in
//! `docs/security.md`; how the code is laid out in `docs/architecture.md`.

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
pub use peer::agent::{
    Accepted, Agent, ExposeOptions, ServiceHealth, ServiceState, WarmCounts, WarmPathInfo,
    WarmPaths,
};
pub use peer::client::{ConnectOptions, Connection, connect, connect_early};
pub use peer::control::ServerUrl;
pub use peer::nat_depth::NatDepth;
pub use peer::natcheck::{NatReport, nat_check, nat_check_any};
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
