//! Property tests of the wire protocol: every message, query string, credential and URL survives
//! its round trip, and any single-bit change to a credential is refused.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use p2pnc::ServerUrl;
use p2pnc_protocol::{
    self as protocol, AgentToServer, Auth, ClientToServer, ConnectQuery, ErrorBody, ErrorCode,
    ExposeQuery, MAX_PRIVATE_CANDIDATES, Mapping, Mode, Nonce, ProbeToken, PunchOrder, RelayTicket,
    Role, ServerToAgent, ServerToClient, ServiceId, ServiceKeys, SessionId, SessionKey, SessionRef,
    Signature, Verifier,
};
use proptest::prelude::*;

fn addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddr::new(Ipv4Addr::from(ip).into(), port)),
        (any::<[u8; 16]>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddr::new(Ipv6Addr::from(ip).into(), port)),
    ]
}

/// Any text, short enough that every message stays under the size cap.
fn text() -> impl Strategy<Value = String> {
    ".{0,40}"
}

/// A valid id: 1 to 16 characters (at most 64 bytes) from the id character set.
fn id() -> impl Strategy<Value = String> {
    "[\\p{L}\\p{Nd}][\\p{L}\\p{Nd}\\p{Mn}\\p{Mc}._~-]{0,15}"
        .prop_filter("a valid id (NFC, nothing default-ignorable)", |s| {
            protocol::validate_id(s).is_ok()
        })
}

/// Characters an id must never contain: controls, spaces, format characters (zero-width and
/// bidirectional controls among them), and letters or marks that show nothing.
fn never_in_an_id() -> impl Strategy<Value = char> {
    prop_oneof![
        "[\\p{Cc}\\p{Cf}\\p{Z}\\p{Co}]".prop_map(|s| s.chars().next().unwrap()),
        prop::sample::select(vec![
            '\u{34F}',
            '\u{115F}',
            '\u{1160}',
            '\u{17B4}',
            '\u{180B}',
            '\u{3164}',
            '\u{FE00}',
            '\u{FE0F}',
            '\u{FFA0}',
            '\u{E0100}',
            '/',
            ' ',
            '@',
            '%',
            '?',
            '#',
        ]),
    ]
}

fn relay_ticket() -> impl Strategy<Value = RelayTicket> {
    any::<[u8; 16]>().prop_map(RelayTicket::from_bytes)
}

fn service_id() -> impl Strategy<Value = ServiceId> {
    id().prop_map(|id| ServiceId::new(&id).expect("a valid id"))
}

fn session_id() -> impl Strategy<Value = SessionId> {
    any::<[u8; 16]>().prop_map(SessionId::from_bytes)
}

fn nonce() -> impl Strategy<Value = Nonce> {
    any::<[u8; 16]>().prop_map(Nonce::from_bytes)
}

fn probe_token() -> impl Strategy<Value = ProbeToken> {
    any::<[u8; 16]>().prop_map(ProbeToken::from_bytes)
}

fn error_code() -> impl Strategy<Value = ErrorCode> {
    prop::sample::select(vec![
        ErrorCode::BadRequest,
        ErrorCode::NotFound,
        ErrorCode::UnsupportedVersion,
        ErrorCode::PeerOffline,
        ErrorCode::IdTaken,
        ErrorCode::SecretRequired,
        ErrorCode::SecretRejected,
        ErrorCode::PeerGone,
        ErrorCode::Busy,
        ErrorCode::NoDirectPath,
        ErrorCode::Unauthorized,
        ErrorCode::RateLimited,
        ErrorCode::Internal,
    ])
}

fn mapping() -> impl Strategy<Value = Mapping> {
    prop::sample::select(vec![
        Mapping::EndpointIndependent,
        Mapping::EndpointDependent,
        Mapping::Unknown,
    ])
}

fn strategy() -> impl Strategy<Value = protocol::Strategy> {
    prop::sample::select(vec![
        protocol::Strategy::Simultaneous,
        protocol::Strategy::BirthdayHard,
        protocol::Strategy::BirthdayEasy,
        protocol::Strategy::RelayOnly,
        protocol::Strategy::Mapped,
    ])
}

