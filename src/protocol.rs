//! Wire protocol: control messages exchanged with the rendezvous server, the query strings of
//! the two WebSocket endpoints, and the hello that opens every punched stream.
//!
//! This module does no I/O. `docs/protocol.md` is the normative description; the JSON fixtures in
//! `tests/fixtures/protocol/` are parsed and produced by both the Rust and the Java tests.

use std::fmt;
use std::net::SocketAddr;

use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// Protocol version carried by every control request (`v=1`).
pub const PROTOCOL_VERSION: u32 = 1;
/// Default TCP port of the rendezvous server (HTTP and WebSocket).
pub const DEFAULT_SERVER_PORT: u16 = 50300;
/// Largest control message, in bytes, either direction. Real messages are below 2 KiB.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024;
/// Longest peer id, in bytes of UTF-8.
pub const MAX_ID_BYTES: usize = 64;
/// Most private candidates a peer may announce.
pub const MAX_PRIVATE_CANDIDATES: usize = 8;
/// Path of the agent's control WebSocket.
pub const EXPOSE_PATH: &str = "/v1/expose";
/// Path of the client's control WebSocket (one per connection attempt).
pub const CONNECT_PATH: &str = "/v1/connect";
/// First eight bytes each side writes on a punched stream.
pub const HELLO_MAGIC: &[u8; 8] = b"p2pnc/1\n";
/// Length of the stream hello: magic, session id, tag.
pub const HELLO_LEN: usize = 8 + 16 + 32;

type HmacSha256 = Hmac<Sha256>;

/// Messages the rendezvous server sends to an agent or a client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ServerMsg {
    /// The agent's id is now online; `public` is the agent's address as the server sees it.
    Registered {
        /// The registered id.
        id: String,
        /// The agent's public endpoint (its NAT mapping of the punch port).
        public: SocketAddr,
        /// The agent's NAT mapping behaviour, from its probe (see [`Mapping`]).
        #[serde(default, skip_serializing_if = "Mapping::is_unknown")]
        mapping: Mapping,
    },
    /// Start punching now: sent to both ends of a session, timed so that both fire together.
    Punch(Punch),
    /// A request failed; the connection is closed after this message.
    Error {
        /// Machine-readable reason (see [`ErrorCode`]).
        code: ErrorCode,
        /// One line for a person.
        message: String,
    },
}

