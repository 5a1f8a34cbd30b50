//! `meshlimit`: the one binary. Each subcommand lives in its own module under `cmd/`; this file
//! only parses the command line and dispatches. Beside the commands: [`kernel`] (the one handle
//! on the kernel limiter, shared by `run` and `agent`, and its consumer of versioned limits),
//! [`report`] (what a data plane reports to the control plane, read from the proxy in process),
//! [`watch`] (the resource-directory watcher) and [`global`] (Redis behind the proxy's shared
//! buckets).

use std::process::ExitCode;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

mod cmd;
mod global;
mod kernel;
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
    /// Control-plane API URL used by apply/get/describe/delete/diagnose/top, and followed by dataplane/agent.
    #[arg(
        long,
        global = true,
        env = "MESHLIMIT_CP",
        default_value = "http://127.0.0.1:5681"
    )]
    cp: String,
    /// API token for a control plane bound to a non-loopback address.
    #[arg(long, global = true, env = "MESHLIMIT_TOKEN", hide_env_values = true)]
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
    Run(cmd::run::Args),
    /// Kernel agent: enforce RateLimit resources at connect() with eBPF.
    Agent(cmd::agent::Args),
    /// Control plane: store, REST API, change stream (and xDS with --xds).
    ControlPlane(cmd::control_plane::Args),
    /// A proxy that follows a control plane.
    Dataplane(cmd::dataplane::Args),
    /// Create or update resources from files.
    Apply(cmd::apply::Args),
    /// List or show resources, or `ratelimit-stats`.
    Get(cmd::get::Args),
    /// Show a resource, what it selects and its effective limits there.
    Describe(cmd::describe::Args),
    /// Delete a resource.
    Delete(cmd::delete::Args),
    /// Walk the checks behind a rate-limit problem.
    Diagnose(cmd::diagnose::Args),
    /// Live view of rates and rejections per inbound.
    Top(cmd::top::Args),
    /// Envoy integration helpers (bootstrap).
    Envoy(cmd::envoy::Args),
    /// Print shell completions.
    Completions(cmd::completions::CompletionsArgs),
    /// Print the man pages (roff).
    Man,
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cp_on_command_line = matches.value_source("cp") == Some(ValueSource::CommandLine);
    let cp_from_env = matches.value_source("cp") == Some(ValueSource::EnvVariable);
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(err) => err.exit(),
    };
    let ctx = cmd::Context {
        cp: cli.cp,
        token: cli.token,
        cp_on_command_line,
        cp_from_env,
    };
    let result = match cli.command {
        Command::Simulate(args) => cmd::simulate::run(args),
        Command::Validate(args) => cmd::validate::run(args),
        Command::Inspect(args) => cmd::inspect::run(args),
        Command::Run(args) => cmd::run::run(args),
        Command::Agent(args) => cmd::agent::run(&ctx, args),
        Command::ControlPlane(args) => cmd::control_plane::run(args),
        Command::Dataplane(args) => cmd::dataplane::run(&ctx, args),
        Command::Apply(args) => cmd::apply::run(&ctx, args),
        Command::Get(args) => cmd::get::run(&ctx, args),
        Command::Describe(args) => cmd::describe::run(&ctx, args),
        Command::Delete(args) => cmd::delete::run(&ctx, args),
        Command::Diagnose(args) => cmd::diagnose::run(&ctx, args),
        Command::Top(args) => cmd::top::run(&ctx, args),
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
