//! The delay box: one-way latency without netem. Packets a namespace forwards from chosen
//! interfaces go to NFQUEUE queues (an `iptables`/`ip6tables` rule: the nft `queue` statement
//! does not work on this kernel); a thread holds each packet for its queue's delay before
//! accepting it.

use std::collections::{HashSet, VecDeque};
use std::fs::{self, File};
use std::io;
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::net::poll_readable;
use crate::netns::{enter_netns, in_netns, netns_path};

/// Packets one queue may hold in the kernel before it drops (far above a lab's bursts).
const QUEUE_MAX_LEN: u32 = 65536;
/// Receive buffer of the netlink socket: bulk transfers at tens of MB/s queue many
/// messages between two wake-ups.
const NETLINK_RCVBUF: libc::c_int = 64 << 20;
/// Longest sleep of the delay thread when nothing is due (bounds the reaction to `stop`).
const IDLE_WAIT: Duration = Duration::from_millis(20);
/// Messages taken from the kernel per loop before releasing due packets (so a burst does
/// not starve packets that are due).
const DRAIN_BATCH: usize = 4096;
/// Time allowed for the delay thread to bind its queues.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Counters of the delay box.
#[derive(Clone, Copy, Debug, Default)]
pub struct DelayStats {
    /// Packets (or GSO super-packets) that went through the user-space delay box.
    pub packets: u64,
    /// Largest number of packets held at once.
    pub max_held: u64,
    /// recv/verdict errors.
    pub errors: u64,
    /// 1 when the box waits with ppoll on its netlink socket, 0 when it falls back to 1 ms
    /// sleeps (socket not found).
    pub polled_fd: u64,
    /// Kernel: packets dropped because a queue was full.
    pub kernel_dropped: u64,
    /// Kernel: packets dropped because they could not be delivered to the socket.
    pub kernel_user_dropped: u64,
}

impl DelayStats {
    pub(crate) fn add(&mut self, o: DelayStats) {
        self.packets += o.packets;
        self.max_held = self.max_held.max(o.max_held);
        self.errors += o.errors;
        self.polled_fd = self.polled_fd.max(o.polled_fd);
        self.kernel_dropped += o.kernel_dropped;
        self.kernel_user_dropped += o.kernel_user_dropped;
    }
}

#[derive(Default)]
struct DelayCounters {
    packets: AtomicU64,
    max_held: AtomicU64,
    errors: AtomicU64,
    polled_fd: AtomicU64,
}

/// A delay thread bound to queues `0..n` of one namespace.
pub(crate) struct DelayBox {
    ns: String,
    stop: Arc<AtomicBool>,
    delays_us: Arc<Vec<AtomicU32>>,
    counters: Arc<DelayCounters>,
    handle: Option<JoinHandle<()>>,
}

impl DelayBox {
    /// Starts the delay thread in namespace `ns`, bound to queues `0..delays_ms.len()` with
    /// the given delays (ms); returns once the queues are bound.
    pub(crate) fn start(ns: &str, delays_ms: &[u32]) -> DelayBox {
        let stop = Arc::new(AtomicBool::new(false));
        let delays_us: Arc<Vec<AtomicU32>> =
            Arc::new(delays_ms.iter().map(|d| AtomicU32::new(d * 1000)).collect());
        let counters = Arc::new(DelayCounters::default());
        let (tx, rx) = mpsc::channel();
        let (st, dl, ct, ns_owned) = (
            stop.clone(),
            delays_us.clone(),
            counters.clone(),
            ns.to_string(),
        );
        let handle = thread::Builder::new()
            .name(format!("delaybox-{ns}"))
            .spawn(move || delay_thread(&ns_owned, &st, &dl, &ct, tx))
            .expect("spawn delay box thread");
        let mut d = DelayBox {
            ns: ns.to_string(),
            stop,
            delays_us,
            counters,
            handle: Some(handle),
        };
        match rx.recv_timeout(START_TIMEOUT) {
            Ok(Ok(())) => d,
            Ok(Err(e)) => {
                d.stop_in_place();
                panic!("delay box in {ns} failed to start: {e}")
            }
            Err(e) => {
                d.stop_in_place();
                panic!("delay box in {ns} did not start: {e}")
            }
        }
    }

    /// Sets the delay of queue `q`.
    pub(crate) fn set_delay(&self, q: usize, ms: u32) {
        self.delays_us[q].store(ms * 1000, Ordering::SeqCst);
    }

    /// Counters of the box and of its namespace's kernel queues.
    pub(crate) fn stats(&self) -> DelayStats {
        let text = in_netns(&self.ns, || {
            fs::read_to_string("/proc/thread-self/net/netfilter/nfnetlink_queue")
        })
        .unwrap_or_default();
        let mut kernel_dropped = 0;
        let mut kernel_user_dropped = 0;
        for line in text.lines() {
            let f: Vec<u64> = line
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            if f.len() >= 7 {
                kernel_dropped += f[5];
                kernel_user_dropped += f[6];
            }
        }
        DelayStats {
            packets: self.counters.packets.load(Ordering::Relaxed),
            max_held: self.counters.max_held.load(Ordering::Relaxed),
            errors: self.counters.errors.load(Ordering::Relaxed),
            polled_fd: self.counters.polled_fd.load(Ordering::Relaxed),
            kernel_dropped,
            kernel_user_dropped,
        }
    }

