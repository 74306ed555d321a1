//! Private by default, checked on the wire: `tcpdump` on the lab's internet router records
//! every packet of a session while the client sends a random marker through an echo service,
//! and the marker must never cross the internet in clear — over a direct path and over the
//! server's relay. With `--no-encrypt` on both ends the same marker must show up in the same
//! capture, so the check can fail; and every capture must hold the session's own packets
//! (their addresses and at least the payload's bytes), so an empty capture cannot pass.
//!
//! One lab: both sites behind symmetric NATs, so a client on site A reaches the agent on site
//! B only through the relay, and a client on the outside host (a public address) reaches it
//! directly.

#![cfg(target_os = "linux")]

mod lab_support;

use lab_support::{Auth, P2pncLab};
use natlab::{EchoServer, Lab, LabConfig, Nat, Node, OUTSIDE_IP, Proc, RDV_IP, Site};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const SECRET: &str = "lab-secret-privacy-5d21";
/// Port of the echo service on host B's loopback.
const SVC_PORT: u16 = 50302;
/// Copies of the marker in one session's payload, each followed by random filler.
const MARKER_COPIES: usize = 1024;
/// Random filler after each copy: the payload (about 250 KiB) outgrows the early data a
/// client sends inside its handshake (64 KiB), so plain bytes cross in both directions.
const FILLER: usize = 200;
/// Time allowed for one session (setup, relay included, and the echo).
const SESSION_TIMEOUT: Duration = Duration::from_secs(30);
/// Time tcpdump has to open its capture, and to write it out when told to stop.
const TCPDUMP_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a capture is read while waiting for a session's last packets.
const CAPTURE_POLL: Duration = Duration::from_millis(50);
/// tcpdump's capture buffer (KiB, the default is 2 MiB): a session's burst of a few megabytes,
/// each packet seen as it enters and as it leaves the router, fits with room to spare (a
/// dropped packet fails the test).
const CAPTURE_BUFFER_KIB: &str = "16384";

/// A tcpdump writing every TCP packet the internet router sees (all its interfaces) to a file.
struct Capture {
    proc: Proc,
    file: PathBuf,
}

impl Capture {
    fn start(lab: &Lab, name: &str) -> Capture {
        let file = lab.dir().join(format!("{name}.pcap"));
        let path = file.to_str().expect("a UTF-8 lab directory");
        let tcpdump = natlab::tool("tcpdump");
        // -U: each packet goes to the file as soon as tcpdump has it (the kernel still hands
        // packets over in blocks, up to a second late: `finish` waits for the session's last
        // ones); -Z root: keep the rights to write into the lab's directory (Debian's tcpdump
        // otherwise drops to its own user).
        let mut proc = lab.spawn(
            Node::Inet,
            &format!("tcpdump-{name}"),
            tcpdump.to_str().expect("a UTF-8 path"),
            &[
                "-i",
                "any",
                "-nn",
                "-s",
                "0",
                "-U",
                "-B",
                CAPTURE_BUFFER_KIB,
                "-Z",
                "root",
                "-w",
                path,
                "tcp",
            ],
        );
        proc.wait_stderr("listening on", TCPDUMP_TIMEOUT);
        Capture { proc, file }
    }

    /// The packets captured so far (a record still being written is left out).
    fn packets(&self) -> Vec<Packet> {
        let bytes = std::fs::read(&self.file)
            .unwrap_or_else(|e| panic!("read {}: {e}", self.file.display()));
        parse_pcap(&bytes).unwrap_or_else(|e| panic!("{}: {e}", self.file.display()))
    }