/// The punch order, as sent to each end of a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Punch {
    /// Session id: 16 random bytes, hex.
    pub session: String,
    /// Session key: 32 random bytes, hex; mixed with the service secret to key the stream hello.
    pub key: String,
    /// The other end's public endpoint as the server sees it.
    pub peer_public: SocketAddr,
    /// The other end's private candidates (non-empty only when both ends share a public IP).
    #[serde(default)]
    pub peer_private: Vec<SocketAddr>,
    /// The receiver's own public endpoint as the server sees it.
    pub you: SocketAddr,
    /// `punch`: both ends connect at once (simultaneous open). `plain`: the client will make a
    /// single ordinary connect from its control port, and sends no hello (the seed's Java API).
    pub mode: Mode,
    /// Whether the agent requires a secret (`secret`) or is exposed with `--public` (`public`).
    pub auth: Auth,
    /// Agent only: the client's nonce (hex) from its connect request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
    /// Agent only: the client's proof of the secret (hex), absent for public agents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proof: Option<String>,
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
    /// Client only: the public endpoint the agent's router forwards to the agent's punch port
    /// (a port mapping); it takes connections from anywhere, so try it first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_mapped: Option<SocketAddr>,
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
    pub fn classify(control: SocketAddr, probe: Option<SocketAddr>) -> Mapping {
        match probe {
            None => Mapping::Unknown,
            Some(p) if p == control => Mapping::EndpointIndependent,
            Some(_) => Mapping::EndpointDependent,
        }
    }

    fn is_unknown(&self) -> bool {
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

/// The line a peer writes on the server's probe port: `p2pnc-probe <32 hex>\n`; the server
/// answers with the peer's public endpoint as it sees it, `IP:PORT\n`, and closes.
pub fn probe_line(token: &str) -> String {
    format!("p2pnc-probe {token}\n")
}

/// A probe line that also asks the server to dial back to the public endpoint it saw, from
/// another port: `p2pnc-probe <32 hex> dialback\n`. The server's connection writes
/// `p2pnc-dialback <32 hex>\n`. Whether it gets through tells the NAT's filtering.
pub fn probe_line_dialback(token: &str) -> String {
    format!("p2pnc-probe {token} dialback\n")
}

/// Parses a probe line (without its newline); returns the token and whether a dial-back was
/// asked for.
pub fn parse_probe_line(line: &str) -> Option<(&str, bool)> {
    let rest = line.strip_prefix("p2pnc-probe ")?;
    let (token, dialback) = match rest.split_once(' ') {
        Some((t, "dialback")) => (t, true),
        Some(_) => return None,
        None => (rest, false),
    };
    (token.len() == 32 && token.bytes().all(|b| b.is_ascii_hexdigit())).then_some((token, dialback))
}

/// Longest probe line accepted, in bytes.
pub const MAX_PROBE_LINE: usize = 64;

/// Messages an agent sends to the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum AgentMsg {
    /// The agent refuses a session (for example a wrong secret); the server tells the client.
    Reject {
        /// The session refused.
        session: String,
        /// Why.
        code: ErrorCode,
        /// One line for a person.
        message: String,
    },
    /// Plain mode only: the agent has opened its NAT toward the client; the server may now
    /// send the client its punch order.
    Armed {
        /// The session armed.
        session: String,
    },
}

/// Messages a client sends to the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ClientMsg {
    /// How the attempt ended, for the server's outcome records; sent before closing.
    Result {
        /// `direct`, `lan`, `relayed`, or `failed`.
        outcome: String,
        /// Setup time in milliseconds, when connected.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        setup_ms: Option<u64>,
        /// Why it failed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
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

/// Whether an agent requires a secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Auth {
    /// Clients must prove the service secret.
    Secret,
    /// Anyone may connect (`expose --public`).
    Public,
}

/// Machine-readable error codes, in HTTP error bodies and `error` messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// The request was malformed.
    BadRequest,
    /// No such endpoint.
    NotFound,
    /// The client speaks a protocol version the server does not.
    UnsupportedVersion,
    /// No agent is registered under the requested id.
    PeerOffline,
    /// Another agent holds this id.
    IdTaken,
    /// The agent requires a secret and the client gave none.
    SecretRequired,
    /// The agent refused the client's proof of the secret.
    SecretRejected,
    /// The agent went offline during the session.
    PeerGone,
    /// The server is at a limit (too many sessions or connections).
    Busy,
    /// Neither a direct path nor the relay can join the two ends.
    NoDirectPath,
    /// The server requires a token and none or a wrong one was given.
    Unauthorized,
    /// Too many requests from this address.
    RateLimited,
    /// Anything else.
    Internal,
}

impl ErrorCode {
    /// Every code, in the order of `docs/protocol.md`; the shared vectors list them for the
    /// Java client.
    pub const ALL: [ErrorCode; 13] = [
        ErrorCode::BadRequest,
        ErrorCode::NotFound,
        ErrorCode::UnsupportedVersion,
        ErrorCode::PeerOffline,
        ErrorCode::IdTaken,
        ErrorCode::SecretRequired,
        ErrorCode::SecretRejected,
        ErrorCode::PeerGone,
        ErrorCode::Busy,
        ErrorCode::NoDirectPath,
        ErrorCode::Unauthorized,
        ErrorCode::RateLimited,
        ErrorCode::Internal,
    ];

