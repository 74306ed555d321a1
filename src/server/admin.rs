//! The admin listener: `/metrics` in Prometheus text format, `/status.json`, and `/`, a status
//! page (plain HTML, no external assets): online services (searched, a page at a time), recent
//! failures and sessions, success rates by strategy and by NAT pair over time, relay usage.

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
use super::history::{Attempts, Windows};
use super::metrics::{PairStats, Record, RelayUsage};
use super::{AppState, Shared};
use crate::protocol::Strategy;
use crate::protocol::{Auth, Mapping};

/// Services listed on one page of the status page: a table an operator can read at a glance,
/// whatever the number of agents online (100 000 would be megabytes of HTML).
const PAGE_SIZE: usize = 100;

/// The query of the status page and `/status.json`: a search in the ids and the page of the
/// matching services.
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
    /// The same attempts over the last 5 minutes, the last hour and since start.
    windows: Windows<Attempts>,
}

#[derive(Serialize)]
struct StrategyRow {
    strategy: Strategy,
    windows: Windows<Attempts>,
}

#[derive(Serialize)]
struct Status {
    version: &'static str,
    /// One page of the online services matching the query, by id.
    services: Vec<Service>,
    /// Online services matching the query, on all pages.
    services_total: usize,
    /// Online services, matching or not.
    services_online: usize,
    /// The page shown, from 1.
    page: usize,
    /// Pages of [`PAGE_SIZE`] services (at least 1).
    pages: usize,
    sessions_open: usize,
    relay_active: Option<usize>,
    /// The relay's sessions, bytes, refusals and top ids, when the server relays.
    relay: Option<RelayUsage>,
    recent: Vec<Record>,
    /// The most recent attempts that did not connect, newest first.
    failures: Vec<Record>,
    pairs: Vec<PairRow>,
    /// Attempts by strategy over time.
    strategies: Vec<StrategyRow>,
    /// Requests refused, by error code.
    refused: BTreeMap<String, u64>,
    /// The cluster, when the server is a member of one.
    cluster: Option<ClusterStatus>,
}

async fn status(state: &Shared, query: &PageQuery) -> Status {
    let mut matching: Vec<Service> = state
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
    let services_online = matching.len();
    matching.retain(|s| s.id.contains(&query.q));
    let (services, services_total, page, pages) = paginate(matching, query.page);
    let mut pair_windows = state.metrics.pair_windows();
    Status {
        version: env!("CARGO_PKG_VERSION"),
        services,
        services_total,
        services_online,
        page,
        pages,
        sessions_open: state.sessions.len(),
        relay_active: state.relay.as_ref().map(|r| r.active()),
        relay: state.relay.as_ref().map(|_| state.metrics.relay_usage()),
        recent: state.metrics.recent(),
        failures: state.metrics.failures(),
        pairs: state
            .metrics
            .pairs()
            .into_iter()
            .map(|((c, a), stats)| PairRow {
                client_mapping: c,
                agent_mapping: a,
                stats,
                windows: pair_windows.remove(&(c, a)).unwrap_or_default(),
            })
            .collect(),
        strategies: state
            .metrics
            .strategy_windows()
            .into_iter()
            .map(|(strategy, windows)| StrategyRow { strategy, windows })
            .collect(),
        refused: state.metrics.rejected_counts(),
        cluster: match &state.cluster {
            Some(c) => Some(c.status().await),
            None => None,
        },
    }
}

/// Sorts `matching` by id and cuts out page `page` (from 1, clamped to the pages there are):
/// (that page, how many matched, the page, the number of pages).
fn paginate(
    mut matching: Vec<Service>,
    page: Option<usize>,
) -> (Vec<Service>, usize, usize, usize) {
    let total = matching.len();
    let pages = total.div_ceil(PAGE_SIZE).max(1);
    let page = page.unwrap_or(1).clamp(1, pages);
    matching.sort_by(|a, b| a.id.cmp(&b.id));
    let shown = matching
        .into_iter()
        .skip((page - 1) * PAGE_SIZE)
        .take(PAGE_SIZE)
        .collect();
    (shown, total, page, pages)
}

/// A query the page did not write (`page=abc`): the first page of everything.
type QueryResult = Result<Query<PageQuery>, axum::extract::rejection::QueryRejection>;

