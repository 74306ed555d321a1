//! The library end to end on loopback, in one process.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{Echo, TestServer, echo_roundtrip, expose, http_get, wait_peer_status};
use p2pnc::{ConnectOptions, Error, Path};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const T: Duration = Duration::from_secs(10);

#[tokio::test]
async fn connect_reaches_the_service_byte_exact_with_half_close() {
    let server = TestServer::start().await;
    let echo = Echo::start().await;
    let (agent_public, _agent) = expose(&server.url, "svc", Some("pw"), echo.addr).await;
    let opts = ConnectOptions::new(&server.url, "svc", Some("pw")).unwrap();
    let mut conn = tokio::time::timeout(T, p2pnc::connect(&opts))
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(conn.info.path, Path::Direct | Path::Lan));
    assert_eq!(conn.info.peer_addr.port(), agent_public.port());
    assert_eq!(conn.info.session.to_string().len(), 32);
    echo_roundtrip(&mut conn.stream, 4 << 20).await;
    assert_eq!(echo.bytes.load(Ordering::SeqCst), 4 << 20);
}

#[tokio::test]
async fn wrong_or_missing_secret_is_refused_fast_and_nothing_reaches_the_service() {
    let server = TestServer::start().await;
    let echo = Echo::start().await;
    let _agent = expose(&server.url, "svc", Some("right"), echo.addr).await;
    let wrong = ConnectOptions::new(&server.url, "svc", Some("wrong")).unwrap();
    let started = tokio::time::Instant::now();
    let err = tokio::time::timeout(T, p2pnc::connect(&wrong))
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, Error::SecretRejected(_)), "{err}");
    assert_eq!(err.to_string(), "secret rejected by peer 'svc'");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    let none = ConnectOptions::new(&server.url, "svc", None).unwrap();
    let err = p2pnc::connect(&none).await.unwrap_err();
    assert!(matches!(err, Error::SecretRequired(_)), "{err}");
    assert_eq!(echo.connections.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn public_service_needs_no_secret_and_a_client_with_one_refuses_it() {
    let server = TestServer::start().await;
    let echo = Echo::start().await;
    let _agent = expose(&server.url, "open", None, echo.addr).await;
    let opts = ConnectOptions::new(&server.url, "open", None).unwrap();
    let mut conn = tokio::time::timeout(T, p2pnc::connect(&opts))
        .await
        .unwrap()
        .unwrap();
    echo_roundtrip(&mut conn.stream, 1000).await;
    // A client given a secret expects a service that proves it: a public one cannot.
    let opts = ConnectOptions::new(&server.url, "open", Some("anything")).unwrap();
    let err = tokio::time::timeout(T, p2pnc::connect(&opts))
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, Error::NotTheService(_)), "{err}");
}

#[tokio::test]
async fn unknown_peer_and_unreachable_server_say_so() {
    let server = TestServer::start().await;
    let opts = ConnectOptions::new(&server.url, "nobody", None).unwrap();
    let err = p2pnc::connect(&opts).await.unwrap_err();
    assert_eq!(err.to_string(), "peer 'nobody' is not online");

    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let opts = ConnectOptions::new(&url, "x", None).unwrap();
    let err = tokio::time::timeout(T, p2pnc::connect(&opts))
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, Error::ServerUnreachable(_)), "{err}");
    assert!(err.to_string().starts_with("server unreachable"), "{err}");
}

#[tokio::test]
async fn twenty_concurrent_connects_to_one_agent_all_succeed() {
    let server = TestServer::start().await;
    let echo = Echo::start().await;
    let _agent = expose(&server.url, "busy", Some("pw"), echo.addr).await;
    let opts = ConnectOptions::new(&server.url, "busy", Some("pw")).unwrap();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..20 {
        let opts = opts.clone();
        set.spawn(async move {
            let mut conn = tokio::time::timeout(T, p2pnc::connect(&opts)).await??;
            echo_roundtrip(&mut conn.stream, 10_000 + i).await;
            Ok::<_, anyhow::Error>(conn.info.session)
        });
    }
    let mut sessions = std::collections::HashSet::new();
    while let Some(r) = set.join_next().await {
        sessions.insert(r.unwrap().unwrap());
    }
    assert_eq!(sessions.len(), 20, "every connect has its own session");
    assert_eq!(echo.connections.load(Ordering::SeqCst), 20);
}

