//! macOS and iOS: `TCP_CONNECTION_INFO` for the handshake state and the RTT,
//! `TCP_RXT_CONNDROPTIME` for a dead path, and an open-file limit capped by
//! `kern.maxfilesperproc` and `OPEN_MAX`.
//!
//! The mapping of the system's values is plain code, compiled (and tested) on every platform.

use std::time::Duration;

use super::Handshake;

/// BSD TCP states (netinet/tcp_fsm.h).
const TCPS_SYN_SENT: u8 = 2;
const TCPS_SYN_RECEIVED: u8 = 3;
const TCPS_ESTABLISHED: u8 = 4;
const TCPS_CLOSE_WAIT: u8 = 5;
/// `OPEN_MAX` (sys/syslimits.h): setrlimit(2) asks for `min(OPEN_MAX, rlim_max)` and refuses
/// an unlimited soft limit for open files.
const OPEN_MAX: u64 = 10_240;

/// The handshake state a BSD TCP state stands for.
fn handshake_of(state: u8) -> Handshake {
    match state {
        TCPS_SYN_SENT | TCPS_SYN_RECEIVED => Handshake::Connecting,
        TCPS_ESTABLISHED | TCPS_CLOSE_WAIT => Handshake::Established,
        _ => Handshake::Ended,
    }
}

/// The smoothed RTT of `tcp_connection_info` (whole milliseconds), once the handshake is
/// done: a LAN or loopback path measures 0 ms.
fn rtt_of(state: u8, srtt_ms: u32) -> Option<Duration> {
    (handshake_of(state) == Handshake::Established).then(|| Duration::from_millis(srtt_ms.into()))
}

/// The ceilings of the open-file soft limit, tried in turn: `kern.maxfilesperproc` (when it
/// could be read), then `OPEN_MAX`.
fn fd_caps(maxfilesperproc: Option<u64>) -> Vec<u64> {
    maxfilesperproc.into_iter().chain([OPEN_MAX]).collect()
}

#[cfg(target_vendor = "apple")]
pub(super) use self::sys::*;

#[cfg(target_vendor = "apple")]
mod sys {
    use std::io;
    use std::os::fd::AsRawFd;
    use std::path::Path;
    use std::time::Duration;

    use socket2::Socket;

    pub(in super::super) use super::super::unix::{
        PUNCH_PORT_LISTENS, connect_started, server_port, share_port,
    };
    use super::super::{Handshake, budget_under, unix};
    use super::{fd_caps, handshake_of, rtt_of};

    /// `TCP_RXT_CONNDROPTIME` (netinet/tcp.h): seconds of retransmission after which a
    /// connection is dropped. Not in the libc crate.
    const TCP_RXT_CONNDROPTIME: libc::c_int = 0x80;

    fn connection_info(socket: &Socket) -> Option<libc::tcp_connection_info> {
        // SAFETY: tcp_connection_info is plain data; all-zero is a valid value.
        let mut info: libc::tcp_connection_info = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::tcp_connection_info>() as libc::socklen_t;
        // SAFETY: `info` is a writable tcp_connection_info of `len` bytes.
        let rc = unsafe {
            libc::getsockopt(
                socket.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_CONNECTION_INFO,
                (&mut info as *mut libc::tcp_connection_info).cast(),
                &mut len,
            )
        };
        (rc == 0).then_some(info)
    }

    pub(in super::super) fn handshake(socket: &Socket) -> Option<Handshake> {
        connection_info(socket).map(|i| handshake_of(i.tcpi_state))
    }

    pub(in super::super) fn rtt(socket: &Socket) -> Option<Duration> {
        connection_info(socket).and_then(|i| rtt_of(i.tcpi_state, i.tcpi_srtt))
    }

    pub(in super::super) fn set_dead_path_timeout(
        socket: &Socket,
        timeout: Duration,
    ) -> io::Result<()> {
        let secs = libc::c_int::try_from(timeout.as_secs().max(1)).unwrap_or(libc::c_int::MAX);
        // SAFETY: setsockopt reads the c_int it is given, of the length given.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::IPPROTO_TCP,
                TCP_RXT_CONNDROPTIME,
                (&secs as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// `kern.maxfilesperproc`, the per-process ceiling of open files.
    fn maxfilesperproc() -> Option<u64> {
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>();
        // SAFETY: the name is NUL-terminated; `value` is a writable c_int of `len` bytes.
        let rc = unsafe {
            libc::sysctlbyname(
                c"kern.maxfilesperproc".as_ptr(),
                (&mut value as *mut libc::c_int).cast(),
                &mut len,
                std::ptr::null_mut(),
                0,
            )
        };
        (rc == 0 && value > 0).then_some(value as u64)
    }

    pub(in super::super) fn raise_fd_limit_to(want: u64) -> u64 {
        unix::raise_fd_limit_to(want, &fd_caps(maxfilesperproc()))
    }

    pub(in super::super) fn socket_budget() -> usize {
        let open = unix::open_fds(Path::new("/dev/fd")).unwrap_or(0);
        budget_under(unix::fd_limit(), open)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bsd_tcp_states_map_to_handshake_states() {
        assert_eq!(handshake_of(TCPS_SYN_SENT), Handshake::Connecting);
        assert_eq!(handshake_of(TCPS_SYN_RECEIVED), Handshake::Connecting);
        assert_eq!(handshake_of(TCPS_ESTABLISHED), Handshake::Established);
        assert_eq!(handshake_of(TCPS_CLOSE_WAIT), Handshake::Established);
        // CLOSED, LISTEN, FIN_WAIT_1, CLOSING, LAST_ACK, FIN_WAIT_2, TIME_WAIT.
        for ended in [0, 1, 6, 7, 8, 9, 10] {
            assert_eq!(handshake_of(ended), Handshake::Ended, "{ended}");
        }
    }

    #[test]
    fn the_rtt_is_known_once_established_even_when_below_a_millisecond() {
        assert_eq!(
            rtt_of(TCPS_ESTABLISHED, 42),
            Some(Duration::from_millis(42))
        );
        assert_eq!(rtt_of(TCPS_ESTABLISHED, 0), Some(Duration::ZERO));
        assert_eq!(rtt_of(TCPS_SYN_SENT, 0), None);
    }

    #[test]
    fn open_files_are_capped_by_maxfilesperproc_then_open_max() {
        assert_eq!(fd_caps(Some(24_576)), [24_576, OPEN_MAX]);
        assert_eq!(fd_caps(None), [OPEN_MAX]);
    }

    #[test]
    #[cfg(unix)]
    fn a_mac_with_the_default_limits_gets_a_punch_sized_limit() {
        // launchd's default soft limit is 256 and the hard limit unlimited: the first try
        // asks for the punch's limit, macOS refuses it above kern.maxfilesperproc, and the
        // caps come next.
        let tries =
            super::super::unix::fd_limits_to_try(65_536, 256, u64::MAX, &fd_caps(Some(24_576)));
        assert_eq!(tries, [65_536, 24_576, OPEN_MAX]);
    }
}
