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
/// How long a request waits for its probe of the other address family once its own family's
/// probe is in, when the session does not depend on it (the agent has the client's family).
/// The two probes leave at the same moment, so over a working path the other one arrives
/// within a few milliseconds of the first (the difference of the two paths' delays); a family
/// that is configured but broken costs a connect no more than this.
const OTHER_FAMILY_GRACE: Duration = Duration::from_millis(50);

/// What the probes named by a control request tell.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Probed {
    /// The NAT mapping in the control connection's family: unknown without a probe port or a
    /// probe of that family in time.
    pub mapping: Mapping,
    /// The peer's public endpoint in the other family, if its probe of it arrived.
    pub other: Option<SocketAddr>,
}

/// What the probes `tokens` (the request's `probe` and `probe_other`, in either order) of a
/// peer whose control connection came from `control` tell. Both are awaited up to
/// [`PROBE_WAIT`]; unless `other_needed`, the other family's only [`OTHER_FAMILY_GRACE`] longer
/// than the control family's.
pub(super) async fn probed(
    probes: Option<&ProbeTable>,
    control: SocketAddr,
    tokens: [Option<&ProbeToken>; 2],
    other_needed: bool,
) -> Probed {
    let Some(table) = probes else {
        return Probed::default();
    };
    let deadline = Instant::now() + PROBE_WAIT;
    let wait = |t: Option<&ProbeToken>| {
        let t = t.copied();
        async move {
            match t {
                Some(t) => table.wait_until(&t, deadline).await,
                None => None,
            }
        }
    };
    let (first, second) = (wait(tokens[0]), wait(tokens[1]));
    tokio::pin!(first, second);
    let mut seen: [Option<Option<SocketAddr>>; 2] = [None, None];
    let mut grace_end = None;
    let same_family = |a: &Option<Option<SocketAddr>>| matches!(a, Some(Some(a)) if a.is_ipv4() == control.is_ipv4());
    while seen.iter().any(Option::is_none) {
        tokio::select! {
            got = &mut first, if seen[0].is_none() => seen[0] = Some(got),
            got = &mut second, if seen[1].is_none() => seen[1] = Some(got),
            _ = tokio::time::sleep_until(grace_end.unwrap_or(deadline)), if grace_end.is_some() => break,
        }
        if grace_end.is_none() && !other_needed && seen.iter().any(same_family) {
            grace_end = Some((Instant::now() + OTHER_FAMILY_GRACE).min(deadline));
        }
    }
    let arrived: Vec<SocketAddr> = seen.into_iter().flatten().flatten().collect();
    let same = arrived.iter().find(|a| a.is_ipv4() == control.is_ipv4());
    Probed {
        mapping: Mapping::classify(control, same.copied()),
        other: arrived
            .iter()
            .find(|a| a.is_ipv4() != control.is_ipv4())
            .copied(),
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
    #[cfg(test)]
    async fn wait(&self, token: &ProbeToken, max: Duration) -> Option<SocketAddr> {
        self.wait_until(token, Instant::now() + max).await
    }

    /// The endpoint recorded under `token`, waiting until `deadline` for it to arrive.
    async fn wait_until(&self, token: &ProbeToken, deadline: Instant) -> Option<SocketAddr> {
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
    // On a dual-stack port, IPv4 peers come as IPv4-mapped IPv6 addresses.
    let from = SocketAddr::new(from.ip().to_canonical(), from.port());
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
        let lower = ExposeQuery::parse(&format!("v=1&id=a&auth=public&probe={upper}"))
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

    #[tokio::test(start_paused = true)]
    async fn the_other_familys_probe_is_awaited_briefly_unless_the_session_needs_it() {
        let control: SocketAddr = "198.51.100.3:51000".parse().unwrap();
        let v6: SocketAddr = "[2001:db8:1:1::2]:51006".parse().unwrap();
        let (same, other) = (
            ProbeToken::from_bytes([1; 16]),
            ProbeToken::from_bytes([2; 16]),
        );
        let table = Arc::new(ProbeTable::default());
        let late = |table: Arc<ProbeTable>, after: Duration| {
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                table.record(ProbeToken::from_bytes([2; 16]), v6);
            })
        };
        // Optional and late: the session goes on without it, a grace after the first.
        table.record(same, control);
        let first_late = late(table.clone(), Duration::from_millis(200));
        let started = Instant::now();
        let got = probed(Some(&table), control, [Some(&same), Some(&other)], false).await;
        assert_eq!(
            got,
            Probed {
                mapping: Mapping::EndpointIndependent,
                other: None
            }
        );
        assert_eq!(started.elapsed(), OTHER_FAMILY_GRACE);
        first_late.await.unwrap();
        // Needed: awaited until it comes (in either slot), within the probe wait.
        table.seen.lock().unwrap().clear();
        table.record(same, control);
        let _late = late(table.clone(), Duration::from_millis(200));
        let started = Instant::now();
        let got = probed(Some(&table), control, [Some(&other), Some(&same)], true).await;
        assert_eq!(
            got,
            Probed {
                mapping: Mapping::EndpointIndependent,
                other: Some(v6)
            }
        );
        assert_eq!(started.elapsed(), Duration::from_millis(200));
        // A symmetric NAT seen in the control family; nothing named, nothing awaited.
        table.record(same, "198.51.100.3:52000".parse().unwrap());
        let got = probed(Some(&table), control, [Some(&same), None], false).await;
        assert_eq!(got.mapping, Mapping::EndpointDependent);
        let started = Instant::now();
        assert_eq!(
            probed(Some(&table), control, [None, None], true).await,
            Probed::default()
        );
        assert_eq!(started.elapsed(), Duration::ZERO);
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
