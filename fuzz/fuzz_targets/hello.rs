//! The clear heads that open every punched stream and the flags of its handshake, as an end
//! reads them (`ClientHead::parse`, `parse_agent_head`), and the agent's answer to whatever
//! follows a head (`agent_reply`) with the PSK of the stream vectors in
//! `tests/fixtures/protocol/vectors.json`.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use p2pnc_protocol::{
    AGENT_HEAD_LEN, CLIENT_HEAD_LEN, ClientHead, STREAM_MAGIC, ServiceKeys, SessionId, SessionKey,
    agent_reply, parse_agent_head,
};

/// The PSK of the vectors' stream handshakes (secret `s3cret`, id `streamserver`).
static PSK: LazyLock<[u8; 32]> = LazyLock::new(|| {
    ServiceKeys::derive("s3cret", "streamserver").psk(
        &SessionId::from_bytes([0x0f; 16]),
        &SessionKey::from_bytes([0xa5; 32]),
    )
});

fuzz_target!(|data: &[u8]| {
    if let Some(head) = data.get(..AGENT_HEAD_LEN) {
        let parsed = parse_agent_head(head.try_into().expect("AGENT_HEAD_LEN bytes"));
        if parsed.is_ok() {
            assert_eq!(&head[..8], STREAM_MAGIC);
        }
    }
    let Some(head) = data.get(..CLIENT_HEAD_LEN) else {
        return;
    };
    let Ok(head) = ClientHead::parse(head.try_into().expect("CLIENT_HEAD_LEN bytes")) else {
        return;
    };
    assert_eq!(&data[..8], STREAM_MAGIC);
    assert_eq!(head.session.as_bytes()[..], data[8..24]);
    // Whatever message 1 carries: an answer or an error, never a panic; an answer carries
    // the client's early data only when it selected the stream.
    let msg1 = &data[CLIENT_HEAD_LEN..];
    if let Ok(reply) = agent_reply(&head, msg1, &PSK, None, true) {
        assert!(reply.flags.select || reply.early.is_empty());
        assert_eq!(reply.unencrypted, reply.flags.unencrypted);
    }
});
