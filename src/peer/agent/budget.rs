//! What an agent's punch sessions may hold together: how many run at once, how many of them
//! are birthday punches, and how many sockets they keep open. A session that would exceed one
//! is refused `busy` before it sends a single SYN, so no number of requests (nor a client that
//! fakes a symmetric NAT to make the agent spray 1536 connection attempts) can take the agent
//! to its descriptor limit and starve the sessions it already serves.

use std::fmt;
use std::sync::{Arc, Mutex};

use crate::defaults;
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

/// The warm paths an agent keeps open: at most [`defaults::AGENT_MAX_WARM_PATHS`] at once
/// (see `agent::warm`), and how many it has carried, for its logs.
pub(super) struct WarmBudget {
    limit: usize,
    held: Arc<Mutex<WarmCounts>>,
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
}

/// A warm path's place in the budget; given back when dropped.
pub(super) struct WarmShare {
    held: Arc<Mutex<WarmCounts>>,
}

impl Drop for WarmShare {
    fn drop(&mut self) {
        self.held.lock().expect("warm budget lock").open -= 1;
    }
}

impl WarmBudget {
    /// At most `limit` kept warm paths at once.
    pub fn new(limit: usize) -> Self {
        WarmBudget {
            limit,
            held: Arc::new(Mutex::new(WarmCounts::default())),
        }
    }

    /// A place for one more kept path, unless all are taken.
    pub fn reserve(&self) -> Option<WarmShare> {
        let mut held = self.held.lock().expect("warm budget lock");
        if held.open >= self.limit {
            return None;
        }
        held.open += 1;
        Some(WarmShare {
            held: self.held.clone(),
        })
    }

    /// The most kept paths at once.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Counts a path that started serving.
    pub fn path_served(&self) {
        self.held.lock().expect("warm budget lock").paths += 1;
    }

    /// Counts a stream a path carried.
    pub fn stream_served(&self) {
        self.held.lock().expect("warm budget lock").streams += 1;
    }

    /// The counts now.
    pub fn counts(&self) -> WarmCounts {
        *self.held.lock().expect("warm budget lock")
    }

    /// A handle that reads the counts.
    pub fn watch(&self) -> WarmPaths {
        WarmPaths(self.held.clone())
    }
}

/// Reads an agent's warm-path counts (see [`crate::Agent::warm_paths`]); clones share them.
#[derive(Clone)]
pub struct WarmPaths(Arc<Mutex<WarmCounts>>);

impl std::fmt::Debug for WarmPaths {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.counts().fmt(f)
    }
}

impl WarmPaths {
    /// The counts now.
    pub fn counts(&self) -> WarmCounts {
        *self.0.lock().expect("warm budget lock")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warm_paths_are_capped_and_given_back() {
        let budget = WarmBudget::new(2);
        let a = budget.reserve().unwrap();
        let _b = budget.reserve().unwrap();
        assert!(budget.reserve().is_none(), "at the limit");
        assert_eq!(budget.counts().open, 2);
        drop(a);
        assert!(budget.reserve().is_some(), "given back");
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
