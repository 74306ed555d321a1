//! One session as either end runs it: the punch order, the keys and plan it gives, the punch,
//! and what the proven stream is. The client and the agent differ only around it (see
//! `client.rs` and `agent/`).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::punch::{
    self, EarlyData, Endpoint, Inbound, PunchFailure, PunchOptions, PunchPlan, StreamSettings,
};
use super::stream::PeerStream;
use crate::protocol::{PunchOrder, Role, SessionId, Strategy};

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
        f.write_str(self.label())
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
    pub session: SessionId,
    /// How the punch was made (`simultaneous`, `birthday_hard`, `mapped`, ...).
    pub strategy: Strategy,
    /// Whether the stream's bytes are encrypted (see [`PeerStream::is_encrypted`]).
    pub encrypted: bool,
    /// Whether the stream rides a warm path that was already open: it took no server round
    /// trip and no punch (`setup` is then the time to open it; `session` is the path's).
    pub warm: bool,
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
            "encrypted": self.encrypted,
            "warm": self.warm,
        })
    }
}

/// A proven stream and how it was set up.
#[derive(Debug)]
pub(crate) struct Established {
    /// The stream, its handshake done.
    pub stream: PeerStream,
    /// How it was set up.
    pub info: ConnectionInfo,
    /// `None`: a plain stream; `Some(kept)`: it carries a warm path's multiplexer, kept open
    /// for more streams when `kept`.
    pub warm: Option<bool>,
}

/// One session seen from one end: its order and the plan that carries it out.
pub(crate) struct Session {
    order: PunchOrder,
    plan: PunchPlan,
    /// When the setup started: the client's call, or the order's arrival at the agent.
    started: Instant,
}

impl Session {
    /// The session `order` gives `role`: its stream keys (from `stream`) and its punch plan.
    /// Early data is the client's only.
    pub fn new(
        order: PunchOrder,
        role: Role,
        stream: &StreamSettings,
        at: &Endpoint,
        options: &PunchOptions,
        early: Option<EarlyData>,
        started: Instant,
    ) -> Self {
        let plan = punch::plan(&order, role, stream, at, options, early);
        Session {
            order,
            plan,
            started,
        }
    }

    /// The session's id.
    pub fn id(&self) -> SessionId {
        self.order.session
    }

    /// The order it carries out.
    pub fn order(&self) -> &PunchOrder {
        &self.order
    }

    /// The candidates it punches toward.
    pub fn targets(&self) -> &[SocketAddr] {
        &self.plan.targets
    }

    /// Punches (taking the streams accepted on the punch port from `inbound`) until a stream is
    /// proven or the punch gives up. `on_fired` is called once the first SYNs have left.
    pub async fn run(
        self,
        inbound: mpsc::Receiver<Inbound>,
        on_fired: impl FnOnce(),
    ) -> Result<Established, PunchFailure> {
        let chosen = punch::run(self.plan, inbound, on_fired).await?;
        let info = ConnectionInfo {
            path: chosen.path(&self.order.peer_private),
            peer_addr: chosen.peer,
            setup: self.started.elapsed(),
            session: self.order.session,
            strategy: punch::strategy_used(&self.order, chosen.peer, chosen.relayed),
            encrypted: chosen.stream.is_encrypted(),
            warm: false,
        };
        Ok(Established {
            stream: chosen.stream,
            info,
            warm: chosen.warm,
        })
    }
}
