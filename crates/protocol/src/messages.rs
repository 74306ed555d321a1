//! Control messages, one type per direction. JSON objects tagged by `"type"`; unknown fields
//! are ignored, unknown types are errors.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::error::ErrorCode;
use crate::ids::{Nonce, ServiceId, SessionRef, Signature};
use crate::order::{Mapping, PunchOrder};

/// Messages the rendezvous server sends to an agent.
// The server queues them boxed already; boxing the order inside would save nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ServerToAgent {
    /// The first message of a registration: sign [`crate::register_message`] with this nonce
    /// to prove the secret (agents with a verifier only).
    Challenge {
        /// 16 fresh random bytes.
        nonce: Nonce,
    },
    /// Plain mode: the client's answer to the agent's challenge.
    PlainProof {
        /// The session.
        session: SessionRef,
        /// A signature of [`crate::plain_message`].
        signature: Signature,
    },
    /// The agent's id is now online; `public` is the agent's address as the server sees it.
    Registered {
        /// The registered id.
        id: ServiceId,
        /// The agent's public endpoint (its NAT mapping of the punch port).
        public: SocketAddr,
        /// The agent's NAT mapping behaviour, from its probe (see [`Mapping`]).
        #[serde(default, skip_serializing_if = "Mapping::is_unknown")]
        mapping: Mapping,
    },
    /// Start punching now: sent to both ends of a session, timed so that both fire together.
    Punch(PunchOrder),
    /// A request failed; the connection is closed after this message.
    Error {
        /// Machine-readable reason (see [`ErrorCode`]).
        code: ErrorCode,
        /// One line for a person.
        message: String,
    },
}

/// Messages the rendezvous server sends to a client.
// A client receives one or two of these per connection: boxing the order would save nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ServerToClient {
    /// Plain mode: the agent's challenge; answer with [`ClientToServer::Prove`].
    Challenge {
        /// The agent's fresh nonce.
        nonce: Nonce,
        /// The client's public endpoint as the server saw the control connection: the one
        /// endpoint the agent will accept the plain connection from.
        you: SocketAddr,
    },
    /// Start punching now (see [`ServerToAgent::Punch`]).
    Punch(PunchOrder),
    /// The request failed; the connection is closed after this message.
    Error {
        /// Machine-readable reason (see [`ErrorCode`]).
        code: ErrorCode,
        /// One line for a person.
        message: String,
    },
}

/// Messages an agent sends to the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum AgentToServer {
    /// The answer to the registration challenge: a signature of [`crate::register_message`].
    Prove {
        /// The signature.
        signature: Signature,
    },
    /// Plain mode: the agent's challenge to the client of `session`.
    Challenge {
        /// The session.
        session: SessionRef,
        /// 16 fresh random bytes.
        nonce: Nonce,
    },
    /// The agent refuses a session (for example a wrong secret); the server tells the client.
    Reject {
        /// The session refused.
        session: SessionRef,
        /// Why.
        code: ErrorCode,
        /// One line for a person.
        message: String,
    },
    /// Plain mode only: the agent has opened its NAT toward the client; the server may now
    /// send the client its punch order.
    Armed {
        /// The session armed.
        session: SessionRef,
    },
}

/// Messages a client sends to the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ClientToServer {
    /// Plain mode: the answer to the agent's challenge, a signature of
    /// [`crate::plain_message`].
    Prove {
        /// The signature.
        signature: Signature,
    },
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{MAX_MESSAGE_BYTES, decode, encode};

    #[test]
    fn messages_are_internally_tagged() {
        let m = ServerToClient::Error {
            code: ErrorCode::PeerOffline,
            message: "peer 'x' is not online".into(),
        };
        let s = encode(&m);
        assert!(
            s.starts_with(r#"{"type":"error","code":"peer_offline""#),
            "{s}"
        );
        assert_eq!(decode::<ServerToClient>(&s).unwrap(), m);
        assert!(decode::<ServerToClient>(r#"{"type":"nope"}"#).is_err());
        assert!(decode::<ServerToAgent>(&"x".repeat(MAX_MESSAGE_BYTES + 1)).is_err());
        assert_eq!(ErrorCode::SecretRejected.to_string(), "secret_rejected");
    }

    #[test]
    fn a_client_is_never_sent_a_registration() {
        let reg = ServerToAgent::Registered {
            id: ServiceId::new("svc").unwrap(),
            public: "198.51.100.2:40000".parse().unwrap(),
            mapping: Mapping::Unknown,
        };
        let s = encode(&reg);
        assert_eq!(
            s,
            r#"{"type":"registered","id":"svc","public":"198.51.100.2:40000"}"#
        );
        assert_eq!(decode::<ServerToAgent>(&s).unwrap(), reg);
        assert!(decode::<ServerToClient>(&s).is_err());
    }
}
