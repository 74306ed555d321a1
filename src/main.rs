use std::ffi::OsString;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::parser::ValueSource;
use clap::{Args, CommandFactory, Parser, Subcommand};
use p2pnc::{Agent, ConnectOptions, ExposeOptions, ServerUrl};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long `expose` waits for the local service to accept a connection.
const SERVICE_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// File descriptors the server needs besides its control connections: listeners, probe and
/// admin connections, log files.
const FD_HEADROOM: u64 = 1024;

/// Direct TCP connections between hosts behind NATs.
#[derive(Parser)]
#[command(version, about, propagate_version = true)]
struct Cli {
    /// More logging (-v: debug, -vv: trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Only warnings and errors.
    #[arg(short, long, global = true)]
    quiet: bool,
    /// Log format on stderr: `text` for people, `json` (one object per line, with every field
    /// such as session and peer) for log collectors.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "P2PNC_LOG_FORMAT"
    )]
    log_format: LogFormat,
    /// Read this command's settings from a TOML file (keys are the long flag names); flags and
    /// environment variables override it.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Flags a config file may not set.
const NOT_IN_CONFIG: &[&str] = &[
    "config",
    "help",
    "version",
    "verbose",
    "quiet",
    "log-format",
];

/// Parses the command line, filling in settings from `--config FILE` that were given neither
/// as flags nor through the environment.
fn parse_cli(argv: Vec<OsString>) -> Result<Cli> {
    let first = Cli::command()
        .ignore_errors(true)
        .try_get_matches_from(&argv)
        .ok();
    let config = first
        .as_ref()
        .and_then(|m| m.get_one::<PathBuf>("config").cloned());
    let (Some(path), Some(first)) = (config, first) else {
        return Ok(Cli::parse_from(argv));
    };
    let Some((sub, sub_matches)) = first.subcommand() else {
        return Ok(Cli::parse_from(argv));
    };
    let cmd = Cli::command();
    let sub_cmd = cmd
        .find_subcommand(sub)
        .ok_or_else(|| anyhow!("unknown command {sub}"))?;
    let known: Vec<&str> = sub_cmd
        .get_arguments()
        .filter_map(|a| a.get_long())
        .filter(|l| !NOT_IN_CONFIG.contains(l))
        .collect();
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    let settings =
        p2pnc::config::parse(&text, &known).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    let mut words: Vec<OsString> = Vec::new();
    for setting in settings {
        let id = sub_cmd
            .get_arguments()
            .find(|a| a.get_long() == Some(setting.flag.as_str()))
            .map(|a| a.get_id().as_str().to_string())
            .expect("known flags have an argument");
        let given = matches!(
            sub_matches.value_source(&id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        );
        if !given {
            words.push(format!("--{}", setting.flag).into());
            words.extend(setting.words.into_iter().map(OsString::from));
        }
    }
    let at = argv
        .iter()
        .position(|a| a.to_str() == Some(sub))
        .map_or(argv.len(), |i| i + 1);
    let mut argv = argv;
    argv.splice(at..at, words);
    Ok(Cli::parse_from(argv))
}

#[derive(Subcommand)]
enum Command {
    /// Run the rendezvous server (HTTP and WebSocket on one port).
    Server(ServerArgs),
    /// Expose a local TCP service under an id, reachable by `p2pnc connect`.
    Expose(ExposeArgs),
    /// Connect to an exposed service, on stdin/stdout or as a local port.
    Connect(ConnectArgs),
    /// Run server, echo service, expose and connect on loopback and show each step.
    Demo,
    /// Report this host's NAT: mapping behaviour, port preservation, filtering, public address.
    NatCheck {
        /// Rendezvous server, e.g. http://203.0.113.10:50300.
        #[arg(long, env = "P2PNC_SERVER")]
        server: String,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        tls: TlsArgs,
    },
}

#[derive(Args)]
struct ServerArgs {
    /// Address to listen on (HTTP and WebSocket).
    #[arg(long, default_value = p2pnc::defaults::SERVER_LISTEN)]
    listen: SocketAddr,
    /// Address of the NAT probe port [default: the --listen address, port + 1].
    #[arg(long)]
    probe_listen: Option<SocketAddr>,
    /// Require this token from every agent and client (or set P2PNC_TOKEN).
    #[arg(long, env = "P2PNC_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Seconds an id stays reserved for its owner after the owner went offline.
    #[arg(long, default_value_t = p2pnc::defaults::ID_GRACE.as_secs())]
    id_grace: u64,
    /// Connect requests per second allowed from one address (bursts of 3 s worth).
    #[arg(long, default_value_t = p2pnc::defaults::CONNECT_RATE)]
    connect_rate: f64,
    /// Registrations per second allowed from one address (bursts of 5 s worth).
    #[arg(long, default_value_t = p2pnc::defaults::EXPOSE_RATE)]
    expose_rate: f64,
    /// Most connections to the control port from one address.
    #[arg(long, default_value_t = p2pnc::defaults::MAX_CONNECTIONS_PER_IP)]
    max_connections_per_ip: usize,
    /// Most connections to the control port in all (each online agent holds one).
    #[arg(long, default_value_t = p2pnc::defaults::MAX_CONNECTIONS)]
    max_connections: usize,
    /// Serve /metrics (Prometheus) and a status page here, e.g. 127.0.0.1:50309 (off unless
    /// given; keep it off public addresses).
    #[arg(long)]
    admin: Option<SocketAddr>,
    /// Relay sessions that have no direct path (costs this host bandwidth).
    #[arg(long)]
    relay: bool,
    /// Most relayed sessions at once.
    #[arg(
        long = "relay-max-sessions",
        value_name = "RELAY_MAX_SESSIONS",
        default_value_t = p2pnc::defaults::RELAY_MAX_PAIRS,
        requires = "relay"
    )]
    relay_max_pairs: usize,
    /// Relay rate cap per session and direction, in bytes per second.
    #[arg(long, default_value_t = p2pnc::defaults::RELAY_RATE, requires = "relay")]
    relay_rate: u64,
    /// Speak TLS on the control port with this PEM certificate chain (leaf first); clients
    /// then use https:// URLs. The log names the certificate's pin for --tls-pin.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

