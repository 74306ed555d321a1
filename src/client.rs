//! The connecting side: one call from a peer id to a proven, direct `TcpStream`.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::control::{self, ServerUrl};
use crate::probe;
use crate::protocol::{
    self, Auth, ClientToServer, ConnectQuery, Mode, Nonce, ProbeToken, Role, ServerToClient,
    ServiceId, SessionKeys,
};
use crate::punch::{self, EarlyData, Inbound, Order, Proof, PunchPlan};
use crate::{ConnectionInfo, Error, net};

/// What to connect to.
#[derive(Clone)]
pub struct ConnectOptions {
    /// The rendezvous server.
    pub server: ServerUrl,
    /// The id the service was exposed under.
    pub peer: String,
    /// The service secret (`None` for services exposed with `--public`).
    pub secret: Option<String>,
    /// How long the punch may take before giving up.
    pub punch_timeout: Duration,
    /// TTL of the SYNs of a birthday punch when this end's NAT is endpoint-dependent
    /// (`None`: normal TTL).
    pub punch_ttl: Option<u32>,
    /// The server's token, if it requires one.
    pub token: Option<String>,
    /// Bytes to send with the selection of the stream, before the agent's hello arrived: saves
    /// a round trip on the first byte (see [`EarlyData`]). `None` waits for the agent's hello
    /// before anything is sent.
    pub early_data: Option<EarlyData>,
}

impl std::fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectOptions")
            .field("server", &self.server)
            .field("peer", &self.peer)
            .field("secret", &self.secret.as_ref().map(|_| "<hidden>"))
            .field("punch_timeout", &self.punch_timeout)
            .field("punch_ttl", &self.punch_ttl)
            .field("token", &self.token.as_ref().map(|_| "<hidden>"))
            .field("early_data", &self.early_data)
            .finish()
    }
}

impl ConnectOptions {
    /// Options with the default punch timeout.
    pub fn new(server: &str, peer: &str, secret: Option<&str>) -> Result<Self, Error> {
        Ok(ConnectOptions {
            server: ServerUrl::parse(server)?,
            peer: peer.to_string(),
            secret: secret.map(str::to_string),
            punch_timeout: punch::DEFAULT_PUNCH_TIMEOUT,
            punch_ttl: Some(punch::DEFAULT_LOW_TTL),
            token: None,
            early_data: None,
        })
    }
}

/// A connected stream to the service and how it was reached.
#[derive(Debug)]
pub struct Connection {
    /// The stream; bytes written here reach the service.
    pub stream: TcpStream,
    /// How the stream was reached.
    pub info: ConnectionInfo,
    /// Bytes [`connect_early`] read from the local side and already wrote to the stream.
    pub early_sent: u64,
}

/// Connects to the service exposed as `opts.peer`.
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
/// #         let (mut r, mut w) = a.stream.split();
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
    let started = Instant::now();
    let server_addr = opts.server.resolve().await?;
    connect_with(opts, server_addr, Nonce::random(), started).await
}

/// Most bytes [`connect_early`] reads ahead from the local side.
pub const EARLY_DATA_MAX: usize = 64 * 1024;

