//! The Java client (java/) in the NAT lab (crates/natlab): `p2pnc server` on the
//! rendezvous host, `p2pnc expose` next to an echo service on site B's host, and the Java
//! `Demo` on site A's host, through the seed's API (`--plain`: `getP2PLocalPeerAddress`, then a
//! plain socket bound to LocalAddress), through the same snippet on the pair of
//! `requestEncryptedPeerAddress` (`--forward`: an encrypted stream behind a loopback
//! forwarder) and through the one-call `connectDetailed`. Each run
//! echoes 1 MiB; it counts only if the demo succeeds and reports the expected path and address,
//! the echo is exact with nothing more (the demo half-closes and reads to the end), and the
//! rendezvous host's interface moved far less than the payload (far more, for the relay).
//! The TLS cases run the server with `--tls-cert/--tls-key` (a self-signed certificate made
//! here) and the agent and the demo on `https://` with `--tls-pin`.
//!
//! The Java client probes its NAT, so behind a symmetric NAT it gets a birthday punch, as its
//! hard side (without the low TTL Java cannot set); those cases count direct sessions and
//! assert a success rate. Early data is checked end to end, and its latency measured against
//! the ordinary handshake in the same lab.
//!
//! They need root, the lab's tools and a JDK (`javac`, `java`); without root or a JDK they print
//! `skipped: ...` and return, except under CI, where they fail.

#![cfg(target_os = "linux")]

mod lab_support;

use lab_support::{Auth, P2pncLab, SERVER_PORT};
use natlab::{EchoServer, Lab, LabConfig, Nat, Node, Proc, RDV_IP, Site};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const SECRET: &str = "lab-secret-java";
const SVC_PORT: u16 = 50302;
/// Bytes the demo echoes through the service after its greeting.
const PAYLOAD: usize = 1 << 20;
const DEMO_TIMEOUT: Duration = Duration::from_secs(60);

/// The Demo's classes, compiled once per test binary with `javac --release 8`, and `java`
/// (the tests that call this are marked `#[natlab::lab_test("javac", "java")]`).
fn java_classes() -> &'static (PathBuf, PathBuf) {
    static CLASSES: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    CLASSES.get_or_init(|| {
        let (javac, java) = (natlab::tool("javac"), natlab::tool("java"));
        let src = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("java/src/main/java/com/getpoint/p2pclient");
        let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("lab-java-classes");
        let _ = std::fs::remove_dir_all(&out);
        let mut sources: Vec<PathBuf> = std::fs::read_dir(&src)
            .unwrap_or_else(|e| panic!("read {}: {e}", src.display()))
            .map(|e| e.expect("dir entry").path())
            .filter(|p| p.extension().is_some_and(|x| x == "java"))
            .collect();
        sources.sort();
        let status = Command::new(javac)
            .args(["--release", "8", "-d"])
            .arg(&out)
            .args(&sources)
            .status()
            .expect("run javac");
        assert!(status.success(), "javac failed ({status})");
        (java, out)
    })
}

/// Which API the demo uses and what it must report.
#[derive(Clone, Copy)]
enum Expect {
    /// `--plain`: the seed's API; the peer address must be B's public IP.
    Plain,
    /// `--forward`: the seed's snippet on the encrypted forwarder's loopback pair.
    Forwarded,
    /// One call, a direct stream to B's public IP.
    Direct,
    /// One call, through the server's relay.
    Relayed,
}

/// The server's self-signed TLS certificate and key (PEM files) and its pin.
struct ServerCert {
    cert: PathBuf,
    key: PathBuf,
    pin: String,
}

impl ServerCert {
    /// A self-signed certificate for the rendezvous IP, written to `dir`.
    fn new(dir: &Path) -> ServerCert {
        let key = rcgen::KeyPair::generate().expect("key pair");
        let cert = rcgen::CertificateParams::new(vec![RDV_IP.to_string()])
            .expect("certificate parameters")
            .self_signed(&key)
            .expect("self-signed certificate");
        let out = ServerCert {
            cert: dir.join("server-cert.pem"),
            key: dir.join("server-key.pem"),
            pin: p2pnc::tls::fingerprint(cert.der()),
        };
        std::fs::write(&out.cert, cert.pem()).expect("write the certificate");
        std::fs::write(&out.key, key.serialize_pem()).expect("write the key");
        out
    }
}

