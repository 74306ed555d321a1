//! Bad input to the server gets a clear error, and the server keeps serving.

mod common;

use std::time::Duration;

use common::{Echo, TestServer, expose, http_get};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

const T: Duration = Duration::from_secs(5);

async fn still_serving(server: &TestServer) {
    let (status, body) = http_get(server.addr, "/v1/health").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"ok\":true"), "{body}");
}

async fn raw(server: &TestServer, bytes: &[u8]) -> String {
    let mut s = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let _ = s.write_all(bytes).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(T, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn garbage_and_malformed_http_get_errors_and_the_server_goes_on() {
    let server = TestServer::start().await;
    let reply = raw(&server, b"\x00\x01\x02 not http at all\r\n\r\n").await;
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    still_serving(&server).await;
    // Early disconnect in the middle of a request line.
    drop(tokio::net::TcpStream::connect(server.addr).await.unwrap());
    let mut half = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    half.write_all(b"GET /v1/hea").await.unwrap();
    drop(half);
    still_serving(&server).await;
    let (status, body) = http_get(server.addr, "/no/such/path").await;
    assert_eq!(status, 404);
    assert!(body.contains("no such endpoint"), "{body}");
    let reply = raw(
        &server,
        b"POST /v1/health HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    assert!(reply.contains("\"error\":\"bad_request\""), "{reply}");
}

#[tokio::test]
async fn bad_queries_are_refused_before_any_upgrade_with_a_json_reason() {
    let server = TestServer::start().await;
    let cases = [
        ("/v1/expose", 400, "missing v"),
        ("/v1/expose?v=9&id=a&auth=public", 400, "not supported"),
        ("/v1/expose?v=2&id=a", 400, "missing auth"),
        ("/v1/connect?v=2&peer=a&nonce=xyz", 400, "nonce"),
        (
            "/v1/connect?v=2&peer=ghost&nonce=00112233445566778899aabbccddeeff",
            404,
            "not online",
        ),
    ];
    for (path, status, want) in cases {
        let (got, body) = http_get(server.addr, path).await;
        assert_eq!(got, status, "{path}: {body}");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(
            json["message"].as_str().unwrap().contains(want),
            "{path}: {body}"
        );
        assert!(json["error"].is_string());
    }
    let long = format!("/v1/expose?v=2&auth=public&id={}", "a".repeat(65));
    assert_eq!(http_get(server.addr, &long).await.0, 400);
    // A valid query without the WebSocket upgrade.
    let echo = Echo::start().await;
    let _agent = expose(&server.url, "svc", None, echo.addr).await;
    let (got, body) = http_get(
        server.addr,
        "/v1/connect?v=2&peer=svc&nonce=00112233445566778899aabbccddeeff",
    )
    .await;
    assert_eq!(got, 400, "{body}");
    assert!(body.contains("WebSocket"), "{body}");
    still_serving(&server).await;
}

async fn agent_ws(
    server: &TestServer,
    id: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let url = format!("ws://{}/v1/expose?v=2&id={id}&auth=public", server.addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let first = ws.next().await.unwrap().unwrap();
    assert!(
        first.to_text().unwrap().contains("\"registered\""),
        "{first}"
    );
    ws
}

/// Reads until the server closes; returns the error message it sent, if any.
async fn closing_reason(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) -> String {
    let mut reason = String::new();
    loop {
        match tokio::time::timeout(T, ws.next())
            .await
            .expect("server closes in time")
        {
            Some(Ok(Message::Text(t))) => reason = t.to_string(),
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return reason,
            Some(Ok(_)) => {}
        }
    }
}

#[tokio::test]
async fn malformed_unknown_binary_and_oversized_frames_close_with_a_reason() {
    let server = TestServer::start().await;
    let cases: Vec<(Message, &str)> = vec![
        (Message::text("{not json"), "malformed message"),
        (
            Message::text(r#"{"type":"launch_missiles"}"#),
            "malformed message",
        ),
        (
            Message::text(r#"{"type":"reject","session":5}"#),
            "malformed message",
        ),
        (Message::binary(vec![1, 2, 3]), "binary frames"),
        (Message::text("x".repeat(20_000)), ""),
    ];
    for (i, (msg, want)) in cases.into_iter().enumerate() {
        let id = format!("bad{i}");
        let mut ws = agent_ws(&server, &id).await;
        ws.send(msg).await.unwrap();
        let reason = closing_reason(&mut ws).await;
        assert!(reason.contains(want), "case {i}: {reason}");
        // The registration ended with the connection.
        common::wait_peer_status(server.addr, &id, 404).await;
    }
    still_serving(&server).await;
    let echo = Echo::start().await;
    let _agent = expose(&server.url, "good", None, echo.addr).await;
    let opts = p2pnc::ConnectOptions::new(&server.url, "good", None).unwrap();
    assert!(
        tokio::time::timeout(T, p2pnc::connect(&opts))
            .await
            .unwrap()
            .is_ok()
    );
}

#[tokio::test]
async fn messages_for_unknown_sessions_are_ignored() {
    let server = TestServer::start().await;
    let mut ws = agent_ws(&server, "stray").await;
    let reject = r#"{"type":"reject","session":"00000000000000000000000000000000","code":"secret_rejected","message":"x"}"#;
    ws.send(Message::text(reject)).await.unwrap();
    ws.send(Message::text(r#"{"type":"armed","session":"nope"}"#))
        .await
        .unwrap();
    // Still registered and answering pings.
    ws.send(Message::Ping(vec![7].into())).await.unwrap();
    loop {
        match tokio::time::timeout(T, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            Message::Pong(p) => break assert_eq!(&p[..], &[7]),
            Message::Ping(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(http_get(server.addr, "/v1/peers/stray").await.0, 200);
}

#[tokio::test]
async fn a_malformed_message_on_a_client_channel_is_answered_and_closed() {
    let server = TestServer::start().await;
    let _agent = agent_ws(&server, "target").await;
    let url = format!(
        "ws://{}/v1/connect?v=2&peer=target&nonce=00112233445566778899aabbccddeeff",
        server.addr
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let order = tokio::time::timeout(T, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(order.to_text().unwrap().contains("\"punch\""), "{order}");
    ws.send(Message::text("this is not json")).await.unwrap();
    let reason = closing_reason(&mut ws).await;
    assert!(reason.contains("malformed message"), "{reason}");
    still_serving(&server).await;
}
