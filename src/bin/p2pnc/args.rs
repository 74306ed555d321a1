//! Flags shared by several commands: TLS trust, the punch, and `--report json`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, anyhow};
use clap::Args;
use p2pnc::ServerUrl;

/// What an https:// server URL trusts.
#[derive(Args)]
pub struct TlsArgs {
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
    /// The server URLs (`--server`, in order) with the trust these flags ask for, given to
    /// every `https://` one; at least one must be `https://` when a CA or pin is given.
    pub fn server_urls(&self, servers: &[String]) -> Result<Vec<ServerUrl>> {
        let urls = ServerUrl::parse_list(servers)?;
        let trust = match (&self.tls_ca, self.tls_pin.is_empty()) {
            (Some(ca), _) => p2pnc::Trust::ca_file(ca).map_err(|e| anyhow!("--tls-ca: {e}"))?,
            (None, false) => {
                p2pnc::Trust::pins(&self.tls_pin).map_err(|e| anyhow!("--tls-pin: {e}"))?
            }
            (None, true) => return Ok(urls),
        };
        if urls.iter().all(|u| u.tls.is_none()) {
            // Refused by the library, in its words, naming the first URL.
            urls[0].clone().with_trust(trust.clone())?;
        }
        urls.into_iter()
            .map(|u| match u.tls {
                Some(_) => Ok(u.with_trust(trust.clone())?),
                None => Ok(u),
            })
            .collect()
    }
}

/// The rendezvous servers of `expose`, `connect`, `nat-check` and `ping`.
#[derive(Args)]
pub struct ServerArgs {
    /// Rendezvous server, e.g. http://203.0.113.10:50300; repeat it (or separate URLs by
    /// commas) for more servers, in order of preference.
    #[arg(
        long = "server",
        value_name = "URL",
        env = "P2PNC_SERVER",
        required = true,
        value_delimiter = ','
    )]
    pub servers: Vec<String>,
}

/// Structured reports of connections, for scripts and tests.
#[derive(Args, Clone, Copy)]
pub struct ReportArgs {
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
    pub fn ended(
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
    pub fn failed(&self, kind: &str, id: &str, e: &p2pnc::Error) {
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
pub struct PunchArgs {
    /// The server's token, if it requires one.
    #[arg(long, env = "P2PNC_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Seconds a punch may take before it is given up.
    #[arg(long, default_value_t = p2pnc::defaults::PUNCH_TIMEOUT.as_secs_f64())]
    punch_timeout: f64,
    /// TTL of SYNs meant to open only this host's NATs (the agent's first SYN, the symmetric
    /// side's birthday sockets); 0 sends them with the normal TTL [default: just past the NATs
    /// in front of this host, as a TTL sweep toward the server finds them; 2 until it has]
    #[arg(long)]
    punch_ttl: Option<u32>,
}

impl PunchArgs {
    /// The punch these flags ask for.
    pub fn options(&self) -> Result<p2pnc::PunchOptions> {
        let timeout = Duration::try_from_secs_f64(self.punch_timeout)
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or_else(|| anyhow!("--punch-timeout must be a positive number of seconds"))?;
        Ok(p2pnc::PunchOptions {
            timeout,
            ttl: match self.punch_ttl {
                None => p2pnc::PunchTtl::Learned,
                Some(0) => p2pnc::PunchTtl::Normal,
                Some(n) => p2pnc::PunchTtl::Fixed(n),
            },
        })
    }
}
