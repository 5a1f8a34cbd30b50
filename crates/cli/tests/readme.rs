//! The README's `sh` blocks run as written from the repository root: every `meshlimit` command
//! that needs no server is run for real and must succeed; one that starts a server is checked
//! by clap (its flags, with `--help`) and by the files it names; every script exists.

use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_meshlimit");

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The lines of the README's ```sh blocks.
fn sh_lines() -> Vec<String> {
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README.md");
    let mut lines = Vec::new();
    let mut inside = false;
    for line in readme.lines() {
        match line.trim_start().strip_prefix("```") {
            Some(lang) => inside = !inside && lang.trim() == "sh",
            None if inside => lines.push(line.to_string()),
            None => {}
        }
    }
    lines
}

/// A command line as the shell splits it, up to a comment, `&`, `|` or a redirection.
fn words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quote = None;
    let mut started = false;
    for c in line.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.push(c),
            (None, '"' | '\'') => {
                quote = Some(c);
                started = true;
            }
            (None, '#' | '&' | '|' | '>' | ';') => break,
            (None, c) if c.is_whitespace() => {
                if started || !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                    started = false;
                }
            }
            (None, c) => word.push(c),
        }
    }
    if started || !word.is_empty() {
        words.push(word);
    }
    words
}

/// Subcommands that need no server: run for real.
const OFFLINE: [&str; 6] = [
    "validate",
    "inspect",
    "simulate",
    "envoy",
    "completions",
    "man",
];

#[test]
fn every_readme_command_runs_as_written() {
    let lines = sh_lines();
    let mut run = 0;
    for line in &lines {
        let words = words(line);
        let Some(first) = words.first() else { continue };
        if first.starts_with("scripts/") {
            let script = root().join(first);
            assert!(
                script.is_file(),
                "README names {first}, which does not exist"
            );
            continue;
        }
        if first != "meshlimit" {
            continue;
        }
        let args = &words[1..];
        // Every relative path it names exists.
        for arg in args {
            if arg.starts_with("examples/") || arg.starts_with("scripts/") {
                assert!(root().join(arg).exists(), "{line}: {arg} does not exist");
            }
        }
        let subcommand = args
            .iter()
            .find(|a| !a.starts_with('-'))
            .cloned()
            .unwrap_or_default();
        let mut command = Command::new(BIN);
        command
            .args(args)
            .current_dir(root())
            .env_remove("MESHLIMIT_CP");
        if !OFFLINE.contains(&subcommand.as_str()) {
            command.arg("--help");
        }
        let out = command.output().expect("meshlimit runs");
        assert!(
            out.status.success(),
            "README: {line}\nexit {:?}\n{}{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        run += 1;
    }
    assert!(
        run >= 6,
        "the README's meshlimit commands were found: {lines:?}"
    );
}

#[test]
fn the_shell_splitter_reads_the_readme_forms() {
    assert_eq!(
        words(r#"redis-server --save "" --port 1 &   # comment"#),
        ["redis-server", "--save", "", "--port", "1"]
    );
    assert_eq!(words("meshlimit man > meshlimit.1"), ["meshlimit", "man"]);
}
