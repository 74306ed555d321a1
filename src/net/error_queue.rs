//! ICMP errors of UDP sockets, read with the address of the router or host that sent each:
//! the hook of a NAT-depth TTL sweep, which sends datagrams with growing TTLs from
//! [`ErrorQueue::socket`] and reads here who answered (the leading inside addresses count the
//! NATs in front of this host; docs/architecture.md).
//!
//! Only Linux and Android have such a queue (`IP_RECVERR`, `IPV6_RECVERR`). macOS, the BSDs and
//! Windows report an ICMP error to a UDP socket at most as an error on its next call, without
//! the offender's address: there [`ErrorQueue::new`] returns `Ok(None)` and a sweep is skipped.

use std::net::IpAddr;

#[cfg(any(target_os = "linux", target_os = "android"))]
pub use self::linux::ErrorQueue;
#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub use self::unsupported::ErrorQueue;

/// What an ICMP error read from a UDP socket's error queue said (see [`ErrorQueue`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IcmpKind {
    /// Time Exceeded: the datagram's TTL ran out at the offender.
    TimeExceeded,
    /// Destination Unreachable (port, host, network, ...).
    Unreachable,
    /// Any other ICMP or ICMPv6 message, by type and code.
    Other { icmp_type: u8, code: u8 },
}

/// One ICMP error that came back for a datagram a UDP socket sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IcmpError {
    /// The router or host that sent the error.
    pub offender: IpAddr,
    /// What it said.
    pub kind: IcmpKind,
}

#[cfg(any(target_os = "linux", target_os = "android"))]
mod linux {
    use std::io;
    use std::mem::MaybeUninit;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    use std::os::fd::AsRawFd;

    use socket2::{MaybeUninitSlice, MsgHdrMut, SockRef};
    use tokio::io::Interest;
    use tokio::net::UdpSocket;

    use super::{IcmpError, IcmpKind};

    /// Room for the control messages of one queued error (the extended error and the offender's
    /// address, with headers and padding).
    const ERROR_CONTROL_LEN: usize = 256;
    /// ICMP types (RFC 792) and ICMPv6 types (RFC 4443) that [`IcmpKind`] names.
    const ICMP_UNREACHABLE: u8 = 3;
    const ICMP_TIME_EXCEEDED: u8 = 11;
    const ICMP6_UNREACHABLE: u8 = 1;
    const ICMP6_TIME_EXCEEDED: u8 = 3;

    /// A UDP socket whose ICMP errors can be read with the address of the router or host that
    /// sent each: the hook of a TTL sweep, which sends datagrams with growing TTLs from
    /// [`ErrorQueue::socket`] and reads here who answered. Linux and Android only
    /// (`IP_RECVERR`, `IPV6_RECVERR`); elsewhere [`ErrorQueue::new`] returns `None`, as macOS,
    /// the BSDs and Windows report ICMP errors to a UDP socket without the offender's address.
    pub struct ErrorQueue {
        socket: UdpSocket,
    }

