//! `p2pnc server`: the rendezvous server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use tokio::net::TcpListener;

use crate::signals::{self, Hangup, Reloads};

/// File descriptors the server needs besides its control connections: listeners, probe and
/// admin connections, log files.
const FD_HEADROOM: u64 = 1024;

#[derive(Args)]
pub struct ServerArgs {
    /// Address to listen on (HTTP and WebSocket); the default takes IPv6 and IPv4 (IPv4 only on a
    /// host without IPv6).
    #[arg(long, default_value = p2pnc::defaults::SERVER_LISTEN)]
    listen: SocketAddr,
    /// Address of the NAT probe port [default: the --listen address, port + 1].
    #[arg(long)]
    probe_listen: Option<SocketAddr>,
    /// Require this token from every agent and client.
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
    /// Most connections to the control port in all (each online agent holds one) [default:
    /// 50000, or as many as the open-file limit allows when that is lower]
    #[arg(long)]
    max_connections: Option<usize>,
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
    /// Seconds a relayed session may last at most.
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = p2pnc::defaults::RELAY_MAX_LIFETIME.as_secs(),
        requires = "relay"
    )]
    relay_max_lifetime: u64,
    /// Seconds without a byte either way after which a relayed session is cut.
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = p2pnc::defaults::RELAY_IDLE_TIMEOUT.as_secs(),
        requires = "relay"
    )]
    relay_idle_timeout: u64,
    /// Most relayed sessions one address may take part in at once.
    #[arg(long, default_value_t = p2pnc::defaults::RELAY_MAX_PER_IP, requires = "relay")]
    relay_max_per_ip: usize,
    /// Speak TLS on the control port with this PEM certificate chain (leaf first); clients
    /// then use https:// URLs. The log names the certificate's pin for --tls-pin.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Run as one member of a cluster of servers sharing this Redis, redis://HOST:PORT (or set
    /// P2PNC_CLUSTER); a client may then ask any member for an agent held by any other.
    #[arg(
        long,
        value_name = "URL",
        env = "P2PNC_CLUSTER",
        hide_env_values = true
    )]
    cluster: Option<String>,
    /// With --cluster: the IP:PORT of this server's control port that clients, agents and the
    /// other members' clients reach it at [default: the --listen address, when it is not a
    /// wildcard].
    #[arg(long, value_name = "IP:PORT", requires = "cluster")]
    advertise: Option<SocketAddr>,
    /// With --cluster: this member's name, unique in the cluster [default: the --advertise
    /// address].
    #[arg(long, value_name = "NAME", requires = "cluster")]
    member: Option<String>,
}

/// Runs the server until a stop signal (see `signals`; SIGHUP reloads the certificate).
pub async fn run(args: ServerArgs) -> Result<()> {
    if !(args.connect_rate > 0.0 && args.expose_rate > 0.0) {
        bail!("--connect-rate and --expose-rate must be positive");
    }
    if args.relay_max_lifetime == 0 || args.relay_idle_timeout == 0 || args.relay_max_per_ip == 0 {
        bail!("--relay-max-lifetime, --relay-idle-timeout and --relay-max-per-ip must be positive");
    }
    let max_connections = size_max_connections(args.max_connections);
    let (control, probe) = bind(&args)?;
    let relay = args.relay.then_some(p2pnc::server::RelayConfig {
        max_pairs: args.relay_max_pairs,
        bytes_per_sec: args.relay_rate,
        max_lifetime: Duration::from_secs(args.relay_max_lifetime),
        idle_timeout: Duration::from_secs(args.relay_idle_timeout),
        max_per_ip: args.relay_max_per_ip,
    });
    if let Some(r) = &relay {
        tracing::info!(
            "relay on: at most {} sessions ({} per address) at {} bytes/s each way, each for \
             at most {:?} and {:?} idle",
            r.max_pairs,
            r.max_per_ip,
            r.bytes_per_sec,
            r.max_lifetime,
            r.idle_timeout
        );
    }
    if args.token.is_none() {
        tracing::warn!("no --token: anyone may register ids and request connections");
    }
    let tls = load_tls(&args)?;
    let cluster = cluster_config(&args, control.local_addr()?)?;
    let config = p2pnc::server::ServerConfig {
        cluster,
        relay,
        tls,
        token: args.token,
        id_grace: Duration::from_secs(args.id_grace),
        connect_rate: args.connect_rate,
        expose_rate: args.expose_rate,
        max_connections_per_ip: args.max_connections_per_ip,
        max_connections,
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
        control,
        probe: Some(probe),
        admin,
    };
    let stop = signals::shutdown_token(Hangup::Reloads)?;
    p2pnc::server::serve(listeners, config, stop).await?;
    Ok(())
}