    /// The HTTP status used when this error refuses an upgrade request.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::BadRequest | ErrorCode::UnsupportedVersion => 400,
            ErrorCode::SecretRequired | ErrorCode::SecretRejected | ErrorCode::Unauthorized => 401,
            ErrorCode::PeerOffline | ErrorCode::PeerGone | ErrorCode::NotFound => 404,
            ErrorCode::IdTaken => 409,
            ErrorCode::Busy => 503,
            ErrorCode::RateLimited => 429,
            ErrorCode::NoDirectPath => 502,
            ErrorCode::Internal => 500,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = serde_json::to_value(self).map_err(|_| fmt::Error)?;
        f.write_str(s.as_str().unwrap_or("internal"))
    }
}

/// Body of every HTTP error response: `{"error": CODE, "message": TEXT}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Machine-readable reason.
    pub error: ErrorCode,
    /// One line for a person.
    pub message: String,
}

/// Parsed query string of `GET /v1/expose`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExposeQuery {
    /// The id to register.
    pub id: String,
    /// Whether clients must prove a secret.
    pub auth: Auth,
    /// The agent's private candidates.
    pub private: Vec<SocketAddr>,
    /// Token of the probe the agent sent from its punch port (see [`probe_line`]).
    pub probe: Option<String>,
    /// The owner credential (see [`owner_credential`]): proves a restarted agent is the id's
    /// owner. Absent for public agents.
    pub owner: Option<String>,
    /// The public endpoint the agent's router forwards to its punch port (PCP, NAT-PMP or
    /// UPnP-IGD), if it got one.
    pub mapped: Option<SocketAddr>,
}

/// Parsed query string of `GET /v1/connect`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectQuery {
    /// The id to reach.
    pub peer: String,
    /// 16 random bytes, hex.
    pub nonce: String,
    /// Proof of the secret, hex; absent when the client has no secret.
    pub proof: Option<String>,
    /// The client's private candidates.
    pub private: Vec<SocketAddr>,
    /// Punch (default) or plain.
    pub mode: Mode,
    /// Token of the probe the client sent from its punch port (see [`probe_line`]).
    pub probe: Option<String>,
}

/// A query string that cannot be accepted, with the reason for a person.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct QueryError {
    /// Error code to answer with.
    pub code: ErrorCode,
    /// One line for a person.
    pub message: String,
}

fn bad(message: impl Into<String>) -> QueryError {
    QueryError {
        code: ErrorCode::BadRequest,
        message: message.into(),
    }
}

/// Splits an `application/x-www-form-urlencoded` query into decoded pairs.
fn parse_pairs(query: &str) -> Result<Vec<(String, String)>, QueryError> {
    if query.len() > MAX_MESSAGE_BYTES {
        return Err(bad("query string too long"));
    }
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((percent_decode(k)?, percent_decode(v)?))
        })
        .collect()
}

fn percent_decode(s: &str) -> Result<String, QueryError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| bad("malformed percent-encoding in query"))?;
                out.push(hex);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| bad("query is not valid UTF-8"))
}

/// Percent-encodes a query value (everything but unreserved characters).
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Checks an id: 1 to 64 bytes of UTF-8, no control characters.
pub fn validate_id(id: &str) -> Result<(), QueryError> {
    if id.is_empty() || id.len() > MAX_ID_BYTES {
        return Err(bad(format!(
            "id must be 1 to {MAX_ID_BYTES} bytes of UTF-8"
        )));
    }
    if id.chars().any(char::is_control) {
        return Err(bad("id must not contain control characters"));
    }
    Ok(())
}

fn check_version(v: Option<&str>) -> Result<(), QueryError> {
    match v {
        Some("1") => Ok(()),
        Some(other) => Err(QueryError {
            code: ErrorCode::UnsupportedVersion,
            message: format!("protocol version {other} is not supported (this server speaks 1)"),
        }),
        None => Err(bad("missing v (protocol version)")),
    }
}