    fn stop_in_place(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for DelayBox {
    fn drop(&mut self) {
        self.stop_in_place();
    }
}

/// Netlink-netfilter socket fds of this process whose namespace has inode `ns_ino`.
fn nf_netlink_fds(ns_ino: u64) -> HashSet<RawFd> {
    let mut set = HashSet::new();
    let Ok(rd) = fs::read_dir("/proc/self/fd") else {
        return set;
    };
    for e in rd.flatten() {
        let Some(fd) = e.file_name().to_str().and_then(|s| s.parse::<RawFd>().ok()) else {
            continue;
        };
        if is_nf_netlink(fd, ns_ino) {
            set.insert(fd);
        }
    }
    set
}

fn is_nf_netlink(fd: RawFd, ns_ino: u64) -> bool {
    fn sockopt(fd: RawFd, opt: libc::c_int) -> Option<libc::c_int> {
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of_val(&v) as libc::socklen_t;
        // SAFETY: getsockopt into a c_int; fails harmlessly on non-sockets.
        let r = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                &mut v as *mut _ as *mut libc::c_void,
                &mut len,
            )
        };
        (r == 0).then_some(v)
    }
    if sockopt(fd, libc::SO_DOMAIN) != Some(libc::AF_NETLINK)
        || sockopt(fd, libc::SO_PROTOCOL) != Some(libc::NETLINK_NETFILTER)
    {
        return false;
    }
    // SAFETY: SIOCGSKNS returns a new fd for the socket's network namespace.
    let nsfd = unsafe { libc::ioctl(fd, libc::SIOCGSKNS as _) };
    if nsfd < 0 {
        return false;
    }
    // SAFETY: we own nsfd; File closes it.
    let f = unsafe { File::from_raw_fd(nsfd) };
    f.metadata().map(|m| m.ino() == ns_ino).unwrap_or(false)
}

fn delay_thread(
    ns: &str,
    stop: &AtomicBool,
    delays_us: &[AtomicU32],
    counters: &DelayCounters,
    ready: mpsc::Sender<io::Result<()>>,
) {
    use nfq::{Queue, Verdict};

    let n_queues = delays_us.len();
    let setup = || -> io::Result<(Queue, Option<RawFd>)> {
        enter_netns(ns)?;
        let ns_ino = fs::metadata(netns_path(ns))?.ino();
        let before = nf_netlink_fds(ns_ino);
        let mut q = Queue::open()?;
        let after = nf_netlink_fds(ns_ino);
        let new: Vec<RawFd> = after.difference(&before).copied().collect();
        let fd = (new.len() == 1).then(|| new[0]);
        for n in 0..n_queues as u16 {
            q.bind(n)?;
            // Metadata only: the box never looks at payloads.
            q.set_copy_range(n, 0)?;
            // Let GSO super-packets through unsegmented (fewer messages per byte).
            q.set_recv_gso(n, true)?;
            q.set_queue_max_len(n, QUEUE_MAX_LEN)?;
            q.set_fail_open(n, false)?;
        }
        q.set_nonblocking(true);
        if let Some(fd) = fd {
            // SAFETY: setsockopt on our own netlink socket (root: SO_RCVBUFFORCE allowed).
            unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_RCVBUFFORCE,
                    &NETLINK_RCVBUF as *const _ as *const libc::c_void,
                    std::mem::size_of_val(&NETLINK_RCVBUF) as libc::socklen_t,
                );
            }
        }
        Ok((q, fd))
    };
    let (mut q, fd) = match setup() {
        Ok(v) => v,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    counters
        .polled_fd
        .store(u64::from(fd.is_some()), Ordering::Relaxed);
    let _ = ready.send(Ok(()));

    let mut fifos: Vec<VecDeque<(Instant, nfq::Message)>> =
        (0..n_queues).map(|_| VecDeque::new()).collect();
    let mut last_due = vec![Instant::now(); n_queues];
    let mut held: u64 = 0;
    loop {
        let stopping = stop.load(Ordering::SeqCst);
        // Drain what the kernel has queued (bounded, so due packets are not starved).
        for _ in 0..DRAIN_BATCH {
            match q.recv() {
                Ok(msg) => {
                    let qn = msg.get_queue_num() as usize;
                    let now = Instant::now();
                    if qn >= n_queues {
                        let mut msg = msg;
                        msg.set_verdict(Verdict::Accept);
                        let _ = q.verdict(msg);
                        continue;
                    }
                    let d = Duration::from_micros(u64::from(delays_us[qn].load(Ordering::Relaxed)));
                    // FIFO per queue: never release before an earlier packet of the same link.
                    let due = (now + d).max(last_due[qn]);
                    last_due[qn] = due;
                    fifos[qn].push_back((due, msg));
                    held += 1;
                    counters.packets.fetch_add(1, Ordering::Relaxed);
                    counters.max_held.fetch_max(held, Ordering::Relaxed);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    counters.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        // Release what is due (everything when stopping).
        let now = Instant::now();
        for fifo in fifos.iter_mut() {
            while let Some((due, _)) = fifo.front() {
                if *due > now && !stopping {
                    break;
                }
                let Some((_, mut msg)) = fifo.pop_front() else {
                    break;
                };
                msg.set_verdict(Verdict::Accept);
                held -= 1;
                if q.verdict(msg).is_err() {
                    counters.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        if stopping {
            break;
        }
        let next_due = fifos.iter().filter_map(|f| f.front().map(|x| x.0)).min();
        let wait = next_due
            .map(|d| d.saturating_duration_since(Instant::now()))
            .unwrap_or(IDLE_WAIT)
            .min(IDLE_WAIT);
        if wait.is_zero() {
            continue;
        }
        match fd {
            Some(fd) => {
                poll_readable(fd, wait);
            }
            None => thread::sleep(wait.min(Duration::from_millis(1))),
        }
    }
    for n in 0..n_queues as u16 {
        let _ = q.unbind(n);
    }
}
