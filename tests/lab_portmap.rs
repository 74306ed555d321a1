//! Port mapping in the NAT lab: Debian's `miniupnpd` (PCP, NAT-PMP, UPnP-IGD; nftables backend)
//! on a symmetric site router.
//!
//! - Symmetric <-> symmetric has no direct path (the server, without `--relay`, refuses it);
//!   with miniupnpd on the agent's router the agent maps its punch port and the client connects
//!   straight to that mapping: direct, byte-exact, the payload never crossing the rendezvous
//!   host. When the agent exits, the mapping is gone from the router.
//! - A router that speaks only UPnP-IGD is used as well.
//! - `nat-check` behind that router says which of UPnP-IGD, NAT-PMP and PCP answered.
//!
//! miniupnpd refuses to map while its WAN address is reserved (the lab's addresses are test
//! nets), unless a STUN check shows the address is reachable 1:1: `stund` (two addresses) runs
//! on the rendezvous host and miniupnpd is started with `ext_perform_stun=yes`. For that check
//! the router's own packets must leave with their ports unchanged, so they are exempted from
//! the symmetric masquerade (forwarded LAN traffic is not), and the STUN answers from the
//! second address are let in. Needs root, `miniupnpd` and `stund` (`apt-get install -y
//! miniupnpd stun-server`); without them the tests say they are skipped (under CI they fail).
//!
//! The mapping the agent made is read from the router (miniupnpd's DNAT rule, and miniupnpd's
//! own log for the protocol that asked for it), not from the agent's log.

#![cfg(target_os = "linux")]

mod lab_support;

use lab_support::{Auth, ConnectRun, P2pncLab, server_url};
use natlab::{EchoServer, Lab, LabConfig, Nat, Node, Proc, Site, pattern};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const SECRET: &str = "lab-secret-portmap";
/// Port of the echo service on the agent's loopback.
const SVC_PORT: u16 = 50302;
/// Bytes echoed in each session.
const PAYLOAD: usize = 1 << 20;
/// The rendezvous host's second address, for `stund`.
const STUN_ALT_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 11);
/// The site whose router runs miniupnpd (the agent's).
const UPNP_SITE: Site = Site::A;

/// miniupnpd and stund (the tests that call this are marked
/// `#[natlab::lab_test("miniupnpd", "stund")]`).
fn portmap_tools() -> (PathBuf, PathBuf) {
    (natlab::tool("miniupnpd"), natlab::tool("stund"))
}

/// The lab: symmetric NATs on both sites (the agent's drops unsolicited packets, the client's
/// answers them with RST), no second hosts.
fn symmetric_lab() -> Lab {
    Lab::new(
        LabConfig::new(Nat::Symmetric { rst: false }, Nat::Symmetric { rst: true })
            .second_hosts(false),
    )
}

/// miniupnpd and stund running in the lab.
struct Upnp {
    daemon: Proc,
    _stund: Proc,
}

