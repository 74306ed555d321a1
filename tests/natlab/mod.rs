//! NAT lab: network namespaces, NAT routers and a delay box for end-to-end tests of p2pnc.
//!
//! Included by integration tests with `mod natlab;` and by benches with
//! `#[path = "../tests/natlab/mod.rs"] mod natlab;`. It uses no test-only macros.
//!
//! # Topology (all inside namespaces created here; nothing touches the root namespace)
//!
//! ```text
//!   rdv (203.0.113.10) ──eth0── to_rdv ┐
//!                                      │  inet: plain router, no routes to 10.x;
//!   router A (wan 198.51.100.10) ─ to_a┤  every packet it forwards from one of
//!                                      │  these veths is held by the delay box
//!   router B (wan 192.0.2.20) ──── to_b┘  (NFQUEUE) for that link's delay
//!
//!   router A: bridge `lan` 10.0.1.1/24 ── host A (10.0.1.2), host A2 (10.0.1.3)
//!   router B: bridge `lan` 10.0.2.1/24 ── host B (10.0.2.2), host B2 (10.0.2.3)
//! ```
//!
//! With [`Nat::None`] the site's LAN is public instead (A: 198.51.100.128/25, host
//! 198.51.100.130; B: 192.0.2.128/25, host 192.0.2.130) and the router only routes.
//!
//! One-way delay: a packet that `inet` forwards from site X's veth is held `delay_X` before it
//! goes on, so the one-way delay A→B is `d_A`, and RTT(A, B) = `d_A + d_B`
//! (RTT(A, rdv) = `d_A + d_rdv`). Packets whose TTL expires at `inet` are answered (ICMP Time
//! Exceeded) at once, without the delay.
//!
//! NAT routers drop packets that conntrack finds INVALID in their forward chain, so nothing
//! leaves a NATed LAN with its private source address.

#![allow(dead_code)]

use std::collections::{HashSet, VecDeque};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// Gate: root, tools, CI
// ---------------------------------------------------------------------------------------------

/// Prefix of every namespace this harness creates: `p2pnclab-<pid>-<counter>-<role>`.
pub const NS_PREFIX: &str = "p2pnclab-";

/// Tools the lab needs (looked up in PATH and the usual sbin directories).
pub const REQUIRED_TOOLS: &[&str] = &["ip", "nft", "iptables", "sh"];

/// True when the environment says we run under CI (`CI` set to anything but `""`, `0`, `false`).
pub fn under_ci() -> bool {
    match std::env::var("CI") {
        Ok(v) => !matches!(v.trim().to_ascii_lowercase().as_str(), "" | "0" | "false"),
        Err(std::env::VarError::NotPresent) => false,
        Err(std::env::VarError::NotUnicode(_)) => true,
    }
}

/// Why the lab cannot run here, or `None` if it can.
pub fn lab_unavailable_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        return Some(format!("running as euid {euid}, not root"));
    }
    let missing: Vec<&str> = REQUIRED_TOOLS
        .iter()
        .copied()
        .filter(|t| find_tool(t).is_none())
        .collect();
    if !missing.is_empty() {
        return Some(format!("missing tools: {}", missing.join(", ")));
    }
    None
}

/// Gate for lab tests. Returns true when the lab can run. Otherwise prints
/// `skipped: NAT lab needs root (...)` to stderr and returns false, except under CI, where it
/// panics: lab tests must never pass silently in CI.
pub fn require_lab() -> bool {
    match lab_unavailable_reason() {
        None => true,
        Some(reason) => {
            if under_ci() {
                panic!(
                    "NAT lab cannot run under CI: {reason}. The lab tests need root and the tools \
                     {REQUIRED_TOOLS:?} (apt-get install -y iproute2 nftables iptables)."
                );
            }
            eprintln!("skipped: NAT lab needs root ({reason})");
            false
        }
    }
}

/// Absolute path of a tool, searched in PATH and the sbin directories.
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    for d in [
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
    ] {
        dirs.push(PathBuf::from(d));
    }
    dirs.into_iter().map(|d| d.join(name)).find(|p| {
        fs::metadata(p)
            .map(|m| m.is_file() && m.mode() & 0o111 != 0)
            .unwrap_or(false)
    })
}

/// PATH for the lab's child processes: the caller's PATH plus the standard sbin/bin
/// directories (so `ip`, `nft`, ... resolve even where PATH lacks /usr/sbin).
fn child_path() -> std::ffi::OsString {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    for d in [
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
    ] {
        if !dirs.iter().any(|x| x == Path::new(d)) {
            dirs.push(PathBuf::from(d));
        }
    }
    std::env::join_paths(dirs).unwrap_or_default()
}

/// Like [`find_tool`], but panics when the tool is missing.
pub fn tool(name: &str) -> PathBuf {
    find_tool(name).unwrap_or_else(|| panic!("NAT lab: required tool `{name}` not found"))
}

// ---------------------------------------------------------------------------------------------
// Topology description
// ---------------------------------------------------------------------------------------------

/// NAT behaviour of one site's router.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nat {
    /// No NAT: the site host has a public address and the router only routes.
    None,
    /// Masquerade plus DNAT of every new inbound TCP connection to the LAN host on the same
    /// port: endpoint-independent mapping and filtering.
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
}

/// One of the two NATed sites.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Site {
    A,
    B,
}

impl Site {
    pub fn other(self) -> Site {
        match self {
            Site::A => Site::B,
            Site::B => Site::A,
        }
    }
    fn tag(self) -> &'static str {
        match self {
            Site::A => "a",
            Site::B => "b",
        }
    }
}

/// A namespace of the lab.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Node {
    /// The "internet" router (holds the delay box).
    Inet,
    /// The rendezvous host (203.0.113.10).
    Rdv,
    /// A site's NAT router.
    Router(Site),
    /// A site's first LAN host.
    Host(Site),
    /// A site's second LAN host (only with [`LabConfig::second_hosts`]).
    Host2(Site),
    /// A host on the internet with its own public address, [`OUTSIDE_IP`], and no delay
    /// (only with [`LabConfig::outside_host`]).
    Outside,
}

impl Node {
    fn role(self) -> String {
        match self {
            Node::Inet => "inet".into(),
            Node::Rdv => "rdv".into(),
            Node::Router(s) => format!("r{}", s.tag()),
            Node::Host(s) => format!("h{}", s.tag()),
            Node::Host2(s) => format!("h{}2", s.tag()),
            Node::Outside => "out".into(),
        }
    }
}

/// Address of the rendezvous host.
pub const RDV_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const INET_RDV_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
/// Address of the outside host ([`Node::Outside`]).
pub const OUTSIDE_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const INET_OUTSIDE_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);

/// Delay-box queue numbers (inside the lab's `inet` namespace).
const QUEUE_RDV: u16 = 0;
const QUEUE_A: u16 = 1;
const QUEUE_B: u16 = 2;
const N_QUEUES: usize = 3;

/// Addresses of one site (depend on whether its LAN is NATed or public).
#[derive(Clone, Copy, Debug)]
pub struct SiteAddrs {
    /// inet router's address on the site's WAN link.
    pub inet_side: Ipv4Addr,
    /// Router's WAN address.
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
}

