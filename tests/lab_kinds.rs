//! Self-tests of the NAT lab's carrier-grade NAT, IPv6 and naming (crates/natlab), with plain
//! sockets and real tools (conntrack, getent, ip): each kind behaves as built.
//!
//! They need root and iproute2, nftables, iptables and conntrack; without root they print
//! `skipped: NAT lab needs root (...)` and return, except under CI, where they fail.

#![cfg(target_os = "linux")]

use std::io::{ErrorKind, Read, Write};
use std::net::{
    IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, TcpListener, TcpStream,
    ToSocketAddrs,
};
use std::time::{Duration, Instant};

use natlab::{
    Cgn, Dial, Firewall, Hop, IcmpErrors, Lab, LabConfig, Nat, Node, RDV_IP, RDV_IP6, RDV_NAME,
    Site, Stack, in_netns,
};

/// Time allowed for a connect that must succeed (no delay box latency in these labs).
const CONNECT: Duration = Duration::from_secs(3);
/// Time a connect that must fail gets before it counts as dropped.
const SILENCE: Duration = Duration::from_secs(1);
/// Time one hop probe waits for its ICMP error.
const HOP_TIMEOUT: Duration = Duration::from_secs(1);

/// A listener on the rendezvous host; returns the listener.
fn rdv_listener(lab: &Lab, port: u16) -> TcpListener {
    in_netns(&lab.ns(Node::Rdv), || TcpListener::bind((RDV_IP, port)))
        .unwrap_or_else(|e| panic!("listen on {RDV_IP}:{port}: {e}"))
}

/// Connects from `from` to `to` (from `local` when given); returns the result and its time.
fn dial(
    lab: &Lab,
    from: Node,
    local: Option<SocketAddr>,
    to: SocketAddr,
    timeout: Duration,
) -> (std::io::Result<TcpStream>, Duration) {
    in_netns(&lab.ns(from), move || {
        let t = Instant::now();
        let r = match local {
            Some(l) => natlab::bind_connect(l, to, timeout),
            None => TcpStream::connect_timeout(&to, timeout),
        };
        (r, t.elapsed())
    })
}

/// The source address the rendezvous host sees for a connection from `from` (from
/// `local`, when given).
fn seen_at_rdv(lab: &Lab, from: Node, local: Option<SocketAddr>, port: u16) -> SocketAddr {
    let l = rdv_listener(lab, port);
    let to = SocketAddr::from((RDV_IP, port));
    let (r, _) = dial(lab, from, local, to, CONNECT);
    let _conn = r.unwrap_or_else(|e| panic!("{from:?} -> {to}: {e}"));
    natlab::accept_timeout(&l, CONNECT)
        .unwrap_or_else(|e| panic!("{to} accepted nothing from {from:?}: {e}"))
        .1
}

fn v4(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(ip, port))
}

fn v6(ip: Ipv6Addr, port: u16) -> SocketAddr {
    SocketAddr::V6(SocketAddrV6::new(ip, port, 0, 0))
}

/// The conntrack entries of `node` for TCP destination port `port`.
fn tracked(lab: &Lab, node: Node, port: u16) -> String {
    lab.conntrack(node)
        .lines()
        .filter(|l| l.contains(&format!("dport={port} ")))
        .collect::<Vec<_>>()
        .join("\n")
}

#[natlab::lab_test]
fn nat444_maps_through_both_nats_and_the_internet_sees_the_public_address() {
    let lab = Lab::new(
        LabConfig::new(Nat::RestrictedDrop, Nat::RestrictedRst)
            .cgn(Site::A, Cgn::new(Nat::RestrictedDrop))
            .delays(0, 0, 0)
            .second_hosts(false),
    );
    eprintln!("NAT444 lab set up in {:?}", lab.setup_time());
    assert_eq!(lab.public_ip(Site::A), Ipv4Addr::new(198, 51, 100, 10));
    assert!(
        natlab::is_shared(lab.wan_ip(Site::A)),
        "{}",
        lab.wan_ip(Site::A)
    );
    let seen = seen_at_rdv(&lab, Node::Host(Site::A), None, 7500);
    assert_eq!(seen.ip(), IpAddr::V4(lab.public_ip(Site::A)));
    // Both NATs hold the flow: the home router from the host's private address, the CGN from
    // the home router's shared-space address.
    let home = tracked(&lab, Node::Router(Site::A), 7500);
    let cgn = tracked(&lab, Node::Cgn(Site::A), 7500);
    assert!(
        home.contains(&format!("src={}", lab.host_ip(Site::A))),
        "{home}"
    );
    assert!(
        cgn.contains(&format!("src={}", lab.wan_ip(Site::A))),
        "{cgn}"
    );
    eprintln!("host A seen as {seen}\nhome router: {home}\nCGN: {cgn}");
    // Nothing reaches the home router's shared-space address from the internet.
    let route = lab.run(Node::Inet, "ip", &["route", "get", "100.64.1.10"]);
    assert!(
        !route.status.success(),
        "the internet router has a route into the shared space: {}",
        String::from_utf8_lossy(&route.stdout)
    );
}

