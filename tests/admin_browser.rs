//! The admin status page in a real browser: headless Chromium (Debian's `chromium`) loads `/`
//! from a real `p2pnc server --admin` that has a real agent online, one connect that worked and
//! two that failed, and the test checks what a person sees there: the rendered DOM, every
//! request the browser made, and a screenshot.
//!
//! Without Chromium the test says it was skipped; under CI (`CI` set) it fails instead.
//! Linux only: it runs Debian's Chromium in a process group of its own.

#![cfg(target_os = "linux")]

mod common;

use std::io::{BufRead, BufReader, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{Echo, http_get, wait_peer_status};
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_p2pnc");
const CHROMIUM: &str = "/usr/bin/chromium";
/// Chromium normally finishes in a few seconds; past this it is taken to hang and is killed.
const CHROMIUM_TIMEOUT: Duration = Duration::from_secs(90);
/// Generous bound for a `p2pnc` process of the test to finish.
const PROC_TIMEOUT: Duration = Duration::from_secs(30);
/// Flags that keep headless Chromium from stalling on a closed network, and from resolving any
/// name but the loopback address the page comes from.
const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    // The browser's own form-field predictions (asked of its vendor for any page with a
    // form, such as the search box): not the page's doing.
    "--disable-features=AutofillServerCommunication",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
];
/// The service id: letters outside ASCII and every punctuation an id may have, which a person
/// must see as they are (ids cannot hold characters HTML must escape; `tests/admin.rs` checks
/// that the page escapes the free text of clients' reports).
const ID: &str = "front-door.cäm~co_1";
const SECRET: &str = "pw-4c1b";
/// The reason the failed attempt reports.
const FAILURE: &str = "no direct path to 'x': every candidate timed out";
/// Screenshot size, CSS pixels.
const WIDTH: u32 = 1280;
const HEIGHT: u32 = 1000;

