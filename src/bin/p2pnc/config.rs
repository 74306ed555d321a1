//! Config files: TOML whose keys are the long flags of the commands (`listen =
//! "0.0.0.0:50300"`, `relay = true`, `punch-timeout = 3`, `log-format = "json"`), at the top
//! level or in a table per command (`[connect]`, `[server]`) whose keys only that command
//! reads. Flags and environment variables given to the command override the file; unknown
//! keys and tables are errors naming the file and the line.

use std::fmt;

/// A config file that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// One setting from a config file: the flag's long name and its value(s) as command-line
/// words; a `true` boolean is a bare flag (no words), a `false` one is left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// The long flag name, with dashes (`punch-timeout`).
    pub flag: String,
    /// The words that follow the flag.
    pub words: Vec<String>,
    /// Where the file sets it (from 1).
    pub line: usize,
}

/// The line (from 1) of `key` in the section `table` (`None`: the top level) of `text`, or 0.
pub fn line_of(text: &str, table: Option<&str>, key: &str) -> usize {
    let mut section: Option<String> = None;
    for (i, l) in text.lines().enumerate() {
        let l = l.trim_start();
        if let Some(header) = l.strip_prefix('[') {
            let name = header.split(']').next().unwrap_or("").trim();
            section = Some(name.trim_matches('"').to_string());
            continue;
        }
        if section.as_deref() != table {
            continue;
        }
        let rest = l
            .strip_prefix('"')
            .and_then(|r| r.strip_prefix(key))
            .and_then(|r| r.strip_prefix('"'))
            .or_else(|| l.strip_prefix(key));
        if rest.is_some_and(|rest| rest.trim_start().starts_with('=')) {
            return i + 1;
        }
    }
    0
}

/// The line (from 1) of the table header `[name]` in `text`, or 0.
fn header_line(text: &str, name: &str) -> usize {
    text.lines()
        .position(|l| {
            l.trim_start()
                .strip_prefix('[')
                .and_then(|h| h.split(']').next())
                .is_some_and(|h| h.trim().trim_matches('"') == name)
        })
        .map_or(0, |i| i + 1)
}

/// The commands a config file may hold a table for, each with its long flags (dashed names).
pub struct Commands<'a> {
    /// Every command and its flags.
    pub all: Vec<(&'a str, Vec<&'a str>)>,
    /// The command that runs.
    pub running: &'a str,
}

impl Commands<'_> {
    fn flags_of(&self, command: &str) -> Option<&[&str]> {
        self.all
            .iter()
            .find(|(c, _)| *c == command)
            .map(|(_, f)| f.as_slice())
    }
}

/// Parses `text` for the running command of `commands`: the top-level keys (each must be a
/// flag of some command; a command without that flag skips it), then the keys of the table
/// named after the running command (which override them). Tables of the other commands are
/// checked against their own flags.
pub fn parse(text: &str, commands: &Commands<'_>) -> Result<Vec<Setting>, ConfigError> {
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| ConfigError(format!("invalid TOML: {e}")))?;
    let running = commands.flags_of(commands.running).unwrap_or(&[]);
    let has_tables = table.values().any(toml::Value::is_table);
    let mut top = Vec::new();
    let mut own = Vec::new();
    for (key, value) in &table {
        // `[server]` is the server's table, `listen = { ... }` a bad value of a flag.
        let is_flag = commands.all.iter().any(|(_, f)| f.contains(&key.as_str()));
        if let toml::Value::Table(t) = value
            && (commands.flags_of(key).is_some() || !is_flag)
        {
            let line = match header_line(text, key) {
                0 => line_of(text, None, key), // an inline table
                n => n,
            };
            let Some(flags) = commands.flags_of(key) else {
                let names: Vec<&str> = commands.all.iter().map(|(c, _)| *c).collect();
                return Err(ConfigError(format!(
                    "unknown table '[{key}]' on line {line} (tables are commands: {})",
                    names.join(", ")
                )));
            };
            let settings = settings(text, Some(key), t, flags)?;
            if key == commands.running {
                own = settings;
            }
            continue;
        }
        let flag = key.replace('_', "-");
        let elsewhere = has_tables && commands.all.iter().any(|(_, f)| f.contains(&flag.as_str()));
        if !running.contains(&flag.as_str()) && elsewhere {
            continue; // another command's top-level setting
        }
        let one = toml::Table::from_iter([(key.clone(), value.clone())]);
        top.extend(settings(text, None, &one, running)?);
    }
    top.retain(|t| !own.iter().any(|o| o.flag == t.flag));
    top.extend(own);
    Ok(top)
}

