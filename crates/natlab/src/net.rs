//! Small network helpers: TCP dials with options, listeners, an echo and a sink service,
//! HTTP GET, and test patterns. Socket helpers act in the calling thread's namespace: call
//! them inside [`crate::in_netns`].

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::lab::Lab;
use crate::netns::in_netns;

/// IP TTL (hop limit) set back on a socket after a low-TTL first SYN: Linux's default.
const NORMAL_TTL: u32 = 64;
/// Backlog of the listeners made here.
const LISTEN_BACKLOG: i32 = 128;
/// How long a service thread waits for a connection before it checks whether to stop.
const ACCEPT_POLL: Duration = Duration::from_millis(50);
/// Longest silence on a connection of the echo and sink services.
const SERVICE_IO_TIMEOUT: Duration = Duration::from_secs(300);

/// `tcpi_state` values of `TCP_INFO`.
pub const TCP_SYN_SENT: u8 = 2;
pub const TCP_SYN_RECV: u8 = 3;
pub const TCP_CLOSE: u8 = 7;

/// Options of [`start_connect`].
#[derive(Clone, Copy, Debug, Default)]
pub struct Dial {
    /// Bind there first, with SO_REUSEADDR and SO_REUSEPORT (several sockets may then share
    /// one local port).
    pub local: Option<SocketAddr>,
    /// The SYN leaves with this IP TTL (hop limit), which is set back to 64 right after, so
    /// later segments (e.g. a SYN-ACK in a simultaneous open) travel normally.
    pub first_ttl: Option<u32>,
    /// IP_RECVERR (IPV6_RECVERR): ICMP errors fail the connect as soon as they arrive
    /// (without it, e.g. a Time Exceeded is only a soft error and the socket stays in
    /// SYN_SENT).
    pub recverr: bool,
}

/// What [`finish_connect`] does with an ICMP error reported while the socket still connects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IcmpErrors {
    /// The wait ends with that error.
    Fatal,
    /// The wait goes on (the socket may still complete, e.g. by simultaneous open).
    Ignore,
}

fn domain_of(a: &SocketAddr) -> Domain {
    if a.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    }
}

