//! Several rendezvous servers on loopback, in one process: the agent registers with the first
//! that takes it and moves to another when its server stops or falls silent; a client passes
//! over servers that cannot be reached or do not know the peer.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Echo, TestServer, echo_roundtrip, expose_with, free_port, http_get};
use p2pnc::{ConnectOptions, Error, ExposeOptions};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

const T: Duration = Duration::from_secs(10);
/// The bound on an agent's move to another server once its own is gone.
const FAILOVER: Duration = Duration::from_secs(5);

/// The URL of a loopback port nothing listens on.
fn dead_url() -> String {
    format!("http://127.0.0.1:{}", free_port())
}

/// Whether `server` has `id` online.
async fn online(server: SocketAddr, id: &str) -> bool {
    http_get(server, &format!("/v1/peers/{id}")).await.0 == 200
}

/// Waits until `server` has `id` online; returns how long that took, or panics after `within`.
async fn wait_online(server: SocketAddr, id: &str, within: Duration) -> Duration {
    let started = Instant::now();
    while !online(server, id).await {
        assert!(
            started.elapsed() < within,
            "'{id}' not online at {server} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

async fn connect_echo(opts: &ConnectOptions) {
    let mut conn = tokio::time::timeout(T, p2pnc::connect(opts))
        .await
        .expect("connect ends in time")
        .expect("connects");
    echo_roundtrip(&mut conn.stream, 100_000).await;
}

#[tokio::test]
async fn a_dead_server_first_is_passed_over_by_the_agent_and_the_client() {
    let live = TestServer::start().await;
    let echo = Echo::start().await;
    let servers = [dead_url(), live.url.clone()];
    let opts = ExposeOptions::with_servers(&servers, "svc", Some("pw")).unwrap();
    let _agent = expose_with(opts, echo.addr).await;
    wait_online(live.addr, "svc", T).await;
    let client = ConnectOptions::with_servers(&servers, "svc", Some("pw")).unwrap();
    connect_echo(&client).await;
    // The single-server form still names only its server.
    let one = ConnectOptions::new(&servers[0], "svc", Some("pw")).unwrap();
    let err = p2pnc::connect(&one).await.unwrap_err();
    assert!(matches!(err, Error::ServerUnreachable(_)), "{err}");
}

#[tokio::test]
async fn a_client_asks_the_next_server_when_one_does_not_know_the_peer() {
    let empty = TestServer::start().await;
    let holder = TestServer::start().await;
    let echo = Echo::start().await;
    let opts = ExposeOptions::new(&holder.url, "svc", Some("pw")).unwrap();
    let _agent = expose_with(opts, echo.addr).await;
    let both = [empty.url.clone(), holder.url.clone()];
    connect_echo(&ConnectOptions::with_servers(&both, "svc", Some("pw")).unwrap()).await;
    // Not online anywhere: said as such, not as an unreachable server.
    let dead = dead_url();
    let all = [empty.url.clone(), dead, holder.url.clone()];
    let nobody = ConnectOptions::with_servers(&all, "nobody", None).unwrap();
    let err = p2pnc::connect(&nobody).await.unwrap_err();
    assert_eq!(err.to_string(), "peer 'nobody' is not online");
    // Every server unreachable: each reason, in one line.
    let dead = [dead_url(), dead_url()];
    let opts = ConnectOptions::with_servers(&dead, "svc", None).unwrap();
    let err = p2pnc::connect(&opts).await.unwrap_err();
    assert!(matches!(err, Error::ServerUnreachable(_)), "{err}");
    for url in &dead {
        assert!(err.to_string().contains(url.as_str()), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_agent_moves_when_its_server_stops_and_stays_when_it_returns() {
    let first = TestServer::start().await;
    let second = TestServer::start().await;
    let first_addr = first.addr;
    let echo = Echo::start().await;
    let servers = [first.url.clone(), second.url.clone()];
    let opts = ExposeOptions::with_servers(&servers, "svc", Some("pw")).unwrap();
    let _agent = expose_with(opts, echo.addr).await;
    wait_online(first_addr, "svc", T).await;
    assert!(
        !online(second.addr, "svc").await,
        "registered with one server"
    );

    let stopped = Instant::now();
    first.stop().await;
    let moved = wait_online(second.addr, "svc", FAILOVER).await;
    eprintln!("re-registered with the second server {moved:?} after the first stopped");
    let client = ConnectOptions::with_servers(&servers, "svc", Some("pw")).unwrap();
    connect_echo(&client).await;
    assert!(
        stopped.elapsed() < T,
        "connected {:?} after the stop",
        stopped.elapsed()
    );

    // The first server comes back on its address: the agent stays where it is.
    let (control, probe) = p2pnc::server::bind_pair(first_addr).await.unwrap();
    let back = TestServer::start_on(control, Some(probe), Default::default());
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !online(back.addr, "svc").await,
        "no move back while the second serves"
    );
    assert!(online(second.addr, "svc").await);
}

/// A TCP relay in front of a server that can fall silent: once frozen it forwards nothing and
/// closes nothing, as a server host that lost power looks from outside.
struct Freezer {
    addr: SocketAddr,
    freeze: CancellationToken,
}

impl Freezer {
    async fn start(to: SocketAddr) -> Self {
        // Nothing listens on the port after it: the NAT probe fails fast, which registration
        // survives (the mapping stays unknown).
        let listener = TcpListener::bind(("127.0.0.1", free_port())).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let freeze = CancellationToken::new();
        let held: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let stop = freeze.clone();
        tokio::spawn(async move {
            while let Ok((mut inside, _)) = listener.accept().await {
                let (stop, held) = (stop.clone(), held.clone());
                tokio::spawn(async move {
                    let Ok(mut outside) = TcpStream::connect(to).await else {
                        return;
                    };
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut inside, &mut outside) => return,
                    }
                    // Silent from now on, and still open.
                    held.lock().unwrap().extend([inside, outside]);
                });
            }
        });
        Freezer { addr, freeze }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_agent_leaves_a_silent_server_within_5_s() {
    let first = TestServer::start().await;
    let second = TestServer::start().await;
    let front = Freezer::start(first.addr).await;
    let echo = Echo::start().await;
    let servers = [format!("http://{}", front.addr), second.url.clone()];
    let opts = ExposeOptions::with_servers(&servers, "svc", Some("pw")).unwrap();
    let _agent = expose_with(opts, echo.addr).await;
    wait_online(first.addr, "svc", T).await;

    front.freeze.cancel();
    let moved = wait_online(second.addr, "svc", FAILOVER).await;
    eprintln!("re-registered with the second server {moved:?} after the first fell silent");
    let client = ConnectOptions::new(&second.url, "svc", Some("pw")).unwrap();
    connect_echo(&client).await;
}
