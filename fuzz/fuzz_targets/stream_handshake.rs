//! The stream handshake as it runs on a real TCP stream (loopback): our hello out, the peer's
//! hello in, and on the agent the selection byte. The input is what the peer sends, after one
//! byte that picks our role and whether the hello was read first (as the agent's punch port
//! does to find the session). The keys are those of the first hello vector in
//! `tests/fixtures/protocol/vectors.json`.
#![no_main]

use std::io::Write;
use std::net::{Shutdown, TcpStream as StdStream};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use p2pnc::fuzzing::{Proof, read_hello};
use p2pnc_protocol::{Role, SELECT, SessionId, SessionKey, SessionKeys, hello_session};
use tokio::net::TcpListener;
use tokio::runtime::Runtime;

struct Harness {
    rt: Runtime,
    listener: TcpListener,
    keys: SessionKeys,
}

thread_local! {
    static HARNESS: Harness = {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let listener = rt
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .expect("loopback listener");
        let keys = SessionKeys::derive(
            SessionId::from_bytes([0x0f; 16]),
            &SessionKey::from_bytes([0xa5; 32]),
            Some("pw"),
        );
        Harness { rt, listener, keys }
    };
}

/// Generous: a loopback handshake takes microseconds; this only bounds a hang.
const DEADLINE: Duration = Duration::from_secs(5);

fuzz_target!(|data: &[u8]| {
    let Some((&mode, sent)) = data.split_first() else {
        return;
    };
    let role = if mode & 1 == 0 {
        Role::Agent
    } else {
        Role::Client
    };
    let read_first = mode & 2 != 0 && role == Role::Agent;
    HARNESS.with(|h| {
        let addr = h.listener.local_addr().expect("bound");
        let mut peer = StdStream::connect(addr).expect("loopback connect");
        // Closing with a reset leaves no TIME_WAIT behind, however many runs there are.
        socket2::SockRef::from(&peer)
            .set_linger(Some(Duration::ZERO))
            .expect("linger");
        peer.write_all(sent).expect("loopback write");
        peer.shutdown(Shutdown::Write).expect("shutdown");
        let proven = h.rt.block_on(async {
            let (mut stream, _) = h.listener.accept().await.expect("accept");
            let deadline = tokio::time::Instant::now() + DEADLINE;
            let peer_hello = if read_first {
                let Ok(hello) = read_hello(&mut stream, DEADLINE).await else {
                    return false;
                };
                if hello_session(&hello) != Some(h.keys.session_id()) {
                    return false;
                }
                Some(hello)
            } else {
                None
            };
            let proof = Proof::Hello {
                role,
                keys: h.keys.clone(),
            };
            let started = std::time::Instant::now();
            let done = p2pnc::fuzzing::handshake(stream, peer_hello, proof, deadline).await;
            assert!(
                started.elapsed() < DEADLINE,
                "the handshake waited for its deadline"
            );
            done.is_ok()
        });
        drop(peer);
        // Proven exactly when the peer sent its genuine hello (and, to an agent, the
        // selection byte).
        let mut genuine = h.keys.hello(role.peer()).to_vec();
        if role == Role::Agent {
            genuine.push(SELECT);
        }
        assert_eq!(
            proven,
            sent.starts_with(&genuine),
            "{role:?} read_first={read_first}"
        );
    });
});
