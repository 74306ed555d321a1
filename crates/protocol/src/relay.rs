//! Relay joins: `GET /v1/relay?v=1&session=S&role=client|agent&ticket=T` with
//! `Upgrade: p2pnc-relay`, answered `101 Switching Protocols`, after which the connection carries
//! raw bytes to and from the other end of the session.

use crate::ids::{RelayTicket, SessionId};
use crate::stream::Role;

/// Path of the relay endpoint.
pub const RELAY_PATH: &str = "/v1/relay";
/// The `Upgrade` protocol token of a relay request.
pub const UPGRADE_TOKEN: &str = "p2pnc-relay";

/// The query string of a relay join (without `?`): `v=1&session=S&role=client|agent&ticket=T`,
/// with the ticket of this end's punch order.
pub fn join_query(session: &SessionId, role: Role, ticket: &RelayTicket) -> String {
    format!(
        "v=1&session={session}&role={}&ticket={}",
        role.as_str(),
        ticket.to_hex()
    )
}

/// The whole request head of a relay join to the server at `authority` (`HOST:PORT`).
pub fn join_request(
    session: &SessionId,
    role: Role,
    ticket: &RelayTicket,
    authority: &str,
) -> String {
    format!(
        "GET {RELAY_PATH}?{} HTTP/1.1\r\nHost: {authority}\r\n\
         Connection: Upgrade\r\nUpgrade: {UPGRADE_TOKEN}\r\n\r\n",
        join_query(session, role, ticket)
    )
}

/// A relay join as the server read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinQuery {
    /// The session to join.
    pub session: SessionId,
    /// Which end joins.
    pub role: Role,
    /// The ticket it presents; `None` when absent or not 16 bytes of hex (a join the server
    /// refuses as unauthorized).
    pub ticket: Option<RelayTicket>,
}

/// Why a relay join query cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JoinQueryError {
    /// `v=1`, the session or a valid role is missing.
    #[error("relay needs v=1, session, role=client|agent and ticket")]
    Malformed,
    /// The session is not a session id, so it names no live session.
    #[error("no such live session")]
    UnknownSession,
}

/// Parses the query string of a relay join: the session, the role and the ticket.
pub fn parse_join_query(query: &str) -> Result<JoinQuery, JoinQueryError> {
    let (mut session, mut role, mut v, mut ticket) = (None, None, None, None);
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some(("session", s)) => session = Some(s),
            Some(("role", "client")) => role = Some(Role::Client),
            Some(("role", "agent")) => role = Some(Role::Agent),
            Some(("ticket", t)) => ticket = Some(t),
            Some(("v", x)) => v = Some(x),
            _ => {}
        }
    }
    match (session, role, v) {
        (Some(session), Some(role), Some("1")) => Ok(JoinQuery {
            session: session
                .parse()
                .map_err(|_| JoinQueryError::UnknownSession)?,
            role,
            ticket: ticket.and_then(|t| t.parse().ok()),
        }),
        _ => Err(JoinQueryError::Malformed),
    }
}

/// The server refused a relay join: its status line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("relay refused: {status}")]
pub struct JoinRefused {
    /// The answer's status line.
    pub status: String,
}

/// Checks the server's answer head to a relay join: only `101 Switching Protocols` lets the
/// stream through.
pub fn check_join_answer(head: &[u8]) -> Result<(), JoinRefused> {
    let head = String::from_utf8_lossy(head);
    let status = head.lines().next().unwrap_or("");
    if status.starts_with("HTTP/1.1 101") {
        Ok(())
    } else {
        Err(JoinRefused {
            status: status.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_queries_round_trip_and_refuse_what_names_no_session() {
        let s = SessionId::from_bytes([0x0f; 16]);
        let t = RelayTicket::from_bytes([0xa1; 16]);
        let q = join_query(&s, Role::Agent, &t);
        assert_eq!(
            q,
            format!(
                "v=1&session={}&role=agent&ticket={}",
                "0f".repeat(16),
                "a1".repeat(16)
            )
        );
        let want = JoinQuery {
            session: s,
            role: Role::Agent,
            ticket: Some(t),
        };
        assert_eq!(parse_join_query(&q), Ok(want.clone()));
        // A missing or malformed ticket parses, as no ticket: the server refuses it.
        for bad in [
            "",
            "&ticket=",
            "&ticket=zz",
            &format!("&ticket={}", "a1".repeat(17)),
        ] {
            let q = format!("v=1&session={}&role=agent{bad}", "0f".repeat(16));
            let got = parse_join_query(&q).unwrap();
            assert_eq!(got.ticket, None, "{q}");
        }
        assert_eq!(
            parse_join_query("v=1&session=x&role=client"),
            Err(JoinQueryError::UnknownSession)
        );
        for bad in ["", "v=2&session=x&role=client", "v=1&session=x&role=both"] {
            assert_eq!(
                parse_join_query(bad),
                Err(JoinQueryError::Malformed),
                "{bad}"
            );
        }
        let req = join_request(&s, Role::Client, &t, "h:1");
        assert!(req.starts_with("GET /v1/relay?v=1&session="), "{req}");
        assert!(
            req.contains(&format!("&ticket={}", "a1".repeat(16))),
            "{req}"
        );
        assert!(req.ends_with("Upgrade: p2pnc-relay\r\n\r\n"), "{req}");
    }

    #[test]
    fn only_a_101_lets_the_stream_through() {
        assert!(check_join_answer(b"HTTP/1.1 101 Switching Protocols\r\n\r\n").is_ok());
        let err = check_join_answer(b"HTTP/1.1 404 Not Found\r\n\r\n").unwrap_err();
        assert_eq!(err.to_string(), "relay refused: HTTP/1.1 404 Not Found");
    }
}
