//! Server URLs (`ServerUrl::parse`): what is accepted must print as a URL that parses back to
//! the same server.
#![no_main]

use libfuzzer_sys::fuzz_target;
use p2pnc::ServerUrl;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match ServerUrl::parse(text) {
        Ok(url) => {
            assert!(!url.host.is_empty());
            assert_ne!(url.port, 0);
            let shown = url.to_string();
            match ServerUrl::parse(&shown) {
                Ok(back) => assert_eq!(back, url, "{text:?} shown as {shown:?}"),
                Err(e) => panic!("{text:?} shown as {shown:?}, which does not parse: {e}"),
            }
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
});
