//! The range-request benchmark: a video player's pattern of 50 sequential HTTP range requests
//! of 256 KiB each, to nginx on host B, through `connect --listen` → `expose` (over a warm
//! path, and with `--warm-idle 0`: one punched connection per local connection) next to the
//! same requests through a plain port forward on B's router, RTT 40 ms. The client makes
//! them as players do: a new TCP connection per request, or one kept-alive connection.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use natlab::{Lab, LabConfig, Nat, Node, Proc, Site, Spawn, in_netns, pattern};

use crate::lab_support::{Auth, P2pncLab};
use crate::linux::{DELAY_MS, Out, nat_name, pct, sorted, warm_reports};

const SECRET: &str = "bench-secret-51c2";
/// nginx on host B (all addresses: reached by the agent and by the port forward).
const HTTP_PORT: u16 = 8080;
/// The port forward to it on B's router (below the ephemeral range: no punch port collides).
const FWD_HTTP_PORT: u16 = 20380;
/// `connect --listen` ports on host A's loopback: with warm paths (the default), and
/// `--warm-idle 0`.
const LISTEN_WARM: u16 = 9100;
const LISTEN_COLD: u16 = 9101;
const AGENT_ID: &str = "web-b";
/// Requests per run and bytes per request: what a player asks for over a minute or two.
const REQUESTS: usize = 50;
const RANGE: usize = 256 << 10;
/// Runs per row, the rows interleaved.
const RUNS: usize = 3;
/// Time one request may take (connect, head and body) before the run counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// Time for nginx and `connect --listen` to come up.
const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest response head accepted from nginx.
const MAX_HEAD: usize = 8192;
/// The target: a run through p2pnc with warm paths within this factor of the same run over
/// the port forward.
const TARGET: f64 = 1.2;

/// How the client uses connections.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Conns {
    /// A new TCP connection per request (`Connection: close`).
    PerRequest,
    /// One connection for all 50 (`Connection: keep-alive`).
    KeepAlive,
}

impl Conns {
    fn label(self) -> &'static str {
        match self {
            Conns::PerRequest => "a connection per request",
            Conns::KeepAlive => "one kept-alive connection",
        }
    }
}

/// Where the requests go.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Via {
    Forward,
    Warm,
    Cold,
}

impl Via {
    fn label(self) -> &'static str {
        match self {
            Via::Forward => "plain TCP via port forward (baseline)",
            Via::Warm => "`connect --listen` (warm path) + `expose`",
            Via::Cold => "`connect --listen --warm-idle 0` + `expose`",
        }
    }
}

/// The whole file nginx serves: `REQUESTS` ranges.
fn content() -> Vec<u8> {
    pattern(0x5241_4e47, REQUESTS * RANGE)
}

/// Reads one response head (up to the blank line); its status code and Content-Length.
fn read_head(r: &mut BufReader<TcpStream>) -> Result<(u16, usize), String> {
    let mut status = None;
    let mut length = None;
    let mut total = 0;
    loop {
        let mut line = String::new();
        let n = r.read_line(&mut line).map_err(|e| format!("head: {e}"))?;
        if n == 0 {
            return Err("the connection ended in the response head".into());
        }
        total += n;
        if total > MAX_HEAD {
            return Err("response head too long".into());
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if status.is_none() {
            status = line
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse::<u16>().ok());
            continue;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            length = v.trim().parse::<usize>().ok();
        }
    }
    match (status, length) {
        (Some(s), Some(l)) => Ok((s, l)),
        _ => Err("a response without status or Content-Length".into()),
    }
}

