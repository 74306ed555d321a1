//! The shared protocol vectors (`tests/fixtures/protocol/vectors.json`), also checked by the
//! Java tests: both implementations must compute and parse them identically.

use p2pnc_protocol::{
    self as protocol, AGENT_HEAD_LEN, AgentToServer, CLIENT_HEAD_LEN, ClientHandshake, ClientHead,
    ConnectQuery, ExposeQuery, Flags, Mode, Nonce, RecordCipher, Role, ServerToAgent,
    ServerToClient, ServiceKeys, SessionId, SessionKey, StaticKey, agent_reply_with, record,
    seal_record,
};
use serde_json::Value;

const VECTORS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/protocol/vectors.json"
);

fn vectors() -> Value {
    serde_json::from_str(&std::fs::read_to_string(VECTORS).expect("vectors.json")).expect("json")
}

fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or_else(|| panic!("{key} in {v}"))
}

/// The value of `key`, parsed.
fn parsed<T: std::str::FromStr>(v: &Value, key: &str) -> T
where
    T::Err: std::fmt::Debug,
{
    s(v, key)
        .parse()
        .unwrap_or_else(|e| panic!("{key} in {v}: {e:?}"))
}

/// The cryptographic vectors, as this implementation computes them: keys derived from
/// secrets, the messages each signature covers, signatures (ECDSA with RFC 6979 nonces, so
/// Rust's are deterministic; other implementations need only verify them), and complete stream
/// handshakes with fixed ephemeral keys followed by records each way.
fn crypto_vectors() -> Value {
    let session = SessionId::from_bytes([0x0f; 16]);
    let key = SessionKey::from_bytes([0xa5; 32]);
    let mut keys = Vec::new();
    for (secret, id) in [
        ("s3cret", "streamserver"),
        ("pässwörd 密码", "流媒体"),
        ("", "x"),
    ] {
        let k = ServiceKeys::derive(secret, id);
        keys.push(serde_json::json!({
            "secret": secret, "id": id,
            "scalar": hex::encode(k.scalar()),
            "verifier": k.verifier().to_hex(),
            "stream_key": hex::encode(k.stream_key()),
            "session": session.to_hex(), "session_key": key.to_hex(),
            "psk": hex::encode(k.psk(&session, &key)),
        }));
    }
    let public_psk = serde_json::json!({
        "session": session.to_hex(), "session_key": key.to_hex(),
        "psk": hex::encode(protocol::public_psk(&session, &key)),
    });
    let nonce: Nonce = "00112233445566778899aabbccddeeff".parse().unwrap();
    let challenge: Nonce = "ffeeddccbbaa99887766554433221100".parse().unwrap();
    let you: std::net::SocketAddr = "[2001:db8::7]:40000".parse().unwrap();
    let messages = [
        (
            "connect",
            protocol::connect_message("streamserver", Mode::Punch, &nonce),
        ),
        (
            "connect",
            protocol::connect_message("流媒体", Mode::Plain, &nonce),
        ),
        (
            "register",
            protocol::register_message("streamserver", &challenge),
        ),
        (
            "plain",
            protocol::plain_message("streamserver", &nonce, &challenge, &you),
        ),
    ];
    let k = ServiceKeys::derive("s3cret", "streamserver");
    let mut signatures = Vec::new();
    for (kind, message) in &messages {
        let sig = k.sign(message);
        signatures.push(serde_json::json!({
            "kind": kind, "message": String::from_utf8(message.clone()).unwrap(),
            "verifier": k.verifier().to_hex(), "signature": sig.to_hex(), "valid": true,
        }));
        let mut bad = *sig.as_bytes();
        bad[10] ^= 0x20;
        signatures.push(serde_json::json!({
            "kind": kind, "message": String::from_utf8(message.clone()).unwrap(),
            "verifier": k.verifier().to_hex(), "signature": hex::encode(bad), "valid": false,
        }));
    }
    let signed = serde_json::json!([
        {"kind": "connect", "id": "streamserver", "mode": "punch", "nonce": nonce.to_hex(),
         "message": String::from_utf8(messages[0].1.clone()).unwrap()},
        {"kind": "connect", "id": "流媒体", "mode": "plain", "nonce": nonce.to_hex(),
         "message": String::from_utf8(messages[1].1.clone()).unwrap()},
        {"kind": "register", "id": "streamserver", "challenge": challenge.to_hex(),
         "message": String::from_utf8(messages[2].1.clone()).unwrap()},
        {"kind": "plain", "id": "streamserver", "nonce": nonce.to_hex(),
         "challenge": challenge.to_hex(), "endpoint": you.to_string(),
         "message": String::from_utf8(messages[3].1.clone()).unwrap()},
    ]);
    let psk = k.psk(&session, &key);
    let agent_static = StaticKey::from_private(&[0x5a; 32]).unwrap();
    let noise = [
        handshake_vector(
            &session,
            &psk,
            None,
            Flags {
                select: true,
                unencrypted: false,
                warm: false,
            },
            b"GET / HTTP/1.1\r\n\r\n",
        ),
        handshake_vector(
            &session,
            &psk,
            None,
            Flags {
                select: false,
                unencrypted: true,
                warm: false,
            },
            b"",
        ),
        handshake_vector(
            &session,
            &psk,
            Some(&agent_static),
            Flags {
                select: true,
                unencrypted: false,
                warm: false,
            },
            b"hello",
        ),
    ];
    serde_json::json!({
        "keys": keys, "public_psk": public_psk, "signed_messages": signed,
        "signatures": signatures, "noise": noise,
    })
}

