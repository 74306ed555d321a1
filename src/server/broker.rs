//! The broker: from what the server knows of a client and an agent, the two punch orders of a
//! session. Pure: no I/O, no clock, no randomness (the session id and key come in).

use std::net::SocketAddr;
use std::time::Duration;

use crate::protocol::{
    AgentKey, Auth, ErrorCode, Mapping, Mode, Nonce, PunchOrder, RelayTicket, SessionId,
    SessionKey, Signature, Strategy, Verifier, filter_private_candidates,
};

/// Head start of the direct path before the relay is joined, when a direct path is possible.
const RELAY_HEAD_START: Duration = Duration::from_millis(1500);
/// Longest the server holds back the nearer end's order: beyond that, a path's RTT estimate is
/// stale or wrong rather than a real difference between the two ends.
const MAX_HOLD: Duration = Duration::from_millis(500);

/// The client of a session, as the server sees it.
#[derive(Debug, Clone)]
pub(super) struct ClientView {
    /// Its public endpoint: where its control connection came from.
    pub public: SocketAddr,
    /// Its public endpoint in the other address family, from its probe of that family.
    pub public_other: Option<SocketAddr>,
    /// Its private candidates, from its request.
    pub private: Vec<SocketAddr>,
    /// Its NAT's mapping behaviour, from its probe.
    pub mapping: Mapping,
    /// Punch or plain.
    pub mode: Mode,
    /// Its request's nonce, for the agent's replay check.
    pub nonce: Nonce,
    /// Its proof of the secret, for the agent to check.
    pub proof: Option<Signature>,
}

/// The agent of a session, as the registry knows it (and, in a cluster, the store).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct AgentView {
    /// Its public endpoint: where its control connection came from.
    pub public: SocketAddr,
    /// Its public endpoint in the other address family, from its probe of that family.
    pub public_other: Option<SocketAddr>,
    /// Its private candidates, from its registration.
    pub private: Vec<SocketAddr>,
    /// Whether it requires a secret.
    pub auth: Auth,
    /// Its NAT's mapping behaviour, from its probe.
    pub mapping: Mapping,
    /// The port mapping on its router, when that is on its public address.
    pub mapped: Option<SocketAddr>,
    /// The verifier it registered (its secret's public key), checked by the server against
    /// every connect proof; `None` for a public agent.
    pub verifier: Option<Verifier>,
    /// Its static Noise key, when it registered one (for clients that pin it).
    pub key: Option<AgentKey>,
}

/// Each end's ticket for joining the relay of one session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct RelayTickets {
    /// The client's.
    pub client: RelayTicket,
    /// The agent's.
    pub agent: RelayTicket,
}

impl RelayTickets {
    /// Two fresh random tickets.
    pub fn random() -> Self {
        RelayTickets {
            client: RelayTicket::random(),
            agent: RelayTicket::random(),
        }
    }

    /// The ticket of `role`'s end.
    pub fn of(&self, role: crate::protocol::Role) -> &RelayTicket {
        match role {
            crate::protocol::Role::Client => &self.client,
            crate::protocol::Role::Agent => &self.agent,
        }
    }
}

/// Whether the server relays sessions that have no direct path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RelayPolicy {
    /// `--relay`: join the relay at once without a direct path, after a head start with one;
    /// each end's order carries its ticket.
    Relay(RelayTickets),
    /// No relay.
    Off,
}

/// Whether a birthday punch may be ordered: each costs the easy side 1536 connection
/// attempts, so the server bounds how many run at once per client address and per agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BirthdayBudget {
    /// Within both bounds.
    Allowed,
    /// The client's address has this many birthday punches under way already.
    ClientBusy(usize),
    /// The agent has this many birthday punches under way already.
    AgentBusy(usize),
}

/// The two orders of a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Orders {
    /// To the agent.
    pub to_agent: PunchOrder,
    /// To the client.
    pub to_client: PunchOrder,
}

