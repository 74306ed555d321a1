//! The server's answer to `GET /v1/whoami`, as `nat-check` reads it (`whoami_addr`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use p2pnc_protocol::whoami_addr;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(addr) = whoami_addr(text) {
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n{}",
            serde_json::json!({ "addr": addr })
        );
        assert_eq!(whoami_addr(&answer).ok(), Some(addr), "{answer}");
    }
});
