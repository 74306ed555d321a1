//! p2pnc: direct TCP connections between two hosts behind NATs, brokered by a small rendezvous
//! server.
//!
//! - [`server::run`] serves the rendezvous protocol.
//! - [`Agent`] registers an id next to a service and yields each client's proven stream.
//! - [`connect`] reaches an agent by id and returns a direct, encrypted [`PeerStream`].
//! - [`Peer`] keeps a warm path to an agent and opens a stream on it per connection.
//! - [`nat_check`] reports what this host's NAT does.
//! - [`defaults`] holds every default, shared with the command line.
//!
//! The wire protocol is in [`protocol`] and `docs/protocol.md`; how the code is laid out is
//! in `docs/architecture.md`.

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
