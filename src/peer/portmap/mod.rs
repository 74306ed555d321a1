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

mod gateway;
mod pmp;
mod survey;
mod upnp;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use igd_next::PortMappingProtocol;
use serde::Serialize;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use self::gateway::parse_default_gateway;
pub(crate) use self::gateway::worth_trying;
use self::gateway::{
    default_gateway, local_ip_toward, mapping_reaches_punch_port, usable_external,
};
pub(crate) use self::survey::survey;
pub use self::survey::{Survey, is_pcp_announce_reply};
use self::upnp::UpnpGateway;

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
/// How mappings are labelled on UPnP routers.
const DESCRIPTION: &str = "p2pnc";

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
    /// host: PCP, then NAT-PMP, and UPnP-IGD if neither answered; UPnP-IGD alone when no
    /// default gateway is known (its search is a multicast on the LAN, which needs none).
    /// Gives up within `timeout` (a mapping made in the last moment may then stay until its
    /// lease runs out). Asks nothing where the punch port takes no connections (Windows).
    pub async fn request(port: u16, timeout: Duration) -> Result<PortMap, String> {
        if !mapping_reaches_punch_port() {
            return Err(
                "the punch port takes no inbound connections on this platform, so a \
                        mapping to it would lead nowhere"
                    .into(),
            );
        }
        let work = async {
            match default_gateway() {
                Some(gateway) => {
                    let local =
                        local_ip_toward(gateway).map_err(|e| format!("gateway {gateway}: {e}"))?;
                    request_from(gateway, local, port).await
                }
                None => upnp_only(port)
                    .await
                    .map_err(|e| format!("no IPv4 default gateway; UPnP-IGD: {e}")),
            }
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(format!(
                "no mapping from the router within {} ms",
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
        let done = tracker.spawn(keep(self, stop.clone()));
        Keeper {
            stop,
            done: Some(done),
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
}

impl Keeper {
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
    let pmp = pmp::map(gateway, local, port, lease);
    let search = upnp::search(UPNP_SEARCH_TIMEOUT);
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
        Ok(g) => match upnp::map(g, SocketAddrV4::new(local, port), lease).await {
            Ok(m) => return Ok(m),
            Err(e) => e,
        },
        Err(e) => e,
    };
    Err(format!(
        "gateway {gateway}: PCP/NAT-PMP: {pmp_failed}; UPnP-IGD: {upnp_failed}"
    ))
}

/// UPnP-IGD alone, from the address that routes to the device the search found.
async fn upnp_only(port: u16) -> Result<PortMap, String> {
    let found = upnp::search(UPNP_SEARCH_TIMEOUT).await?;
    let IpAddr::V4(router) = found.addr.ip() else {
        return Err(format!("the device at {} is not IPv4", found.addr));
    };
    let local = local_ip_toward(router).map_err(|e| format!("device {router}: {e}"))?;
    upnp::map(
        found,
        SocketAddrV4::new(local, port),
        LEASE.as_secs() as u32,
    )
    .await
}

/// Keeps a fresh mapping only if its external address is usable; deletes it otherwise.
pub(super) async fn checked(map: PortMap, ip: Result<(), String>) -> Result<PortMap, String> {
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
