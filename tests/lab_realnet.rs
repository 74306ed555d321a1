//! The networks users really have, in the NAT lab: carrier-grade NAT in front of home routers
//! (NAT444, one CGN per site or one shared by both), and IPv6 beside IPv4 behind RFC 6092
//! firewalls, with IPv6-only and IPv4-only hosts.
//!
//! Every session is judged by the client's `--report json` line (path, peer address and
//! family), the byte-exact echo, and the rendezvous host's traffic (far below the payload: the
//! bytes did not go through it). `nat-check --json` tells the NAT depth each host learnt.
//!
//! They need root and the lab's tools; without root they print `skipped: NAT lab needs root
//! (...)` and return, except under CI, where they fail.

#![cfg(target_os = "linux")]

mod lab_support;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use lab_support::{Auth, Connected, P2pncLab, server_url, server_url_by_name};
use natlab::{Cgn, EchoServer, Firewall, Lab, LabConfig, Nat, Node, Proc, Site, Stack, pattern};

const SECRET: &str = "realnet-secret-5d1e";
/// Port of the echo service on each agent's loopback.
const SVC_PORT: u16 = 50302;
/// Bytes echoed per session: enough that a relayed session shows on the rendezvous host.
const PAYLOAD: usize = 256 << 10;
/// Time one session may take (setup and echo); a punch gives up after 5 s.
const SESSION_TIMEOUT: Duration = Duration::from_secs(30);
/// The agent's low-TTL grace: a first SYN that opened nothing is followed by a normal one this
/// long after it, so a connect that needed that takes at least this long; one whose first
/// SYN opened every NAT takes about 170 ms at 20 ms per link.
const GRACE_MS: u64 = 400;

/// An echo service exposed from a host.
struct Service {
    id: String,
    _echo: EchoServer,
    agent: Proc,
}

fn expose(lab: &Lab, url: &str, node: Node, id: &str, extra: &[&str]) -> Service {
    let echo = EchoServer::start(lab, node, SocketAddr::from(([127, 0, 0, 1], SVC_PORT)));
    let agent = lab.start_agent_at(url, node, id, SVC_PORT, Auth::Secret(SECRET), extra);
    Service {
        id: id.to_string(),
        _echo: echo,
        agent,
    }
}

/// What a session must come out as.
#[derive(Clone, Copy, Debug)]
struct Expect {
    /// `direct` or `relayed`.
    path: &'static str,
    /// The peer address the client reports (direct sessions): the agent's public IPv4 address,
    /// or its IPv6 address.
    ip: Option<IpAddr>,
}

fn direct(ip: impl Into<IpAddr>) -> Expect {
    Expect {
        path: "direct",
        ip: Some(ip.into()),
    }
}

const RELAYED: Expect = Expect {
    path: "relayed",
    ip: None,
};

/// Runs one `connect --stdio` echo session from `client` to `svc` through the server at
/// `url` and checks it against `want`: exit 0, byte-exact echo, the reported path, family and
/// peer address, and (direct) far less traffic through the rendezvous host than the payload.
fn session(
    lab: &Lab,
    url: &str,
    client: Node,
    svc: &Service,
    want: Expect,
    seed: u64,
) -> Result<Connected, String> {
    let payload = pattern(seed, PAYLOAD);
    let before = lab.rdv_bytes();
    let run = lab.connect_stdio_at(
        url,
        client,
        &svc.id,
        Some(SECRET),
        &payload,
        SESSION_TIMEOUT,
        &[],
    );
    let rdv = lab.rdv_bytes() - before;
    let what = format!("{client:?} -> '{}'", svc.id);
    let fail = |why: String| {
        Err(format!(
            "{what}: {why}\n--- connect stderr:\n{}\n--- agent stderr:\n{}",
            run.stderr.trim_end(),
            svc.agent.stderr().trim_end()
        ))
    };
    if !run.success() {
        return fail(format!("connect failed ({:?})", run.status));
    }
    if run.stdout != payload {
        return fail(format!(
            "echo returned {} of {PAYLOAD} bytes, or others",
            run.stdout.len()
        ));
    }
    let Some(report) = run.report() else {
        return fail("no connect report".into());
    };
    let Some(c) = report.connected() else {
        return fail("the report is not a connection".into());
    };
    if c.path != want.path {
        return fail(format!("path {}, not {}", c.path, want.path));
    }
    if let Some(ip) = want.ip {
        let family = if ip.is_ipv4() { "ipv4" } else { "ipv6" };
        if c.addr.ip() != ip || report.family.as_deref() != Some(family) {
            return fail(format!(
                "connected to {} ({:?}), expected {ip} ({family})",
                c.addr, report.family
            ));
        }
    }
    if want.path == "direct" && rdv >= (PAYLOAD / 8) as u64 {
        return fail(format!("the rendezvous host moved {rdv} bytes: not direct"));
    }
    eprintln!(
        "{what}: {} via {} in {} ms ({}), echo exact, rdv traffic {rdv} B",
        c.path, c.addr, c.ms, c.strategy
    );
    Ok(c)
}

