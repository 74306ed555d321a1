//! What the server counts: outcome records of every connect attempt, counters by outcome,
//! strategy and NAT pair, a setup-time histogram, rendered as Prometheus text and as the
//! status page of the admin listener.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::history::{Attempts, Relayed, Series, Windows};
use crate::protocol::{Mapping, Strategy};

/// Outcome records kept for the status page.
const RECENT: usize = 100;
/// Failed or refused attempts kept for the status page, apart from [`RECENT`]: on a busy
/// server a hundred successes would push every failure out of the recent sessions.
const RECENT_FAILURES: usize = 50;
/// Ids whose relayed bytes are tracked: a bounded map whatever the number of agents. When it
/// is full, the id with the fewest bytes makes room (so the top of the list is kept; an id
/// relayed again after its eviction starts from zero).
const RELAY_IDS_TRACKED: usize = 1024;
/// Ids shown in the relay's top list.
const RELAY_TOP: usize = 10;
/// Upper bounds of the setup-time histogram buckets, in seconds.
const BUCKETS: [f64; 10] = [0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0];

/// How a connect attempt ended, as the server learns it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// A punched stream between the public endpoints.
    Direct,
    /// A stream over the LAN (peers behind one NAT).
    Lan,
    /// Through the relay.
    Relayed,
    /// The client reported that nothing connected.
    Failed,
    /// Refused before punching (wrong secret, no path, peer gone).
    Rejected,
    /// The client went away without reporting.
    Abandoned,
}

impl Outcome {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Direct => "direct",
            Outcome::Lan => "lan",
            Outcome::Relayed => "relayed",
            Outcome::Failed => "failed",
            Outcome::Rejected => "rejected",
            Outcome::Abandoned => "abandoned",
        }
    }

    /// Whether bytes could flow.
    pub fn connected(self) -> bool {
        matches!(self, Outcome::Direct | Outcome::Lan | Outcome::Relayed)
    }
}

/// One connect attempt, as recorded.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    /// When it ended, milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
    /// The id reached for.
    pub peer: String,
    /// The client's NAT mapping.
    pub client_mapping: Mapping,
    /// The agent's NAT mapping.
    pub agent_mapping: Mapping,
    /// The client's strategy.
    pub strategy: Strategy,
    /// How it ended.
    pub outcome: Outcome,
    /// Setup time the client reported.
    pub setup_ms: Option<u64>,
    /// Why it failed, when it did.
    pub reason: Option<String>,
}

/// Success counts of one NAT pair: only attempts that reached the punch count, so that the
/// rates are the NATs' (a wrong secret, a busy agent or a refused plan is no NAT failure).
#[derive(Debug, Clone, Default, Serialize)]
pub struct PairStats {
    /// Attempts that reached the punch and ended.
    pub attempts: u64,
    /// Of which direct (or LAN).
    pub direct: u64,
    /// Of which relayed.
    pub relayed: u64,
    /// Requests for this pair refused before the punch (not among the attempts).
    pub refused: u64,
}

/// The server's counters.
#[derive(Default)]
pub struct Metrics {
    attempts: Mutex<BTreeMap<(Outcome, Strategy, Mapping, Mapping), u64>>,
    rejected: Mutex<BTreeMap<String, u64>>,
    recent: Mutex<VecDeque<Record>>,
    buckets: [AtomicU64; BUCKETS.len()],
    setup_count: AtomicU64,
    setup_sum_us: AtomicU64,
    relayed_bytes: AtomicU64,
    windows: Mutex<WindowedCounts>,
    failures: Mutex<VecDeque<Record>>,
    relay: Mutex<RelayCounts>,
}

/// Connect attempts over time, by strategy and by NAT pair.
#[derive(Default)]
struct WindowedCounts {
    by_strategy: BTreeMap<Strategy, Series<Attempts>>,
    by_pair: BTreeMap<(Mapping, Mapping), Series<Attempts>>,
}

/// What the relay did.
#[derive(Default)]
struct RelayCounts {
    ended: Series<Relayed>,
    caps: RelayCapCounts,
    /// Bytes relayed by service id, at most [`RELAY_IDS_TRACKED`] ids.
    by_id: HashMap<String, u64>,
}

/// Relayed sessions refused or cut at one of the relay's caps, since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RelayCapCounts {
    /// Joins refused: the joining address had its share of relayed sessions (`max_per_ip`).
    pub per_address: u64,
    /// Joins refused: every relay slot was taken (`max_pairs`).
    pub total: u64,
    /// Sessions cut at their lifetime cap (`max_lifetime`).
    pub lifetime: u64,
    /// Sessions cut after the idle timeout.
    pub idle: u64,
}

