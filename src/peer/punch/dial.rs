//! Dialing one candidate: one connect in flight from the shared punch port, retried after each
//! failure until the deadline.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::Event;
use crate::{defaults, net};

/// How long a low-TTL first SYN may stay unanswered before a normal SYN replaces it: several
/// RTTs of a continental path, so a working low-TTL punch is never cut short.
const LOW_TTL_GRACE: Duration = Duration::from_millis(400);

/// Keeps one connect in flight toward `target` until one connects or the deadline passes.
pub(super) async fn dial(
    local: SocketAddr,
    target: SocketAddr,
    first: std::io::Result<TcpStream>,
    low_ttl: bool,
    deadline: Instant,
    events: mpsc::Sender<Event>,
) {
    let mut pending = first;
    // A low-TTL first SYN that dies before leaving our own NAT (the NAT is more than one hop
    // away: a container, a carrier-grade NAT) opens nothing; give it a short grace, then
    // re-arm with a normal TTL.
    let mut wait_cap = if low_ttl {
        LOW_TTL_GRACE
    } else {
        Duration::MAX
    };
    loop {
        let result = match pending {
            Ok(stream) => {
                let left = deadline.saturating_duration_since(Instant::now());
                net::finish_connect(stream, left.min(wait_cap)).await
            }
            Err(e) => Err(e),
        };
        wait_cap = Duration::MAX;
        match result {
            Ok(stream) => {
                let _ = events.send(Event::Connected(target, stream)).await;
                return;
            }
            Err(e) => {
                let _ = events.send(Event::Failed(target, short_error(&e))).await;
            }
        }
        let pause = rand::random_range(defaults::RETRY_MIN..defaults::RETRY_MAX);
        if Instant::now() + pause >= deadline {
            return;
        }
        tokio::time::sleep(pause).await;
        pending = net::start_connect(local, target, None);
    }
}

fn short_error(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
        std::io::ErrorKind::TimedOut => "no answer".into(),
        _ => e.to_string(),
    }
}
