//! The state of the service an agent forwards to, as its owner reports it: accepting, or
//! refusing since when and why. The agent's status page and `/metrics` show it.

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// Whether the service accepts connections, as last reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServiceState {
    /// Nothing reported yet.
    Unknown,
    /// The last connection to it was accepted.
    Accepting,
    /// Connections to it fail.
    Refusing {
        /// When the first failure of this run of failures was reported.
        since: SystemTime,
        /// The first failure of this run, e.g. "Connection refused".
        error: String,
    },
}

/// A cheap-clone handle on the state of the service an [`Agent`](super::Agent) forwards
/// to. Its owner (the `expose` command) reports every probe and every real connection to
/// the service; [`Agent::show_service`](super::Agent::show_service) puts it on the status
/// page and `/metrics`. Each change is logged once: a WARN line when the service stops
/// accepting (with the error), an INFO line when it accepts again; a repeated report of the
/// same state logs nothing.
#[derive(Clone, Debug)]
pub struct ServiceHealth {
    address: Arc<str>,
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug)]
struct Inner {
    state: ServiceState,
    /// Streams that could not be forwarded because the service did not accept.
    refused: u64,
}

impl ServiceHealth {
    /// The health of the service at `address` (as the user gave it, e.g. `127.0.0.1:8080`),
    /// unknown until the first report.
    pub fn new(address: &str) -> Self {
        ServiceHealth {
            address: address.into(),
            inner: Arc::new(Mutex::new(Inner {
                state: ServiceState::Unknown,
                refused: 0,
            })),
        }
    }

    /// The service's address, as given to [`ServiceHealth::new`].
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The service accepted a connection.
    pub fn accepting(&self) {
        let mut inner = self.inner.lock().expect("service health lock");
        if let ServiceState::Refusing { .. } = inner.state {
            tracing::info!("service {} accepts connections again", self.address);
        }
        inner.state = ServiceState::Accepting;
    }

    /// A connection to the service failed with `error` (e.g. "Connection refused"). The
    /// first report at start (state unknown) says what clients will meet.
    pub fn refusing(&self, error: &str) {
        let mut inner = self.inner.lock().expect("service health lock");
        match inner.state {
            ServiceState::Refusing { .. } => return,
            ServiceState::Unknown => tracing::warn!(
                "service {} does not accept connections ({error}): clients will be told \
                 that the service refused until it does",
                self.address
            ),
            ServiceState::Accepting => tracing::warn!(
                "service {} stopped accepting connections: {error}",
                self.address
            ),
        }
        inner.state = ServiceState::Refusing {
            since: SystemTime::now(),
            error: error.to_string(),
        };
    }

    /// A client's stream could not be forwarded: the service did not accept it (`error`).
    /// Counts it and marks the service as refusing.
    pub fn refused_forward(&self, error: &str) {
        self.refusing(error);
        self.inner.lock().expect("service health lock").refused += 1;
    }

    /// The state as last reported.
    pub fn state(&self) -> ServiceState {
        self.inner
            .lock()
            .expect("service health lock")
            .state
            .clone()
    }

    /// Client streams not forwarded because the service did not accept them, so far.
    pub fn refused_forwards(&self) -> u64 {
        self.inner.lock().expect("service health lock").refused
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_of_failures_keeps_its_first_error_and_time_until_the_service_accepts() {
        let h = ServiceHealth::new("127.0.0.1:8080");
        assert_eq!(h.state(), ServiceState::Unknown);
        h.refusing("Connection refused");
        let ServiceState::Refusing { since, error } = h.state() else {
            panic!("refusing");
        };
        assert_eq!(error, "Connection refused");
        h.refused_forward("timed out");
        assert_eq!(
            h.state(),
            ServiceState::Refusing {
                since,
                error: "Connection refused".into()
            }
        );
        assert_eq!(h.refused_forwards(), 1);
        h.accepting();
        assert_eq!(h.state(), ServiceState::Accepting);
        assert_eq!(h.refused_forwards(), 1, "a counter, never reset");
    }
}