#[tokio::test]
async fn a_taken_id_is_refused_and_freed_when_its_agent_stops() {
    let server = TestServer::start().await;
    let echo = Echo::start().await;
    // A public agent owns nothing beyond its connection (see tests/access.rs for owners).
    let (_, first) = expose(&server.url, "mine", None, echo.addr).await;
    let opts = p2pnc::ExposeOptions::new(&server.url, "mine", Some("other")).unwrap();
    let err = match p2pnc::Agent::start(opts.clone()).await {
        Err(e) => e,
        Ok(_) => panic!("a second agent took an online id"),
    };
    assert!(err.to_string().contains("already registered"), "{err}");
    first.abort();
    wait_peer_status(server.addr, "mine", 404).await;
    let agent = tokio::time::timeout(T, p2pnc::Agent::start(opts))
        .await
        .unwrap();
    assert!(agent.is_ok(), "the id is free again");
}

#[tokio::test]
async fn agent_re_registers_after_a_server_restart() {
    let server = TestServer::start().await;
    let addr = server.addr;
    let echo = Echo::start().await;
    let _agent = expose(&server.url, "phoenix", None, echo.addr).await;
    server.stop().await;
    // Same port, new server: the agent must find it again by itself.
    let (listener, probe) = loop {
        match p2pnc::server::bind_pair(addr).await {
            Ok(pair) => break pair,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let server = TestServer::start_on(listener, Some(probe), Default::default());
    wait_peer_status(server.addr, "phoenix", 200).await;
    let opts = ConnectOptions::new(&server.url, "phoenix", None).unwrap();
    let mut conn = tokio::time::timeout(T, p2pnc::connect(&opts))
        .await
        .unwrap()
        .unwrap();
    echo_roundtrip(&mut conn.stream, 1000).await;
}

#[tokio::test]
async fn stray_connections_to_the_punch_port_never_reach_the_service() {
    let server = TestServer::start().await;
    let echo = Echo::start().await;
    let (punch_port, _agent) = expose(&server.url, "guarded", None, echo.addr).await;
    let stray = tokio::net::TcpStream::connect(punch_port).await;
    if cfg!(windows) {
        // The punch port does not listen on Windows: nothing stray gets in at all.
        assert!(stray.is_err(), "nothing listens on the punch port");
    } else {
        let mut stray = stray.unwrap();
        // A hello-sized blob naming no session, then bytes meant for the service.
        stray.write_all(&[b'p'; 56]).await.unwrap();
        let _ = stray.write_all(b"GET / HTTP/1.0\r\n\r\n").await;
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(T, stray.read(&mut buf))
            .await
            .expect("closed in time");
        assert!(
            matches!(read, Ok(0) | Err(_)),
            "the agent closed the stray connection"
        );
    }
    assert_eq!(echo.connections.load(Ordering::SeqCst), 0);
    // The agent still serves real clients.
    let opts = ConnectOptions::new(&server.url, "guarded", None).unwrap();
    let mut conn = tokio::time::timeout(T, p2pnc::connect(&opts))
        .await
        .unwrap()
        .unwrap();
    echo_roundtrip(&mut conn.stream, 100).await;
    assert_eq!(http_get(server.addr, "/v1/peers/guarded").await.0, 200);
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn next_json(ws: &mut Ws) -> serde_json::Value {
    use futures_util::StreamExt;
    loop {
        let msg = tokio::time::timeout(T, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let tokio_tungstenite::tungstenite::Message::Text(t) = msg {
            return serde_json::from_str(&t).unwrap();
        }
    }
}

#[tokio::test]
async fn the_relay_pairs_the_two_ends_of_a_live_session_and_carries_bytes_both_ways() {
    use p2pnc::protocol::Role;
    use p2pnc::server::RelayConfig;
    use p2pnc::testing as relay;
    let config = p2pnc::server::ServerConfig {
        relay: Some(RelayConfig {
            max_pairs: 1,
            bytes_per_sec: 1 << 20,
            ..Default::default()
        }),
        ..Default::default()
    };
    let server = TestServer::with_admin(config).await;
    let base = format!("ws://{}", server.addr);
    let (mut agent, _) =
        tokio_tungstenite::connect_async(format!("{base}/v1/expose?v=2&id=r&auth=public"))
            .await
            .unwrap();
    assert_eq!(next_json(&mut agent).await["type"], "registered");
    let nonce = "00112233445566778899aabbccddeeff";
    let (mut client, _) =
        tokio_tungstenite::connect_async(format!("{base}/v1/connect?v=2&peer=r&nonce={nonce}"))
            .await
            .unwrap();
    let order = next_json(&mut client).await;
    assert_eq!(order["type"], "punch", "{order}");
    assert_eq!(
        order["relay_after_ms"], 1500,
        "a direct path gets a head start"
    );
    let session: p2pnc::protocol::SessionId = order["session"].as_str().unwrap().parse().unwrap();
    let agent_order = next_json(&mut agent).await;
    assert_eq!(agent_order["session"], session.to_string().as_str());
    let ticket = |o: &serde_json::Value| -> p2pnc::protocol::RelayTicket {
        o["relay_ticket"]
            .as_str()
            .expect("a relay ticket")
            .parse()
            .unwrap()
    };
    let (at, ct) = (ticket(&agent_order), ticket(&order));
    assert_ne!(at, ct, "each end has its own ticket");

    let url = p2pnc::ServerUrl::parse(&server.url).unwrap();
    let (a, c) = tokio::join!(
        relay::join(&url, server.addr, &session, Role::Agent, &at),
        relay::join(&url, server.addr, &session, Role::Client, &ct),
    );
    let (mut a, mut c) = (a.unwrap(), c.unwrap());
    c.write_all(b"from client").await.unwrap();
    c.shutdown().await.unwrap();
    let mut got = Vec::new();
    a.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"from client", "half-close crosses the relay");
    a.write_all(b"from agent").await.unwrap();
    drop(a);
    let mut got = Vec::new();
    c.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"from agent");

    // The status counts the session and its bytes (11 + 10) once it has ended, under its id.
    let admin = server.admin.unwrap();
    let deadline = std::time::Instant::now() + T;
    let relay = loop {
        let (_, body) = common::http_get(admin, "/status.json").await;
        let status: serde_json::Value = serde_json::from_str(&body).unwrap();
        if status["relay"]["ended"]["since_start"]["sessions"] == 1 {
            break status["relay"].clone();
        }
        assert!(std::time::Instant::now() < deadline, "{status}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    for window in ["last_5_min", "last_hour", "since_start"] {
        assert_eq!(
            relay["ended"][window],
            serde_json::json!({"sessions": 1, "bytes": 21}),
            "{relay}"
        );
    }
    assert_eq!(relay["top"], serde_json::json!([{"id": "r", "bytes": 21}]));
    assert_eq!(
        relay["caps"],
        serde_json::json!({"per_address": 0, "total": 0, "lifetime": 0, "idle": 0})
    );

    // Unknown sessions are refused; so is a relay on a server without one.
    let unknown = p2pnc::protocol::SessionId::from_bytes([0; 16]);
    let err = relay::join(&url, server.addr, &unknown, Role::Client, &ct)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("404"), "{err}");
    let plain = TestServer::start().await;
    let url = p2pnc::ServerUrl::parse(&plain.url).unwrap();
    let err = relay::join(&url, plain.addr, &session, Role::Client, &ct)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("400"), "{err}");
}

#[tokio::test]
async fn nat_check_on_loopback_reports_no_nat_and_an_open_port() {
    let server = TestServer::start().await;
    let url = p2pnc::ServerUrl::parse(&server.url).unwrap();
    let report = tokio::time::timeout(T, p2pnc::nat_check(&url))
        .await
        .unwrap()
        .unwrap();
    assert!(!report.behind_nat, "{report}");
    assert_eq!(
        report.mapping,
        p2pnc::protocol::Mapping::EndpointIndependent
    );
    assert!(report.port_preserved);
    // Nothing listens on the punch port on Windows to take the server's dial-back.
    let filtering = if cfg!(windows) {
        "unknown"
    } else {
        "endpoint-independent"
    };
    assert_eq!(report.filtering, filtering);
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["mapping"], "endpoint-independent");
}

