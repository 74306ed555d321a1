//! Every socket option p2pnc sets, in one place, behind one interface for every platform.
//!
//! What differs between operating systems lives in one module each (`linux`, `macos`,
//! `windows`, with `unix` shared by every unix and `other` for the unix systems p2pnc knows
//! nothing special about):
//!
//! - **the shared punch port** (see [`PunchPort`]): `SO_REUSEADDR` and `SO_REUSEPORT` on every
//!   socket on unix, and the port listens; Windows has no `SO_REUSEPORT` and its
//!   `SO_REUSEADDR` lets any socket take over a port in use, so there the punch port only
//!   makes outgoing connections;
//! - **a non-blocking connect under way**: `EINPROGRESS` on unix, `WSAEWOULDBLOCK` on Windows;
//! - **the TCP state and round-trip time of a socket**: `TCP_INFO` (Linux, Android),
//!   `TCP_CONNECTION_INFO` (macOS, iOS), `SIO_TCP_INFO` (Windows 10 1703 and later);
//!   without them a connect woken by an error is watched until its deadline (see
//!   [`finish_connect`]);
//! - **the dead-path timeout of a proven stream**: `TCP_USER_TIMEOUT`, `TCP_RXT_CONNDROPTIME`,
//!   `TCP_MAXRT`;
//! - **descriptor limits**: `RLIMIT_NOFILE`, capped by `kern.maxfilesperproc` and `OPEN_MAX`
//!   on macOS; Windows has no per-process limit on sockets (see [`socket_budget`]);
//! - **ICMP errors of UDP sockets**: an error queue on Linux and Android only (see
//!   [`ErrorQueue`]);
//! - **forwarding inside the kernel**: `splice(2)` on Linux and Android (see
//!   [`splice_bidirectional`]); elsewhere bytes are copied through user space.

#[allow(
    dead_code,
    reason = "the hook of a NAT-depth TTL sweep, tested here; the sweep brings its caller"
)]
mod error_queue;
#[cfg(any(target_os = "linux", target_os = "android"))]
mod linux;
// The mapping of macOS's and Windows's values is tested on every platform.
#[cfg(any(target_vendor = "apple", test))]
#[cfg_attr(not(target_vendor = "apple"), allow(dead_code))]
mod macos;
#[cfg(not(any(
    target_os = "linux",
    target_os = "android",
    target_vendor = "apple",
    windows
)))]
mod other;
#[cfg(unix)]
mod unix;
#[cfg(any(windows, test))]
#[cfg_attr(not(windows), allow(dead_code))]
mod windows;

#[cfg(any(target_os = "linux", target_os = "android"))]
use linux as sys;
#[cfg(target_vendor = "apple")]
use macos as sys;
#[cfg(not(any(
    target_os = "linux",
    target_os = "android",
    target_vendor = "apple",
    windows
)))]
use other as sys;
#[cfg(windows)]
use windows as sys;

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tokio::net::{TcpListener, TcpStream};

#[allow(
    dead_code,
    unused_imports,
    reason = "the hook of a NAT-depth TTL sweep, tested here; the sweep brings its caller"
)]
pub use error_queue::{ErrorQueue, IcmpError, IcmpKind};
#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) use linux::splice_bidirectional;

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
/// How often a socket woken by a soft error is checked for the end of its handshake.
const SOFT_ERROR_POLL: Duration = Duration::from_millis(10);
/// Open-file limit asked for once a punch needs many sockets: birthday punching holds over a
/// thousand at a time, and an agent may run several punches at once.
const PUNCH_FD_LIMIT: u64 = 65_536;
/// Descriptors left for everything else when a punch sizes itself (see [`socket_budget`]):
/// control connections, listeners, streams being forwarded, log files, the runtime's own.
#[cfg(unix)]
const FD_RESERVE: u64 = 64;

/// Whether the punch port listens for the peer's SYNs on this platform (see [`PunchPort`]).
pub const PUNCH_PORT_LISTENS: bool = sys::PUNCH_PORT_LISTENS;