/// What an https:// server URL trusts.
#[derive(Args)]
struct TlsArgs {
    /// Trust only the CA certificates in this PEM file for an https:// server (a private CA)
    /// instead of the public web CAs.
    #[arg(
        long,
        value_name = "FILE",
        env = "P2PNC_TLS_CA",
        conflicts_with = "tls_pin"
    )]
    tls_ca: Option<PathBuf>,
    /// Trust exactly the server certificate with this fingerprint, sha256:<64 hex digits>, as
    /// the server logs it (self-signed certificates work; repeat for a rollover).
    #[arg(long, value_name = "PIN", env = "P2PNC_TLS_PIN", value_delimiter = ',')]
    tls_pin: Vec<String>,
}

impl TlsArgs {
    /// The server URL with the trust these flags ask for.
    fn server_url(&self, server: &str) -> Result<ServerUrl> {
        let url = ServerUrl::parse(server)?;
        let trust = match (&self.tls_ca, self.tls_pin.is_empty()) {
            (Some(ca), _) => {
                p2pnc::tls::Trust::ca_file(ca).map_err(|e| anyhow!("--tls-ca: {e}"))?
            }
            (None, false) => {
                p2pnc::tls::Trust::pins(&self.tls_pin).map_err(|e| anyhow!("--tls-pin: {e}"))?
            }
            (None, true) => return Ok(url),
        };
        Ok(url.with_trust(trust)?)
    }
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("auth").required(true).args(["secret", "public"])))]
struct ExposeArgs {
    /// Rendezvous server, e.g. http://203.0.113.10:50300.
    #[arg(long, env = "P2PNC_SERVER")]
    server: String,
    /// Id to register; clients connect with --peer ID.
    #[arg(long)]
    id: String,
    /// The local service to forward to, e.g. 127.0.0.1:50302.
    #[arg(long)]
    to: String,
    /// Service secret clients must know (or set P2PNC_SECRET).
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
    #[command(flatten)]
    report: ReportArgs,
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("mode").required(true).args(["stdio", "listen"])))]
struct ConnectArgs {
    /// Rendezvous server, e.g. http://203.0.113.10:50300.
    #[arg(long, env = "P2PNC_SERVER")]
    server: String,
    /// Id of the exposed service.
    #[arg(long)]
    peer: String,
    /// Service secret (or set P2PNC_SECRET); omit for services exposed with --public.
    #[arg(long, env = "P2PNC_SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// Make one connection and carry it on stdin/stdout.
    #[arg(long)]
    stdio: bool,
    /// Listen here and give every accepted connection its own P2P connection.
    #[arg(long)]
    listen: Option<SocketAddr>,
    #[command(flatten)]
    punch: PunchArgs,
    #[command(flatten)]
    tls: TlsArgs,
    #[command(flatten)]
    report: ReportArgs,
}

