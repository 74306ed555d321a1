//! The library's error: what went wrong, with a message a user can act on and a stable code.

use crate::protocol::ErrorCode;

/// Everything that can go wrong, each with a message a user can act on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The server URL cannot be used.
    #[error("bad server URL '{0}': {1}")]
    BadServerUrl(String, String),
    /// The server could not be reached or went away.
    #[error("server unreachable: {0}")]
    ServerUnreachable(String),
    /// No agent is registered under this id.
    #[error("peer '{0}' is not online")]
    PeerOffline(String),
    /// The agent refused the secret.
    #[error("secret rejected by peer '{0}'")]
    SecretRejected(String),
    /// The agent requires a secret and none was given.
    #[error("peer '{0}' requires a secret (--secret)")]
    SecretRequired(String),
    /// The peer could not prove the secret the client holds: an agent registered without it
    /// (`--public`) under the id, or a stream handshake that never verified. Nothing was
    /// sent to it.
    #[error("peer '{0}' did not prove the secret: not the service you expect")]
    NotTheService(String),
    /// The client pins the agent's key and the agent did not present that key.
    #[error("peer '{peer}' did not present the pinned key: {detail}")]
    PinMismatch {
        /// The peer id.
        peer: String,
        /// What was expected and what was found.
        detail: String,
    },
    /// Punching found no path in time.
    #[error("no direct path to '{peer}': {detail}")]
    NoDirectPath {
        /// The peer id.
        peer: String,
        /// What was tried.
        detail: String,
    },
    /// The server, or the peer, is at one of its limits; the message names it (for example
    /// `server busy: too many connections from 203.0.113.70 (limit 256)`). Try again later.
    #[error("{0}")]
    Busy(String),
    /// The server refused the request.
    #[error("server refused ({0}): {1}")]
    Refused(ErrorCode, String),
    /// The TLS connection to the server failed.
    #[error("TLS with {0}")]
    Tls(String),
    /// The server broke the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A local I/O error.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    /// A stable machine-readable code for this error: the server's code when the server
    /// refused, otherwise one of `bad_server_url`, `server_unreachable`, `peer_offline`,
    /// `secret_rejected`, `secret_required`, `not_the_service`, `pin_mismatch`,
    /// `no_direct_path`, `tls`, `protocol`, `io`.
    pub fn code(&self) -> String {
        match self {
            Error::BadServerUrl(..) => "bad_server_url".into(),
            Error::ServerUnreachable(_) => "server_unreachable".into(),
            Error::PeerOffline(_) => ErrorCode::PeerOffline.to_string(),
            Error::SecretRejected(_) => ErrorCode::SecretRejected.to_string(),
            Error::SecretRequired(_) => ErrorCode::SecretRequired.to_string(),
            Error::NotTheService(_) => "not_the_service".into(),
            Error::PinMismatch { .. } => "pin_mismatch".into(),
            Error::NoDirectPath { .. } => ErrorCode::NoDirectPath.to_string(),
            Error::Busy(_) => ErrorCode::Busy.to_string(),
            Error::Refused(code, _) => code.to_string(),
            Error::Tls(_) => "tls".into(),
            Error::Protocol(_) => "protocol".into(),
            Error::Io(_) => "io".into(),
        }
    }

    /// The same error again, for each of several callers waiting on one attempt (an I/O
    /// error keeps its kind and message).
    pub(crate) fn duplicate(&self) -> Error {
        match self {
            Error::BadServerUrl(a, b) => Error::BadServerUrl(a.clone(), b.clone()),
            Error::ServerUnreachable(a) => Error::ServerUnreachable(a.clone()),
            Error::PeerOffline(a) => Error::PeerOffline(a.clone()),
            Error::SecretRejected(a) => Error::SecretRejected(a.clone()),
            Error::SecretRequired(a) => Error::SecretRequired(a.clone()),
            Error::NotTheService(a) => Error::NotTheService(a.clone()),
            Error::PinMismatch { peer, detail } => Error::PinMismatch {
                peer: peer.clone(),
                detail: detail.clone(),
            },
            Error::NoDirectPath { peer, detail } => Error::NoDirectPath {
                peer: peer.clone(),
                detail: detail.clone(),
            },
            Error::Busy(a) => Error::Busy(a.clone()),
            Error::Refused(code, a) => Error::Refused(*code, a.clone()),
            Error::Tls(a) => Error::Tls(a.clone()),
            Error::Protocol(a) => Error::Protocol(a.clone()),
            Error::Io(e) => Error::Io(std::io::Error::new(e.kind(), e.to_string())),
        }
    }

    /// The one-line JSON report of a failed connection (`--report json`).
    pub fn report(&self) -> serde_json::Value {
        serde_json::json!({ "ok": false, "code": self.code(), "message": self.to_string() })
    }
}
