//! `p2pnc ping`: how the path to a service was reached, round trips over the path itself, and
//! with `--bytes` its throughput: the agent sends back what it gets on an echo stream of a warm
//! path (see `p2pnc::Peer::open_echo`), so no service is involved.

use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use p2pnc::{ConnectOptions, Peer, WarmOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use crate::args::{PunchArgs, ServerArgs, TlsArgs};

/// Pause between two round trips: long enough that a reply is in before the next ping on any
/// path worth using, short enough for an answer within seconds.
const PING_INTERVAL: Duration = Duration::from_millis(500);
/// How long one ping may wait for its echo before it counts as lost: the warm path's own
/// keepalive gives up after as long.
const PING_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes written at a time in the throughput test (a quarter of a record).
const CHUNK: usize = 16 * 1024;
/// Longest a throughput test may take before it is given up (a slow path and a big --bytes).
const THROUGHPUT_TIMEOUT: Duration = Duration::from_secs(120);
/// Bytes between two progress lines of the throughput test.
const PROGRESS_EVERY: u64 = 64 << 20;

/// Flags of `ping`.
#[derive(Args)]
pub struct PingArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Id of the exposed service.
    #[arg(long)]
    peer: String,
    /// Service secret; omit for services exposed with --public.
    #[arg(long, env = "P2PNC_SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// Round trips to time.
    #[arg(long, default_value_t = 5)]
    count: u32,
    /// Also send this many bytes through the agent's echo and time them (e.g. 10M, 64K).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    bytes: Option<u64>,
    /// Print one JSON object on stdout instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    punch: PunchArgs,
    #[command(flatten)]
    tls: TlsArgs,
}

/// A size: a number of bytes with an optional K, M or G (powers of 1024).
fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (digits, unit) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&t[..i], c.to_ascii_uppercase()),
        _ => (t, 'B'),
    };
    let shift = match unit {
        'B' => 0,
        'K' => 10,
        'M' => 20,
        'G' => 30,
        _ => return Err(format!("'{text}': the unit is K, M or G")),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("'{text}' is not a size such as 65536, 64K or 10M"))?;
    n.checked_mul(1 << shift)
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("'{text}' is not a size above zero"))
}

/// Runs the pings and prints what they found.
pub async fn run(args: PingArgs) -> Result<()> {
    if args.count == 0 && args.bytes.is_none() {
        bail!("--count 0 without --bytes measures nothing");
    }
    let mut servers = args.tls.server_urls(&args.server.servers)?.into_iter();
    let opts = ConnectOptions {
        server: servers.next().expect("at least one --server"),
        other_servers: servers.collect(),
        punch: args.punch.options()?,
        token: args.punch.token.clone(),
        ..ConnectOptions::new(&args.server.servers[0], &args.peer, args.secret.as_deref())?
    };
    let peer = Peer::new(opts, WarmOptions::default());
    let result = measure(&args, &peer).await;
    peer.close().await;
    let report = result?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", text(&args.peer, &report));
    }
    Ok(())
}

/// Builds the path, times the round trips and the throughput: the report.
async fn measure(args: &PingArgs, peer: &Peer) -> Result<serde_json::Value> {
    let (mut echo, info) = peer.open_echo().await?;
    eprintln!(
        "path to '{}': {}, {}, {} strategy, set up in {} ms",
        args.peer,
        info.path,
        info.peer_addr,
        info.strategy,
        info.setup.as_millis()
    );
    let mut report = info.report();
    let mut rtts = Vec::new();
    let mut lost = 0u32;
    for i in 0..args.count {
        if i > 0 {
            tokio::time::sleep(PING_INTERVAL).await;
        }
        let sent = Instant::now();
        let answer = tokio::time::timeout(PING_TIMEOUT, async {
            echo.write_all(b".").await?;
            echo.flush().await?;
            echo.read_exact(&mut [0u8; 1]).await
        })
        .await;
        match answer {
            Ok(Ok(_)) => {
                let rtt = sent.elapsed();
                eprintln!("echo {}: {:.2} ms", i + 1, ms(rtt));
                rtts.push(rtt);
            }
            Ok(Err(e)) => return Err(anyhow!("the echo stream broke: {e}")),
            Err(_) => {
                eprintln!("echo {}: no answer within {:?}", i + 1, PING_TIMEOUT);
                lost += 1;
                // A late echo would answer the next ping: the samples after it would be wrong.
                break;
            }
        }
    }
    report["rtt_ms"] = rtts.iter().map(|d| ms(*d)).collect::<Vec<_>>().into();
    report["lost"] = lost.into();
    if let Some(bytes) = args.bytes {
        let took = tokio::time::timeout(THROUGHPUT_TIMEOUT, throughput(&mut echo, bytes))
            .await
            .map_err(|_| anyhow!("the throughput test took over {THROUGHPUT_TIMEOUT:?}"))??;
        report["throughput"] = serde_json::json!({
            "bytes": bytes,
            "seconds": took.as_secs_f64(),
            "bytes_per_sec_each_way": bytes as f64 / took.as_secs_f64(),
        });
    }
    Ok(report)
}