#[tokio::test(flavor = "multi_thread")]
async fn the_status_page_shows_services_sessions_and_nat_pairs_in_chromium() {
    if !chromium_available() {
        return;
    }
    let server = Server::start().await;
    let echo = Echo::start().await;
    let agent = expose(server.control, ID, echo.addr, SECRET);
    wait_peer_status(server.control, &path_escape(ID), 200).await;

    // One connect that works, one with a wrong secret, one to an id nobody registered.
    let ok = connect_stdio(server.control, ID, Some(SECRET), b"hello through p2pnc").await;
    let ok_err = String::from_utf8_lossy(&ok.stderr).to_string();
    assert!(ok.status.success(), "{ok_err}");
    assert_eq!(ok.stdout, b"hello through p2pnc");
    let (path, setup_ms) = path_and_setup_of(&ok_err, ID);
    let bad = connect_stdio(server.control, ID, Some("wrong"), b"x").await;
    let bad_err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        !bad.status.success() && bad_err.contains("secret rejected"),
        "{bad_err}"
    );
    let gone = connect_stdio(server.control, "nobody-here", None, b"x").await;
    let gone_err = String::from_utf8_lossy(&gone.stderr);
    assert!(
        !gone.status.success() && gone_err.contains("is not online"),
        "{gone_err}"
    );
    // A client that proved the secret, got its punch order and reports that nothing
    // connected: a failure with its reason.
    report_failure(server.control, ID, SECRET, FAILURE).await;
    // The client reports its outcome just before it exits: wait until the server has both.
    wait_for_outcomes(server.admin, &[path.as_str(), "failed"]).await;

    let url = format!("http://{}/", server.admin);
    let work = scratch_dir("admin-browser");
    let netlog = work.join("netlog.json");

    // What a person reads: the rendered DOM.
    let out = chromium(
        &work,
        &[
            format!("--log-net-log={}", netlog.display()),
            "--dump-dom".into(),
            url.clone(),
        ],
    )
    .await;
    let dom = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(dom.contains("</html>"), "no DOM from chromium:\n{dom}");
    let text = visible_text(&dom);
    assert!(text.contains("p2pnc rendezvous server"), "{text}");
    assert!(text.contains("1 service online"), "{text}");

    let services = table(&dom, "services");
    assert_eq!(services.len(), 2, "a header and one service: {services:?}");
    let svc = row_map(&services, 1);
    assert_eq!(svc["id"], ID, "the id as the agent registered it");
    assert_eq!(svc["public endpoint"], agent_endpoint(&server).await);
    assert_eq!(svc["NAT mapping"], "endpoint-independent");
    assert_eq!(svc["secret"], "yes");
    assert!(svc["online since"].ends_with(" UTC"), "{svc:?}");

    // The wrong secret was refused before any session existed (it shows among the refused
    // requests below), so the NATs' success rate counts only the connect that punched.
    let sessions = table(&dom, "sessions");
    assert_eq!(sessions.len(), 3, "a header and two sessions: {sessions:?}");
    let rows: Vec<_> = (1..sessions.len()).map(|i| row_map(&sessions, i)).collect();
    let connected = rows
        .iter()
        .find(|r| r["outcome"] == path)
        .unwrap_or_else(|| panic!("no {path} session: {rows:?}"));
    assert_eq!(connected["service"], ID);
    assert_eq!(
        connected["setup"],
        format!("{setup_ms} ms"),
        "the setup time the client printed"
    );
    assert_eq!(connected["strategy"], "simultaneous");
    assert_eq!(connected["client NAT"], "endpoint-independent");

    // The failures come first, each with its reason.
    let failures = table(&dom, "failures");
    assert_eq!(failures.len(), 2, "a header and one failure: {failures:?}");
    let failure = row_map(&failures, 1);
    assert_eq!(failure["service"], ID);
    assert_eq!(failure["outcome"], "failed");
    assert_eq!(failure["reason"], FAILURE);
    assert!(
        dom.find("<table id=\"failures\"") < dom.find("<table id=\"services\""),
        "failures are read first"
    );

    // Rates by NAT pair and by strategy, each over the last 5 minutes, the last hour and
    // since start (three rows, the first naming the pair or strategy).
    // The reporting client never probed its NAT: its attempt is a pair of its own.
    let pairs = table(&dom, "pairs");
    assert_eq!(
        pairs.len(),
        7,
        "two NAT pairs, three windows each: {pairs:?}"
    );
    let first = (1..pairs.len())
        .step_by(3)
        .find(|&i| pairs[i][0] == "endpoint-independent")
        .unwrap_or_else(|| panic!("no cone client: {pairs:?}"));
    let pair = row_map(&pairs, first);
    assert_eq!(pair["client NAT"], "endpoint-independent");
    assert_eq!(pair["service NAT"], "endpoint-independent");
    assert_eq!(pair["window"], "last 5 min");
    assert_eq!(pair["attempts"], "1");
    assert_eq!(pair["direct or LAN"], "100 %");
    assert_eq!(pair["relayed"], "0 %");
    assert_eq!(pair["failed"], "0 %");
    assert_eq!(pair["refused before the punch"], "0");
    let windows: Vec<&str> = pairs[first..first + 3]
        .iter()
        .map(|r| r[r.len() - 6].as_str())
        .collect();
    assert_eq!(windows, ["last 5 min", "last hour", "since start"]);
    assert!(
        pairs[first..first + 3]
            .iter()
            .all(|r| r[r.len() - 5] == "1"),
        "{pairs:?}"
    );
    let strategies = table(&dom, "strategies");
    assert_eq!(strategies.len(), 4, "one strategy: {strategies:?}");
    let strategy = row_map(&strategies, 1);
    assert_eq!(strategy["strategy"], "simultaneous");
    assert_eq!(strategy["attempts"], "2");
    assert_eq!(strategy["failed"], "50 %");

    // The relay: nothing relayed (the connect went direct), nothing refused at a cap.
    let relay = table(&dom, "relay");
    assert_eq!(
        relay[1..],
        [
            ["active now", "0", "–"],
            ["ended, last hour", "0", "0 B"],
            ["ended, since start", "0", "0 B"],
        ],
        "{relay:?}"
    );
    let caps = table(&dom, "relay-caps");
    assert_eq!(caps.len(), 5, "{caps:?}");
    assert!(caps[1..].iter().all(|r| r[1] == "0"), "{caps:?}");
    assert!(text.contains("No session relayed yet."), "{text}");

    let refused = table(&dom, "refused");
    let refused: Vec<(String, String)> = (1..refused.len())
        .map(|i| (refused[i][0].clone(), refused[i][1].clone()))
        .collect();
    assert!(
        refused.contains(&("peer_offline".into(), "1".into()))
            && refused.contains(&("secret_rejected".into(), "1".into())),
        "{refused:?}"
    );

    // No external assets: nothing in the markup points elsewhere, and the browser asked for
    // nothing on the page's behalf but the admin listener's own URLs.
    for attr in ["src=", "href=", "srcset=", "@import", "url("] {
        assert!(!dom.contains(attr), "the page references {attr}:\n{dom}");
    }
    let loads = page_requests(&netlog);
    assert!(
        loads.contains(&url),
        "the net log shows the page load: {loads:?}"
    );
    for u in &loads {
        assert!(
            u.starts_with(&url),
            "the page made the browser fetch {u} (all: {loads:?})"
        );
    }

    // What a person sees: a screenshot.
    let png_path = work.join("admin-page.png");
    chromium(
        &work,
        &[
            format!("--screenshot={}", png_path.display()),
            format!("--window-size={WIDTH},{HEIGHT}"),
            "--hide-scrollbars".into(),
            url.clone(),
        ],
    )
    .await;
    check_screenshot(&png_path);
    println!(
        "screenshot of the status page ({path} session): {}",
        png_path.display()
    );
    drop(agent);
}

