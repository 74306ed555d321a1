//! The local router as this host sees it: the default gateway, and which addresses a mapping
//! is worth asking for and can be used from.

use std::net::{IpAddr, Ipv4Addr};

use super::pmp::PMP_PORT;

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

/// This host's IPv4 default gateway, from the routing table through `netdev` (netlink on Linux
/// and Android, the routing sysctl on macOS and the BSDs, IP Helper on Windows); on Linux and
/// Android from `/proc/net/route` when that gives none (a sandbox that refuses netlink).
pub fn default_gateway() -> Option<Ipv4Addr> {
    let from_table = netdev::get_default_gateway()
        .ok()
        .and_then(|gw| first_usable_gateway(&gw.ipv4));
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let from_table = from_table
        .or_else(|| parse_default_gateway(&std::fs::read_to_string("/proc/net/route").ok()?));
    from_table
}

/// The first address of a gateway's that a request can be sent to.
fn first_usable_gateway(addrs: &[Ipv4Addr]) -> Option<Ipv4Addr> {
    addrs
        .iter()
        .copied()
        .find(|a| !(a.is_unspecified() || a.is_broadcast() || a.is_multicast()))
}

/// Whether a router's port mapping of the punch port can be used on this platform: not on
/// Windows, where the punch port does not listen (see [`crate::net::PunchPort`]), so a
/// mapping would forward connections to nothing.
pub fn mapping_reaches_punch_port() -> bool {
    crate::net::PUNCH_PORT_LISTENS
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
pub(super) fn local_ip_toward(gateway: Ipv4Addr) -> std::io::Result<Ipv4Addr> {
    let s = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
    s.connect((gateway, PMP_PORT))?;
    match s.local_addr()?.ip() {
        IpAddr::V4(v4) => Ok(v4),
        IpAddr::V6(_) => Err(std::io::Error::other("no IPv4 route to the gateway")),
    }
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
    fn a_gateway_is_its_first_unicast_address() {
        let gw = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert_eq!(
            first_usable_gateway(&[gw("0.0.0.0"), gw("192.168.1.1"), gw("10.0.0.1")]),
            Some(gw("192.168.1.1"))
        );
        assert_eq!(first_usable_gateway(&[gw("255.255.255.255")]), None);
        assert_eq!(first_usable_gateway(&[]), None);
    }

    #[test]
    fn this_host_has_the_gateway_its_routing_table_names() {
        // Whatever the machine, the crate and /proc/net/route agree where both answer.
        #[cfg(target_os = "linux")]
        if let (Ok(gw), Some(proc)) = (
            netdev::get_default_gateway(),
            std::fs::read_to_string("/proc/net/route")
                .ok()
                .and_then(|t| parse_default_gateway(&t)),
        ) {
            assert!(gw.ipv4.contains(&proc), "{:?} vs {proc}", gw.ipv4);
        }
        if let Some(gw) = default_gateway() {
            assert!(!gw.is_unspecified() && !gw.is_loopback(), "{gw}");
        }
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
}
