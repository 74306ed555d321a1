//! Attacks on trust, on loopback: each test plays the attacker — a squatter on a service's id,
//! a client with the wrong secret, someone who captured a request in transit, a rogue
//! rendezvous server — checks that the attack fails with a clear error and reaches nothing, and
//! that the legitimate user still gets through in normal time.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{Echo, TestServer, expose, ip, next_json, ws_from};
use futures_util::{SinkExt, StreamExt};
use p2pnc::protocol::{
    self, AgentToServer, ExposeQuery, Mode, Nonce, ServiceKeys, SessionId, SessionKey,
};
use p2pnc::{ConnectOptions, Error, ExposeOptions};
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

const T: Duration = Duration::from_secs(10);
/// What a legitimate connect on loopback may take while an attack runs: a few milliseconds
/// unloaded; a second leaves room for a loaded test machine.
const NORMAL: Duration = Duration::from_secs(1);

/// A connect with `secret` to `id` that must succeed in normal time.
async fn legit_connect(server: &TestServer, id: &str, secret: &str) {
    let opts = ConnectOptions::new(&server.url, id, Some(secret)).unwrap();
    let started = Instant::now();
    let mut conn = tokio::time::timeout(T, p2pnc::connect(&opts))
        .await
        .expect("the legitimate connect ends in time")
        .expect("the legitimate connect succeeds");
    assert!(started.elapsed() < NORMAL, "{:?}", started.elapsed());
    assert!(conn.stream.is_encrypted());
    common::echo_roundtrip(&mut conn.stream, 100).await;
}

/// The query of a connect request to `peer` proven with `secret`: nonce and proof.
fn proven_connect_query(peer: &str, secret: &str) -> String {
    let nonce = Nonce::random();
    let message = protocol::connect_message(peer, Mode::Punch, &nonce);
    let proof = ServiceKeys::derive(secret, peer).sign(&message).to_hex();
    format!("/v1/connect?v=2&peer={peer}&nonce={nonce}&proof={proof}")
}

#[tokio::test]
async fn a_client_with_the_secret_never_talks_to_a_squatter_on_the_id() {
    let server = TestServer::start().await;
    // The attacker takes the id first, as a public service: anyone may connect to it.
    let squatter = Echo::start().await;
    let _squat = expose(&server.url, "svc", None, squatter.addr).await;
    let opts = ConnectOptions::new(&server.url, "svc", Some("pw")).unwrap();
    let err = tokio::time::timeout(T, p2pnc::connect(&opts))
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, Error::NotTheService(_)), "{err}");
    assert_eq!(
        err.to_string(),
        "peer 'svc' did not prove the secret: not the service you expect"
    );
    // Refused before anything was sent toward it: the squatter's service saw nothing.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(squatter.connections.load(Ordering::SeqCst), 0);

    // The other way round: the real service holds its id, the squatter cannot take it, and
    // clients get through.
    let real = Echo::start().await;
    let _svc = expose(&server.url, "real", Some("pw"), real.addr).await;
    let query = "/v1/expose?v=2&id=real&auth=public";
    let (status, body) = ws_from(ip("127.0.0.1"), server.addr, query)
        .await
        .expect_err("the squatter is refused");
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("id_taken"), "{body}");
    legit_connect(&server, "real", "pw").await;
}

#[tokio::test]
async fn a_wrong_secret_is_refused_by_the_server_and_reaches_nothing() {
    let server = TestServer::start().await;
    let echo = Echo::start().await;
    let _svc = expose(&server.url, "svc", Some("pw"), echo.addr).await;
    for _ in 0..20 {
        let opts = ConnectOptions::new(&server.url, "svc", Some("guess")).unwrap();
        let err = tokio::time::timeout(T, p2pnc::connect(&opts))
            .await
            .unwrap()
            .unwrap_err();
        assert!(matches!(err, Error::SecretRejected(_)), "{err}");
    }
    assert_eq!(echo.connections.load(Ordering::SeqCst), 0);
    legit_connect(&server, "svc", "pw").await;
}

#[tokio::test]
async fn a_captured_connect_request_opens_nothing_when_replayed() {
    let server = TestServer::start().await;
    let echo = Echo::start().await;
    let _svc = expose(&server.url, "svc", Some("pw"), echo.addr).await;
    // The legitimate client's request, as it crossed the network: it is accepted once.
    let captured = proven_connect_query("svc", "pw");
    let mut first = ws_from(ip("127.0.0.1"), server.addr, &captured)
        .await
        .expect("the first use is accepted");
    let order = next_json(&mut first).await;
    assert_eq!(order["type"], "punch", "{order}");
    // The attacker sends it again, from elsewhere and from the same address.
    for from in ["127.0.0.77", "127.0.0.1"] {
        let (status, body) = ws_from(ip(from), server.addr, &captured)
            .await
            .expect_err("a replay is refused");
        assert_eq!(status, 401, "{body}");
        assert!(body.contains("secret_rejected"), "{body}");
        assert!(body.contains("replayed request"), "{body}");
    }
    legit_connect(&server, "svc", "pw").await;
}

