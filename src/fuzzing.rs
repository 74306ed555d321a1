//! Entry points for the fuzz targets in `fuzz/` to reach parsers that are not public API.
//! Not part of the library's interface.

use tokio::net::TcpStream;
use tokio::time::Instant;

pub use crate::peer::control::server_error;
pub use crate::peer::portmap::{is_pcp_announce_reply, parse_default_gateway};
pub use crate::peer::punch::{HandshakeError, PunchOptions, read_head};
pub use crate::server::limits::head_progress;
pub use crate::server::metrics::{Metrics, Outcome};

use crate::peer::punch::{self, ByFamily, Endpoint, Proof, PunchPlan, StreamKeys, StreamSettings};
use crate::protocol::{PunchOrder, Role, ServiceKeys, SessionId};
use crate::{EarlyData, ServerUrl};

/// The stream handshake of a punch as `role` in `session` keyed with `psk`: the client's
/// message 1 out and the agent's message 2 in, or as the agent message 1 in, message 2 out and
/// the client's selection. Ok when the stream is proven.
pub async fn handshake(
    stream: TcpStream,
    role: Role,
    session: SessionId,
    psk: [u8; 32],
    deadline: Instant,
) -> Result<(), HandshakeError> {
    let keys = StreamKeys {
        role,
        session,
        psk,
        pin: None,
        static_key: None,
        unencrypted: false,
        warm: false,
    };
    punch::handshake(stream, None, Proof::Noise(Box::new(keys)), deadline, None)
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
    let stream = StreamSettings {
        keys: Some(ServiceKeys::derive("pw", "svc")),
        ..Default::default()
    };
    Plan(punch::plan(
        order,
        role,
        &stream,
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