/// Structured reports of connections, for scripts and tests.
#[derive(Args, Clone, Copy)]
struct ReportArgs {
    /// Print one JSON object per connection on stderr when it ends: path, peer address and
    /// family, strategy, setup time, session, bytes each way; or the error code and message.
    #[arg(long, value_enum, value_name = "FORMAT")]
    report: Option<ReportFormat>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ReportFormat {
    Json,
}

impl ReportArgs {
    /// Reports a connection that ended: how it was set up and what it carried, as
    /// `forward(peer_stream, local)` returns it (bytes from the peer, bytes to the peer), or
    /// the error that ended it.
    fn ended(
        &self,
        kind: &str,
        id: &str,
        info: &p2pnc::ConnectionInfo,
        carried: &std::io::Result<(u64, u64)>,
    ) {
        let mut fields = info.report();
        fields["id"] = id.into();
        match carried {
            Ok((from_peer, to_peer)) => {
                fields["bytes_sent"] = (*to_peer).into();
                fields["bytes_received"] = (*from_peer).into();
            }
            Err(e) => fields["broke"] = e.to_string().into(),
        }
        self.emit(kind, fields);
    }

    /// Reports a connection that failed before it carried anything.
    fn failed(&self, kind: &str, id: &str, e: &p2pnc::Error) {
        let mut fields = e.report();
        fields["id"] = id.into();
        self.emit(kind, fields);
    }

    /// Writes `fields` under `"report": kind` as one line on stderr, when asked to.
    fn emit(&self, kind: &str, mut fields: serde_json::Value) {
        if self.report.is_none() {
            return;
        }
        if let Some(map) = fields.as_object_mut() {
            map.insert("report".into(), kind.into());
        }
        eprintln!("{fields}");
    }
}

#[derive(Args)]
struct PunchArgs {
    /// The server's token, if it requires one (or set P2PNC_TOKEN).
    #[arg(long, env = "P2PNC_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Seconds a punch may take before it is given up.
    #[arg(long, default_value_t = p2pnc::defaults::PUNCH_TIMEOUT.as_secs_f64())]
    punch_timeout: f64,
    /// TTL of SYNs meant to open only this host's NAT (the agent's first SYN, the symmetric
    /// side's birthday sockets); 0 sends them with the normal TTL.
    #[arg(long, default_value_t = p2pnc::defaults::PUNCH_TTL)]
    punch_ttl: u32,
}

impl PunchArgs {
    /// The punch these flags ask for.
    fn options(&self) -> Result<p2pnc::PunchOptions> {
        let timeout = Duration::try_from_secs_f64(self.punch_timeout)
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or_else(|| anyhow!("--punch-timeout must be a positive number of seconds"))?;
        Ok(p2pnc::PunchOptions {
            timeout,
            ttl: (self.punch_ttl > 0).then_some(self.punch_ttl),
        })
    }
}

fn main() -> ExitCode {
    let cli = match parse_cli(std::env::args_os().collect()) {
        Ok(cli) => cli,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let demo = matches!(cli.command, Command::Demo);
    let level = match (cli.quiet, cli.verbose) {
        (true, _) => "warn",
        (false, 0) if demo => "warn",
        (false, 0) => "info",
        (false, 1) => "debug",
        (false, _) => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("P2PNC_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("p2pnc={level}")));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    match cli.log_format {
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => logs.json().with_current_span(false).init(),
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli.command));
    // stdin is read on a blocking thread that cannot be interrupted; do not wait for it.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A token cancelled on Ctrl-C or SIGTERM.
fn shutdown_token() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        t.cancel();
    });
    token
}

