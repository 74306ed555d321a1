//! Error codes, shared by HTTP error bodies and `error` messages.

use std::fmt;

use serde::{Deserialize, Serialize};

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
    /// The agent refuses plain mode (`expose --no-plain`).
    PlainRefused,
}

impl ErrorCode {
    /// Every code, in the order of `docs/protocol.md`; the shared vectors list them for the
    /// Java client.
    pub const ALL: [ErrorCode; 14] = [
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
        ErrorCode::PlainRefused,
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
            ErrorCode::PlainRefused => 403,
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

#[cfg(test)]
mod tests {
    use super::*;

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
                | ErrorCode::Internal
                | ErrorCode::PlainRefused => {}
            }
        }
        let mut names: Vec<String> = ErrorCode::ALL.iter().map(|c| c.to_string()).collect();
        names.dedup();
        assert_eq!(names.len(), ErrorCode::ALL.len());
    }
}
