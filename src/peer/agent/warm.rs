//! Warm paths at the agent (`docs/protocol.md`, "Warm paths"): a proven stream whose client
//! asked for a warm path carries yamux; each service stream the client opens on it is handed
//! to the application like any proven stream ([`super::Agent::accept`]), and the keepalive
//! stream echoes the client's pings. The path ends when the client closes it, when it breaks,
//! when the client has been silent past its keepalives, or when the agent stops.

use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::time::Instant;
use tokio_util::compat::{FuturesAsyncReadCompatExt, TokioAsyncReadCompatExt};

use super::AgentState;
use super::budget::{WarmDeclined, WarmShare};
use crate::defaults;
use crate::peer::session::{ConnectionInfo, Established};
use crate::peer::stream::PeerStream;
use crate::peer::warm::{
    AGENT_SILENCE, Meter, MuxStream, PathSocket, PathState, echo_pings, yamux_config,
};
use crate::protocol::warm::{KIND_KEEPALIVE, KIND_SERVICE};

/// Time a new stream has to show its kind byte: the client writes it as it opens the stream.
const KIND_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves one warm path until it ends. `share` is its place among the agent's kept warm paths
/// (`Err`: the agent declined to keep it, and why; it only carries the client's first
/// streams).
pub(super) async fn serve(
    state: Arc<AgentState>,
    established: Established,
    share: Result<WarmShare, WarmDeclined>,
) {
    let Established { stream, info, .. } = established;
    let kept = share.is_ok();
    if share.is_err() {
        state.warm.path_declined();
    }
    let client = info.peer_addr;
    let path = Arc::new(PathState::default());
    path.set_up(client, info.encrypted, kept);
    let _listed = state.warm.track(client, path.clone());
    crate::peer::warm::quiet_keepalive(&stream);
    let meter = Meter::new();
    let mut conn = yamux::Connection::new(
        PathSocket::new(stream, meter.clone()).compat(),
        yamux_config(),
        yamux::Mode::Server,
    );
    state.warm.path_served();
    let counts = state.warm.counts();
    tracing::info!(
        session = %info.session,
        "warm path from {client} open ({}){}",
        info.path,
        match &share {
            Ok(_) => format!(
                "; {} of at most {} warm paths open",
                counts.open,
                state.warm.limit()
            ),
            Err(declined) => format!("; not kept: {declined}"),
        }
    );
    let started = Instant::now();
    let mut served = 0u64;
    let mut most = 0usize;
    let mut silence = Box::pin(tokio::time::sleep(AGENT_SILENCE));
    let why = loop {
        let next = std::future::poll_fn(|cx| {
            if let Poll::Ready(got) = conn.poll_next_inbound(cx) {
                return Poll::Ready(Some(got));
            }
            if silence.as_mut().poll(cx).is_ready() {
                return Poll::Ready(None);
            }
            Poll::Pending
        });
        let got = tokio::select! {
            _ = state.stop.cancelled() => {
                let _ = tokio::time::timeout(Duration::from_millis(200),
                    std::future::poll_fn(|cx| conn.poll_close(cx))).await;
                break "the agent stopped".to_string();
            }
            got = next => got,
        };
        match got {
            Some(Some(Ok(stream))) => {
                served += 1;
                most = most.max(path.streams() + 1);
                let info = ConnectionInfo {
                    setup: Duration::ZERO,
                    warm: served > 1,
                    ..info.clone()
                };
                state
                    .tracker
                    .spawn(serve_stream(state.clone(), path.clone(), info, stream));
            }
            Some(Some(Err(e))) => break e.to_string(),
            Some(None) => break "the client closed it".to_string(),
            None => {
                let heard = meter.get().last_rx;
                if heard.elapsed() >= AGENT_SILENCE {
                    break format!(
                        "no word from the client for {} s",
                        heard.elapsed().as_secs()
                    );
                }
                silence.as_mut().reset(heard + AGENT_SILENCE);
            }
        }
    };
    path.end(why.clone());
    drop(conn);
    let t = meter.get();
    tracing::info!(
        session = %info.session,
        "warm path from {client} closed after {} s: {served} streams ({most} at once), {} bytes \
         in, {} out: {why}",
        started.elapsed().as_secs(),
        t.rx,
        t.tx
    );
    drop(share);
}

/// One stream the client opened: to the service (handed to the application), or the
/// keepalive stream.
async fn serve_stream(
    state: Arc<AgentState>,
    path: Arc<PathState>,
    info: ConnectionInfo,
    stream: yamux::Stream,
) {
    let mut io = stream.compat();
    let mut kind = [0u8; 1];
    match tokio::time::timeout(KIND_TIMEOUT, io.read_exact(&mut kind)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return tracing::debug!("warm stream ended before its kind: {e}"),
        Err(_) => return tracing::debug!("warm stream without its kind in time"),
    }
    match kind[0] {
        KIND_SERVICE => {
            let stream = MuxStream::agent(io, &path);
            if path.streams() > defaults::WARM_STREAMS_PER_PATH {
                let why = format!(
                    "too many streams on this warm path (limit {})",
                    defaults::WARM_STREAMS_PER_PATH
                );
                tracing::warn!(client = %info.peer_addr, "refusing a stream: {why}");
                stream.refuse(&why).await;
                return;
            }
            state.warm.stream_served();
            tracing::debug!(session = %info.session, "warm stream from {}", info.peer_addr);
            state.hand_over(PeerStream::mux(stream), info).await;
        }
        KIND_KEEPALIVE => {
            // yamux does not wake this stream when the path closes gracefully.
            tokio::select! {
                _ = echo_pings(io) => {}
                _ = path.closed() => {}
            }
        }
        other => {
            tracing::debug!("warm stream of unknown kind {other:#04x}: reset");
        }
    }
}
