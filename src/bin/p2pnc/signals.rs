//! How a long-running command learns that it must stop, and the server that it must reload
//! its certificate: one place for every platform.
//!
//! - unix: Ctrl-C (SIGINT), SIGTERM (systemd, launchd, `kill`), and SIGHUP (the terminal went
//!   away) for every command but the server, which reloads its TLS certificate on SIGHUP;
//! - Windows: Ctrl-C, Ctrl-Break, the console window closing, log-off and system shutdown,
//!   and the service manager's stop under `p2pnc --service`. Windows has no SIGHUP: a
//!   server there loads a renewed certificate when it is restarted.

use anyhow::{Context, Result};
use tokio_util::sync::CancellationToken;

/// What SIGHUP means to a command.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Hangup {
    /// Stop, like SIGTERM.
    Stops,
    /// Something else (the server's certificate reload, see [`Reloads`]): not a stop.
    Reloads,
}

/// A token cancelled on the first stop signal (see the module's documentation). The handlers
/// are in place when this returns, so a signal that comes at once is not lost.
pub fn shutdown_token(hangup: Hangup) -> Result<CancellationToken> {
    let signals = sys::StopSignals::register(hangup)?;
    let stop = CancellationToken::new();
    let cancel = stop.clone();
    // Runs for the life of the process; the token is its only output.
    tokio::spawn(async move {
        let which = signals.recv().await;
        tracing::info!("{which}: stopping");
        cancel.cancel();
    });
    Ok(stop)
}

/// The server's certificate reload requests: SIGHUP on unix, none on Windows.
pub struct Reloads(sys::Reloads);

impl Reloads {
    /// Starts catching reload requests (from then on they no longer stop the process).
    pub fn register() -> Result<Reloads> {
        sys::Reloads::register().map(Reloads)
    }

    /// The next reload request; `None` when none can come any more.
    pub async fn recv(&mut self) -> Option<()> {
        self.0.recv().await
    }
}

#[cfg(unix)]
mod sys {
    use tokio::signal::unix::{Signal, SignalKind, signal};

    use super::*;

    fn catch(kind: SignalKind, name: &str) -> Result<Signal> {
        signal(kind).with_context(|| format!("cannot catch {name}"))
    }

    pub struct StopSignals {
        int: Signal,
        term: Signal,
        hup: Option<Signal>,
    }

    impl StopSignals {
        pub fn register(hangup: Hangup) -> Result<Self> {
            Ok(StopSignals {
                int: catch(SignalKind::interrupt(), "SIGINT")?,
                term: catch(SignalKind::terminate(), "SIGTERM")?,
                hup: match hangup {
                    Hangup::Stops => Some(catch(SignalKind::hangup(), "SIGHUP")?),
                    Hangup::Reloads => None,
                },
            })
        }

        pub async fn recv(mut self) -> &'static str {
            let hup = async {
                match &mut self.hup {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = self.int.recv() => "SIGINT",
                _ = self.term.recv() => "SIGTERM",
                _ = hup => "SIGHUP",
            }
        }
    }

    pub struct Reloads(Signal);

    impl Reloads {
        pub fn register() -> Result<Self> {
            catch(SignalKind::hangup(), "SIGHUP").map(Reloads)
        }

        pub async fn recv(&mut self) -> Option<()> {
            self.0.recv().await
        }
    }
}

#[cfg(windows)]
mod sys {
    use tokio::signal::windows::{
        CtrlBreak, CtrlC, CtrlClose, CtrlLogoff, CtrlShutdown, ctrl_break, ctrl_c, ctrl_close,
        ctrl_logoff, ctrl_shutdown,
    };

    use super::*;

    pub struct StopSignals {
        c: CtrlC,
        brk: CtrlBreak,
        close: CtrlClose,
        logoff: CtrlLogoff,
        shutdown: CtrlShutdown,
    }

    impl StopSignals {
        pub fn register(_hangup: Hangup) -> Result<Self> {
            let what = "cannot catch console events";
            Ok(StopSignals {
                c: ctrl_c().context(what)?,
                brk: ctrl_break().context(what)?,
                close: ctrl_close().context(what)?,
                logoff: ctrl_logoff().context(what)?,
                shutdown: ctrl_shutdown().context(what)?,
            })
        }

        pub async fn recv(mut self) -> &'static str {
            tokio::select! {
                _ = crate::service::stop_requested() => "service stop",
                _ = self.c.recv() => "Ctrl-C",
                _ = self.brk.recv() => "Ctrl-Break",
                _ = self.close.recv() => "console closed",
                _ = self.logoff.recv() => "log-off",
                _ = self.shutdown.recv() => "system shutdown",
            }
        }
    }

    pub struct Reloads;

    impl Reloads {
        pub fn register() -> Result<Self> {
            Ok(Reloads)
        }

        pub async fn recv(&mut self) -> Option<()> {
            None
        }
    }
}