/// Why no order can be given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    /// Both NATs are endpoint-dependent, the peers are not behind one NAT, have no IPv6 path
    /// either, and the server does not relay.
    NoDirectPath {
        /// The client's NAT mapping.
        client: Mapping,
        /// The agent's NAT mapping.
        agent: Mapping,
    },
    /// Only a birthday punch could connect the two ends, the server does not relay, and the
    /// birthday budget is spent.
    BirthdayBusy(BirthdayBudget),
    /// The two ends share no address family (one IPv4 only, the other IPv6 only), and the
    /// server does not relay.
    NoCommonFamily {
        /// The client's family.
        client: &'static str,
        /// The agent's family.
        agent: &'static str,
    },
}

impl Refusal {
    /// One line for the client, who asked for `peer`.
    pub fn message(&self, peer: &str) -> String {
        match self {
            Refusal::NoDirectPath { client, agent } => format!(
                "no direct path: this client's NAT is {client} and peer '{peer}''s NAT is \
                 {agent} (both symmetric), and this server does not relay"
            ),
            Refusal::NoCommonFamily { client, agent } => format!(
                "no direct path: this client has {client} only and peer '{peer}' has {agent} \
                 only, and this server does not relay"
            ),
            Refusal::BirthdayBusy(BirthdayBudget::AgentBusy(limit)) => format!(
                "peer '{peer}' is busy: too many birthday punches toward it at once (limit \
                 {limit}); try again in a few seconds"
            ),
            Refusal::BirthdayBusy(budget) => {
                let limit = match budget {
                    BirthdayBudget::ClientBusy(n) | BirthdayBudget::AgentBusy(n) => *n,
                    BirthdayBudget::Allowed => 0,
                };
                format!(
                    "server busy: too many birthday punches from this address at once (limit \
                     {limit}); try again in a few seconds"
                )
            }
        }
    }

    /// The code to answer with.
    pub fn code(&self) -> ErrorCode {
        match self {
            Refusal::NoDirectPath { .. } | Refusal::NoCommonFamily { .. } => {
                ErrorCode::NoDirectPath
            }
            Refusal::BirthdayBusy(_) => ErrorCode::Busy,
        }
    }
}

/// Whether the session of `client` and `agent` would be a birthday punch.
pub(super) fn birthday_needed(client: &ClientView, agent: &AgentView) -> bool {
    let mapped = agent.mapped.is_some() && client.mode == Mode::Punch;
    client.mode == Mode::Punch
        && strategies(client.mapping, agent.mapping, mapped).is_some_and(|(c, a)| {
            matches!(c, Strategy::BirthdayHard | Strategy::BirthdayEasy)
                || matches!(a, Strategy::BirthdayHard | Strategy::BirthdayEasy)
        })
}

/// One end's public endpoint and NAT mapping in one address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seen {
    public: SocketAddr,
    mapping: Mapping,
}

/// What the server saw of an end in each family: the control connection's family with its
/// probed mapping, the other family from its probe alone (mapping unknown).
fn families(
    public: SocketAddr,
    mapping: Mapping,
    other: Option<SocketAddr>,
) -> (Option<Seen>, Option<Seen>) {
    let control = Seen { public, mapping };
    let other = other
        .filter(|o| o.is_ipv4() != public.is_ipv4())
        .map(|public| Seen {
            public,
            mapping: Mapping::Unknown,
        });
    if public.is_ipv4() {
        (Some(control), other)
    } else {
        (other, Some(control))
    }
}

fn family_name(v4: Option<Seen>) -> &'static str {
    if v4.is_some() { "IPv4" } else { "IPv6" }
}

