//! The p2pnc wire protocol, version 1: control messages exchanged with the rendezvous server
//! (one type per direction), the query strings of its two WebSocket endpoints, the proofs of
//! the service secret, the hello that opens every punched stream, relay joins and NAT probes.
//!
//! This crate does no I/O. `docs/protocol.md` is the normative description; the JSON fixtures
//! in `tests/fixtures/protocol/` are parsed and produced by both the Rust and the Java tests.

mod candidates;
mod credentials;
mod error;
mod ids;
mod messages;
mod order;
mod probe;
mod query;
mod relay;
mod stream;
pub mod warm;

pub use candidates::{filter_private_candidates, private_candidate_allowed};
pub use credentials::{
    ROOT_ITERATIONS, ServiceKeys, connect_message, plain_message, public_psk, register_message,
};
pub use error::{ErrorBody, ErrorCode};
pub use ids::{
    AgentKey, HexError, Nonce, ProbeToken, RelayTicket, ServiceId, SessionId, SessionKey,
    SessionRef, Signature, Verifier,
};
pub use messages::{AgentToServer, ClientToServer, ServerToAgent, ServerToClient};
pub use order::{Auth, Mapping, Mode, PunchOrder, Strategy};
pub use probe::{
    MAX_PROBE_LINE, ProbeRequest, WhoamiError, dialback_line, parse_probe_line, probe_addr,
    probe_line, probe_line_dialback, whoami_addr,
};
pub use query::{
    ConnectQuery, ExposeQuery, ID_PUNCTUATION, QueryError, format_candidates, percent_encode,
    validate_id,
};
pub use relay::{
    JoinQuery, JoinQueryError, JoinRefused, RELAY_PATH, UPGRADE_TOKEN, check_join_answer,
    join_query, join_request, parse_join_query,
};
pub use stream::{
    AGENT_HEAD_LEN, AgentReply, CLIENT_HEAD_LEN, ClientHandshake, ClientHead, DH_PUBLIC_LEN, Flags,
    MAX_EARLY_IN_HELLO, MAX_NOISE_MESSAGE, MAX_RECORD_BODY, NOISE_NK, NOISE_NN, Pattern,
    RECORD_BODY_AT, RECORD_OVERHEAD, RecordCipher, Role, STREAM_MAGIC, StaticKey, StreamError,
    TAG_LEN, TransportKeys, agent_reply, agent_reply_granting, agent_reply_with, fingerprint,
    parse_agent_head, record, seal_record, seal_record_in_place,
};

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Protocol version carried by every control request (`v=2`).
pub const PROTOCOL_VERSION: u32 = 2;
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
/// Header of an upgrade answer (value [`TOKEN_UNUSED`]) when the request carried a token that
/// the server, having none, did not check: the peer can tell its user the token is not needed.
pub const TOKEN_HEADER: &str = "p2pnc-token";
/// The value of [`TOKEN_HEADER`].
pub const TOKEN_UNUSED: &str = "unused";

/// A control message that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Over [`MAX_MESSAGE_BYTES`].
    #[error("message over {MAX_MESSAGE_BYTES} bytes")]
    TooLarge,
    /// Not JSON, or not a message of the expected type.
    #[error("malformed message: {0}")]
    Malformed(String),
}

/// Parses a control message with the size cap applied.
pub fn decode<T: DeserializeOwned>(text: &str) -> Result<T, DecodeError> {
    if text.len() > MAX_MESSAGE_BYTES {
        return Err(DecodeError::TooLarge);
    }
    serde_json::from_str(text).map_err(|e| DecodeError::Malformed(e.to_string()))
}

/// Serialises a control message.
pub fn encode<T: Serialize>(msg: &T) -> String {
    serde_json::to_string(msg).expect("protocol messages always serialise")
}
