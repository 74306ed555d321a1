//! NAT-lab benchmarks of the p2pnc binary: `cargo bench --bench lab
//! [-- latency|throughput|grid|warm|warm-throughput|ranges]` (all when none is named).
//!
//! - **latency**: time from spawning `p2pnc connect --stdio` (1 byte already on its stdin) to the
//!   first echoed byte on its stdout over a direct path, RTT 40 ms between any two hosts, against
//!   the same measurement for a plain TCP client through a port forward on B's router (spawn,
//!   connect, 1 byte echoed: 2 RTT plus process start).
//! - **throughput**: iperf3 one way through `connect --listen` → direct path → `expose`,
//!   encrypted and with `--no-encrypt`, and the library on both ends without a proxy, against
//!   iperf3 through a port forward, with 20 ms one-way delay and without; with the CPU time
//!   the p2pnc processes spend per GB.
//! - **grid**: every pair of lab NAT kinds (client site × agent site), server with `--relay`:
//!   which path each session took and its setup time (the connect report's `setup_ms`).
//! - **warm**: local connections through `connect --listen`, from their TCP connect to the
//!   first echoed byte: on a warm path (the first one builds it, the later ones ride it) next
//!   to `--warm-idle 0` (each punches its own), RTT 40 ms; and the bytes a warm path sends
//!   while idle, next to an idle plain connection's.
//! - **warm-throughput**: the throughput benchmark's baseline, cold and warm-path modes only:
//!   one bulk stream over a warm path against a cold direct stream, same run.
//! - **ranges**: 50 sequential HTTP range requests of 256 KiB (nginx on host B), a connection
//!   per request or one kept alive, through `connect --listen` with and without warm paths,
//!   against a plain port forward, RTT 40 ms.
//!
//! Results are printed as plain-text (markdown) tables and written to `target/lab-bench.txt`.
//! Benchmarks print figures and exit 0; they exit 1 when something is broken (a session failed,
//! a latency or throughput session was not direct). Without root they print
//! `skipped: NAT lab needs root (...)` and exit 0; off Linux they say they were skipped.

#[cfg(target_os = "linux")]
#[path = "../tests/lab_support/mod.rs"]
mod lab_support;
#[cfg(target_os = "linux")]
#[path = "lab/linux.rs"]
mod linux;
#[cfg(target_os = "linux")]
#[path = "lab/ranges.rs"]
mod ranges;
#[cfg(target_os = "linux")]
#[path = "lab/throughput.rs"]
mod throughput;

fn main() -> std::process::ExitCode {
    #[cfg(target_os = "linux")]
    return linux::main();
    #[cfg(not(target_os = "linux"))]
    {
        println!("skipped: the NAT lab needs Linux (network namespaces)");
        std::process::ExitCode::SUCCESS
    }
}
