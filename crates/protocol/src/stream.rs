//! The stream handshake and records (`docs/protocol.md`, "The stream handshake").
//!
//! Every punched stream opens with one Noise handshake, `Noise_NNpsk0_P256_AESGCM_SHA256`
//! (or `NKpsk0` when the client pins the agent's static key): the client's message 1 carries
//! its selection flag and early data, the agent's message 2 completes it. The PSK comes from
//! the service secret and the session (see [`crate::ServiceKeys::psk`]), so only the two ends
//! can complete it, and the `ee` DH gives the records that follow forward secrecy. Pure: the
//! caller moves the bytes.

use std::fmt;

use p256::elliptic_curve::sec1::ToEncodedPoint;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce as AeadNonce, UnboundKey};

use crate::ids::SessionId;

/// The first eight bytes each end writes on a stream.
pub const STREAM_MAGIC: &[u8; 8] = b"p2pnc/2\n";
/// The client's clear head: magic, session id, pattern, length of message 1.
pub const CLIENT_HEAD_LEN: usize = 8 + 16 + 1 + 2;
/// The agent's clear head: magic, length of message 2.
pub const AGENT_HEAD_LEN: usize = 8 + 2;
/// The Noise protocol of a stream keyed by the PSK alone.
pub const NOISE_NN: &str = "Noise_NNpsk0_P256_AESGCM_SHA256";
/// The Noise protocol of a stream whose client pins the agent's static key.
pub const NOISE_NK: &str = "Noise_NKpsk0_P256_AESGCM_SHA256";
/// Largest Noise message (the Noise spec's limit), and so the largest record.
pub const MAX_NOISE_MESSAGE: usize = 65_535;
/// AEAD tag length.
pub const TAG_LEN: usize = 16;
/// A P-256 public key, as Noise sends it (SEC1 uncompressed).
pub const DH_PUBLIC_LEN: usize = 65;
/// Most early data message 1 carries: the message minus `e`, the tag and the flags byte.
pub const MAX_EARLY_IN_HELLO: usize = MAX_NOISE_MESSAGE - DH_PUBLIC_LEN - TAG_LEN - 1;
/// Most body bytes in one record: a message minus the tag and the type byte.
pub const MAX_RECORD_BODY: usize = MAX_NOISE_MESSAGE - TAG_LEN - 1;

/// Which end of a stream is speaking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The connecting side (`connect`).
    Client,
    /// The exposing side (`expose`).
    Agent,
}

impl Role {
    /// `client` or `agent`, as relay joins name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Client => "client",
            Role::Agent => "agent",
        }
    }

    /// The other end.
    pub fn peer(self) -> Role {
        match self {
            Role::Client => Role::Agent,
            Role::Agent => Role::Client,
        }
    }
}

/// Record types (the first plaintext byte of every record after the handshake).
pub mod record {
    /// Application bytes.
    pub const DATA: u8 = 0x00;
    /// The client chose this stream (when it did not say so in message 1).
    pub const SELECT: u8 = 0x01;
    /// The sender has no more data; it shuts its write side down next.
    pub const CLOSE: u8 = 0x02;
    /// The agent could not reach its service; the body says why, in one line.
    pub const REFUSED: u8 = 0x03;
}

/// Which Noise pattern a client chose (the byte after the session id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    /// `NNpsk0`: the PSK authenticates both ends.
    Nn,
    /// `NKpsk0`: the client also knows the agent's static key.
    Nk,
}

impl Pattern {
    fn byte(self) -> u8 {
        match self {
            Pattern::Nn => 0,
            Pattern::Nk => 1,
        }
    }

    fn noise(self) -> &'static str {
        match self {
            Pattern::Nn => NOISE_NN,
            Pattern::Nk => NOISE_NK,
        }
    }
}

/// Flags in the first plaintext byte of message 1 (client) or message 2 (agent).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Flags {
    /// Client: this stream is the chosen one; early data follow the flags.
    pub select: bool,
    /// Client: asks for raw bytes after the handshake. Agent: grants it.
    pub unencrypted: bool,
    /// Client: the stream carries a multiplexer of many streams (a *warm path*, see
    /// [`crate::warm`]) from its first byte after the handshake. Agent: it keeps the path open
    /// for more streams; without it, the path carries the streams already opened and closes.
    pub warm: bool,
}

