//! `p2pnc nat-check`: what this host's NAT does, measured against a rendezvous server.

use anyhow::Result;
use clap::Args;

use crate::args::TlsArgs;

/// Flags of `nat-check`.
#[derive(Args)]
pub struct NatCheckArgs {
    /// Rendezvous server, e.g. http://203.0.113.10:50300.
    #[arg(long, env = "P2PNC_SERVER")]
    server: String,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    tls: TlsArgs,
}

/// Runs the checks and prints the report.
pub async fn run(args: NatCheckArgs) -> Result<()> {
    let report = p2pnc::nat_check(&args.tls.server_url(&args.server)?).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{report}");
    }
    Ok(())
}
