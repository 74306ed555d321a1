//! NAT and firewall kinds. Each kind is a variant and the nftables rules that make it; adding a
//! kind is adding a variant and its rules.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

/// Name of the IPv4 table of a NAT box (home router or carrier-grade NAT).
pub(crate) const NAT_TABLE: &str = "natlab";
/// Name of the IPv6 table of a home router's firewall.
pub(crate) const FW6_TABLE: &str = "natlab6";

/// NAT behaviour of a site's home router, or of a carrier-grade NAT ([`Cgn`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Nat {
    /// No NAT: the site host has a public address (or, behind a [`Cgn`], a shared-space
    /// address the CGN translates) and the router only routes.
    None,
    /// Masquerade plus DNAT of every new inbound TCP connection to the LAN host on the same
    /// port: endpoint-independent mapping and filtering. Home routers only.
    FullCone,
    /// Plain masquerade (port-restricted cone); the router's own stack answers unsolicited
    /// inbound SYNs with a RST.
    RestrictedRst,
    /// Plain masquerade (port-restricted cone); unsolicited inbound packets on the WAN are
    /// silently dropped.
    RestrictedDrop,
    /// `masquerade random,fully-random`: a new random public port per 5-tuple. `rst` chooses
    /// RST (true) or silent drop (false) for unsolicited inbound packets.
    Symmetric { rst: bool },
}

impl Nat {
    /// True for the kinds whose router silently drops unsolicited inbound traffic.
    pub fn drops_unsolicited(self) -> bool {
        matches!(self, Nat::RestrictedDrop | Nat::Symmetric { rst: false })
    }

    /// True for the kinds that give each flow its own public port (endpoint-dependent mapping).
    pub fn is_symmetric(self) -> bool {
        matches!(self, Nat::Symmetric { .. })
    }