impl Flags {
    fn to_byte(self) -> u8 {
        u8::from(self.select) | (u8::from(self.unencrypted) << 1) | (u8::from(self.warm) << 2)
    }

    fn from_byte(b: u8) -> Result<Self, StreamError> {
        if b & !0b111 != 0 {
            return Err(StreamError::BadFlags(b));
        }
        Ok(Flags {
            select: b & 1 != 0,
            unencrypted: b & 2 != 0,
            warm: b & 4 != 0,
        })
    }
}

/// Why a stream handshake failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError {
    /// The stream does not start with `p2pnc/2\n` (another protocol, or protocol 1).
    #[error("not a p2pnc/2 stream")]
    BadMagic,
    /// The pattern byte names no pattern.
    #[error("unknown handshake pattern {0}")]
    BadPattern(u8),
    /// The client pins a static key but this agent has none.
    #[error("the client pins a static key and this agent has none (start it with --key)")]
    NoStaticKey,
    /// The Noise message did not decrypt: another secret, another session, or tampering.
    #[error("the handshake did not verify: not the same secret and session")]
    Unproven,
    /// A flags byte with unknown bits.
    #[error("unknown flags {0:#04x}")]
    BadFlags(u8),
    /// A message without its flags byte.
    #[error("empty handshake payload")]
    NoFlags,
    /// A length outside the protocol's limits.
    #[error("handshake message of {0} bytes")]
    BadLength(usize),
}

/// One end's transport keys after the handshake: (sending, receiving).
#[derive(Clone)]
pub struct TransportKeys {
    /// The key this end seals with.
    pub send: [u8; 32],
    /// The key this end opens with.
    pub recv: [u8; 32],
}

impl fmt::Debug for TransportKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TransportKeys(<hidden>)")
    }
}

/// The parsed clear head of a client's message 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientHead {
    /// The session the stream belongs to.
    pub session: SessionId,
    /// The pattern the client chose.
    pub pattern: Pattern,
    /// The length of the Noise message that follows.
    pub len: usize,
}

impl ClientHead {
    /// Parses the first [`CLIENT_HEAD_LEN`] bytes a client sent.
    pub fn parse(head: &[u8; CLIENT_HEAD_LEN]) -> Result<Self, StreamError> {
        if &head[..8] != STREAM_MAGIC {
            return Err(StreamError::BadMagic);
        }
        let session = SessionId::from_bytes(head[8..24].try_into().expect("16 bytes"));
        let pattern = match head[24] {
            0 => Pattern::Nn,
            1 => Pattern::Nk,
            p => return Err(StreamError::BadPattern(p)),
        };
        let len = u16::from_be_bytes([head[25], head[26]]) as usize;
        if len < DH_PUBLIC_LEN + TAG_LEN + 1 {
            return Err(StreamError::BadLength(len));
        }
        Ok(ClientHead {
            session,
            pattern,
            len,
        })
    }
}

/// Parses the agent's clear head; returns the length of message 2.
pub fn parse_agent_head(head: &[u8; AGENT_HEAD_LEN]) -> Result<usize, StreamError> {
    if &head[..8] != STREAM_MAGIC {
        return Err(StreamError::BadMagic);
    }
    let len = u16::from_be_bytes([head[8], head[9]]) as usize;
    if len < DH_PUBLIC_LEN + TAG_LEN + 1 {
        return Err(StreamError::BadLength(len));
    }
    Ok(len)
}

fn prologue(session: &SessionId) -> Vec<u8> {
    [b"p2pnc/2 stream\n".as_slice(), session.as_bytes()].concat()
}

fn split(hs: &mut snow::HandshakeState) -> TransportKeys {
    let (c1, c2) = hs.dangerously_get_raw_split();
    if hs.is_initiator() {
        TransportKeys { send: c1, recv: c2 }
    } else {
        TransportKeys { send: c2, recv: c1 }
    }
}

