//! Planning a punch: from one end's punch order to what its engine does. Pure: no socket, no
//! clock.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::time::Instant;

use super::early::EarlyData;
use crate::defaults;
use crate::peer::control::ServerUrl;
use crate::protocol::{
    Auth, Mode, PunchOrder, RelayTicket, Role, SessionId, SessionKeys, Strategy,
    private_candidate_allowed,
};

/// Time the relay gets, after it is joined, to carry the handshake.
const RELAY_GRACE: Duration = Duration::from_secs(5);
/// How long a plain-mode session waits for the client's ordinary connect: the seed's callers
/// connect right after their call returns, with a 5 s connect timeout.
const PLAIN_WINDOW: Duration = Duration::from_secs(10);

/// How an end punches: part of the options of both ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PunchOptions {
    /// How long a punch may take before it is given up.
    pub timeout: Duration,
    /// TTL of the SYNs meant to open only this host's NAT: the agent's first SYN to each
    /// candidate, and the birthday sockets when this end's NAT is endpoint-dependent (`None`:
    /// normal TTL).
    pub ttl: Option<u32>,
}

impl Default for PunchOptions {
    fn default() -> Self {
        PunchOptions {
            timeout: defaults::PUNCH_TIMEOUT,
            ttl: Some(defaults::PUNCH_TTL),
        }
    }
}

/// Where an end punches from, and the server whose relay it may join.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    /// Our shared punch address (unspecified IP, punch port).
    pub local: SocketAddr,
    /// The server.
    pub server: ServerUrl,
    /// Its resolved address.
    pub server_addr: SocketAddr,
}

/// Birthday punching, for when one end's NAT has endpoint-dependent mapping.
#[derive(Debug, Clone)]
pub(crate) enum Birthday {
    /// Our NAT is endpoint-dependent: open `sockets` connections from fresh local ports toward
    /// `target` (the peer's public endpoint), their SYNs at `ttl` so they open our NAT without
    /// reaching the peer's router, and wait for one of the peer's probes to match.
    Hard {
        /// The peer's public endpoint.
        target: SocketAddr,
        /// How many sockets.
        sockets: usize,
        /// TTL of the SYNs (`None`: normal).
        ttl: Option<u32>,
    },
    /// The peer's NAT is endpoint-dependent: from our punch port, connect to `probes` distinct
    /// random ports of `ip` (the peer's public IP).
    Easy {
        /// The peer's public IP.
        ip: IpAddr,
        /// How many probes.
        probes: usize,
    },
}

/// Joining the server's relay as a fallback.
#[derive(Debug, Clone)]
pub(crate) struct RelayPlan {
    /// The server.
    pub server: ServerUrl,
    /// Its resolved address.
    pub server_addr: SocketAddr,
    /// The session to join.
    pub session: SessionId,
    /// Our end.
    pub role: Role,
    /// Our end's ticket, from the order.
    pub ticket: RelayTicket,
    /// Join after this long unless a direct stream was proven first.
    pub after: Duration,
}

/// How streams are proven to belong to the session.
#[derive(Debug, Clone)]
pub enum Proof {
    /// Hello exchange and selection byte (see the module docs), as `role`.
    Hello {
        /// Which end we are.
        role: Role,
        /// The session's keys.
        keys: SessionKeys,
    },
    /// No handshake (plain mode): the first stream from an expected address wins.
    Address,
}

/// What to punch.
#[derive(Debug, Clone)]
pub(crate) struct PunchPlan {
    /// Our shared local address (unspecified IP, punch port).
    pub local: SocketAddr,
    /// The peer's candidates, most likely first.
    pub targets: Vec<SocketAddr>,
    /// TTL of the first SYN to each candidate (see [`crate::net::connect_from`]); `None` for
    /// normal.
    pub first_ttl: Option<u32>,
    /// Give up after this long.
    pub timeout: Duration,
    /// How streams are proven.
    pub proof: Proof,
    /// Birthday punching, when one end's NAT is endpoint-dependent.
    pub birthday: Option<Birthday>,
    /// The relay fallback, when the server offers one.
    pub relay: Option<RelayPlan>,
    /// The client's early data, and the endpoints it may be sent to before the agent's hello.
    pub early: Option<(EarlyData, Vec<SocketAddr>)>,
}

