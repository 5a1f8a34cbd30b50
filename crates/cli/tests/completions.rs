//! `meshlimit completions` and `meshlimit man`, generated from the command definitions: bash
//! loads the completions and completes subcommands and flags; the man pages cover every
//! subcommand.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_meshlimit");

fn output(args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(args)
        .output()
        .expect("meshlimit runs");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8")
}

/// What bash's completion offers for the words typed so far.
fn complete(words: &[&str]) -> Vec<String> {
    let script = format!(
        "source <('{BIN}' completions bash) && COMP_WORDS=({}) && COMP_CWORD={} && \
         _meshlimit meshlimit && printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        words
            .iter()
            .map(|w| format!("'{w}'"))
            .collect::<Vec<_>>()
            .join(" "),
        words.len() - 1
    );
    let out = Command::new("bash")
        .args(["-c", &script])
        .output()
        .expect("bash runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn bash_completes_subcommands_and_their_flags() {
    let subcommands = complete(&["meshlimit", ""]);
    for want in [
        "apply",
        "run",
        "dataplane",
        "diagnose",
        "completions",
        "man",
    ] {
        assert!(
            subcommands.iter().any(|s| s == want),
            "{want}: {subcommands:?}"
        );
    }
    let flags = complete(&["meshlimit", "run", "--"]);
    for want in ["--resources", "--redis", "--upstream-timeout"] {
        assert!(flags.iter().any(|s| s == want), "{want}: {flags:?}");
    }
    for shell in ["zsh", "fish"] {
        let script = output(&["completions", shell]);
        assert!(script.contains("upstream-timeout"), "{shell}: {script}");
    }
}

#[test]
fn the_man_pages_cover_every_subcommand() {
    let roff = output(&["man"]);
    let titles: Vec<&str> = roff
        .lines()
        .filter_map(|l| l.strip_prefix(".TH "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(titles.first(), Some(&"meshlimit"), "{titles:?}");
    for sub in [
        "run",
        "apply",
        "get",
        "diagnose",
        "control-plane",
        "dataplane",
        "agent",
    ] {
        assert!(
            titles.contains(&format!("meshlimit-{sub}").as_str()),
            "meshlimit-{sub}: {titles:?}"
        );
    }
    // Flags with their help, as roff.
    assert!(roff.contains("\\-\\-upstream\\-timeout"), "{roff}");
}