/// Plans a session: the strategies of both ends, their candidates and the relay. A birthday
/// punch is ordered only within `birthday`; without it, the session is relayed or refused.
///
/// The orders' main fields describe the IPv4 path when both ends have IPv4, else the IPv6 one;
/// when both have both, `peer_public6` and `you6` add the IPv6 path, punched by simultaneous
/// open (IPv6 has firewalls, not NATs) next to whatever IPv4 needs.
pub(super) fn plan(
    session: SessionId,
    key: SessionKey,
    client: &ClientView,
    agent: &AgentView,
    relay: RelayPolicy,
    birthday: BirthdayBudget,
) -> Result<Orders, Refusal> {
    let (c4, c6) = families(client.public, client.mapping, client.public_other);
    let (a4, a6) = families(agent.public, agent.mapping, agent.public_other);
    let both = |c: Option<Seen>, a: Option<Seen>| c.zip(a);
    let (main, six) = match (both(c4, a4), both(c6, a6)) {
        (Some(v4), six) => (Some(v4), six),
        (None, Some(v6)) => (Some(v6), None),
        (None, None) => (None, None),
    };
    // Private candidates only help peers behind the same NAT; elsewhere they would send SYNs
    // into unrelated networks. Even then, only addresses that can lie inside that network.
    let same_nat = both(c4, a4).is_some_and(|(c, a)| c.public.ip() == a.public.ip());
    // Plain mode keeps to the seed's single connect toward the agent's public endpoint; a
    // port mapping is on the address of the agent's control connection.
    let agent_mapped = agent.mapped.filter(|m| {
        client.mode == Mode::Punch && main.is_some_and(|(_, a)| a.public.ip() == m.ip())
    });
    let mut direct = match (client.mode, main) {
        (_, None) => None,
        (Mode::Punch, Some((c, a))) => strategies(c.mapping, a.mapping, agent_mapped.is_some()),
        (Mode::Plain, Some(_)) => Some((Strategy::Simultaneous, Strategy::Simultaneous)),
    };
    let is_birthday = |s: Strategy| matches!(s, Strategy::BirthdayHard | Strategy::BirthdayEasy);
    let over_budget = birthday != BirthdayBudget::Allowed
        && direct.is_some_and(|(c, a)| is_birthday(c) || is_birthday(a));
    if over_budget {
        direct = None;
    }
    let six = six.filter(|_| client.mode == Mode::Punch);
    let direct_possible = direct.is_some() || six.is_some();
    let relay_after = match (relay, direct_possible, client.mode) {
        (RelayPolicy::Off, _, _) | (_, _, Mode::Plain) => None,
        (RelayPolicy::Relay(_), true, _) => Some(RELAY_HEAD_START.as_millis() as u64),
        (RelayPolicy::Relay(_), false, _) => Some(0),
    };
    if !direct_possible && relay_after.is_none() && !same_nat {
        if over_budget {
            return Err(Refusal::BirthdayBusy(birthday));
        }
        return Err(match main {
            Some((c, a)) => Refusal::NoDirectPath {
                client: c.mapping,
                agent: a.mapping,
            },
            None => Refusal::NoCommonFamily {
                client: family_name(c4),
                agent: family_name(a4),
            },
        });
    }
    let tickets = match relay {
        RelayPolicy::Relay(t) if relay_after.is_some() => Some(t),
        _ => None,
    };
    let (client_strategy, agent_strategy) =
        direct.unwrap_or((Strategy::RelayOnly, Strategy::RelayOnly));
    // Without a common family only the relay is left: each end is told the other's control
    // endpoint, which it does not dial.
    let (c, a) = main.unwrap_or((
        Seen {
            public: client.public,
            mapping: client.mapping,
        },
        Seen {
            public: agent.public,
            mapping: agent.mapping,
        },
    ));
    let to_agent = PunchOrder {
        session,
        key,
        peer_public: c.public,
        peer_private: if same_nat {
            inside(&client.private, client.public, client.public_other)
        } else {
            vec![]
        },
        you: a.public,
        mode: client.mode,
        auth: agent.auth,
        nonce: Some(client.nonce),
        proof: client.proof,
        strategy: agent_strategy,
        your_mapping: a.mapping,
        peer_mapping: c.mapping,
        relay_after_ms: relay_after,
        relay_ticket: tickets.map(|t| t.agent),
        peer_mapped: None,
        peer_public6: six.map(|(c6, _)| c6.public),
        you6: six.map(|(_, a6)| a6.public),
        peer_key: None,
        relay_at: None,
    };
    let to_client = PunchOrder {
        session,
        key,
        peer_public: a.public,
        peer_private: if same_nat {
            inside(&agent.private, agent.public, agent.public_other)
        } else {
            vec![]
        },
        you: c.public,
        mode: client.mode,
        auth: agent.auth,
        nonce: None,
        proof: None,
        strategy: client_strategy,
        your_mapping: c.mapping,
        peer_mapping: a.mapping,
        relay_after_ms: relay_after,
        relay_ticket: tickets.map(|t| t.client),
        peer_mapped: agent_mapped,
        peer_public6: six.map(|(_, a6)| a6.public),
        you6: six.map(|(c6, _)| c6.public),
        peer_key: agent.key,
        relay_at: None,
    };
    Ok(Orders {
        to_agent,
        to_client,
    })
}