/// Starts `stund` on the rendezvous host and miniupnpd on the router of [`UPNP_SITE`], with
/// NAT-PMP/PCP on or off; waits until miniupnpd has enabled port forwarding.
fn start_miniupnpd(lab: &Lab, tools: &(PathBuf, PathBuf), pmp: bool) -> Upnp {
    let (miniupnpd, stund) = tools;
    let router = Node::Router(UPNP_SITE);
    let s = lab.addrs(UPNP_SITE);
    let rdv = lab.rdv_ip();
    // STUN needs two addresses; the inet router reaches the second one on the same link.
    lab.sh(
        Node::Rdv,
        &format!("ip addr show dev eth0 | grep -q ' {STUN_ALT_IP}/' || ip addr add {STUN_ALT_IP}/24 dev eth0"),
    );
    let stund = lab.spawn(
        Node::Rdv,
        "stund",
        stund.to_str().unwrap(),
        &["-h", &rdv.to_string(), "-a", &STUN_ALT_IP.to_string()],
    );
    // miniupnpd's chains (table inet filter), hooked from forward and nat; DNATed inbound
    // connections accepted by the lab's own forward chain; STUN answers from the server's two
    // addresses let in; the router's own packets leave with their ports (SNAT to itself before
    // the lab's fully random masquerade, which then leaves them alone).
    lab.sh(
        router,
        &format!(
            "nft list table inet filter >/dev/null 2>&1 || nft -f - <<'EOF'\n\
             table inet filter {{\n\
             \x20   chain forward {{\n\
             \x20       type filter hook forward priority 0; policy accept;\n\
             \x20       jump miniupnpd\n\
             \x20   }}\n\
             \x20   chain miniupnpd {{\n\
             \x20   }}\n\
             \x20   chain prerouting {{\n\
             \x20       type nat hook prerouting priority -100; policy accept;\n\
             \x20       jump prerouting_miniupnpd\n\
             \x20   }}\n\
             \x20   chain postrouting {{\n\
             \x20       type nat hook postrouting priority 100; policy accept;\n\
             \x20       jump postrouting_miniupnpd\n\
             \x20   }}\n\
             \x20   chain prerouting_miniupnpd {{\n\
             \x20   }}\n\
             \x20   chain postrouting_miniupnpd {{\n\
             \x20   }}\n\
             }}\n\
             table ip upnplab {{\n\
             \x20   chain postrouting {{\n\
             \x20       type nat hook postrouting priority 99; policy accept;\n\
             \x20       oifname \"wan\" ip saddr {wan} snat ip to {wan}\n\
             \x20   }}\n\
             }}\n\
             EOF\n\
             nft insert rule ip natlab forward iifname wan oifname lan ct status dnat accept\n\
             nft insert rule ip natlab input iifname wan ip saddr {{ {rdv}, {STUN_ALT_IP} }} \
             udp sport {{ 3478, 3479 }} accept\n",
            wan = s.wan
        ),
    );
    let conf = lab.dir().join(format!(
        "miniupnpd-{}.conf",
        if pmp { "all" } else { "upnp" }
    ));
    let yes_no = if pmp { "yes" } else { "no" };
    std::fs::write(
        &conf,
        format!(
            "ext_ifname=wan\n\
             listening_ip=lan\n\
             http_port=0\n\
             enable_upnp=yes\n\
             enable_natpmp={yes_no}\n\
             ext_perform_stun=yes\n\
             ext_stun_host={rdv}\n\
             ext_stun_port=3478\n\
             secure_mode=yes\n\
             system_uptime=yes\n\
             uuid=3e8a1c52-5b0e-4d4c-9d55-{:012x}\n\
             allow 1024-65535 {}/{} 1024-65535\n\
             deny 0-65535 0.0.0.0/0 0-65535\n",
            std::process::id(),
            s.lan_net,
            s.lan_prefix
        ),
    )
    .expect("write miniupnpd.conf");
    let pid = lab.dir().join("miniupnpd.pid");
    let mut daemon = lab.spawn(
        router,
        "miniupnpd",
        miniupnpd.to_str().unwrap(),
        &[
            "-f",
            conf.to_str().unwrap(),
            "-P",
            pid.to_str().unwrap(),
            "-d",
        ],
    );
    let ready = if pmp {
        "Listening for NAT-PMP/PCP traffic"
    } else {
        "HTTP listening on port"
    };
    daemon.wait_stderr(ready, Duration::from_secs(20));
    let log = daemon.stderr();
    assert!(
        log.contains("Port forwarding is now enabled"),
        "miniupnpd did not enable port forwarding (its STUN check failed); log:\n{log}"
    );
    Upnp {
        daemon,
        _stund: stund,
    }
}

impl Upnp {
    /// Stops miniupnpd (SIGTERM, then SIGKILL after 5 s).
    fn stop(mut self) {
        self.daemon.terminate(Duration::from_secs(5));
    }
}

/// miniupnpd's DNAT rules on the router, one per line (`... dnat ip to 10.0.1.2:PORT`).
fn router_mappings(lab: &Lab) -> Vec<String> {
    let out = lab.run(
        Node::Router(UPNP_SITE),
        "nft",
        &["list", "chain", "inet", "filter", "prerouting_miniupnpd"],
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("dnat"))
        .map(|l| l.trim().to_string())
        .collect()
}

/// `p2pnc expose` on the agent's host, waiting until the server lists it (the agent asks
/// for its port mapping before it registers).
fn start_agent(lab: &Lab, id: &str, extra: &[&str]) -> Proc {
    lab.start_agent_with(
        Node::Host(UPNP_SITE),
        id,
        SVC_PORT,
        Auth::Secret(SECRET),
        extra,
    )
}