fn mode() -> impl Strategy<Value = Mode> {
    prop_oneof![Just(Mode::Punch), Just(Mode::Plain)]
}

fn auth() -> impl Strategy<Value = Auth> {
    prop_oneof![Just(Auth::Secret), Just(Auth::Public)]
}

fn punch() -> impl Strategy<Value = PunchOrder> {
    let ends = (
        session_id(),
        any::<[u8; 32]>().prop_map(SessionKey::from_bytes),
        addr(),
        proptest::collection::vec(addr(), 0..=MAX_PRIVATE_CANDIDATES),
        addr(),
        mode(),
        auth(),
    );
    let extras = (
        proptest::option::of(nonce()),
        proptest::option::of(any::<[u8; 64]>().prop_map(Signature::from_bytes)),
        strategy(),
        mapping(),
        mapping(),
        proptest::option::of(any::<u64>()),
        proptest::option::of(relay_ticket()),
        proptest::option::of(addr()),
        proptest::option::of(addr()),
        proptest::option::of(addr()),
    );
    (ends, extras).prop_map(
        |(
            (session, key, peer_public, peer_private, you, mode, auth),
            (
                nonce,
                proof,
                strategy,
                your_mapping,
                peer_mapping,
                relay_after_ms,
                relay_ticket,
                peer_mapped,
                peer_public6,
                you6,
            ),
        )| PunchOrder {
            session,
            key,
            peer_public,
            peer_private,
            you,
            mode,
            auth,
            nonce,
            proof,
            strategy,
            your_mapping,
            peer_mapping,
            relay_after_ms,
            relay_ticket,
            peer_mapped,
            peer_public6,
            you6,
            peer_key: None,
            relay_at: None,
        },
    )
}

fn server_to_agent() -> impl Strategy<Value = ServerToAgent> {
    prop_oneof![
        (service_id(), addr(), mapping()).prop_map(|(id, public, mapping)| {
            ServerToAgent::Registered {
                id,
                public,
                mapping,
            }
        }),
        punch().prop_map(ServerToAgent::Punch),
        (error_code(), text()).prop_map(|(code, message)| ServerToAgent::Error { code, message }),
    ]
}

fn server_to_client() -> impl Strategy<Value = ServerToClient> {
    prop_oneof![
        punch().prop_map(ServerToClient::Punch),
        (error_code(), text()).prop_map(|(code, message)| ServerToClient::Error { code, message }),
    ]
}

/// What an agent may name as its message's session: an id, or text that is none.
fn session_ref() -> impl Strategy<Value = SessionRef> {
    prop_oneof![
        session_id().prop_map(SessionRef::from),
        text().prop_filter_map("a session id", |t| {
            t.parse::<SessionId>()
                .is_err()
                .then_some(SessionRef::Other(t))
        }),
    ]
}

fn agent_msg() -> impl Strategy<Value = AgentToServer> {
    prop_oneof![
        (session_ref(), error_code(), text()).prop_map(|(session, code, message)| {
            AgentToServer::Reject {
                session,
                code,
                message,
            }
        }),
        session_ref().prop_map(|session| AgentToServer::Armed { session }),
    ]
}

fn client_msg() -> impl Strategy<Value = ClientToServer> {
    (
        text(),
        proptest::option::of(any::<u64>()),
        proptest::option::of(text()),
    )
        .prop_map(|(outcome, setup_ms, reason)| ClientToServer::Result {
            outcome,
            setup_ms,
            reason,
        })
}

fn expose_query() -> impl Strategy<Value = ExposeQuery> {
    (
        service_id(),
        auth(),
        proptest::collection::vec(addr(), 0..=MAX_PRIVATE_CANDIDATES),
        proptest::option::of(probe_token()),
        proptest::option::of(addr()),
        any::<bool>(),
        proptest::option::of(probe_token()),
    )
        .prop_map(
            |(id, auth, private, probe, mapped, takeover, probe_other)| ExposeQuery {
                // A secret agent names its verifier (one valid point: deriving one per case
                // would cost a PBKDF2 each); a public one none.
                verifier: (auth == Auth::Secret).then(verifier),
                key: None,
                id,
                auth,
                private,
                probe,
                probe_other,
                mapped,
                takeover,
            },
        )
}

