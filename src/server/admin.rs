//! The admin listener: `/metrics` in Prometheus text format, `/status.json`, and `/`, a status
//! page (plain HTML, no external assets) listing online services, recent sessions and success
//! rates by NAT pair.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;

use super::cluster::ClusterStatus;
use super::metrics::{PairStats, Record};
use super::{AppState, Shared};
use crate::protocol::{Auth, Mapping};

/// Services listed on one page of the status page: a table an operator can read at a glance,
/// whatever the number of agents online (100 000 would be megabytes of HTML).
const PAGE_SIZE: usize = 100;

/// The status page's query: a search in the ids and the page of the matching services.
#[derive(serde::Deserialize, Default)]
struct PageQuery {
    /// Only ids containing this text.
    #[serde(default)]
    q: String,
    /// The page, from 1.
    page: Option<usize>,
}

/// The admin routes.
pub(super) fn router(state: Arc<Shared>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/metrics", get(metrics))
        .route("/status.json", get(status_json))
        .with_state(state)
}

/// One online service, as the status shows it.
#[derive(Serialize)]
struct Service {
    id: String,
    public: String,
    mapping: Mapping,
    auth: Auth,
    rtt_ms: Option<f64>,
    since_unix_ms: u64,
}

#[derive(Serialize)]
struct PairRow {
    client_mapping: Mapping,
    agent_mapping: Mapping,
    #[serde(flatten)]
    stats: PairStats,
}

#[derive(Serialize)]
struct Status {
    version: &'static str,
    services: Vec<Service>,
    sessions_open: usize,
    relay_active: Option<usize>,
    recent: Vec<Record>,
    pairs: Vec<PairRow>,
    /// Requests refused, by error code.
    refused: BTreeMap<String, u64>,
    /// The cluster, when the server is a member of one.
    cluster: Option<ClusterStatus>,
}

async fn status(state: &Shared) -> Status {
    let services = state
        .registry
        .snapshot()
        .into_iter()
        .map(|a| Service {
            id: a.id.to_string(),
            public: a.public.to_string(),
            mapping: a.mapping,
            auth: a.auth,
            rtt_ms: a.rtt.map(|r| r.as_micros() as f64 / 1000.0),
            since_unix_ms: a.since_unix_ms,
        })
        .collect();
    Status {
        version: env!("CARGO_PKG_VERSION"),
        services,
        sessions_open: state.sessions.len(),
        relay_active: state.relay.as_ref().map(|r| r.active()),
        recent: state.metrics.recent(),
        pairs: state
            .metrics
            .pairs()
            .into_iter()
            .map(|((c, a), stats)| PairRow {
                client_mapping: c,
                agent_mapping: a,
                stats,
            })
            .collect(),
        refused: state.metrics.rejected_counts(),
        cluster: match &state.cluster {
            Some(c) => Some(c.status().await),
            None => None,
        },
    }
}

async fn status_json(State(state): State<AppState>) -> Response {
    axum::Json(status(&state).await).into_response()
}

