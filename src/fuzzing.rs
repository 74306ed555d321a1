//! Entry points for the fuzz targets in `fuzz/` to reach parsers that are not public API.
//! Not part of the library's interface.

use tokio::net::TcpStream;
use tokio::time::Instant;

pub use crate::peer::control::server_error;
pub use crate::peer::portmap::{is_pcp_announce_reply, parse_default_gateway};
pub use crate::peer::punch::{HandshakeError, Proof, PunchOptions, read_hello};
pub use crate::server::limits::head_progress;
pub use crate::server::metrics::{Metrics, Outcome};

use crate::peer::punch::{self, ByFamily, Endpoint, PunchPlan};
use crate::protocol::{HELLO_LEN, PunchOrder, Role};
use crate::{EarlyData, ServerUrl};

/// The stream handshake of a punch: writes our hello, reads and checks the peer's (unless
/// `peer_hello` was read already), and as the agent the selection byte. True when the stream
/// is proven.
pub async fn handshake(
    stream: TcpStream,
    peer_hello: Option<[u8; HELLO_LEN]>,
    proof: Proof,
    deadline: Instant,
) -> Result<(), HandshakeError> {
    punch::handshake(stream, peer_hello, proof, deadline, None)
        .await
        .map(|_| ())
}

/// What the punch engine would do with `order` as `role`, from the punch port 4000 (IPv4 and
/// IPv6) toward a server at 203.0.113.10:50300, with early data for a client.
pub fn plan(order: &PunchOrder, role: Role, options: &PunchOptions) -> Plan {
    let at = Endpoint {
        locals: ByFamily {
            v4: Some("0.0.0.0:4000".parse().expect("an address")),
            v6: Some("[2001:db8::4]:4000".parse().expect("an address")),
        },
        depths: ByFamily::default(),
        server: ServerUrl::parse("http://203.0.113.10:50300").expect("a URL"),
        server_addr: "203.0.113.10:50300".parse().expect("an address"),
    };
    Plan(punch::plan(
        order,
        role,
        Some("pw"),
        &at,
        options,
        Some(EarlyData::new()),
    ))
}

/// A punch plan, as far as the fuzz targets check it.
pub struct Plan(PunchPlan);

impl Plan {
    /// The candidates it dials.
    pub fn targets(&self) -> &[std::net::SocketAddr] {
        &self.0.targets
    }

    /// The endpoints early data may go to, when there is early data.
    pub fn early_targets(&self) -> Option<&[std::net::SocketAddr]> {
        self.0.early.as_ref().map(|(_, t)| t.as_slice())
    }

    /// When the relay is joined, if it is.
    pub fn relay_after(&self) -> Option<std::time::Duration> {
        self.0.relay.as_ref().map(|r| r.after)
    }

    /// When a punch started at `started` gives up.
    pub fn deadline(&self, started: Instant) -> Instant {
        self.0.deadline(started)
    }
}
