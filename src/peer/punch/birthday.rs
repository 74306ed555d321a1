//! Birthday punching, for when one end's NAT has endpoint-dependent mapping: the hard side
//! opens many sockets toward the easy side, the easy side probes many ports of the hard side's
//! public IP, and a probe that hits one of the hard side's mappings completes a simultaneous
//! open.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::Event;
use super::plan::Birthday;
use crate::net;

/// Probes are sent in batches of this many, one batch per [`PROBE_PACE`]: about 12 800 SYNs
/// per second, 120 ms for all of them.
const PROBE_BATCH: usize = 64;
/// See [`PROBE_BATCH`].
const PROBE_PACE: Duration = Duration::from_millis(5);

/// Runs the hard or easy side of a birthday punch; reports only connections.
pub(super) async fn birthday(
    b: Birthday,
    local: SocketAddr,
    deadline: Instant,
    events: mpsc::Sender<Event>,
) {
    let budget = net::socket_budget();
    let mut waits = JoinSet::new();
    let wait = |stream: TcpStream, target: SocketAddr, events: mpsc::Sender<Event>| async move {
        let left = deadline.saturating_duration_since(Instant::now());
        if let Ok(s) = net::finish_connect(stream, left).await {
            let _ = events.send(Event::Connected(target, s)).await;
        }
    };
    match b {
        Birthday::Hard {
            target,
            sockets,
            ttl,
        } => {
            for _ in 0..fit(sockets, budget) {
                match net::start_connect(net::any_addr(&target, 0), target, ttl) {
                    Ok(s) => {
                        waits.spawn(wait(s, target, events.clone()));
                    }
                    Err(e) => {
                        tracing::warn!("birthday socket failed: {e}");
                        break;
                    }
                }
            }
        }
        Birthday::Easy { ip, probes } => {
            let probes = fit(probes.min(64_000), budget);
            let ports = rand::seq::index::sample(&mut rand::rng(), 65536 - 1024, probes);
            let ports: Vec<u16> = ports.into_iter().map(|p| (p + 1024) as u16).collect();
            for batch in ports.chunks(PROBE_BATCH) {
                for &port in batch {
                    let target = SocketAddr::new(ip, port);
                    match net::start_connect(local, target, None) {
                        Ok(s) => {
                            waits.spawn(wait(s, target, events.clone()));
                        }
                        Err(e) => tracing::debug!("probe to {target}: {e}"),
                    }
                }
                if Instant::now() >= deadline {
                    break;
                }
                tokio::time::sleep(PROBE_PACE).await;
            }
        }
    }
    while waits.join_next().await.is_some() {}
}

/// How many of `wanted` sockets to open with `budget` left under the open-file limit (see
/// [`net::socket_budget`]): fewer sockets lower the odds of a match, but a punch that runs out
/// of descriptors halfway fails every other connection of the process too.
fn fit(wanted: usize, budget: usize) -> usize {
    if wanted > budget {
        tracing::warn!(
            "birthday punch: {budget} of {wanted} sockets fit under the open-file limit \
             (raise it: ulimit -n)"
        );
    }
    wanted.min(budget)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_punch_never_opens_more_sockets_than_the_budget() {
        assert_eq!(fit(256, 10_000), 256);
        assert_eq!(fit(1536, 180), 180);
        assert_eq!(fit(256, 0), 0);
    }
}
