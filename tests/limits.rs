//! The server's limits: request rates, connections per address, and the head deadline.

mod common;

use std::time::Duration;

use common::{Echo, TestServer, expose, http_get};
use p2pnc::server::ServerConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const T: Duration = Duration::from_secs(10);

#[tokio::test]
async fn connect_requests_over_the_rate_are_refused_with_429() {
    let server = TestServer::with_config(ServerConfig {
        connect_rate: 1.0,
        ..Default::default()
    })
    .await;
    let echo = Echo::start().await;
    let _agent = expose(&server.url, "svc", None, echo.addr).await;
    let opts = p2pnc::ConnectOptions::new(&server.url, "svc", None).unwrap();
    // A burst of three seconds' worth passes.
    for _ in 0..3 {
        tokio::time::timeout(T, p2pnc::connect(&opts))
            .await
            .unwrap()
            .unwrap();
    }
    let err = p2pnc::connect(&opts).await.unwrap_err().to_string();
    assert!(
        err.contains("rate_limited") && err.contains("slow down"),
        "{err}"
    );
}

#[tokio::test]
async fn a_silent_connection_is_closed_at_the_head_deadline() {
    let server = TestServer::with_config(ServerConfig {
        head_timeout: Duration::from_millis(300),
        ..Default::default()
    })
    .await;
    let mut idle = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    idle.write_all(b"GET /v1/health HTTP/1.1\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let n = tokio::time::timeout(T, idle.read_to_end(&mut buf))
        .await
        .expect("closed by the server");
    assert!(
        matches!(n, Ok(0) | Err(_)),
        "no answer to an unfinished head"
    );
    assert_eq!(http_get(server.addr, "/v1/health").await.0, 200);
}

#[tokio::test]
async fn connections_over_the_per_address_cap_are_closed_and_slots_come_back() {
    let server = TestServer::with_config(ServerConfig {
        max_connections_per_ip: 5,
        ..Default::default()
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(tokio::net::TcpStream::connect(server.addr).await.unwrap());
    }
    let mut extra = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let _ = extra
        .write_all(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let mut buf = Vec::new();
    let n = tokio::time::timeout(T, extra.read_to_end(&mut buf))
        .await
        .expect("the extra connection is closed");
    assert!(
        matches!(n, Ok(0) | Err(_)),
        "{}",
        String::from_utf8_lossy(&buf)
    );
    drop(held);
    // Slots are released when the held connections close.
    let deadline = tokio::time::Instant::now() + T;
    while http_get(server.addr, "/v1/health").await.0 != 200 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "slots never came back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
