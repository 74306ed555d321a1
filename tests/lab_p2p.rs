//! End-to-end tests of the p2pnc binary in the NAT lab (crates/natlab).
//!
//! Each test builds a lab, runs `p2pnc server` on the rendezvous host, `p2pnc expose` next to
//! an in-process echo service, and `p2pnc connect` on another host. A session counts as direct
//! only if the client's `--report json` says `direct` with the expected peer address, the
//! echoed bytes are exact, and the rendezvous host's interface counters grew by far less than
//! the payload.
//!
//! They need root and iproute2, nftables and iptables; without root they print
//! `skipped: NAT lab needs root (...)` and return, except under CI, where they fail.

#![cfg(target_os = "linux")]

mod lab_support;

use lab_support::{Auth, ConnectRun, Connected, P2pncLab};
use natlab::{EchoServer, Lab, LabConfig, Nat, Node, Proc, Site, in_netns, pattern};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::thread;
use std::time::Duration;

const SECRET: &str = "lab-secret-7f3a";
/// Port of the echo service on each host's loopback.
const SVC_PORT: u16 = 50302;
/// Bytes sent (and echoed back) in the per-pair checks.
const PAYLOAD: usize = 2 << 20;
/// Rounds per direction in the per-pair checks.
const ROUNDS: u64 = 2;
/// Time allowed for one small session (setup + 2 MiB echo).
const SESSION_TIMEOUT: Duration = Duration::from_secs(30);

/// An echo service on a host, exposed through `p2pnc expose`.
struct Service {
    id: String,
    echo: EchoServer,
    agent: Proc,
}

fn expose(lab: &Lab, node: Node, id: &str, auth: Auth) -> Service {
    let echo = EchoServer::start(lab, node, SocketAddr::from(([127, 0, 0, 1], SVC_PORT)));
    let agent = lab.start_agent(node, id, SVC_PORT, auth);
    Service {
        id: id.to_string(),
        echo,
        agent,
    }
}

/// One `connect --stdio` echo session to check with [`direct_echo`].
struct Session<'a> {
    client: Node,
    svc: &'a Service,
    secret: Option<&'a str>,
    /// The address the client must report having connected to.
    expect_ip: Ipv4Addr,
    len: usize,
    seed: u64,
    timeout: Duration,
}

/// Runs one session and checks it: exit 0, byte-exact echo, rendezvous traffic < len/8, and
/// a report naming `expect_ip` and the path `direct` (or `lan` for a private `expect_ip`).
/// Returns the report's connection, or a description of what failed with both sides' stderr.
fn direct_echo(lab: &Lab, s: Session) -> Result<Connected, String> {
    let payload = pattern(s.seed, s.len);
    let before = lab.rdv_bytes();
    let run = lab.connect_stdio(s.client, &s.svc.id, s.secret, &payload, s.timeout);
    let rdv = lab.rdv_bytes() - before;
    judge_direct(&s, &run, &payload, rdv)
}

/// The checks of [`direct_echo`] on a finished run; `rdv` is the rendezvous host's traffic
/// during it.
fn judge_direct(
    s: &Session,
    run: &ConnectRun,
    payload: &[u8],
    rdv: u64,
) -> Result<Connected, String> {
    let Session {
        client,
        svc,
        expect_ip,
        len,
        timeout,
        ..
    } = *s;
    let what = format!("{client:?} -> '{}' ({len} bytes)", svc.id);
    let fail = |why: String| {
        Err(format!(
            "{what}: {why}\n--- connect stderr:\n{}\n--- agent stderr:\n{}",
            run.stderr.trim_end(),
            svc.agent.stderr().trim_end()
        ))
    };
    let Some(status) = run.status else {
        return fail(format!("connect did not exit within {timeout:?}"));
    };
    if !status.success() {
        return fail(format!("connect failed ({status})"));
    }
    if run.stdout != payload {
        return fail(format!(
            "echo returned {} of {len} bytes{}",
            run.stdout.len(),
            if run.stdout.len() == len {
                " (different bytes)"
            } else {
                ""
            }
        ));
    }
    if rdv >= (len / 8) as u64 {
        return fail(format!(
            "the rendezvous host moved {rdv} bytes during a {len}-byte session: not direct"
        ));
    }
    let Some(c) = run.connected() else {
        return fail(format!("no `ok` connect report for '{}'", svc.id));
    };
    // A session to a private (LAN) address is a direct path inside the LAN: `lan`.
    let want = if expect_ip.is_private() {
        "lan"
    } else {
        "direct"
    };
    if c.path != want {
        return fail(format!("path is {:?}, not {want}", c.path));
    }
    if c.addr.ip() != IpAddr::V4(expect_ip) {
        return fail(format!("connected to {}, expected {expect_ip}", c.addr));
    }
    eprintln!(
        "{what}: direct to {} in {} ms, echoed byte-exact, total {:?}, rdv traffic {rdv} B",
        c.addr, c.ms, run.elapsed
    );
    Ok(c)
}