/// The mapping miniupnpd holds for the agent's host: the public endpoint and the punch port
/// it forwards to.
fn mapped_endpoint(lab: &Lab) -> Option<(SocketAddr, u16)> {
    let host = lab.host_ip(UPNP_SITE);
    router_mappings(lab).iter().find_map(|l| {
        let words: Vec<&str> = l.split_whitespace().collect();
        let after = |w: &str| words.iter().position(|x| *x == w).map(|i| words[i + 1]);
        let public: u16 = after("dport")?.parse().ok()?;
        let (ip, port) = after("to")?.split_once(':')?;
        if ip.parse::<std::net::Ipv4Addr>().ok()? != host {
            return None;
        }
        Some((
            SocketAddr::from((lab.wan_ip(UPNP_SITE), public)),
            port.parse().ok()?,
        ))
    })
}

/// The protocol that asked miniupnpd for the mapping of public port `public`, from
/// miniupnpd's log (`PCP MAP: added mapping TCP 34441->...` for PCP; NAT-PMP and UPnP-IGD
/// requests are logged under their own names).
fn mapping_protocol(upnp: &Upnp, public: u16) -> &'static str {
    let log = upnp.daemon.stderr();
    let added = format!("added mapping TCP {public}->");
    if log
        .lines()
        .any(|l| l.contains("PCP MAP") && l.contains(&added))
    {
        "PCP"
    } else if log
        .lines()
        .any(|l| l.contains("NAT-PMP") && l.contains(&public.to_string()))
    {
        "NAT-PMP"
    } else {
        "UPnP-IGD"
    }
}

/// One `connect --stdio` echo session from the other site; returns the run and the rendezvous
/// host's traffic during it.
fn session(lab: &Lab, id: &str, seed: u64) -> (ConnectRun, Vec<u8>, u64) {
    let payload = pattern(seed, PAYLOAD);
    let before = lab.rdv_bytes();
    let run = lab.connect_stdio(
        Node::Host(UPNP_SITE.other()),
        id,
        Some(SECRET),
        &payload,
        Duration::from_secs(30),
    );
    let rdv = lab.rdv_bytes() - before;
    (run, payload, rdv)
}

/// Checks a session that must have gone direct to `mapped`.
fn assert_direct_to(
    run: &ConnectRun,
    payload: &[u8],
    rdv: u64,
    id: &str,
    mapped: SocketAddr,
    agent: &Proc,
) -> u64 {
    let ctx = || {
        format!(
            "\n--- connect stderr:\n{}\n--- agent stderr:\n{}",
            run.stderr.trim_end(),
            agent.stderr().trim_end()
        )
    };
    assert!(run.success(), "connect failed ({:?}){}", run.status, ctx());
    assert!(
        run.stdout == payload,
        "echo returned {} of {} bytes{}",
        run.stdout.len(),
        payload.len(),
        ctx()
    );
    let c = run
        .connected()
        .unwrap_or_else(|| panic!("no `ok` connect report for '{id}'{}", ctx()));
    assert_eq!(c.path, "direct", "path{}", ctx());
    assert_eq!(
        c.addr,
        mapped,
        "the client did not use the mapping{}",
        ctx()
    );
    assert!(
        rdv < (payload.len() / 8) as u64,
        "the rendezvous host moved {rdv} bytes during a {}-byte session: not direct{}",
        payload.len(),
        ctx()
    );
    c.ms
}

/// Stops the agent with SIGTERM and waits until its mapping is gone from the router.
fn stop_agent_and_check_removal(lab: &Lab, mut agent: Proc, internal: SocketAddr) {
    let started = Instant::now();
    let status = agent.terminate(Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| s.success()),
        "agent did not exit cleanly on SIGTERM ({status:?}); stderr:\n{}",
        agent.stderr()
    );
    let target = internal.to_string();
    let left: Vec<String> = router_mappings(lab)
        .into_iter()
        .filter(|l| l.contains(&target))
        .collect();
    assert!(
        left.is_empty(),
        "the router still forwards to {target} after the agent exited: {left:?}\n\
         --- agent stderr:\n{}",
        agent.stderr()
    );
    eprintln!(
        "agent exited in {:?} and its mapping to {target} is gone from the router",
        started.elapsed()
    );
}

