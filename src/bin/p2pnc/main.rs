//! `p2pnc`: the command line. Parses the flags (and `--config FILE`), sets up logging, wires
//! the platform's stop signals to a cancellation token (`signals`), and runs one command; each
//! command is one call into the library. On Windows a command can run as a service
//! (`--service`, see `service`).

mod args;
mod config;
mod connect;
mod demo;
mod expose;
mod generate;
mod nat_check;
mod ping;
mod server;
mod service;
mod signals;

use std::ffi::OsString;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow};
use clap::parser::ValueSource;
use clap::{CommandFactory, Parser, Subcommand};
use tracing_subscriber::fmt::writer::BoxMakeWriter;

/// The help heading of the flags every command takes.
const GLOBAL: &str = "Global options";

/// Direct TCP connections between hosts behind NATs.
#[derive(Parser)]
#[command(version, about, propagate_version = true)]
struct Cli {
    /// More logging (-v: debug, -vv: trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count, help_heading = GLOBAL)]
    verbose: u8,
    /// Only errors.
    #[arg(short, long, global = true, help_heading = GLOBAL)]
    quiet: bool,
    /// Log format on stderr: `text` for people, `json` (one object per line, with every field
    /// such as session and peer) for log collectors.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "P2PNC_LOG_FORMAT",
        help_heading = GLOBAL
    )]
    log_format: LogFormat,
    /// Read this command's settings from a TOML file (keys are the long flag names); flags and
    /// environment variables override it.
    #[arg(long, global = true, value_name = "FILE", help_heading = GLOBAL)]
    config: Option<PathBuf>,
    /// Append the log to this file instead of writing it to stderr.
    #[arg(long, global = true, value_name = "FILE", help_heading = GLOBAL)]
    log_file: Option<PathBuf>,
    /// Run as a Windows service (installed with contrib/windows/install-service.ps1): needs
    /// --config FILE; the log goes next to it (p2pnc-COMMAND.log) unless --log-file says
    /// otherwise.
    #[cfg(windows)]
    #[arg(long, global = true, help_heading = GLOBAL)]
    service: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Flags a config file may not set: they say how to read it, or print and exit.
const NOT_IN_CONFIG: &[&str] = &["config", "help", "version", "service"];

/// Commands that read no settings (they print what the flags define): no table in config files.
const NO_CONFIG_TABLE: &[&str] = &["completions", "man"];

/// The long flags a config file may set for `cmd`: its own and the global ones of `cli`.
fn config_keys<'a>(cli: &'a clap::Command, cmd: &'a clap::Command) -> Vec<&'a str> {
    cmd.get_arguments()
        .chain(cli.get_arguments().filter(|a| a.is_global_set()))
        .filter_map(|a| a.get_long())
        .filter(|l| !NOT_IN_CONFIG.contains(l))
        .collect()
}

/// Parses the command line, filling in settings from `--config FILE` that were given neither
/// as flags nor through the environment.
fn parse_cli(argv: Vec<OsString>) -> Result<Cli> {
    let first = Cli::command()
        .ignore_errors(true)
        .try_get_matches_from(&argv)
        .ok();
    let config = first
        .as_ref()
        .and_then(|m| m.get_one::<PathBuf>("config").cloned());
    let (Some(path), Some(first)) = (config, first) else {
        return Ok(Cli::parse_from(argv));
    };
    let Some((sub, sub_matches)) = first.subcommand() else {
        return Ok(Cli::parse_from(argv));
    };
    let cli = Cli::command();
    let sub_cmd = cli
        .find_subcommand(sub)
        .ok_or_else(|| anyhow!("unknown command {sub}"))?;
    let commands = config::Commands {
        all: cli
            .get_subcommands()
            .filter(|c| !c.is_hide_set() && !NO_CONFIG_TABLE.contains(&c.get_name()))
            .map(|c| (c.get_name(), config_keys(&cli, c)))
            .collect(),
        running: sub,
    };
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    let settings =
        config::parse(&text, &commands).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    let mut words: Vec<OsString> = Vec::new();
    let mut lines: Vec<(String, usize)> = Vec::new();
    for setting in settings {
        let arg = sub_cmd
            .get_arguments()
            .chain(cli.get_arguments())
            .find(|a| a.get_long() == Some(setting.flag.as_str()))
            .expect("known flags have an argument");
        let id = arg.get_id().as_str();
        let given = [sub_matches, &first].iter().any(|m| {
            matches!(
                m.try_get_raw(id).ok().and_then(|_| m.value_source(id)),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            )
        });
        if given {
            continue;
        }
        lines.push((setting.flag.clone(), setting.line));
        let counted = matches!(arg.get_action(), clap::ArgAction::Count);
        let flag = OsString::from(format!("--{}", setting.flag));
        match (counted, setting.words.as_slice()) {
            // `verbose = 2` is -vv.
            (true, [n]) => {
                let n: usize = n.parse().map_err(|_| {
                    anyhow!(
                        "{}: key '{}' on line {}: expected a count, found '{n}'",
                        path.display(),
                        setting.flag,
                        setting.line
                    )
                })?;
                words.extend((0..n).map(|_| flag.clone()));
            }
            // A switch (`relay = true`).
            (_, []) => words.push(flag),
            _ => {
                // A list (`server = ["http://a", "http://b"]`) repeats the flag once per value.
                for word in setting.words {
                    words.push(flag.clone());
                    words.push(word.into());
                }
            }
        }
    }
    let at = argv
        .iter()
        .position(|a| a.to_str() == Some(sub))
        .map_or(argv.len(), |i| i + 1);
    let mut argv = argv;
    argv.splice(at..at, words);
    Cli::try_parse_from(argv).or_else(|e| {
        // A value the file gave that the flag refuses: name the file and the line.
        let flag = e
            .get(clap::error::ContextKind::InvalidArg)
            .map(|a| a.to_string())
            .and_then(|a| {
                a.strip_prefix("--")
                    .map(|f| f.split([' ', '=']).next().unwrap_or("").to_string())
            });
        match flag.and_then(|f| lines.iter().find(|(l, _)| *l == f)) {
            Some((flag, line)) => {
                let why = e.render().to_string();
                let why = why
                    .lines()
                    .next()
                    .unwrap_or("")
                    .trim_start_matches("error: ");
                Err(anyhow!(
                    "{}: key '{flag}' on line {line}: {why}",
                    path.display()
                ))
            }
            None => e.exit(),
        }
    })
}

