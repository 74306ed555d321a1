//! Every socket option p2pnc sets, in one place.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::Duration;

use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tokio::net::{TcpListener, TcpStream};

/// Backlog of punch-port listeners.
const LISTEN_BACKLOG: i32 = 1024;
/// Backlog of the server's listeners. A burst of connections (every agent reconnecting after
/// a restart, or a flood from one host) then waits in the kernel's accept queue; with the
/// usual 128, the overflow was dropped, and peers connecting at that moment lost a second to
/// SYN retransmission. The kernel caps it at `net.core.somaxconn`.
const SERVER_BACKLOG: i32 = 4096;
/// Idle time before a proven stream sends a keepalive probe. Probes keep the NAT mappings on
/// the path alive, re-create a mapping that a router forgot (so the peer's packets get
/// through again), and reveal a peer that is gone.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(15);
/// Time between unanswered keepalive probes.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
/// Sent data left unacknowledged this long (or an idle peer silent this long once probed)
/// ends a proven stream with an error, instead of the kernel's ~15 minutes of
/// retransmissions.
const STREAM_USER_TIMEOUT: Duration = Duration::from_secs(60);

/// The unspecified address of `peer`'s family, with `port`.
pub fn any_addr(peer: &SocketAddr, port: u16) -> SocketAddr {
    match peer {
        SocketAddr::V4(_) => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port),
        SocketAddr::V6(_) => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port),
    }
}

