//! The registry of online agents: which id is online where, who owns which id, and the ids
//! kept for owners that went offline. The only owner of those maps.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::broker::AgentView;
use super::metrics::now_unix_ms;
use crate::protocol::{Auth, ErrorCode, Mapping, ServerToAgent, ServiceId, Verifier};

/// Messages queued toward one agent before new sessions to it are refused as busy.
const AGENT_QUEUE: usize = 256;

struct AgentEntry {
    generation: u64,
    /// Boxed: a channel allocates its first 32 slots up front, and every online agent has one.
    tx: mpsc::Sender<Box<ServerToAgent>>,
    view: AgentView,
    /// The verifier the agent registered (and proved it holds the secret of), if any: the
    /// id's owner identity.
    owner: Option<Verifier>,
    /// Cancelled when the owner's restart replaces this registration.
    replaced: CancellationToken,
    /// When it registered (Unix milliseconds).
    since_unix_ms: u64,
    /// Smoothed RTT in microseconds (0 = unknown).
    rtt_us: Arc<AtomicU64>,
}

/// An online agent, as a connect to it needs it.
pub(super) struct Online {
    /// Its queue of messages.
    pub tx: mpsc::Sender<Box<ServerToAgent>>,
    /// What the broker needs.
    pub view: AgentView,
    /// Its smoothed RTT (zero when unknown).
    pub rtt: Duration,
}

/// One online agent, as the status page shows it.
pub(super) struct Listing {
    pub id: ServiceId,
    pub public: SocketAddr,
    pub mapping: Mapping,
    pub auth: Auth,
    pub rtt: Option<Duration>,
    pub since_unix_ms: u64,
}

/// A new registration, as the agent asked for it.
pub(super) struct NewAgent {
    pub id: ServiceId,
    pub view: AgentView,
    /// Whether it replaces an online registration of the same owner (else it waits).
    pub takeover: bool,
    /// Where its smoothed RTT is kept (microseconds, 0 = unknown), first the RTT of its TCP
    /// handshake.
    pub rtt_us: Arc<AtomicU64>,
}

/// A registration in force. Dropping it takes the id offline (unless the owner's restart took
/// it over first) and keeps the id for its owner during the grace period.
pub(super) struct Registration {
    registry: Arc<Registry>,
    id: ServiceId,
    owner: Option<Verifier>,
    generation: u64,
    /// Cancelled when the owner's restart replaces this registration.
    pub replaced: CancellationToken,
    /// Where the agent connection keeps the agent's smoothed RTT (microseconds, 0 = unknown).
    pub rtt_us: Arc<AtomicU64>,
    /// The agent's queue of messages.
    pub rx: mpsc::Receiver<Box<ServerToAgent>>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(owner) = &self.owner {
            self.registry
                .reserved
                .lock()
                .expect("reserved lock")
                .insert(self.id.clone(), (*owner, Instant::now()));
        }
        let mut agents = self.registry.agents.lock().expect("agents lock");
        if agents
            .get(&self.id)
            .is_some_and(|e| e.generation == self.generation)
        {
            agents.remove(&self.id);
        }
    }
}

/// Why an agent may not register.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum Refused {
    /// Another agent holds the id, or held it and its owner may still come back.
    #[error("{0}")]
    IdTaken(String),
    /// The registry is full.
    #[error("server busy: too many agents registered")]
    Full,
}

impl Refused {
    /// The code to answer with.
    pub fn code(&self) -> ErrorCode {
        match self {
            Refused::IdTaken(_) => ErrorCode::IdTaken,
            Refused::Full => ErrorCode::Busy,
        }
    }
}

/// Whether an agent may take an id.
enum Claim {
    /// The id is free.
    Free,
    /// The id's owner restarted: replace its registration.
    Replace,
    /// Someone else holds or recently held it.
    Refused(String),
}

