//! A client's connect attempt, one session per client control connection: waiting (for the
//! client's probe, then the broker's plan), ordered (both punch orders out, timed to fire
//! together), reported (the client's outcome, until it closes or the session expires).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use axum::extract::ws::{Message, WebSocket};
use tokio::sync::mpsc;

use super::accept::ConnMeta;
use super::broker::{
    self, AgentView, BirthdayBudget, ClientView, Orders, RelayPolicy, RelayTickets,
};
use super::cluster::RemoteAgent;
use super::http::send;
use super::limits::Use;
use super::metrics::{Metrics, Outcome};
use super::registry::Online;
use super::{AppState, probe};
use crate::protocol::{
    self, ClientToServer, ConnectQuery, ErrorCode, Mapping, Mode, Nonce, RelayTicket, Role,
    ServerToAgent, ServerToClient, ServiceId, SessionId, SessionKey, Strategy,
};

/// How long a plain-mode session waits for the agent to arm before failing.
const ARM_TIMEOUT: Duration = Duration::from_secs(8);
/// How long a client control connection may stay open after its punch order.
const SESSION_LIFETIME: Duration = Duration::from_secs(30);
/// Events queued toward one session: a rejection and an arming at most.
const SESSION_EVENTS: usize = 4;
/// How much later than the server a client may count the start of its attempt: it starts its
/// clock before it connects to the server (name lookup, TCP and TLS handshakes).
const SETUP_CLOCK_SLACK: Duration = Duration::from_secs(10);
/// Longest failure reason kept from a client's report, in characters.
const MAX_REASON_CHARS: usize = 256;

/// What the agent's side tells a session.
pub(super) enum SessionEvent {
    /// The agent refused the session.
    Rejected(ErrorCode, String),
    /// Plain mode: the agent has opened its NAT toward the client.
    Armed,
    /// Plain mode: the agent's challenge for the client.
    Challenge(Nonce),
}

/// An open session as the table keeps it.
struct Entry {
    events: mpsc::Sender<SessionEvent>,
    /// The ends' relay tickets, when the server relays.
    tickets: Option<RelayTickets>,
    /// The service id the client asked for.
    peer: Arc<str>,
}

/// Why a relay join does not get in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TicketRefusal {
    /// The session is not open (or never was).
    NotLive,
    /// The ticket is not the one of this end's order.
    Wrong,
}

/// Open sessions by id: where the agent connections route a session's events, and the relay
/// tickets of each. The only owner of that map.
pub(super) struct SessionTable {
    open: Mutex<HashMap<SessionId, Entry>>,
    /// Most sessions open at once (client control connections).
    max: usize,
}

/// A session in the table; dropping it takes the session out, however the session ends.
pub(super) struct OpenSession {
    table: Arc<SessionTable>,
    /// The session's id.
    pub id: SessionId,
}

impl Drop for OpenSession {
    fn drop(&mut self) {
        self.table
            .open
            .lock()
            .expect("sessions lock")
            .remove(&self.id);
    }
}

impl SessionTable {
    /// An empty table for at most `max` sessions.
    pub fn new(max: usize) -> Self {
        SessionTable {
            open: Mutex::new(HashMap::new()),
            max,
        }
    }

    /// Whether no new session may open.
    pub fn is_full(&self) -> bool {
        self.len() >= self.max
    }

    /// Sessions open now.
    pub fn len(&self) -> usize {
        self.open.lock().expect("sessions lock").len()
    }

    /// Whether `ticket` lets `role`'s end of session `id` into the relay; if so, the service
    /// id of the session.
    pub fn check_ticket(
        &self,
        id: &SessionId,
        role: Role,
        ticket: &RelayTicket,
    ) -> Result<Arc<str>, TicketRefusal> {
        let open = self.open.lock().expect("sessions lock");
        let entry = open.get(id).ok_or(TicketRefusal::NotLive)?;
        match &entry.tickets {
            Some(t) if super::http::constant_time_eq(&t.of(role).to_hex(), &ticket.to_hex()) => {
                Ok(entry.peer.clone())
            }
            _ => Err(TicketRefusal::Wrong),
        }
    }

