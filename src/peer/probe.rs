//! The peer's side of the NAT probe: from the punch port to the server's probe port (see
//! `server::probe`), reading back the public endpoint the probe port saw.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::net;
use crate::protocol::{self, MAX_PROBE_LINE, ProbeToken};

/// Time a probe gets to connect, send its line and be answered.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Sends a probe from the shared local address `local` to the server's probe port and returns
/// the public endpoint the server saw.
pub async fn probe(
    local: SocketAddr,
    probe: SocketAddr,
    token: &ProbeToken,
) -> std::io::Result<SocketAddr> {
    send_probe(local, probe, &protocol::probe_line(token)).await
}

/// Like [`probe`], and asks the server to dial back to the endpoint it saw.
pub async fn probe_with_dialback(
    local: SocketAddr,
    probe: SocketAddr,
    token: &ProbeToken,
) -> std::io::Result<SocketAddr> {
    send_probe(local, probe, &protocol::probe_line_dialback(token)).await
}

async fn send_probe(
    local: SocketAddr,
    probe: SocketAddr,
    line: &str,
) -> std::io::Result<SocketAddr> {
    let work = async {
        let mut stream = net::connect_from(local, probe, None, PROBE_TIMEOUT).await?;
        stream.write_all(line.as_bytes()).await?;
        let mut reply = String::new();
        (&mut stream)
            .take(MAX_PROBE_LINE as u64)
            .read_to_string(&mut reply)
            .await?;
        reply.trim_end().parse::<SocketAddr>().map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("probe answered {:?}", reply.trim_end()),
            )
        })
    };
    match tokio::time::timeout(PROBE_TIMEOUT, work).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "probe timed out",
        )),
    }
}