impl SiteAddrs {
    pub fn for_site(site: Site, nat: Nat) -> SiteAddrs {
        let public = nat == Nat::None;
        // Site A's internet side is 198.51.100.0/25 and its LAN 10.0.1.0/24; site B's are
        // 192.0.2.0/25 and 10.0.2.0/24. A public site's "LAN" is the upper half of its /24.
        let (net, wan_last, lan3) = match site {
            Site::A => ([198, 51, 100], 10, 1),
            Site::B => ([192, 0, 2], 20, 2),
        };
        let inet = |last| Ipv4Addr::new(net[0], net[1], net[2], last);
        let pick = |public_last, lan_last| {
            if public {
                inet(public_last)
            } else {
                Ipv4Addr::new(10, 0, lan3, lan_last)
            }
        };
        SiteAddrs {
            inet_side: inet(1),
            wan: inet(wan_last),
            wan_prefix: 25,
            lan_router: pick(129, 1),
            host: pick(130, 2),
            host2: pick(131, 3),
            lan_net: pick(128, 0),
            lan_prefix: if public { 25 } else { 24 },
        }
    }
}

/// Configuration of a lab instance.
#[derive(Clone, Copy, Debug)]
pub struct LabConfig {
    pub a: Nat,
    pub b: Nat,
    /// One-way delay of packets coming from site A (ms).
    pub delay_a_ms: u32,
    /// One-way delay of packets coming from site B (ms).
    pub delay_b_ms: u32,
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
    /// Sites with the given NAT kinds, 20 ms one-way delay on every link, second hosts on.
    pub fn new(a: Nat, b: Nat) -> LabConfig {
        LabConfig {
            a,
            b,
            delay_a_ms: 20,
            delay_b_ms: 20,
            delay_rdv_ms: 20,
            second_hosts: true,
            outside_host: false,
            delay_box: true,
        }
    }
    pub fn delays(mut self, a_ms: u32, b_ms: u32, rdv_ms: u32) -> LabConfig {
        self.delay_a_ms = a_ms;
        self.delay_b_ms = b_ms;
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
}

// ---------------------------------------------------------------------------------------------
// The lab
// ---------------------------------------------------------------------------------------------

static LAB_LOCK: Mutex<()> = Mutex::new(());
static LAB_COUNTER: AtomicU32 = AtomicU32::new(0);

/// A running lab instance. Everything is torn down on drop (also while unwinding).
pub struct Lab {
    /// `p2pnclab-<pid>-<counter>`; namespace names are `<id>-<role>`.
    pub id: String,
    pub cfg: LabConfig,
    /// Namespaces created so far, in creation order.
    namespaces: Vec<String>,
    /// Directory for process logs (removed on drop unless panicking).
    dir: PathBuf,
    delay: Option<DelayBox>,
    logs: Mutex<Vec<(String, PathBuf)>>,
    /// Held for the lab's lifetime: lab instances of one process run one at a time.
    /// Declared last, so it is released after everything else is gone.
    _guard: MutexGuard<'static, ()>,
}

impl Lab {
    /// Builds a lab. Panics (after tearing down what was built) if any step fails.
    /// Call [`require_lab`] first.
    pub fn new(cfg: LabConfig) -> Lab {
        let guard = LAB_LOCK.lock().unwrap_or_else(|e| e.into_inner());
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
            delay: None,
            logs: Mutex::new(Vec::new()),
            _guard: guard,
        };
        lab.build();
        lab
    }

    fn build(&mut self) {
        let cfg = self.cfg;
        let mut nodes = vec![Node::Inet, Node::Rdv];
        for site in [Site::A, Site::B] {
            nodes.push(Node::Router(site));
            nodes.push(Node::Host(site));
            if cfg.second_hosts {
                nodes.push(Node::Host2(site));
            }
        }
        if cfg.outside_host {
            nodes.push(Node::Outside);
        }
        for node in &nodes {
            let name = self.ns(*node);
            run_ok(
                Command::new(tool("ip")).args(["netns", "add", &name]),
                "ip netns add",
            );
            self.namespaces.push(name.clone());
            // No IPv6 (keeps the lab IPv4-only and the rdv counters quiet), loopback up,
            // bridged frames do not go through iptables/nftables.
            self.sh(
                *node,
                "echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6; \
                 echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6; \
                 ip link set lo up; \
                 if [ -e /proc/sys/net/bridge/bridge-nf-call-iptables ]; then \
                   echo 0 > /proc/sys/net/bridge/bridge-nf-call-iptables; fi",
            );
        }

        // Internet router and the rendezvous host.
        let rdv = self.ns(Node::Rdv);
        let ra = self.ns(Node::Router(Site::A));
        let rb = self.ns(Node::Router(Site::B));
        let sa = self.addrs(Site::A);
        let sb = self.addrs(Site::B);
        let mut inet = format!(
            "link add to_rdv type veth peer name eth0 netns {rdv}\n\
             link add to_a type veth peer name wan netns {ra}\n\
             link add to_b type veth peer name wan netns {rb}\n\
             addr add {INET_RDV_IP}/24 dev to_rdv\n\
             addr add {}/{} dev to_a\n\
             addr add {}/{} dev to_b\n\
             link set to_rdv up\n\
             link set to_a up\n\
             link set to_b up\n",
            sa.inet_side, sa.wan_prefix, sb.inet_side, sb.wan_prefix
        );
        for (site, s) in [(Site::A, sa), (Site::B, sb)] {
            if self.nat(site) == Nat::None {
                inet.push_str(&format!(
                    "route add {}/{} via {}\n",
                    s.lan_net, s.lan_prefix, s.wan
                ));
            }
        }
        if cfg.outside_host {
            let out = self.ns(Node::Outside);
            inet.push_str(&format!(
                "link add to_out type veth peer name eth0 netns {out}\n\
                 addr add {INET_OUTSIDE_IP}/24 dev to_out\n\
                 link set to_out up\n"
            ));
        }
        self.ip_batch(Node::Inet, &inet);
        self.sh(Node::Inet, "echo 1 > /proc/sys/net/ipv4/ip_forward");
        if cfg.outside_host {
            self.ip_batch(
                Node::Outside,
                &format!(
                    "addr add {OUTSIDE_IP}/24 dev eth0\nlink set eth0 up\nroute add default via {INET_OUTSIDE_IP}\n"
                ),
            );
        }
        self.ip_batch(
            Node::Rdv,
            &format!(
                "addr add {RDV_IP}/24 dev eth0\nlink set eth0 up\nroute add default via {INET_RDV_IP}\n"
            ),
        );

        // Sites.
        for site in [Site::A, Site::B] {
            let s = self.addrs(site);
            let h1 = self.ns(Node::Host(site));
            let mut batch = format!(
                "link add lan type bridge\n\
                 link add p1 type veth peer name eth0 netns {h1}\n\
                 link set p1 master lan\n"
            );
            if cfg.second_hosts {
                let h2 = self.ns(Node::Host2(site));
                batch.push_str(&format!(
                    "link add p2 type veth peer name eth0 netns {h2}\n\
                     link set p2 master lan\n\
                     link set p2 up\n"
                ));
            }
            batch.push_str(&format!(
                "link set p1 up\n\
                 link set lan up\n\
                 link set wan up\n\
                 addr add {}/{} dev wan\n\
                 addr add {}/{} dev lan\n\
                 route add default via {}\n",
                s.wan, s.wan_prefix, s.lan_router, s.lan_prefix, s.inet_side
            ));
            self.ip_batch(Node::Router(site), &batch);
            self.sh(Node::Router(site), "echo 1 > /proc/sys/net/ipv4/ip_forward");
            if let Some(rules) = nft_rules(self.nat(site), &s) {
                self.nft(Node::Router(site), &rules);
            }
            let mut hosts = vec![(Node::Host(site), s.host)];
            if cfg.second_hosts {
                hosts.push((Node::Host2(site), s.host2));
            }
            for (node, ip) in hosts {
                self.ip_batch(
                    node,
                    &format!(
                        "addr add {ip}/{} dev eth0\nlink set eth0 up\nroute add default via {}\n",
                        s.lan_prefix, s.lan_router
                    ),
                );
            }
        }

        // Delay box: bind the queues first (packets queued to an unbound queue are dropped),
        // then divert what each attachment sends through the internet into its queue.
        // FORWARD, not PREROUTING: ip_forward() checks the TTL before the FORWARD hook, so a
        // SYN sent with a low TTL expires at once and its ICMP Time Exceeded comes back from
        // this first hop without waiting for the link delay, as it would from the ISP router
        // next to a real NAT. Only traffic that crosses the internet is delayed.
        if !cfg.delay_box {
            return;
        }
        let delays = [cfg.delay_rdv_ms, cfg.delay_a_ms, cfg.delay_b_ms];
        self.delay = Some(DelayBox::start(&self.ns(Node::Inet), delays));
        for (ifname, q) in [("to_rdv", QUEUE_RDV), ("to_a", QUEUE_A), ("to_b", QUEUE_B)] {
            let inet_ns = self.ns(Node::Inet);
            run_ok(
                Command::new(tool("ip"))
                    .args(["netns", "exec", &inet_ns])
                    .arg(tool("iptables"))
                    .args([
                        "-w",
                        "-t",
                        "mangle",
                        "-A",
                        "FORWARD",
                        "-i",
                        ifname,
                        "-j",
                        "NFQUEUE",
                        "--queue-num",
                        &q.to_string(),
                    ]),
                "iptables NFQUEUE rule",
            );
        }
    }