    /// The nftables ruleset (table `ip natlab`) of a NAT box of this kind, or `None` for a
    /// plain router.
    ///
    /// Every NAT box drops forwarded packets that conntrack finds INVALID, so nothing leaves
    /// an inside network with its inside source address.
    pub(crate) fn rules(self, b: &NatBox) -> Option<String> {
        let (masq_flags, rst, full_cone) = match self {
            Nat::None => return None,
            Nat::FullCone => ("", true, true),
            Nat::RestrictedRst => ("", true, false),
            Nat::RestrictedDrop => ("", false, false),
            Nat::Symmetric { rst } => (" random,fully-random", rst, false),
        };
        let (wan, inside) = (b.wan, b.inside);
        let mut input = String::new();
        let mut forward = String::new();
        let mut pre = String::new();
        let mut post = String::new();
        let mut extra = String::new();
        if !rst {
            input.push_str(&format!(
                "        iifname \"{wan}\" ct state established,related accept\n\
                 \x20       iifname \"{wan}\" drop\n"
            ));
        }
        if full_cone {
            let host = b
                .full_cone_host
                .expect("a full cone NAT box needs the LAN host inbound connections go to");
            forward.push_str(&format!(
                "        iifname \"{wan}\" oifname \"{inside}\" ct status dnat accept\n"
            ));
            pre.push_str(&format!(
                "        iifname \"{wan}\" meta l4proto tcp dnat to {host}\n"
            ));
        }
        // Source translation: one rule for everyone, or one per subscriber and port block.
        if b.blocks.is_empty() {
            post.push_str(&format!(
                "        oifname \"{wan}\" masquerade{masq_flags}\n"
            ));
        } else {
            // Ports exist for TCP and UDP only; other protocols keep the plain rule.
            for blk in &b.blocks {
                post.push_str(&format!(
                    "        oifname \"{wan}\" ip saddr {}/{} meta l4proto {{ tcp, udp }} \
                     masquerade to :{}-{}{masq_flags}\n\
                     \x20       oifname \"{wan}\" ip saddr {}/{} masquerade{masq_flags}\n",
                    blk.net, blk.prefix, blk.first, blk.last, blk.net, blk.prefix
                ));
            }
        }
        match b.hairpin {
            Hairpin::Stack => {}
            Hairpin::Off => {
                // Packets from inside to the public address are unsolicited there too.
                if !rst {
                    input.push_str(&format!(
                        "        iifname \"{inside}\" ip daddr {} drop\n",
                        b.public
                    ));
                }
            }
            Hairpin::On => {
                // Every new outbound flow records its mapping (protocol, public port) ->
                // (inside address, port); a packet from inside to the public address is sent
                // back in to the owner of that mapping, from the sender's own public address.
                let _ = write!(
                    extra,
                    "    map mappings {{\n\
                     \x20       type inet_proto . inet_service : ipv4_addr . inet_service\n\
                     \x20       flags dynamic,timeout\n\
                     \x20       timeout {HAIRPIN_MAPPING_TIMEOUT_S}s\n\
                     \x20   }}\n\
                     \x20   chain record {{\n\
                     \x20       type filter hook postrouting priority srcnat + 1; policy accept;\n\
                     \x20       oifname \"{wan}\" ct state new meta l4proto {{ tcp, udp }} \
                     update @mappings {{ meta l4proto . ct reply proto-dst : ct original ip saddr \
                     . ct original proto-src }}\n\
                     \x20   }}\n"
                );
                let _ = writeln!(
                    pre,
                    "        iifname \"{inside}\" ip daddr {} dnat ip to meta l4proto . th dport \
                     map @mappings",
                    b.public
                );
                if b.blocks.is_empty() {
                    let _ = writeln!(
                        post,
                        "        iifname \"{inside}\" oifname \"{inside}\" ct status dnat snat ip \
                         to {}{masq_flags}",
                        b.public
                    );
                } else {
                    for blk in &b.blocks {
                        let _ = writeln!(
                            post,
                            "        iifname \"{inside}\" oifname \"{inside}\" ip saddr {}/{} ct \
                             status dnat meta l4proto {{ tcp, udp }} snat ip to {}:{}-{}{masq_flags}",
                            blk.net, blk.prefix, b.public, blk.first, blk.last
                        );
                    }
                }
            }
        }
        // nft 1.0.6: closing braces of tables on their own line.
        Some(format!(
            "table ip {NAT_TABLE} {{\n\
             {extra}\
             \x20   chain input {{\n\
             \x20       type filter hook input priority filter; policy accept;\n\
             {input}\
             \x20   }}\n\
             \x20   chain forward {{\n\
             \x20       type filter hook forward priority filter; policy drop;\n\
             \x20       ct state invalid drop\n\
             \x20       ct state established,related accept\n\
             \x20       iifname \"{inside}\" accept\n\
             {forward}\
             \x20   }}\n\
             \x20   chain prerouting {{\n\
             \x20       type nat hook prerouting priority dstnat; policy accept;\n\
             {pre}\
             \x20   }}\n\
             \x20   chain postrouting {{\n\
             \x20       type nat hook postrouting priority srcnat; policy accept;\n\
             {post}\
             \x20   }}\n\
             }}\n"
        ))
    }
}

/// How long a hairpinning CGN remembers a mapping after the last new flow through it (as
/// long as conntrack keeps an established TCP flow in practice for a test, and more than the
/// few seconds between learning a peer's mapping and dialling it).
const HAIRPIN_MAPPING_TIMEOUT_S: u32 = 600;

/// What a NAT box does with a packet from inside to its own public address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Hairpin {
    /// Its own stack gets it (a home router: it may answer with a RST).
    Stack,
    /// Treated like unsolicited inbound traffic (a CGN without hairpinning).
    Off,
    /// Sent back in to the owner of the mapping (RFC 4787 REQ-9 hairpinning).
    On,
}

/// A subscriber's port block on a CGN with port-block allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PortBlock {
    /// The subscriber's inside network.
    pub net: Ipv4Addr,
    pub prefix: u8,
    /// First and last public port of the block.
    pub first: u16,
    pub last: u16,
}

