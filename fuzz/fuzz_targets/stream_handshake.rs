//! The stream handshake as it runs on a real TCP stream (loopback). The input is what the
//! peer sends, after one byte that picks our role. The keys are those of the vectors' stream
//! handshakes (`tests/fixtures/protocol/vectors.json`).
//!
//! A client's handshake never completes on static input (the agent's message 2 depends on the
//! client's fresh ephemeral key). An agent's completes exactly when the input is a client
//! head and message 1 that decrypt under the PSK with the selection flag set: a `select`
//! record cannot verify either, since it is sealed under keys from the agent's fresh
//! ephemeral key.
#![no_main]

use std::io::Write;
use std::net::{Shutdown, TcpStream as StdStream};
use std::sync::LazyLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use p2pnc_protocol::{
    CLIENT_HEAD_LEN, ClientHead, Role, ServiceKeys, SessionId, SessionKey, agent_reply,
};
use tokio::net::TcpListener;
use tokio::runtime::Runtime;

struct Harness {
    rt: Runtime,
    listener: TcpListener,
}

const SESSION: SessionId = SessionId::from_bytes([0x0f; 16]);

static PSK: LazyLock<[u8; 32]> = LazyLock::new(|| {
    ServiceKeys::derive("s3cret", "streamserver").psk(&SESSION, &SessionKey::from_bytes([0xa5; 32]))
});

thread_local! {
    static HARNESS: Harness = {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let listener = rt
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .expect("loopback listener");
        Harness { rt, listener }
    };
}

/// Generous: a loopback handshake takes microseconds; this only bounds a hang.
const DEADLINE: Duration = Duration::from_secs(5);

/// Whether `sent` is a client's head and message 1 for our session that verify and select.
fn selects(sent: &[u8]) -> bool {
    let Some(head) = sent.get(..CLIENT_HEAD_LEN) else {
        return false;
    };
    let Ok(head) = ClientHead::parse(head.try_into().expect("head")) else {
        return false;
    };
    let Some(msg1) = sent.get(CLIENT_HEAD_LEN..CLIENT_HEAD_LEN + head.len) else {
        return false;
    };
    head.session == SESSION
        && agent_reply(&head, msg1, &PSK, None, false).is_ok_and(|r| r.flags.select)
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, sent)) = data.split_first() else {
        return;
    };
    let role = if mode & 1 == 0 {
        Role::Agent
    } else {
        Role::Client
    };
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
            let (stream, _) = h.listener.accept().await.expect("accept");
            let deadline = tokio::time::Instant::now() + DEADLINE;
            let started = std::time::Instant::now();
            let done = p2pnc::fuzzing::handshake(stream, role, SESSION, *PSK, deadline).await;
            assert!(
                started.elapsed() < DEADLINE,
                "the handshake waited for its deadline"
            );
            done.is_ok()
        });
        drop(peer);
        let expected = role == Role::Agent && selects(sent);
        assert_eq!(proven, expected, "{role:?}");
    });
});
