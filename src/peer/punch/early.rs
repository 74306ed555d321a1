//! Early data: the bytes a client sends with its selection of a stream, before the agent's
//! hello has been checked (see the engine's module docs).

use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// Bytes a client sends right behind its selection byte, before the agent's hello arrived (see
/// the module docs). The caller may keep pushing bytes while the punch runs (e.g. what a local
/// application already wrote); the engine takes what is there when it commits to a stream, and
/// whatever is still here afterwards is the caller's to send.
#[derive(Clone, Default)]
pub struct EarlyData {
    buf: Arc<Mutex<Vec<u8>>>,
}

impl fmt::Debug for EarlyData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EarlyData({} bytes)", self.len())
    }
}

impl EarlyData {
    /// An empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes to send.
    pub fn push(&self, bytes: &[u8]) {
        self.buf
            .lock()
            .expect("early data lock")
            .extend_from_slice(bytes);
    }

    /// Takes every byte not sent yet.
    pub fn take(&self) -> Vec<u8> {
        std::mem::take(&mut *self.buf.lock().expect("early data lock"))
    }

    /// Bytes waiting.
    pub fn len(&self) -> usize {
        self.buf.lock().expect("early data lock").len()
    }

    /// Whether no byte is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A client's commitment to one stream before the agent's hello (see [`EarlyData`]).
pub(crate) struct Commit {
    /// Endpoints worth committing to: the agent's public and port-mapped ones, never private
    /// addresses (they may belong to another host) nor birthday guesses.
    targets: Vec<SocketAddr>,
    early: EarlyData,
    /// Whether a stream holds the selection (a commitment waiting for the agent's hello, or
    /// the stream chosen), and bytes of a failed selection that must be sent again.
    state: Mutex<(bool, Vec<u8>)>,
}

impl Commit {
    /// Claims the selection for one stream unless another stream holds it: a commitment
    /// before the agent's hello, or a stream selected the normal way (which keeps the claim for
    /// good, so no handshake still running can commit after it). Returns the bytes to send
    /// after the selection byte; undo with [`Commit::fail`] when the stream fails.
    pub fn try_claim(&self) -> Option<Vec<u8>> {
        let mut state = self.state.lock().expect("commit lock");
        if state.0 {
            return None;
        }
        state.0 = true;
        let mut bytes = std::mem::take(&mut state.1);
        bytes.extend(self.early.take());
        Some(bytes)
    }

    /// The committed stream failed: its bytes must go out again on another stream.
    pub fn fail(&self, sent: Vec<u8>) {
        let mut state = self.state.lock().expect("commit lock");
        *state = (false, sent);
    }
}

impl Commit {
    /// A commitment of `early` to the first stream that reaches one of `targets`.
    pub fn new(early: EarlyData, targets: Vec<SocketAddr>) -> Self {
        Commit {
            targets,
            early,
            state: Mutex::new((false, Vec::new())),
        }
    }

    /// Whether a stream to `peer` may carry the early data.
    pub fn leads_to(&self, peer: &SocketAddr) -> bool {
        self.targets.contains(peer)
    }
}
