//! A cluster of `p2pnc server`s on one Redis in the NAT lab: Redis and three members on the
//! rendezvous host (one address, three ports), agents and clients behind NATs.
//!
//! They need root, the lab's tools and `redis-server`; without root they print
//! `skipped: NAT lab needs root (...)` and return, except under CI, where they fail.

#![cfg(target_os = "linux")]

mod lab_support;

use std::net::{Ipv4Addr, SocketAddr};
use std::thread;
use std::time::{Duration, Instant};

use lab_support::{Auth, ConnectRun, P2pncLab};
use natlab::{EchoServer, Lab, LabConfig, Nat, Node, Proc, RDV_IP, Site, pattern};

const SECRET: &str = "lab-secret-cluster";
/// The echo service's port on each host's loopback.
const SVC_PORT: u16 = 50302;
/// Redis, on the rendezvous host's loopback.
const REDIS_PORT: u16 = 6379;
/// The three members' control ports (each probe port is the next one; each admin port is
/// the control port + 9). The first is the port the lab's helpers call the server's.
const MEMBERS: [u16; 3] = [lab_support::SERVER_PORT, 50310, 50320];
/// Bytes echoed in a session.
const PAYLOAD: usize = 2 << 20;
/// Time allowed for one session.
const SESSION_TIMEOUT: Duration = Duration::from_secs(30);
/// Time allowed for a process to come up, or for a member to see a change in the store.
const WAIT: Duration = Duration::from_secs(10);
/// How long a killed member's agents may stay listed by the others: the presence TTL plus
/// one refresh of slack.
const PRESENCE_GONE: Duration = Duration::from_secs(20);

fn url(port: u16) -> String {
    format!("http://{RDV_IP}:{port}")
}

fn control(port: u16) -> SocketAddr {
    SocketAddr::from((RDV_IP, port))
}

fn admin(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port + 9))
}