/// Runs the Java client's `Demo` (one-call API) from the client's site against `id` and checks
/// that it went direct to `mapped`, byte-exact, past the rendezvous host. Returns its report
/// line; `None` (after saying why) without a JDK outside CI.
fn java_client_direct_to(lab: &Lab, id: &str, mapped: SocketAddr) -> Option<String> {
    let (Some(javac), Some(java)) = (natlab::find_tool("javac"), natlab::find_tool("java")) else {
        let why = "the Java client check needs a JDK (apt-get install -y default-jdk-headless)";
        assert!(!natlab::under_ci(), "{why}");
        eprintln!("skipped: {why}");
        return None;
    };
    let src =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("java/src/main/java/com/getpoint/p2pclient");
    let classes = lab.dir().join("java-classes");
    let mut sources: Vec<PathBuf> = std::fs::read_dir(&src)
        .unwrap_or_else(|e| panic!("read {}: {e}", src.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "java"))
        .collect();
    sources.sort();
    let status = std::process::Command::new(javac)
        .args(["--release", "8", "-d"])
        .arg(&classes)
        .args(&sources)
        .status()
        .expect("run javac");
    assert!(status.success(), "javac failed ({status})");
    let server = format!("{}:{}", lab.rdv_ip(), lab_support::SERVER_PORT);
    let len = PAYLOAD.to_string();
    let args = [
        "-Xmx64m",
        "-cp",
        classes.to_str().expect("UTF-8 path"),
        "com.getpoint.p2pclient.Demo",
        "--server",
        &server,
        "--id",
        "java-client",
        "--peer",
        id,
        "--secret",
        SECRET,
        "--echo",
        &len,
    ];
    let before = lab.rdv_bytes();
    let mut p = lab.spawn(
        Node::Host(UPNP_SITE.other()),
        "java-demo",
        java.to_str().unwrap(),
        &args,
    );
    let status = p.wait_timeout(Duration::from_secs(60));
    let rdv = lab.rdv_bytes() - before;
    let out = p.stdout();
    let ctx = format!("\n--- demo stdout:\n{out}--- demo stderr:\n{}", p.stderr());
    assert!(
        status.is_some_and(|s| s.success()),
        "Java demo failed ({status:?}){ctx}"
    );
    let want = format!("connected direct via {mapped}");
    let line = out
        .lines()
        .find(|l| l.contains(&want))
        .unwrap_or_else(|| panic!("the Java client did not report `{want}`{ctx}"));
    assert!(
        out.lines().any(|l| l.starts_with("p2p test success in ")),
        "no success line{ctx}"
    );
    assert!(
        rdv < (PAYLOAD / 8) as u64,
        "the rendezvous host moved {rdv} bytes during the Java client's echo{ctx}"
    );
    Some(line.trim().to_string())
}