    /// Opens the session `id` of a client asking for service `peer`, with the relay tickets
    /// of its ends; its events arrive on the receiver.
    pub fn open(
        self: &Arc<Self>,
        id: SessionId,
        peer: &str,
        tickets: Option<RelayTickets>,
    ) -> (OpenSession, mpsc::Receiver<SessionEvent>) {
        let (tx, rx) = mpsc::channel(SESSION_EVENTS);
        let entry = Entry {
            events: tx,
            tickets,
            peer: peer.into(),
        };
        self.open.lock().expect("sessions lock").insert(id, entry);
        let session = OpenSession {
            table: self.clone(),
            id,
        };
        (session, rx)
    }

    /// Hands `event` to session `id`, if it is open here; gives it back otherwise.
    pub fn deliver(&self, id: SessionId, event: SessionEvent) -> Result<(), SessionEvent> {
        let tx = (self.open.lock().expect("sessions lock"))
            .get(&id)
            .map(|e| e.events.clone());
        match tx {
            Some(tx) => {
                let _ = tx.try_send(event);
                Ok(())
            }
            None => Err(event),
        }
    }
}

/// The agent of a session: held here, or by another member of the cluster.
pub(super) enum Target {
    /// In this server's registry.
    Local(Online),
    /// Held by another member: orders go through the cluster store.
    Remote(RemoteAgent),
}

impl Target {
    /// What the broker needs.
    pub fn view(&self) -> &AgentView {
        match self {
            Target::Local(a) => &a.view,
            Target::Remote(a) => &a.view,
        }
    }

    /// How long, as an RTT, a message from here takes to reach the agent and back: its own
    /// RTT, plus twice the hop through the store when another member holds it.
    pub fn rtt(&self) -> Duration {
        match self {
            Target::Local(a) => a.rtt,
            Target::Remote(a) => a.rtt + 2 * a.hop,
        }
    }

    /// Sends the agent `msg` (for `session`); false when its queue is full.
    fn send(&self, state: &AppState, session: SessionId, msg: ServerToAgent) -> bool {
        match self {
            Target::Local(a) => a.tx.try_send(Box::new(msg)).is_ok(),
            Target::Remote(a) => state
                .cluster
                .as_ref()
                .is_some_and(|c| c.send_to_agent(a, Some(session), msg)),
        }
    }
}

/// Records how a session ended, exactly once; a session dropped without an ending counts as
/// abandoned.
struct Tally<'a> {
    metrics: &'a Metrics,
    peer: String,
    pair: (Mapping, Mapping),
    strategy: Strategy,
    /// When the server took the request: no setup can have taken longer than since.
    opened: Instant,
    done: bool,
}

impl Tally<'_> {
    fn end(&mut self, outcome: Outcome, setup: Option<Duration>, reason: Option<String>) {
        if !std::mem::replace(&mut self.done, true) {
            self.metrics
                .record(&self.peer, self.pair, self.strategy, outcome, setup, reason);
        }
    }

    /// Records nothing: the server never learns how this session went.
    fn forget(&mut self) {
        self.done = true;
    }
}

impl Drop for Tally<'_> {
    fn drop(&mut self) {
        self.end(Outcome::Abandoned, None, None);
    }
}

/// Tells the client why its request failed, and records it.
async fn refuse(socket: &mut WebSocket, tally: &mut Tally<'_>, code: ErrorCode, message: String) {
    tally.metrics.rejected(&code.to_string());
    tally.end(Outcome::Rejected, None, Some(message.clone()));
    send(socket, &ServerToClient::Error { code, message }).await;
}

