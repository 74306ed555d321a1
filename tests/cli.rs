//! The real binary as a process: exit codes, one-line reasons, stdout carrying only the stream.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Echo, free_port, wait_peer_status};

const BIN: &str = env!("CARGO_BIN_EXE_p2pnc");

/// A child process killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `p2pnc server` on a free loopback port and waits until it answers.
async fn server() -> (Proc, std::net::SocketAddr) {
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let child = Command::new(BIN)
        .args(["server", "--listen", &addr.to_string()])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while common::http_get(addr, "/v1/health").await.0 != 200 {
        assert!(Instant::now() < deadline, "server did not come up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (Proc(child), addr)
}

fn expose(server: std::net::SocketAddr, id: &str, to: std::net::SocketAddr, auth: &[&str]) -> Proc {
    let mut cmd = Command::new(BIN);
    cmd.args([
        "expose",
        "--server",
        &format!("http://{server}"),
        "--id",
        id,
    ])
    .args(["--to", &to.to_string()])
    .args(auth)
    .stderr(Stdio::null());
    Proc(cmd.spawn().unwrap())
}

fn connect_stdio(
    server: std::net::SocketAddr,
    peer: &str,
    extra: &[&str],
    input: &[u8],
) -> std::process::Output {
    let mut child = Command::new(BIN)
        .args([
            "connect",
            "--server",
            &format!("http://{server}"),
            "--peer",
            peer,
            "--stdio",
        ])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn stdio_carries_only_the_stream_and_exits_zero_after_both_directions_close() {
    let (_server, addr) = server().await;
    let echo = Echo::start().await;
    let _agent = expose(addr, "svc", echo.addr, &["--secret", "pw"]);
    wait_peer_status(addr, "svc", 200).await;
    let payload: Vec<u8> = (0..(2 << 20)).map(|i: u32| (i % 241) as u8).collect();
    let p = payload.clone();
    let out =
        tokio::task::spawn_blocking(move || connect_stdio(addr, "svc", &["--secret", "pw"], &p))
            .await
            .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(out.stdout == payload, "stdout is exactly the echoed bytes");
    // A host with a second address may reach the agent's LAN candidate first.
    assert!(
        stderr.contains("connected to 'svc' (direct") || stderr.contains("connected to 'svc' (lan"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn failures_exit_non_zero_with_one_line_reasons() {
    let (_server, addr) = server().await;
    let echo = Echo::start().await;
    let _agent = expose(addr, "svc", echo.addr, &["--secret", "pw"]);
    wait_peer_status(addr, "svc", 200).await;
    let cases: [(&str, &[&str], &str); 3] = [
        ("nobody", &[], "error: peer 'nobody' is not online"),
        (
            "svc",
            &["--secret", "bad"],
            "error: secret rejected by peer 'svc'",
        ),
        ("svc", &[], "error: peer 'svc' requires a secret (--secret)"),
    ];
    for (peer, extra, want) in cases {
        let out = tokio::task::spawn_blocking(move || connect_stdio(addr, peer, extra, b"x"))
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{peer}: {stderr}");
        assert_eq!(stderr.trim_end().lines().last(), Some(want), "{stderr}");
        assert!(out.stdout.is_empty());
    }
    let dead = free_port();
    let out = tokio::task::spawn_blocking(move || {
        let addr = format!("127.0.0.1:{dead}").parse().unwrap();
        connect_stdio(addr, "svc", &[], b"")
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("error: server unreachable"), "{stderr}");
    assert_eq!(
        echo.connections.load(std::sync::atomic::Ordering::SeqCst),
        0
    );
}

#[test]
fn expose_requires_a_secret_or_an_explicit_public() {
    let out = Command::new(BIN)
        .args([
            "expose",
            "--server",
            "http://127.0.0.1:1",
            "--id",
            "x",
            "--to",
            "127.0.0.1:2",
        ])
        .env_remove("P2PNC_SECRET")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--secret") && stderr.contains("--public"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn listen_mode_carries_each_connection_on_a_warm_path_and_survives_failures() {
    let (_server, addr) = server().await;
    let echo = Echo::start().await;
    let mut child = Command::new(BIN)
        .args([
            "connect",
            "--server",
            &format!("http://{addr}"),
            "--peer",
            "late",
        ])
        .args(["--listen", "127.0.0.1:0", "--punch-timeout", "2"])
        .args(["--report", "json"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let _guard = Proc(child);
    let first = lines.next().unwrap().unwrap();
    // The rest of stderr, line by line, for the reports.
    let (line_tx, line_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            if line_tx.send(line).is_err() {
                return;
            }
        }
    });
    let local: std::net::SocketAddr = first
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("{first}"))
        .parse()
        .unwrap();
    // Peer not online yet: this connection fails, the forwarder goes on.
    let mut s = tokio::net::TcpStream::connect(local).await.unwrap();
    let mut buf = Vec::new();
    let n = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::io::AsyncReadExt::read_to_end(&mut s, &mut buf),
    )
    .await
    .expect("failed connection is closed promptly");
    assert!(matches!(n, Ok(0) | Err(_)));
    let _agent = expose(addr, "late", echo.addr, &["--public"]);
    wait_peer_status(addr, "late", 200).await;
    for i in 0..3u8 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(local).await.unwrap();
        let msg = vec![i; 1000];
        s.write_all(&msg).await.unwrap();
        s.shutdown().await.unwrap();
        let mut back = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut back))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(back, msg);
    }
    assert_eq!(
        echo.connections.load(std::sync::atomic::Ordering::SeqCst),
        3
    );
    // One failure, then one punched path that the two later connections rode.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut connects = Vec::new();
    while connects.len() < 4 {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = line_rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("reports so far: {connects:?}"));
        if let Ok(r) = serde_json::from_str::<serde_json::Value>(&line)
            && r["report"] == "connect"
        {
            connects.push(r);
        }
    }
    assert_eq!(connects[0]["ok"], false, "{connects:?}");
    let warm: Vec<_> = connects[1..].iter().map(|r| r["warm"].clone()).collect();
    assert_eq!(warm, [false, true, true], "{connects:?}");
    assert!(
        connects[1..]
            .iter()
            .all(|r| r["session"] == connects[1]["session"]),
        "{connects:?}"
    );
}

#[test]
fn warm_path_flags_belong_to_listen_mode() {
    for flag in [&["--warm"][..], &["--warm-idle", "30"]] {
        let out = Command::new(BIN)
            .args([
                "connect",
                "--server",
                "http://127.0.0.1:1",
                "--peer",
                "x",
                "--stdio",
            ])
            .args(flag)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(stderr.contains("cannot be used with"), "{stderr}");
    }
    let out = Command::new(BIN)
        .args(["connect", "--server", "http://127.0.0.1:1", "--peer", "x"])
        .args(["--listen", "127.0.0.1:0", "--warm-idle", "soon"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("--warm-idle"), "{stderr}");
}

#[test]
fn demo_runs_the_whole_flow() {
    let out = Command::new(BIN).arg("demo").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("byte-exact"), "{stdout}");
    assert!(stdout.contains("a wrong secret is refused"), "{stdout}");
    // Nothing to act on: no warning (the NAT probes find their port, the refused secret is a
    // step of the demo).
    assert_eq!(String::from_utf8_lossy(&out.stderr), "", "{stdout}");
}

#[tokio::test(flavor = "multi_thread")]
async fn config_files_set_flags_and_flags_and_environment_override_them() {
    let dir = std::env::temp_dir().join(format!("p2pnc-cli-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (_server, addr) = server().await;
    let echo = Echo::start().await;
    let _agent = expose(addr, "cfg", echo.addr, &["--secret", "right"]);
    wait_peer_status(addr, "cfg", 200).await;
    let file = dir.join("connect.toml");
    std::fs::write(
        &file,
        format!("server = \"http://{addr}\"\npeer = \"cfg\"\nsecret = \"wrong\"\nstdio = true\n"),
    )
    .unwrap();
    let run = |extra: Vec<String>, env: Option<&'static str>| {
        let file = file.clone();
        tokio::task::spawn_blocking(move || {
            let mut cmd = Command::new(BIN);
            cmd.arg("connect").arg("--config").arg(&file).args(&extra);
            cmd.env_remove("P2PNC_SECRET");
            if let Some(secret) = env {
                cmd.env("P2PNC_SECRET", secret);
            }
            cmd.stdin(Stdio::null()).output().unwrap()
        })
    };
    // The file alone: its (wrong) secret is used.
    let out = run(vec![], None).await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("secret rejected"),
        "{stderr}"
    );
    // A flag overrides the file.
    let out = run(vec!["--secret".into(), "right".into()], None)
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // So does the environment.
    let out = run(vec![], Some("right")).await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Unknown keys name the key and the line, and nothing runs.
    std::fs::write(
        &file,
        "server = \"http://127.0.0.1:1\"\npeer = \"x\"\nstdio = true\nsecrte = \"s\"\n",
    )
    .unwrap();
    let out = run(vec![], None).await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("unknown key 'secrte' on line 4"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("secret rejected") && !stderr.contains("\"s\""),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_sample_configs_parse() {
    // An invalid override makes each command stop right after reading its config, with an
    // error that is only reached when the file was accepted.
    let cases = [
        (
            "server",
            "contrib/server.toml",
            "--connect-rate",
            "must be positive",
        ),
        (
            "expose",
            "contrib/expose.toml",
            "--punch-timeout",
            "must be a positive number",
        ),
        (
            "expose",
            "contrib/windows/expose.toml",
            "--punch-timeout",
            "must be a positive number",
        ),
    ];
    for (cmd, file, flag, want) in cases {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/").to_string() + file;
        let out = Command::new(BIN)
            .args([cmd, "--config", &path, flag, "0"])
            .env("P2PNC_SECRET", "s")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(stderr.contains(want), "{file}: {stderr}");
    }
    let bad = std::env::temp_dir().join(format!("p2pnc-bad-{}.toml", std::process::id()));
    std::fs::write(&bad, "lisen = 1\n").unwrap();
    let out = Command::new(BIN)
        .args([
            "server",
            "--config",
            bad.to_str().unwrap(),
            "--connect-rate",
            "0",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unknown key 'lisen' on line 1"), "{stderr}");
    let _ = std::fs::remove_file(bad);
}

#[tokio::test(flavor = "multi_thread")]
async fn json_logs_are_one_object_per_line_with_fields() {
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut child = Command::new(BIN)
        .args([
            "--log-format",
            "json",
            "server",
            "--listen",
            &addr.to_string(),
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while common::http_get(addr, "/v1/health").await.0 != 200 {
        assert!(Instant::now() < deadline, "server did not come up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    let lines: Vec<String> = BufReader::new(stderr)
        .lines()
        .map_while(Result::ok)
        .collect();
    assert!(lines.len() >= 2, "{lines:?}");
    for line in &lines {
        let v: serde_json::Value = serde_json::from_str(line).expect("each line is JSON");
        assert!(
            v["level"].is_string() && v["fields"]["message"].is_string(),
            "{line}"
        );
    }
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&format!("listening on {addr}"))),
        "{lines:?}"
    );
}

/// The `--report json` objects on a process's stderr.
fn reports(stderr: &str) -> Vec<serde_json::Value> {
    stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("report").is_some())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn report_json_describes_each_connection_and_each_failure() {
    let (_server, addr) = server().await;
    let echo = Echo::start().await;
    let _agent = expose(addr, "svc", echo.addr, &["--secret", "pw"]);
    wait_peer_status(addr, "svc", 200).await;
    let args: &[&str] = &["--secret", "pw", "--report", "json"];
    let out = tokio::task::spawn_blocking(move || connect_stdio(addr, "svc", args, b"12345"))
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let r = reports(&stderr);
    assert_eq!(r.len(), 1, "one report per connection: {stderr}");
    let r = &r[0];
    assert_eq!(r["report"], "connect");
    assert_eq!(r["ok"], true);
    assert_eq!(r["id"], "svc");
    assert!(r["path"] == "direct" || r["path"] == "lan", "{r}");
    assert_eq!(r["family"], "ipv4");
    assert_eq!(r["strategy"], "simultaneous");
    assert_eq!(
        (r["bytes_sent"].as_u64(), r["bytes_received"].as_u64()),
        (Some(5), Some(5))
    );
    let peer: std::net::SocketAddr = r["peer_addr"].as_str().unwrap().parse().unwrap();
    assert!(r["setup_ms"].as_u64().is_some() && r["session"].as_str().unwrap().len() == 32);
    assert!(peer.port() > 0);

    let args: &[&str] = &["--report", "json"];
    let out = tokio::task::spawn_blocking(move || connect_stdio(addr, "nobody", args, b"x"))
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    let r = reports(&stderr);
    assert_eq!(r.len(), 1, "{stderr}");
    assert_eq!(
        (&r[0]["ok"], &r[0]["code"], &r[0]["message"]),
        (
            &serde_json::json!(false),
            &serde_json::json!("peer_offline"),
            &serde_json::json!("peer 'nobody' is not online")
        )
    );
}

/// Sends `signal` to a child process.
#[cfg(unix)]
fn signal(child: &Child, signal: libc::c_int) {
    // SAFETY: kill(2) on our own child process.
    assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
}

/// Waits up to 10 s for a child to exit.
#[cfg(unix)]
async fn exited(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "still running 10 s after the signal"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread")]
async fn stop_signals_end_expose_cleanly_and_sighup_reloads_the_server_instead() {
    let (mut server, addr) = server().await;
    let echo = Echo::start().await;
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        let mut agent = expose(addr, "sig", echo.addr, &["--public"]);
        wait_peer_status(addr, "sig", 200).await;
        signal(&agent.0, sig);
        let status = exited(&mut agent.0).await;
        assert!(status.success(), "signal {sig}: {status}");
        // It closed its control channel on the way out: the id is offline at once.
        wait_peer_status(addr, "sig", 404).await;
    }
    // SIGHUP does not stop the server (it reloads the certificate, here there is none).
    signal(&server.0, libc::SIGHUP);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        server.0.try_wait().unwrap().is_none(),
        "the server still runs"
    );
    assert_eq!(common::http_get(addr, "/v1/health").await.0, 200);
    signal(&server.0, libc::SIGTERM);
    assert!(exited(&mut server.0).await.success());
}

/// `expose` stops on SIGTERM while a warm path from `connect --listen` carries an open
/// connection (the forward waiting in a read) and its keepalive stream: it did not (yamux
/// leaves the streams of a gracefully closed connection asleep).
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread")]
async fn expose_stops_on_a_signal_while_a_warm_path_carries_a_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_server, addr) = server().await;
    let echo = Echo::start().await;
    let mut agent = expose(addr, "sigwarm", echo.addr, &["--secret", "pw"]);
    wait_peer_status(addr, "sigwarm", 200).await;
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let _client = Proc(
        Command::new(BIN)
            .args(["connect", "--server", &format!("http://{addr}")])
            .args(["--peer", "sigwarm", "--secret", "pw", "--listen", &listen])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut local = loop {
        match tokio::net::TcpStream::connect(&listen).await {
            Ok(s) => break s,
            Err(e) => assert!(Instant::now() < deadline, "connect --listen is not up: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    local.write_all(b"ping").await.unwrap();
    let mut back = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(10), local.read_exact(&mut back))
        .await
        .expect("the echo in time")
        .unwrap();
    assert_eq!(&back, b"ping");
    // A connection opened after more than 2 s of quiet sends a ping along: the keepalive
    // stream is open too.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut second = tokio::net::TcpStream::connect(&listen).await.unwrap();
    second.write_all(b"pong").await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), second.read_exact(&mut back))
        .await
        .expect("the second echo in time")
        .unwrap();
    assert_eq!(&back, b"pong");
    // Both connections stay open and idle: every stream of the warm path waits in a read.
    signal(&agent.0, libc::SIGTERM);
    let status = exited(&mut agent.0).await;
    assert!(status.success(), "{status}");
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread")]
async fn expose_stops_on_a_signal_while_its_server_is_unreachable() {
    // A server that is not there: start-up retries it with backoff until stopped.
    let nowhere = format!("127.0.0.1:{}", free_port());
    for sig in [libc::SIGTERM, libc::SIGINT] {
        let mut agent = Command::new(BIN)
            .args(["expose", "--server", &format!("http://{nowhere}")])
            .args(["--id", "svc", "--public", "--to", "127.0.0.1:9"])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Let it reach its retries.
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert!(agent.try_wait().unwrap().is_none(), "still retrying");
        let asked = Instant::now();
        signal(&agent, sig);
        let status = exited(&mut agent).await;
        assert!(status.success(), "signal {sig}: {status}");
        assert!(
            asked.elapsed() < Duration::from_secs(2),
            "{:?}",
            asked.elapsed()
        );
        let mut stderr = String::new();
        std::io::Read::read_to_string(agent.stderr.as_mut().unwrap(), &mut stderr).unwrap();
        assert!(stderr.contains("retrying in"), "{stderr}");
        assert!(stderr.contains(": stopping"), "{stderr}");
    }
}

#[test]
fn a_bad_service_address_is_refused_before_registering() {
    for (to, why) in [
        ("notanaddr", "no port"),
        ("127.0.0.1:http", "not a port number"),
        ("127.0.0.1:0", "not a port number"),
        ("bad host:80", "not an address or host name"),
        ("::1:80", "not an address or host name"),
    ] {
        let out = Command::new(BIN)
            .args(["expose", "--server", "http://127.0.0.1:9", "--id", "svc"])
            .args(["--public", "--to", to])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{to}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            stderr.trim_end(),
            format!("error: --to {to}: {why} (expected HOST:PORT, e.g. 127.0.0.1:8080)"),
        );
    }
}

#[test]
fn log_file_takes_the_log_instead_of_stderr() {
    let log = std::env::temp_dir().join(format!("p2pnc-cli-log-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&log);
    // A server that cannot start: its error is logged to the file and said on stderr.
    let out = Command::new(BIN)
        .args(["--log-file", log.to_str().unwrap(), "-v", "server"])
        .args(["--listen", "127.0.0.1:0", "--connect-rate", "0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.trim_end(),
        "error: --connect-rate and --expose-rate must be positive"
    );
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("must be positive"), "{logged}");
    assert!(!logged.contains('\x1b'), "no terminal colours in a file");
    let _ = std::fs::remove_file(&log);
}

#[tokio::test(flavor = "multi_thread")]
async fn servers_repeat_as_flags_and_as_a_list_in_config_files() {
    let dir = std::env::temp_dir().join(format!("p2pnc-cli-servers-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (_server, addr) = server().await;
    let echo = Echo::start().await;
    let dead = format!("http://127.0.0.1:{}", free_port());
    let live = format!("http://{addr}");
    // The flag twice, the dead server first.
    let _agent = Proc(
        Command::new(BIN)
            .args(["expose", "--server", &dead, "--server", &live])
            .args([
                "--id",
                "multi",
                "--secret",
                "pw",
                "--to",
                &echo.addr.to_string(),
            ])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_peer_status(addr, "multi", 200).await;
    // A list in a config file, the dead server first again.
    let file = dir.join("connect.toml");
    std::fs::write(
        &file,
        format!(
            "server = [\"{dead}\", \"{live}\"]\npeer = \"multi\"\nsecret = \"pw\"\nstdio = true\n"
        ),
    )
    .unwrap();
    let out = tokio::task::spawn_blocking(move || {
        let mut child = Command::new(BIN)
            .arg("connect")
            .arg("--config")
            .arg(&file)
            .env_remove("P2PNC_SERVER")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(b"listed").unwrap();
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(out.stdout, b"listed");
    // Commas separate servers in one value (P2PNC_SERVER), and every one unreachable says
    // each reason in one line.
    let other_dead = format!("http://127.0.0.1:{}", free_port());
    let out = Command::new(BIN)
        .args(["connect", "--peer", "multi", "--stdio"])
        .env("P2PNC_SERVER", format!("{dead},{other_dead}"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(
        errors[0].starts_with("error: server unreachable: "),
        "{stderr}"
    );
    assert!(
        errors[0].contains(&dead) && errors[0].contains(&other_dead),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Whether `CI` is set (to anything but empty, 0 or false), as the NAT lab tests decide.
fn under_ci() -> bool {
    match std::env::var("CI") {
        Ok(v) => !matches!(v.trim().to_ascii_lowercase().as_str(), "" | "0" | "false"),
        Err(std::env::VarError::NotPresent) => false,
        Err(std::env::VarError::NotUnicode(_)) => true,
    }
}

/// `p2pnc` in a mount namespace of its own whose /etc/hosts is `hosts` (needs root).
fn with_hosts(hosts: &std::path::Path) -> Command {
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--mount",
        "sh",
        "-c",
        "mount --bind \"$0\" /etc/hosts && exec \"$@\"",
    ])
    .arg(hosts)
    .arg(BIN);
    cmd
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_name_with_two_addresses_is_tried_address_by_address() {
    let hosts = std::env::temp_dir().join(format!("p2pnc-cli-hosts-{}", std::process::id()));
    // One name, an IPv4 and an IPv6 address; the server listens on the IPv6 one only, and
    // the IPv4 one (where the control connection goes first) refuses.
    std::fs::write(&hosts, "127.0.0.1 dual.test\n::1 dual.test\n").unwrap();
    let probe = with_hosts(&hosts).arg("--version").output();
    if !probe.as_ref().is_ok_and(|o| o.status.success()) {
        let why = probe.map_or_else(
            |e| e.to_string(),
            |o| String::from_utf8_lossy(&o.stderr).trim().to_string(),
        );
        assert!(!under_ci(), "CI must run the two-address test: {why}");
        eprintln!("skipped: a private /etc/hosts needs root and unshare ({why})");
        return;
    }
    let port = free_port();
    let addr: std::net::SocketAddr = format!("[::1]:{port}").parse().unwrap();
    let _server = Proc(
        Command::new(BIN)
            .args(["server", "--listen", &addr.to_string()])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while common::http_get(addr, "/v1/health").await.0 != 200 {
        assert!(Instant::now() < deadline, "server did not come up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let url = format!("http://dual.test:{port}");
    let echo = Echo::start().await;
    let _agent = Proc(
        with_hosts(&hosts)
            .args(["expose", "--server", &url, "--id", "dual", "--secret", "pw"])
            .args(["--to", &echo.addr.to_string()])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_peer_status(addr, "dual", 200).await;
    let out = tokio::task::spawn_blocking(move || {
        let mut child = with_hosts(&hosts)
            .args([
                "connect", "--server", &url, "--peer", "dual", "--secret", "pw",
            ])
            .arg("--stdio")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(b"by name").unwrap();
        let out = child.wait_with_output().unwrap();
        let _ = std::fs::remove_file(&hosts);
        out
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(out.stdout, b"by name");
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread")]
async fn expose_stops_on_a_signal_while_it_looks_for_another_server() {
    let (mut server, addr) = server().await;
    let dead = format!("http://127.0.0.1:{}", free_port());
    let mut agent = Command::new(BIN)
        .args([
            "expose",
            "--server",
            &format!("http://{addr}"),
            "--server",
            &dead,
        ])
        .args(["--id", "svc", "--public", "--to", "127.0.0.1:9"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_peer_status(addr, "svc", 200).await;
    // Both servers gone: the agent goes round them with backoff until stopped.
    server.0.kill().unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(agent.try_wait().unwrap().is_none(), "still looking");
    let asked = Instant::now();
    signal(&agent, libc::SIGTERM);
    let status = exited(&mut agent).await;
    assert!(status.success(), "{status}");
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "{:?}",
        asked.elapsed()
    );
    let mut stderr = String::new();
    std::io::Read::read_to_string(agent.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(stderr.contains("re-registration failed"), "{stderr}");
    assert!(stderr.contains(&dead), "both servers tried: {stderr}");
}

/// Starts `p2pnc server` with the open-file limit (soft and hard) at `fds` and `extra` flags;
/// its stderr up to the line saying it listens.
#[cfg(unix)]
fn server_start_log(fds: u64, extra: &[&str]) -> String {
    use std::os::unix::process::CommandExt;
    let addr = format!("127.0.0.1:{}", free_port());
    let mut cmd = Command::new(BIN);
    cmd.args(["server", "--listen", &addr])
        .args(extra)
        .stderr(Stdio::piped())
        .env("NO_COLOR", "1");
    // SAFETY: setrlimit is async-signal-safe and touches only the child's own limits.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: fds as libc::rlim_t,
                rlim_max: fds as libc::rlim_t,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    let mut child = Proc(cmd.spawn().unwrap());
    let stderr = child.0.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { return };
            let last = line.contains("listening on");
            if tx.send(line).is_err() || last {
                return;
            }
        }
    });
    let mut log = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        log.push_str(&line);
        log.push('\n');
        if line.contains("listening on") {
            return log;
        }
    }
    panic!("the server never said it listens:\n{log}");
}

#[cfg(unix)]
#[test]
fn server_sizes_its_default_connection_cap_to_the_open_file_limit() {
    let log = server_start_log(2000, &[]);
    assert!(
        log.contains("--max-connections 976: as many as the open-file limit (2000) holds"),
        "{log}"
    );
    assert!(
        !log.contains("open-file limit is"),
        "no warning by default: {log}"
    );
    let log = server_start_log(2000, &["--max-connections", "5000"]);
    assert!(
        log.contains(
            "the open-file limit is 2000, too low for --max-connections 5000: raise it (ulimit \
             -n, or LimitNOFILE= in the systemd unit) to at least 6024, or lower \
             --max-connections"
        ),
        "{log}"
    );
    let log = server_start_log(2000, &["--max-connections", "500"]);
    assert!(!log.contains("open-file limit"), "{log}");
}

#[test]
fn help_sets_global_flags_apart_and_names_each_environment_variable_once() {
    let out = Command::new(BIN)
        .args(["connect", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{help}");
    let (own, global) = help
        .split_once("Global options:")
        .unwrap_or_else(|| panic!("no global heading:\n{help}"));
    for flag in [
        "--verbose",
        "--quiet",
        "--log-format",
        "--config",
        "--log-file",
    ] {
        assert!(
            global.contains(flag),
            "{flag} under the global heading:\n{help}"
        );
        assert!(
            !own.contains(flag),
            "{flag} among the command's own flags:\n{help}"
        );
    }
    assert!(own.contains("--peer"), "{help}");
    assert!(!help.contains("(or set"), "{help}");
    assert_eq!(help.matches("P2PNC_SECRET").count(), 1, "{help}");
    assert_eq!(help.matches("P2PNC_TOKEN").count(), 1, "{help}");
}

#[tokio::test(flavor = "multi_thread")]
async fn quiet_is_quiet_and_the_connected_line_is_information() {
    let (_server, addr) = server().await;
    let echo = Echo::start().await;
    let _agent = expose(addr, "svc", echo.addr, &["--secret", "pw"]);
    wait_peer_status(addr, "svc", 200).await;
    let out = tokio::task::spawn_blocking(move || {
        connect_stdio(addr, "svc", &["--secret", "pw", "-q"], b"hello")
    })
    .await
    .unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout, b"hello");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "",
        "-q prints nothing"
    );
    let out =
        tokio::task::spawn_blocking(move || connect_stdio(addr, "svc", &["--secret", "pw"], b"x"))
            .await
            .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(" INFO connected to 'svc' ("), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_pointed_at_the_probe_port_is_told_so() {
    let (_server, addr) = server().await;
    let probe = std::net::SocketAddr::new(addr.ip(), addr.port() + 1);
    let out = tokio::task::spawn_blocking(move || connect_stdio(probe, "svc", &[], b""))
        .await
        .unwrap();
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "error: server unreachable: http://{probe}: it answered with something that is not \
             HTTP: is {probe} the NAT probe port? The control port is the one below it (50300 \
             by default)\n"
        )
    );
}

#[test]
fn public_with_a_secret_from_the_environment_warns_that_it_is_ignored() {
    let out = Command::new(BIN)
        .args(["expose", "--server", "http://127.0.0.1:1", "--id", "x"])
        .args(["--to", "127.0.0.1:9", "--public", "--punch-timeout=-1"])
        .env("P2PNC_SECRET", "s")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "--public ignores the secret (--secret or P2PNC_SECRET): clients connect without \
             one; drop --public to require it"
        ),
        "{stderr}"
    );
}

#[test]
fn config_files_take_every_long_flag_command_tables_and_name_file_and_line() {
    let dir = std::env::temp_dir().join(format!("p2pnc-cli-tables-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("p2pnc.toml");
    let run = |text: &str, args: &[&str]| {
        std::fs::write(&file, text).unwrap();
        let out = Command::new(BIN)
            .args(args)
            .arg("--config")
            .arg(&file)
            .env_remove("P2PNC_SECRET")
            .env_remove("P2PNC_LOG_FORMAT")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let f = file.display();
    // Global flags are keys too, and a [connect] table is the connect command's.
    let log = dir.join("connect.log");
    let (ok, stderr) = run(
        &format!(
            "log-format = \"json\"\nlog-file = \"{}\"\n\n[server]\nlisten = \"127.0.0.1:1\"\n\n\
             [connect]\nserver = \"http://127.0.0.1:1\"\npeer = \"x\"\nstdio = true\n",
            log.display()
        ),
        &["connect"],
    );
    assert!(!ok);
    assert!(stderr.starts_with("error: server unreachable"), "{stderr}");
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.starts_with('{') && logged.contains("\"level\":\"ERROR\""),
        "the connect logged its error as JSON in the file: {logged}"
    );
    let cases: [(&str, String); 3] = [
        (
            "[conect]\npeer = \"x\"\n",
            format!(
                "error: {f}: unknown table '[conect]' on line 1 (tables are commands: server, \
                 expose, connect, demo, nat-check, ping)\n"
            ),
        ),
        (
            "[connect]\nserver = \"http://127.0.0.1:1\"\npeer = \"x\"\nstdio = true\n\
             punch-timeout = \"soon\"\n",
            format!(
                "error: {f}: key 'punch-timeout' on line 5: invalid value 'soon' for \
                 '--punch-timeout <PUNCH_TIMEOUT>': invalid float literal\n"
            ),
        ),
        (
            "log-format = \"yaml\"\n",
            format!(
                "error: {f}: key 'log-format' on line 1: invalid value 'yaml' for \
                 '--log-format <LOG_FORMAT>'\n"
            ),
        ),
    ];
    for (text, want) in cases {
        let (ok, stderr) = run(text, &["connect"]);
        assert!(!ok);
        assert_eq!(stderr, want, "for:\n{text}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_given_to_a_server_without_one_warns() {
    let (_server, addr) = server().await;
    let echo = Echo::start().await;
    let _agent = expose(addr, "svc", echo.addr, &["--secret", "pw"]);
    wait_peer_status(addr, "svc", 200).await;
    let out = tokio::task::spawn_blocking(move || {
        connect_stdio(addr, "svc", &["--secret", "pw", "--token", "t"], b"x")
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(out.stdout, b"x");
    assert_eq!(
        stderr
            .matches(&format!(
                "http://{addr} requires no token: --token (P2PNC_TOKEN) is not needed there, \
                 and anyone may use that server"
            ))
            .count(),
        1,
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ping_reports_the_path_round_trips_and_throughput_without_the_service() {
    let (_server, addr) = server().await;
    // No service behind the agent: the agent answers the pings itself.
    let dead = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let _agent = expose(addr, "svc", dead, &["--secret", "pw"]);
    wait_peer_status(addr, "svc", 200).await;
    let ping = move |extra: &'static [&'static str]| {
        tokio::task::spawn_blocking(move || {
            Command::new(BIN)
                .args([
                    "ping",
                    "--server",
                    &format!("http://{addr}"),
                    "--peer",
                    "svc",
                ])
                .args(extra)
                .env_remove("P2PNC_SECRET")
                .output()
                .unwrap()
        })
    };
    let out = ping(&["--secret", "pw", "--count", "2", "--bytes", "1M", "--json"])
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        ["direct", "lan"].contains(&report["path"].as_str().unwrap()),
        "{report}"
    );
    assert_eq!(report["family"], "ipv4");
    assert_eq!(report["strategy"], "simultaneous");
    assert!(report["setup_ms"].as_u64().is_some(), "{report}");
    assert_eq!(report["rtt_ms"].as_array().unwrap().len(), 2, "{report}");
    assert_eq!(report["lost"], 0);
    assert_eq!(report["throughput"]["bytes"], 1 << 20);
    assert!(
        report["throughput"]["bytes_per_sec_each_way"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("echo 1: ") && stderr.contains("echo 2: "),
        "progress: {stderr}"
    );

    let out = ping(&["--secret", "pw", "--count", "1"]).await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(
        lines[0].starts_with("path to 'svc': direct, ipv4, ")
            || lines[0].starts_with("path to 'svc': lan, ipv4, "),
        "{stdout}"
    );
    assert!(
        lines[0].contains(", simultaneous strategy, set up in "),
        "{stdout}"
    );
    assert!(
        lines[1].starts_with("round trips over the path: 1 of 1, min/avg/max "),
        "{stdout}"
    );

    let out = ping(&["--secret", "bad"]).await.unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.ends_with("error: secret rejected by peer 'svc'\n"),
        "{stderr}"
    );
}

/// Polls `path` on `admin` until its body contains every one of `want`; returns that body.
#[cfg(unix)]
async fn admin_shows(admin: std::net::SocketAddr, path: &str, want: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, body) = common::http_get(admin, path).await;
        if want.iter().all(|w| body.contains(w)) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{path} never showed {want:?}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread")]
async fn expose_probes_its_service_and_shows_it_refusing_then_accepting() {
    let (_server, addr) = server().await;
    let dead = free_port();
    let to = format!("127.0.0.1:{dead}");
    let admin: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    // The probe period of the test: 200 ms instead of 10 s.
    let mut agent = Command::new(BIN)
        .args([
            "expose",
            "--server",
            &format!("http://{addr}"),
            "--id",
            "svc",
        ])
        .args(["--public", "--to", &to, "--admin", &admin.to_string()])
        .args(["--service-probe", "0.2"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_peer_status(addr, "svc", 200).await;
    admin_shows(
        admin,
        "/",
        &[
            &format!("service {to}: refusing since "),
            " UTC: Connection refused",
        ],
    )
    .await;
    admin_shows(admin, "/metrics", &["p2pnc_agent_service_up 0"]).await;
    // A client is told, and the refusal is counted.
    let out = tokio::task::spawn_blocking(move || connect_stdio(addr, "svc", &[], b"x"))
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!("its service at {to} refused the connection")),
        "{stderr}"
    );
    admin_shows(admin, "/metrics", &["p2pnc_agent_service_refused_total 1"]).await;
    // Several probe periods pass while it is down; then the service comes up.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let listener = std::net::TcpListener::bind(&to).unwrap();
    let came_up = Instant::now();
    admin_shows(admin, "/", &[&format!("service {to}: accepting")]).await;
    assert!(
        came_up.elapsed() < Duration::from_secs(2),
        "seen up after {:?} with a 200 ms probe",
        came_up.elapsed()
    );
    admin_shows(
        admin,
        "/metrics",
        &[
            "p2pnc_agent_service_up 1",
            "p2pnc_agent_service_refused_total 1",
        ],
    )
    .await;
    signal(&agent, libc::SIGINT);
    assert!(exited(&mut agent).await.success());
    drop(listener);
    let mut stderr = String::new();
    std::io::Read::read_to_string(agent.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    let warned: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains(&format!("service {to} ")))
        .collect();
    // One line per change, none per probe: down at start, then up.
    assert_eq!(warned.len(), 2, "{stderr}");
    assert!(
        warned[0].contains(" WARN ")
            && warned[0].ends_with(&format!(
                "service {to} does not accept connections (Connection refused): clients will \
                 be told that the service refused until it does"
            )),
        "{stderr}"
    );
    assert!(
        warned[1].contains(" INFO ")
            && warned[1].ends_with(&format!("service {to} accepts connections again")),
        "{stderr}"
    );
}