async fn run(command: Command) -> Result<()> {
    match command {
        Command::Server(args) => server(args).await,
        Command::Expose(args) => expose(args).await,
        Command::Connect(args) => connect(args).await,
        Command::Demo => p2pnc::demo::run().await,
        Command::NatCheck { server, json, tls } => {
            let report = p2pnc::nat_check(&tls.server_url(&server)?).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{report}");
            }
            Ok(())
        }
    }
}

async fn server(args: ServerArgs) -> Result<()> {
    if !(args.connect_rate > 0.0 && args.expose_rate > 0.0) {
        bail!("--connect-rate and --expose-rate must be positive");
    }
    // Every connection is a file descriptor; leave room for the probe port and the admin.
    let want_fds = args.max_connections as u64 + FD_HEADROOM;
    let fds = p2pnc::server::raise_open_file_limit(want_fds);
    if fds < want_fds {
        tracing::warn!(
            "the open-file limit is {fds}, too low for --max-connections {}: raise it \
             (ulimit -n, or LimitNOFILE= in the systemd unit) to at least {want_fds}",
            args.max_connections
        );
    }
    let listener = p2pnc::server::listen(args.listen)
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let local = listener.local_addr()?;
    let probe_addr = args
        .probe_listen
        .unwrap_or_else(|| p2pnc::protocol::probe_addr(local));
    let probe = p2pnc::server::listen(probe_addr).with_context(|| {
        format!("cannot listen on {probe_addr} for NAT probes (--probe-listen)")
    })?;
    tracing::info!(
        "listening on {local}, NAT probes on {}",
        probe.local_addr()?
    );
    let relay = args.relay.then_some(p2pnc::server::RelayConfig {
        max_pairs: args.relay_max_pairs,
        bytes_per_sec: args.relay_rate,
    });
    if let Some(r) = &relay {
        tracing::info!(
            "relay on: at most {} sessions at {} bytes/s each way",
            r.max_pairs,
            r.bytes_per_sec
        );
    }
    if args.token.is_none() {
        tracing::warn!("no --token: anyone may register ids and request connections");
    }
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            let tls = p2pnc::tls::ServerTls::load(cert, key).map_err(|e| anyhow!("{e}"))?;
            tracing::info!(
                "TLS on the control port; clients may pin the certificate with --tls-pin {} \
                 (SIGHUP reloads the certificate and key)",
                tls.fingerprint()
            );
            tokio::spawn(reload_on_sighup(tls.clone()));
            Some(tls)
        }
        _ => None,
    };
    let config = p2pnc::server::ServerConfig {
        relay,
        tls,
        token: args.token,
        id_grace: Duration::from_secs(args.id_grace),
        connect_rate: args.connect_rate,
        expose_rate: args.expose_rate,
        max_connections_per_ip: args.max_connections_per_ip,
        max_connections: args.max_connections,
        ..Default::default()
    };
    let admin = match args.admin {
        Some(addr) => {
            let l = TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (--admin)"))?;
            tracing::info!("admin (metrics, status page) on http://{}", l.local_addr()?);
            Some(l)
        }
        None => None,
    };
    let listeners = p2pnc::server::Listeners {
        control: listener,
        probe: Some(probe),
        admin,
    };
    p2pnc::server::serve(listeners, config, shutdown_token()).await?;
    Ok(())
}

/// Reloads the TLS certificate and key on every SIGHUP (after a renewal); runs for the life of
/// the process.
async fn reload_on_sighup(tls: p2pnc::tls::ServerTls) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        return tracing::warn!("cannot watch SIGHUP: the TLS certificate is not reloadable");
    };
    while hup.recv().await.is_some() {
        match tls.reload() {
            Ok(pin) => tracing::info!("TLS certificate reloaded; its pin is now {pin}"),
            Err(e) => tracing::error!("TLS certificate not reloaded, the old one stays: {e}"),
        }
    }
}