/// The cluster membership of `--cluster`, `--advertise` and `--member`.
fn cluster_config(
    args: &ServerArgs,
    bound: SocketAddr,
) -> Result<Option<p2pnc::server::ClusterConfig>> {
    let Some(url) = &args.cluster else {
        return Ok(None);
    };
    p2pnc::server::check_redis_url(url)?;
    let advertise = match args.advertise {
        Some(a) if a.ip().is_unspecified() || a.port() == 0 => {
            bail!("--advertise {a}: name the address and port other hosts reach this server at")
        }
        Some(a) => a,
        None if bound.ip().is_unspecified() => bail!(
            "--cluster needs --advertise IP:PORT: this server listens on {bound}, which does not \
             say where other hosts reach it"
        ),
        None => bound,
    };
    let member = args.member.clone().unwrap_or_else(|| advertise.to_string());
    if member.is_empty()
        || member.len() > 128
        || member.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        bail!("--member '{member}': use 1 to 128 characters without spaces");
    }
    Ok(Some(p2pnc::server::ClusterConfig {
        redis_url: url.clone(),
        member,
        advertise,
    }))
}

/// The connection cap: an explicit `--max-connections` as given (with a warning when the
/// open-file limit, raised as far as the process may, cannot hold it); by default
/// [`p2pnc::defaults::MAX_CONNECTIONS`], or what the open-file limit holds when that is less.
fn size_max_connections(explicit: Option<usize>) -> usize {
    let wanted = explicit.unwrap_or(p2pnc::defaults::MAX_CONNECTIONS);
    // Every connection is a file descriptor; leave room for the probe port and the admin.
    let want_fds = wanted as u64 + FD_HEADROOM;
    let fds = p2pnc::server::raise_open_file_limit(want_fds);
    match fd_fit(explicit, fds) {
        Fit::Fits(n) => n,
        Fit::Sized(n) => {
            tracing::info!("--max-connections {n}: as many as the open-file limit ({fds}) holds");
            n
        }
        Fit::TooFew(n) => {
            let how = if cfg!(target_vendor = "apple") {
                "ulimit -n, or NumberOfFiles in the launchd plist; macOS caps it at \
                 kern.maxfilesperproc"
            } else {
                "ulimit -n, or LimitNOFILE= in the systemd unit"
            };
            tracing::warn!(
                "the open-file limit is {fds}, too low for --max-connections {n}: raise it \
                 ({how}) to at least {want_fds}, or lower --max-connections"
            );
            n
        }
    }
}

/// How a connection cap fits an open-file limit.
#[derive(Debug, PartialEq, Eq)]
enum Fit {
    /// The cap fits.
    Fits(usize),
    /// The default cap did not fit: this one does.
    Sized(usize),
    /// The explicit cap does not fit (kept: the operator asked for it).
    TooFew(usize),
}