/// The unspecified address of `peer`'s family, with `port`.
pub fn any_addr(peer: &SocketAddr, port: u16) -> SocketAddr {
    match peer {
        SocketAddr::V4(_) => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port),
        SocketAddr::V6(_) => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port),
    }
}

/// The one local TCP port a peer uses for everything (docs/protocol.md, "One shared local
/// port per peer"): its control connection, its NAT probe and every punch attempt connect
/// from it, and where the platform allows, it listens for the peer's SYNs.
///
/// On Windows it does not listen ([`PUNCH_PORT_LISTENS`] is false), as the Java client does
/// not: Windows has no `SO_REUSEPORT`, and a listener sharing its port with connecting
/// sockets through `SO_REUSEADDR` leaves undefined which socket an arriving SYN reaches. The
/// port is held by a bound socket instead, and streams come only from this end's own
/// connects (simultaneous open): a peer's SYN that arrives before ours has left is refused,
/// and the dialers' retries cover that. A router's port mapping, which forwards
/// connections to the port, has nothing to reach there, so an agent on Windows asks for none.
pub struct PunchPort {
    local: SocketAddr,
    listener: Option<TcpListener>,
    /// Where the port does not listen: the bound socket that holds it.
    _held: Option<Socket>,
}

impl PunchPort {
    /// Binds the punch port at `local` (port 0: a free one).
    pub fn bind(local: SocketAddr) -> io::Result<PunchPort> {
        if PUNCH_PORT_LISTENS {
            let listener = shared_listener(local)?;
            Ok(PunchPort {
                local: listener.local_addr()?,
                listener: Some(listener),
                _held: None,
            })
        } else {
            let held = shared_port_socket(local)?;
            let local = held
                .local_addr()?
                .as_socket()
                .ok_or_else(|| io::Error::other("the punch port has no IP address"))?;
            Ok(PunchPort {
                local,
                listener: None,
                _held: Some(held),
            })
        }
    }

    /// The bound address (with the port chosen when 0 was asked for).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }

