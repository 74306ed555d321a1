//! What an agent's punch sessions may hold together: how many run at once, how many of them
//! are birthday punches, and how many sockets they keep open. A session that would exceed one
//! is refused `busy` before it sends a single SYN, so no number of requests (nor a client that
//! fakes a symmetric NAT to make the agent spray 1536 connection attempts) can take the agent
//! to its descriptor limit and starve the sessions it already serves.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use crate::defaults;
use crate::peer::warm::PathState;
use crate::protocol::Strategy;

/// Streams a session may take from the punch port on top of its own attempts: the engine
/// runs the handshake of at most this many at once (see `punch::MAX_INBOUND_HANDSHAKES`).
const INBOUND_ALLOWANCE: usize = crate::peer::punch::MAX_INBOUND_HANDSHAKES;

/// The limits of one agent's sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Limits {
    /// Sessions at once.
    pub sessions: usize,
    /// Birthday punches at once.
    pub birthdays: usize,
    /// Sockets all sessions may hold together.
    pub sockets: usize,
}

impl Limits {
    /// The defaults, with the socket budget at most half of `fd_limit` (the process's open-file
    /// limit; 0 when unknown), the other half being the service's.
    pub fn for_fd_limit(fd_limit: u64) -> Self {
        let half = usize::try_from(fd_limit / 2).unwrap_or(usize::MAX);
        Limits {
            sessions: defaults::AGENT_MAX_SESSIONS,
            birthdays: defaults::AGENT_MAX_BIRTHDAYS,
            sockets: match half {
                0 => defaults::AGENT_PUNCH_SOCKETS,
                half => defaults::AGENT_PUNCH_SOCKETS.min(half),
            },
        }
    }
}

#[derive(Default)]
struct Held {
    sessions: usize,
    birthdays: usize,
    sockets: usize,
}

/// The budget of one agent's sessions.
pub(super) struct Budget {
    limits: Limits,
    held: Arc<Mutex<Held>>,
}

/// A session's share of the budget; returned when dropped.
pub(super) struct Share {
    held: Arc<Mutex<Held>>,
    birthday: bool,
    sockets: usize,
}

impl Drop for Share {
    fn drop(&mut self) {
        let mut held = self.held.lock().expect("budget lock");
        held.sessions -= 1;
        held.birthdays -= usize::from(self.birthday);
        held.sockets -= self.sockets;
    }
}

/// Which limit a session would exceed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum OverBudget {
    /// Too many sessions at once.
    Sessions(usize),
    /// Too many birthday punches at once.
    Birthdays(usize),
    /// Its sockets would not fit.
    Sockets {
        /// What it needs.
        need: usize,
        /// What all sessions may hold.
        limit: usize,
    },
}

impl fmt::Display for OverBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OverBudget::Sessions(limit) => {
                write!(f, "too many punch sessions at once (limit {limit})")
            }
            OverBudget::Birthdays(limit) => {
                write!(f, "too many birthday punches at once (limit {limit})")
            }
            OverBudget::Sockets { need, limit } => write!(
                f,
                "its {need} sockets would not fit the punch sockets' budget (limit {limit})"
            ),
        }
    }
}

/// Sockets a session with `strategy` and `targets` candidates holds at most at once.
pub(super) fn sockets_needed(strategy: Strategy, targets: usize) -> usize {
    let birthday = match strategy {
        Strategy::BirthdayEasy => defaults::EASY_PROBES,
        Strategy::BirthdayHard => defaults::HARD_SOCKETS,
        _ => 0,
    };
    targets + birthday + INBOUND_ALLOWANCE
}

impl Budget {
    /// A budget with these limits.
    pub fn new(limits: Limits) -> Self {
        Budget {
            limits,
            held: Arc::new(Mutex::new(Held::default())),
        }
    }

    /// Takes a share for a session with `strategy` and `targets` candidates, or says which
    /// limit it would exceed.
    pub fn reserve(&self, strategy: Strategy, targets: usize) -> Result<Share, OverBudget> {
        let birthday = matches!(strategy, Strategy::BirthdayEasy | Strategy::BirthdayHard);
        let sockets = sockets_needed(strategy, targets);
        let mut held = self.held.lock().expect("budget lock");
        if held.sessions >= self.limits.sessions {
            return Err(OverBudget::Sessions(self.limits.sessions));
        }
        if birthday && held.birthdays >= self.limits.birthdays {
            return Err(OverBudget::Birthdays(self.limits.birthdays));
        }
        if held.sockets + sockets > self.limits.sockets {
            return Err(OverBudget::Sockets {
                need: sockets,
                limit: self.limits.sockets,
            });
        }
        held.sessions += 1;
        held.birthdays += usize::from(birthday);
        held.sockets += sockets;
        Ok(Share {
            held: self.held.clone(),
            birthday,
            sockets,
        })
    }
}

/// The warm paths an agent keeps open: at most [`defaults::AGENT_MAX_WARM_PATHS`] at once,
/// at most [`defaults::AGENT_MAX_WARM_PATHS_PER_ADDRESS`] of them from one client address
/// (see `agent::warm`), and how many it has carried, for its logs.
pub(super) struct WarmBudget {
    limit: usize,
    per_address: usize,
    held: Arc<Mutex<WarmHeld>>,
}

