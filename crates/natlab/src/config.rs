//! What a lab is made of: sites, nodes, their addresses, and [`LabConfig`].

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::kinds::{Cgn, Firewall, Nat};

/// One of the two sites.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Site {
    A,
    B,
}

impl Site {
    /// Both sites, A first.
    pub const BOTH: [Site; 2] = [Site::A, Site::B];

    pub fn other(self) -> Site {
        match self {
            Site::A => Site::B,
            Site::B => Site::A,
        }
    }

    pub(crate) fn tag(self) -> &'static str {
        match self {
            Site::A => "a",
            Site::B => "b",
        }
    }

    pub(crate) fn index(self) -> usize {
        match self {
            Site::A => 0,
            Site::B => 1,
        }
    }
}

/// A namespace of the lab.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Node {
    /// The "internet" router (holds the delay box).
    Inet,
    /// The rendezvous host ([`RDV_IP`], [`RDV_IP6`] with IPv6, named [`RDV_NAME`]).
    Rdv,
    /// A site's home router.
    Router(Site),
    /// The carrier-grade NAT in front of a site (with [`LabConfig::cgn`]); with
    /// [`LabConfig::shared_cgn`] both sites name the same one.
    Cgn(Site),
    /// A site's first LAN host.
    Host(Site),
    /// A site's second LAN host (only with [`LabConfig::second_hosts`]).
    Host2(Site),
    /// A host on the internet with its own public address, [`OUTSIDE_IP`], and no delay
    /// (only with [`LabConfig::outside_host`]).
    Outside,
}

impl Node {
    /// The site a router, CGN or host belongs to.
    pub fn site(self) -> Option<Site> {
        match self {
            Node::Router(s) | Node::Cgn(s) | Node::Host(s) | Node::Host2(s) => Some(s),
            Node::Inet | Node::Rdv | Node::Outside => None,
        }
    }
}

/// Name of the rendezvous host in every namespace's hosts file (A and, with IPv6, AAAA).
pub const RDV_NAME: &str = "rdv.lab";
/// Address of the rendezvous host.
pub const RDV_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
pub(crate) const INET_RDV_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
/// IPv6 address of the rendezvous host (labs with IPv6).
pub const RDV_IP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x113, 0, 0, 0, 0, 0x10);
pub(crate) const INET_RDV_IP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x113, 0, 0, 0, 0, 1);
/// Address of the outside host ([`Node::Outside`]).
pub const OUTSIDE_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
pub(crate) const INET_OUTSIDE_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// IPv6 address of the outside host (labs with IPv6).
pub const OUTSIDE_IP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x18, 0, 0, 0, 0, 2);
pub(crate) const INET_OUTSIDE_IP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x18, 0, 0, 0, 0, 1);

/// The public /24 a site's internet link lives in (A: 198.51.100.0/24, B: 192.0.2.0/24).
fn public_net(site: Site) -> [u8; 3] {
    match site {
        Site::A => [198, 51, 100],
        Site::B => [192, 0, 2],
    }
}

/// Last byte of the WAN address of a site's first box (home router or CGN).
fn wan_last(site: Site) -> u8 {
    match site {
        Site::A => 10,
        Site::B => 20,
    }
}

/// IPv4 addresses of one site's home router and hosts (they depend on the NAT kind and on a
/// CGN in front).
///
/// The home router's WAN link is the lower half of a /24: public (A: 198.51.100.0/25, B:
/// 192.0.2.0/25) or, behind a CGN, shared space (A: 100.64.1.0/25, B: 100.64.2.0/25). With
/// [`Nat::None`] the LAN is the upper half of that /24 (host .130); otherwise it is private
/// (A: 10.0.1.0/24, B: 10.0.2.0/24; router .1, hosts .2 and .3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SiteAddrs {
    /// The upstream box's address on the home router's WAN link (the internet router, or the
    /// CGN's inside address).
    pub inet_side: Ipv4Addr,
    /// Home router's WAN address.
    pub wan: Ipv4Addr,
    /// Prefix length of the WAN link.
    pub wan_prefix: u8,
    /// Router's LAN address.
    pub lan_router: Ipv4Addr,
    /// First LAN host.
    pub host: Ipv4Addr,
    /// Second LAN host.
    pub host2: Ipv4Addr,
    /// LAN network address and prefix length.
    pub lan_net: Ipv4Addr,
    pub lan_prefix: u8,
    /// The address the internet sees the site's first host as ([`crate::Lab::addrs`] gives
    /// a shared CGN's address, site A's, for both sites).
    pub public: Ipv4Addr,
}