/// A TCP socket bound to `local` with SO_REUSEADDR and SO_REUSEPORT, so that the control
/// connection, the punch listener and every punch attempt can share one local port.
pub fn shared_port_socket(local: SocketAddr) -> io::Result<Socket> {
    let socket = Socket::new(
        Domain::for_address(local),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    #[cfg(unix)]
    socket.set_reuse_port(true)?;
    if local.is_ipv6() {
        // Each family has its own punch port: an IPv6 one never takes IPv4 connections.
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.set_tcp_nodelay(true)?;
    socket.bind(&local.into())?;
    Ok(socket)
}

/// A listener on a shared port (see [`shared_port_socket`]).
pub fn shared_listener(local: SocketAddr) -> io::Result<TcpListener> {
    let socket = shared_port_socket(local)?;
    socket.listen(LISTEN_BACKLOG)?;
    TcpListener::from_std(socket.into())
}

/// A listener for the rendezvous server's ports, with a deep accept queue. On the unspecified
/// IPv6 address it takes IPv4 connections too (dual stack), whatever the system's default.
pub fn server_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    #[cfg(unix)]
    socket.set_reuse_address(true)?;
    if let SocketAddr::V6(v6) = addr {
        socket.set_only_v6(!v6.ip().is_unspecified())?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(SERVER_BACKLOG)?;
    TcpListener::from_std(socket.into())
}

/// Connects from a shared local port to `remote`, giving up after `timeout`.
///
/// With `first_ttl`, the SYN leaves with that IP TTL and the TTL is restored as soon as it has
/// left: the SYN opens the local NAT but dies before reaching the peer's router, so a router that
/// answers unsolicited SYNs with RST cannot close the peer's mapping. The socket stays in
/// SYN_SENT (an ICMP Time Exceeded is only a soft error) and completes when the peer's SYN
/// arrives (simultaneous open).
pub async fn connect_from(
    local: SocketAddr,
    remote: SocketAddr,
    first_ttl: Option<u32>,
    timeout: Duration,
) -> io::Result<TcpStream> {
    finish_connect(start_connect(local, remote, first_ttl)?, timeout).await
}

/// Sends the SYN of [`connect_from`] now and returns the stream still connecting.
pub fn start_connect(
    local: SocketAddr,
    remote: SocketAddr,
    first_ttl: Option<u32>,
) -> io::Result<TcpStream> {
    let socket = if local.port() == 0 && local.ip().is_unspecified() {
        // Any port: let connect() pick a fresh ephemeral one, never shared.
        let s = Socket::new(
            Domain::for_address(local),
            Type::STREAM,
            Some(Protocol::TCP),
        )?;
        s.set_nonblocking(true)?;
        s.set_tcp_nodelay(true)?;
        s
    } else {
        shared_port_socket(local)?
    };
    let normal_ttl = match first_ttl {
        Some(ttl) => {
            let normal = ttl_of(&socket, remote)?;
            set_ttl(&socket, remote, ttl)?;
            Some(normal)
        }
        None => None,
    };
    match socket.connect(&remote.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    if let Some(normal) = normal_ttl {
        set_ttl(&socket, remote, normal)?;
    }
    TcpStream::from_std(std::net::TcpStream::from(socket))
}

/// How often a socket woken by a soft error is checked for the end of its handshake.
const SOFT_ERROR_POLL: Duration = Duration::from_millis(10);

/// Waits until a stream from [`start_connect`] is connected, failed, or `timeout` passed.
///
/// An ICMP error for a SYN in flight (Time Exceeded for a low-TTL SYN, say) wakes the socket
/// with `EHOSTUNREACH` while the kernel keeps it in SYN_SENT: that is a soft error, and the
/// socket may still complete by simultaneous open, so it is not given up while it connects.
/// Such a wake-up leaves the socket's readiness stuck on (epoll keeps reporting the error), so
/// from then on the handshake is watched by polling its TCP state instead of awaiting
/// readiness, which would spin.
pub async fn finish_connect(stream: TcpStream, timeout: Duration) -> io::Result<TcpStream> {
    let wait = async {
        stream.writable().await?;
        let err = stream.take_error()?;
        if err.is_none() && stream.peer_addr().is_ok() {
            return Ok(());
        }
        if !still_connecting(&stream) {
            return Err(err.unwrap_or_else(|| io::Error::from(io::ErrorKind::NotConnected)));
        }
        loop {
            tokio::time::sleep(SOFT_ERROR_POLL).await;
            if still_connecting(&stream) {
                continue;
            }
            // The handshake ended: a soft error seen on the way no longer matters.
            let err = stream.take_error()?;
            return match stream.peer_addr() {
                Ok(_) if is_established(&stream) => Ok(()),
                _ => Err(err.unwrap_or_else(|| io::Error::from(io::ErrorKind::NotConnected))),
            };
        }
    };
    match tokio::time::timeout(timeout, wait).await {
        Ok(Ok(())) => Ok(stream),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")),
    }
}

/// Whether a socket has completed its handshake (ESTABLISHED, or already past it).
fn is_established(fd: &impl AsRawFd) -> bool {
    #[cfg(target_os = "linux")]
    {
        const TCP_ESTABLISHED: u8 = 1;
        const TCP_CLOSE_WAIT: u8 = 8;
        tcp_info(fd).is_some_and(|i| matches!(i.tcpi_state, TCP_ESTABLISHED | TCP_CLOSE_WAIT))
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = fd;
        true
    }
}

/// Whether a socket is still in the TCP handshake (SYN_SENT or SYN_RECV).
fn still_connecting(fd: &impl AsRawFd) -> bool {
    #[cfg(target_os = "linux")]
    {
        const TCP_SYN_SENT: u8 = 2;
        const TCP_SYN_RECV: u8 = 3;
        tcp_info(fd).is_some_and(|i| matches!(i.tcpi_state, TCP_SYN_SENT | TCP_SYN_RECV))
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = fd;
        false
    }
}

#[cfg(target_os = "linux")]
fn tcp_info(fd: &impl AsRawFd) -> Option<libc::tcp_info> {
    // SAFETY: tcp_info is plain data; an all-zero value is valid.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `info` is a properly sized, writable tcp_info and `len` holds its size.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(info)
}

fn ttl_of(socket: &Socket, remote: SocketAddr) -> io::Result<u32> {
    match remote {
        SocketAddr::V4(_) => socket.ttl_v4(),
        SocketAddr::V6(_) => socket.unicast_hops_v6(),
    }
}

fn set_ttl(socket: &Socket, remote: SocketAddr, ttl: u32) -> io::Result<()> {
    match remote {
        SocketAddr::V4(_) => socket.set_ttl_v4(ttl),
        SocketAddr::V6(_) => socket.set_unicast_hops_v6(ttl),
    }
}

/// Raises the soft limit on open files to the hard limit (at most 65536), once: birthday
/// punching holds over a thousand sockets at a time.
pub fn raise_fd_limit() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        raise_fd_limit_to(65_536);
    });
}

