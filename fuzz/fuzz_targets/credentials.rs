//! The secrets' proofs as an agent checks them: the connect proof from a punch order
//! (`verify_connect_proof`), and the session keys derived from the order's session id and key
//! (`SessionKeys::derive`). Input: lines `secret`, `peer`, `nonce`, `proof`, `session`, `key`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use p2pnc::protocol::{self, Role, SessionKeys};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.split('\n');
    let mut next = || lines.next().unwrap_or("");
    let (secret, peer, nonce, proof, session, key) =
        (next(), next(), next(), next(), next(), next());

    let genuine = protocol::connect_proof(secret, peer, nonce);
    assert_eq!(genuine.len(), 64);
    assert!(protocol::verify_connect_proof(
        secret, peer, nonce, &genuine
    ));
    let accepted = protocol::verify_connect_proof(secret, peer, nonce, proof);
    let same = hex::decode(proof).ok() == hex::decode(&genuine).ok();
    assert_eq!(accepted, same, "{proof:?} vs {genuine}");

    let owner = protocol::owner_credential(secret, peer);
    assert_eq!(owner.len(), 64);
    assert_eq!(owner, protocol::owner_credential(secret, peer));

    match SessionKeys::derive(session, key, Some(secret)) {
        Some(keys) => {
            assert_eq!(hex::encode(keys.session_id()), session.to_ascii_lowercase());
            assert_eq!(key.len(), 64);
            let hello = keys.hello(Role::Agent);
            assert!(keys.verify_hello(Role::Agent, &hello));
            assert!(!keys.verify_hello(Role::Client, &hello));
        }
        None => {
            let session_ok = hex::decode(session).is_ok_and(|s| s.len() == 16);
            let key_ok = hex::decode(key).is_ok_and(|k| k.len() == 32);
            assert!(!(session_ok && key_ok), "{session:?} {key:?}");
        }
    }
});