/// A path serving streams: its client, its state, and when it opened (wall clock, monotonic).
type PathEntry = (
    SocketAddr,
    Arc<PathState>,
    std::time::SystemTime,
    tokio::time::Instant,
);

/// The budget's state: the counts, the kept paths per client address, and the paths that
/// serve streams now.
#[derive(Default)]
struct WarmHeld {
    counts: WarmCounts,
    by_address: HashMap<IpAddr, usize>,
    paths: HashMap<u64, PathEntry>,
    next_id: u64,
}

impl WarmHeld {
    fn counts(&self) -> WarmCounts {
        WarmCounts {
            open_streams: self.paths.values().map(|p| p.1.streams()).sum(),
            ..self.counts
        }
    }
}

/// Warm paths open now and served so far, and the streams they carried.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WarmCounts {
    /// Warm paths open now (kept ones only).
    pub open: usize,
    /// Warm paths served so far, kept or not.
    pub paths: u64,
    /// Streams all warm paths carried so far.
    pub streams: u64,
    /// Service streams open now on all warm paths.
    pub open_streams: usize,
    /// Paths not kept because the agent held its most warm paths, or its most from the
    /// client's address.
    pub declined: u64,
}

/// Why a warm path was not kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum WarmDeclined {
    /// The agent keeps its most warm paths in all.
    Total(usize),
    /// The agent keeps its most warm paths from this client address.
    Address(usize),
}

impl fmt::Display for WarmDeclined {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WarmDeclined::Total(n) => write!(f, "at the limit of warm paths ({n})"),
            WarmDeclined::Address(n) => {
                write!(f, "at the limit of warm paths from one address ({n})")
            }
        }
    }
}

/// A warm path's place in the budget; given back when dropped.
pub(super) struct WarmShare {
    held: Arc<Mutex<WarmHeld>>,
    client: IpAddr,
}

impl Drop for WarmShare {
    fn drop(&mut self) {
        let mut held = self.held.lock().expect("warm budget lock");
        held.counts.open -= 1;
        if let Some(n) = held.by_address.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                held.by_address.remove(&self.client);
            }
        }
    }
}

impl WarmBudget {
    /// At most `limit` kept warm paths at once, `per_address` of them from one address.
    pub fn new(limit: usize, per_address: usize) -> Self {
        WarmBudget {
            limit,
            per_address,
            held: Arc::new(Mutex::new(WarmHeld::default())),
        }
    }

    /// A place for one more kept path from `client`, unless all are taken, or all that one
    /// address may hold.
    pub fn reserve(&self, client: IpAddr) -> Result<WarmShare, WarmDeclined> {
        let mut held = self.held.lock().expect("warm budget lock");
        if held.counts.open >= self.limit {
            return Err(WarmDeclined::Total(self.limit));
        }
        let from = held.by_address.get(&client).copied().unwrap_or(0);
        if from >= self.per_address {
            return Err(WarmDeclined::Address(self.per_address));
        }
        held.counts.open += 1;
        *held.by_address.entry(client).or_insert(0) += 1;
        Ok(WarmShare {
            held: self.held.clone(),
            client,
        })
    }

    /// The most kept paths at once.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Counts a path that started serving.
    pub fn path_served(&self) {
        self.held.lock().expect("warm budget lock").counts.paths += 1;
    }

    /// Counts a path the agent did not keep (a client asked, and a limit was reached).
    pub fn path_declined(&self) {
        self.held.lock().expect("warm budget lock").counts.declined += 1;
    }

    /// Counts a stream a path carried.
    pub fn stream_served(&self) {
        self.held.lock().expect("warm budget lock").counts.streams += 1;
    }

    /// Lists a path that serves streams from `client` until the guard is dropped: its open
    /// streams count in [`WarmCounts::open_streams`] and show in [`WarmPaths::paths`].
    pub fn track(&self, client: SocketAddr, path: Arc<PathState>) -> Tracked {
        let mut held = self.held.lock().expect("warm budget lock");
        held.next_id += 1;
        let id = held.next_id;
        held.paths.insert(
            id,
            (
                client,
                path,
                std::time::SystemTime::now(),
                tokio::time::Instant::now(),
            ),
        );
        Tracked {
            held: self.held.clone(),
            id,
        }
    }

    /// The counts now.
    pub fn counts(&self) -> WarmCounts {
        self.held.lock().expect("warm budget lock").counts()
    }

    /// A handle that reads the counts.
    pub fn watch(&self) -> WarmPaths {
        WarmPaths(self.held.clone())
    }
}

/// A path's place in the list of paths that serve streams; removed when dropped.
pub(super) struct Tracked {
    held: Arc<Mutex<WarmHeld>>,
    id: u64,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.held
            .lock()
            .expect("warm budget lock")
            .paths
            .remove(&self.id);
    }
}