/// Raises the soft limit on open files toward `want` (never past the hard limit, never
/// lowering it) and returns the soft limit now in force.
pub fn raise_fd_limit_to(want: libc::rlim_t) -> libc::rlim_t {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid, initialised rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        let want = want.min(lim.rlim_max);
        if lim.rlim_cur < want {
            let old = lim.rlim_cur;
            lim.rlim_cur = want;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                lim.rlim_cur = old;
            }
        }
    }
    lim.rlim_cur
}

/// The kernel's smoothed round-trip time of a connected TCP socket (TCP_INFO), if known.
pub fn tcp_rtt(fd: &impl AsRawFd) -> Option<Duration> {
    #[cfg(target_os = "linux")]
    {
        tcp_info(fd)
            .filter(|i| i.tcpi_rtt > 0)
            .map(|i| Duration::from_micros(i.tcpi_rtt.into()))
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = fd;
        None
    }
}

/// Makes a proven stream notice a dead path: keepalive probes when idle, and a bound on how
/// long sent data may stay unacknowledged.
pub fn watch_liveness(stream: &TcpStream) -> io::Result<()> {
    let socket = SockRef::from(stream);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL);
    socket.set_tcp_keepalive(&keepalive)?;
    #[cfg(any(target_os = "linux", target_os = "android"))]
    socket.set_tcp_user_timeout(Some(STREAM_USER_TIMEOUT))?;
    Ok(())
}

/// This host's candidate addresses for `port`: every non-loopback, non-link-local address of
/// `peer`'s family.
pub fn local_candidates(port: u16, family_of: &SocketAddr) -> Vec<SocketAddr> {
    let Ok(ifaces) = if_addrs::get_if_addrs() else {
        return Vec::new();
    };
    let mut out: Vec<SocketAddr> = ifaces
        .into_iter()
        .map(|i| i.ip())
        .filter(|ip| !ip.is_loopback() && ip.is_ipv4() == family_of.is_ipv4())
        .filter(|ip| match ip {
            IpAddr::V4(v4) => !v4.is_link_local(),
            IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) != 0xfe80,
        })
        .map(|ip| SocketAddr::new(ip, port))
        .collect();
    out.sort();
    out.dedup();
    out.truncate(crate::protocol::MAX_PRIVATE_CANDIDATES);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn shared_port_carries_a_listener_and_outgoing_connections() {
        let target = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let listener = shared_listener("127.0.0.1:0".parse().unwrap()).unwrap();
        let local = listener.local_addr().unwrap();
        let out = connect_from(
            local,
            target.local_addr().unwrap(),
            None,
            Duration::from_secs(2),
        )
        .await
        .unwrap();
        assert_eq!(out.local_addr().unwrap(), local);
        let (_accepted, from) = target.accept().await.unwrap();
        assert_eq!(from, local);
        assert!(tcp_rtt(&out).is_some());
    }

    #[tokio::test]
    async fn refused_connect_is_an_error_not_a_hang() {
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = closed.local_addr().unwrap();
        drop(closed);
        let err = connect_from(
            "127.0.0.1:0".parse().unwrap(),
            addr,
            Some(2),
            Duration::from_secs(2),
        )
        .await
        .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
    }
}
