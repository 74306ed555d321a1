//! Warm paths end to end on loopback, in one process: `p2pnc::Peer` opens many streams over
//! one punched path to an agent, byte-exact, with half-close per stream; a path that ends
//! fails its open streams with a reason and the next open builds another; an idle path closes.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{Echo, TestServer};
use p2pnc::{Agent, ConnectOptions, ExposeOptions, Peer, WarmOptions, WarmPaths};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;

const T: Duration = Duration::from_secs(10);

/// An agent for `id` that forwards every accepted stream to `service`, as `expose` does
/// (a refused service is refused with its reason); its warm-path counts.
async fn agent(server: &str, id: &str, service: SocketAddr) -> (WarmPaths, JoinHandle<()>) {
    agent_with(ExposeOptions::new(server, id, Some("pw")).unwrap(), service).await
}

/// [`agent`] with `opts`.
async fn agent_with(opts: ExposeOptions, service: SocketAddr) -> (WarmPaths, JoinHandle<()>) {
    let mut agent = tokio::time::timeout(T, Agent::start(opts))
        .await
        .expect("agent registers in time")
        .expect("agent registers");
    let warm = agent.warm_paths();
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        while let Some(mut a) = agent.accept().await {
            while conns.try_join_next().is_some() {}
            conns.spawn(async move {
                match tokio::net::TcpStream::connect(service).await {
                    Ok(mut s) => {
                        let _ = p2pnc::forward(&mut a.stream, &mut s).await;
                    }
                    Err(e) => {
                        let why = format!("its service at {service} refused the connection ({e})");
                        a.stream.refuse(&why).await;
                    }
                }
            });
        }
    });
    (warm, task)
}

/// Sends `len` bytes of a pattern, half-closes, and reads the echo to its end.
async fn echo(stream: &mut p2pnc::PeerStream, len: usize, seed: u8) {
    let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8 ^ seed).collect();
    let (mut r, mut w) = tokio::io::split(stream);
    let send = async {
        w.write_all(&payload).await.unwrap();
        w.shutdown().await.unwrap();
    };
    let mut back = Vec::new();
    let recv = async { r.read_to_end(&mut back).await.unwrap() };
    tokio::time::timeout(T, async { tokio::join!(send, recv) })
        .await
        .expect("echo in time");
    assert_eq!(back.len(), payload.len());
    assert!(back == payload, "echo differs");
}

fn opts_for(server: &TestServer, id: &str) -> ConnectOptions {
    ConnectOptions::new(&server.url, id, Some("pw")).unwrap()
}

#[tokio::test]
async fn sequential_streams_share_one_path_byte_exact() {
    let server = TestServer::start().await;
    let service = Echo::start().await;
    let (warm, _agent) = agent(&server.url, "svc", service.addr).await;
    let peer = Peer::new(opts_for(&server, "svc"), WarmOptions::default());
    let mut sessions = Vec::new();
    for i in 0..10u8 {
        let mut conn = tokio::time::timeout(T, peer.open()).await.unwrap().unwrap();
        assert!(conn.stream.is_warm() && conn.stream.is_encrypted());
        assert_eq!(
            conn.info.warm,
            i > 0,
            "only the first stream built the path"
        );
        echo(&mut conn.stream, 100_000 + usize::from(i), i).await;
        sessions.push(conn.info.session);
    }
    assert!(sessions.iter().all(|s| *s == sessions[0]), "one path");
    let counts = warm.counts();
    assert_eq!((counts.open, counts.paths, counts.streams), (1, 1, 10));
    assert_eq!(service.connections.load(Ordering::SeqCst), 10);
    peer.close().await;
}