/// One run of the Demo.
struct DemoRun {
    /// None when it did not exit within [`DEMO_TIMEOUT`] (it was killed).
    status: Option<std::process::ExitStatus>,
    stdout: String,
    stderr: String,
    /// From spawning the JVM to its exit.
    elapsed: Duration,
}

impl DemoRun {
    fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    /// N in the first stdout line with `prefix` followed by `... N ms`.
    fn ms(&self, prefix: &str) -> Option<u64> {
        self.stdout.lines().find_map(|l| {
            let rest = &l[l.find(prefix)? + prefix.len()..];
            rest.split(" ms")
                .next()?
                .split_whitespace()
                .last()?
                .parse()
                .ok()
        })
    }

    fn describe(&self) -> String {
        format!(
            "status {:?} after {:?}\n--- demo stdout:\n{}--- demo stderr:\n{}",
            self.status, self.elapsed, self.stdout, self.stderr
        )
    }
}

/// Runs the Demo on site A's host against `streamserver` with `extra` arguments (the server
/// URL is plain, or `https://` with the pin of `tls`).
fn run_demo(lab: &Lab, tls: Option<&ServerCert>, extra: &[&str]) -> DemoRun {
    let server = format!("{RDV_IP}:{SERVER_PORT}");
    let url = match tls {
        Some(_) => format!("https://{server}"),
        None => server.clone(),
    };
    run_demo_at(lab, &url, tls, extra)
}

/// Runs the Demo on site A's host against the server at `url`.
fn run_demo_at(lab: &Lab, url: &str, tls: Option<&ServerCert>, extra: &[&str]) -> DemoRun {
    let (java, classes) = java_classes();
    let mut args = vec![
        "-Xmx64m",
        "-cp",
        classes.to_str().expect("UTF-8 path"),
        "com.getpoint.p2pclient.Demo",
        "--server",
        url,
        "--id",
        "getpoint",
        "--peer",
        "streamserver",
        "--secret",
        SECRET,
    ];
    if let Some(c) = tls {
        args.extend(["--tls-pin", &c.pin]);
    }
    args.extend_from_slice(extra);
    let started = Instant::now();
    let mut p = lab.spawn(
        Node::Host(Site::A),
        "java-demo",
        java.to_str().unwrap(),
        &args,
    );
    let status = p.wait_timeout(DEMO_TIMEOUT);
    let elapsed = started.elapsed();
    if status.is_none() {
        p.kill();
    }
    DemoRun {
        status,
        stdout: p.stdout(),
        stderr: p.stderr(),
        elapsed,
    }
}

/// Runs the Demo on site A's host against the echo service exposed as `streamserver`; with
/// `tls`, over `https://` with the server's pin.
fn demo(
    lab: &Lab,
    expect: Expect,
    echo: &EchoServer,
    tls: Option<&ServerCert>,
) -> Result<(), String> {
    let server = format!("{RDV_IP}:{SERVER_PORT}");
    let payload = PAYLOAD.to_string();
    let mut args = vec!["--echo", &payload];
    let b = lab.public_ip(Site::B);
    let (what, report) = match expect {
        Expect::Plain => {
            args.push("--plain");
            ("seed API (--plain)", format!("-> peer {b}:"))
        }
        Expect::Forwarded => {
            args.push("--forward");
            (
                "seed API (--forward)",
                "forwarded: local 127.0.0.1:".to_string(),
            )
        }
        Expect::Direct => ("one-call API", format!("connected direct via {b}:")),
        Expect::Relayed => ("one-call API", format!("connected relayed via {server} ")),
    };
    let connections = echo.connections();
    let rdv_before = lab.rdv_bytes();
    let run = run_demo(lab, tls, &args);
    let rdv = lab.rdv_bytes() - rdv_before;
    let out = &run.stdout;
    let fail = |why: String| Err(format!("{what}: {why}\n{}", run.describe()));
    match run.status {
        None => return fail(format!("the demo did not exit within {DEMO_TIMEOUT:?}")),
        Some(s) if !s.success() => return fail(format!("the demo failed ({s})")),
        Some(_) => {}
    }
    if !out
        .lines()
        .any(|l| l.starts_with("p2p test success in ") && l.ends_with(" ms"))
    {
        return fail("no line `p2p test success in N ms`".into());
    }
    if !out.contains(&report) {
        return fail(format!("the demo did not report `{report}`"));
    }
    let relayed = matches!(expect, Expect::Relayed);
    if !relayed && rdv >= (PAYLOAD / 8) as u64 {
        return fail(format!(
            "the rendezvous host moved {rdv} bytes for a {PAYLOAD}-byte echo: not direct"
        ));
    }
    if relayed && rdv < 2 * PAYLOAD as u64 {
        return fail(format!(
            "only {rdv} bytes crossed the rendezvous host: not relayed"
        ));
    }
    if echo.connections() != connections + 1 {
        return fail(format!(
            "the service saw {} new connections, not 1",
            echo.connections() - connections
        ));
    }
    eprintln!(
        "{what}: ok in {:?}, rdv traffic {rdv} B: {}",
        run.elapsed,
        out.trim_end().replace('\n', " | ")
    );
    Ok(())
}

