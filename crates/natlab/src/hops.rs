//! Which routers stand between a host and a destination, read the way an unprivileged
//! program can: UDP datagrams with growing TTLs on sockets with `IP_RECVERR`
//! (`IPV6_RECVERR`), each ICMP error read from the socket's error queue with the address of
//! the router that sent it. Behind NATs the first hops answer from their inside addresses,
//! so the leading private or shared-space hops count the NATs in front of a host.

use std::io;
use std::mem::MaybeUninit;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use socket2::{Domain, MaybeUninitSlice, MsgHdrMut, Protocol, SockAddr, Socket, Type};

use crate::net::{poll, set_recverr, set_ttl};

/// First UDP port probed (traceroute's); each TTL probes the next one.
const PROBE_PORT: u16 = 33434;
/// Room for the control messages of one queued error (the extended error and its offender
/// address, with headers and padding).
const CONTROL_LEN: usize = 512;

/// What answered one probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hop {
    /// A router on the way: its ICMP Time Exceeded came from this address.
    Router(IpAddr),
    /// The destination itself answered (ICMP port unreachable, or another error from it).
    Destination(IpAddr),
    /// Nothing came back in time.
    Silent,
}

impl Hop {
    pub fn addr(self) -> Option<IpAddr> {
        match self {
            Hop::Router(a) | Hop::Destination(a) => Some(a),
            Hop::Silent => None,
        }
    }
}

/// Probes `dst` with UDP at TTL 1, 2, ... up to `max_ttl`, waiting up to `timeout` per
/// probe; stops at the destination. Returns what answered at each TTL (index 0 is TTL 1).
/// Runs in the calling thread's namespace (call it inside [`crate::in_netns`]); needs no
/// privileges.
pub fn udp_hops(dst: IpAddr, max_ttl: u8, timeout: Duration) -> io::Result<Vec<Hop>> {
    let mut hops = Vec::new();
    for ttl in 1..=max_ttl {
        let hop = probe(dst, ttl, timeout)?;
        hops.push(hop);
        if matches!(hop, Hop::Destination(_)) {
            break;
        }
    }
    Ok(hops)
}

/// How many NATs a host is behind, from its [`udp_hops`]: the number of leading hops that
/// answer from private (RFC 1918, fc00::/7) or shared (RFC 6598, 100.64.0.0/10) addresses.
pub fn nat_depth(hops: &[Hop]) -> usize {
    hops.iter()
        .take_while(|h| h.addr().is_some_and(is_inside_address))
        .count()
}

/// True for addresses that only exist inside a NAT: RFC 1918, RFC 6598 and IPv6 ULAs.
pub fn is_inside_address(a: IpAddr) -> bool {
    match a {
        IpAddr::V4(v4) => v4.is_private() || is_shared(v4),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xfe00) == 0xfc00,
    }
}

/// RFC 6598 shared address space, 100.64.0.0/10.
pub fn is_shared(a: Ipv4Addr) -> bool {
    let o = a.octets();
    o[0] == 100 && (o[1] & 0xc0) == 64
}

fn probe(dst: IpAddr, ttl: u8, timeout: Duration) -> io::Result<Hop> {
    let v6 = dst.is_ipv6();
    let domain = if v6 { Domain::IPV6 } else { Domain::IPV4 };
    let s = Socket::new(domain, Type::DGRAM.cloexec(), Some(Protocol::UDP))?;
    set_recverr(&s, v6)?;
    set_ttl(&s, v6, u32::from(ttl))?;
    let port = PROBE_PORT + u16::from(ttl);
    s.connect(&SockAddr::from(SocketAddr::new(dst, port)))?;
    s.send(b"natlab hop probe")?;
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        // POLLERR is reported whatever the events asked for.
        if !poll(s.as_raw_fd(), 0, left) {
            return Ok(Hop::Silent);
        }
        if let Some(hop) = read_error(&s, dst)? {
            return Ok(hop);
        }
        if Instant::now() >= deadline {
            return Ok(Hop::Silent);
        }
    }
}