/// The client's half of a handshake in progress.
pub struct ClientHandshake {
    hs: snow::HandshakeState,
}

impl fmt::Debug for ClientHandshake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientHandshake")
    }
}

impl ClientHandshake {
    /// Starts a handshake for `session` and returns the bytes to write: the clear head and
    /// message 1 with `flags` and `early` (at most [`MAX_EARLY_IN_HELLO`] bytes). With
    /// `agent_key`, the client pins the agent's static key (`NKpsk0`).
    pub fn start(
        session: &SessionId,
        psk: &[u8; 32],
        agent_key: Option<&[u8; DH_PUBLIC_LEN]>,
        flags: Flags,
        early: &[u8],
    ) -> Result<(Self, Vec<u8>), StreamError> {
        Self::start_with(session, psk, agent_key, flags, early, None)
    }

    /// [`ClientHandshake::start`] with a fixed ephemeral private key: for test vectors only.
    #[doc(hidden)]
    pub fn start_with(
        session: &SessionId,
        psk: &[u8; 32],
        agent_key: Option<&[u8; DH_PUBLIC_LEN]>,
        flags: Flags,
        early: &[u8],
        ephemeral: Option<&[u8; 32]>,
    ) -> Result<(Self, Vec<u8>), StreamError> {
        if early.len() > MAX_EARLY_IN_HELLO {
            return Err(StreamError::BadLength(early.len()));
        }
        let pattern = if agent_key.is_some() {
            Pattern::Nk
        } else {
            Pattern::Nn
        };
        let prologue = prologue(session);
        let mut builder = snow::Builder::new(pattern.noise().parse().expect("a valid pattern"))
            .psk(0, psk)
            .expect("psk slot 0")
            .prologue(&prologue)
            .expect("a prologue");
        if let Some(key) = agent_key {
            builder = builder.remote_public_key(key).expect("a remote key");
        }
        if let Some(e) = ephemeral {
            builder = builder.fixed_ephemeral_key_for_testing_only(e);
        }
        let mut hs = builder
            .build_initiator()
            .map_err(|_| StreamError::Unproven)?;
        let mut payload = Vec::with_capacity(1 + early.len());
        payload.push(flags.to_byte());
        payload.extend_from_slice(early);
        let mut msg = vec![0u8; MAX_NOISE_MESSAGE];
        // NK: a remote key that is not a point fails here.
        let n = hs
            .write_message(&payload, &mut msg)
            .map_err(|_| StreamError::Unproven)?;
        let mut out = Vec::with_capacity(CLIENT_HEAD_LEN + n);
        out.extend_from_slice(STREAM_MAGIC);
        out.extend_from_slice(session.as_bytes());
        out.push(pattern.byte());
        out.extend_from_slice(&(n as u16).to_be_bytes());
        out.extend_from_slice(&msg[..n]);
        Ok((ClientHandshake { hs }, out))
    }

    /// Reads message 2 (without its head): the transport keys and the agent's flags.
    pub fn finish(mut self, msg2: &[u8]) -> Result<(TransportKeys, Flags), StreamError> {
        let mut payload = vec![0u8; msg2.len()];
        let n = self
            .hs
            .read_message(msg2, &mut payload)
            .map_err(|_| StreamError::Unproven)?;
        let flags = Flags::from_byte(*payload[..n].first().ok_or(StreamError::NoFlags)?)?;
        Ok((split(&mut self.hs), flags))
    }
}

/// What an agent learned from a client's message 1, and its answer.
#[derive(Debug)]
pub struct AgentReply {
    /// The client's flags.
    pub flags: Flags,
    /// The client's early data (only with `flags.select`).
    pub early: Vec<u8>,
    /// The bytes to write back: the agent's head and message 2.
    pub reply: Vec<u8>,
    /// The agent's transport keys.
    pub keys: TransportKeys,
    /// Whether the stream carries raw bytes after the selection (both ends agreed).
    pub unencrypted: bool,
    /// Whether the agent keeps this warm path open for more streams (the client asked, the
    /// agent allowed it).
    pub warm: bool,
}