/// Where a NAT sits: what its rules need to know.
#[derive(Clone, Debug)]
pub(crate) struct NatBox {
    /// Upstream interface.
    pub wan: &'static str,
    /// Inside interfaces (an nft `iifname` pattern, e.g. `lan` or `sub*`).
    pub inside: &'static str,
    /// Its address on `wan`.
    pub public: Ipv4Addr,
    /// [`Nat::FullCone`]: the LAN host every new inbound TCP connection goes to.
    pub full_cone_host: Option<Ipv4Addr>,
    pub hairpin: Hairpin,
    /// Port-block allocation (empty: any port for anyone).
    pub blocks: Vec<PortBlock>,
}

/// A carrier-grade NAT (NAT444) between a site's home router and the internet: the home
/// router's WAN is in the RFC 6598 shared space (100.64.0.0/10) and the CGN translates it to
/// the site's public address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cgn {
    /// The CGN's own NAT kind: [`Nat::RestrictedRst`], [`Nat::RestrictedDrop`] or
    /// [`Nat::Symmetric`].
    pub nat: Nat,
    /// Packets from a subscriber to the CGN's public address are sent back in to the owner
    /// of that mapping (from the sender's own mapping). Hairpinned packets are filtered like
    /// endpoint-independent filtering would (only the home routers' filtering applies).
    pub hairpin: bool,
    /// Port-block allocation: each subscriber (site) gets its own range of this many public
    /// ports (site A the first block from [`Cgn::PORT_BLOCK_BASE`], site B the next).
    pub port_block: Option<u16>,
}

impl Cgn {
    /// First public port of the first subscriber's block under port-block allocation.
    pub const PORT_BLOCK_BASE: u16 = 20000;

    /// A CGN of kind `nat`, without hairpinning or port blocks.
    pub fn new(nat: Nat) -> Cgn {
        assert!(
            matches!(
                nat,
                Nat::RestrictedRst | Nat::RestrictedDrop | Nat::Symmetric { .. }
            ),
            "a CGN's kind is RestrictedRst, RestrictedDrop or Symmetric, not {nat:?}"
        );
        Cgn {
            nat,
            hairpin: false,
            port_block: None,
        }
    }

    /// With or without hairpinning.
    pub fn hairpin(mut self, on: bool) -> Cgn {
        self.hairpin = on;
        self
    }

    /// Port-block allocation with `size` ports per subscriber.
    pub fn port_block(mut self, size: u16) -> Cgn {
        assert!(
            (1..=20000).contains(&size),
            "port block of {size} ports: choose 1..=20000"
        );
        self.port_block = Some(size);
        self
    }

    /// The public ports of a site's home router under port-block allocation.
    pub fn block(&self, site: crate::Site) -> Option<(u16, u16)> {
        self.port_block.map(|size| {
            let first = Cgn::PORT_BLOCK_BASE + site.index() as u16 * size;
            (first, first + size - 1)
        })
    }
}

/// A stateful IPv6 home firewall (RFC 6092) in front of a site's routed /64 (no NAT66).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Firewall {
    /// No firewall: every host of the /64 is reachable (a public IPv6 host).
    Open,
    /// Unsolicited inbound packets are dropped (RFC 6092 REC-11's default; most home routers).
    Drop,
    /// Unsolicited inbound TCP is answered with a RST, other unsolicited packets dropped.
    Rst,
}

impl Firewall {
    /// True for the kinds that silently drop unsolicited inbound traffic.
    pub fn drops_unsolicited(self) -> bool {
        self == Firewall::Drop
    }