#[natlab::lab_test("miniupnpd", "stund")]
fn symmetric_pair_goes_direct_through_a_port_mapping_and_not_without() {
    let tools = portmap_tools();
    let lab = symmetric_lab();
    let _server = lab.start_server();
    let echo = EchoServer::start(
        &lab,
        Node::Host(UPNP_SITE),
        SocketAddr::from(([127, 0, 0, 1], SVC_PORT)),
    );
    let host = lab.host_ip(UPNP_SITE);

    // 1. No miniupnpd: the agent finds no mapping, and sym <-> sym has no direct path.
    let mut agent = start_agent(&lab, "svc", &[]);
    let (run, _, _) = session(&lab, "svc", 1);
    let ctx = format!(
        "\n--- connect stderr:\n{}\n--- agent stderr:\n{}",
        run.stderr,
        agent.stderr()
    );
    assert!(
        run.status.is_some_and(|s| !s.success()),
        "connect without a mapping succeeded{ctx}"
    );
    assert_eq!(
        run.failure_code().as_deref(),
        Some("no_direct_path"),
        "connect without a mapping did not fail with the no-direct-path code{ctx}"
    );
    assert!(run.stdout.is_empty(), "failed connect wrote to stdout{ctx}");
    assert_eq!(echo.connections(), 0, "the service was reached{ctx}");
    let refused_ms = run.elapsed.as_millis();
    agent.kill();

    // 2. miniupnpd on the agent's router: the agent maps its punch port (PCP first).
    let upnp = start_miniupnpd(&lab, &tools, true);
    let agent = start_agent(&lab, "svc", &[]);
    let (mapped, punch_port) = mapped_endpoint(&lab)
        .unwrap_or_else(|| panic!("agent made no mapping:\n{}", agent.stderr()));
    let proto = mapping_protocol(&upnp, mapped.port());
    assert_eq!(
        proto,
        "PCP",
        "protocol; miniupnpd:\n{}",
        upnp.daemon.stderr()
    );
    assert_eq!(mapped.ip(), IpAddr::V4(lab.wan_ip(UPNP_SITE)));
    let internal = SocketAddr::from((host, punch_port));
    let rules = router_mappings(&lab);
    assert!(
        rules.iter().any(|l| l.contains(&internal.to_string())),
        "no DNAT to {internal} on the router: {rules:?}"
    );

    // 3. The same pair now connects directly, to the mapping.
    let mut setups = Vec::new();
    for seed in 2..4 {
        let (run, payload, rdv) = session(&lab, "svc", seed);
        setups.push(assert_direct_to(&run, &payload, rdv, "svc", mapped, &agent));
    }
    assert_eq!(echo.connections(), 2, "service connections");
    if let Some(line) = java_client_direct_to(&lab, "svc", mapped) {
        eprintln!("Java client: {line}");
    }
    eprintln!(
        "sym<->sym: refused in {refused_ms} ms without a mapping; with the {proto} mapping \
         {mapped} -> {internal}: direct in {setups:?} ms, {PAYLOAD} bytes echoed byte-exact"
    );

    // 4. The mapping goes when the agent goes.
    stop_agent_and_check_removal(&lab, agent, internal);

    // 5. nat-check behind this router says who answered.
    let out = lab.run(
        Node::Host(UPNP_SITE),
        lab_support::p2pnc_bin(),
        &["nat-check", "--server", &server_url(), "--json"],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "nat-check failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).expect("nat-check JSON");
    let pm = &v["port_mapping"];
    for proto in ["upnp", "natpmp", "pcp"] {
        assert_eq!(pm[proto], true, "nat-check: {proto} did not answer: {v}");
    }
    assert_eq!(pm["gateway"], lab.addrs(UPNP_SITE).lan_router.to_string());
    assert_eq!(pm["external_ip"], lab.wan_ip(UPNP_SITE).to_string());
    assert_eq!(v["mapping"], "endpoint-dependent", "{v}");
    let text = lab.run(
        Node::Host(UPNP_SITE),
        lab_support::p2pnc_bin(),
        &["nat-check", "--server", &server_url()],
    );
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    let line = text
        .lines()
        .find(|l| l.starts_with("port mapping:"))
        .unwrap_or_else(|| panic!("no `port mapping:` line:\n{text}"));
    assert!(
        line.contains("UPnP-IGD, NAT-PMP, PCP answered"),
        "nat-check text: {line}"
    );
    eprintln!("nat-check behind miniupnpd: {line}");

    // 6. The client's router answers nothing.
    let out = lab.run(
        Node::Host(UPNP_SITE.other()),
        lab_support::p2pnc_bin(),
        &["nat-check", "--server", &server_url(), "--json"],
    );
    let v: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).expect("JSON");
    for proto in ["upnp", "natpmp", "pcp"] {
        assert_eq!(
            v["port_mapping"][proto], false,
            "site without miniupnpd: {v}"
        );
    }
    upnp.stop();
}