/// Panics listing every failure.
fn all_ok(results: Vec<Result<Connected, String>>) -> Vec<Connected> {
    let n = results.len();
    let (ok, failed): (Vec<_>, Vec<_>) = results.into_iter().partition(Result::is_ok);
    let failed: Vec<String> = failed.into_iter().filter_map(Result::err).collect();
    assert!(
        failed.is_empty(),
        "{} of {n} sessions failed:\n\n{}",
        failed.len(),
        failed.join("\n\n")
    );
    ok.into_iter().map(Result::unwrap).collect()
}

/// `nat-check --json` on `node`: (NAT depth, whether a CGN was seen).
fn depth_seen(lab: &Lab, node: Node) -> (Option<u64>, bool) {
    let report = lab
        .nat_check(node)
        .unwrap_or_else(|e| panic!("nat-check on {node:?}: {e}"));
    (report["nat_depth"].as_u64(), report["cgn"] == true)
}

/// Two rounds of a session each way: host A's client to `b`'s service and host B's client to
/// `a`'s, each expecting what is paired with the service.
fn both_ways(
    lab: &Lab,
    url: &str,
    a: (&Service, Expect),
    b: (&Service, Expect),
) -> Vec<Result<Connected, String>> {
    let mut results = Vec::new();
    for i in 0..2 {
        results.push(session(lab, url, Node::Host(Site::A), b.0, b.1, 2 * i));
        results.push(session(lab, url, Node::Host(Site::B), a.0, a.1, 2 * i + 1));
    }
    results
}

fn home(nat: Nat) -> LabConfig {
    LabConfig::new(nat, nat).second_hosts(false)
}

// ---------------------------------------------------------------------------------------------
// Carrier-grade NAT
// ---------------------------------------------------------------------------------------------

#[natlab::lab_test]
fn a_cgn_in_front_of_the_agents_home_router_costs_no_fallback() {
    let lab = Lab::new(home(Nat::RestrictedDrop).cgn(Site::B, Cgn::new(Nat::RestrictedDrop)));
    let url = server_url();
    let _server = lab.start_server();
    assert_eq!(depth_seen(&lab, Node::Host(Site::B)), (Some(2), true));
    assert_eq!(depth_seen(&lab, Node::Host(Site::A)), (Some(1), false));
    let svc = expose(&lab, &url, Node::Host(Site::B), "svc-b", &[]);
    let want = direct(lab.public_ip(Site::B));
    let results = (0..3)
        .map(|i| session(&lab, &url, Node::Host(Site::A), &svc, want, i))
        .collect();
    for c in all_ok(results) {
        assert!(c.ms < GRACE_MS, "{} ms: the first SYN opened nothing", c.ms);
    }
    // An explicit TTL wins: at 2, the agent's first SYN dies inside the CGN, and only the
    // normal SYN after the grace opens it.
    drop(svc);
    let svc = expose(
        &lab,
        &url,
        Node::Host(Site::B),
        "svc-b2",
        &["--punch-ttl", "2"],
    );
    let c = all_ok(vec![session(
        &lab,
        &url,
        Node::Host(Site::A),
        &svc,
        want,
        9,
    )]);
    assert!(c[0].ms >= GRACE_MS, "{} ms with --punch-ttl 2", c[0].ms);
}

#[natlab::lab_test]
fn a_symmetric_cgn_in_front_of_the_clients_home_router_is_punched_by_birthday() {
    let cgn = Cgn::new(Nat::Symmetric { rst: false });
    let lab = Lab::new(
        LabConfig::new(Nat::RestrictedDrop, Nat::RestrictedRst)
            .cgn(Site::A, cgn)
            .second_hosts(false),
    );
    let url = server_url();
    let _server = lab.start_server();
    assert_eq!(depth_seen(&lab, Node::Host(Site::A)), (Some(2), true));
    let svc = expose(&lab, &url, Node::Host(Site::B), "svc-b", &[]);
    let want = direct(lab.public_ip(Site::B));
    let results = (0..3)
        .map(|i| session(&lab, &url, Node::Host(Site::A), &svc, want, i))
        .collect();
    let mut ms = Vec::new();
    for c in all_ok(results) {
        assert_eq!(c.strategy, "birthday_hard");
        ms.push(c.ms);
    }
    // A birthday punch is a race of random ports: one in a few takes an extra round of SYNs
    // (up to about the grace itself). Low-TTL SYNs that opened nothing would make every one
    // wait out the grace, the median too.
    ms.sort_unstable();
    assert!(
        ms[1] < GRACE_MS,
        "{ms:?} ms: the hard side's SYNs opened nothing"
    );
}

