//! Servers as one cluster on a real Redis (`redis-server`, started by each test on a free
//! port): presence, id claims, routing across servers, a dead member, and Redis outages.
//! Needs `redis-server` on the PATH (`scripts/test.sh` installs it).

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{Echo, TestServer, echo_roundtrip, expose, http_get, wait_peer_status};
use p2pnc::server::{ClusterConfig, ServerConfig};
use p2pnc::{Agent, ConnectOptions, Error, ExposeOptions};

const T: Duration = Duration::from_secs(10);

/// A `redis-server` on a free loopback port, without persistence; killed on drop.
struct Redis {
    port: u16,
    child: Option<Child>,
}

impl Redis {
    async fn start() -> Redis {
        let port = common::free_port();
        let mut r = Redis { port, child: None };
        r.restart().await;
        r
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts it (again) on its port, empty, and waits until it answers.
    async fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on the PATH (scripts/test.sh installs it)");
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + T;
        loop {
            if let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = [0u8; 7];
                if s.write_all(b"PING\r\n").await.is_ok()
                    && tokio::time::timeout(T, s.read_exact(&mut buf))
                        .await
                        .is_ok()
                    && &buf == b"+PONG\r\n"
                {
                    return;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "redis-server did not come up"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kills it (SIGKILL) and waits until it is gone.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A cluster member on loopback, with its admin listener.
async fn member(redis: &Redis, name: &str) -> TestServer {
    member_with(redis, name, ServerConfig::default()).await
}

async fn member_with(redis: &Redis, name: &str, config: ServerConfig) -> TestServer {
    let (control, probe) = p2pnc::server::bind_pair("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let advertise = control.local_addr().unwrap();
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_addr = admin.local_addr().unwrap();
    let config = ServerConfig {
        cluster: Some(ClusterConfig {
            redis_url: redis.url(),
            member: name.into(),
            advertise,
        }),
        ..config
    };
    let mut server = TestServer::start_listeners(control, Some(probe), Some(admin), config);
    server.admin = Some(admin_addr);
    wait_store_up(admin_addr, true).await;
    server
}

/// Waits until the member's `/metrics` says the store is up (or down).
async fn wait_store_up(admin: SocketAddr, up: bool) {
    let want = format!("p2pnc_cluster_store_up {}", u8::from(up));
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let (_, body) = http_get(admin, "/metrics").await;
        if body.lines().any(|l| l == want) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "store never became {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One counter of the member's `/metrics`.
async fn metric(admin: SocketAddr, name: &str) -> u64 {
    let (_, body) = http_get(admin, "/metrics").await;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

async fn connect(
    server: &TestServer,
    id: &str,
    secret: Option<&str>,
) -> Result<p2pnc::Connection, Error> {
    let opts = ConnectOptions::new(&server.url, id, secret).unwrap();
    tokio::time::timeout(T, p2pnc::connect(&opts))
        .await
        .expect("connect ends in time")
}

#[tokio::test]
async fn a_client_asking_another_server_reaches_the_agent_byte_exact() {
    let redis = Redis::start().await;
    let a = member(&redis, "a").await;
    let b = member(&redis, "b").await;
    let echo = Echo::start().await;
    let (agent_public, _agent) = expose(&a.url, "svc", Some("pw"), echo.addr).await;
    wait_peer_status(b.addr, "svc", 200).await;
    let mut conn = connect(&b, "svc", Some("pw")).await.unwrap();
    assert_eq!(conn.info.peer_addr.port(), agent_public.port());
    echo_roundtrip(&mut conn.stream, 1 << 20).await;
    assert_eq!(echo.bytes.load(Ordering::SeqCst), 1 << 20);
    let b_admin = b.admin.unwrap();
    let a_admin = a.admin.unwrap();
    assert_eq!(
        metric(b_admin, "p2pnc_cluster_cross_connects_total").await,
        1
    );
    assert_eq!(
        metric(a_admin, "p2pnc_cluster_orders_routed_in_total").await,
        1
    );
    // The proof is checked by the server asked, against the verifier in the store.
    let err = connect(&b, "svc", Some("wrong")).await.unwrap_err();
    assert!(matches!(err, Error::SecretRejected(_)), "{err}");
    // Both members are listed, each with its agents.
    let (_, status) = http_get(b_admin, "/status.json").await;
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    let members = status["cluster"]["members"].as_array().unwrap();
    let names: Vec<_> = members
        .iter()
        .map(|m| m["member"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(status["cluster"]["store_up"], true);
}

#[tokio::test]
async fn an_id_is_claimed_once_across_the_cluster_and_its_owner_moves_between_servers() {
    let redis = Redis::start().await;
    let a = member(&redis, "a").await;
    let b = member(&redis, "b").await;
    let echo = Echo::start().await;
    let (_, first) = expose(&a.url, "svc", Some("pw"), echo.addr).await;
    // Another owner is refused on the other server.
    let impostor = ExposeOptions::new(&b.url, "svc", Some("other")).unwrap();
    let err = tokio::time::timeout(T, Agent::start(impostor))
        .await
        .unwrap();
    let err = err.err().expect("the impostor is refused");
    assert!(err.to_string().contains("already registered"), "{err}");
    // The owner's restart on the other server takes the id over; the first is told.
    let (_, _second) = expose(&b.url, "svc", Some("pw"), echo.addr).await;
    let deadline = tokio::time::Instant::now() + T;
    while metric(b.admin.unwrap(), "p2pnc_agents_online").await != 1
        || metric(a.admin.unwrap(), "p2pnc_agents_online").await != 0
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the old registration stayed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The first instance now waits (takeover=0) instead of taking turns.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(metric(b.admin.unwrap(), "p2pnc_agents_online").await, 1);
    assert_eq!(metric(a.admin.unwrap(), "p2pnc_agents_online").await, 0);
    let mut conn = connect(&a, "svc", Some("pw")).await.unwrap();
    echo_roundtrip(&mut conn.stream, 1000).await;
    first.abort();
}

#[tokio::test]
async fn two_owners_racing_for_one_id_on_two_servers_one_wins() {
    let redis = Redis::start().await;
    let a = member(&redis, "a").await;
    let b = member(&redis, "b").await;
    for round in 0..5 {
        let id = format!("race{round}");
        let on_a = Agent::start(ExposeOptions::new(&a.url, &id, Some("one")).unwrap());
        let on_b = Agent::start(ExposeOptions::new(&b.url, &id, Some("two")).unwrap());
        let (ra, rb) = tokio::time::timeout(T, async { tokio::join!(on_a, on_b) })
            .await
            .unwrap();
        assert!(
            ra.is_ok() != rb.is_ok(),
            "round {round}: exactly one wins (a: {:?}, b: {:?})",
            ra.as_ref().err().map(|e| e.to_string()),
            rb.as_ref().err().map(|e| e.to_string())
        );
    }
}

#[tokio::test]
async fn redis_going_away_keeps_local_agents_and_refuses_what_cannot_be_checked() {
    let mut redis = Redis::start().await;
    let a = member(&redis, "a").await;
    let b = member(&redis, "b").await;
    let echo = Echo::start().await;
    let _agent = expose(&a.url, "svc", Some("pw"), echo.addr).await;
    wait_peer_status(b.addr, "svc", 200).await;
    redis.kill();
    wait_store_up(a.admin.unwrap(), false).await;
    wait_store_up(b.admin.unwrap(), false).await;
    // The agent's own server still connects it.
    let mut conn = connect(&a, "svc", Some("pw")).await.unwrap();
    echo_roundtrip(&mut conn.stream, 1000).await;
    // The other cannot know where it is: busy, so the client may try another server.
    let err = connect(&b, "svc", Some("pw")).await.unwrap_err();
    assert!(
        err.to_string().contains("cluster store is unreachable"),
        "{err}"
    );
    // No registration can be checked: refused before the upgrade.
    let (status, body) = http_get(b.addr, "/v1/expose?v=2&id=new&auth=public").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("cluster store unreachable"), "{body}");
    assert!(metric(a.admin.unwrap(), "p2pnc_cluster_store_outages_total").await >= 1);
    // Redis comes back empty: the member republishes its agent, the other finds it again.
    redis.restart().await;
    wait_store_up(a.admin.unwrap(), true).await;
    wait_peer_status(b.addr, "svc", 200).await;
    let deadline = tokio::time::Instant::now() + T;
    let mut conn = loop {
        // The other member resubscribes to its channel within its backoff.
        match connect(&b, "svc", Some("pw")).await {
            Ok(c) => break c,
            Err(e) => {
                assert!(tokio::time::Instant::now() < deadline, "{e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    echo_roundtrip(&mut conn.stream, 1000).await;
}

#[tokio::test]
async fn a_stopped_members_agents_leave_the_store_and_the_id_is_free_elsewhere() {
    let redis = Redis::start().await;
    let config = || ServerConfig {
        id_grace: Duration::ZERO,
        ..Default::default()
    };
    let a = member_with(&redis, "a", config()).await;
    let b = member_with(&redis, "b", config()).await;
    let echo = Echo::start().await;
    let (_, agent) = expose(&a.url, "svc", None, echo.addr).await;
    wait_peer_status(b.addr, "svc", 200).await;
    agent.abort();
    a.stop().await;
    wait_peer_status(b.addr, "svc", 404).await;
    let _other = expose(&b.url, "svc", Some("new owner"), echo.addr).await;
}
