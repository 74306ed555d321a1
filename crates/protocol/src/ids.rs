//! The identifiers and secrets the protocol carries, as types: on the wire each is a string
//! (lowercase hex, or the id itself), in the code each is one type with one meaning.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::query::{QueryError, validate_id};

/// A string that is not the hex encoding of the expected number of bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected {bytes} bytes of hex")]
pub struct HexError {
    /// How many bytes were expected.
    pub bytes: usize,
}

/// Decodes exactly `N` bytes from hex digits of either case.
fn decode_hex<const N: usize>(s: &str) -> Result<[u8; N], HexError> {
    let mut out = [0u8; N];
    match hex::decode_to_slice(s, &mut out) {
        Ok(()) => Ok(out),
        Err(_) => Err(HexError { bytes: N }),
    }
}

/// Defines a newtype over `[u8; N]` that travels as lowercase hex.
macro_rules! hex_bytes {
    ($(#[$doc:meta])* $name:ident, $n:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name([u8; $n]);

        impl $name {
            /// Length in bytes.
            pub const LEN: usize = $n;

            /// From raw bytes.
            pub const fn from_bytes(bytes: [u8; $n]) -> Self {
                $name(bytes)
            }

            /// Fresh random bytes.
            pub fn random() -> Self {
                $name(rand::random())
            }

            /// The raw bytes.
            pub fn as_bytes(&self) -> &[u8; $n] {
                &self.0
            }

            /// Lowercase hex, as on the wire.
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }
        }

        impl FromStr for $name {
            type Err = HexError;

            /// Parses hex digits of either case.
            fn from_str(s: &str) -> Result<Self, HexError> {
                decode_hex(s).map($name)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.to_hex())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

hex_bytes!(
    /// The id of a session (one brokered connect attempt): 16 random bytes the server picks.
    SessionId,
    16
);
hex_bytes!(
    /// The key of a session: 32 random bytes the server sends both ends, mixed with the
    /// service's stream key into the stream handshake's PSK.
    SessionKey,
    32
);
hex_bytes!(
    /// A client's fresh nonce of a connect request (16 bytes): its proof of the secret covers
    /// it, and the agent refuses one it has seen before.
    Nonce,
    16
);
hex_bytes!(
    /// A service's verifier: the public half (SEC1 uncompressed P-256 point, 65 bytes) of the
    /// signing key derived from its secret (see [`crate::ServiceKeys`]).
    Verifier,
    65
);
hex_bytes!(
    /// An agent's static Noise public key (`expose --key`): a SEC1 uncompressed P-256 point.
    AgentKey,
    65
);
hex_bytes!(
    /// An ECDSA P-256 SHA-256 signature, `r || s` (64 bytes).
    Signature,
    64
);
hex_bytes!(
    /// The token of a NAT probe (16 bytes): the probe line and the control request that
    /// follows it name the same one.
    ProbeToken,
    16
);
hex_bytes!(
    /// One end's credential to join the relay of a session (16 random bytes): the server puts
    /// a different one in each end's punch order and lets a join through only with the ticket
    /// of its role.
    RelayTicket,
    16
);

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({})", self.to_hex())
    }
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Verifier({})", self.to_hex())
    }
}

impl fmt::Debug for AgentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AgentKey({})", crate::fingerprint(self.as_bytes()))
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({})", self.to_hex())
    }
}

impl fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionKey(<hidden>)")
    }
}

impl fmt::Display for Nonce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Nonce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Nonce({})", self.to_hex())
    }
}

impl fmt::Display for ProbeToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ProbeToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ProbeToken({})", self.to_hex())
    }
}

impl fmt::Debug for RelayTicket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RelayTicket(<hidden>)")
    }
}

/// The session an agent's message is about, as the agent wrote it: normally a [`SessionId`];
/// other text names no session, and the server ignores such a message as it ignores one about
/// a session it does not know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionRef {
    /// A session id.
    Id(SessionId),
    /// Text that is not a session id, kept as written.
    Other(String),
}