/// One handshake with fixed ephemeral keys, then a data and a close record each way.
fn handshake_vector(
    session: &SessionId,
    psk: &[u8; 32],
    agent_static: Option<&StaticKey>,
    flags: Flags,
    early: &[u8],
) -> Value {
    let (ce, ae) = ([0x11u8; 32], [0x22u8; 32]);
    let pin = agent_static.map(|k| k.public());
    let (hs, msg1) =
        ClientHandshake::start_with(session, psk, pin, flags, early, Some(&ce)).unwrap();
    let head = ClientHead::parse(msg1[..CLIENT_HEAD_LEN].try_into().unwrap()).unwrap();
    let allow = flags.unencrypted;
    let reply = agent_reply_with(
        &head,
        &msg1[CLIENT_HEAD_LEN..],
        psk,
        agent_static,
        allow,
        Some(&ae),
    )
    .unwrap();
    let (ck, granted) = hs.finish(&reply.reply[AGENT_HEAD_LEN..]).unwrap();
    assert_eq!(granted.unencrypted, allow);
    let (mut c_send, mut a_send) = (
        RecordCipher::new(&ck.send),
        RecordCipher::new(&reply.keys.send),
    );
    let mut client_records = Vec::new();
    if !flags.select {
        seal_record(&mut c_send, record::SELECT, &[], &mut client_records);
    }
    seal_record(&mut c_send, record::DATA, b"ping", &mut client_records);
    seal_record(&mut c_send, record::CLOSE, &[], &mut client_records);
    let mut agent_records = Vec::new();
    seal_record(&mut a_send, record::DATA, b"pong", &mut agent_records);
    seal_record(&mut a_send, record::CLOSE, &[], &mut agent_records);
    serde_json::json!({
        "pattern": if agent_static.is_some() { protocol::NOISE_NK } else { protocol::NOISE_NN },
        "session": session.to_hex(), "psk": hex::encode(psk),
        "client_ephemeral": hex::encode(ce), "agent_ephemeral": hex::encode(ae),
        "agent_static": agent_static.map(|k| hex::encode(k.private())),
        "agent_public": agent_static.map(|k| hex::encode(k.public())),
        "flags": {"select": flags.select, "unencrypted": flags.unencrypted},
        "early": hex::encode(early), "agent_allows_unencrypted": allow,
        "message1": hex::encode(&msg1), "message2": hex::encode(&reply.reply),
        "client_send_key": hex::encode(ck.send), "client_recv_key": hex::encode(ck.recv),
        "client_records": hex::encode(client_records), "agent_records": hex::encode(agent_records),
    })
}

/// The crypto sections of the vectors are what this implementation computes. With
/// `P2PNC_WRITE_VECTORS=1` the file is rewritten instead (after a deliberate change).
#[test]
fn crypto_vectors_are_current() {
    let computed = crypto_vectors();
    let mut file = vectors();
    if std::env::var_os("P2PNC_WRITE_VECTORS").is_some() {
        for (k, v) in computed.as_object().unwrap() {
            file[k] = v.clone();
        }
        let text = serde_json::to_string_pretty(&file).unwrap() + "\n";
        std::fs::write(VECTORS, text).unwrap();
        return;
    }
    for (k, v) in computed.as_object().unwrap() {
        assert_eq!(
            &file[k], v,
            "vectors.json section {k} is stale: rerun with P2PNC_WRITE_VECTORS=1"
        );
    }
}

