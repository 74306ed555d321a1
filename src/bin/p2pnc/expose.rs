//! `p2pnc expose`: registers an id and forwards every proven stream to the local service.

use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use clap::Args;
use p2pnc::{Agent, ExposeOptions, ServiceHealth};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::args::{PunchArgs, ReportArgs, ServerArgs, TlsArgs};

/// How long `expose` waits for the local service to accept a connection.
const SERVICE_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often `expose` checks that the service accepts connections while no stream comes: a
/// status page that says "refusing" within 10 s of a service going down, at one connection
/// every 10 s to the service.
const SERVICE_PROBE_INTERVAL: Duration = Duration::from_secs(10);
/// How long a probe waits for the service to accept: a local service answers in
/// microseconds, one on the LAN in milliseconds; a service that takes longer than this is in
/// trouble. Shorter than [`SERVICE_PROBE_INTERVAL`] so probes never overlap.
const SERVICE_PROBE_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Args)]
// Both may be given (a secret in the environment, --public on the command line): --public
// wins, with a warning.
#[command(group(
    clap::ArgGroup::new("auth").required(true).multiple(true).args(["secret", "public"])
))]
pub struct ExposeArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Id to register; clients connect with --peer ID.
    #[arg(long)]
    id: String,
    /// The local service to forward to, e.g. 127.0.0.1:50302.
    #[arg(long)]
    to: String,
    /// Service secret clients must know.
    #[arg(long, env = "P2PNC_SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// Let anyone who knows the id connect, without a secret.
    #[arg(long)]
    public: bool,
    #[command(flatten)]
    punch: PunchArgs,
    #[command(flatten)]
    tls: TlsArgs,
    /// Local punch port (0: any free port).
    #[arg(long, default_value_t = 0)]
    punch_port: u16,
    /// Do not ask the local router to forward a port to the punch port (PCP, NAT-PMP,
    /// UPnP-IGD).
    #[arg(long)]
    no_port_mapping: bool,
    /// Let clients that ask for it (connect --no-encrypt) have unencrypted streams; without
    /// this flag every stream is encrypted.
    #[arg(long)]
    no_encrypt: bool,
    /// Refuse the seed's plain mode (a raw, unencrypted connection for clients that call
    /// getP2PLocalPeerAddress).
    #[arg(long)]
    no_plain: bool,
    /// This agent's static key (created if missing): clients pin it with
    /// --peer-pin sha256:..., as the log shows at start. The way to authenticate a --public
    /// service.
    #[arg(long, value_name = "FILE")]
    key: Option<std::path::PathBuf>,
    /// Serve /metrics (Prometheus) and a status page of the agent's warm paths on ADDR, e.g.
    /// 127.0.0.1:50319; off unless given. Keep it off public addresses.
    #[arg(long, value_name = "ADDR")]
    admin: Option<std::net::SocketAddr>,
    #[command(flatten)]
    report: ReportArgs,
    /// Check every SECS seconds (and at start) that --to accepts connections, shown on the
    /// --admin page; each check is a connection the service sees, closed at once. 0: no
    /// checks (the state then follows real connections only) — for services that take a
    /// single connection, such as `nc -l`.
    #[arg(long, value_name = "SECS", default_value_t = SERVICE_PROBE_INTERVAL.as_secs_f64())]
    service_probe: f64,
}

/// Loads the agent's static key from `path`, or creates it there (readable by the owner only).
fn load_or_create_key(path: &std::path::Path) -> Result<p2pnc::protocol::StaticKey> {
    use p2pnc::protocol::StaticKey;
    const HEAD: &str = "p2pnc static key v1";
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let mut lines = text.lines();
            let (head, hex) = (lines.next(), lines.next().map(str::trim));
            let private: Option<[u8; 32]> = hex
                .filter(|_| head == Some(HEAD))
                .and_then(|h| hex::decode(h).ok())
                .and_then(|b| b.try_into().ok());
            private
                .and_then(|p| StaticKey::from_private(&p))
                .ok_or_else(|| anyhow!("--key {}: not a p2pnc static key file", path.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = StaticKey::generate();
            let text = format!("{HEAD}\n{}\n", hex::encode(key.private()));
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut file = options
                .open(path)
                .with_context(|| format!("cannot create --key {}", path.display()))?;
            std::io::Write::write_all(&mut file, text.as_bytes())
                .with_context(|| format!("cannot write --key {}", path.display()))?;
            tracing::info!("created a static key in {}", path.display());
            Ok(key)
        }
        Err(e) => Err(anyhow!("cannot read --key {}: {e}", path.display())),
    }
}

