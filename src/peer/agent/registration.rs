//! One registration: a punch port per address family, the NAT probes and the router's port
//! mapping made from them, and the expose request on a control connection from the primary
//! family's port.

use std::net::SocketAddr;
use std::time::Duration;

use super::ExposeOptions;
use crate::peer::control::{self, ControlSocket, ServerUrl};
use crate::peer::failover::{self, Candidate, Tries};
use crate::peer::portmap::{self, PortMap};
use crate::peer::ports::{PortsView, PunchPorts};
use crate::peer::probe;
use crate::peer::punch::StreamSettings;
use crate::protocol::{
    self, AgentKey, AgentToServer, Auth, ExposeQuery, Mapping, ProbeToken, ServerToAgent,
    ServiceId, register_message,
};
use crate::{Error, defaults, net};

/// How long the registration waits for the probe of the other address family once the
/// primary one is done: a working path answers within a round trip, and a family that is
/// configured but broken should delay the registration (which no connect waits for) little.
const OTHER_PROBE_WAIT: Duration = Duration::from_secs(1);

/// A registration in force, with what it was made from.
pub(super) struct Registration {
    /// The server it is made with.
    pub server: ServerUrl,
    /// That server's place among the agent's servers ([`ExposeOptions::servers`]).
    pub index: usize,
    /// Whether another server or address could take over: then the server's liveness is
    /// watched closely (see `control_loop`).
    pub has_alternative: bool,
    /// The NAT's mapping behaviour, as the server measured it.
    pub mapping: Mapping,
    /// The control channel: the registration lives as long as it does.
    pub ws: ControlSocket,
    /// The punch ports' listeners.
    pub listeners: Vec<net::PunchPort>,
    /// The punch ports, as sessions need them.
    pub ports: PortsView,
    /// The control connection's local address (the primary punch port).
    pub local: SocketAddr,
    /// The punch port's public endpoint, as the server sees it.
    pub public: SocketAddr,
    /// The router's port mapping of the punch port, not yet kept alive.
    pub portmap: Option<PortMap>,
}

/// Registers with the first of `servers`, taken in `order` (indices), that takes the
/// registration (see [`failover`]): an unreachable or full server, or address, is passed
/// over; a refusal ends the round at once. The error of a round that found no server names
/// every reason.
pub(super) async fn register_any(
    opts: &ExposeOptions,
    stream: &StreamSettings,
    servers: &[ServerUrl],
    order: Vec<usize>,
    takeover: bool,
) -> Result<Registration, Error> {
    let mut tries = Tries::in_order(servers, order);
    while let Some(c) = tries.next().await {
        let attempt = register(opts, stream, &c, takeover);
        match attempt.await {
            Ok(reg) => {
                return Ok(Registration {
                    index: c.index,
                    has_alternative: c.has_alternative,
                    ..reg
                });
            }
            Err(e) => tries.failed(e, failover::agent_next)?,
        }
    }
    Err(tries.into_error())
}

/// Binds the punch ports, probes the NAT, maps the port on the router if it can, and
/// registers with the candidate server at its addresses. A mapping made for a
/// registration that fails is deleted again. `takeover`: replace an online registration of
/// the same service (an owner's restart); an agent that was itself replaced registers without
/// it, and waits while the other holds the id.
async fn register(
    opts: &ExposeOptions,
    stream: &StreamSettings,
    candidate: &Candidate<'_>,
    takeover: bool,
) -> Result<Registration, Error> {
    // A fresh sweep of the NATs in front with every registration: the network may have changed.
    let mut ports = PunchPorts::bind(&candidate.addrs, opts.punch_port, true)?;
    let (probes, portmap) = probe_and_map(opts, &ports).await;
    let mapped = portmap.as_ref().map(|m| m.external);
    let wanted = Wanted {
        probes,
        mapped,
        takeover,
    };
    match register_with(opts, stream, candidate, &ports, wanted).await {
        Ok(reg) => Ok(Registration {
            portmap,
            listeners: ports.take_listeners(),
            ..reg
        }),
        Err(e) => {
            if let Some(m) = portmap {
                m.remove_quietly().await;
            }
            Err(e)
        }
    }
}

/// The tokens of the probes that went through: the primary family's and the other's.
#[derive(Default)]
struct Probes {
    primary: Option<ProbeToken>,
    other: Option<ProbeToken>,
}

