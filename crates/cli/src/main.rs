//! `meshlimit`: the one binary. Each subcommand lives in its own module under `cmd/`; this file
//! only parses the command line and dispatches. Beside the commands: [`kernel`] (the one handle
//! on the kernel limiter, shared by `run` and `agent`, and its consumer of versioned limits),
//! [`report`] (what a data plane reports to the control plane, read from the proxy in process),
//! [`watch`] (the resource-directory watcher) and [`global`] (Redis behind the proxy's shared
//! buckets).

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

mod cmd;
mod global;
mod kernel;
mod logging;
mod notify;
mod report;
mod watch;

#[derive(Parser)]
#[command(
    name = "meshlimit",
    version,
    about = "Rate limiting for service meshes"
)]
struct Cli {
    /// Before the subcommand, as earlier releases took it; the subcommand's own `--cp` is the
    /// documented form. Only commands that contact a control plane accept it.
    #[arg(long, hide = true)]
    cp: Option<String>,
    /// As `--cp` above, for `--token`.
    #[arg(long, hide = true)]
    token: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Dry-run a token bucket over a trace of arrivals.
    Simulate(cmd::simulate::Args),
    /// Validate resource files.
    Validate(cmd::validate::Args),
    /// Show what one dataplane instance enforces.
    Inspect(cmd::inspect::Args),
    /// The all-in-one: control plane and local data planes (proxies, kernel limiter).
    Run {
        #[command(flatten)]
        log: logging::LogArgs,
        #[command(flatten)]
        args: cmd::run::Args,
    },
    /// Kernel agent: enforce RateLimit resources at connect() with eBPF.
    Agent {
        #[command(flatten)]
        log: logging::LogArgs,
        #[command(flatten)]
        cp: cmd::ControlPlaneArgs,
        #[command(flatten)]
        args: cmd::agent::Args,
    },
    /// Control plane: store, REST API, change stream (and xDS with --xds).
    ControlPlane {
        #[command(flatten)]
        log: logging::LogArgs,
        #[command(flatten)]
        args: cmd::control_plane::Args,
    },
    /// A proxy that follows a control plane.
    Dataplane {
        #[command(flatten)]
        log: logging::LogArgs,
        #[command(flatten)]
        cp: cmd::ControlPlaneArgs,
        #[command(flatten)]
        args: cmd::dataplane::Args,
    },
    /// Create or update resources from files.
    Apply {
        #[command(flatten)]
        cp: cmd::ControlPlaneArgs,
        #[command(flatten)]
        args: cmd::apply::Args,
    },
    /// List or show resources, or `ratelimit-stats`.
    Get {
        #[command(flatten)]
        cp: cmd::ControlPlaneArgs,
        #[command(flatten)]
        args: cmd::get::Args,
    },
    /// Show a resource, what it selects and its effective limits there.
    Describe {
        #[command(flatten)]
        cp: cmd::ControlPlaneArgs,
        #[command(flatten)]
        args: cmd::describe::Args,
    },
    /// Delete a resource.
    Delete {
        #[command(flatten)]
        cp: cmd::ControlPlaneArgs,
        #[command(flatten)]
        args: cmd::delete::Args,
    },
    /// Walk the checks behind a rate-limit problem.
    Diagnose {
        #[command(flatten)]
        cp: cmd::ControlPlaneArgs,
        #[command(flatten)]
        args: cmd::diagnose::Args,
    },
    /// Live view of rates and rejections per inbound.
    Top {
        #[command(flatten)]
        cp: cmd::ControlPlaneArgs,
        #[command(flatten)]
        args: cmd::top::Args,
    },
    /// Envoy integration helpers (bootstrap).
    Envoy(cmd::envoy::Args),
    /// Print shell completions.
    Completions(cmd::completions::CompletionsArgs),
    /// Print the man pages (roff).
    Man,
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(err) => err.exit(),
    };
    // Where the subcommand's `--cp` came from (asked only of commands that have one).
    let source = matches
        .subcommand()
        .filter(|(_, sub)| sub.ids().any(|id| id == "cp"))
        .and_then(|(_, sub)| sub.value_source("cp"));
    let before = (cli.cp, cli.token);
    let context = |cp: cmd::ControlPlaneArgs| cmd::Context::new(cp, before.clone(), source);
    if !matches!(
        cli.command,
        Command::Agent { .. }
            | Command::Dataplane { .. }
            | Command::Apply { .. }
            | Command::Get { .. }
            | Command::Describe { .. }
            | Command::Delete { .. }
            | Command::Diagnose { .. }
            | Command::Top { .. }
    ) && (before.0.is_some() || before.1.is_some())
    {
        eprintln!(
            "error: this command does not contact a control plane: --cp and --token do not apply"
        );
        return ExitCode::from(2);
    }
    match &cli.command {
        Command::Run { log, .. }
        | Command::Agent { log, .. }
        | Command::ControlPlane { log, .. }
        | Command::Dataplane { log, .. } => logging::init(log.log_format, "info"),
        _ => logging::init(logging::LogFormat::Text, "warn"),
    }
    let result = match cli.command {
        Command::Simulate(args) => cmd::simulate::run(args),
        Command::Validate(args) => cmd::validate::run(args),
        Command::Inspect(args) => cmd::inspect::run(args),
        Command::Run { args, .. } => cmd::run::run(args),
        Command::Agent { cp, args, .. } => cmd::agent::run(&context(cp), args),
        Command::ControlPlane { args, .. } => cmd::control_plane::run(args),
        Command::Dataplane { cp, args, .. } => cmd::dataplane::run(&context(cp), args),
        Command::Apply { cp, args } => cmd::apply::run(&context(cp), args),
        Command::Get { cp, args } => cmd::get::run(&context(cp), args),
        Command::Describe { cp, args } => cmd::describe::run(&context(cp), args),
        Command::Delete { cp, args } => cmd::delete::run(&context(cp), args),
        Command::Diagnose { cp, args } => cmd::diagnose::run(&context(cp), args),
        Command::Top { cp, args } => cmd::top::run(&context(cp), args),
        Command::Envoy(args) => cmd::envoy::run(args),
        Command::Completions(args) => cmd::completions::completions(Cli::command(), args),
        Command::Man => cmd::completions::man(Cli::command()),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(1)
        }
    }
}