/// Sends `bytes` through the echo while reading them back: how long until the last one
/// returned (both directions carry `bytes` at once).
async fn throughput(echo: &mut p2pnc::EchoStream, bytes: u64) -> Result<Duration> {
    let started = Instant::now();
    let (mut r, mut w) = tokio::io::split(echo);
    let send = async {
        let chunk = vec![0x5a; CHUNK];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(CHUNK as u64) as usize;
            w.write_all(&chunk[..n]).await?;
            left -= n as u64;
        }
        w.flush().await
    };
    let recv = async {
        let mut buf = vec![0u8; CHUNK];
        let (mut got, mut next_note) = (0u64, PROGRESS_EVERY);
        while got < bytes {
            let n = r.read(&mut buf).await?;
            if n == 0 {
                return Err(std::io::Error::other("the echo stream ended early"));
            }
            got += n as u64;
            if got >= next_note {
                eprintln!("{} MiB echoed", got >> 20);
                next_note += PROGRESS_EVERY;
            }
        }
        Ok(())
    };
    let (sent, got) = tokio::join!(send, recv);
    sent.context("sending through the echo")?;
    got.context("reading the echo")?;
    Ok(started.elapsed())
}

/// Milliseconds, to the microsecond.
fn ms(d: Duration) -> f64 {
    d.as_micros() as f64 / 1000.0
}

/// The report as text for people.
fn text(peer: &str, r: &serde_json::Value) -> String {
    let mut out = format!(
        "path to '{peer}': {}, {}, {}, {} strategy, set up in {} ms\n",
        r["path"].as_str().unwrap_or("?"),
        r["family"].as_str().unwrap_or("?"),
        r["peer_addr"].as_str().unwrap_or("?"),
        r["strategy"].as_str().unwrap_or("?"),
        r["setup_ms"]
    );
    let rtts: Vec<f64> = r["rtt_ms"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_f64()).collect())
        .unwrap_or_default();
    if !rtts.is_empty() {
        let min = rtts.iter().copied().fold(f64::INFINITY, f64::min);
        let max = rtts.iter().copied().fold(0.0, f64::max);
        let avg = rtts.iter().sum::<f64>() / rtts.len() as f64;
        out.push_str(&format!(
            "round trips over the path: {} of {}, min/avg/max {min:.2}/{avg:.2}/{max:.2} ms\n",
            rtts.len(),
            rtts.len() as u64 + r["lost"].as_u64().unwrap_or(0)
        ));
    }
    if let Some(t) = r.get("throughput") {
        let rate = t["bytes_per_sec_each_way"].as_f64().unwrap_or(0.0);
        out.push_str(&format!(
            "throughput: {} bytes each way at once in {:.3} s: {:.1} MB/s each way\n",
            t["bytes"],
            t["seconds"].as_f64().unwrap_or(0.0),
            rate / 1e6
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_binary_units() {
        assert_eq!(parse_size("65536"), Ok(65536));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("10m"), Ok(10 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(
            parse_size("10X"),
            Err("'10X': the unit is K, M or G".into())
        );
        assert_eq!(
            parse_size("lots"),
            Err("'lots': the unit is K, M or G".into())
        );
        assert_eq!(
            parse_size("1.5M"),
            Err("'1.5M' is not a size such as 65536, 64K or 10M".into())
        );
        assert_eq!(parse_size("0"), Err("'0' is not a size above zero".into()));
    }
}
