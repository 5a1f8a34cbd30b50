//! One module per subcommand.

pub mod agent;
pub mod apply;
pub mod completions;
pub mod control_plane;
pub mod dataplane;
pub mod delete;
pub mod describe;
pub mod diagnose;
pub mod diagnose_xds;
pub mod envoy;
pub mod get;
pub mod inspect;
pub mod run;
pub mod simulate;
pub mod top;
pub mod validate;

use std::io::{IsTerminal, Write};

/// How every command names standard input (`-f -`) in what it prints.
pub const STDIN_LABEL: &str = "<stdin>";
use std::process::ExitCode;
use std::time::Duration;

/// Every duration flag: Go-style (`500ms`, `2s`, `1m30s`), the form policies use. A bare
/// number is refused with the form to use, since its unit would be a guess.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    if !text.is_empty() && text.chars().all(|c| c.is_ascii_digit() || c == '.') && text != "0" {
        return Err(format!(
            "{text:?} has no unit: write a duration such as {text}s or {text}ms"
        ));
    }
    meshlimit_policy::duration::parse_go(text)
}

/// A positive duration flag (an interval between refreshes, say).
pub fn parse_positive_duration(text: &str) -> Result<Duration, String> {
    let duration = parse_duration(text)?;
    if duration.is_zero() {
        return Err("must be longer than 0".to_string());
    }
    Ok(duration)
}

/// Prints the frames `next` draws, `interval` apart, until `frames` are printed (forever when
/// `None`). On a terminal each frame redraws the screen; into a pipe or file the frames follow
/// one another, a blank line apart, with no screen control (as `top -b`).
pub fn refresh(
    frames: Option<u64>,
    interval: Duration,
    mut next: impl FnMut(&tokio::runtime::Runtime) -> anyhow::Result<String>,
) -> anyhow::Result<ExitCode> {
    if frames == Some(0) {
        anyhow::bail!("--iterations must be at least 1");
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let redraw = frames != Some(1) && std::io::stdout().is_terminal();
    let mut drawn = 0u64;
    loop {
        let frame = next(&runtime)?;
        let mut out = std::io::stdout().lock();
        if redraw {
            // Home the cursor and clear the screen, then draw.
            write!(out, "\x1b[H\x1b[2J{frame}")?;
        } else {
            if drawn > 0 {
                writeln!(out)?;
            }
            write!(out, "{frame}")?;
        }
        out.flush()?;
        drop(out);
        drawn += 1;
        if frames.is_some_and(|n| drawn >= n) {
            return Ok(ExitCode::SUCCESS);
        }
        // The timer is made inside the runtime: tokio's time driver lives there.
        runtime.block_on(async { tokio::time::sleep(interval).await });
    }
}

/// Where a long-running command listens: one line on stdout, for scripts and tests to read
/// (as `run --address-file` writes a file); the log on stderr says it too.
pub fn announce(line: &str) {
    tracing::info!("{line}");
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// `--cp` and `--token`, on each command that contacts a control plane (and only there).
#[derive(clap::Args, Clone)]
pub struct ControlPlaneArgs {
    /// Control-plane API URL.
    #[arg(
        long,
        env = "MESHLIMIT_CP",
        hide_env_values = true,
        default_value = "http://127.0.0.1:5681"
    )]
    pub cp: String,
    /// API token for a control plane bound to a non-loopback address.
    #[arg(long, env = "MESHLIMIT_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// How a command reaches the control plane, as the command line and environment gave it.
pub struct Context {
    /// Control-plane API URL.
    pub cp: String,
    /// Token for a control plane that requires one.
    pub token: Option<String>,
    /// `--cp` itself is on the command line (not only its default or `MESHLIMIT_CP`).
    pub cp_on_command_line: bool,
    /// `--cp` came from `MESHLIMIT_CP`.
    pub cp_from_env: bool,
}

impl Context {
    /// `before` is `--cp`/`--token` given before the subcommand (the older form), which wins
    /// over the subcommand's own defaults and environment.
    pub fn new(
        own: ControlPlaneArgs,
        before: (Option<String>, Option<String>),
        source: Option<clap::parser::ValueSource>,
    ) -> Context {
        use clap::parser::ValueSource;
        let (cp_before, token_before) = before;
        Context {
            cp_on_command_line: cp_before.is_some() || source == Some(ValueSource::CommandLine),
            cp_from_env: cp_before.is_none() && source == Some(ValueSource::EnvVariable),
            cp: cp_before.unwrap_or(own.cp),
            token: token_before.or(own.token),
        }
    }
}
