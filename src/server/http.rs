//! The HTTP side of the control port: admission (TLS, the server token, request rates), the
//! endpoints, and the upgrades to the two WebSockets and to the relay.

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use super::accept::ConnMeta;
use super::limits::RateLimiter;
use super::metrics::RelayCap;
use super::relay::{Ended, JoinRefused};
use super::session::TicketRefusal;
use super::{AppState, Shared, agent_conn, session};
use crate::protocol::{
    self, ConnectQuery, ErrorBody, ErrorCode, ExposeQuery, JoinQuery, JoinQueryError,
    MAX_MESSAGE_BYTES, connect_message,
};

/// Read buffer of a control WebSocket. What agents and clients send is a few hundred bytes at
/// most (a longer message grows the buffer for as long as it needs), and every online agent
/// holds one: tungstenite's default of 128 KiB, zero-filled on the first read, would cost
/// 128 KiB of memory per agent. Writes go out at once (a write buffer size of 0): there is
/// nothing to batch.
const WS_READ_BUFFER: usize = 512;

/// The control port's routes.
pub(super) fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/v1/health", get(health))
        .route("/v1/peers/{id}", get(peer))
        .route("/v1/whoami", get(whoami))
        .route(protocol::EXPOSE_PATH, get(expose))
        .route(protocol::CONNECT_PATH, get(connect))
        .route(protocol::RELAY_PATH, get(relay_join))
        .fallback(|| async { error(ErrorCode::NotFound, "no such endpoint".into()) })
        .method_not_allowed_fallback(|| async {
            error(
                ErrorCode::BadRequest,
                "method not allowed: every endpoint takes GET".into(),
            )
        })
        .layer(axum::middleware::map_response(one_request_per_connection))
        .with_state(state)
}

/// Every answer but an upgrade closes its connection: one request head per connection, so
/// the head limits of `accept` (deadline, size) cover every request a connection makes.
async fn one_request_per_connection(mut response: Response) -> Response {
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        response.headers_mut().insert(
            header::CONNECTION,
            header::HeaderValue::from_static("close"),
        );
    }
    response
}

impl Shared {
    /// The refusal of a request that lacks the server's token, if the server has one.
    fn token_refusal(&self, headers: &HeaderMap) -> Option<Response> {
        let want = self.config.token.as_ref()?;
        let got = headers
            .get(header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.strip_prefix("Bearer "));
        match got {
            Some(got) if constant_time_eq(got, want) => None,
            Some(_) => Some(self.reject(ErrorCode::Unauthorized, "server token rejected".into())),
            None => Some(self.reject(
                ErrorCode::Unauthorized,
                "this server requires a token (--token or P2PNC_TOKEN)".into(),
            )),
        }
    }

    /// Whether the request carries a token this server does not check (it has none).
    fn token_unused(&self, headers: &HeaderMap) -> bool {
        self.config.token.is_none() && headers.contains_key(header::AUTHORIZATION)
    }

    /// The refusal of an expose or connect request that lacks the token or comes too fast.
    fn admission_refusal(
        &self,
        headers: &HeaderMap,
        from: &ConnMeta,
        rate: &RateLimiter,
        what: &str,
    ) -> Option<Response> {
        if self.config.tls.is_some() && !from.tls {
            return Some(self.reject(
                ErrorCode::BadRequest,
                "this server speaks TLS: use an https:// server URL".into(),
            ));
        }
        if let Some(refused) = self.token_refusal(headers) {
            return Some(refused);
        }
        (!rate.allow(from.remote.ip())).then(|| {
            self.reject(
                ErrorCode::RateLimited,
                format!("too many {what}; slow down"),
            )
        })
    }

    /// Refuses a request before any upgrade, counting it.
    fn reject(&self, code: ErrorCode, message: String) -> Response {
        self.metrics.rejected(&code.to_string());
        error(code, message)
    }
}

/// An error response: the code's status and `{"error": CODE, "message": TEXT}`.
fn error(code: ErrorCode, message: String) -> Response {
    let status = StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
    (
        status,
        Json(ErrorBody {
            error: code,
            message,
        }),
    )
        .into_response()
}

/// Sends one control message; false when the connection is gone.
pub(super) async fn send<T: serde::Serialize>(socket: &mut WebSocket, msg: &T) -> bool {
    socket
        .send(Message::Text(protocol::encode(msg).into()))
        .await
        .is_ok()
}

async fn index() -> &'static str {
    concat!(
        "p2pnc rendezvous server ",
        env!("CARGO_PKG_VERSION"),
        "\nEndpoints: /v1/health, /v1/peers/{id}, /v1/expose (WebSocket), /v1/connect (WebSocket)\n"
    )
}