/// The candidates of `list` that can lie inside the network of an end seen at `public` (and,
/// dual-stack, at `other`): private ranges, or IPv6 addresses in the /64 it was seen from.
fn inside(list: &[SocketAddr], public: SocketAddr, other: Option<SocketAddr>) -> Vec<SocketAddr> {
    let mut kept = filter_private_candidates(list, public.ip());
    if let Some(other) = other {
        let more = filter_private_candidates(list, other.ip());
        kept = list
            .iter()
            .copied()
            .filter(|c| kept.contains(c) || more.contains(c))
            .collect();
    }
    kept
}

/// The strategies of (client, agent), or `None` when no direct path can exist. A port mapping
/// on the agent's router takes connections from anywhere: unless both NATs are cone (where
/// the usual punch goes on, the mapping being one more candidate), the client connects to it
/// and the agent waits.
fn strategies(client: Mapping, agent: Mapping, agent_mapped: bool) -> Option<(Strategy, Strategy)> {
    use Mapping::EndpointDependent as Hard;
    match (client == Hard, agent == Hard) {
        (false, false) => Some((Strategy::Simultaneous, Strategy::Simultaneous)),
        _ if agent_mapped => Some((Strategy::Simultaneous, Strategy::Mapped)),
        (true, false) => Some((Strategy::BirthdayHard, Strategy::BirthdayEasy)),
        (false, true) => Some((Strategy::BirthdayEasy, Strategy::BirthdayHard)),
        (true, true) => None,
    }
}

/// How long to hold the client's order back so that both ends fire at the same moment: by the
/// difference of the one-way delays. The agent's order goes first, so only the client's is
/// ever held; a nearer agent fires a little early, which the low TTL of its first SYN makes
/// harmless.
pub(super) fn hold_client_order(client_rtt: Duration, agent_rtt: Duration) -> Duration {
    (agent_rtt.saturating_sub(client_rtt) / 2).min(MAX_HOLD)
}

#[cfg(test)]
mod tests {
    use super::*;
    use Mapping::{EndpointDependent as Hard, EndpointIndependent as Easy, Unknown};

    const SESSION: SessionId = SessionId::from_bytes([1; 16]);
    const KEY: SessionKey = SessionKey::from_bytes([2; 32]);
    const TICKETS: RelayTickets = RelayTickets {
        client: RelayTicket::from_bytes([4; 16]),
        agent: RelayTicket::from_bytes([5; 16]),
    };

    fn client(public: &str, mapping: Mapping) -> ClientView {
        ClientView {
            public: public.parse().unwrap(),
            public_other: None,
            private: vec![
                "10.0.1.2:40000".parse().unwrap(),
                "8.8.8.8:53".parse().unwrap(),
            ],
            mapping,
            mode: Mode::Punch,
            nonce: Nonce::from_bytes([3; 16]),
            proof: Some(crate::protocol::Signature::from_bytes([0xab; 64])),
        }
    }

    fn agent(public: &str, mapping: Mapping, mapped: Option<&str>) -> AgentView {
        AgentView {
            public: public.parse().unwrap(),
            public_other: None,
            private: vec![
                "10.0.2.2:50000".parse().unwrap(),
                "203.0.113.77:80".parse().unwrap(),
            ],
            auth: Auth::Secret,
            mapping,
            mapped: mapped.map(|m| m.parse().unwrap()),
            verifier: None,
            key: None,
        }
    }