/// Serves one client control connection, from its request to its outcome.
pub(super) async fn client_session(
    state: AppState,
    meta: ConnMeta,
    q: ConnectQuery,
    mut socket: WebSocket,
) {
    // Waiting: the client's probes (the other family's only briefly, unless the agent can be
    // reached in that family alone), then the agent as it is now.
    let tickets = state.relay.as_ref().map(|_| RelayTickets::random());
    let (session, mut events) = state.sessions.open(SessionId::random(), &q.peer, tickets);
    let other_needed = state
        .find_agent(&q.peer)
        .await
        .ok()
        .flatten()
        .is_some_and(|a| {
            let family = |addr: &std::net::SocketAddr| addr.is_ipv4() == meta.remote.is_ipv4();
            let view = a.view();
            !family(&view.public) && !view.public_other.as_ref().is_some_and(family)
        });
    let tokens = [q.probe.as_ref(), q.probe_other.as_ref()];
    let probed = probe::probed(state.probes.as_deref(), meta.remote, tokens, other_needed).await;
    let client_mapping = probed.mapping;
    let online = state.find_agent(&q.peer).await;
    let agent_mapping = match &online {
        Ok(Some(a)) => a.view().mapping,
        _ => Mapping::Unknown,
    };
    let mut tally = Tally {
        metrics: &state.metrics,
        peer: q.peer.to_string(),
        pair: (client_mapping, agent_mapping),
        strategy: Strategy::Simultaneous,
        opened: Instant::now(),
        done: false,
    };
    let agent = match online {
        Ok(Some(agent)) => agent,
        Ok(None) => {
            let message = format!("peer '{}' is not online", q.peer);
            return refuse(&mut socket, &mut tally, ErrorCode::PeerOffline, message).await;
        }
        Err(_) => {
            let message = super::store_down_message(&q.peer);
            return refuse(&mut socket, &mut tally, ErrorCode::Busy, message).await;
        }
    };
    let client = ClientView {
        public: meta.remote,
        public_other: probed.other,
        private: q.private.clone(),
        mapping: client_mapping,
        mode: q.mode,
        nonce: q.nonce,
        proof: q.proof,
    };
    let relay = match tickets {
        Some(t) => RelayPolicy::Relay(t),
        None => RelayPolicy::Off,
    };
    // Held until the session ends (at most the budget's window).
    let (birthday, _birthday_uses) = birthday_budget(&state, &client, agent.view(), &q.peer);
    let orders = match broker::plan(
        session.id,
        SessionKey::random(),
        &client,
        agent.view(),
        relay,
        birthday,
    ) {
        Ok(mut orders) => {
            // The relay is this server's: an agent held elsewhere is told where to join.
            if let (Target::Remote(_), Some(cluster)) = (&agent, &state.cluster)
                && orders.to_agent.relay_ticket.is_some()
            {
                orders.to_agent.relay_at = Some(cluster.advertise());
            }
            orders
        }
        Err(refusal) => {
            tally.strategy = Strategy::RelayOnly;
            let message = refusal.message(&q.peer);
            return refuse(&mut socket, &mut tally, refusal.code(), message).await;
        }
    };
    tally.strategy = orders.to_client.strategy;
    tracing::info!(
        session = %session.id, peer = %q.peer, client = %meta.remote, mode = ?q.mode,
        %client_mapping, %agent_mapping, strategy = %orders.to_client.strategy,
        relay = ?orders.to_client.relay_after_ms, mapped = ?orders.to_client.peer_mapped,
        via = ?match &agent { Target::Remote(a) => Some(&a.member), Target::Local(_) => None },
        "session"
    );
    // Ordered: both orders out; then reported, until the client closes or the session expires.
    let ordered = Ordered {
        state: &state,
        socket: &mut socket,
        tally: &mut tally,
        events: &mut events,
        peer: &q.peer,
    };
    if ordered.send_orders(&agent, orders, &meta).await {
        report(&state, &mut socket, &mut tally, &mut events).await;
    }
}

/// A birthday punch counted against the client's address and against the agent.
type BirthdayUses = (Use<IpAddr>, Use<ServiceId>);

/// Counts a birthday punch against the client's address and the agent, when the session
/// would be one: the budget and the counted uses (released when the session ends).
fn birthday_budget(
    state: &AppState,
    client: &ClientView,
    agent: &AgentView,
    peer: &ServiceId,
) -> (BirthdayBudget, Option<BirthdayUses>) {
    if !broker::birthday_needed(client, agent) {
        return (BirthdayBudget::Allowed, None);
    }
    let per_client = &state.birthdays.per_client;
    let Some(by_client) = per_client.try_use(client.public.ip()) else {
        return (BirthdayBudget::ClientBusy(per_client.max()), None);
    };
    let per_agent = &state.birthdays.per_agent;
    let Some(by_agent) = per_agent.try_use(peer.clone()) else {
        return (BirthdayBudget::AgentBusy(per_agent.max()), None);
    };
    (BirthdayBudget::Allowed, Some((by_client, by_agent)))
}