impl SiteAddrs {
    /// Addresses of `site` with home router `nat`, behind a CGN or not.
    pub fn for_site(site: Site, nat: Nat, behind_cgn: bool) -> SiteAddrs {
        let public_lan = nat == Nat::None;
        let net = if behind_cgn {
            [100, 64, site.index() as u8 + 1]
        } else {
            public_net(site)
        };
        let up = |last| Ipv4Addr::new(net[0], net[1], net[2], last);
        let lan3 = site.index() as u8 + 1;
        let pick = |public_last, lan_last| {
            if public_lan {
                up(public_last)
            } else {
                Ipv4Addr::new(10, 0, lan3, lan_last)
            }
        };
        let host = pick(130, 2);
        let public = if behind_cgn {
            cgn_public(site)
        } else if public_lan {
            host
        } else {
            up(wan_last(site))
        };
        SiteAddrs {
            inet_side: up(1),
            wan: up(wan_last(site)),
            wan_prefix: 25,
            lan_router: pick(129, 1),
            host,
            host2: pick(131, 3),
            lan_net: pick(128, 0),
            lan_prefix: if public_lan { 25 } else { 24 },
            public,
        }
    }
}

/// The public address of the CGN in front of `site` (a shared CGN has site A's).
pub(crate) fn cgn_public(site: Site) -> Ipv4Addr {
    let n = public_net(site);
    Ipv4Addr::new(n[0], n[1], n[2], wan_last(site))
}

/// The internet router's address on the link to the box in front of `site`.
pub(crate) fn inet_side(site: Site) -> Ipv4Addr {
    let n = public_net(site);
    Ipv4Addr::new(n[0], n[1], n[2], 1)
}

/// IPv6 addresses of a site (labs with IPv6): a routed /64 per LAN, no NAT66.
///
/// Site A owns 2001:db8:1::/48 and site B 2001:db8:2::/48: LAN `:1::/64` (router ::1, hosts
/// ::2 and ::3), the home router's uplink `:ff::/64` (upstream ::1, router ::10), or behind a
/// CGN `:2::/64` with the CGN's uplink `:ff::/64`. A shared CGN's uplink is
/// 2001:db8:c:ff::/64.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SiteAddrs6 {
    /// The upstream box's address on the home router's WAN link.
    pub inet_side: Ipv6Addr,
    /// Home router's WAN address.
    pub wan: Ipv6Addr,
    /// Router's LAN address.
    pub lan_router: Ipv6Addr,
    /// First and second LAN host.
    pub host: Ipv6Addr,
    pub host2: Ipv6Addr,
    /// The LAN /64.
    pub lan_net: Ipv6Addr,
    /// The site's /48 (what the internet routes toward it).
    pub block: Ipv6Addr,
}

/// `2001:db8:<block>:<subnet>::<last>`.
pub(crate) fn v6(block: u16, subnet: u16, last: u16) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, block, subnet, 0, 0, 0, last)
}

/// The 2001:db8:<block>::/48 of a site.
pub(crate) fn v6_block(site: Site) -> u16 {
    site.index() as u16 + 1
}

/// Subnets of a site's /48.
pub(crate) const V6_LAN: u16 = 1;
pub(crate) const V6_CGN_LINK: u16 = 2;
pub(crate) const V6_UPLINK: u16 = 0xff;
/// The /48 of a shared CGN's uplink.
pub(crate) const V6_SHARED_CGN: u16 = 0xc;

impl SiteAddrs6 {
    pub fn for_site(site: Site, behind_cgn: bool) -> SiteAddrs6 {
        let b = v6_block(site);
        let link = if behind_cgn { V6_CGN_LINK } else { V6_UPLINK };
        SiteAddrs6 {
            inet_side: v6(b, link, 1),
            wan: v6(b, link, 0x10),
            lan_router: v6(b, V6_LAN, 1),
            host: v6(b, V6_LAN, 2),
            host2: v6(b, V6_LAN, 3),
            lan_net: v6(b, V6_LAN, 0),
            block: v6(b, 0, 0),
        }
    }
}

/// Which address families a host has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stack {
    /// IPv4 only (every host of a site without IPv6).
    V4,
    /// IPv6 only: no IPv4 address and no IPv4 route.
    V6,
    /// Both (every host of a site with IPv6, unless told otherwise).
    Dual,
}

impl Stack {
    pub fn has_v4(self) -> bool {
        self != Stack::V6
    }

    pub fn has_v6(self) -> bool {
        self != Stack::V4
    }
}

/// One site: its home router, what may sit in front of it, its IPv6 and its delay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SiteConfig {
    /// The home router's IPv4 NAT.
    pub nat: Nat,
    /// A carrier-grade NAT of the site's own between its home router and the internet.
    pub cgn: Option<Cgn>,
    /// IPv6: a routed /64 behind this home firewall; `None` for an IPv4-only site.
    pub v6: Option<Firewall>,
    /// Families of the first and second host (`None`: the site's).
    pub stacks: [Option<Stack>; 2],
    /// One-way delay of packets coming from the site (ms).
    pub delay_ms: u32,
}

impl SiteConfig {
    fn new(nat: Nat) -> SiteConfig {
        SiteConfig {
            nat,
            cgn: None,
            v6: None,
            stacks: [None, None],
            delay_ms: 20,
        }
    }
}

