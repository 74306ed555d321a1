//! Port mapping on the local router: PCP (RFC 6887), NAT-PMP (RFC 6886) and UPnP-IGD.
//!
//! A router that speaks one of them forwards a TCP port of its public address to a port of
//! this host on request, for a lease. The agent asks for its punch port: a mapped port takes
//! connections from anyone, so even an agent behind a NAT whose mapping is endpoint-dependent
//! ("symmetric") becomes reachable, and the server hands the mapped endpoint to clients as one
//! more candidate.
//!
//! PCP and NAT-PMP go through `crab_nat` (PCP first, NAT-PMP when the router answers that it only
//! speaks NAT-PMP); UPnP-IGD through `igd-next`. The UPnP search runs while PCP/NAT-PMP is being
//! tried, so a router that speaks only UPnP costs no extra wait. Every step has a timeout: on a
//! network without any of them, [`PortMap::request`] gives up within [`REQUEST_TIMEOUT`].
//! IPv4 only.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::num::NonZeroU16;
use std::time::Duration;

use crab_nat::{InternetProtocol, PortMappingOptions, PortMappingType, TimeoutConfig};
use igd_next::aio::tokio::Tokio;
use igd_next::{AddAnyPortError, AddPortError, PortMappingProtocol, SearchOptions};
use serde::Serialize;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Lease asked for; renewed at half its (granted) length.
pub const LEASE: Duration = Duration::from_secs(600);
/// Longest a whole mapping request may take (search, map, external address).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest the UPnP-IGD search (SSDP and the device's descriptions) may take.
const UPNP_SEARCH_TIMEOUT: Duration = Duration::from_millis(1000);
/// Longest a renewal may take before it counts as failed.
const RENEW_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest the deletion of a mapping may take when the agent stops.
pub const DELETE_TIMEOUT: Duration = Duration::from_millis(1500);
/// Pause before another try after a failed renewal.
const RENEW_RETRY: Duration = Duration::from_secs(30);
/// PCP and NAT-PMP: 250 ms for the first answer (RFC 6886), then twice 500 ms: 1.25 s at most.
const PMP_TIMEOUTS: TimeoutConfig = TimeoutConfig {
    initial_timeout: Duration::from_millis(250),
    max_retries: 2,
    max_retry_timeout: Some(Duration::from_millis(500)),
};
/// The port of PCP and NAT-PMP servers.
const PMP_PORT: u16 = crab_nat::GATEWAY_PORT;
/// How mappings are labelled on UPnP routers.
const DESCRIPTION: &str = "p2pnc";

type UpnpGateway = igd_next::aio::Gateway<Tokio>;

/// The protocol that made a mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Protocol {
    /// Port Control Protocol (RFC 6887).
    #[serde(rename = "pcp")]
    Pcp,
    /// NAT Port Mapping Protocol (RFC 6886).
    #[serde(rename = "natpmp")]
    NatPmp,
    /// UPnP Internet Gateway Device.
    #[serde(rename = "upnp")]
    Upnp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Pcp => "PCP",
            Protocol::NatPmp => "NAT-PMP",
            Protocol::Upnp => "UPnP-IGD",
        })
    }
}

/// The IPv4 default gateway in the text of `/proc/net/route` (the lowest metric wins).
pub fn parse_default_gateway(route_table: &str) -> Option<Ipv4Addr> {
    const RTF_UP: u32 = 0x1;
    const RTF_GATEWAY: u32 = 0x2;
    let hex = |s: &str| u32::from_str_radix(s, 16).ok();
    route_table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 8 {
                return None;
            }
            let (dest, gateway, flags) = (hex(f[1])?, hex(f[2])?, hex(f[3])?);
            let (metric, mask) = (f[6].parse::<u32>().ok()?, hex(f[7])?);
            let default =
                dest == 0 && mask == 0 && flags & (RTF_UP | RTF_GATEWAY) == RTF_UP | RTF_GATEWAY;
            // The kernel prints the address as a host-order number of network-order bytes.
            (default && gateway != 0).then(|| (metric, Ipv4Addr::from(gateway.to_ne_bytes())))
        })
        .min_by_key(|(metric, _)| *metric)
        .map(|(_, gw)| gw)
}