async fn health(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "ok": true,
        "version": env!("CARGO_PKG_VERSION"),
        "protocol": protocol::PROTOCOL_VERSION,
        "agents": state.registry.len(),
        "sessions": state.sessions.len(),
    }))
}

async fn whoami(ConnectInfo(meta): ConnectInfo<ConnMeta>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "addr": meta.remote }))
}

async fn peer(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = state.token_refusal(&headers) {
        return refused;
    }
    let online = state.registry.contains(&id)
        || match (&state.cluster, protocol::ServiceId::new(&id)) {
            (Some(cluster), Ok(id)) => matches!(cluster.lookup(&id).await, Ok(Some(_))),
            _ => false,
        };
    if online {
        Json(serde_json::json!({"id": id, "online": true})).into_response()
    } else {
        error(ErrorCode::PeerOffline, format!("peer '{id}' is not online"))
    }
}

/// Applies the frame limits and upgrades, or explains that a WebSocket upgrade was expected.
fn upgrade(
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    then: impl FnOnce(WebSocketUpgrade) -> Response,
) -> Response {
    match ws {
        Ok(ws) => then(
            ws.max_message_size(MAX_MESSAGE_BYTES)
                .max_frame_size(MAX_MESSAGE_BYTES)
                .read_buffer_size(WS_READ_BUFFER)
                .write_buffer_size(0),
        ),
        Err(e) => error(
            ErrorCode::BadRequest,
            format!("this endpoint needs a WebSocket upgrade: {e}"),
        ),
    }
}

/// `GET /v1/expose?...`: an agent's registration.
async fn expose(
    State(state): State<AppState>,
    ConnectInfo(meta): ConnectInfo<ConnMeta>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    if let Some(refused) =
        state.admission_refusal(&headers, &meta, &state.expose_rate, "registrations")
    {
        return refused;
    }
    let q = match ExposeQuery::parse(query.as_deref().unwrap_or("")) {
        Ok(q) => q,
        Err(e) => return state.reject(e.code, e.message),
    };
    if let Err(refused) = state.registry.admit(&q.id, q.verifier.as_ref(), q.takeover) {
        return state.reject(refused.code(), refused.to_string());
    }
    // Without the cluster store no id can be checked against the other members: refused at
    // once rather than after the challenge.
    if let Some(cluster) = &state.cluster
        && !cluster.is_up()
    {
        let refused = super::cluster::ClaimRefused::StoreDown(q.id.clone());
        return state.reject(refused.code(), refused.to_string());
    }
    let unused = state.token_unused(&headers);
    let answer = upgrade(ws, |ws| {
        ws.on_upgrade(move |socket| agent_conn::agent_connection(state, meta, q, socket))
    });
    note_unused_token(answer, unused)
}

/// `GET /v1/connect?...`: a client's connect attempt.
async fn connect(
    State(state): State<AppState>,
    ConnectInfo(meta): ConnectInfo<ConnMeta>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    if let Some(refused) =
        state.admission_refusal(&headers, &meta, &state.connect_rate, "connect requests")
    {
        return refused;
    }
    let q = match ConnectQuery::parse(query.as_deref().unwrap_or("")) {
        Ok(q) => q,
        Err(e) => return state.reject(e.code, e.message),
    };
    let verifier = match state.find_agent(&q.peer).await {
        Ok(Some(agent)) => Some(agent.view().verifier),
        Ok(None) => None,
        Err(_) => {
            let message = super::store_down_message(&q.peer);
            return state.reject(ErrorCode::Busy, message);
        }
    };
    if let Err((code, message)) = state.check_proof(&q, verifier) {
        return state.reject(code, message);
    }
    if state.sessions.is_full() {
        return state.reject(
            ErrorCode::Busy,
            format!(
                "server busy: too many connect attempts at once (limit {})",
                state.config.max_pending_connects
            ),
        );
    }
    let unused = state.token_unused(&headers);
    let answer = upgrade(ws, |ws| {
        ws.on_upgrade(move |socket| session::client_session(state, meta, q, socket))
    });
    note_unused_token(answer, unused)
}

/// Tells a peer whose token this server did not check (it has none) so, on the upgrade.
fn note_unused_token(mut answer: Response, unused: bool) -> Response {
    if unused {
        answer.headers_mut().insert(
            protocol::TOKEN_HEADER,
            header::HeaderValue::from_static(protocol::TOKEN_UNUSED),
        );
    }
    answer
}

