//! The agent's control loop: one registration's control channel (punch orders in, rejections
//! and armings out, pings both ways), and registering again when it dies.

use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use futures_util::SinkExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::inbound::{self, Slots, Strays};
use super::registration::{self, Registration};
use super::{AgentState, BACKOFF_MAX, BACKOFF_MIN};

/// How often an agent replaced by another instance of its service asks for the id again:
/// it takes over within this long once the other instance has gone.
const STANDBY_RETRY: Duration = Duration::from_secs(5);
use crate::defaults::{FAILOVER_PING_INTERVAL, FAILOVER_SILENCE_LIMIT};
use crate::peer::control::{self, Incoming};
use crate::protocol::{AgentToServer, ErrorCode, ServerToAgent};

/// How often the agent pings the server; this also keeps its NAT mapping alive. With another
/// server to go to, [`FAILOVER_PING_INTERVAL`] instead.
const PING_INTERVAL: Duration = Duration::from_secs(15);
/// A server silent for this long is taken as gone and the agent reconnects. With another
/// server to go to, [`FAILOVER_SILENCE_LIMIT`] instead.
const SERVER_SILENCE_LIMIT: Duration = Duration::from_secs(40);
/// Pause after a failed accept on the punch port (descriptors exhausted, say): a retry at
/// once would spin.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);

/// The next connection accepted on any of `listeners`.
async fn accept_any(
    listeners: &[crate::net::PunchPort],
) -> std::io::Result<(TcpStream, SocketAddr)> {
    std::future::poll_fn(|cx| {
        for l in listeners {
            if let Poll::Ready(r) = l.poll_accept(cx) {
                return Poll::Ready(r);
            }
        }
        Poll::Pending
    })
    .await
}

/// Serves registrations until `stop` is cancelled or the server says the agent must stop.
pub(super) async fn control_loop(
    state: Arc<AgentState>,
    mut reg: Registration,
    stop: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        tracing::info!(
            "registered as '{}' with {} (public endpoint {}, punch port {}, NAT mapping {})",
            state.opts.id,
            reg.server,
            reg.public,
            reg.local.port(),
            reg.mapping
        );
        // The mapping lives as long as this registration: renewed meanwhile, deleted after.
        let keeper = reg.portmap.take().map(|m| {
            if m.external.ip() != reg.public.ip() {
                tracing::warn!(
                    "the {} mapping {} is not on the public address {} the server sees \
                     (another NAT in front of the router?); the server will not use it",
                    m.protocol,
                    m.external,
                    reg.public.ip()
                );
            }
            m.keep(&tracker, stop.child_token())
        });
        let lost = reg.index;
        let ended = serve_registration(&state, reg, &stop).await;
        if let Some(keeper) = keeper {
            keeper.release().await;
        }
        let n = state.servers.len();
        let (takeover, order): (bool, Vec<usize>) = match ended {
            Ended::Stopped => return,
            // Back to the order of preference, the lost server last: no flapping between
            // servers, and no wait on a dead one while another is up.
            Ended::Lost => (true, (0..n).filter(|&i| i != lost).chain([lost]).collect()),
            // Replaced by another instance of the same service: wait while it holds the id
            // instead of taking turns replacing each other, on the server where it does.
            Ended::Replaced => (
                false,
                [lost]
                    .into_iter()
                    .chain((0..n).filter(|&i| i != lost))
                    .collect(),
            ),
        };
        let cap = if takeover { BACKOFF_MAX } else { STANDBY_RETRY };
        let mut backoff = BACKOFF_MIN;
        reg = loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            // A new port each time: the old 4-tuple to the server may sit in TIME_WAIT.
            let attempt = registration::register_any(
                &state.opts,
                &state.stream,
                &state.servers,
                order.clone(),
                takeover,
            );
            let attempt = tokio::select! {
                _ = stop.cancelled() => return,
                r = attempt => r,
            };
            match attempt {
                Ok(r) => break r,
                Err(e) => {
                    tracing::warn!("re-registration failed ({e}); retrying in {backoff:?}");
                    backoff = (backoff * 2).min(cap);
                }
            }
        };
    }
}

