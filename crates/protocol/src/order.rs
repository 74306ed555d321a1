//! The punch order and the words it is made of: NAT mapping behaviour, punch strategy, mode and
//! authentication.

use std::fmt;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::ids::{AgentKey, Nonce, RelayTicket, SessionId, SessionKey, Signature};

/// The punch order, as sent to each end of a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PunchOrder {
    /// Session id: 16 random bytes, hex.
    pub session: SessionId,
    /// Session key: 32 random bytes, hex; mixed with the service's stream key into the PSK of
    /// the stream handshake.
    pub key: SessionKey,
    /// The other end's public endpoint as the server sees it.
    pub peer_public: SocketAddr,
    /// The other end's private candidates (non-empty only when both ends share a public IP).
    #[serde(default)]
    pub peer_private: Vec<SocketAddr>,
    /// The receiver's own public endpoint as the server sees it.
    pub you: SocketAddr,
    /// `punch`: both ends connect at once (simultaneous open). `plain`: the client will make a
    /// single ordinary connect from its control port, with no stream handshake (the seed's Java
    /// API).
    pub mode: Mode,
    /// Whether the agent requires a secret (`secret`) or is exposed with `--public` (`public`).
    pub auth: Auth,
    /// Agent only: the client's nonce from its connect request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<Nonce>,
    /// Agent only: the client's proof of the secret (a signature of
    /// [`crate::connect_message`]), absent for public agents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proof: Option<Signature>,
    /// How the receiver punches (see [`Strategy`]).
    #[serde(default, skip_serializing_if = "Strategy::is_simultaneous")]
    pub strategy: Strategy,
    /// The receiver's NAT mapping behaviour, as the server measured it.
    #[serde(default, skip_serializing_if = "Mapping::is_unknown")]
    pub your_mapping: Mapping,
    /// The other end's NAT mapping behaviour.
    #[serde(default, skip_serializing_if = "Mapping::is_unknown")]
    pub peer_mapping: Mapping,
    /// When present, the server relays this session: join `GET /v1/relay` after this many
    /// milliseconds unless a direct stream has been proven by then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay_after_ms: Option<u64>,
    /// With `relay_after_ms`: this end's ticket for joining the relay (each end gets its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay_ticket: Option<RelayTicket>,
    /// With `relay_ticket`, to the agent only: the control port of the server whose relay to
    /// join, when it is not the server that sent the order (in a cluster, the relay of a
    /// session is the one of the server the client asked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay_at: Option<SocketAddr>,
    /// Client only: the public endpoint the agent's router forwards to the agent's punch port
    /// (a port mapping); it takes connections from anywhere, so try it first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_mapped: Option<SocketAddr>,
    /// When both ends have IPv6 too and the fields above are their IPv4 path: the other end's
    /// IPv6 endpoint, punched by simultaneous open next to the IPv4 path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_public6: Option<SocketAddr>,
    /// With [`PunchOrder::peer_public6`]: the receiver's own IPv6 endpoint as the server saw it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub you6: Option<SocketAddr>,
    /// Client only: the agent's static Noise key, when it registered one (`expose --key`);
    /// a client that pins the agent's key checks it and uses it in the handshake.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_key: Option<AgentKey>,
}

/// A NAT's mapping behaviour (RFC 4787), as seen through the server's two ports.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "kebab-case")]
pub enum Mapping {
    /// One public endpoint for every destination (cone NATs, or no NAT): punchable directly.
    EndpointIndependent,
    /// A new public port per destination ("symmetric" NAT): needs birthday punching.
    EndpointDependent,
    /// Not measured (the probe did not arrive in time).
    #[default]
    Unknown,
}

impl Mapping {
    /// Classifies from the public endpoints seen on the control port and on the probe port.
    /// Only consistent evidence counts: endpoint-dependent needs the probe to come from the
    /// control connection's IP on another port. A probe from another IP (a NAT with an address
    /// pool, a multi-homed host, or a peer that sent it from elsewhere to look symmetric)
    /// leaves the mapping unknown, which is punched like a cone.
    pub fn classify(control: SocketAddr, probe: Option<SocketAddr>) -> Mapping {
        match probe {
            None => Mapping::Unknown,
            Some(p) if p == control => Mapping::EndpointIndependent,
            Some(p) if p.ip() == control.ip() => Mapping::EndpointDependent,
            Some(_) => Mapping::Unknown,
        }
    }

    pub(crate) fn is_unknown(&self) -> bool {
        *self == Mapping::Unknown
    }
}

impl fmt::Display for Mapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mapping::EndpointIndependent => "endpoint-independent",
            Mapping::EndpointDependent => "endpoint-dependent",
            Mapping::Unknown => "unknown",
        })
    }
}