#[tokio::test]
async fn connect_early_sends_what_the_local_side_wrote_first_once_and_in_order() {
    let server = TestServer::start().await;
    let echo = Echo::start().await;
    let _agent = expose(&server.url, "svc", Some("pw"), echo.addr).await;
    let opts = ConnectOptions::new(&server.url, "svc", Some("pw")).unwrap();
    // More than the read-ahead cap, all written before the connection exists.
    let payload: Vec<u8> = (0..(p2pnc::defaults::EARLY_DATA_MAX * 3 + 17))
        .map(|i| (i % 251) as u8)
        .collect();
    let (mut app, mut local) = tokio::io::duplex(1 << 20);
    app.write_all(&payload).await.unwrap();
    app.shutdown().await.unwrap();
    let mut conn = tokio::time::timeout(T, p2pnc::connect_early(&opts, &mut local))
        .await
        .unwrap()
        .unwrap();
    let forwarding =
        tokio::spawn(async move { p2pnc::forward(&mut conn.stream, &mut local).await });
    let mut back = Vec::new();
    tokio::time::timeout(T, app.read_to_end(&mut back))
        .await
        .expect("echo in time")
        .unwrap();
    assert_eq!(back.len(), payload.len());
    assert!(back == payload, "echo differs");
    forwarding.await.unwrap().unwrap();
}