impl SessionRef {
    /// The session id, if the text is one.
    pub fn id(&self) -> Option<SessionId> {
        match self {
            SessionRef::Id(id) => Some(*id),
            SessionRef::Other(_) => None,
        }
    }
}

impl From<SessionId> for SessionRef {
    fn from(id: SessionId) -> Self {
        SessionRef::Id(id)
    }
}

impl Serialize for SessionRef {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            SessionRef::Id(id) => id.serialize(s),
            SessionRef::Other(text) => s.serialize_str(text),
        }
    }
}

impl<'de> Deserialize<'de> for SessionRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Ok(match text.parse() {
            Ok(id) => SessionRef::Id(id),
            Err(_) => SessionRef::Other(text.into_owned()),
        })
    }
}

/// The id a service is exposed under: 1 to 64 bytes of UTF-8 from a safe character set (see
/// [`validate_id`]).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceId(String);

impl ServiceId {
    /// Checks `id` (see [`validate_id`]).
    pub fn new(id: &str) -> Result<Self, QueryError> {
        validate_id(id)?;
        Ok(ServiceId(id.to_string()))
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for ServiceId {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for ServiceId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl FromStr for ServiceId {
    type Err = QueryError;

    fn from_str(s: &str) -> Result<Self, QueryError> {
        ServiceId::new(s)
    }
}

impl fmt::Display for ServiceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ServiceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl Serialize for ServiceId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ServiceId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        ServiceId::new(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_ids_read_either_case_and_write_lowercase() {
        let id: SessionId = "0F".repeat(16).parse().unwrap();
        assert_eq!(id.to_string(), "0f".repeat(16));
        assert_eq!(id.as_bytes(), &[0x0f; 16]);
        assert_eq!(
            serde_json::to_string(&id).unwrap(),
            format!("\"{}\"", "0f".repeat(16))
        );
        let back: SessionId = serde_json::from_str(&format!("\"{}\"", "0F".repeat(16))).unwrap();
        assert_eq!(back, id);
        for bad in ["", "00", &"0".repeat(33), &"zz".repeat(16)] {
            assert_eq!(
                bad.parse::<SessionId>(),
                Err(HexError { bytes: 16 }),
                "{bad}"
            );
        }
        assert!("ab".repeat(32).parse::<SessionKey>().is_ok());
        assert!("ab".repeat(16).parse::<SessionKey>().is_err());
    }

    #[test]
    fn a_session_reference_keeps_whatever_text_names_no_session() {
        let id = SessionId::from_bytes([0x0f; 16]);
        let text = format!("\"{id}\"");
        let r: SessionRef = serde_json::from_str(&text).unwrap();
        assert_eq!(r.id(), Some(id));
        assert_eq!(serde_json::to_string(&r).unwrap(), text);
        let other: SessionRef = serde_json::from_str("\"nope\"").unwrap();
        assert_eq!(other, SessionRef::Other("nope".into()));
        assert_eq!(other.id(), None);
        assert_eq!(serde_json::to_string(&other).unwrap(), "\"nope\"");
        assert!(serde_json::from_str::<SessionRef>("5").is_err());
    }

    #[test]
    fn a_session_key_and_a_relay_ticket_never_show_in_debug_output() {
        let key = SessionKey::from_bytes([0xa5; 32]);
        assert_eq!(format!("{key:?}"), "SessionKey(<hidden>)");
        let ticket = RelayTicket::from_bytes([0xa5; 16]);
        assert_eq!(format!("{ticket:?}"), "RelayTicket(<hidden>)");
    }

    #[test]
    fn service_ids_are_validated_wherever_they_are_read() {
        assert_eq!(ServiceId::new("svc").unwrap().as_str(), "svc");
        assert!(ServiceId::new("").is_err());
        assert!(ServiceId::new(&"x".repeat(65)).is_err());
        assert!(serde_json::from_str::<ServiceId>("\"a\\nb\"").is_err());
        let id: ServiceId = serde_json::from_str("\"stream-server\"").unwrap();
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"stream-server\"");
        assert!(serde_json::from_str::<ServiceId>("\"svc\\u200b\"").is_err());
    }
}