/// One registration: serves punch orders and the punch port until the control channel dies.
/// Returns a reason when the agent must stop rather than reconnect.
/// How a registration ended.
enum Ended {
    /// The agent is stopping.
    Stopped,
    /// The control channel died: register again.
    Lost,
    /// Another registration of the same service replaced this one.
    Replaced,
}

async fn serve_registration(
    state: &Arc<AgentState>,
    reg: Registration,
    stop: &CancellationToken,
) -> Ended {
    let Registration {
        mut ws,
        listeners,
        ports,
        server,
        has_alternative,
        ..
    } = reg;
    let (ping_every, silence_limit) = if has_alternative {
        (FAILOVER_PING_INTERVAL, FAILOVER_SILENCE_LIMIT)
    } else {
        (PING_INTERVAL, SERVER_SILENCE_LIMIT)
    };
    let slots = Slots::default();
    let strays = Strays::new(crate::defaults::STRAY_CONNECTIONS);
    let mut tasks = JoinSet::new();
    let (msg_tx, mut msg_rx) = mpsc::channel::<AgentToServer>(64);
    let mut ping = tokio::time::interval(ping_every);
    let mut last_heard = Instant::now();
    loop {
        tokio::select! {
            _ = stop.cancelled() => {
                let _ = tokio::time::timeout(Duration::from_millis(200), ws.close(None)).await;
                return Ended::Stopped;
            }
            // Every frame counts as a sign of life, pings and pongs included.
            got = control::recv_frame::<ServerToAgent>(&mut ws) => {
                last_heard = Instant::now();
                match got {
                    Ok(Incoming::Message(ServerToAgent::Punch(p))) => {
                        tasks.spawn(super::session(state.clone(), server.clone(), slots.clone(), ports.clone(), p, msg_tx.clone()));
                    }
                    Ok(Incoming::Message(ServerToAgent::PlainProof { session, signature })) => {
                        state.plain_proof(session.id(), signature);
                    }
                    Ok(Incoming::Message(ServerToAgent::Error { code: ErrorCode::IdTaken, message })) => {
                        // Another registration with the same secret replaced this one: an
                        // instance started twice, or someone who knows the secret. Keep
                        // trying (with backoff) rather than give the id up for good.
                        tracing::warn!("{message}; registering again once it is free");
                        return Ended::Replaced;
                    }
                    Ok(Incoming::Message(ServerToAgent::Error { code, message })) => {
                        tracing::warn!("server error {code}: {message}");
                        return Ended::Lost;
                    }
                    Ok(Incoming::Message(_) | Incoming::Alive) => {}
                    Ok(Incoming::Closed) => {
                        tracing::warn!("server closed the control channel");
                        return Ended::Lost;
                    }
                    Err(e) => {
                        tracing::warn!("{e}");
                        return Ended::Lost;
                    }
                }
            }
            Some(msg) = msg_rx.recv() => {
                if control::send(&mut ws, &msg).await.is_err() {
                    return Ended::Lost;
                }
            }
            accepted = accept_any(&listeners) => match accepted {
                Ok((stream, from)) => {
                    tasks.spawn(inbound::dispatch(slots.clone(), strays.admit(), stream, from));
                }
                Err(e) => {
                    tracing::warn!("punch port accept failed: {e}");
                    tokio::time::sleep(ACCEPT_RETRY).await;
                }
            },
            // A dead server host sends nothing, not even a reset: silence is how it shows.
            _ = tokio::time::sleep_until(last_heard + silence_limit) => {
                tracing::warn!("{server} silent for {:?}; reconnecting", last_heard.elapsed());
                return Ended::Lost;
            }
            _ = ping.tick() => {
                if ws.send(Message::Ping(Default::default())).await.is_err() {
                    return Ended::Lost;
                }
            }
            Some(_) = tasks.join_next() => {}
        }
    }
}
