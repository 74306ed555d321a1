//! `p2pnc demo`: the whole flow on loopback, with timings, for a newcomer.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use p2pnc::{Agent, ConnectOptions, Connection, ExposeOptions};

/// Bytes pushed through the demo connection.
const PAYLOAD: usize = 1 << 20;
/// Bound on every step of the demo.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

fn step(what: &str, since: Instant) {
    println!(
        "  {:>7.1} ms  {what}",
        since.elapsed().as_secs_f64() * 1000.0
    );
}

/// Runs the demo and prints each step.
pub async fn run() -> Result<()> {
    let t0 = Instant::now();
    let tasks = TaskTracker::new();
    let stop = CancellationToken::new();
    let result = tokio::time::timeout(4 * STEP_TIMEOUT, steps(&tasks, &stop, t0)).await;
    stop.cancel();
    tasks.close();
    tasks.wait().await;
    result.context("the demo did not finish in time")?
}

async fn steps(tasks: &TaskTracker, stop: &CancellationToken, t0: Instant) -> Result<()> {
    println!("p2pnc demo: every role on loopback (no root, no network)\n");
    let listeners = demo_listeners().await?;
    let server_url = format!("http://{}", listeners.control.local_addr()?);
    tasks.spawn(p2pnc::server::serve(
        listeners,
        Default::default(),
        stop.clone(),
    ));
    step(&format!("rendezvous server listening on {server_url}"), t0);
    let echo_addr = echo_service(tasks, stop).await?;
    step(
        &format!("echo service (the service behind B's NAT) on {echo_addr}"),
        t0,
    );
    expose(tasks, stop, &server_url, echo_addr, t0).await?;
    let mut conn = connect(&server_url, t0).await?;
    echo(&mut conn, t0).await?;
    wrong_secret(&server_url, t0).await?;
    println!("\ndemo finished: the rendezvous server only brokered; the bytes went peer to peer.");
    Ok(())
}

/// Free control ports the demo tries before it gives up: the port just above one (where agents
/// and clients look for the NAT probe port) is rarely taken, so a few tries suffice.
const PORT_TRIES: usize = 16;

/// The demo server's listeners on loopback: a free control port with its probe port.
async fn demo_listeners() -> Result<p2pnc::server::Listeners> {
    for _ in 0..PORT_TRIES {
        let control = TcpListener::bind("127.0.0.1:0").await?;
        let probe_addr = p2pnc::protocol::probe_addr(control.local_addr()?);
        if let Ok(probe) = p2pnc::server::listen(probe_addr) {
            return Ok(p2pnc::server::Listeners {
                control,
                probe: Some(probe),
                admin: None,
            });
        }
    }
    bail!("no two free neighbouring ports on 127.0.0.1 for the demo server")
}

/// An echo service on loopback, standing for the service behind B's NAT.
async fn echo_service(tasks: &TaskTracker, stop: &CancellationToken) -> Result<SocketAddr> {
    let echo = TcpListener::bind("127.0.0.1:0").await?;
    let echo_addr = echo.local_addr()?;
    let stop = stop.clone();
    tasks.spawn(async move {
        loop {
            let (mut s, _) = tokio::select! {
                _ = stop.cancelled() => return,
                a = echo.accept() => match a { Ok(a) => a, Err(_) => return },
            };
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    Ok(echo_addr)
}

/// Exposes the echo service as 'demo-service' and forwards every proven stream to it.
async fn expose(
    tasks: &TaskTracker,
    stop: &CancellationToken,
    server_url: &str,
    echo_addr: SocketAddr,
    t0: Instant,
) -> Result<()> {
    let t = Instant::now();
    let opts = ExposeOptions::new(server_url, "demo-service", Some("demo-secret"))?;
    let mut agent = tokio::time::timeout(STEP_TIMEOUT, Agent::start(opts))
        .await
        .context("expose did not register in time")??;
    step(
        &format!(
            "expose registered 'demo-service' (public endpoint {}) in {:.1} ms",
            agent.public_addr(),
            t.elapsed().as_secs_f64() * 1000.0
        ),
        t0,
    );
    let stop = stop.clone();
    tasks.spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = stop.cancelled() => return,
                a = agent.accept() => a,
            };
            let Some(mut accepted) = accepted else { return };
            tokio::spawn(async move {
                if let Ok(mut service) = tokio::net::TcpStream::connect(echo_addr).await {
                    let _ = p2pnc::forward_tcp(&mut accepted.stream, &mut service).await;
                }
            });
        }
    });
    Ok(())
}

/// Connects to 'demo-service' with its secret.
async fn connect(server_url: &str, t0: Instant) -> Result<Connection> {
    let t = Instant::now();
    let opts = ConnectOptions::new(server_url, "demo-service", Some("demo-secret"))?;
    let conn = tokio::time::timeout(STEP_TIMEOUT, p2pnc::connect(&opts))
        .await
        .context("connect timed out")??;
    step(
        &format!(
            "connect: {} stream to {} set up in {:.1} ms",
            conn.info.path,
            conn.info.peer_addr,
            t.elapsed().as_secs_f64() * 1000.0
        ),
        t0,
    );
    Ok(conn)
}

/// Sends the payload through the stream and checks the echo, byte for byte.
async fn echo(conn: &mut Connection, t0: Instant) -> Result<()> {
    let t = Instant::now();
    let payload: Vec<u8> = (0..PAYLOAD).map(|i| (i * 31 % 251) as u8).collect();
    let (mut r, mut w) = tokio::io::split(&mut conn.stream);
    let send = async {
        w.write_all(&payload).await?;
        w.shutdown().await
    };
    let mut back = Vec::with_capacity(PAYLOAD);
    let recv = r.read_to_end(&mut back);
    let (sent, got) = tokio::time::timeout(STEP_TIMEOUT, async { tokio::join!(send, recv) })
        .await
        .context("echo timed out")?;
    sent?;
    got?;
    if back != payload {
        bail!(
            "echo returned {} bytes that differ from the {PAYLOAD} sent",
            back.len()
        );
    }
    step(
        &format!(
            "echoed {} KiB byte-exact through the direct stream in {:.1} ms",
            PAYLOAD / 1024,
            t.elapsed().as_secs_f64() * 1000.0
        ),
        t0,
    );
    Ok(())
}

/// Tries a wrong secret, which must be refused.
async fn wrong_secret(server_url: &str, t0: Instant) -> Result<()> {
    let wrong = ConnectOptions::new(server_url, "demo-service", Some("wrong-secret"))?;
    let t = Instant::now();
    match tokio::time::timeout(STEP_TIMEOUT, p2pnc::connect(&wrong)).await {
        Ok(Err(e)) => step(
            &format!(
                "a wrong secret is refused in {:.1} ms: {e}",
                t.elapsed().as_secs_f64() * 1000.0
            ),
            t0,
        ),
        Ok(Ok(_)) => bail!("a wrong secret was let in"),
        Err(_) => bail!("a wrong secret was neither refused nor let in"),
    }
    Ok(())
}