#[test]
fn signatures_verify_as_listed() {
    let v = vectors();
    for c in v["signatures"].as_array().unwrap() {
        let verifier: protocol::Verifier = parsed(c, "verifier");
        let sig: protocol::Signature = parsed(c, "signature");
        let ok = verifier.verifies(s(c, "message").as_bytes(), &sig);
        assert_eq!(ok, c["valid"].as_bool().unwrap(), "{c}");
    }
}

#[test]
fn messages_parse_and_reserialise_identically() {
    let v = vectors();
    for m in v["server_messages"].as_array().unwrap() {
        let parsed: ServerToAgent = protocol::decode(&m.to_string()).unwrap();
        let back: Value = serde_json::from_str(&protocol::encode(&parsed)).unwrap();
        assert_eq!(&back, m);
        // Every message but a registration may go to a client too.
        if m["type"] != "registered" {
            let parsed: ServerToClient = protocol::decode(&m.to_string()).unwrap();
            let back: Value = serde_json::from_str(&protocol::encode(&parsed)).unwrap();
            assert_eq!(&back, m);
        }
    }
    for m in v["agent_messages"].as_array().unwrap() {
        let parsed: AgentToServer = protocol::decode(&m.to_string()).unwrap();
        let back: Value = serde_json::from_str(&protocol::encode(&parsed)).unwrap();
        assert_eq!(&back, m);
    }
    for m in v["server_to_agent_only"].as_array().unwrap() {
        let parsed: ServerToAgent = protocol::decode(&m.to_string()).unwrap();
        let back: Value = serde_json::from_str(&protocol::encode(&parsed)).unwrap();
        assert_eq!(&back, m);
        assert!(
            protocol::decode::<ServerToClient>(&m.to_string()).is_err(),
            "{m}"
        );
    }
    for m in v["server_to_client_only"].as_array().unwrap() {
        let parsed: ServerToClient = protocol::decode(&m.to_string()).unwrap();
        let back: Value = serde_json::from_str(&protocol::encode(&parsed)).unwrap();
        assert_eq!(&back, m);
    }
    for m in v["client_messages"].as_array().unwrap() {
        let parsed: protocol::ClientToServer = protocol::decode(&m.to_string()).unwrap();
        let back: Value = serde_json::from_str(&protocol::encode(&parsed)).unwrap();
        assert_eq!(&back, m);
    }
}

#[test]
fn bad_messages_are_rejected_with_a_reason() {
    let v = vectors();
    for m in v["bad_server_messages"].as_array().unwrap() {
        let text = m.as_str().unwrap();
        let errors = [
            protocol::decode::<ServerToAgent>(text).unwrap_err(),
            protocol::decode::<ServerToClient>(text).unwrap_err(),
        ];
        for err in errors.map(|e| e.to_string()) {
            assert!(
                err.starts_with("malformed message") || err.contains("bytes"),
                "{err}"
            );
        }
    }
}

#[test]
fn query_strings_match() {
    let v = vectors();
    let q = &v["queries"];
    for c in q["expose"].as_array().unwrap() {
        let parsed = ExposeQuery::parse(s(c, "query")).unwrap();
        assert_eq!(parsed.id.as_str(), s(c, "id"));
        assert_eq!(serde_json::to_value(parsed.auth).unwrap(), c["auth"]);
        assert_eq!(serde_json::to_value(&parsed.private).unwrap(), c["private"]);
        assert_eq!(
            parsed.verifier.map(|v| v.to_hex()).as_deref(),
            c["verifier"].as_str()
        );
        assert_eq!(parsed.takeover, c["takeover"].as_bool().unwrap_or(true));
        assert_eq!(parsed.to_query(), s(c, "query"));
    }
    for c in q["connect"].as_array().unwrap() {
        let parsed = ConnectQuery::parse(s(c, "query")).unwrap();
        assert_eq!(parsed.peer.as_str(), s(c, "peer"));
        assert_eq!(parsed.nonce.to_string(), s(c, "nonce"));
        assert_eq!(
            parsed.proof.map(|p| p.to_hex()).as_deref(),
            c["proof"].as_str()
        );
        assert_eq!(serde_json::to_value(parsed.mode).unwrap(), c["mode"]);
        assert_eq!(serde_json::to_value(&parsed.private).unwrap(), c["private"]);
        let token = |t: Option<protocol::ProbeToken>| t.map(|t| t.to_hex());
        assert_eq!(token(parsed.probe).as_deref(), c["probe"].as_str());
        assert_eq!(
            token(parsed.probe_other).as_deref(),
            c["probe_other"].as_str()
        );
        assert_eq!(parsed.to_query(), s(c, "query"));
    }
    for c in q["bad"].as_array().unwrap() {
        let err = match s(c, "endpoint") {
            "connect" => ConnectQuery::parse(s(c, "query")).unwrap_err(),
            _ => ExposeQuery::parse(s(c, "query")).unwrap_err(),
        };
        assert_eq!(serde_json::to_value(err.code).unwrap(), c["error"], "{c}");
    }
}