#[natlab::lab_test]
fn nat444_on_both_sides_is_direct_both_ways() {
    let lab = Lab::new(
        home(Nat::RestrictedRst)
            .cgn(Site::A, Cgn::new(Nat::RestrictedDrop))
            .cgn(Site::B, Cgn::new(Nat::RestrictedRst)),
    );
    let url = server_url();
    let _server = lab.start_server();
    let svc_a = expose(&lab, &url, Node::Host(Site::A), "svc-a", &[]);
    let svc_b = expose(&lab, &url, Node::Host(Site::B), "svc-b", &[]);
    let results = both_ways(
        &lab,
        &url,
        (&svc_a, direct(lab.public_ip(Site::A))),
        (&svc_b, direct(lab.public_ip(Site::B))),
    );
    for c in all_ok(results) {
        assert!(c.ms < GRACE_MS, "{} ms", c.ms);
    }
}

#[natlab::lab_test]
fn two_homes_behind_one_hairpinning_cgn_connect_through_its_hairpin() {
    for home_nat in [Nat::RestrictedDrop, Nat::RestrictedRst] {
        let cgn = Cgn::new(Nat::RestrictedDrop).hairpin(true);
        let lab = Lab::new(home(home_nat).shared_cgn(cgn));
        let url = server_url();
        let _server = lab.start_server();
        let public = lab.public_ip(Site::A);
        assert_eq!(lab.public_ip(Site::B), public, "one carrier, one address");
        let svc = expose(&lab, &url, Node::Host(Site::B), "svc-b", &[]);
        let results = (0..3)
            .map(|i| session(&lab, &url, Node::Host(Site::A), &svc, direct(public), i))
            .collect();
        all_ok(results);
    }
}

#[natlab::lab_test]
fn two_homes_behind_one_cgn_without_hairpin_get_the_relay_or_a_reason() {
    let lab = Lab::new(home(Nat::RestrictedDrop).shared_cgn(Cgn::new(Nat::RestrictedDrop)));
    let url = server_url();
    let mut server = lab.start_server_with(&["--relay"]);
    let svc = expose(&lab, &url, Node::Host(Site::B), "svc-b", &[]);
    all_ok(vec![session(
        &lab,
        &url,
        Node::Host(Site::A),
        &svc,
        RELAYED,
        1,
    )]);
    // Without a relay: a failure that says why, by the punch timeout.
    drop(svc);
    server.terminate(Duration::from_secs(5));
    let _server = lab.start_server();
    let svc = expose(&lab, &url, Node::Host(Site::B), "svc-b", &[]);
    let run = lab.connect_stdio(
        Node::Host(Site::A),
        &svc.id,
        Some(SECRET),
        b"x",
        SESSION_TIMEOUT,
    );
    let report = run.report().expect("a connect report");
    assert!(!run.success() && !report.ok, "{}", run.stderr);
    assert_eq!(
        report.code.as_deref(),
        Some("no_direct_path"),
        "{}",
        run.stderr
    );
    let message = report.message.unwrap_or_default();
    let public = lab.public_ip(Site::A).to_string();
    assert!(
        message.contains(&public) && message.contains("hairpin"),
        "the reason names the shared address and hairpinning: {message}"
    );
    assert!(run.elapsed < Duration::from_secs(8), "{:?}", run.elapsed);
}

// ---------------------------------------------------------------------------------------------
// IPv6 beside IPv4
// ---------------------------------------------------------------------------------------------

/// A lab whose site A is `a` and site B `b`, each a home router of kind `nat` with, when
/// given, IPv6 behind that firewall, and a dual-stack server reached by name.
fn dual(nat: Nat, a: Option<Firewall>, b: Option<Firewall>) -> LabConfig {
    let mut cfg = home(nat);
    if let Some(fw) = a {
        cfg = cfg.ipv6(Site::A, fw);
    }
    if let Some(fw) = b {
        cfg = cfg.ipv6(Site::B, fw);
    }
    cfg
}

#[natlab::lab_test]
fn dual_stack_ends_connect_over_ipv6_through_drop_and_rst_firewalls() {
    let lab = Lab::new(dual(
        Nat::RestrictedDrop,
        Some(Firewall::Drop),
        Some(Firewall::Rst),
    ));
    let url = server_url_by_name();
    let _server = lab.start_server_dual_stack(&[]);
    let svc_a = expose(&lab, &url, Node::Host(Site::A), "svc-a", &[]);
    let svc_b = expose(&lab, &url, Node::Host(Site::B), "svc-b", &[]);
    let results = both_ways(
        &lab,
        &url,
        (&svc_a, direct(lab.host_ip6(Site::A))),
        (&svc_b, direct(lab.host_ip6(Site::B))),
    );
    all_ok(results);
}

