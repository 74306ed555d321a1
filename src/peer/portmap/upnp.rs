//! UPnP Internet Gateway Device, through `igd-next`.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use igd_next::aio::tokio::Tokio;
use igd_next::{AddAnyPortError, AddPortError, PortMappingProtocol, SearchOptions};

use super::{DESCRIPTION, Handle, PortMap, Protocol, checked};

/// A UPnP Internet Gateway Device found on the LAN.
pub(super) type UpnpGateway = igd_next::aio::Gateway<Tokio>;

/// Finds a UPnP Internet Gateway Device on the LAN.
pub(super) async fn search(timeout: Duration) -> Result<UpnpGateway, String> {
    let mut opts = SearchOptions::default();
    opts.timeout = Some(timeout);
    opts.single_search_timeout = Some(timeout);
    opts.gateway_ip_version = igd_next::GatewayIpVersion::V4;
    igd_next::aio::tokio::search_gateway(opts)
        .await
        .map_err(|e| match e {
            igd_next::SearchError::NoResponseWithinTimeout => "no answer".to_string(),
            e => e.to_string(),
        })
}

/// Maps `local` on a UPnP gateway: the same external port if free, any other otherwise; a
/// permanent lease if the router offers no other (it is deleted when we stop).
pub(super) async fn map(
    gateway: UpnpGateway,
    local: SocketAddrV4,
    lease: u32,
) -> Result<PortMap, String> {
    let tcp = PortMappingProtocol::TCP;
    let to = SocketAddr::V4(local);
    let mut lease = lease;
    let mut result = gateway
        .add_port(tcp, local.port(), to, lease, DESCRIPTION)
        .await;
    if let Err(AddPortError::OnlyPermanentLeasesSupported) = result {
        lease = 0;
        result = gateway
            .add_port(tcp, local.port(), to, lease, DESCRIPTION)
            .await;
    }
    let port = match result {
        Ok(()) => local.port(),
        Err(AddPortError::PortInUse) => {
            match gateway.add_any_port(tcp, to, lease, DESCRIPTION).await {
                Ok(p) => p,
                Err(AddAnyPortError::OnlyPermanentLeasesSupported) if lease != 0 => {
                    lease = 0;
                    gateway
                        .add_any_port(tcp, to, lease, DESCRIPTION)
                        .await
                        .map_err(|e| e.to_string())?
                }
                Err(e) => return Err(e.to_string()),
            }
        }
        Err(e) => return Err(e.to_string()),
    };
    let ip = gateway
        .get_external_ip()
        .await
        .map_err(|e| format!("UPnP external address: {e}"));
    let map = PortMap {
        external: SocketAddr::new(
            ip.as_ref().copied().unwrap_or(Ipv4Addr::UNSPECIFIED.into()),
            port,
        ),
        protocol: Protocol::Upnp,
        internal_port: local.port(),
        lifetime: Duration::from_secs(u64::from(lease)),
        handle: Handle::Upnp {
            gateway: Box::new(gateway),
            local,
            lease,
        },
    };
    checked(map, ip.map(|_| ())).await
}
