//! The query string of `GET /v1/connect`, as the server parses it (`ConnectQuery::parse`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use p2pnc_protocol::{ConnectQuery, ErrorCode, MAX_PRIVATE_CANDIDATES, validate_id};

fn lower_hex(s: &str, bytes: usize) -> bool {
    s.len() == bytes * 2 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fuzz_target!(|data: &[u8]| {
    let Ok(query) = std::str::from_utf8(data) else {
        return;
    };
    match ConnectQuery::parse(query) {
        Ok(q) => {
            assert!(validate_id(&q.peer).is_ok(), "{:?}", q.peer);
            assert!(q.private.len() <= MAX_PRIVATE_CANDIDATES);
            assert!(lower_hex(&q.nonce.to_string(), 16), "{q:?}");
            assert!(q.proof.is_none_or(|p| lower_hex(&p.to_hex(), 64)), "{q:?}");
            assert!(
                q.probe.is_none_or(|p| lower_hex(&p.to_string(), 16)),
                "{q:?}"
            );
            let again = q.to_query();
            assert_eq!(ConnectQuery::parse(&again), Ok(q), "{again}");
        }
        Err(e) => {
            assert!(
                matches!(
                    e.code,
                    ErrorCode::BadRequest | ErrorCode::UnsupportedVersion
                ),
                "{e:?}"
            );
            assert!(!e.message.is_empty());
        }
    }
});
