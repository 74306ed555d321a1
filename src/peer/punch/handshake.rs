//! The stream handshake on one stream (`docs/protocol.md`, "The stream handshake"): the
//! client's Noise message 1 (with its selection and early data when it commits), the agent's
//! message 2, and the client's `select` record when it did not commit.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::early::Commit;
use super::plan::{Proof, StreamKeys};
use super::{Chosen, Punched};
use crate::peer::relay::RelayError;
use crate::peer::stream::PeerStream;
use crate::protocol::{
    AGENT_HEAD_LEN, CLIENT_HEAD_LEN, ClientHandshake, ClientHead, Flags, MAX_EARLY_IN_HELLO,
    MAX_NOISE_MESSAGE, RecordCipher, Role, StreamError, TAG_LEN, agent_reply_granting,
    parse_agent_head, record, seal_record,
};

/// Why a stream was not proven.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The peer's handshake did not verify: another session, another secret, an impostor, or
    /// not a p2pnc peer at all.
    #[error("{peer}: {source}")]
    Unproven {
        /// The peer's address.
        peer: SocketAddr,
        /// What did not verify.
        source: StreamError,
    },
    /// The client's first record was not its selection.
    #[error("bad selection from {0}")]
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

/// A stream whose handshake completed, waiting to be selected (client) or selected (agent).
pub(crate) struct Handshaken {
    tcp: TcpStream,
    peer: SocketAddr,
    send: RecordCipher,
    recv: RecordCipher,
    /// Whether both ends agreed on raw bytes after the selection.
    unencrypted: bool,
    /// Agent: the client's early data; client: bytes still to send after the selection.
    pending: Vec<u8>,
    /// `None`: a plain stream; `Some(kept)`: the client asked for a warm path, and `kept` is
    /// the agent's answer.
    warm: Option<bool>,
}

impl std::fmt::Debug for Handshaken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handshaken")
            .field("peer", &self.peer)
            .field("unencrypted", &self.unencrypted)
            .field("warm", &self.warm)
            .finish_non_exhaustive()
    }
}

impl Handshaken {
    /// The stream the application gets. The agent's gets the early data first; the client's
    /// pending bytes must have been written before.
    fn into_stream(self) -> PeerStream {
        if self.unencrypted {
            PeerStream::raw(self.tcp, self.peer, self.pending)
        } else {
            PeerStream::secure(self.tcp, self.peer, self.send, self.recv, self.pending)
        }
    }
}

/// Where a proven stream stands.
#[derive(Debug)]
pub(crate) enum Proven {
    /// Plain mode: a raw stream from the expected address.
    Raw(TcpStream),
    /// The handshake completed.
    Noise(Box<Handshaken>),
}

/// Proves one stream. The deadline bounds every read. A client with early data commits to the
/// stream at once when it leads to one of the commit's targets and no other commitment is
/// pending. `head` is the client's clear head when the agent's listener already read it.
pub(crate) async fn handshake(
    stream: TcpStream,
    head: Option<ClientHead>,
    proof: Proof,
    deadline: Instant,
    commit: Option<Arc<Commit>>,
) -> Result<Punched, HandshakeError> {
    let peer = stream.peer_addr().map_err(HandshakeError::NoPeer)?;
    let keys = match proof {
        Proof::Address => {
            return Ok(Punched {
                proven: Proven::Raw(stream),
                peer,
                relayed: false,
                selected: false,
            });
        }
        Proof::Noise(keys) => keys,
    };
    match keys.role {
        Role::Client => {
            let commit = commit.filter(|c| c.leads_to(&peer));
            let claimed = commit.as_ref().and_then(|c| c.try_claim());
            let committed = claimed.is_some();
            let result = within(deadline, peer, client(stream, peer, &keys, claimed.clone())).await;
            if let (Err(_), Some(c), Some(bytes)) = (&result, &commit, claimed) {
                c.fail(bytes);
            }
            result.map(|h| Punched {
                proven: Proven::Noise(Box::new(h)),
                peer,
                relayed: false,
                selected: committed,
            })
        }
        Role::Agent => within(deadline, peer, agent(stream, peer, &keys, head))
            .await
            .map(|h| Punched {
                proven: Proven::Noise(Box::new(h)),
                peer,
                relayed: false,
                selected: true,
            }),
    }
}