/// Exposes the service until a stop signal (see `signals`).
pub async fn run(args: ExposeArgs) -> Result<()> {
    check_service_address(&args.to)?;
    if args.public {
        tracing::warn!(
            "--public: anyone who knows the id '{}' can reach {}",
            args.id,
            args.to
        );
        if args.secret.is_some() {
            tracing::warn!(
                "--public ignores the secret (--secret or P2PNC_SECRET): clients connect \
                 without one; drop --public to require it"
            );
        }
    }
    let mut servers = args.tls.server_urls(&args.server.servers)?.into_iter();
    let opts = ExposeOptions {
        server: servers.next().expect("at least one --server"),
        other_servers: servers.collect(),
        punch: args.punch.options()?,
        punch_port: args.punch_port,
        token: args.punch.token.clone(),
        port_mapping: !args.no_port_mapping,
        allow_unencrypted: args.no_encrypt,
        allow_plain: !args.no_plain,
        key: args.key.as_deref().map(load_or_create_key).transpose()?,
        ..ExposeOptions::new(
            &args.server.servers[0],
            &args.id,
            if args.public {
                None
            } else {
                args.secret.as_deref()
            },
        )?
    };
    if let Some(key) = &opts.key {
        tracing::info!(
            "static key: clients may pin this agent with --peer-pin {}",
            key.fingerprint()
        );
    }
    let stop = crate::signals::shutdown_token(crate::signals::Hangup::Stops)?;
    let tasks = TaskTracker::new();
    // Bound before the agent registers, so a taken address fails at once.
    let admin = match args.admin {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("--admin {addr}: cannot listen"))?,
        ),
        None => None,
    };
    // The probe starts before the agent registers: a dead service is reported at once.
    let health = ServiceHealth::new(&args.to);
    let interval = Duration::try_from_secs_f64(args.service_probe)
        .map_err(|_| anyhow!("--service-probe must be a number of seconds, 0 or more"))?;
    if !interval.is_zero() {
        tasks.spawn(probe_service(health.clone(), interval, stop.clone()));
    }
    // Start-up retries an unreachable server for as long as it takes: a stop signal ends it.
    let mut agent = tokio::select! {
        _ = stop.cancelled() => return Ok(()),
        agent = Agent::start(opts) => agent?,
    };
    agent.show_service(health.clone());
    if let Some(listener) = admin {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!("admin: /metrics and the status page on http://{addr}/");
        }
        let serving = agent.serve_admin(listener, stop.clone());
        tasks.spawn(async move {
            if let Err(e) = serving.await {
                tracing::error!("admin listener failed: {e}");
            }
        });
    }
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            a = agent.accept() => a,
        };
        let Some(mut accepted) = accepted else {
            break;
        };
        let (to, id, reports) = (args.to.clone(), args.id.clone(), args.report);
        let health = health.clone();
        tasks.spawn(async move {
            let service =
                tokio::time::timeout(SERVICE_CONNECT_TIMEOUT, TcpStream::connect(&to)).await;
            let why = match service {
                Ok(Ok(s)) => Ok(s),
                Ok(Err(e)) => Err((
                    format!("its service at {to} refused the connection ({e})"),
                    describe_io_error(&e),
                )),
                Err(_) => Err((
                    format!("its service at {to} did not accept in time"),
                    format!("no answer in {} s", SERVICE_CONNECT_TIMEOUT.as_secs()),
                )),
            };
            let mut service = match why {
                Ok(s) => {
                    health.accepting();
                    s
                }
                Err((why, error)) => {
                    health.refused_forward(&error);
                    tracing::error!("{why}");
                    // The client learns why in one line instead of a reset stream.
                    accepted.stream.refuse(&why).await;
                    return;
                }
            };
            let _ = service.set_nodelay(true);
            let carried = p2pnc::forward_tcp(&mut accepted.stream, &mut service).await;
            reports.ended("accept", &id, &accepted.info, &carried);
            match carried {
                Ok((up, down)) => tracing::info!(
                    session = %accepted.info.session,
                    "closed: {up} bytes to the service, {down} back"
                ),
                Err(e) => tracing::info!(session = %accepted.info.session, "closed: {e}"),
            }
        });
    }
    tasks.close();
    agent.shutdown().await;
    Ok(())
}

/// Checks that the service accepts connections, at once and then every `interval`, until
/// `stop`, and reports each result to `health` (which logs only the changes). Each probe is a
/// TCP connection closed as soon as it is made: the service sees it.
async fn probe_service(health: ServiceHealth, interval: Duration, stop: CancellationToken) {
    loop {
        let probe =
            tokio::time::timeout(SERVICE_PROBE_TIMEOUT, TcpStream::connect(health.address()));
        let result = tokio::select! {
            _ = stop.cancelled() => return,
            r = probe => r,
        };
        match result {
            Ok(Ok(conn)) => {
                drop(conn);
                health.accepting();
            }
            Ok(Err(e)) => health.refusing(&describe_io_error(&e)),
            Err(_) => health.refusing(&format!(
                "no answer in {} s",
                SERVICE_PROBE_TIMEOUT.as_secs()
            )),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

/// An I/O error as a user reads it: "Connection refused", without "(os error 111)".
fn describe_io_error(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error ") {
        Some(at) => text[..at].to_string(),
        None => text,
    }
}

/// Refuses a `--to` that is not `HOST:PORT` (an IP address or a name, and a port) before
/// anything registers: otherwise every client would meet the mistake as a refused service.
fn check_service_address(to: &str) -> Result<()> {
    let bad = |why: &str| anyhow!("--to {to}: {why} (expected HOST:PORT, e.g. 127.0.0.1:8080)");
    let Some((host, port)) = to.rsplit_once(':') else {
        return Err(bad("no port"));
    };
    match port.parse::<u16>() {
        Ok(0) | Err(_) => return Err(bad("not a port number")),
        Ok(_) => {}
    }
    let v6 = host.strip_prefix('[').and_then(|h| h.strip_suffix(']'));
    if v6.is_some_and(|h| h.parse::<std::net::Ipv6Addr>().is_ok()) {
        return Ok(());
    }
    let name_ok = !host.is_empty()
        && host
            .split('.')
            .all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
    if name_ok {
        Ok(())
    } else {
        Err(bad("not an address or host name"))
    }
}