fn start_redis(lab: &Lab) -> Proc {
    let port = REDIS_PORT.to_string();
    let p = lab.spawn(
        Node::Rdv,
        "redis",
        "redis-server",
        &[
            "--port",
            &port,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
    );
    lab.wait_tcp(
        Node::Rdv,
        SocketAddr::from((Ipv4Addr::LOCALHOST, REDIS_PORT)),
        WAIT,
    );
    p
}

/// Starts member `i` of the cluster and waits until it sees the store.
fn start_member(lab: &Lab, i: usize, extra: &[&str]) -> Proc {
    let port = MEMBERS[i];
    let listen = control(port).to_string();
    let admin_addr = admin(port).to_string();
    let redis = format!("redis://127.0.0.1:{REDIS_PORT}");
    let name = format!("m{i}");
    let spec = lab
        .p2pnc(&format!("server-{name}"))
        .args(["server", "--listen", &listen, "--admin", &admin_addr])
        .args(["--cluster", &redis, "--member", &name])
        .args(extra);
    let p = lab.spawn_cmd(Node::Rdv, spec);
    wait_until(lab, &p, &format!("member {name} sees the store"), || {
        metric(lab, port, "p2pnc_cluster_store_up") == Some(1)
    });
    p
}

/// Polls `done` until it holds, within [`WAIT`]; panics with `p`'s stderr otherwise.
fn wait_until(lab: &Lab, p: &Proc, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "timeout: {what}; stderr:\n{}\n{}",
            p.stderr(),
            lab.diagnostics()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// A value of member `port`'s `/metrics`.
fn metric(lab: &Lab, port: u16, name: &str) -> Option<u64> {
    let (code, body) = lab
        .http_get(Node::Rdv, admin(port), "/metrics", Duration::from_secs(2))
        .ok()?;
    (code == 200).then_some(())?;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// `GET /v1/peers/{id}` at member `port`.
fn peer_status(lab: &Lab, port: u16, id: &str) -> u16 {
    lab.http_get(
        Node::Rdv,
        control(port),
        &format!("/v1/peers/{id}"),
        Duration::from_secs(2),
    )
    .map_or(0, |(s, _)| s)
}

/// An agent on `node` registered at member `port`, forwarding to an echo service; waits
/// until member `seen_at` lists it.
fn expose_at(lab: &Lab, node: Node, port: u16, id: &str, auth: Auth, seen_at: u16) -> Proc {
    let to = format!("127.0.0.1:{SVC_PORT}");
    let mut spec = lab
        .p2pnc(&format!("expose-{id}"))
        .args(["expose", "--report", "json", "--server", &url(port)])
        .args(["--id", id, "--to", &to]);
    spec = match auth {
        Auth::Secret(s) => spec.args(["--secret", s]),
        Auth::Public => spec.arg("--public"),
    };
    let p = lab.spawn_cmd(node, spec);
    // Listed elsewhere, and held by its member (not only an older registration's presence).
    wait_until(lab, &p, &format!("'{id}' listed at {seen_at}"), || {
        peer_status(lab, seen_at, id) == 200
            && metric(lab, port, "p2pnc_agents_online").is_some_and(|n| n >= 1)
    });
    p
}

fn echo(lab: &Lab, node: Node) -> EchoServer {
    EchoServer::start(lab, node, SocketAddr::from(([127, 0, 0, 1], SVC_PORT)))
}

/// One `connect --stdio` echo session through member `port`.
fn session(
    lab: &Lab,
    client: Node,
    port: u16,
    id: &str,
    secret: Option<&str>,
    seed: u64,
) -> ConnectRun {
    let payload = pattern(seed, PAYLOAD);
    let run = lab.connect_stdio_at(
        &url(port),
        client,
        id,
        secret,
        &payload,
        SESSION_TIMEOUT,
        &[],
    );
    assert!(
        run.stdout == payload || !run.success(),
        "a session that succeeded echoed other bytes"
    );
    run
}

/// Checks a session: exit 0, byte-exact (checked by [`session`]), and the path.
fn assert_path(run: &ConnectRun, path: &str, what: &str) -> u64 {
    assert!(run.success(), "{what}: connect failed:\n{}", run.stderr);
    let c = run
        .connected()
        .unwrap_or_else(|| panic!("{what}: no connect report:\n{}", run.stderr));
    assert_eq!(c.path, path, "{what}: {c:?}");
    c.ms
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

#[natlab::lab_test("redis-server")]
fn a_client_asking_another_member_is_direct_byte_exact_and_as_fast_as_a_local_one() {
    // One-way delays 20 ms to each site and 10 ms to the rendezvous host.
    let lab = Lab::new(
        LabConfig::new(Nat::RestrictedRst, Nat::RestrictedDrop)
            .delays(20, 20, 10)
            .second_hosts(false),
    );
    let _redis = start_redis(&lab);
    let members: Vec<Proc> = (0..3).map(|i| start_member(&lab, i, &[])).collect();
    let _echo = echo(&lab, Node::Host(Site::A));
    let _agent = expose_at(
        &lab,
        Node::Host(Site::A),
        MEMBERS[0],
        "svc",
        Auth::Secret(SECRET),
        MEMBERS[1],
    );
    let client = Node::Host(Site::B);
    let (mut local, mut cross) = (Vec::new(), Vec::new());
    for round in 0..4 {
        let before = lab.rdv_bytes();
        let run = session(&lab, client, MEMBERS[1], "svc", Some(SECRET), round);
        let rdv = lab.rdv_bytes() - before;
        cross.push(assert_path(&run, "direct", "cross-member"));
        assert!(
            rdv < (PAYLOAD / 8) as u64,
            "{rdv} bytes through the rendezvous host: not direct"
        );
        let run = session(&lab, client, MEMBERS[0], "svc", Some(SECRET), 10 + round);
        local.push(assert_path(&run, "direct", "same member"));
    }
    // Through the third member too.
    let run = session(&lab, client, MEMBERS[2], "svc", Some(SECRET), 20);
    assert_path(&run, "direct", "third member");
    assert_eq!(
        metric(&lab, MEMBERS[1], "p2pnc_cluster_cross_connects_total"),
        Some(4)
    );
    assert_eq!(
        metric(&lab, MEMBERS[0], "p2pnc_cluster_orders_routed_in_total"),
        Some(5)
    );
    // The client-agent RTT is 80 ms (20 + 20 each way); the target is 0.2 RTT, and the
    // check allows 0.5 RTT for a loaded machine.
    let (l, c) = (median(local.clone()), median(cross.clone()));
    eprintln!("setup ms: same member {local:?} (median {l}), cross member {cross:?} (median {c})");
    assert!(
        c <= l + 40,
        "cross-member setup median {c} ms vs same-member {l} ms"
    );
    drop(members);
}

#[natlab::lab_test("redis-server")]
fn symmetric_nats_are_relayed_by_the_clients_member() {
    let lab = Lab::new(
        LabConfig::new(Nat::Symmetric { rst: false }, Nat::Symmetric { rst: false })
            .second_hosts(false),
    );
    let _redis = start_redis(&lab);
    let _members: Vec<Proc> = (0..2)
        .map(|i| start_member(&lab, i, &["--relay"]))
        .collect();
    let _echo = echo(&lab, Node::Host(Site::A));
    let _agent = expose_at(
        &lab,
        Node::Host(Site::A),
        MEMBERS[0],
        "svc",
        Auth::Secret(SECRET),
        MEMBERS[1],
    );
    let run = session(
        &lab,
        Node::Host(Site::B),
        MEMBERS[1],
        "svc",
        Some(SECRET),
        1,
    );
    assert_path(&run, "relayed", "relay across members");
    assert!(
        metric(&lab, MEMBERS[1], "p2pnc_relayed_bytes_total").unwrap_or(0) >= 2 * PAYLOAD as u64,
        "the client's member carried the relayed bytes"
    );
    assert_eq!(
        metric(&lab, MEMBERS[0], "p2pnc_relayed_bytes_total"),
        Some(0)
    );
}

#[natlab::lab_test("redis-server")]
fn a_killed_members_agents_leave_and_reregister_elsewhere() {
    let lab = Lab::new(LabConfig::new(Nat::RestrictedRst, Nat::RestrictedRst).second_hosts(false));
    let _redis = start_redis(&lab);
    let mut members: Vec<Proc> = (0..3).map(|i| start_member(&lab, i, &[])).collect();
    let _echo = echo(&lab, Node::Host(Site::A));
    let _first = expose_at(
        &lab,
        Node::Host(Site::A),
        MEMBERS[0],
        "svc",
        Auth::Secret(SECRET),
        MEMBERS[1],
    );
    let _public = expose_at(
        &lab,
        Node::Host(Site::A),
        MEMBERS[0],
        "pub",
        Auth::Public,
        MEMBERS[1],
    );
    members[0].kill(); // SIGKILL: no goodbye, the presence has to expire.
    let killed = Instant::now();
    // The owner's new agent registers at another member at once and is reached within 10 s.
    let _second = expose_at(
        &lab,
        Node::Host(Site::A),
        MEMBERS[1],
        "svc",
        Auth::Secret(SECRET),
        MEMBERS[2],
    );
    let run = session(
        &lab,
        Node::Host(Site::B),
        MEMBERS[2],
        "svc",
        Some(SECRET),
        3,
    );
    assert_path(&run, "direct", "after the kill");
    assert!(
        killed.elapsed() < Duration::from_secs(10),
        "{:?}",
        killed.elapsed()
    );
    // The killed member's other agent disappears when its presence expires.
    while peer_status(&lab, MEMBERS[1], "pub") == 200 {
        assert!(
            killed.elapsed() < PRESENCE_GONE,
            "'pub' still listed after {PRESENCE_GONE:?}"
        );
        thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(peer_status(&lab, MEMBERS[2], "pub"), 404);
}

#[natlab::lab_test("redis-server")]
fn redis_stopped_and_restarted_under_traffic() {
    let lab = Lab::new(LabConfig::new(Nat::RestrictedRst, Nat::RestrictedDrop).second_hosts(false));
    let mut redis = start_redis(&lab);
    let _members: Vec<Proc> = (0..2).map(|i| start_member(&lab, i, &[])).collect();
    let _echo = echo(&lab, Node::Host(Site::A));
    let agent = expose_at(
        &lab,
        Node::Host(Site::A),
        MEMBERS[0],
        "svc",
        Auth::Secret(SECRET),
        MEMBERS[1],
    );
    let client = Node::Host(Site::B);
    // A long cross-member session runs while Redis goes away.
    let big = pattern(99, 32 << 20);
    let streaming = thread::scope(|s| {
        let run = s.spawn(|| {
            lab.connect_stdio_at(
                &url(MEMBERS[1]),
                client,
                "svc",
                Some(SECRET),
                &big,
                SESSION_TIMEOUT,
                &[],
            )
        });
        thread::sleep(Duration::from_millis(300));
        redis.kill();
        run.join().expect("session thread")
    });
    assert!(streaming.success(), "{}", streaming.stderr);
    assert!(streaming.stdout == big, "the long session's bytes differ");
    wait_until(&lab, &agent, "member 0 notices the outage", || {
        metric(&lab, MEMBERS[0], "p2pnc_cluster_store_up") == Some(0)
    });
    // The agent's own member still connects it; the other says it cannot know.
    let run = session(&lab, client, MEMBERS[0], "svc", Some(SECRET), 5);
    assert_path(&run, "direct", "at the agent's member during the outage");
    let run = session(&lab, client, MEMBERS[1], "svc", Some(SECRET), 6);
    assert!(!run.success());
    assert_eq!(
        run.failure_code().as_deref(),
        Some("busy"),
        "{}",
        run.stderr
    );
    // Redis comes back empty: the agent is republished and reached through the other member.
    let _redis = start_redis(&lab);
    let back = Instant::now();
    loop {
        let run = session(&lab, client, MEMBERS[1], "svc", Some(SECRET), 7);
        if run.success() {
            assert_path(&run, "direct", "after the outage");
            break;
        }
        assert!(
            back.elapsed() < WAIT,
            "not reachable across members again:\n{}",
            run.stderr
        );
        thread::sleep(Duration::from_millis(200));
    }
    assert!(metric(&lab, MEMBERS[0], "p2pnc_cluster_store_outages_total") >= Some(1));
}

#[natlab::lab_test("redis-server")]
fn two_owners_racing_for_one_id_on_two_members_one_wins() {
    let lab = Lab::new(LabConfig::new(Nat::RestrictedRst, Nat::RestrictedDrop).second_hosts(false));
    let _redis = start_redis(&lab);
    let _members: Vec<Proc> = (0..3).map(|i| start_member(&lab, i, &[])).collect();
    let _echo_a = echo(&lab, Node::Host(Site::A));
    let _echo_b = echo(&lab, Node::Host(Site::B));
    let spawn = |node: Node, port: u16, secret: &str| {
        let to = format!("127.0.0.1:{SVC_PORT}");
        let spec = lab
            .p2pnc("expose-race")
            .args(["expose", "--report", "json", "--server", &url(port)])
            .args(["--id", "race", "--to", &to, "--secret", secret]);
        lab.spawn_cmd(node, spec)
    };
    let one = spawn(Node::Host(Site::A), MEMBERS[0], "secret-one");
    let two = spawn(Node::Host(Site::B), MEMBERS[1], "secret-two");
    wait_until(&lab, &one, "one of the racers registers", || {
        peer_status(&lab, MEMBERS[2], "race") == 200
    });
    // Give the loser time to retry: it must keep losing.
    thread::sleep(Duration::from_secs(3));
    let online: u64 = MEMBERS[..2]
        .iter()
        .map(|&p| metric(&lab, p, "p2pnc_agents_online").unwrap_or(0))
        .sum();
    assert_eq!(
        online,
        1,
        "exactly one registration\none:\n{}\ntwo:\n{}",
        one.stderr(),
        two.stderr()
    );
    let wins: Vec<bool> = ["secret-one", "secret-two"]
        .iter()
        .map(|s| session(&lab, Node::Host(Site::B), MEMBERS[2], "race", Some(s), 8).success())
        .collect();
    assert_eq!(wins.iter().filter(|w| **w).count(), 1, "{wins:?}");
}