/// One warm path serving streams now (see [`WarmPaths::paths`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WarmPathInfo {
    /// The client's address on the path.
    pub client: SocketAddr,
    /// Service streams open on it now.
    pub streams: usize,
    /// Whether the agent keeps it for more streams (not: at a limit, it only carries the
    /// client's first streams).
    pub kept: bool,
    /// When it opened.
    pub since: std::time::SystemTime,
    /// How long it has been open.
    pub age: std::time::Duration,
}

/// Reads an agent's warm-path counts (see [`crate::Agent::warm_paths`]); clones share them.
#[derive(Clone)]
pub struct WarmPaths(Arc<Mutex<WarmHeld>>);

impl std::fmt::Debug for WarmPaths {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.counts().fmt(f)
    }
}

impl WarmPaths {
    /// The counts now.
    pub fn counts(&self) -> WarmCounts {
        self.0.lock().expect("warm budget lock").counts()
    }

    /// The paths serving streams now, oldest first.
    pub fn paths(&self) -> Vec<WarmPathInfo> {
        let held = self.0.lock().expect("warm budget lock");
        let mut paths: Vec<WarmPathInfo> = held
            .paths
            .values()
            .map(|(client, path, since, at)| WarmPathInfo {
                client: *client,
                streams: path.streams(),
                kept: path.kept() == Some(true),
                since: *since,
                age: at.elapsed(),
            })
            .collect();
        paths.sort_by_key(|p| std::cmp::Reverse(p.age));
        paths
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([203, 0, 113, last])
    }

    #[test]
    fn warm_paths_are_capped_and_given_back() {
        let budget = WarmBudget::new(2, 2);
        let a = budget.reserve(ip(1)).unwrap();
        let _b = budget.reserve(ip(2)).unwrap();
        assert_eq!(budget.reserve(ip(3)).err(), Some(WarmDeclined::Total(2)));
        assert_eq!(budget.counts().open, 2);
        drop(a);
        assert!(budget.reserve(ip(3)).is_ok(), "given back");
    }

    #[test]
    fn one_address_holds_at_most_its_share_and_others_still_get_theirs() {
        let budget = WarmBudget::new(4, 2);
        let first = budget.reserve(ip(1)).unwrap();
        let _second = budget.reserve(ip(1)).unwrap();
        assert_eq!(
            budget.reserve(ip(1)).err(),
            Some(WarmDeclined::Address(2)),
            "a third from one address"
        );
        let _other = budget.reserve(ip(2)).unwrap();
        drop(first);
        let _again = budget
            .reserve(ip(1))
            .expect("the address's place given back");
        assert_eq!(budget.counts().open, 3);
    }

    #[test]
    fn open_streams_are_counted_per_path_while_the_path_is_listed() {
        let budget = WarmBudget::new(2, 2);
        let client = SocketAddr::from(([203, 0, 113, 9], 40000));
        let (one, two) = (
            Arc::new(PathState::default()),
            Arc::new(PathState::default()),
        );
        one.set_up(client, true, true);
        let listed = budget.track(client, one.clone());
        let _other = budget.track(client, two.clone());
        let (a, _b, _c) = (one.count(), one.count(), two.count());
        assert_eq!(budget.counts().open_streams, 3);
        let paths = budget.watch().paths();
        let mut streams: Vec<usize> = paths.iter().map(|p| p.streams).collect();
        streams.sort();
        assert_eq!(streams, [1, 2]);
        assert_eq!(paths.iter().filter(|p| p.kept).count(), 1);
        drop(a);
        assert_eq!(budget.counts().open_streams, 2);
        drop(listed);
        assert_eq!(budget.counts().open_streams, 1, "a path no longer listed");
    }

    #[test]
    fn sessions_birthdays_and_sockets_are_each_capped_and_given_back() {
        let budget = Budget::new(Limits {
            sessions: 3,
            birthdays: 1,
            sockets: defaults::EASY_PROBES + 100,
        });
        let easy = budget.reserve(Strategy::BirthdayEasy, 1).unwrap();
        assert_eq!(
            budget.reserve(Strategy::BirthdayHard, 1).err(),
            Some(OverBudget::Birthdays(1))
        );
        let _plain = budget.reserve(Strategy::Simultaneous, 2).unwrap();
        let err = budget.reserve(Strategy::Simultaneous, 100).err().unwrap();
        assert!(matches!(err, OverBudget::Sockets { .. }), "{err}");
        let _third = budget.reserve(Strategy::Simultaneous, 1).unwrap();
        assert_eq!(
            budget.reserve(Strategy::Simultaneous, 1).err(),
            Some(OverBudget::Sessions(3))
        );
        drop(easy);
        assert!(
            budget.reserve(Strategy::BirthdayEasy, 1).is_ok(),
            "given back"
        );
    }

    #[test]
    fn the_socket_budget_leaves_half_the_descriptors_to_the_service() {
        assert_eq!(Limits::for_fd_limit(1024).sockets, 512);
        assert_eq!(
            Limits::for_fd_limit(1 << 20).sockets,
            defaults::AGENT_PUNCH_SOCKETS
        );
        assert_eq!(
            Limits::for_fd_limit(0).sockets,
            defaults::AGENT_PUNCH_SOCKETS
        );
    }
}
