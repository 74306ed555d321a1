//! Which private candidates may be forwarded to the other end of a session: addresses that can
//! only lie inside the peer's own network, so that an order cannot aim anyone's SYNs at a host
//! on the internet.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Whether `candidate` may stand as a private candidate of a peer whose connection came from
/// `seen_from`:
/// - IPv4 private (RFC 1918), shared (RFC 6598, 100.64.0.0/10, behind a carrier-grade NAT) and
///   link-local (169.254.0.0/16) addresses;
/// - IPv6 unique local (fc00::/7) and link-local (fe80::/10) addresses;
/// - an IPv6 global address inside the /64 of `seen_from` (the peer's own prefix);
/// - loopback, only for a peer that itself came from loopback (one host).
///
/// Never port 0, unspecified, multicast or broadcast addresses, nor any other public address.
pub fn private_candidate_allowed(candidate: SocketAddr, seen_from: IpAddr) -> bool {
    if candidate.port() == 0 {
        return false;
    }
    match (unmap(candidate.ip()), unmap(seen_from)) {
        (IpAddr::V4(c), seen) => v4_private(c) || (c.is_loopback() && seen.is_loopback()),
        (IpAddr::V6(c), seen) => {
            let seg = c.segments();
            let ula = seg[0] & 0xfe00 == 0xfc00;
            let link_local = seg[0] & 0xffc0 == 0xfe80;
            let same_64 = match seen {
                IpAddr::V6(s) => global_v6(c) && s.segments()[..4] == seg[..4],
                IpAddr::V4(_) => false,
            };
            ula || link_local || same_64 || (c.is_loopback() && seen.is_loopback())
        }
    }
}

/// The candidates of `list` that [`private_candidate_allowed`] lets through, in order.
pub fn filter_private_candidates(list: &[SocketAddr], seen_from: IpAddr) -> Vec<SocketAddr> {
    list.iter()
        .copied()
        .filter(|c| private_candidate_allowed(*c, seen_from))
        .collect()
}

/// An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) as the IPv4 address it is.
fn unmap(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn v4_private(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_private() || ip.is_link_local() || (a == 100 && (64..128).contains(&b))
}

/// A global unicast IPv6 address (2000::/3).
fn global_v6(ip: Ipv6Addr) -> bool {
    ip.segments()[0] & 0xe000 == 0x2000
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(candidate: &str, seen: &str) -> bool {
        private_candidate_allowed(candidate.parse().unwrap(), seen.parse().unwrap())
    }

    #[test]
    fn only_addresses_inside_the_peers_network_pass() {
        let v4 = "198.51.100.7";
        for ok in [
            "10.0.0.2:4000",
            "172.16.5.1:1",
            "192.168.1.9:2",
            "100.64.2.2:3",
            "100.127.255.1:4",
            "169.254.3.3:5",
            "[fd00::1]:6",
            "[fe80::1]:7",
        ] {
            assert!(allowed(ok, v4), "{ok}");
        }
        for no in [
            "8.8.8.8:53",
            "203.0.113.9:80",
            "100.128.0.1:1",
            "172.32.0.1:1",
            "0.0.0.0:1",
            "255.255.255.255:1",
            "224.0.0.1:1",
            "10.0.0.2:0",
            "127.0.0.1:1",
            "[2001:db8::1]:1",
            "[ff02::1]:1",
            "[::]:1",
        ] {
            assert!(!allowed(no, v4), "{no}");
        }
    }

    #[test]
    fn a_global_ipv6_address_passes_only_inside_the_peers_own_64() {
        let seen = "2001:db8:1:2::99";
        assert!(allowed("[2001:db8:1:2::5]:1", seen));
        assert!(allowed("[2001:db8:1:2:aaaa:bbbb:cccc:dddd]:1", seen));
        assert!(!allowed("[2001:db8:1:3::5]:1", seen), "another /64");
        assert!(!allowed("[2001:db8:1:2::5]:1", "198.51.100.7"));
        assert!(allowed("[::ffff:10.0.0.1]:1", seen), "IPv4-mapped private");
        assert!(!allowed("[::ffff:8.8.8.8]:1", seen), "IPv4-mapped public");
    }

    #[test]
    fn loopback_only_between_peers_on_one_host() {
        assert!(allowed("127.0.0.1:5", "127.0.0.1"));
        assert!(allowed("[::1]:5", "::1"));
        assert!(!allowed("127.0.0.1:5", "198.51.100.7"));
        let list: Vec<SocketAddr> = ["8.8.8.8:53", "10.0.0.1:5", "127.0.0.1:6"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        assert_eq!(
            filter_private_candidates(&list, "198.51.100.7".parse().unwrap()),
            vec![list[1]]
        );
    }
}
