//! What every unix shares: ports shared through `SO_REUSEADDR` and `SO_REUSEPORT`,
//! `EINPROGRESS`, and `RLIMIT_NOFILE`.

use std::io;
use std::path::Path;

use socket2::Socket;

/// On unix the punch port listens as well as connects (see [`super::PunchPort`]).
pub(super) const PUNCH_PORT_LISTENS: bool = true;

/// Lets the listener, the control connection and every punch attempt bind one port: every
/// socket on it sets both options before `bind`.
pub(super) fn share_port(socket: &Socket) -> io::Result<()> {
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)
}

/// A restarted server binds its port at once, whatever connections of the old one linger in
/// TIME_WAIT.
pub(super) fn server_port(socket: &Socket) -> io::Result<()> {
    socket.set_reuse_address(true)
}

/// Whether a non-blocking `connect` returned "under way".
pub(super) fn connect_started(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::EINPROGRESS)
}

/// The soft limits worth asking for, best first: `want` within the hard limit, then the same
/// within each of `caps` (ceilings the operating system may enforce below the hard limit),
/// leaving out any that would not raise the current soft limit.
pub(super) fn fd_limits_to_try(want: u64, soft: u64, hard: u64, caps: &[u64]) -> Vec<u64> {
    let want = want.min(hard);
    let mut tries: Vec<u64> = std::iter::once(want)
        .chain(caps.iter().map(|&cap| want.min(cap)))
        .filter(|&t| t > soft)
        .collect();
    tries.dedup();
    tries
}

/// Raises the soft `RLIMIT_NOFILE` toward `want`, trying the values of [`fd_limits_to_try`]
/// until one is accepted; returns the soft limit in force.
pub(super) fn raise_fd_limit_to(want: u64, caps: &[u64]) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills the valid, initialised rlimit it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 0;
    }
    #[allow(clippy::unnecessary_cast, reason = "rlim_t is not u64 on every unix")]
    let (soft, hard) = (lim.rlim_cur as u64, lim.rlim_max as u64);
    for t in fd_limits_to_try(want, soft, hard, caps) {
        // `t` is at most the hard limit, itself an `rlim_t`: the cast loses nothing.
        let new = libc::rlimit {
            rlim_cur: t as libc::rlim_t,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit reads the valid rlimit it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) } == 0 {
            return t;
        }
    }
    soft
}

/// The current soft `RLIMIT_NOFILE`.
pub(super) fn fd_limit() -> u64 {
    raise_fd_limit_to(0, &[])
}

/// How many descriptors this process has open, counted in `dir` (`/proc/self/fd` on Linux,
/// `/dev/fd` elsewhere); the directory's own descriptor is not counted.
pub(super) fn open_fds(dir: &Path) -> Option<u64> {
    let n = std::fs::read_dir(dir).ok()?.count() as u64;
    Some(n.saturating_sub(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fd_limits_stay_under_the_hard_limit_and_the_caps() {
        // Linux: the hard limit is the only ceiling.
        assert_eq!(fd_limits_to_try(65_536, 1024, 20_000, &[]), [20_000]);
        assert_eq!(fd_limits_to_try(65_536, 1024, u64::MAX, &[]), [65_536]);
        // Already high enough: nothing to ask.
        assert!(fd_limits_to_try(4096, 8192, 20_000, &[]).is_empty());
        assert!(fd_limits_to_try(0, 256, 20_000, &[]).is_empty());
        // macOS: an unlimited hard limit, capped by kern.maxfilesperproc, then OPEN_MAX.
        assert_eq!(
            fd_limits_to_try(65_536, 256, u64::MAX, &[24_576, 10_240]),
            [65_536, 24_576, 10_240]
        );
        // A cap above the hard limit changes nothing; equal tries are made once.
        assert_eq!(
            fd_limits_to_try(65_536, 256, 10_240, &[24_576, 10_240]),
            [10_240]
        );
        // Never lower than the soft limit in force.
        assert!(fd_limits_to_try(65_536, 30_000, u64::MAX, &[24_576, 10_240]) == [65_536]);
    }

    #[test]
    fn the_limit_is_raised_and_never_lowered() {
        let before = fd_limit();
        assert!(before > 0);
        assert_eq!(raise_fd_limit_to(1, &[]), before, "never lowered");
        let after = raise_fd_limit_to(before + 1, &[]);
        assert!(after >= before);
    }

    #[test]
    fn open_descriptors_are_counted() {
        let dir = if cfg!(target_os = "linux") {
            "/proc/self/fd"
        } else {
            "/dev/fd"
        };
        let before = open_fds(Path::new(dir)).unwrap();
        let extra: Vec<std::fs::File> = (0..200)
            .map(|_| std::fs::File::open(dir).unwrap())
            .collect();
        let after = open_fds(Path::new(dir)).unwrap();
        // Other tests open and close descriptors meanwhile: allow for some.
        let n = extra.len() as u64;
        assert!(after + 64 >= before + n, "{before} then {after}");
    }
}