/// This host's IPv4 default gateway, from `/proc/net/route`.
pub fn default_gateway() -> Option<Ipv4Addr> {
    parse_default_gateway(&std::fs::read_to_string("/proc/net/route").ok()?)
}

/// Whether port mapping can matter toward a server at `server`: not when it is on this host
/// or this LAN (nothing to cross), and never toward loopback, so tests and demos on loopback
/// send nothing to the real router.
pub fn worth_trying(server: IpAddr) -> bool {
    match server {
        IpAddr::V4(v4) => {
            !(v4.is_loopback() || v4.is_private() || v4.is_link_local() || v4.is_unspecified())
        }
        IpAddr::V6(_) => false,
    }
}

/// Whether a router's external address can be reached from the internet. A private or shared
/// (RFC 6598) one means another NAT sits in front of the router: its mappings lead nowhere.
pub fn usable_external(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let shared = v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64;
            !(v4.is_unspecified()
                || v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_broadcast()
                || v4.is_multicast()
                || shared)
        }
        IpAddr::V6(_) => false,
    }
}

/// Our address toward `gateway` (the source the kernel would pick). Sends nothing.
fn local_ip_toward(gateway: Ipv4Addr) -> std::io::Result<Ipv4Addr> {
    let s = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
    s.connect((gateway, PMP_PORT))?;
    match s.local_addr()?.ip() {
        IpAddr::V4(v4) => Ok(v4),
        IpAddr::V6(_) => Err(std::io::Error::other("no IPv4 route to the gateway")),
    }
}

/// How a mapping is held on the router.
enum Handle {
    /// PCP or NAT-PMP.
    Pmp(crab_nat::PortMapping),
    /// UPnP-IGD: the gateway, our address, the lease asked for (0: permanent).
    Upnp {
        gateway: Box<UpnpGateway>,
        local: SocketAddrV4,
        lease: u32,
    },
}

/// A TCP port mapping held on the router. Keep it alive with [`PortMap::keep`]; dropping it
/// leaves the mapping until its lease runs out.
pub struct PortMap {
    /// The public endpoint that reaches [`PortMap::internal_port`] on this host.
    pub external: SocketAddr,
    /// Who made it.
    pub protocol: Protocol,
    /// The local port it forwards to.
    pub internal_port: u16,
    /// The lease granted (zero: until deleted).
    pub lifetime: Duration,
    handle: Handle,
}

impl fmt::Debug for PortMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PortMap")
            .field("external", &self.external)
            .field("protocol", &self.protocol)
            .field("internal_port", &self.internal_port)
            .field("lifetime", &self.lifetime)
            .finish_non_exhaustive()
    }
}

impl PortMap {
    /// Asks the default gateway to forward a TCP port of its public address to `port` on this
    /// host: PCP, then NAT-PMP, and UPnP-IGD if neither answered. Gives up within `timeout`
    /// (a mapping made in the last moment may then stay until its lease runs out).
    pub async fn request(port: u16, timeout: Duration) -> Result<PortMap, String> {
        let gateway = default_gateway().ok_or("no IPv4 default gateway")?;
        let local = local_ip_toward(gateway).map_err(|e| format!("gateway {gateway}: {e}"))?;
        match tokio::time::timeout(timeout, request_from(gateway, local, port)).await {
            Ok(r) => r,
            Err(_) => Err(format!(
                "no mapping from gateway {gateway} within {} ms",
                timeout.as_millis()
            )),
        }
    }

