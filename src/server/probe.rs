//! The server's NAT probe port. A peer connects to it from its punch port and writes a probe
//! line with a token; the server answers with the public endpoint it saw and remembers it under
//! the token. The same peer's control request names the token, so the server can compare the
//! two mappings of one local port toward two destinations: equal means endpoint-independent
//! mapping (cone NAT or no NAT), different means endpoint-dependent ("symmetric").

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::limits::ConnTable;
use crate::protocol::{self, MAX_PROBE_LINE, Mapping, ProbeToken};

/// Time a probe connection gets to send its line and to be answered.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the server tries to dial back.
const DIALBACK_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a recorded probe is kept for the control request that names it.
const PROBE_TTL: Duration = Duration::from_secs(30);
/// Most probes remembered at once.
const MAX_PROBES: usize = 65_536;
/// Most probes remembered for one source address: a host's probe is taken by its control
/// request within a few hundred milliseconds, so even the hosts behind one carrier-grade NAT
/// rarely have more outstanding; an address with more loses its oldest first.
const MAX_PROBES_PER_IP: usize = 64;
/// Most probe connections served at once.
const MAX_PROBE_CONNECTIONS: usize = 1024;
/// Most probe connections from one address at once; a newer one closes the address's oldest
/// (a real probe is answered within one round trip, so only idle ones are that old).
const MAX_PROBE_CONNECTIONS_PER_IP: usize = 16;
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

/// Recorded probes: by token, and each source address's tokens oldest first.
#[derive(Default)]
struct Seen {
    by_token: HashMap<ProbeToken, (SocketAddr, Instant)>,
    by_ip: HashMap<IpAddr, VecDeque<ProbeToken>>,
}

impl Seen {
    fn remove(&mut self, token: &ProbeToken) -> Option<SocketAddr> {
        let (addr, _) = self.by_token.remove(token)?;
        if let Some(q) = self.by_ip.get_mut(&addr.ip()) {
            q.retain(|t| t != token);
            if q.is_empty() {
                self.by_ip.remove(&addr.ip());
            }
        }
        Some(addr)
    }

    /// Drops the oldest probe of `ip`.
    fn drop_oldest_of(&mut self, ip: IpAddr) {
        let oldest = self.by_ip.get(&ip).and_then(|q| q.front().copied());
        if let Some(t) = oldest {
            self.remove(&t);
        }
    }
}

/// Probes recorded by the server, by token.
#[derive(Default)]
pub(super) struct ProbeTable {
    seen: Mutex<Seen>,
    arrived: Notify,
}

impl ProbeTable {
    /// Records that the probe `token` came from `addr`. An address at its share loses its
    /// oldest probe; a full table first forgets expired probes, then the oldest probe of the
    /// address with the most.
    fn record(&self, token: ProbeToken, addr: SocketAddr) {
        let mut seen = self.seen.lock().expect("probe lock");
        let now = Instant::now();
        seen.remove(&token);
        if seen.by_ip.get(&addr.ip()).map_or(0, |q| q.len()) >= MAX_PROBES_PER_IP {
            seen.drop_oldest_of(addr.ip());
        }
        if seen.by_token.len() >= MAX_PROBES {
            let expired: Vec<ProbeToken> = (seen.by_token.iter())
                .filter(|(_, (_, t))| now.duration_since(*t) >= PROBE_TTL)
                .map(|(k, _)| *k)
                .collect();
            for t in &expired {
                seen.remove(t);
            }
        }
        if seen.by_token.len() >= MAX_PROBES {
            let most = (seen.by_ip.iter())
                .max_by_key(|(_, q)| q.len())
                .map(|(ip, _)| *ip);
            if let Some(ip) = most {
                seen.drop_oldest_of(ip);
            }
        }
        seen.by_token.insert(token, (addr, now));
        seen.by_ip.entry(addr.ip()).or_default().push_back(token);
        drop(seen);
        self.arrived.notify_waiters();
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
            if let Some(addr) = self.seen.lock().expect("probe lock").remove(token) {
                return Some(addr);
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                return None;
            }
        }
    }

    /// Probes remembered now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.seen.lock().expect("probe lock").by_token.len()
    }
}

/// Serves probe connections on `listener` until `shutdown`, at most
/// [`MAX_PROBE_CONNECTIONS_PER_IP`] from one address and [`MAX_PROBE_CONNECTIONS`] in all, a
/// newer connection closing the oldest.
pub(super) async fn serve(
    listener: TcpListener,
    table: Arc<ProbeTable>,
    shutdown: CancellationToken,
) {
    let conns = ConnTable::new(
        "probe connections",
        MAX_PROBE_CONNECTIONS,
        MAX_PROBE_CONNECTIONS_PER_IP,
        0,
    );
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
        let slot = match conns.admit(from.ip()) {
            Ok(slot) => slot,
            Err(refused) => {
                // Every connection is finished or new: say why without waiting, and close.
                let _ = stream.try_write(format!("error {refused}\n").as_bytes());
                continue;
            }
        };
        let table = table.clone();
        tasks.spawn(async move {
            tokio::select! {
                done = tokio::time::timeout(PROBE_TIMEOUT, answer(stream, from, &table)) => {
                    if let Err(e) = done {
                        tracing::debug!("probe from {from} timed out: {e}");
                    }
                }
                _ = slot.evicted() => {
                    tracing::debug!("probe from {from} closed to make room for a newer one");
                }
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
        Some(req) => {
            table.record(req.token, from);
            format!("{from}\n")
        }
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
        *table.seen.lock().unwrap() = Seen::default();
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

    #[test]
    fn one_address_cannot_fill_the_probe_table_for_others() {
        let table = ProbeToken::from_bytes;
        let probes = ProbeTable::default();
        let abuser: SocketAddr = "192.0.2.66:1000".parse().unwrap();
        for i in 0..(MAX_PROBES_PER_IP as u32 * 3) {
            let mut t = [0u8; 16];
            t[..4].copy_from_slice(&i.to_be_bytes());
            probes.record(table(t), abuser);
        }
        assert_eq!(probes.len(), MAX_PROBES_PER_IP, "only its newest stay");
        let honest: SocketAddr = "198.51.100.1:2000".parse().unwrap();
        probes.record(table([0xee; 16]), honest);
        let seen = probes.seen.lock().unwrap().remove(&table([0xee; 16]));
        assert_eq!(seen, Some(honest));
    }
}