    const C: &str = "198.51.100.3:51000";
    const A: &str = "203.0.113.2:40000";
    const MAPPED: &str = "203.0.113.2:40001";

    #[test]
    fn a_mapped_agent_is_reached_directly_whatever_the_nats() {
        use Strategy::*;
        let table = [
            // Without a mapping: the table of docs/protocol.md.
            (Easy, Easy, false, Some((Simultaneous, Simultaneous))),
            (Unknown, Easy, false, Some((Simultaneous, Simultaneous))),
            (Hard, Easy, false, Some((BirthdayHard, BirthdayEasy))),
            (Easy, Hard, false, Some((BirthdayEasy, BirthdayHard))),
            (Hard, Hard, false, None),
            // With one: the client connects to it and the agent waits, unless both are cones.
            (Easy, Easy, true, Some((Simultaneous, Simultaneous))),
            (Hard, Easy, true, Some((Simultaneous, Mapped))),
            (Easy, Hard, true, Some((Simultaneous, Mapped))),
            (Hard, Hard, true, Some((Simultaneous, Mapped))),
        ];
        for (client, agent, mapped, want) in table {
            assert_eq!(
                strategies(client, agent, mapped),
                want,
                "{client} {agent} {mapped}"
            );
        }
    }

    /// One row of the broker's table: what the two ends are, and what each order says.
    struct Case {
        what: &'static str,
        client: ClientView,
        agent: AgentView,
        relay: RelayPolicy,
        /// The birthday budget.
        birthday: BirthdayBudget,
        /// (client's strategy, agent's strategy, relay_after_ms), or the refusal.
        want: Result<(Strategy, Strategy, Option<u64>), Refusal>,
        /// Whether the orders carry each other's private candidates.
        lan: bool,
        /// The mapping the client is told about.
        peer_mapped: Option<&'static str>,
    }

    fn cases() -> Vec<Case> {
        use Strategy::*;
        let plain = ClientView {
            mode: Mode::Plain,
            ..client(C, Hard)
        };
        let no_path = Refusal::NoDirectPath {
            client: Hard,
            agent: Hard,
        };
        vec![
            Case {
                what: "cone to cone",
                client: client(C, Easy),
                agent: agent(A, Easy, None),
                relay: RelayPolicy::Off,
                birthday: BirthdayBudget::Allowed,
                want: Ok((Simultaneous, Simultaneous, None)),
                lan: false,
                peer_mapped: None,
            },
            Case {
                what: "same NAT: private candidates, even both symmetric without a relay",
                client: client("203.0.113.2:51000", Hard),
                agent: agent(A, Hard, None),
                relay: RelayPolicy::Off,
                birthday: BirthdayBudget::Allowed,
                want: Ok((RelayOnly, RelayOnly, None)),
                lan: true,
                peer_mapped: None,
            },
            Case {
                what: "plain mode: one ordinary connect, no relay, no mapping",
                client: plain.clone(),
                agent: agent(A, Hard, Some(MAPPED)),
                relay: RelayPolicy::Relay(TICKETS),
                birthday: BirthdayBudget::Allowed,
                want: Ok((Simultaneous, Simultaneous, None)),
                lan: false,
                peer_mapped: None,
            },
            Case {
                what: "a mapped agent behind a symmetric NAT",
                client: client(C, Hard),
                agent: agent(A, Hard, Some(MAPPED)),
                relay: RelayPolicy::Off,
                birthday: BirthdayBudget::Allowed,
                want: Ok((Simultaneous, Mapped, None)),
                lan: false,
                peer_mapped: Some(MAPPED),
            },
            Case {
                what: "a mapped agent behind a cone: the mapping is one more candidate",
                client: client(C, Easy),
                agent: agent(A, Easy, Some(MAPPED)),
                relay: RelayPolicy::Relay(TICKETS),
                birthday: BirthdayBudget::Allowed,
                want: Ok((Simultaneous, Simultaneous, Some(1500))),
                lan: false,
                peer_mapped: Some(MAPPED),
            },
            Case {
                what: "one symmetric side: birthday punching, relay after a head start",
                client: client(C, Hard),
                agent: agent(A, Easy, None),
                relay: RelayPolicy::Relay(TICKETS),
                birthday: BirthdayBudget::Allowed,
                want: Ok((BirthdayHard, BirthdayEasy, Some(1500))),
                lan: false,
                peer_mapped: None,
            },
            Case {
                what: "both symmetric with a relay: the relay at once",
                client: client(C, Hard),
                agent: agent(A, Hard, None),
                relay: RelayPolicy::Relay(TICKETS),
                birthday: BirthdayBudget::Allowed,
                want: Ok((RelayOnly, RelayOnly, Some(0))),
                lan: false,
                peer_mapped: None,
            },
            Case {
                what: "one symmetric side over the birthday budget, with a relay: relayed",
                client: client(C, Hard),
                agent: agent(A, Easy, None),
                relay: RelayPolicy::Relay(TICKETS),
                birthday: BirthdayBudget::AgentBusy(2),
                want: Ok((RelayOnly, RelayOnly, Some(0))),
                lan: false,
                peer_mapped: None,
            },
            Case {
                what: "one symmetric side over the birthday budget, without a relay: busy",
                client: client(C, Easy),
                agent: agent(A, Hard, None),
                relay: RelayPolicy::Off,
                birthday: BirthdayBudget::ClientBusy(2),
                want: Err(Refusal::BirthdayBusy(BirthdayBudget::ClientBusy(2))),
                lan: false,
                peer_mapped: None,
            },
            Case {
                what: "cones are never held by the birthday budget",
                client: client(C, Easy),
                agent: agent(A, Easy, None),
                relay: RelayPolicy::Off,
                birthday: BirthdayBudget::AgentBusy(2),
                want: Ok((Simultaneous, Simultaneous, None)),
                lan: false,
                peer_mapped: None,
            },
            Case {
                what: "both symmetric without a relay: refused",
                client: client(C, Hard),
                agent: agent(A, Hard, None),
                relay: RelayPolicy::Off,
                birthday: BirthdayBudget::Allowed,
                want: Err(no_path),
                lan: false,
                peer_mapped: None,
            },
        ]
    }

