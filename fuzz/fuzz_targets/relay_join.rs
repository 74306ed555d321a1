//! The relay join: its query string as the server parses it (`parse_join_query`) and the
//! server's answer head as the joining end checks it (`check_join_answer`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use p2pnc_protocol::{check_join_answer, join_query, parse_join_query};

fuzz_target!(|data: &[u8]| {
    // The answer head: accepted exactly when its status line is a 101.
    let accepted = check_join_answer(data).is_ok();
    assert_eq!(accepted, data.starts_with(b"HTTP/1.1 101"), "{data:?}");
    let Ok(query) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(join) = parse_join_query(query) {
        // Whatever the query, a join carries a ticket only if it wrote 16 bytes of hex.
        if let Some(ticket) = join.ticket {
            let hex = ticket.to_hex();
            assert!(query.to_ascii_lowercase().contains(&hex), "{query}");
            let again = join_query(&join.session, join.role, &ticket);
            assert_eq!(parse_join_query(&again), Ok(join), "{again}");
        }
    }
});
