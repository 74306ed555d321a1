//! The peer's side of the relay: joining `GET /v1/relay` on the server (see `server::relay`).

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::control::ServerUrl;
use crate::defaults::SERVER_TIMEOUT;
use crate::protocol::{self, RelayTicket, Role, SessionId};

/// Longest HTTP response head accepted when joining.
const MAX_HEAD: usize = 4096;

/// Why joining the relay failed.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The server answered with something other than `101 Switching Protocols`.
    #[error(transparent)]
    Refused(#[from] protocol::JoinRefused),
    /// The server's answer head did not end within 4 KiB.
    #[error("relay answer head too long")]
    HeadTooLong,
    /// No answer within [`SERVER_TIMEOUT`].
    #[error("relay join timed out")]
    TimedOut,
    /// Connecting, writing or reading failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Joins the relay of `session` as `role` with the ticket of its punch order; returns the raw
/// stream to the other end.
pub async fn join(
    server: &ServerUrl,
    server_addr: SocketAddr,
    session: &SessionId,
    role: Role,
    ticket: &RelayTicket,
) -> Result<TcpStream, RelayError> {
    let work = async {
        let mut tcp = TcpStream::connect(server_addr).await?;
        tcp.set_nodelay(true)?;
        let request = protocol::join_request(session, role, ticket, &server.authority());
        tcp.write_all(request.as_bytes()).await?;
        // Read the head byte by byte: the peer's bytes may follow it at once.
        let mut head = Vec::with_capacity(256);
        while !head.ends_with(b"\r\n\r\n") {
            if head.len() >= MAX_HEAD {
                return Err(RelayError::HeadTooLong);
            }
            head.push(tcp.read_u8().await?);
        }
        protocol::check_join_answer(&head)?;
        Ok(tcp)
    };
    match tokio::time::timeout(SERVER_TIMEOUT, work).await {
        Ok(r) => r,
        Err(_) => Err(RelayError::TimedOut),
    }
}
