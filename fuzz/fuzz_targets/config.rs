//! Config files (`config::parse` of the `p2pnc` binary), with the long flags of `p2pnc server`
//! and `p2pnc expose`. The settings read must come back the same from a file written from them.
#![no_main]

#[path = "../../src/bin/p2pnc/config.rs"]
mod config;

use config::{Commands, Setting, parse};
use libfuzzer_sys::fuzz_target;

const KNOWN: &[&str] = &[
    "listen",
    "probe-listen",
    "token",
    "id-grace",
    "connect-rate",
    "expose-rate",
    "max-connections-per-ip",
    "admin",
    "relay",
    "relay-max-sessions",
    "relay-rate",
    "server",
    "id",
    "to",
    "secret",
    "public",
    "punch-port",
    "no-port-mapping",
    "punch-timeout",
    "punch-ttl",
];

/// One command with every flag above: top-level keys and an `[expose]` table both apply.
fn commands() -> Commands<'static> {
    Commands {
        all: vec![("expose", KNOWN.to_vec())],
        running: "expose",
    }
}

fn sorted(mut s: Vec<Setting>) -> Vec<(String, Vec<String>)> {
    s.sort_by(|a, b| a.flag.cmp(&b.flag));
    s.into_iter().map(|s| (s.flag, s.words)).collect()
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let settings = match parse(text, &commands()) {
        Ok(s) => s,
        Err(e) => {
            assert!(!e.0.is_empty());
            return;
        }
    };
    for s in &settings {
        assert!(KNOWN.contains(&s.flag.as_str()), "{s:?}");
    }
    let mut flags: Vec<&str> = settings.iter().map(|s| s.flag.as_str()).collect();
    flags.sort_unstable();
    flags.dedup();
    if flags.len() < settings.len() {
        return; // `punch_timeout` and `punch-timeout` both: one file cannot say that again.
    }
    let mut table = toml::Table::new();
    for s in &settings {
        let value = if s.words.is_empty() {
            toml::Value::Boolean(true)
        } else {
            toml::Value::Array(s.words.iter().cloned().map(toml::Value::String).collect())
        };
        table.insert(s.flag.clone(), value);
    }
    let written = toml::to_string(&table).expect("TOML");
    let back = parse(&written, &commands()).expect("a written file parses");
    assert_eq!(sorted(back), sorted(settings), "{written}");
});