    #[test]
    fn the_broker_plans_each_kind_of_session() {
        for case in cases() {
            let got = plan(
                SESSION,
                KEY,
                &case.client,
                &case.agent,
                case.relay,
                case.birthday,
            );
            let orders = match (got, case.want) {
                (Err(got), Err(want)) => {
                    assert_eq!(got, want, "{}", case.what);
                    continue;
                }
                (Ok(orders), Ok(_)) => orders,
                (got, want) => panic!("{}: got {got:?}, wanted {want:?}", case.what),
            };
            let Ok((client_strategy, agent_strategy, relay_after)) = case.want else {
                unreachable!()
            };
            let (a, c) = (&orders.to_agent, &orders.to_client);
            assert_eq!(
                (c.strategy, a.strategy, c.relay_after_ms),
                (client_strategy, agent_strategy, relay_after),
                "{}",
                case.what
            );
            assert_eq!(a.relay_after_ms, c.relay_after_ms, "{}", case.what);
            // Each end is told the other's public endpoint and its own.
            assert_eq!(
                (a.peer_public, a.you),
                (case.client.public, case.agent.public)
            );
            assert_eq!(
                (c.peer_public, c.you),
                (case.agent.public, case.client.public)
            );
            let (a_lan, c_lan) = (!a.peer_private.is_empty(), !c.peer_private.is_empty());
            assert_eq!((a_lan, c_lan), (case.lan, case.lan), "{}", case.what);
            // Only candidates inside a private network travel: never the public ones.
            if case.lan {
                assert_eq!(
                    a.peer_private,
                    vec![case.client.private[0]],
                    "{}",
                    case.what
                );
                assert_eq!(c.peer_private, vec![case.agent.private[0]], "{}", case.what);
            }
            // Each end gets its own relay ticket, exactly when it is told to join the relay.
            let tickets = (a.relay_ticket, c.relay_ticket);
            match c.relay_after_ms {
                Some(_) => assert_eq!(
                    tickets,
                    (Some(TICKETS.agent), Some(TICKETS.client)),
                    "{}",
                    case.what
                ),
                None => assert_eq!(tickets, (None, None), "{}", case.what),
            }
            let peer_mapped = case.peer_mapped.map(|m| m.parse().unwrap());
            assert_eq!(c.peer_mapped, peer_mapped, "{}", case.what);
            assert_eq!(a.peer_mapped, None, "the agent never gets a mapping");
            // Only the agent gets the client's nonce and proof; both get the same session.
            assert_eq!(a.nonce, Some(case.client.nonce));
            assert_eq!(a.proof, case.client.proof);
            assert_eq!((c.nonce.as_ref(), c.proof.as_ref()), (None, None));
            assert_eq!((a.session, c.session), (SESSION, SESSION));
            assert_eq!((a.mode, c.mode), (case.client.mode, case.client.mode));
            assert_eq!(
                (a.your_mapping, c.your_mapping),
                (case.agent.mapping, case.client.mapping)
            );
        }
    }

