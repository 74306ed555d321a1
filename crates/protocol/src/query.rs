//! The query strings of the two WebSocket endpoints (`/v1/expose`, `/v1/connect`):
//! `application/x-www-form-urlencoded`, UTF-8, percent-encoded.

use std::net::SocketAddr;

use crate::error::ErrorCode;
use crate::ids::{AgentKey, Nonce, ProbeToken, ServiceId, Signature, Verifier};
use crate::order::{Auth, Mode};
use crate::{MAX_ID_BYTES, MAX_MESSAGE_BYTES, MAX_PRIVATE_CANDIDATES, PROTOCOL_VERSION};

/// Parsed query string of `GET /v1/expose`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExposeQuery {
    /// The id to register.
    pub id: ServiceId,
    /// Whether clients must prove a secret.
    pub auth: Auth,
    /// The agent's private candidates.
    pub private: Vec<SocketAddr>,
    /// Token of the probe the agent sent from its punch port (see [`crate::probe_line`]).
    pub probe: Option<ProbeToken>,
    /// Token of the probe the agent sent from its punch port of the other address family
    /// (IPv6 when the control connection is IPv4, and the reverse), if it has one.
    pub probe_other: Option<ProbeToken>,
    /// The service's verifier (see [`crate::ServiceKeys`]): the key the server checks the
    /// registration challenge and every connect proof with, and the id's owner identity.
    /// Required with `auth=secret`, absent with `auth=public`.
    pub verifier: Option<Verifier>,
    /// The agent's static Noise key (`expose --key`), for clients that pin it.
    pub key: Option<AgentKey>,
    /// Whether this registration replaces an online one with the same verifier (an owner's
    /// restart: the default). `takeover=0`: wait while the other is online (an agent that
    /// was itself replaced, or a standby).
    pub takeover: bool,
    /// The public endpoint the agent's router forwards to its punch port (PCP, NAT-PMP or
    /// UPnP-IGD), if it got one.
    pub mapped: Option<SocketAddr>,
}

/// Parsed query string of `GET /v1/connect`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectQuery {
    /// The id to reach.
    pub peer: ServiceId,
    /// 16 random bytes, fresh for every request.
    pub nonce: Nonce,
    /// Proof of the secret: a signature of [`crate::connect_message`] with the service's key;
    /// absent when the client has no secret.
    pub proof: Option<Signature>,
    /// The client's private candidates.
    pub private: Vec<SocketAddr>,
    /// Punch (default) or plain.
    pub mode: Mode,
    /// Token of the probe the client sent from its punch port (see [`crate::probe_line`]).
    pub probe: Option<ProbeToken>,
    /// Token of the probe the client sent from its punch port of the other address family,
    /// if it has one.
    pub probe_other: Option<ProbeToken>,
}

/// A query string that cannot be accepted, with the reason for a person.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct QueryError {
    /// Error code to answer with.
    pub code: ErrorCode,
    /// One line for a person.
    pub message: String,
}

fn bad(message: impl Into<String>) -> QueryError {
    QueryError {
        code: ErrorCode::BadRequest,
        message: message.into(),
    }
}

/// Splits an `application/x-www-form-urlencoded` query into decoded pairs.
fn parse_pairs(query: &str) -> Result<Vec<(String, String)>, QueryError> {
    if query.len() > MAX_MESSAGE_BYTES {
        return Err(bad("query string too long"));
    }
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((percent_decode(k)?, percent_decode(v)?))
        })
        .collect()
}

fn percent_decode(s: &str) -> Result<String, QueryError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| bad("malformed percent-encoding in query"))?;
                out.push(hex);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| bad("query is not valid UTF-8"))
}

/// Percent-encodes a query value (everything but unreserved characters).
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Punctuation an id may contain besides letters, digits and combining marks: the unreserved
/// characters of URLs (RFC 3986), so an id needs no escaping in a URL path.
pub const ID_PUNCTUATION: [char; 4] = ['-', '_', '.', '~'];

