//! The connecting side: one call from a peer id to a proven, direct, encrypted stream.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::control::{self, ControlSocket, ServerUrl};
use super::failover::{self, Tries};
use super::ports::PunchPorts;
use super::probe;
use super::punch::{EarlyData, Inbound, PunchFailure, PunchOptions, StreamSettings};
use super::session::{ConnectionInfo, Established, Session};
use super::stream::PeerStream;
use crate::protocol::{
    self, Auth, ClientToServer, ConnectQuery, Mode, Nonce, ProbeToken, PunchOrder, Role,
    ServerToClient, ServiceId, ServiceKeys, Strategy, connect_message, fingerprint,
};
use crate::{Error, defaults, net};

/// How long the client waits to tell the server how the attempt ended before it closes: the
/// report is a courtesy for the server's records, never worth delaying the caller.
const REPORT_TIMEOUT: Duration = Duration::from_millis(100);

/// What to connect to.
#[derive(Clone)]
pub struct ConnectOptions {
    /// The rendezvous server, the first choice of several (see
    /// [`ConnectOptions::other_servers`]).
    pub server: ServerUrl,
    /// Further rendezvous servers, tried in order after `server` when it cannot be reached or
    /// does not know the peer (see [`connect`]).
    pub other_servers: Vec<ServerUrl>,
    /// The id the service was exposed under.
    pub peer: String,
    /// The service secret (`None` for services exposed with `--public`).
    pub secret: Option<String>,
    /// How the punch is made (its timeout; the TTL of the SYNs of a birthday punch when this
    /// end's NAT is endpoint-dependent).
    pub punch: PunchOptions,
    /// The server's token, if it requires one.
    pub token: Option<String>,
    /// Bytes to send with the selection of the stream, before the agent's hello arrived: saves
    /// a round trip on the first byte (see [`EarlyData`]). `None` waits for the agent's hello
    /// before anything is sent.
    pub early_data: Option<EarlyData>,
    /// Encrypt the stream (the default). `false` asks the agent for raw bytes after the
    /// handshake (`--no-encrypt`); an agent that does not allow it keeps the stream encrypted.
    pub encrypt: bool,
    /// The agent's static key as `sha256:<64 hex>` (what `expose --key` logs): the client
    /// accepts only an agent that proves it holds that key. This authenticates a `--public`
    /// service, which has no secret.
    pub peer_pin: Option<String>,
}

impl std::fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectOptions")
            .field("server", &self.server)
            .field("other_servers", &self.other_servers)
            .field("peer", &self.peer)
            .field("secret", &self.secret.as_ref().map(|_| "<hidden>"))
            .field("punch", &self.punch)
            .field("token", &self.token.as_ref().map(|_| "<hidden>"))
            .field("early_data", &self.early_data)
            .field("encrypt", &self.encrypt)
            .field("peer_pin", &self.peer_pin)
            .finish()
    }
}

impl ConnectOptions {
    /// Options with the default punch (see [`crate::defaults`]).
    pub fn new(server: &str, peer: &str, secret: Option<&str>) -> Result<Self, Error> {
        Ok(ConnectOptions {
            server: ServerUrl::parse(server)?,
            other_servers: Vec::new(),
            peer: peer.to_string(),
            secret: secret.map(str::to_string),
            punch: PunchOptions::default(),
            token: None,
            early_data: None,
            encrypt: true,
            peer_pin: None,
        })
    }
}

impl ConnectOptions {
    /// Options with several servers, in order of preference (at least one).
    pub fn with_servers<S: AsRef<str>>(
        servers: &[S],
        peer: &str,
        secret: Option<&str>,
    ) -> Result<Self, Error> {
        let mut servers = ServerUrl::parse_list(servers)?.into_iter();
        let first = servers.next().expect("a parsed list is not empty");
        Ok(ConnectOptions {
            server: first.clone(),
            other_servers: servers.collect(),
            ..ConnectOptions::new(&first.to_string(), peer, secret)?
        })
    }

    /// Every server, in order of preference: `server`, then `other_servers`.
    pub fn servers(&self) -> Vec<ServerUrl> {
        std::iter::once(self.server.clone())
            .chain(self.other_servers.iter().cloned())
            .collect()
    }
}