    const C6: &str = "[2001:db8:1:1::2]:51006";
    const A6: &str = "[2001:db8:2:1::2]:40006";

    fn with_other<T>(mut view: T, set: impl FnOnce(&mut T)) -> T {
        set(&mut view);
        view
    }

    #[test]
    fn dual_stack_ends_get_the_ipv4_path_and_the_ipv6_one_beside_it() {
        use Strategy::*;
        let c = with_other(client(C, Easy), |c| {
            c.public_other = Some(C6.parse().unwrap())
        });
        let a = with_other(agent(A, Hard, None), |a| {
            a.public_other = Some(A6.parse().unwrap())
        });
        let o = plan(
            SESSION,
            KEY,
            &c,
            &a,
            RelayPolicy::Off,
            BirthdayBudget::Allowed,
        )
        .unwrap();
        let (to_a, to_c) = (&o.to_agent, &o.to_client);
        assert_eq!((to_c.strategy, to_a.strategy), (BirthdayEasy, BirthdayHard));
        assert_eq!((to_c.peer_public, to_c.you), (a.public, c.public));
        assert_eq!(
            (to_c.peer_public6, to_c.you6),
            (a.public_other, c.public_other)
        );
        assert_eq!(
            (to_a.peer_public6, to_a.you6),
            (c.public_other, a.public_other)
        );
        // Both symmetric: no IPv4 path, but IPv6 is direct, and the relay only backs it up.
        let c = with_other(c, |c| c.mapping = Hard);
        let o = plan(
            SESSION,
            KEY,
            &c,
            &a,
            RelayPolicy::Off,
            BirthdayBudget::Allowed,
        )
        .expect("direct over IPv6");
        assert_eq!(
            (o.to_client.strategy, o.to_agent.strategy),
            (RelayOnly, RelayOnly)
        );
        assert_eq!(o.to_client.peer_public6, a.public_other);
        let o = plan(
            SESSION,
            KEY,
            &c,
            &a,
            RelayPolicy::Relay(TICKETS),
            BirthdayBudget::Allowed,
        )
        .unwrap();
        assert_eq!(
            o.to_client.relay_after_ms,
            Some(1500),
            "a head start for IPv6"
        );
        // Plain mode stays one ordinary connect over the main path.
        let plain = with_other(c, |c| c.mode = Mode::Plain);
        let o = plan(
            SESSION,
            KEY,
            &plain,
            &a,
            RelayPolicy::Off,
            BirthdayBudget::Allowed,
        )
        .unwrap();
        assert_eq!(
            (o.to_client.peer_public6, o.to_agent.peer_public6),
            (None, None)
        );
    }