    impl ErrorQueue {
        /// Turns on the error queue of `socket` (either family); `Ok(None)` where the platform
        /// has none.
        pub fn new(socket: UdpSocket) -> io::Result<Option<ErrorQueue>> {
            let v6 = socket.local_addr()?.is_ipv6();
            let (level, name) = if v6 {
                (libc::IPPROTO_IPV6, libc::IPV6_RECVERR)
            } else {
                (libc::IPPROTO_IP, libc::IP_RECVERR)
            };
            let on: libc::c_int = 1;
            // SAFETY: setsockopt reads the c_int it is given, of the length given.
            let rc = unsafe {
                libc::setsockopt(
                    socket.as_raw_fd(),
                    level,
                    name,
                    (&on as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(Some(ErrorQueue { socket }))
        }

        /// The socket, to send from (and to set its TTL on).
        pub fn socket(&self) -> &UdpSocket {
            &self.socket
        }

        /// Waits for the next ICMP error for a datagram the socket sent. Queued errors that are
        /// not ICMP (a local delivery failure, say) are skipped.
        pub async fn recv(&self) -> io::Result<IcmpError> {
            loop {
                let got = self
                    .socket
                    .async_io(Interest::ERROR, || read_queued_error(&self.socket))
                    .await?;
                if let Some(e) = got {
                    return Ok(e);
                }
            }
        }
    }

    /// Reads one message of the error queue (`WouldBlock` when it is empty).
    fn read_queued_error(socket: &UdpSocket) -> io::Result<Option<IcmpError>> {
        let mut data = [MaybeUninit::<u8>::uninit(); 64];
        let mut bufs = [MaybeUninitSlice::new(&mut data)];
        let mut control = [MaybeUninit::<u8>::uninit(); ERROR_CONTROL_LEN];
        let mut msg = MsgHdrMut::new()
            .with_buffers(&mut bufs)
            .with_control(&mut control);
        SockRef::from(socket).recvmsg(&mut msg, libc::MSG_ERRQUEUE)?;
        let len = msg.control_len();
        // SAFETY: the kernel initialised the first `len` bytes of the control buffer.
        let control: &[u8] = unsafe { std::slice::from_raw_parts(control.as_ptr().cast(), len) };
        Ok(parse_error_control(control))
    }

    /// The ICMP error in the control messages of an error-queue read, if there is one.
    fn parse_error_control(control: &[u8]) -> Option<IcmpError> {
        let header = std::mem::size_of::<libc::cmsghdr>();
        let align = std::mem::size_of::<usize>();
        let mut at = 0;
        while at + header <= control.len() {
            // SAFETY: `at + header` lies inside `control`; read_unaligned copes with any alignment.
            let c: libc::cmsghdr =
                unsafe { std::ptr::read_unaligned(control[at..].as_ptr().cast()) };
            let len = c.cmsg_len as usize;
            if len < header || at + len > control.len() {
                return None;
            }
            let is_error = (c.cmsg_level == libc::SOL_IP && c.cmsg_type == libc::IP_RECVERR)
                || (c.cmsg_level == libc::SOL_IPV6 && c.cmsg_type == libc::IPV6_RECVERR);
            if is_error && let Some(e) = parse_extended_error(&control[at + header..at + len]) {
                return Some(e);
            }
            at += len.div_ceil(align) * align;
        }
        None
    }

    /// `struct sock_extended_err` followed by the offender's `sockaddr`.
    fn parse_extended_error(p: &[u8]) -> Option<IcmpError> {
        const EE_LEN: usize = 16;
        const SO_EE_ORIGIN_ICMP: u8 = 2;
        const SO_EE_ORIGIN_ICMP6: u8 = 3;
        let (origin, icmp_type, code) = (*p.get(4)?, *p.get(5)?, *p.get(6)?);
        let kind = match (origin, icmp_type) {
            (SO_EE_ORIGIN_ICMP, ICMP_TIME_EXCEEDED) | (SO_EE_ORIGIN_ICMP6, ICMP6_TIME_EXCEEDED) => {
                IcmpKind::TimeExceeded
            }
            (SO_EE_ORIGIN_ICMP, ICMP_UNREACHABLE) | (SO_EE_ORIGIN_ICMP6, ICMP6_UNREACHABLE) => {
                IcmpKind::Unreachable
            }
            (SO_EE_ORIGIN_ICMP | SO_EE_ORIGIN_ICMP6, _) => IcmpKind::Other { icmp_type, code },
            _ => return None,
        };
        let addr = p.get(EE_LEN..)?;
        let family = i32::from(u16::from_ne_bytes([*addr.first()?, *addr.get(1)?]));
        let offender = match family {
            libc::AF_INET => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(addr.get(4..8)?).ok()?)),
            libc::AF_INET6 => {
                IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(addr.get(8..24)?).ok()?))
            }
            _ => return None,
        };
        Some(IcmpError { offender, kind })
    }

    #[cfg(test)]
    mod tests {
        use std::time::Duration;

        use super::*;

        /// One control message as the kernel writes it: a `cmsghdr`, the extended error and the
        /// offender's address.
        fn control(level: i32, ty: i32, origin: u8, icmp: (u8, u8), offender: &[u8]) -> Vec<u8> {
            let header = std::mem::size_of::<libc::cmsghdr>();
            let mut ee = vec![0u8; 16];
            ee[0..4].copy_from_slice(&113u32.to_ne_bytes()); // EHOSTUNREACH
            (ee[4], ee[5], ee[6]) = (origin, icmp.0, icmp.1);
            let payload: Vec<u8> = ee.into_iter().chain(offender.iter().copied()).collect();
            // SAFETY: cmsghdr is plain data; all-zero is a valid value.
            let mut c: libc::cmsghdr = unsafe { std::mem::zeroed() };
            c.cmsg_len = (header + payload.len()) as _;
            c.cmsg_level = level;
            c.cmsg_type = ty;
            // SAFETY: reads the bytes of a plain-data struct.
            let head: &[u8] =
                unsafe { std::slice::from_raw_parts((&c as *const libc::cmsghdr).cast(), header) };
            let mut out = head.to_vec();
            out.extend(payload);
            out.resize(out.len().div_ceil(8) * 8, 0);
            out
        }

        fn sockaddr_in(ip: [u8; 4]) -> Vec<u8> {
            let mut a = vec![0u8; 16];
            a[0..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
            a[4..8].copy_from_slice(&ip);
            a
        }

        #[test]
        fn error_queue_messages_name_the_offender_and_the_kind() {
            let te = control(
                libc::SOL_IP,
                libc::IP_RECVERR,
                2,
                (11, 0),
                &sockaddr_in([100, 64, 2, 1]),
            );
            assert_eq!(
                parse_error_control(&te),
                Some(IcmpError {
                    offender: "100.64.2.1".parse().unwrap(),
                    kind: IcmpKind::TimeExceeded
                })
            );
            let unreach = control(
                libc::SOL_IP,
                libc::IP_RECVERR,
                2,
                (3, 3),
                &sockaddr_in([203, 0, 113, 10]),
            );
            assert_eq!(
                parse_error_control(&unreach).map(|e| e.kind),
                Some(IcmpKind::Unreachable)
            );
            let mut v6 = vec![0u8; 28];
            v6[0..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
            v6[8..24].copy_from_slice(&"2001:db8:1:1::1".parse::<Ipv6Addr>().unwrap().octets());
            let te6 = control(libc::SOL_IPV6, libc::IPV6_RECVERR, 3, (3, 0), &v6);
            assert_eq!(
                parse_error_control(&te6),
                Some(IcmpError {
                    offender: "2001:db8:1:1::1".parse().unwrap(),
                    kind: IcmpKind::TimeExceeded
                })
            );
            let other = control(
                libc::SOL_IP,
                libc::IP_RECVERR,
                2,
                (12, 1),
                &sockaddr_in([10, 0, 0, 1]),
            );
            assert_eq!(
                parse_error_control(&other).map(|e| e.kind),
                Some(IcmpKind::Other {
                    icmp_type: 12,
                    code: 1
                })
            );
            // A local error (origin 1), another control message, and garbage: nothing.
            let local = control(
                libc::SOL_IP,
                libc::IP_RECVERR,
                1,
                (0, 0),
                &sockaddr_in([0; 4]),
            );
            assert_eq!(parse_error_control(&local), None);
            let ttl = control(
                libc::SOL_IP,
                libc::IP_TTL,
                2,
                (11, 0),
                &sockaddr_in([1, 2, 3, 4]),
            );
            assert_eq!(parse_error_control(&ttl), None);
            assert_eq!(parse_error_control(&te[..20]), None);
            assert_eq!(parse_error_control(&[0xff; 40]), None);
            assert_eq!(parse_error_control(&[]), None);
        }

        #[tokio::test]
        async fn a_refused_datagram_comes_back_through_the_error_queue() {
            let closed = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            let target = closed.local_addr().unwrap();
            drop(closed);
            let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let queue = ErrorQueue::new(socket)
                .unwrap()
                .expect("Linux has an error queue");
            queue.socket().send_to(b"probe", target).await.unwrap();
            let e = tokio::time::timeout(Duration::from_secs(2), queue.recv())
                .await
                .expect("the port unreachable arrives")
                .unwrap();
            assert_eq!(e.kind, IcmpKind::Unreachable);
            assert_eq!(e.offender, IpAddr::V4(Ipv4Addr::LOCALHOST));
        }
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
mod unsupported {
    use std::io;

    use tokio::net::UdpSocket;

    use super::IcmpError;

    /// A UDP socket whose ICMP errors can be read with the address of the router or host that
    /// sent each (the hook of a TTL sweep). There is none on this platform: [`ErrorQueue::new`]
    /// always returns `Ok(None)`.
    pub struct ErrorQueue {
        socket: UdpSocket,
        never: std::convert::Infallible,
    }

    impl ErrorQueue {
        /// `Ok(None)`: this platform has no error queue.
        pub fn new(socket: UdpSocket) -> io::Result<Option<ErrorQueue>> {
            drop(socket);
            Ok(None)
        }

        /// The socket, to send from (and to set its TTL on).
        pub fn socket(&self) -> &UdpSocket {
            &self.socket
        }

        /// Waits for the next ICMP error for a datagram the socket sent.
        pub async fn recv(&self) -> io::Result<IcmpError> {
            match self.never {}
        }
    }
}
