//! `meshlimit envoy`: helpers for running Envoy sidecars fed by meshlimit's xDS server.

use std::process::ExitCode;

use anyhow::Context as _;
use meshlimit_xds::{Bootstrap, XdsAddress};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Print an Envoy bootstrap (YAML) that takes listeners and clusters for one Dataplane
    /// from the control plane's xDS server (`meshlimit control-plane --xds ADDR`).
    Bootstrap(BootstrapArgs),
}

#[derive(clap::Args)]
struct BootstrapArgs {
    /// The Dataplane this Envoy runs for; its node id is `<mesh>.<dataplane>`.
    #[arg(long)]
    dataplane: String,
    /// The Dataplane's mesh.
    #[arg(long, default_value = "default")]
    mesh: String,
    /// The xDS server, HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:5678")]
    xds: String,
    /// Address of Envoy's admin listener.
    #[arg(long, default_value = "127.0.0.1")]
    admin_address: String,
    /// Port of Envoy's admin listener (0: any free port; see Envoy's --admin-address-path).
    #[arg(long, default_value_t = 9901)]
    admin_port: u16,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        Command::Bootstrap(args) => bootstrap(args),
    }
}

fn bootstrap(args: BootstrapArgs) -> anyhow::Result<ExitCode> {
    for (flag, value) in [("--dataplane", &args.dataplane), ("--mesh", &args.mesh)] {
        anyhow::ensure!(!value.trim().is_empty(), "{flag} must not be empty");
    }
    let xds: XdsAddress = args.xds.parse().context("--xds")?;
    let bootstrap = Bootstrap {
        mesh: args.mesh,
        dataplane: args.dataplane,
        xds,
        admin_address: args.admin_address,
        admin_port: args.admin_port,
    };
    print!("{}", bootstrap.to_yaml());
    Ok(ExitCode::SUCCESS)
}