/// `GET /v1/relay?v=1&session=S&role=client|agent&ticket=T` with `Upgrade: p2pnc-relay`.
async fn relay_join(
    State(state): State<AppState>,
    ConnectInfo(meta): ConnectInfo<ConnMeta>,
    RawQuery(query): RawQuery,
    mut req: axum::extract::Request,
) -> Response {
    let Some(hub) = &state.relay else {
        return state.reject(
            ErrorCode::BadRequest,
            "this server does not relay (start it with --relay)".into(),
        );
    };
    let join = match protocol::parse_join_query(query.as_deref().unwrap_or("")) {
        Ok(join) => Some(join),
        // Not a session id: it names no live session, as the check below tells.
        Err(JoinQueryError::UnknownSession) => None,
        Err(e @ JoinQueryError::Malformed) => {
            return state.reject(ErrorCode::BadRequest, e.to_string());
        }
    };
    let upgrade_ok = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|h| h.to_str().ok())
        .is_some_and(|h| h.eq_ignore_ascii_case(protocol::UPGRADE_TOKEN));
    if !upgrade_ok {
        return state.reject(
            ErrorCode::BadRequest,
            format!("relay needs 'Upgrade: {}'", protocol::UPGRADE_TOKEN),
        );
    }
    let unauthorized = || {
        state.reject(
            ErrorCode::Unauthorized,
            "relay join without the ticket of this end's punch order".into(),
        )
    };
    if join.as_ref().is_some_and(|j| j.ticket.is_none()) {
        return unauthorized();
    }
    let Some(JoinQuery {
        session,
        role,
        ticket: Some(ticket),
    }) = join
    else {
        return state.reject(ErrorCode::PeerGone, "no such live session".into());
    };
    let peer = match state.sessions.check_ticket(&session, role, &ticket) {
        Ok(peer) => peer,
        Err(TicketRefusal::NotLive) => {
            return state.reject(ErrorCode::PeerGone, "no such live session".into());
        }
        Err(TicketRefusal::Wrong) => return unauthorized(),
    };
    let joined = match hub.join(session, role, meta.remote.ip()) {
        Ok(j) => j,
        Err(JoinRefused::Duplicate) => {
            return state.reject(ErrorCode::BadRequest, "this end already joined".into());
        }
        Err(busy) => {
            state.metrics.relay_refused(match busy {
                JoinRefused::PerIp { .. } => RelayCap::PerAddress,
                _ => RelayCap::Total,
            });
            return state.reject(ErrorCode::Busy, busy.to_string());
        }
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let task_state = state.clone();
    state.tasks.spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let io = Box::new(hyper_util::rt::TokioIo::new(upgraded));
                if let Some(hub) = &task_state.relay
                    && let Some((carried, ended)) = hub.run(joined, io).await
                {
                    task_state.metrics.relayed_bytes(carried);
                    let cut = match ended {
                        Ended::Closed => None,
                        Ended::Lifetime => Some(RelayCap::Lifetime),
                        Ended::Idle => Some(RelayCap::Idle),
                    };
                    task_state.metrics.relay_ended(&peer, carried, cut);
                }
            }
            Err(e) => tracing::debug!("relay upgrade failed: {e}"),
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, protocol::UPGRADE_TOKEN)
        .body(axum::body::Body::empty())
        .expect("static response")
}

/// Compares a credential in constant time (for equal lengths).
pub(super) fn constant_time_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Shared {
    /// Checks a connect request against its agent before anything about the agent is used:
    /// online; with a verifier, a proof that verifies and a nonce not seen before. A client
    /// that cannot prove the secret learns nothing but that.
    /// `verifier` is the agent's as found: `None` when it is offline, `Some(None)` when it is
    /// public.
    fn check_proof(
        &self,
        q: &ConnectQuery,
        verifier: Option<Option<protocol::Verifier>>,
    ) -> Result<(), (ErrorCode, String)> {
        let Some(verifier) = verifier else {
            let message = format!("peer '{}' is not online", q.peer);
            return Err((ErrorCode::PeerOffline, message));
        };
        let Some(verifier) = verifier else {
            return Ok(()); // A public agent: anyone may ask.
        };
        let Some(proof) = &q.proof else {
            let message = format!("peer '{}' requires a secret", q.peer);
            return Err((ErrorCode::SecretRequired, message));
        };
        let message = connect_message(&q.peer, q.mode, &q.nonce);
        if !verifier.verifies(&message, proof) {
            return Err((ErrorCode::SecretRejected, "secret rejected".into()));
        }
        if !self.replay.fresh(q.nonce) {
            return Err((ErrorCode::SecretRejected, "replayed request".into()));
        }
        Ok(())
    }
}