/// An agent's static Noise key (`expose --key`): a P-256 key pair.
#[derive(Clone)]
pub struct StaticKey {
    private: [u8; 32],
    public: [u8; DH_PUBLIC_LEN],
}

impl fmt::Debug for StaticKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StaticKey({})", self.fingerprint())
    }
}

impl StaticKey {
    /// A fresh key pair.
    pub fn generate() -> Self {
        // A random 32-byte value is a valid scalar but with probability about 2^-32.
        loop {
            if let Some(key) = Self::from_private(&rand::random()) {
                return key;
            }
        }
    }

    /// The key pair of a private scalar (32 bytes, big-endian); `None` when it is not in
    /// `[1, n)`.
    pub fn from_private(private: &[u8; 32]) -> Option<Self> {
        let secret = p256::SecretKey::from_bytes(private.into()).ok()?;
        let public = secret
            .public_key()
            .to_encoded_point(false)
            .as_bytes()
            .try_into()
            .ok()?;
        Some(StaticKey {
            private: *private,
            public,
        })
    }

    /// The private scalar, for storing the key.
    pub fn private(&self) -> &[u8; 32] {
        &self.private
    }

    /// The public key clients pin.
    pub fn public(&self) -> &[u8; DH_PUBLIC_LEN] {
        &self.public
    }

    /// `sha256:<hex>` of the public key: what `connect --peer-pin` takes.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.public)
    }
}

/// `sha256:<64 hex>` of a static public key.
pub fn fingerprint(public: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, public);
    format!("sha256:{}", hex::encode(digest.as_ref()))
}

/// Answers a client's message 1 (`head` parsed, `msg1` the Noise message): checks it with
/// `psk` (and `static_key` for `NKpsk0`) and builds message 2. `allow_unencrypted` grants a
/// client's request for raw bytes; a request for a warm path is not granted (see
/// [`agent_reply_granting`]).
pub fn agent_reply(
    head: &ClientHead,
    msg1: &[u8],
    psk: &[u8; 32],
    static_key: Option<&StaticKey>,
    allow_unencrypted: bool,
) -> Result<AgentReply, StreamError> {
    let grant = Flags {
        unencrypted: allow_unencrypted,
        ..Flags::default()
    };
    agent_reply_granting(head, msg1, psk, static_key, grant, None)
}

/// [`agent_reply`] with a fixed ephemeral private key: for test vectors only.
#[doc(hidden)]
pub fn agent_reply_with(
    head: &ClientHead,
    msg1: &[u8],
    psk: &[u8; 32],
    static_key: Option<&StaticKey>,
    allow_unencrypted: bool,
    ephemeral: Option<&[u8; 32]>,
) -> Result<AgentReply, StreamError> {
    let grant = Flags {
        unencrypted: allow_unencrypted,
        ..Flags::default()
    };
    agent_reply_granting(head, msg1, psk, static_key, grant, ephemeral)
}

