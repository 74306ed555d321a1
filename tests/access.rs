//! Who may register and connect: the server token and id ownership.

mod common;

use std::time::Duration;

use common::{Echo, TestServer, expose, wait_peer_status};
use p2pnc::server::ServerConfig;
use p2pnc::{Agent, ConnectOptions, ExposeOptions};

const T: Duration = Duration::from_secs(10);

#[tokio::test]
async fn a_server_token_is_required_from_agents_and_clients() {
    let server = TestServer::with_config(ServerConfig {
        token: Some("t0ken".into()),
        ..Default::default()
    })
    .await;
    let echo = Echo::start().await;

    let no_token = ExposeOptions::new(&server.url, "svc", Some("pw")).unwrap();
    let err = match Agent::start(no_token.clone()).await {
        Err(e) => e.to_string(),
        Ok(_) => panic!("registered without the token"),
    };
    assert!(err.contains("requires a token"), "{err}");
    let wrong = ExposeOptions {
        token: Some("guess".into()),
        ..no_token.clone()
    };
    let err = Agent::start(wrong).await.err().unwrap().to_string();
    assert!(err.contains("token rejected"), "{err}");

    let good = ExposeOptions {
        token: Some("t0ken".into()),
        ..no_token
    };
    let mut agent = Agent::start(good).await.unwrap();
    let service = echo.addr;
    let serving = tokio::spawn(async move {
        while let Some(mut a) = agent.accept().await {
            let mut s = tokio::net::TcpStream::connect(service).await.unwrap();
            let _ = p2pnc::forward(&mut a.stream, &mut s).await;
        }
    });

    let opts = ConnectOptions::new(&server.url, "svc", Some("pw")).unwrap();
    let err = p2pnc::connect(&opts).await.unwrap_err().to_string();
    assert!(err.contains("requires a token"), "{err}");
    let with_token = ConnectOptions {
        token: Some("t0ken".into()),
        ..opts
    };
    tokio::time::timeout(T, p2pnc::connect(&with_token))
        .await
        .unwrap()
        .unwrap();
    serving.abort();
}

/// When the server registered `id` (its status page's `since_unix_ms`).
async fn registered_at(admin: std::net::SocketAddr, id: &str) -> Option<u64> {
    let path = format!("/status.json?q={}", p2pnc::protocol::percent_encode(id));
    let status: serde_json::Value =
        serde_json::from_str(&common::http_get(admin, &path).await.1).unwrap();
    status["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == id)
        .and_then(|s| s["since_unix_ms"].as_u64())
}

#[tokio::test]
async fn an_id_belongs_to_its_owner_who_may_restart_but_nobody_else_may_take_it() {
    let server = TestServer::with_admin(ServerConfig {
        id_grace: Duration::from_millis(800),
        ..Default::default()
    })
    .await;
    let admin = server.admin.unwrap();
    let echo = Echo::start().await;
    let (_, first) = expose(&server.url, "cam", Some("owner-secret"), echo.addr).await;

    // Someone else, while the owner is online: refused, the owner keeps the id.
    let thief = ExposeOptions::new(&server.url, "cam", Some("thief-secret")).unwrap();
    let err = Agent::start(thief.clone()).await.err().unwrap().to_string();
    assert!(err.contains("already registered"), "{err}");
    let public_thief = ExposeOptions::new(&server.url, "cam", None).unwrap();
    assert!(Agent::start(public_thief).await.is_err());

    // The owner's restart (same secret) replaces the old registration at once, even while the
    // old one still looks alive.
    let (_, second) = expose(&server.url, "cam", Some("owner-secret"), echo.addr).await;
    let opts = ConnectOptions::new(&server.url, "cam", Some("owner-secret")).unwrap();
    tokio::time::timeout(T, p2pnc::connect(&opts))
        .await
        .unwrap()
        .unwrap();
    // The replaced instance neither stops nor takes the id back: it waits as a standby.
    let held_since = registered_at(admin, "cam").await.expect("online");
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        registered_at(admin, "cam").await,
        Some(held_since),
        "no ping-pong"
    );
    assert!(!first.is_finished(), "the replaced agent keeps waiting");

    // The instance in charge goes away: the standby takes the id over within seconds.
    second.abort();
    let deadline = tokio::time::Instant::now() + T;
    while registered_at(admin, "cam")
        .await
        .is_none_or(|t| t == held_since)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the standby took over"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::timeout(T, p2pnc::connect(&opts))
        .await
        .unwrap()
        .unwrap();

    // The owner goes away: its id stays reserved for the grace period, then is free.
    first.abort();
    wait_peer_status(server.addr, "cam", 404).await;
    let err = Agent::start(thief.clone()).await.err().unwrap().to_string();
    assert!(err.contains("reserved"), "{err}");
    tokio::time::sleep(Duration::from_millis(900)).await;
    let taken = tokio::time::timeout(T, Agent::start(thief)).await.unwrap();
    assert!(taken.is_ok(), "free after the grace period");
}