/// Concurrent connects to one agent: for every session, both ends name the same path (the
/// stream they both use), whatever candidate wins each race.
#[tokio::test]
async fn both_ends_name_the_same_path_under_concurrent_connects() {
    const CONNECTS: usize = 12;
    let server = TestServer::start().await;
    let opts = p2pnc::ExposeOptions::new(&server.url, "svc", Some("pw")).unwrap();
    let mut agent = tokio::time::timeout(T, p2pnc::Agent::start(opts))
        .await
        .unwrap()
        .unwrap();
    let agent_side = tokio::spawn(async move {
        let mut seen = std::collections::BTreeMap::new();
        let mut streams = Vec::new();
        while seen.len() < CONNECTS {
            let a = agent.accept().await.expect("agent runs");
            seen.insert(a.info.session.to_string(), (a.info.path, a.info.peer_addr));
            streams.push(a.stream);
        }
        seen
    });
    let opts = ConnectOptions::new(&server.url, "svc", Some("pw")).unwrap();
    let connects = (0..CONNECTS).map(|_| async {
        let conn = tokio::time::timeout(T, p2pnc::connect(&opts))
            .await
            .unwrap()
            .unwrap();
        (
            conn.info.session.to_string(),
            conn.info.path,
            conn.info.peer_addr,
            conn.stream,
        )
    });
    let clients = futures_util::future::join_all(connects).await;
    let agents = tokio::time::timeout(T, agent_side).await.unwrap().unwrap();
    for (session, path, addr, _stream) in &clients {
        let (agent_path, agent_addr) = agents[session];
        assert_eq!(
            agent_path, *path,
            "session {session}: client says {path} to {addr}, agent says {agent_path} from \
             {agent_addr}"
        );
    }
}