    /// Name of a node's namespace.
    pub fn ns(&self, node: Node) -> String {
        format!("{}-{}", self.id, node.role())
    }

    /// Names of all namespaces this lab created.
    pub fn namespaces(&self) -> Vec<String> {
        self.namespaces.clone()
    }

    /// Directory holding the lab's process logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn nat(&self, site: Site) -> Nat {
        match site {
            Site::A => self.cfg.a,
            Site::B => self.cfg.b,
        }
    }

    pub fn addrs(&self, site: Site) -> SiteAddrs {
        SiteAddrs::for_site(site, self.nat(site))
    }

    /// The rendezvous host's address.
    pub fn rdv_ip(&self) -> Ipv4Addr {
        RDV_IP
    }

    /// A site router's WAN (public) address.
    pub fn wan_ip(&self, site: Site) -> Ipv4Addr {
        self.addrs(site).wan
    }

    /// A site's first host address (public with [`Nat::None`]).
    pub fn host_ip(&self, site: Site) -> Ipv4Addr {
        self.addrs(site).host
    }

    /// A site's second host address.
    pub fn host2_ip(&self, site: Site) -> Ipv4Addr {
        self.addrs(site).host2
    }

    /// The address under which the site's first host is seen on the internet.
    pub fn public_ip(&self, site: Site) -> Ipv4Addr {
        if self.nat(site) == Nat::None {
            self.host_ip(site)
        } else {
            self.wan_ip(site)
        }
    }

    /// Address of a node as used by the p2pnc processes running on it.
    pub fn node_ip(&self, node: Node) -> Ipv4Addr {
        match node {
            Node::Inet => INET_RDV_IP,
            Node::Rdv => RDV_IP,
            Node::Router(s) => self.wan_ip(s),
            Node::Host(s) => self.host_ip(s),
            Node::Host2(s) => self.host2_ip(s),
            Node::Outside => OUTSIDE_IP,
        }
    }

    /// Sets the one-way delays (ms) of the three internet attachments at run time.
    pub fn set_delays(&self, a_ms: u32, b_ms: u32, rdv_ms: u32) {
        let d = self
            .delay
            .as_ref()
            .expect("set_delays: this lab was built without a delay box");
        d.delays_us[QUEUE_RDV as usize].store(rdv_ms * 1000, Ordering::SeqCst);
        d.delays_us[QUEUE_A as usize].store(a_ms * 1000, Ordering::SeqCst);
        d.delays_us[QUEUE_B as usize].store(b_ms * 1000, Ordering::SeqCst);
    }

    /// A port forward on a NATed site's router, like a home router's: new TCP connections to
    /// `wan_port` on its WAN address are DNATed to `to` on its LAN (and let through its
    /// forward chain). Returns the public address to connect to. Panics for [`Nat::None`]
    /// (the host is public there: connect to it directly).
    pub fn port_forward(&self, site: Site, wan_port: u16, to: SocketAddrV4) -> SocketAddrV4 {
        assert!(
            self.nat(site) != Nat::None,
            "port_forward: site {site:?} has no NAT (its host is public)"
        );
        // `insert`: ahead of a full cone's catch-all DNAT rule.
        self.nft(
            Node::Router(site),
            &format!(
                "insert rule ip natlab prerouting iifname \"wan\" tcp dport {wan_port} dnat to {to}\n\
                 insert rule ip natlab forward iifname \"wan\" oifname \"lan\" ip daddr {} \
                 tcp dport {} ct status dnat accept\n",
                to.ip(),
                to.port()
            ),
        );
        SocketAddrV4::new(self.wan_ip(site), wan_port)
    }

    /// Cuts a site off the internet: the internet router silently drops every packet from or
    /// to the site's router, like an upstream outage. The site's router and its connection
    /// tracking notice nothing; hosts get no ICMP errors. Undo with [`Lab::restore_uplink`].
    pub fn cut_uplink(&self, site: Site) {
        let link = format!("to_{}", site.tag());
        self.nft(
            Node::Inet,
            &format!(
                "table ip natlab_cut_{tag} {{\n\
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
        self.nft(
            Node::Inet,
            &format!("delete table ip natlab_cut_{}\n", site.tag()),
        );
    }

    /// Flushes the connection tracking table of a node (`conntrack -F`): a NAT router forgets
    /// every mapping and flow it had.
    pub fn flush_conntrack(&self, node: Node) {
        let conntrack = tool("conntrack");
        self.run_ok(node, conntrack.to_str().unwrap(), &["-F"]);
    }

    /// Bytes sent but not yet acknowledged (`ss` Send-Q) on each established TCP connection
    /// of `node` toward `dst` (an `ss` address filter: `IP` or `IP:PORT`).
    pub fn unacked_bytes(&self, node: Node, dst: &str) -> Vec<u64> {
        let ss = tool("ss");
        let out = self.run_ok(
            node,
            ss.to_str().unwrap(),
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
    /// `ip daddr 198.51.100.10 tcp flags & rst == rst`), under `name`; read with
    /// [`Lab::watched`]. Counting starts now and sees packets before the node's NAT and
    /// filter rules (source addresses are still private on a router's LAN side).
    pub fn watch(&self, node: Node, name: &str, expr: &str) {
        self.nft(
            node,
            &format!(
                "table ip natlab_watch {{\n\
                 \x20   chain watch {{\n\
                 \x20       type filter hook forward priority -250; policy accept;\n\
                 \x20   }}\n\
                 }}\n\
                 add counter ip natlab_watch {name}\n\
                 add rule ip natlab_watch watch {expr} counter name \"{name}\"\n"
            ),
        );
    }

    /// Packets counted so far by the [`Lab::watch`] counter `name` on `node`.
    pub fn watched(&self, node: Node, name: &str) -> u64 {
        let nft = tool("nft");
        let text = self.run_ok(
            node,
            nft.to_str().unwrap(),
            &["list", "counter", "ip", "natlab_watch", name],
        );
        text.split_whitespace()
            .skip_while(|w| *w != "packets")
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no packet count in `nft list counter {name}`:\n{text}"))
    }

    /// Counters of the delay box (user space) and of the kernel queues.
    pub fn delay_stats(&self) -> DelayStats {
        let d = self.delay.as_ref().expect("delay box running");
        let text = in_netns(&self.ns(Node::Inet), || {
            fs::read_to_string("/proc/thread-self/net/netfilter/nfnetlink_queue")
        })
        .unwrap_or_default();
        let mut kernel_dropped = 0;
        let mut kernel_user_dropped = 0;
        for line in text.lines() {
            let f: Vec<u64> = line
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            if f.len() >= 7 {
                kernel_dropped += f[5];
                kernel_user_dropped += f[6];
            }
        }
        DelayStats {
            packets: d.counters.packets.load(Ordering::Relaxed),
            max_held: d.counters.max_held.load(Ordering::Relaxed),
            errors: d.counters.errors.load(Ordering::Relaxed),
            polled_fd: d.counters.polled_fd.load(Ordering::Relaxed),
            kernel_dropped,
            kernel_user_dropped,
        }
    }

    // ----- running things ----------------------------------------------------------------

    /// `ip netns exec NS program args...`; returns the output (status not checked).
    pub fn run(&self, node: Node, program: &str, args: &[&str]) -> Output {
        let ns = self.ns(node);
        let mut cmd = Command::new(tool("ip"));
        cmd.args(["netns", "exec", &ns, program])
            .args(args)
            .env("PATH", child_path());
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
        self.run_ok(node, sh.to_str().unwrap(), &["-ec", script])
    }

    fn ip_batch(&self, node: Node, batch: &str) {
        let ns = self.ns(node);
        run_ok_stdin(
            Command::new(tool("ip")).args(["-n", &ns, "-batch", "-"]),
            batch,
            &format!("ip -n {ns} -batch"),
        );
    }

    fn nft(&self, node: Node, rules: &str) {
        let ns = self.ns(node);
        run_ok_stdin(
            Command::new(tool("ip"))
                .args(["netns", "exec", &ns])
                .arg(tool("nft"))
                .args(["-f", "-"]),
            rules,
            &format!("nft -f - in {ns}:\n{rules}"),
        );
    }

    /// Spawns a long-running process in a namespace; stdout and stderr go to log files in
    /// [`Lab::dir`]; stdin is empty. Killed when the returned [`Proc`] (or the lab) is dropped.
    pub fn spawn(&self, node: Node, name: &str, program: &str, args: &[&str]) -> Proc {
        self.spawn_with(node, name, program, args, false, false)
    }

    /// Like [`Lab::spawn`], optionally with piped stdin and/or stdout (see
    /// [`Proc::take_stdin`], [`Proc::take_stdout`]). stderr always goes to a log file.
    /// `P2PNC_*` variables of this process are not passed on.
    pub fn spawn_with(
        &self,
        node: Node,
        name: &str,
        program: &str,
        args: &[&str],
        pipe_stdin: bool,
        pipe_stdout: bool,
    ) -> Proc {
        let ns = self.ns(node);
        let n = LAB_COUNTER.fetch_add(1, Ordering::SeqCst);
        let base = format!("{name}-{n}");
        let stderr_path = self.dir.join(format!("{base}.stderr"));
        let stdout_path = self.dir.join(format!("{base}.stdout"));
        let stderr = File::create(&stderr_path).expect("create stderr log");
        let mut cmd = Command::new(tool("ip"));
        cmd.args(["netns", "exec", &ns, program])
            .args(args)
            .env("PATH", child_path());
        // Hermetic runs: no P2PNC_SECRET / P2PNC_SERVER from the caller's environment.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("P2PNC_") {
                cmd.env_remove(k);
            }
        }
        cmd.stderr(stderr);
        if pipe_stdin {
            cmd.stdin(Stdio::piped());
        } else {
            cmd.stdin(Stdio::null());
        }
        if pipe_stdout {
            cmd.stdout(Stdio::piped());
        } else {
            cmd.stdout(File::create(&stdout_path).expect("create stdout log"));
        }
        // SAFETY: prctl is async-signal-safe. The child (and what `ip netns exec` execs) dies
        // with SIGKILL if the thread that spawned it exits.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {program} {args:?} in {ns}: {e}"));
        self.logs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((base.clone(), stderr_path.clone()));
        Proc {
            name: base,
            child,
            stderr_path,
            stdout_path: if pipe_stdout { None } else { Some(stdout_path) },
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
                thread::sleep(Duration::from_millis(20));
            }
        });
        if let Err(e) = res {
            panic!(
                "timeout: {addr} did not accept TCP connections from {ns} within {timeout:?} \
                 (last error: {e})"
            );
        }
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

    /// Polls `GET path` from `node` until it answers 200; panics after `timeout` with `what`.
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

    /// Conntrack tables of the routers, delay-box counters and process log tails.
    pub fn diagnostics(&self) -> String {
        let mut out = String::new();
        if let Some(conntrack) = find_tool("conntrack") {
            for site in [Site::A, Site::B] {
                let node = Node::Router(site);
                if self.namespaces.contains(&self.ns(node)) {
                    let o = self.run(node, conntrack.to_str().unwrap(), &["-L"]);
                    out.push_str(&format!(
                        "--- conntrack -L in {}:\n{}",
                        self.ns(node),
                        String::from_utf8_lossy(&o.stdout)
                    ));
                }
            }
        }
        if self.delay.is_some() {
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
        // 1. Kill every process still living in one of our namespaces.
        for ns in &self.namespaces {
            kill_netns_pids(ns);
        }
        // 2. Stop the delay box thread.
        if let Some(d) = self.delay.take() {
            d.stop();
        }
        // 3. Delete the namespaces (veths and routes go with them).
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new(tool("ip"))
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
        if !panicking {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// nftables ruleset of a site router, or `None` for a plain router.
fn nft_rules(nat: Nat, s: &SiteAddrs) -> Option<String> {
    let (masq, rst, full_cone) = match nat {
        Nat::None => return None,
        Nat::FullCone => ("masquerade", true, true),
        Nat::RestrictedRst => ("masquerade", true, false),
        Nat::RestrictedDrop => ("masquerade", false, false),
        Nat::Symmetric { rst } => ("masquerade random,fully-random", rst, false),
    };
    let input = if rst {
        String::new()
    } else {
        "        iifname \"wan\" ct state established,related accept\n        iifname \"wan\" drop\n"
            .to_string()
    };
    let (fwd_dnat, pre_dnat) = if full_cone {
        (
            "        iifname \"wan\" oifname \"lan\" ct status dnat accept\n".to_string(),
            format!(
                "        iifname \"wan\" meta l4proto tcp dnat to {}\n",
                s.host
            ),
        )
    } else {
        (String::new(), String::new())
    };
    // nft 1.0.6: closing braces of tables on their own line.
    Some(format!(
        "table ip natlab {{\n\
         \x20   chain input {{\n\
         \x20       type filter hook input priority filter; policy accept;\n\
         {input}\
         \x20   }}\n\
         \x20   chain forward {{\n\
         \x20       type filter hook forward priority filter; policy drop;\n\
         \x20       ct state invalid drop\n\
         \x20       ct state established,related accept\n\
         \x20       iifname \"lan\" accept\n\
         {fwd_dnat}\
         \x20   }}\n\
         \x20   chain prerouting {{\n\
         \x20       type nat hook prerouting priority dstnat; policy accept;\n\
         {pre_dnat}\
         \x20   }}\n\
         \x20   chain postrouting {{\n\
         \x20       type nat hook postrouting priority srcnat; policy accept;\n\
         \x20       oifname \"wan\" {masq}\n\
         \x20   }}\n\
         }}\n"
    ))
}

fn run_ok(cmd: &mut Command, what: &str) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{what}: {cmd:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn run_ok_stdin(cmd: &mut Command, input: &str, what: &str) -> String {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: cannot run {cmd:?}: {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap_or_else(|e| panic!("{what}: write stdin: {e}"));
    let out = child.wait_with_output().expect("wait");
    if !out.status.success() {
        panic!(
            "{what}: failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Names of existing namespaces (from /var/run/netns).
pub fn list_namespaces() -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir("/var/run/netns")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn netns_path(ns: &str) -> PathBuf {
    Path::new("/var/run/netns").join(ns)
}

/// SIGKILLs every process whose network namespace is `ns` (never this process).
fn kill_netns_pids(ns: &str) {
    let Ok(out) = Command::new(tool("ip"))
        .args(["netns", "pids", ns])
        .stderr(Stdio::null())
        .output()
    else {
        return;
    };
    let me = std::process::id() as i32;
    for pid in String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
    {
        if pid > 1 && pid != me {
            // SAFETY: plain kill(2) on a pid that lives in our own lab namespace.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

/// Deletes namespaces `p2pnclab-<pid>-...` whose creating process no longer exists.
pub fn cleanup_stale_namespaces() {
    for name in list_namespaces() {
        let Some(rest) = name.strip_prefix(NS_PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        kill_netns_pids(&name);
        let _ = Command::new(tool("ip"))
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
    }
}

// ---------------------------------------------------------------------------------------------
// Namespaces for threads of this process
// ---------------------------------------------------------------------------------------------

/// Moves the calling thread (only) into a network namespace.
fn enter_netns(ns: &str) -> io::Result<()> {
    let f = File::open(netns_path(ns))?;
    // SAFETY: setns with a valid namespace fd; CLONE_NEWNET affects only the calling thread.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Runs `f` on a fresh thread that has entered namespace `ns`, and returns its result.
/// Sockets created by `f` stay in that namespace and can be used from any thread afterwards.
/// A panic in `f` is propagated.
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    thread::scope(|s| {
        let h = s.spawn(move || {
            enter_netns(ns).unwrap_or_else(|e| panic!("enter netns {ns}: {e}"));
            f()
        });
        match h.join() {
            Ok(v) => v,
            Err(p) => std::panic::resume_unwind(p),
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------------------------

/// A child process in a lab namespace; killed (and reaped) on drop.
pub struct Proc {
    pub name: String,
    child: Child,
    pub stderr_path: PathBuf,
    pub stdout_path: Option<PathBuf>,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn take_stdin(&mut self) -> Option<ChildStdin> {
        self.child.stdin.take()
    }

    pub fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.child.stdout.take()
    }

    /// Everything the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Everything written to stdout so far (empty when stdout is piped).
    pub fn stdout(&self) -> String {
        self.stdout_path
            .as_ref()
            .and_then(|p| fs::read_to_string(p).ok())
            .unwrap_or_default()
    }

    /// Exit status if the process has exited.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_status() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Polls stderr until a line contains `pattern`; returns that line. Panics on timeout or
    /// if the process exits first.
    pub fn wait_stderr(&mut self, pattern: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.stderr();
            if let Some(l) = text.lines().find(|l| l.contains(pattern)) {
                return l.to_string();
            }
            if let Some(s) = self.try_status() {
                let text = self.stderr();
                if let Some(l) = text.lines().find(|l| l.contains(pattern)) {
                    return l.to_string();
                }
                panic!(
                    "{} exited ({s}) before logging {pattern:?}; stderr:\n{text}",
                    self.name
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "timeout: {} did not log {pattern:?} within {timeout:?}; stderr:\n{text}",
                    self.name
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILLs and reaps the process.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------------------------------------
// Small network helpers (run them inside `in_netns` to pick the namespace)
// ---------------------------------------------------------------------------------------------

/// HTTP/1.1 GET with `Connection: close`; returns status code and body.
pub fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAccept: */*\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("bad reply {text:?}")))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Sets SO_REUSEADDR and SO_REUSEPORT on `fd` and binds it to `local`.
fn bind_reuse(fd: libc::c_int, local: SocketAddrV4) -> io::Result<()> {
    set_int_opt(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    set_int_opt(fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
    let sa = sockaddr_v4(local);
    // SAFETY: bind our own socket with a valid sockaddr_in.
    cvt(unsafe {
        libc::bind(
            fd,
            &sa as *const _ as *const libc::sockaddr,
            std::mem::size_of_val(&sa) as libc::socklen_t,
        )
    })?;
    Ok(())
}

fn sockaddr_v4(a: SocketAddrV4) -> libc::sockaddr_in {
    // SAFETY: sockaddr_in is plain data; all-zero is a valid value.
    let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    sa.sin_family = libc::AF_INET as libc::sa_family_t;
    sa.sin_port = a.port().to_be();
    sa.sin_addr = libc::in_addr {
        s_addr: u32::from(*a.ip()).to_be(),
    };
    sa
}

fn set_int_opt(fd: RawFd, level: libc::c_int, opt: libc::c_int, v: libc::c_int) -> io::Result<()> {
    // SAFETY: setsockopt with a c_int value on a socket we own.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            &v as *const _ as *const libc::c_void,
            std::mem::size_of_val(&v) as libc::socklen_t,
        )
    })
    .map(drop)
}

/// Starts a non-blocking TCP connect and returns as soon as the SYN is on its way.
///
/// - `local`: bind there first, with SO_REUSEADDR and SO_REUSEPORT (several sockets may then
///   share one local port);
/// - `first_ttl`: the SYN leaves with this IP TTL, which is set back to 64 right after, so
///   later segments (e.g. a SYN-ACK in a simultaneous open) travel normally;
/// - `recverr`: IP_RECVERR, which makes ICMP errors fail the connect as soon as they arrive
///   (without it, e.g. a Time Exceeded is only a soft error and the socket stays in SYN_SENT).
///
/// Finish with [`finish_connect`]. Call inside `in_netns`.
pub fn start_connect(
    local: Option<SocketAddrV4>,
    remote: SocketAddrV4,
    first_ttl: Option<u32>,
    recverr: bool,
) -> io::Result<TcpStream> {
    // SAFETY: socket(2); the fd is owned by the TcpStream from here on.
    let fd = cvt(unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        )
    })?;
    // SAFETY: fd is a fresh socket nobody else owns.
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    if recverr {
        set_int_opt(fd, libc::IPPROTO_IP, libc::IP_RECVERR, 1)?;
    }
    if let Some(local) = local {
        bind_reuse(fd, local)?;
    }
    if let Some(ttl) = first_ttl {
        set_int_opt(fd, libc::IPPROTO_IP, libc::IP_TTL, ttl as libc::c_int)?;
    }
    let r = sockaddr_v4(remote);
    // SAFETY: connect with a valid sockaddr_in.
    let rc = unsafe {
        libc::connect(
            fd,
            &r as *const _ as *const libc::sockaddr,
            std::mem::size_of_val(&r) as libc::socklen_t,
        )
    };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(e);
        }
    }
    if first_ttl.is_some() {
        set_int_opt(fd, libc::IPPROTO_IP, libc::IP_TTL, 64)?;
    }
    Ok(stream)
}

/// TCP state of a socket (`TCP_INFO.tcpi_state`: 1 established, 2 SYN_SENT, 3 SYN_RECV, 7
/// closed, ...).
pub fn tcp_state(stream: &TcpStream) -> io::Result<u8> {
    let mut info = [0u8; 256];
    let mut len = info.len() as libc::socklen_t;
    // SAFETY: TCP_INFO into a large enough buffer; the first byte is tcpi_state.
    cvt(unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr() as *mut libc::c_void,
            &mut len,
        )
    })?;
    Ok(info[0])
}

/// Waits up to `timeout` for a connect from [`start_connect`] to complete; returns the
/// stream in blocking mode. Fails with the socket's error (e.g. ECONNREFUSED) or TimedOut.
///
/// An ICMP error (e.g. EHOSTUNREACH from the Time Exceeded of a low-TTL SYN) is reported on
/// the socket (POLLERR, SO_ERROR) but leaves it in SYN_SENT/SYN_RECV, where it can still
/// complete (simultaneous open). With `icmp_is_fatal` false such errors are ignored while the
/// socket is still connecting; with true they end the wait.
pub fn finish_connect(
    stream: TcpStream,
    timeout: Duration,
    icmp_is_fatal: bool,
) -> io::Result<TcpStream> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut p = libc::pollfd {
            fd: stream.as_raw_fd(),
            events: libc::POLLOUT,
            revents: 0,
        };
        let ts = libc::timespec {
            tv_sec: left.as_secs() as libc::time_t,
            tv_nsec: left.subsec_nanos() as libc::c_long,
        };
        // SAFETY: one valid pollfd and timespec.
        let n = unsafe { libc::ppoll(&mut p, 1, &ts, std::ptr::null()) };
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out"));
        }
        let state = tcp_state(&stream)?;
        if !matches!(state, 2 | 3 | 7) {
            // Established (or already past it: the peer may have closed meanwhile).
            stream.set_nonblocking(false)?;
            return Ok(stream);
        }
        let err = stream.take_error()?;
        if matches!(state, 2 | 3) {
            // Still connecting: an ICMP error was reported (SO_ERROR read clears it).
            if let Some(e) = err
                && icmp_is_fatal
            {
                return Err(e);
            }
            if Instant::now() >= deadline {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out"));
            }
            // Wait a little instead of spinning on a socket that polls as ready.
            thread::sleep(Duration::from_millis(1));
            continue;
        }
        return Err(err.unwrap_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotConnected,
                format!("connect ended in TCP state {state}"),
            )
        }));
    }
}

/// Blocking TCP connect from an explicit local address (SO_REUSEADDR and SO_REUSEPORT set, so
/// several sockets can share one local port). Call inside `in_netns`.
pub fn bind_connect(
    local: SocketAddrV4,
    remote: SocketAddrV4,
    timeout: Duration,
) -> io::Result<TcpStream> {
    finish_connect(
        start_connect(Some(local), remote, None, false)?,
        timeout,
        true,
    )
}

/// TCP connect whose SYN leaves with IP TTL `ttl`, with IP_RECVERR on so that an ICMP error
/// (e.g. Time Exceeded: EHOSTUNREACH) fails it as soon as it arrives. Call inside `in_netns`.
pub fn connect_ttl(remote: SocketAddrV4, ttl: u32, timeout: Duration) -> io::Result<TcpStream> {
    finish_connect(start_connect(None, remote, Some(ttl), true)?, timeout, true)
}

/// A listener with SO_REUSEADDR and SO_REUSEPORT (can share its port with outgoing sockets
/// made by [`start_connect`] / [`bind_connect`]). Call inside `in_netns`.
pub fn reuse_listener(local: SocketAddrV4) -> io::Result<TcpListener> {
    // SAFETY: socket(2); the fd is owned by the TcpListener from here on.
    let fd =
        cvt(unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: fd is a fresh socket nobody else owns.
    let listener = unsafe { TcpListener::from_raw_fd(fd) };
    bind_reuse(fd, local)?;
    // SAFETY: listen on our own bound socket.
    cvt(unsafe { libc::listen(fd, 128) })?;
    Ok(listener)
}

/// Accepts one connection, waiting at most `timeout` (TimedOut after that).
pub fn accept_timeout(
    listener: &TcpListener,
    timeout: Duration,
) -> io::Result<(TcpStream, SocketAddr)> {
    if !poll_readable(listener.as_raw_fd(), timeout) {
        return Err(io::Error::new(io::ErrorKind::TimedOut, "accept timed out"));
    }
    listener.accept()
}

/// Waits until `fd` is readable or `timeout` passes. Returns true when readable.
fn poll_readable(fd: RawFd, timeout: Duration) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: one valid pollfd, a valid timespec, no signal mask.
    let r = unsafe { libc::ppoll(&mut p, 1, &ts, std::ptr::null()) };
    r > 0
}

/// Deterministic pseudo-random bytes (xorshift64*), for byte-exact transfer checks.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        v.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    v.truncate(len);
    v
}

/// A TCP echo service running in this process, listening inside a lab namespace. Each
/// connection is echoed until the client half-closes, then the write side is shut down.
pub struct EchoServer {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
    handle: Option<JoinHandle<()>>,
}

impl EchoServer {
    /// Starts an echo server at `addr` inside `lab`'s namespace of `node`.
    pub fn start(lab: &Lab, node: Node, addr: SocketAddr) -> EchoServer {
        let ns = lab.ns(node);
        let listener = in_netns(&ns, || TcpListener::bind(addr))
            .unwrap_or_else(|e| panic!("echo server: bind {addr} in {ns}: {e}"));
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicU64::new(0));
        let bytes = Arc::new(AtomicU64::new(0));
        let (st, ac, by) = (stop.clone(), accepted.clone(), bytes.clone());
        let handle = thread::spawn(move || {
            while !st.load(Ordering::SeqCst) {
                if !poll_readable(listener.as_raw_fd(), Duration::from_millis(50)) {
                    continue;
                }
                let Ok((conn, _)) = listener.accept() else {
                    continue;
                };
                ac.fetch_add(1, Ordering::SeqCst);
                let by = by.clone();
                thread::spawn(move || echo_conn(conn, &by));
            }
        });
        EchoServer {
            addr,
            stop,
            accepted,
            bytes,
            handle: Some(handle),
        }
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Polls until at least `n` connections were accepted or `timeout` passed; returns the
    /// count then.
    pub fn wait_connections(&self, n: u64, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        loop {
            let c = self.connections();
            if c >= n || Instant::now() >= deadline {
                return c;
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Bytes received (and echoed) so far.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::SeqCst)
    }
}

fn echo_conn(mut conn: TcpStream, bytes: &AtomicU64) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(300)));
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match conn.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                bytes.fetch_add(n as u64, Ordering::SeqCst);
                if conn.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        }
    }
    let _ = conn.shutdown(Shutdown::Write);
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Sends `payload` on `stream` while reading back what comes in; returns the bytes read
/// until EOF. Half-closes after sending.
pub fn echo_roundtrip(stream: TcpStream, payload: &[u8]) -> io::Result<Vec<u8>> {
    let mut w = stream.try_clone()?;
    let mut r = stream;
    thread::scope(|s| {
        let writer = s.spawn(move || -> io::Result<()> {
            w.write_all(payload)?;
            w.shutdown(Shutdown::Write)
        });
        let mut got = Vec::with_capacity(payload.len());
        let read = r.read_to_end(&mut got);
        writer.join().expect("writer thread")?;
        read.map(|_| got)
    })
}

// ---------------------------------------------------------------------------------------------
// Delay box (NFQUEUE)
// ---------------------------------------------------------------------------------------------

/// Counters of the delay box.
#[derive(Clone, Copy, Debug, Default)]
pub struct DelayStats {
    /// Packets (or GSO super-packets) that went through the user-space delay box.
    pub packets: u64,
    /// Largest number of packets held at once.
    pub max_held: u64,
    /// recv/verdict errors.
    pub errors: u64,
    /// 1 when the box waits with ppoll on its netlink socket, 0 when it falls back to 1 ms
    /// sleeps (socket not found).
    pub polled_fd: u64,
    /// Kernel: packets dropped because a queue was full.
    pub kernel_dropped: u64,
    /// Kernel: packets dropped because they could not be delivered to the socket.
    pub kernel_user_dropped: u64,
}

#[derive(Default)]
struct DelayCounters {
    packets: AtomicU64,
    max_held: AtomicU64,
    errors: AtomicU64,
    polled_fd: AtomicU64,
}

struct DelayBox {
    stop: Arc<AtomicBool>,
    delays_us: Arc<[AtomicU32; N_QUEUES]>,
    counters: Arc<DelayCounters>,
    handle: Option<JoinHandle<()>>,
}

const QUEUE_MAX_LEN: u32 = 65536;
const NETLINK_RCVBUF: libc::c_int = 64 << 20;

impl DelayBox {
    /// Starts the delay thread in namespace `ns`, bound to queues 0..N_QUEUES with the given
    /// delays (ms); returns once the queues are bound.
    fn start(ns: &str, delays_ms: [u32; N_QUEUES]) -> DelayBox {
        let stop = Arc::new(AtomicBool::new(false));
        let delays_us = Arc::new(delays_ms.map(|d| AtomicU32::new(d * 1000)));
        let counters = Arc::new(DelayCounters::default());
        let (tx, rx) = mpsc::channel();
        let (st, dl, ct, ns_owned) = (
            stop.clone(),
            delays_us.clone(),
            counters.clone(),
            ns.to_string(),
        );
        let handle = thread::Builder::new()
            .name(format!("delaybox-{ns}"))
            .spawn(move || delay_thread(&ns_owned, &st, &dl, &ct, tx))
            .expect("spawn delay box thread");
        let mut d = DelayBox {
            stop,
            delays_us,
            counters,
            handle: Some(handle),
        };
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => d,
            Ok(Err(e)) => {
                d.stop_in_place();
                panic!("delay box in {ns} failed to start: {e}")
            }
            Err(e) => {
                d.stop_in_place();
                panic!("delay box in {ns} did not start: {e}")
            }
        }
    }

    fn stop_in_place(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }

    fn stop(mut self) {
        self.stop_in_place();
    }
}

impl Drop for DelayBox {
    fn drop(&mut self) {
        self.stop_in_place();
    }
}

/// Netlink-netfilter socket fds of this process whose namespace has inode `ns_ino`.
fn nf_netlink_fds(ns_ino: u64) -> HashSet<RawFd> {
    let mut set = HashSet::new();
    let Ok(rd) = fs::read_dir("/proc/self/fd") else {
        return set;
    };
    for e in rd.flatten() {
        let Some(fd) = e.file_name().to_str().and_then(|s| s.parse::<RawFd>().ok()) else {
            continue;
        };
        if is_nf_netlink(fd, ns_ino) {
            set.insert(fd);
        }
    }
    set
}

fn is_nf_netlink(fd: RawFd, ns_ino: u64) -> bool {
    fn sockopt(fd: RawFd, opt: libc::c_int) -> Option<libc::c_int> {
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of_val(&v) as libc::socklen_t;
        // SAFETY: getsockopt into a c_int; fails harmlessly on non-sockets.
        let r = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                &mut v as *mut _ as *mut libc::c_void,
                &mut len,
            )
        };
        (r == 0).then_some(v)
    }
    if sockopt(fd, libc::SO_DOMAIN) != Some(libc::AF_NETLINK)
        || sockopt(fd, libc::SO_PROTOCOL) != Some(libc::NETLINK_NETFILTER)
    {
        return false;
    }
    // SAFETY: SIOCGSKNS returns a new fd for the socket's network namespace.
    let nsfd = unsafe { libc::ioctl(fd, libc::SIOCGSKNS as _) };
    if nsfd < 0 {
        return false;
    }
    // SAFETY: we own nsfd; File closes it.
    let f = unsafe { File::from_raw_fd(nsfd) };
    f.metadata().map(|m| m.ino() == ns_ino).unwrap_or(false)
}

fn delay_thread(
    ns: &str,
    stop: &AtomicBool,
    delays_us: &[AtomicU32; N_QUEUES],
    counters: &DelayCounters,
    ready: mpsc::Sender<io::Result<()>>,
) {
    use nfq::{Queue, Verdict};

    let setup = || -> io::Result<(Queue, Option<RawFd>)> {
        enter_netns(ns)?;
        let ns_ino = fs::metadata(netns_path(ns))?.ino();
        let before = nf_netlink_fds(ns_ino);
        let mut q = Queue::open()?;
        let after = nf_netlink_fds(ns_ino);
        let new: Vec<RawFd> = after.difference(&before).copied().collect();
        let fd = (new.len() == 1).then(|| new[0]);
        for n in 0..N_QUEUES as u16 {
            q.bind(n)?;
            // Metadata only: the box never looks at payloads.
            q.set_copy_range(n, 0)?;
            // Let GSO super-packets through unsegmented (fewer messages per byte).
            q.set_recv_gso(n, true)?;
            q.set_queue_max_len(n, QUEUE_MAX_LEN)?;
            q.set_fail_open(n, false)?;
        }
        q.set_nonblocking(true);
        if let Some(fd) = fd {
            // SAFETY: setsockopt on our own netlink socket (root: SO_RCVBUFFORCE allowed).
            unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_RCVBUFFORCE,
                    &NETLINK_RCVBUF as *const _ as *const libc::c_void,
                    std::mem::size_of_val(&NETLINK_RCVBUF) as libc::socklen_t,
                );
            }
        }
        Ok((q, fd))
    };
    let (mut q, fd) = match setup() {
        Ok(v) => v,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    counters
        .polled_fd
        .store(u64::from(fd.is_some()), Ordering::Relaxed);
    let _ = ready.send(Ok(()));

    let idle = Duration::from_millis(20);
    let mut fifos: Vec<VecDeque<(Instant, nfq::Message)>> =
        (0..N_QUEUES).map(|_| VecDeque::new()).collect();
    let mut last_due = [Instant::now(); N_QUEUES];
    let mut held: u64 = 0;
    loop {
        let stopping = stop.load(Ordering::SeqCst);
        // Drain what the kernel has queued (bounded, so due packets are not starved).
        for _ in 0..4096 {
            match q.recv() {
                Ok(msg) => {
                    let qn = msg.get_queue_num() as usize;
                    let now = Instant::now();
                    if qn >= N_QUEUES {
                        let mut msg = msg;
                        msg.set_verdict(Verdict::Accept);
                        let _ = q.verdict(msg);
                        continue;
                    }
                    let d = Duration::from_micros(u64::from(delays_us[qn].load(Ordering::Relaxed)));
                    // FIFO per queue: never release before an earlier packet of the same link.
                    let due = (now + d).max(last_due[qn]);
                    last_due[qn] = due;
                    fifos[qn].push_back((due, msg));
                    held += 1;
                    counters.packets.fetch_add(1, Ordering::Relaxed);
                    if held > counters.max_held.load(Ordering::Relaxed) {
                        counters.max_held.store(held, Ordering::Relaxed);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    counters.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        // Release what is due (everything when stopping).
        let now = Instant::now();
        for fifo in fifos.iter_mut() {
            while let Some((due, _)) = fifo.front() {
                if *due > now && !stopping {
                    break;
                }
                let (_, mut msg) = fifo.pop_front().unwrap();
                msg.set_verdict(Verdict::Accept);
                held -= 1;
                if q.verdict(msg).is_err() {
                    counters.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        if stopping {
            break;
        }
        let next_due = fifos.iter().filter_map(|f| f.front().map(|x| x.0)).min();
        let wait = next_due
            .map(|d| d.saturating_duration_since(Instant::now()))
            .unwrap_or(idle)
            .min(idle);
        if wait.is_zero() {
            continue;
        }
        match fd {
            Some(fd) => {
                poll_readable(fd, wait);
            }
            None => thread::sleep(wait.min(Duration::from_millis(1))),
        }
    }
    for n in 0..N_QUEUES as u16 {
        let _ = q.unbind(n);
    }
}

// ---------------------------------------------------------------------------------------------
// p2pnc helpers
// ---------------------------------------------------------------------------------------------

/// Port of the rendezvous server on the rendezvous host.
pub const SERVER_PORT: u16 = 50300;

/// Path of the p2pnc binary built by cargo for this test or bench.
pub fn p2pnc_bin() -> &'static str {
    env!("CARGO_BIN_EXE_p2pnc")
}

/// URL of the lab's rendezvous server.
pub fn server_url() -> String {
    format!("http://{RDV_IP}:{SERVER_PORT}")
}

/// How an agent authenticates clients.
#[derive(Clone, Copy, Debug)]
pub enum Auth<'a> {
    Secret(&'a str),
    Public,
}

/// The `connected to 'ID' (PATH, IP:PORT) in N ms` line of `p2pnc connect`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connected {
    pub path: String,
    pub addr: SocketAddr,
    pub ms: u64,
}

/// Finds and parses the `connected to 'peer' (PATH, IP:PORT) in N ms` line in `stderr`.
pub fn parse_connected(stderr: &str, peer: &str) -> Option<Connected> {
    let head = format!("connected to '{peer}' (");
    stderr.lines().find_map(|line| {
        let rest = &line[line.find(&head)? + head.len()..];
        let (inner, tail) = rest.split_once(") in ")?;
        let (path, addr) = inner.split_once(", ")?;
        let ms = tail.trim().strip_suffix("ms")?.trim().parse().ok()?;
        Some(Connected {
            path: path.trim().to_string(),
            addr: addr.trim().parse().ok()?,
            ms,
        })
    })
}

/// Outcome of one `p2pnc connect --stdio` run.
#[derive(Debug)]
pub struct ConnectRun {
    /// Exit status; `None` when it did not exit in time (it was killed).
    pub status: Option<ExitStatus>,
    pub stdout: Vec<u8>,
    pub stderr: String,
    pub elapsed: Duration,
}

impl ConnectRun {
    pub fn connected(&self, peer: &str) -> Option<Connected> {
        parse_connected(&self.stderr, peer)
    }
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }
}

impl Lab {
    /// Starts `p2pnc server` on the rendezvous host and waits until `/v1/health` answers 200.
    pub fn start_server(&self) -> Proc {
        self.start_server_with(&[])
    }

    /// Like [`Lab::start_server`], with extra arguments for `p2pnc server` (e.g. `--relay`).
    pub fn start_server_with(&self, extra: &[&str]) -> Proc {
        let listen = format!("0.0.0.0:{SERVER_PORT}");
        let mut args = vec!["server", "--listen", &listen];
        args.extend_from_slice(extra);
        let mut p = self.spawn(Node::Rdv, "server", p2pnc_bin(), &args);
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, SERVER_PORT));
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok((200, _)) =
                self.http_get(Node::Rdv, addr, "/v1/health", Duration::from_secs(2))
            {
                return p;
            }
            if let Some(s) = p.try_status() {
                panic!(
                    "p2pnc server exited ({s}) before it was ready; stderr:\n{}",
                    p.stderr()
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "timeout: p2pnc server: GET /v1/health did not answer 200 within 15 s; stderr:\n{}",
                    p.stderr()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Status of `GET /v1/peers/ID` on the server (asked from the rendezvous host itself).
    pub fn peer_status(&self, id: &str) -> io::Result<u16> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, SERVER_PORT));
        self.http_get(
            Node::Rdv,
            addr,
            &format!("/v1/peers/{id}"),
            Duration::from_secs(2),
        )
        .map(|(s, _)| s)
    }

    /// Starts `p2pnc expose` on `node`, forwarding to `127.0.0.1:service_port` there, and
    /// waits until the server lists the id (`GET /v1/peers/ID` answers 200).
    pub fn start_agent(&self, node: Node, id: &str, service_port: u16, auth: Auth) -> Proc {
        let url = server_url();
        let to = format!("127.0.0.1:{service_port}");
        let mut args = vec!["expose", "--server", &url, "--id", id, "--to", &to];
        match auth {
            Auth::Secret(s) => args.extend(["--secret", s]),
            Auth::Public => args.push("--public"),
        }
        let mut p = self.spawn(node, &format!("expose-{id}"), p2pnc_bin(), &args);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(200) = self.peer_status(id) {
                return p;
            }
            if let Some(s) = p.try_status() {
                panic!(
                    "p2pnc expose --id {id} exited ({s}) before registering; stderr:\n{}",
                    p.stderr()
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "timeout: p2pnc expose --id {id} not listed by the server (GET /v1/peers/{id} != 200) \
                     within 15 s; stderr:\n{}",
                    p.stderr()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs `p2pnc connect --peer PEER [--secret S] --stdio` on `node`, writes `payload` to
    /// its stdin (then closes it), collects stdout until EOF, and waits up to `timeout` for it
    /// to exit (killing it after that).
    pub fn connect_stdio(
        &self,
        node: Node,
        peer: &str,
        secret: Option<&str>,
        payload: &[u8],
        timeout: Duration,
    ) -> ConnectRun {
        self.connect_stdio_with(node, peer, secret, payload, timeout, &[])
    }

    /// [`Lab::connect_stdio`] with extra leading arguments (e.g. `-v`).
    pub fn connect_stdio_with(
        &self,
        node: Node,
        peer: &str,
        secret: Option<&str>,
        payload: &[u8],
        timeout: Duration,
        extra: &[&str],
    ) -> ConnectRun {
        let url = server_url();
        let mut args = extra.to_vec();
        args.extend(["connect", "--server", &url, "--peer", peer, "--stdio"]);
        if let Some(s) = secret {
            args.extend(["--secret", s]);
        }
        let start = Instant::now();
        let mut p = self.spawn_with(
            node,
            &format!("connect-{peer}"),
            p2pnc_bin(),
            &args,
            true,
            true,
        );
        let mut stdin = p.take_stdin().expect("piped stdin");
        let mut stdout = p.take_stdout().expect("piped stdout");
        let (status, out) = thread::scope(|s| {
            s.spawn(move || {
                // The process may exit early (e.g. on a refused secret): ignore EPIPE.
                let _ = stdin.write_all(payload);
                drop(stdin);
            });
            let reader = s.spawn(move || {
                let mut out = Vec::new();
                let _ = stdout.read_to_end(&mut out);
                out
            });
            let status = p.wait_timeout(timeout);
            if status.is_none() {
                p.kill();
            }
            (status, reader.join().expect("stdout reader"))
        });
        ConnectRun {
            status,
            stdout: out,
            stderr: p.stderr(),
            elapsed: start.elapsed(),
        }
    }

    /// Starts `p2pnc connect --peer PEER [--secret S] --listen LISTEN` on `node` and waits
    /// for its `listening on LISTEN` line.
    pub fn start_connect_listen(
        &self,
        node: Node,
        peer: &str,
        secret: Option<&str>,
        listen: SocketAddrV4,
    ) -> Proc {
        let url = server_url();
        let listen_s = listen.to_string();
        let mut args = vec![
            "connect", "--server", &url, "--peer", peer, "--listen", &listen_s,
        ];
        if let Some(s) = secret {
            args.extend(["--secret", s]);
        }
        let mut p = self.spawn(node, &format!("connect-listen-{peer}"), p2pnc_bin(), &args);
        p.wait_stderr(&format!("listening on {listen}"), Duration::from_secs(15));
        p
    }
}
