//! A peer's punch ports: one per address family in which it can reach the server.
//!
//! The IPv4 port is bound to the unspecified address as ever: the kernel picks the source, and
//! the NAT maps it. The IPv6 port's outgoing sockets are bound to one chosen address: without a
//! NAT, the address a SYN leaves from is the endpoint the peer must aim at, so every socket of
//! the punch (the probe that tells the server, the SYNs that open the firewall) must leave from
//! the same one. It is the address the kernel would use toward the server, unless that is a
//! temporary privacy address (RFC 8981) and a stable one of the same /64 exists: temporary
//! addresses are deprecated within a day, which would break a long registration.
//!
//! The control connection goes over IPv4 when the host has it (its NAT mapping is the one the
//! server must see from two destinations to classify), else over IPv6; the other family is
//! learnt by one probe from its own port, named in the same request (`probe_other`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};

use tokio::sync::watch;

use super::control::ServerUrl;
use super::nat_depth::{self, NatDepth};
use super::punch::{ByFamily, Endpoint};
use crate::protocol::MAX_PRIVATE_CANDIDATES;
use crate::{Error, net};

/// `IFA_F_TEMPORARY`, `IFA_F_DADFAILED`, `IFA_F_DEPRECATED` and `IFA_F_TENTATIVE` of
/// `<linux/if_addr.h>`, as `/proc/net/if_inet6` shows an address's flags.
const IFA_F_TEMPORARY: u32 = 0x01;
const IFA_F_DADFAILED: u32 = 0x08;
const IFA_F_DEPRECATED: u32 = 0x20;
const IFA_F_TENTATIVE: u32 = 0x40;

/// One family's punch port.
pub(crate) struct PunchPort {
    /// The listener on the port (IPv6: on every address of the family), until taken.
    listener: Option<net::PunchPort>,
    /// The address every outgoing socket of the punch binds: (unspecified or chosen IP, port).
    pub local: SocketAddr,
    /// The server's address in this family.
    pub server: SocketAddr,
    /// The NATs in front of this host toward the server, as far as a sweep has found them.
    pub depth: watch::Receiver<NatDepth>,
    /// This family's candidates to announce: LAN addresses (IPv4), global addresses (IPv6).
    candidates: Vec<SocketAddr>,
}

/// The punch ports of a peer, IPv4 and IPv6 (at least one).
pub(crate) struct PunchPorts {
    pub v4: Option<PunchPort>,
    pub v6: Option<PunchPort>,
}

impl PunchPorts {
    /// Binds a punch port (number `port` in each family; 0: any) in each family the host can
    /// reach one of `servers` in, and learns the NAT depth toward the server in each (afresh
    /// with `fresh_depth`, else reusing this process's recent sweeps).
    pub fn bind(servers: &[SocketAddr], port: u16, fresh_depth: bool) -> Result<Self, Error> {
        let v4 = servers.iter().find(|a| a.is_ipv4()).copied();
        let v6 = servers.iter().find(|a| a.is_ipv6()).copied();
        let mut last_err = None;
        let mut bind = |server: Option<SocketAddr>| -> Option<PunchPort> {
            let server = server?;
            match PunchPort::bind(server, port, fresh_depth) {
                Ok(p) => Some(p),
                Err(e) => {
                    tracing::debug!("no punch port toward {server}: {e}");
                    last_err = Some(e);
                    None
                }
            }
        };
        let ports = PunchPorts {
            v4: bind(v4),
            v6: bind(v6),
        };
        if ports.v4.is_none() && ports.v6.is_none() {
            let why = last_err.map_or("no address".into(), |e| e.to_string());
            return Err(Error::ServerUnreachable(format!(
                "no route to the server ({why})"
            )));
        }
        Ok(ports)
    }

    /// The family of the control connection and the probe that classifies the NAT: IPv4 when
    /// there is a port for it, else IPv6.
    pub fn primary(&self) -> &PunchPort {
        self.v4
            .as_ref()
            .or(self.v6.as_ref())
            .expect("at least one punch port")
    }

    /// The other family's port, if there is one.
    pub fn other(&self) -> Option<&PunchPort> {
        self.v4.as_ref().and(self.v6.as_ref())
    }

    /// Every candidate to announce (at most [`MAX_PRIVATE_CANDIDATES`]), IPv4 first.
    pub fn candidates(&self) -> Vec<SocketAddr> {
        let mut out: Vec<SocketAddr> = self
            .v4
            .iter()
            .chain(self.v6.iter())
            .flat_map(|p| p.candidates.iter().copied())
            .collect();
        out.truncate(MAX_PRIVATE_CANDIDATES);
        out
    }

