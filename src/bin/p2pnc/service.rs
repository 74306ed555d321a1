//! `p2pnc --service --config FILE COMMAND`: runs a command as a Windows service, under the
//! service control manager, which starts it (at boot, say) and stops it through
//! [`stop_requested`]. A service has no console: it reads its settings from the config file
//! and writes its log next to it (`p2pnc-COMMAND.log`, or `--log-file`).
//! `contrib/windows/install-service.ps1` registers one.

use std::path::{Path, PathBuf};

/// The log file of a service run with `config`: `p2pnc-COMMAND.log` in the config's folder.
#[cfg_attr(not(windows), allow(dead_code))]
pub fn log_path_next_to(config: &Path, command: &str) -> PathBuf {
    let config = std::path::absolute(config).unwrap_or_else(|_| config.to_path_buf());
    let dir = config.parent().unwrap_or(Path::new("."));
    dir.join(format!("p2pnc-{command}.log"))
}

#[cfg(windows)]
pub use self::windows::{run, stop_requested};

#[cfg(windows)]
mod windows {
    use std::ffi::OsString;
    use std::process::ExitCode;
    use std::sync::{LazyLock, Mutex, OnceLock};
    use std::time::Duration;

    use tokio_util::sync::CancellationToken;
    use windows_service::service::{
        ServiceControl, ServiceControlAccept, ServiceExitCode, ServiceState, ServiceStatus,
        ServiceType,
    };
    use windows_service::service_control_handler::{
        self, ServiceControlHandlerResult, ServiceStatusHandle,
    };
    use windows_service::{define_windows_service, service_dispatcher};

    use crate::{Cli, Command};

    /// The name the process registers its handler under. The service manager ignores it for
    /// a service that runs in a process of its own, so one name serves every installed
    /// service (`p2pnc-expose`, `p2pnc-server`, ...).
    const SERVICE_NAME: &str = "p2pnc";
    /// How long the service manager is told a stop may take: an agent deletes its router's
    /// port mapping (at most 1.5 s) and says goodbye to the server.
    const STOP_WAIT: Duration = Duration::from_secs(10);
    /// The exit code reported when the command failed, so that the recovery actions
    /// (`sc.exe failure`, set by the install script) restart it.
    const FAILED: u32 = 1;

    /// Cancelled when the service manager asks the service to stop.
    static STOP: LazyLock<CancellationToken> = LazyLock::new(CancellationToken::new);
    /// The handle the service reports its state through, once registered.
    static STATUS: OnceLock<ServiceStatusHandle> = OnceLock::new();
    /// The command to run, handed from `run` to the service's main function.
    static COMMAND: Mutex<Option<Command>> = Mutex::new(None);

    /// Resolves when the service manager asks the service to stop; never outside a service.
    pub async fn stop_requested() {
        STOP.cancelled().await
    }

    /// Runs `cli`'s command as the service the service manager is starting.
    pub fn run(cli: Cli) -> ExitCode {
        let Some(config) = cli.config.clone() else {
            eprintln!(
                "error: --service needs --config FILE (a service reads its settings from it \
                 and writes its log next to it)"
            );
            return ExitCode::FAILURE;
        };
        let log = cli
            .log_file
            .clone()
            .unwrap_or_else(|| super::log_path_next_to(&config, cli.command.name()));
        if let Err(e) = crate::init_logging(&cli, Some(&log)) {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
        *COMMAND.lock().unwrap_or_else(|e| e.into_inner()) = Some(cli.command);
        match service_dispatcher::start(SERVICE_NAME, ffi_service_main) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                let msg = format!(
                    "--service: not started by the service manager ({e}); install the service \
                     with contrib/windows/install-service.ps1, or run without --service"
                );
                tracing::error!("{msg}");
                eprintln!("error: {msg}");
                ExitCode::FAILURE
            }
        }
    }

    define_windows_service!(ffi_service_main, service_main);

    /// The service's main function, on a thread of the service manager's dispatcher.
    fn service_main(_arguments: Vec<OsString>) {
        let handler = |control| match control {
            ServiceControl::Stop | ServiceControl::Shutdown => {
                if let Some(&status) = STATUS.get() {
                    report(status, ServiceState::StopPending, 0);
                }
                STOP.cancel();
                ServiceControlHandlerResult::NoError
            }
            ServiceControl::Interrogate => ServiceControlHandlerResult::NoError,
            _ => ServiceControlHandlerResult::NotImplemented,
        };
        let status = match service_control_handler::register(SERVICE_NAME, handler) {
            Ok(s) => *STATUS.get_or_init(|| s),
            Err(e) => return tracing::error!("cannot register with the service manager: {e}"),
        };
        report(status, ServiceState::Running, 0);
        let command = COMMAND.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(command) = command else {
            return report(status, ServiceState::Stopped, FAILED);
        };
        let code = match crate::run_command(command) {
            Ok(()) => 0,
            Err(e) => {
                tracing::error!("{e:#}");
                FAILED
            }
        };
        report(status, ServiceState::Stopped, code);
    }

    /// Reports the service's state to the service manager.
    fn report(status: ServiceStatusHandle, state: ServiceState, code: u32) {
        let running = state == ServiceState::Running;
        let result = status.set_service_status(ServiceStatus {
            service_type: ServiceType::OWN_PROCESS,
            current_state: state,
            controls_accepted: if running {
                ServiceControlAccept::STOP | ServiceControlAccept::SHUTDOWN
            } else {
                ServiceControlAccept::empty()
            },
            exit_code: if code == 0 {
                ServiceExitCode::Win32(0)
            } else {
                ServiceExitCode::ServiceSpecific(code)
            },
            checkpoint: 0,
            wait_hint: if state == ServiceState::StopPending {
                STOP_WAIT
            } else {
                Duration::ZERO
            },
            process_id: None,
        });
        if let Err(e) = result {
            tracing::warn!("cannot report the state to the service manager: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_logs_next_to_its_config() {
        let dir = std::env::temp_dir().join("p2pnc-svc");
        assert_eq!(
            log_path_next_to(&dir.join("expose.toml"), "expose"),
            dir.join("p2pnc-expose.log")
        );
        // A relative config is taken from the current folder.
        let here = std::env::current_dir().unwrap();
        assert_eq!(
            log_path_next_to(Path::new("server.toml"), "server"),
            here.join("p2pnc-server.log")
        );
    }
}
