//! An agent's control connection: its registration while the connection lives, the punch
//! orders sent down it, pings both ways, and the agent's rejections and armings routed to
//! their sessions.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::accept::ConnMeta;
use super::broker::AgentView;
use super::http::send;
use super::registry::NewAgent;
use super::session::SessionEvent;
use super::{AppState, Shared, probe};
use crate::defaults;
use crate::protocol::{
    self, AgentToServer, ErrorCode, ExposeQuery, Nonce, ServerToAgent, register_message,
};

/// How often the server pings an agent; also how often the agent's NAT mapping is refreshed
/// from this side. Well under the 2 hours of a typical TCP NAT timeout, and often enough to
/// keep the RTT estimate fresh.
const AGENT_PING_INTERVAL: Duration = Duration::from_secs(10);
/// An agent silent for this long (no pong, no message) is taken offline: three missed pings.
const AGENT_SILENCE_LIMIT: Duration = Duration::from_secs(35);

/// Serves one agent control connection: registers the agent, then carries its orders and
/// pings until the connection ends or the owner's restart replaces it.
pub(super) async fn agent_connection(
    state: AppState,
    meta: ConnMeta,
    q: ExposeQuery,
    mut socket: WebSocket,
) {
    // The agent probed both families before it asked: no wait in practice.
    let tokens = [q.probe.as_ref(), q.probe_other.as_ref()];
    let probed = probe::probed(state.probes.as_deref(), meta.remote, tokens, true).await;
    let mapping = probed.mapping;
    // A mapping on another address than the one we see leads nowhere: the router that made
    // it sits behind another NAT.
    let mapped = q.mapped.filter(|m| {
        let usable = m.ip() == meta.remote.ip();
        if !usable {
            tracing::info!(
                id = %q.id, mapped = %m, public = %meta.remote,
                "ignoring a port mapping that is not on the agent's public address"
            );
        }
        usable
    });
    if let Err(why) = prove_secret(&q, &mut socket).await {
        tracing::info!(id = %q.id, public = %meta.remote, "registration refused: {why}");
        let msg = ServerToAgent::Error {
            code: ErrorCode::SecretRejected,
            message: why,
        };
        send(&mut socket, &msg).await;
        return;
    }
    let new = NewAgent {
        id: q.id.clone(),
        view: AgentView {
            public: meta.remote,
            public_other: probed.other,
            private: q.private.clone(),
            auth: q.auth,
            mapping,
            mapped,
            verifier: q.verifier,
            key: q.key,
        },
        takeover: q.takeover,
        rtt_us: Arc::new(AtomicU64::new(meta.rtt.map_or(0, |d| d.as_micros() as u64))),
    };
    // In a cluster, the id is claimed across the cluster first, then here.
    let claim = match &state.cluster {
        Some(cluster) => {
            match cluster
                .claim(&new.id, &new.view, new.takeover, new.rtt_us.clone())
                .await
            {
                Ok(claim) => Some(claim),
                Err(refused) => {
                    tracing::info!(id = %q.id, public = %meta.remote, "registration refused: {refused}");
                    state.metrics.rejected(&refused.code().to_string());
                    let msg = ServerToAgent::Error {
                        code: refused.code(),
                        message: refused.to_string(),
                    };
                    send(&mut socket, &msg).await;
                    return;
                }
            }
        }
        None => None,
    };
    let mut registration = match state.registry.register(new) {
        Ok(r) => r,
        Err(refused) => {
            let msg = ServerToAgent::Error {
                code: refused.code(),
                message: refused.to_string(),
            };
            send(&mut socket, &msg).await;
            return;
        }
    };
    tracing::info!(
        id = %q.id, public = %meta.remote, other = ?probed.other, auth = ?q.auth, %mapping,
        mapped = ?mapped, "agent registered"
    );
    let registered = ServerToAgent::Registered {
        id: q.id.clone(),
        public: meta.remote,
        mapping,
    };
    if send(&mut socket, &registered).await {
        let rtt_us = registration.rtt_us.clone();
        tokio::select! {
            _ = agent_loop(&state, &mut socket, &mut registration.rx, &rtt_us) => {}
            _ = registration.replaced.cancelled() => {
                let msg = ServerToAgent::Error {
                    code: ErrorCode::IdTaken,
                    message: "replaced by a new registration of the same owner".into(),
                };
                send(&mut socket, &msg).await;
            }
        }
    }
    drop(registration);
    drop(claim);
    tracing::info!(id = %q.id, "agent offline");
}

