//! The hello that opens every punched stream, as an end checks it (`hello_session`,
//! `SessionKeys::verify_hello`). The keys are those of the first hello vector in
//! `tests/fixtures/protocol/vectors.json`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use p2pnc_protocol::{
    HELLO_LEN, HELLO_MAGIC, Role, SessionId, SessionKey, SessionKeys, hello_session,
};

fuzz_target!(|data: &[u8]| {
    let Some(hello) = data.get(..HELLO_LEN) else {
        return;
    };
    let hello: &[u8; HELLO_LEN] = hello.try_into().expect("HELLO_LEN bytes");
    let keys = SessionKeys::derive(
        SessionId::from_bytes([0x0f; 16]),
        &SessionKey::from_bytes([0xa5; 32]),
        Some("pw"),
    );
    match hello_session(hello) {
        Some(id) => {
            assert_eq!(&hello[..8], HELLO_MAGIC);
            assert_eq!(id.as_bytes()[..], hello[8..24]);
        }
        None => assert_ne!(&hello[..8], HELLO_MAGIC),
    }
    for role in [Role::Client, Role::Agent] {
        // Only the genuine hello of that role verifies.
        let genuine = keys.hello(role);
        assert_eq!(
            keys.verify_hello(role, hello),
            *hello == genuine,
            "{role:?}"
        );
    }
});