/// A session whose orders are being sent.
struct Ordered<'s, 't> {
    state: &'s AppState,
    socket: &'s mut WebSocket,
    tally: &'s mut Tally<'t>,
    events: &'s mut mpsc::Receiver<SessionEvent>,
    peer: &'s str,
}

impl Ordered<'_, '_> {
    /// Sends the agent its order, then the client its own: in punch mode held back so that both
    /// fire together, in plain mode once the agent has armed. False when the session is over.
    async fn send_orders(self, agent: &Target, orders: Orders, meta: &ConnMeta) -> bool {
        let Orders {
            to_agent,
            to_client,
        } = orders;
        let session = to_agent.session;
        if !agent.send(self.state, session, ServerToAgent::Punch(to_agent)) {
            let message = format!("peer '{}' has too many pending sessions", self.peer);
            refuse(self.socket, self.tally, ErrorCode::Busy, message).await;
            return false;
        }
        let mode = to_client.mode;
        let to_client = ServerToClient::Punch(to_client);
        match mode {
            Mode::Punch => {
                let hold = broker::hold_client_order(meta.rtt.unwrap_or_default(), agent.rtt());
                if !hold.is_zero() {
                    tokio::time::sleep(hold).await;
                }
                send(self.socket, &to_client).await
            }
            Mode::Plain => self.plain(agent, session, to_client, meta).await,
        }
    }

    /// Plain mode: passes the agent's challenge to the client and the client's answer back,
    /// then sends the client its order once the agent has armed.
    async fn plain(
        self,
        agent: &Target,
        session: SessionId,
        to_client: ServerToClient,
        meta: &ConnMeta,
    ) -> bool {
        let deadline = Instant::now() + ARM_TIMEOUT;
        loop {
            tokio::select! {
                ev = tokio::time::timeout_at(deadline, self.events.recv()) => match ev {
                    Ok(Some(SessionEvent::Armed)) => {
                        // The seed's caller connects after it got its addresses; the server
                        // never learns how that went.
                        self.tally.forget();
                        return send(self.socket, &to_client).await;
                    }
                    Ok(Some(SessionEvent::Challenge(nonce))) => {
                        let challenge = ServerToClient::Challenge { nonce, you: meta.remote };
                        if !send(self.socket, &challenge).await {
                            return false;
                        }
                    }
                    Ok(Some(SessionEvent::Rejected(code, message))) => {
                        refuse(self.socket, self.tally, code, message).await;
                        return false;
                    }
                    Ok(None) | Err(_) => {
                        let message = format!("peer '{}' did not answer in time", self.peer);
                        refuse(self.socket, self.tally, ErrorCode::PeerGone, message).await;
                        return false;
                    }
                },
                got = self.socket.recv() => match got {
                    Some(Ok(Message::Text(text))) => {
                        if let Ok(ClientToServer::Prove { signature }) =
                            protocol::decode::<ClientToServer>(&text)
                        {
                            let proof = ServerToAgent::PlainProof {
                                session: session.into(),
                                signature,
                            };
                            let _ = agent.send(self.state, session, proof);
                        }
                    }
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return false,
                    Some(Ok(_)) => {}
                },
            }
        }
    }
}

