//! Several rendezvous servers, and names with several addresses: which one to try next.
//!
//! Every address of every server is a candidate, server by server in the order given and,
//! within a server, in the order [`PunchPorts`](super::ports::PunchPorts) uses them (the
//! control connection from the first IPv4 address, else the first IPv6 one). An attempt that
//! cannot reach its address moves on to the server's next address, then to the next server; an
//! answer that rules out the whole server (a client's "peer not online") moves on to the next
//! server. The addresses of one name count as one server: a dual-stack host, or a cluster
//! behind one name.

use std::net::SocketAddr;
use std::time::Duration;

use super::control::ServerUrl;
use crate::Error;
use crate::defaults::SERVER_TIMEOUT;

/// Time allowed for each step of opening a control connection (connect, TLS, upgrade) when
/// another server or address is left to try: a hung server (one whose kernel still accepts
/// connections) costs a client this, not the full [`SERVER_TIMEOUT`], before it asks the
/// next. Two seconds cover a SYN lost once (retransmitted after the 1 s initial RTO) and an
/// upgrade over a path of several hundred milliseconds RTT; the last candidate of a round
/// gets the full [`SERVER_TIMEOUT`].
const FAILOVER_STEP_TIMEOUT: Duration = Duration::from_secs(2);

/// Where an attempt that failed sends the next one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// This address could not be reached: try the server's next address, then the next server.
    Address,
    /// The server answered, and the answer holds for all its addresses: try the next server.
    Server,
    /// The answer holds everywhere (a wrong secret, a refusal): stop.
    Stop,
}

/// Where a client goes after a failed connect request: on when the server could not be
/// reached, and on to the next server when the peer is not online there (it may be
/// registered with another server that is not in a cluster with this one).
pub(crate) fn client_next(e: &Error) -> Next {
    match e {
        Error::ServerUnreachable(_) | Error::Tls(_) => Next::Address,
        Error::PeerOffline(_) => Next::Server,
        _ => Next::Stop,
    }
}

/// Where an agent goes after a failed registration: on when the server could not be
/// reached or is full; a refusal (an id taken, a bad token) stops.
pub(crate) fn agent_next(e: &Error) -> Next {
    match e {
        Error::ServerUnreachable(_) | Error::Tls(_) | Error::Busy(_) => Next::Address,
        _ => Next::Stop,
    }
}

/// The address the control connection of an attempt with `addrs` goes to (see
/// [`PunchPorts::primary`](super::ports::PunchPorts::primary)).
fn primary(addrs: &[SocketAddr]) -> Option<SocketAddr> {
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
}

/// One round over the candidates: hands out a server and its addresses still to try, and
/// learns from each failure where to go next.
pub(crate) struct Tries<'a> {
    servers: &'a [ServerUrl],
    /// Indices into `servers`, in the order to try them.
    order: Vec<usize>,
    /// Position in `order` of the server being tried.
    at: usize,
    /// The addresses of the server being tried that are left; empty: resolve the next server.
    addrs: Vec<SocketAddr>,
    /// Why each failed candidate failed.
    errors: Vec<Error>,
}

/// One candidate: a server (its index among the servers given), and the addresses to use
/// (the first of them, by [`PunchPorts`](super::ports::PunchPorts)'s rule, carries the
/// control connection).
pub(crate) struct Candidate<'a> {
    pub index: usize,
    pub server: &'a ServerUrl,
    pub addrs: Vec<SocketAddr>,
    /// Whether another server, or another address in the same family, could take over from
    /// this one: then a dead server is worth noticing fast.
    pub has_alternative: bool,
    /// Time allowed for each step of opening the control connection (connect, TLS, upgrade):
    /// [`FAILOVER_STEP_TIMEOUT`] while another candidate is left in the round, else
    /// [`SERVER_TIMEOUT`].
    pub patience: Duration,
}

impl<'a> Tries<'a> {
    /// A round over `servers` in the order given.
    pub fn new(servers: &'a [ServerUrl]) -> Self {
        Self::in_order(servers, (0..servers.len()).collect())
    }

    /// A round over `servers` in `order` (indices into `servers`).
    pub fn in_order(servers: &'a [ServerUrl], order: Vec<usize>) -> Self {
        Tries {
            servers,
            order,
            at: 0,
            addrs: Vec::new(),
            errors: Vec::new(),
        }
    }