    /// What a session needs of these ports, for a control connection to the primary family's
    /// server address.
    pub fn view(&self) -> PortsView {
        let local = |p: &Option<PunchPort>| p.as_ref().map(|p| p.local);
        let depth = |p: &Option<PunchPort>| p.as_ref().map(|p| p.depth.clone());
        PortsView {
            locals: ByFamily {
                v4: local(&self.v4),
                v6: local(&self.v6),
            },
            depths: ByFamily {
                v4: depth(&self.v4),
                v6: depth(&self.v6),
            },
            server: self.primary().server,
        }
    }

    /// Takes the listeners out, IPv4 first.
    pub fn take_listeners(&mut self) -> Vec<net::PunchPort> {
        [&mut self.v4, &mut self.v6]
            .into_iter()
            .flatten()
            .filter_map(|p| p.listener.take())
            .collect()
    }
}

/// What a session needs of a peer's punch ports: their addresses and what the sweeps have
/// learnt so far. Cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct PortsView {
    locals: ByFamily<Option<SocketAddr>>,
    depths: ByFamily<Option<watch::Receiver<NatDepth>>>,
    /// The server's address of the control connection (the primary family's).
    server: SocketAddr,
}

impl PortsView {
    /// Where a session punches from, with the NAT depths known at this moment.
    pub fn endpoint(&self, server: &ServerUrl) -> Endpoint {
        let now = |d: &Option<watch::Receiver<NatDepth>>| {
            d.as_ref().map(|d| *d.borrow()).unwrap_or_default()
        };
        Endpoint {
            locals: self.locals,
            depths: ByFamily {
                v4: now(&self.depths.v4),
                v6: now(&self.depths.v6),
            },
            server: server.clone(),
            server_addr: self.server,
        }
    }
}

impl PunchPort {
    fn bind(server: SocketAddr, port: u16, fresh_depth: bool) -> Result<Self, Error> {
        let source = route_source(server)?;
        let (bind_ip, listen_ip, candidates_ip): (IpAddr, IpAddr, Vec<IpAddr>) = match source {
            IpAddr::V4(_) => {
                let lan = net::local_candidates(0, &server)
                    .into_iter()
                    .map(|a| a.ip())
                    .collect();
                let any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
                (any, any, lan)
            }
            IpAddr::V6(src) => {
                let addrs = if_inet6();
                let chosen = choose_v6(src, &addrs);
                let globals = announced_v6(chosen, &addrs);
                (
                    IpAddr::V6(chosen),
                    IpAddr::V6(Ipv6Addr::UNSPECIFIED),
                    globals.into_iter().map(IpAddr::V6).collect(),
                )
            }
        };
        let listener = net::PunchPort::bind(SocketAddr::new(listen_ip, port))?;
        let port = listener.local_addr()?.port();
        let depth_from = bind_ip.is_ipv6().then_some(bind_ip);
        let depth = if fresh_depth {
            nat_depth::relearn(server.ip(), depth_from)
        } else {
            nat_depth::learn(server.ip(), depth_from)
        };
        Ok(PunchPort {
            listener: Some(listener),
            local: SocketAddr::new(bind_ip, port),
            server,
            depth,
            candidates: candidates_ip
                .into_iter()
                .map(|ip| SocketAddr::new(ip, port))
                .collect(),
        })
    }
}

/// The source address the kernel would use toward `server` (no packet is sent), or why there
/// is none: no address or no route in that family.
fn route_source(server: SocketAddr) -> std::io::Result<IpAddr> {
    let any = net::any_addr(&server, 0);
    let probe = UdpSocket::bind(any)?;
    probe.connect(server)?;
    let ip = probe.local_addr()?.ip();
    if ip.is_loopback() && !server.ip().is_loopback() {
        return Err(std::io::Error::other("only a loopback address"));
    }
    Ok(ip)
}

/// An IPv6 address of this host and its flags (`IFA_F_*`); without `/proc/net/if_inet6`
/// (other systems), every address of the interfaces, taken as stable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct V6Addr {
    ip: Ipv6Addr,
    flags: u32,
}

impl V6Addr {
    fn usable(&self) -> bool {
        self.flags & (IFA_F_DADFAILED | IFA_F_DEPRECATED | IFA_F_TENTATIVE) == 0
    }

    fn temporary(&self) -> bool {
        self.flags & IFA_F_TEMPORARY != 0
    }

    fn global(&self) -> bool {
        let ip = self.ip;
        !(ip.is_loopback()
            || ip.is_unspecified()
            || ip.is_unicast_link_local()
            || ip.is_unique_local()
            || ip.is_multicast()
            || ip.to_ipv4_mapped().is_some())
    }
}