    /// When to renew, counted from the last success.
    fn renew_after(&self) -> Option<Duration> {
        (!self.lifetime.is_zero()).then(|| (self.lifetime / 2).max(Duration::from_secs(1)))
    }

    /// Renews the lease.
    async fn renew(&mut self) -> Result<(), String> {
        match &mut self.handle {
            Handle::Pmp(m) => {
                m.renew().await.map_err(|e| e.to_string())?;
                self.lifetime = Duration::from_secs(u64::from(m.lifetime()));
                let external = SocketAddr::new(self.external.ip(), m.external_port().get());
                if external != self.external {
                    tracing::warn!(
                        "the router moved the mapping from {} to {external}",
                        self.external
                    );
                    self.external = external;
                }
                Ok(())
            }
            Handle::Upnp {
                gateway,
                local,
                lease,
            } => gateway
                .add_port(
                    PortMappingProtocol::TCP,
                    self.external.port(),
                    SocketAddr::V4(*local),
                    *lease,
                    DESCRIPTION,
                )
                .await
                .map_err(|e| e.to_string()),
        }
    }

    /// Deletes the mapping on the router.
    pub async fn remove(self) -> Result<(), String> {
        match self.handle {
            Handle::Pmp(m) => m.try_drop().await.map_err(|(e, _)| e.to_string()),
            Handle::Upnp { gateway, .. } => gateway
                .remove_port(PortMappingProtocol::TCP, self.external.port())
                .await
                .map_err(|e| e.to_string()),
        }
    }

    /// Deletes the mapping within [`DELETE_TIMEOUT`], logging the outcome.
    pub async fn remove_quietly(self) {
        let what = format!("{} mapping {}", self.protocol, self.external);
        match tokio::time::timeout(DELETE_TIMEOUT, self.remove()).await {
            Ok(Ok(())) => tracing::info!("removed the {what}"),
            Ok(Err(e)) => tracing::warn!("could not remove the {what}: {e}"),
            Err(_) => tracing::warn!("could not remove the {what}: the router did not answer"),
        }
    }

    /// Keeps the mapping: a task on `tracker` renews it at half its lease until `stop` is
    /// cancelled (or the returned [`Keeper`] is released or dropped), then deletes it.
    pub fn keep(self, tracker: &TaskTracker, stop: CancellationToken) -> Keeper {
        let external = self.external;
        let done = tracker.spawn(keep(self, stop.clone()));
        Keeper {
            stop,
            done: Some(done),
            external,
        }
    }
}

/// The task of [`PortMap::keep`].
async fn keep(mut map: PortMap, stop: CancellationToken) {
    let mut wait = map.renew_after();
    loop {
        let pause = wait.unwrap_or(Duration::MAX);
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(pause.min(Duration::from_secs(86_400))) => {}
        }
        if wait.is_none() {
            continue;
        }
        wait = match tokio::time::timeout(RENEW_TIMEOUT, map.renew()).await {
            Ok(Ok(())) => {
                tracing::debug!("renewed the {} mapping {}", map.protocol, map.external);
                map.renew_after()
            }
            Ok(Err(e)) => {
                tracing::warn!(
                    "could not renew the {} mapping {}: {e}",
                    map.protocol,
                    map.external
                );
                Some(RENEW_RETRY)
            }
            Err(_) => {
                tracing::warn!(
                    "could not renew the {} mapping {}: the router did not answer",
                    map.protocol,
                    map.external
                );
                Some(RENEW_RETRY)
            }
        };
    }
    map.remove_quietly().await;
}

/// A mapping kept alive by a task. [`Keeper::release`] deletes it and waits for that;
/// dropping the keeper deletes it in the background.
pub struct Keeper {
    stop: CancellationToken,
    done: Option<JoinHandle<()>>,
    external: SocketAddr,
}

impl Keeper {
    /// The public endpoint of the mapping.
    pub fn external(&self) -> SocketAddr {
        self.external
    }