/// The settings of one table (`None`: the top level) whose keys must be among `known`.
fn settings(
    text: &str,
    name: Option<&str>,
    table: &toml::Table,
    known: &[&str],
) -> Result<Vec<Setting>, ConfigError> {
    let mut out = Vec::new();
    for (key, value) in table {
        let line = line_of(text, name, key);
        let flag = key.replace('_', "-");
        if !known.contains(&flag.as_str()) {
            return Err(ConfigError(format!(
                "unknown key '{key}' on line {line} (known: {})",
                known.join(", ")
            )));
        }
        let word = |v: &toml::Value| -> Result<String, ConfigError> {
            match v {
                toml::Value::String(s) => Ok(s.clone()),
                toml::Value::Integer(i) => Ok(i.to_string()),
                toml::Value::Float(f) => Ok(f.to_string()),
                other => Err(ConfigError(format!(
                    "key '{key}' on line {line}: expected a string or a number, found {}",
                    other.type_str()
                ))),
            }
        };
        let words = match value {
            toml::Value::Boolean(false) => continue,
            toml::Value::Boolean(true) => Vec::new(),
            toml::Value::Array(items) => items.iter().map(word).collect::<Result<_, _>>()?,
            v => vec![word(v)?],
        };
        out.push(Setting { flag, words, line });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

    use proptest::prelude::*;

    use super::*;

    const KNOWN: &[&str] = &["listen", "relay", "punch-timeout", "token"];

    /// One command, `server`, whose flags are `known`.
    fn only(known: &'static [&'static str]) -> Commands<'static> {
        Commands {
            all: vec![("server", known.to_vec())],
            running: "server",
        }
    }

    #[test]
    fn settings_become_flag_words() {
        let text = "listen = \"0.0.0.0:1\"\nrelay = true\npunch_timeout = 2.5\ntoken = \"t\"\n";
        let got = parse(text, &only(KNOWN)).unwrap();
        let flat: Vec<(String, Vec<String>)> = got.into_iter().map(|s| (s.flag, s.words)).collect();
        assert!(flat.contains(&("listen".into(), vec!["0.0.0.0:1".into()])));
        assert!(flat.contains(&("relay".into(), vec![])));
        assert!(flat.contains(&("punch-timeout".into(), vec!["2.5".into()])));
        assert!(parse("relay = false", &only(KNOWN)).unwrap().is_empty());
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key_and_line() {
        let err = parse("listen = \"x\"\n\n  lisen = \"y\"\n", &only(KNOWN)).unwrap_err();
        assert!(err.0.contains("unknown key 'lisen' on line 3"), "{err}");
        let err = parse("listen = { a = 1 }", &only(KNOWN)).unwrap_err();
        assert!(err.0.contains("key 'listen' on line 1"), "{err}");
        let err = parse("listen = ", &only(KNOWN)).unwrap_err();
        assert!(err.0.starts_with("invalid TOML"), "{err}");
        assert!(err.0.contains("line 1"), "{err}");
    }

    #[test]
    fn command_tables_apply_to_their_command_and_override_the_top_level() {
        let commands = |running| Commands {
            all: vec![
                ("server", vec!["listen", "token", "log-format"]),
                ("connect", vec!["server", "peer", "token", "log-format"]),
            ],
            running,
        };
        // (A top-level `server = URL` would clash with the `[server]` table in TOML: a file
        // with both puts the URL in the client commands' tables.)
        let text = "token = \"t\"\nlog-format = \"json\"\npeer = \"p\"\n\n\
                    [server]\nlisten = \"[::]:1\"\ntoken = \"s\"\n\n[connect]\n\
                    server = \"http://h:1\"\n";
        let flat = |running| -> Vec<(String, Vec<String>, usize)> {
            parse(text, &commands(running))
                .unwrap()
                .into_iter()
                .map(|s| (s.flag, s.words, s.line))
                .collect()
        };
        let server = flat("server");
        assert!(
            server.contains(&("token".into(), vec!["s".into()], 7)),
            "{server:?}"
        );
        assert!(server.contains(&("listen".into(), vec!["[::]:1".into()], 6)));
        assert!(server.contains(&("log-format".into(), vec!["json".into()], 2)));
        assert!(
            !server.iter().any(|s| s.0 == "server" || s.0 == "peer"),
            "{server:?}"
        );
        let connect = flat("connect");
        assert!(
            connect.contains(&("token".into(), vec!["t".into()], 1)),
            "{connect:?}"
        );
        assert!(connect.contains(&("peer".into(), vec!["p".into()], 3)));
        assert!(connect.contains(&("server".into(), vec!["http://h:1".into()], 10)));

        let err = parse("[conect]\npeer = \"p\"\n", &commands("connect")).unwrap_err();
        assert_eq!(
            err.0,
            "unknown table '[conect]' on line 1 (tables are commands: server, connect)"
        );
        let err = parse("[server]\n\npeer = \"p\"\n", &commands("connect")).unwrap_err();
        assert_eq!(
            err.0,
            "unknown key 'peer' on line 3 (known: listen, token, log-format)"
        );
    }

    fn addr() -> impl Strategy<Value = SocketAddr> {
        prop_oneof![
            (any::<[u8; 4]>(), any::<u16>())
                .prop_map(|(ip, port)| SocketAddr::new(Ipv4Addr::from(ip).into(), port)),
            (any::<[u8; 16]>(), any::<u16>())
                .prop_map(|(ip, port)| SocketAddr::new(Ipv6Addr::from(ip).into(), port)),
        ]
    }

    /// Any text, short enough to read.
    fn text() -> impl Strategy<Value = String> {
        ".{0,40}"
    }

    proptest! {
        /// Settings read from a config file come back the same from a file written from them.
        #[test]
        fn config_settings_round_trip(
            listen in proptest::option::of(addr()),
            relay in any::<bool>(),
            timeout in proptest::option::of(0.0..100.0f64),
            token in proptest::option::of(text()),
        ) {
            const KNOWN: &[&str] = &["listen", "relay", "punch-timeout", "token"];
            let mut table = toml::Table::new();
            if let Some(a) = listen {
                table.insert("listen".into(), toml::Value::String(a.to_string()));
            }
            table.insert("relay".into(), toml::Value::Boolean(relay));
            if let Some(t) = timeout {
                table.insert("punch_timeout".into(), toml::Value::Float(t));
            }
            if let Some(t) = &token {
                table.insert("token".into(), toml::Value::String(t.clone()));
            }
            let text = toml::to_string(&table).unwrap();
            let got = parse(&text, &only(KNOWN)).unwrap();
            let find = |flag: &str| got.iter().find(|s| s.flag == flag).map(|s| s.words.clone());
            prop_assert_eq!(find("listen"), listen.map(|a| vec![a.to_string()]));
            prop_assert_eq!(find("relay"), relay.then(Vec::new));
            prop_assert_eq!(
                find("punch-timeout").map(|w| w[0].parse::<f64>().unwrap()),
                timeout
            );
            prop_assert_eq!(find("token"), token.map(|t| vec![t]));
        }
    }
}
