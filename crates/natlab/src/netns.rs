//! Network namespaces: creating and deleting them, running code and commands inside, their
//! hosts files, and the tools the lab runs.

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;

/// Prefix of every namespace the lab creates: `p2pnclab-<pid>-<counter>-<role>`.
pub const NS_PREFIX: &str = "p2pnclab-";

/// Where `ip netns` keeps its namespaces.
const NETNS_DIR: &str = "/var/run/netns";
/// Where `ip netns exec NAME` finds files to bind-mount over `/etc` (e.g. `hosts`).
const ETC_NETNS_DIR: &str = "/etc/netns";

/// Directories searched for tools besides PATH.
const SBIN_DIRS: [&str; 6] = [
    "/usr/local/sbin",
    "/usr/local/bin",
    "/usr/sbin",
    "/usr/bin",
    "/sbin",
    "/bin",
];

/// Absolute path of a tool, searched in PATH and the sbin directories.
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(SBIN_DIRS.iter().map(PathBuf::from));
    dirs.into_iter().map(|d| d.join(name)).find(|p| {
        fs::metadata(p)
            .map(|m| m.is_file() && m.mode() & 0o111 != 0)
            .unwrap_or(false)
    })
}

/// Like [`find_tool`], but panics when the tool is missing.
pub fn tool(name: &str) -> PathBuf {
    find_tool(name).unwrap_or_else(|| panic!("NAT lab: required tool `{name}` not found"))
}

/// PATH for the lab's child processes: the caller's PATH plus the standard sbin/bin
/// directories (so `ip`, `nft`, ... resolve even where PATH lacks /usr/sbin).
pub(crate) fn child_path() -> OsString {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    for d in SBIN_DIRS {
        if !dirs.iter().any(|x| x == Path::new(d)) {
            dirs.push(PathBuf::from(d));
        }
    }
    std::env::join_paths(dirs).unwrap_or_default()
}

