//! Entry points for the fuzz targets in `fuzz/` to reach parsers that are not public API.
//! Not part of the library's interface.

use tokio::net::TcpStream;
use tokio::time::Instant;

pub use crate::server::limits::head_progress;
pub use crate::server::metrics::{Metrics, Outcome};

use crate::protocol::HELLO_LEN;
use crate::punch::{HandshakeError, Proof, Punched};

/// The stream handshake of a punch (`punch::handshake`): writes our hello, reads and checks
/// the peer's (unless `peer_hello` was read already), and as the agent the selection byte.
pub async fn handshake(
    stream: TcpStream,
    peer_hello: Option<[u8; HELLO_LEN]>,
    proof: Proof,
    deadline: Instant,
) -> Result<Punched, HandshakeError> {
    crate::punch::handshake(stream, peer_hello, proof, deadline, None).await
}
