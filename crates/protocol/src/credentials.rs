//! What the service secret proves, and to whom (`docs/protocol.md`, "The service secret").
//!
//! From the secret and the service id both ends derive a P-256 signing key. The agent registers
//! its public half, the *verifier*; the server and the agent check signatures with it, and only
//! holders of the secret can make them. The same secret keys the stream handshake (the Noise
//! PSK), which the server cannot derive from anything it sees.

use std::fmt;
use std::num::NonZeroU32;

use hmac::{Hmac, KeyInit, Mac};
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature as EcdsaSignature, SigningKey};
use sha2::Sha256;

use crate::ids::{Nonce, SessionId, SessionKey, Signature, Verifier};
use crate::order::Mode;

/// PBKDF2 iterations of the root key: each guess of a secret costs an attacker this many
/// HMACs, while a peer derives it once per process (about 3 ms).
pub const ROOT_ITERATIONS: u32 = 16_384;

type HmacSha256 = Hmac<Sha256>;

pub(crate) fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac =
        <HmacSha256 as KeyInit>::new_from_slice(key).expect("HMAC accepts any key length");
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

/// The keys a service secret gives, for one service id.
#[derive(Clone)]
pub struct ServiceKeys {
    signing: SigningKey,
    verifier: Verifier,
    stream: [u8; 32],
}

impl fmt::Debug for ServiceKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceKeys")
            .field("verifier", &self.verifier)
            .finish_non_exhaustive()
    }
}

impl ServiceKeys {
    /// Derives the keys of `secret` for the service `id`:
    /// `root = PBKDF2-HMAC-SHA256(secret, "p2pnc/2 root\n" || id, 16384)`; the signing scalar
    /// is the first `HMAC-SHA256(root, "p2pnc/2 verifier\n" || c)`, c = 0, 1, ..., that lies in
    /// `[1, n)`; the stream key is `HMAC-SHA256(root, "p2pnc/2 stream\n")`.
    pub fn derive(secret: &str, id: &str) -> Self {
        let mut root = [0u8; 32];
        let salt = [b"p2pnc/2 root\n".as_slice(), id.as_bytes()].concat();
        ring::pbkdf2::derive(
            ring::pbkdf2::PBKDF2_HMAC_SHA256,
            NonZeroU32::new(ROOT_ITERATIONS).expect("non-zero"),
            &salt,
            secret.as_bytes(),
            &mut root,
        );
        // A value of 32 random-looking bytes is at or above n with probability about 2^-32:
        // the loop ends at c = 0 for every secret anyone will meet.
        let signing = (0u8..=u8::MAX)
            .find_map(|c| {
                let d = hmac(&root, &[b"p2pnc/2 verifier\n", &[c]]);
                SigningKey::from_bytes(&d.into()).ok()
            })
            .expect("a scalar in range within 256 tries");
        let point = signing.verifying_key().to_encoded_point(false);
        let verifier = Verifier::from_bytes(
            point
                .as_bytes()
                .try_into()
                .expect("an uncompressed P-256 point is 65 bytes"),
        );
        let stream = hmac(&root, &[b"p2pnc/2 stream\n"]);
        ServiceKeys {
            signing,
            verifier,
            stream,
        }
    }

    /// The public half, registered with the server.
    pub fn verifier(&self) -> Verifier {
        self.verifier
    }

    /// The private scalar (big-endian), for the test vectors.
    pub fn scalar(&self) -> [u8; 32] {
        self.signing.to_bytes().into()
    }

    /// The stream key, for the test vectors.
    pub fn stream_key(&self) -> [u8; 32] {
        self.stream
    }

    /// Signs `message` (ECDSA P-256 SHA-256, `r || s`).
    pub fn sign(&self, message: &[u8]) -> Signature {
        let sig: EcdsaSignature = self.signing.sign(message);
        Signature::from_bytes(sig.to_bytes().into())
    }

    /// The Noise PSK of one session: `HMAC-SHA256(stream key, session id || session key)`.
    pub fn psk(&self, session: &SessionId, key: &SessionKey) -> [u8; 32] {
        hmac(&self.stream, &[session.as_bytes(), key.as_bytes()])
    }
}

/// The Noise PSK of a session with a public agent (no secret): keyed with zeros, so it hides
/// the stream from observers but not from the server, which knows the session key.
pub fn public_psk(session: &SessionId, key: &SessionKey) -> [u8; 32] {
    hmac(&[0u8; 32], &[session.as_bytes(), key.as_bytes()])
}