#[natlab::lab_test]
fn a_ttl_2_syn_behind_nat444_opens_the_home_router_but_not_the_cgn() {
    let lab = Lab::new(
        LabConfig::new(Nat::RestrictedDrop, Nat::RestrictedDrop)
            .cgn(Site::A, Cgn::new(Nat::RestrictedDrop))
            .delays(0, 0, 0)
            .second_hosts(false),
    );
    let _l = rdv_listener(&lab, 7510);
    let to = v4(RDV_IP, 7510);
    let r = in_netns(&lab.ns(Node::Host(Site::A)), || {
        natlab::connect_ttl(to, 2, CONNECT)
    });
    match r {
        Err(e) if e.raw_os_error() == Some(libc::EHOSTUNREACH) => {}
        other => panic!("TTL-2 SYN: expected EHOSTUNREACH (Time Exceeded), got {other:?}"),
    }
    let home = tracked(&lab, Node::Router(Site::A), 7510);
    let cgn = tracked(&lab, Node::Cgn(Site::A), 7510);
    assert!(
        home.contains("SYN_SENT"),
        "the home router has no mapping: {home:?}"
    );
    assert!(cgn.is_empty(), "the CGN made a mapping: {cgn}");
    // Control: TTL 3 passes the CGN too (and dies at the internet router).
    let r = in_netns(&lab.ns(Node::Host(Site::A)), || {
        natlab::connect_ttl(to, 3, CONNECT)
    });
    assert!(
        matches!(&r, Err(e) if e.raw_os_error() == Some(libc::EHOSTUNREACH)),
        "TTL 3: {r:?}"
    );
    let cgn = tracked(&lab, Node::Cgn(Site::A), 7510);
    assert!(
        cgn.contains("SYN_SENT"),
        "TTL 3 made no CGN mapping: {cgn:?}"
    );
}

#[natlab::lab_test]
fn udp_hops_find_the_home_router_and_the_cgn_in_front_of_a_host() {
    let lab = Lab::new(
        LabConfig::new(Nat::RestrictedDrop, Nat::RestrictedRst)
            .cgn(Site::A, Cgn::new(Nat::Symmetric { rst: false }))
            .second_hosts(false),
    );
    for site in Site::BOTH {
        let hops = in_netns(&lab.ns(Node::Host(site)), || {
            natlab::udp_hops(IpAddr::V4(RDV_IP), 8, HOP_TIMEOUT)
        })
        .unwrap_or_else(|e| panic!("udp_hops from site {site:?}: {e}"));
        eprintln!("site {site:?} -> {RDV_IP}: {hops:?}");
        let expected: Vec<Hop> = lab
            .nat_hops(site)
            .into_iter()
            .map(|a| Hop::Router(IpAddr::V4(a)))
            .collect();
        assert_eq!(hops[..expected.len()], expected[..], "site {site:?}");
        assert_eq!(natlab::nat_depth(&hops), expected.len(), "site {site:?}");
        assert_eq!(
            hops.last(),
            Some(&Hop::Destination(IpAddr::V4(RDV_IP))),
            "site {site:?}: the destination did not answer"
        );
    }
    assert_eq!(lab.nat_hops(Site::A).len(), 2);
    assert_eq!(lab.nat_hops(Site::B).len(), 1);
}

