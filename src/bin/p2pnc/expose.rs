//! `p2pnc expose`: registers an id and forwards every proven stream to the local service.

use std::time::Duration;

use anyhow::{Result, bail};
use clap::Args;
use p2pnc::{Agent, ExposeOptions};
use tokio::net::TcpStream;
use tokio_util::task::TaskTracker;

use crate::args::{PunchArgs, ReportArgs, TlsArgs};

/// How long `expose` waits for the local service to accept a connection.
const SERVICE_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Args)]
#[command(group(clap::ArgGroup::new("auth").required(true).args(["secret", "public"])))]
pub struct ExposeArgs {
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

/// Exposes the service until a stop signal (see `signals`), or until the server says the agent
/// must stop.
pub async fn run(args: ExposeArgs) -> Result<()> {
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
    let stop = crate::signals::shutdown_token(crate::signals::Hangup::Stops)?;
    let mut agent = Agent::start(opts).await?;
    let tasks = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
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