/// Configuration of a lab instance.
#[derive(Clone, Copy, Debug)]
pub struct LabConfig {
    /// Site A (the client side by convention) and site B.
    pub sites: [SiteConfig; 2],
    /// One CGN in front of both sites' home routers ("two phones on one carrier"). Its
    /// public address is site A's (198.51.100.10).
    pub shared_cgn: Option<Cgn>,
    /// One-way delay of packets coming from the rendezvous host (ms).
    pub delay_rdv_ms: u32,
    /// Create a second host on each LAN (`Node::Host2`).
    pub second_hosts: bool,
    /// Create [`Node::Outside`].
    pub outside_host: bool,
    /// Divert internet traffic through the delay box. Without it the lab has no added delay
    /// and no user-space hop (for bulk transfers); the delays above are then ignored.
    pub delay_box: bool,
}

impl LabConfig {
    /// Sites with the given NAT kinds, 20 ms one-way delay on every link, second hosts on,
    /// IPv4 only.
    pub fn new(a: Nat, b: Nat) -> LabConfig {
        LabConfig {
            sites: [SiteConfig::new(a), SiteConfig::new(b)],
            shared_cgn: None,
            delay_rdv_ms: 20,
            second_hosts: true,
            outside_host: false,
            delay_box: true,
        }
    }

    pub fn site(&self, site: Site) -> &SiteConfig {
        &self.sites[site.index()]
    }

    fn site_mut(&mut self, site: Site) -> &mut SiteConfig {
        &mut self.sites[site.index()]
    }

    pub fn delays(mut self, a_ms: u32, b_ms: u32, rdv_ms: u32) -> LabConfig {
        self.sites[0].delay_ms = a_ms;
        self.sites[1].delay_ms = b_ms;
        self.delay_rdv_ms = rdv_ms;
        self
    }

    pub fn second_hosts(mut self, on: bool) -> LabConfig {
        self.second_hosts = on;
        self
    }

    pub fn outside_host(mut self, on: bool) -> LabConfig {
        self.outside_host = on;
        self
    }

    /// No delay box: no added latency and no user-space hop for packets.
    pub fn without_delay_box(mut self) -> LabConfig {
        self.delay_box = false;
        self
    }

    /// A CGN of the site's own between its home router and the internet (NAT444).
    pub fn cgn(mut self, site: Site, cgn: Cgn) -> LabConfig {
        assert!(
            self.shared_cgn.is_none(),
            "this lab already has a shared CGN in front of both sites"
        );
        self.site_mut(site).cgn = Some(cgn);
        self
    }

    /// One CGN in front of both sites' home routers.
    pub fn shared_cgn(mut self, cgn: Cgn) -> LabConfig {
        assert!(
            self.sites.iter().all(|s| s.cgn.is_none()),
            "a site already has a CGN of its own"
        );
        self.shared_cgn = Some(cgn);
        self
    }

    /// IPv6 for a site: a routed /64 behind `firewall` on its home router, every host
    /// dual-stack (see [`LabConfig::host_stack`]). The rendezvous host, the internet router
    /// and the outside host get IPv6 as soon as one site has it.
    pub fn ipv6(mut self, site: Site, firewall: Firewall) -> LabConfig {
        self.site_mut(site).v6 = Some(firewall);
        self
    }

    /// The families of one host of a site with IPv6 (`Stack::V6`: an IPv6-only host,
    /// `Stack::V4`: an IPv4-only host in a dual-stack site).
    pub fn host_stack(mut self, node: Node, stack: Stack) -> LabConfig {
        let (site, i) = match node {
            Node::Host(s) => (s, 0),
            Node::Host2(s) => (s, 1),
            other => panic!("host_stack: {other:?} is not a LAN host"),
        };
        assert!(
            stack == Stack::V4 || self.site(site).v6.is_some(),
            "host_stack: site {site:?} has no IPv6 (LabConfig::ipv6 first)"
        );
        self.site_mut(site).stacks[i] = Some(stack);
        self
    }

    /// True when some site has IPv6 (then the rendezvous host has it too).
    pub fn has_v6(&self) -> bool {
        self.sites.iter().any(|s| s.v6.is_some())
    }

    /// The CGN in front of `site`, its own or the shared one.
    pub fn cgn_of(&self, site: Site) -> Option<Cgn> {
        self.shared_cgn.or(self.site(site).cgn)
    }

    /// The families of a node.
    pub fn stack(&self, node: Node) -> Stack {
        let site_stack = |s: Site| {
            if self.site(s).v6.is_some() {
                Stack::Dual
            } else {
                Stack::V4
            }
        };
        match node {
            Node::Host(s) => self.site(s).stacks[0].unwrap_or(site_stack(s)),
            Node::Host2(s) => self.site(s).stacks[1].unwrap_or(site_stack(s)),
            Node::Router(s) | Node::Cgn(s) => site_stack(s),
            Node::Inet | Node::Rdv | Node::Outside => {
                if self.has_v6() {
                    Stack::Dual
                } else {
                    Stack::V4
                }
            }
        }
    }
}