#[natlab::lab_test]
fn a_shared_cgn_hairpins_when_enabled_and_not_when_disabled() {
    // Full cone home routers: only the CGN's hairpinning is on trial.
    let lab = Lab::new(
        LabConfig::new(Nat::FullCone, Nat::FullCone)
            .shared_cgn(Cgn::new(Nat::RestrictedDrop).hairpin(true))
            .delays(0, 0, 0)
            .second_hosts(false),
    );
    eprintln!("shared-CGN lab set up in {:?}", lab.setup_time());
    let public = lab.public_ip(Site::A);
    assert_eq!(lab.public_ip(Site::B), public, "one carrier, one address");
    let a_local = v4(lab.host_ip(Site::A), 40500);
    let listener = in_netns(&lab.ns(Node::Host(Site::A)), || {
        natlab::reuse_listener(a_local)
    })
    .expect("listener on host A");
    let a_mapped = seen_at_rdv(&lab, Node::Host(Site::A), Some(a_local), 7520);
    assert_eq!(a_mapped.ip(), IpAddr::V4(public));
    // Host B dials A's public mapping: the CGN sends it back in, from B's own mapping.
    let (r, took) = dial(&lab, Node::Host(Site::B), None, a_mapped, CONNECT);
    let _b = r.unwrap_or_else(|e| panic!("hairpin to {a_mapped} failed: {e}"));
    let (_a, from) = natlab::accept_timeout(&listener, CONNECT).expect("A accepts the hairpin");
    assert_eq!(from.ip(), IpAddr::V4(public), "hairpinned from {from}");
    eprintln!("hairpin B -> {a_mapped}: connected in {took:?}, A saw {from}");

    lab.set_cgn(Site::A, Cgn::new(Nat::RestrictedDrop));
    let (r, _) = dial(&lab, Node::Host(Site::B), None, a_mapped, SILENCE);
    assert!(
        r.is_err(),
        "a CGN without hairpinning let {a_mapped} through"
    );
    assert!(
        natlab::accept_timeout(&listener, Duration::from_millis(200)).is_err(),
        "host A accepted a connection the CGN should not hairpin"
    );
}

#[natlab::lab_test]
fn port_block_allocation_keeps_each_subscribers_mappings_in_its_block() {
    const BLOCK: u16 = 16;
    let lab = Lab::new(
        LabConfig::new(Nat::RestrictedDrop, Nat::RestrictedDrop)
            .shared_cgn(Cgn::new(Nat::RestrictedDrop).port_block(BLOCK))
            .delays(0, 0, 0)
            .second_hosts(false),
    );
    let mut port = 7530;
    for kind in [Nat::RestrictedDrop, Nat::Symmetric { rst: false }] {
        let cgn = Cgn::new(kind).port_block(BLOCK);
        lab.set_cgn(Site::A, cgn);
        for site in Site::BOTH {
            let (first, last) = cgn.block(site).expect("a block");
            let mut seen = Vec::new();
            for i in 0..5u16 {
                // Local ports far from the block: the CGN must move them into it.
                let local = v4(lab.host_ip(site), 41000 + i);
                seen.push(seen_at_rdv(&lab, Node::Host(site), Some(local), port).port());
                port += 1;
            }
            eprintln!("{kind:?}, site {site:?}: block {first}-{last}, mapped ports {seen:?}");
            assert!(
                seen.iter().all(|p| (first..=last).contains(p)),
                "{kind:?}: site {site:?} mapped outside {first}-{last}: {seen:?}"
            );
        }
    }
}

