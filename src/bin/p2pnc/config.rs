//! Config files: a TOML table whose keys are the long flags of one command
//! (`listen = "0.0.0.0:50300"`, `relay = true`, `punch-timeout = 3`). Flags and environment
//! variables given to the command override the file; unknown keys are errors naming the key
//! and its line.

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
}

fn line_of(text: &str, key: &str) -> usize {
    text.lines()
        .position(|l| {
            let l = l.trim_start();
            let l = l
                .strip_prefix('"')
                .and_then(|r| r.strip_prefix(key))
                .and_then(|r| r.strip_prefix('"'))
                .or_else(|| l.strip_prefix(key));
            l.is_some_and(|rest| rest.trim_start().starts_with('='))
        })
        .map_or(0, |i| i + 1)
}

/// Parses `text` for a command whose long flags are `known` (dashed names).
pub fn parse(text: &str, known: &[&str]) -> Result<Vec<Setting>, ConfigError> {
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| ConfigError(format!("invalid TOML: {e}")))?;
    let mut out = Vec::new();
    for (key, value) in table {
        let flag = key.replace('_', "-");
        if !known.contains(&flag.as_str()) {
            return Err(ConfigError(format!(
                "unknown key '{key}' on line {} (known: {})",
                line_of(text, &key),
                known.join(", ")
            )));
        }
        let word = |v: &toml::Value| -> Result<String, ConfigError> {
            match v {
                toml::Value::String(s) => Ok(s.clone()),
                toml::Value::Integer(i) => Ok(i.to_string()),
                toml::Value::Float(f) => Ok(f.to_string()),
                other => Err(ConfigError(format!(
                    "key '{key}' on line {}: expected a string or a number, found {}",
                    line_of(text, &key),
                    other.type_str()
                ))),
            }
        };
        let words = match &value {
            toml::Value::Boolean(false) => continue,
            toml::Value::Boolean(true) => Vec::new(),
            toml::Value::Array(items) => items.iter().map(word).collect::<Result<_, _>>()?,
            v => vec![word(v)?],
        };
        out.push(Setting { flag, words });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

    use proptest::prelude::*;

    use super::*;

    const KNOWN: &[&str] = &["listen", "relay", "punch-timeout", "token"];

    #[test]
    fn settings_become_flag_words() {
        let text = "listen = \"0.0.0.0:1\"\nrelay = true\npunch_timeout = 2.5\ntoken = \"t\"\n";
        let got = parse(text, KNOWN).unwrap();
        let flat: Vec<(String, Vec<String>)> = got.into_iter().map(|s| (s.flag, s.words)).collect();
        assert!(flat.contains(&("listen".into(), vec!["0.0.0.0:1".into()])));
        assert!(flat.contains(&("relay".into(), vec![])));
        assert!(flat.contains(&("punch-timeout".into(), vec!["2.5".into()])));
        assert!(parse("relay = false", KNOWN).unwrap().is_empty());
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key_and_line() {
        let err = parse("listen = \"x\"\n\n  lisen = \"y\"\n", KNOWN).unwrap_err();
        assert!(err.0.contains("unknown key 'lisen' on line 3"), "{err}");
        let err = parse("listen = { a = 1 }", KNOWN).unwrap_err();
        assert!(err.0.contains("key 'listen' on line 1"), "{err}");
        let err = parse("listen = ", KNOWN).unwrap_err();
        assert!(err.0.starts_with("invalid TOML"), "{err}");
        assert!(err.0.contains("line 1"), "{err}");
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
            let got = parse(&text, KNOWN).unwrap();
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