#[derive(Subcommand)]
enum Command {
    /// Run the rendezvous server (HTTP and WebSocket on one port).
    Server(server::ServerArgs),
    /// Expose a local TCP service under an id, reachable by `p2pnc connect`.
    Expose(expose::ExposeArgs),
    /// Connect to an exposed service, on stdin/stdout or as a local port.
    Connect(connect::ConnectArgs),
    /// Run server, echo service, expose and connect on loopback and show each step.
    Demo,
    /// Report this host's NAT: mapping behaviour, port preservation, filtering, public address.
    NatCheck(nat_check::NatCheckArgs),
    /// How the path to a service was reached, round trips over it and its throughput.
    Ping(ping::PingArgs),
    /// Print the shell completion script for bash, zsh, fish, elvish or PowerShell.
    Completions(generate::CompletionsArgs),
    /// Print the man page (roff), or write every page with --dir.
    Man(generate::ManArgs),
}

impl Command {
    /// The command's name on the command line (names a service's log file).
    #[cfg_attr(not(windows), allow(dead_code))]
    fn name(&self) -> &'static str {
        match self {
            Command::Server(_) => "server",
            Command::Expose(_) => "expose",
            Command::Connect(_) => "connect",
            Command::Demo => "demo",
            Command::NatCheck(_) => "nat-check",
            Command::Ping(_) => "ping",
            Command::Completions(_) => "completions",
            Command::Man(_) => "man",
        }
    }
}

fn main() -> ExitCode {
    let cli = match parse_cli(std::env::args_os().collect()) {
        Ok(cli) => cli,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    #[cfg(windows)]
    if cli.service {
        return service::run(cli);
    }
    if let Err(e) = init_logging(&cli, cli.log_file.as_deref()) {
        eprintln!("error: {e:#}");
        return ExitCode::FAILURE;
    }
    let logs_to_file = cli.log_file.is_some();
    match run_command(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if logs_to_file {
                tracing::error!("{e:#}");
            }
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Sets up logging as the flags say: on stderr, or appended to `file`.
fn init_logging(cli: &Cli, file: Option<&Path>) -> Result<()> {
    let demo = matches!(cli.command, Command::Demo);
    let level = match (cli.quiet, cli.verbose) {
        (true, _) => "error",
        (false, 0) if demo => "warn",
        (false, 0) => "info",
        (false, 1) => "debug",
        (false, _) => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("P2PNC_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("p2pnc={level}")));
    let (writer, ansi) = match file {
        Some(path) => {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("cannot open the log file {}", path.display()))?;
            (BoxMakeWriter::new(std::sync::Mutex::new(f)), false)
        }
        None => (
            BoxMakeWriter::new(std::io::stderr),
            std::io::stderr().is_terminal(),
        ),
    };
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_target(false);
    match cli.log_format {
        LogFormat::Text => logs.with_ansi(ansi).init(),
        LogFormat::Json => logs.json().with_current_span(false).init(),
    }
    Ok(())
}

/// Runs one command on a fresh runtime until it ends.
fn run_command(command: Command) -> Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let result = runtime.block_on(run(command));
    // stdin is read on a blocking thread that cannot be interrupted; do not wait for it.
    runtime.shutdown_background();
    result
}

async fn run(command: Command) -> Result<()> {
    match command {
        Command::Server(args) => server::run(args).await,
        Command::Expose(args) => expose::run(args).await,
        Command::Connect(args) => connect::run(args).await,
        Command::Demo => demo::run().await,
        Command::NatCheck(args) => nat_check::run(args).await,
        Command::Ping(args) => ping::run(args).await,
        Command::Completions(args) => generate::completions(args, Cli::command()),
        Command::Man(args) => generate::man(args, Cli::command()),
    }
}
