//! Connections accepted on the agent's punch port: each goes to the live session it belongs
//! to, found by the session id in its hello or, in plain mode, by where it comes from.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::peer::punch::{self, Inbound};
use crate::protocol::SessionId;

/// Time a stray connection to the punch port gets to present its stream handshake.
const HEAD_TIMEOUT: Duration = Duration::from_secs(3);

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
/// its address, or the session its stream handshake names (a stream without one is closed).
pub(super) async fn dispatch(slots: Slots, mut stream: TcpStream, from: SocketAddr) {
    if let Some(tx) = slots.plain(from) {
        let _ = tx.send(Inbound { stream, head: None }).await;
        return;
    }
    let head = match punch::read_head(&mut stream, HEAD_TIMEOUT).await {
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
