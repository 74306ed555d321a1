//! Proofs of the service secret. The secret itself never leaves the client or the agent:
//! what travels is an HMAC over it.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::ids::Nonce;

type HmacSha256 = Hmac<Sha256>;

/// `HMAC-SHA256(key, parts...)`.
pub(crate) fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac =
        <HmacSha256 as KeyInit>::new_from_slice(key).expect("HMAC accepts any key length");
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

/// Checks `tag` against `HMAC-SHA256(key, parts...)` in constant time.
pub(crate) fn verify_hmac(key: &[u8], parts: &[&[u8]], tag: &[u8]) -> bool {
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(key).expect("any key length");
    for p in parts {
        mac.update(p);
    }
    mac.verify_slice(tag).is_ok()
}

/// The client's proof that it knows the service secret:
/// `HMAC-SHA256(secret, "p2pnc/1 connect\n" + peer_id + "\n" + nonce_hex)`, hex.
pub fn connect_proof(secret: &str, peer_id: &str, nonce: &Nonce) -> String {
    let nonce = nonce.to_hex();
    hex::encode(hmac(
        secret.as_bytes(),
        &[
            b"p2pnc/1 connect\n",
            peer_id.as_bytes(),
            b"\n",
            nonce.as_bytes(),
        ],
    ))
}

/// Checks a connect proof (hex, either case) in constant time.
pub fn verify_connect_proof(secret: &str, peer_id: &str, nonce: &Nonce, proof_hex: &str) -> bool {
    let Ok(proof) = hex::decode(proof_hex) else {
        return false;
    };
    let nonce = nonce.to_hex();
    verify_hmac(
        secret.as_bytes(),
        &[
            b"p2pnc/1 connect\n",
            peer_id.as_bytes(),
            b"\n",
            nonce.as_bytes(),
        ],
        &proof,
    )
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proof_verifies_only_with_the_right_secret_id_and_nonce() {
        let nonce: Nonce = "00112233445566778899aabbccddeeff".parse().unwrap();
        let p = connect_proof("s3cret", "svc", &nonce);
        assert!(verify_connect_proof("s3cret", "svc", &nonce, &p));
        assert!(!verify_connect_proof("wrong", "svc", &nonce, &p));
        assert!(!verify_connect_proof("s3cret", "other", &nonce, &p));
        let other = Nonce::from_bytes([0x11; 16]);
        assert!(!verify_connect_proof("s3cret", "svc", &other, &p));
        assert!(!verify_connect_proof("s3cret", "svc", &nonce, "not hex"));
    }
}