async fn metrics(State(state): State<AppState>) -> Response {
    let agents = state.registry.len() as u64;
    let sessions = state.sessions.len() as u64;
    let relay = state.relay.as_ref().map_or(0, |r| r.active()) as u64;
    let mut text = state.metrics.render(&[
        ("p2pnc_agents_online", "Agents registered now.", agents),
        (
            "p2pnc_sessions_open",
            "Client control connections open now.",
            sessions,
        ),
        (
            "p2pnc_relay_sessions_active",
            "Relayed sessions open now.",
            relay,
        ),
    ]);
    if let Some(cluster) = &state.cluster {
        cluster.render_metrics(&mut text);
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// Escapes text for HTML (the agent's status page uses it too).
pub(crate) fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn utc(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    format!("{h:02}:{m:02}:{s:02} UTC")
}

fn percent(part: u64, whole: u64) -> String {
    if whole == 0 {
        "–".into()
    } else {
        format!("{:.0} %", part as f64 * 100.0 / whole as f64)
    }
}

/// "1 service", "2 services".
fn plural(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

async fn page(
    State(state): State<AppState>,
    query: Result<Query<PageQuery>, axum::extract::rejection::QueryRejection>,
) -> Html<String> {
    // A query the page did not write (page=abc): the first page of everything.
    let query = query.map(|Query(q)| q).unwrap_or_default();
    let mut st = status(&state).await;
    let mut h = String::with_capacity(8192);
    let _ = write!(
        h,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"10\"><title>p2pnc status</title><style>\
         body{{font:14px system-ui,sans-serif;margin:2em;color:#222}}\
         table{{border-collapse:collapse;margin:.5em 0 2em}}\
         td,th{{border:1px solid #ccc;padding:.3em .7em;text-align:left}}\
         th{{background:#f3f3f3}}.ok{{color:#176117}}.bad{{color:#a11}}\
         </style></head><body><h1>p2pnc rendezvous server {}</h1>\
         <p>{} online · {} open{}</p>",
        st.version,
        plural(st.services.len(), "service"),
        plural(st.sessions_open, "session"),
        st.relay_active
            .map(|n| format!(" · {} relayed", plural(n, "session")))
            .unwrap_or_else(|| " · relay off".into())
    );
    if let Some(c) = &st.cluster {
        cluster(&mut h, c);
    }
    let online = st.services.len();
    st.services.retain(|s| s.id.contains(&query.q));
    st.services.sort_by(|a, b| a.id.cmp(&b.id));
    services(&mut h, &st.services, online, &query);
    recent(&mut h, &st.recent);
    pairs(&mut h, &st.pairs);
    refused(&mut h, &st.refused);
    h.push_str("</body></html>");
    Html(h)
}

/// The cluster: the store's state, this member's cross-server traffic, every member.
fn cluster(h: &mut String, c: &ClusterStatus) {
    let _ = write!(
        h,
        "<h2>Cluster</h2><p id=\"cluster\">this server: {} ({}) · store {} <span class=\"{}\">{}</span> \
         ({:.2} ms) · {} outages · {} cross-server connects brokered here · {} orders routed \
         in from other servers</p>",
        esc(&c.member),
        esc(&c.advertise),
        esc(&c.store),
        if c.store_up { "ok" } else { "bad" },
        if c.store_up {
            "reachable"
        } else {
            "UNREACHABLE: serving local agents only, registrations refused"
        },
        c.store_rtt_ms,
        c.outages,
        c.cross_connects,
        c.orders_routed_in
    );
    match &c.members {
        None => h.push_str("<p>Members unknown while the store is unreachable.</p>"),
        Some(members) => {
            h.push_str(
                "<table id=\"members\"><tr><th>member</th><th>address</th><th>agents</th>\
                 <th>store RTT</th><th>up since</th><th>version</th></tr>",
            );
            for m in members {
                let _ = write!(
                    h,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.2} ms</td><td>{}</td><td>{}</td></tr>",
                    esc(&m.member),
                    m.advertise,
                    m.agents,
                    m.redis_rtt_us as f64 / 1000.0,
                    utc(m.since_unix_ms),
                    esc(&m.version)
                );
            }
            h.push_str("</table>");
        }
    }
}

/// The table of online services: those matching the search, one page of them, with a search
/// box and buttons for the other pages (forms, no links).
fn services(h: &mut String, matching: &[Service], online: usize, query: &PageQuery) {
    h.push_str("<h2>Online services</h2>");
    let pages = matching.len().div_ceil(PAGE_SIZE).max(1);
    let page = query.page.unwrap_or(1).clamp(1, pages);
    let q = esc(&query.q);
    let _ = write!(
        h,
        "<form method=\"get\" id=\"search\"><input name=\"q\" value=\"{q}\" \
         placeholder=\"id contains\"> <button>Search</button></form><p id=\"shown\">{} of {} \
         online{}; page {page} of {pages}</p>",
        plural(matching.len(), "service"),
        online,
        if query.q.is_empty() {
            String::new()
        } else {
            format!(" match '{q}'")
        },
    );
    if pages > 1 {
        let _ = write!(
            h,
            "<form method=\"get\" id=\"pages\"><input type=\"hidden\" name=\"q\" value=\"{q}\">"
        );
        if page > 1 {
            let _ = write!(
                h,
                "<button name=\"page\" value=\"{}\">previous</button> ",
                page - 1
            );
        }
        if page < pages {
            let _ = write!(
                h,
                "<button name=\"page\" value=\"{}\">next</button>",
                page + 1
            );
        }
        h.push_str("</form>");
    }
    let services = &matching[(page - 1) * PAGE_SIZE..matching.len().min(page * PAGE_SIZE)];
    if online == 0 {
        h.push_str("<p>No service is online.</p>");
    } else if services.is_empty() {
        h.push_str("<p>No online service matches.</p>");
    } else {
        h.push_str(
            "<table id=\"services\"><tr><th>id</th><th>public endpoint</th><th>NAT mapping</th>\
             <th>secret</th><th>RTT</th><th>online since</th></tr>",
        );
        for s in services {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&s.id),
                esc(&s.public),
                s.mapping,
                if s.auth == Auth::Secret {
                    "yes"
                } else {
                    "public"
                },
                s.rtt_ms
                    .map(|r| if r < 1.0 {
                        format!("{r:.2} ms")
                    } else {
                        format!("{r:.1} ms")
                    })
                    .unwrap_or_else(|| "–".into()),
                utc(s.since_unix_ms)
            );
        }
        h.push_str("</table>");
    }
}

