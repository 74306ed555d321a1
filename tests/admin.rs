//! The admin listener: Prometheus metrics, status JSON and the status page.

mod common;

use std::time::Duration;

use common::{Echo, TestServer, expose, http_get};
use p2pnc::ConnectOptions;

const T: Duration = Duration::from_secs(10);

/// Polls until `path` on the admin listener contains `want` (outcomes are recorded when the
/// client's report arrives, just after `connect` returns).
async fn eventually(admin: std::net::SocketAddr, path: &str, want: &str) -> String {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let (status, body) = http_get(admin, path).await;
        if status == 200 && body.contains(want) {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{path} never contained {want:?}:\n{body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn metrics_status_and_page_show_services_sessions_and_refusals() {
    let server = TestServer::with_admin(Default::default()).await;
    let admin = server.admin.unwrap();
    let echo = Echo::start().await;
    let _agent = expose(&server.url, "cam-1", Some("pw"), echo.addr).await;

    let ok = ConnectOptions::new(&server.url, "cam-1", Some("pw")).unwrap();
    tokio::time::timeout(T, p2pnc::connect(&ok))
        .await
        .unwrap()
        .unwrap();
    let bad = ConnectOptions::new(&server.url, "cam-1", Some("nope")).unwrap();
    assert!(p2pnc::connect(&bad).await.is_err());
    let gone = ConnectOptions::new(&server.url, "nobody", None).unwrap();
    assert!(p2pnc::connect(&gone).await.is_err());
    // A client's report is free text: the page must show it, not run it.
    report_failure(&server, "cam-1", "pw", "<script>alert(1)</script> & co").await;

    // A wrong secret is refused by the server before any session exists: it counts as a
    // refused request, never as a connect attempt (whose success rate is the NATs').
    eventually(admin, "/metrics", "outcome=\"failed\"").await;
    let metrics = eventually(admin, "/metrics", "reason=\"secret_rejected\"} 1").await;
    assert!(!metrics.contains("outcome=\"rejected\""), "{metrics}");
    assert!(metrics.contains("p2pnc_agents_online 1"), "{metrics}");
    assert!(
        metrics.contains("p2pnc_connect_attempts_total{outcome=\"direct\",strategy=\"simultaneous\",client_mapping=\"endpoint-independent\",agent_mapping=\"endpoint-independent\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("p2pnc_rejected_requests_total{reason=\"peer_offline\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("p2pnc_setup_seconds_count 1"), "{metrics}");

    let status: serde_json::Value =
        serde_json::from_str(&http_get(admin, "/status.json?q=cam-1").await.1).unwrap();
    assert_eq!(status["services"][0]["id"], "cam-1");
    assert_eq!(
        (&status["services_total"], &status["page"], &status["pages"]),
        (&1.into(), &1.into(), &1.into())
    );
    // The failures apart, with their reasons; rates by strategy over three windows.
    assert_eq!(status["failures"][0]["outcome"], "failed");
    assert_eq!(
        status["failures"][0]["reason"],
        "<script>alert(1)</script> & co"
    );
    let simultaneous = &status["strategies"][0];
    assert_eq!(simultaneous["strategy"], "simultaneous");
    for window in ["last_5_min", "last_hour", "since_start"] {
        let w = &simultaneous["windows"][window];
        assert_eq!(
            (&w["attempts"], &w["direct"], &w["failed"]),
            (&2.into(), &1.into(), &1.into()),
            "{window}: {simultaneous}"
        );
    }
    // The reporting client above never probed its NAT: its pair is another one.
    let by_pair: Vec<(u64, u64)> = status["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let w = &p["windows"]["last_hour"];
            (
                w["attempts"].as_u64().unwrap(),
                w["failed"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        by_pair.iter().fold((0, 0), |(a, f), (x, y)| (a + x, f + y)),
        (2, 1),
        "{by_pair:?}"
    );
    assert_eq!(status["relay"], serde_json::Value::Null, "no relay here");
    // A search that matches nothing is an empty page, not an error.
    let none: serde_json::Value =
        serde_json::from_str(&http_get(admin, "/status.json?q=door&page=9").await.1).unwrap();
    assert_eq!(
        (&none["services_total"], &none["page"], &none["pages"]),
        (&0.into(), &1.into(), &1.into())
    );
    assert_eq!(none["services"], serde_json::json!([]));
    assert_eq!(none["recent"], status["recent"], "every other field stays");
    assert_eq!(status["services"][0]["mapping"], "endpoint-independent");
    let outcomes: Vec<&str> = status["recent"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(
        outcomes,
        ["failed", "direct"],
        "only the connects that reached the punch, newest first"
    );

    let (status, page) = http_get(admin, "/").await;
    assert_eq!(status, 200);
    assert!(page.contains("cam-1"), "{page}");
    assert!(
        page.contains("&lt;script&gt;alert(1)&lt;/script&gt; &amp; co"),
        "reported reasons are escaped: {page}"
    );
    assert!(!page.contains("<script>alert"), "{page}");
    assert!(page.contains("<table id=\"sessions\">"), "{page}");
    assert!(page.contains("<table id=\"failures\">"), "{page}");
    assert!(page.contains("<table id=\"strategies\">"), "{page}");
    assert!(page.contains("secret_rejected"), "{page}");
    assert!(!page.contains("src=\"http"), "no external assets");
    // The services table is searched and paged by query (forms, no links).
    let (_, found) = http_get(admin, "/?q=cam").await;
    assert!(
        found.contains("1 service of 1 online match 'cam'; page 1 of 1"),
        "{found}"
    );
    let (_, none) = http_get(admin, "/?q=door&page=7").await;
    assert!(
        none.contains("0 services of 1 online match 'door'; page 1 of 1"),
        "{none}"
    );
    assert!(none.contains("<p>No online service matches.</p>"), "{none}");
    // The control port does not serve the admin pages.
    assert_ne!(http_get(server.addr, "/metrics").await.0, 200);
}

/// Asks for `peer` as a client that proves `secret`, and reports a failure for `reason`.
async fn report_failure(server: &TestServer, peer: &str, secret: &str, reason: &str) {
    use futures_util::{SinkExt, StreamExt};
    use p2pnc::protocol::{Mode, Nonce, ServiceKeys, connect_message};
    use tokio_tungstenite::tungstenite::Message;
    let nonce = Nonce::random();
    let proof = ServiceKeys::derive(secret, peer).sign(&connect_message(peer, Mode::Punch, &nonce));
    let url = format!(
        "ws://{}/v1/connect?v=2&peer={peer}&nonce={nonce}&proof={}",
        server.addr,
        proof.to_hex()
    );
    let (mut ws, _) = tokio::time::timeout(T, tokio_tungstenite::connect_async(url))
        .await
        .unwrap()
        .unwrap();
    loop {
        let msg = tokio::time::timeout(T, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Message::Text(t) = msg {
            assert!(t.contains("\"punch\""), "{t}");
            break;
        }
    }
    let report = serde_json::json!({"type": "result", "outcome": "failed", "reason": reason});
    ws.send(Message::Text(report.to_string().into()))
        .await
        .unwrap();
    let _ = ws.close(None).await;
}