/// Runs `work` until `deadline`.
async fn within<T>(
    deadline: Instant,
    peer: SocketAddr,
    work: impl Future<Output = Result<T, HandshakeError>>,
) -> Result<T, HandshakeError> {
    match tokio::time::timeout_at(deadline, work).await {
        Ok(r) => r,
        Err(_) => Err(HandshakeError::TimedOut(peer)),
    }
}

fn io(peer: SocketAddr) -> impl Fn(std::io::Error) -> HandshakeError {
    move |source| HandshakeError::Io { peer, source }
}

fn unproven(peer: SocketAddr) -> impl Fn(StreamError) -> HandshakeError {
    move |source| HandshakeError::Unproven { peer, source }
}

/// The client's side: message 1 out (selecting the stream when `early` is claimed), message 2
/// in and checked.
async fn client(
    mut tcp: TcpStream,
    peer: SocketAddr,
    keys: &StreamKeys,
    early: Option<Vec<u8>>,
) -> Result<Handshaken, HandshakeError> {
    let flags = Flags {
        select: early.is_some(),
        unencrypted: keys.unencrypted,
        warm: keys.warm,
    };
    let early = early.unwrap_or_default();
    let (now, later) = early.split_at(early.len().min(MAX_EARLY_IN_HELLO));
    let pin = keys.pin.as_ref().map(|k| k.as_bytes());
    let (hs, msg1) = ClientHandshake::start(&keys.session, &keys.psk, pin, flags, now)
        .map_err(unproven(peer))?;
    tcp.write_all(&msg1).await.map_err(io(peer))?;
    let mut head = [0u8; AGENT_HEAD_LEN];
    tcp.read_exact(&mut head).await.map_err(io(peer))?;
    let len = parse_agent_head(&head).map_err(unproven(peer))?;
    let mut msg2 = vec![0u8; len];
    tcp.read_exact(&mut msg2).await.map_err(io(peer))?;
    let (transport, granted) = hs.finish(&msg2).map_err(unproven(peer))?;
    let mut h = Handshaken {
        tcp,
        peer,
        send: RecordCipher::new(&transport.send),
        recv: RecordCipher::new(&transport.recv),
        unencrypted: keys.unencrypted && granted.unencrypted,
        pending: later.to_vec(),
        warm: keys.warm.then_some(granted.warm),
    };
    if keys.unencrypted && !granted.unencrypted {
        tracing::info!("the agent refuses unencrypted streams: this one stays encrypted");
    }
    if flags.select {
        // Committed: what did not fit into message 1 follows at once.
        let rest = std::mem::take(&mut h.pending);
        send_after_selection(&mut h, &rest)
            .await
            .map_err(HandshakeError::Select)?;
    }
    Ok(h)
}

