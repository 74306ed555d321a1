//! The NAT probe port and `GET /v1/whoami`: how a peer learns the public endpoints of its
//! punch port toward two destinations (the server's control port and its probe port).

use std::net::SocketAddr;

use crate::ids::ProbeToken;

/// Longest probe line accepted, in bytes.
pub const MAX_PROBE_LINE: usize = 64;

/// The probe port that goes with a server's control port, by convention: the control port + 1.
pub fn probe_addr(control: SocketAddr) -> SocketAddr {
    SocketAddr::new(control.ip(), control.port().wrapping_add(1))
}

/// The line a peer writes on the server's probe port: `p2pnc-probe <32 hex>\n`; the server
/// answers with the peer's public endpoint as it sees it, `IP:PORT\n`, and closes.
pub fn probe_line(token: &ProbeToken) -> String {
    format!("p2pnc-probe {token}\n")
}

/// A probe line that also asks the server to dial back to the public endpoint it saw, from
/// another port: `p2pnc-probe <32 hex> dialback\n`. The server's connection writes
/// `p2pnc-dialback <32 hex>\n`. Whether it gets through tells the NAT's filtering.
pub fn probe_line_dialback(token: &ProbeToken) -> String {
    format!("p2pnc-probe {token} dialback\n")
}

/// The line the server's dial-back writes for a probe with `token`.
pub fn dialback_line(token: &ProbeToken) -> String {
    format!("p2pnc-dialback {token}\n")
}

/// A probe line as the server read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeRequest<'a> {
    /// The probe's token.
    pub token: ProbeToken,
    /// Whether the peer asked for a dial-back.
    pub dialback: bool,
    /// The token's hex as the peer wrote it (either case).
    written: &'a str,
}

impl ProbeRequest<'_> {
    /// The dial-back line, naming the token exactly as the peer wrote it.
    pub fn dialback_line(&self) -> String {
        format!("p2pnc-dialback {}\n", self.written)
    }
}

/// Parses a probe line (without its newline).
pub fn parse_probe_line(line: &str) -> Option<ProbeRequest<'_>> {
    let rest = line.strip_prefix("p2pnc-probe ")?;
    let (written, dialback) = match rest.split_once(' ') {
        Some((t, "dialback")) => (t, true),
        Some(_) => return None,
        None => (rest, false),
    };
    let token = written.parse().ok()?;
    Some(ProbeRequest {
        token,
        dialback,
        written,
    })
}

/// An answer to `GET /v1/whoami` without the caller's address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WhoamiError {
    /// The body is not JSON.
    #[error("{0}")]
    Json(String),
    /// The body has no `addr` endpoint.
    #[error("no addr")]
    NoAddr,
}

/// The address in a whole HTTP answer to `GET /v1/whoami` (`{"addr": "IP:PORT"}`).
pub fn whoami_addr(response: &str) -> Result<SocketAddr, WhoamiError> {
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("");
    let v: serde_json::Value =
        serde_json::from_str(body).map_err(|e| WhoamiError::Json(e.to_string()))?;
    v["addr"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .ok_or(WhoamiError::NoAddr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_lines_round_trip() {
        let token = ProbeToken::from_bytes([0xab; 16]);
        let line = probe_line(&token);
        let parsed = parse_probe_line(line.trim_end()).unwrap();
        assert_eq!((parsed.token, parsed.dialback), (token, false));
        let line = probe_line_dialback(&token);
        let parsed = parse_probe_line(line.trim_end()).unwrap();
        assert_eq!((parsed.token, parsed.dialback), (token, true));
        assert_eq!(parsed.dialback_line(), dialback_line(&token));
        let hex = token.to_hex();
        assert_eq!(parse_probe_line(&format!("p2pnc-probe {hex} x")), None);
        assert_eq!(parse_probe_line("p2pnc-probe short"), None);
        assert_eq!(parse_probe_line("GET / HTTP/1.1"), None);
        // A token in upper case is the same token, echoed as written.
        let line = format!("p2pnc-probe {} dialback", "AB".repeat(16));
        let upper = parse_probe_line(&line).unwrap();
        assert_eq!(upper.token, token);
        assert_eq!(
            upper.dialback_line(),
            format!("p2pnc-dialback {}\n", "AB".repeat(16))
        );
    }

    #[test]
    fn the_probe_port_is_the_control_port_plus_one() {
        let control: SocketAddr = "[2001:db8::1]:50300".parse().unwrap();
        assert_eq!(probe_addr(control), "[2001:db8::1]:50301".parse().unwrap());
    }

    #[test]
    fn whoami_answers_name_the_caller() {
        let ok = "HTTP/1.1 200 OK\r\n\r\n{\"addr\":\"198.51.100.2:4000\"}";
        assert_eq!(whoami_addr(ok), Ok("198.51.100.2:4000".parse().unwrap()));
        assert_eq!(
            whoami_addr("HTTP/1.1 200 OK\r\n\r\n{}"),
            Err(WhoamiError::NoAddr)
        );
        assert!(matches!(
            whoami_addr("HTTP/1.1 200 OK\r\n\r\nx"),
            Err(WhoamiError::Json(_))
        ));
    }
}