/// Waits for the client's outcome (or the agent's rejection) until the client closes, the
/// session expires or the server stops.
async fn report(
    state: &AppState,
    socket: &mut WebSocket,
    tally: &mut Tally<'_>,
    events: &mut mpsc::Receiver<SessionEvent>,
) {
    let lifetime = tokio::time::sleep(SESSION_LIFETIME);
    tokio::pin!(lifetime);
    loop {
        tokio::select! {
            _ = &mut lifetime => return,
            _ = state.shutdown.cancelled() => return,
            ev = events.recv() => match ev {
                Some(SessionEvent::Rejected(code, message)) => {
                    return refuse(socket, tally, code, message).await;
                }
                Some(SessionEvent::Armed | SessionEvent::Challenge(_)) => {}
                None => return,
            },
            got = socket.recv() => match got {
                Some(Ok(Message::Text(text))) => {
                    if let Err(message) = client_message(tally, &text) {
                        tally.forget();
                        let reply = ServerToClient::Error {
                            code: ErrorCode::BadRequest,
                            message,
                        };
                        send(socket, &reply).await;
                        return;
                    }
                }
                Some(Ok(Message::Binary(_))) => {
                    let reply = ServerToClient::Error {
                        code: ErrorCode::BadRequest,
                        message: "binary frames are not part of the protocol".into(),
                    };
                    send(socket, &reply).await;
                    return;
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => {}
            },
        }
    }
}

/// Records the outcome a client reports, once it passed the checks: a known outcome, a setup
/// time no longer than the session has existed (plus the client's head start), a reason
/// trimmed to one short line. A report that fails them is refused and touches no metric.
fn client_message(tally: &mut Tally<'_>, text: &str) -> Result<(), String> {
    let ClientToServer::Result {
        outcome,
        setup_ms,
        reason,
    } = (match protocol::decode::<ClientToServer>(text) {
        Ok(m) => m,
        Err(e) => return Err(e.to_string()),
    })
    else {
        return Ok(());
    };
    let outcome = match outcome.as_str() {
        "direct" => Outcome::Direct,
        "lan" => Outcome::Lan,
        "relayed" => Outcome::Relayed,
        "failed" => Outcome::Failed,
        other => {
            let other: String = other.chars().take(32).collect();
            return Err(format!("unknown outcome '{}'", other.escape_default()));
        }
    };
    let most = tally.opened.elapsed() + SETUP_CLOCK_SLACK;
    let setup = match setup_ms.map(Duration::from_millis) {
        Some(d) if d > most => {
            return Err(format!(
                "setup_ms {} is longer than this session has existed",
                d.as_millis()
            ));
        }
        d => d.filter(|_| outcome.connected()),
    };
    let reason = reason.map(|r| {
        r.chars()
            .take(MAX_REASON_CHARS)
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect()
    });
    tally.end(outcome, setup, reason);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_open_until_it_is_dropped_and_gets_its_events() {
        let table = Arc::new(SessionTable::new(1));
        let id = SessionId::from_bytes([9; 16]);
        let tickets = RelayTickets::random();
        let (session, mut events) = table.open(id, "cam", Some(tickets));
        assert!(table.is_full());
        assert_eq!(
            table
                .check_ticket(&id, Role::Agent, &tickets.agent)
                .as_deref(),
            Ok("cam")
        );
        assert_eq!(
            table.check_ticket(&id, Role::Client, &tickets.agent),
            Err(TicketRefusal::Wrong),
            "each end has its own ticket"
        );
        assert!(table.deliver(id, SessionEvent::Armed).is_ok());
        let elsewhere = table.deliver(SessionId::from_bytes([8; 16]), SessionEvent::Armed);
        assert!(matches!(elsewhere, Err(SessionEvent::Armed)));
        assert!(matches!(events.try_recv(), Ok(SessionEvent::Armed)));
        assert!(events.try_recv().is_err(), "only its own events");
        drop(session);
        assert_eq!(
            table.check_ticket(&id, Role::Client, &tickets.client),
            Err(TicketRefusal::NotLive)
        );
        assert_eq!(table.len(), 0);
    }

    #[test]
    fn an_outcome_report_is_checked_before_it_touches_the_metrics() {
        let metrics = Metrics::default();
        let mut tally = Tally {
            metrics: &metrics,
            peer: "svc".into(),
            pair: (Mapping::Unknown, Mapping::Unknown),
            strategy: Strategy::Simultaneous,
            opened: Instant::now(),
            done: false,
        };
        for bad in [
            r#"{"type":"result","outcome":"direct","setup_ms":18446744073709551615}"#,
            r#"{"type":"result","outcome":"direct","setup_ms":600000}"#,
            r#"{"type":"result","outcome":"teleported"}"#,
        ] {
            assert!(client_message(&mut tally, bad).is_err(), "{bad}");
        }
        assert!(!tally.done);
        let ok = r#"{"type":"result","outcome":"failed","setup_ms":5,"reason":"a\nb"}"#;
        client_message(&mut tally, ok).unwrap();
        tally.forget();
        let recent = metrics.recent();
        assert_eq!(recent.len(), 1);
        assert_eq!(recent[0].setup_ms, None, "no setup time for a failure");
        assert_eq!(recent[0].reason.as_deref(), Some("a b"));
    }
}
