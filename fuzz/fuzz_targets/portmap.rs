//! What the port mapping code parses: the IPv4 routing table (`parse_default_gateway`) and a
//! router's UDP answer to a PCP ANNOUNCE (`is_pcp_announce_reply`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use p2pnc::fuzzing::{is_pcp_announce_reply, parse_default_gateway};

fuzz_target!(|data: &[u8]| {
    let reply = is_pcp_announce_reply(data);
    assert_eq!(reply, data.len() >= 24 && data[..2] == [2, 0x80]);
    let Ok(table) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(gw) = parse_default_gateway(table) {
        // The gateway is on one of the table's lines (after the header), as the kernel
        // prints it: a host-order number of network-order bytes.
        let hex = format!("{:08X}", u32::from_ne_bytes(gw.octets()));
        let on_a_line = table.lines().skip(1).any(|l| {
            l.split_whitespace()
                .nth(2)
                .and_then(|g| u32::from_str_radix(g, 16).ok())
                .is_some_and(|g| format!("{g:08X}") == hex)
        });
        assert!(on_a_line, "{gw} is not in the table");
    }
});