    #[test]
    fn ends_meet_in_the_family_they_share() {
        use Strategy::*;
        // A dual-stack client whose control connection came over IPv6, to an IPv4-only agent:
        // the IPv4 path from the client's probe (its mapping unknown, taken as cone).
        let c = ClientView {
            public: C6.parse().unwrap(),
            public_other: Some(C.parse().unwrap()),
            ..client(C, Easy)
        };
        let a = agent(A, Easy, None);
        let o = plan(
            SESSION,
            KEY,
            &c,
            &a,
            RelayPolicy::Off,
            BirthdayBudget::Allowed,
        )
        .unwrap();
        assert_eq!(o.to_agent.peer_public, C.parse().unwrap());
        assert_eq!(o.to_agent.peer_mapping, Unknown);
        assert_eq!(o.to_client.you, C.parse().unwrap());
        assert_eq!(
            (o.to_client.strategy, o.to_client.peer_public6),
            (Simultaneous, None)
        );
        // An IPv6-only client to a dual-stack agent: the IPv6 path is the main one.
        let c = ClientView {
            public: C6.parse().unwrap(),
            ..client(C, Easy)
        };
        let a = with_other(agent(A, Hard, None), |a| {
            a.public_other = Some(A6.parse().unwrap())
        });
        let o = plan(
            SESSION,
            KEY,
            &c,
            &a,
            RelayPolicy::Off,
            BirthdayBudget::Allowed,
        )
        .unwrap();
        assert_eq!(
            (o.to_client.peer_public, o.to_client.you),
            (a.public_other.unwrap(), c.public)
        );
        assert_eq!(
            (o.to_client.strategy, o.to_agent.strategy),
            (Simultaneous, Simultaneous)
        );
        assert_eq!(o.to_client.peer_public6, None);
        // Nothing in common: the relay, or a refusal that says so.
        let a = agent(A, Easy, None);
        let o = plan(
            SESSION,
            KEY,
            &c,
            &a,
            RelayPolicy::Relay(TICKETS),
            BirthdayBudget::Allowed,
        )
        .unwrap();
        assert_eq!(
            (o.to_client.strategy, o.to_client.relay_after_ms),
            (RelayOnly, Some(0))
        );
        let refusal = plan(
            SESSION,
            KEY,
            &c,
            &a,
            RelayPolicy::Off,
            BirthdayBudget::Allowed,
        )
        .unwrap_err();
        assert_eq!(
            refusal,
            Refusal::NoCommonFamily {
                client: "IPv6",
                agent: "IPv4"
            }
        );
        assert_eq!(
            refusal.message("svc"),
            "no direct path: this client has IPv6 only and peer 'svc' has IPv4 only, and this \
             server does not relay"
        );
    }

    #[test]
    fn a_refusal_names_both_nats() {
        let r = Refusal::NoDirectPath {
            client: Hard,
            agent: Hard,
        };
        assert_eq!(
            r.message("svc"),
            "no direct path: this client's NAT is endpoint-dependent and peer 'svc''s NAT is \
             endpoint-dependent (both symmetric), and this server does not relay"
        );
    }

    #[test]
    fn only_sessions_that_would_birthday_spend_the_budget() {
        assert!(birthday_needed(&client(C, Hard), &agent(A, Easy, None)));
        assert!(birthday_needed(&client(C, Easy), &agent(A, Hard, None)));
        assert!(!birthday_needed(&client(C, Easy), &agent(A, Easy, None)));
        assert!(!birthday_needed(&client(C, Hard), &agent(A, Hard, None)));
        assert!(!birthday_needed(
            &client(C, Hard),
            &agent(A, Easy, Some(MAPPED))
        ));
        let plain = ClientView {
            mode: Mode::Plain,
            ..client(C, Hard)
        };
        assert!(!birthday_needed(&plain, &agent(A, Easy, None)));
        let agent_side = Refusal::BirthdayBusy(BirthdayBudget::AgentBusy(2));
        assert_eq!(agent_side.code(), ErrorCode::Busy);
        assert!(agent_side.message("svc").starts_with("peer 'svc' is busy:"));
    }

    #[test]
    fn only_the_client_order_is_held_back_and_never_long() {
        let ms = Duration::from_millis;
        assert_eq!(hold_client_order(ms(10), ms(50)), ms(20));
        assert_eq!(hold_client_order(ms(50), ms(10)), Duration::ZERO);
        assert_eq!(hold_client_order(ms(0), ms(5000)), MAX_HOLD);
    }
}