fn parse_candidates(v: &str) -> Result<Vec<SocketAddr>, QueryError> {
    let list: Vec<SocketAddr> = v
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse()
                .map_err(|_| bad(format!("bad candidate address '{s}'")))
        })
        .collect::<Result<_, _>>()?;
    if list.len() > MAX_PRIVATE_CANDIDATES {
        return Err(bad(format!(
            "at most {MAX_PRIVATE_CANDIDATES} private candidates"
        )));
    }
    Ok(list)
}

fn check_hex(name: &str, v: &str, bytes: usize) -> Result<(), QueryError> {
    if v.len() == bytes * 2 && v.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(bad(format!("{name} must be {bytes} bytes of hex")))
    }
}

/// Formats candidates as the `private` query value.
pub fn format_candidates(list: &[SocketAddr]) -> String {
    list.iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

impl ExposeQuery {
    /// Parses the query string of an expose request.
    pub fn parse(query: &str) -> Result<Self, QueryError> {
        let (mut v, mut id, mut auth, mut private) = (None, None, None, Vec::new());
        let (mut probe, mut owner, mut mapped) = (None, None, None);
        for (k, val) in parse_pairs(query)? {
            match k.as_str() {
                "probe" if !val.is_empty() => probe = Some(val),
                "owner" if !val.is_empty() => owner = Some(val),
                "mapped" if !val.is_empty() => {
                    mapped = Some(
                        val.parse::<SocketAddr>()
                            .map_err(|_| bad(format!("bad mapped address '{val}'")))?,
                    )
                }
                "v" => v = Some(val),
                "id" => id = Some(val),
                "auth" => {
                    auth = Some(match val.as_str() {
                        "secret" => Auth::Secret,
                        "public" => Auth::Public,
                        _ => return Err(bad("auth must be 'secret' or 'public'")),
                    })
                }
                "private" => private = parse_candidates(&val)?,
                _ => {}
            }
        }
        check_version(v.as_deref())?;
        let id = id.ok_or_else(|| bad("missing id"))?;
        validate_id(&id)?;
        if let Some(p) = &probe {
            check_hex("probe", p, 16)?;
        }
        if let Some(o) = &owner {
            check_hex("owner", o, 32)?;
        }
        Ok(ExposeQuery {
            id,
            auth: auth.ok_or_else(|| bad("missing auth ('secret' or 'public')"))?,
            private,
            probe: probe.map(|p| p.to_ascii_lowercase()),
            owner: owner.map(|o| o.to_ascii_lowercase()),
            mapped,
        })
    }

    /// Formats the query string (without `?`).
    pub fn to_query(&self) -> String {
        let auth = match self.auth {
            Auth::Secret => "secret",
            Auth::Public => "public",
        };
        let mut q = format!(
            "v={PROTOCOL_VERSION}&id={}&auth={auth}&private={}",
            percent_encode(&self.id),
            percent_encode(&format_candidates(&self.private))
        );
        if let Some(p) = &self.probe {
            q.push_str("&probe=");
            q.push_str(p);
        }
        if let Some(o) = &self.owner {
            q.push_str("&owner=");
            q.push_str(o);
        }
        if let Some(m) = &self.mapped {
            q.push_str("&mapped=");
            q.push_str(&percent_encode(&m.to_string()));
        }
        q
    }
}

impl ConnectQuery {
    /// Parses the query string of a connect request.
    pub fn parse(query: &str) -> Result<Self, QueryError> {
        let (mut v, mut peer, mut nonce, mut proof) = (None, None, None, None);
        let (mut private, mut mode, mut probe) = (Vec::new(), Mode::Punch, None);
        for (k, val) in parse_pairs(query)? {
            match k.as_str() {
                "probe" if !val.is_empty() => probe = Some(val),
                "v" => v = Some(val),
                "peer" => peer = Some(val),
                "nonce" => nonce = Some(val),
                "proof" if !val.is_empty() => proof = Some(val),
                "private" => private = parse_candidates(&val)?,
                "mode" => {
                    mode = match val.as_str() {
                        "punch" => Mode::Punch,
                        "plain" => Mode::Plain,
                        _ => return Err(bad("mode must be 'punch' or 'plain'")),
                    }
                }
                _ => {}
            }
        }
        check_version(v.as_deref())?;
        let peer = peer.ok_or_else(|| bad("missing peer"))?;
        validate_id(&peer)?;
        let nonce = nonce.ok_or_else(|| bad("missing nonce"))?;
        check_hex("nonce", &nonce, 16)?;
        if let Some(p) = &proof {
            check_hex("proof", p, 32)?;
        }
        if let Some(p) = &probe {
            check_hex("probe", p, 16)?;
        }
        Ok(ConnectQuery {
            peer,
            nonce: nonce.to_ascii_lowercase(),
            proof: proof.map(|p| p.to_ascii_lowercase()),
            private,
            mode,
            probe: probe.map(|p| p.to_ascii_lowercase()),
        })
    }

    /// Formats the query string (without `?`).
    pub fn to_query(&self) -> String {
        let mode = match self.mode {
            Mode::Punch => "punch",
            Mode::Plain => "plain",
        };
        let mut q = format!(
            "v={PROTOCOL_VERSION}&peer={}&nonce={}&mode={mode}&private={}",
            percent_encode(&self.peer),
            self.nonce,
            percent_encode(&format_candidates(&self.private))
        );
        if let Some(p) = &self.proof {
            q.push_str("&proof=");
            q.push_str(p);
        }
        if let Some(p) = &self.probe {
            q.push_str("&probe=");
            q.push_str(p);
        }
        q
    }
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac =
        <HmacSha256 as KeyInit>::new_from_slice(key).expect("HMAC accepts any key length");
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

/// The client's proof that it knows the service secret:
/// `HMAC-SHA256(secret, "p2pnc/1 connect\n" + peer_id + "\n" + nonce_hex)`, hex.
pub fn connect_proof(secret: &str, peer_id: &str, nonce_hex: &str) -> String {
    hex::encode(hmac(
        secret.as_bytes(),
        &[
            b"p2pnc/1 connect\n",
            peer_id.as_bytes(),
            b"\n",
            nonce_hex.as_bytes(),
        ],
    ))
}

/// The credential that makes an agent the owner of its id:
/// `HMAC-SHA256(secret, "p2pnc/1 owner\n" + id)`, hex. The server keeps it to recognise the
/// owner's restart; it cannot be turned back into the secret.
pub fn owner_credential(secret: &str, id: &str) -> String {
    hex::encode(hmac(
        secret.as_bytes(),
        &[b"p2pnc/1 owner\n", id.as_bytes()],
    ))
}

/// Checks a connect proof in constant time.
pub fn verify_connect_proof(secret: &str, peer_id: &str, nonce_hex: &str, proof_hex: &str) -> bool {
    let Ok(proof) = hex::decode(proof_hex) else {
        return false;
    };
    let mut mac =
        <HmacSha256 as KeyInit>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(b"p2pnc/1 connect\n");
    mac.update(peer_id.as_bytes());
    mac.update(b"\n");
    mac.update(nonce_hex.as_bytes());
    mac.verify_slice(&proof).is_ok()
}

/// Which end of a punched stream is speaking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The connecting side (`connect`).
    Client,
    /// The exposing side (`expose`).
    Agent,
}

impl Role {
    fn label(self) -> &'static [u8] {
        match self {
            Role::Client => b"client",
            Role::Agent => b"agent",
        }
    }

    /// The other end.
    pub fn peer(self) -> Role {
        match self {
            Role::Client => Role::Agent,
            Role::Agent => Role::Client,
        }
    }
}