fn connect_query() -> impl Strategy<Value = ConnectQuery> {
    (
        service_id(),
        nonce(),
        proptest::option::of(any::<[u8; 64]>().prop_map(Signature::from_bytes)),
        proptest::collection::vec(addr(), 0..=MAX_PRIVATE_CANDIDATES),
        mode(),
        proptest::option::of(probe_token()),
        proptest::option::of(probe_token()),
    )
        .prop_map(
            |(peer, nonce, proof, private, mode, probe, probe_other)| ConnectQuery {
                peer,
                nonce,
                proof,
                private,
                mode,
                probe,
                probe_other,
            },
        )
}

fn host() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?(\\.[a-z0-9]{1,10}){0,3}",
        any::<[u8; 4]>().prop_map(|ip| Ipv4Addr::from(ip).to_string()),
        any::<[u8; 16]>().prop_map(|ip| Ipv6Addr::from(ip).to_string()),
    ]
}

/// `bytes` with bit `bit` (counted over the whole slice) flipped.
/// One valid verifier, derived once.
fn verifier() -> Verifier {
    static V: std::sync::LazyLock<Verifier> =
        std::sync::LazyLock::new(|| ServiceKeys::derive("pw", "svc").verifier());
    *V
}

/// The keys of one secret, derived once (a PBKDF2 per case would make these tests slow).
fn service_keys() -> &'static ServiceKeys {
    static K: std::sync::LazyLock<ServiceKeys> =
        std::sync::LazyLock::new(|| ServiceKeys::derive("s3cret", "svc"));
    &K
}

fn flipped(bytes: &[u8], bit: usize) -> Vec<u8> {
    let mut out = bytes.to_vec();
    out[bit / 8] ^= 1 << (bit % 8);
    out
}

