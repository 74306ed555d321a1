//! The query string of `GET /v1/expose`, as the server parses it (`ExposeQuery::parse`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use p2pnc_protocol::{ErrorCode, ExposeQuery, MAX_PRIVATE_CANDIDATES, validate_id};

fn lower_hex(s: &str, bytes: usize) -> bool {
    s.len() == bytes * 2 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fuzz_target!(|data: &[u8]| {
    let Ok(query) = std::str::from_utf8(data) else {
        return;
    };
    match ExposeQuery::parse(query) {
        Ok(q) => {
            assert!(validate_id(&q.id).is_ok(), "{:?}", q.id);
            assert!(q.private.len() <= MAX_PRIVATE_CANDIDATES);
            assert!(
                q.probe.is_none_or(|p| lower_hex(&p.to_string(), 16)),
                "{q:?}"
            );
            assert!(q.verifier.is_none_or(|v| v.is_valid()), "{q:?}");
            let again = q.to_query();
            assert_eq!(ExposeQuery::parse(&again), Ok(q), "{again}");
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