/// The plan that carries out `order` as `role`, by its strategy. The stream keys mix the
/// session key with `secret`, the client's only when the agent requires one. A plain-mode
/// order makes the agent wait for one ordinary connect from the client (a client always
/// proves its streams).
pub(crate) fn plan(
    order: &PunchOrder,
    role: Role,
    secret: Option<&str>,
    at: &Endpoint,
    punch: &PunchOptions,
    early: Option<EarlyData>,
) -> PunchPlan {
    let plain = role == Role::Agent && order.mode == Mode::Plain;
    let secret = match (role, order.auth) {
        (Role::Client, Auth::Public) => None,
        _ => secret,
    };
    let keys = SessionKeys::derive(order.session, &order.key, secret);
    let (mut targets, birthday) = candidates(order, punch.ttl);
    // The server forwards only candidates that can lie inside the peer's network; check again
    // here rather than trust it to aim our SYNs.
    let peer_private: Vec<SocketAddr> = order
        .peer_private
        .iter()
        .copied()
        .filter(|a| private_candidate_allowed(*a, order.peer_public.ip()))
        .collect();
    // Before private candidates are added: only public and mapped endpoints are trusted with
    // early data.
    let early = match (role, early) {
        (Role::Client, Some(early)) => Some((early, targets.clone())),
        _ => None,
    };
    targets.extend(
        peer_private
            .iter()
            .copied()
            .filter(|a| *a != order.peer_public),
    );
    if plain {
        // The seed's caller connects once, from its control port: aim only there.
        targets = std::iter::once(order.peer_public)
            .chain(peer_private)
            .collect();
    }
    PunchPlan {
        local: at.local,
        targets,
        first_ttl: match role {
            Role::Agent => punch.ttl,
            Role::Client => None,
        },
        timeout: if plain { PLAIN_WINDOW } else { punch.timeout },
        proof: if plain {
            Proof::Address
        } else {
            Proof::Hello { role, keys }
        },
        birthday,
        relay: order
            .relay_after_ms
            .zip(order.relay_ticket)
            .map(|(ms, ticket)| RelayPlan {
                server: at.server.clone(),
                server_addr: at.server_addr,
                session: order.session,
                role,
                ticket,
                after: Duration::from_millis(ms).min(defaults::MAX_RELAY_AFTER),
            }),
        early,
    }
}

/// The public candidates of an order (a port mapping first: it takes connections from
/// anywhere) and its birthday punch, by its strategy.
fn candidates(order: &PunchOrder, ttl: Option<u32>) -> (Vec<SocketAddr>, Option<Birthday>) {
    let mut targets: Vec<SocketAddr> = order.peer_mapped.into_iter().collect();
    let mut birthday = None;
    match order.strategy {
        Strategy::BirthdayHard => {
            birthday = Some(Birthday::Hard {
                target: order.peer_public,
                sockets: defaults::HARD_SOCKETS,
                ttl,
            })
        }
        Strategy::BirthdayEasy => {
            birthday = Some(Birthday::Easy {
                ip: order.peer_public.ip(),
                probes: defaults::EASY_PROBES,
            })
        }
        Strategy::RelayOnly | Strategy::Mapped => {}
        _ if targets.contains(&order.peer_public) => {}
        _ => targets.push(order.peer_public),
    }
    (targets, birthday)
}