    /// Polls for the next stream a peer opened toward the port; never ready where the port
    /// does not listen.
    pub fn poll_accept(
        &self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<(TcpStream, SocketAddr)>> {
        match &self.listener {
            Some(l) => l.poll_accept(cx),
            None => std::task::Poll::Pending,
        }
    }

    /// The next stream a peer opened toward the port; never ready where the port does not
    /// listen.
    pub async fn accept(&self) -> io::Result<(TcpStream, SocketAddr)> {
        match &self.listener {
            Some(l) => l.accept().await,
            None => std::future::pending().await,
        }
    }
}

/// A TCP socket bound to `local` so that the control connection, the punch listener and
/// every punch attempt can share one local port (`SO_REUSEADDR`, and `SO_REUSEPORT` on unix).
fn shared_port_socket(local: SocketAddr) -> io::Result<Socket> {
    let socket = Socket::new(
        Domain::for_address(local),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    sys::share_port(&socket)?;
    if local.is_ipv6() {
        // Each family has its own punch port: an IPv6 one never takes IPv4 connections.
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.set_tcp_nodelay(true)?;
    socket.bind(&local.into())?;
    Ok(socket)
}

/// A listener on a shared port (see [`shared_port_socket`]). The punch port listens through
/// it where the platform allows ([`PUNCH_PORT_LISTENS`]); on Windows only the punch
/// engine's tests use it.
#[cfg_attr(all(windows, not(test)), allow(dead_code))]
pub fn shared_listener(local: SocketAddr) -> io::Result<TcpListener> {
    let socket = shared_port_socket(local)?;
    socket.listen(LISTEN_BACKLOG)?;
    TcpListener::from_std(socket.into())
}

/// A listener for the rendezvous server's ports, with a deep accept queue.
pub fn server_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    sys::server_port(&socket)?;
    if let SocketAddr::V6(v6) = addr {
        // On the unspecified IPv6 address it takes IPv4 connections too (dual stack),
        // whatever the system's default.
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
        Err(e) if sys::connect_started(&e) => {}
        Err(e) => return Err(e),
    }
    if let Some(normal) = normal_ttl {
        set_ttl(&socket, remote, normal)?;
    }
    TcpStream::from_std(std::net::TcpStream::from(socket))
}

/// Where a socket's TCP handshake stands, as far as the platform can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Handshake {
    /// SYN sent or received, not yet acknowledged.
    Connecting,
    /// Done: established (or already half-closed by the peer).
    Established,
    /// Closed, or in a state a connecting socket never reaches.
    Ended,
}

/// Waits until a stream from [`start_connect`] is connected, failed, or `timeout` passed.
///
/// An ICMP error for a SYN in flight (Time Exceeded for a low-TTL SYN, say) wakes the socket
/// with `EHOSTUNREACH` while the kernel keeps it in SYN_SENT: that is a soft error, and the
/// socket may still complete by simultaneous open, so it is not given up while it connects.
/// Such a wake-up can leave the socket's readiness stuck on (epoll keeps reporting the error),
/// so from then on the handshake is watched by polling its TCP state instead of awaiting
/// readiness, which would spin. Where the platform cannot tell the TCP state, a refused
/// connect still fails at once, and any other error is waited out: the socket counts as
/// connected as soon as it has a peer address, and as failed only at `timeout`.
pub async fn finish_connect(stream: TcpStream, timeout: Duration) -> io::Result<TcpStream> {
    let wait = async {
        stream.writable().await?;
        let err = stream.take_error()?;
        if err.is_none() && stream.peer_addr().is_ok() {
            return Ok(());
        }
        let failed = |err: Option<io::Error>| {
            Err(err.unwrap_or_else(|| io::Error::from(io::ErrorKind::NotConnected)))
        };
        match handshake(&stream) {
            Some(Handshake::Connecting) => {}
            Some(_) => return failed(err),
            None if refused(err.as_ref()) => return failed(err),
            None => {}
        }
        loop {
            tokio::time::sleep(SOFT_ERROR_POLL).await;
            match handshake(&stream) {
                Some(Handshake::Connecting) => continue,
                Some(state) => {
                    // The handshake ended: a soft error seen on the way no longer matters.
                    let err = stream.take_error()?;
                    return match stream.peer_addr() {
                        Ok(_) if state == Handshake::Established => Ok(()),
                        _ => failed(err),
                    };
                }
                None => {
                    if stream.peer_addr().is_ok() {
                        return Ok(());
                    }
                    let err = stream.take_error()?;
                    if refused(err.as_ref()) {
                        return failed(err);
                    }
                }
            }
        }
    };
    match tokio::time::timeout(timeout, wait).await {
        Ok(Ok(())) => Ok(stream),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")),
    }
}

/// Whether a connect's error is the peer's refusal (a RST), which no simultaneous open
/// follows.
fn refused(err: Option<&io::Error>) -> bool {
    err.is_some_and(|e| e.kind() == io::ErrorKind::ConnectionRefused)
}

/// Where the handshake of `stream` stands; `None` where the platform cannot tell.
fn handshake(stream: &TcpStream) -> Option<Handshake> {
    sys::handshake(&SockRef::from(stream))
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

/// Raises the soft limit on open files toward [`PUNCH_FD_LIMIT`], once.
pub fn raise_fd_limit() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        raise_fd_limit_to(PUNCH_FD_LIMIT);
    });
}

/// Raises the soft limit on open files toward `want` (never past what the operating system
/// allows, never lowering it) and returns the limit now in force. On Windows, which limits
/// sockets only by memory and ports, it returns `want`.
pub fn raise_fd_limit_to(want: u64) -> u64 {
    sys::raise_fd_limit_to(want)
}

/// How many more sockets this process may open now: the open-file limit (raised once, see
/// [`raise_fd_limit`]) less the descriptors in use and a reserve for everything else.
/// Birthday punching opens at most this many.
pub fn socket_budget() -> usize {
    raise_fd_limit();
    sys::socket_budget()
}

