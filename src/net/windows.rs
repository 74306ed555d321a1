//! Windows: a punch port that only connects, `WSAEWOULDBLOCK` for a connect under way,
//! `SIO_TCP_INFO` for the handshake state and the RTT (Windows 10 1703 and later), `TCP_MAXRT`
//! for a dead path, and no per-process limit on sockets.
//!
//! The mapping of the system's values is plain code, compiled (and tested) on every platform.

use std::io;
use std::time::Duration;

use super::Handshake;

/// The punch port does not listen on Windows (see [`super::PunchPort`]): there is no
/// `SO_REUSEPORT`, and `SO_REUSEADDR` lets sockets share a port without saying which of them
/// an arriving SYN reaches.
pub(super) const PUNCH_PORT_LISTENS: bool = false;
/// Winsock's "operation would block", which a non-blocking `connect` returns when it has
/// started (where unix says `EINPROGRESS`).
const WSAEWOULDBLOCK: i32 = 10_035;
/// `TCPSTATE` values (mstcpip.h).
const TCPSTATE_SYN_SENT: i32 = 2;
const TCPSTATE_SYN_RCVD: i32 = 3;
const TCPSTATE_ESTABLISHED: i32 = 4;
const TCPSTATE_CLOSE_WAIT: i32 = 7;
/// Sockets a punch may hold at once on Windows, which limits sockets by memory rather than by
/// a count: the size of the default dynamic port range (49152–65535), since each socket of
/// the hard side of a birthday punch takes a port of its own.
const SOCKET_BUDGET: usize = 16_384;

/// Whether a non-blocking `connect` returned "under way".
pub(super) fn connect_started(e: &io::Error) -> bool {
    e.raw_os_error() == Some(WSAEWOULDBLOCK)
}

/// The handshake state a Windows `TCPSTATE` stands for.
fn handshake_of(state: i32) -> Handshake {
    match state {
        TCPSTATE_SYN_SENT | TCPSTATE_SYN_RCVD => Handshake::Connecting,
        TCPSTATE_ESTABLISHED | TCPSTATE_CLOSE_WAIT => Handshake::Established,
        _ => Handshake::Ended,
    }
}

/// The smoothed RTT of `TCP_INFO_v0` (microseconds), once the handshake is done.
fn rtt_of(state: i32, rtt_us: u32) -> Option<Duration> {
    (handshake_of(state) == Handshake::Established).then(|| Duration::from_micros(rtt_us.into()))
}

/// `TCP_MAXRT` takes whole seconds: the timeout rounded up, at least one.
fn maxrt_secs(timeout: Duration) -> u32 {
    let secs = timeout
        .as_secs()
        .saturating_add(u64::from(timeout.subsec_nanos() > 0));
    u32::try_from(secs.max(1)).unwrap_or(u32::MAX)
}

/// Windows has no open-file limit to raise for sockets: whatever is asked for is in force.
pub(super) fn raise_fd_limit_to(want: u64) -> u64 {
    want
}

pub(super) fn socket_budget() -> usize {
    SOCKET_BUDGET
}

#[cfg(windows)]
pub(super) use self::sys::*;

#[cfg(windows)]
mod sys {
    use std::io;
    use std::os::windows::io::AsRawSocket;
    use std::time::Duration;

    use socket2::Socket;
    use windows_sys::Win32::Networking::WinSock as ws;

    use super::super::Handshake;
    use super::{handshake_of, maxrt_secs, rtt_of};

    // The values this module names itself are Winsock's.
    const _: () = assert!(super::WSAEWOULDBLOCK == ws::WSAEWOULDBLOCK);
    const _: () = assert!(super::TCPSTATE_SYN_SENT == ws::TCPSTATE_SYN_SENT);
    const _: () = assert!(super::TCPSTATE_SYN_RCVD == ws::TCPSTATE_SYN_RCVD);
    const _: () = assert!(super::TCPSTATE_ESTABLISHED == ws::TCPSTATE_ESTABLISHED);
    const _: () = assert!(super::TCPSTATE_CLOSE_WAIT == ws::TCPSTATE_CLOSE_WAIT);

    /// Sockets on the punch port share it through `SO_REUSEADDR` only; none of them asks
    /// for `SO_EXCLUSIVEADDRUSE`, which would lock the others out.
    pub(in super::super) fn share_port(socket: &Socket) -> io::Result<()> {
        socket.set_reuse_address(true)
    }