/// One run of `REQUESTS` range requests to `addr` from host A; its duration. Each body is
/// checked byte-exact against the file.
fn run(lab: &Lab, addr: SocketAddr, conns: Conns, file: &[u8]) -> Result<Duration, String> {
    in_netns(&lab.ns(Node::Host(Site::A)), || {
        let connect = || -> Result<BufReader<TcpStream>, String> {
            let s = TcpStream::connect_timeout(&addr, REQUEST_TIMEOUT)
                .map_err(|e| format!("connect: {e}"))?;
            s.set_nodelay(true).map_err(|e| e.to_string())?;
            s.set_read_timeout(Some(REQUEST_TIMEOUT))
                .map_err(|e| e.to_string())?;
            Ok(BufReader::with_capacity(RANGE, s))
        };
        let started = Instant::now();
        let mut kept = None;
        let mut body = vec![0u8; RANGE];
        for i in 0..REQUESTS {
            let mut fresh;
            let r = match conns {
                Conns::PerRequest => {
                    fresh = connect()?;
                    &mut fresh
                }
                Conns::KeepAlive => match &mut kept {
                    Some(r) => r,
                    None => kept.insert(connect()?),
                },
            };
            let (from, to) = (i * RANGE, (i + 1) * RANGE - 1);
            let close = match conns {
                Conns::PerRequest => "close",
                Conns::KeepAlive => "keep-alive",
            };
            let req = format!(
                "GET /video.bin HTTP/1.1\r\nHost: b\r\nRange: bytes={from}-{to}\r\n\
                 Connection: {close}\r\n\r\n"
            );
            r.get_mut()
                .write_all(req.as_bytes())
                .map_err(|e| format!("request #{i}: {e}"))?;
            let (status, length) = read_head(r).map_err(|e| format!("request #{i}: {e}"))?;
            if status != 206 || length != RANGE {
                return Err(format!(
                    "request #{i}: status {status}, {length} bytes (want 206, {RANGE})"
                ));
            }
            r.read_exact(&mut body)
                .map_err(|e| format!("request #{i}: body: {e}"))?;
            if body[..] != file[from..=to] {
                return Err(format!("request #{i}: the body differs from the file"));
            }
        }
        Ok(started.elapsed())
    })
}

/// Writes the file and nginx's configuration into the lab's folder and starts nginx on
/// host B; waits until it listens.
fn start_nginx(lab: &Lab, file: &[u8]) -> Proc {
    let dir = lab.dir().join("ranges-nginx");
    let root = dir.join("www");
    std::fs::create_dir_all(&root).expect("nginx folder");
    std::fs::write(root.join("video.bin"), file).expect("nginx file");
    let d = dir.display();
    let conf = format!(
        "daemon off;\nmaster_process off;\nuser root;\nworker_processes 1;\npid {d}/nginx.pid;\n\
         error_log {d}/error.log;\nevents {{ worker_connections 256; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
         fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
         keepalive_requests 1000;\n  server {{\n    listen {HTTP_PORT};\n    root {};\n  }}\n}}\n",
        root.display()
    );
    let conf_path = dir.join("nginx.conf");
    std::fs::write(&conf_path, conf).expect("nginx.conf");
    let conf_s = conf_path.display().to_string();
    let spec = Spawn::new("nginx")
        .name("nginx")
        .args(["-c", &conf_s, "-p", &d.to_string()]);
    let mut p = lab.spawn_cmd(Node::Host(Site::B), spec);
    let deadline = Instant::now() + READY_TIMEOUT;
    while !lab.listening(Node::Host(Site::B), HTTP_PORT) {
        if let Some(s) = p.try_status() {
            panic!("nginx exited ({s}); stderr:\n{}", p.stderr());
        }
        assert!(
            Instant::now() < deadline,
            "nginx not listening within {READY_TIMEOUT:?}"
        );
        thread::sleep(Duration::from_millis(20));
    }
    p
}

