//! In-process fixtures: a rendezvous server, an echo service and agents on loopback.
#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr};

use futures_util::StreamExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

use p2pnc::server::ServerConfig;
use p2pnc::{Agent, ExposeOptions};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A server on 127.0.0.1:0, stopped on drop.
pub struct TestServer {
    pub addr: SocketAddr,
    /// The admin listener, when started with [`TestServer::with_admin`].
    pub admin: Option<SocketAddr>,
    pub url: String,
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::with_config(Default::default()).await
    }

    pub async fn with_config(config: ServerConfig) -> Self {
        let (control, probe) = p2pnc::server::bind_pair("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        Self::start_on(control, Some(probe), config)
    }

    pub async fn with_admin(config: ServerConfig) -> Self {
        let (control, probe) = p2pnc::server::bind_pair("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin_addr = admin.local_addr().unwrap();
        let mut s = Self::start_listeners(control, Some(probe), Some(admin), config);
        s.admin = Some(admin_addr);
        s
    }

    pub fn start_on(
        listener: TcpListener,
        probe: Option<TcpListener>,
        config: ServerConfig,
    ) -> Self {
        Self::start_listeners(listener, probe, None, config)
    }

    pub fn start_listeners(
        listener: TcpListener,
        probe: Option<TcpListener>,
        admin: Option<TcpListener>,
        config: ServerConfig,
    ) -> Self {
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let listeners = p2pnc::server::Listeners {
            control: listener,
            probe,
            admin,
        };
        let task = tokio::spawn(p2pnc::server::serve(listeners, config, stop.clone()));
        TestServer {
            addr,
            admin: None,
            url: format!("http://{addr}"),
            stop,
            task: Some(task),
        }
    }

    /// Stops the server and waits until its port is closed.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// An echo service that counts the connections it accepted and the bytes it received.
pub struct Echo {
    pub addr: SocketAddr,
    /// Client connections: those that carried at least one byte (`p2pnc expose` checks its
    /// service by connecting and closing at once, without a byte; its probes are not counted).
    pub connections: Arc<AtomicUsize>,
    pub bytes: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Echo {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let bytes = Arc::new(AtomicUsize::new(0));
        let (c, b) = (connections.clone(), bytes.clone());
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((mut s, _)) = listener.accept().await {
                while conns.try_join_next().is_some() {}
                let (b, c) = (b.clone(), c.clone());
                conns.spawn(async move {
                    use tokio::io::AsyncWriteExt;
                    let mut first = [0u8; 1];
                    match tokio::io::AsyncReadExt::read(&mut s, &mut first).await {
                        Ok(1) => c.fetch_add(1, Ordering::SeqCst),
                        _ => return,
                    };
                    if s.write_all(&first).await.is_err() {
                        return;
                    }
                    let (mut r, mut w) = s.split();
                    if let Ok(n) = tokio::io::copy(&mut r, &mut w).await {
                        b.fetch_add(n as usize + 1, Ordering::SeqCst);
                    }
                });
            }
        });
        Echo {
            addr,
            connections,
            bytes,
            task,
        }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts an agent for `id` that forwards every accepted stream to `service`.
pub async fn expose(
    server: &str,
    id: &str,
    secret: Option<&str>,
    service: SocketAddr,
) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    expose_with(ExposeOptions::new(server, id, secret).unwrap(), service).await
}

/// Starts an agent with `opts` that forwards every accepted stream to `service`.
pub async fn expose_with(
    opts: ExposeOptions,
    service: SocketAddr,
) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let mut agent = tokio::time::timeout(Duration::from_secs(5), Agent::start(opts))
        .await
        .expect("agent registers in time")
        .expect("agent registers");
    let public = agent.public_addr();
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        while let Some(mut a) = agent.accept().await {
            while conns.try_join_next().is_some() {}
            conns.spawn(async move {
                let mut s = tokio::net::TcpStream::connect(service).await.unwrap();
                let _ = p2pnc::forward(&mut a.stream, &mut s).await;
            });
        }
    });
    (public, task)
}

/// Polls `GET /v1/peers/{id}` until its status is `want`, within 10 s.
pub async fn wait_peer_status(server: SocketAddr, id: &str, want: u16) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status = http_get(server, &format!("/v1/peers/{id}")).await.0;
        if status == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "peer '{id}' status stayed {status}, wanted {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A minimal HTTP/1.1 GET; returns status and body.
pub async fn http_get(server: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let work = async {
        let mut s = tokio::net::TcpStream::connect(server).await?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
        let mut out = String::new();
        s.read_to_string(&mut out).await?;
        Ok::<_, std::io::Error>(out)
    };
    let Ok(Ok(text)) = tokio::time::timeout(Duration::from_secs(5), work).await else {
        return (0, String::new());
    };
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

/// A free port P whose neighbour P + 1 (the server's NAT probe port) is free too.
pub fn free_port() -> u16 {
    for _ in 0..50 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        if port < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
    panic!("no pair of free consecutive ports on 127.0.0.1");
}

/// Raises this process's open-file limit for tests that hold many sockets.
pub fn raise_fd_limit() {
    p2pnc::testing::raise_fd_limit_to(65_536);
}

/// How long the raw-protocol helpers below wait for one step.
const WAIT: Duration = Duration::from_secs(10);

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A TCP connection to `to` from the address `from` (any port).
pub async fn tcp_from(from: IpAddr, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    tokio::time::timeout(WAIT, socket.connect(to))
        .await
        .unwrap()
        .unwrap()
}

pub type Ws = WebSocketStream<TcpStream>;

/// A control WebSocket to `server` at `path_query`, from the address `from`; the refusal's
/// status and body when the server answers without upgrading.
pub async fn ws_from(
    from: IpAddr,
    server: SocketAddr,
    path_query: &str,
) -> Result<Ws, (u16, String)> {
    let tcp = tcp_from(from, server).await;
    let url = format!("ws://{server}{path_query}");
    match tokio::time::timeout(WAIT, tokio_tungstenite::client_async(url, tcp))
        .await
        .unwrap()
    {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let body = resp.body().as_deref().unwrap_or_default();
            Err((resp.status().as_u16(), String::from_utf8_lossy(body).into()))
        }
        Err(e) => panic!("{path_query}: {e}"),
    }
}

/// The next JSON message on `ws`.
pub async fn next_json(ws: &mut Ws) -> serde_json::Value {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a message in time")
            .expect("the socket is open")
            .unwrap();
        if let Message::Text(t) = msg {
            return serde_json::from_str(&t).unwrap();
        }
    }
}

/// Writes `len` bytes to an echo service through `stream`, half-closes, and checks they all
/// come back unchanged.
pub async fn echo_roundtrip(stream: &mut p2pnc::PeerStream, len: usize) {
    let payload: Vec<u8> = (0..len).map(|i| (i % 253) as u8).collect();
    let (mut r, mut w) = tokio::io::split(stream);
    let send = async {
        w.write_all(&payload).await.unwrap();
        w.shutdown().await.unwrap();
    };
    let mut back = Vec::new();
    let recv = async { r.read_to_end(&mut back).await.unwrap() };
    tokio::time::timeout(WAIT, async { tokio::join!(send, recv) })
        .await
        .expect("echo in time");
    assert_eq!(back.len(), payload.len());
    assert!(back == payload, "echo differs");
}
