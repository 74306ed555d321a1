//! Connections accepted on the agent's punch port: each goes to the live session it belongs
//! to, found by the session id in its hello or, in plain mode, by where it comes from.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::peer::punch::{self, Inbound};
use crate::protocol::SessionId;

/// Time a stray connection to the punch port gets to present its stream handshake.
const HEAD_TIMEOUT: Duration = Duration::from_secs(3);

/// Connections on the punch port still waiting to show their hello (strays until they do),
/// oldest first. At most [`crate::defaults::STRAY_CONNECTIONS`]: a newer one closes the oldest,
/// so a flood of idle connections holds a bounded number of sockets and never keeps a real
/// peer, whose hello comes at once, from being served.
#[derive(Clone)]
pub(super) struct Strays {
    max: usize,
    waiting: Arc<Mutex<Waiting>>,
}

/// The last id given, and the connections waiting: (id, closed when evicted), oldest first.
type Waiting = (u64, VecDeque<(u64, CancellationToken)>);

/// A connection's place among the strays; gives it up when dropped.
pub(super) struct Stray {
    strays: Strays,
    id: u64,
    /// Cancelled when a newer connection takes its place.
    pub closed: CancellationToken,
}

impl Drop for Stray {
    fn drop(&mut self) {
        let mut waiting = self.strays.waiting.lock().expect("strays lock");
        waiting.1.retain(|(id, _)| *id != self.id);
    }
}

impl Strays {
    /// At most `max` waiting at once.
    pub fn new(max: usize) -> Self {
        Strays {
            max,
            waiting: Arc::new(Mutex::new((0, VecDeque::new()))),
        }
    }

    /// A place for a new connection, closing the oldest waiting one if all are taken.
    pub fn admit(&self) -> Stray {
        let mut waiting = self.waiting.lock().expect("strays lock");
        if waiting.1.len() >= self.max
            && let Some((_, oldest)) = waiting.1.pop_front()
        {
            tracing::debug!(
                "too many connections on the punch port without a hello: closing the oldest"
            );
            oldest.cancel();
        }
        waiting.0 += 1;
        let id = waiting.0;
        let closed = CancellationToken::new();
        waiting.1.push_back((id, closed.clone()));
        Stray {
            strays: self.clone(),
            id,
            closed,
        }
    }

    /// Connections waiting now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.waiting.lock().expect("strays lock").1.len()
    }
}

/// Where inbound streams of live sessions go: by session id, or (plain mode) by address.
#[derive(Clone, Default)]
pub(super) struct Slots(Arc<Mutex<HashMap<SessionId, Slot>>>);

struct Slot {
    inbound: mpsc::Sender<Inbound>,
    /// Plain mode: the addresses the client may connect from.
    plain_from: Option<Vec<SocketAddr>>,
}

/// A session's slot; removes it however the session ends.
pub(super) struct SlotGuard(Slots, SessionId);

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.0.0.lock().expect("slots lock").remove(&self.1);
    }
}

impl Slots {
    /// Routes the streams of session `id` (plain mode: from `plain_from`) to `inbound` until
    /// the guard is dropped.
    pub fn open(
        &self,
        id: SessionId,
        inbound: mpsc::Sender<Inbound>,
        plain_from: Option<Vec<SocketAddr>>,
    ) -> SlotGuard {
        let slot = Slot {
            inbound,
            plain_from,
        };
        self.0.lock().expect("slots lock").insert(id, slot);
        SlotGuard(self.clone(), id)
    }

    /// The plain-mode session that expects a connection from `from`.
    fn plain(&self, from: SocketAddr) -> Option<mpsc::Sender<Inbound>> {
        let slots = self.0.lock().expect("slots lock");
        slots
            .values()
            .find(|s| s.plain_from.as_ref().is_some_and(|a| a.contains(&from)))
            .map(|s| s.inbound.clone())
    }

    /// The session `id`.
    fn get(&self, id: &SessionId) -> Option<mpsc::Sender<Inbound>> {
        let slots = self.0.lock().expect("slots lock");
        slots.get(id).map(|s| s.inbound.clone())
    }
}

/// Hands a stream accepted on the punch port to its session: a plain-mode session expecting
/// its address, or the session its stream handshake names (a stream without one is closed, as
/// is one whose place among the strays a newer connection took).
pub(super) async fn dispatch(slots: Slots, stray: Stray, mut stream: TcpStream, from: SocketAddr) {
    if let Some(tx) = slots.plain(from) {
        drop(stray);
        let _ = tx.send(Inbound { stream, head: None }).await;
        return;
    }
    let read = tokio::select! {
        read = punch::read_head(&mut stream, HEAD_TIMEOUT) => read,
        _ = stray.closed.cancelled() => return,
    };
    drop(stray);
    let head = match read {
        Ok(Ok(h)) => h,
        Ok(Err(e)) => {
            tracing::debug!("stray connection from {from}: {e}");
            return;
        }
        Err(e) => {
            tracing::debug!("stray connection from {from}: {e}");
            return;
        }
    };
    match slots.get(&head.session) {
        Some(tx) => {
            let _ = tx
                .send(Inbound {
                    stream,
                    head: Some(head),
                })
                .await;
        }
        None => tracing::debug!("connection from {from} names no live session"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_newer_stray_closes_the_oldest_and_a_finished_one_leaves() {
        let strays = Strays::new(2);
        let first = strays.admit();
        let second = strays.admit();
        let third = strays.admit();
        assert!(first.closed.is_cancelled(), "the oldest made room");
        assert!(!second.closed.is_cancelled() && !third.closed.is_cancelled());
        assert_eq!(strays.len(), 2);
        drop(second);
        assert_eq!(strays.len(), 1);
        let _fourth = strays.admit();
        assert!(!third.closed.is_cancelled(), "there was room");
    }
}
