//! One registration: a punch port, the NAT probe and the router's port mapping made from it,
//! and the expose request on a control connection from that same port.

use std::net::SocketAddr;

use super::ExposeOptions;
use crate::peer::control::{self, ControlSocket};
use crate::peer::portmap::{self, PortMap};
use crate::peer::probe;
use crate::protocol::{self, Auth, ExposeQuery, Mapping, ProbeToken, ServerToAgent, ServiceId};
use crate::{Error, defaults, net};

/// A registration in force, with what it was made from.
pub(super) struct Registration {
    /// The NAT's mapping behaviour, as the server measured it.
    pub mapping: Mapping,
    /// The control channel: the registration lives as long as it does.
    pub ws: ControlSocket,
    /// The punch port.
    pub listener: net::PunchPort,
    /// The control connection's local address (the punch port).
    pub local: SocketAddr,
    /// The punch port's public endpoint, as the server sees it.
    pub public: SocketAddr,
    /// The router's port mapping of the punch port, not yet kept alive.
    pub portmap: Option<PortMap>,
}

/// Binds a punch port, probes the NAT, maps the port on the router if it can, and registers.
/// A mapping made for a registration that fails is deleted again.
pub(super) async fn register(
    opts: &ExposeOptions,
    server_addr: SocketAddr,
    port: u16,
) -> Result<Registration, Error> {
    let listener = net::PunchPort::bind(net::any_addr(&server_addr, port))?;
    let port = listener.local_addr()?.port();
    let (probe, portmap) = probe_and_map(opts, server_addr, port).await;
    let mapped = portmap.as_ref().map(|m| m.external);
    match register_with(opts, server_addr, listener, probe, mapped).await {
        Ok(reg) => Ok(Registration { portmap, ..reg }),
        Err(e) => {
            if let Some(m) = portmap {
                m.remove_quietly().await;
            }
            Err(e)
        }
    }
}

/// The NAT probe from the punch port and, at the same time, a port mapping of it on the
/// router (bounded by [`portmap::REQUEST_TIMEOUT`]). A probe showing that this host is not
/// behind a NAT ends the mapping attempt. Returns the probe token (if the probe went through)
/// and the mapping.
async fn probe_and_map(
    opts: &ExposeOptions,
    server_addr: SocketAddr,
    port: u16,
) -> (Option<ProbeToken>, Option<PortMap>) {
    let shared = net::any_addr(&server_addr, port);
    let probe_token = ProbeToken::random();
    let probe_addr = protocol::probe_addr(server_addr);
    let probed = probe::probe(shared, probe_addr, &probe_token);
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
    tokio::pin!(probed, mapping);
    let mut mapped = None;
    let seen = loop {
        tokio::select! {
            r = &mut probed => break r,
            m = &mut mapping, if mapped.is_none() => mapped = Some(m),
        }
    };
    let (probe, not_behind_nat) = match seen {
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
    let portmap = match mapped {
        Some(m) => m,
        None if not_behind_nat => None,
        None => mapping.await,
    };
    (probe, portmap)
}

/// The control connection from the punch port and its first answer.
async fn register_with(
    opts: &ExposeOptions,
    server_addr: SocketAddr,
    listener: net::PunchPort,
    probe: Option<ProbeToken>,
    mapped: Option<SocketAddr>,
) -> Result<Registration, Error> {
    let port = listener.local_addr()?.port();
    let shared = net::any_addr(&server_addr, port);
    let query = ExposeQuery {
        id: ServiceId::new(&opts.id).map_err(|e| Error::Refused(e.code, e.message))?,
        auth: if opts.secret.is_some() {
            Auth::Secret
        } else {
            Auth::Public
        },
        private: net::local_candidates(port, &server_addr),
        probe,
        owner: opts
            .secret
            .as_deref()
            .map(|s| protocol::owner_credential(s, &opts.id)),
        mapped,
    };
    let (mut ws, local) = control::open(
        &opts.server,
        server_addr,
        shared,
        protocol::EXPOSE_PATH,
        &query.to_query(),
        opts.token.as_deref(),
    )
    .await?;
    let first = tokio::time::timeout(defaults::SERVER_TIMEOUT, control::recv(&mut ws))
        .await
        .map_err(|_| Error::ServerUnreachable("no registration answer in time".into()))??;
    match first {
        Some(ServerToAgent::Registered {
            public, mapping, ..
        }) => Ok(Registration {
            mapping,
            ws,
            listener,
            local,
            public,
            portmap: None,
        }),
        Some(ServerToAgent::Error { code, message }) => Err(Error::Refused(code, message)),
        Some(other) => Err(Error::Protocol(format!("unexpected message {other:?}"))),
        None => Err(Error::ServerUnreachable(
            "server closed the connection during registration".into(),
        )),
    }
}