/// Keys of one session's stream hello, derived from the session key and the service secret.
#[derive(Clone)]
pub struct SessionKeys {
    session: [u8; 16],
    stream_key: [u8; 32],
}

impl fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionKeys")
            .field("session", &hex::encode(self.session))
            .finish_non_exhaustive()
    }
}

impl SessionKeys {
    /// Derives the keys: `stream_key = HMAC-SHA256(secret or "", "p2pnc/1 stream\n" + session_key)`.
    /// Public agents use the empty secret.
    pub fn derive(session_hex: &str, key_hex: &str, secret: Option<&str>) -> Option<Self> {
        let session: [u8; 16] = hex::decode(session_hex).ok()?.try_into().ok()?;
        let key: [u8; 32] = hex::decode(key_hex).ok()?.try_into().ok()?;
        let stream_key = hmac(
            secret.unwrap_or("").as_bytes(),
            &[b"p2pnc/1 stream\n", &key],
        );
        Some(SessionKeys {
            session,
            stream_key,
        })
    }

    /// The 16-byte session id.
    pub fn session_id(&self) -> [u8; 16] {
        self.session
    }

    /// The hello that `role` sends: magic, session id, `HMAC-SHA256(stream_key, role)`.
    pub fn hello(&self, role: Role) -> [u8; HELLO_LEN] {
        let mut out = [0u8; HELLO_LEN];
        out[..8].copy_from_slice(HELLO_MAGIC);
        out[8..24].copy_from_slice(&self.session);
        out[24..].copy_from_slice(&hmac(&self.stream_key, &[role.label()]));
        out
    }