#[natlab::lab_test]
fn where_ipv4_has_no_direct_path_ipv6_is_direct_not_relayed() {
    let lab = Lab::new(dual(
        Nat::Symmetric { rst: true },
        Some(Firewall::Drop),
        Some(Firewall::Rst),
    ));
    let url = server_url_by_name();
    let _server = lab.start_server_dual_stack(&["--relay"]);
    let svc = expose(&lab, &url, Node::Host(Site::B), "svc-b", &[]);
    let want = direct(lab.host_ip6(Site::B));
    let results = (0..3)
        .map(|i| session(&lab, &url, Node::Host(Site::A), &svc, want, i))
        .collect();
    all_ok(results);
}

#[natlab::lab_test]
fn a_dual_stack_end_meets_an_ipv4_only_one_over_ipv4_both_ways() {
    let lab = Lab::new(dual(Nat::RestrictedRst, Some(Firewall::Drop), None));
    let url = server_url_by_name();
    let _server = lab.start_server_dual_stack(&[]);
    let svc_a = expose(&lab, &url, Node::Host(Site::A), "svc-a", &[]);
    let svc_b = expose(&lab, &url, Node::Host(Site::B), "svc-b", &[]);
    let results = both_ways(
        &lab,
        &url,
        (&svc_a, direct(lab.public_ip(Site::A))),
        (&svc_b, direct(lab.public_ip(Site::B))),
    );
    all_ok(results);
}

#[natlab::lab_test]
fn an_ipv6_only_end_meets_a_dual_stack_one_over_ipv6_both_ways() {
    let lab = Lab::new(
        dual(
            Nat::RestrictedDrop,
            Some(Firewall::Rst),
            Some(Firewall::Drop),
        )
        .host_stack(Node::Host(Site::A), Stack::V6),
    );
    let url = server_url_by_name();
    let _server = lab.start_server_dual_stack(&[]);
    let svc_a = expose(&lab, &url, Node::Host(Site::A), "svc-a", &[]);
    let svc_b = expose(&lab, &url, Node::Host(Site::B), "svc-b", &[]);
    let results = both_ways(
        &lab,
        &url,
        (&svc_a, direct(lab.host_ip6(Site::A))),
        (&svc_b, direct(lab.host_ip6(Site::B))),
    );
    all_ok(results);
}

#[natlab::lab_test]
fn ipv6_only_and_ipv4_only_ends_meet_through_the_relay_or_hear_why_not() {
    let lab = Lab::new(
        dual(
            Nat::RestrictedDrop,
            Some(Firewall::Drop),
            Some(Firewall::Drop),
        )
        .host_stack(Node::Host(Site::A), Stack::V6)
        .host_stack(Node::Host(Site::B), Stack::V4),
    );
    let url = server_url_by_name();
    let mut server = lab.start_server_dual_stack(&["--relay"]);
    let svc = expose(&lab, &url, Node::Host(Site::B), "svc-b", &[]);
    all_ok(vec![session(
        &lab,
        &url,
        Node::Host(Site::A),
        &svc,
        RELAYED,
        1,
    )]);
    drop(svc);
    server.terminate(Duration::from_secs(5));
    let _server = lab.start_server_dual_stack(&[]);
    let svc = expose(&lab, &url, Node::Host(Site::B), "svc-b", &[]);
    let run = lab.connect_stdio_at(
        &url,
        Node::Host(Site::A),
        &svc.id,
        Some(SECRET),
        b"x",
        SESSION_TIMEOUT,
        &[],
    );
    let report = run.report().expect("a connect report");
    assert_eq!(
        report.code.as_deref(),
        Some("no_direct_path"),
        "{}",
        run.stderr
    );
    let message = report.message.unwrap_or_default();
    assert!(
        message.contains("IPv6 only") && message.contains("IPv4 only"),
        "{message}"
    );
}

#[natlab::lab_test]
fn the_server_still_listens_where_it_is_told() {
    // `--listen 0.0.0.0:PORT` keeps the server on IPv4 only: a dual-stack client reaches it
    // by name over IPv4 and still meets a dual-stack agent over IPv4.
    let lab = Lab::new(dual(
        Nat::RestrictedDrop,
        Some(Firewall::Drop),
        Some(Firewall::Drop),
    ));
    let url = server_url_by_name();
    let _server = lab.start_server();
    let svc = expose(&lab, &url, Node::Host(Site::B), "svc-b", &[]);
    let want = direct(lab.public_ip(Site::B));
    all_ok(vec![session(
        &lab,
        &url,
        Node::Host(Site::A),
        &svc,
        want,
        1,
    )]);
}
