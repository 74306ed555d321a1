//! The line a peer writes on the server's probe port, as the server reads and parses it
//! (`protocol::parse_probe_line`), and the answer the peer parses.
#![no_main]

use std::net::SocketAddr;

use libfuzzer_sys::fuzz_target;
use p2pnc_protocol::{
    MAX_PROBE_LINE, dialback_line, parse_probe_line, probe_line, probe_line_dialback,
};

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
    if let Some(req) = parse_probe_line(line) {
        let again = if req.dialback {
            probe_line_dialback(&req.token)
        } else {
            probe_line(&req.token)
        };
        // The token is hex of either case: the line is the one a peer writes, up to that case.
        assert_eq!(
            again.trim_end(),
            line.to_ascii_lowercase(),
            "the line is the one a peer writes"
        );
        assert!(again.len() <= MAX_PROBE_LINE);
        // The dial-back names the token as the peer wrote it.
        let written = line.split(' ').nth(1).expect("a token");
        assert_eq!(req.dialback_line(), format!("p2pnc-dialback {written}\n"));
        assert_eq!(
            req.dialback_line().to_ascii_lowercase(),
            dialback_line(&req.token)
        );
    }
});
