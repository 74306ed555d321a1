//! What the server counts: outcome records of every connect attempt, counters by outcome,
//! strategy and NAT pair, a setup-time histogram, rendered as Prometheus text and as the
//! status page of the admin listener.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::protocol::{Mapping, Strategy};

/// Outcome records kept for the status page.
const RECENT: usize = 100;
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
        let mut recent = self.recent.lock().expect("metrics lock");
        if recent.len() == RECENT {
            recent.pop_front();
        }
        recent.push_back(Record {
            at_unix_ms: now_unix_ms(),
            peer: peer.to_string(),
            client_mapping: pair.0,
            agent_mapping: pair.1,
            strategy,
            outcome,
            setup_ms: setup.map(|d| d.as_millis() as u64),
            reason,
        });
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
    }
}
