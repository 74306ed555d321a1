//! The server's NAT probe port. A peer connects to it from its punch port and writes a probe
//! line with a token; the server answers with the public endpoint it saw and remembers it under
//! the token. The same peer's control request names the token, so the server can compare the
//! two mappings of one local port toward two destinations: equal means endpoint-independent
//! mapping (cone NAT or no NAT), different means endpoint-dependent ("symmetric").

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::protocol::{self, MAX_PROBE_LINE, Mapping, ProbeToken};

/// Time a probe connection gets to send its line and to be answered.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the server tries to dial back.
const DIALBACK_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a recorded probe is kept for the control request that names it.
const PROBE_TTL: Duration = Duration::from_secs(30);
/// Most probes remembered at once.
const MAX_PROBES: usize = 65_536;
/// Most probe connections served at once.
const MAX_PROBE_CONNECTIONS: usize = 1024;
/// How long a control request waits for the probe it names (sent at the same moment from the
/// same port, so it normally arrives first).
const PROBE_WAIT: Duration = Duration::from_millis(300);

/// The NAT mapping of a peer whose control connection came from `control` and whose request
/// names the probe `token`: unknown without a probe port or a probe in time.
pub(super) async fn probed_mapping(
    probes: Option<&ProbeTable>,
    control: SocketAddr,
    token: Option<&ProbeToken>,
) -> Mapping {
    match (token, probes) {
        (Some(t), Some(table)) => Mapping::classify(control, table.wait(t, PROBE_WAIT).await),
        _ => Mapping::Unknown,
    }
}

/// Probes recorded by the server, by token.
#[derive(Default)]
pub(super) struct ProbeTable {
    seen: Mutex<HashMap<ProbeToken, (SocketAddr, Instant)>>,
    arrived: Notify,
}

impl ProbeTable {
    fn record(&self, token: ProbeToken, addr: SocketAddr) -> bool {
        let mut seen = self.seen.lock().expect("probe lock");
        let now = Instant::now();
        if seen.len() >= MAX_PROBES {
            seen.retain(|_, (_, t)| now.duration_since(*t) < PROBE_TTL);
            if seen.len() >= MAX_PROBES {
                return false;
            }
        }
        seen.insert(token, (addr, now));
        drop(seen);
        self.arrived.notify_waiters();
        true
    }

    /// The endpoint recorded under `token`, waiting up to `max` for it to arrive.
    async fn wait(&self, token: &ProbeToken, max: Duration) -> Option<SocketAddr> {
        let deadline = Instant::now() + max;
        loop {
            let arrived = self.arrived.notified();
            if let Some((addr, _)) = self.seen.lock().expect("probe lock").remove(token) {
                return Some(addr);
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                return None;
            }
        }
    }
}

/// Serves probe connections on `listener` until `shutdown`.
pub(super) async fn serve(
    listener: TcpListener,
    table: Arc<ProbeTable>,
    shutdown: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(MAX_PROBE_CONNECTIONS));
    let mut tasks = JoinSet::new();
    loop {
        let (stream, from) = tokio::select! {
            _ = shutdown.cancelled() => return,
            Some(_) = tasks.join_next() => continue,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("probe accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            continue; // Dropping the stream refuses it.
        };
        let table = table.clone();
        tasks.spawn(async move {
            let _permit = permit;
            if let Err(e) = tokio::time::timeout(PROBE_TIMEOUT, answer(stream, from, &table)).await
            {
                tracing::debug!("probe from {from} timed out: {e}");
            }
        });
    }
}

async fn answer(stream: TcpStream, from: SocketAddr, table: &ProbeTable) {
    let mut reader = BufReader::new(stream).take(MAX_PROBE_LINE as u64);
    let mut line = String::new();
    if reader.read_line(&mut line).await.is_err() {
        return;
    }
    let mut stream = reader.into_inner().into_inner();
    let parsed = protocol::parse_probe_line(line.trim_end());
    let reply = match &parsed {
        // Whatever case the peer wrote, the token is the same 16 bytes its control request names.
        Some(req) if table.record(req.token, from) => format!("{from}\n"),
        Some(_) => "error busy\n".to_string(),
        None => "error malformed probe line\n".to_string(),
    };
    let _ = stream.write_all(reply.as_bytes()).await;
    let _ = stream.shutdown().await;
    if let Some(req) = parsed.filter(|r| r.dialback) {
        // Only ever toward the endpoint this very connection came from: it cannot be aimed
        // at anyone else.
        if let Ok(Ok(mut back)) =
            tokio::time::timeout(DIALBACK_TIMEOUT, TcpStream::connect(from)).await
        {
            let _ = back.write_all(req.dialback_line().as_bytes()).await;
            let _ = back.shutdown().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ExposeQuery;

    /// Writes `line` to the probe port at `addr` and reads the whole answer.
    async fn ask(addr: SocketAddr, line: &str) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(line.as_bytes()).await.unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).await.unwrap();
        reply
    }

    #[tokio::test]
    async fn a_probe_is_answered_and_recorded_under_its_token() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let table = Arc::new(ProbeTable::default());
        let stop = CancellationToken::new();
        let server = tokio::spawn(serve(listener, table.clone(), stop.clone()));
        let t = ProbeToken::random();
        let local: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let seen = crate::peer::probe::probe(local, addr, &t).await.unwrap();
        assert_eq!(seen.ip(), local.ip());
        assert_eq!(table.wait(&t, Duration::from_millis(100)).await, Some(seen));
        assert_eq!(
            table.wait(&t, Duration::from_millis(10)).await,
            None,
            "taken once"
        );

        // A token in uppercase hex is found under its lowercase form, as queries carry it.
        let upper = ProbeToken::random().to_hex().to_ascii_uppercase();
        let reply = ask(addr, &format!("p2pnc-probe {upper}\n")).await;
        let seen: SocketAddr = reply.trim_end().parse().unwrap();
        let lower = ExposeQuery::parse(&format!("v=2&id=a&auth=public&probe={upper}"))
            .unwrap()
            .probe
            .unwrap();
        assert_eq!(lower.to_hex(), upper.to_ascii_lowercase());
        let found = table.wait(&lower, Duration::from_millis(100)).await;
        assert_eq!(found, Some(seen));

        let reply = ask(addr, "GET / HTTP/1.1\r\n\r\n").await;
        assert_eq!(reply, "error malformed probe line\n");
        stop.cancel();
        server.await.unwrap();
    }

    #[tokio::test]
    async fn waiting_for_a_late_probe_sees_it_arrive() {
        let table = Arc::new(ProbeTable::default());
        let t2 = table.clone();
        let late = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(30)).await;
            t2.record(
                ProbeToken::from_bytes([7; 16]),
                "192.0.2.1:5".parse().unwrap(),
            );
        });
        let got = table
            .wait(&ProbeToken::from_bytes([7; 16]), Duration::from_secs(2))
            .await;
        assert_eq!(got, Some("192.0.2.1:5".parse().unwrap()));
        late.await.unwrap();
    }
}
