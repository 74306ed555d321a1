//! Control messages the server receives from a client (`ClientToServer`), and the outcome records
//! and metrics the server makes of them.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use p2pnc::fuzzing::{Metrics, Outcome};
use p2pnc_protocol::{self as protocol, ClientToServer, MAX_MESSAGE_BYTES, Mapping, Strategy};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(msg) = protocol::decode::<ClientToServer>(text) else {
        return;
    };
    assert!(text.len() <= MAX_MESSAGE_BYTES, "the size cap holds");
    let again = protocol::encode(&msg);
    if again.len() <= MAX_MESSAGE_BYTES {
        let back = protocol::decode::<ClientToServer>(&again).expect("re-encoding decodes");
        assert_eq!(back, msg, "{again}");
        assert_eq!(protocol::encode(&back), again, "encoding is stable");
    }
    // As the server records a result.
    let ClientToServer::Result {
        outcome,
        setup_ms,
        reason,
    } = msg
    else {
        return;
    };
    let outcome = match outcome.as_str() {
        "direct" => Outcome::Direct,
        "lan" => Outcome::Lan,
        "relayed" => Outcome::Relayed,
        _ => Outcome::Failed,
    };
    let metrics = Metrics::default();
    let pair = (Mapping::EndpointIndependent, Mapping::Unknown);
    metrics.record(
        "svc",
        pair,
        Strategy::Simultaneous,
        outcome,
        setup_ms.map(Duration::from_millis),
        reason.clone(),
    );
    let recent = metrics.recent();
    assert_eq!(recent.len(), 1);
    assert_eq!(recent[0].setup_ms, setup_ms);
    assert_eq!(recent[0].reason, reason);
    let text = metrics.render(&[]);
    assert!(text.contains("p2pnc_setup_seconds_count"), "{text}");
});
