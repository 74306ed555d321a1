//! Child processes in lab namespaces.

use std::ffi::OsString;
use std::fs::{self, File};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::netns::{child_path, tool};

/// How often [`Proc::wait_timeout`] polls for the exit.
const EXIT_POLL: Duration = Duration::from_millis(5);

/// What to start in a namespace ([`crate::Lab::spawn_cmd`]), built like a `Command`.
#[derive(Clone, Debug)]
pub struct Spawn {
    pub(crate) program: OsString,
    pub(crate) args: Vec<OsString>,
    pub(crate) name: String,
    pub(crate) pipe_stdin: bool,
    pub(crate) pipe_stdout: bool,
    pub(crate) env_remove_prefixes: Vec<String>,
    pub(crate) env: Vec<(OsString, OsString)>,
}

impl Spawn {
    /// Runs `program`; its logs are named after the program's file name unless
    /// [`Spawn::name`] says otherwise.
    pub fn new(program: impl Into<OsString>) -> Spawn {
        let program = program.into();
        let name = PathBuf::from(&program)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "proc".into());
        Spawn {
            program,
            args: Vec::new(),
            name,
            pipe_stdin: false,
            pipe_stdout: false,
            env_remove_prefixes: Vec::new(),
            env: Vec::new(),
        }
    }

    pub fn arg(mut self, a: impl Into<OsString>) -> Spawn {
        self.args.push(a.into());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Spawn
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Name of the process in logs and diagnostics.
    pub fn name(mut self, name: impl Into<String>) -> Spawn {
        self.name = name.into();
        self
    }

    /// The name given with [`Spawn::name`] (or the program's file name).
    pub fn label(&self) -> &str {
        &self.name
    }

    /// Pipe stdin (take it with [`Proc::take_stdin`]); otherwise stdin is empty.
    pub fn pipe_stdin(mut self) -> Spawn {
        self.pipe_stdin = true;
        self
    }

    /// Pipe stdout (take it with [`Proc::take_stdout`]); otherwise it goes to a log file.
    pub fn pipe_stdout(mut self) -> Spawn {
        self.pipe_stdout = true;
        self
    }

    /// Do not pass on this process's environment variables whose names start with `prefix`
    /// (hermetic runs of a program that reads its configuration from the environment).
    pub fn env_remove_prefix(mut self, prefix: impl Into<String>) -> Spawn {
        self.env_remove_prefixes.push(prefix.into());
        self
    }

    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Spawn {
        self.env.push((key.into(), value.into()));
        self
    }

    /// The `ip netns exec NS program args...` command, stdio and environment set, and a
    /// parent-death signal so nothing outlives the thread that started it.
    pub(crate) fn command(&self, ns: &str, stderr: File, stdout: Option<File>) -> Command {
        let mut cmd = Command::new(tool("ip"));
        cmd.args(["netns", "exec", ns])
            .arg(&self.program)
            .args(&self.args)
            .env("PATH", child_path());
        for (k, _) in std::env::vars_os() {
            let name = k.to_string_lossy();
            if self
                .env_remove_prefixes
                .iter()
                .any(|p| name.starts_with(p.as_str()))
            {
                cmd.env_remove(&k);
            }
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.stderr(stderr);
        cmd.stdin(if self.pipe_stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        match stdout {
            Some(f) => cmd.stdout(f),
            None => cmd.stdout(Stdio::piped()),
        };
        // SAFETY: prctl is async-signal-safe. The child (and what `ip netns exec` execs) dies
        // with SIGKILL if the thread that spawned it exits.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
                Ok(())
            });
        }
        cmd
    }
}

/// A child process in a lab namespace; killed (and reaped) on drop.
pub struct Proc {
    pub name: String,
    pub(crate) child: Child,
    pub stderr_path: PathBuf,
    pub stdout_path: Option<PathBuf>,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn take_stdin(&mut self) -> Option<ChildStdin> {
        self.child.stdin.take()
    }

    pub fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.child.stdout.take()
    }

    /// Everything the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Everything written to stdout so far (empty when stdout is piped).
    pub fn stdout(&self) -> String {
        self.stdout_path
            .as_ref()
            .and_then(|p| fs::read_to_string(p).ok())
            .unwrap_or_default()
    }

    /// Exit status if the process has exited.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_status() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(EXIT_POLL);
        }
    }

    /// Polls stderr until a line contains `pattern`; returns that line. Panics on timeout or
    /// if the process exits first. Meant for third-party programs whose log is the only sign
    /// of readiness (e.g. miniupnpd).
    pub fn wait_stderr(&mut self, pattern: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.stderr();
            if let Some(l) = text.lines().find(|l| l.contains(pattern)) {
                return l.to_string();
            }
            if let Some(s) = self.try_status() {
                let text = self.stderr();
                if let Some(l) = text.lines().find(|l| l.contains(pattern)) {
                    return l.to_string();
                }
                panic!(
                    "{} exited ({s}) before logging {pattern:?}; stderr:\n{text}",
                    self.name
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "timeout: {} did not log {pattern:?} within {timeout:?}; stderr:\n{text}",
                    self.name
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGTERM and waits up to `timeout` for the exit (SIGKILL after that).
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        // SAFETY: kill(2) on our own child (`ip netns exec` execs the program in place).
        unsafe {
            libc::kill(self.pid() as libc::pid_t, libc::SIGTERM);
        }
        let status = self.wait_timeout(timeout);
        if status.is_none() {
            self.kill();
        }
        status
    }

    /// SIGKILLs and reaps the process.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}