/// Whether Chromium is installed; says so when it is not (and fails under CI).
fn chromium_available() -> bool {
    if Path::new(CHROMIUM).exists() {
        return true;
    }
    let why = format!("{CHROMIUM} not found (apt-get install chromium; scripts/test.sh does)");
    if under_ci() {
        panic!("CI must run the browser test: {why}");
    }
    // Straight to stderr, past the test harness's capture: a skip must be seen.
    let _ = writeln!(
        std::io::stderr(),
        "skipped: the admin page browser test needs Chromium: {why}"
    );
    false
}

/// Whether `CI` is set (to anything but empty, 0 or false), as the NAT lab tests decide.
fn under_ci() -> bool {
    match std::env::var("CI") {
        Ok(v) => !matches!(v.trim().to_ascii_lowercase().as_str(), "" | "0" | "false"),
        Err(std::env::VarError::NotPresent) => false,
        Err(std::env::VarError::NotUnicode(_)) => true,
    }
}

/// A fresh, empty directory under the target directory; it stays after the test, so that a
/// person can look at the screenshot.
fn scratch_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs Chromium with `args` and a fresh profile, killing its whole process group if it does
/// not finish within [`CHROMIUM_TIMEOUT`]. Panics unless it exits successfully.
async fn chromium(work: &Path, args: &[String]) -> std::process::Output {
    let profile = work.join(format!("profile-{}", rand::random::<u32>()));
    std::fs::create_dir_all(&profile).unwrap();
    let child = Command::new(CHROMIUM)
        .args(CHROMIUM_FLAGS)
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .expect("chromium starts");
    let group = child.id().expect("a running child has an id") as i32;
    let out = tokio::time::timeout(CHROMIUM_TIMEOUT, child.wait_with_output()).await;
    // Helpers Chromium started (zygote, renderer) go with the group, also after a clean exit.
    // SAFETY: kill(2) on the process group this test created.
    unsafe { libc::kill(-group, libc::SIGKILL) };
    let _ = std::fs::remove_dir_all(&profile);
    let out = out
        .unwrap_or_else(|_| panic!("chromium {args:?} hung for {CHROMIUM_TIMEOUT:?}; killed"))
        .expect("chromium runs");
    assert!(
        out.status.success(),
        "chromium {args:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The URLs Chromium requested for the page (not its own background requests): those whose
/// network isolation key is the page's site.
fn page_requests(netlog: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(netlog).expect("chromium wrote its net log");
    let log: serde_json::Value = serde_json::from_str(&text).expect("the net log is JSON");
    let start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
        .as_u64()
        .expect("the net log names URL_REQUEST_START_JOB");
    let mut urls = Vec::new();
    for e in log["events"].as_array().expect("net log events") {
        if e["type"].as_u64() != Some(start_job) {
            continue;
        }
        let p = &e["params"];
        let nik = p["network_isolation_key"].as_str().unwrap_or("");
        if nik.starts_with("http://127.0.0.1")
            && let Some(url) = p["url"].as_str()
        {
            urls.push(url.to_string());
        }
    }
    urls
}

/// Checks that the screenshot is a PNG of the window's size with real content: text, the
/// green of a connected session and the red of a refused one, table borders.
fn check_screenshot(path: &Path) {
    let file = std::fs::File::open(path).expect("chromium wrote the screenshot");
    let decoder = png::Decoder::new(BufReader::new(file));
    let mut reader = decoder.read_info().expect("a PNG");
    let mut buf = vec![0; reader.output_buffer_size().expect("sane PNG size")];
    let info = reader.next_frame(&mut buf).expect("PNG pixels");
    assert_eq!((info.width, info.height), (WIDTH, HEIGHT));
    let channels = info.color_type.samples();
    assert!(
        channels >= 3 && info.bit_depth == png::BitDepth::Eight,
        "{info:?}"
    );
    let (mut ink, mut green, mut red, mut border) = (0usize, 0usize, 0usize, 0usize);
    let mut ink_rows = 0;
    for y in 0..info.height as usize {
        let row = &buf[y * info.line_size..][..info.width as usize * channels];
        let mut row_ink = false;
        for px in row.chunks(channels) {
            let (r, g, b) = (px[0] as i32, px[1] as i32, px[2] as i32);
            if r + g + b < 600 {
                ink += 1;
                row_ink = true;
            }
            if g > r + 50 && g > b + 50 {
                green += 1;
            }
            if r > g + 80 && r > b + 80 {
                red += 1;
            }
            if (r, g, b) == (0xcc, 0xcc, 0xcc) {
                border += 1;
            }
        }
        ink_rows += row_ink as usize;
    }
    let total = (info.width * info.height) as usize;
    assert!(
        ink * 1000 > total * 5 && ink * 2 < total,
        "text covers {ink} of {total} pixels"
    );
    assert!(ink_rows > 100, "only {ink_rows} rows hold text");
    assert!(
        green > 20,
        "the connected session is not shown in green ({green} px)"
    );
    assert!(
        red > 20,
        "the refused requests are not shown in red ({red} px)"
    );
    assert!(border > 1000, "no table borders ({border} px)");
}

/// The visible text of the body, tags stripped and whitespace collapsed.
fn visible_text(dom: &str) -> String {
    let body = dom.split("<body").nth(1).unwrap_or(dom);
    let text = unescape(&strip_tags(body));
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn strip_tags(html: &str) -> String {
    let mut out = String::with_capacity(html.len());
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' => {
                in_tag = false;
                out.push(' ');
            }
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&nbsp;", " ")
        .replace("&amp;", "&")
}

/// The cells of the table with this id, row by row, as the text a person reads.
fn table(dom: &str, id: &str) -> Vec<Vec<String>> {
    let open = format!("<table id=\"{id}\"");
    let start = dom
        .find(&open)
        .unwrap_or_else(|| panic!("no table #{id} in the page:\n{dom}"));
    let end = dom[start..].find("</table>").expect("a closed table") + start;
    dom[start..end]
        .split("<tr")
        .skip(1)
        .map(|row| {
            row.split("</t")
                .filter_map(|cell| {
                    let at = cell.rfind("<td").or_else(|| cell.rfind("<th"))?;
                    let content = &cell[at..];
                    let content = &content[content.find('>')? + 1..];
                    Some(unescape(&strip_tags(content)).trim().to_string())
                })
                .collect()
        })
        .collect()
}

/// Row `i` of a table as header → cell.
fn row_map(rows: &[Vec<String>], i: usize) -> std::collections::HashMap<String, String> {
    assert_eq!(rows[0].len(), rows[i].len(), "{rows:?}");
    rows[0]
        .iter()
        .cloned()
        .zip(rows[i].iter().cloned())
        .collect()
}

/// `connected to 'ID' (PATH, ADDR) in N ms` → (PATH, N). PATH is `direct`, or `lan` when the
/// agent's address on a local interface won the race against its loopback endpoint.
fn path_and_setup_of(stderr: &str, id: &str) -> (String, u64) {
    let prefix = format!("connected to '{id}' (");
    // The log line's prefix (time, level) comes first.
    let line = stderr
        .lines()
        .find_map(|l| l.find(&prefix).map(|at| &l[at..]))
        .unwrap_or_else(|| panic!("no connection reported:\n{stderr}"));
    let path = line[prefix.len()..].split(',').next().unwrap_or("");
    assert!(path == "direct" || path == "lan", "{line}");
    let ms = line
        .rsplit_once(" in ")
        .and_then(|(_, t)| t.strip_suffix(" ms"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no setup time in {line:?}"));
    (path.to_string(), ms)
}

/// Waits until the server's recent sessions include each of `outcomes`.
async fn wait_for_outcomes(admin: SocketAddr, outcomes: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, body) = http_get(admin, "/status.json").await;
        let status: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        let seen: Vec<&str> = status["recent"]
            .as_array()
            .map(|a| a.iter().filter_map(|r| r["outcome"].as_str()).collect())
            .unwrap_or_default();
        if outcomes.iter().all(|o| seen.contains(o)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "outcomes {seen:?}, wanted {outcomes:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The agent's public endpoint, as the server's status reports it.
async fn agent_endpoint(server: &Server) -> String {
    let path = format!("/status.json?q={}", path_escape(ID));
    let (_, body) = http_get(server.admin, &path).await;
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (&status["services_total"], &status["page"], &status["pages"]),
        (&1.into(), &1.into(), &1.into()),
        "{status}"
    );
    status["services"][0]["public"]
        .as_str()
        .expect("one service")
        .to_string()
}

/// Asks the server at `control` for `peer` as a client that proves `secret`, waits for its
/// punch order, and reports that nothing connected, for `reason`.
async fn report_failure(control: SocketAddr, peer: &str, secret: &str, reason: &str) {
    use futures_util::{SinkExt, StreamExt};
    use p2pnc::protocol::{Mode, Nonce, ServiceKeys, connect_message};
    use tokio_tungstenite::tungstenite::Message;
    let nonce = Nonce::random();
    let proof = ServiceKeys::derive(secret, peer).sign(&connect_message(peer, Mode::Punch, &nonce));
    let url = format!(
        "ws://{control}/v1/connect?v=2&peer={}&nonce={nonce}&proof={}",
        path_escape(peer),
        proof.to_hex()
    );
    let (mut ws, _) = tokio::time::timeout(PROC_TIMEOUT, tokio_tungstenite::connect_async(url))
        .await
        .expect("the server answers in time")
        .expect("the server takes the connect request");
    loop {
        let msg = tokio::time::timeout(PROC_TIMEOUT, ws.next())
            .await
            .expect("a punch order in time")
            .expect("the control channel stays open")
            .expect("a message");
        if let Message::Text(t) = msg {
            assert!(t.contains("\"punch\""), "{t}");
            break;
        }
    }
    let report = serde_json::json!({"type": "result", "outcome": "failed", "reason": reason});
    ws.send(Message::Text(report.to_string().into()))
        .await
        .expect("the report is sent");
    let _ = ws.close(None).await;
}

/// Percent-encodes an id for a URL path.
fn path_escape(id: &str) -> String {
    p2pnc::protocol::percent_encode(id)
}

/// A child process killed on drop.
struct Proc(std::process::Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `p2pnc server` on loopback ports it picked itself, with `--admin` and `--relay`.
struct Server {
    _proc: Proc,
    control: SocketAddr,
    admin: SocketAddr,
}

impl Server {
    /// Starts the server on a free port. Its NAT probe port is the next one (agents and
    /// clients find it there), which may be taken: then it exits, and another port is tried.
    async fn start() -> Server {
        for _ in 0..5 {
            if let Some(server) = Self::try_start() {
                return server;
            }
        }
        panic!("p2pnc server did not start on a free pair of ports in 5 tries");
    }

    fn try_start() -> Option<Server> {
        let mut child = std::process::Command::new(BIN)
            .args([
                "server",
                "--listen",
                "127.0.0.1:0",
                "--admin",
                "127.0.0.1:0",
                "--relay",
            ])
            .env("P2PNC_LOG", "p2pnc=info")
            .stderr(Stdio::piped())
            .spawn()
            .expect("p2pnc server starts");
        let stderr = child.stderr.take().unwrap();
        let proc = Proc(child);
        // Read the addresses it logs, then keep draining its log so it never blocks on it.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let (mut control, mut admin) = (None, None);
        let deadline = Instant::now() + Duration::from_secs(10);
        while control.is_none() || admin.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match rx.recv_timeout(left) {
                Ok(line) => line,
                // It exited: the probe port was taken.
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return None,
                Err(e) => panic!("the server logged no addresses within 10 s: {e}"),
            };
            if let Some(rest) = line.split("listening on ").nth(1) {
                control = rest.split(',').next().and_then(|a| a.parse().ok());
            }
            if let Some(rest) = line.split("status page) on http://").nth(1) {
                admin = rest.trim().parse().ok();
            }
        }
        std::thread::spawn(move || while rx.recv().is_ok() {});
        Some(Server {
            _proc: proc,
            control: control?,
            admin: admin?,
        })
    }
}

fn expose(server: SocketAddr, id: &str, to: SocketAddr, secret: &str) -> Proc {
    let child = std::process::Command::new(BIN)
        .args([
            "expose",
            "--server",
            &format!("http://{server}"),
            "--id",
            id,
        ])
        .args(["--to", &to.to_string(), "--secret", secret])
        .arg("--no-port-mapping")
        .stderr(Stdio::null())
        .spawn()
        .expect("p2pnc expose starts");
    Proc(child)
}

/// Runs `p2pnc connect --stdio` with `input` on its stdin, within [`PROC_TIMEOUT`].
async fn connect_stdio(
    server: SocketAddr,
    peer: &str,
    secret: Option<&str>,
    input: &[u8],
) -> std::process::Output {
    use tokio::io::AsyncWriteExt;
    let mut cmd = Command::new(BIN);
    cmd.args(["connect", "--server", &format!("http://{server}")])
        .args(["--peer", peer, "--stdio"]);
    if let Some(s) = secret {
        cmd.args(["--secret", s]);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("p2pnc connect starts");
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = tokio::spawn(async move {
        let _ = stdin.write_all(&input).await;
        // Dropping stdin closes it: the stream half-closes after the input.
    });
    let out = tokio::time::timeout(PROC_TIMEOUT, child.wait_with_output())
        .await
        .expect("p2pnc connect finishes in time")
        .expect("p2pnc connect runs");
    let _ = writer.await;
    out
}
