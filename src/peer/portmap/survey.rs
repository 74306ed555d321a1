//! Which port mapping protocols the default gateway speaks (for `nat-check`), asked without
//! mapping anything.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use crab_nat::TimeoutConfig;
use serde::Serialize;

use super::Protocol;
use super::gateway::{default_gateway, local_ip_toward};
use super::pmp::{PMP_PORT, PMP_TIMEOUTS};
use super::upnp;

/// Which port mapping protocols the default gateway answered (for `nat-check`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Survey {
    /// The IPv4 default gateway asked (absent when there is none).
    pub gateway: Option<Ipv4Addr>,
    /// A UPnP Internet Gateway Device answered the search.
    pub upnp: bool,
    /// The gateway answered a NAT-PMP request.
    pub natpmp: bool,
    /// The gateway answered a PCP request.
    pub pcp: bool,
    /// The external address the router reported (NAT-PMP or UPnP-IGD), if any.
    pub external_ip: Option<IpAddr>,
}

impl Survey {
    /// The names of the protocols that answered.
    pub fn answered(&self) -> Vec<Protocol> {
        [
            (self.upnp, Protocol::Upnp),
            (self.natpmp, Protocol::NatPmp),
            (self.pcp, Protocol::Pcp),
        ]
        .into_iter()
        .filter_map(|(yes, p)| yes.then_some(p))
        .collect()
    }
}

impl fmt::Display for Survey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(gw) = self.gateway else {
            return f.write_str(if self.upnp {
                "UPnP-IGD answered (no IPv4 default gateway to ask for NAT-PMP and PCP)"
            } else {
                "no IPv4 default gateway, and no UPnP-IGD answered"
            });
        };
        let answered = self.answered();
        if answered.is_empty() {
            return write!(f, "none of UPnP-IGD, NAT-PMP, PCP answered (gateway {gw})");
        }
        let names: Vec<String> = answered.iter().map(|p| p.to_string()).collect();
        write!(f, "{} answered (gateway {gw}", names.join(", "))?;
        if let Some(ip) = self.external_ip {
            write!(f, ", external address {ip}")?;
        }
        f.write_str(")")
    }
}

/// Asks the default gateway, without mapping anything, which of UPnP-IGD, NAT-PMP and PCP it
/// speaks. All three at once: the UPnP search gets `timeout` (and its external address half a
/// second more); NAT-PMP and PCP get 250 ms and a retry after 500 ms.
pub async fn survey(timeout: Duration) -> Survey {
    let Some(gateway) = default_gateway() else {
        // No gateway to ask for PCP or NAT-PMP; the UPnP search needs none.
        let upnp = upnp_survey(timeout).await;
        return Survey {
            upnp: upnp.is_some(),
            external_ip: upnp.flatten(),
            ..Survey::default()
        };
    };
    let local = local_ip_toward(gateway).ok();
    let upnp = upnp_survey(timeout);
    let natpmp = async {
        let config = TimeoutConfig {
            max_retries: 1,
            ..PMP_TIMEOUTS
        };
        match crab_nat::natpmp::external_address(gateway.into(), Some(config)).await {
            Ok(ip) => Some(Some(IpAddr::V4(ip))),
            // Any NAT-PMP answer counts, even a refusal; a PCP-only router answers with
            // "unsupported version".
            Err(crab_nat::natpmp::Failure::UnsupportedVersion(_)) => None,
            Err(
                crab_nat::natpmp::Failure::NotAuthorized
                | crab_nat::natpmp::Failure::NetworkFailure
                | crab_nat::natpmp::Failure::OutOfResources
                | crab_nat::natpmp::Failure::UnsupportedOpcode,
            ) => Some(None),
            Err(_) => None,
        }
    };
    let pcp = async {
        match local {
            Some(local) => pcp_announce(gateway, local).await,
            None => false,
        }
    };
    let (upnp, natpmp, pcp) = tokio::join!(upnp, natpmp, pcp);
    Survey {
        gateway: Some(gateway),
        upnp: upnp.is_some(),
        natpmp: natpmp.is_some(),
        pcp,
        external_ip: natpmp.flatten().or(upnp.flatten()),
    }
}