/// The table of recent outcome records.
fn recent(h: &mut String, recent: &[Record]) {
    h.push_str("<h2>Recent sessions</h2>");
    if recent.is_empty() {
        h.push_str("<p>No session yet.</p>");
    } else {
        h.push_str(
            "<table id=\"sessions\"><tr><th>ended</th><th>service</th><th>outcome</th>\
             <th>setup</th><th>strategy</th><th>client NAT</th><th>service NAT</th>\
             <th>reason</th></tr>",
        );
        for r in recent {
            let class = if r.outcome.connected() { "ok" } else { "bad" };
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td class=\"{class}\">{}</td><td>{}</td><td>{}</td>\
                 <td>{}</td><td>{}</td><td>{}</td></tr>",
                utc(r.at_unix_ms),
                esc(&r.peer),
                r.outcome.as_str(),
                r.setup_ms
                    .map(|m| format!("{m} ms"))
                    .unwrap_or_else(|| "–".into()),
                r.strategy,
                r.client_mapping,
                r.agent_mapping,
                esc(r.reason.as_deref().unwrap_or(""))
            );
        }
        h.push_str("</table>");
    }
}

/// The table of success rates by NAT pair.
fn pairs(h: &mut String, pairs: &[PairRow]) {
    h.push_str("<h2>Success by NAT pair</h2>");
    if pairs.is_empty() {
        h.push_str("<p>No attempt yet.</p>");
    } else {
        h.push_str(
            "<table id=\"pairs\"><tr><th>client NAT</th><th>service NAT</th><th>attempts</th>\
             <th>direct or LAN</th><th>relayed</th><th>refused before the punch</th></tr>",
        );
        for p in pairs {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                p.client_mapping,
                p.agent_mapping,
                p.stats.attempts,
                percent(p.stats.direct, p.stats.attempts),
                percent(p.stats.relayed, p.stats.attempts),
                p.stats.refused
            );
        }
        h.push_str(
            "</table><p>Rates count only attempts that reached the punch; a refusal (wrong \
             secret, busy service, no path allowed) is counted apart.</p>",
        );
    }
}

/// The table of refused requests by reason.
fn refused(h: &mut String, refused: &BTreeMap<String, u64>) {
    h.push_str("<h2>Refused requests</h2>");
    if refused.is_empty() {
        h.push_str("<p>No request refused.</p>");
    } else {
        h.push_str("<table id=\"refused\"><tr><th>reason</th><th>requests</th></tr>");
        for (reason, n) in refused {
            let _ = write!(
                h,
                "<tr><td class=\"bad\">{}</td><td>{n}</td></tr>",
                esc(reason)
            );
        }
        h.push_str("</table>");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(id: String) -> Service {
        Service {
            id,
            public: "198.51.100.7:40000".into(),
            mapping: Mapping::EndpointIndependent,
            auth: Auth::Secret,
            rtt_ms: None,
            since_unix_ms: 0,
        }
    }

    #[test]
    fn services_come_a_page_at_a_time_with_a_search() {
        let all: Vec<Service> = (0..250).map(|i| service(format!("cam-{i:03}"))).collect();
        let query = PageQuery {
            q: String::new(),
            page: Some(3),
        };
        let mut h = String::new();
        services(&mut h, &all, 250, &query);
        assert!(h.contains("250 services of 250 online; page 3 of 3"), "{h}");
        assert!(
            h.contains("<button name=\"page\" value=\"2\">previous</button>"),
            "{h}"
        );
        assert!(!h.contains(">next</button>"), "{h}");
        assert!(
            h.contains("<td>cam-200</td>") && h.contains("<td>cam-249</td>"),
            "{h}"
        );
        assert!(!h.contains("<td>cam-199</td>"), "{h}");

        let query = PageQuery {
            q: "<x>".into(),
            page: None,
        };
        let mut h = String::new();
        services(&mut h, &[], 250, &query);
        assert!(
            h.contains("0 services of 250 online match '&lt;x&gt;'; page 1 of 1"),
            "{h}"
        );
        assert!(h.contains("<p>No online service matches.</p>"), "{h}");
        assert!(
            h.contains("value=\"&lt;x&gt;\""),
            "the search stays in its box: {h}"
        );
    }

    #[test]
    fn pair_rates_leave_refusals_out() {
        let row = PairRow {
            client_mapping: Mapping::EndpointIndependent,
            agent_mapping: Mapping::EndpointIndependent,
            stats: PairStats {
                attempts: 1,
                direct: 1,
                relayed: 0,
                refused: 1,
            },
        };
        let mut h = String::new();
        pairs(&mut h, &[row]);
        assert!(
            h.contains(
                "<tr><td>endpoint-independent</td><td>endpoint-independent</td><td>1</td>\
                 <td>100 %</td><td>0 %</td><td>1</td></tr>"
            ),
            "{h}"
        );
    }
}