#[tokio::test]
async fn concurrent_streams_keep_their_bytes_apart_and_half_close_each() {
    let server = TestServer::start().await;
    let service = Echo::start().await;
    let (warm, _agent) = agent(&server.url, "svc", service.addr).await;
    let peer = Peer::connect(opts_for(&server, "svc"), WarmOptions::default())
        .await
        .unwrap();
    // One stream stays open, idle, while the others send, half-close and read to the end.
    let mut held = peer.open().await.unwrap();
    held.stream.write_all(b"held").await.unwrap();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..20u8 {
        let peer = peer.clone();
        set.spawn(async move {
            let mut conn = tokio::time::timeout(T, peer.open()).await.unwrap().unwrap();
            assert!(conn.info.warm);
            echo(&mut conn.stream, 300_000 + 977 * usize::from(i), i).await;
        });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
    let mut back = [0u8; 4];
    held.stream.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"held", "the held stream still works");
    held.stream.shutdown().await.unwrap();
    assert_eq!(held.stream.read(&mut back).await.unwrap(), 0, "a clean end");
    let counts = warm.counts();
    assert_eq!((counts.paths, counts.streams), (1, 21));
    peer.close().await;
}

#[tokio::test]
async fn first_bytes_ride_the_handshake_of_a_new_path() {
    let server = TestServer::start().await;
    let service = Echo::start().await;
    let (_warm, _agent) = agent(&server.url, "svc", service.addr).await;
    let peer = Peer::new(opts_for(&server, "svc"), WarmOptions::default());
    let request = b"GET / HTTP/1.1\r\n\r\n".to_vec();
    let mut local = &request[..];
    let mut conn = tokio::time::timeout(T, peer.open_early(&mut local))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(conn.early_sent, request.len() as u64);
    assert!(!conn.info.warm);
    let mut back = vec![0u8; request.len()];
    conn.stream.read_exact(&mut back).await.unwrap();
    assert_eq!(back, request);
    peer.close().await;
}

#[tokio::test]
async fn a_refused_service_fails_its_stream_with_the_reason_and_the_path_stays() {
    let server = TestServer::start().await;
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let nowhere = closed.local_addr().unwrap();
    drop(closed);
    let (warm, _agent) = agent(&server.url, "svc", nowhere).await;
    let peer = Peer::new(opts_for(&server, "svc"), WarmOptions::default());
    for _ in 0..2 {
        let mut conn = tokio::time::timeout(T, peer.open()).await.unwrap().unwrap();
        let err = conn.stream.read(&mut [0u8; 8]).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
        assert!(err.to_string().contains("refused the connection"), "{err}");
    }
    assert_eq!(warm.counts().paths, 1);
    peer.close().await;
}

#[tokio::test]
async fn when_the_agent_goes_open_streams_fail_and_the_next_open_builds_a_new_path() {
    let server = TestServer::start().await;
    let service = Echo::start().await;
    let (_warm, first) = agent(&server.url, "svc", service.addr).await;
    let peer = Peer::new(opts_for(&server, "svc"), WarmOptions::default());
    let mut before = peer.open().await.unwrap();
    before.stream.write_all(b"x").await.unwrap();
    let mut one = [0u8; 1];
    before.stream.read_exact(&mut one).await.unwrap();
    // The agent process goes away: its sockets close.
    first.abort();
    let _ = first.await;
    let err = tokio::time::timeout(T, before.stream.read(&mut one))
        .await
        .expect("the open stream ends in time")
        .unwrap_err();
    assert!(err.to_string().contains("warm path ended"), "{err}");
    // Another instance registers; the next open reaches it over a new path.
    let (warm, _second) = agent(&server.url, "svc", service.addr).await;
    let mut after = tokio::time::timeout(T, peer.open()).await.unwrap().unwrap();
    assert!(!after.info.warm, "a new path");
    assert_ne!(after.info.session, before.info.session);
    echo(&mut after.stream, 10_000, 7).await;
    assert_eq!(warm.counts().paths, 1);
    peer.close().await;
}

