//! Server-scale load generator (`cargo bench --bench scale`): see `../scale.rs`, and
//! `cluster.rs` for its cluster mode.
//!
//! Linux only: it reads the server's memory and CPU time from `/proc` and spreads its agents
//! over 127.0.0.0/8 source addresses; elsewhere it says it was skipped.

#[cfg(target_os = "linux")]
#[path = "../scale.rs"]
mod linux;

#[cfg(target_os = "linux")]
mod cluster;

fn main() -> std::process::ExitCode {
    #[cfg(target_os = "linux")]
    return linux::main();
    #[cfg(not(target_os = "linux"))]
    {
        println!("skipped: the scale benchmark needs Linux (/proc, 127.0.0.0/8 sources)");
        std::process::ExitCode::SUCCESS
    }
}