    /// Stops renewing, deletes the mapping (within [`DELETE_TIMEOUT`]) and waits for that.
    pub async fn release(mut self) {
        self.stop.cancel();
        if let Some(done) = self.done.take() {
            let _ = done.await;
        }
    }
}

impl Drop for Keeper {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// PCP/NAT-PMP and the UPnP search at once; UPnP maps only if PCP/NAT-PMP failed.
async fn request_from(gateway: Ipv4Addr, local: Ipv4Addr, port: u16) -> Result<PortMap, String> {
    let lease = LEASE.as_secs() as u32;
    let pmp = pmp_map(gateway, local, port, lease);
    let search = upnp_search(UPNP_SEARCH_TIMEOUT);
    tokio::pin!(pmp, search);
    let mut found = None;
    let pmp_failed = loop {
        tokio::select! {
            r = &mut pmp => match r {
                Ok(m) => return Ok(m),
                Err(e) => break e,
            },
            g = &mut search, if found.is_none() => found = Some(g),
        }
    };
    let found = match found {
        Some(g) => g,
        None => search.await,
    };
    let upnp_failed = match found {
        Ok(g) => match upnp_map(g, SocketAddrV4::new(local, port), lease).await {
            Ok(m) => return Ok(m),
            Err(e) => e,
        },
        Err(e) => e,
    };
    Err(format!(
        "gateway {gateway}: PCP/NAT-PMP: {pmp_failed}; UPnP-IGD: {upnp_failed}"
    ))
}

/// Maps `port` through PCP, or NAT-PMP when the router asks for it.
async fn pmp_map(
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

/// Keeps a fresh mapping only if its external address is usable; deletes it otherwise.
async fn checked(map: PortMap, ip: Result<(), String>) -> Result<PortMap, String> {
    let why = match ip {
        Err(e) => e,
        Ok(()) if usable_external(map.external.ip()) => return Ok(map),
        Ok(()) => format!(
            "the router's external address {} is not public (another NAT in front of it?)",
            map.external.ip()
        ),
    };
    map.remove_quietly().await;
    Err(why)
}

/// Finds a UPnP Internet Gateway Device on the LAN.
async fn upnp_search(timeout: Duration) -> Result<UpnpGateway, String> {
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
async fn upnp_map(
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

/// Which port mapping protocols the default gateway answered (for `nat-check`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Survey {
    /// The IPv4 default gateway asked (absent when there is none).
    pub gateway: Option<Ipv4Addr>,
    /// A UPnP Internet Gateway Device answered the search.
    pub upnp: bool,
    /// The gateway answered a NAT-PMP request.
    pub natpmp: bool,
    /// The gateway answered a PCP request.
    pub pcp: bool,
    /// The external address the router reported (NAT-PMP or UPnP-IGD), if any.
    pub external_ip: Option<IpAddr>,
}

impl Survey {
    /// The names of the protocols that answered.
    pub fn answered(&self) -> Vec<Protocol> {
        [
            (self.upnp, Protocol::Upnp),
            (self.natpmp, Protocol::NatPmp),
            (self.pcp, Protocol::Pcp),
        ]
        .into_iter()
        .filter_map(|(yes, p)| yes.then_some(p))
        .collect()
    }
}

impl fmt::Display for Survey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(gw) = self.gateway else {
            return f.write_str("no IPv4 default gateway");
        };
        let answered = self.answered();
        if answered.is_empty() {
            return write!(f, "none of UPnP-IGD, NAT-PMP, PCP answered (gateway {gw})");
        }
        let names: Vec<String> = answered.iter().map(|p| p.to_string()).collect();
        write!(f, "{} answered (gateway {gw}", names.join(", "))?;
        if let Some(ip) = self.external_ip {
            write!(f, ", external address {ip}")?;
        }
        f.write_str(")")
    }
}

/// Asks the default gateway, without mapping anything, which of UPnP-IGD, NAT-PMP and PCP it
/// speaks. All three at once: the UPnP search gets `timeout` (and its external address half a
/// second more); NAT-PMP and PCP get 250 ms and a retry after 500 ms.
pub async fn survey(timeout: Duration) -> Survey {
    let Some(gateway) = default_gateway() else {
        return Survey::default();
    };
    let local = local_ip_toward(gateway).ok();
    let upnp = async {
        let g = upnp_search(timeout).await.ok()?;
        let ip = tokio::time::timeout(Duration::from_millis(500), g.get_external_ip()).await;
        Some(ip.ok().and_then(Result::ok))
    };
    let natpmp = async {
        let config = TimeoutConfig {
            max_retries: 1,
            ..PMP_TIMEOUTS
        };
        match crab_nat::natpmp::external_address(gateway.into(), Some(config)).await {
            Ok(ip) => Some(Some(IpAddr::V4(ip))),
            // Any NAT-PMP answer counts, even a refusal; a PCP-only router answers with
            // "unsupported version".
            Err(crab_nat::natpmp::Failure::UnsupportedVersion(_)) => None,
            Err(
                crab_nat::natpmp::Failure::NotAuthorized
                | crab_nat::natpmp::Failure::NetworkFailure
                | crab_nat::natpmp::Failure::OutOfResources
                | crab_nat::natpmp::Failure::UnsupportedOpcode,
            ) => Some(None),
            Err(_) => None,
        }
    };
    let pcp = async {
        match local {
            Some(local) => pcp_announce(gateway, local).await,
            None => false,
        }
    };
    let (upnp, natpmp, pcp) = tokio::join!(upnp, natpmp, pcp);
    Survey {
        gateway: Some(gateway),
        upnp: upnp.is_some(),
        natpmp: natpmp.is_some(),
        pcp,
        external_ip: natpmp.flatten().or(upnp.flatten()),
    }
}

/// A PCP ANNOUNCE request (RFC 6887 §14.1): version 2, opcode 0, lifetime 0, our address as
/// an IPv4-mapped IPv6 address.
pub fn pcp_announce_request(client: Ipv4Addr) -> [u8; 24] {
    let mut req = [0u8; 24];
    req[0] = 2;
    req[8..24].copy_from_slice(&client.to_ipv6_mapped().octets());
    req
}

/// Whether `reply` is a PCP answer to an ANNOUNCE (version 2, response bit, opcode 0),
/// whatever its result code.
pub fn is_pcp_announce_reply(reply: &[u8]) -> bool {
    reply.len() >= 24 && reply[0] == 2 && reply[1] == 0x80
}

/// Sends PCP ANNOUNCE requests to `gateway` (250 ms, then 500 ms) and says whether one
/// was answered in PCP.
async fn pcp_announce(gateway: Ipv4Addr, local: Ipv4Addr) -> bool {
    let Ok(socket) = tokio::net::UdpSocket::bind((local, 0)).await else {
        return false;
    };
    if socket.connect((gateway, PMP_PORT)).await.is_err() {
        return false;
    }
    let req = pcp_announce_request(local);
    let mut buf = [0u8; 1100];
    for wait in [Duration::from_millis(250), Duration::from_millis(500)] {
        if socket.send(&req).await.is_err() {
            return false;
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, socket.recv(&mut buf)).await {
                Ok(Ok(n)) if is_pcp_announce_reply(&buf[..n]) => return true,
                Ok(Ok(_)) => continue, // NAT-PMP's "unsupported version", or noise
                Ok(Err(_)) => return false, // port unreachable: nothing listens
                Err(_) => break,
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_endian = "little")]
    fn default_gateway_is_the_lowest_metric_default_route() {
        let table = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                     eth0\t0001000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
                     eth1\t00000000\t0102A8C0\t0003\t0\t0\t600\t00000000\t0\t0\t0\n\
                     eth0\t00000000\t0101000A\t0003\t0\t0\t100\t00000000\t0\t0\t0\n";
        assert_eq!(
            parse_default_gateway(table),
            Some(Ipv4Addr::new(10, 0, 1, 1))
        );
        // A default route that is down, and no default route at all.
        let down = "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\n\
                    eth0\t00000000\t0101000A\t0002\t0\t0\t0\t00000000\n";
        assert_eq!(parse_default_gateway(down), None);
        let none = "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\n\
                    eth0\t0001000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\n";
        assert_eq!(parse_default_gateway(none), None);
        assert_eq!(parse_default_gateway(""), None);
        assert_eq!(parse_default_gateway("garbage\nx y z\n"), None);
    }

    #[test]
    fn only_public_external_addresses_are_usable() {
        for ok in ["198.51.100.10", "8.8.8.8", "100.128.0.1", "100.63.255.255"] {
            assert!(usable_external(ok.parse().unwrap()), "{ok}");
        }
        for bad in [
            "0.0.0.0",
            "10.1.2.3",
            "192.168.1.1",
            "172.16.0.1",
            "100.64.0.1",
            "100.127.255.254",
            "127.0.0.1",
            "169.254.1.1",
            "::1",
        ] {
            assert!(!usable_external(bad.parse().unwrap()), "{bad}");
        }
    }

    #[test]
    fn loopback_and_lan_servers_are_not_worth_a_mapping() {
        for no in ["127.0.0.1", "10.0.0.5", "192.168.1.2", "::1", "0.0.0.0"] {
            assert!(!worth_trying(no.parse().unwrap()), "{no}");
        }
        assert!(worth_trying("203.0.113.10".parse().unwrap()));
    }

    #[test]
    fn pcp_announce_is_well_formed() {
        let req = pcp_announce_request(Ipv4Addr::new(10, 0, 1, 2));
        assert_eq!(req[..8], [2, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            req[8..],
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 1, 2]
        );
        let mut reply = [0u8; 24];
        reply[0] = 2;
        reply[1] = 0x80;
        assert!(is_pcp_announce_reply(&reply));
        reply[3] = 8; // a refusal is still a PCP answer
        assert!(is_pcp_announce_reply(&reply));
        // NAT-PMP's "unsupported version" answer.
        assert!(!is_pcp_announce_reply(&[0, 0x80, 0, 1, 0, 0, 0, 0]));
        assert!(!is_pcp_announce_reply(&reply[..12]));
    }

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
        let map = pmp_map(lo, lo, 40000, 600).await.expect("mapped");
        assert_eq!(map.protocol, Protocol::NatPmp);
        assert_eq!(map.external, "198.51.100.77:40001".parse().unwrap());
        assert_eq!(map.internal_port, 40000);
        assert_eq!(map.lifetime, Duration::from_secs(2));
        let tracker = TaskTracker::new();
        let keeper = map.keep(&tracker, CancellationToken::new());
        assert_eq!(keeper.external(), "198.51.100.77:40001".parse().unwrap());
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

    #[test]
    fn survey_lists_what_answered() {
        let s = Survey {
            gateway: Some(Ipv4Addr::new(10, 0, 1, 1)),
            upnp: true,
            natpmp: false,
            pcp: true,
            external_ip: Some("198.51.100.10".parse().unwrap()),
        };
        assert_eq!(
            s.to_string(),
            "UPnP-IGD, PCP answered (gateway 10.0.1.1, external address 198.51.100.10)"
        );
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["upnp"], true);
        assert_eq!(v["natpmp"], false);
        assert_eq!(v["gateway"], "10.0.1.1");
        let none = Survey {
            gateway: Some(Ipv4Addr::new(10, 0, 1, 1)),
            ..Survey::default()
        };
        assert!(none.to_string().starts_with("none of"), "{none}");
        assert_eq!(Survey::default().to_string(), "no IPv4 default gateway");
    }
}