    /// Waits until the capture holds the end of every flow in `flows` (see [`closed`]), stops
    /// it and returns its packets and whether it saw those ends; panics when the kernel
    /// dropped any packet (a segment missing from the capture could be the one with the
    /// marker). The kernel hands packets to tcpdump in blocks, up to a second after they
    /// passed: stopping as soon as the session ended would lose its last packets unseen.
    fn finish(mut self, flows: &[(Ipv4Addr, Ipv4Addr)]) -> (Vec<Packet>, bool) {
        let deadline = Instant::now() + TCPDUMP_TIMEOUT;
        let mut complete = false;
        while !complete && Instant::now() < deadline {
            let packets = self.packets();
            complete = flows.iter().all(|&(a, b)| closed(&packets, a, b));
            if !complete {
                std::thread::sleep(CAPTURE_POLL);
            }
        }
        let status = self.proc.terminate(TCPDUMP_TIMEOUT);
        let stderr = self.proc.stderr();
        assert!(status.is_some(), "tcpdump did not stop; stderr:\n{stderr}");
        assert!(
            stderr
                .lines()
                .any(|l| l.trim() == "0 packets dropped by kernel"),
            "tcpdump lost packets; stderr:\n{stderr}"
        );
        (self.packets(), complete)
    }
}

/// Whether the capture holds the FIN of both directions of the connection between `a` and
/// `b` that carried the most bytes: the router forwards a connection's packets in order, so
/// everything before those FINs was captured too.
fn closed(packets: &[Packet], a: Ipv4Addr, b: Ipv4Addr) -> bool {
    let mut bytes = std::collections::HashMap::<_, usize>::new();
    for p in packets.iter().filter(|p| (p.src, p.dst) == (a, b)) {
        *bytes.entry(p.ports).or_default() += p.payload.len();
    }
    let Some((&(pa, pb), _)) = bytes.iter().max_by_key(|(_, n)| **n) else {
        return false;
    };
    let fin = |src, dst, ports| {
        packets
            .iter()
            .any(|p| p.fin && (p.src, p.dst, p.ports) == (src, dst, ports))
    };
    fin(a, b, (pa, pb)) && fin(b, a, (pb, pa))
}

/// A TCP segment of the capture.
#[derive(Debug)]
struct Packet {
    src: Ipv4Addr,
    dst: Ipv4Addr,
    /// Source and destination port, and sequence number: with the addresses, what makes a
    /// segment the same one when the router's capture sees it twice (arriving and leaving).
    ports: (u16, u16),
    seq: u32,
    fin: bool,
    payload: Vec<u8>,
}

fn be16(b: &[u8], at: usize) -> Option<usize> {
    Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?) as usize)
}

/// The IPv4 TCP segments of a pcap file written by `tcpdump -i any` (link type `LINUX_SLL`
/// or `LINUX_SLL2`).
fn parse_pcap(b: &[u8]) -> Result<Vec<Packet>, String> {
    let magic = b.get(..4).ok_or("no pcap header")?;
    let le = match magic {
        [0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1] => true,
        [0xa1, 0xb2, 0xc3, 0xd4] | [0xa1, 0xb2, 0x3c, 0x4d] => false,
        _ => return Err(format!("not a pcap file (magic {magic:02x?})")),
    };
    let u32_at = |at: usize| -> Option<u32> {
        let w: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
        Some(if le {
            u32::from_le_bytes(w)
        } else {
            u32::from_be_bytes(w)
        })
    };
    // The link-layer header: its length and where its EtherType-like protocol field is.
    let (link_len, proto_at) = match u32_at(20).ok_or("short pcap header")? {
        113 => (16, 14),
        276 => (20, 0),
        other => return Err(format!("link type {other}, not LINUX_SLL or LINUX_SLL2")),
    };
    let mut packets = Vec::new();
    let mut at = 24;
    while at < b.len() {
        // A record tcpdump is still writing ends the packets so far.
        let Some(caplen) = u32_at(at + 8) else {
            break;
        };
        let Some(frame) = b.get(at + 16..at + 16 + caplen as usize) else {
            break;
        };
        let caplen = caplen as usize;
        at += 16 + caplen;
        if be16(frame, proto_at) != Some(0x0800) {
            continue;
        }
        let Some(ip) = frame.get(link_len..) else {
            continue;
        };
        let (Some(&v_ihl), Some(&proto)) = (ip.first(), ip.get(9)) else {
            continue;
        };
        if v_ihl >> 4 != 4 || proto != 6 || ip.len() < 20 {
            continue;
        }
        let ihl = usize::from(v_ihl & 0x0f) * 4;
        // A coalesced segment over 64 KiB (BIG TCP) has a total length of 0: it is the frame.
        let total = match be16(ip, 2) {
            Some(t) if t > 0 => t.min(ip.len()),
            _ => ip.len(),
        };
        let Some(&off) = ip.get(ihl + 12) else {
            continue;
        };
        let start = ihl + usize::from(off >> 4) * 4;
        let Some(tcp) = ip.get(ihl..ihl + 20) else {
            continue;
        };
        let octets = |r: std::ops::Range<usize>| -> [u8; 4] { ip[r].try_into().expect("4") };
        packets.push(Packet {
            src: Ipv4Addr::from(octets(12..16)),
            dst: Ipv4Addr::from(octets(16..20)),
            ports: (
                u16::from_be_bytes([tcp[0], tcp[1]]),
                u16::from_be_bytes([tcp[2], tcp[3]]),
            ),
            seq: u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]),
            fin: tcp[13] & 0x01 != 0,
            payload: ip.get(start..total).unwrap_or_default().to_vec(),
        });
    }
    Ok(packets)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// TCP payload bytes between `a` and `b` in `packets`, each way (`(a to b, b to a)`), each
