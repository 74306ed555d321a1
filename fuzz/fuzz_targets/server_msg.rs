//! Control messages an agent or a client receives from the server (`ServerToAgent`,
//! `ServerToClient`), and what each end derives from a punch order: the stream keys and the
//! punch plan.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use p2pnc::defaults::{MAX_RELAY_AFTER, PUNCH_TIMEOUT};
use p2pnc::fuzzing::{self, PunchOptions};
use p2pnc_protocol::{
    self as protocol, MAX_MESSAGE_BYTES, Role, ServerToAgent, ServerToClient, ServiceKeys,
};

/// Derived once: a PBKDF2 per input would make the target crawl.
static KEYS: std::sync::LazyLock<ServiceKeys> =
    std::sync::LazyLock::new(|| ServiceKeys::derive("pw", "svc"));

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // What a client may receive is what an agent may receive, but a registration.
    let to_client = protocol::decode::<ServerToClient>(text);
    let Ok(msg) = protocol::decode::<ServerToAgent>(text) else {
        assert!(to_client.is_err(), "{text}");
        return;
    };
    assert!(text.len() <= MAX_MESSAGE_BYTES, "the size cap holds");
    // Defaults filled in can make the re-encoding longer than the cap; below it, the
    // message must come back unchanged and encode the same way again.
    let again = protocol::encode(&msg);
    if again.len() <= MAX_MESSAGE_BYTES {
        let back = protocol::decode::<ServerToAgent>(&again).expect("re-encoding decodes");
        assert_eq!(back, msg, "{again}");
        assert_eq!(protocol::encode(&back), again, "encoding is stable");
    }
    match (&msg, &to_client) {
        (ServerToAgent::Registered { .. } | ServerToAgent::PlainProof { .. }, client) => {
            assert!(client.is_err(), "{text}")
        }
        // A client's challenge names its endpoint too; an agent's does not need it.
        (ServerToAgent::Challenge { nonce }, client) => {
            if let Ok(ServerToClient::Challenge { nonce: n, .. }) = client {
                assert_eq!(nonce, n);
            } else {
                assert!(client.is_err(), "{text}");
            }
        }
        (ServerToAgent::Punch(p), Ok(ServerToClient::Punch(q))) => assert_eq!(p, q),
        (
            ServerToAgent::Error { code, message },
            Ok(ServerToClient::Error {
                code: c,
                message: m,
            }),
        ) => {
            assert_eq!((code, message), (c, m))
        }
        (msg, client) => panic!("{msg:?} to an agent is {client:?} to a client"),
    }
    let ServerToAgent::Punch(p) = &msg else {
        return;
    };
    let psk = KEYS.psk(&p.session, &p.key);
    assert_ne!(psk, protocol::public_psk(&p.session, &p.key));
    let started = tokio::time::Instant::now();
    let options = PunchOptions::default();
    for role in [Role::Client, Role::Agent] {
        let plan = fuzzing::plan(p, role, &options);
        // Every target comes from the order.
        for t in plan.targets() {
            assert!(
                *t == p.peer_public
                    || p.peer_private.contains(t)
                    || p.peer_mapped == Some(*t)
                    || p.peer_public6 == Some(*t),
                "{t} is not in the order"
            );
        }
        // Early data is only ever committed to the peer's public or mapped endpoint.
        if let Some(commit_to) = plan.early_targets() {
            assert_eq!(role, Role::Client, "only the client sends early data");
            for t in commit_to {
                assert!(
                    *t == p.peer_public || p.peer_mapped == Some(*t) || p.peer_public6 == Some(*t),
                    "early data may go to {t}"
                );
            }
        }
        // Whatever the server says, the punch gives up in bounded time.
        if let Some(after) = plan.relay_after() {
            assert!(after <= MAX_RELAY_AFTER, "{after:?}");
        }
        let deadline = plan.deadline(started);
        assert!(deadline >= started + PUNCH_TIMEOUT);
        assert!(
            deadline <= started + Duration::from_secs(60),
            "a punch order keeps the punch going for {:?}",
            deadline - started
        );
    }
});
