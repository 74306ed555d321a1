//! How many NATs stand between this host and the internet: learned, not assumed.
//!
//! A SYN meant to open only this host's own NATs (the agent's first SYN to each candidate, the
//! hard side's birthday sockets) must pass every one of them and die at the first router
//! beyond. With one NAT more than assumed (a carrier-grade NAT in front of the home router), a
//! SYN at TTL 2 dies inside the CGN before its NAT step and opens nothing there; the punch then
//! waits for the low-TTL grace to run out.
//!
//! The *sweep* sends one UDP datagram toward the server per TTL (1 to [`MAX_HOPS`]), all at
//! once, each from its own socket with `IP_RECVERR` (`IPV6_RECVERR`), and reads from each
//! socket's error queue which router answered with ICMP Time Exceeded. Routers inside a NAT
//! answer from their inside addresses (private, shared 100.64.0.0/10, loopback, link-local,
//! unique-local), so the leading inside hops are the NATs in front of this host and the first
//! hop that answers from a public address is beyond them. For IPv6, which has firewalls rather
//! than NATs, the routers of this host's own /64 count as inside too: the home router answers
//! from its address on the LAN.
//!
//! The sweep runs beside the control connection and never delays a connect: a punch takes what
//! is known when its order arrives. A partial answer gives a TTL no higher than the finished one
//! would, and whatever is unknown falls back to what p2pnc did before it learnt depths (TTL 2,
//! and a normal SYN after a grace, see `punch::dial`), so it is never slower than that.

// Only Linux and Android have the error queue a sweep reads; elsewhere the reading of a sweep's
// answers is compiled (and unit-tested) but nothing sweeps.
#![cfg_attr(
    not(any(target_os = "linux", target_os = "android")),
    allow(dead_code, reason = "no sweep on platforms without IP_RECVERR")
)]

#[cfg(any(target_os = "linux", target_os = "android"))]
mod sweep;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::defaults;

/// TTLs a sweep probes: the hops up to the first public router are all it needs, and eight
/// cover a home router, a carrier-grade NAT, a container bridge and a VPN with room to spare.
pub const MAX_HOPS: u8 = 8;
/// How long a sweep waits for the routers' answers. A router answers within one round trip to
/// it, and the hops that matter (the NATs and the first router beyond) are the nearest ones: tens
/// of milliseconds on the slowest access links. A hop silent this long counts as silent.
pub(crate) const SWEEP_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a process reuses a sweep toward one server (an agent sweeps again whenever it
/// registers again): the NATs in front of a host change when it moves to another network, which
/// a long-lived process (`connect --listen`, an application using the library) may well do.
const CACHE_FOR: Duration = Duration::from_secs(300);

/// What answered one probe of a sweep.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Hop {
    /// A router on the way: its ICMP Time Exceeded (or another ICMP error, from a router that
    /// filters the datagram) came from this address.
    Router(IpAddr),
    /// The destination itself answered (its port was closed): every hop before it is known.
    Destination,
    /// Nothing came back in time (the router sends no ICMP, or rate-limited it).
    Silent,
}

/// The NATs in front of this host toward one destination, as far as a sweep has found them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct NatDepth {
    /// Routers in front of this host that answered from inside addresses: its NATs (and for
    /// IPv6 the routers of its own /64), counting silent hops between or right after them.
    pub nats: u8,
    /// Whether the count is complete: a router beyond them answered from a public address, or
    /// the destination answered.
    pub known: bool,
    /// Whether one of them answered from the shared address space 100.64.0.0/10 (RFC 6598): a
    /// carrier-grade NAT.
    pub cgn: bool,
}