async fn status_json(State(state): State<AppState>, query: QueryResult) -> Response {
    let query = query.map(|Query(q)| q).unwrap_or_default();
    axum::Json(status(&state, &query).await).into_response()
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

async fn page(State(state): State<AppState>, query: QueryResult) -> Html<String> {
    let query = query.map(|Query(q)| q).unwrap_or_default();
    let st = status(&state, &query).await;
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
        plural(st.services_online, "service"),
        plural(st.sessions_open, "session"),
        st.relay_active
            .map(|n| format!(" · {} relayed", plural(n, "session")))
            .unwrap_or_else(|| " · relay off".into())
    );
    if let Some(c) = &st.cluster {
        cluster(&mut h, c);
    }
    failures(&mut h, &st.failures);
    services(&mut h, &st, &query);
    strategies(&mut h, &st.strategies);
    pairs(&mut h, &st.pairs);
    if let Some(relay) = &st.relay {
        relay_usage(&mut h, relay, st.relay_active.unwrap_or(0));
    }
    recent(&mut h, &st.recent);
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

/// The table of online services: one page of those matching the search, with a search box and
/// buttons for the other pages (forms, no links).
fn services(h: &mut String, st: &Status, query: &PageQuery) {
    h.push_str("<h2>Online services</h2>");
    let (page, pages, online) = (st.page, st.pages, st.services_online);
    let q = esc(&query.q);
    let _ = write!(
        h,
        "<form method=\"get\" id=\"search\"><input name=\"q\" value=\"{q}\" \
         placeholder=\"id contains\"> <button>Search</button></form><p id=\"shown\">{} of {} \
         online{}; page {page} of {pages}</p>",
        plural(st.services_total, "service"),
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
    let services = &st.services;
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

/// The header cells of a table of attempts over time, after the cells naming its rows.
const WINDOW_HEADERS: &str = "<th>window</th><th>attempts</th><th>direct or LAN</th>\
     <th>relayed</th><th>failed</th><th>refused before the punch</th>";

/// Three rows (last 5 min, last hour, since start) of attempts, the first led by `label`
/// (cells spanning the three rows).
fn window_rows(h: &mut String, label: &[String], w: &Windows<Attempts>) {
    let rows = [
        ("last 5 min", &w.last_5_min),
        ("last hour", &w.last_hour),
        ("since start", &w.since_start),
    ];
    for (i, (name, a)) in rows.into_iter().enumerate() {
        h.push_str("<tr>");
        if i == 0 {
            for cell in label {
                let _ = write!(h, "<td rowspan=\"3\">{cell}</td>");
            }
        }
        let direct = if a.direct > 0 { "ok" } else { "" };
        let failed = if a.failed > 0 { "bad" } else { "" };
        let _ = write!(
            h,
            "<td>{name}</td><td>{}</td><td class=\"{direct}\">{}</td><td>{}</td>\
             <td class=\"{failed}\">{}</td><td>{}</td></tr>",
            a.attempts,
            percent(a.direct, a.attempts),
            percent(a.relayed, a.attempts),
            percent(a.failed, a.attempts),
            a.refused
        );
    }
}

/// The note under each table of rates.
const RATES_NOTE: &str = "<p>Rates count only attempts that reached the punch; a refusal \
     (wrong secret, busy service, no path allowed) is counted apart.</p>";

/// The table of success rates by strategy over time.
fn strategies(h: &mut String, rows: &[StrategyRow]) {
    h.push_str("<h2>Success by strategy</h2>");
    if rows.is_empty() {
        h.push_str("<p>No attempt yet.</p>");
        return;
    }
    let _ = write!(
        h,
        "<table id=\"strategies\"><tr><th>strategy</th>{WINDOW_HEADERS}</tr>"
    );
    for r in rows {
        window_rows(h, &[r.strategy.to_string()], &r.windows);
    }
    h.push_str("</table>");
    h.push_str(RATES_NOTE);
}

/// The table of success rates by NAT pair over time.
fn pairs(h: &mut String, pairs: &[PairRow]) {
    h.push_str("<h2>Success by NAT pair</h2>");
    if pairs.is_empty() {
        h.push_str("<p>No attempt yet.</p>");
        return;
    }
    let _ = write!(
        h,
        "<table id=\"pairs\"><tr><th>client NAT</th><th>service NAT</th>{WINDOW_HEADERS}</tr>"
    );
    for p in pairs {
        let label = [p.client_mapping.to_string(), p.agent_mapping.to_string()];
        window_rows(h, &label, &p.windows);
    }
    h.push_str("</table>");
    h.push_str(RATES_NOTE);
}

/// The most recent attempts that did not connect, with why: the first thing to read when
/// something is wrong.
fn failures(h: &mut String, failures: &[Record]) {
    h.push_str("<h2>Recent failures</h2>");
    if failures.is_empty() {
        h.push_str("<p class=\"ok\">No failure yet.</p>");
        return;
    }
    h.push_str(
        "<table id=\"failures\"><tr><th>ended</th><th>service</th><th>outcome</th>\
         <th>reason</th><th>strategy</th><th>client NAT</th><th>service NAT</th></tr>",
    );
    for r in failures {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td class=\"bad\">{}</td><td class=\"bad\">{}</td>\
             <td>{}</td><td>{}</td><td>{}</td></tr>",
            utc(r.at_unix_ms),
            esc(&r.peer),
            r.outcome.as_str(),
            esc(r.reason.as_deref().unwrap_or("(no reason given)")),
            r.strategy,
            r.client_mapping,
            r.agent_mapping
        );
    }
    h.push_str("</table>");
}

/// A byte count for people: "812 B", "3.4 MB".
fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1000.0 && unit < UNITS.len() - 1 {
        v /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// The relay's usage: sessions and bytes over time, refusals and cuts at its caps, the ids
/// with the most relayed bytes.
fn relay_usage(h: &mut String, r: &RelayUsage, active: usize) {
    let e = &r.ended;
    let _ = write!(
        h,
        "<h2>Relay</h2><table id=\"relay\"><tr><th></th><th>sessions</th><th>bytes</th></tr>\
         <tr><td>active now</td><td>{active}</td><td>–</td></tr>\
         <tr><td>ended, last hour</td><td>{}</td><td>{}</td></tr>\
         <tr><td>ended, since start</td><td>{}</td><td>{}</td></tr></table>",
        e.last_hour.sessions,
        bytes(e.last_hour.bytes),
        e.since_start.sessions,
        bytes(e.since_start.bytes)
    );
    let c = &r.caps;
    let _ = write!(
        h,
        "<table id=\"relay-caps\"><tr><th>cap</th><th>since start</th></tr>\
         <tr><td>joins refused: per-address share</td><td>{}</td></tr>\
         <tr><td>joins refused: every slot taken</td><td>{}</td></tr>\
         <tr><td>sessions cut at the lifetime cap</td><td>{}</td></tr>\
         <tr><td>sessions cut idle</td><td>{}</td></tr></table>",
        c.per_address, c.total, c.lifetime, c.idle
    );
    if r.top.is_empty() {
        h.push_str("<p>No session relayed yet.</p>");
        return;
    }
    h.push_str("<table id=\"relay-top\"><tr><th>service</th><th>relayed since start</th></tr>");
    for t in &r.top {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td></tr>",
            esc(&t.id),
            bytes(t.bytes)
        );
    }
    h.push_str("</table><p>Bytes are counted when a relayed session ends.</p>");
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

    /// The status of one page of `all` under `query`, as the handlers build it.
    fn status_of(all: Vec<Service>, query: &PageQuery) -> Status {
        let online = all.len();
        let matching: Vec<Service> = all
            .into_iter()
            .filter(|s| s.id.contains(&query.q))
            .collect();
        let (services, services_total, page, pages) = paginate(matching, query.page);
        Status {
            version: "test",
            services,
            services_total,
            services_online: online,
            page,
            pages,
            sessions_open: 0,
            relay_active: None,
            relay: None,
            recent: Vec::new(),
            failures: Vec::new(),
            pairs: Vec::new(),
            strategies: Vec::new(),
            refused: BTreeMap::new(),
            cluster: None,
        }
    }

    #[test]
    fn services_come_a_page_at_a_time_with_a_search() {
        // Out of order: pages are cut from the services sorted by id.
        let all: Vec<Service> = (0..250)
            .rev()
            .map(|i| service(format!("cam-{i:03}")))
            .collect();
        let query = PageQuery {
            q: String::new(),
            page: Some(3),
        };
        let st = status_of(all, &query);
        assert_eq!((st.services_total, st.page, st.pages), (250, 3, 3));
        assert_eq!(st.services.len(), 50);
        let mut h = String::new();
        services(&mut h, &st, &query);
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
            page: Some(7),
        };
        let all: Vec<Service> = (0..250).map(|i| service(format!("cam-{i:03}"))).collect();
        let st = status_of(all, &query);
        assert_eq!((st.services_total, st.page, st.pages), (0, 1, 1));
        let mut h = String::new();
        services(&mut h, &st, &query);
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
    fn rate_tables_show_three_windows_and_leave_refusals_out() {
        let mut w = Windows::<Attempts>::default();
        w.since_start += Attempts::of(super::super::metrics::Outcome::Direct);
        w.since_start += Attempts::of(super::super::metrics::Outcome::Rejected);
        w.last_hour = w.since_start;
        let row = PairRow {
            client_mapping: Mapping::EndpointIndependent,
            agent_mapping: Mapping::EndpointIndependent,
            stats: PairStats::default(),
            windows: w,
        };
        let mut h = String::new();
        pairs(&mut h, &[row]);
        assert!(
            h.contains(
                "<tr><td rowspan=\"3\">endpoint-independent</td>\
                 <td rowspan=\"3\">endpoint-independent</td><td>last 5 min</td><td>0</td>\
                 <td class=\"\">–</td><td>–</td><td class=\"\">–</td><td>0</td></tr>"
            ),
            "{h}"
        );
        assert!(
            h.contains(
                "<tr><td>last hour</td><td>1</td><td class=\"ok\">100 %</td><td>0 %</td>\
                 <td class=\"\">0 %</td><td>1</td></tr>"
            ),
            "{h}"
        );
        let mut h = String::new();
        strategies(
            &mut h,
            &[StrategyRow {
                strategy: Strategy::BirthdayHard,
                windows: w,
            }],
        );
        assert!(
            h.contains("<tr><td rowspan=\"3\">birthday_hard</td><td>last 5 min</td>"),
            "{h}"
        );
    }

    #[test]
    fn byte_counts_read_as_people_read_them() {
        assert_eq!(bytes(812), "812 B");
        assert_eq!(bytes(3_400_000), "3.4 MB");
        assert_eq!(bytes(u64::MAX), "18446744.1 TB");
    }
}