/// The keys of `secret` for the service `id`, derived once per process (each derivation
/// costs a PBKDF2 of [`protocol::ROOT_ITERATIONS`] rounds, about 3 ms).
fn service_keys(secret: &str, id: &str) -> ServiceKeys {
    use std::collections::HashMap;
    use std::sync::{LazyLock, Mutex};
    /// Derived keys by a digest of (secret, id); a handful of services per process at most.
    static CACHE: LazyLock<Mutex<HashMap<[u8; 32], ServiceKeys>>> =
        LazyLock::new(|| Mutex::new(HashMap::new()));
    const MAX_CACHED: usize = 64;
    let digest: [u8; 32] = {
        use sha2::Digest;
        let mut ctx = sha2::Sha256::new();
        ctx.update((secret.len() as u64).to_be_bytes());
        ctx.update(secret.as_bytes());
        ctx.update(id.as_bytes());
        ctx.finalize().into()
    };
    if let Some(keys) = CACHE.lock().expect("keys cache").get(&digest) {
        return keys.clone();
    }
    let keys = ServiceKeys::derive(secret, id);
    let mut cache = CACHE.lock().expect("keys cache");
    if cache.len() >= MAX_CACHED {
        cache.clear();
    }
    cache.insert(digest, keys.clone());
    keys
}

/// A connected stream to the service and how it was reached.
#[derive(Debug)]
pub struct Connection {
    /// The stream; bytes written here reach the service (encrypted, unless both ends agreed
    /// otherwise: see [`PeerStream::is_encrypted`]).
    pub stream: PeerStream,
    /// How the stream was reached.
    pub info: ConnectionInfo,
    /// Bytes [`connect_early`] read from the local side and already wrote to the stream.
    pub early_sent: u64,
}

/// Connects to the service exposed as `opts.peer`.
///
/// With several servers ([`ConnectOptions::other_servers`], or a server name with several
/// addresses), a server that cannot be reached (refused, silent, a failed TLS handshake; each
/// step within [`defaults::SERVER_TIMEOUT`]) is passed over for the next address, then the next
/// server; a server that does not know the peer is passed over for the next server too, since
/// the agent may be registered with another one. The first punch order wins. While another
/// candidate is left, each step gets 2 s instead of [`defaults::SERVER_TIMEOUT`], so a hung
/// server delays the connect by about that.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use tokio::io::{AsyncReadExt, AsyncWriteExt};
/// # let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// # let server = format!("http://{}", listener.local_addr()?);
/// # let stop = tokio_util::sync::CancellationToken::new();
/// # tokio::spawn(p2pnc::server::run(listener, Default::default(), stop.clone()));
/// # let mut agent = p2pnc::Agent::start(p2pnc::ExposeOptions::new(&server, "streamserver", Some("s3cret"))?).await?;
/// # tokio::spawn(async move {
/// #     while let Some(mut a) = agent.accept().await {
/// #         let (mut r, mut w) = tokio::io::split(&mut a.stream);
/// #         let _ = tokio::io::copy(&mut r, &mut w).await; // an echo service
/// #     }
/// # });
/// // `server` is the rendezvous server's URL, e.g. "http://203.0.113.10:50300".
/// let opts = p2pnc::ConnectOptions::new(&server, "streamserver", Some("s3cret"))?;
/// let mut conn = p2pnc::connect(&opts).await?;
/// println!("{} via {} in {:?}", conn.info.path, conn.info.peer_addr, conn.info.setup);
/// conn.stream.write_all(b"hello").await?;
/// let mut reply = [0u8; 5];
/// conn.stream.read_exact(&mut reply).await?;
/// assert_eq!(&reply, b"hello");
/// # stop.cancel();
/// # Ok(()) }
/// ```
pub async fn connect(opts: &ConnectOptions) -> Result<Connection, Error> {
    connect_path(opts, false).await.map(|(conn, _)| conn)
}