/// Which cap refused or cut a relayed session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayCap {
    /// The per-address share.
    PerAddress,
    /// The total of relay slots.
    Total,
    /// The lifetime cap of a session.
    Lifetime,
    /// The idle timeout of a session.
    Idle,
}

/// The relay's usage, as the status shows it.
#[derive(Debug, Clone, Serialize)]
pub struct RelayUsage {
    /// Sessions and bytes, counted when each session ends.
    pub ended: Windows<Relayed>,
    /// Refusals and cuts by cap, since start.
    pub caps: RelayCapCounts,
    /// The ids with the most relayed bytes, most first.
    pub top: Vec<RelayTopId>,
}

/// An id and the bytes relayed for it.
#[derive(Debug, Clone, Serialize)]
pub struct RelayTopId {
    /// The service id.
    pub id: String,
    /// Bytes relayed for it since start, both ways.
    pub bytes: u64,
}

impl RelayCounts {
    fn count(&mut self, cap: RelayCap) {
        let n = match cap {
            RelayCap::PerAddress => &mut self.caps.per_address,
            RelayCap::Total => &mut self.caps.total,
            RelayCap::Lifetime => &mut self.caps.lifetime,
            RelayCap::Idle => &mut self.caps.idle,
        };
        *n += 1;
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Metrics {
    /// Records the end of a connect attempt.
    pub fn record(
        &self,
        peer: &str,
        pair: (Mapping, Mapping),
        strategy: Strategy,
        outcome: Outcome,
        setup: Option<Duration>,
        reason: Option<String>,
    ) {
        *self
            .attempts
            .lock()
            .expect("metrics lock")
            .entry((outcome, strategy, pair.0, pair.1))
            .or_default() += 1;
        if let (Some(d), true) = (setup, outcome.connected()) {
            let secs = d.as_secs_f64();
            for (i, bound) in BUCKETS.iter().enumerate() {
                if secs <= *bound {
                    self.buckets[i].fetch_add(1, Ordering::Relaxed);
                }
            }
            self.setup_count.fetch_add(1, Ordering::Relaxed);
            self.setup_sum_us
                .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
        }
        tracing::info!(
            peer, %strategy, client_mapping = %pair.0, agent_mapping = %pair.1,
            outcome = outcome.as_str(), setup_ms = setup.map(|d| d.as_millis() as u64),
            reason = reason.as_deref().unwrap_or(""), "outcome"
        );
        let at_unix_ms = now_unix_ms();
        {
            let mut w = self.windows.lock().expect("metrics lock");
            let counts = Attempts::of(outcome);
            let secs = at_unix_ms / 1000;
            w.by_strategy.entry(strategy).or_default().add(secs, counts);
            w.by_pair.entry(pair).or_default().add(secs, counts);
        }
        let record = Record {
            at_unix_ms,
            peer: peer.to_string(),
            client_mapping: pair.0,
            agent_mapping: pair.1,
            strategy,
            outcome,
            setup_ms: setup.map(|d| d.as_millis() as u64),
            reason,
        };
        if !outcome.connected() {
            let mut failures = self.failures.lock().expect("metrics lock");
            if failures.len() == RECENT_FAILURES {
                failures.pop_front();
            }
            failures.push_back(record.clone());
        }
        let mut recent = self.recent.lock().expect("metrics lock");
        if recent.len() == RECENT {
            recent.pop_front();
        }
        recent.push_back(record);
    }

    /// The most recent attempts that did not connect, newest first.
    pub fn failures(&self) -> Vec<Record> {
        let failures = self.failures.lock().expect("metrics lock");
        failures.iter().rev().cloned().collect()
    }

    /// Attempts by strategy over the last 5 minutes, the last hour and since start.
    pub fn strategy_windows(&self) -> BTreeMap<Strategy, Windows<Attempts>> {
        let secs = now_unix_ms() / 1000;
        let w = self.windows.lock().expect("metrics lock");
        w.by_strategy
            .iter()
            .map(|(k, s)| (*k, s.windows(secs)))
            .collect()
    }

    /// Attempts by NAT pair over the last 5 minutes, the last hour and since start.
    pub fn pair_windows(&self) -> BTreeMap<(Mapping, Mapping), Windows<Attempts>> {
        let secs = now_unix_ms() / 1000;
        let w = self.windows.lock().expect("metrics lock");
        w.by_pair
            .iter()
            .map(|(k, s)| (*k, s.windows(secs)))
            .collect()
    }

    /// A relayed session of service `peer` ended after carrying `bytes`; `cut` names the cap
    /// that ended it, if one did.
    pub fn relay_ended(&self, peer: &str, bytes: u64, cut: Option<RelayCap>) {
        let mut r = self.relay.lock().expect("metrics lock");
        r.ended
            .add(now_unix_ms() / 1000, Relayed { sessions: 1, bytes });
        if let Some(cap) = cut {
            r.count(cap);
        }
        if !r.by_id.contains_key(peer)
            && r.by_id.len() >= RELAY_IDS_TRACKED
            && let Some(least) = r
                .by_id
                .iter()
                .min_by_key(|(_, b)| **b)
                .map(|(id, _)| id.clone())
        {
            r.by_id.remove(&least);
        }
        *r.by_id.entry(peer.to_string()).or_default() += bytes;
    }

    /// A relay join was refused at `cap`.
    pub fn relay_refused(&self, cap: RelayCap) {
        self.relay.lock().expect("metrics lock").count(cap);
    }

    /// The relay's usage: sessions and bytes over time, refusals by cap, the top ids.
    pub fn relay_usage(&self) -> RelayUsage {
        let r = self.relay.lock().expect("metrics lock");
        let mut top: Vec<RelayTopId> = r
            .by_id
            .iter()
            .map(|(id, bytes)| RelayTopId {
                id: id.clone(),
                bytes: *bytes,
            })
            .collect();
        top.sort_by(|a, b| b.bytes.cmp(&a.bytes).then_with(|| a.id.cmp(&b.id)));
        top.truncate(RELAY_TOP);
        RelayUsage {
            ended: r.ended.windows(now_unix_ms() / 1000),
            caps: r.caps,
            top,
        }
    }

    /// Counts a refused request by its error code.
    pub fn rejected(&self, code: &str) {
        *self
            .rejected
            .lock()
            .expect("metrics lock")
            .entry(code.to_string())
            .or_default() += 1;
    }

    /// Requests refused so far, by error code.
    pub fn rejected_counts(&self) -> BTreeMap<String, u64> {
        self.rejected.lock().expect("metrics lock").clone()
    }

    /// Counts bytes carried by the relay.
    pub fn relayed_bytes(&self, n: u64) {
        self.relayed_bytes.fetch_add(n, Ordering::Relaxed);
    }

    /// The most recent outcome records, newest first.
    pub fn recent(&self) -> Vec<Record> {
        let recent = self.recent.lock().expect("metrics lock");
        recent.iter().rev().cloned().collect()
    }

    /// Success counts by (client mapping, agent mapping).
    pub fn pairs(&self) -> BTreeMap<(Mapping, Mapping), PairStats> {
        let mut out: BTreeMap<(Mapping, Mapping), PairStats> = BTreeMap::new();
        for ((outcome, _, c, a), n) in self.attempts.lock().expect("metrics lock").iter() {
            let s = out.entry((*c, *a)).or_default();
            match outcome {
                Outcome::Rejected => {
                    s.refused += n;
                    continue;
                }
                Outcome::Direct | Outcome::Lan => s.direct += n,
                Outcome::Relayed => s.relayed += n,
                Outcome::Failed | Outcome::Abandoned => {}
            }
            s.attempts += n;
        }
        out
    }

    /// Prometheus text exposition, with the server's gauges.
    pub fn render(&self, gauges: &[(&str, &str, u64)]) -> String {
        let mut out = String::new();
        for (name, help, value) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        }
        out.push_str("# HELP p2pnc_connect_attempts_total Connect attempts by outcome, strategy and NAT pair.\n");
        out.push_str("# TYPE p2pnc_connect_attempts_total counter\n");
        for ((outcome, strategy, c, a), n) in self.attempts.lock().expect("metrics lock").iter() {
            let _ = writeln!(
                out,
                "p2pnc_connect_attempts_total{{outcome=\"{}\",strategy=\"{strategy}\",client_mapping=\"{c}\",agent_mapping=\"{a}\"}} {n}",
                outcome.as_str()
            );
        }
        out.push_str("# HELP p2pnc_rejected_requests_total Requests refused, by reason.\n");
        out.push_str("# TYPE p2pnc_rejected_requests_total counter\n");
        for (reason, n) in self.rejected.lock().expect("metrics lock").iter() {
            let _ = writeln!(
                out,
                "p2pnc_rejected_requests_total{{reason=\"{reason}\"}} {n}"
            );
        }
        out.push_str("# HELP p2pnc_relayed_bytes_total Bytes carried by the relay.\n");
        out.push_str("# TYPE p2pnc_relayed_bytes_total counter\n");
        let _ = writeln!(
            out,
            "p2pnc_relayed_bytes_total {}",
            self.relayed_bytes.load(Ordering::Relaxed)
        );
        out.push_str(
            "# HELP p2pnc_setup_seconds Setup time of connected attempts, as clients report it.\n",
        );
        out.push_str("# TYPE p2pnc_setup_seconds histogram\n");
        for (i, bound) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "p2pnc_setup_seconds_bucket{{le=\"{bound}\"}} {}",
                self.buckets[i].load(Ordering::Relaxed)
            );
        }
        let count = self.setup_count.load(Ordering::Relaxed);
        let _ = writeln!(out, "p2pnc_setup_seconds_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.setup_sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "p2pnc_setup_seconds_sum {sum}");
        let _ = writeln!(out, "p2pnc_setup_seconds_count {count}");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_feed_counters_histogram_pairs_and_recent() {
        let m = Metrics::default();
        let cone = Mapping::EndpointIndependent;
        let sym = Mapping::EndpointDependent;
        let ms = |n| Some(Duration::from_millis(n));
        m.record(
            "a",
            (cone, cone),
            Strategy::Simultaneous,
            Outcome::Direct,
            ms(80),
            None,
        );
        m.record(
            "a",
            (sym, cone),
            Strategy::BirthdayHard,
            Outcome::Direct,
            ms(400),
            None,
        );
        m.record(
            "b",
            (sym, sym),
            Strategy::RelayOnly,
            Outcome::Relayed,
            ms(900),
            None,
        );
        m.record(
            "b",
            (sym, sym),
            Strategy::RelayOnly,
            Outcome::Failed,
            None,
            Some("x".into()),
        );
        m.record(
            "b",
            (sym, sym),
            Strategy::Simultaneous,
            Outcome::Rejected,
            None,
            Some("peer 'b' rejected the secret".into()),
        );
        m.rejected("secret_rejected");
        let text = m.render(&[("p2pnc_agents_online", "Agents online.", 3)]);
        assert!(text.contains("p2pnc_agents_online 3"), "{text}");
        assert!(text.contains(
            "p2pnc_connect_attempts_total{outcome=\"direct\",strategy=\"birthday_hard\",client_mapping=\"endpoint-dependent\",agent_mapping=\"endpoint-independent\"} 1"
        ), "{text}");
        assert!(text.contains("p2pnc_rejected_requests_total{reason=\"secret_rejected\"} 1"));
        assert!(
            text.contains("p2pnc_setup_seconds_bucket{le=\"0.1\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("p2pnc_setup_seconds_bucket{le=\"0.5\"} 2"),
            "{text}"
        );
        assert!(text.contains("p2pnc_setup_seconds_count 3"), "{text}");
        let pairs = m.pairs();
        let s = &pairs[&(sym, sym)];
        assert_eq!(
            (s.attempts, s.direct, s.relayed, s.refused),
            (2, 0, 1, 1),
            "a refusal is counted apart from the attempts that reached the punch"
        );
        let recent = m.recent();
        assert_eq!(recent.len(), 5);
        assert_eq!(recent[0].outcome, Outcome::Rejected, "newest first");
        let failures = m.failures();
        assert_eq!(
            failures.iter().map(|r| r.outcome).collect::<Vec<_>>(),
            [Outcome::Rejected, Outcome::Failed],
            "only what did not connect, newest first"
        );
        let by_strategy = m.strategy_windows();
        let relay_only = by_strategy[&Strategy::RelayOnly].last_5_min;
        assert_eq!(
            (relay_only.attempts, relay_only.relayed, relay_only.failed),
            (2, 1, 1)
        );
        let simultaneous = by_strategy[&Strategy::Simultaneous].since_start;
        assert_eq!(
            (
                simultaneous.attempts,
                simultaneous.direct,
                simultaneous.refused
            ),
            (1, 1, 1)
        );
        assert_eq!(m.pair_windows()[&(sym, sym)].last_hour.refused, 1);
    }

    #[test]
    fn relay_usage_keeps_a_bounded_top_of_ids() {
        let m = Metrics::default();
        for i in 0..RELAY_IDS_TRACKED as u64 + 5 {
            m.relay_ended(&format!("id-{i}"), 1000 + i, None);
        }
        m.relay_ended("id-3", 1_000_000, Some(RelayCap::Lifetime));
        m.relay_refused(RelayCap::PerAddress);
        m.relay_refused(RelayCap::Total);
        m.relay_refused(RelayCap::Total);
        let usage = m.relay_usage();
        assert_eq!(m.relay.lock().unwrap().by_id.len(), RELAY_IDS_TRACKED);
        assert_eq!(usage.top.len(), RELAY_TOP);
        assert_eq!(usage.top[0].id, "id-3");
        assert_eq!(usage.top[1].id, format!("id-{}", RELAY_IDS_TRACKED + 4));
        assert_eq!(
            usage.ended.last_5_min.sessions,
            RELAY_IDS_TRACKED as u64 + 6
        );
        assert_eq!(
            usage.caps,
            RelayCapCounts {
                per_address: 1,
                total: 2,
                lifetime: 1,
                idle: 0
            }
        );
    }
}
