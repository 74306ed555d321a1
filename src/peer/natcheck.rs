//! `p2pnc nat-check`: what this host's NAT does, measured against a rendezvous server.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use super::control::ServerUrl;
use super::failover::{self, Tries};
use super::nat_depth::{self, NatDepth};
use super::portmap::{self, Survey};
use super::probe;
use crate::defaults::SERVER_TIMEOUT;
use crate::protocol::{self, MAX_PROBE_LINE, Mapping, ProbeToken};
use crate::{Error, net};

/// How long to wait for the server's dial-back to arrive.
const DIALBACK_WAIT: Duration = Duration::from_millis(1500);
/// How long the router gets to answer UPnP-IGD, NAT-PMP and PCP (while the dial-back is
/// awaited).
const SURVEY_TIMEOUT: Duration = Duration::from_millis(1500);

/// What `nat-check` found.
#[derive(Debug, Clone, Serialize)]
pub struct NatReport {
    /// The server checked against.
    pub server: String,
    /// The local address the checks were made from.
    pub local: SocketAddr,
    /// The public endpoint of that address, as the server's control port saw it.
    pub public: SocketAddr,
    /// The public endpoint of the same local port as the server's probe port saw it.
    pub public_probe: SocketAddr,
    /// Whether the public address differs from every local one.
    pub behind_nat: bool,
    /// `endpoint-independent` or `endpoint-dependent` (RFC 4787).
    pub mapping: Mapping,
    /// How many NATs stand in front of this host, from a TTL sweep toward the server (absent
    /// when the routers beyond them did not answer): SYNs meant to open only this host's NATs
    /// leave with a TTL one higher.
    pub nat_depth: Option<u8>,
    /// Whether a router in front of this host answered from the shared address space
    /// 100.64.0.0/10 (RFC 6598): a carrier-grade NAT.
    pub cgn: bool,
    /// Whether the NAT kept the local port number.
    pub port_preserved: bool,
    /// `endpoint-independent` when a connection from a port this host never contacted got
    /// through; `endpoint-dependent` when it did not; `unknown` on Windows, where nothing
    /// listens on the port to take it.
    pub filtering: &'static str,
    /// Which port mapping protocols the default gateway answered: UPnP-IGD, NAT-PMP, PCP
    /// (absent when not asked: the server is on a loopback or private address).
    pub port_mapping: Option<Survey>,
    /// What p2pnc will do with a peer of each kind.
    pub verdict: String,
}

impl fmt::Display for NatReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "server:          {}", self.server)?;
        writeln!(f, "local address:   {}", self.local)?;
        writeln!(
            f,
            "public address:  {} (probe port saw {})",
            self.public, self.public_probe
        )?;
        writeln!(
            f,
            "behind a NAT:    {}",
            if self.behind_nat { "yes" } else { "no" }
        )?;
        writeln!(f, "mapping:         {}", self.mapping)?;
        match self.nat_depth {
            Some(n) => writeln!(f, "NATs in front:   {n}")?,
            None => writeln!(f, "NATs in front:   unknown (routers sent no ICMP answers)")?,
        }
        writeln!(
            f,
            "carrier NAT:     {}",
            if self.cgn {
                "yes (a router answered from the shared address space 100.64.0.0/10)"
            } else {
                "none seen"
            }
        )?;
        writeln!(
            f,
            "port preserved:  {}",
            if self.port_preserved { "yes" } else { "no" }
        )?;
        writeln!(f, "filtering:       {}", self.filtering)?;
        match &self.port_mapping {
            Some(s) => writeln!(f, "port mapping:    {s}")?,
            None => writeln!(
                f,
                "port mapping:    not checked (the server is on this network)"
            )?,
        }
        writeln!(f, "verdict:         {}", self.verdict)
    }
}

/// Runs the checks against `server`, and asks the default gateway which port mapping
/// protocols it speaks meanwhile (only when the server is on a public address).
pub async fn nat_check(server: &ServerUrl) -> Result<NatReport, Error> {
    nat_check_any(std::slice::from_ref(server)).await
}

/// [`nat_check`] against the first of `servers` (in order, and each address of a name in
/// turn) that can be reached.
pub async fn nat_check_any(servers: &[ServerUrl]) -> Result<NatReport, Error> {
    let mut tries = Tries::new(servers);
    while let Some(c) = tries.next().await {
        match check(c.server, &c.addrs).await {
            Ok(report) => return Ok(report),
            Err(e) => tries.failed(e, failover::agent_next)?,
        }
    }
    Err(tries.into_error())
}