/// [`connect`], asking for a warm path when `warm`: the stream then carries a multiplexer
/// from its first byte after the handshake (early data included), and the second value is
/// whether the agent keeps it open for more streams (`None` when no warm path was asked for).
pub(crate) async fn connect_path(
    opts: &ConnectOptions,
    warm: bool,
) -> Result<(Connection, Option<bool>), Error> {
    connect_paths(opts, warm, Paths::Any).await
}

/// [`connect_path`] for a direct path only: an order to use the relay ends the attempt
/// before anything is sent, and the relay is never joined (a [`crate::Peer`] on a relayed
/// path looking for a direct one).
pub(crate) async fn connect_direct_path(
    opts: &ConnectOptions,
    warm: bool,
) -> Result<(Connection, Option<bool>), Error> {
    connect_paths(opts, warm, Paths::DirectOnly).await
}

/// Which paths a connect may end on.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Paths {
    /// Direct, or the relay when the server offers it.
    Any,
    /// Direct only.
    DirectOnly,
}

/// Asks the servers in turn for a punch order, then punches as the first order says.
async fn connect_paths(
    opts: &ConnectOptions,
    warm: bool,
    paths: Paths,
) -> Result<(Connection, Option<bool>), Error> {
    let started = Instant::now();
    let servers = opts.servers();
    let mut tries = Tries::new(&servers);
    let ordered = loop {
        let Some(candidate) = tries.next().await else {
            return Err(tries.into_error());
        };
        match request(opts, candidate.server, &candidate.addrs, candidate.patience).await {
            Ok(ordered) => break ordered,
            Err(e) => tries.failed(e, failover::client_next)?,
        }
    };
    punch(opts, ordered, started, warm, paths).await
}

/// Connects like [`connect`] while reading what `local` already sends (up to
/// [`defaults::EARLY_DATA_MAX`] bytes), so that those bytes leave with the stream's selection instead of
/// a round trip later (see [`EarlyData`]). Every byte read from `local` is written to the
/// returned stream, in order; a byte from the peer reaches the caller only after the agent's
/// handshake was checked. For forwarding a local connection or stdin: carry on with
/// [`crate::forward_tcp`] (a TCP connection) or [`crate::forward`] on the same `local`.
pub async fn connect_early<R>(opts: &ConnectOptions, local: &mut R) -> Result<Connection, Error>
where
    R: tokio::io::AsyncRead + Unpin + ?Sized,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let early = EarlyData::new();
    let opts = ConnectOptions {
        early_data: Some(early.clone()),
        ..opts.clone()
    };
    let connecting = connect(&opts);
    tokio::pin!(connecting);
    let mut buf = vec![0u8; 16 * 1024];
    let mut local_open = true;
    let mut read = 0u64;
    let result = loop {
        tokio::select! {
            result = &mut connecting => break result,
            n = local.read(&mut buf), if local_open && early.len() < defaults::EARLY_DATA_MAX => match n {
                Ok(n) if n > 0 => {
                    early.push(&buf[..n]);
                    read += n as u64;
                }
                // EOF or an error: the forwarding that follows meets it again.
                _ => local_open = false,
            },
        }
    };
    let mut conn = result?;
    let rest = early.take();
    if !rest.is_empty() {
        conn.stream.write_all(&rest).await?;
    }
    conn.early_sent = read;
    Ok(conn)
}

/// A connect request the server answered with a punch order, and what the punch needs of it.
struct Ordered {
    /// The server that sent the order.
    server: ServerUrl,
    ports: PunchPorts,
    /// The NAT probes on their way.
    tasks: JoinSet<()>,
    ws: ControlSocket,
    order: PunchOrder,
    keys: Option<ServiceKeys>,
}

