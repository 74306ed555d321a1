//! The stream handshake: the hello each end writes on every punched (or relayed) stream, and
//! the byte with which the client selects one.

use std::fmt;

use crate::credentials::{hmac, verify_hmac};
use crate::ids::{SessionId, SessionKey};

/// First eight bytes each side writes on a punched stream.
pub const HELLO_MAGIC: &[u8; 8] = b"p2pnc/1\n";
/// Length of the stream hello: magic, session id, tag.
pub const HELLO_LEN: usize = 8 + 16 + 32;
/// The byte a client writes on the stream it chose, right after the agent's hello verified
/// (or, with early data, right after its own hello).
pub const SELECT: u8 = 1;

/// Which end of a punched stream is speaking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The connecting side (`connect`).
    Client,
    /// The exposing side (`expose`).
    Agent,
}

impl Role {
    /// The word that names this end in the hello and in relay joins (`client`, `agent`).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Client => "client",
            Role::Agent => "agent",
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
    session: SessionId,
    stream_key: [u8; 32],
}

impl fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionKeys")
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

impl SessionKeys {
    /// Derives the keys: `stream_key = HMAC-SHA256(secret or "", "p2pnc/1 stream\n" + session_key)`.
    /// Public agents use the empty secret.
    pub fn derive(session: SessionId, key: &SessionKey, secret: Option<&str>) -> Self {
        let stream_key = hmac(
            secret.unwrap_or("").as_bytes(),
            &[b"p2pnc/1 stream\n", key.as_bytes()],
        );
        SessionKeys {
            session,
            stream_key,
        }
    }

    /// The session id.
    pub fn session_id(&self) -> SessionId {
        self.session
    }

    /// The hello that `role` sends: magic, session id, `HMAC-SHA256(stream_key, role)`.
    pub fn hello(&self, role: Role) -> [u8; HELLO_LEN] {
        let mut out = [0u8; HELLO_LEN];
        out[..8].copy_from_slice(HELLO_MAGIC);
        out[8..24].copy_from_slice(self.session.as_bytes());
        out[24..].copy_from_slice(&hmac(&self.stream_key, &[role.as_str().as_bytes()]));
        out
    }

    /// Checks a hello received from `from` in constant time.
    pub fn verify_hello(&self, from: Role, hello: &[u8; HELLO_LEN]) -> bool {
        if &hello[..8] != HELLO_MAGIC || hello[8..24] != self.session.as_bytes()[..] {
            return false;
        }
        verify_hmac(&self.stream_key, &[from.as_str().as_bytes()], &hello[24..])
    }
}

/// Extracts the session id of a received hello, if its magic is right.
pub fn hello_session(hello: &[u8; HELLO_LEN]) -> Option<SessionId> {
    (&hello[..8] == HELLO_MAGIC)
        .then(|| SessionId::from_bytes(hello[8..24].try_into().expect("16 bytes")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_authenticates_role_session_and_secret() {
        let session = SessionId::from_bytes([0x0f; 16]);
        let key = SessionKey::from_bytes([0xa5; 32]);
        let a = SessionKeys::derive(session, &key, Some("pw"));
        let b = SessionKeys::derive(session, &key, Some("pw"));
        let wrong = SessionKeys::derive(session, &key, Some("nope"));
        let hello = a.hello(Role::Client);
        assert_eq!(hello_session(&hello), Some(a.session_id()));
        assert!(b.verify_hello(Role::Client, &hello));
        assert!(!b.verify_hello(Role::Agent, &hello), "role is bound");
        assert!(!wrong.verify_hello(Role::Client, &hello), "secret is bound");
        let other = SessionKeys::derive(SessionId::from_bytes([0x0e; 16]), &key, Some("pw"));
        assert!(
            !other.verify_hello(Role::Client, &hello),
            "session is bound"
        );
    }
}
