//! Every default, once: the options' constructors, [`crate::server::ServerConfig::default`] and
//! the command line all read them from here. The shared protocol vectors
//! (`tests/fixtures/protocol/vectors.json`, `defaults`) name the ones the Java client must
//! match, and both test suites check them against these.

use std::time::Duration;

/// Default TCP port of the rendezvous server (HTTP and WebSocket); its probe port is the next.
pub const SERVER_PORT: u16 = crate::protocol::DEFAULT_SERVER_PORT;
/// Default address of `p2pnc server`: every IPv6 and IPv4 address (one dual-stack socket),
/// [`SERVER_PORT`]; on a host without IPv6, every IPv4 address.
pub const SERVER_LISTEN: &str = "[::]:50300";
/// Time allowed for resolving, connecting to and upgrading with the server, each.
pub const SERVER_TIMEOUT: Duration = Duration::from_secs(5);

/// How often an agent that has another server to go to (several servers, or a name with
/// several addresses) pings its server. Together with [`FAILOVER_SILENCE_LIMIT`] it bounds
/// how long a dead server goes unnoticed: a dead or hung host sends no RST, and TCP alone
/// would take minutes. Each ping is a few dozen bytes each way, so a server holding 18 000
/// such agents answers 12 000 pings a second; an agent with a single server keeps the slower
/// pace (15 s).
pub const FAILOVER_PING_INTERVAL: Duration = Duration::from_millis(1500);
/// An agent that has another server to go to takes its server as lost after this long
/// without a frame from it: a ping interval, plus a round trip and a lost pong's
/// retransmission on a path of up to about 300 ms RTT. Noticing within this, then
/// registering elsewhere (about 1.5 s behind a router that answers no port-mapping request)
/// keeps the move within 5 s.
pub const FAILOVER_SILENCE_LIMIT: Duration = Duration::from_millis(2500);

/// How long a punch may take before the attempt is given up: several seconds of retries cover
/// a lost SYN and the slowest path seen in the lab many times over.
pub const PUNCH_TIMEOUT: Duration = Duration::from_secs(5);
/// TTL of SYNs meant to open our own NAT only while the NATs in front are not known yet (see
/// `PunchTtl::Learned`): passes our router (hop 1) and dies at the next hop, so the peer's
/// router never sees it. Also the least TTL a learnt depth gives.
pub const PUNCH_TTL: u32 = 2;
/// Happy Eyeballs (in the spirit of RFC 8305): when both ends have IPv6 and IPv4 paths, the
/// IPv4 punch starts this long after the IPv6 one, at both ends alike. Less than a round trip
/// on nearly every path, so a broken IPv6 path costs a connect little; long enough that a
/// working IPv6 path, whose stream is proven about a round trip after the punch starts, wins
/// unless its round trip is this much longer than IPv4's. (RFC 8305's 250 ms guards a server
/// from a second connection; here both punches are cheap and the delay is paid by every
/// connect whose IPv6 path fails.)
pub const IPV6_HEAD_START: Duration = Duration::from_millis(50);
/// Shortest pause after a failed attempt (refused, unreachable) before the next SYN to that
/// candidate: long enough that a router's RST does not turn the loop into a SYN flood.
pub const RETRY_MIN: Duration = Duration::from_millis(60);
/// Longest such pause: short enough that with uneven latencies a later SYN still crosses the
/// peer's.
pub const RETRY_MAX: Duration = Duration::from_millis(160);
/// Sockets the hard side of a birthday punch opens, and probes the easy side sends: with 256
/// mappings among ~64k ports, 1536 distinct probes hit one with probability
/// 1 - (1 - 256/64512)^1536, about 99.8 %.
pub const HARD_SOCKETS: usize = 256;
/// See [`HARD_SOCKETS`].
pub const EASY_PROBES: usize = 1536;
/// Latest relay join a punch order can ask for: the server forgets a session 30 s after its
/// punch order, so a later join finds nothing; a larger `relay_after_ms` would only keep the
/// punch going (or, near `u64::MAX`, overflow the deadline).
pub const MAX_RELAY_AFTER: Duration = Duration::from_secs(30);
/// Most bytes [`crate::connect_early`] reads ahead from the local side: a request or two of
/// any application protocol, without holding much memory per connection.
pub const EARLY_DATA_MAX: usize = 64 * 1024;