/// Asks `server`, at `servers` (its addresses), for a punch order to the peer, allowing
/// `patience` for each step of opening the control connection.
async fn request(
    opts: &ConnectOptions,
    server: &ServerUrl,
    servers: &[SocketAddr],
    patience: Duration,
) -> Result<Ordered, Error> {
    let peer = ServiceId::new(&opts.peer).map_err(|e| Error::Refused(e.code, e.message))?;
    // The control connection and the punch share one local port per family, so the server
    // sees the NAT mapping the peer must aim at. The listeners catch SYNs that beat ours out.
    let ports = PunchPorts::bind(servers, 0, false)?;
    let mut tasks = JoinSet::new();
    let keys = opts.secret.as_deref().map(|s| service_keys(s, &opts.peer));
    let primary = ports.primary();
    let probe = spawn_probe(&mut tasks, primary.local, primary.server);
    let probe_other = ports
        .other()
        .map(|o| spawn_probe(&mut tasks, o.local, o.server));
    let nonce = Nonce::random();
    let query = ConnectQuery {
        proof: keys
            .as_ref()
            .map(|k| k.sign(&connect_message(&opts.peer, Mode::Punch, &nonce))),
        peer,
        nonce,
        private: ports.candidates(),
        mode: Mode::Punch,
        probe: Some(probe),
        probe_other,
    };
    let (mut ws, _) = control::open(
        server,
        primary.server,
        primary.local,
        protocol::CONNECT_PATH,
        &query.to_query(),
        opts.token.as_deref(),
        patience,
    )
    .await
    .map_err(|e| match e {
        Error::Refused(code, msg) => control::server_error(code, msg, &opts.peer),
        e => e,
    })?;
    let order = punch_order(&mut ws, &opts.peer).await?;
    Ok(Ordered {
        server: server.clone(),
        ports,
        tasks,
        ws,
        order,
        keys,
    })
}

/// Punches as the order says, and reports the outcome to the server.
async fn punch(
    opts: &ConnectOptions,
    ordered: Ordered,
    started: Instant,
    warm: bool,
    paths: Paths,
) -> Result<(Connection, Option<bool>), Error> {
    let Ordered {
        server,
        mut ports,
        mut tasks,
        mut ws,
        mut order,
        keys,
    } = ordered;
    if paths == Paths::DirectOnly {
        if order.strategy == Strategy::RelayOnly {
            return Err(Error::NoDirectPath {
                peer: opts.peer.clone(),
                detail: "the server sees none and offers only its relay".into(),
            });
        }
        order.relay_after_ms = None;
        order.relay_ticket = None;
    }
    let stream = stream_settings(opts, keys, &order, warm)?;
    let at = ports.view().endpoint(&server);
    tracing::debug!(
        strategy = %order.strategy, mine = %order.your_mapping, peer = %order.peer_mapping,
        relay = ?order.relay_after_ms, ipv6 = ?order.peer_public6, nats = %at.depths.v4,
        "punch order"
    );
    let early = opts.early_data.clone();
    let session = Session::new(
        order,
        Role::Client,
        &stream,
        &at,
        &opts.punch,
        early,
        started,
    );
    let inbound = forward_accepts(&mut tasks, ports.take_listeners());
    let (outcome, ctrl_open) = punch_watching(session, inbound, &mut ws, &opts.peer).await?;
    tasks.shutdown().await;
    if ctrl_open {
        report_outcome(&mut ws, &outcome).await;
    }
    match outcome {
        Ok(Established { stream, info, warm }) => Ok((
            Connection {
                early_sent: 0,
                stream,
                info,
            },
            warm,
        )),
        // Streams connected and every one failed to prove the session: whoever answered
        // does not hold the secret (or the pinned key).
        Err(failure) if failure.unproven > 0 && opts.secret.is_some() => {
            Err(Error::NotTheService(opts.peer.clone()))
        }
        Err(failure) => Err(Error::NoDirectPath {
            peer: opts.peer.clone(),
            detail: failure.to_string(),
        }),
    }
}

/// What the client brings to the stream handshake, once it has checked that the order comes
/// from the service it means: with a secret, never an agent registered without one; with a
/// pin, only an agent that registered the pinned key.
fn stream_settings(
    opts: &ConnectOptions,
    keys: Option<ServiceKeys>,
    order: &PunchOrder,
    warm: bool,
) -> Result<StreamSettings, Error> {
    if keys.is_some() && order.auth == Auth::Public {
        // Someone registered the id without the secret (while the real agent was away):
        // nothing goes to it, not even a handshake message it could guess the secret from.
        return Err(Error::NotTheService(opts.peer.clone()));
    }
    let pin = match &opts.peer_pin {
        None => None,
        Some(pin) => {
            let mismatch = |detail: String| Error::PinMismatch {
                peer: opts.peer.clone(),
                detail,
            };
            let Some(key) = order.peer_key else {
                return Err(mismatch(format!(
                    "expected {pin}, but the agent registered no key (start it with --key)"
                )));
            };
            let got = fingerprint(key.as_bytes());
            if !got.eq_ignore_ascii_case(pin) {
                return Err(mismatch(format!("expected {pin}, got {got}")));
            }
            Some(key)
        }
    };
    Ok(StreamSettings {
        keys,
        pin,
        static_key: None,
        unencrypted: !opts.encrypt,
        warm,
    })
}

