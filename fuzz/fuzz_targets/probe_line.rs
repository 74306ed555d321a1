//! The line a peer writes on the server's probe port, as the server reads and parses it
//! (`protocol::parse_probe_line`), and the answer the peer parses.
#![no_main]

use std::net::SocketAddr;

use libfuzzer_sys::fuzz_target;
use p2pnc::protocol::{MAX_PROBE_LINE, parse_probe_line, probe_line, probe_line_dialback};

fuzz_target!(|data: &[u8]| {
    // The peer's side: the server's answer, one `IP:PORT` line.
    if let Ok(reply) = std::str::from_utf8(data)
        && let Ok(addr) = reply.trim_end().parse::<SocketAddr>()
    {
        assert_eq!(
            format!("{addr}\n").trim_end().parse::<SocketAddr>().ok(),
            Some(addr)
        );
    }
    // The server's side: at most MAX_PROBE_LINE bytes, up to the first newline.
    let capped = &data[..data.len().min(MAX_PROBE_LINE)];
    let line = match capped.iter().position(|&b| b == b'\n') {
        Some(i) => &capped[..=i],
        None => capped,
    };
    let Ok(line) = std::str::from_utf8(line) else {
        return;
    };
    let line = line.trim_end();
    if let Some((token, dialback)) = parse_probe_line(line) {
        assert_eq!(token.len(), 32);
        assert!(token.bytes().all(|b| b.is_ascii_hexdigit()));
        let again = if dialback {
            probe_line_dialback(token)
        } else {
            probe_line(token)
        };
        assert_eq!(again.trim_end(), line, "the line is the one a peer writes");
        assert!(again.len() <= MAX_PROBE_LINE);
    }
});