fn set_int_opt(fd: RawFd, level: libc::c_int, opt: libc::c_int, v: libc::c_int) -> io::Result<()> {
    // SAFETY: setsockopt with a c_int value on a socket we own.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            &v as *const _ as *const libc::c_void,
            std::mem::size_of_val(&v) as libc::socklen_t,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Turns on IP_RECVERR or IPV6_RECVERR (socket2 has no call for it).
pub(crate) fn set_recverr(s: &Socket, v6: bool) -> io::Result<()> {
    if v6 {
        set_int_opt(s.as_raw_fd(), libc::IPPROTO_IPV6, libc::IPV6_RECVERR, 1)
    } else {
        set_int_opt(s.as_raw_fd(), libc::IPPROTO_IP, libc::IP_RECVERR, 1)
    }
}

/// Sets the IP TTL or the IPv6 unicast hop limit.
pub(crate) fn set_ttl(s: &Socket, v6: bool, ttl: u32) -> io::Result<()> {
    if v6 {
        s.set_unicast_hops_v6(ttl)
    } else {
        s.set_ttl_v4(ttl)
    }
}

fn reuse_socket(a: &SocketAddr) -> io::Result<Socket> {
    let s = Socket::new(domain_of(a), Type::STREAM.cloexec(), Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    if a.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.bind(&SockAddr::from(*a))?;
    Ok(s)
}

/// Starts a non-blocking TCP connect to `remote` and returns as soon as the SYN is on its
/// way. Finish with [`finish_connect`]. Call inside `in_netns`.
pub fn start_connect(remote: SocketAddr, dial: Dial) -> io::Result<TcpStream> {
    let v6 = remote.is_ipv6();
    let s = match dial.local {
        Some(local) => reuse_socket(&local)?,
        None => Socket::new(
            domain_of(&remote),
            Type::STREAM.cloexec(),
            Some(Protocol::TCP),
        )?,
    };
    s.set_nonblocking(true)?;
    if dial.recverr {
        set_recverr(&s, v6)?;
    }
    if let Some(ttl) = dial.first_ttl {
        set_ttl(&s, v6, ttl)?;
    }
    match s.connect(&SockAddr::from(remote)) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    if dial.first_ttl.is_some() {
        set_ttl(&s, v6, NORMAL_TTL)?;
    }
    Ok(s.into())
}

/// TCP state of a socket (`TCP_INFO.tcpi_state`: 1 established, [`TCP_SYN_SENT`],
/// [`TCP_SYN_RECV`], [`TCP_CLOSE`], ...).
pub fn tcp_state(stream: &TcpStream) -> io::Result<u8> {
    let mut info = [0u8; 256];
    let mut len = info.len() as libc::socklen_t;
    // SAFETY: TCP_INFO into a large enough buffer; the first byte is tcpi_state (socket2 has
    // no call for TCP_INFO).
    let r = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr() as *mut libc::c_void,
            &mut len,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(info[0])
}

/// Waits up to `timeout` for a connect from [`start_connect`] to complete; returns the
/// stream in blocking mode. Fails with the socket's error (e.g. ECONNREFUSED) or TimedOut.
///
/// An ICMP error (e.g. EHOSTUNREACH from the Time Exceeded of a low-TTL SYN) is reported on
/// the socket (POLLERR, SO_ERROR) but leaves it in SYN_SENT/SYN_RECV, where it can still
/// complete (simultaneous open); `icmp` says whether such an error ends the wait.
pub fn finish_connect(
    stream: TcpStream,
    timeout: Duration,
    icmp: IcmpErrors,
) -> io::Result<TcpStream> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if !poll(stream.as_raw_fd(), libc::POLLOUT, left) {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out"));
        }
        let state = tcp_state(&stream)?;
        if !matches!(state, TCP_SYN_SENT | TCP_SYN_RECV | TCP_CLOSE) {
            // Established (or already past it: the peer may have closed meanwhile).
            stream.set_nonblocking(false)?;
            return Ok(stream);
        }
        let err = stream.take_error()?;
        if state != TCP_CLOSE {
            // Still connecting: an ICMP error was reported (SO_ERROR read clears it).
            if let Some(e) = err
                && icmp == IcmpErrors::Fatal
            {
                return Err(e);
            }
            if Instant::now() >= deadline {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out"));
            }
            // Wait a little instead of spinning on a socket that polls as ready.
            thread::sleep(Duration::from_millis(1));
            continue;
        }
        return Err(err.unwrap_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotConnected,
                format!("connect ended in TCP state {state}"),
            )
        }));
    }
}

/// Blocking TCP connect from an explicit local address (SO_REUSEADDR and SO_REUSEPORT set, so
/// several sockets can share one local port). Call inside `in_netns`.
pub fn bind_connect(
    local: impl Into<SocketAddr>,
    remote: impl Into<SocketAddr>,
    timeout: Duration,
) -> io::Result<TcpStream> {
    let dial = Dial {
        local: Some(local.into()),
        ..Dial::default()
    };
    finish_connect(
        start_connect(remote.into(), dial)?,
        timeout,
        IcmpErrors::Fatal,
    )
}

/// TCP connect whose SYN leaves with IP TTL (hop limit) `ttl`, with IP_RECVERR on so that an
/// ICMP error (e.g. Time Exceeded: EHOSTUNREACH) fails it as soon as it arrives. Call inside
/// `in_netns`.
pub fn connect_ttl(
    remote: impl Into<SocketAddr>,
    ttl: u32,
    timeout: Duration,
) -> io::Result<TcpStream> {
    let dial = Dial {
        first_ttl: Some(ttl),
        recverr: true,
        ..Dial::default()
    };
    finish_connect(
        start_connect(remote.into(), dial)?,
        timeout,
        IcmpErrors::Fatal,
    )
}