/// Sends a NAT probe from the punch address `local` to the probe port of `server`, at the same
/// moment as the control connection: the server compares the mappings (or, for the other
/// family, learns the endpoint). Returns its token.
fn spawn_probe(tasks: &mut JoinSet<()>, local: SocketAddr, server: SocketAddr) -> ProbeToken {
    let probe_token = ProbeToken::random();
    let probe_addr = protocol::probe_addr(server);
    tasks.spawn(async move {
        if let Err(e) = probe::probe(local, probe_addr, &probe_token).await {
            tracing::debug!("NAT probe to {probe_addr}: {e}");
        }
    });
    probe_token
}

/// The server's answer to a connect request: the punch order, or the error it names.
async fn punch_order(ws: &mut ControlSocket, peer: &str) -> Result<PunchOrder, Error> {
    let answer = match tokio::time::timeout(defaults::SERVER_TIMEOUT, control::recv(ws)).await {
        Err(_) => {
            return Err(Error::Protocol(
                "no punch order from the server in time".into(),
            ));
        }
        Ok(r) => r?,
    };
    match answer {
        Some(ServerToClient::Punch(p)) => Ok(p),
        Some(ServerToClient::Error { code, message }) => {
            Err(control::server_error(code, message, peer))
        }
        Some(other) => Err(Error::Protocol(format!("unexpected message {other:?}"))),
        None => Err(Error::Protocol("server closed the control channel".into())),
    }
}

/// Hands every connection accepted on the punch ports to the punch.
fn forward_accepts(
    tasks: &mut JoinSet<()>,
    listeners: Vec<net::PunchPort>,
) -> mpsc::Receiver<Inbound> {
    let (inbound_tx, inbound) = mpsc::channel(8);
    for listener in listeners {
        let inbound_tx = inbound_tx.clone();
        tasks.spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let inbound = Inbound { stream, head: None };
                if inbound_tx.send(inbound).await.is_err() {
                    return;
                }
            }
        });
    }
    inbound
}

/// Runs the session's punch while reading the control channel: an error from the server (the
/// agent's rejection) ends the attempt at once. Returns how the punch went and whether the
/// control channel is still open.
async fn punch_watching(
    session: Session,
    inbound: mpsc::Receiver<Inbound>,
    ws: &mut ControlSocket,
    peer: &str,
) -> Result<(Result<Established, PunchFailure>, bool), Error> {
    let engine = session.run(inbound, || {});
    tokio::pin!(engine);
    let mut ctrl_open = true;
    loop {
        tokio::select! {
            result = &mut engine => return Ok((result, ctrl_open)),
            msg = control::recv::<ServerToClient>(ws), if ctrl_open => match msg {
                Ok(Some(ServerToClient::Error { code, message })) => {
                    return Err(control::server_error(code, message, peer));
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => ctrl_open = false,
            },
        }
    }
}

/// Tells the server how the attempt ended, for its outcome records, and closes.
async fn report_outcome(ws: &mut ControlSocket, outcome: &Result<Established, PunchFailure>) {
    let result = match outcome {
        Ok(e) => ClientToServer::Result {
            outcome: e.info.path.label().to_string(),
            setup_ms: Some(e.info.setup.as_millis() as u64),
            reason: None,
        },
        Err(f) => ClientToServer::Result {
            outcome: "failed".into(),
            setup_ms: None,
            reason: Some(f.to_string()),
        },
    };
    let report = async {
        let _ = control::send(ws, &result).await;
        let _ = ws.close(None).await;
    };
    let _ = tokio::time::timeout(REPORT_TIMEOUT, report).await;
}