/// Starts `p2pnc expose` for the echo service on B's host over `https://` with the server's
/// pin, and waits until the server lists it (the harness's agent speaks plain HTTP).
fn start_tls_agent(lab: &Lab, cert: &ServerCert) -> Proc {
    let url = format!("https://{RDV_IP}:{SERVER_PORT}");
    let to = format!("127.0.0.1:{SVC_PORT}");
    let spec = lab
        .p2pnc("expose-tls")
        .args(["expose", "--report", "json", "--server", &url])
        .args(["--tls-pin", &cert.pin, "--id", "streamserver", "--to", &to])
        .args(["--secret", SECRET]);
    let mut p = lab.spawn_cmd(Node::Host(Site::B), spec);
    let deadline = Instant::now() + Duration::from_secs(15);
    while lab.peer_status("streamserver").ok() != Some(200) {
        if let Some(s) = p.try_status() {
            panic!("the TLS agent exited ({s}); stderr:\n{}", p.stderr());
        }
        assert!(
            Instant::now() < deadline,
            "the TLS agent did not register within 15 s; stderr:\n{}",
            p.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    p
}

/// How the rendezvous server of a demo lab runs.
#[derive(Clone, Copy, Debug, Default)]
struct ServerOptions {
    /// `--relay`.
    relay: bool,
    /// TLS with a self-signed certificate, which the agent and the demo pin.
    tls: bool,
}

/// B exposes an echo service with a secret; A runs the demo once per entry of `runs`, in turn,
/// twice over, against a server run as `server` says.
fn java_demo(cfg: LabConfig, server: ServerOptions, runs: &[Expect]) {
    let ServerOptions { relay, tls } = server;
    let lab = Lab::new(cfg);
    let cert = tls.then(|| ServerCert::new(lab.dir()));
    let mut server_args = Vec::new();
    if relay {
        server_args.push("--relay");
    }
    if let Some(c) = &cert {
        let (cert, key) = (c.cert.to_str(), c.key.to_str());
        server_args.extend(["--tls-cert", cert.expect("UTF-8 path")]);
        server_args.extend(["--tls-key", key.expect("UTF-8 path")]);
    }
    let _server = lab.start_server_with(&server_args);
    let echo = EchoServer::start(
        &lab,
        Node::Host(Site::B),
        SocketAddr::from(([127, 0, 0, 1], SVC_PORT)),
    );
    let agent = match &cert {
        Some(c) => start_tls_agent(&lab, c),
        None => lab.start_agent(
            Node::Host(Site::B),
            "streamserver",
            SVC_PORT,
            Auth::Secret(SECRET),
        ),
    };
    let mut failures = Vec::new();
    for _round in 0..2 {
        for &expect in runs {
            if let Err(e) = demo(&lab, expect, &echo, cert.as_ref()) {
                failures.push(e);
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} demo runs failed:\n\n{}\n--- agent stderr:\n{}",
        failures.len(),
        2 * runs.len(),
        failures.join("\n\n"),
        agent.stderr()
    );
}

#[natlab::lab_test("javac", "java")]
fn java_through_restricted_drop_routers() {
    java_demo(
        LabConfig::new(Nat::RestrictedDrop, Nat::RestrictedDrop).second_hosts(false),
        ServerOptions {
            relay: false,
            tls: false,
        },
        &[Expect::Plain, Expect::Forwarded, Expect::Direct],
    );
}

#[natlab::lab_test("javac", "java")]
fn java_through_restricted_rst_routers_uneven_latency() {
    java_demo(
        LabConfig::new(Nat::RestrictedRst, Nat::RestrictedRst)
            .delays(5, 40, 10)
            .second_hosts(false),
        ServerOptions {
            relay: false,
            tls: false,
        },
        &[Expect::Plain, Expect::Direct],
    );
}

/// The agent's NAT is symmetric: the server tells the Java client `birthday_easy` (it probes
/// many ports of B's public IP from its punch port). (With a RestrictedDrop router in front of
/// the client this pairing fails for `p2pnc connect` too, so that case is not asserted here.)
#[natlab::lab_test("javac", "java")]
fn java_birthday_punch_toward_a_symmetric_agent() {
    java_demo(
        LabConfig::new(Nat::RestrictedRst, Nat::Symmetric { rst: false }).second_hosts(false),
        ServerOptions {
            relay: false,
            tls: false,
        },
        &[Expect::Direct],
    );
}

/// Both NATs are symmetric: no direct path can be punched, the server orders `relay_only`
/// and its relay carries the session.
#[natlab::lab_test("javac", "java")]
fn java_relay_between_two_symmetric_nats() {
    java_demo(
        LabConfig::new(Nat::Symmetric { rst: true }, Nat::Symmetric { rst: false })
            .second_hosts(false),
        ServerOptions {
            relay: true,
            tls: false,
        },
        &[Expect::Relayed],
    );
}

/// The server speaks TLS with a self-signed certificate: the agent and the Java client pin it,
/// through the seed's API and the one-call API; the streams are direct.
#[natlab::lab_test("javac", "java")]
fn java_over_https_with_a_pinned_self_signed_server() {
    java_demo(
        LabConfig::new(Nat::RestrictedRst, Nat::RestrictedRst).second_hosts(false),
        ServerOptions {
            relay: false,
            tls: true,
        },
        &[Expect::Plain, Expect::Direct],
    );
}

/// TLS and the relay: the Java client behind a symmetric NAT, toward an agent behind another
/// one, joins the relay inside TLS.
#[natlab::lab_test("javac", "java")]
fn java_relay_fallback_over_https() {
    java_demo(
        LabConfig::new(Nat::Symmetric { rst: true }, Nat::Symmetric { rst: true })
            .second_hosts(false),
        ServerOptions {
            relay: true,
            tls: true,
        },
        &[Expect::Relayed],
    );
}

// ---------------------------------------------------------------------------------------------
// A dual-stack Java client
// ---------------------------------------------------------------------------------------------

/// The server listens on IPv6 and IPv4 and is reached by name (`rdv.lab`, A and AAAA); B
/// exposes the echo service by name too; the Java demo on A (dual-stack) connects twice with
/// the one-call API and must report a direct stream to `want` (B's IPv6 address when B has
/// IPv6, its public IPv4 address when it has not), byte-exact, not through the rendezvous host.
fn java_dual_stack(cfg: LabConfig, want: impl Fn(&Lab) -> String) {
    let lab = Lab::new(cfg);
    let url = lab_support::server_url_by_name();
    let _server = lab.start_server_dual_stack(&[]);
    let echo = EchoServer::start(
        &lab,
        Node::Host(Site::B),
        SocketAddr::from(([127, 0, 0, 1], SVC_PORT)),
    );
    let agent = lab.start_agent_at(
        &url,
        Node::Host(Site::B),
        "streamserver",
        SVC_PORT,
        Auth::Secret(SECRET),
        &[],
    );
    let report = format!("connected direct via {}:", want(&lab));
    let payload = PAYLOAD.to_string();
    let server = url.trim_start_matches("http://");
    for round in 0..2 {
        let before = lab.rdv_bytes();
        let run = run_demo_at(&lab, server, None, &["--echo", &payload]);
        let rdv = lab.rdv_bytes() - before;
        assert!(
            run.success() && run.stdout.contains(&report),
            "round {round}: the demo did not report `{report}`\n{}\n--- agent stderr:\n{}",
            run.describe(),
            agent.stderr()
        );
        assert!(
            rdv < (PAYLOAD / 8) as u64,
            "round {round}: the rendezvous host moved {rdv} bytes: not direct"
        );
        eprintln!(
            "round {round}: {}",
            run.stdout.trim_end().replace('\n', " | ")
        );
    }
    assert_eq!(echo.connections(), 2, "the service saw every session once");
}

/// Both ends dual-stack behind RFC 6092 firewalls: the Java client races IPv6 first and wins
/// over it (simultaneous open through both firewalls).
#[natlab::lab_test("javac", "java")]
fn java_dual_stack_meets_a_dual_stack_agent_over_ipv6() {
    java_dual_stack(
        LabConfig::new(Nat::RestrictedDrop, Nat::RestrictedRst)
            .ipv6(Site::A, natlab::Firewall::Drop)
            .ipv6(Site::B, natlab::Firewall::Rst)
            .second_hosts(false),
        |lab| format!("[{}]", lab.host_ip6(Site::B)),
    );
}

/// A dual-stack Java client and an IPv4-only agent: they meet over IPv4, the family the agent
/// has (the client's control connection is IPv4 for that reason).
#[natlab::lab_test("javac", "java")]
fn java_dual_stack_meets_an_ipv4_only_agent_over_ipv4() {
    java_dual_stack(
        LabConfig::new(Nat::RestrictedDrop, Nat::RestrictedDrop)
            .ipv6(Site::A, natlab::Firewall::Drop)
            .second_hosts(false),
        |lab| lab.public_ip(Site::B).to_string(),
    );
}

/// Bytes echoed on each stream of the warm-path test: past yamux's 256 KiB window, so the
/// client's window updates and its waits for the agent's are exercised.
const WARM_PAYLOAD: &str = "600000";

/// Warm paths: the demo connects twice in one JVM (`--warm-up`); the second connection is a
/// new yamux stream on the path the first one punched (its report ends in `(warm path)`), so the
/// server sees one session for both. Each stream echoes byte-exactly and half-closes on its
/// own (the demo's `--echo` check): the first stream's end leaves the path up for the second.
/// The same two connections with `--no-warm` make two sessions, so the count can tell.
#[natlab::lab_test("javac", "java")]
fn java_warm_path_carries_the_second_connection() {
    let d = LATENCY_DELAY_MS;
    let s = Setup::new(
        LabConfig::new(Nat::RestrictedDrop, Nat::RestrictedRst)
            .delays(d, d, d)
            .second_hosts(false),
        &[],
    );
    let b = s.lab.public_ip(Site::B);
    let run = run_demo(&s.lab, None, &["--echo", WARM_PAYLOAD, "--warm-up"]);
    assert!(
        run.success()
            && run.stdout.contains(&format!("connected direct via {b}:"))
            && run.stdout.contains("(warm path)"),
        "the second connection did not ride the warm path\n{}\n--- agent stderr:\n{}",
        run.describe(),
        s.agent.stderr()
    );
    let rtt = f64::from(2 * d);
    let first = run.ms("first echoed byte after ").expect("the echo timing");
    eprintln!(
        "warm (RTT {rtt} ms): first echoed byte after {first} ms = {:.2} RTT | {}",
        first as f64 / rtt,
        run.stdout.trim_end().replace('\n', " | ")
    );
    assert_eq!(s.echo.connections(), 2, "the service saw both connections");
    assert_eq!(
        s.sessions().len(),
        1,
        "the second connection went through the server: {:?}",
        s.sessions()
    );

    let cold = run_demo(&s.lab, None, &["--echo", "4096", "--warm-up", "--no-warm"]);
    assert!(
        cold.success() && !cold.stdout.contains("(warm path)"),
        "{}",
        cold.describe()
    );
    assert_eq!(s.echo.connections(), 4);
    assert_eq!(
        s.sessions().len(),
        3,
        "without warm paths each connection is a session of its own"
    );
}

// ---------------------------------------------------------------------------------------------
// A Java client behind a symmetric NAT
// ---------------------------------------------------------------------------------------------

/// Attempts per router combination of the birthday cases.
const BIRTHDAY_ATTEMPTS: usize = 10;
/// Bytes echoed in each birthday session.
const BIRTHDAY_PAYLOAD: &str = "65536";

/// The server, an echo service and its agent on B, for the demo on A.
struct Setup {
    lab: Lab,
    _server: Proc,
    echo: EchoServer,
    agent: Proc,
}

impl Setup {
    fn new(cfg: LabConfig, server_args: &[&str]) -> Setup {
        let lab = Lab::new(cfg);
        let server = lab.start_server_with(server_args);
        let echo = EchoServer::start(
            &lab,
            Node::Host(Site::B),
            SocketAddr::from(([127, 0, 0, 1], SVC_PORT)),
        );
        let agent = lab.start_agent(
            Node::Host(Site::B),
            "streamserver",
            SVC_PORT,
            Auth::Secret(SECRET),
        );
        Setup {
            lab,
            _server: server,
            echo,
            agent,
        }
    }

    /// The sessions the server recorded so far (its `/status.json`).
    fn sessions(&self) -> Vec<serde_json::Value> {
        self.lab.server_status()["recent"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

/// The Java client behind the symmetric NAT `sym` (site A), the agent behind the cone `cone`
/// (site B), no relay: the server must order a birthday punch with the Java client as the hard
/// side, every session either direct to B's public IP with an exact echo or a clear failure
/// naming the birthday punch, and at least `required` of [`BIRTHDAY_ATTEMPTS`] direct.
fn java_birthday_hard_side(sym: Nat, cone: Nat, required: usize) {
    let s = Setup::new(LabConfig::new(sym, cone).second_hosts(false), &[]);
    let b = s.lab.public_ip(Site::B);
    let (mut direct, mut setup_ms, mut failures) = (0, Vec::new(), Vec::new());
    for i in 0..BIRTHDAY_ATTEMPTS {
        let connections = s.echo.connections();
        let run = run_demo(&s.lab, None, &["--echo", BIRTHDAY_PAYLOAD]);
        let new = s.echo.connections() - connections;
        if run.success() {
            assert!(
                run.stdout.contains(&format!("connected direct via {b}:")),
                "attempt {i}: not direct to {b}\n{}",
                run.describe()
            );
            assert_eq!(
                new,
                1,
                "attempt {i}: service connections\n{}",
                run.describe()
            );
            direct += 1;
            setup_ms.extend(run.ms("connected direct via "));
        } else {
            // A failed birthday punch ends once every hard-side socket is done: it says so
            // and neither hangs nor waits out the whole punch timeout.
            assert!(
                run.status.is_some()
                    && run.stdout.contains("p2p test failed: no direct path")
                    && run.stdout.contains("birthday punch toward"),
                "attempt {i}: not a clear birthday failure\n{}",
                run.describe()
            );
            assert_eq!(new, 0, "a failed session reached the service");
            failures.push(format!(
                "attempt {i} ({:?}): {}",
                run.elapsed,
                run.stdout.trim()
            ));
        }
    }
    let sessions = s.sessions();
    assert_eq!(sessions.len(), BIRTHDAY_ATTEMPTS, "{sessions:#?}");
    for r in &sessions {
        assert!(
            r["client_mapping"] == "endpoint-dependent"
                && r["agent_mapping"] == "endpoint-independent"
                && r["strategy"] == "birthday_hard",
            "the server did not order the Java client the hard side of a birthday punch: {r}"
        );
    }
    setup_ms.sort_unstable();
    let median = setup_ms.get(setup_ms.len() / 2).copied().unwrap_or(0);
    eprintln!(
        "JAVA BIRTHDAY {sym:?} client -> {cone:?} agent: {direct}/{BIRTHDAY_ATTEMPTS} direct, \
         setup median {median} ms; failures:\n{}",
        failures.join("\n")
    );
    assert!(
        direct >= required,
        "{direct} of {BIRTHDAY_ATTEMPTS} direct, {required} required; failures:\n{}\n\
         --- agent stderr:\n{}",
        failures.join("\n"),
        s.agent.stderr()
    );
}

/// The agent's router drops the hard side's SYNs: its mappings stay open and catch a probe.
#[natlab::lab_test("javac", "java")]
fn java_birthday_hard_side_toward_a_drop_router() {
    java_birthday_hard_side(Nat::Symmetric { rst: true }, Nat::RestrictedDrop, 9);
}

/// The agent's router answers the hard side's SYNs with RSTs, which close the mappings they
/// opened one round trip later; fresh sockets replace them while the probes come. Measured in
/// this lab: 67 of 70 sessions direct, against 25 of 50 with the first 256 sockets alone (and
/// 35 of 35 for the Rust client, whose TTL-2 SYNs never reach that router).
#[natlab::lab_test("javac", "java")]
fn java_birthday_hard_side_toward_a_rst_router() {
    java_birthday_hard_side(Nat::Symmetric { rst: true }, Nat::RestrictedRst, 8);
}

/// Both NATs symmetric and no relay: the server refuses at once with `no_direct_path`, and
/// the Java client says why without punching.
#[natlab::lab_test("javac", "java")]
fn java_two_symmetric_nats_without_a_relay_fail_fast() {
    let s = Setup::new(
        LabConfig::new(Nat::Symmetric { rst: false }, Nat::Symmetric { rst: true })
            .second_hosts(false),
        &[],
    );
    let run = run_demo(&s.lab, None, &["--echo", "0"]);
    assert!(
        !run.success()
            && run
                .stdout
                .contains("p2p test failed: server refused (no_direct_path)")
            && run.stdout.contains("both symmetric"),
        "{}",
        run.describe()
    );
    // The JVM's start included: far below the 5 s punch timeout.
    assert!(run.elapsed < Duration::from_secs(4), "{}", run.describe());
    assert_eq!(s.echo.connections(), 0);
}

// ---------------------------------------------------------------------------------------------
// Early data
// ---------------------------------------------------------------------------------------------

/// Measured runs per mode in the latency comparison, after one unmeasured run each.
const LATENCY_RUNS: usize = 9;
/// One-way delay of every site and of the server (ms): RTT 40 ms between any two hosts.
const LATENCY_DELAY_MS: u32 = 20;

/// Nearest-rank median.
fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

/// The demo with the greeting as early data (`--early`) and without, interleaved in one lab:
/// every run must be direct with an exact echo and nothing more; with `--early` the greeting
/// must have left with the selection. Prints the time from the call to the first echoed byte
/// in ms and in RTTs, of a warm JVM (`--warm-up`: the demo connects once before the measured
/// call, as a long-running app would have).
fn java_early_data(nat: Nat) {
    let d = LATENCY_DELAY_MS;
    let s = Setup::new(
        LabConfig::new(nat, nat).delays(d, d, d).second_hosts(false),
        &[],
    );
    let b = s.lab.public_ip(Site::B);
    let rtt = f64::from(2 * d);
    let (mut echo_ms, mut setup_ms) = ([Vec::new(), Vec::new()], [Vec::new(), Vec::new()]);
    for i in 0..=LATENCY_RUNS {
        for (k, early) in [false, true].into_iter().enumerate() {
            let mut args = vec!["--echo", "4096", "--warm-up", "--no-warm"];
            if early {
                args.push("--early");
            }
            let connections = s.echo.connections();
            let run = run_demo(&s.lab, None, &args);
            let ok = run.success()
                && run.stdout.contains(&format!("connected direct via {b}:"))
                && run.stdout.contains("(first bytes early)") == early
                && s.echo.connections() == connections + 2;
            assert!(ok, "run {i}, early {early}:\n{}", run.describe());
            let (Some(first), Some(setup)) = (
                run.ms("first echoed byte after "),
                run.ms("connected direct via "),
            ) else {
                panic!("run {i}: no timings\n{}", run.describe());
            };
            if i > 0 {
                echo_ms[k].push(first);
                setup_ms[k].push(setup);
            }
        }
    }
    let row = |k: usize, what: &str| {
        let (e, st) = (median(echo_ms[k].clone()), median(setup_ms[k].clone()));
        format!(
            "{what}: first echoed byte median {e} ms = {:.2} RTT (setup {st} ms = {:.2} RTT)",
            e as f64 / rtt,
            st as f64 / rtt
        )
    };
    eprintln!(
        "JAVA EARLY DATA {nat:?} <-> {nat:?}, RTT {rtt} ms, {LATENCY_RUNS} runs each:\n  {}\n  {}",
        row(0, "greeting after connect"),
        row(1, "greeting as early data ")
    );
}

#[natlab::lab_test("javac", "java")]
fn java_early_data_through_drop_routers() {
    java_early_data(Nat::RestrictedDrop);
}

#[natlab::lab_test("javac", "java")]
fn java_early_data_through_rst_routers() {
    java_early_data(Nat::RestrictedRst);
}