/// Whether a UPnP Internet Gateway Device answers the search within `timeout` (`None` if
/// not), and the external address it reports within half a second more.
async fn upnp_survey(timeout: Duration) -> Option<Option<IpAddr>> {
    let g = upnp::search(timeout).await.ok()?;
    let ip = tokio::time::timeout(Duration::from_millis(500), g.get_external_ip()).await;
    Some(ip.ok().and_then(Result::ok))
}

/// A PCP ANNOUNCE request (RFC 6887 §14.1): version 2, opcode 0, lifetime 0, our address as
/// an IPv4-mapped IPv6 address.
pub fn pcp_announce_request(client: Ipv4Addr) -> [u8; 24] {
    let mut req = [0u8; 24];
    req[0] = 2;
    req[8..24].copy_from_slice(&client.to_ipv6_mapped().octets());
    req
}

/// Whether `reply` is a PCP answer to an ANNOUNCE (version 2, response bit, opcode 0),
/// whatever its result code.
pub fn is_pcp_announce_reply(reply: &[u8]) -> bool {
    reply.len() >= 24 && reply[0] == 2 && reply[1] == 0x80
}

/// Sends PCP ANNOUNCE requests to `gateway` (250 ms, then 500 ms) and says whether one
/// was answered in PCP.
async fn pcp_announce(gateway: Ipv4Addr, local: Ipv4Addr) -> bool {
    let Ok(socket) = tokio::net::UdpSocket::bind((local, 0)).await else {
        return false;
    };
    if socket.connect((gateway, PMP_PORT)).await.is_err() {
        return false;
    }
    let req = pcp_announce_request(local);
    let mut buf = [0u8; 1100];
    for wait in [Duration::from_millis(250), Duration::from_millis(500)] {
        if socket.send(&req).await.is_err() {
            return false;
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, socket.recv(&mut buf)).await {
                Ok(Ok(n)) if is_pcp_announce_reply(&buf[..n]) => return true,
                Ok(Ok(_)) => continue, // NAT-PMP's "unsupported version", or noise
                Ok(Err(_)) => return false, // port unreachable: nothing listens
                Err(_) => break,
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pcp_announce_is_well_formed() {
        let req = pcp_announce_request(Ipv4Addr::new(10, 0, 1, 2));
        assert_eq!(req[..8], [2, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            req[8..],
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 1, 2]
        );
        let mut reply = [0u8; 24];
        reply[0] = 2;
        reply[1] = 0x80;
        assert!(is_pcp_announce_reply(&reply));
        reply[3] = 8; // a refusal is still a PCP answer
        assert!(is_pcp_announce_reply(&reply));
        // NAT-PMP's "unsupported version" answer.
        assert!(!is_pcp_announce_reply(&[0, 0x80, 0, 1, 0, 0, 0, 0]));
        assert!(!is_pcp_announce_reply(&reply[..12]));
    }

    #[test]
    fn survey_lists_what_answered() {
        let s = Survey {
            gateway: Some(Ipv4Addr::new(10, 0, 1, 1)),
            upnp: true,
            natpmp: false,
            pcp: true,
            external_ip: Some("198.51.100.10".parse().unwrap()),
        };
        assert_eq!(
            s.to_string(),
            "UPnP-IGD, PCP answered (gateway 10.0.1.1, external address 198.51.100.10)"
        );
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["upnp"], true);
        assert_eq!(v["natpmp"], false);
        assert_eq!(v["gateway"], "10.0.1.1");
        let none = Survey {
            gateway: Some(Ipv4Addr::new(10, 0, 1, 1)),
            ..Survey::default()
        };
        assert!(none.to_string().starts_with("none of"), "{none}");
        assert_eq!(
            Survey::default().to_string(),
            "no IPv4 default gateway, and no UPnP-IGD answered"
        );
        let upnp_only = Survey {
            upnp: true,
            ..Survey::default()
        };
        assert!(
            upnp_only.to_string().starts_with("UPnP-IGD answered"),
            "{upnp_only}"
        );
    }
}