/// A listener with SO_REUSEADDR and SO_REUSEPORT (can share its port with outgoing sockets
/// made by [`start_connect`] / [`bind_connect`]). Call inside `in_netns`.
pub fn reuse_listener(local: impl Into<SocketAddr>) -> io::Result<TcpListener> {
    let s = reuse_socket(&local.into())?;
    s.listen(LISTEN_BACKLOG)?;
    Ok(s.into())
}

/// Accepts one connection, waiting at most `timeout` (TimedOut after that).
pub fn accept_timeout(
    listener: &TcpListener,
    timeout: Duration,
) -> io::Result<(TcpStream, SocketAddr)> {
    if !poll_readable(listener.as_raw_fd(), timeout) {
        return Err(io::Error::new(io::ErrorKind::TimedOut, "accept timed out"));
    }
    listener.accept()
}

/// Waits until `fd` has one of `events` or `timeout` passes. Returns true when it has.
pub(crate) fn poll(fd: RawFd, events: libc::c_short, timeout: Duration) -> bool {
    let mut p = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: one valid pollfd, a valid timespec, no signal mask.
    let r = unsafe { libc::ppoll(&mut p, 1, &ts, std::ptr::null()) };
    r > 0
}

/// Waits until `fd` is readable or `timeout` passes. Returns true when readable.
pub(crate) fn poll_readable(fd: RawFd, timeout: Duration) -> bool {
    poll(fd, libc::POLLIN, timeout)
}