#[tokio::test]
async fn a_captured_registration_proof_cannot_register_the_id_again() {
    let server = TestServer::start().await;
    let echo = Echo::start().await;
    let keys = ServiceKeys::derive("pw", "svc");
    let query = |takeover: bool| {
        let verifier = keys.verifier().to_hex();
        let q = format!(
            "v=2&id=svc&auth=secret&verifier={verifier}&takeover={}",
            u8::from(takeover)
        );
        // What the agent itself would send.
        assert_eq!(
            ExposeQuery::parse(&q).unwrap().verifier,
            Some(keys.verifier())
        );
        format!("/v1/expose?{q}")
    };
    // A registration as it crossed the network: the challenge and the signature answering it.
    let mut owner = ws_from(ip("127.0.0.1"), server.addr, &query(true))
        .await
        .unwrap();
    let challenge = next_json(&mut owner).await;
    assert_eq!(challenge["type"], "challenge", "{challenge}");
    let nonce: Nonce = serde_json::from_value(challenge["nonce"].clone()).unwrap();
    let captured = keys.sign(&protocol::register_message("svc", &nonce));
    drop(owner);
    wait_offline(&server).await;
    // The real agent comes back online.
    let _svc = expose(&server.url, "svc", Some("pw"), echo.addr).await;
    // The attacker replays the captured signature to a fresh challenge, asking to take over.
    let mut attacker = ws_from(ip("127.0.0.99"), server.addr, &query(true))
        .await
        .unwrap();
    let challenge = next_json(&mut attacker).await;
    assert_ne!(
        challenge["nonce"],
        json!(nonce.to_hex()),
        "a fresh challenge"
    );
    let prove = json!({"type": "prove", "signature": captured.to_hex()});
    attacker
        .send(Message::text(prove.to_string()))
        .await
        .unwrap();
    let answer = next_json(&mut attacker).await;
    assert_eq!(answer["type"], "error", "{answer}");
    assert_eq!(answer["code"], "secret_rejected", "{answer}");
    // The real agent kept its registration.
    legit_connect(&server, "svc", "pw").await;
}

