//! Linux and Android: `TCP_INFO` for the handshake state and the RTT, `TCP_USER_TIMEOUT` for a
//! dead path, `/proc/self/fd` for the descriptors in use, and `splice(2)` to forward between
//! two TCP connections without copying through user space. (The `IP_RECVERR` error queue of
//! UDP sockets is in `error_queue`.)

use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::Duration;

use rustix::pipe::{PipeFlags, SpliceFlags};
use socket2::Socket;
use tokio::io::Interest;
use tokio::net::TcpStream;

pub(super) use super::unix::{PUNCH_PORT_LISTENS, connect_started, server_port, share_port};
use super::{Handshake, budget_under, unix};

/// The head of Linux's `struct tcp_info` (include/uapi/linux/tcp.h) up to `tcpi_rtt`, whose
/// layout has not changed since 2.6. Android's libc has no definition of the struct; the
/// kernel fills as much of it as the caller asks for.
#[repr(C)]
#[derive(Default)]
struct TcpInfoHead {
    state: u8,
    /// `tcpi_ca_state` to the wscale and rate bit fields.
    _flags: [u8; 7],
    /// `tcpi_rto` to `tcpi_rcv_ssthresh`.
    _counters: [u32; 15],
    /// Smoothed RTT in microseconds.
    rtt: u32,
}

/// Linux TCP states (include/net/tcp_states.h).
const TCP_ESTABLISHED: u8 = 1;
const TCP_SYN_SENT: u8 = 2;
const TCP_SYN_RECV: u8 = 3;
const TCP_CLOSE_WAIT: u8 = 8;

fn tcp_info(socket: &Socket) -> Option<TcpInfoHead> {
    let mut info = TcpInfoHead::default();
    let mut len = std::mem::size_of::<TcpInfoHead>() as libc::socklen_t;
    // SAFETY: `info` is a writable, plain-data buffer of `len` bytes.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut TcpInfoHead).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(info)
}

/// The handshake state a Linux TCP state stands for.
fn handshake_of(state: u8) -> Handshake {
    match state {
        TCP_SYN_SENT | TCP_SYN_RECV => Handshake::Connecting,
        TCP_ESTABLISHED | TCP_CLOSE_WAIT => Handshake::Established,
        _ => Handshake::Ended,
    }
}

pub(super) fn handshake(socket: &Socket) -> Option<Handshake> {
    tcp_info(socket).map(|i| handshake_of(i.state))
}

pub(super) fn rtt(socket: &Socket) -> Option<Duration> {
    tcp_info(socket)
        .filter(|i| i.rtt > 0)
        .map(|i| Duration::from_micros(i.rtt.into()))
}

pub(super) fn set_dead_path_timeout(socket: &Socket, timeout: Duration) -> io::Result<()> {
    socket.set_tcp_user_timeout(Some(timeout))
}

pub(super) fn raise_fd_limit_to(want: u64) -> u64 {
    unix::raise_fd_limit_to(want, &[])
}

pub(super) fn socket_budget() -> usize {
    let open = unix::open_fds(Path::new("/proc/self/fd")).unwrap_or(0);
    budget_under(unix::fd_limit(), open)
}

/// Most bytes one `splice` call moves: far more than a pipe holds, so each call fills the
/// pipe as far as the socket allows.
const SPLICE_CHUNK: usize = 1 << 20;

/// Forwards between two TCP connections like `crate::forward`, keeping half-close, with the
/// bytes moving inside the kernel: each direction splices from its source socket into a pipe
/// and from the pipe into the other socket. `head` goes to `local` before anything spliced
/// from `peer` (bytes that arrived with a handshake). Returns the bytes `(peer to local, local
/// to peer)`.
pub(crate) async fn splice_bidirectional(
    peer: &TcpStream,
    head: &[u8],
    local: &TcpStream,
) -> io::Result<(u64, u64)> {
    let down = async {
        super::write_all_shared(local, head).await?;
        let spliced = splice_one_way(peer, local).await?;
        Ok::<_, io::Error>(head.len() as u64 + spliced)
    };
    tokio::try_join!(down, splice_one_way(local, peer))
}

/// Splices `from` into `to` until `from` ends, then shuts `to`'s write side down. Returns the
/// bytes moved.
///
/// The pipe is emptied before each refill, so a call that finds no room means the socket on
/// the other end is not ready: `EAGAIN` is always about the socket, and tokio's readiness
/// (cleared by `async_io` on `EAGAIN`) stays right.
async fn splice_one_way(from: &TcpStream, to: &TcpStream) -> io::Result<u64> {
    let (pipe_out, pipe_in) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
    let flags = SpliceFlags::MOVE | SpliceFlags::NONBLOCK;
    let mut total = 0u64;
    loop {
        let n = from
            .async_io(Interest::READABLE, || {
                rustix::pipe::splice(from, None, &pipe_in, None, SPLICE_CHUNK, flags)
                    .map_err(io::Error::from)
            })
            .await?;
        if n == 0 {
            break;
        }
        let mut left = n;
        while left > 0 {
            let m = to
                .async_io(Interest::WRITABLE, || {
                    rustix::pipe::splice(&pipe_out, None, to, None, left, flags)
                        .map_err(io::Error::from)
                })
                .await?;
            if m == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            left -= m;
        }
        total += n as u64;
    }
    super::shutdown_write(to)?;
    Ok(total)
}

#[cfg(test)]
mod tests {
    use socket2::SockRef;

    use super::*;

    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn the_tcp_info_head_matches_the_kernel_struct() {
        use std::mem::offset_of;
        assert_eq!(
            offset_of!(TcpInfoHead, state),
            offset_of!(libc::tcp_info, tcpi_state)
        );
        assert_eq!(
            offset_of!(TcpInfoHead, rtt),
            offset_of!(libc::tcp_info, tcpi_rtt)
        );
    }

    #[test]
    fn linux_tcp_states_map_to_handshake_states() {
        assert_eq!(handshake_of(TCP_SYN_SENT), Handshake::Connecting);
        assert_eq!(handshake_of(TCP_SYN_RECV), Handshake::Connecting);
        assert_eq!(handshake_of(TCP_ESTABLISHED), Handshake::Established);
        assert_eq!(handshake_of(TCP_CLOSE_WAIT), Handshake::Established);
        for ended in [4, 5, 6, 7, 9, 10, 11] {
            assert_eq!(handshake_of(ended), Handshake::Ended, "{ended}");
        }
    }

    #[tokio::test]
    async fn a_live_socket_reports_its_state_and_rtt() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let s = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let sock = SockRef::from(&s);
        assert_eq!(handshake(&sock), Some(Handshake::Established));
        assert!(rtt(&sock).is_some_and(|r| r < Duration::from_secs(1)));
        set_dead_path_timeout(&sock, Duration::from_secs(60)).unwrap();
        assert_eq!(
            sock.tcp_user_timeout().unwrap(),
            Some(Duration::from_secs(60))
        );
    }
}
