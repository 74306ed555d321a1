//! The stream handshake on one stream: our hello out, the peer's in and checked, the
//! selection byte (see the engine's module docs).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::Punched;
use super::early::Commit;
use super::plan::Proof;
use crate::peer::relay::RelayError;
use crate::protocol::{HELLO_LEN, Role, SELECT};

/// Why a stream was not proven.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The peer's hello did not verify: another session, another secret, or not a peer.
    #[error("bad hello from {0}")]
    BadHello(SocketAddr),
    /// The client's hello verified but the next byte was not [`SELECT`].
    #[error("bad selection byte from {0}")]
    BadSelection(SocketAddr),
    /// Reading or writing the stream failed.
    #[error("{peer}: {source}")]
    Io {
        /// The peer's address.
        peer: SocketAddr,
        /// What failed.
        source: std::io::Error,
    },
    /// The deadline passed first.
    #[error("{0}: handshake timed out")]
    TimedOut(SocketAddr),
    /// The stream has no peer address (it closed at once).
    #[error("{0}")]
    NoPeer(std::io::Error),
    /// The client's selection could not be written.
    #[error("{0}")]
    Select(std::io::Error),
    /// Joining the relay failed.
    #[error("relay: {0}")]
    Relay(#[from] RelayError),
}

/// Proves one stream. The deadline bounds every read. A client with early data commits to the
/// stream at once when it leads to one of the commit's targets and no other commitment is
/// pending.
pub(crate) async fn handshake(
    mut stream: TcpStream,
    peer_hello: Option<[u8; HELLO_LEN]>,
    proof: Proof,
    deadline: Instant,
    commit: Option<Arc<Commit>>,
) -> Result<Punched, HandshakeError> {
    let peer = stream.peer_addr().map_err(HandshakeError::NoPeer)?;
    let (role, keys) = match proof {
        Proof::Address => {
            return Ok(Punched {
                stream,
                peer,
                relayed: false,
                selected: false,
            });
        }
        Proof::Hello { role, keys } => (role, keys),
    };
    let commit = commit.filter(|c| role == Role::Client && c.leads_to(&peer));
    let mut committed: Option<Vec<u8>> = None;
    let work = async {
        let mut first = keys.hello(role).to_vec();
        if let Some(bytes) = commit.as_ref().and_then(|c| c.try_claim()) {
            first.push(SELECT);
            first.extend_from_slice(&bytes);
            committed = Some(bytes);
        }
        stream.write_all(&first).await?;
        let hello = match peer_hello {
            Some(h) => h,
            None => {
                let mut h = [0u8; HELLO_LEN];
                stream.read_exact(&mut h).await?;
                h
            }
        };
        if !keys.verify_hello(role.peer(), &hello) {
            return Ok(Err(HandshakeError::BadHello(peer)));
        }
        // The agent waits for the client's choice; the client makes it in `run`.
        if role == Role::Agent && stream.read_u8().await? != SELECT {
            return Ok(Err(HandshakeError::BadSelection(peer)));
        }
        Ok::<_, std::io::Error>(Ok(()))
    };
    let result = match tokio::time::timeout_at(deadline, work).await {
        Ok(Ok(Ok(()))) => Ok(()),
        Ok(Ok(Err(why))) => Err(why),
        Ok(Err(source)) => Err(HandshakeError::Io { peer, source }),
        Err(_) => Err(HandshakeError::TimedOut(peer)),
    };
    let selected = committed.is_some();
    if let (Err(_), Some(c), Some(sent)) = (&result, &commit, committed) {
        c.fail(sent);
    }
    result.map(|()| Punched {
        stream,
        peer,
        relayed: false,
        selected,
    })
}

/// Reads a hello from a freshly accepted stream, within `timeout`.
pub async fn read_hello(
    stream: &mut TcpStream,
    timeout: Duration,
) -> std::io::Result<[u8; HELLO_LEN]> {
    let mut h = [0u8; HELLO_LEN];
    match tokio::time::timeout(timeout, stream.read_exact(&mut h)).await {
        Ok(r) => r.map(|_| h),
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "no hello in time",
        )),
    }
}

/// The client selects exactly one stream: the first proven one, unless it committed to one
/// before (see [`EarlyData`]).
pub(super) async fn select(
    mut punched: Punched,
    proof: &Proof,
    early: &[u8],
) -> Result<Punched, HandshakeError> {
    if let Proof::Hello {
        role: Role::Client, ..
    } = proof
    {
        let mut msg = vec![SELECT];
        msg.extend_from_slice(early);
        punched
            .stream
            .write_all(&msg)
            .await
            .map_err(HandshakeError::Select)?;
    }
    Ok(punched)
}
