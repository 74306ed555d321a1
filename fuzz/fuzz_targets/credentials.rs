//! The secrets' proofs as the server and an agent check them: a connect proof (an ECDSA
//! signature) against a verifier, and the PSK a session's stream handshake is keyed with.
//! Input: lines `id`, `mode`, `nonce`, `signature`, `verifier`, `session`, `key`; a value that
//! is not hex of the right length is read as all zeros. The service keys are those of the
//! secret `pw` for the id `svc`.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use p2pnc_protocol::{
    self as protocol, Mode, Nonce, ServiceKeys, SessionId, SessionKey, Signature, Verifier,
};

/// Derived once: a PBKDF2 per input would make the target crawl.
static KEYS: LazyLock<ServiceKeys> = LazyLock::new(|| ServiceKeys::derive("pw", "svc"));

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.split('\n');
    let mut next = || lines.next().unwrap_or("");
    let (id, mode, nonce, signature, verifier, session, key) =
        (next(), next(), next(), next(), next(), next(), next());
    let mode = if mode == "plain" {
        Mode::Plain
    } else {
        Mode::Punch
    };
    let nonce: Nonce = nonce.parse().unwrap_or(Nonce::from_bytes([0; 16]));
    let message = protocol::connect_message(id, mode, &nonce);

    // Our own signature verifies, and only for its message.
    let genuine = KEYS.sign(&message);
    assert!(KEYS.verifier().verifies(&message, &genuine));
    let other_mode = if mode == Mode::Plain {
        Mode::Punch
    } else {
        Mode::Plain
    };
    let other = protocol::connect_message(id, other_mode, &nonce);
    assert!(
        !KEYS.verifier().verifies(&other, &genuine),
        "the mode is bound"
    );

    // Whatever a client sends as its proof, and whatever an agent registered as its verifier:
    // an answer, never a panic.
    let sig = signature
        .parse::<Signature>()
        .unwrap_or(Signature::from_bytes([0; 64]));
    let _ = KEYS.verifier().verifies(&message, &sig);
    if let Ok(v) = verifier.parse::<Verifier>() {
        let valid = v.is_valid();
        if !valid {
            assert!(
                !v.verifies(&message, &genuine),
                "no signature verifies off the curve"
            );
        }
        let _ = v.verifies(&message, &sig);
    }

    let session: SessionId = session.parse().unwrap_or(SessionId::from_bytes([0; 16]));
    let key: SessionKey = key.parse().unwrap_or(SessionKey::from_bytes([0; 32]));
    assert_eq!(KEYS.psk(&session, &key), KEYS.psk(&session, &key));
    assert_ne!(
        KEYS.psk(&session, &key),
        protocol::public_psk(&session, &key)
    );
});
