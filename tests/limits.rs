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
async fn a_connection_over_the_per_address_cap_takes_the_place_of_the_oldest_idle_one() {
    let server = TestServer::with_config(ServerConfig {
        max_connections_per_ip: 5,
        ..Default::default()
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(tokio::net::TcpStream::connect(server.addr).await.unwrap());
    }
    assert_eq!(http_get(server.addr, "/v1/health").await.0, 200);
    // The oldest idle connection made room, and was told why.
    let mut answer = String::new();
    let _ = tokio::time::timeout(T, held[0].read_to_string(&mut answer)).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("server busy"), "{answer}");
    // The others are still open and may still send their request.
    held[4]
        .write_all(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut reply = String::new();
    tokio::time::timeout(T, held[4].read_to_string(&mut reply))
        .await
        .unwrap()
        .unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(
        reply.to_ascii_lowercase().contains("connection: close"),
        "one request per connection: {reply}"
    );
}