#[tokio::test]
async fn an_idle_path_closes_and_the_next_open_builds_another() {
    let server = TestServer::start().await;
    let service = Echo::start().await;
    let (warm, _agent) = agent(&server.url, "svc", service.addr).await;
    let idle = Duration::from_millis(300);
    let peer = Peer::new(opts_for(&server, "svc"), WarmOptions { idle });
    let mut first = peer.open().await.unwrap();
    echo(&mut first.stream, 1000, 1).await;
    drop(first);
    let deadline = tokio::time::Instant::now() + T;
    while warm.counts().open > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the idle path stayed open"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut next = peer.open().await.unwrap();
    assert!(!next.info.warm, "a new path");
    echo(&mut next.stream, 1000, 2).await;
    assert_eq!(warm.counts().paths, 2);
    peer.close().await;
}

#[tokio::test]
async fn without_warm_paths_every_open_is_its_own_connection() {
    let server = TestServer::start().await;
    let service = Echo::start().await;
    let (warm, _agent) = agent(&server.url, "svc", service.addr).await;
    let peer = Peer::new(
        opts_for(&server, "svc"),
        WarmOptions {
            idle: Duration::ZERO,
        },
    );
    for i in 0..3 {
        let mut conn = peer.open().await.unwrap();
        assert!(!conn.stream.is_warm() && !conn.info.warm);
        echo(&mut conn.stream, 5000, i).await;
    }
    assert_eq!(warm.counts().paths, 0);
}

#[tokio::test]
async fn an_agent_at_its_limit_serves_the_first_stream_and_the_client_then_goes_without() {
    let server = TestServer::start().await;
    let service = Echo::start().await;
    let opts = ExposeOptions {
        max_warm_paths: 1,
        ..ExposeOptions::new(&server.url, "svc", Some("pw")).unwrap()
    };
    let (warm, _agent) = agent_with(opts, service.addr).await;
    let kept = Peer::new(opts_for(&server, "svc"), WarmOptions::default());
    let mut first = kept.open().await.unwrap();
    echo(&mut first.stream, 1000, 1).await;
    // The agent's one place is taken: the next client's path is not kept.
    let declined = Peer::new(opts_for(&server, "svc"), WarmOptions::default());
    let mut conn = tokio::time::timeout(T, declined.open())
        .await
        .unwrap()
        .unwrap();
    assert!(
        conn.stream.is_warm(),
        "its first stream rides the path it opened with"
    );
    echo(&mut conn.stream, 1000, 2).await;
    drop(conn);
    let mut next = tokio::time::timeout(T, declined.open())
        .await
        .unwrap()
        .unwrap();
    assert!(
        !next.stream.is_warm(),
        "then connections go without a warm path"
    );
    echo(&mut next.stream, 1000, 3).await;
    let deadline = tokio::time::Instant::now() + T;
    while warm.counts().paths < 2 || warm.counts().open != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            warm.counts()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The kept path still serves.
    let mut again = kept.open().await.unwrap();
    assert!(again.info.warm);
    echo(&mut again.stream, 1000, 4).await;
    kept.close().await;
    declined.close().await;
}

#[tokio::test]
async fn a_warm_path_runs_unencrypted_when_both_ends_agree() {
    let server = TestServer::start().await;
    let service = Echo::start().await;
    let opts = ExposeOptions {
        allow_unencrypted: true,
        ..ExposeOptions::new(&server.url, "svc", Some("pw")).unwrap()
    };
    let (warm, _agent) = agent_with(opts, service.addr).await;
    let client = ConnectOptions {
        encrypt: false,
        ..opts_for(&server, "svc")
    };
    let peer = Peer::new(client, WarmOptions::default());
    for i in 0..3 {
        let mut conn = tokio::time::timeout(T, peer.open()).await.unwrap().unwrap();
        assert!(conn.stream.is_warm() && !conn.stream.is_encrypted());
        echo(&mut conn.stream, 200_000, i).await;
    }
    assert_eq!(warm.counts().paths, 1);
    peer.close().await;
}

