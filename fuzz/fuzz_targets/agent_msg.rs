//! Control messages the server receives from an agent (`AgentToServer`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use p2pnc_protocol::{self as protocol, AgentToServer, MAX_MESSAGE_BYTES};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(msg) = protocol::decode::<AgentToServer>(text) else {
        return;
    };
    assert!(text.len() <= MAX_MESSAGE_BYTES, "the size cap holds");
    let again = protocol::encode(&msg);
    if again.len() <= MAX_MESSAGE_BYTES {
        let back = protocol::decode::<AgentToServer>(&again).expect("re-encoding decodes");
        assert_eq!(back, msg, "{again}");
        assert_eq!(protocol::encode(&back), again, "encoding is stable");
    }
    // The server hands a refusal's code and text on to the client as an error message.
    if let AgentToServer::Reject { code, message, .. } = msg {
        let relayed = protocol::ServerToClient::Error { code, message };
        let text = protocol::encode(&relayed);
        if text.len() <= MAX_MESSAGE_BYTES {
            assert_eq!(
                protocol::decode::<protocol::ServerToClient>(&text).ok(),
                Some(relayed)
            );
        }
    }
});
