//! `p2pnc nat-check`: what this host's NAT does, measured against a rendezvous server (the first of
//! several that answers).

use anyhow::Result;
use clap::Args;

use crate::args::{ServerArgs, TlsArgs};

/// Flags of `nat-check`.
#[derive(Args)]
pub struct NatCheckArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    tls: TlsArgs,
}

/// Runs the checks and prints the report.
pub async fn run(args: NatCheckArgs) -> Result<()> {
    let servers = args.tls.server_urls(&args.server.servers)?;
    let report = p2pnc::nat_check_any(&servers).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{report}");
    }
    Ok(())
}
