//! One logging setup for every command: `tracing` events on stderr, filtered by `RUST_LOG`
//! (default `info` for the long-running commands, `warn` for one-shot ones), as timestamped
//! text or, with `--log-format json`, one JSON object per line for a log pipeline.

use std::io::IsTerminal;

/// How a long-running command writes its log.
#[derive(Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Timestamped lines for people (colour on a terminal).
    #[default]
    Text,
    /// One JSON object per event (timestamp, level, target, fields).
    Json,
}

/// `--log-format`, on the commands that run until stopped.
#[derive(clap::Args, Clone, Copy)]
pub struct LogArgs {
    /// Log format on stderr (the level comes from RUST_LOG, default info).
    #[arg(long, value_enum, value_name = "FORMAT", default_value = "text")]
    pub log_format: LogFormat,
}

/// Installs the subscriber once for the process; `default_level` applies when `RUST_LOG` is
/// unset or unreadable.
pub fn init(format: LogFormat, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second call (a test harness, say) keeps the first setup.
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder.json().with_ansi(false).try_init(),
    };
}