/// Runs `cmd`, panicking with `what` and its output unless it succeeds; returns stdout.
pub(crate) fn run_ok(cmd: &mut Command, what: &str) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{what}: {cmd:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Like [`run_ok`], writing `input` to the command's stdin.
pub(crate) fn run_ok_stdin(cmd: &mut Command, input: &str, what: &str) -> String {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: cannot run {cmd:?}: {e}"));
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(input.as_bytes())
        .unwrap_or_else(|e| panic!("{what}: write stdin: {e}"));
    let out = child.wait_with_output().expect("wait for a lab tool");
    if !out.status.success() {
        panic!(
            "{what}: failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Names of existing namespaces (from /var/run/netns).
pub fn list_namespaces() -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(NETNS_DIR)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

pub(crate) fn netns_path(ns: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(ns)
}

/// Creates namespaces (one `ip -batch` for all of them).
pub(crate) fn add_namespaces(names: &[String]) {
    let batch: String = names.iter().map(|n| format!("netns add {n}\n")).collect();
    run_ok_stdin(
        Command::new(tool("ip")).args(["-batch", "-"]),
        &batch,
        "ip netns add",
    );
}

/// SIGKILLs every process whose network namespace is one of `names`, and every
/// `ip netns exec NAME ...` that has not entered it yet (never this process).
pub(crate) fn kill_namespace_pids(names: &[String]) {
    let inodes: Vec<u64> = names
        .iter()
        .filter_map(|n| fs::metadata(netns_path(n)).ok())
        .map(|m| m.ino())
        .collect();
    if inodes.is_empty() {
        return;
    }
    let me = std::process::id() as i32;
    let Ok(rd) = fs::read_dir("/proc") else {
        return;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if pid <= 1 || pid == me {
            continue;
        }
        let inside =
            fs::metadata(format!("/proc/{pid}/ns/net")).is_ok_and(|m| inodes.contains(&m.ino()));
        let entering = || {
            fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                names.iter().any(|n| {
                    let exec = format!("netns\0exec\0{n}\0");
                    c.windows(exec.len()).any(|w| w == exec.as_bytes())
                })
            })
        };
        if inside || entering() {
            // SAFETY: plain kill(2) on a pid that lives in one of our own lab namespaces.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

/// Deletes namespaces and their `/etc/netns` folders (one `ip -batch`; errors ignored).
pub(crate) fn delete_namespaces(names: &[String]) {
    if names.is_empty() {
        return;
    }
    let batch: String = names.iter().map(|n| format!("netns del {n}\n")).collect();
    if let Ok(mut child) = Command::new(tool("ip"))
        .args(["-force", "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    {
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(batch.as_bytes());
        }
        let _ = child.wait();
    }
    for n in names {
        let _ = fs::remove_dir_all(etc_netns_dir(n));
    }
}

/// Deletes namespaces `p2pnclab-<pid>-...` (and their `/etc/netns` folders) whose creating
/// process no longer exists.
pub fn cleanup_stale_namespaces() {
    let stale = |name: &str| {
        let Some(rest) = name.strip_prefix(NS_PREFIX) else {
            return false;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            return false;
        };
        pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists()
    };
    let names: Vec<String> = list_namespaces().into_iter().filter(|n| stale(n)).collect();
    kill_namespace_pids(&names);
    delete_namespaces(&names);
    // Folders left by a run that died between making them and its namespaces.
    if let Ok(rd) = fs::read_dir(ETC_NETNS_DIR) {
        for e in rd.flatten() {
            if e.file_name().to_str().is_some_and(stale) {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
}

/// The folder `ip netns exec NAME` bind-mounts over `/etc`.
pub(crate) fn etc_netns_dir(ns: &str) -> PathBuf {
    Path::new(ETC_NETNS_DIR).join(ns)
}

/// Writes `/etc/netns/NS/hosts`.
pub(crate) fn write_hosts_file(ns: &str, text: &str) -> io::Result<()> {
    let dir = etc_netns_dir(ns);
    fs::create_dir_all(&dir)?;
    fs::write(dir.join("hosts"), text)
}

/// Moves the calling thread (only) into a network namespace.
pub(crate) fn enter_netns(ns: &str) -> io::Result<()> {
    let f = File::open(netns_path(ns))?;
    // SAFETY: setns with a valid namespace fd; CLONE_NEWNET affects only the calling thread.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Runs `f` on a fresh thread that has entered namespace `ns`, and returns its result.
/// Sockets created by `f` stay in that namespace and can be used from any thread afterwards.
/// A panic in `f` is propagated.
///
/// Only the network namespace changes: such a thread still reads the root namespace's
/// `/etc/hosts`, so it does not resolve [`crate::RDV_NAME`] (processes started with
/// [`crate::Lab::spawn`] or [`crate::Lab::run`] do: `ip netns exec` bind-mounts the
/// namespace's own hosts file).
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    thread::scope(|s| {
        let h = s.spawn(move || {
            enter_netns(ns).unwrap_or_else(|e| panic!("enter netns {ns}: {e}"));
            f()
        });
        match h.join() {
            Ok(v) => v,
            Err(p) => std::panic::resume_unwind(p),
        }
    })
}

/// One kernel setting: a path relative to `/proc/sys/net/`, its value, and whether a missing
/// file is fine (e.g. `bridge/...` without the br_netfilter module).
pub(crate) struct Sysctl(pub &'static str, pub &'static str, pub bool);

/// Writes kernel settings in each namespace, from one thread that enters them in turn.
pub(crate) fn set_sysctls(per_ns: &[(String, Vec<Sysctl>)]) {
    thread::scope(|s| {
        s.spawn(|| {
            for (ns, settings) in per_ns {
                enter_netns(ns).unwrap_or_else(|e| panic!("enter netns {ns}: {e}"));
                for Sysctl(path, value, optional) in settings {
                    let full = Path::new("/proc/sys/net").join(path);
                    match fs::write(&full, value) {
                        Ok(()) => {}
                        Err(e) if *optional && e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => panic!("write {value} to {} in {ns}: {e}", full.display()),
                    }
                }
            }
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p));
    });
}