/// Panics listing every failure (all sessions run before judging, so one report shows which
/// directions work).
fn assert_all_ok(results: Vec<Result<Connected, String>>) {
    let n = results.len();
    let failures: Vec<String> = results.into_iter().filter_map(Result::err).collect();
    assert!(
        failures.is_empty(),
        "{} of {n} sessions failed:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

/// Both hosts expose a service; each connects to the other's, `ROUNDS` times per direction.
fn pair_both_ways(cfg: LabConfig) {
    let lab = Lab::new(cfg);
    let _server = lab.start_server();
    let svc_a = expose(&lab, Node::Host(Site::A), "svc-a", Auth::Secret(SECRET));
    let svc_b = expose(&lab, Node::Host(Site::B), "svc-b", Auth::Secret(SECRET));
    let mut results = Vec::new();
    for round in 0..ROUNDS {
        for (client, svc, peer) in [(Site::A, &svc_b, Site::B), (Site::B, &svc_a, Site::A)] {
            let session = Session {
                client: Node::Host(client),
                svc,
                secret: Some(SECRET),
                expect_ip: lab.public_ip(peer),
                len: PAYLOAD,
                seed: round * 2 + u64::from(client == Site::B),
                timeout: SESSION_TIMEOUT,
            };
            results.push(direct_echo(&lab, session));
        }
    }
    let ok = results.iter().filter(|r| r.is_ok()).count() as u64;
    assert_all_ok(results);
    assert_eq!(
        svc_a.echo.connections() + svc_b.echo.connections(),
        ok,
        "service connections"
    );
}

/// One test per pair of NAT kinds whose sessions must go direct both ways:
/// `name: site A's NAT, site B's NAT, one-way delays (ms) of A, B and the server;`.
macro_rules! direct_both_ways {
    ($($(#[$doc:meta])* $name:ident: $a:expr, $b:expr, $delays:expr;)*) => {$(
        $(#[$doc])*
        #[natlab::lab_test]
        fn $name() {
            let (da, db, drdv) = $delays;
            pair_both_ways(LabConfig::new($a, $b).delays(da, db, drdv).second_hosts(false));
        }
    )*};
}

direct_both_ways! {
    full_cones_are_direct_both_ways: Nat::FullCone, Nat::FullCone, (20, 20, 20);
    full_cone_and_rst_cone_are_direct_both_ways: Nat::FullCone, Nat::RestrictedRst, (20, 20, 20);
    full_cone_and_drop_cone_are_direct_both_ways: Nat::FullCone, Nat::RestrictedDrop, (20, 20, 20);
    /// RST routers with uneven delays: the punch's timing matters here.
    rst_cones_with_uneven_latency_are_direct_both_ways: Nat::RestrictedRst, Nat::RestrictedRst, (5, 40, 20);
    rst_cone_and_drop_cone_are_direct_both_ways: Nat::RestrictedRst, Nat::RestrictedDrop, (20, 20, 20);
    drop_cones_are_direct_both_ways: Nat::RestrictedDrop, Nat::RestrictedDrop, (20, 20, 20);
}

#[natlab::lab_test]
fn a_public_host_and_a_natted_host_are_direct_both_ways() {
    let lab = Lab::new(LabConfig::new(Nat::None, Nat::RestrictedRst).second_hosts(false));
    let _server = lab.start_server();
    // The public host exposes with --public; the NATed one with a secret.
    let svc_a = expose(&lab, Node::Host(Site::A), "public-a", Auth::Public);
    let svc_b = expose(&lab, Node::Host(Site::B), "svc-b", Auth::Secret(SECRET));
    assert_eq!(lab.public_ip(Site::A), lab.host_ip(Site::A));
    let mut results = Vec::new();
    for round in 0..ROUNDS {
        results.push(direct_echo(
            &lab,
            Session {
                client: Node::Host(Site::B),
                svc: &svc_a,
                secret: None,
                expect_ip: lab.host_ip(Site::A),
                len: PAYLOAD,
                seed: 10 + round,
                timeout: SESSION_TIMEOUT,
            },
        ));
        results.push(direct_echo(
            &lab,
            Session {
                client: Node::Host(Site::A),
                svc: &svc_b,
                secret: Some(SECRET),
                expect_ip: lab.wan_ip(Site::B),
                len: PAYLOAD,
                seed: 20 + round,
                timeout: SESSION_TIMEOUT,
            },
        ));
    }
    assert_all_ok(results);
}

#[natlab::lab_test]
fn hosts_on_one_lan_connect_over_the_lan_without_hairpinning() {
    let lab = Lab::new(LabConfig::new(Nat::RestrictedRst, Nat::RestrictedRst));
    let _server = lab.start_server();
    let svc = expose(&lab, Node::Host(Site::B), "svc-b", Auth::Secret(SECRET));
    // Router B does not hairpin: its WAN address is not a way back into its LAN.
    let wan_b = SocketAddr::V4(SocketAddrV4::new(lab.wan_ip(Site::B), SVC_PORT));
    let hairpin = in_netns(&lab.ns(Node::Host2(Site::B)), move || {
        TcpStream::connect_timeout(&wan_b, Duration::from_secs(1))
    });
    assert!(
        hairpin.is_err(),
        "router B hairpins {wan_b} back into its LAN"
    );
    let results = (0..ROUNDS)
        .map(|round| {
            direct_echo(
                &lab,
                Session {
                    client: Node::Host2(Site::B),
                    svc: &svc,
                    secret: Some(SECRET),
                    expect_ip: lab.host_ip(Site::B),
                    len: PAYLOAD,
                    seed: 30 + round,
                    timeout: SESSION_TIMEOUT,
                },
            )
        })
        .collect();
    assert_all_ok(results);
}

#[natlab::lab_test]
fn sixteen_mib_each_way_arrive_intact_over_the_direct_path() {
    const LEN: usize = 16 << 20;
    let lab = Lab::new(LabConfig::new(Nat::RestrictedDrop, Nat::RestrictedRst).second_hosts(false));
    let _server = lab.start_server();
    let svc_a = expose(&lab, Node::Host(Site::A), "svc-a", Auth::Secret(SECRET));
    let svc_b = expose(&lab, Node::Host(Site::B), "svc-b", Auth::Secret(SECRET));
    let session = |client: Site, svc, seed| Session {
        client: Node::Host(client),
        svc,
        secret: Some(SECRET),
        expect_ip: lab.wan_ip(client.other()),
        len: LEN,
        seed,
        timeout: Duration::from_secs(120),
    };
    assert_all_ok(vec![
        direct_echo(&lab, session(Site::A, &svc_b, 40)),
        direct_echo(&lab, session(Site::B, &svc_a, 41)),
    ]);
    assert_eq!(
        svc_b.echo.bytes(),
        LEN as u64,
        "service B did not receive exactly 16 MiB"
    );
    assert_eq!(
        svc_a.echo.bytes(),
        LEN as u64,
        "service A did not receive exactly 16 MiB"
    );
}

#[natlab::lab_test]
fn twenty_concurrent_connects_to_one_agent_are_all_direct() {
    const N: usize = 20;
    const LEN: usize = 256 << 10;
    let lab = Lab::new(LabConfig::new(Nat::RestrictedRst, Nat::RestrictedDrop).second_hosts(false));
    let _server = lab.start_server();
    let svc = expose(&lab, Node::Host(Site::B), "svc-b", Auth::Secret(SECRET));
    let payloads: Vec<Vec<u8>> = (0..N).map(|i| pattern(100 + i as u64, LEN)).collect();
    let before = lab.rdv_bytes();
    let runs: Vec<ConnectRun> = thread::scope(|s| {
        let handles: Vec<_> = payloads
            .iter()
            .map(|p| {
                let lab = &lab;
                s.spawn(move || {
                    lab.connect_stdio(
                        Node::Host(Site::A),
                        "svc-b",
                        Some(SECRET),
                        p,
                        Duration::from_secs(60),
                    )
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("connect thread"))
            .collect()
    });
    let rdv = lab.rdv_bytes() - before;
    let mut failures = Vec::new();
    for (i, (run, p)) in runs.iter().zip(&payloads).enumerate() {
        let direct = run
            .connected()
            .is_some_and(|c| c.path == "direct" && c.addr.ip() == IpAddr::V4(lab.wan_ip(Site::B)));
        if !run.success() || !direct || run.stdout != *p {
            failures.push(format!(
                "#{i}: status {:?}, direct {direct}, {} of {LEN} bytes echoed{}, stderr:\n{}",
                run.status,
                run.stdout.len(),
                if run.stdout == *p { "" } else { " (mismatch)" },
                run.stderr
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {N} concurrent connects failed:\n{}\n--- agent stderr:\n{}",
        failures.len(),
        failures.join("\n"),
        svc.agent.stderr()
    );
    let total = (N * LEN) as u64;
    assert!(
        rdv < total / 8,
        "the rendezvous host moved {rdv} bytes during {N} sessions of {LEN} bytes"
    );
    assert_eq!(svc.echo.connections(), N as u64, "service connections");
    let mut ms: Vec<u64> = runs
        .iter()
        .filter_map(ConnectRun::connected)
        .map(|c| c.ms)
        .collect();
    ms.sort();
    eprintln!(
        "{N} concurrent connects: setup min {} ms, median {} ms, max {} ms; rdv traffic {rdv} B",
        ms[0],
        ms[N / 2],
        ms[N - 1]
    );
}

#[natlab::lab_test]
fn listen_mode_gives_each_local_connection_a_direct_stream() {
    const N: usize = 3;
    const LEN: usize = 512 << 10;
    let lab = Lab::new(LabConfig::new(Nat::RestrictedRst, Nat::RestrictedDrop).second_hosts(false));
    let _server = lab.start_server();
    let svc = expose(&lab, Node::Host(Site::B), "svc-b", Auth::Secret(SECRET));
    let listen = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9000);
    let fwd = lab.start_connect_listen(Node::Host(Site::A), "svc-b", Some(SECRET), listen);
    let before = lab.rdv_bytes();
    let results: Vec<std::io::Result<Vec<u8>>> = thread::scope(|s| {
        let handles: Vec<_> = (0..N)
            .map(|i| {
                let lab = &lab;
                s.spawn(move || {
                    let stream = in_netns(&lab.ns(Node::Host(Site::A)), || {
                        TcpStream::connect_timeout(&SocketAddr::V4(listen), Duration::from_secs(3))
                    })?;
                    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
                    natlab::echo_roundtrip(stream, &pattern(200 + i as u64, LEN))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("client thread"))
            .collect()
    });
    let rdv = lab.rdv_bytes() - before;
    let ctx = || {
        format!(
            "\n--- connect --listen stderr:\n{}\n--- agent stderr:\n{}",
            fwd.stderr(),
            svc.agent.stderr()
        )
    };
    for (i, r) in results.iter().enumerate() {
        let got = r
            .as_ref()
            .unwrap_or_else(|e| panic!("local connection #{i}: {e}{}", ctx()));
        assert!(
            *got == pattern(200 + i as u64, LEN),
            "local connection #{i}: echo differs ({} bytes){}",
            got.len(),
            ctx()
        );
    }
    // Each connection reports when it ends, just after its echo came back.
    let reports = lab_support::wait_reports(&fwd, N, Duration::from_secs(5));
    let direct = reports
        .iter()
        .filter_map(lab_support::Report::connected)
        .filter(|c| c.path == "direct" && c.addr.ip() == IpAddr::V4(lab.public_ip(Site::B)))
        .count();
    assert_eq!(direct, N, "expected {N} direct connect reports{}", ctx());
    assert_eq!(
        svc.echo.connections(),
        N as u64,
        "service connections{}",
        ctx()
    );
    assert!(
        rdv < (N * LEN / 8) as u64,
        "the rendezvous host moved {rdv} bytes{}",
        ctx()
    );
}

/// Connects to `svc` from `client` and expects a clean failure: non-zero exit within 10 s
/// with a report of error `code`, nothing on stdout, nothing reaching the service.
fn expect_failure(lab: &Lab, client: Node, svc: &Service, secret: Option<&str>, code: &str) {
    let before = svc.echo.connections();
    let run = lab.connect_stdio(
        client,
        &svc.id,
        secret,
        b"must not arrive\n",
        Duration::from_secs(20),
    );
    if let Err(e) = judge_clean_failure(client, svc, &run, before, code) {
        panic!("{e}");
    }
}

/// The checks of [`expect_failure`] on a finished run; `before` is the service's connection
/// count before it.
fn judge_clean_failure(
    client: Node,
    svc: &Service,
    run: &ConnectRun,
    before: u64,
    code: &str,
) -> Result<(), String> {
    let fail = |why: String| {
        Err(format!(
            "{client:?} -> '{}': {why}\n--- connect stderr:\n{}\n--- agent stderr:\n{}",
            svc.id,
            run.stderr.trim_end(),
            svc.agent.stderr().trim_end()
        ))
    };
    let Some(status) = run.status else {
        return fail("connect did not exit within 20 s".into());
    };
    if status.success() {
        return fail("connect succeeded but should have failed".into());
    }
    if run.elapsed >= Duration::from_secs(10) {
        return fail(format!(
            "connect took {:?} to fail (limit 10 s)",
            run.elapsed
        ));
    }
    let got = run.failure_code();
    if got.as_deref() != Some(code) {
        return fail(format!("the report's error code is {got:?}, not {code:?}"));
    }
    if !run.stdout.is_empty() {
        return fail(format!(
            "failed connect wrote {} bytes to stdout",
            run.stdout.len()
        ));
    }
    if svc.echo.connections() != before {
        return fail("the service was reached".into());
    }
    eprintln!(
        "{client:?} -> '{}' failed as expected in {:?}: {:?}",
        svc.id,
        run.elapsed,
        run.report().and_then(|r| r.message)
    );
    Ok(())
}

#[natlab::lab_test]
fn a_wrong_secret_and_an_unknown_peer_are_refused_cleanly() {
    let lab = Lab::new(LabConfig::new(Nat::RestrictedDrop, Nat::RestrictedRst).second_hosts(false));
    let _server = lab.start_server();
    let svc = expose(&lab, Node::Host(Site::B), "svc-b", Auth::Secret(SECRET));
    expect_failure(
        &lab,
        Node::Host(Site::A),
        &svc,
        Some("not-the-secret"),
        "secret_rejected",
    );
    expect_failure(&lab, Node::Host(Site::A), &svc, None, "secret_required");

    // Unknown id: refused by the server.
    let run = lab.connect_stdio(
        Node::Host(Site::A),
        "nobody",
        Some(SECRET),
        b"x",
        Duration::from_secs(20),
    );
    assert!(
        run.status.is_some_and(|s| !s.success()),
        "connect to an unknown peer: status {:?}; stderr:\n{}",
        run.status,
        run.stderr
    );
    assert_eq!(
        run.failure_code().as_deref(),
        Some("peer_offline"),
        "connect to an unknown peer: report; stderr:\n{}",
        run.stderr
    );

    // The right secret still works afterwards, and is the first thing the service sees.
    let good = Session {
        client: Node::Host(Site::A),
        svc: &svc,
        secret: Some(SECRET),
        expect_ip: lab.wan_ip(Site::B),
        len: PAYLOAD,
        seed: 50,
        timeout: SESSION_TIMEOUT,
    };
    if let Err(e) = direct_echo(&lab, good) {
        panic!("{e}");
    }
    assert_eq!(
        svc.echo.connections(),
        1,
        "service connections after one good session"
    );
}
