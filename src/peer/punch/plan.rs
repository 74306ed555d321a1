//! Planning a punch: from one end's punch order to what its engine does. Pure: no socket, no
//! clock.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::time::Instant;

use super::early::EarlyData;
use crate::defaults;
use crate::peer::control::ServerUrl;
use crate::peer::nat_depth::NatDepth;
use crate::protocol::{
    AgentKey, Mode, PunchOrder, RelayTicket, Role, ServiceKeys, SessionId, StaticKey, Strategy,
    private_candidate_allowed, public_psk,
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
    /// TTL of the SYNs meant to open only this host's NATs: the agent's first SYN to each
    /// candidate, and the birthday sockets when this end's NAT is endpoint-dependent.
    pub ttl: PunchTtl,
}

impl Default for PunchOptions {
    fn default() -> Self {
        PunchOptions {
            timeout: defaults::PUNCH_TIMEOUT,
            ttl: PunchTtl::Learned,
        }
    }
}

/// The TTL of the SYNs meant to open only this host's NATs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PunchTtl {
    /// Just past the outermost NAT in front of this host, as a TTL sweep toward the server
    /// finds it (see `nat-check`); while it is unknown, [`defaults::PUNCH_TTL`]. A low-TTL SYN
    /// that connects nothing is followed by a normal one after a short grace either way.
    Learned,
    /// This TTL, whatever the sweep finds (`--punch-ttl N`).
    Fixed(u32),
    /// The normal TTL (`--punch-ttl 0`).
    Normal,
}

impl PunchTtl {
    /// The TTL for a host with `depth` NATs in front (see [`NatDepth::low_ttl`]); `None`: normal.
    pub(crate) fn for_depth(self, depth: &NatDepth, shared_outer: bool) -> Option<u32> {
        match self {
            PunchTtl::Learned => Some(depth.low_ttl(shared_outer)),
            PunchTtl::Fixed(ttl) => Some(ttl),
            PunchTtl::Normal => None,
        }
    }
}

/// One value per address family.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ByFamily<T> {
    pub v4: T,
    pub v6: T,
}

impl<T> ByFamily<T> {
    /// The value of `addr`'s family.
    pub fn of(&self, addr: &SocketAddr) -> &T {
        if addr.is_ipv4() { &self.v4 } else { &self.v6 }
    }
}

/// Where an end punches from, what is in front of it, and the server whose relay it may join.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    /// Our punch address in each family we have one in (IP unspecified, or for IPv6 the chosen
    /// source; the punch port).
    pub locals: ByFamily<Option<SocketAddr>>,
    /// What is known of the NATs in front of us toward the server, per family.
    pub depths: ByFamily<NatDepth>,
    /// The server.
    pub server: ServerUrl,
    /// Its resolved address (the control connection's).
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

/// What keys and settles one stream's handshake (see `p2pnc_protocol::stream`).
#[derive(Clone)]
pub(crate) struct StreamKeys {
    /// Which end we are.
    pub role: Role,
    /// The session the streams belong to.
    pub session: SessionId,
    /// The Noise PSK: from the service secret, or the public PSK for a public agent.
    pub psk: [u8; 32],
    /// Client: the agent's static key it pins (`NKpsk0`).
    pub pin: Option<AgentKey>,
    /// Agent: its static key, for clients that pin it.
    pub static_key: Option<StaticKey>,
    /// Client: ask for raw bytes after the handshake. Agent: grant such a request.
    pub unencrypted: bool,
    /// Client: ask for a warm path (a multiplexer on the stream). Agent: keep one open for a
    /// client that asks.
    pub warm: bool,
}

impl std::fmt::Debug for StreamKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamKeys")
            .field("role", &self.role)
            .field("session", &self.session)
            .field("pin", &self.pin)
            .field("unencrypted", &self.unencrypted)
            .field("warm", &self.warm)
            .finish_non_exhaustive()
    }
}