fn if_inet6() -> Vec<V6Addr> {
    match std::fs::read_to_string("/proc/net/if_inet6") {
        Ok(text) => parse_if_inet6(&text),
        Err(_) => if_addrs::get_if_addrs()
            .map(|ifs| {
                ifs.into_iter()
                    .filter_map(|i| match i.ip() {
                        IpAddr::V6(ip) => Some(V6Addr { ip, flags: 0 }),
                        IpAddr::V4(_) => None,
                    })
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// Parses `/proc/net/if_inet6`: per line the address (32 hex digits), the interface index,
/// the prefix length, the scope, the flags (hex) and the interface name.
fn parse_if_inet6(text: &str) -> Vec<V6Addr> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (hex, flags) = (f.first()?, f.get(4)?);
            let ip = Ipv6Addr::from(u128::from_str_radix(hex, 16).ok()?);
            let flags = u32::from_str_radix(flags, 16).ok()?;
            (hex.len() == 32).then_some(V6Addr { ip, flags })
        })
        .collect()
}

/// The address to punch from: the kernel's choice `route`, unless it is temporary and a stable
/// usable address of the same /64 exists.
fn choose_v6(route: Ipv6Addr, addrs: &[V6Addr]) -> Ipv6Addr {
    let temporary = addrs.iter().any(|a| a.ip == route && a.temporary());
    if !temporary {
        return route;
    }
    addrs
        .iter()
        .find(|a| a.usable() && !a.temporary() && a.ip.segments()[..4] == route.segments()[..4])
        .map_or(route, |a| a.ip)
}

/// The global addresses to announce: `chosen` first, then the other usable global ones,
/// temporary ones only where no stable one exists.
fn announced_v6(chosen: Ipv6Addr, addrs: &[V6Addr]) -> Vec<Ipv6Addr> {
    let usable: Vec<&V6Addr> = addrs.iter().filter(|a| a.usable() && a.global()).collect();
    let any_stable = usable.iter().any(|a| !a.temporary());
    let mut out = vec![chosen];
    for a in usable {
        if (!any_stable || !a.temporary()) && !out.contains(&a.ip) {
            out.push(a.ip);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROC: &str = "\
20010db8000100010000000000000002 02 40 00 80     eth0
20010db80001000102d5a1fffe3c4b11 02 40 00 01     eth0
20010db8000100010bad0000000000ee 02 40 00 21     eth0
fe800000000000000000000000000001 02 40 20 80     eth0
fd000000000000000000000000000001 02 40 00 80     eth0
00000000000000000000000000000001 01 80 10 80       lo
";

    fn addrs() -> Vec<V6Addr> {
        parse_if_inet6(PROC)
    }

    #[test]
    fn proc_net_if_inet6_is_read_with_its_flags() {
        let a = addrs();
        assert_eq!(a.len(), 6);
        assert_eq!(a[0].ip, "2001:db8:1:1::2".parse::<Ipv6Addr>().unwrap());
        assert!(!a[0].temporary() && a[0].usable() && a[0].global());
        assert!(a[1].temporary() && a[1].usable());
        assert!(!a[2].usable(), "deprecated");
        assert!(!a[3].global() && !a[4].global() && !a[5].global());
        assert!(parse_if_inet6("garbage\n12 34\n").is_empty());
    }

    #[test]
    fn a_stable_address_is_preferred_to_the_temporary_one_the_kernel_picks() {
        let a = addrs();
        let temporary = a[1].ip;
        let stable = a[0].ip;
        assert_eq!(choose_v6(temporary, &a), stable);
        assert_eq!(choose_v6(stable, &a), stable);
        // No stable address on that /64: the temporary one it is.
        let other: Ipv6Addr = "2001:db8:9:9::1".parse().unwrap();
        let only_tmp = [V6Addr {
            ip: other,
            flags: IFA_F_TEMPORARY,
        }];
        assert_eq!(choose_v6(other, &only_tmp), other);
    }

    #[test]
    fn only_stable_global_addresses_are_announced_when_there_is_one() {
        let a = addrs();
        assert_eq!(announced_v6(a[0].ip, &a), vec![a[0].ip]);
        let only_tmp = [V6Addr {
            ip: a[1].ip,
            flags: IFA_F_TEMPORARY,
        }];
        assert_eq!(announced_v6(a[1].ip, &only_tmp), vec![a[1].ip]);
    }

    #[test]
    fn the_loopback_server_has_a_loopback_route() {
        let src = route_source("127.0.0.1:9".parse().unwrap()).unwrap();
        assert!(src.is_loopback());
    }
}