#[natlab::lab_test("miniupnpd", "stund")]
fn a_router_with_only_upnp_igd_is_used_and_cleaned_up() {
    let tools = portmap_tools();
    let lab = symmetric_lab();
    let _server = lab.start_server();
    let echo = EchoServer::start(
        &lab,
        Node::Host(UPNP_SITE),
        SocketAddr::from(([127, 0, 0, 1], SVC_PORT)),
    );
    let upnp = start_miniupnpd(&lab, &tools, false);
    let agent = start_agent(&lab, "svc-upnp", &[]);
    let (mapped, punch_port) = mapped_endpoint(&lab)
        .unwrap_or_else(|| panic!("agent made no mapping:\n{}", agent.stderr()));
    let proto = mapping_protocol(&upnp, mapped.port());
    assert_eq!(proto, "UPnP-IGD", "miniupnpd:\n{}", upnp.daemon.stderr());
    let internal = SocketAddr::from((lab.host_ip(UPNP_SITE), punch_port));
    assert!(
        router_mappings(&lab)
            .iter()
            .any(|l| l.contains(&internal.to_string())),
        "no DNAT to {internal} on the router"
    );
    let (run, payload, rdv) = session(&lab, "svc-upnp", 7);
    let ms = assert_direct_to(&run, &payload, rdv, "svc-upnp", mapped, &agent);
    assert_eq!(echo.connections(), 1);
    eprintln!("sym<->sym through the UPnP-IGD mapping {mapped} -> {internal}: direct in {ms} ms");
    stop_agent_and_check_removal(&lab, agent, internal);

    // --no-port-mapping: no mapping is asked for, so the pair has no direct path again.
    let mut agent = start_agent(&lab, "svc-upnp", &["--no-port-mapping"]);
    assert!(
        mapped_endpoint(&lab).is_none() && router_mappings(&lab).is_empty(),
        "--no-port-mapping still mapped:\n{}",
        agent.stderr()
    );
    let (run, _, _) = session(&lab, "svc-upnp", 8);
    assert!(
        !run.success() && run.failure_code().as_deref() == Some("no_direct_path"),
        "with --no-port-mapping: {:?}\n{}",
        run.status,
        run.stderr
    );
    agent.kill();
    upnp.stop();
}

#[natlab::lab_test("miniupnpd", "stund")]
fn cone_pair_with_a_mapping_still_goes_direct() {
    let tools = portmap_tools();
    // Both cones: the usual simultaneous punch goes on, the mapping being one more candidate.
    let lab = Lab::new(LabConfig::new(Nat::RestrictedDrop, Nat::RestrictedRst).second_hosts(false));
    let _server = lab.start_server();
    let echo = EchoServer::start(
        &lab,
        Node::Host(UPNP_SITE),
        SocketAddr::from(([127, 0, 0, 1], SVC_PORT)),
    );
    let upnp = start_miniupnpd(&lab, &tools, true);
    let agent = start_agent(&lab, "svc-cone", &[]);
    let (mapped, punch_port) = mapped_endpoint(&lab)
        .unwrap_or_else(|| panic!("agent made no mapping:\n{}", agent.stderr()));
    let mut used = Vec::new();
    for seed in 20..23 {
        let (run, payload, rdv) = session(&lab, "svc-cone", seed);
        let ctx = format!(
            "\n--- connect stderr:\n{}\n--- agent stderr:\n{}",
            run.stderr,
            agent.stderr()
        );
        assert!(
            run.success() && run.stdout == payload,
            "session failed{ctx}"
        );
        assert!(rdv < (PAYLOAD / 8) as u64, "not direct: {rdv} B{ctx}");
        let c = run.connected().expect("a connect report");
        assert_eq!(c.path, "direct", "{ctx}");
        assert_eq!(c.addr.ip(), IpAddr::V4(lab.wan_ip(UPNP_SITE)), "{ctx}");
        used.push(format!("{} in {} ms", c.addr, c.ms));
    }
    assert_eq!(echo.connections(), 3);
    // A cone that keeps port numbers maps the punch port to the same public endpoint as the
    // mapping: either way the stream goes to the agent's router.
    let status = lab.server_status_of("svc-cone");
    let public = lab_support::service(&status, "svc-cone")
        .and_then(|s| s["public"].as_str()?.parse::<SocketAddr>().ok())
        .unwrap_or_else(|| panic!("'svc-cone' not in /status.json: {status}"));
    eprintln!(
        "cone<->cone, public endpoint {public}, mapping {mapped} -> punch port {punch_port}: \
         direct to {used:?}"
    );
    stop_agent_and_check_removal(
        &lab,
        agent,
        SocketAddr::from((lab.host_ip(UPNP_SITE), punch_port)),
    );
    upnp.stop();
}
