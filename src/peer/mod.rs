//! The two ends of a connection: the client (`connect`) and the agent (`expose`). Both run the
//! same [`session::Session`] from a punch order to a proven stream; around it, the client
//! sends early data and reports the outcome, the agent checks proofs, refuses replays and
//! serves plain mode.
//!
//! - [`client`], [`agent`]: the two roles;
//! - [`session`]: order → keys → plan → punch → connection info;
//! - [`punch`]: the punch engine (planning, dialing, birthday punching, the stream handshake,
//!   early data);
//! - [`control`]: server URLs and the control WebSocket;
//! - [`failover`]: several servers, and names with several addresses: which to try next;
//! - [`probe`], [`relay`]: the peer's halves of the NAT probe and the relay;
//! - [`ports`]: a punch port per address family, the candidates it announces;
//! - [`nat_depth`]: how many NATs stand in front, learnt by a TTL sweep toward the server;
//! - [`portmap`]: PCP, NAT-PMP and UPnP-IGD on the local router;
//! - [`natcheck`]: `p2pnc nat-check`;
//! - [`warm`]: warm paths, many streams over one punched stream ([`crate::Peer`]).

pub(crate) mod agent;
pub(crate) mod client;
pub(crate) mod control;
pub(crate) mod failover;
pub(crate) mod nat_depth;
pub(crate) mod natcheck;
pub(crate) mod portmap;
pub(crate) mod ports;
pub(crate) mod probe;
pub(crate) mod punch;
pub(crate) mod relay;
pub(crate) mod session;
pub(crate) mod stream;
pub(crate) mod warm;