#[natlab::lab_test]
fn ipv6_firewalls_drop_or_reset_unsolicited_inbound_and_let_simultaneous_open_through() {
    let lab = Lab::new(
        LabConfig::new(Nat::RestrictedDrop, Nat::RestrictedRst)
            .ipv6(Site::A, Firewall::Drop)
            .ipv6(Site::B, Firewall::Rst)
            .delays(0, 0, 0)
            .second_hosts(false),
    );
    eprintln!("dual-stack lab set up in {:?}", lab.setup_time());
    let (a6, b6) = (lab.host_ip6(Site::A), lab.host_ip6(Site::B));
    let listeners: Vec<TcpListener> = [(Site::A, a6), (Site::B, b6)]
        .iter()
        .map(|&(site, ip)| {
            in_netns(&lab.ns(Node::Host(site)), || {
                TcpListener::bind(v6(ip, 7700))
            })
            .expect("IPv6 listener")
        })
        .collect();
    let (r, took) = dial(&lab, Node::Rdv, None, v6(a6, 7700), SILENCE);
    assert!(
        matches!(&r, Err(e) if e.kind() == ErrorKind::TimedOut),
        "drop firewall: expected a timeout, got {r:?} after {took:?}"
    );
    let (r, _) = dial(&lab, Node::Rdv, None, v6(b6, 7700), SILENCE);
    assert!(
        matches!(&r, Err(e) if e.kind() == ErrorKind::ConnectionRefused),
        "RST firewall: expected ECONNREFUSED, got {r:?}"
    );
    for l in &listeners {
        assert!(
            natlab::accept_timeout(l, Duration::from_millis(100)).is_err(),
            "a host behind a firewall accepted an unsolicited connection"
        );
    }
    // The hosts reach the internet over IPv6 (and still over IPv4).
    for site in Site::BOTH {
        let _ = seen_at_rdv(
            &lab,
            Node::Host(site),
            None,
            7701 + u16::from(site == Site::B),
        );
        let l = in_netns(&lab.ns(Node::Rdv), || TcpListener::bind(v6(RDV_IP6, 7710)))
            .expect("IPv6 listener on the rendezvous host");
        let (r, _) = dial(&lab, Node::Host(site), None, v6(RDV_IP6, 7710), CONNECT);
        r.unwrap_or_else(|e| panic!("site {site:?} -> [{RDV_IP6}]:7710: {e}"));
        let (_, from) = natlab::accept_timeout(&l, CONNECT).expect("accept over IPv6");
        assert_eq!(
            from.ip(),
            IpAddr::V6(lab.host_ip6(site)),
            "no NAT66: the internet sees the host's own address"
        );
    }
    // Simultaneous open: B's first SYN (hop limit 2) opens B's firewall and dies at the
    // internet router; A's SYN then passes both firewalls.
    for round in 0..3u16 {
        let (a_local, b_local) = (v6(a6, 7800 + round), v6(b6, 7900 + round));
        let b_sock = in_netns(&lab.ns(Node::Host(Site::B)), || {
            let dial = Dial {
                local: Some(b_local),
                first_ttl: Some(2),
                ..Dial::default()
            };
            natlab::start_connect(a_local, dial)
        })
        .expect("B: start the hop-limit-2 connect");
        let (a, took) = dial(&lab, Node::Host(Site::A), Some(a_local), b_local, CONNECT);
        let mut a = a.unwrap_or_else(|e| panic!("round {round}: A -> {b_local}: {e}"));
        let mut b = natlab::finish_connect(b_sock, CONNECT, IcmpErrors::Ignore)
            .unwrap_or_else(|e| panic!("round {round}: B's socket did not connect: {e}"));
        a.write_all(b"ping").expect("A writes");
        let mut buf = [0u8; 4];
        b.set_read_timeout(Some(CONNECT)).expect("timeout");
        b.read_exact(&mut buf).expect("B reads");
        assert_eq!(&buf, b"ping");
        eprintln!("round {round}: simultaneous open over IPv6 in {took:?}");
    }
}

#[natlab::lab_test]
fn ipv6_only_and_ipv4_only_hosts_have_one_family() {
    let lab = Lab::new(
        LabConfig::new(Nat::RestrictedDrop, Nat::RestrictedRst)
            .ipv6(Site::A, Firewall::Drop)
            .ipv6(Site::B, Firewall::Drop)
            .host_stack(Node::Host2(Site::A), Stack::V6)
            .host_stack(Node::Host2(Site::B), Stack::V4)
            .delays(0, 0, 0),
    );
    let _l4 = rdv_listener(&lab, 7720);
    let _l6 = in_netns(&lab.ns(Node::Rdv), || TcpListener::bind(v6(RDV_IP6, 7720)))
        .expect("IPv6 listener");
    let v6_only = Node::Host2(Site::A);
    let routes = lab.run_ok(v6_only, "ip", &["-4", "route"]);
    assert!(routes.trim().is_empty(), "IPv4 routes: {routes}");
    assert!(lab.addresses(v6_only).iter().all(|a| match a {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(_) => true,
    }));
    let (r, _) = dial(&lab, v6_only, None, v4(RDV_IP, 7720), SILENCE);
    assert!(
        matches!(&r, Err(e) if e.kind() == ErrorKind::NetworkUnreachable),
        "IPv6-only host over IPv4: {r:?}"
    );
    let (r, _) = dial(&lab, v6_only, None, v6(RDV_IP6, 7720), CONNECT);
    r.expect("IPv6-only host over IPv6");

    let v4_only = Node::Host2(Site::B);
    let (r, _) = dial(&lab, v4_only, None, v6(RDV_IP6, 7720), SILENCE);
    assert!(r.is_err(), "IPv4-only host reached the IPv6 internet");
    let (r, _) = dial(&lab, v4_only, None, v4(RDV_IP, 7720), CONNECT);
    r.expect("IPv4-only host over IPv4");
    // The dual-stack hosts have both.
    for site in Site::BOTH {
        let (r4, _) = dial(&lab, Node::Host(site), None, v4(RDV_IP, 7720), CONNECT);
        let (r6, _) = dial(&lab, Node::Host(site), None, v6(RDV_IP6, 7720), CONNECT);
        assert!(r4.is_ok() && r6.is_ok(), "site {site:?}: {r4:?} / {r6:?}");
    }
}