/// Checks an id: 1 to 64 bytes of UTF-8 in Unicode NFC, starting with a letter or a decimal
/// digit, then letters (L*), decimal digits (Nd), combining marks (Mn, Mc) and `-` `_` `.` `~`;
/// nothing default-ignorable (zero-width joiners, variation selectors, Hangul fillers). So no
/// spaces, control, format or bidirectional characters, and one spelling per id: ids that
/// look alike by invisible characters cannot be registered.
pub fn validate_id(id: &str) -> Result<(), QueryError> {
    use icu_normalizer::ComposingNormalizerBorrowed;
    use icu_properties::props::{DefaultIgnorableCodePoint, GeneralCategory as Gc};
    use icu_properties::{CodePointMapData, CodePointSetData};
    if id.is_empty() || id.len() > MAX_ID_BYTES {
        return Err(bad(format!(
            "id must be 1 to {MAX_ID_BYTES} bytes of UTF-8"
        )));
    }
    let category = CodePointMapData::<Gc>::new();
    let ignorable = CodePointSetData::new::<DefaultIgnorableCodePoint>();
    for (i, c) in id.chars().enumerate() {
        let letter_or_digit = matches!(
            category.get(c),
            Gc::Lu | Gc::Ll | Gc::Lt | Gc::Lm | Gc::Lo | Gc::Nd
        );
        let mark = matches!(category.get(c), Gc::Mn | Gc::Mc);
        let ok = if i == 0 {
            letter_or_digit
        } else {
            letter_or_digit || mark || ID_PUNCTUATION.contains(&c)
        };
        if !ok || ignorable.contains(c) {
            let what = if i == 0 {
                "must start with a letter or digit"
            } else {
                "may only contain letters, digits, combining marks and - _ . ~"
            };
            return Err(bad(format!("id {what} (found U+{:04X})", u32::from(c))));
        }
    }
    if !ComposingNormalizerBorrowed::new_nfc().is_normalized(id) {
        return Err(bad("id must be in Unicode normalization form C (NFC)"));
    }
    Ok(())
}

fn check_version(v: Option<&str>) -> Result<(), QueryError> {
    match v {
        Some(v) if v == PROTOCOL_VERSION.to_string() => Ok(()),
        Some(other) => Err(QueryError {
            code: ErrorCode::UnsupportedVersion,
            message: format!(
                "protocol version {other} is not supported: this server speaks \
                 {PROTOCOL_VERSION}; upgrade the client or agent"
            ),
        }),
        None => Err(bad("missing v (protocol version)")),
    }
}

fn parse_candidates(v: &str) -> Result<Vec<SocketAddr>, QueryError> {
    let list: Vec<SocketAddr> = v
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse()
                .map_err(|_| bad(format!("bad candidate address '{s}'")))
        })
        .collect::<Result<_, _>>()?;
    if list.len() > MAX_PRIVATE_CANDIDATES {
        return Err(bad(format!(
            "at most {MAX_PRIVATE_CANDIDATES} private candidates"
        )));
    }
    Ok(list)
}

/// Parses the hex value `name` into one of the protocol's byte types.
fn parse_hex<T: std::str::FromStr>(name: &str, v: &str, bytes: usize) -> Result<T, QueryError> {
    v.parse()
        .map_err(|_| bad(format!("{name} must be {bytes} bytes of hex")))
}

