//! A NAT lab: network namespaces, NAT routers of chosen kinds, carrier-grade NAT, IPv6 home
//! firewalls and a delay box, for end-to-end tests of programs that traverse NATs.
//!
//! # Topology (all inside namespaces created here; nothing touches the root namespace)
//!
//! ```text
//!   rdv (203.0.113.10, 2001:db8:113::10) ──eth0── to_rdv ┐
//!                                                        │ inet: plain router; no routes
//!   [CGN A (wan 198.51.100.10) ── sub_a ──]              │ to 10.x or 100.64.x; every packet
//!   router A (wan 198.51.100.10 | 100.64.1.10) ─── to_a ─┤ it forwards from one of these
//!                                                        │ veths is held by the delay box
//!   router B (wan 192.0.2.20 | 100.64.2.20) ────── to_b ─┘ for that link's delay
//!
//!   router A: bridge `lan` 10.0.1.1/24 ── host A (10.0.1.2), host A2 (10.0.1.3)
//!   router B: bridge `lan` 10.0.2.1/24 ── host B (10.0.2.2), host B2 (10.0.2.3)
//! ```
//!
//! - With [`Nat::None`] a site's LAN is public instead (A: 198.51.100.128/25, host
//!   198.51.100.130; B: 192.0.2.128/25, host 192.0.2.130) and the router only routes.
//! - With a [`Cgn`] ([`LabConfig::cgn`]) a carrier-grade NAT sits between the home router
//!   and the internet: the home router's WAN is in the RFC 6598 shared space (A: 100.64.1.10,
//!   B: 100.64.2.20) and the CGN has the site's public address. With
//!   [`LabConfig::shared_cgn`] one CGN (public address 198.51.100.10) serves both sites'
//!   home routers, and their delays are applied on its inside links.
//! - With IPv6 ([`LabConfig::ipv6`]) a site's LAN is a routed /64 (A: 2001:db8:1:1::/64, B:
//!   2001:db8:2:1::/64; router ::1, hosts ::2 and ::3) behind a stateful [`Firewall`] on the
//!   home router; there is no NAT66. The internet router, the rendezvous host and the outside
//!   host are then dual-stack.
//!
//! One-way delay: a packet that `inet` forwards from site X's link is held `delay_X` before it
//! goes on, so the one-way delay A→B is `d_A`, and RTT(A, B) = `d_A + d_B`
//! (RTT(A, rdv) = `d_A + d_rdv`). Packets whose TTL expires at a router are answered (ICMP
//! Time Exceeded) at once, without the delay.
//!
//! Every namespace gets a hosts file (`/etc/netns/NAME/hosts`) naming the rendezvous host
//! [`RDV_NAME`] with its IPv4 and, in labs with IPv6, its IPv6 address. Processes started
//! with [`Lab::spawn`] and [`Lab::run`] (`ip netns exec`) see it; threads that only enter a
//! namespace ([`in_netns`]) do not (they read the root namespace's `/etc/hosts`).
//!
//! NAT routers drop packets that conntrack finds INVALID in their forward chain, so nothing
//! leaves a NATed LAN with its private source address.
//!
//! Lab tests are marked `#[natlab::lab_test]`: without root (or without the lab's tools)
//! they print `skipped: NAT lab needs ...` and pass, except under CI, where they fail.

#![cfg(target_os = "linux")]

mod config;
mod delay;
mod hops;
mod kinds;
mod lab;
mod net;
mod netns;
mod process;

pub use config::{
    LabConfig, Node, OUTSIDE_IP, OUTSIDE_IP6, RDV_IP, RDV_IP6, RDV_NAME, Site, SiteAddrs,
    SiteAddrs6, SiteConfig, Stack,
};
pub use delay::DelayStats;
pub use hops::{Hop, is_inside_address, is_shared, nat_depth, udp_hops};
pub use kinds::{Cgn, Firewall, Nat};
pub use lab::Lab;
pub use natlab_macros::lab_test;
pub use net::{
    Dial, EchoServer, IcmpErrors, SinkServer, TCP_CLOSE, TCP_SYN_RECV, TCP_SYN_SENT,
    accept_timeout, bind_connect, connect_ttl, echo_roundtrip, finish_connect, http_get, pattern,
    reuse_listener, sink_push, start_connect, tcp_state,
};
pub use netns::{NS_PREFIX, cleanup_stale_namespaces, find_tool, in_netns, list_namespaces, tool};
pub use process::{Proc, Spawn};

/// Tools every lab needs (looked up in PATH and the usual sbin directories).
pub const REQUIRED_TOOLS: &[&str] = &["ip", "nft", "iptables-restore", "ip6tables-restore", "sh"];

/// Debian packages that bring [`REQUIRED_TOOLS`] (and `conntrack`, which some helpers use).
const INSTALL_HINT: &str = "apt-get install -y iproute2 nftables iptables conntrack";

/// True when the environment says we run under CI (`CI` set to anything but `""`, `0`, `false`).
pub fn under_ci() -> bool {
    match std::env::var("CI") {
        Ok(v) => !matches!(v.trim().to_ascii_lowercase().as_str(), "" | "0" | "false"),
        Err(std::env::VarError::NotPresent) => false,
        Err(std::env::VarError::NotUnicode(_)) => true,
    }
}

/// Why the lab cannot run here (also counting the `extra` tools a test needs), or `None` if
/// it can.
pub fn lab_unavailable_reason(extra: &[&str]) -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        return Some(format!("root (running as euid {euid})"));
    }
    let missing: Vec<&str> = REQUIRED_TOOLS
        .iter()
        .chain(extra)
        .copied()
        .filter(|t| find_tool(t).is_none())
        .collect();
    if !missing.is_empty() {
        return Some(format!(
            "tools that are missing: {} ({INSTALL_HINT}, plus the packages of any extra tool)",
            missing.join(", ")
        ));
    }
    None
}

/// The guard of `#[lab_test]`: true when the lab (and the `extra` tools) can run. Otherwise
/// prints `skipped: NAT lab needs root (...)` (or the missing tools) to stderr and returns
/// false, except under CI, where it panics: lab tests must never pass silently in CI.
pub fn require_lab(extra: &[&str]) -> bool {
    match lab_unavailable_reason(extra) {
        None => true,
        Some(reason) => {
            if under_ci() {
                panic!("NAT lab cannot run under CI: it needs {reason}");
            }
            eprintln!("skipped: NAT lab needs {reason}");
            false
        }
    }
}
