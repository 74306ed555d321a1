//! The sweep's sockets (Linux and Android): UDP datagrams with growing TTLs toward the server,
//! and the ICMP errors they draw read from each socket's error queue (`IP_RECVERR`,
//! `IPV6_RECVERR`), which needs no privilege.

use std::io;
use std::mem::MaybeUninit;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;

use socket2::{Domain, MaybeUninitSlice, MsgHdrMut, Protocol, SockAddr, Socket, Type};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::{Hop, MAX_HOPS, NatDepth, SWEEP_TIMEOUT};

/// First UDP port probed (traceroute's, closed on almost every host); TTL n probes port + n.
const PROBE_PORT: u16 = 33434;
/// What each datagram carries: nothing but a name for whoever captures it.
const PAYLOAD: &[u8] = b"p2pnc nat depth probe";
/// Room for the control messages of one queued error (the extended error and the offender's
/// address, with headers and padding).
const CONTROL_LEN: usize = 256;

/// Sweeps toward `server` from `local` (or any address), publishing what is known on `tx` after
/// every answer; ends once the depth is known and every nearer hop has answered, or after
/// [`SWEEP_TIMEOUT`].
pub(super) async fn sweep(server: IpAddr, local: Option<IpAddr>, tx: watch::Sender<NatDepth>) {
    let mut probes = JoinSet::new();
    for ttl in 1..=MAX_HOPS {
        match send_probe(server, local, ttl) {
            Ok(socket) => {
                probes.spawn(async move {
                    let hop = tokio::time::timeout(SWEEP_TIMEOUT, answer(socket, server))
                        .await
                        .unwrap_or(Ok(Hop::Silent));
                    (ttl, hop)
                });
            }
            Err(e) => {
                tracing::debug!("NAT depth toward {server}: cannot probe at TTL {ttl}: {e}");
                return;
            }
        }
    }
    let mut hops = vec![None; usize::from(MAX_HOPS)];
    while let Some(done) = probes.join_next().await {
        let Ok((ttl, hop)) = done else { continue };
        hops[usize::from(ttl) - 1] = Some(hop.unwrap_or_else(|e| {
            tracing::debug!("NAT depth toward {server}: TTL {ttl}: {e}");
            Hop::Silent
        }));
        let depth = NatDepth::from_hops(&hops, local);
        tx.send_replace(depth);
        // Known, and every nearer hop has answered (or timed out): answers arrive together and
        // are read in any order, so a far one can come first; the nearer ones still say
        // whether a carrier-grade NAT is among them.
        let decided = hops.iter().position(|h| match h {
            Some(Hop::Router(a)) => !super::is_inside(*a, local),
            Some(Hop::Destination) => true,
            _ => false,
        });
        if depth.known && decided.is_some_and(|i| hops[..i].iter().all(Option::is_some)) {
            break;
        }
    }
    tracing::debug!("NAT depth toward {server}: {} ({hops:?})", *tx.borrow());
}

/// A UDP socket with error reporting on, that has sent one datagram toward `server` at `ttl`.
fn send_probe(server: IpAddr, local: Option<IpAddr>, ttl: u8) -> io::Result<AsyncFd<Socket>> {
    let v6 = server.is_ipv6();
    let domain = if v6 { Domain::IPV6 } else { Domain::IPV4 };
    let s = Socket::new(
        domain,
        Type::DGRAM.nonblocking().cloexec(),
        Some(Protocol::UDP),
    )?;
    let (level, opt) = if v6 {
        (libc::IPPROTO_IPV6, libc::IPV6_RECVERR)
    } else {
        (libc::IPPROTO_IP, libc::IP_RECVERR)
    };
    set_int(&s, level, opt, 1)?;
    if v6 {
        s.set_unicast_hops_v6(u32::from(ttl))?;
    } else {
        s.set_ttl_v4(u32::from(ttl))?;
    }
    if let Some(l) = local {
        s.bind(&SockAddr::from(SocketAddr::new(l, 0)))?;
    }
    s.connect(&SockAddr::from(SocketAddr::new(
        server,
        PROBE_PORT + u16::from(ttl),
    )))?;
    s.send(PAYLOAD)?;
    // SAFETY: the Socket owns its descriptor, which stays open and the same for as long as the
    // AsyncFd owns the Socket.
    unsafe { AsyncFd::register_with_interest(s, Interest::ERROR) }.map_err(io::Error::from)
}

/// Waits for the ICMP error the probe on `socket` drew.
async fn answer(socket: AsyncFd<Socket>, server: IpAddr) -> io::Result<Hop> {
    loop {
        let mut ready = socket.ready(Interest::ERROR).await?;
        match read_error(socket.get_ref(), server) {
            Ok(Some(hop)) => return Ok(hop),
            // An error that is no ICMP answer (a local one): keep waiting.
            Ok(None) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => ready.clear_ready(),
            Err(e) => return Err(e),
        }
    }
}

