//! Control messages the server receives from an agent (`AgentMsg`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use p2pnc::protocol::{self, AgentMsg, MAX_MESSAGE_BYTES};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(msg) = protocol::decode::<AgentMsg>(text) else {
        return;
    };
    assert!(text.len() <= MAX_MESSAGE_BYTES, "the size cap holds");
    let again = protocol::encode(&msg);
    if again.len() <= MAX_MESSAGE_BYTES {
        let back = protocol::decode::<AgentMsg>(&again).expect("re-encoding decodes");
        assert_eq!(back, msg, "{again}");
        assert_eq!(protocol::encode(&back), again, "encoding is stable");
    }
    // The server hands a refusal's code and text on to the client as an error message.
    if let AgentMsg::Reject { code, message, .. } = msg {
        let relayed = protocol::ServerMsg::Error { code, message };
        let text = protocol::encode(&relayed);
        if text.len() <= MAX_MESSAGE_BYTES {
            assert_eq!(
                protocol::decode::<protocol::ServerMsg>(&text).ok(),
                Some(relayed)
            );
        }
    }
});
