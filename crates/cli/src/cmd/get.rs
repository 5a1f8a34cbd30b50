//! `meshlimit get <kind> [name] [-o table|yaml|json]`: resources from the control plane, and
//! `meshlimit get ratelimit-stats [--watch]`: what every data plane and kernel agent counted.
//!
//! `-o yaml` prints each resource in the form it was written (universal or Kubernetes), as
//! documents that `meshlimit apply -f` takes back unchanged.

use std::process::ExitCode;
use std::time::Duration;

use meshlimit_policy::Kind;
use serde_json::Value;

use super::Context;

pub mod output;
pub mod stats;

use output::{Table, block_on, client, explain, resource_of, summary, yaml_documents};

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Yaml,
    Json,
}

#[derive(clap::Args)]
pub struct Args {
    /// meshratelimit (mrl), ratelimit (rl), dataplane (dp), mesh — or ratelimit-stats.
    #[arg(value_name = "KIND")]
    pub kind: String,
    /// One resource by name (all of the kind when omitted).
    #[arg(value_name = "NAME")]
    pub name: Option<String>,
    /// The mesh to look in.
    #[arg(short = 'm', long, default_value = "default")]
    pub mesh: String,
    /// Every mesh.
    #[arg(short = 'A', long)]
    pub all_meshes: bool,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
    pub output: Format,
    /// With ratelimit-stats: refresh until interrupted.
    #[arg(short = 'w', long)]
    pub watch: bool,
    /// With --watch: time between refreshes.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = super::parse_positive_duration)]
    pub interval: Duration,
    /// With --watch: print this many refreshes, then exit.
    #[arg(short = 'n', long, value_name = "N", requires = "watch")]
    pub iterations: Option<u64>,
}

pub fn run(ctx: &Context, args: Args) -> anyhow::Result<ExitCode> {
    if matches!(
        args.kind.as_str(),
        "ratelimit-stats" | "ratelimitstats" | "stats"
    ) {
        let frames = if args.watch { args.iterations } else { Some(1) };
        return stats::run(ctx, args.output, frames, args.interval);
    }
    let kind: Kind = args.kind.parse().map_err(|e| {
        anyhow::anyhow!("{e}; or ratelimit-stats for the counters of every data plane")
    })?;
    let client = client(ctx)?;
    let all_meshes = args.all_meshes && args.name.is_none();
    let values: Vec<Value> = block_on(async {
        match &args.name {
            Some(name) => client
                .get_resource(kind, &args.mesh, name)
                .await
                .map(|v| vec![v]),
            None => {
                client
                    .list(kind, (!all_meshes).then_some(args.mesh.as_str()))
                    .await
            }
        }
    })?
    .map_err(explain)?;
    let resources = values
        .iter()
        .map(resource_of)
        .collect::<anyhow::Result<Vec<_>>>()?;
    match args.output {
        Format::Json => {
            let shown = match (&args.name, values.as_slice()) {
                (Some(_), [one]) => one.clone(),
                _ => Value::Array(values.clone()),
            };
            println!("{}", serde_json::to_string_pretty(&shown)?);
        }
        Format::Yaml => print!("{}", yaml_documents(&resources)?),
        Format::Table => {
            if resources.is_empty() {
                let scope = if all_meshes {
                    "any mesh".to_string()
                } else {
                    format!("mesh {}", args.mesh)
                };
                eprintln!("No {} resources found in {scope}.", kind.as_str());
                return Ok(ExitCode::SUCCESS);
            }
            let mut table = Table::new(&output::headers(kind, all_meshes));
            for (resource, value) in resources.iter().zip(&values) {
                table.row(summary(resource, value, all_meshes));
            }
            print!("{}", table.render());
        }
    }
    Ok(ExitCode::SUCCESS)
}
