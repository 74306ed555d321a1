//! The secrets' proofs as an agent checks them: the connect proof from a punch order
//! (`verify_connect_proof`), and the session keys derived from the order's session id and key
//! (`SessionKeys::derive`). Input: lines `secret`, `peer`, `nonce`, `proof`, `session`, `key`.
//! A nonce, session or key line that is not hex of the right length is read as all zeros.
#![no_main]

use libfuzzer_sys::fuzz_target;
use p2pnc_protocol::{self as protocol, Nonce, Role, SessionId, SessionKey, SessionKeys};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.split('\n');
    let mut next = || lines.next().unwrap_or("");
    let (secret, peer, nonce, proof, session, key) =
        (next(), next(), next(), next(), next(), next());

    let nonce: Nonce = nonce.parse().unwrap_or(Nonce::from_bytes([0; 16]));
    let genuine = protocol::connect_proof(secret, peer, &nonce);
    assert_eq!(genuine.len(), 64);
    assert!(protocol::verify_connect_proof(
        secret, peer, &nonce, &genuine
    ));
    let accepted = protocol::verify_connect_proof(secret, peer, &nonce, proof);
    let same = hex::decode(proof).ok() == hex::decode(&genuine).ok();
    assert_eq!(accepted, same, "{proof:?} vs {genuine}");

    let owner = protocol::owner_credential(secret, peer);
    assert_eq!(owner.len(), 64);
    assert_eq!(owner, protocol::owner_credential(secret, peer));

    let parsed = (session.parse::<SessionId>(), key.parse::<SessionKey>());
    let session_ok = hex::decode(session).is_ok_and(|s| s.len() == 16);
    let key_ok = hex::decode(key).is_ok_and(|k| k.len() == 32);
    assert_eq!(parsed.0.is_ok(), session_ok, "{session:?}");
    assert_eq!(parsed.1.is_ok(), key_ok, "{key:?}");
    let session_id = parsed.0.unwrap_or(SessionId::from_bytes([0; 16]));
    let key = parsed.1.unwrap_or(SessionKey::from_bytes([0; 32]));
    let keys = SessionKeys::derive(session_id, &key, Some(secret));
    if session_ok {
        assert_eq!(keys.session_id().to_string(), session.to_ascii_lowercase());
    }
    let hello = keys.hello(Role::Agent);
    assert!(keys.verify_hello(Role::Agent, &hello));
    assert!(!keys.verify_hello(Role::Client, &hello));
});