async fn expose(args: ExposeArgs) -> Result<()> {
    if args.public {
        tracing::warn!(
            "--public: anyone who knows the id '{}' can reach {}",
            args.id,
            args.to
        );
    }
    let opts = ExposeOptions {
        server: args.tls.server_url(&args.server)?,
        punch: args.punch.options()?,
        punch_port: args.punch_port,
        token: args.punch.token.clone(),
        port_mapping: !args.no_port_mapping,
        ..ExposeOptions::new(
            &args.server,
            &args.id,
            if args.public {
                None
            } else {
                args.secret.as_deref()
            },
        )?
    };
    let token = shutdown_token();
    let mut agent = Agent::start(opts).await?;
    let tasks = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            _ = token.cancelled() => break,
            a = agent.accept() => a,
        };
        let Some(mut accepted) = accepted else {
            if let Some(reason) = agent.stop_reason() {
                bail!("{reason}");
            }
            break;
        };
        let (to, id, reports) = (args.to.clone(), args.id.clone(), args.report);
        tasks.spawn(async move {
            let service =
                tokio::time::timeout(SERVICE_CONNECT_TIMEOUT, TcpStream::connect(&to)).await;
            let mut service = match service {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return tracing::error!("service {to} refused: {e}"),
                Err(_) => return tracing::error!("service {to} did not accept in time"),
            };
            let _ = service.set_nodelay(true);
            let carried = p2pnc::forward(&mut accepted.stream, &mut service).await;
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

async fn connect(args: ConnectArgs) -> Result<()> {
    let opts = ConnectOptions {
        server: args.tls.server_url(&args.server)?,
        peer: args.peer.clone(),
        secret: args.secret.clone(),
        punch: args.punch.options()?,
        token: args.punch.token.clone(),
        early_data: None,
    };
    if args.stdio {
        // What is already on stdin leaves with the stream's first packet.
        let mut stdio = tokio::io::join(tokio::io::stdin(), tokio::io::stdout());
        let mut conn = match p2pnc::connect_early(&opts, &mut stdio).await {
            Ok(conn) => conn,
            Err(e) => {
                args.report.failed("connect", &opts.peer, &e);
                return Err(e.into());
            }
        };
        report(&opts.peer, &conn.info);
        let early = conn.early_sent;
        let carried = p2pnc::forward(&mut conn.stream, &mut stdio)
            .await
            .map(|(from, to)| (from, to + early));
        args.report
            .ended("connect", &opts.peer, &conn.info, &carried);
        carried.with_context(|| format!("the stream to '{}' broke", opts.peer))?;
        return Ok(());
    }
    let listen = args.listen.expect("clap requires --stdio or --listen");
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    eprintln!("listening on {}", listener.local_addr()?);
    let token = shutdown_token();
    let tasks = TaskTracker::new();
    loop {
        let (mut local, from) = tokio::select! {
            _ = token.cancelled() => break,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let (opts, reports) = (opts.clone(), args.report);
        tasks.spawn(async move {
            let _ = local.set_nodelay(true);
            match p2pnc::connect_early(&opts, &mut local).await {
                Ok(mut conn) => {
                    report(&opts.peer, &conn.info);
                    let early = conn.early_sent;
                    let carried = p2pnc::forward(&mut conn.stream, &mut local)
                        .await
                        .map(|(from, to)| (from, to + early));
                    reports.ended("connect", &opts.peer, &conn.info, &carried);
                    if let Err(e) = carried {
                        tracing::info!("connection from {from} closed: {e}");
                    }
                }
                Err(e) => {
                    reports.failed("connect", &opts.peer, &e);
                    tracing::error!("connection from {from}: {e}");
                }
            }
        });
    }
    // Open forwards end with the process.
    tasks.close();
    Ok(())
}

fn report(peer: &str, info: &p2pnc::ConnectionInfo) {
    eprintln!(
        "connected to '{peer}' ({}, {}) in {} ms",
        info.path,
        info.peer_addr,
        info.setup.as_millis()
    );
}