/// segment counted once.
fn flow_bytes(packets: &[Packet], a: Ipv4Addr, b: Ipv4Addr) -> (usize, usize) {
    let mut bytes = (0, 0);
    let mut counted = std::collections::HashSet::new();
    for p in packets {
        if !counted.insert((p.src, p.dst, p.ports, p.seq, p.payload.len())) {
            continue;
        }
        if (p.src, p.dst) == (a, b) {
            bytes.0 += p.payload.len();
        } else if (p.src, p.dst) == (b, a) {
            bytes.1 += p.payload.len();
        }
    }
    bytes
}

/// A fresh random marker (ASCII, so a text dump of the capture would show it too) and a
/// payload of [`MARKER_COPIES`] copies of it between random filler.
fn marker_payload() -> (Vec<u8>, Vec<u8>) {
    let marker = format!("p2pnc-privacy-marker-{:032x}", rand::random::<u128>()).into_bytes();
    let mut payload = Vec::with_capacity(MARKER_COPIES * (marker.len() + FILLER));
    for _ in 0..MARKER_COPIES {
        payload.extend_from_slice(&marker);
        let mut filler = [0u8; FILLER];
        rand::fill(&mut filler[..]);
        payload.extend_from_slice(&filler);
    }
    (marker, payload)
}

/// How a session must go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    Direct,
    Relayed,
}