#[test]
fn error_codes_match() {
    let v = vectors();
    let listed: Vec<&str> = v["error_codes"]
        .as_array()
        .expect("error_codes")
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    let ours: Vec<String> = protocol::ErrorCode::ALL
        .iter()
        .map(|c| c.to_string())
        .collect();
    assert_eq!(listed, ours, "the vectors list every error code, in order");
}

#[test]
fn defaults_match() {
    use p2pnc::defaults;
    let v = vectors();
    let d = &v["defaults"];
    let n = |k: &str| d[k].as_u64().unwrap_or_else(|| panic!("defaults.{k}"));
    let ms = |t: std::time::Duration| t.as_millis() as u64;
    assert_eq!(n("server_port"), u64::from(defaults::SERVER_PORT));
    assert_eq!(n("server_port"), u64::from(protocol::DEFAULT_SERVER_PORT));
    assert_eq!(n("max_message_bytes"), protocol::MAX_MESSAGE_BYTES as u64);
    assert_eq!(n("max_id_bytes"), protocol::MAX_ID_BYTES as u64);
    assert_eq!(
        n("max_private_candidates"),
        protocol::MAX_PRIVATE_CANDIDATES as u64
    );
    assert_eq!(n("punch_timeout_ms"), ms(defaults::PUNCH_TIMEOUT));
    assert_eq!(n("punch_ttl"), u64::from(defaults::PUNCH_TTL));
    assert_eq!(n("retry_min_ms"), ms(defaults::RETRY_MIN));
    assert_eq!(n("retry_max_ms"), ms(defaults::RETRY_MAX));
    assert_eq!(n("early_data_max"), defaults::EARLY_DATA_MAX as u64);
    assert_eq!(n("hard_sockets"), defaults::HARD_SOCKETS as u64);
    assert_eq!(n("easy_probes"), defaults::EASY_PROBES as u64);
    assert_eq!(n("max_relay_after_ms"), ms(defaults::MAX_RELAY_AFTER));
    assert_eq!(n("server_timeout_ms"), ms(defaults::SERVER_TIMEOUT));
    // The options a caller gets are the defaults.
    let opts = p2pnc::ConnectOptions::new("http://h", "x", None).unwrap();
    assert_eq!(n("punch_timeout_ms"), ms(opts.punch.timeout));
    // The punch TTL is learnt; until a sweep has found the NATs in front, it is the default.
    assert_eq!(opts.punch.ttl, p2pnc::PunchTtl::Learned);
    let unknown = p2pnc::NatDepth::default();
    assert_eq!(n("punch_ttl"), u64::from(unknown.low_ttl(false)));
    assert_eq!(n("ipv6_head_start_ms"), ms(defaults::IPV6_HEAD_START));
}

#[test]
fn relay_joins_match() {
    let v = vectors();
    let cases = v["relay_join"].as_array().expect("relay_join");
    assert!(cases.len() >= 2);
    for c in cases {
        let role = match s(c, "role") {
            "client" => Role::Client,
            _ => Role::Agent,
        };
        let (session, ticket) = (parsed(c, "session"), parsed(c, "ticket"));
        let query = protocol::join_query(&session, role, &ticket);
        assert_eq!(query, s(c, "query"), "{c}");
        let join = protocol::parse_join_query(&query).unwrap();
        assert_eq!(
            (join.session, join.role, join.ticket),
            (session, role, Some(ticket))
        );
    }
}

#[test]
fn ids_match() {
    let v = vectors();
    let ids = &v["ids"];
    for good in ids["valid"].as_array().expect("ids.valid") {
        let id = good.as_str().unwrap();
        assert_eq!(protocol::validate_id(id), Ok(()), "{id:?}");
    }
    for bad in ids["invalid"].as_array().expect("ids.invalid") {
        let id = bad.as_str().unwrap();
        assert!(protocol::validate_id(id).is_err(), "{id:?}");
    }
}

#[test]
fn private_candidates_match() {
    let v = vectors();
    let cases = v["private_candidates"]
        .as_array()
        .expect("private_candidates");
    assert!(cases.len() >= 10);
    for c in cases {
        let allowed =
            protocol::private_candidate_allowed(parsed(c, "candidate"), parsed(c, "seen_from"));
        assert_eq!(allowed, c["allowed"].as_bool().unwrap(), "{c}");
    }
}