    /// The nftables ruleset (table `ip6 natlab6`) of a home router with this firewall on
    /// interface `wan`, or `None` for no firewall.
    pub(crate) fn rules(self, wan: &str) -> Option<String> {
        let (input, unsolicited) = match self {
            Firewall::Open => return None,
            // The router's own stack stays silent too (NDP on the link still works).
            Firewall::Drop => (
                format!(
                    "        iifname \"{wan}\" ct state established,related accept\n\
                     \x20       iifname \"{wan}\" meta l4proto ipv6-icmp accept\n\
                     \x20       iifname \"{wan}\" drop\n"
                ),
                format!("        iifname \"{wan}\" drop\n"),
            ),
            Firewall::Rst => (
                String::new(),
                format!(
                    "        iifname \"{wan}\" meta l4proto tcp reject with tcp reset\n\
                     \x20       iifname \"{wan}\" drop\n"
                ),
            ),
        };
        Some(format!(
            "table ip6 {FW6_TABLE} {{\n\
             \x20   chain input {{\n\
             \x20       type filter hook input priority filter; policy accept;\n\
             {input}\
             \x20   }}\n\
             \x20   chain forward {{\n\
             \x20       type filter hook forward priority filter; policy accept;\n\
             \x20       ct state invalid drop\n\
             \x20       ct state established,related accept\n\
             \x20       iifname \"{wan}\" icmpv6 type echo-request accept\n\
             {unsolicited}\
             \x20   }}\n\
             }}\n"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn home() -> NatBox {
        NatBox {
            wan: "wan",
            inside: "lan",
            public: Ipv4Addr::new(198, 51, 100, 10),
            full_cone_host: Some(Ipv4Addr::new(10, 0, 1, 2)),
            hairpin: Hairpin::Stack,
            blocks: vec![],
        }
    }

    #[test]
    fn kinds_differ_where_they_should() {
        let b = home();
        assert!(Nat::None.rules(&b).is_none());
        let rst = Nat::RestrictedRst.rules(&b).unwrap();
        let drop = Nat::RestrictedDrop.rules(&b).unwrap();
        let sym = Nat::Symmetric { rst: true }.rules(&b).unwrap();
        let cone = Nat::FullCone.rules(&b).unwrap();
        assert!(!rst.contains("iifname \"wan\" drop"));
        assert!(drop.contains("iifname \"wan\" drop"));
        assert!(sym.contains("masquerade random,fully-random"));
        assert!(cone.contains("dnat to 10.0.1.2"));
        for r in [&rst, &drop, &sym, &cone] {
            assert!(r.ends_with("\n}\n"), "closing brace on its own line:\n{r}");
        }
    }

    #[test]
    fn cgn_port_blocks_and_hairpin() {
        let cgn = Cgn::new(Nat::RestrictedDrop).hairpin(true).port_block(100);
        assert_eq!(cgn.block(crate::Site::A), Some((20000, 20099)));
        assert_eq!(cgn.block(crate::Site::B), Some((20100, 20199)));
        let b = NatBox {
            inside: "sub*",
            full_cone_host: None,
            hairpin: Hairpin::On,
            blocks: vec![PortBlock {
                net: Ipv4Addr::new(100, 64, 1, 0),
                prefix: 24,
                first: 20000,
                last: 20099,
            }],
            ..home()
        };
        let r = cgn.nat.rules(&b).unwrap();
        assert!(r.contains(
            "ip saddr 100.64.1.0/24 meta l4proto { tcp, udp } masquerade to :20000-20099"
        ));
        assert!(r.contains("map @mappings"));
        assert!(r.contains("snat ip to 198.51.100.10:20000-20099"));
    }

    #[test]
    fn firewall_kinds() {
        assert!(Firewall::Open.rules("wan").is_none());
        assert!(
            Firewall::Rst
                .rules("wan")
                .unwrap()
                .contains("reject with tcp reset")
        );
        assert!(!Firewall::Drop.rules("wan").unwrap().contains("reject"));
    }

    #[test]
    #[should_panic(expected = "a CGN's kind")]
    fn a_full_cone_cgn_is_refused() {
        Cgn::new(Nat::FullCone);
    }
}