/// Formats candidates as the `private` query value.
pub fn format_candidates(list: &[SocketAddr]) -> String {
    list.iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

impl ExposeQuery {
    /// Parses the query string of an expose request.
    pub fn parse(query: &str) -> Result<Self, QueryError> {
        let (mut v, mut id, mut auth, mut private) = (None, None, None, Vec::new());
        let (mut probe, mut verifier, mut key, mut mapped) = (None, None, None, None);
        let mut probe_other = None;
        let mut takeover = true;
        for (k, val) in parse_pairs(query)? {
            match k.as_str() {
                "probe" if !val.is_empty() => probe = Some(val),
                "probe_other" if !val.is_empty() => probe_other = Some(val),
                "verifier" if !val.is_empty() => verifier = Some(val),
                "key" if !val.is_empty() => key = Some(val),
                "takeover" => {
                    takeover = match val.as_str() {
                        "1" => true,
                        "0" => false,
                        _ => return Err(bad("takeover must be 0 or 1")),
                    }
                }
                "mapped" if !val.is_empty() => {
                    mapped = Some(
                        val.parse::<SocketAddr>()
                            .map_err(|_| bad(format!("bad mapped address '{val}'")))?,
                    )
                }
                "v" => v = Some(val),
                "id" => id = Some(val),
                "auth" => {
                    auth = Some(match val.as_str() {
                        "secret" => Auth::Secret,
                        "public" => Auth::Public,
                        _ => return Err(bad("auth must be 'secret' or 'public'")),
                    })
                }
                "private" => private = parse_candidates(&val)?,
                _ => {}
            }
        }
        check_version(v.as_deref())?;
        let id = ServiceId::new(&id.ok_or_else(|| bad("missing id"))?)?;
        let probe = parse_token("probe", probe)?;
        let probe_other = parse_token("probe_other", probe_other)?;
        let verifier: Option<Verifier> = verifier
            .map(|p| parse_hex("verifier", &p, Verifier::LEN))
            .transpose()?;
        let key = key
            .map(|p| parse_hex("key", &p, AgentKey::LEN))
            .transpose()?;
        let auth = auth.ok_or_else(|| bad("missing auth ('secret' or 'public')"))?;
        match (auth, &verifier) {
            (Auth::Secret, None) => return Err(bad("auth=secret needs a verifier")),
            (Auth::Public, Some(_)) => return Err(bad("auth=public takes no verifier")),
            (_, Some(v)) if !v.is_valid() => {
                return Err(bad("verifier is not a P-256 point"));
            }
            _ => {}
        }
        Ok(ExposeQuery {
            id,
            auth,
            private,
            probe,
            probe_other,
            verifier,
            key,
            mapped,
            takeover,
        })
    }

    /// Formats the query string (without `?`).
    pub fn to_query(&self) -> String {
        let mut q = format!(
            "v={PROTOCOL_VERSION}&id={}&auth={}&private={}",
            percent_encode(&self.id),
            self.auth.as_str(),
            percent_encode(&format_candidates(&self.private))
        );
        push_tokens(&mut q, self.probe.as_ref(), self.probe_other.as_ref());
        if let Some(v) = &self.verifier {
            q.push_str("&verifier=");
            q.push_str(&v.to_hex());
        }
        if let Some(k) = &self.key {
            q.push_str("&key=");
            q.push_str(&k.to_hex());
        }
        if !self.takeover {
            q.push_str("&takeover=0");
        }
        if let Some(m) = &self.mapped {
            q.push_str("&mapped=");
            q.push_str(&percent_encode(&m.to_string()));
        }
        q
    }
}

impl ConnectQuery {
    /// Parses the query string of a connect request.
    pub fn parse(query: &str) -> Result<Self, QueryError> {
        let (mut v, mut peer, mut nonce, mut proof) = (None, None, None, None);
        let (mut private, mut mode, mut probe, mut probe_other) =
            (Vec::new(), Mode::Punch, None, None);
        for (k, val) in parse_pairs(query)? {
            match k.as_str() {
                "probe" if !val.is_empty() => probe = Some(val),
                "probe_other" if !val.is_empty() => probe_other = Some(val),
                "v" => v = Some(val),
                "peer" => peer = Some(val),
                "nonce" => nonce = Some(val),
                "proof" if !val.is_empty() => proof = Some(val),
                "private" => private = parse_candidates(&val)?,
                "mode" => {
                    mode = match val.as_str() {
                        "punch" => Mode::Punch,
                        "plain" => Mode::Plain,
                        _ => return Err(bad("mode must be 'punch' or 'plain'")),
                    }
                }
                _ => {}
            }
        }
        check_version(v.as_deref())?;
        let peer = ServiceId::new(&peer.ok_or_else(|| bad("missing peer"))?)?;
        let nonce = nonce.ok_or_else(|| bad("missing nonce"))?;
        let nonce = parse_hex("nonce", &nonce, Nonce::LEN)?;
        let proof = proof
            .map(|p| parse_hex("proof", &p, Signature::LEN))
            .transpose()?;
        let probe = parse_token("probe", probe)?;
        let probe_other = parse_token("probe_other", probe_other)?;
        Ok(ConnectQuery {
            peer,
            nonce,
            proof,
            private,
            mode,
            probe,
            probe_other,
        })
    }

    /// Formats the query string (without `?`).
    pub fn to_query(&self) -> String {
        let mut q = format!(
            "v={PROTOCOL_VERSION}&peer={}&nonce={}&mode={}&private={}",
            percent_encode(&self.peer),
            self.nonce,
            self.mode.as_str(),
            percent_encode(&format_candidates(&self.private))
        );
        if let Some(p) = &self.proof {
            q.push_str("&proof=");
            q.push_str(&p.to_hex());
        }
        push_tokens(&mut q, self.probe.as_ref(), self.probe_other.as_ref());
        q
    }
}

/// Parses the probe token `name`, if given.
fn parse_token(name: &str, v: Option<String>) -> Result<Option<ProbeToken>, QueryError> {
    v.map(|p| parse_hex(name, &p, ProbeToken::LEN)).transpose()
}

/// Appends `&probe=` and `&probe_other=` for the tokens there are.
fn push_tokens(q: &mut String, probe: Option<&ProbeToken>, other: Option<&ProbeToken>) {
    for (key, token) in [("probe", probe), ("probe_other", other)] {
        if let Some(t) = token {
            q.push_str(&format!("&{key}={}", t.to_hex()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ServiceKeys;

    #[test]
    fn expose_query_round_trips() {
        let id = "stream-server.é";
        let q = ExposeQuery {
            id: ServiceId::new(id).unwrap(),
            auth: Auth::Secret,
            private: vec![
                "10.0.0.2:4000".parse().unwrap(),
                "[fe80::1]:5".parse().unwrap(),
            ],
            probe: Some(ProbeToken::from_bytes([0x0a; 16])),
            probe_other: Some(ProbeToken::from_bytes([0x0b; 16])),
            verifier: Some(ServiceKeys::derive("pw", id).verifier()),
            key: None,
            takeover: false,
            mapped: Some("198.51.100.2:40000".parse().unwrap()),
        };
        assert_eq!(ExposeQuery::parse(&q.to_query()).unwrap(), q);
        assert!(
            q.to_query().ends_with("&mapped=198.51.100.2%3A40000"),
            "{}",
            q.to_query()
        );
        let without = ExposeQuery { mapped: None, ..q };
        assert!(!without.to_query().contains("mapped"));
        assert_eq!(ExposeQuery::parse(&without.to_query()).unwrap(), without);
        // Empty means none; anything else must be one IP:PORT.
        let base = "v=2&id=a&auth=public&private=";
        assert_eq!(
            ExposeQuery::parse(&format!("{base}&mapped="))
                .unwrap()
                .mapped,
            None
        );
        let v6 = ExposeQuery::parse(&format!("{base}&mapped=%5B2001%3Adb8%3A%3A1%5D%3A7")).unwrap();
        assert_eq!(v6.mapped, Some("[2001:db8::1]:7".parse().unwrap()));
        for bad in ["1.2.3.4", "1.2.3.4:5,6.7.8.9:10", "x:1"] {
            let err = ExposeQuery::parse(&format!("{base}&mapped={bad}")).unwrap_err();
            assert_eq!(err.code, ErrorCode::BadRequest);
            assert!(err.message.contains("mapped"), "{}", err.message);
        }
    }

    #[test]
    fn connect_query_round_trips_and_validates() {
        let q = ConnectQuery {
            peer: ServiceId::new("streamserver").unwrap(),
            nonce: "00112233445566778899aabbccddeeff".parse().unwrap(),
            proof: Some(Signature::from_bytes([0xab; 64])),
            private: vec![],
            mode: Mode::Plain,
            probe: None,
            probe_other: None,
        };
        assert_eq!(ConnectQuery::parse(&q.to_query()).unwrap(), q);
        let both = ConnectQuery {
            probe: Some(ProbeToken::from_bytes([1; 16])),
            probe_other: Some(ProbeToken::from_bytes([2; 16])),
            ..q.clone()
        };
        assert!(
            both.to_query().ends_with(&format!(
                "&probe={}&probe_other={}",
                "01".repeat(16),
                "02".repeat(16)
            )),
            "{}",
            both.to_query()
        );
        assert_eq!(ConnectQuery::parse(&both.to_query()).unwrap(), both);
        let err =
            ConnectQuery::parse("v=2&peer=x&nonce=00112233445566778899aabbccddeeff&probe_other=ab")
                .unwrap_err();
        assert_eq!(err.message, "probe_other must be 16 bytes of hex");
        let err = ConnectQuery::parse("v=2&peer=x&nonce=zz").unwrap_err();
        assert_eq!(err.code, ErrorCode::BadRequest);
        assert!(err.message.contains("nonce"), "{}", err.message);
        let err = ConnectQuery::parse("v=1&peer=x&nonce=00").unwrap_err();
        assert_eq!(err.code, ErrorCode::UnsupportedVersion);
        assert!(err.message.contains("upgrade"), "{}", err.message);
        assert!(ConnectQuery::parse("v=2&peer=&nonce=00").is_err());
        assert!(ConnectQuery::parse("v=2&peer=%ZZ").is_err());
        assert!(ConnectQuery::parse("v=2&peer=%FF%FE&nonce=00").is_err());
        assert!(ConnectQuery::parse("v=2&peer=a%0Ab&nonce=00").is_err());
    }

    #[test]
    fn ids_are_letters_digits_marks_and_four_punctuation_characters_in_nfc() {
        for good in [
            "svc",
            "stream-server_2.home~",
            "流媒体",
            "é",
            "हिंदी",
            "9lives",
            "Ωmega",
        ] {
            assert_eq!(validate_id(good), Ok(()), "{good}");
        }
        let bad_ids = [
            ("stream server", "U+0020"),
            ("svc\u{200B}", "U+200B"), // zero-width space (format)
            ("s\u{200D}vc", "U+200D"), // zero-width joiner
            ("svc\u{202E}", "U+202E"), // right-to-left override
            ("svc\u{FE0F}", "U+FE0F"), // variation selector (a mark, default-ignorable)
            ("svc\u{3164}", "U+3164"), // Hangul filler (a letter, default-ignorable)
            ("\u{301}e", "U+0301"),    // a mark first
            ("-svc", "U+002D"),
            ("a/b", "U+002F"),
            ("a\tb", "U+0009"),
        ];
        for (id, found) in bad_ids {
            let err = validate_id(id).unwrap_err();
            assert!(err.message.contains(found), "{id:?}: {}", err.message);
        }
        let decomposed = "e\u{301}";
        let err = validate_id(decomposed).unwrap_err();
        assert!(err.message.contains("NFC"), "{}", err.message);
        assert_eq!(validate_id("\u{e9}"), Ok(()), "the composed form");
    }

    #[test]
    fn hex_values_are_read_in_either_case_and_written_in_lowercase() {
        let upper = "AB".repeat(16);
        let q = ConnectQuery::parse(&format!("v=2&peer=x&nonce={upper}&probe={upper}")).unwrap();
        assert_eq!(q.nonce.to_string(), "ab".repeat(16));
        assert!(
            q.to_query()
                .contains(&format!("&probe={}", "ab".repeat(16)))
        );
        let err = ExposeQuery::parse("v=2&id=a&auth=public&probe=abc").unwrap_err();
        assert_eq!(err.message, "probe must be 16 bytes of hex");
    }

    #[test]
    fn a_secret_agent_registers_a_valid_verifier_and_a_public_one_none() {
        let v = ServiceKeys::derive("pw", "a").verifier().to_hex();
        assert!(ExposeQuery::parse(&format!("v=2&id=a&auth=secret&verifier={v}")).is_ok());
        let err = ExposeQuery::parse("v=2&id=a&auth=secret").unwrap_err();
        assert!(err.message.contains("verifier"), "{}", err.message);
        let err = ExposeQuery::parse(&format!("v=2&id=a&auth=public&verifier={v}")).unwrap_err();
        assert!(err.message.contains("verifier"), "{}", err.message);
        let off_curve = format!("04{}", "00".repeat(64));
        let err =
            ExposeQuery::parse(&format!("v=2&id=a&auth=secret&verifier={off_curve}")).unwrap_err();
        assert!(err.message.contains("P-256"), "{}", err.message);
    }

    #[test]
    fn too_many_candidates_are_refused() {
        let many = ["10.0.0.1:1"; MAX_PRIVATE_CANDIDATES + 1].join(",");
        let err = ExposeQuery::parse(&format!("v=2&id=a&auth=public&private={many}")).unwrap_err();
        assert!(err.message.contains("at most"), "{}", err.message);
    }
}