/// The agent's side: message 1 in (its head already read by the listener, or read here) and
/// checked, message 2 out, then the client's selection — in message 1, or as its first record.
async fn agent(
    mut tcp: TcpStream,
    peer: SocketAddr,
    keys: &StreamKeys,
    head: Option<ClientHead>,
) -> Result<Handshaken, HandshakeError> {
    let head = match head {
        Some(h) => h,
        None => {
            let mut raw = [0u8; CLIENT_HEAD_LEN];
            tcp.read_exact(&mut raw).await.map_err(io(peer))?;
            ClientHead::parse(&raw).map_err(unproven(peer))?
        }
    };
    if head.session != keys.session {
        return Err(HandshakeError::Unproven {
            peer,
            source: StreamError::Unproven,
        });
    }
    let mut msg1 = vec![0u8; head.len];
    tcp.read_exact(&mut msg1).await.map_err(io(peer))?;
    let grant = Flags {
        unencrypted: keys.unencrypted,
        warm: keys.warm,
        ..Flags::default()
    };
    let reply = agent_reply_granting(
        &head,
        &msg1,
        &keys.psk,
        keys.static_key.as_ref(),
        grant,
        None,
    )
    .map_err(unproven(peer))?;
    tcp.write_all(&reply.reply).await.map_err(io(peer))?;
    let mut h = Handshaken {
        tcp,
        peer,
        send: RecordCipher::new(&reply.keys.send),
        recv: RecordCipher::new(&reply.keys.recv),
        unencrypted: reply.unencrypted,
        pending: reply.early,
        warm: reply.flags.warm.then_some(reply.warm),
    };
    if !reply.flags.select {
        // Wait for the client's choice: a `select` record.
        let mut len = [0u8; 2];
        h.tcp.read_exact(&mut len).await.map_err(io(peer))?;
        let len = u16::from_be_bytes(len) as usize;
        if !(1 + TAG_LEN..=MAX_NOISE_MESSAGE).contains(&len) {
            return Err(HandshakeError::BadSelection(peer));
        }
        let mut sealed = vec![0u8; len];
        h.tcp.read_exact(&mut sealed).await.map_err(io(peer))?;
        match h.recv.open(&mut sealed) {
            Some(n) if n >= 1 && sealed[0] == record::SELECT => {}
            _ => return Err(HandshakeError::BadSelection(peer)),
        }
    }
    Ok(h)
}

/// Writes bytes that follow the selection: data records, or raw bytes on an unencrypted
/// stream.
async fn send_after_selection(h: &mut Handshaken, bytes: &[u8]) -> std::io::Result<()> {
    if bytes.is_empty() {
        return Ok(());
    }
    if h.unencrypted {
        return h.tcp.write_all(bytes).await;
    }
    let mut out = Vec::with_capacity(bytes.len() + 64);
    for chunk in bytes.chunks(crate::protocol::MAX_RECORD_BODY) {
        seal_record(&mut h.send, record::DATA, chunk, &mut out);
    }
    h.tcp.write_all(&out).await
}

/// Reads a client's clear head from a freshly accepted stream, within `timeout`.
pub async fn read_head(
    stream: &mut TcpStream,
    timeout: Duration,
) -> std::io::Result<Result<ClientHead, StreamError>> {
    let mut h = [0u8; CLIENT_HEAD_LEN];
    match tokio::time::timeout(timeout, stream.read_exact(&mut h)).await {
        Ok(r) => r.map(|_| ClientHead::parse(&h)),
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "no stream handshake in time",
        )),
    }
}

/// The client selects exactly one stream: the first proven one, unless it committed to one
/// before (see [`super::EarlyData`]); `early` follows the selection.
pub(super) async fn select(punched: Punched, early: &[u8]) -> Result<Chosen, HandshakeError> {
    let (peer, relayed) = (punched.peer, punched.relayed);
    match punched.proven {
        Proven::Raw(tcp) => Ok(Chosen {
            stream: PeerStream::raw(tcp, peer, Vec::new()),
            peer,
            relayed,
            warm: None,
        }),
        Proven::Noise(mut h) => {
            if !punched.selected {
                let mut out = Vec::new();
                seal_record(&mut h.send, record::SELECT, &[], &mut out);
                h.tcp
                    .write_all(&out)
                    .await
                    .map_err(HandshakeError::Select)?;
                send_after_selection(&mut h, early)
                    .await
                    .map_err(HandshakeError::Select)?;
            }
            let warm = h.warm;
            Ok(Chosen {
                stream: h.into_stream(),
                peer,
                relayed,
                warm,
            })
        }
    }
}