/// [`nat_check`] against `server` at `servers` (its addresses).
async fn check(server: &ServerUrl, servers: &[SocketAddr]) -> Result<NatReport, Error> {
    // IPv4 when the server has it: that is where NATs are.
    let server_addr = *servers.iter().find(|a| a.is_ipv4()).unwrap_or(&servers[0]);
    let survey = async {
        if portmap::worth_trying(server_addr.ip()) {
            Some(portmap::survey(SURVEY_TIMEOUT).await)
        } else {
            None
        }
    };
    let depth = sweep(server_addr);
    let (report, survey, depth) = tokio::join!(measure(server, server_addr), survey, depth);
    let mut report = report?;
    report.nat_depth = depth.known.then_some(depth.nats);
    report.cgn = depth.cgn;
    if depth.cgn {
        report.verdict.push_str(
            "; behind a carrier-grade NAT: a port mapping on the home router leads nowhere, and \
             SYNs that open this host's NATs pass it",
        );
    }
    if let Some(s) = &survey {
        let answered = s.answered();
        if !answered.is_empty() {
            let names: Vec<String> = answered.iter().map(|p| p.to_string()).collect();
            report.verdict.push_str(&format!(
                "; the router answers {}: an agent here maps its punch port there and is \
                 reachable directly from every peer",
                names.join(", ")
            ));
        }
    }
    report.port_mapping = survey;
    Ok(report)
}

/// A fresh TTL sweep toward the server, to its end.
async fn sweep(server: SocketAddr) -> NatDepth {
    let mut depth = nat_depth::relearn(server.ip(), None);
    // The sweep ends by itself (its sender dropped) within its timeout.
    while depth.changed().await.is_ok() {}
    *depth.borrow_and_update()
}

/// The checks against the server.
async fn measure(server: &ServerUrl, server_addr: SocketAddr) -> Result<NatReport, Error> {
    let listener = net::PunchPort::bind(net::any_addr(&server_addr, 0))?;
    let port = listener.local_addr()?.port();
    let shared = net::any_addr(&server_addr, port);
    let unreachable = |why: String| Error::ServerUnreachable(format!("{server}: {why}"));

    let (local, public) = whoami(shared, server_addr)
        .await
        .map_err(|e| unreachable(format!("/v1/whoami: {e}")))?;
    let probe_token = ProbeToken::random();
    let probe_addr = protocol::probe_addr(server_addr);
    let public_probe = probe::probe_with_dialback(shared, probe_addr, &probe_token)
        .await
        .map_err(|e| unreachable(format!("probe port {probe_addr}: {e}")))?;
    let expected = protocol::dialback_line(&probe_token);
    let dialback = async {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                return false;
            };
            let mut line = String::new();
            let mut r = BufReader::new(s).take(MAX_PROBE_LINE as u64);
            if r.read_line(&mut line).await.is_ok() && line.trim_end() == expected.trim_end() {
                return true;
            }
        }
    };
    let open = net::PUNCH_PORT_LISTENS
        && tokio::time::timeout(DIALBACK_WAIT, dialback)
            .await
            .unwrap_or(false);

    let mapping = Mapping::classify(public, Some(public_probe));
    let behind_nat = public.ip() != local.ip();
    let verdict = match mapping {
        Mapping::EndpointDependent => {
            "symmetric NAT: direct to cone-NAT and public peers by birthday punching; \
             another symmetric peer needs the server's relay"
        }
        _ if !behind_nat => "public address: direct to every peer",
        _ => "cone NAT: direct to cone-NAT, public and (by birthday punching) symmetric peers",
    };
    Ok(NatReport {
        server: server.to_string(),
        local,
        public,
        public_probe,
        behind_nat,
        mapping,
        nat_depth: None,
        cgn: false,
        port_preserved: public.port() == port,
        filtering: if !net::PUNCH_PORT_LISTENS {
            "unknown"
        } else if open {
            "endpoint-independent"
        } else {
            "endpoint-dependent"
        },
        port_mapping: None,
        verdict: verdict.to_string(),
    })
}

/// `GET /v1/whoami` from the shared local address: (our local address, what the server saw).
async fn whoami(
    local: SocketAddr,
    server: SocketAddr,
) -> std::io::Result<(SocketAddr, SocketAddr)> {
    let work = async {
        let mut s = net::connect_from(local, server, None, SERVER_TIMEOUT).await?;
        let local = s.local_addr()?;
        s.write_all(b"GET /v1/whoami HTTP/1.1\r\nHost: p2pnc\r\nConnection: close\r\n\r\n")
            .await?;
        let mut text = String::new();
        (&mut s).take(4096).read_to_string(&mut text).await?;
        protocol::whoami_addr(&text)
            .map(|public| (local, public))
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    };
    tokio::time::timeout(SERVER_TIMEOUT, work)
        .await
        .unwrap_or_else(|_| {
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "timed out",
            ))
        })
}