#[tokio::test]
async fn one_address_keeps_at_most_its_share_of_paths_and_the_admin_listener_shows_them() {
    let server = TestServer::start().await;
    let service = Echo::start().await;
    // Every client here comes from 127.0.0.1: one address.
    let opts = ExposeOptions {
        max_warm_paths: 8,
        max_warm_paths_per_address: 1,
        ..ExposeOptions::new(&server.url, "svc", Some("pw")).unwrap()
    };
    let mut agent = tokio::time::timeout(T, Agent::start(opts))
        .await
        .unwrap()
        .unwrap();
    let warm = agent.warm_paths();
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_addr = admin.local_addr().unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let serving = tokio::spawn(agent.serve_admin(admin, stop.clone()));
    let accepting = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        while let Some(mut a) = agent.accept().await {
            while conns.try_join_next().is_some() {}
            conns.spawn(async move {
                if let Ok(mut s) = tokio::net::TcpStream::connect(service.addr).await {
                    let _ = p2pnc::forward(&mut a.stream, &mut s).await;
                }
            });
        }
    });
    let kept = Peer::new(opts_for(&server, "svc"), WarmOptions::default());
    let mut held = tokio::time::timeout(T, kept.open()).await.unwrap().unwrap();
    echo_open(&mut held.stream, b"first").await;
    let second = Peer::new(opts_for(&server, "svc"), WarmOptions::default());
    let mut conn = tokio::time::timeout(T, second.open())
        .await
        .unwrap()
        .unwrap();
    echo(&mut conn.stream, 1000, 2).await;
    drop(conn);
    let next = tokio::time::timeout(T, second.open())
        .await
        .unwrap()
        .unwrap();
    assert!(
        !next.stream.is_warm(),
        "the address's one place is taken: the second client goes without a warm path"
    );
    drop(next);
    let deadline = tokio::time::Instant::now() + T;
    let settled = |c: p2pnc::WarmCounts| c.declined == 1 && c.open == 1 && c.open_streams == 1;
    while !settled(warm.counts()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            warm.counts()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // One kept path, one stream open on it: on /metrics and on the page.
    let metrics = http_get(admin_addr, "/metrics").await;
    for line in [
        "p2pnc_agent_warm_paths_open 1",
        "p2pnc_agent_warm_paths_declined_total 1",
        "p2pnc_agent_warm_paths_per_address_limit 1",
        "p2pnc_agent_warm_streams_open 1",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line:?} not in:\n{metrics}"
        );
    }
    let page = http_get(admin_addr, "/").await;
    assert!(page.contains("<td>127.0.0.1:"), "{page}");
    assert!(page.contains("<td>1</td><td>kept</td>"), "{page}");
    echo(&mut held.stream, 1000, 3).await;
    kept.close().await;
    second.close().await;
    stop.cancel();
    tokio::time::timeout(T, serving)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    accepting.abort();
}

/// Writes `bytes` and reads them back, leaving the stream open.
async fn echo_open(stream: &mut p2pnc::PeerStream, bytes: &[u8]) {
    let mut back = vec![0u8; bytes.len()];
    tokio::time::timeout(T, async {
        stream.write_all(bytes).await.unwrap();
        stream.read_exact(&mut back).await.unwrap();
    })
    .await
    .expect("echo in time");
    assert_eq!(back, bytes);
}

/// The body of a plain HTTP/1.0 GET.
async fn http_get(addr: SocketAddr, path: &str) -> String {
    tokio::time::timeout(T, async {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: admin\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).await.unwrap();
        assert!(
            text.starts_with("HTTP/1.0 200") || text.starts_with("HTTP/1.1 200"),
            "{text}"
        );
        text.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap()
    })
    .await
    .expect("admin answers in time")
}