/// Online agents by id, and ids reserved for owners gone offline.
pub(super) struct Registry {
    agents: Mutex<HashMap<ServiceId, AgentEntry>>,
    /// Ids whose owner went offline recently: id → (owner, when).
    reserved: Mutex<HashMap<ServiceId, (Verifier, Instant)>>,
    generation: AtomicU64,
    /// How long an id stays reserved for its owner.
    id_grace: Duration,
    /// Most agents at once.
    max_agents: usize,
}

impl Registry {
    /// An empty registry.
    pub fn new(id_grace: Duration, max_agents: usize) -> Self {
        Registry {
            agents: Mutex::new(HashMap::new()),
            reserved: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(1),
            id_grace,
            max_agents,
        }
    }

    /// Whether `owner` may register `id` now, before the upgrade (and before it proved it
    /// holds the secret of `owner`: the registration checks again after the proof).
    pub fn admit(
        &self,
        id: &ServiceId,
        owner: Option<&Verifier>,
        takeover: bool,
    ) -> Result<(), Refused> {
        let agents = self.agents.lock().expect("agents lock");
        if let Claim::Refused(why) = self.claim(&agents, id, owner, takeover) {
            return Err(Refused::IdTaken(why));
        }
        if agents.len() >= self.max_agents {
            return Err(Refused::Full);
        }
        Ok(())
    }

    /// Registers an agent that proved it holds the secret of its verifier, replacing its
    /// owner's previous registration when it asks to.
    pub fn register(self: &Arc<Self>, new: NewAgent) -> Result<Registration, Refused> {
        let generation = self.generation.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(AGENT_QUEUE);
        let rtt_us = new.rtt_us;
        let replaced = CancellationToken::new();
        let mut agents = self.agents.lock().expect("agents lock");
        let owner = new.view.verifier;
        let claim = self.claim(&agents, &new.id, owner.as_ref(), new.takeover);
        if let Claim::Refused(why) = claim {
            return Err(Refused::IdTaken(why));
        }
        if let Claim::Replace = claim
            && let Some(old) = agents.remove(&new.id)
        {
            tracing::info!(id = %new.id, "the owner re-registered; replacing its old registration");
            old.replaced.cancel();
        }
        agents.insert(
            new.id.clone(),
            AgentEntry {
                generation,
                tx,
                view: new.view,
                owner,
                replaced: replaced.clone(),
                since_unix_ms: now_unix_ms(),
                rtt_us: rtt_us.clone(),
            },
        );
        Ok(Registration {
            registry: self.clone(),
            id: new.id,
            owner,
            generation,
            replaced,
            rtt_us,
            rx,
        })
    }

    /// Decides whether `owner` may register `id` now. Call with the agents lock held.
    fn claim(
        &self,
        agents: &HashMap<ServiceId, AgentEntry>,
        id: &ServiceId,
        owner: Option<&Verifier>,
        takeover: bool,
    ) -> Claim {
        if let Some(entry) = agents.get(id) {
            return match (entry.owner.as_ref(), owner) {
                (Some(a), Some(b)) if a == b && takeover => Claim::Replace,
                (Some(a), Some(b)) if a == b => Claim::Refused(format!(
                    "id '{id}' is held by another instance of this service; this one waits \
                     until it goes offline"
                )),
                _ => Claim::Refused(id_taken(id)),
            };
        }
        let mut reserved = self.reserved.lock().expect("reserved lock");
        let grace = self.id_grace;
        reserved.retain(|_, (_, at)| at.elapsed() < grace);
        match (reserved.get(id), owner) {
            (None, _) => Claim::Free,
            (Some((a, _)), Some(b)) if a == b => Claim::Free,
            (Some((_, at)), _) => Claim::Refused(format!(
                "id '{id}' belongs to another agent that went offline {} s ago; it stays \
                 reserved for {} s",
                at.elapsed().as_secs(),
                grace.as_secs()
            )),
        }
    }

    /// Takes the registration of `id` offline: another registration elsewhere took the id.
    pub fn kick(&self, id: &str) {
        if let Some(entry) = self.agents.lock().expect("agents lock").get(id) {
            entry.replaced.cancel();
        }
    }