impl PunchPlan {
    /// When a punch started at `started` gives up: after its timeout, or later when the relay
    /// is joined late.
    pub fn deadline(&self, started: Instant) -> Instant {
        let deadline = started + self.timeout;
        match &self.relay {
            Some(r) => deadline.max(started + r.after + RELAY_GRACE),
            None => deadline,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Mapping, SessionKey};

    fn order_plan(p: &PunchOrder, role: Role) -> PunchPlan {
        let at = Endpoint {
            local: "0.0.0.0:4000".parse().unwrap(),
            server: ServerUrl::parse("http://203.0.113.10:50300").unwrap(),
            server_addr: "203.0.113.10:50300".parse().unwrap(),
        };
        let punch = PunchOptions {
            timeout: Duration::from_secs(1),
            ttl: Some(2),
        };
        plan(p, role, Some("pw"), &at, &punch, Some(EarlyData::new()))
    }

    fn to_client() -> PunchOrder {
        PunchOrder {
            session: SessionId::from_bytes([0x0f; 16]),
            key: SessionKey::from_bytes([0xa5; 32]),
            peer_public: "198.51.100.10:40000".parse().unwrap(),
            peer_private: vec!["10.0.1.2:40000".parse().unwrap()],
            you: "192.0.2.20:51000".parse().unwrap(),
            mode: Mode::Punch,
            auth: Auth::Secret,
            nonce: None,
            proof: None,
            strategy: Strategy::Simultaneous,
            your_mapping: Mapping::EndpointDependent,
            peer_mapping: Mapping::EndpointDependent,
            relay_after_ms: None,
            relay_ticket: None,
            peer_mapped: Some("198.51.100.10:40001".parse().unwrap()),
        }
    }

    #[test]
    fn a_peer_mapping_is_the_first_target_and_a_mapped_agent_sends_nothing_outward() {
        let to_client = to_client();
        let (public, lan) = (to_client.peer_public, to_client.peer_private[0]);
        let mapped = to_client.peer_mapped.unwrap();
        let plan = order_plan(&to_client, Role::Client);
        assert_eq!(plan.targets, vec![mapped, public, lan]);
        let (_, commit_to) = plan.early.as_ref().expect("the client may send early data");
        assert_eq!(
            commit_to,
            &vec![mapped, public],
            "never to a private address"
        );
        assert!(plan.birthday.is_none());
        // The mapping is the public endpoint itself (a router that preserved the port).
        let same = PunchOrder {
            peer_mapped: Some(public),
            ..to_client.clone()
        };
        assert_eq!(order_plan(&same, Role::Client).targets, vec![public, lan]);
        // Without a mapping: as before.
        let plain = PunchOrder {
            peer_mapped: None,
            ..to_client.clone()
        };
        assert_eq!(order_plan(&plain, Role::Client).targets, vec![public, lan]);
        // The agent with a mapping waits for the client: only LAN candidates.
        let to_agent = PunchOrder {
            strategy: Strategy::Mapped,
            peer_mapped: None,
            ..to_client
        };
        let plan = order_plan(&to_agent, Role::Agent);
        assert_eq!(plan.targets, vec![lan]);
        assert!(plan.birthday.is_none() && plan.relay.is_none() && plan.early.is_none());
    }

    #[test]
    fn a_late_relay_in_an_order_is_capped_and_the_deadline_stays_near() {
        use crate::protocol::{self, ServerToClient};
        // From a faulty or hostile server, such an order overflowed the deadline (a panic).
        let text = r#"{"type":"punch","session":"0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f",
            "key":"a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5",
            "peer_public":"198.51.100.2:40000","you":"198.51.100.3:51000","mode":"punch",
            "auth":"secret","relay_after_ms":18446744073709551615,
            "relay_ticket":"a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1"}"#;
        let Ok(ServerToClient::Punch(p)) = protocol::decode::<ServerToClient>(text) else {
            panic!("a punch order");
        };
        for role in [Role::Client, Role::Agent] {
            let plan = order_plan(&p, role);
            assert_eq!(
                plan.relay.as_ref().unwrap().after,
                defaults::MAX_RELAY_AFTER
            );
            let started = Instant::now();
            assert_eq!(
                plan.deadline(started),
                started + defaults::MAX_RELAY_AFTER + RELAY_GRACE
            );
        }
    }

    #[test]
    fn the_punch_options_set_the_timeout_and_the_agents_first_ttl() {
        let order = to_client();
        let client = order_plan(&order, Role::Client);
        let agent = order_plan(&order, Role::Agent);
        assert_eq!(
            (client.timeout, agent.timeout),
            (Duration::from_secs(1), Duration::from_secs(1))
        );
        assert_eq!((client.first_ttl, agent.first_ttl), (None, Some(2)));
        let hard = PunchOrder {
            strategy: Strategy::BirthdayHard,
            ..order
        };
        let Some(Birthday::Hard { ttl, sockets, .. }) = order_plan(&hard, Role::Client).birthday
        else {
            panic!("a hard birthday side");
        };
        assert_eq!((ttl, sockets), (Some(2), defaults::HARD_SOCKETS));
    }

    #[test]
    fn a_plain_order_makes_the_agent_wait_for_one_connect_but_never_the_client() {
        let order = PunchOrder {
            mode: Mode::Plain,
            peer_mapped: None,
            ..to_client()
        };
        let agent = order_plan(&order, Role::Agent);
        assert!(matches!(agent.proof, Proof::Address));
        assert_eq!(agent.timeout, PLAIN_WINDOW);
        assert_eq!(
            agent.targets,
            vec![order.peer_public, order.peer_private[0]]
        );
        let client = order_plan(&order, Role::Client);
        assert!(
            matches!(
                client.proof,
                Proof::Hello {
                    role: Role::Client,
                    ..
                }
            ),
            "a client never takes a stream it cannot prove"
        );
    }

    #[test]
    fn the_client_keys_its_hello_with_the_secret_only_when_the_agent_requires_one() {
        let order = to_client();
        let keys_of = |plan: PunchPlan| match plan.proof {
            Proof::Hello { keys, .. } => keys,
            Proof::Address => panic!("a hello"),
        };
        let with = keys_of(order_plan(&order, Role::Client));
        let public = PunchOrder {
            auth: Auth::Public,
            ..order.clone()
        };
        let without = keys_of(order_plan(&public, Role::Client));
        let unkeyed = SessionKeys::derive(order.session, &order.key, None);
        let hello = unkeyed.hello(Role::Agent);
        assert!(without.verify_hello(Role::Agent, &hello));
        assert!(!with.verify_hello(Role::Agent, &hello));
    }
}
