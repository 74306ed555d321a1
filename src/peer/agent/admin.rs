//! The agent's admin listener (`expose --admin ADDR`): `/metrics` in Prometheus text format and
//! `/`, a status page (plain HTML, no external assets) with its warm paths and the streams on
//! each. Keep it off public addresses: it names the clients' addresses.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::UNIX_EPOCH;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::budget::WarmPaths;
use super::service::{ServiceHealth, ServiceState};
use crate::server::admin::esc;

#[derive(Clone)]
struct AdminState {
    id: String,
    warm: WarmPaths,
    limit: usize,
    per_address: usize,
    service: Arc<Mutex<Option<ServiceHealth>>>,
}

impl AdminState {
    fn service(&self) -> Option<ServiceHealth> {
        self.service.lock().expect("service lock").clone()
    }
}

/// Serves the admin routes of `agent` on `listener` until `stop`.
pub(super) fn serve(
    listener: TcpListener,
    agent: &super::Agent,
    stop: CancellationToken,
) -> impl Future<Output = std::io::Result<()>> + Send + 'static {
    let state = AdminState {
        id: agent.state.opts.id.clone(),
        warm: agent.warm_paths(),
        limit: agent.state.opts.max_warm_paths,
        per_address: agent.state.opts.max_warm_paths_per_address,
        service: agent.service.clone(),
    };
    let app = Router::new()
        .route("/", get(page))
        .route("/metrics", get(metrics))
        .with_state(state);
    async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
    }
}

/// Upper bounds of the histogram of streams per open warm path.
const STREAM_BUCKETS: [usize; 6] = [0, 1, 2, 4, 16, 64];

async fn metrics(State(s): State<AdminState>) -> Response {
    let c = s.warm.counts();
    let paths = s.warm.paths();
    let mut out = String::new();
    let mut gauge = |name: &str, kind: &str, help: &str, value: String| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    };
    gauge(
        "p2pnc_agent_warm_paths_open",
        "gauge",
        "Warm paths kept open now.",
        c.open.to_string(),
    );
    gauge(
        "p2pnc_agent_warm_paths_limit",
        "gauge",
        "Warm paths the agent keeps at most, in all.",
        s.limit.to_string(),
    );
    gauge(
        "p2pnc_agent_warm_paths_per_address_limit",
        "gauge",
        "Warm paths the agent keeps at most from one client address.",
        s.per_address.to_string(),
    );
    gauge(
        "p2pnc_agent_warm_paths_total",
        "counter",
        "Warm paths served, kept or not.",
        c.paths.to_string(),
    );
    gauge(
        "p2pnc_agent_warm_paths_declined_total",
        "counter",
        "Warm paths not kept because a limit was reached.",
        c.declined.to_string(),
    );
    gauge(
        "p2pnc_agent_warm_streams_open",
        "gauge",
        "Service streams open now on all warm paths.",
        c.open_streams.to_string(),
    );
    gauge(
        "p2pnc_agent_warm_streams_total",
        "counter",
        "Service streams warm paths carried.",
        c.streams.to_string(),
    );
    if let Some(health) = s.service() {
        let up = matches!(health.state(), ServiceState::Accepting);
        gauge(
            "p2pnc_agent_service_up",
            "gauge",
            "Whether the service accepted the last connection to it (probe or stream), 1 or 0.",
            u8::from(up).to_string(),
        );
        gauge(
            "p2pnc_agent_service_refused_total",
            "counter",
            "Client streams not forwarded because the service did not accept them.",
            health.refused_forwards().to_string(),
        );
    }
    let name = "p2pnc_agent_warm_path_streams";
    let _ = writeln!(
        out,
        "# HELP {name} Service streams open per warm path now.\n# TYPE {name} histogram"
    );
    for le in STREAM_BUCKETS {
        let n = paths.iter().filter(|p| p.streams <= le).count();
        let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {n}");
    }
    let sum: usize = paths.iter().map(|p| p.streams).sum();
    let _ = writeln!(
        out,
        "{name}_bucket{{le=\"+Inf\"}} {}\n{name}_sum {sum}\n{name}_count {}",
        paths.len(),
        paths.len()
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

async fn page(State(s): State<AdminState>) -> Html<String> {
    let c = s.warm.counts();
    let paths = s.warm.paths();
    let mut rows = String::new();
    for p in &paths {
        let since = p
            .since
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let _ = write!(
            rows,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{} s</td><td>{since}</td></tr>",
            esc(&p.client.to_string()),
            p.streams,
            if p.kept { "kept" } else { "not kept (limit)" },
            p.age.as_secs()
        );
    }
    if paths.is_empty() {
        rows.push_str("<tr><td colspan=\"5\">no warm path open</td></tr>");
    }
    let service = s.service().map_or(String::new(), |h| {
        format!(
            "<p id=\"service\">service {}: {}; {} client streams refused so far</p>",
            esc(h.address()),
            esc(&service_line(&h.state())),
            h.refused_forwards()
        )
    });
    Html(format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>p2pnc agent {id}</title>\
         </head><body><h1>p2pnc agent <code>{id}</code></h1>{service}\
         <p>Warm paths open: {open} (at most {limit}, {per} from one address); streams open on \
         them: {streams}. Served so far: {paths_total} paths, {streams_total} streams; \
         {declined} paths not kept at a limit.</p>\
         <table border=\"1\"><tr><th>client</th><th>streams open</th><th>kept</th>\
         <th>open for</th><th>since (unix s)</th></tr>{rows}</table></body></html>",
        id = esc(&s.id),
        open = c.open,
        limit = s.limit,
        per = s.per_address,
        streams = c.open_streams,
        paths_total = c.paths,
        streams_total = c.streams,
        declined = c.declined,
    ))
}

/// The service's state in a few words: "accepting", "refusing since 14:03:07 UTC: Connection
/// refused".
fn service_line(state: &ServiceState) -> String {
    match state {
        ServiceState::Unknown => "not tried yet".into(),
        ServiceState::Accepting => "accepting".into(),
        ServiceState::Refusing { since, error } => {
            let secs = since.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
            let (h, m, s) = (secs / 3600 % 24, secs / 60 % 60, secs % 60);
            format!("refusing since {h:02}:{m:02}:{s:02} UTC: {error}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_service_line_gives_the_utc_time_of_the_first_failure() {
        let since = UNIX_EPOCH + Duration::from_secs(86_400 * 3 + 14 * 3600 + 3 * 60 + 7);
        let state = ServiceState::Refusing {
            since,
            error: "Connection refused".into(),
        };
        assert_eq!(
            service_line(&state),
            "refusing since 14:03:07 UTC: Connection refused"
        );
        assert_eq!(service_line(&ServiceState::Accepting), "accepting");
    }
}