#[natlab::lab_test]
fn the_hosts_file_names_the_rendezvous_host_with_both_families() {
    let lab = Lab::new(
        LabConfig::new(Nat::RestrictedDrop, Nat::RestrictedDrop)
            .ipv6(Site::A, Firewall::Drop)
            .delays(0, 0, 0)
            .second_hosts(false),
    );
    // Processes started in a namespace (`ip netns exec`) see its hosts file.
    let out = lab.run_ok(Node::Host(Site::A), "getent", &["ahosts", RDV_NAME]);
    eprintln!("getent ahosts {RDV_NAME} on host A:\n{out}");
    assert!(out.contains(&RDV_IP.to_string()), "no A record:\n{out}");
    assert!(out.contains(&RDV_IP6.to_string()), "no AAAA record:\n{out}");
    let out = lab.run_ok(Node::Host(Site::B), "getent", &["ahostsv4", RDV_NAME]);
    assert!(out.contains(&RDV_IP.to_string()), "site B:\n{out}");
    // A thread that only entered the namespace reads the root namespace's /etc/hosts.
    let from_thread = in_netns(&lab.ns(Node::Host(Site::A)), || {
        (RDV_NAME, 80)
            .to_socket_addrs()
            .map(|a| a.collect::<Vec<_>>())
    });
    assert!(
        from_thread.as_ref().map_or(true, |a| a.is_empty()),
        "a thread in the namespace resolved {RDV_NAME}: {from_thread:?} (root /etc/hosts names it?)"
    );
    let files: Vec<_> = lab
        .namespaces()
        .iter()
        .map(|n| std::path::Path::new("/etc/netns").join(n))
        .collect();
    assert!(files.iter().all(|f| f.join("hosts").exists()));
    drop(lab);
    let left: Vec<_> = files.iter().filter(|f| f.exists()).collect();
    assert!(left.is_empty(), "hosts folders left behind: {left:?}");
}

#[natlab::lab_test]
fn no_traffic_crosses_between_the_sites_except_through_their_nats_and_firewalls() {
    let lab = Lab::new(
        LabConfig::new(Nat::RestrictedRst, Nat::RestrictedRst)
            .cgn(Site::A, Cgn::new(Nat::RestrictedRst))
            .ipv6(Site::A, Firewall::Rst)
            .ipv6(Site::B, Firewall::Rst)
            .delays(0, 0, 0),
    );
    // Each host has one link: to its own router.
    for site in Site::BOTH {
        for node in [Node::Host(site), Node::Host2(site)] {
            let links = lab.run_ok(node, "ip", &["-o", "link"]);
            let names: Vec<&str> = links
                .lines()
                .filter_map(|l| l.split(':').nth(1))
                .map(|n| n.trim().split('@').next().unwrap_or(""))
                .collect();
            assert_eq!(names, ["lo", "eth0"], "{node:?}: {links}");
        }
    }
    // IPv4: no route to the private or shared space on the internet.
    for inside in ["10.0.1.2", "10.0.2.2", "100.64.1.10"] {
        let route = lab.run(Node::Inet, "ip", &["route", "get", inside]);
        assert!(!route.status.success(), "the internet routes to {inside}");
    }
    let hb = v4(lab.host_ip(Site::B), 7730);
    let _lb = in_netns(&lab.ns(Node::Host(Site::B)), || TcpListener::bind(hb)).expect("listen");
    let (r, _) = dial(&lab, Node::Host(Site::A), None, hb, SILENCE);
    assert!(r.is_err(), "host A reached host B's private address {hb}");
    // IPv6: host A reaches host B's public address only when B's firewall lets it; the
    // packets go through router B (counted there).
    let b6 = v6(lab.host_ip6(Site::B), 7731);
    let listener =
        in_netns(&lab.ns(Node::Host(Site::B)), || TcpListener::bind(b6)).expect("listen");
    lab.watch(
        Node::Router(Site::B),
        "syn6",
        &format!("ip6 daddr {} tcp dport 7731", lab.host_ip6(Site::B)),
    );
    let (r, _) = dial(&lab, Node::Host(Site::A), None, b6, SILENCE);
    assert!(
        matches!(&r, Err(e) if e.kind() == ErrorKind::ConnectionRefused),
        "B's RST firewall: {r:?}"
    );
    let refused = lab.watched(Node::Router(Site::B), "syn6");
    assert!(refused >= 1, "the SYN did not cross router B");
    lab.set_firewall(Site::B, Firewall::Open);
    let (r, _) = dial(&lab, Node::Host(Site::A), None, b6, CONNECT);
    r.unwrap_or_else(|e| panic!("with B's firewall open, A -> {b6}: {e}"));
    natlab::accept_timeout(&listener, CONNECT).expect("B accepts");
    assert!(lab.watched(Node::Router(Site::B), "syn6") > refused);
}

