//! Counts over time for the status page: per-minute buckets of the last hour and a total since
//! start, so an operator sees the last 5 minutes, the last hour and the whole run side by side.
//! Memory is fixed: [`BUCKETS`] buckets per series, and the series are keyed by small enums.

use std::collections::VecDeque;
use std::ops::AddAssign;

use serde::Serialize;

use super::metrics::Outcome;

/// Width of one bucket, in seconds: the "last 5 minutes" is then off by at most one minute.
pub const BUCKET_SECS: u64 = 60;
/// Buckets kept: one hour of [`BUCKET_SECS`].
pub const BUCKETS: u64 = 60;
/// Buckets in the short window ("last 5 min").
pub const SHORT_BUCKETS: u64 = 5;

/// One series: the buckets of the last [`BUCKETS`] minutes that saw anything, and the total.
#[derive(Debug, Clone, Default)]
pub struct Series<T> {
    /// (bucket number, counts), oldest first; bucket number = unix seconds / [`BUCKET_SECS`].
    ring: VecDeque<(u64, T)>,
    total: T,
}

/// A series read at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Windows<T> {
    /// The last [`SHORT_BUCKETS`] minutes.
    pub last_5_min: T,
    /// The last [`BUCKETS`] minutes.
    pub last_hour: T,
    /// Since the server started.
    pub since_start: T,
}

impl<T: Default + Copy + AddAssign> Series<T> {
    /// Adds `add` at `unix_secs`.
    pub fn add(&mut self, unix_secs: u64, add: T) {
        let bucket = unix_secs / BUCKET_SECS;
        self.total += add;
        match self.ring.back_mut() {
            Some((b, counts)) if *b == bucket => *counts += add,
            // A clock stepped back: count it in the newest bucket rather than reorder.
            Some((b, counts)) if *b > bucket => *counts += add,
            _ => self.ring.push_back((bucket, add)),
        }
        while self
            .ring
            .front()
            .is_some_and(|(b, _)| *b + BUCKETS <= bucket)
        {
            self.ring.pop_front();
        }
    }

    /// The counts of the last 5 minutes, the last hour and since start, as of `unix_secs`.
    pub fn windows(&self, unix_secs: u64) -> Windows<T> {
        let now = unix_secs / BUCKET_SECS;
        let mut w = Windows {
            since_start: self.total,
            ..Windows::default()
        };
        for (b, counts) in &self.ring {
            let age = now.saturating_sub(*b);
            if age < BUCKETS {
                w.last_hour += *counts;
            }
            if age < SHORT_BUCKETS {
                w.last_5_min += *counts;
            }
        }
        w
    }
}

/// How connect attempts ended: those that reached the punch by result, and the refusals before
/// it apart (a wrong secret or a busy agent is no NAT failure).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Attempts {
    /// Attempts that reached the punch.
    pub attempts: u64,
    /// Of which connected directly or over the LAN.
    pub direct: u64,
    /// Of which relayed.
    pub relayed: u64,
    /// Of which failed (or whose client went away without a report).
    pub failed: u64,
    /// Requests refused before the punch (not among the attempts).
    pub refused: u64,
}

impl Attempts {
    /// One attempt that ended with `outcome`.
    pub fn of(outcome: Outcome) -> Self {
        let one = Attempts {
            attempts: 1,
            ..Attempts::default()
        };
        match outcome {
            Outcome::Direct | Outcome::Lan => Attempts { direct: 1, ..one },
            Outcome::Relayed => Attempts { relayed: 1, ..one },
            Outcome::Failed | Outcome::Abandoned => Attempts { failed: 1, ..one },
            Outcome::Rejected => Attempts {
                refused: 1,
                ..Attempts::default()
            },
        }
    }
}

impl AddAssign for Attempts {
    fn add_assign(&mut self, o: Self) {
        self.attempts += o.attempts;
        self.direct += o.direct;
        self.relayed += o.relayed;
        self.failed += o.failed;
        self.refused += o.refused;
    }
}

/// Relayed sessions that ended, and the bytes they carried (counted when they end).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Relayed {
    /// Sessions spliced and ended.
    pub sessions: u64,
    /// Bytes they carried, both ways.
    pub bytes: u64,
}

impl AddAssign for Relayed {
    fn add_assign(&mut self, o: Self) {
        self.sessions += o.sessions;
        self.bytes += o.bytes;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_drop_what_is_older_than_they_are() {
        let mut s = Series::<Relayed>::default();
        let one = |bytes| Relayed { sessions: 1, bytes };
        let t0 = 1_000_000 * BUCKET_SECS;
        s.add(t0, one(10));
        s.add(t0 + 10 * BUCKET_SECS, one(20));
        s.add(t0 + 58 * BUCKET_SECS, one(40));
        let w = s.windows(t0 + 61 * BUCKET_SECS);
        assert_eq!(
            w.since_start,
            Relayed {
                sessions: 3,
                bytes: 70
            }
        );
        assert_eq!(
            w.last_hour,
            Relayed {
                sessions: 2,
                bytes: 60
            }
        );
        assert_eq!(
            w.last_5_min,
            Relayed {
                sessions: 1,
                bytes: 40
            }
        );
        let w = s.windows(t0 + 200 * BUCKET_SECS);
        assert_eq!(
            (w.last_hour, w.since_start.sessions),
            (Relayed::default(), 3)
        );
    }

    #[test]
    fn the_ring_holds_at_most_an_hour_of_buckets() {
        let mut s = Series::<Attempts>::default();
        for minute in 0..500 {
            s.add(minute * BUCKET_SECS, Attempts::of(Outcome::Direct));
        }
        assert_eq!(s.ring.len() as u64, BUCKETS);
        let w = s.windows(499 * BUCKET_SECS);
        assert_eq!(
            (
                w.last_5_min.direct,
                w.last_hour.direct,
                w.since_start.direct
            ),
            (5, 60, 500)
        );
    }

    #[test]
    fn refusals_are_not_attempts() {
        let mut a = Attempts::of(Outcome::Rejected);
        a += Attempts::of(Outcome::Abandoned);
        a += Attempts::of(Outcome::Lan);
        assert_eq!(
            a,
            Attempts {
                attempts: 2,
                direct: 1,
                relayed: 0,
                failed: 1,
                refused: 1
            }
        );
    }
}
