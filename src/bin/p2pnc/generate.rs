//! `p2pnc generate-assets DIR` (hidden): the man pages (`p2pnc.1` and one per command,
//! `p2pnc-server.1`, ...) and the shell completions (bash, zsh, fish) of this command line,
//! written into DIR for a package (see `cargo deb` in Cargo.toml).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use clap_complete::Shell;

/// Flags of `generate-assets`.
#[derive(Args)]
pub struct GenerateArgs {
    /// Directory to write into (created if missing).
    dir: PathBuf,
}

/// Writes the man pages and completions of `cli` into the directory.
pub fn run(args: &GenerateArgs, cli: clap::Command) -> Result<()> {
    let dir = &args.dir;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut cli = cli.name("p2pnc");
    cli.build();
    let write = |title: String, cmd: &clap::Command| -> Result<()> {
        let mut page = Vec::new();
        clap_mangen::Man::new(cmd.clone())
            .title(title.clone())
            .render(&mut page)?;
        let path = dir.join(format!("{title}.1"));
        std::fs::write(&path, page).with_context(|| format!("cannot write {}", path.display()))
    };
    write("p2pnc".into(), &cli)?;
    let pages = cli
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help");
    for sub in pages {
        write(format!("p2pnc-{}", sub.get_name()), sub)?;
    }
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut cli, "p2pnc", dir)
            .with_context(|| format!("cannot write the {shell} completions"))?;
    }
    Ok(())
}
