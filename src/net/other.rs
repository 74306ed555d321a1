//! Unix systems p2pnc knows nothing special about (the BSDs, illumos, ...): ports, connects and
//! limits as on every unix, but no TCP state, no RTT and no dead-path timeout. A connect woken
//! by an error is then watched until its deadline (see [`super::finish_connect`]), and a dead
//! path is noticed by keepalive alone.

use std::io;
use std::path::Path;
use std::time::Duration;

use socket2::Socket;

pub(super) use super::unix::{PUNCH_PORT_LISTENS, connect_started, server_port, share_port};
use super::{Handshake, budget_under, unix};

pub(super) fn handshake(_socket: &Socket) -> Option<Handshake> {
    None
}

pub(super) fn rtt(_socket: &Socket) -> Option<Duration> {
    None
}

pub(super) fn set_dead_path_timeout(_socket: &Socket, _timeout: Duration) -> io::Result<()> {
    Ok(())
}

pub(super) fn raise_fd_limit_to(want: u64) -> u64 {
    unix::raise_fd_limit_to(want, &[])
}

pub(super) fn socket_budget() -> usize {
    let open = unix::open_fds(Path::new("/dev/fd")).unwrap_or(0);
    budget_under(unix::fd_limit(), open)
}
