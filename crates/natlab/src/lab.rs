//! [`Lab`]: building a lab from its [`LabConfig`], changing it at run time, running things in
//! it, and tearing it down.

use std::fs::{self, File};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use crate::config::*;
use crate::delay::{DelayBox, DelayStats};
use crate::kinds::{Cgn, FW6_TABLE, Firewall, Hairpin, NAT_TABLE, Nat, NatBox, PortBlock};
use crate::net::http_get;
use crate::netns::{
    self, NS_PREFIX, Sysctl, add_namespaces, cleanup_stale_namespaces, delete_namespaces,
    find_tool, in_netns, kill_namespace_pids, run_ok, run_ok_stdin, set_sysctls, tool,
};
use crate::process::{Proc, Spawn};

/// Lab instances of one process run one at a time (their addresses are the same).
static LAB_LOCK: Mutex<()> = Mutex::new(());
static LAB_COUNTER: AtomicU32 = AtomicU32::new(0);

/// Inside interfaces of a CGN (one per subscriber site: `sub_a`, `sub_b`).
const CGN_INSIDE: &str = "sub*";
/// Poll interval of the `wait_*` helpers.
const WAIT_POLL: Duration = Duration::from_millis(20);

/// The NAT and firewall kinds in force (they can change at run time).
#[derive(Clone, Copy, Debug)]
struct Kinds {
    nat: [Nat; 2],
    cgn: [Option<Cgn>; 2],
    fw: [Option<Firewall>; 2],
}

/// Where a delay is applied: which delay box (by index) and which of its queues.
type Slot = (usize, usize);

/// A running lab instance. Everything is torn down on drop (also while unwinding).
pub struct Lab {
    /// `p2pnclab-<pid>-<counter>`; namespace names are `<id>-<role>`.
    pub id: String,
    pub cfg: LabConfig,
    /// Namespaces created so far, in creation order.
    namespaces: Vec<String>,
    /// Directory for process logs (removed on drop unless panicking).
    dir: PathBuf,
    delay: Vec<DelayBox>,
    /// Delay slots of the rendezvous host and of each site.
    rdv_slot: Option<Slot>,
    site_slots: [Option<Slot>; 2],
    kinds: Mutex<Kinds>,
    logs: Mutex<Vec<(String, PathBuf)>>,
    setup: Duration,
    /// Held for the lab's lifetime. Declared last, so it is released after everything else
    /// is gone.
    _guard: MutexGuard<'static, ()>,
}