/// How streams are proven to belong to the session.
#[derive(Debug, Clone)]
pub(crate) enum Proof {
    /// The Noise stream handshake and the client's selection.
    Noise(Box<StreamKeys>),
    /// No handshake (plain mode): the first stream from an expected address wins.
    Address,
}

/// What an end brings to the stream handshake besides the order.
#[derive(Debug, Clone, Default)]
pub(crate) struct StreamSettings {
    /// The keys of the service secret; `None` for a public agent (and its clients).
    pub keys: Option<ServiceKeys>,
    /// Client: the agent key it pins. Agent: its static key.
    pub pin: Option<AgentKey>,
    /// Agent: its static key.
    pub static_key: Option<StaticKey>,
    /// Client: ask for raw bytes. Agent: allow them.
    pub unencrypted: bool,
    /// Client: ask for a warm path. Agent: grant one (it holds a free warm-path slot).
    pub warm: bool,
}

/// What to punch.
#[derive(Debug, Clone)]
pub(crate) struct PunchPlan {
    /// Our punch address in each family (see [`Endpoint::locals`]).
    pub locals: ByFamily<Option<SocketAddr>>,
    /// The peer's candidates, most likely first; each has a local address of its family.
    pub targets: Vec<SocketAddr>,
    /// TTL of the first SYN to each candidate, by its family (see
    /// [`crate::net::connect_from`]); `None` for normal.
    pub first_ttl: ByFamily<Option<u32>>,
    /// Happy Eyeballs: how long after the IPv6 candidates the IPv4 ones (and an IPv4 birthday
    /// punch) start; zero unless there are both.
    pub v4_delay: Duration,
    /// The public IPv4 address both ends are behind, when they share one (one NAT in front of
    /// both): their public endpoints reach each other only if that NAT hairpins.
    pub shared_public: Option<IpAddr>,
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

/// The plan that carries out `order` as `role`, by its strategy. The stream PSK mixes the
/// session key with the service's keys (the public PSK without them). A plain-mode order makes
/// the agent wait for one ordinary connect from the client (a client always proves its
/// streams).
pub(crate) fn plan(
    order: &PunchOrder,
    role: Role,
    stream: &StreamSettings,
    at: &Endpoint,
    punch: &PunchOptions,
    early: Option<EarlyData>,
) -> PunchPlan {
    let plain = role == Role::Agent && order.mode == Mode::Plain;
    let psk = match &stream.keys {
        Some(keys) => keys.psk(&order.session, &order.key),
        None => public_psk(&order.session, &order.key),
    };
    let keys = StreamKeys {
        role,
        session: order.session,
        psk,
        pin: stream.pin,
        static_key: stream.static_key.clone(),
        unencrypted: stream.unencrypted,
        warm: stream.warm,
    };
    // Behind the same public IPv4 address, the SYNs die at the shared NAT (see
    // `NatDepth::low_ttl`).
    let shared_outer = order.peer_public.is_ipv4() && order.peer_public.ip() == order.you.ip();
    let ttl = |family: &SocketAddr| {
        let shared = family.is_ipv4() && shared_outer;
        punch.ttl.for_depth(at.depths.of(family), shared)
    };
    let (mut targets, birthday) = candidates(order, ttl(&order.peer_public));
    // The server forwards only candidates that can lie inside the peer's network; check again
    // here rather than trust it to aim our SYNs.
    let peer_private: Vec<SocketAddr> = order
        .peer_private
        .iter()
        .copied()
        .filter(|a| {
            private_candidate_allowed(*a, order.peer_public.ip())
                || order
                    .peer_public6
                    .is_some_and(|p6| private_candidate_allowed(*a, p6.ip()))
        })
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
    // Once each, and only in the families we have a punch port in.
    let mut kept: Vec<SocketAddr> = Vec::with_capacity(targets.len());
    for t in targets {
        if at.locals.of(&t).is_some() && !kept.contains(&t) {
            kept.push(t);
        }
    }
    let targets = kept;
    let v6 = targets.iter().any(SocketAddr::is_ipv6);
    let birthday_v4 = birthday.as_ref().is_some_and(|b| b.family().is_ipv4());
    let v4 = birthday_v4 || targets.iter().any(SocketAddr::is_ipv4);
    PunchPlan {
        locals: at.locals,
        targets,
        first_ttl: match role {
            Role::Agent => ByFamily {
                v4: at.locals.v4.and_then(|a| ttl(&a)),
                v6: at.locals.v6.and_then(|a| ttl(&a)),
            },
            Role::Client => ByFamily::default(),
        },
        // Plain mode fires its first SYNs, and then arms, at once.
        v4_delay: if v4 && v6 && !plain {
            defaults::IPV6_HEAD_START
        } else {
            Duration::ZERO
        },
        shared_public: shared_outer.then(|| order.you.ip()),
        timeout: if plain { PLAIN_WINDOW } else { punch.timeout },
        proof: if plain {
            Proof::Address
        } else {
            Proof::Noise(Box::new(keys))
        },
        birthday: birthday.filter(|b| at.locals.of(&b.family()).is_some()),
        relay: order
            .relay_after_ms
            .zip(order.relay_ticket)
            .map(|(ms, ticket)| RelayPlan {
                server: at.server.clone(),
                server_addr: order.relay_at.unwrap_or(at.server_addr),
                session: order.session,
                role,
                ticket,
                after: Duration::from_millis(ms).min(defaults::MAX_RELAY_AFTER),
            }),
        early,
    }
}

/// The public candidates of an order (a port mapping first: it takes connections from
/// anywhere; the IPv6 endpoint next to the IPv4 path) and its birthday punch, by its strategy;
/// `ttl` is the hard side's.
fn candidates(order: &PunchOrder, ttl: Option<u32>) -> (Vec<SocketAddr>, Option<Birthday>) {
    let mut targets: Vec<SocketAddr> = order.peer_mapped.into_iter().collect();
    targets.extend(order.peer_public6);
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

/// The strategy that made a stream to `peer`: the order's, but a stream over the IPv6 path
/// beside an IPv4 one was made by simultaneous open.
pub(crate) fn strategy_used(order: &PunchOrder, peer: SocketAddr, relayed: bool) -> Strategy {
    if !relayed && order.peer_public6.is_some() && peer.is_ipv6() && order.peer_public.is_ipv4() {
        Strategy::Simultaneous
    } else {
        order.strategy
    }
}

impl Birthday {
    /// An address of the family it punches in.
    pub fn family(&self) -> SocketAddr {
        match self {
            Birthday::Hard { target, .. } => *target,
            Birthday::Easy { ip, .. } => SocketAddr::new(*ip, 0),
        }
    }
}

impl PunchPlan {
    /// Our punch address toward `target`.
    pub fn local_for(&self, target: &SocketAddr) -> Option<SocketAddr> {
        *self.locals.of(target)
    }

    /// How long after the start of the punch the first SYN toward `target` leaves.
    pub fn delay_for(&self, target: &SocketAddr) -> Duration {
        if target.is_ipv4() {
            self.v4_delay
        } else {
            Duration::ZERO
        }
    }

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
    use crate::protocol::{Auth, Mapping, SessionKey};

    /// A dual-stack end with one NAT in front (IPv4) and its IPv6 router on its link.
    fn dual_stack() -> Endpoint {
        let one = NatDepth {
            nats: 1,
            known: true,
            cgn: false,
        };
        Endpoint {
            locals: ByFamily {
                v4: Some("0.0.0.0:4000".parse().unwrap()),
                v6: Some("[2001:db8:1:1::2]:4006".parse().unwrap()),
            },
            depths: ByFamily { v4: one, v6: one },
            server: ServerUrl::parse("http://203.0.113.10:50300").unwrap(),
            server_addr: "203.0.113.10:50300".parse().unwrap(),
        }
    }

    fn plan_at(p: &PunchOrder, role: Role, at: &Endpoint, ttl: PunchTtl) -> PunchPlan {
        let punch = PunchOptions {
            timeout: Duration::from_secs(1),
            ttl,
        };
        let stream = StreamSettings {
            keys: Some(ServiceKeys::derive("pw", "svc")),
            ..Default::default()
        };
        plan(p, role, &stream, at, &punch, Some(EarlyData::new()))
    }

    fn order_plan(p: &PunchOrder, role: Role) -> PunchPlan {
        let at = Endpoint {
            locals: ByFamily {
                v4: Some("0.0.0.0:4000".parse().unwrap()),
                v6: None,
            },
            ..dual_stack()
        };
        plan_at(p, role, &at, PunchTtl::Fixed(2))
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
            peer_public6: None,
            you6: None,
            peer_key: None,
            relay_at: None,
        }
    }

    /// An order to a dual-stack client whose agent is dual-stack too.
    fn dual_order() -> PunchOrder {
        PunchOrder {
            peer_public6: Some("[2001:db8:2:1::2]:40006".parse().unwrap()),
            you6: Some("[2001:db8:1:1::2]:4006".parse().unwrap()),
            peer_mapped: None,
            peer_private: vec![],
            ..to_client()
        }
    }

    #[test]
    fn ipv6_leads_ipv4_by_the_head_start_and_only_when_both_are_there() {
        let order = dual_order();
        let (v4, v6) = (order.peer_public, order.peer_public6.unwrap());
        for role in [Role::Client, Role::Agent] {
            let p = plan_at(&order, role, &dual_stack(), PunchTtl::Learned);
            assert_eq!(p.targets, vec![v6, v4], "{role:?}");
            assert_eq!(p.delay_for(&v6), Duration::ZERO);
            assert_eq!(p.delay_for(&v4), defaults::IPV6_HEAD_START);
            assert_eq!(p.local_for(&v6), dual_stack().locals.v6);
            assert_eq!(p.local_for(&v4), dual_stack().locals.v4);
        }
        // Either family alone: no delay at all.
        let v4_only = Endpoint {
            locals: ByFamily {
                v6: None,
                ..dual_stack().locals
            },
            ..dual_stack()
        };
        let p = plan_at(&order, Role::Client, &v4_only, PunchTtl::Learned);
        assert_eq!((p.targets.clone(), p.v4_delay), (vec![v4], Duration::ZERO));
        let v6_only = Endpoint {
            locals: ByFamily {
                v4: None,
                ..dual_stack().locals
            },
            ..dual_stack()
        };
        let p = plan_at(&order, Role::Client, &v6_only, PunchTtl::Learned);
        assert_eq!((p.targets.clone(), p.v4_delay), (vec![v6], Duration::ZERO));
        // An IPv4 birthday punch waits for the IPv6 head start too; early data may go to both.
        let hard = PunchOrder {
            strategy: Strategy::BirthdayEasy,
            ..order
        };
        let p = plan_at(&hard, Role::Client, &dual_stack(), PunchTtl::Learned);
        assert_eq!(p.targets, vec![v6]);
        assert_eq!(p.v4_delay, defaults::IPV6_HEAD_START);
        assert!(matches!(p.birthday, Some(Birthday::Easy { .. })));
        assert_eq!(p.early.as_ref().unwrap().1, vec![v6]);
    }

    #[test]
    fn the_agents_first_ttl_passes_the_nats_it_learnt_of() {
        let order = dual_order();
        let mut at = dual_stack();
        at.depths.v4 = NatDepth {
            nats: 2,
            known: true,
            cgn: true,
        };
        let agent = plan_at(&order, Role::Agent, &at, PunchTtl::Learned);
        assert_eq!(
            agent.first_ttl,
            ByFamily {
                v4: Some(3),
                v6: Some(2)
            }
        );
        let client = plan_at(&order, Role::Client, &at, PunchTtl::Learned);
        assert_eq!(
            client.first_ttl,
            ByFamily::default(),
            "the client's SYNs go all the way"
        );
        // Unknown depths: TTL 2 as before they were learnt.
        at.depths = ByFamily::default();
        let agent = plan_at(&order, Role::Agent, &at, PunchTtl::Learned);
        assert_eq!(
            agent.first_ttl,
            ByFamily {
                v4: Some(2),
                v6: Some(2)
            }
        );
        // An explicit TTL wins; 0 on the command line means normal.
        let fixed = plan_at(&order, Role::Agent, &at, PunchTtl::Fixed(5));
        assert_eq!(
            fixed.first_ttl,
            ByFamily {
                v4: Some(5),
                v6: Some(5)
            }
        );
        let normal = plan_at(&order, Role::Agent, &at, PunchTtl::Normal);
        assert_eq!(normal.first_ttl, ByFamily::default());
        // The hard side of a birthday punch uses the depth of its family too.
        at.depths.v4.nats = 2;
        at.depths.v4.known = true;
        let hard = PunchOrder {
            strategy: Strategy::BirthdayHard,
            ..order
        };
        let p = plan_at(&hard, Role::Client, &at, PunchTtl::Learned);
        assert!(matches!(
            p.birthday,
            Some(Birthday::Hard { ttl: Some(3), .. })
        ));
    }

    #[test]
    fn a_stream_over_the_ipv6_path_was_made_by_simultaneous_open() {
        let order = PunchOrder {
            strategy: Strategy::RelayOnly,
            ..dual_order()
        };
        let v6 = order.peer_public6.unwrap();
        assert_eq!(strategy_used(&order, v6, false), Strategy::Simultaneous);
        assert_eq!(strategy_used(&order, v6, true), Strategy::RelayOnly);
        assert_eq!(
            strategy_used(&order, order.peer_public, false),
            Strategy::RelayOnly
        );
    }

    #[test]
    fn behind_one_shared_nat_the_agents_syn_dies_there() {
        // Both ends behind one CGN: the same public address, each with its home router.
        let order = PunchOrder {
            peer_public: "198.51.100.10:40000".parse().unwrap(),
            you: "198.51.100.10:41000".parse().unwrap(),
            peer_private: vec!["10.0.2.2:40000".parse().unwrap()],
            peer_mapped: None,
            ..to_client()
        };
        let mut at = dual_stack();
        at.depths.v4 = NatDepth {
            nats: 2,
            known: true,
            cgn: true,
        };
        let agent = plan_at(&order, Role::Agent, &at, PunchTtl::Learned);
        assert_eq!(agent.first_ttl.v4, Some(2));
        assert_eq!(
            agent.targets,
            vec![order.peer_public, order.peer_private[0]]
        );
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
        assert_eq!((client.first_ttl.v4, agent.first_ttl.v4), (None, Some(2)));
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
        // Dual stack, an IPv6 LAN candidate (in the /64 the server saw the peer's IPv6 come
        // from): still every SYN at once, before the agent arms.
        let dual = PunchOrder {
            peer_private: vec![
                order.peer_private[0],
                "[2001:db8:1:1::2]:4006".parse().unwrap(),
            ],
            peer_public6: Some("[2001:db8:1:1::9]:4006".parse().unwrap()),
            ..order.clone()
        };
        let agent = plan_at(&dual, Role::Agent, &dual_stack(), PunchTtl::Learned);
        assert_eq!(agent.targets.len(), 3);
        assert_eq!(agent.v4_delay, Duration::ZERO);
        let client = order_plan(&order, Role::Client);
        assert!(
            matches!(
                client.proof,
                Proof::Noise(ref k) if k.role == Role::Client
            ),
            "a client never takes a stream it cannot prove"
        );
    }

    #[test]
    fn the_psk_comes_from_the_service_keys_or_is_the_public_one() {
        let order = to_client();
        let psk_of = |plan: PunchPlan| match plan.proof {
            Proof::Noise(keys) => keys.psk,
            Proof::Address => panic!("a handshake"),
        };
        let with = psk_of(order_plan(&order, Role::Client));
        assert_eq!(
            with,
            ServiceKeys::derive("pw", "svc").psk(&order.session, &order.key)
        );
        assert_ne!(with, public_psk(&order.session, &order.key));
    }
}
