//! Entry points for the integration tests and benchmarks to reach what is not public API: the
//! control WebSocket and the relay join as a peer makes them, and the open-file limit. Not
//! part of the library's interface.

pub use crate::net::raise_fd_limit_to;
pub use crate::peer::control::{ControlSocket, recv};

/// Opens a control WebSocket as a peer does with one server (each step within
/// [`crate::defaults::SERVER_TIMEOUT`]).
pub async fn open(
    server: &crate::ServerUrl,
    server_addr: std::net::SocketAddr,
    local: std::net::SocketAddr,
    path: &str,
    query: &str,
    token: Option<&str>,
) -> Result<(ControlSocket, std::net::SocketAddr), crate::Error> {
    let patience = crate::defaults::SERVER_TIMEOUT;
    crate::peer::control::open(server, server_addr, local, path, query, token, patience).await
}
pub use crate::peer::relay::{RelayError, join};