/// [`agent_reply`] granting what `grant` allows of the client's requests: raw bytes
/// (`grant.unencrypted`) and keeping a warm path open (`grant.warm`). `ephemeral` fixes the
/// ephemeral key, for test vectors only.
pub fn agent_reply_granting(
    head: &ClientHead,
    msg1: &[u8],
    psk: &[u8; 32],
    static_key: Option<&StaticKey>,
    grant: Flags,
    ephemeral: Option<&[u8; 32]>,
) -> Result<AgentReply, StreamError> {
    let prologue = prologue(&head.session);
    let mut builder = snow::Builder::new(head.pattern.noise().parse().expect("a valid pattern"))
        .psk(0, psk)
        .expect("psk slot 0")
        .prologue(&prologue)
        .expect("a prologue");
    if head.pattern == Pattern::Nk {
        let key = static_key.ok_or(StreamError::NoStaticKey)?;
        builder = builder
            .local_private_key(&key.private)
            .expect("a local key");
    }
    if let Some(e) = ephemeral {
        builder = builder.fixed_ephemeral_key_for_testing_only(e);
    }
    let mut hs = builder
        .build_responder()
        .map_err(|_| StreamError::Unproven)?;
    let mut payload = vec![0u8; msg1.len()];
    let n = hs
        .read_message(msg1, &mut payload)
        .map_err(|_| StreamError::Unproven)?;
    let (&flags, early) = payload[..n].split_first().ok_or(StreamError::NoFlags)?;
    let flags = Flags::from_byte(flags)?;
    let unencrypted = flags.unencrypted && grant.unencrypted;
    let warm = flags.warm && grant.warm;
    let answer = Flags {
        select: false,
        unencrypted,
        warm,
    };
    let mut msg = vec![0u8; MAX_NOISE_MESSAGE];
    let m = hs
        .write_message(&[answer.to_byte()], &mut msg)
        .map_err(|_| StreamError::Unproven)?;
    let mut reply = Vec::with_capacity(AGENT_HEAD_LEN + m);
    reply.extend_from_slice(STREAM_MAGIC);
    reply.extend_from_slice(&(m as u16).to_be_bytes());
    reply.extend_from_slice(&msg[..m]);
    Ok(AgentReply {
        flags,
        early: if flags.select {
            early.to_vec()
        } else {
            Vec::new()
        },
        reply,
        keys: split(&mut hs),
        unencrypted,
        warm,
    })
}

/// One direction of a stream's records: Noise's `CipherState` with `AESGCM` (Noise spec 5.1
/// and 12.4): key k, a counter n, nonce = 32 zero bits || n big-endian, empty associated data.
/// Sealing and opening work in place.
pub struct RecordCipher {
    key: LessSafeKey,
    n: u64,
}

impl fmt::Debug for RecordCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RecordCipher(n = {})", self.n)
    }
}

impl RecordCipher {
    /// A cipher at nonce 0.
    pub fn new(key: &[u8; 32]) -> Self {
        let key = UnboundKey::new(&AES_256_GCM, key).expect("a 32-byte AES-256 key");
        RecordCipher {
            key: LessSafeKey::new(key),
            n: 0,
        }
    }

    fn next_nonce(&mut self) -> AeadNonce {
        let mut bytes = [0u8; 12];
        bytes[4..].copy_from_slice(&self.n.to_be_bytes());
        // The counter would need 2^64 records to wrap; Noise reserves only 2^64 - 1.
        self.n += 1;
        AeadNonce::assume_unique_for_key(bytes)
    }

    /// Records sealed or opened so far.
    pub fn count(&self) -> u64 {
        self.n
    }

    /// Encrypts `plaintext` in place and returns the tag to append.
    pub fn seal(&mut self, plaintext: &mut [u8]) -> [u8; TAG_LEN] {
        let nonce = self.next_nonce();
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce, Aad::empty(), plaintext)
            .expect("AES-GCM seals a record of any allowed length");
        tag.as_ref().try_into().expect("a 16-byte tag")
    }

    /// Decrypts `sealed` (ciphertext || tag) in place; the plaintext length, or `None` when
    /// it does not authenticate.
    pub fn open(&mut self, sealed: &mut [u8]) -> Option<usize> {
        let nonce = self.next_nonce();
        self.key
            .open_in_place(nonce, Aad::empty(), sealed)
            .ok()
            .map(|p| p.len())
    }
}

/// Seals one record of `kind` with `body` (at most [`MAX_RECORD_BODY`] bytes) onto `out`:
/// `length (u16) || ciphertext || tag`.
pub fn seal_record(cipher: &mut RecordCipher, kind: u8, body: &[u8], out: &mut Vec<u8>) {
    assert!(
        body.len() <= MAX_RECORD_BODY,
        "a record body fits one message"
    );
    let len = 1 + body.len() + TAG_LEN;
    out.reserve(2 + len);
    out.extend_from_slice(&(len as u16).to_be_bytes());
    let at = out.len();
    out.push(kind);
    out.extend_from_slice(body);
    let tag = cipher.seal(&mut out[at..]);
    out.extend_from_slice(&tag);
}