/// Reads one queued error of `s`; `None` when the queue held none or not an ICMP one.
fn read_error(s: &Socket, dst: IpAddr) -> io::Result<Option<Hop>> {
    let mut data = [MaybeUninit::<u8>::uninit(); 64];
    let mut bufs = [MaybeUninitSlice::new(&mut data)];
    let mut control = [MaybeUninit::<u8>::uninit(); CONTROL_LEN];
    let mut msg = MsgHdrMut::new()
        .with_buffers(&mut bufs)
        .with_control(&mut control);
    match s.recvmsg(&mut msg, libc::MSG_ERRQUEUE) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = msg.control_len();
    // SAFETY: the kernel initialised the first `len` bytes of the control buffer.
    let control: &[u8] = unsafe { std::slice::from_raw_parts(control.as_ptr().cast(), len) };
    Ok(parse_errors(control, dst))
}

/// The hop described by an `IP_RECVERR`/`IPV6_RECVERR` control message in `control`.
fn parse_errors(control: &[u8], dst: IpAddr) -> Option<Hop> {
    // Walk the cmsghdr list by hand (the libc CMSG_* helpers need a whole msghdr).
    let hdr = std::mem::size_of::<libc::cmsghdr>();
    let align = std::mem::size_of::<usize>();
    let mut at = 0;
    while at + hdr <= control.len() {
        // SAFETY: at + hdr is inside `control`; read_unaligned copes with any alignment.
        let c: libc::cmsghdr = unsafe { std::ptr::read_unaligned(control[at..].as_ptr().cast()) };
        let clen = c.cmsg_len as usize;
        if clen < hdr || at + clen > control.len() {
            return None;
        }
        let payload = &control[at + hdr..at + clen];
        let is_err = (c.cmsg_level == libc::SOL_IP && c.cmsg_type == libc::IP_RECVERR)
            || (c.cmsg_level == libc::SOL_IPV6 && c.cmsg_type == libc::IPV6_RECVERR);
        if is_err && let Some(hop) = parse_extended_error(payload, dst) {
            return Some(hop);
        }
        at += clen.div_ceil(align) * align;
    }
    None
}

/// `struct sock_extended_err` followed by the offender's `sockaddr`.
fn parse_extended_error(p: &[u8], dst: IpAddr) -> Option<Hop> {
    let ee_len = std::mem::size_of::<libc::sock_extended_err>();
    if p.len() < ee_len {
        return None;
    }
    // SAFETY: p holds at least one sock_extended_err; read_unaligned copes with alignment.
    let ee: libc::sock_extended_err = unsafe { std::ptr::read_unaligned(p.as_ptr().cast()) };
    let (time_exceeded, v6) = match ee.ee_origin {
        libc::SO_EE_ORIGIN_ICMP => (ee.ee_type == 11, false),
        libc::SO_EE_ORIGIN_ICMP6 => (ee.ee_type == 3, true),
        _ => return None,
    };
    let from = offender(&p[ee_len..], v6)?;
    Some(if time_exceeded && from != dst {
        Hop::Router(from)
    } else {
        Hop::Destination(from)
    })
}

/// The address in a `sockaddr_in` or `sockaddr_in6`.
fn offender(sa: &[u8], v6: bool) -> Option<IpAddr> {
    if v6 {
        if sa.len() < std::mem::size_of::<libc::sockaddr_in6>() {
            return None;
        }
        // SAFETY: long enough for a sockaddr_in6.
        let a: libc::sockaddr_in6 = unsafe { std::ptr::read_unaligned(sa.as_ptr().cast()) };
        (a.sin6_family == libc::AF_INET6 as libc::sa_family_t)
            .then(|| IpAddr::V6(Ipv6Addr::from(a.sin6_addr.s6_addr)))
    } else {
        if sa.len() < std::mem::size_of::<libc::sockaddr_in>() {
            return None;
        }
        // SAFETY: long enough for a sockaddr_in.
        let a: libc::sockaddr_in = unsafe { std::ptr::read_unaligned(sa.as_ptr().cast()) };
        (a.sin_family == libc::AF_INET as libc::sa_family_t)
            .then(|| IpAddr::V4(Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_counts_leading_inside_hops() {
        let r = |s: &str| Hop::Router(s.parse().unwrap());
        let hops = [
            r("10.0.1.1"),
            r("100.64.1.1"),
            r("198.51.100.1"),
            Hop::Destination("203.0.113.10".parse().unwrap()),
        ];
        assert_eq!(nat_depth(&hops), 2);
        assert_eq!(nat_depth(&hops[2..]), 0);
        assert_eq!(nat_depth(&[Hop::Silent, r("10.0.0.1")]), 0);
        assert!(!is_shared(Ipv4Addr::new(100, 128, 0, 1)));
        assert!(is_shared(Ipv4Addr::new(100, 127, 255, 1)));
    }
}