proptest! {
    #[test]
    fn server_messages_round_trip(to_agent in server_to_agent(), to_client in server_to_client()) {
        let text = protocol::encode(&to_agent);
        prop_assert_eq!(protocol::decode::<ServerToAgent>(&text), Ok(to_agent), "{}", text);
        let text = protocol::encode(&to_client);
        prop_assert_eq!(protocol::decode::<ServerToClient>(&text), Ok(to_client), "{}", text);
    }

    #[test]
    fn agent_messages_round_trip(msg in agent_msg()) {
        let text = protocol::encode(&msg);
        prop_assert_eq!(protocol::decode::<AgentToServer>(&text), Ok(msg), "{}", text);
    }

    #[test]
    fn client_messages_round_trip(msg in client_msg()) {
        let text = protocol::encode(&msg);
        prop_assert_eq!(protocol::decode::<ClientToServer>(&text), Ok(msg), "{}", text);
    }

    #[test]
    fn error_bodies_round_trip(error in error_code(), message in text()) {
        let body = ErrorBody { error, message };
        let text = serde_json::to_string(&body).unwrap();
        prop_assert_eq!(serde_json::from_str::<ErrorBody>(&text).unwrap(), body);
    }

    #[test]
    fn expose_queries_round_trip(q in expose_query()) {
        let text = q.to_query();
        prop_assert_eq!(ExposeQuery::parse(&text), Ok(q), "{}", text);
    }

    #[test]
    fn connect_queries_round_trip(q in connect_query()) {
        let text = q.to_query();
        prop_assert_eq!(ConnectQuery::parse(&text), Ok(q), "{}", text);
    }

    /// Whatever query string is accepted is written back as one that reads the same.
    #[test]
    fn accepted_queries_are_written_back_the_same(query in "[a-z=&%0-9A-F:,.]{0,120}") {
        if let Ok(q) = ExposeQuery::parse(&query) {
            prop_assert_eq!(ExposeQuery::parse(&q.to_query()), Ok(q));
        }
        if let Ok(q) = ConnectQuery::parse(&query) {
            prop_assert_eq!(ConnectQuery::parse(&q.to_query()), Ok(q));
        }
    }

    #[test]
    fn stream_handshakes_verify_and_refuse_any_flipped_bit(
        session in any::<[u8; 16]>(),
        key in any::<[u8; 32]>(),
        early in proptest::collection::vec(any::<u8>(), 0..64),
        bit in any::<prop::sample::Index>(),
    ) {
        use protocol::{
            AGENT_HEAD_LEN, CLIENT_HEAD_LEN, ClientHandshake, ClientHead, Flags, agent_reply,
        };
        let (session, key) = (SessionId::from_bytes(session), SessionKey::from_bytes(key));
        let psk = service_keys().psk(&session, &key);
        let flags = Flags { select: true, unencrypted: false, warm: false };
        let (hs, wire) = ClientHandshake::start(&session, &psk, None, flags, &early).unwrap();
        let head = ClientHead::parse(wire[..CLIENT_HEAD_LEN].try_into().unwrap()).unwrap();
        let msg1 = &wire[CLIENT_HEAD_LEN..];
        let reply = agent_reply(&head, msg1, &psk, None, false).unwrap();
        prop_assert_eq!(&reply.early, &early);
        // Any flipped bit of message 1 is refused by the agent...
        let bad1 = flipped(msg1, bit.index(msg1.len() * 8));
        prop_assert!(agent_reply(&head, &bad1, &psk, None, false).is_err());
        // ...and of message 2 by the client.
        let msg2 = &reply.reply[AGENT_HEAD_LEN..];
        let bad2 = flipped(msg2, bit.index(msg2.len() * 8));
        let (hs2, _) = ClientHandshake::start(&session, &psk, None, flags, &early).unwrap();
        prop_assert!(hs2.finish(&bad2).is_err());
        prop_assert!(hs.finish(msg2).is_ok());
        // Another session key: another PSK, nothing verifies.
        let other = service_keys().psk(&session, &SessionKey::from_bytes([0; 32]));
        prop_assume!(other != psk);
        prop_assert!(agent_reply(&head, msg1, &other, None, false).is_err());
    }

    #[test]
    fn connect_proofs_verify_and_refuse_any_flipped_bit(
        peer in id(),
        nonce in nonce(),
        plain in any::<bool>(),
        bit in 0..512usize,
    ) {
        let mode = if plain { Mode::Plain } else { Mode::Punch };
        let keys = service_keys();
        let message = protocol::connect_message(&peer, mode, &nonce);
        let proof = keys.sign(&message);
        prop_assert!(keys.verifier().verifies(&message, &proof));
        let bad = Signature::from_bytes(flipped(proof.as_bytes(), bit).try_into().unwrap());
        prop_assert!(!keys.verifier().verifies(&message, &bad));
        let other_mode = if plain { Mode::Punch } else { Mode::Plain };
        let other = protocol::connect_message(&peer, other_mode, &nonce);
        prop_assert!(!keys.verifier().verifies(&other, &proof), "the mode is bound");
        let q = ConnectQuery {
            peer: ServiceId::new(&peer).unwrap(),
            nonce,
            proof: Some(proof),
            private: vec![],
            mode,
            probe: None,
            probe_other: None,
        };
        prop_assert_eq!(ConnectQuery::parse(&q.to_query()).unwrap().proof, Some(proof));
    }

    #[test]
    fn server_urls_print_and_parse_back(
        host in host(),
        port in 1..=u16::MAX,
        tls in any::<bool>(),
        plain_scheme in prop::sample::select(vec!["", "http://", "ws://"]),
        tls_scheme in prop::sample::select(vec!["https://", "wss://"]),
        slash in prop::sample::select(vec!["", "/"]),
    ) {
        let url = ServerUrl { host, port, tls: tls.then_some(p2pnc::tls::Trust::WebRoots) };
        let shown = url.to_string();
        prop_assert_eq!(ServerUrl::parse(&shown).unwrap(), url.clone(), "{}", shown);
        let authority = shown.split_once("://").unwrap().1;
        let scheme = if tls { tls_scheme } else { plain_scheme };
        let written = format!("{scheme}{authority}{slash}");
        prop_assert_eq!(ServerUrl::parse(&written).unwrap(), url, "{}", written);
    }

    /// Whatever URL is accepted prints as one that parses to the same server.
    #[test]
    fn accepted_server_urls_print_as_themselves(
        text in "((https?|wss?)://)?[a-z0-9:.\\[\\]$]{1,10}(:[0-9]{1,5})?/?"
    ) {
        if let Ok(url) = ServerUrl::parse(&text) {
            prop_assert_eq!(ServerUrl::parse(&url.to_string()).unwrap(), url);
        }
    }

    #[test]
    fn probe_lines_round_trip(token in probe_token(), dialback in any::<bool>()) {
        let line = if dialback {
            protocol::probe_line_dialback(&token)
        } else {
            protocol::probe_line(&token)
        };
        prop_assert!(line.len() <= protocol::MAX_PROBE_LINE);
        let parsed = protocol::parse_probe_line(line.trim_end());
        prop_assert_eq!(parsed.map(|p| (p.token, p.dialback)), Some((token, dialback)));
    }

    #[test]
    fn relay_join_queries_round_trip(
        session in session_id(),
        agent in any::<bool>(),
        ticket in relay_ticket(),
    ) {
        let role = if agent { Role::Agent } else { Role::Client };
        let query = protocol::join_query(&session, role, &ticket);
        let want = protocol::JoinQuery { session, role, ticket: Some(ticket) };
        prop_assert_eq!(protocol::parse_join_query(&query), Ok(want));
    }

    /// A join whose ticket is anything but 16 bytes of hex carries no ticket (and is refused as
    /// unauthorized); no query makes the parser panic.
    #[test]
    fn relay_join_tickets_are_16_bytes_of_hex_or_nothing(
        session in session_id(),
        ticket in "[0-9a-fA-FxX%&=]{0,40}",
        junk in ".{0,60}",
    ) {
        let query = format!("v=1&session={session}&role=client&ticket={ticket}");
        let parsed = protocol::parse_join_query(&query);
        let is_ticket = ticket.len() == 32 && ticket.bytes().all(|b| b.is_ascii_hexdigit());
        match parsed {
            Ok(j) => prop_assert_eq!(j.ticket.is_some(), is_ticket, "{}", query),
            Err(e) => prop_assert!(ticket.contains('&'), "{}: {}", query, e),
        }
        let _ = protocol::parse_join_query(&junk);
    }

    /// Every id in the character set is accepted; one with any character outside it, wherever
    /// it stands, is refused.
    #[test]
    fn ids_outside_the_character_set_are_refused(
        good in id(),
        bad in never_in_an_id(),
        at in any::<prop::sample::Index>(),
    ) {
        prop_assert!(ServiceId::new(&good).is_ok(), "{:?}", good);
        let mut chars: Vec<char> = good.chars().collect();
        chars.insert(at.index(chars.len() + 1), bad);
        let spoiled: String = chars.into_iter().collect();
        prop_assert!(protocol::validate_id(&spoiled).is_err(), "{:?}", spoiled);
    }

    #[test]
    fn whoami_answers_round_trip(addr in addr()) {
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n{}",
            serde_json::json!({ "addr": addr })
        );
        prop_assert_eq!(protocol::whoami_addr(&answer).unwrap(), addr);
    }

    /// The end of a request head is seen however the bytes are split into reads.
    #[test]
    fn request_heads_end_wherever_the_reads_split(
        bytes in proptest::collection::vec(
            prop::sample::select(vec![b'\r', b'\n', b'G', b' ']), 0..40),
        size in 1..8usize,
    ) {
        use p2pnc::fuzzing::head_progress;
        let complete = bytes.windows(4).any(|w| w == b"\r\n\r\n");
        let pieces = bytes.chunks(size).fold(0, head_progress);
        prop_assert_eq!(pieces == 4, complete);
        prop_assert_eq!(pieces, head_progress(0, &bytes));
    }
}