/// Reads one queued error of `s`: the hop it names, or `None` if it is no ICMP error.
fn read_error(s: &Socket, server: IpAddr) -> io::Result<Option<Hop>> {
    let mut data = [MaybeUninit::<u8>::uninit(); 64];
    let mut bufs = [MaybeUninitSlice::new(&mut data)];
    let mut control = [MaybeUninit::<u8>::uninit(); CONTROL_LEN];
    let mut msg = MsgHdrMut::new()
        .with_buffers(&mut bufs)
        .with_control(&mut control);
    s.recvmsg(&mut msg, libc::MSG_ERRQUEUE)?;
    let len = msg.control_len();
    // SAFETY: the kernel initialised the first `len` bytes of the control buffer.
    let control: &[u8] = unsafe { std::slice::from_raw_parts(control.as_ptr().cast(), len) };
    Ok(parse_control(control, server))
}

/// The hop named by the `IP_RECVERR`/`IPV6_RECVERR` control message in `control`.
fn parse_control(control: &[u8], server: IpAddr) -> Option<Hop> {
    // The cmsghdr list, walked by hand (the CMSG_* helpers need a whole msghdr).
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
        let is_err = (c.cmsg_level == libc::SOL_IP && c.cmsg_type == libc::IP_RECVERR)
            || (c.cmsg_level == libc::SOL_IPV6 && c.cmsg_type == libc::IPV6_RECVERR);
        if is_err && let Some(hop) = parse_extended_error(&control[at + hdr..at + clen], server) {
            return Some(hop);
        }
        at += clen.div_ceil(align) * align;
    }
    None
}

/// `struct sock_extended_err` followed by the offender's `sockaddr`.
fn parse_extended_error(p: &[u8], server: IpAddr) -> Option<Hop> {
    let ee_len = std::mem::size_of::<libc::sock_extended_err>();
    if p.len() < ee_len {
        return None;
    }
    // SAFETY: p holds at least one sock_extended_err; read_unaligned copes with alignment.
    let ee: libc::sock_extended_err = unsafe { std::ptr::read_unaligned(p.as_ptr().cast()) };
    if !matches!(
        ee.ee_origin,
        libc::SO_EE_ORIGIN_ICMP | libc::SO_EE_ORIGIN_ICMP6
    ) {
        return None;
    }
    // Time Exceeded names the router at that TTL; any other error (a router that filters the
    // datagram) names where the datagram got to as well, unless it is the server itself.
    let from = offender(&p[ee_len..])?;
    Some(if from != server {
        Hop::Router(from)
    } else {
        Hop::Destination
    })
}

/// The address in a `sockaddr_in` or `sockaddr_in6`.
fn offender(sa: &[u8]) -> Option<IpAddr> {
    if sa.len() >= std::mem::size_of::<libc::sockaddr_in6>() {
        // SAFETY: long enough for a sockaddr_in6.
        let a: libc::sockaddr_in6 = unsafe { std::ptr::read_unaligned(sa.as_ptr().cast()) };
        if a.sin6_family == libc::AF_INET6 as libc::sa_family_t {
            return Some(IpAddr::V6(Ipv6Addr::from(a.sin6_addr.s6_addr)));
        }
    }
    if sa.len() >= std::mem::size_of::<libc::sockaddr_in>() {
        // SAFETY: long enough for a sockaddr_in.
        let a: libc::sockaddr_in = unsafe { std::ptr::read_unaligned(sa.as_ptr().cast()) };
        if a.sin_family == libc::AF_INET as libc::sa_family_t {
            return Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr))));
        }
    }
    None
}

fn set_int(s: &Socket, level: libc::c_int, opt: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: setsockopt with a pointer to a live c_int and its size.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            level,
            opt,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_sweep_of_the_loopback_finds_the_destination_at_once() {
        let (tx, rx) = watch::channel(NatDepth::default());
        let server = IpAddr::V4(Ipv4Addr::LOCALHOST);
        tokio::time::timeout(SWEEP_TIMEOUT * 2, sweep(server, None, tx))
            .await
            .expect("the sweep ends within its timeout");
        // The loopback's own closed port answers the first probe: no router in between.
        assert_eq!(
            *rx.borrow(),
            NatDepth {
                nats: 0,
                known: true,
                cgn: false
            }
        );
    }

    #[test]
    fn control_messages_that_are_no_icmp_errors_name_no_hop() {
        assert_eq!(parse_control(&[], IpAddr::V4(Ipv4Addr::LOCALHOST)), None);
        assert_eq!(
            parse_control(&[0xff; 7], IpAddr::V4(Ipv4Addr::LOCALHOST)),
            None
        );
        assert_eq!(offender(&[0; 3]), None);
    }
}