/// An agent with a verifier proves it holds the secret: it signs a nonce fresh for this
/// connection, so nothing it sent before, and nothing an observer saw, can be replayed.
async fn prove_secret(q: &ExposeQuery, socket: &mut WebSocket) -> Result<(), String> {
    let Some(verifier) = q.verifier else {
        return Ok(());
    };
    let nonce = Nonce::random();
    if !send(socket, &ServerToAgent::Challenge { nonce }).await {
        return Err("the agent went away".into());
    }
    let answer = tokio::time::timeout(defaults::SERVER_TIMEOUT, socket.recv()).await;
    let signature = match answer {
        Ok(Some(Ok(Message::Text(text)))) => match protocol::decode::<AgentToServer>(&text) {
            Ok(AgentToServer::Prove { signature }) => signature,
            Ok(_) => return Err("expected the answer to the registration challenge".into()),
            Err(e) => return Err(e.to_string()),
        },
        Ok(_) => return Err("the agent closed during the registration challenge".into()),
        Err(_) => return Err("no answer to the registration challenge in time".into()),
    };
    if verifier.verifies(&register_message(&q.id, &nonce), &signature) {
        Ok(())
    } else {
        Err("the registration proof does not verify: not the secret of this verifier".into())
    }
}

async fn agent_loop(
    state: &Shared,
    socket: &mut WebSocket,
    rx: &mut mpsc::Receiver<Box<ServerToAgent>>,
    rtt_us: &AtomicU64,
) {
    let mut ping = tokio::time::interval(AGENT_PING_INTERVAL);
    let mut last_heard = Instant::now();
    let mut ping_sent: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            Some(msg) = rx.recv() => {
                if !send(socket, &msg).await {
                    return;
                }
            }
            _ = ping.tick() => {
                if last_heard.elapsed() > AGENT_SILENCE_LIMIT {
                    tracing::info!("agent silent for {:?}, dropping it", last_heard.elapsed());
                    return;
                }
                if socket.send(Message::Ping(Default::default())).await.is_err() {
                    return;
                }
                ping_sent = Some(Instant::now());
            }
            got = socket.recv() => {
                let msg = match got {
                    Some(Ok(m)) => m,
                    Some(Err(e)) => {
                        tracing::debug!("agent connection error: {e}");
                        return;
                    }
                    None => return,
                };
                last_heard = Instant::now();
                match agent_frame(state, msg, &mut ping_sent, rtt_us) {
                    Frame::Handled => {}
                    Frame::Closed => return,
                    Frame::Bad(message) => {
                        let reply = ServerToAgent::Error { code: ErrorCode::BadRequest, message };
                        send(socket, &reply).await;
                        return;
                    }
                }
            }
        }
    }
}

/// What a frame from the agent does to its connection.
enum Frame {
    /// Nothing: go on.
    Handled,
    /// The agent closed the connection.
    Closed,
    /// Not part of the protocol: tell the agent why, and close.
    Bad(String),
}

/// Handles one frame from the agent.
fn agent_frame(
    state: &Shared,
    msg: Message,
    ping_sent: &mut Option<Instant>,
    rtt_us: &AtomicU64,
) -> Frame {
    match msg {
        Message::Text(text) => match protocol::decode::<AgentToServer>(&text) {
            Ok(m) => route_agent_msg(state, m),
            Err(e) => return Frame::Bad(e.to_string()),
        },
        Message::Pong(_) => {
            if let Some(sent) = ping_sent.take() {
                let sample = sent.elapsed().as_micros() as u64;
                let old = rtt_us.load(Ordering::Relaxed);
                let new = if old == 0 {
                    sample
                } else {
                    (old * 7 + sample) / 8
                };
                rtt_us.store(new, Ordering::Relaxed);
            }
        }
        Message::Ping(_) => {}
        Message::Binary(_) => {
            return Frame::Bad("binary frames are not part of the protocol".into());
        }
        Message::Close(_) => return Frame::Closed,
    }
    Frame::Handled
}

fn route_agent_msg(state: &Shared, msg: AgentToServer) {
    let (session, event) = match msg {
        AgentToServer::Reject {
            session,
            code,
            message,
        } => (session, SessionEvent::Rejected(code, message)),
        AgentToServer::Armed { session } => (session, SessionEvent::Armed),
        AgentToServer::Challenge { session, nonce } => (session, SessionEvent::Challenge(nonce)),
        _ => return,
    };
    // Text that is no session id names no session, like an id the server does not know.
    if let Some(session) = session.id()
        && let Err(event) = state.sessions.deliver(session, event)
        && let Some(cluster) = &state.cluster
    {
        // A session another member brokers: its answer goes back the way the order came.
        cluster.forward_event(session, event);
    }
}