/// Connects like [`connect`] while reading what `local` already sends (up to
/// [`EARLY_DATA_MAX`] bytes), so that those bytes leave with the stream's selection instead of
/// a round trip later (see [`EarlyData`]). Every byte read from `local` is written to the
/// returned stream, in order; a byte from the peer reaches the caller only after the agent's
/// hello was checked. For forwarding a local connection or stdin: carry on with
/// [`crate::forward`] on the same `local`.
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
            n = local.read(&mut buf), if local_open && early.len() < EARLY_DATA_MAX => match n {
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

async fn connect_with(
    opts: &ConnectOptions,
    server_addr: SocketAddr,
    nonce: Nonce,
    started: Instant,
) -> Result<Connection, Error> {
    let peer = ServiceId::new(&opts.peer).map_err(|e| Error::Refused(e.code, e.message))?;
    // The control connection and the punch share one local port, so the server sees the NAT
    // mapping the peer must aim at. The listener catches SYNs that beat ours out.
    let any = net::any_addr(&server_addr, 0);
    let listener = net::shared_listener(any)?;
    let port = listener.local_addr()?.port();
    // The NAT probe leaves from the same port at the same moment as the control connection;
    // the server compares the two mappings.
    let probe_token = ProbeToken::random();
    let mut tasks = JoinSet::new();
    {
        let (local, token) = (net::any_addr(&server_addr, port), probe_token);
        let probe_addr = protocol::probe_addr(server_addr);
        tasks.spawn(async move {
            if let Err(e) = probe::probe(local, probe_addr, &token).await {
                tracing::debug!("NAT probe to {probe_addr}: {e}");
            }
        });
    }
    let query = ConnectQuery {
        peer,
        proof: opts
            .secret
            .as_deref()
            .map(|s| protocol::connect_proof(s, &opts.peer, &nonce)),
        nonce,
        private: net::local_candidates(port, &server_addr),
        mode: Mode::Punch,
        probe: Some(probe_token),
    };
    let (mut ws, local) = control::open(
        &opts.server,
        server_addr,
        net::any_addr(&server_addr, port),
        protocol::CONNECT_PATH,
        &query.to_query(),
        opts.token.as_deref(),
    )
    .await
    .map_err(|e| match e {
        Error::Refused(code, msg) => control::server_error(code, msg, &opts.peer),
        e => e,
    })?;
    let order = match tokio::time::timeout(control::SERVER_TIMEOUT, control::recv(&mut ws)).await {
        Err(_) => {
            return Err(Error::Protocol(
                "no punch order from the server in time".into(),
            ));
        }
        Ok(r) => r?,
    };
    let punch = match order {
        Some(ServerToClient::Punch(p)) => p,
        Some(ServerToClient::Error { code, message }) => {
            return Err(control::server_error(code, message, &opts.peer));
        }
        Some(other) => {
            return Err(Error::Protocol(format!("unexpected message {other:?}")));
        }
        None => return Err(Error::Protocol("server closed the control channel".into())),
    };
    let secret = match punch.auth {
        Auth::Secret => opts.secret.as_deref(),
        Auth::Public => None,
    };
    let keys = SessionKeys::derive(punch.session, &punch.key, secret);
    let plan = PunchPlan::for_order(Order {
        punch: &punch,
        local: net::any_addr(&server_addr, local.port()),
        role: Role::Client,
        proof: Proof::Hello {
            role: Role::Client,
            keys,
        },
        timeout: opts.punch_timeout,
        low_ttl: opts.punch_ttl,
        server: &opts.server,
        server_addr,
        early: opts.early_data.clone(),
    });
    tracing::debug!(
        strategy = %punch.strategy, mine = %punch.your_mapping, peer = %punch.peer_mapping,
        relay = ?punch.relay_after_ms, "punch order"
    );

    let (inbound_tx, inbound) = mpsc::channel(8);
    tasks.spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            if inbound_tx
                .send(Inbound {
                    stream,
                    hello: None,
                })
                .await
                .is_err()
            {
                return;
            }
        }
    });

    let engine = punch::run(plan, inbound, || {});
    tokio::pin!(engine);
    let mut ctrl_open = true;
    let punched = loop {
        tokio::select! {
            result = &mut engine => break result,
            msg = control::recv::<ServerToClient>(&mut ws), if ctrl_open => match msg {
                Ok(Some(ServerToClient::Error { code, message })) => {
                    return Err(control::server_error(code, message, &opts.peer));
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => ctrl_open = false,
            },
        }
    };
    tasks.shutdown().await;
    let outcome = punched.map(|p| {
        let path = p.path(&punch.peer_private);
        (p, path, started.elapsed())
    });
    let result = match &outcome {
        Ok((_, path, setup)) => ClientToServer::Result {
            outcome: path.label().to_string(),
            setup_ms: Some(setup.as_millis() as u64),
            reason: None,
        },
        Err(f) => ClientToServer::Result {
            outcome: "failed".into(),
            setup_ms: None,
            reason: Some(f.to_string()),
        },
    };
    if ctrl_open {
        let report = async {
            let _ = control::send(&mut ws, &result).await;
            let _ = ws.close(None).await;
        };
        let _ = tokio::time::timeout(Duration::from_millis(100), report).await;
    }
    match outcome {
        Ok((p, path, setup)) => Ok(Connection {
            early_sent: 0,
            stream: p.stream,
            info: ConnectionInfo {
                path,
                peer_addr: p.peer,
                setup,
                session: punch.session,
                strategy: punch.strategy,
            },
        }),
        Err(failure) => Err(Error::NoDirectPath {
            peer: opts.peer.clone(),
            detail: failure.to_string(),
        }),
    }
}