    /// The next candidate, resolving server names as it comes to them (a name that does not
    /// resolve is a failed candidate); `None` when the round is over.
    pub async fn next(&mut self) -> Option<Candidate<'a>> {
        while self.addrs.is_empty() {
            let index = *self.order.get(self.at)?;
            self.at += 1;
            match self.servers[index].resolve_all().await {
                Ok(addrs) => self.addrs = addrs,
                Err(e) => self.errors.push(e),
            }
        }
        let index = self.order[self.at - 1];
        let first = primary(&self.addrs).expect("addresses are not empty");
        let same_family = self
            .addrs
            .iter()
            .filter(|a| a.is_ipv4() == first.is_ipv4())
            .count();
        Some(Candidate {
            index,
            server: &self.servers[index],
            addrs: self.addrs.clone(),
            has_alternative: self.servers.len() > 1 || same_family > 1,
            patience: if self.addrs.len() > 1 || self.at < self.order.len() {
                FAILOVER_STEP_TIMEOUT
            } else {
                SERVER_TIMEOUT
            },
        })
    }

    /// Records that the last candidate failed with `e`, and where that leads. `Err(e)` when
    /// the attempt must stop here.
    pub fn failed(&mut self, e: Error, next: fn(&Error) -> Next) -> Result<(), Error> {
        match next(&e) {
            Next::Stop => return Err(e),
            Next::Server => self.addrs.clear(),
            Next::Address => {
                if let Some(tried) = primary(&self.addrs) {
                    self.addrs.retain(|a| *a != tried);
                }
            }
        }
        if !self.addrs.is_empty() || self.at < self.order.len() {
            tracing::info!("{e}; trying the next server address");
        }
        self.errors.push(e);
        Ok(())
    }

    /// The error of a round in which every candidate failed: "not online" when a server
    /// said so, else every reason the servers could not be reached, in one line.
    pub fn into_error(mut self) -> Error {
        if let Some(i) = self
            .errors
            .iter()
            .position(|e| matches!(e, Error::PeerOffline(_)))
        {
            return self.errors.swap_remove(i);
        }
        if self.errors.len() == 1 || self.errors.iter().all(|e| matches!(e, Error::Tls(_))) {
            return self.errors.swap_remove(0);
        }
        let mut unreachable = Vec::new();
        for e in self.errors {
            match e {
                Error::ServerUnreachable(why) => unreachable.push(why),
                Error::Tls(why) | Error::Busy(why) => unreachable.push(why),
                other => return other,
            }
        }
        if unreachable.is_empty() {
            return Error::ServerUnreachable("no server given".into());
        }
        Error::ServerUnreachable(unreachable.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urls(list: &[&str]) -> Vec<ServerUrl> {
        list.iter().map(|u| ServerUrl::parse(u).unwrap()).collect()
    }

    #[tokio::test]
    async fn each_address_in_order_then_the_next_server() {
        let servers = urls(&["http://[::1]:1", "http://127.0.0.1:2", "http://127.0.0.1:3"]);
        let mut tries = Tries::in_order(&servers, vec![1, 0, 2]);
        let c = tries.next().await.unwrap();
        assert_eq!((c.index, c.addrs[0].port()), (1, 2));
        assert!(c.has_alternative);
        assert_eq!(c.patience, FAILOVER_STEP_TIMEOUT, "two servers are left");
        tries
            .failed(Error::ServerUnreachable("refused".into()), agent_next)
            .unwrap();
        let c = tries.next().await.unwrap();
        assert_eq!(c.index, 0);
        tries
            .failed(Error::PeerOffline("x".into()), client_next)
            .unwrap();
        let c = tries.next().await.unwrap();
        assert_eq!(c.index, 2);
        assert_eq!(c.patience, SERVER_TIMEOUT, "the last candidate");
        tries
            .failed(Error::ServerUnreachable("gone".into()), client_next)
            .unwrap();
        assert!(tries.next().await.is_none());
        // A server that said the peer is offline outranks the unreachable ones.
        assert!(matches!(tries.into_error(), Error::PeerOffline(_)));
    }

    #[tokio::test]
    async fn a_refusal_stops_and_unreachable_servers_are_named_together() {
        let servers = urls(&["http://127.0.0.1:1", "http://127.0.0.1:2"]);
        let mut tries = Tries::new(&servers);
        tries.next().await.unwrap();
        let stop = tries.failed(Error::SecretRejected("x".into()), client_next);
        assert!(matches!(stop, Err(Error::SecretRejected(_))));

        let mut tries = Tries::new(&servers);
        while tries.next().await.is_some() {
            tries
                .failed(Error::ServerUnreachable("refused".into()), client_next)
                .unwrap();
        }
        assert_eq!(
            tries.into_error().to_string(),
            "server unreachable: refused; refused"
        );
    }

    #[tokio::test]
    async fn one_server_with_one_address_has_no_alternative() {
        let servers = urls(&["http://127.0.0.1:1"]);
        let mut tries = Tries::new(&servers);
        assert!(!tries.next().await.unwrap().has_alternative);
        tries
            .failed(Error::ServerUnreachable("refused".into()), agent_next)
            .unwrap();
        assert!(tries.next().await.is_none());
        assert_eq!(
            tries.into_error().to_string(),
            "server unreachable: refused"
        );
    }
}