/// Waits until the server no longer lists `svc` as online.
async fn wait_offline(server: &TestServer) {
    let deadline = Instant::now() + T;
    while common::http_get(server.addr, "/v1/peers/svc").await.0 == 200 {
        assert!(Instant::now() < deadline, "svc still online");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A rogue rendezvous server: it registers one agent properly, then sends it whatever orders
/// the test makes up and reports what the agent answers.
struct Rogue {
    ws: WebSocketStream<TcpStream>,
    id: String,
}

impl Rogue {
    /// Accepts the agent's control connection on `listener` and registers it.
    async fn register(listener: &TcpListener) -> Rogue {
        let (tcp, _) = tokio::time::timeout(T, listener.accept())
            .await
            .unwrap()
            .unwrap();
        let (query_tx, query_rx) = std::sync::mpsc::channel();
        // The shape of tungstenite's handshake callback, not ours to change.
        #[allow(clippy::result_large_err)]
        let callback = move |req: &Request, resp: Response| {
            let _ = query_tx.send(req.uri().query().unwrap_or_default().to_string());
            Ok(resp)
        };
        let mut ws = tokio::time::timeout(T, tokio_tungstenite::accept_hdr_async(tcp, callback))
            .await
            .unwrap()
            .unwrap();
        let query = ExposeQuery::parse(&query_rx.recv().unwrap()).unwrap();
        let verifier = query
            .verifier
            .expect("an agent with a secret sends its verifier");
        let nonce = Nonce::random();
        let challenge = json!({"type": "challenge", "nonce": nonce.to_hex()});
        ws.send(Message::text(challenge.to_string())).await.unwrap();
        let prove = next_text(&mut ws).await;
        let AgentToServer::Prove { signature } = protocol::decode(&prove).unwrap() else {
            panic!("expected a proof: {prove}");
        };
        let id = query.id.to_string();
        assert!(verifier.verifies(&protocol::register_message(&id, &nonce), &signature));
        let registered = json!({"type": "registered", "id": id, "public": "127.0.0.1:9"});
        ws.send(Message::text(registered.to_string()))
            .await
            .unwrap();
        Rogue { ws, id }
    }

    /// Sends a punch order toward a dead client endpoint, with the given nonce and proof.
    async fn order(
        &mut self,
        mode: Mode,
        nonce: &Nonce,
        proof: Option<&protocol::Signature>,
    ) -> SessionId {
        let session = SessionId::random();
        let mut order = json!({
            "type": "punch",
            "session": session.to_hex(),
            "key": SessionKey::random().to_hex(),
            "peer_public": "127.0.0.1:9",
            "you": "127.0.0.1:10",
            "mode": mode.as_str(),
            "auth": "secret",
            "nonce": nonce.to_hex(),
        });
        if let Some(p) = proof {
            order["proof"] = json!(p.to_hex());
        }
        self.ws
            .send(Message::text(order.to_string()))
            .await
            .unwrap();
        session
    }

    /// The agent's next message about a session (pings and the like skipped).
    async fn answer(&mut self) -> AgentToServer {
        protocol::decode(&next_text(&mut self.ws).await).unwrap()
    }
}

async fn next_text(ws: &mut WebSocketStream<TcpStream>) -> String {
    loop {
        let msg = tokio::time::timeout(T, ws.next())
            .await
            .expect("a message in time")
            .expect("the socket is open")
            .unwrap();
        if let Message::Text(t) = msg {
            return t.to_string();
        }
    }
}

fn rejection(answer: AgentToServer, session: SessionId) -> String {
    match answer {
        AgentToServer::Reject {
            session: s,
            code,
            message,
        } => {
            assert_eq!(s, session.into());
            assert_eq!(code, protocol::ErrorCode::SecretRejected);
            message
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
}

/// A proof a legitimate client made for `nonce` (as a rogue server would have captured it).
fn captured_proof(rogue: &Rogue, mode: Mode, nonce: &Nonce) -> protocol::Signature {
    ServiceKeys::derive("pw", &rogue.id).sign(&protocol::connect_message(&rogue.id, mode, nonce))
}

async fn agent_under_rogue() -> (Rogue, p2pnc::Agent) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let opts = ExposeOptions::new(&url, "svc", Some("pw")).unwrap();
    let (rogue, agent) = tokio::join!(Rogue::register(&listener), async {
        tokio::time::timeout(T, p2pnc::Agent::start(opts)).await
    });
    (rogue, agent.unwrap().unwrap())
}

#[tokio::test]
async fn an_agent_checks_every_order_itself_and_refuses_a_replayed_or_forged_one() {
    let (mut rogue, _agent) = agent_under_rogue().await;
    // No proof at all, and a proof made for another nonce.
    let nonce = Nonce::random();
    let session = rogue.order(Mode::Punch, &nonce, None).await;
    assert_eq!(rejection(rogue.answer().await, session), "secret rejected");
    let other = captured_proof(&rogue, Mode::Punch, &Nonce::random());
    let session = rogue.order(Mode::Punch, &nonce, Some(&other)).await;
    assert_eq!(rejection(rogue.answer().await, session), "secret rejected");
    // A plain-mode proof passed off as a punch-mode one.
    let plain = captured_proof(&rogue, Mode::Plain, &nonce);
    let session = rogue.order(Mode::Punch, &nonce, Some(&plain)).await;
    assert_eq!(rejection(rogue.answer().await, session), "secret rejected");
    // A real client's order is taken once (the agent punches: no rejection), never twice.
    let proof = captured_proof(&rogue, Mode::Punch, &nonce);
    rogue.order(Mode::Punch, &nonce, Some(&proof)).await;
    let replayed = rogue.order(Mode::Punch, &nonce, Some(&proof)).await;
    assert_eq!(
        rejection(rogue.answer().await, replayed),
        "replayed request"
    );
}

#[tokio::test]
async fn a_plain_mode_proof_captured_for_one_endpoint_opens_nothing_for_another() {
    let (mut rogue, _agent) = agent_under_rogue().await;
    let keys = ServiceKeys::derive("pw", &rogue.id);
    let challenge_of = |answer: AgentToServer, session: SessionId| match answer {
        AgentToServer::Challenge { session: s, nonce } if s == session.into() => nonce,
        other => panic!("expected a challenge, got {other:?}"),
    };
    let plain_proof = |session: SessionId, signature: protocol::Signature| json!({"type": "plain_proof", "session": session.to_hex(), "signature": signature.to_hex()});
    // The order names the attacker's endpoint (127.0.0.1:9); the answer a legitimate client
    // at 203.0.113.5:4000 gave to this very challenge does not open the agent to it.
    let nonce = Nonce::random();
    let proof = captured_proof(&rogue, Mode::Plain, &nonce);
    let session = rogue.order(Mode::Plain, &nonce, Some(&proof)).await;
    let challenge = challenge_of(rogue.answer().await, session);
    let elsewhere: SocketAddr = "203.0.113.5:4000".parse().unwrap();
    let msg = protocol::plain_message(&rogue.id, &nonce, &challenge, &elsewhere);
    let answer = plain_proof(session, keys.sign(&msg));
    rogue
        .ws
        .send(Message::text(answer.to_string()))
        .await
        .unwrap();
    let why = rejection(rogue.answer().await, session);
    assert_eq!(why, "the plain-mode answer does not verify");

    // The control: the answer for the endpoint the order names arms the agent.
    let nonce = Nonce::random();
    let proof = captured_proof(&rogue, Mode::Plain, &nonce);
    let session = rogue.order(Mode::Plain, &nonce, Some(&proof)).await;
    let challenge = challenge_of(rogue.answer().await, session);
    let here: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let msg = protocol::plain_message(&rogue.id, &nonce, &challenge, &here);
    let answer = plain_proof(session, keys.sign(&msg));
    rogue
        .ws
        .send(Message::text(answer.to_string()))
        .await
        .unwrap();
    match rogue.answer().await {
        AgentToServer::Armed { session: s } => assert_eq!(s, session.into()),
        other => panic!("expected the agent to arm, got {other:?}"),
    }
}