pub fn ranges(out: &mut Out, problems: &mut Vec<String>) {
    let (nat_a, nat_b) = (Nat::RestrictedDrop, Nat::RestrictedDrop);
    out.line(format!(
        "## range requests: {REQUESTS} sequential HTTP range requests of {} KiB from host A to \
         nginx on host B (A: {}, B: {}), RTT {} ms",
        RANGE >> 10,
        nat_name(nat_a),
        nat_name(nat_b),
        2 * DELAY_MS
    ));
    out.line("");
    out.line(format!(
        "{RUNS} runs per row, the rows interleaved; time from the first connect to the last \
         byte of the last body (each body checked against the file). Ratio: the row's median \
         over the port forward's median with the same use of connections, same run. The warm \
         path was built by an earlier run (a player's later requests)."
    ));
    out.line("");
    out.line("| connections | path | median s | min–max | ratio to plain |");
    out.line("|---|---|---:|---:|---:|");
    let lab = Lab::new(
        LabConfig::new(nat_a, nat_b)
            .delays(DELAY_MS, DELAY_MS, DELAY_MS)
            .second_hosts(false),
    );
    // Each connection starts from the same TCP state (no cached window or threshold).
    for node in [Node::Host(Site::A), Node::Host(Site::B)] {
        lab.sh(node, "echo 1 > /proc/sys/net/ipv4/tcp_no_metrics_save");
    }
    let file = content();
    let _server = lab.start_server();
    let _nginx = start_nginx(&lab, &file);
    let b = Node::Host(Site::B);
    let _agent = lab.start_agent(b, AGENT_ID, HTTP_PORT, Auth::Secret(SECRET));
    let fwd = lab.port_forward(
        Site::B,
        FWD_HTTP_PORT,
        SocketAddrV4::new(lab.host_ip(Site::B), HTTP_PORT),
    );
    let a = Node::Host(Site::A);
    let listen = |port| SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
    let warm = lab.start_connect_listen(a, AGENT_ID, Some(SECRET), listen(LISTEN_WARM));
    let cold = lab.start_connect_listen_with(
        a,
        AGENT_ID,
        Some(SECRET),
        listen(LISTEN_COLD),
        &["--warm-idle", "0"],
    );
    let addr = |via| match via {
        Via::Forward => SocketAddr::V4(fwd),
        Via::Warm => SocketAddr::V4(listen(LISTEN_WARM)),
        Via::Cold => SocketAddr::V4(listen(LISTEN_COLD)),
    };
    // The warm path's first run builds it: a player's first request. Not counted.
    if let Err(e) = run(&lab, addr(Via::Warm), Conns::KeepAlive, &file) {
        problems.push(format!("ranges: the warm-up run failed: {e}"));
    }
    let rows: Vec<(Conns, Via)> = [Conns::PerRequest, Conns::KeepAlive]
        .into_iter()
        .flat_map(|c| [Via::Forward, Via::Warm, Via::Cold].map(|v| (c, v)))
        .collect();
    let mut secs: Vec<Vec<f64>> = rows.iter().map(|_| Vec::new()).collect();
    for r in 0..RUNS {
        for (i, &(conns, via)) in rows.iter().enumerate() {
            match run(&lab, addr(via), conns, &file) {
                Ok(d) => secs[i].push(d.as_secs_f64()),
                Err(e) => problems.push(format!(
                    "ranges, {}, {}, run {r}: {e}\n--- connect (warm):\n{}\n--- connect (cold):\n{}",
                    conns.label(),
                    via.label(),
                    tail(&warm.stderr()),
                    tail(&cold.stderr())
                )),
            }
        }
        eprintln!("ranges: round {r} done");
    }
    let mut verdicts = Vec::new();
    for (i, &(conns, via)) in rows.iter().enumerate() {
        let v = sorted(secs[i].clone());
        let base_i = rows
            .iter()
            .position(|&(c, w)| c == conns && w == Via::Forward)
            .expect("a baseline row");
        let base = sorted(secs[base_i].clone());
        let (median, range, ratio) = if v.is_empty() {
            ("–".into(), "–".into(), "–".into())
        } else {
            let ratio = if base.is_empty() || via == Via::Forward {
                "1".to_string()
            } else {
                let ratio = pct(&v, 0.5) / pct(&base, 0.5);
                if via == Via::Warm {
                    let met = ratio <= TARGET;
                    verdicts.push(format!(
                        "- {}, warm path: {ratio:.2} × the port forward, target ≤ {TARGET}: {}",
                        conns.label(),
                        if met { "met" } else { "NOT met" }
                    ));
                }
                format!("{ratio:.2}")
            };
            (
                format!("{:.2}", pct(&v, 0.5)),
                format!("{:.2}–{:.2}", v[0], v[v.len() - 1]),
                ratio,
            )
        };
        out.line(format!(
            "| {} | {} | {median} | {range} | {ratio} |",
            conns.label(),
            via.label()
        ));
    }
    out.line("");
    for v in verdicts {
        out.line(v);
    }
    let local = crate::lab_support::reports(&warm.stderr()).len();
    out.line("");
    out.line(format!(
        "`connect --listen` with warm paths: {local} local connections, {} of them streams on \
         a path that was already up",
        warm_reports(&warm)
    ));
}

/// The last lines of a process's stderr, for a problem report.
fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}
