//! The JSON body of an HTTP refusal (`ErrorBody`), as a client reads it from a failed upgrade,
//! and the library error it becomes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use p2pnc_protocol::ErrorBody;

fuzz_target!(|data: &[u8]| {
    let Ok(body) = serde_json::from_slice::<ErrorBody>(data) else {
        return;
    };
    let again = serde_json::to_string(&body).expect("serialises");
    let back: ErrorBody = serde_json::from_str(&again).expect("re-encoding decodes");
    assert_eq!(back, body, "{again}");
    let status = body.error.http_status();
    assert!((400..600).contains(&status), "{status}");
    let err = p2pnc::fuzzing::server_error(body.error, body.message.clone(), "svc");
    assert!(!err.to_string().is_empty());
});
