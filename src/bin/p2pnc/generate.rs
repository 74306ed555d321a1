//! `p2pnc completions SHELL` and `p2pnc man`: shell completions and man pages generated from
//! the same definitions as `--help`, so they cannot drift from the flags. The Debian package
//! (`scripts/deb.sh`) ships both; users of `cargo install` generate them with these commands.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, Command};

#[derive(Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    shell: clap_complete::Shell,
}

#[derive(Args)]
pub struct ManArgs {
    /// Write p2pnc.1 and one page per command (p2pnc-server.1, …) into this directory instead
    /// of printing p2pnc.1 on stdout.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

/// Prints the completion script for `args.shell` on stdout.
pub fn completions(args: CompletionsArgs, mut cmd: Command) -> Result<()> {
    // Rendered into memory first: clap_complete panics when its writer fails.
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "p2pnc", &mut script);
    print(&script).context("cannot write the completions")
}

/// Prints the man page, or writes every page into `args.dir`.
pub fn man(args: ManArgs, cmd: Command) -> Result<()> {
    let cmd = cmd.name("p2pnc");
    match args.dir {
        None => {
            let mut page = Vec::new();
            clap_mangen::Man::new(cmd)
                .render(&mut page)
                .context("cannot render the man page")?;
            print(&page).context("cannot write the man page")
        }
        Some(dir) => write_pages(&dir, cmd),
    }
}

/// Writes `bytes` on stdout; a reader that stopped early (`| head`) is not an error.
fn print(bytes: &[u8]) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

/// Writes `p2pnc.1` and a page per visible command into `dir`.
fn write_pages(dir: &Path, cmd: Command) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    // The command pages are named as `man` finds them: `man p2pnc-server`.
    clap_mangen::generate_to(cmd, dir)
        .with_context(|| format!("cannot write the man pages into {}", dir.display()))
}
