//! `meshlimit delete <kind> <name> [--mesh M]`: remove one resource from the control plane.
//! Refused (409) when what remains would be inconsistent, e.g. a mesh that still holds resources.

use std::process::ExitCode;

use meshlimit_policy::Kind;

use super::Context;
use super::get::output::{block_on, client, explain, kind_slash_name};

#[derive(clap::Args)]
pub struct Args {
    /// meshratelimit (mrl), ratelimit (rl), dataplane (dp) or mesh.
    #[arg(value_name = "KIND")]
    pub kind: String,
    #[arg(value_name = "NAME")]
    pub name: String,
    /// The mesh of the resource.
    #[arg(short = 'm', long, default_value = "default")]
    pub mesh: String,
}

pub fn run(ctx: &Context, args: Args) -> anyhow::Result<ExitCode> {
    let kind: Kind = args.kind.parse()?;
    let client = client(ctx)?;
    let result = block_on(client.delete(kind, &args.mesh, &args.name))?.map_err(explain)?;
    for applied in &result.results {
        println!(
            "{} {}",
            kind_slash_name(&applied.kind, &applied.name),
            applied.action
        );
    }
    Ok(ExitCode::SUCCESS)
}