    /// Checks a hello received from `from` in constant time.
    pub fn verify_hello(&self, from: Role, hello: &[u8; HELLO_LEN]) -> bool {
        if &hello[..8] != HELLO_MAGIC || hello[8..24] != self.session {
            return false;
        }
        let mut mac = <HmacSha256 as KeyInit>::new_from_slice(&self.stream_key).expect("any key");
        mac.update(from.label());
        mac.verify_slice(&hello[24..]).is_ok()
    }
}

/// Extracts the session id of a received hello, if its magic is right.
pub fn hello_session(hello: &[u8; HELLO_LEN]) -> Option<[u8; 16]> {
    (&hello[..8] == HELLO_MAGIC).then(|| hello[8..24].try_into().expect("16 bytes"))
}

/// Parses a control message with the size cap applied.
pub fn decode<T: for<'de> Deserialize<'de>>(text: &str) -> Result<T, String> {
    if text.len() > MAX_MESSAGE_BYTES {
        return Err(format!("message over {MAX_MESSAGE_BYTES} bytes"));
    }
    serde_json::from_str(text).map_err(|e| format!("malformed message: {e}"))
}

/// Serialises a control message.
pub fn encode<T: Serialize>(msg: &T) -> String {
    serde_json::to_string(msg).expect("protocol messages always serialise")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expose_query_round_trips() {
        let q = ExposeQuery {
            id: "stream server/é".into(),
            auth: Auth::Secret,
            private: vec![
                "10.0.0.2:4000".parse().unwrap(),
                "[fe80::1]:5".parse().unwrap(),
            ],
            probe: Some("0a".repeat(16)),
            owner: Some(owner_credential("pw", "stream server/é")),
            mapped: Some("198.51.100.2:40000".parse().unwrap()),
        };
        assert_eq!(ExposeQuery::parse(&q.to_query()).unwrap(), q);
        assert!(
            q.to_query().ends_with("&mapped=198.51.100.2%3A40000"),
            "{}",
            q.to_query()
        );
        let without = ExposeQuery { mapped: None, ..q };
        assert!(!without.to_query().contains("mapped"));
        assert_eq!(ExposeQuery::parse(&without.to_query()).unwrap(), without);
        // Empty means none; anything else must be one IP:PORT.
        let base = "v=1&id=a&auth=public&private=";
        assert_eq!(
            ExposeQuery::parse(&format!("{base}&mapped="))
                .unwrap()
                .mapped,
            None
        );
        let v6 = ExposeQuery::parse(&format!("{base}&mapped=%5B2001%3Adb8%3A%3A1%5D%3A7")).unwrap();
        assert_eq!(v6.mapped, Some("[2001:db8::1]:7".parse().unwrap()));
        for bad in ["1.2.3.4", "1.2.3.4:5,6.7.8.9:10", "x:1"] {
            let err = ExposeQuery::parse(&format!("{base}&mapped={bad}")).unwrap_err();
            assert_eq!(err.code, ErrorCode::BadRequest);
            assert!(err.message.contains("mapped"), "{}", err.message);
        }
    }

    #[test]
    fn punch_orders_carry_peer_mapped_only_when_present() {
        let p = Punch {
            session: "0f".repeat(16),
            key: "a5".repeat(32),
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
            peer_mapped: Some("198.51.100.10:40001".parse().unwrap()),
        };
        let s = encode(&ServerMsg::Punch(p.clone()));
        assert!(s.contains(r#""peer_mapped":"198.51.100.10:40001""#), "{s}");
        assert_eq!(
            decode::<ServerMsg>(&s).unwrap(),
            ServerMsg::Punch(p.clone())
        );
        let none = Punch {
            peer_mapped: None,
            ..p.clone()
        };
        let s = encode(&ServerMsg::Punch(none.clone()));
        assert!(!s.contains("peer_mapped"), "{s}");
        assert_eq!(decode::<ServerMsg>(&s).unwrap(), ServerMsg::Punch(none));
        let agent = Punch {
            strategy: Strategy::Mapped,
            peer_mapped: None,
            ..p
        };
        let s = encode(&ServerMsg::Punch(agent));
        assert!(s.contains(r#""strategy":"mapped""#), "{s}");
        assert_eq!(Strategy::Mapped.to_string(), "mapped");
    }

    #[test]
    fn connect_query_round_trips_and_validates() {
        let q = ConnectQuery {
            peer: "streamserver".into(),
            nonce: "00112233445566778899aabbccddeeff".into(),
            proof: Some("ab".repeat(32)),
            private: vec![],
            mode: Mode::Plain,
            probe: None,
        };
        assert_eq!(ConnectQuery::parse(&q.to_query()).unwrap(), q);
        let err = ConnectQuery::parse("v=1&peer=x&nonce=zz").unwrap_err();
        assert_eq!(err.code, ErrorCode::BadRequest);
        assert!(err.message.contains("nonce"), "{}", err.message);
        let err = ConnectQuery::parse("v=2&peer=x&nonce=00").unwrap_err();
        assert_eq!(err.code, ErrorCode::UnsupportedVersion);
        assert!(ConnectQuery::parse("v=1&peer=&nonce=00").is_err());
        assert!(ConnectQuery::parse("v=1&peer=%ZZ").is_err());
        assert!(ConnectQuery::parse("v=1&peer=%FF%FE&nonce=00").is_err());
        assert!(ConnectQuery::parse("v=1&peer=a%0Ab&nonce=00").is_err());
    }

    #[test]
    fn too_many_candidates_are_refused() {
        let many = ["10.0.0.1:1"; MAX_PRIVATE_CANDIDATES + 1].join(",");
        let err = ExposeQuery::parse(&format!("v=1&id=a&auth=public&private={many}")).unwrap_err();
        assert!(err.message.contains("at most"), "{}", err.message);
    }

    #[test]
    fn proof_verifies_only_with_the_right_secret_id_and_nonce() {
        let nonce = "00112233445566778899aabbccddeeff";
        let p = connect_proof("s3cret", "svc", nonce);
        assert!(verify_connect_proof("s3cret", "svc", nonce, &p));
        assert!(!verify_connect_proof("wrong", "svc", nonce, &p));
        assert!(!verify_connect_proof("s3cret", "other", nonce, &p));
        assert!(!verify_connect_proof("s3cret", "svc", &"1".repeat(32), &p));
        assert!(!verify_connect_proof("s3cret", "svc", nonce, "not hex"));
    }

    #[test]
    fn hello_authenticates_role_session_and_secret() {
        let session = "0f".repeat(16);
        let key = "a5".repeat(32);
        let a = SessionKeys::derive(&session, &key, Some("pw")).unwrap();
        let b = SessionKeys::derive(&session, &key, Some("pw")).unwrap();
        let wrong = SessionKeys::derive(&session, &key, Some("nope")).unwrap();
        let hello = a.hello(Role::Client);
        assert_eq!(hello_session(&hello), Some(a.session_id()));
        assert!(b.verify_hello(Role::Client, &hello));
        assert!(!b.verify_hello(Role::Agent, &hello), "role is bound");
        assert!(!wrong.verify_hello(Role::Client, &hello), "secret is bound");
        let other = SessionKeys::derive(&"0e".repeat(16), &key, Some("pw")).unwrap();
        assert!(
            !other.verify_hello(Role::Client, &hello),
            "session is bound"
        );
        assert!(SessionKeys::derive("zz", &key, None).is_none());
    }

    #[test]
    fn mapping_and_probe_lines() {
        let a: SocketAddr = "198.51.100.2:4000".parse().unwrap();
        let b: SocketAddr = "198.51.100.2:4001".parse().unwrap();
        assert_eq!(Mapping::classify(a, Some(a)), Mapping::EndpointIndependent);
        assert_eq!(Mapping::classify(a, Some(b)), Mapping::EndpointDependent);
        assert_eq!(Mapping::classify(a, None), Mapping::Unknown);
        assert_eq!(
            serde_json::to_value(Mapping::EndpointDependent).unwrap(),
            "endpoint-dependent"
        );
        let token = "ab".repeat(16);
        let line = probe_line(&token);
        assert_eq!(
            parse_probe_line(line.trim_end()),
            Some((token.as_str(), false))
        );
        let line = probe_line_dialback(&token);
        assert_eq!(
            parse_probe_line(line.trim_end()),
            Some((token.as_str(), true))
        );
        assert_eq!(parse_probe_line(&format!("p2pnc-probe {token} x")), None);
        assert_eq!(parse_probe_line("p2pnc-probe short"), None);
        assert_eq!(parse_probe_line("GET / HTTP/1.1"), None);
    }

    #[test]
    fn every_error_code_is_listed() {
        for c in ErrorCode::ALL {
            // A new code fails to compile here until it is added to the match and to ALL.
            match c {
                ErrorCode::BadRequest
                | ErrorCode::NotFound
                | ErrorCode::UnsupportedVersion
                | ErrorCode::PeerOffline
                | ErrorCode::IdTaken
                | ErrorCode::SecretRequired
                | ErrorCode::SecretRejected
                | ErrorCode::PeerGone
                | ErrorCode::Busy
                | ErrorCode::NoDirectPath
                | ErrorCode::Unauthorized
                | ErrorCode::RateLimited
                | ErrorCode::Internal => {}
            }
        }
        let mut names: Vec<String> = ErrorCode::ALL.iter().map(|c| c.to_string()).collect();
        names.dedup();
        assert_eq!(names.len(), ErrorCode::ALL.len());
    }

    #[test]
    fn messages_are_internally_tagged() {
        let m = ServerMsg::Error {
            code: ErrorCode::PeerOffline,
            message: "peer 'x' is not online".into(),
        };
        let s = encode(&m);
        assert!(
            s.starts_with(r#"{"type":"error","code":"peer_offline""#),
            "{s}"
        );
        assert_eq!(decode::<ServerMsg>(&s).unwrap(), m);
        assert!(decode::<ServerMsg>(r#"{"type":"nope"}"#).is_err());
        assert!(decode::<ServerMsg>(&"x".repeat(MAX_MESSAGE_BYTES + 1)).is_err());
        assert_eq!(ErrorCode::SecretRejected.to_string(), "secret_rejected");
    }
}
