//! What the install story ships besides the binary: completions and man pages generated from
//! the command definitions (`p2pnc completions`, `p2pnc man`). The Debian package itself is
//! built and installed by `scripts/deb.sh --check` in the test run.

use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_p2pnc");

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn completions_know_every_command_and_their_flags() {
    for (shell, marker) in [
        ("bash", "_p2pnc()"),
        ("zsh", "#compdef p2pnc"),
        ("fish", "complete -c p2pnc"),
    ] {
        let out = run(&["completions", shell]);
        assert!(out.status.success(), "{shell}: {out:?}");
        let script = String::from_utf8(out.stdout).unwrap();
        assert!(script.contains(marker), "{shell} script lacks {marker}");
        // fish names long flags without their dashes (`-l warm-idle`).
        for word in ["expose", "connect", "nat-check", "warm-idle", "no-encrypt"] {
            assert!(script.contains(word), "{shell} completions lack {word}");
        }
    }
    let out = run(&["completions", "tcsh"]);
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("invalid value 'tcsh'") && err.contains("bash"),
        "an unknown shell is refused with the list: {err}"
    );
}

#[test]
fn the_man_page_documents_the_commands_and_the_pages_per_command() {
    let out = run(&["man"]);
    assert!(out.status.success(), "{out:?}");
    let page = String::from_utf8(out.stdout).unwrap();
    assert!(
        page.starts_with(".ie") || page.contains(".TH p2pnc 1"),
        "not roff: {page:.80}"
    );
    assert!(page.contains(".TH p2pnc 1"));
    assert!(page.contains("nat\\-check"), "the command list is missing");

    let dir = std::env::temp_dir().join(format!("p2pnc-man-{}", std::process::id()));
    let out = run(&["man", "--dir", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    for name in [
        "p2pnc.1",
        "p2pnc-server.1",
        "p2pnc-expose.1",
        "p2pnc-connect.1",
    ] {
        let text = std::fs::read_to_string(dir.join(name))
            .unwrap_or_else(|e| panic!("{name} was not written: {e}"));
        assert!(text.contains(".TH"), "{name} is not a man page");
    }
    let expose = std::fs::read_to_string(dir.join("p2pnc-expose.1")).unwrap();
    assert!(
        expose.contains("\\-\\-secret"),
        "the expose page lacks its flags"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_closed_pipe_ends_the_output_quietly() {
    // `p2pnc completions bash | head -1`: the reader goes away; no panic, no error line.
    let mut child = Command::new(BIN)
        .args(["completions", "bash"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        out.status.success() && err.is_empty(),
        "{:?}: {err}",
        out.status
    );
}
