//! The shared protocol vectors (`tests/fixtures/protocol/vectors.json`), also checked by the
//! Java tests: both implementations must compute and parse them identically.

use p2pnc_protocol::{
    self as protocol, AgentToServer, ConnectQuery, ExposeQuery, Nonce, Role, ServerToAgent,
    ServerToClient, SessionKeys, connect_proof,
};
use serde_json::Value;

fn vectors() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/protocol/vectors.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).expect("vectors.json")).expect("json")
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

#[test]
fn connect_proofs_match() {
    let v = vectors();
    let cases = v["connect_proof"].as_array().unwrap();
    assert!(cases.len() >= 3);
    for c in cases {
        let nonce: Nonce = parsed(c, "nonce");
        assert_eq!(nonce.to_string(), s(c, "nonce"), "nonces are lowercase hex");
        let proof = connect_proof(s(c, "secret"), s(c, "peer"), &nonce);
        assert_eq!(proof, s(c, "proof"), "{c}");
        assert!(protocol::verify_connect_proof(
            s(c, "secret"),
            s(c, "peer"),
            &nonce,
            &proof
        ));
    }
}

#[test]
fn owner_credentials_match() {
    let v = vectors();
    let cases = v["owner_credential"].as_array().unwrap();
    assert!(!cases.is_empty());
    for c in cases {
        let got = protocol::owner_credential(s(c, "secret"), s(c, "id"));
        assert_eq!(got, s(c, "owner"), "{c}");
    }
}

#[test]
fn hellos_match() {
    let v = vectors();
    for c in v["hello"].as_array().unwrap() {
        let keys = SessionKeys::derive(
            parsed(c, "session"),
            &parsed(c, "key"),
            c["secret"].as_str(),
        );
        assert_eq!(
            hex::encode(keys.hello(Role::Client)),
            s(c, "client_hello"),
            "{c}"
        );
        assert_eq!(
            hex::encode(keys.hello(Role::Agent)),
            s(c, "agent_hello"),
            "{c}"
        );
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
        assert_eq!(parsed.to_query(), s(c, "query"));
    }
    for c in q["connect"].as_array().unwrap() {
        let parsed = ConnectQuery::parse(s(c, "query")).unwrap();
        assert_eq!(parsed.peer.as_str(), s(c, "peer"));
        assert_eq!(parsed.nonce.to_string(), s(c, "nonce"));
        assert_eq!(parsed.proof.as_deref(), c["proof"].as_str());
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