/// Sockets left under a descriptor `limit` with `open` in use, keeping [`FD_RESERVE`] free.
#[cfg(unix)]
fn budget_under(limit: u64, open: u64) -> usize {
    usize::try_from(limit.saturating_sub(open.saturating_add(FD_RESERVE))).unwrap_or(usize::MAX)
}

/// The kernel's smoothed round-trip time of a connected TCP socket, if the platform tells it.
pub fn tcp_rtt<'a>(socket: impl Into<SockRef<'a>>) -> Option<Duration> {
    sys::rtt(&socket.into())
}

/// Makes a proven stream notice a dead path: keepalive probes when idle, and a bound on how
/// long sent data may stay unacknowledged (where the platform has one).
pub fn watch_liveness(stream: &TcpStream) -> io::Result<()> {
    watch_liveness_after(stream, KEEPALIVE_IDLE)
}

/// [`watch_liveness`] with keepalive probes only after `idle`: for a connection whose
/// application pings more often (a warm path), so that the kernel's probes never add to the
/// pings and only stand in if they stop.
pub fn watch_liveness_after(stream: &TcpStream, idle: Duration) -> io::Result<()> {
    let socket = SockRef::from(stream);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(idle)
        .with_interval(KEEPALIVE_INTERVAL);
    socket.set_tcp_keepalive(&keepalive)?;
    sys::set_dead_path_timeout(&socket, STREAM_USER_TIMEOUT)
}

/// Writes all of `bytes` to `to`, a stream that another task may read at the same time
/// (readiness, then non-blocking writes).
pub(crate) async fn write_all_shared(to: &TcpStream, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        to.writable().await?;
        match to.try_write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Shuts the write side of `to` down (sends its FIN). As with tokio's own shutdown, a peer that
/// already closed both ways is no error: nothing is left to tell it.
pub(crate) fn shutdown_write(to: &TcpStream) -> io::Result<()> {
    match SockRef::from(to).shutdown(std::net::Shutdown::Write) {
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
        r => r,
    }
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
    async fn the_punch_port_carries_outgoing_connections_and_listens_where_it_can() {
        let target = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = PunchPort::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let local = port.local_addr().unwrap();
        assert_ne!(local.port(), 0);
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
        let rtt_known = cfg!(any(
            target_os = "linux",
            target_os = "android",
            target_vendor = "apple",
            windows
        ));
        assert_eq!(tcp_rtt(&out).is_some(), rtt_known);
        // A second connection from the same port to another target.
        let other = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let second = connect_from(
            local,
            other.local_addr().unwrap(),
            None,
            Duration::from_secs(2),
        )
        .await
        .unwrap();
        assert_eq!(second.local_addr().unwrap(), local);
        // Inbound streams on the port, where it listens.
        let inbound = tokio::net::TcpStream::connect(local).await;
        if PUNCH_PORT_LISTENS {
            let _peer = inbound.unwrap();
            let accepted = tokio::time::timeout(Duration::from_secs(2), port.accept()).await;
            assert!(accepted.unwrap().is_ok());
        } else {
            assert!(inbound.is_err(), "nothing listens on the punch port");
        }
    }

    #[tokio::test]
    async fn refused_connect_is_an_error_not_a_hang() {
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = closed.local_addr().unwrap();
        drop(closed);
        // Windows answers a refusal by sending the SYN twice more before it gives up.
        let err = connect_from(
            "127.0.0.1:0".parse().unwrap(),
            addr,
            Some(2),
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
    }

    #[test]
    #[cfg(unix)]
    fn the_budget_keeps_a_reserve_and_never_underflows() {
        assert_eq!(budget_under(1024, 10), 1024 - 10 - FD_RESERVE as usize);
        assert_eq!(budget_under(256, 200), 0);
        assert_eq!(budget_under(0, 0), 0);
        assert_eq!(budget_under(u64::MAX, u64::MAX), 0);
    }

    #[test]
    #[cfg(unix)]
    fn the_budget_here_fits_under_the_limit() {
        let budget = socket_budget() as u64;
        let limit = raise_fd_limit_to(0);
        assert!(budget + FD_RESERVE <= limit, "{budget} of {limit}");
    }
}