    /// The online agent `id`, for a connect to it.
    pub fn lookup(&self, id: &str) -> Option<Online> {
        let agents = self.agents.lock().expect("agents lock");
        agents.get(id).map(|a| Online {
            tx: a.tx.clone(),
            view: a.view.clone(),
            rtt: Duration::from_micros(a.rtt_us.load(Ordering::Relaxed)),
        })
    }

    /// Whether `id` is online.
    pub fn contains(&self, id: &str) -> bool {
        self.agents.lock().expect("agents lock").contains_key(id)
    }

    /// Agents online now.
    pub fn len(&self) -> usize {
        self.agents.lock().expect("agents lock").len()
    }

    /// Every online agent, sorted by id.
    pub fn snapshot(&self) -> Vec<Listing> {
        let agents = self.agents.lock().expect("agents lock");
        let mut out: Vec<Listing> = agents
            .iter()
            .map(|(id, a)| {
                let rtt = a.rtt_us.load(Ordering::Relaxed);
                Listing {
                    id: id.clone(),
                    public: a.view.public,
                    mapping: a.view.mapping,
                    auth: a.view.auth,
                    rtt: (rtt > 0).then(|| Duration::from_micros(rtt)),
                    since_unix_ms: a.since_unix_ms,
                }
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }
}

fn id_taken(id: &str) -> String {
    format!("id '{id}' is already registered by another agent")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ServiceKeys;

    fn verifier(secret: &str, id: &str) -> Verifier {
        ServiceKeys::derive(secret, id).verifier()
    }

    fn agent(id: &str, owner: Option<&str>) -> NewAgent {
        NewAgent {
            id: ServiceId::new(id).unwrap(),
            view: AgentView {
                public: "203.0.113.2:40000".parse().unwrap(),
                public_other: None,
                private: vec![],
                auth: Auth::Secret,
                mapping: Mapping::Unknown,
                mapped: None,
                verifier: owner.map(|o| verifier(o, id)),
                key: None,
            },
            takeover: true,
            rtt_us: Arc::default(),
        }
    }

    #[test]
    fn an_id_is_kept_for_its_owner_and_taken_over_by_the_owners_restart() {
        let registry = Arc::new(Registry::new(Duration::from_secs(60), 10));
        let id = ServiceId::new("svc").unwrap();
        let first = registry.register(agent("svc", Some("pw"))).unwrap();
        assert!(registry.contains("svc"));
        // Another secret is refused, online and, once offline, during the grace period.
        assert_eq!(
            registry
                .admit(&id, Some(&verifier("other", "svc")), true)
                .unwrap_err()
                .code(),
            ErrorCode::IdTaken
        );
        assert!(registry.register(agent("svc", None)).is_err());
        // Without takeover, another instance of the owner waits.
        let standby = NewAgent {
            takeover: false,
            ..agent("svc", Some("pw"))
        };
        assert!(registry.register(standby).is_err());
        // The owner's restart replaces the old registration, whose connection is told.
        let second = registry.register(agent("svc", Some("pw"))).unwrap();
        assert!(first.replaced.is_cancelled());
        drop(first);
        assert!(
            registry.contains("svc"),
            "the old registration leaves the new one"
        );
        drop(second);
        assert!(!registry.contains("svc"));
        assert!(
            registry.register(agent("svc", Some("other"))).is_err(),
            "reserved"
        );
        assert!(
            registry.register(agent("svc", Some("pw"))).is_ok(),
            "for its owner"
        );
    }

    #[test]
    fn a_public_agent_holds_its_id_only_while_online_and_the_registry_is_capped() {
        let registry = Arc::new(Registry::new(Duration::from_secs(60), 1));
        let public = registry.register(agent("pub", None)).unwrap();
        let other = ServiceId::new("other").unwrap();
        assert_eq!(registry.admit(&other, None, true), Err(Refused::Full));
        assert_eq!(registry.snapshot().len(), 1);
        assert_eq!(registry.lookup("pub").map(|a| a.view.verifier), Some(None));
        drop(public);
        assert_eq!(registry.len(), 0);
        assert!(registry.register(agent("pub", Some("pw"))).is_ok());
    }
}