impl NatDepth {
    /// Reads a sweep's answers so far, by TTL (index 0 is TTL 1; `None`: no answer yet).
    /// `local` is the address the sweep was sent from, when it is a specific one: IPv6 routers
    /// of its /64 count as inside.
    ///
    /// A hop that is silent (or has not answered yet) followed by an inside one is inside. One
    /// followed by a public router may be a NAT that sends no ICMP (or a CGN whose answers are
    /// rate-limited: one per second per subscriber is common) and counts as inside too, since
    /// passing a router too many costs nothing while stopping one NAT short opens nothing. Such
    /// hops with no router answer after them count for nothing: a TTL past them could reach the
    /// peer's router, and the destination's own answer says nothing of the hops before it.
    pub(crate) fn from_hops(hops: &[Option<Hop>], local: Option<IpAddr>) -> NatDepth {
        let mut depth = NatDepth::default();
        // Hops since the last inside one that did not answer, and whether some may still.
        let (mut quiet, mut pending) = (0u8, false);
        for hop in hops {
            match hop {
                None => {
                    quiet += 1;
                    pending = true;
                }
                Some(Hop::Silent) => quiet += 1,
                Some(Hop::Router(a)) if is_inside(*a, local) => {
                    depth.nats += quiet + 1;
                    depth.cgn |= matches!(a, IpAddr::V4(v4) if is_shared(*v4));
                    (quiet, pending) = (0, false);
                }
                Some(Hop::Router(_)) => {
                    depth.nats += quiet;
                    depth.known = true;
                    break;
                }
                Some(Hop::Destination) => {
                    depth.known = !pending;
                    break;
                }
            }
        }
        depth
    }

    /// The TTL of a SYN that opens this host's NATs: just past the outermost one (its depth + 1),
    /// never below [`defaults::PUNCH_TTL`] (a stateful firewall with public addresses, IPv6's
    /// usual case, does not count toward the depth, but a SYN must still pass it to open it).
    ///
    /// `shared_outer`: the peer is behind the same public address (the same outermost NAT, such
    /// as one carrier-grade NAT in front of both home routers). Then the SYN dies at that shared
    /// NAT, opening only the NATs inside it: going on, it would hairpin into the peer's home
    /// router, whose RST could close the mappings just made.
    pub fn low_ttl(&self, shared_outer: bool) -> u32 {
        let nats = u32::from(self.nats);
        if shared_outer && self.known && nats >= 2 {
            nats
        } else {
            (nats + 1).max(defaults::PUNCH_TTL)
        }
    }
}

impl std::fmt::Display for NatDepth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.known, self.nats) {
            (false, 0) => f.write_str("unknown"),
            (false, n) => write!(f, "at least {n}"),
            (true, n) => write!(f, "{n}"),
        }?;
        if self.cgn {
            f.write_str(" (a carrier-grade NAT among them)")?;
        }
        Ok(())
    }
}

/// True for addresses that routers inside a NAT answer from: private (RFC 1918), shared
/// (RFC 6598), loopback and link-local IPv4; loopback, link-local and unique-local IPv6 (and,
/// given the sweep's source address `local`, every address of its /64: the routers on its own
/// link).
pub(crate) fn is_inside(a: IpAddr, local: Option<IpAddr>) -> bool {
    match a {
        IpAddr::V4(v4) => {
            v4.is_private() || is_shared(v4) || v4.is_loopback() || v4.is_link_local()
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_inside(IpAddr::V4(v4), None);
            }
            let own_link = matches!(local, Some(IpAddr::V6(l)) if same_64(l, v6));
            v6.is_loopback() || v6.is_unicast_link_local() || v6.is_unique_local() || own_link
        }
    }
}

/// RFC 6598 shared address space, 100.64.0.0/10: carrier-grade NATs number their subscribers'
/// routers from it.
pub(crate) fn is_shared(a: Ipv4Addr) -> bool {
    let o = a.octets();
    o[0] == 100 && (o[1] & 0xc0) == 64
}

fn same_64(a: Ipv6Addr, b: Ipv6Addr) -> bool {
    a.segments()[..4] == b.segments()[..4]
}

/// Sweeps toward `server` from `local` (IPv6: the punch address; `None`: any), or reuses a
/// recent sweep of this process toward it. The receiver holds what is known so far.
pub(crate) fn learn(server: IpAddr, local: Option<IpAddr>) -> watch::Receiver<NatDepth> {
    sweep_cached(server, local, false)
}

/// Like [`learn`], but always sweeps afresh (an agent registering again).
pub(crate) fn relearn(server: IpAddr, local: Option<IpAddr>) -> watch::Receiver<NatDepth> {
    sweep_cached(server, local, true)
}