/// One echo session from `client` to `id` under capture; checks the echo, the path and that
/// the capture holds the session's flows, and returns in how many captured segments the
/// marker was in clear (or why the session failed).
fn captured_session(
    lab: &Lab,
    client: Node,
    id: &str,
    extra: &[&str],
    route: Route,
    name: &str,
) -> Result<usize, String> {
    // The two ends of each flow that carries the session across the internet router.
    let ends: Vec<(Ipv4Addr, Ipv4Addr)> = match route {
        Route::Direct => vec![(OUTSIDE_IP, lab.public_ip(Site::B))],
        Route::Relayed => vec![
            (lab.public_ip(Site::A), RDV_IP),
            (lab.public_ip(Site::B), RDV_IP),
        ],
    };
    let (marker, payload) = marker_payload();
    let capture = Capture::start(lab, name);
    let run = lab.connect_stdio_with(client, id, Some(SECRET), &payload, SESSION_TIMEOUT, extra);
    let (packets, complete) = capture.finish(&ends);
    let fail = |why: String| {
        Err(format!(
            "{name}: {why}\n--- connect stderr:\n{}",
            run.stderr
        ))
    };
    if !run.success() {
        return fail(format!("connect failed ({:?})", run.status));
    }
    if run.stdout != payload {
        return fail(format!(
            "the echo returned {} of {} bytes, or other bytes",
            run.stdout.len(),
            payload.len()
        ));
    }
    let Some(c) = run.connected() else {
        return fail("no connect report".into());
    };
    if !complete {
        return fail(format!(
            "the capture did not see both ends of the session's flows {ends:?} close within \
             {TCPDUMP_TIMEOUT:?}"
        ));
    }
    let (want_path, want_ip) = match route {
        Route::Direct => ("direct", IpAddr::V4(lab.public_ip(Site::B))),
        Route::Relayed => ("relayed", IpAddr::V4(RDV_IP)),
    };
    if c.path != want_path || c.addr.ip() != want_ip {
        return fail(format!(
            "went {} via {}, not {want_path} via {want_ip}",
            c.path, c.addr
        ));
    }
    for &(a, b) in &ends {
        let bytes = flow_bytes(&packets, a, b);
        // Each flow carried the payload both ways (plus the handshake's and records' bytes).
        if bytes.0 < payload.len() || bytes.1 < payload.len() {
            return fail(format!(
                "the capture holds {} packets but only {bytes:?} payload bytes between {a} and \
                 {b} for a {}-byte echo: it missed the session",
                packets.len(),
                payload.len()
            ));
        }
        eprintln!("{name}: {bytes:?} bytes {a} <-> {b}");
    }
    let hits = packets
        .iter()
        .filter(|p| contains(&p.payload, &marker))
        .count();
    eprintln!(
        "{name}: {} packets captured, the marker in clear in {hits} segments",
        packets.len()
    );
    Ok(hits)
}

fn start_service(lab: &Lab, id: &str, extra: &[&str]) -> Proc {
    lab.start_agent_with(
        Node::Host(Site::B),
        id,
        SVC_PORT,
        Auth::Secret(SECRET),
        extra,
    )
}

#[natlab::lab_test("tcpdump")]
fn the_marker_never_crosses_the_internet_in_clear_unless_both_ends_opt_out() {
    let lab = Lab::new(
        LabConfig::new(Nat::Symmetric { rst: false }, Nat::Symmetric { rst: false })
            .delays(0, 0, 0)
            .second_hosts(false)
            .outside_host(true),
    );
    let _server = lab.start_server_with(&["--relay"]);
    let _echo = EchoServer::start(
        &lab,
        Node::Host(Site::B),
        SocketAddr::from(([127, 0, 0, 1], SVC_PORT)),
    );
    let _private = start_service(&lab, "private", &[]);
    let _plain = start_service(&lab, "plain", &["--no-encrypt"]);
    let outside = Node::Outside;
    let a = Node::Host(Site::A);
    let no_encrypt: &[&str] = &["--no-encrypt"];

    // (what, client, service, connect's extra flags, route, marker expected in clear)
    let cases = [
        (
            "direct-default",
            outside,
            "private",
            &[][..],
            Route::Direct,
            false,
        ),
        (
            "relayed-default",
            a,
            "private",
            &[][..],
            Route::Relayed,
            false,
        ),
        // A client's --no-encrypt alone changes nothing: the agent keeps the stream encrypted.
        (
            "direct-client-opts-out",
            outside,
            "private",
            no_encrypt,
            Route::Direct,
            false,
        ),
        (
            "direct-no-encrypt",
            outside,
            "plain",
            no_encrypt,
            Route::Direct,
            true,
        ),
        (
            "relayed-no-encrypt",
            a,
            "plain",
            no_encrypt,
            Route::Relayed,
            true,
        ),
    ];
    let mut failures = Vec::new();
    for (name, client, id, extra, route, clear) in cases {
        match captured_session(&lab, client, id, extra, route, name) {
            Ok(hits) if (hits > 0) == clear => {}
            Ok(hits) => failures.push(format!(
                "{name}: the marker was in clear in {hits} captured segments; expected {}",
                if clear { "some" } else { "none" }
            )),
            Err(e) => failures.push(e),
        }
    }
    assert!(
        failures.is_empty(),
        "{}\n(captures kept in {})",
        failures.join("\n\n"),
        lab.dir().display()
    );
}
