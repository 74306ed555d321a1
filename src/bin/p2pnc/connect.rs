//! `p2pnc connect`: one connection on stdin/stdout, or one stream per connection to a local
//! port, on a warm path kept to the service (see `p2pnc::Peer`).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use p2pnc::{ConnectOptions, Peer, WarmOptions};
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

use crate::args::{PunchArgs, ReportArgs, ServerArgs, TlsArgs};

/// Pause after a failed accept on the local port (descriptors exhausted, say): a retry at
/// once would spin.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);
/// Time the warm path has to close cleanly when `connect --listen` stops.
const PEER_CLOSE_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Args)]
#[command(group(clap::ArgGroup::new("mode").required(true).args(["stdio", "listen"])))]
pub struct ConnectArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Id of the exposed service.
    #[arg(long)]
    peer: String,
    /// Service secret; omit for services exposed with --public.
    #[arg(long, env = "P2PNC_SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// Make one connection and carry it on stdin/stdout.
    #[arg(long)]
    stdio: bool,
    /// Listen here and carry every accepted connection to the service: as a stream on a
    /// warm path kept to it (no server round trip, no punch), or on its own connection.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// With --listen: build the warm path at start instead of at the first local connection.
    #[arg(long, conflicts_with = "stdio")]
    warm: bool,
    /// With --listen: close a warm path that carried no connection for this many seconds;
    /// 0: no warm paths (every local connection gets its own punched connection).
    #[arg(long, value_name = "SECS", conflicts_with = "stdio",
          default_value_t = p2pnc::defaults::WARM_IDLE.as_secs_f64())]
    warm_idle: f64,
    #[command(flatten)]
    punch: PunchArgs,
    #[command(flatten)]
    tls: TlsArgs,
    /// Ask the agent for an unencrypted stream (for applications that run TLS themselves);
    /// an agent without --no-encrypt keeps it encrypted.
    #[arg(long)]
    no_encrypt: bool,
    /// Accept only an agent holding the static key with this fingerprint, sha256:<64 hex>
    /// (expose --key logs it): authenticates a --public service.
    #[arg(long, value_name = "PIN")]
    peer_pin: Option<String>,
    #[command(flatten)]
    report: ReportArgs,
}

/// Connects, and forwards until the stream ends (`--stdio`) or until Ctrl-C or SIGTERM
/// (`--listen`).
pub async fn run(args: ConnectArgs) -> Result<()> {
    let mut servers = args.tls.server_urls(&args.server.servers)?.into_iter();
    let opts = ConnectOptions {
        server: servers.next().expect("at least one --server"),
        other_servers: servers.collect(),
        peer: args.peer.clone(),
        secret: args.secret.clone(),
        punch: args.punch.options()?,
        token: args.punch.token.clone(),
        early_data: None,
        encrypt: !args.no_encrypt,
        peer_pin: args.peer_pin.clone(),
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
    let idle = Duration::try_from_secs_f64(args.warm_idle)
        .map_err(|_| anyhow::anyhow!("--warm-idle must be a number of seconds, 0 or more"))?;
    let peer = Peer::new(opts.clone(), WarmOptions { idle });
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    eprintln!("listening on {}", listener.local_addr()?);
    let stop = crate::signals::shutdown_token(crate::signals::Hangup::Stops)?;
    let tasks = TaskTracker::new();
    if args.warm {
        let peer = peer.clone();
        tasks.spawn(async move {
            // A failure is only logged: the first local connection tries again.
            if let Err(e) = peer.warm_up().await {
                tracing::warn!("no warm path to '{}' yet: {e}", peer.id());
            }
        });
    }
    loop {
        let (mut local, from) = tokio::select! {
            _ = stop.cancelled() => break,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(ACCEPT_RETRY).await;
                    continue;
                }
            },
        };
        let (opts, reports, peer) = (opts.clone(), args.report, peer.clone());
        tasks.spawn(async move {
            let _ = local.set_nodelay(true);
            match peer.open_early(&mut local).await {
                Ok(mut conn) => {
                    report(&opts.peer, &conn.info);
                    let early = conn.early_sent;
                    let carried = p2pnc::forward_tcp(&mut conn.stream, &mut local)
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
    // Open forwards end with the process; the warm path says goodbye to the agent.
    tasks.close();
    let _ = tokio::time::timeout(PEER_CLOSE_TIMEOUT, peer.close()).await;
    Ok(())
}

/// Logs how a connection was set up (at info: -q hides it; `--report json` has it too).
fn report(peer: &str, info: &p2pnc::ConnectionInfo) {
    tracing::info!(
        "connected to '{peer}' ({}{}, {}) in {} ms",
        info.path,
        if info.warm { ", warm path" } else { "" },
        info.peer_addr,
        info.setup.as_millis()
    );
}