/// Where a record's body starts: after its length and type byte.
pub const RECORD_BODY_AT: usize = 3;
/// What a record adds to its body: the length, the type byte and the tag.
pub const RECORD_OVERHEAD: usize = RECORD_BODY_AT + TAG_LEN;

/// Seals one record of `kind` in place: its `body_len` body bytes (at most
/// [`MAX_RECORD_BODY`]) already sit at `buf[RECORD_BODY_AT..]`, and the length and type are
/// written before them and the tag after. Returns the record's length, `body_len +
/// RECORD_OVERHEAD`; the same bytes as [`seal_record`], without copying the body.
pub fn seal_record_in_place(
    cipher: &mut RecordCipher,
    kind: u8,
    buf: &mut [u8],
    body_len: usize,
) -> usize {
    assert!(
        body_len <= MAX_RECORD_BODY,
        "a record body fits one message"
    );
    let end = RECORD_BODY_AT + body_len;
    buf[..2].copy_from_slice(&((1 + body_len + TAG_LEN) as u16).to_be_bytes());
    buf[2] = kind;
    let tag = cipher.seal(&mut buf[2..end]);
    buf[end..end + TAG_LEN].copy_from_slice(&tag);
    end + TAG_LEN
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> SessionId {
        SessionId::from_bytes([0x0f; 16])
    }

    fn handshake(
        client_psk: [u8; 32],
        agent_psk: [u8; 32],
        flags: Flags,
    ) -> Result<(AgentReply, TransportKeys, Flags), StreamError> {
        let (hs, wire) = ClientHandshake::start(&session(), &client_psk, None, flags, b"GET /")?;
        let head = ClientHead::parse(wire[..CLIENT_HEAD_LEN].try_into().unwrap())?;
        assert_eq!(head.len, wire.len() - CLIENT_HEAD_LEN);
        let reply = agent_reply(&head, &wire[CLIENT_HEAD_LEN..], &agent_psk, None, false)?;
        let len = parse_agent_head(reply.reply[..AGENT_HEAD_LEN].try_into().unwrap())?;
        let (keys, agent_flags) = hs.finish(&reply.reply[AGENT_HEAD_LEN..][..len])?;
        Ok((reply, keys, agent_flags))
    }

    #[test]
    fn both_ends_agree_on_keys_and_the_early_data_arrives() {
        let flags = Flags {
            select: true,
            unencrypted: true,
            warm: false,
        };
        let (reply, client, agent_flags) = handshake([1; 32], [1; 32], flags).unwrap();
        assert_eq!(reply.flags, flags);
        assert_eq!(reply.early, b"GET /");
        assert!(
            !reply.unencrypted && !agent_flags.unencrypted,
            "not granted"
        );
        assert_eq!(
            (client.send, client.recv),
            (reply.keys.recv, reply.keys.send)
        );
        let mut out = Vec::new();
        let mut tx = RecordCipher::new(&client.send);
        seal_record(&mut tx, record::DATA, b"hello", &mut out);
        let mut rx = RecordCipher::new(&reply.keys.recv);
        let n = rx.open(&mut out[2..]).unwrap();
        assert_eq!(&out[2..2 + n], b"\x00hello");
    }

    #[test]
    fn a_warm_path_is_granted_only_when_asked_and_allowed() {
        let session = session();
        let ask = |warm: bool, allow: bool| {
            let flags = Flags {
                select: true,
                warm,
                ..Flags::default()
            };
            let (hs, wire) = ClientHandshake::start(&session, &[3; 32], None, flags, b"x").unwrap();
            let head = ClientHead::parse(wire[..CLIENT_HEAD_LEN].try_into().unwrap()).unwrap();
            let grant = Flags {
                warm: allow,
                ..Flags::default()
            };
            let reply =
                agent_reply_granting(&head, &wire[CLIENT_HEAD_LEN..], &[3; 32], None, grant, None)
                    .unwrap();
            assert_eq!(reply.flags.warm, warm, "the agent reads the request");
            let (_, answer) = hs.finish(&reply.reply[AGENT_HEAD_LEN..]).unwrap();
            assert_eq!(answer.warm, reply.warm, "the client reads the answer");
            reply.warm
        };
        assert!(ask(true, true));
        assert!(!ask(true, false), "an agent at its limit declines");
        assert!(!ask(false, true), "never granted unasked");
        assert!(Flags::from_byte(4).unwrap().warm);
    }

    #[test]
    fn a_record_sealed_in_place_is_the_record_sealed_by_copy() {
        let body: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        let mut copied = Vec::new();
        seal_record(
            &mut RecordCipher::new(&[9; 32]),
            record::DATA,
            &body,
            &mut copied,
        );
        let mut buf = vec![0u8; body.len() + RECORD_OVERHEAD + 7];
        buf[RECORD_BODY_AT..RECORD_BODY_AT + body.len()].copy_from_slice(&body);
        let len = seal_record_in_place(
            &mut RecordCipher::new(&[9; 32]),
            record::DATA,
            &mut buf,
            body.len(),
        );
        assert_eq!(len, body.len() + RECORD_OVERHEAD);
        assert_eq!(&buf[..len], &copied[..]);
    }

    #[test]
    fn a_wrong_psk_never_completes() {
        let flags = Flags::default();
        assert_eq!(
            handshake([1; 32], [2; 32], flags).unwrap_err(),
            StreamError::Unproven
        );
    }

    #[test]
    fn a_tampered_or_replayed_record_does_not_open() {
        let (_, keys, _) = handshake([1; 32], [1; 32], Flags::default()).unwrap();
        let mut tx = RecordCipher::new(&keys.send);
        let mut first = Vec::new();
        seal_record(&mut tx, record::DATA, b"one", &mut first);
        let mut rx = RecordCipher::new(&keys.send);
        let mut tampered = first.clone();
        tampered[4] ^= 1;
        assert!(rx.open(&mut tampered[2..]).is_none());
        let mut rx = RecordCipher::new(&keys.send);
        assert!(rx.open(&mut first.clone()[2..]).is_some());
        assert!(
            rx.open(&mut first[2..]).is_none(),
            "a replay has the next nonce"
        );
    }

    #[test]
    fn a_pinned_static_key_is_required_and_checked() {
        let agent = StaticKey::generate();
        let (hs, wire) = ClientHandshake::start(
            &session(),
            &[1; 32],
            Some(agent.public()),
            Flags::default(),
            b"",
        )
        .unwrap();
        let head = ClientHead::parse(wire[..CLIENT_HEAD_LEN].try_into().unwrap()).unwrap();
        assert_eq!(head.pattern, Pattern::Nk);
        let msg1 = &wire[CLIENT_HEAD_LEN..];
        assert_eq!(
            agent_reply(&head, msg1, &[1; 32], None, false).unwrap_err(),
            StreamError::NoStaticKey
        );
        let impostor = StaticKey::generate();
        assert_eq!(
            agent_reply(&head, msg1, &[1; 32], Some(&impostor), false).unwrap_err(),
            StreamError::Unproven
        );
        let reply = agent_reply(&head, msg1, &[1; 32], Some(&agent), false).unwrap();
        hs.finish(&reply.reply[AGENT_HEAD_LEN..]).unwrap();
        let again = StaticKey::from_private(agent.private()).unwrap();
        assert_eq!(again.public(), agent.public());
        assert!(agent.fingerprint().starts_with("sha256:"));
    }

    #[test]
    fn heads_are_checked() {
        let mut head = [0u8; CLIENT_HEAD_LEN];
        assert_eq!(ClientHead::parse(&head), Err(StreamError::BadMagic));
        head[..8].copy_from_slice(STREAM_MAGIC);
        head[24] = 7;
        assert_eq!(ClientHead::parse(&head), Err(StreamError::BadPattern(7)));
        head[24] = 0;
        assert_eq!(ClientHead::parse(&head), Err(StreamError::BadLength(0)));
        let mut head = [0u8; AGENT_HEAD_LEN];
        head[..8].copy_from_slice(b"p2pnc/1\n");
        assert_eq!(parse_agent_head(&head), Err(StreamError::BadMagic));
        assert!(Flags::from_byte(8).is_err());
    }
}
