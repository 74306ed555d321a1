//! Soak on loopback: many sequential and concurrent connects against one agent, with zero
//! failures and no growth in open file descriptors (server, agent and clients share this
//! process, so its descriptor count covers all three).

mod common;

use std::time::Duration;

use common::{Echo, TestServer, expose};
use p2pnc::ConnectOptions;
use p2pnc::server::ServerConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SEQUENTIAL: usize = 10_000;
const CONCURRENT: usize = 200;
const T: Duration = Duration::from_secs(20);

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

fn rss_kib() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

async fn one(opts: &ConnectOptions, tag: u8) -> Result<(), String> {
    let mut conn = tokio::time::timeout(T, p2pnc::connect(opts))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| e.to_string())?;
    conn.stream
        .write_all(&[tag; 64])
        .await
        .map_err(|e| e.to_string())?;
    conn.stream.shutdown().await.map_err(|e| e.to_string())?;
    let mut back = Vec::new();
    tokio::time::timeout(T, conn.stream.read_to_end(&mut back))
        .await
        .map_err(|_| "echo timed out".to_string())?
        .map_err(|e| e.to_string())?;
    if back == [tag; 64] {
        Ok(())
    } else {
        Err(format!("echo returned {} bytes", back.len()))
    }
}

/// Polls until the descriptor count is back within `slack` of `baseline` (closes finish
/// asynchronously), or fails with the count it saw.
async fn settles(baseline: usize, slack: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let now = open_fds();
        if now <= baseline + slack {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "descriptors grew from {baseline} to {now}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_sequential_and_two_hundred_concurrent_connects_lose_nothing() {
    let server = TestServer::with_config(ServerConfig {
        connect_rate: 100_000.0,
        ..Default::default()
    })
    .await;
    let echo = Echo::start().await;
    let _agent = expose(&server.url, "soak", Some("pw"), echo.addr).await;
    let opts = ConnectOptions::new(&server.url, "soak", Some("pw")).unwrap();
    // Warm up, then take the baseline.
    one(&opts, 0).await.unwrap();
    settles(0, usize::MAX).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let baseline = open_fds();
    let rss_before = rss_kib();

    let started = std::time::Instant::now();
    for i in 0..SEQUENTIAL {
        if let Err(e) = one(&opts, (i % 251) as u8).await {
            panic!("sequential connect {i} failed: {e}");
        }
    }
    eprintln!(
        "{SEQUENTIAL} sequential connects in {:?}",
        started.elapsed()
    );
    // A little slack for sockets whose close is still in flight.
    settles(baseline, 8).await;
    let rss_sequential = rss_kib();

    let started = std::time::Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..CONCURRENT {
        let opts = opts.clone();
        set.spawn(async move { one(&opts, i as u8).await });
    }
    let mut failures = Vec::new();
    while let Some(r) = set.join_next().await {
        if let Err(e) = r.unwrap() {
            failures.push(e);
        }
    }
    eprintln!(
        "{CONCURRENT} concurrent connects in {:?}",
        started.elapsed()
    );
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    settles(baseline, 8).await;
    // Memory: 10 000 connects must not grow it by more than a few MiB (a leak of 1 KiB per
    // connect would be 10 MiB). The concurrent burst raises the peak, which the allocator
    // keeps; more connects after it must not grow it further.
    let rss_burst = rss_kib();
    for i in 0..1000 {
        one(&opts, i as u8).await.unwrap();
    }
    settles(baseline, 8).await;
    let rss_end = rss_kib();
    eprintln!(
        "RSS: {rss_before} KiB at start, {rss_sequential} after {SEQUENTIAL} sequential, \
         {rss_burst} after the burst, {rss_end} after 1000 more"
    );
    assert!(
        rss_sequential < rss_before + 8 * 1024,
        "memory grew from {rss_before} to {rss_sequential} KiB over the sequential connects"
    );
    assert!(
        rss_end < rss_burst + 4 * 1024,
        "memory grew from {rss_burst} to {rss_end} KiB after the burst"
    );
    assert_eq!(
        echo.connections.load(std::sync::atomic::Ordering::SeqCst),
        1 + SEQUENTIAL + CONCURRENT + 1000
    );
}