/// Fits `explicit` (or the default cap) to `fds` open files.
fn fd_fit(explicit: Option<usize>, fds: u64) -> Fit {
    let room = usize::try_from(fds.saturating_sub(FD_HEADROOM)).unwrap_or(usize::MAX);
    match explicit {
        Some(n) if n <= room => Fit::Fits(n),
        Some(n) => Fit::TooFew(n),
        None if p2pnc::defaults::MAX_CONNECTIONS <= room => {
            Fit::Fits(p2pnc::defaults::MAX_CONNECTIONS)
        }
        // A floor of one connection: a server that takes none is of no use.
        None => Fit::Sized(room.max(1)),
    }
}

/// Binds the control port and the probe port.
fn bind(args: &ServerArgs) -> Result<(TcpListener, TcpListener)> {
    let control = listen_dual_stack(args.listen)
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let local = control.local_addr()?;
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
    Ok((control, probe))
}

/// Listens on `addr`; the unspecified IPv6 address on a host without IPv6 falls back to the
/// unspecified IPv4 address, with a warning.
fn listen_dual_stack(addr: SocketAddr) -> std::io::Result<TcpListener> {
    match p2pnc::server::listen(addr) {
        Err(e) if addr.is_ipv6() && addr.ip().is_unspecified() && no_ipv6(&e) => {
            let v4 = SocketAddr::from(([0, 0, 0, 0], addr.port()));
            tracing::warn!("no IPv6 on this host ({e}): listening on {v4}, IPv4 only");
            p2pnc::server::listen(v4)
        }
        r => r,
    }
}

/// Whether a bind failed because the host has no IPv6.
fn no_ipv6(e: &std::io::Error) -> bool {
    #[cfg(unix)]
    if matches!(
        e.raw_os_error(),
        Some(libc::EAFNOSUPPORT) | Some(libc::EPROTONOSUPPORT)
    ) {
        return true;
    }
    matches!(
        e.kind(),
        std::io::ErrorKind::AddrNotAvailable | std::io::ErrorKind::Unsupported
    )
}

/// The certificate and key of `--tls-cert` and `--tls-key`, reloaded on every SIGHUP (unix).
/// SIGHUP never stops the server, with or without TLS.
fn load_tls(args: &ServerArgs) -> Result<Option<p2pnc::tls::ServerTls>> {
    let reloads = Reloads::register()?;
    let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) else {
        tokio::spawn(reload_on_hangup(reloads, None));
        return Ok(None);
    };
    let tls = p2pnc::tls::ServerTls::load(cert, key).map_err(|e| anyhow!("{e}"))?;
    tracing::info!(
        "TLS on the control port; clients may pin the certificate with --tls-pin {}{}",
        tls.fingerprint(),
        if cfg!(unix) {
            " (SIGHUP reloads the certificate and key)"
        } else {
            " (a restart loads a renewed certificate)"
        }
    );
    tokio::spawn(reload_on_hangup(reloads, Some(tls.clone())));
    Ok(Some(tls))
}

/// Reloads the TLS certificate and key on every reload request (SIGHUP, after a renewal);
/// runs for the life of the process.
async fn reload_on_hangup(mut reloads: Reloads, tls: Option<p2pnc::tls::ServerTls>) {
    while reloads.recv().await.is_some() {
        let Some(tls) = &tls else {
            tracing::info!("SIGHUP: nothing to reload (no --tls-cert)");
            continue;
        };
        match tls.reload() {
            Ok(pin) => tracing::info!("TLS certificate reloaded; its pin is now {pin}"),
            Err(e) => tracing::error!("TLS certificate not reloaded, the old one stays: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_cap_follows_the_open_file_limit_and_an_explicit_one_is_kept() {
        let default = p2pnc::defaults::MAX_CONNECTIONS;
        assert_eq!(fd_fit(None, 1 << 20), Fit::Fits(default));
        assert_eq!(fd_fit(None, 20_000), Fit::Sized(20_000 - 1024));
        assert_eq!(fd_fit(Some(10_000), 20_000), Fit::Fits(10_000));
        assert_eq!(fd_fit(Some(50_000), 20_000), Fit::TooFew(50_000));
        assert_eq!(fd_fit(None, 100), Fit::Sized(1));
    }
}