/// Default time an id stays reserved for its owner after it went offline: long enough for an
/// agent's reconnect backoff and a service restart.
pub const ID_GRACE: Duration = Duration::from_secs(60);
/// Connect requests per second per source address (bursts of three seconds' worth): far
/// above what one host's users make, far below a flood.
pub const CONNECT_RATE: f64 = 20.0;
/// Registrations per second per source address (bursts of five seconds' worth): agents
/// register once and re-register after a failure.
pub const EXPOSE_RATE: f64 = 2.0;
/// Most agents registered at once: 100 000 agents take about 600 MiB (see the README's scale
/// figures); twice that still fits a small server.
pub const MAX_AGENTS: usize = 200_000;
/// Most client control connections (connect attempts, each one session) open at once; each
/// lives at most 30 s after its punch order.
pub const MAX_PENDING_CONNECTS: usize = 20_000;
/// Most connections to the control port at once; every online agent holds one.
pub const MAX_CONNECTIONS: usize = 50_000;
/// Connections one source address may hold (many clients share an address behind a carrier
/// NAT).
pub const MAX_CONNECTIONS_PER_IP: usize = 256;
/// Time a new connection has to deliver its first request head (slowloris).
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Most relayed pairs at once (`--relay`): each costs the server bandwidth both ways.
pub const RELAY_MAX_PAIRS: usize = 16;
/// Bytes per second per direction of one relayed pair: enough for video, small enough that a
/// few pairs cannot fill a modest uplink.
pub const RELAY_RATE: u64 = 4 * 1024 * 1024;
/// Longest a relayed pair may live (`--relay-max-lifetime`): long enough for a film or a long
/// shell session, short enough that relay slots come free again; a client that still needs
/// the path connects again.
pub const RELAY_MAX_LIFETIME: Duration = Duration::from_secs(3600);
/// A relayed pair with no byte in either direction for this long is cut
/// (`--relay-idle-timeout`): an interactive session rarely stays silent this long, and a held
/// but unused slot is freed within minutes.
pub const RELAY_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Relayed sessions one address may take part in at once (`--relay-max-per-ip`): a quarter of
/// the default 16 slots, so one address cannot hold them all, while a few users behind one
/// carrier-grade NAT still get theirs.
pub const RELAY_MAX_PER_IP: usize = 4;

/// Punch sessions an agent runs at once; more are refused `busy`. Each costs a few sockets
/// and tasks for at most the punch timeout; 256 at once is more than one service's clients
/// connect at the same moment (the soak test runs 200), and their sockets fit the budget below.
pub const AGENT_MAX_SESSIONS: usize = 256;
/// Birthday punches an agent runs at once (1536 probes on the easy side, 256 sockets on the
/// hard side, each held until the punch ends); more are refused `busy`.
pub const AGENT_MAX_BIRTHDAYS: usize = 4;
/// Sockets an agent's punch sessions may hold together, birthday probes included (further
/// capped at half the open-file limit): room for the birthday punches above and every
/// ordinary session, far below the descriptors that would starve the service's forwarding.
pub const AGENT_PUNCH_SOCKETS: usize = 8192;
/// Connections on the agent's punch port still waiting to show their hello; a newer one
/// closes the oldest. Real peers send their hello at once, so only strays wait.
pub const STRAY_CONNECTIONS: usize = 64;

/// A warm path that carries no stream for this long is closed (`connect --warm-idle`): long
/// enough for the pauses between the bursts of connections an application makes (a page and
/// its resources, a user reading before the next click, a poll every minute or two), short
/// enough that an unused path soon stops costing its keepalives (about 1 KB a minute) and its
/// slot at the agent.
pub const WARM_IDLE: Duration = Duration::from_secs(300);
/// Streams one warm path carries at once; more are refused by the agent, and the client
/// makes such connections without the path. A browser opens about six per host; a path is one
/// TCP connection whose window all its streams share.
pub const WARM_STREAMS_PER_PATH: usize = 64;
/// Warm paths an agent keeps open at once; past that it declines to keep new ones (their
/// first streams are still served) and clients connect without one for a while. Each costs a
/// socket, a task and yamux's buffers: far fewer than the punch sockets' budget.
pub const AGENT_MAX_WARM_PATHS: usize = 128;
/// Warm paths an agent keeps open at once for clients behind one public address. A carrier's
/// CGN puts thousands of phones behind one address: a quarter of the agent's paths lets a
/// household or an office, or the phones of one carrier that use the service at once, keep
/// theirs, while one address (or one client that opens paths in a loop) cannot take the
/// other 96. Past it nobody is refused: the stream is served and the client goes without a
/// warm path for a while (see `docs/protocol.md`, "Warm paths").
pub const AGENT_MAX_WARM_PATHS_PER_ADDRESS: usize = 32;