/// HTTP/1.1 GET with `Connection: close`; returns status code and body.
pub fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAccept: */*\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("bad reply {text:?}")))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// Deterministic pseudo-random bytes (xorshift64*), for byte-exact transfer checks.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        v.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    v.truncate(len);
    v
}

/// Sends `payload` on `stream` while reading back what comes in; returns the bytes read
/// until EOF. Half-closes after sending.
pub fn echo_roundtrip(stream: TcpStream, payload: &[u8]) -> io::Result<Vec<u8>> {
    let mut w = stream.try_clone()?;
    let mut r = stream;
    thread::scope(|s| {
        let writer = s.spawn(move || -> io::Result<()> {
            w.write_all(payload)?;
            w.shutdown(Shutdown::Write)
        });
        let mut got = Vec::with_capacity(payload.len());
        let read = r.read_to_end(&mut got);
        writer.join().expect("writer thread")?;
        read.map(|_| got)
    })
}

/// A TCP service running in this process, listening inside a lab namespace; one thread per
/// connection. Stopped on drop.
struct Service {
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicU64>,
    handle: Option<JoinHandle<()>>,
}

impl Service {
    fn start(
        lab: &Lab,
        node: crate::Node,
        addr: SocketAddr,
        what: &str,
        serve: impl Fn(TcpStream) + Send + Sync + Clone + 'static,
    ) -> Service {
        let ns = lab.ns(node);
        let listener = in_netns(&ns, || TcpListener::bind(addr))
            .unwrap_or_else(|e| panic!("{what}: bind {addr} in {ns}: {e}"));
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicU64::new(0));
        let (st, ac) = (stop.clone(), accepted.clone());
        let handle = thread::spawn(move || {
            while !st.load(Ordering::SeqCst) {
                let Ok((conn, _)) = accept_timeout(&listener, ACCEPT_POLL) else {
                    continue;
                };
                ac.fetch_add(1, Ordering::SeqCst);
                let serve = serve.clone();
                thread::spawn(move || serve(conn));
            }
        });
        Service {
            stop,
            accepted,
            handle: Some(handle),
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// A TCP echo service running in this process, listening inside a lab namespace. Each
/// connection is echoed until the client half-closes, then the write side is shut down.
pub struct EchoServer {
    pub addr: SocketAddr,
    bytes: Arc<AtomicU64>,
    /// Connections that carried at least one byte.
    carried: Arc<AtomicU64>,
    service: Service,
}

impl EchoServer {
    /// Starts an echo server at `addr` inside `lab`'s namespace of `node`.
    pub fn start(lab: &Lab, node: crate::Node, addr: SocketAddr) -> EchoServer {
        let bytes = Arc::new(AtomicU64::new(0));
        let carried = Arc::new(AtomicU64::new(0));
        let (by, ca) = (bytes.clone(), carried.clone());
        let service = Service::start(lab, node, addr, "echo server", move |c| {
            echo_conn(c, &by, &ca)
        });
        EchoServer {
            addr,
            bytes,
            carried,
            service,
        }
    }

    /// Client connections so far: those that carried at least one byte. `p2pnc expose`
    /// checks its service by connecting and closing at once, without a byte: its probes are
    /// not counted.
    pub fn connections(&self) -> u64 {
        self.carried.load(Ordering::SeqCst)
    }

    /// Connections accepted so far, probes included.
    pub fn accepted(&self) -> u64 {
        self.service.accepted.load(Ordering::SeqCst)
    }

    /// Polls until at least `n` connections were accepted (probes included: see
    /// [`EchoServer::accepted`]) or `timeout` passed; returns the count then.
    pub fn wait_accepted(&self, n: u64, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        loop {
            let c = self.accepted();
            if c >= n || Instant::now() >= deadline {
                return c;
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Bytes received (and echoed) so far.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::SeqCst)
    }
}

fn echo_conn(mut conn: TcpStream, bytes: &AtomicU64, carried: &AtomicU64) {
    let _ = conn.set_read_timeout(Some(SERVICE_IO_TIMEOUT));
    let mut buf = vec![0u8; 64 * 1024];
    let mut first = true;
    loop {
        match conn.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if std::mem::take(&mut first) {
                    carried.fetch_add(1, Ordering::SeqCst);
                }
                bytes.fetch_add(n as u64, Ordering::SeqCst);
                if conn.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        }
    }
    let _ = conn.shutdown(Shutdown::Write);
}

/// A sink service in this process, inside a lab namespace. Per connection: writes `R` at
/// once (so a client can tell the path is up before it starts a clock), counts what it
/// reads until EOF, then writes the count (u64, little-endian) and closes. [`sink_push`] is
/// its client.
pub struct SinkServer {
    pub addr: SocketAddr,
    service: Service,
}

impl SinkServer {
    pub fn start(lab: &Lab, node: crate::Node, addr: SocketAddr) -> SinkServer {
        let service = Service::start(lab, node, addr, "sink", sink_conn);
        SinkServer { addr, service }
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.service.accepted.load(Ordering::SeqCst)
    }
}

fn sink_conn(mut conn: TcpStream) {
    let _ = conn.set_read_timeout(Some(SERVICE_IO_TIMEOUT));
    if conn.write_all(b"R").is_err() {
        return;
    }
    let mut buf = vec![0u8; 256 << 10];
    let mut n = 0u64;
    loop {
        match conn.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => n += k as u64,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        }
    }
    let _ = conn.write_all(&n.to_le_bytes());
    let _ = conn.shutdown(Shutdown::Write);
}

/// The client of a [`SinkServer`] on a connected stream: waits for its `R`, then times
/// sending `len` bytes (cycling through `chunk`) and half-closing until the sink's count
/// comes back; fails unless the sink counted exactly `len`.
pub fn sink_push(mut s: TcpStream, len: usize, chunk: &[u8]) -> io::Result<Duration> {
    let mut r = [0u8; 1];
    s.read_exact(&mut r)?;
    if r[0] != b'R' {
        return Err(io::Error::other(format!("sink greeted with {:#04x}", r[0])));
    }
    let t0 = Instant::now();
    let mut left = len;
    while left > 0 {
        let k = left.min(chunk.len());
        s.write_all(&chunk[..k])?;
        left -= k;
    }
    s.shutdown(Shutdown::Write)?;
    let mut n = [0u8; 8];
    s.read_exact(&mut n)?;
    let elapsed = t0.elapsed();
    let n = u64::from_le_bytes(n);
    if n != len as u64 {
        return Err(io::Error::other(format!("the sink got {n} of {len} bytes")));
    }
    Ok(elapsed)
}