    /// The server's ports take no option: `SO_REUSEADDR` would let another socket take the
    /// port over, and Windows binds a port whose old connections linger in TIME_WAIT anyway.
    pub(in super::super) fn server_port(_socket: &Socket) -> io::Result<()> {
        Ok(())
    }

    fn tcp_info(socket: &Socket) -> Option<ws::TCP_INFO_v0> {
        let version: u32 = 0;
        let mut info = ws::TCP_INFO_v0::default();
        let mut returned: u32 = 0;
        // SAFETY: the input is the u32 version, the output a writable TCP_INFO_v0, both of
        // the lengths given; the call is synchronous (no OVERLAPPED, no completion routine).
        let rc = unsafe {
            ws::WSAIoctl(
                socket.as_raw_socket() as ws::SOCKET,
                ws::SIO_TCP_INFO,
                (&version as *const u32).cast(),
                std::mem::size_of::<u32>() as u32,
                (&mut info as *mut ws::TCP_INFO_v0).cast(),
                std::mem::size_of::<ws::TCP_INFO_v0>() as u32,
                &mut returned,
                std::ptr::null_mut(),
                None,
            )
        };
        (rc == 0).then_some(info)
    }

    pub(in super::super) fn handshake(socket: &Socket) -> Option<Handshake> {
        tcp_info(socket).map(|i| handshake_of(i.State))
    }

    pub(in super::super) fn rtt(socket: &Socket) -> Option<Duration> {
        tcp_info(socket).and_then(|i| rtt_of(i.State, i.RttUs))
    }

    pub(in super::super) fn set_dead_path_timeout(
        socket: &Socket,
        timeout: Duration,
    ) -> io::Result<()> {
        let secs = maxrt_secs(timeout);
        // SAFETY: setsockopt reads the u32 (a DWORD) it is given, of the length given.
        let rc = unsafe {
            ws::setsockopt(
                socket.as_raw_socket() as ws::SOCKET,
                ws::IPPROTO_TCP,
                ws::TCP_MAXRT,
                (&secs as *const u32).cast(),
                std::mem::size_of::<u32>() as i32,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connect_under_way_is_wsaewouldblock() {
        assert!(connect_started(&io::Error::from_raw_os_error(10_035)));
        // WSAECONNREFUSED, WSAEADDRINUSE, WSAEINPROGRESS (a second connect on one socket).
        for other in [10_061, 10_048, 10_036] {
            assert!(!connect_started(&io::Error::from_raw_os_error(other)));
        }
        assert!(!connect_started(&io::Error::from(
            io::ErrorKind::WouldBlock
        )));
    }

    #[test]
    fn windows_tcp_states_map_to_handshake_states() {
        assert_eq!(handshake_of(TCPSTATE_SYN_SENT), Handshake::Connecting);
        assert_eq!(handshake_of(TCPSTATE_SYN_RCVD), Handshake::Connecting);
        assert_eq!(handshake_of(TCPSTATE_ESTABLISHED), Handshake::Established);
        assert_eq!(handshake_of(TCPSTATE_CLOSE_WAIT), Handshake::Established);
        // CLOSED, LISTEN, FIN_WAIT_1, FIN_WAIT_2, CLOSING, LAST_ACK, TIME_WAIT.
        for ended in [0, 1, 5, 6, 8, 9, 10] {
            assert_eq!(handshake_of(ended), Handshake::Ended, "{ended}");
        }
        assert_eq!(
            rtt_of(TCPSTATE_ESTABLISHED, 1500),
            Some(Duration::from_micros(1500))
        );
        assert_eq!(rtt_of(TCPSTATE_SYN_SENT, 1500), None);
    }

    #[test]
    fn the_dead_path_timeout_is_whole_seconds_rounded_up() {
        assert_eq!(maxrt_secs(Duration::from_secs(60)), 60);
        assert_eq!(maxrt_secs(Duration::from_millis(60_001)), 61);
        assert_eq!(maxrt_secs(Duration::ZERO), 1);
        assert_eq!(maxrt_secs(Duration::MAX), u32::MAX);
    }

    #[test]
    fn sockets_are_not_limited_by_a_count() {
        assert_eq!(raise_fd_limit_to(100_000), 100_000);
        assert!(socket_budget() >= crate::defaults::EASY_PROBES);
    }
}