/// How one end punches.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Strategy {
    /// Connect from the punch port to the peer's candidates (both ends cone or public).
    #[default]
    Simultaneous,
    /// This end's NAT is endpoint-dependent: open many sockets from distinct local ports toward
    /// the peer's public endpoint, first SYNs at low TTL, and wait for the peer's probes.
    BirthdayHard,
    /// The peer's NAT is endpoint-dependent: from the punch port, probe many distinct random
    /// ports of the peer's public IP.
    BirthdayEasy,
    /// No direct path is possible: only the relay (and LAN candidates) are tried.
    RelayOnly,
    /// Agent only: its punch port is mapped on its router, and the client connects to that
    /// mapping. Send nothing toward the peer's public endpoint (such a SYN opens nothing the
    /// client needs and holds, in the router's connection tracking, the 4-tuple of the client's
    /// inbound connection after DNAT); take the client's connection on the punch port.
    Mapped,
}

impl Strategy {
    fn is_simultaneous(&self) -> bool {
        *self == Strategy::Simultaneous
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = serde_json::to_value(self).map_err(|_| fmt::Error)?;
        f.write_str(s.as_str().unwrap_or("simultaneous"))
    }
}

/// How the client will reach the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Simultaneous open from both ends, then the stream hello.
    #[default]
    Punch,
    /// One ordinary connect from the client's control port, no hello (seed API).
    Plain,
}

impl Mode {
    /// The word in queries and orders (`punch`, `plain`).
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Punch => "punch",
            Mode::Plain => "plain",
        }
    }
}

/// Whether an agent requires a secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Auth {
    /// Clients must prove the service secret.
    Secret,
    /// Anyone may connect (`expose --public`).
    Public,
}

impl Auth {
    /// The word in queries and orders (`secret`, `public`).
    pub fn as_str(self) -> &'static str {
        match self {
            Auth::Secret => "secret",
            Auth::Public => "public",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ServerToClient, decode, encode};

    fn order() -> PunchOrder {
        PunchOrder {
            session: SessionId::from_bytes([0x0f; 16]),
            key: SessionKey::from_bytes([0xa5; 32]),
            peer_public: "198.51.100.10:40000".parse().unwrap(),
            peer_private: vec![],
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

    #[test]
    fn punch_orders_carry_peer_mapped_only_when_present() {
        let p = order();
        let s = encode(&ServerToClient::Punch(p.clone()));
        assert!(s.contains(r#""peer_mapped":"198.51.100.10:40001""#), "{s}");
        assert_eq!(
            decode::<ServerToClient>(&s).unwrap(),
            ServerToClient::Punch(p.clone())
        );
        let none = PunchOrder {
            peer_mapped: None,
            ..p.clone()
        };
        let s = encode(&ServerToClient::Punch(none.clone()));
        assert!(!s.contains("peer_mapped"), "{s}");
        assert_eq!(
            decode::<ServerToClient>(&s).unwrap(),
            ServerToClient::Punch(none)
        );
        let agent = PunchOrder {
            strategy: Strategy::Mapped,
            peer_mapped: None,
            ..p
        };
        let s = encode(&ServerToClient::Punch(agent));
        assert!(s.contains(r#""strategy":"mapped""#), "{s}");
        assert_eq!(Strategy::Mapped.to_string(), "mapped");
    }

    #[test]
    fn punch_orders_carry_the_ipv6_path_only_when_there_is_one() {
        let p = PunchOrder {
            peer_public6: Some("[2001:db8:2:1::2]:40002".parse().unwrap()),
            you6: Some("[2001:db8:1:1::2]:51002".parse().unwrap()),
            ..order()
        };
        let s = encode(&ServerToClient::Punch(p.clone()));
        assert!(
            s.contains(
                r#""peer_public6":"[2001:db8:2:1::2]:40002","you6":"[2001:db8:1:1::2]:51002""#
            ),
            "{s}"
        );
        assert_eq!(
            decode::<ServerToClient>(&s).unwrap(),
            ServerToClient::Punch(p)
        );
        let s = encode(&ServerToClient::Punch(order()));
        assert!(!s.contains("peer_public6") && !s.contains("you6"), "{s}");
    }

    #[test]
    fn mappings_classify_and_print() {
        let a: SocketAddr = "198.51.100.2:4000".parse().unwrap();
        let b: SocketAddr = "198.51.100.2:4001".parse().unwrap();
        assert_eq!(Mapping::classify(a, Some(a)), Mapping::EndpointIndependent);
        assert_eq!(Mapping::classify(a, Some(b)), Mapping::EndpointDependent);
        assert_eq!(Mapping::classify(a, None), Mapping::Unknown);
        let elsewhere: SocketAddr = "198.51.100.9:4001".parse().unwrap();
        assert_eq!(
            Mapping::classify(a, Some(elsewhere)),
            Mapping::Unknown,
            "a probe from another IP is no evidence"
        );
        assert_eq!(
            serde_json::to_value(Mapping::EndpointDependent).unwrap(),
            "endpoint-dependent"
        );
    }
}
