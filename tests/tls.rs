//! TLS on the control plane: https:// URLs with a private CA or a pin, clear refusals for every
//! mismatch, relays and plain diagnostics still working on a TLS server, and the CLI flags.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Echo, TestServer, free_port, wait_peer_status};
use p2pnc::server::ServerConfig;
use p2pnc::tls::{ServerTls, Trust};
use p2pnc::{ConnectOptions, Error, ExposeOptions, ServerUrl};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const T: Duration = Duration::from_secs(10);

/// A private CA and a server certificate it signed, as PEM files in a fresh directory.
struct Pki {
    dir: PathBuf,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    pin: String,
}

impl Pki {
    /// A CA and a leaf for `names` (DNS names or IP literals).
    fn new(names: &[&str]) -> Pki {
        Pki::with(names, |_| {})
    }

    /// A CA and a leaf for `names` whose parameters `leaf` changed.
    fn with(names: &[&str], leaf: impl FnOnce(&mut CertificateParams)) -> Pki {
        let dir = std::env::temp_dir().join(format!(
            "p2pnc-tls-{}-{}",
            std::process::id(),
            hex::encode(rand::random::<[u8; 6]>())
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(names).unwrap();
        leaf(&mut params);
        let leaf = params.signed_by(&key, &ca).unwrap();
        let pki = Pki {
            ca: dir.join("ca.pem"),
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            pin: p2pnc::tls::fingerprint(leaf.der()),
            dir,
        };
        std::fs::write(&pki.ca, ca.pem()).unwrap();
        std::fs::write(&pki.cert, leaf.pem()).unwrap();
        std::fs::write(&pki.key, key.serialize_pem()).unwrap();
        pki
    }

    /// One self-signed certificate for `names` that is also a CA (what `openssl req -x509`
    /// makes): the server's certificate and the client's CA file at once.
    fn self_signed_ca(names: &[&str]) -> Pki {
        let dir = std::env::temp_dir().join(format!(
            "p2pnc-tls-{}-{}",
            std::process::id(),
            hex::encode(rand::random::<[u8; 6]>())
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let pki = Pki {
            ca: dir.join("cert.pem"),
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            pin: p2pnc::tls::fingerprint(cert.der()),
            dir,
        };
        std::fs::write(&pki.cert, cert.pem()).unwrap();
        std::fs::write(&pki.key, key.serialize_pem()).unwrap();
        pki
    }

    fn server_tls(&self) -> ServerTls {
        ServerTls::load(&self.cert, &self.key).unwrap()
    }

    fn trust_ca(&self) -> Trust {
        Trust::ca_file(&self.ca).unwrap()
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn tls_server(pki: &Pki, config: ServerConfig) -> TestServer {
    TestServer::with_config(ServerConfig {
        tls: Some(pki.server_tls()),
        ..config
    })
    .await
}

fn https(server: &TestServer, trust: Trust) -> ServerUrl {
    ServerUrl::parse(&format!("https://{}", server.addr))
        .unwrap()
        .with_trust(trust)
        .unwrap()
}

/// Registers `id` over `url`, forwarding to `service`; the agent lives as long as the handle.
async fn expose_over(
    url: &ServerUrl,
    id: &str,
    service: std::net::SocketAddr,
) -> tokio::task::JoinHandle<()> {
    let opts = ExposeOptions {
        server: url.clone(),
        ..ExposeOptions::new("http://unused", id, Some("pw")).unwrap()
    };
    common::expose_with(opts, service).await.1
}

async fn connect_over(url: &ServerUrl, id: &str) -> Result<p2pnc::Connection, Error> {
    let opts = ConnectOptions {
        server: url.clone(),
        ..ConnectOptions::new("http://unused", id, Some("pw")).unwrap()
    };
    tokio::time::timeout(T, p2pnc::connect(&opts))
        .await
        .expect("connect ends in time")
}

async fn echo_roundtrip(conn: &mut p2pnc::Connection) {
    conn.stream.write_all(b"over tls").await.unwrap();
    let mut back = [0u8; 8];
    tokio::time::timeout(T, conn.stream.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&back, b"over tls");
}

#[tokio::test]
async fn a_private_ca_or_a_pin_connects_over_tls_and_the_stream_is_punched() {
    let pki = Pki::new(&["127.0.0.1", "localhost"]);
    let server = tls_server(&pki, ServerConfig::default()).await;
    let echo = Echo::start().await;
    let _agent = expose_over(&https(&server, pki.trust_ca()), "svc", echo.addr).await;

    let mut by_ca = connect_over(&https(&server, pki.trust_ca()), "svc")
        .await
        .unwrap();
    assert!(
        matches!(by_ca.info.path, p2pnc::Path::Direct | p2pnc::Path::Lan),
        "{:?}",
        by_ca.info
    );
    echo_roundtrip(&mut by_ca).await;

    let pinned = Trust::pins(&[pki.pin.to_uppercase().replace("SHA256:", "sha256:")]).unwrap();
    let mut by_pin = connect_over(&https(&server, pinned), "svc").await.unwrap();
    echo_roundtrip(&mut by_pin).await;

    // A host name in the certificate works as well as the IP literal.
    let by_name = ServerUrl::parse(&format!("https://localhost:{}", server.addr.port()))
        .unwrap()
        .with_trust(pki.trust_ca())
        .unwrap();
    connect_over(&by_name, "svc").await.unwrap();
}

#[tokio::test]
async fn every_trust_mismatch_is_refused_with_a_reason_and_what_to_do() {
    let pki = Pki::new(&["127.0.0.1"]);
    let server = tls_server(&pki, ServerConfig::default()).await;
    let expect = |r: Result<p2pnc::Connection, Error>, server: &TestServer, want: &str| {
        let want = format!("TLS with https://{}: {want}", server.addr);
        match r {
            Err(e @ Error::Tls(_)) => assert_eq!(e.to_string(), want),
            other => panic!("expected '{want}', got {other:?}"),
        }
    };
    let untrusted = "the server's certificate is not signed by a trusted CA: give its CA with \
                     --tls-ca FILE, or pin it with --tls-pin sha256:... (the server logs its pin \
                     at start)";

    let wrong = format!("sha256:{}", "ab".repeat(32));
    let r = connect_over(&https(&server, Trust::pins(&[wrong]).unwrap()), "svc").await;
    let pin = &pki.pin;
    expect(
        r,
        &server,
        &format!(
            "the server's certificate is {pin}, which no --tls-pin matches: pin the fingerprint \
             the server logs at start, or check that the URL names that server"
        ),
    );
    let r = connect_over(&https(&server, Trust::WebRoots), "svc").await;
    expect(r, &server, untrusted);
    let other_ca = Pki::new(&["127.0.0.1"]);
    let r = connect_over(&https(&server, other_ca.trust_ca()), "svc").await;
    expect(r, &server, untrusted);

    let wrong_name = Pki::new(&["other.example"]);
    let named = tls_server(&wrong_name, ServerConfig::default()).await;
    let r = connect_over(&https(&named, wrong_name.trust_ca()), "svc").await;
    expect(
        r,
        &named,
        "the server's certificate is not valid for the name '127.0.0.1' (it names \
         other.example): use one of those in the URL, or pin it with --tls-pin",
    );

    let expired = Pki::with(&["127.0.0.1"], |p| {
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2021, 1, 1);
    });
    let old = tls_server(&expired, ServerConfig::default()).await;
    let r = connect_over(&https(&old, expired.trust_ca()), "svc").await;
    expect(
        r,
        &old,
        "the server's certificate has expired: renew it on the server (--tls-cert and \
         --tls-key; SIGHUP reloads them), or check this host's clock",
    );

    // A self-signed CA certificate given as the CA file: rustls' CaUsedAsEndEntity.
    let ca_leaf = Pki::self_signed_ca(&["127.0.0.1"]);
    let ca_server = tls_server(&ca_leaf, ServerConfig::default()).await;
    let r = connect_over(&https(&ca_server, ca_leaf.trust_ca()), "svc").await;
    expect(
        r,
        &ca_server,
        "the server's certificate is a CA certificate, which TLS does not accept as a \
         server's own (a self-signed one made with `openssl req -x509` is one): pin it with \
         --tls-pin sha256:... (the server logs its pin at start), or give the server a \
         certificate issued by that CA",
    );
    // ... and pinned, it works.
    let pinned = Trust::pins(std::slice::from_ref(&ca_leaf.pin)).unwrap();
    let echo = Echo::start().await;
    let _agent = expose_over(&https(&ca_server, pinned.clone()), "svc", echo.addr).await;
    connect_over(&https(&ca_server, pinned), "svc")
        .await
        .unwrap();

    // TLS to a plain server, plain to a TLS server.
    let plain = TestServer::start().await;
    let r = connect_over(&https(&plain, pki.trust_ca()), "svc").await;
    expect(
        r,
        &plain,
        "the server does not speak TLS: use an http:// URL, or start the server with \
         --tls-cert and --tls-key",
    );
    let r = connect_over(&ServerUrl::parse(&server.url).unwrap(), "svc").await;
    match r {
        Err(e @ Error::Refused(..)) => assert!(e.to_string().contains("https://"), "{e}"),
        other => panic!("plain request to a TLS server: {other:?}"),
    }
}

/// A plain client that asks a TLS server for an expose or connect is answered as soon as its
/// request line shows the path, before it sends its headers (where the token travels).
#[tokio::test]
async fn a_plain_control_request_is_answered_at_its_request_line() {
    let pki = Pki::new(&["127.0.0.1"]);
    let server = tls_server(&pki, ServerConfig::default()).await;
    for path in ["/v1/connect?v=2&peer=svc", "/v1/expose?v=2&id=svc"] {
        let mut s = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        s.write_all(format!("GET {path}").as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(T, s.read_to_end(&mut answer))
            .await
            .expect("answered without the rest of the request")
            .unwrap();
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
        assert!(answer.contains("use an https:// server URL"), "{answer}");
    }
}

#[tokio::test]
async fn plain_diagnostics_and_relays_still_work_on_a_tls_server() {
    use p2pnc::protocol::Role;
    use p2pnc::server::RelayConfig;
    use p2pnc::testing as relay;
    let pki = Pki::new(&["127.0.0.1"]);
    let config = ServerConfig {
        relay: Some(RelayConfig {
            max_pairs: 1,
            bytes_per_sec: 1 << 20,
            ..Default::default()
        }),
        ..Default::default()
    };
    let server = tls_server(&pki, config).await;
    assert_eq!(common::http_get(server.addr, "/v1/health").await.0, 200);
    let (status, body) = common::http_get(server.addr, "/v1/whoami").await;
    assert_eq!(status, 200, "{body}");

    // nat-check over https: the whoami and probe parts are plain.
    let report = tokio::time::timeout(T, p2pnc::nat_check(&https(&server, pki.trust_ca())))
        .await
        .unwrap()
        .unwrap();
    assert!(!report.behind_nat, "{report}");

    // The control sockets of a live session speak TLS; its relay joins are plain TCP on the
    // same port, and carry bytes both ways.
    let url = https(&server, pki.trust_ca());
    let any: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
    let open = |path: &'static str, query: &'static str| {
        p2pnc::testing::open(&url, server.addr, any, path, query, None)
    };
    let (mut agent, _) = open("/v1/expose", "v=2&id=r&auth=public").await.unwrap();
    assert!(agent.get_ref().is_tls());
    let registered: serde_json::Value = p2pnc::testing::recv(&mut agent).await.unwrap().unwrap();
    assert_eq!(registered["type"], "registered", "{registered}");
    let (mut client, _) = open(
        "/v1/connect",
        "v=2&peer=r&nonce=00112233445566778899aabbccddeeff",
    )
    .await
    .unwrap();
    let order: serde_json::Value = p2pnc::testing::recv(&mut client).await.unwrap().unwrap();
    let session: p2pnc::protocol::SessionId = order["session"]
        .as_str()
        .expect("a punch order")
        .parse()
        .unwrap();
    let agent_order: serde_json::Value = p2pnc::testing::recv(&mut agent).await.unwrap().unwrap();
    let ticket = |o: &serde_json::Value| -> p2pnc::protocol::RelayTicket {
        o["relay_ticket"]
            .as_str()
            .expect("a relay ticket")
            .parse()
            .unwrap()
    };
    let (at, ct) = (ticket(&agent_order), ticket(&order));
    let (a, c) = tokio::join!(
        relay::join(&url, server.addr, &session, Role::Agent, &at),
        relay::join(&url, server.addr, &session, Role::Client, &ct),
    );
    let (mut a, mut c) = (a.unwrap(), c.unwrap());
    c.write_all(b"from client").await.unwrap();
    c.shutdown().await.unwrap();
    let mut got = Vec::new();
    a.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"from client");
    drop((agent, client));
}

#[tokio::test]
async fn a_tls_client_that_never_finishes_its_handshake_is_cut_at_the_head_deadline() {
    let pki = Pki::new(&["127.0.0.1"]);
    let config = ServerConfig {
        head_timeout: Duration::from_millis(300),
        max_connections_per_ip: 4,
        ..Default::default()
    };
    let server = tls_server(&pki, config).await;
    // Four idle connections: one sends nothing, three start a TLS record and stall.
    let mut idle = Vec::new();
    for i in 0..4 {
        let mut s = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        if i > 0 {
            s.write_all(&[0x16, 0x03, 0x01]).await.unwrap();
        }
        idle.push(s);
    }
    for mut s in idle {
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "the stalled connection is closed by the server: {read:?}"
        );
    }
    // Their slots are free again: a real client gets through.
    let echo = Echo::start().await;
    let _agent = expose_over(&https(&server, pki.trust_ca()), "svc", echo.addr).await;
}

#[tokio::test]
async fn a_reloaded_certificate_serves_new_connections_and_a_bad_one_changes_nothing() {
    let old = Pki::new(&["127.0.0.1"]);
    let tls = old.server_tls();
    let server = TestServer::with_config(ServerConfig {
        tls: Some(tls.clone()),
        ..Default::default()
    })
    .await;
    let echo = Echo::start().await;
    let pinned = |pki: &Pki| https(&server, Trust::pins(&[&pki.pin]).unwrap());
    let _agent = expose_over(&pinned(&old), "svc", echo.addr).await;
    assert_eq!(tls.fingerprint(), old.pin);

    // A renewal writes new files in place.
    let new = Pki::new(&["127.0.0.1"]);
    std::fs::copy(&new.cert, &old.cert).unwrap();
    std::fs::copy(&new.key, &old.key).unwrap();
    assert_eq!(tls.reload().unwrap(), new.pin);
    connect_over(&pinned(&new), "svc").await.unwrap();
    assert!(matches!(
        connect_over(&pinned(&old), "svc").await,
        Err(Error::Tls(_))
    ));

    // A broken file is refused and the current certificate stays.
    std::fs::write(&old.key, "not a key").unwrap();
    assert!(tls.reload().unwrap_err().contains("private key"));
    assert_eq!(tls.fingerprint(), new.pin);
    connect_over(&pinned(&new), "svc").await.unwrap();
}

/// The CLI: the server logs its pin, and expose and connect use it.
#[tokio::test(flavor = "multi_thread")]
async fn the_cli_prints_the_pin_and_clients_connect_with_tls_flags() {
    let bin = env!("CARGO_BIN_EXE_p2pnc");
    let pki = Pki::new(&["127.0.0.1"]);
    let port = free_port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let log = pki.dir.join("server.log");
    let mut server = Command::new(bin)
        .args(["server", "--listen", &addr.to_string()])
        .args(["--tls-cert", path(&pki.cert), "--tls-key", path(&pki.key)])
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + T;
    while common::http_get(addr, "/v1/health").await.0 != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "server did not come up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains(&format!("--tls-pin {}", pki.pin)),
        "the log names the pin: {text}"
    );

    let echo = Echo::start().await;
    let url = format!("https://{addr}");
    let mut agent = Command::new(bin)
        .args(["expose", "--server", &url, "--id", "svc", "--secret", "pw"])
        .args(["--to", &echo.addr.to_string(), "--tls-pin", &pki.pin])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_peer_status(addr, "svc", 200).await;

    let run = |extra: Vec<String>| {
        let url = url.clone();
        tokio::task::spawn_blocking(move || {
            let mut child = Command::new(bin)
                .args([
                    "connect", "--server", &url, "--peer", "svc", "--secret", "pw",
                ])
                .arg("--stdio")
                .args(extra)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            use std::io::Write;
            let mut stdin = child.stdin.take().unwrap();
            stdin.write_all(b"ping").unwrap();
            drop(stdin);
            child.wait_with_output().unwrap()
        })
    };
    let ok = run(vec!["--tls-ca".into(), path(&pki.ca).into()])
        .await
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert_eq!(ok.stdout, b"ping");
    let refused = run(vec![]).await.unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(stderr.contains("not signed by a trusted CA"), "{stderr}");
    let bad_pin = run(vec!["--tls-pin".into(), "sha256:12".into()])
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&bad_pin.stderr);
    assert!(stderr.contains("--tls-pin: bad TLS pin"), "{stderr}");

    // SIGHUP reloads the certificate (unix; Windows has no SIGHUP).
    #[cfg(unix)]
    {
        let renewed = Pki::new(&["127.0.0.1"]);
        std::fs::copy(&renewed.cert, &pki.cert).unwrap();
        std::fs::copy(&renewed.key, &pki.key).unwrap();
        // SAFETY: kill(2) on our own child process.
        assert_eq!(unsafe { libc::kill(server.id() as i32, libc::SIGHUP) }, 0);
        let want = format!("pin is now {}", renewed.pin);
        while !std::fs::read_to_string(&log).unwrap().contains(&want) {
            assert!(std::time::Instant::now() < deadline + T, "no reload logged");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let pinned = run(vec!["--tls-pin".into(), renewed.pin.clone()])
            .await
            .unwrap();
        assert!(
            pinned.status.success(),
            "{}",
            String::from_utf8_lossy(&pinned.stderr)
        );
    }

    let _ = agent.kill();
    let _ = server.kill();
    let _ = (agent.wait(), server.wait());
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}