impl Lab {
    /// Builds a lab. Panics (after tearing down what was built) if any step fails.
    pub fn new(cfg: LabConfig) -> Lab {
        let guard = LAB_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let started = Instant::now();
        cleanup_stale_namespaces();
        let id = format!(
            "{NS_PREFIX}{}-{}",
            std::process::id(),
            LAB_COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let dir = std::env::temp_dir().join(&id);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let mut lab = Lab {
            id,
            cfg,
            namespaces: Vec::new(),
            dir,
            delay: Vec::new(),
            rdv_slot: None,
            site_slots: [None, None],
            kinds: Mutex::new(Kinds {
                nat: [cfg.sites[0].nat, cfg.sites[1].nat],
                cgn: [cfg.cgn_of(Site::A), cfg.cgn_of(Site::B)],
                fw: [cfg.sites[0].v6, cfg.sites[1].v6],
            }),
            logs: Mutex::new(Vec::new()),
            setup: Duration::ZERO,
            _guard: guard,
        };
        lab.build();
        lab.setup = started.elapsed();
        lab
    }

    /// How long [`Lab::new`] took.
    pub fn setup_time(&self) -> Duration {
        self.setup
    }

    /// The nodes of this lab, upstream ones first.
    pub fn nodes(&self) -> Vec<Node> {
        let cfg = &self.cfg;
        let mut nodes = vec![Node::Inet, Node::Rdv];
        if cfg.outside_host {
            nodes.push(Node::Outside);
        }
        if cfg.shared_cgn.is_some() {
            nodes.push(Node::Cgn(Site::A));
        }
        for site in Site::BOTH {
            if cfg.site(site).cgn.is_some() {
                nodes.push(Node::Cgn(site));
            }
        }
        for site in Site::BOTH {
            nodes.push(Node::Router(site));
        }
        for site in Site::BOTH {
            nodes.push(Node::Host(site));
            if cfg.second_hosts {
                nodes.push(Node::Host2(site));
            }
        }
        nodes
    }

    /// True when the node's namespace has IPv6.
    fn node_has_v6(&self, node: Node) -> bool {
        match node {
            Node::Cgn(_) if self.cfg.shared_cgn.is_some() => self.cfg.has_v6(),
            _ => self.cfg.stack(node).has_v6(),
        }
    }

    fn build(&mut self) {
        let nodes = self.nodes();
        let names: Vec<String> = nodes.iter().map(|n| self.ns(*n)).collect();
        add_namespaces(&names);
        self.namespaces = names;

        // Kernel settings, before any interface exists: IPv6 off where unused (keeps the
        // lab quiet) and without duplicate address detection where used (addresses would
        // stay tentative for a second or two); forwarding on routers; bridged frames do not
        // go through iptables/nftables.
        let sysctls: Vec<(String, Vec<Sysctl>)> = nodes
            .iter()
            .map(|&node| {
                let mut s = Vec::new();
                if self.node_has_v6(node) {
                    s.push(Sysctl("ipv6/conf/all/accept_dad", "0", false));
                    s.push(Sysctl("ipv6/conf/default/accept_dad", "0", false));
                    s.push(Sysctl("ipv6/conf/all/accept_ra", "0", false));
                    s.push(Sysctl("ipv6/conf/default/accept_ra", "0", false));
                } else {
                    s.push(Sysctl("ipv6/conf/all/disable_ipv6", "1", false));
                    s.push(Sysctl("ipv6/conf/default/disable_ipv6", "1", false));
                }
                if matches!(node, Node::Inet | Node::Router(_) | Node::Cgn(_)) {
                    s.push(Sysctl("ipv4/ip_forward", "1", false));
                    if self.node_has_v6(node) {
                        s.push(Sysctl("ipv6/conf/all/forwarding", "1", false));
                    }
                    s.push(Sysctl("bridge/bridge-nf-call-iptables", "0", true));
                }
                (self.ns(node), s)
            })
            .collect();
        set_sysctls(&sysctls);

        self.ip_batch(Node::Inet, &self.inet_batch());
        let cgns: Vec<Node> = nodes
            .iter()
            .copied()
            .filter(|n| matches!(n, Node::Cgn(_)))
            .collect();
        for &cgn in &cgns {
            self.ip_batch(cgn, &self.cgn_batch(cgn));
            let rules = self.cgn_rules(cgn);
            if let Some(rules) = rules {
                self.nft(cgn, &rules);
            }
        }
        for site in Site::BOTH {
            self.ip_batch(Node::Router(site), &self.router_batch(site));
            let rules = self.router_rules(site);
            if !rules.is_empty() {
                self.nft(Node::Router(site), &rules);
            }
        }
        // Leaves: in parallel (each `ip` is a process of its own).
        let leaves: Vec<Node> = nodes
            .iter()
            .copied()
            .filter(|n| {
                matches!(
                    n,
                    Node::Rdv | Node::Outside | Node::Host(_) | Node::Host2(_)
                )
            })
            .collect();
        let this = &*self;
        thread::scope(|s| {
            for &leaf in &leaves {
                let batch = this.leaf_batch(leaf);
                s.spawn(move || this.ip_batch(leaf, &batch));
            }
        });
        let hosts = self.hosts_file_text();
        for name in &self.namespaces {
            netns::write_hosts_file(name, &hosts)
                .unwrap_or_else(|e| panic!("write the hosts file of {name}: {e}"));
        }
        if self.cfg.delay_box {
            self.start_delay_boxes();
        }
    }

    /// The internet router: links to the rendezvous host, the outside host and each site's
    /// first box (home router, own CGN, or the shared CGN).
    fn inet_batch(&self) -> String {
        let cfg = &self.cfg;
        let has_v6 = cfg.has_v6();
        let mut b = String::from("link set lo up\n");
        let mut link = |ifname: &str, peer_ns: &str, peer: &str, addr4: String, addr6: String| {
            b.push_str(&format!(
                "link add {ifname} type veth peer name {peer} netns {peer_ns}\n\
                 addr add {addr4} dev {ifname}\nlink set {ifname} up\n"
            ));
            if has_v6 {
                b.push_str(&format!("addr add {addr6} dev {ifname} nodad\n"));
            }
        };
        link(
            "to_rdv",
            &self.ns(Node::Rdv),
            "eth0",
            format!("{INET_RDV_IP}/24"),
            format!("{INET_RDV_IP6}/64"),
        );
        if cfg.outside_host {
            link(
                "to_out",
                &self.ns(Node::Outside),
                "eth0",
                format!("{INET_OUTSIDE_IP}/24"),
                format!("{INET_OUTSIDE_IP6}/64"),
            );
        }
        if cfg.shared_cgn.is_some() {
            link(
                "to_cgn",
                &self.ns(Node::Cgn(Site::A)),
                "wan",
                format!("{}/25", inet_side(Site::A)),
                format!("{}/64", v6(V6_SHARED_CGN, V6_UPLINK, 1)),
            );
        } else {
            for site in Site::BOTH {
                let first = if cfg.site(site).cgn.is_some() {
                    Node::Cgn(site)
                } else {
                    Node::Router(site)
                };
                link(
                    &format!("to_{}", site.tag()),
                    &self.ns(first),
                    "wan",
                    format!("{}/25", inet_side(site)),
                    format!("{}/64", v6(v6_block(site), V6_UPLINK, 1)),
                );
            }
        }
        for site in Site::BOTH {
            let s = self.addrs(site);
            if self.nat(site) == Nat::None && cfg.cgn_of(site).is_none() {
                b.push_str(&format!(
                    "route add {}/{} via {}\n",
                    s.lan_net, s.lan_prefix, s.wan
                ));
            }
            if cfg.site(site).v6.is_some() {
                let via = if cfg.shared_cgn.is_some() {
                    v6(V6_SHARED_CGN, V6_UPLINK, 0x10)
                } else {
                    v6(v6_block(site), V6_UPLINK, 0x10)
                };
                b.push_str(&format!(
                    "route add {}/48 via {via}\n",
                    self.addrs6(site).block
                ));
            }
        }
        b
    }

    /// A CGN: its uplink, one inside link per subscriber site, routes to public LANs behind
    /// plain home routers.
    fn cgn_batch(&self, cgn: Node) -> String {
        let Node::Cgn(own) = cgn else {
            unreachable!("cgn_batch of {cgn:?}")
        };
        let shared = self.cfg.shared_cgn.is_some();
        let up = if shared { Site::A } else { own };
        let subscribers: Vec<Site> = if shared {
            Site::BOTH.to_vec()
        } else {
            vec![own]
        };
        let mut b = format!(
            "link set lo up\nlink set wan up\naddr add {}/25 dev wan\nroute add default via {}\n",
            cgn_public(up),
            inet_side(up)
        );
        if self.node_has_v6(cgn) {
            let block = if shared { V6_SHARED_CGN } else { v6_block(own) };
            b.push_str(&format!(
                "addr add {}/64 dev wan nodad\nroute add ::/0 via {}\n",
                v6(block, V6_UPLINK, 0x10),
                v6(block, V6_UPLINK, 1)
            ));
        }
        for site in subscribers {
            let s = self.addrs(site);
            let ifname = format!("sub_{}", site.tag());
            b.push_str(&format!(
                "link add {ifname} type veth peer name wan netns {}\n\
                 addr add {}/{} dev {ifname}\nlink set {ifname} up\n",
                self.ns(Node::Router(site)),
                s.inet_side,
                s.wan_prefix
            ));
            if self.nat(site) == Nat::None {
                b.push_str(&format!(
                    "route add {}/{} via {}\n",
                    s.lan_net, s.lan_prefix, s.wan
                ));
            }
            if self.cfg.site(site).v6.is_some() {
                let s6 = self.addrs6(site);
                b.push_str(&format!(
                    "addr add {}/64 dev {ifname} nodad\nroute add {}/64 via {}\n",
                    s6.inet_side, s6.lan_net, s6.wan
                ));
            }
        }
        b
    }

    /// A home router: WAN, a LAN bridge with a veth per host.
    fn router_batch(&self, site: Site) -> String {
        let s = self.addrs(site);
        let h1 = self.ns(Node::Host(site));
        let mut b = format!(
            "link set lo up\n\
             link add lan type bridge\n\
             link add p1 type veth peer name eth0 netns {h1}\n\
             link set p1 master lan\n"
        );
        if self.cfg.second_hosts {
            let h2 = self.ns(Node::Host2(site));
            b.push_str(&format!(
                "link add p2 type veth peer name eth0 netns {h2}\n\
                 link set p2 master lan\n\
                 link set p2 up\n"
            ));
        }
        b.push_str(&format!(
            "link set p1 up\n\
             link set lan up\n\
             link set wan up\n\
             addr add {}/{} dev wan\n\
             addr add {}/{} dev lan\n\
             route add default via {}\n",
            s.wan, s.wan_prefix, s.lan_router, s.lan_prefix, s.inet_side
        ));
        if self.cfg.site(site).v6.is_some() {
            let s6 = self.addrs6(site);
            b.push_str(&format!(
                "addr add {}/64 dev wan nodad\naddr add {}/64 dev lan nodad\nroute add ::/0 via {}\n",
                s6.wan, s6.lan_router, s6.inet_side
            ));
        }
        b
    }

    /// A leaf: the rendezvous host, the outside host or a LAN host.
    fn leaf_batch(&self, node: Node) -> String {
        let stack = self.cfg.stack(node);
        let (v4, v4_prefix, gw4, v6_addr, gw6) = match node {
            Node::Rdv => (RDV_IP, 24, INET_RDV_IP, RDV_IP6, INET_RDV_IP6),
            Node::Outside => (
                OUTSIDE_IP,
                24,
                INET_OUTSIDE_IP,
                OUTSIDE_IP6,
                INET_OUTSIDE_IP6,
            ),
            Node::Host(site) | Node::Host2(site) => {
                let (s, s6) = (self.addrs(site), self.addrs6(site));
                let first = matches!(node, Node::Host(_));
                (
                    if first { s.host } else { s.host2 },
                    s.lan_prefix,
                    s.lan_router,
                    if first { s6.host } else { s6.host2 },
                    s6.lan_router,
                )
            }
            other => unreachable!("leaf_batch of {other:?}"),
        };
        let mut b = String::from("link set lo up\nlink set eth0 up\n");
        if stack.has_v4() {
            b.push_str(&format!(
                "addr add {v4}/{v4_prefix} dev eth0\nroute add default via {gw4}\n"
            ));
        }
        if stack.has_v6() {
            b.push_str(&format!(
                "addr add {v6_addr}/64 dev eth0 nodad\nroute add ::/0 via {gw6}\n"
            ));
        }
        b
    }

    /// The IPv4 NAT of a site's home router.
    fn router_nat_box(&self, site: Site) -> NatBox {
        let s = self.addrs(site);
        NatBox {
            wan: "wan",
            inside: "lan",
            public: s.wan,
            full_cone_host: Some(s.host),
            hairpin: Hairpin::Stack,
            blocks: Vec::new(),
        }
    }

    /// The home router's nftables rules (NAT and IPv6 firewall), empty for neither.
    fn router_rules(&self, site: Site) -> String {
        let k = self.kinds();
        let mut rules = k.nat[site.index()]
            .rules(&self.router_nat_box(site))
            .unwrap_or_default();
        if let Some(fw) = k.fw[site.index()] {
            rules.push_str(&fw.rules("wan").unwrap_or_default());
        }
        rules
    }

    /// The CGN's nftables rules.
    fn cgn_rules(&self, cgn: Node) -> Option<String> {
        let Node::Cgn(own) = cgn else {
            unreachable!("cgn_rules of {cgn:?}")
        };
        let c = self.kinds().cgn[own.index()].expect("a CGN in front of this site");
        let shared = self.cfg.shared_cgn.is_some();
        let subscribers: Vec<Site> = if shared {
            Site::BOTH.to_vec()
        } else {
            vec![own]
        };
        let blocks = subscribers
            .iter()
            .filter_map(|&site| {
                let (first, last) = c.block(site)?;
                let s = self.addrs(site);
                Some(PortBlock {
                    net: Ipv4Addr::from(u32::from(s.wan) & 0xffff_ff00),
                    prefix: 24,
                    first,
                    last,
                })
            })
            .collect();
        let b = NatBox {
            wan: "wan",
            inside: CGN_INSIDE,
            public: cgn_public(if shared { Site::A } else { own }),
            full_cone_host: None,
            hairpin: if c.hairpin { Hairpin::On } else { Hairpin::Off },
            blocks,
        };
        c.nat.rules(&b)
    }

    /// Binds delay boxes (packets queued to an unbound queue are dropped), then diverts into
    /// them what each attachment sends on.
    ///
    /// FORWARD, not PREROUTING: ip_forward() checks the TTL before the FORWARD hook, so a SYN
    /// sent with a low TTL expires at once and its ICMP Time Exceeded comes back from this
    /// first hop without waiting for the link delay, as it would from the ISP router next to
    /// a real NAT. Only traffic that crosses the internet (or a shared CGN) is delayed.
    fn start_delay_boxes(&mut self) {
        let cfg = self.cfg;
        // (namespace node, [(interface, delay)]) per box.
        let mut boxes: Vec<(Node, Vec<(String, u32)>)> = Vec::new();
        let mut inet = vec![("to_rdv".to_string(), cfg.delay_rdv_ms)];
        self.rdv_slot = Some((0, 0));
        if cfg.shared_cgn.is_none() {
            for site in Site::BOTH {
                self.site_slots[site.index()] = Some((0, inet.len()));
                inet.push((format!("to_{}", site.tag()), cfg.site(site).delay_ms));
            }
            boxes.push((Node::Inet, inet));
        } else {
            boxes.push((Node::Inet, inet));
            let mut cgn = Vec::new();
            for site in Site::BOTH {
                self.site_slots[site.index()] = Some((1, cgn.len()));
                cgn.push((format!("sub_{}", site.tag()), cfg.site(site).delay_ms));
            }
            boxes.push((Node::Cgn(Site::A), cgn));
        }
        for (node, queues) in boxes {
            let delays: Vec<u32> = queues.iter().map(|q| q.1).collect();
            self.delay.push(DelayBox::start(&self.ns(node), &delays));
            let mut rules = String::from("*mangle\n");
            for (q, (ifname, _)) in queues.iter().enumerate() {
                rules.push_str(&format!(
                    "-A FORWARD -i {ifname} -j NFQUEUE --queue-num {q}\n"
                ));
            }
            rules.push_str("COMMIT\n");
            let mut tools = vec!["iptables-restore"];
            if self.node_has_v6(node) {
                tools.push("ip6tables-restore");
            }
            for t in tools {
                self.run_in(node, Command::new(tool(t)).arg("--noflush"), Some(&rules));
            }
        }
    }

    /// The hosts file of every namespace: localhost and [`RDV_NAME`].
    fn hosts_file_text(&self) -> String {
        let mut t = format!("127.0.0.1 localhost\n::1 localhost\n{RDV_IP} {RDV_NAME}\n");
        if self.cfg.has_v6() {
            t.push_str(&format!("{RDV_IP6} {RDV_NAME}\n"));
        }
        t
    }

    // ----- what the lab is ---------------------------------------------------------------

    /// Name of a node's namespace.
    pub fn ns(&self, node: Node) -> String {
        let role = match node {
            Node::Inet => "inet".into(),
            Node::Rdv => "rdv".into(),
            Node::Outside => "out".into(),
            Node::Router(s) => format!("r{}", s.tag()),
            Node::Cgn(_) if self.cfg.shared_cgn.is_some() => "cgn".into(),
            Node::Cgn(s) => format!("c{}", s.tag()),
            Node::Host(s) => format!("h{}", s.tag()),
            Node::Host2(s) => format!("h{}2", s.tag()),
        };
        format!("{}-{role}", self.id)
    }

    /// Names of all namespaces this lab created.
    pub fn namespaces(&self) -> Vec<String> {
        self.namespaces.clone()
    }

    /// Directory holding the lab's process logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The hosts file `ip netns exec` gives the node's processes.
    pub fn hosts_file(&self, node: Node) -> PathBuf {
        netns::etc_netns_dir(&self.ns(node)).join("hosts")
    }

    fn kinds(&self) -> Kinds {
        *self.kinds.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The home router's NAT kind now.
    pub fn nat(&self, site: Site) -> Nat {
        self.kinds().nat[site.index()]
    }

    /// The CGN in front of a site now, if any.
    pub fn cgn(&self, site: Site) -> Option<Cgn> {
        self.kinds().cgn[site.index()]
    }

    /// The home router's IPv6 firewall now (`None`: the site has no IPv6).
    pub fn firewall(&self, site: Site) -> Option<Firewall> {
        self.kinds().fw[site.index()]
    }

    pub fn addrs(&self, site: Site) -> SiteAddrs {
        let mut a = SiteAddrs::for_site(site, self.nat(site), self.cfg.cgn_of(site).is_some());
        if self.cfg.shared_cgn.is_some() {
            a.public = cgn_public(Site::A);
        }
        a
    }

    pub fn addrs6(&self, site: Site) -> SiteAddrs6 {
        SiteAddrs6::for_site(site, self.cfg.cgn_of(site).is_some())
    }

    /// The rendezvous host's address.
    pub fn rdv_ip(&self) -> Ipv4Addr {
        RDV_IP
    }

    /// The rendezvous host's IPv6 address (labs with IPv6).
    pub fn rdv_ip6(&self) -> Ipv6Addr {
        assert!(self.cfg.has_v6(), "rdv_ip6: this lab has no IPv6");
        RDV_IP6
    }

    /// A site home router's WAN address (public unless a CGN is in front).
    pub fn wan_ip(&self, site: Site) -> Ipv4Addr {
        self.addrs(site).wan
    }

    /// A site's first host address (public with [`Nat::None`] and no CGN).
    pub fn host_ip(&self, site: Site) -> Ipv4Addr {
        self.addrs(site).host
    }

    /// A site's second host address.
    pub fn host2_ip(&self, site: Site) -> Ipv4Addr {
        self.addrs(site).host2
    }

    /// A site's first host's IPv6 address (sites with IPv6).
    pub fn host_ip6(&self, site: Site) -> Ipv6Addr {
        assert!(
            self.cfg.site(site).v6.is_some(),
            "host_ip6: site {site:?} has no IPv6"
        );
        self.addrs6(site).host
    }

    /// The address under which the site's first host is seen on the internet (its own, the
    /// home router's WAN address, or the CGN's public address).
    pub fn public_ip(&self, site: Site) -> Ipv4Addr {
        self.addrs(site).public
    }

    /// The CGN's inside address toward a site's home router.
    pub fn cgn_inside_ip(&self, site: Site) -> Ipv4Addr {
        assert!(
            self.cfg.cgn_of(site).is_some(),
            "cgn_inside_ip: no CGN in front of site {site:?}"
        );
        self.addrs(site).inet_side
    }

    /// The routers in front of a site's first host that answer from inside (private or
    /// shared-space) addresses, as [`crate::udp_hops`] must find them: the home router's LAN
    /// address, then the CGN's inside address. Empty for a public host.
    pub fn nat_hops(&self, site: Site) -> Vec<Ipv4Addr> {
        let s = self.addrs(site);
        let cgn = self.cfg.cgn_of(site).is_some();
        let mut hops = Vec::new();
        if self.nat(site) != Nat::None || cgn {
            hops.push(s.lan_router);
        }
        if cgn {
            hops.push(s.inet_side);
        }
        hops
    }

    /// Address of a node as used by the processes running on it.
    pub fn node_ip(&self, node: Node) -> Ipv4Addr {
        match node {
            Node::Inet => INET_RDV_IP,
            Node::Rdv => RDV_IP,
            Node::Router(s) => self.wan_ip(s),
            Node::Cgn(s) => self.public_ip(s),
            Node::Host(s) => self.host_ip(s),
            Node::Host2(s) => self.host2_ip(s),
            Node::Outside => OUTSIDE_IP,
        }
    }

    // ----- changing it at run time -------------------------------------------------------

    /// Sets the one-way delays (ms) of the three attachments at run time.
    pub fn set_delays(&self, a_ms: u32, b_ms: u32, rdv_ms: u32) {
        assert!(
            !self.delay.is_empty(),
            "set_delays: this lab was built without a delay box"
        );
        for (slot, ms) in [
            (self.site_slots[0], a_ms),
            (self.site_slots[1], b_ms),
            (self.rdv_slot, rdv_ms),
        ] {
            if let Some((b, q)) = slot {
                self.delay[b].set_delay(q, ms);
            }
        }
    }

    /// Swaps a home router's NAT kind (its IPv4 ruleset, in one nft transaction). Flows the
    /// router tracks keep their mappings; [`Lab::flush_conntrack`] forgets them. Port
    /// forwards made with [`Lab::port_forward`] are gone. A public LAN ([`Nat::None`]) and a
    /// NATed one have different addresses, so neither can become the other.
    pub fn set_nat(&self, site: Site, nat: Nat) {
        let old = self.nat(site);
        assert!(
            (old == Nat::None) == (nat == Nat::None),
            "set_nat: site {site:?} cannot change from {old:?} to {nat:?} (addresses differ)"
        );
        self.kinds.lock().unwrap_or_else(|e| e.into_inner()).nat[site.index()] = nat;
        let rules = nat
            .rules(&self.router_nat_box(site))
            .expect("a NAT kind has rules");
        self.nft(
            Node::Router(site),
            &format!("delete table ip {NAT_TABLE}\n{rules}"),
        );
    }

    /// Swaps the kind of the CGN in front of a site (kind, hairpinning, port blocks). With a
    /// shared CGN both sites get it.
    pub fn set_cgn(&self, site: Site, cgn: Cgn) {
        assert!(
            self.cgn(site).is_some(),
            "set_cgn: no CGN in front of site {site:?}"
        );
        {
            let mut k = self.kinds.lock().unwrap_or_else(|e| e.into_inner());
            if self.cfg.shared_cgn.is_some() {
                k.cgn = [Some(cgn), Some(cgn)];
            } else {
                k.cgn[site.index()] = Some(cgn);
            }
        }
        let rules = self
            .cgn_rules(Node::Cgn(site))
            .expect("a CGN kind has rules");
        self.nft(
            Node::Cgn(site),
            &format!("delete table ip {NAT_TABLE}\n{rules}"),
        );
    }

    /// Swaps a site's IPv6 home firewall.
    pub fn set_firewall(&self, site: Site, fw: Firewall) {
        let old = self.firewall(site);
        assert!(old.is_some(), "set_firewall: site {site:?} has no IPv6");
        self.kinds.lock().unwrap_or_else(|e| e.into_inner()).fw[site.index()] = Some(fw);
        let mut script = String::new();
        if old.and_then(|f| f.rules("wan")).is_some() {
            script.push_str(&format!("delete table ip6 {FW6_TABLE}\n"));
        }
        script.push_str(&fw.rules("wan").unwrap_or_default());
        if !script.is_empty() {
            self.nft(Node::Router(site), &script);
        }
    }

    /// A port forward on a NATed site's router, like a home router's: new TCP connections to
    /// `wan_port` on its WAN address are DNATed to `to` on its LAN (and let through its
    /// forward chain). Returns the address to connect to (public unless a CGN is in front).
    /// Panics for [`Nat::None`] (the host is public there: connect to it directly).
    pub fn port_forward(&self, site: Site, wan_port: u16, to: SocketAddrV4) -> SocketAddrV4 {
        assert!(
            self.nat(site) != Nat::None,
            "port_forward: site {site:?} has no NAT (its host is public)"
        );
        // `insert`: ahead of a full cone's catch-all DNAT rule.
        self.nft(
            Node::Router(site),
            &format!(
                "insert rule ip {NAT_TABLE} prerouting iifname \"wan\" tcp dport {wan_port} dnat to {to}\n\
                 insert rule ip {NAT_TABLE} forward iifname \"wan\" oifname \"lan\" ip daddr {} \
                 tcp dport {} ct status dnat accept\n",
                to.ip(),
                to.port()
            ),
        );
        SocketAddrV4::new(self.wan_ip(site), wan_port)
    }

    /// Where a site's uplink can be cut: the upstream node and its interface toward the site.
    fn uplink(&self, site: Site) -> (Node, String) {
        if self.cfg.shared_cgn.is_some() {
            (Node::Cgn(site), format!("sub_{}", site.tag()))
        } else {
            (Node::Inet, format!("to_{}", site.tag()))
        }
    }

    /// Cuts a site off: the box upstream of it (the internet router, or a shared CGN)
    /// silently drops every packet from or to the site, both families, like an upstream
    /// outage. The site's routers and their connection tracking notice nothing; hosts get no
    /// ICMP errors. Undo with [`Lab::restore_uplink`].
    pub fn cut_uplink(&self, site: Site) {
        let (node, link) = self.uplink(site);
        self.nft(
            node,
            &format!(
                "table inet natlab_cut_{tag} {{\n\
                 \x20   chain forward {{\n\
                 \x20       type filter hook forward priority -300; policy accept;\n\
                 \x20       iifname \"{link}\" drop\n\
                 \x20       oifname \"{link}\" drop\n\
                 \x20   }}\n\
                 \x20   chain input {{\n\
                 \x20       type filter hook input priority -300; policy accept;\n\
                 \x20       iifname \"{link}\" drop\n\
                 \x20   }}\n\
                 \x20   chain output {{\n\
                 \x20       type filter hook output priority -300; policy accept;\n\
                 \x20       oifname \"{link}\" drop\n\
                 \x20   }}\n\
                 }}\n",
                tag = site.tag()
            ),
        );
    }

    /// Ends a [`Lab::cut_uplink`].
    pub fn restore_uplink(&self, site: Site) {
        let (node, _) = self.uplink(site);
        self.nft(
            node,
            &format!("delete table inet natlab_cut_{}\n", site.tag()),
        );
    }

    /// Flushes the connection tracking table of a node (`conntrack -F`): a NAT router forgets
    /// every mapping and flow it had.
    pub fn flush_conntrack(&self, node: Node) {
        let conntrack = tool("conntrack");
        self.run_ok(node, conntrack.to_str().expect("UTF-8 path"), &["-F"]);
    }

    /// The node's connection tracking table (`conntrack -L`, both families).
    pub fn conntrack(&self, node: Node) -> String {
        let conntrack = tool("conntrack");
        let c = conntrack.to_str().expect("UTF-8 path");
        let mut text = String::from_utf8_lossy(&self.run(node, c, &["-L"]).stdout).into_owned();
        if self.node_has_v6(node) {
            let v6 = self.run(node, c, &["-L", "-f", "ipv6"]);
            text.push_str(&String::from_utf8_lossy(&v6.stdout));
        }
        text
    }

    /// Bytes sent but not yet acknowledged (`ss` Send-Q) on each established TCP connection
    /// of `node` toward `dst` (an `ss` address filter: `IP` or `IP:PORT`).
    pub fn unacked_bytes(&self, node: Node, dst: &str) -> Vec<u64> {
        let ss = tool("ss");
        let out = self.run_ok(
            node,
            ss.to_str().expect("UTF-8 path"),
            &["-Htn", "state", "established", "dst", dst],
        );
        out.lines()
            .filter_map(|l| l.split_whitespace().nth(1)?.parse().ok())
            .collect()
    }

    /// A counter of the kernel's `/proc/net/netstat` in a node's namespace, e.g.
    /// `("TcpExt", "ListenOverflows")`.
    pub fn netstat(&self, node: Node, group: &str, name: &str) -> u64 {
        let ns = self.ns(node);
        let text = in_netns(&ns, || fs::read_to_string("/proc/thread-self/net/netstat"))
            .unwrap_or_else(|e| panic!("read net/netstat in {ns}: {e}"));
        let prefix = format!("{group}:");
        let mut rows = text.lines().filter(|l| l.starts_with(&prefix));
        let (names, values) = (rows.next(), rows.next());
        names
            .zip(values)
            .and_then(|(n, v)| {
                let at = n.split_whitespace().position(|x| x == name)?;
                v.split_whitespace().nth(at)?.parse().ok()
            })
            .unwrap_or_else(|| panic!("no {group} {name} in net/netstat of {ns}"))
    }

    /// Counts the packets a node forwards that match an nftables expression (e.g.
    /// `ip daddr 198.51.100.10 tcp flags & rst == rst`; an `inet` table, so `ip6` works
    /// too), under `name`; read with [`Lab::watched`]. Counting starts now and sees packets
    /// before the node's NAT and filter rules (source addresses are still private on a
    /// router's LAN side).
    pub fn watch(&self, node: Node, name: &str, expr: &str) {
        self.nft(
            node,
            &format!(
                "table inet natlab_watch {{\n\
                 \x20   chain watch {{\n\
                 \x20       type filter hook forward priority -250; policy accept;\n\
                 \x20   }}\n\
                 }}\n\
                 add counter inet natlab_watch {name}\n\
                 add rule inet natlab_watch watch {expr} counter name \"{name}\"\n"
            ),
        );
    }

    /// Packets counted so far by the [`Lab::watch`] counter `name` on `node`.
    pub fn watched(&self, node: Node, name: &str) -> u64 {
        let nft = tool("nft");
        let text = self.run_ok(
            node,
            nft.to_str().expect("UTF-8 path"),
            &["list", "counter", "inet", "natlab_watch", name],
        );
        text.split_whitespace()
            .skip_while(|w| *w != "packets")
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no packet count in `nft list counter {name}`:\n{text}"))
    }

    /// Counters of the delay boxes (user space) and of the kernel queues.
    pub fn delay_stats(&self) -> DelayStats {
        assert!(!self.delay.is_empty(), "delay_stats: no delay box running");
        let mut total = DelayStats::default();
        for d in &self.delay {
            total.add(d.stats());
        }
        total
    }

    // ----- running things ----------------------------------------------------------------

    /// `ip netns exec NS program args...`; returns the output (status not checked).
    pub fn run(&self, node: Node, program: &str, args: &[&str]) -> Output {
        let ns = self.ns(node);
        let mut cmd = Command::new(tool("ip"));
        cmd.args(["netns", "exec", &ns, program])
            .args(args)
            .env("PATH", netns::child_path());
        cmd.output()
            .unwrap_or_else(|e| panic!("run {program} {args:?} in {ns}: {e}"))
    }

    /// Like [`Lab::run`] but panics on a non-zero exit; returns stdout.
    pub fn run_ok(&self, node: Node, program: &str, args: &[&str]) -> String {
        let out = self.run(node, program, args);
        if !out.status.success() {
            panic!(
                "`{program} {args:?}` in {} failed ({}):\n{}{}",
                self.ns(node),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs a shell script (`sh -ec`) in a namespace; panics on failure; returns stdout.
    pub fn sh(&self, node: Node, script: &str) -> String {
        let sh = tool("sh");
        self.run_ok(node, sh.to_str().expect("UTF-8 path"), &["-ec", script])
    }

    /// Runs `cmd` (a lab tool) in a node's namespace: the child inherits the namespace of
    /// the thread that starts it, so no `ip netns exec` is needed. Panics on failure.
    fn run_in(&self, node: Node, cmd: &mut Command, input: Option<&str>) -> String {
        let ns = self.ns(node);
        let what = format!("{cmd:?} in {ns}");
        in_netns(&ns, || match input {
            Some(text) => run_ok_stdin(cmd, text, &format!("{what}:\n{text}")),
            None => run_ok(cmd, &what),
        })
    }

    fn ip_batch(&self, node: Node, batch: &str) {
        let ns = self.ns(node);
        run_ok_stdin(
            Command::new(tool("ip")).args(["-n", &ns, "-batch", "-"]),
            batch,
            &format!("ip -n {ns} -batch:\n{batch}"),
        );
    }

    /// Applies an nftables script in a node's namespace (one transaction).
    pub fn nft(&self, node: Node, rules: &str) {
        self.run_in(
            node,
            Command::new(tool("nft")).args(["-f", "-"]),
            Some(rules),
        );
    }

    /// Spawns a long-running process in a namespace; stdout and stderr go to log files in
    /// [`Lab::dir`]; stdin is empty. Killed when the returned [`Proc`] (or the lab) is dropped.
    pub fn spawn(&self, node: Node, name: &str, program: &str, args: &[&str]) -> Proc {
        self.spawn_cmd(node, Spawn::new(program).args(args).name(name))
    }

    /// Spawns what `spec` describes in a node's namespace (`ip netns exec`, so the process
    /// sees the namespace's hosts file). stderr goes to a log file in [`Lab::dir`], and so
    /// does stdout unless piped.
    pub fn spawn_cmd(&self, node: Node, spec: Spawn) -> Proc {
        let ns = self.ns(node);
        let n = LAB_COUNTER.fetch_add(1, Ordering::SeqCst);
        let base = format!("{}-{n}", spec.name);
        let stderr_path = self.dir.join(format!("{base}.stderr"));
        let stdout_path = self.dir.join(format!("{base}.stdout"));
        let stderr = File::create(&stderr_path).expect("create stderr log");
        let stdout =
            (!spec.pipe_stdout).then(|| File::create(&stdout_path).expect("create stdout log"));
        let child = spec
            .command(&ns, stderr, stdout)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {:?} {:?} in {ns}: {e}", spec.program, spec.args));
        self.logs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((base.clone(), stderr_path.clone()));
        Proc {
            name: base,
            child,
            stderr_path,
            stdout_path: (!spec.pipe_stdout).then_some(stdout_path),
        }
    }

    // ----- probing -----------------------------------------------------------------------

    /// Polls until a TCP connect from `node` to `addr` succeeds; panics after `timeout`.
    pub fn wait_tcp(&self, node: Node, addr: SocketAddr, timeout: Duration) {
        let ns = self.ns(node);
        let res = in_netns(&ns, move || {
            let deadline = Instant::now() + timeout;
            loop {
                let err = match TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
                    Ok(_) => return Ok(()),
                    Err(e) => e,
                };
                if Instant::now() >= deadline {
                    return Err(err);
                }
                thread::sleep(WAIT_POLL);
            }
        });
        if let Err(e) = res {
            panic!(
                "timeout: {addr} did not accept TCP connections from {ns} within {timeout:?} \
                 (last error: {e})"
            );
        }
    }

    /// True when something in `node` listens on TCP `port` (any address); nothing connects.
    pub fn listening(&self, node: Node, port: u16) -> bool {
        let hex = format!(":{port:04X}");
        in_netns(&self.ns(node), || {
            ["/proc/thread-self/net/tcp", "/proc/thread-self/net/tcp6"]
                .iter()
                .filter_map(|p| fs::read_to_string(p).ok())
                .any(|t| {
                    // Fields: sl, local_address, rem_address, st (0A: LISTEN), ...
                    t.lines().skip(1).any(|l| {
                        let f: Vec<&str> = l.split_whitespace().collect();
                        f.len() > 3 && f[1].ends_with(&hex) && f[3] == "0A"
                    })
                })
        })
    }

    /// One HTTP/1.1 GET from `node` to `addr` (`Connection: close`); returns status and body.
    pub fn http_get(
        &self,
        node: Node,
        addr: SocketAddr,
        path: &str,
        timeout: Duration,
    ) -> io::Result<(u16, String)> {
        let path = path.to_string();
        in_netns(&self.ns(node), move || http_get(addr, &path, timeout))
    }

    /// Polls `GET path` from `node` until it answers 200; panics after `timeout`.
    pub fn wait_http_200(&self, node: Node, addr: SocketAddr, path: &str, timeout: Duration) {
        let path_owned = path.to_string();
        let res = in_netns(&self.ns(node), move || {
            let deadline = Instant::now() + timeout;
            loop {
                let last = http_get(addr, &path_owned, Duration::from_secs(2));
                if let Ok((200, _)) = last {
                    return Ok(());
                }
                if Instant::now() >= deadline {
                    return Err(last);
                }
                thread::sleep(Duration::from_millis(50));
            }
        });
        if let Err(last) = res {
            panic!(
                "timeout: GET http://{addr}{path} did not answer 200 within {timeout:?} (last: {last:?})"
            );
        }
    }

    /// rx and tx byte counters of an interface in a namespace.
    pub fn iface_bytes(&self, node: Node, ifname: &str) -> (u64, u64) {
        let ns = self.ns(node);
        let text = in_netns(&ns, || fs::read_to_string("/proc/thread-self/net/dev"))
            .unwrap_or_else(|e| panic!("read net/dev in {ns}: {e}"));
        for line in text.lines() {
            if let Some((name, rest)) = line.split_once(':')
                && name.trim() == ifname
            {
                let f: Vec<u64> = rest
                    .split_whitespace()
                    .map(|x| x.parse().unwrap_or(0))
                    .collect();
                return (f[0], f[8]);
            }
        }
        panic!("interface {ifname} not found in {ns}:\n{text}");
    }

    /// rx + tx bytes of the rendezvous host's only interface (eth0).
    pub fn rdv_bytes(&self) -> u64 {
        let (rx, tx) = self.iface_bytes(Node::Rdv, "eth0");
        rx + tx
    }

    /// Conntrack tables of the routers and CGNs, delay-box counters and process log tails.
    pub fn diagnostics(&self) -> String {
        let mut out = String::new();
        if find_tool("conntrack").is_some() {
            for node in self.nodes() {
                if matches!(node, Node::Router(_) | Node::Cgn(_))
                    && self.namespaces.contains(&self.ns(node))
                {
                    out.push_str(&format!(
                        "--- conntrack -L in {}:\n{}",
                        self.ns(node),
                        self.conntrack(node)
                    ));
                }
            }
        }
        if !self.delay.is_empty() {
            out.push_str(&format!("--- delay box: {:?}\n", self.delay_stats()));
        }
        for (name, path) in self.logs.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let text = fs::read_to_string(path).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            out.push_str(&format!(
                "--- stderr of {name} (last {} lines):\n",
                tail.len()
            ));
            for l in tail.iter().rev() {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }

    /// The addresses of a node's interfaces (`ip -br addr`, for diagnostics and checks).
    pub fn addresses(&self, node: Node) -> Vec<IpAddr> {
        let ip = tool("ip");
        let out = run_ok(
            Command::new(ip).args(["-n", &self.ns(node), "-br", "addr"]),
            "ip -br addr",
        );
        out.split_whitespace()
            .filter_map(|w| w.split('/').next()?.parse().ok())
            .collect()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let panicking = thread::panicking();
        if panicking {
            eprintln!(
                "NAT lab {} torn down after a panic; diagnostics:\n{}\n(logs kept in {})",
                self.id,
                self.diagnostics(),
                self.dir.display()
            );
        }
        // Kill every process still living in one of our namespaces, stop the delay boxes,
        // delete the namespaces (veths and routes go with them) and their hosts files.
        kill_namespace_pids(&self.namespaces);
        self.delay.clear();
        delete_namespaces(&self.namespaces);
        if !panicking {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}