impl Verifier {
    /// Whether `signature` over `message` was made with the signing key of this verifier.
    pub fn verifies(&self, message: &[u8], signature: &Signature) -> bool {
        ring::signature::UnparsedPublicKey::new(
            &ring::signature::ECDSA_P256_SHA256_FIXED,
            self.as_bytes(),
        )
        .verify(message, signature.as_bytes())
        .is_ok()
    }

    /// Whether this is a point on P-256 (not the point at infinity), i.e. a verifier anything
    /// could ever verify against.
    pub fn is_valid(&self) -> bool {
        p256::PublicKey::from_sec1_bytes(self.as_bytes()).is_ok()
    }
}

/// What a client signs to ask for a connection:
/// `"p2pnc/2 connect\n" || id || "\n" || mode || "\n" || nonce (hex)`.
pub fn connect_message(id: &str, mode: Mode, nonce: &Nonce) -> Vec<u8> {
    format!(
        "p2pnc/2 connect\n{id}\n{}\n{}",
        mode.as_str(),
        nonce.to_hex()
    )
    .into_bytes()
}

/// What an agent signs to register: `"p2pnc/2 register\n" || id || "\n" || challenge (hex)`.
pub fn register_message(id: &str, challenge: &Nonce) -> Vec<u8> {
    format!("p2pnc/2 register\n{id}\n{}", challenge.to_hex()).into_bytes()
}

/// What a client signs in plain mode, answering the agent's challenge:
/// `"p2pnc/2 plain\n" || id || "\n" || nonce || "\n" || challenge || "\n" || endpoint`, with
/// the nonces in hex and the endpoint as `IP:PORT` (IPv6 in brackets).
pub fn plain_message(
    id: &str,
    nonce: &Nonce,
    challenge: &Nonce,
    endpoint: &std::net::SocketAddr,
) -> Vec<u8> {
    format!(
        "p2pnc/2 plain\n{id}\n{}\n{}\n{endpoint}",
        nonce.to_hex(),
        challenge.to_hex()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_only_for_the_same_secret_and_message() {
        let keys = ServiceKeys::derive("s3cret", "svc");
        let nonce = Nonce::from_bytes([0x11; 16]);
        let msg = connect_message("svc", Mode::Punch, &nonce);
        let sig = keys.sign(&msg);
        assert!(keys.verifier().is_valid());
        assert!(keys.verifier().verifies(&msg, &sig));
        let other = ServiceKeys::derive("wrong", "svc");
        assert!(!other.verifier().verifies(&msg, &sig), "another secret");
        let other_id = ServiceKeys::derive("s3cret", "svc2");
        assert_ne!(
            other_id.verifier(),
            keys.verifier(),
            "the id salts the keys"
        );
        for changed in [
            connect_message("svc", Mode::Plain, &nonce),
            connect_message("svx", Mode::Punch, &nonce),
            connect_message("svc", Mode::Punch, &Nonce::from_bytes([0x12; 16])),
        ] {
            assert!(!keys.verifier().verifies(&changed, &sig));
        }
        let mut bad = *sig.as_bytes();
        bad[63] ^= 1;
        assert!(!keys.verifier().verifies(&msg, &Signature::from_bytes(bad)));
    }

    #[test]
    fn the_psk_binds_secret_session_and_key() {
        let keys = ServiceKeys::derive("s3cret", "svc");
        let (s, k) = (
            SessionId::from_bytes([1; 16]),
            SessionKey::from_bytes([2; 32]),
        );
        let psk = keys.psk(&s, &k);
        assert_ne!(psk, ServiceKeys::derive("other", "svc").psk(&s, &k));
        assert_ne!(psk, keys.psk(&SessionId::from_bytes([3; 16]), &k));
        assert_ne!(psk, keys.psk(&s, &SessionKey::from_bytes([4; 32])));
        assert_ne!(psk, public_psk(&s, &k));
    }

    #[test]
    fn a_point_off_the_curve_is_no_verifier() {
        let mut bytes = [0u8; 65];
        bytes[0] = 4;
        assert!(!Verifier::from_bytes(bytes).is_valid());
        let keys = ServiceKeys::derive("s3cret", "svc");
        let sig = keys.sign(b"m");
        assert!(!Verifier::from_bytes(bytes).verifies(b"m", &sig));
    }
}