/// The NAT probe from each punch port and, at the same time, a port mapping of the primary
/// one on the router (bounded by [`portmap::REQUEST_TIMEOUT`]). A probe showing that this host
/// is not behind a NAT ends the mapping attempt.
async fn probe_and_map(opts: &ExposeOptions, ports: &PunchPorts) -> (Probes, Option<PortMap>) {
    let primary = ports.primary();
    let (shared, server_addr, port) = (primary.local, primary.server, primary.local.port());
    let probe_token = ProbeToken::random();
    let probe_addr = protocol::probe_addr(server_addr);
    let probed = probe::probe(shared, probe_addr, &probe_token);
    let other_token = ProbeToken::random();
    let other = ports
        .other()
        .map(|o| (o.local, protocol::probe_addr(o.server)));
    let other_probed = async move {
        let (local, addr) = other?;
        match probe::probe(local, addr, &other_token).await {
            Ok(seen) => {
                tracing::debug!("NAT probe: {local} is {seen} toward {addr}");
                Some(other_token)
            }
            Err(e) => {
                tracing::info!(
                    "no {} endpoint: probe to {addr} failed ({e})",
                    family(&addr)
                );
                None
            }
        }
    };
    let want = opts.port_mapping && portmap::worth_trying(server_addr.ip());
    let mapping = async move {
        if !want {
            return None;
        }
        match PortMap::request(port, portmap::REQUEST_TIMEOUT).await {
            Ok(m) => {
                tracing::info!(
                    "port mapping: {} forwards {} to punch port {} (lease {} s)",
                    m.protocol,
                    m.external,
                    m.internal_port,
                    m.lifetime.as_secs()
                );
                Some(m)
            }
            Err(e) => {
                tracing::info!("no port mapping: {e}");
                None
            }
        }
    };
    tokio::pin!(probed, mapping, other_probed);
    let mut mapped = None;
    let mut other_done = None;
    let seen = loop {
        tokio::select! {
            r = &mut probed => break r,
            m = &mut mapping, if mapped.is_none() => mapped = Some(m),
            o = &mut other_probed, if other_done.is_none() => other_done = Some(o),
        }
    };
    let (primary, not_behind_nat) = match seen {
        Ok(seen) => {
            tracing::debug!("NAT probe: {shared} is {seen} toward {probe_addr}");
            let here = net::local_candidates(port, &server_addr)
                .iter()
                .any(|a| a.ip() == seen.ip());
            (Some(probe_token), here)
        }
        Err(e) => {
            tracing::warn!("NAT probe to {probe_addr} failed ({e}); mapping stays unknown");
            (None, false)
        }
    };
    let other = match other_done {
        Some(o) => o,
        None => tokio::time::timeout(OTHER_PROBE_WAIT, other_probed)
            .await
            .unwrap_or(None),
    };
    let portmap = match mapped {
        Some(m) => m,
        None if not_behind_nat => None,
        None => mapping.await,
    };
    (Probes { primary, other }, portmap)
}

fn family(a: &SocketAddr) -> &'static str {
    if a.is_ipv4() { "IPv4" } else { "IPv6" }
}

/// What a registration asks for besides the options.
struct Wanted {
    probes: Probes,
    mapped: Option<SocketAddr>,
    takeover: bool,
}

/// The control connection from the punch port, the answer to the server's challenge (a
/// signature only the secret can make, over a nonce fresh for this connection), and the
/// registration.
async fn register_with(
    opts: &ExposeOptions,
    stream: &StreamSettings,
    candidate: &Candidate<'_>,
    ports: &PunchPorts,
    wanted: Wanted,
) -> Result<Registration, Error> {
    let primary = ports.primary();
    let query = ExposeQuery {
        id: ServiceId::new(&opts.id).map_err(|e| Error::Refused(e.code, e.message))?,
        auth: if opts.secret.is_some() {
            Auth::Secret
        } else {
            Auth::Public
        },
        private: ports.candidates(),
        probe: wanted.probes.primary,
        probe_other: wanted.probes.other,
        verifier: stream.keys.as_ref().map(|k| k.verifier()),
        key: stream
            .static_key
            .as_ref()
            .map(|k| AgentKey::from_bytes(*k.public())),
        mapped: wanted.mapped,
        takeover: wanted.takeover,
    };
    let server = candidate.server;
    let (mut ws, local) = control::open(
        server,
        primary.server,
        primary.local,
        protocol::EXPOSE_PATH,
        &query.to_query(),
        opts.token.as_deref(),
        candidate.patience,
    )
    .await?;
    let mut first = answer(&mut ws, server).await?;
    if let (Some(ServerToAgent::Challenge { nonce }), Some(keys)) = (&first, &stream.keys) {
        let signature = keys.sign(&register_message(&opts.id, nonce));
        control::send(&mut ws, &AgentToServer::Prove { signature }).await?;
        first = answer(&mut ws, server).await?;
    }
    match first {
        Some(ServerToAgent::Registered {
            public, mapping, ..
        }) => Ok(Registration {
            server: server.clone(),
            index: 0,
            has_alternative: false,
            mapping,
            ws,
            listeners: Vec::new(),
            ports: ports.view(),
            local,
            public,
            portmap: None,
        }),
        Some(ServerToAgent::Error { code, message }) => Err(Error::Refused(code, message)),
        Some(other) => Err(Error::Protocol(format!("unexpected message {other:?}"))),
        None => Err(Error::ServerUnreachable(format!(
            "{server}: closed the connection during registration"
        ))),
    }
}

/// The server's next answer during registration, within [`defaults::SERVER_TIMEOUT`].
async fn answer(
    ws: &mut ControlSocket,
    server: &ServerUrl,
) -> Result<Option<ServerToAgent>, Error> {
    tokio::time::timeout(defaults::SERVER_TIMEOUT, control::recv(ws))
        .await
        .map_err(|_| {
            Error::ServerUnreachable(format!("{server}: no registration answer in time"))
        })?
}