#[natlab::lab_test]
fn a_home_routers_nat_kind_changes_at_run_time() {
    let lab = Lab::new(
        LabConfig::new(Nat::RestrictedDrop, Nat::RestrictedDrop)
            .delays(0, 0, 0)
            .second_hosts(false),
    );
    let local = v4(lab.host_ip(Site::A), 40600);
    let ports = |base: u16| {
        (
            seen_at_rdv(&lab, Node::Host(Site::A), Some(local), base).port(),
            seen_at_rdv(&lab, Node::Host(Site::A), Some(local), base + 1).port(),
        )
    };
    let (p1, p2) = ports(7740);
    assert_eq!(p1, p2, "cone: one mapping for two destinations");
    lab.set_nat(Site::A, Nat::Symmetric { rst: false });
    assert_eq!(lab.nat(Site::A), Nat::Symmetric { rst: false });
    lab.flush_conntrack(Node::Router(Site::A));
    let (p3, p4) = ports(7750);
    assert_ne!(p3, p4, "symmetric: a mapping per destination");
    lab.set_nat(Site::A, Nat::RestrictedDrop);
    lab.flush_conntrack(Node::Router(Site::A));
    let (p5, p6) = ports(7760);
    assert_eq!(p5, p6, "cone again");
    eprintln!("cone {p1}/{p2}, symmetric {p3}/{p4}, cone {p5}/{p6}");
}

#[natlab::lab_test]
fn set_up_times_stay_small() {
    /// Longest set-up a lab may take on a loaded 2-core machine (measured: 0.1-0.3 s).
    const LIMIT: Duration = Duration::from_secs(3);
    let labs = [
        (
            "IPv4, two NATs, second hosts",
            LabConfig::new(Nat::RestrictedRst, Nat::RestrictedDrop),
        ),
        (
            "IPv4, no second hosts",
            LabConfig::new(Nat::RestrictedRst, Nat::RestrictedDrop).second_hosts(false),
        ),
        (
            "NAT444 on site A",
            LabConfig::new(Nat::RestrictedRst, Nat::RestrictedDrop)
                .cgn(Site::A, Cgn::new(Nat::RestrictedDrop)),
        ),
        (
            "shared CGN, hairpinning",
            LabConfig::new(Nat::RestrictedRst, Nat::RestrictedDrop)
                .shared_cgn(Cgn::new(Nat::RestrictedDrop).hairpin(true)),
        ),
        (
            "dual stack",
            LabConfig::new(Nat::RestrictedRst, Nat::RestrictedDrop)
                .ipv6(Site::A, Firewall::Drop)
                .ipv6(Site::B, Firewall::Rst),
        ),
    ];
    let mut lines = Vec::new();
    for (what, cfg) in labs {
        let t = Instant::now();
        let lab = Lab::new(cfg);
        let setup = lab.setup_time();
        drop(lab);
        let total = t.elapsed();
        lines.push(format!(
            "{what}: set up in {:.0} ms, {:.0} ms with teardown",
            setup.as_secs_f64() * 1e3,
            total.as_secs_f64() * 1e3
        ));
        assert!(setup < LIMIT, "{what}: set-up took {setup:?}");
    }
    eprintln!("LAB SET-UP\n{}", lines.join("\n"));
}
