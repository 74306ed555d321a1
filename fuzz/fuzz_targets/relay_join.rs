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
    if let Ok((session, role)) = parse_join_query(query) {
        let again = join_query(&session, role);
        assert_eq!(parse_join_query(&again), Ok((session, role)), "{again}");
    }
});