/// Sweeps of this process, by (destination, source): when each started and what it found.
type Cache = HashMap<(IpAddr, Option<IpAddr>), (Instant, watch::Receiver<NatDepth>)>;
static CACHE: Mutex<Option<Cache>> = Mutex::new(None);

fn sweep_cached(server: IpAddr, local: Option<IpAddr>, fresh: bool) -> watch::Receiver<NatDepth> {
    let mut cache = CACHE.lock().expect("nat depth cache lock");
    let cache = cache.get_or_insert_with(HashMap::new);
    let key = (server, local);
    if !fresh && let Some((started, rx)) = cache.get(&key) {
        // An ended sweep that found nothing (killed, or every hop silent) is worth another try.
        let ended_empty = rx.has_changed().is_err() && !rx.borrow().known;
        if started.elapsed() < CACHE_FOR && !ended_empty {
            return rx.clone();
        }
    }
    let (tx, rx) = watch::channel(NatDepth::default());
    cache.insert(key, (Instant::now(), rx.clone()));
    start_sweep(server, local, tx);
    rx
}

/// Starts a sweep in the background; it ends by itself within [`SWEEP_TIMEOUT`] (and at once
/// where the platform has no error queue), dropping `tx`.
fn start_sweep(server: IpAddr, local: Option<IpAddr>, tx: watch::Sender<NatDepth>) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if tokio::runtime::Handle::try_current().is_ok() {
        tokio::spawn(sweep::sweep(server, local, tx));
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        tracing::debug!("no ICMP error queue on this platform: NAT depth toward {server} unknown");
        let _ = (server, local, tx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(a: &str) -> Option<Hop> {
        Some(Hop::Router(a.parse().unwrap()))
    }

    const S: Option<Hop> = Some(Hop::Silent);
    const D: Option<Hop> = Some(Hop::Destination);

    fn depth(hops: &[Option<Hop>]) -> NatDepth {
        NatDepth::from_hops(hops, None)
    }

    #[test]
    fn one_home_router_is_one_nat_and_a_ttl_of_two() {
        let d = depth(&[r("10.0.1.1"), r("198.51.100.1"), r("203.0.113.1"), D]);
        assert_eq!(
            d,
            NatDepth {
                nats: 1,
                known: true,
                cgn: false
            }
        );
        assert_eq!(d.low_ttl(false), 2);
    }

    #[test]
    fn a_carrier_grade_nat_behind_the_home_router_makes_it_three() {
        let d = depth(&[r("192.168.1.1"), r("100.64.1.1"), r("198.51.100.1"), None]);
        assert_eq!(
            d,
            NatDepth {
                nats: 2,
                known: true,
                cgn: true
            }
        );
        assert_eq!(d.low_ttl(false), 3);
        // A peer behind the same CGN: die at the CGN, never in the peer's home router.
        assert_eq!(d.low_ttl(true), 2);
        assert_eq!(d.to_string(), "2 (a carrier-grade NAT among them)");
    }

    #[test]
    fn no_offender_seen_is_unknown_and_falls_back_to_ttl_two() {
        for hops in [vec![], vec![None; 8], vec![S; 8]] {
            let d = depth(&hops);
            assert_eq!(d, NatDepth::default(), "{hops:?}");
            assert_eq!(d.low_ttl(false), defaults::PUNCH_TTL);
            assert_eq!(d.low_ttl(true), defaults::PUNCH_TTL);
            assert_eq!(d.to_string(), "unknown");
        }
    }

    #[test]
    fn offenders_all_private_give_a_lower_bound_but_no_count() {
        // A sweep still running, or one whose public hops never answered: the inside hops seen
        // are passed, and trailing silence is not (it might be the peer's router).
        let d = depth(&[
            r("10.0.0.1"),
            r("172.16.0.1"),
            r("100.100.0.1"),
            S,
            S,
            S,
            S,
            S,
        ]);
        assert_eq!(
            d,
            NatDepth {
                nats: 3,
                known: false,
                cgn: true
            }
        );
        assert_eq!(d.low_ttl(false), 4);
        assert_eq!(d.low_ttl(true), 4, "not known to be the outermost");
        let running = depth(&[r("10.0.0.1"), None, None, D]);
        assert_eq!(
            running,
            NatDepth {
                nats: 1,
                known: false,
                cgn: false
            }
        );
        assert_eq!(running.to_string(), "at least 1");
    }

    #[test]
    fn a_hop_yet_to_answer_before_a_public_one_counts_as_a_nat() {
        // A CGN whose answer was rate-limited, or is still on its way, behind the home router.
        let d = depth(&[r("192.168.1.1"), None, r("198.51.100.1"), None]);
        assert_eq!(
            d,
            NatDepth {
                nats: 2,
                known: true,
                cgn: false
            }
        );
        assert_eq!(d.low_ttl(false), 3);
        // Before an inside one: inside.
        let d = depth(&[r("10.0.1.1"), None, r("100.64.0.1"), None]);
        assert_eq!(
            d,
            NatDepth {
                nats: 3,
                known: false,
                cgn: true
            }
        );
        // Before the destination: not known, and not counted.
        let d = depth(&[r("10.0.1.1"), None, D]);
        assert_eq!(
            d,
            NatDepth {
                nats: 1,
                known: false,
                cgn: false
            }
        );
        let d = depth(&[r("10.0.1.1"), S, D]);
        assert_eq!(
            d,
            NatDepth {
                nats: 1,
                known: true,
                cgn: false
            }
        );
    }

    #[test]
    fn an_icmp_silent_hop_before_a_public_one_counts_as_a_nat() {
        let d = depth(&[r("10.0.1.1"), S, r("198.51.100.1")]);
        assert_eq!(
            d,
            NatDepth {
                nats: 2,
                known: true,
                cgn: false
            }
        );
        assert_eq!(d.low_ttl(false), 3);
        // A silent home router: as before depths were learnt, TTL 2.
        let d = depth(&[S, r("198.51.100.1")]);
        assert_eq!((d.nats, d.known, d.low_ttl(false)), (1, true, 2));
        // Silence between inside hops is inside.
        let d = depth(&[r("10.0.1.1"), S, r("100.64.0.1"), r("198.51.100.1")]);
        assert_eq!((d.nats, d.known), (3, true));
    }

    #[test]
    fn a_public_first_hop_is_no_nat_and_still_ttl_two() {
        let d = depth(&[r("198.51.100.1"), r("203.0.113.1")]);
        assert_eq!(
            d,
            NatDepth {
                nats: 0,
                known: true,
                cgn: false
            }
        );
        // A firewall with public addresses must still be passed.
        assert_eq!(d.low_ttl(false), 2);
        assert_eq!(d.low_ttl(true), 2);
        // The destination itself on the same link: nothing in between.
        assert_eq!(
            depth(&[D]),
            NatDepth {
                nats: 0,
                known: true,
                cgn: false
            }
        );
    }

    #[test]
    fn ipv6_counts_unique_local_link_local_and_the_own_link() {
        let local: IpAddr = "2001:db8:1:1::2".parse().unwrap();
        let hops = [
            r("2001:db8:1:1::1"),
            r("2001:db8:1:ff::1"),
            r("2001:db8:113::10"),
        ];
        let d = NatDepth::from_hops(&hops, Some(local));
        assert_eq!(
            d,
            NatDepth {
                nats: 1,
                known: true,
                cgn: false
            }
        );
        assert_eq!(d.low_ttl(false), 2);
        // Without the source address, the home router's global address is public.
        assert_eq!(NatDepth::from_hops(&hops, None).nats, 0);
        let d = NatDepth::from_hops(&[r("fd00::1"), r("fe80::1"), r("2001:db8::1")], None);
        assert_eq!((d.nats, d.known), (2, true));
        assert!(is_inside("::ffff:10.1.2.3".parse().unwrap(), None));
        assert!(!is_inside("::ffff:198.51.100.1".parse().unwrap(), None));
    }

    #[test]
    fn the_shared_address_space_is_exactly_100_64_slash_10() {
        assert!(is_shared(Ipv4Addr::new(100, 64, 0, 0)));
        assert!(is_shared(Ipv4Addr::new(100, 127, 255, 255)));
        assert!(!is_shared(Ipv4Addr::new(100, 128, 0, 0)));
        assert!(!is_shared(Ipv4Addr::new(100, 63, 255, 255)));
    }
}
