//! PCP (RFC 6887) and NAT-PMP (RFC 6886), through `crab_nat`: PCP first, NAT-PMP when the
//! router answers that it only speaks NAT-PMP.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU16;
use std::time::Duration;

use crab_nat::{InternetProtocol, PortMappingOptions, PortMappingType, TimeoutConfig};

use super::{Handle, PortMap, Protocol, checked};

/// PCP and NAT-PMP: 250 ms for the first answer (RFC 6886), then twice 500 ms: 1.25 s at most.
pub(super) const PMP_TIMEOUTS: TimeoutConfig = TimeoutConfig {
    initial_timeout: Duration::from_millis(250),
    max_retries: 2,
    max_retry_timeout: Some(Duration::from_millis(500)),
};
/// The port of PCP and NAT-PMP servers.
pub(super) const PMP_PORT: u16 = crab_nat::GATEWAY_PORT;

/// Maps `port` through PCP, or NAT-PMP when the router asks for it.
pub(super) async fn map(
    gateway: Ipv4Addr,
    client: Ipv4Addr,
    port: u16,
    lease: u32,
) -> Result<PortMap, String> {
    let internal = NonZeroU16::new(port).ok_or("port 0 cannot be mapped")?;
    let options = PortMappingOptions {
        external_port: Some(internal),
        lifetime_seconds: Some(lease),
        timeout_config: Some(PMP_TIMEOUTS),
    };
    let m = crab_nat::PortMapping::new(
        gateway.into(),
        client.into(),
        InternetProtocol::Tcp,
        internal,
        options,
    )
    .await
    .map_err(|e| pmp_error(&e.to_string()))?;
    let (protocol, ip) = match m.mapping_type() {
        PortMappingType::Pcp { external_ip, .. } => (Protocol::Pcp, Ok(external_ip)),
        PortMappingType::NatPmp => (
            Protocol::NatPmp,
            crab_nat::natpmp::external_address(gateway.into(), Some(PMP_TIMEOUTS))
                .await
                .map(IpAddr::V4)
                .map_err(|e| format!("NAT-PMP external address: {e}")),
        ),
    };
    let map = PortMap {
        external: SocketAddr::new(
            ip.as_ref().copied().unwrap_or(Ipv4Addr::UNSPECIFIED.into()),
            m.external_port().get(),
        ),
        protocol,
        internal_port: port,
        lifetime: Duration::from_secs(u64::from(m.lifetime())),
        handle: Handle::Pmp(m),
    };
    checked(map, ip.map(|_| ())).await
}

/// A shorter word for the usual failures.
fn pmp_error(e: &str) -> String {
    if e.contains("within the timeout") {
        "no answer".into()
    } else if e.contains("Connection refused") {
        "not offered (port unreachable)".into()
    } else {
        e.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_util::sync::CancellationToken;
    use tokio_util::task::TaskTracker;

    /// A NAT-PMP-only gateway on 127.0.0.1:5351 (the port is fixed by the protocol): answers
    /// PCP with "unsupported version", maps TCP port P to P + 1 for at most 2 s, and records
    /// (opcode, lifetime) of every request.
    async fn fake_natpmp_gateway() -> Option<(
        std::sync::Arc<std::sync::Mutex<Vec<(u8, u32)>>>,
        tokio::task::JoinHandle<()>,
    )> {
        let sock = tokio::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, PMP_PORT))
            .await
            .ok()?;
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = log.clone();
        let task = tokio::spawn(async move {
            let mut buf = [0u8; 1100];
            while let Ok((n, from)) = sock.recv_from(&mut buf).await {
                let req = &buf[..n];
                let reply: Vec<u8> = match req {
                    [2, ..] => {
                        seen.lock().unwrap().push((0xff, 0));
                        vec![0, 0x80, 0, 1, 0, 0, 0, 9]
                    }
                    [0, 0] => {
                        seen.lock().unwrap().push((0, 0));
                        vec![0, 0x80, 0, 0, 0, 0, 0, 9, 198, 51, 100, 77]
                    }
                    [0, 2, _, _, i0, i1, _, _, l0, l1, l2, l3] => {
                        let lifetime = u32::from_be_bytes([*l0, *l1, *l2, *l3]);
                        seen.lock().unwrap().push((2, lifetime));
                        let internal = u16::from_be_bytes([*i0, *i1]);
                        let (external, granted) = if lifetime == 0 {
                            (0, 0)
                        } else {
                            (internal + 1, lifetime.min(2))
                        };
                        let mut r = vec![0, 0x82, 0, 0, 0, 0, 0, 9];
                        r.extend_from_slice(&internal.to_be_bytes());
                        r.extend_from_slice(&external.to_be_bytes());
                        r.extend_from_slice(&granted.to_be_bytes());
                        r
                    }
                    _ => continue,
                };
                let _ = sock.send_to(&reply, from).await;
            }
        });
        Some((log, task))
    }

    #[tokio::test]
    async fn a_natpmp_mapping_is_renewed_at_half_life_and_deleted_on_release() {
        let Some((log, gateway)) = fake_natpmp_gateway().await else {
            eprintln!("skipped: 127.0.0.1:{PMP_PORT} is taken");
            return;
        };
        let lo = Ipv4Addr::LOCALHOST;
        let map = map(lo, lo, 40000, 600).await.expect("mapped");
        assert_eq!(map.protocol, Protocol::NatPmp);
        assert_eq!(map.external, "198.51.100.77:40001".parse().unwrap());
        assert_eq!(map.internal_port, 40000);
        assert_eq!(map.lifetime, Duration::from_secs(2));
        let tracker = TaskTracker::new();
        let keeper = map.keep(&tracker, CancellationToken::new());
        // Granted 2 s: renewed after 1 s.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        keeper.release().await;
        tracker.close();
        tracker.wait().await;
        let requests = log.lock().unwrap().clone();
        gateway.abort();
        // PCP first (refused), the mapping, the external address, one renewal, the deletion.
        assert_eq!(
            requests,
            vec![(0xff, 0), (2, 600), (0, 0), (2, 2), (2, 0)],
            "requests seen by the gateway"
        );
    }
}