/// Concurrent connections on a warm path (as `connect --listen` takes them): for every
/// session, both ends name the same path.
#[tokio::test]
async fn both_ends_name_the_same_path_under_concurrent_opens() {
    const OPENS: usize = 12;
    let server = TestServer::start().await;
    let opts = ExposeOptions::new(&server.url, "svc", Some("pw")).unwrap();
    let mut agent = tokio::time::timeout(T, Agent::start(opts))
        .await
        .unwrap()
        .unwrap();
    let agent_side = tokio::spawn(async move {
        let mut seen = Vec::new();
        let mut streams = Vec::new();
        while seen.len() < OPENS {
            let a = agent.accept().await.expect("agent runs");
            seen.push((a.info.session.to_string(), a.info.path, a.info.peer_addr));
            streams.push(a.stream);
        }
        seen
    });
    let peer = Peer::new(opts_for(&server, "svc"), WarmOptions::default());
    let opens = (0..OPENS).map(|_| async {
        let c = tokio::time::timeout(T, peer.open()).await.unwrap().unwrap();
        (
            c.info.session.to_string(),
            c.info.path,
            c.info.peer_addr,
            c.stream,
        )
    });
    let clients = futures_util::future::join_all(opens).await;
    let agents = tokio::time::timeout(T, agent_side).await.unwrap().unwrap();
    for (session, path, addr, _stream) in &clients {
        for (s, agent_path, agent_addr) in &agents {
            if s == session {
                assert_eq!(
                    agent_path, path,
                    "session {session}: client says {path} to {addr}, agent says {agent_path} \
                     from {agent_addr}"
                );
            }
        }
    }
    assert!(
        clients.iter().all(|c| agents.iter().any(|a| a.0 == c.0)),
        "every client session is one of the agent's"
    );
}

/// An agent that stops while a warm path carries a stream (its forward waiting in a read) and
/// the keepalive stream stops at once: yamux wakes no stream of a connection it closes
/// gracefully, so without the path's own end signal `shutdown` waited forever (and `expose`
/// ignored SIGTERM after its first warm path).
#[tokio::test]
async fn an_agent_with_a_busy_warm_path_shuts_down_promptly() {
    let server = TestServer::start().await;
    let service = Echo::start().await;
    let opts = ExposeOptions::new(&server.url, "svc", Some("pw")).unwrap();
    let mut agent = tokio::time::timeout(T, Agent::start(opts))
        .await
        .expect("agent registers in time")
        .expect("agent registers");
    let peer = Peer::new(opts_for(&server, "svc"), WarmOptions::default());
    let opened = tokio::spawn(async move {
        let mut opened = peer.open().await.unwrap();
        opened.stream.write_all(b"x").await.unwrap();
        let mut one = [0u8; 1];
        opened.stream.read_exact(&mut one).await.unwrap();
        (peer, opened)
    });
    let mut accepted = tokio::time::timeout(T, agent.accept())
        .await
        .expect("a stream in time")
        .expect("a stream");
    let forward = tokio::spawn(async move {
        let mut s = tokio::net::TcpStream::connect(service.addr).await.unwrap();
        p2pnc::forward(&mut accepted.stream, &mut s).await
    });
    let (peer, mut opened) = tokio::time::timeout(T, opened).await.unwrap().unwrap();
    // Both streams (the service stream and the keepalive stream) now wait in reads.
    tokio::time::timeout(Duration::from_secs(5), agent.shutdown())
        .await
        .expect("the agent stops within 5 s with a warm path open");
    let forwarded = tokio::time::timeout(T, forward).await.unwrap().unwrap();
    let err = forwarded.expect_err("the forward ends with the path");
    assert!(err.to_string().contains("warm path ended"), "{err}");
    let mut one = [0u8; 1];
    let read = tokio::time::timeout(T, opened.stream.read(&mut one))
        .await
        .expect("the client's stream ends in time");
    assert!(
        read.is_err() || read.as_ref().is_ok_and(|n| *n == 0),
        "{read:?}"
    );
    peer.close().await;
}
