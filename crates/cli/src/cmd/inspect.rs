//! `meshlimit inspect -f PATH... --dataplane NAME [--mesh MESH] [-o table|json] [--envoy]`: what
//! one Dataplane enforces, after matching and merging every policy in the files; with `--envoy`,
//! the Envoy listeners and clusters the control plane's xDS server sends its sidecar.

use std::path::PathBuf;
use std::process::ExitCode;

use meshlimit_policy::{DataplaneLimits, ResourceSet};

use super::validate;

mod table;

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(clap::Args)]
pub struct Args {
    /// Resource files or directories (every *.yaml / *.yml inside); `-` reads standard input.
    #[arg(short = 'f', long = "file", value_name = "PATH", required = true, num_args = 1..)]
    pub files: Vec<PathBuf>,
    /// Name of the Dataplane to inspect.
    #[arg(long, value_name = "NAME")]
    pub dataplane: String,
    /// Mesh of the Dataplane.
    #[arg(long, value_name = "MESH", default_value = "default")]
    pub mesh: String,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
    pub output: Output,
    /// Print the Envoy listeners and clusters generated for the Dataplane (YAML, in the shape
    /// of a bootstrap's static_resources), as `meshlimit control-plane --xds` serves them.
    #[arg(long, conflicts_with = "output")]
    pub envoy: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let parsed = match validate::load(&args.files)? {
        Ok(parsed) => parsed,
        Err(problems) => return Ok(validate::fail(&[], &problems)),
    };
    let warnings = parsed.warnings.clone();
    let set = match ResourceSet::from_parsed(parsed) {
        Ok(set) => set,
        Err(problems) => return Ok(validate::fail(&warnings, &problems)),
    };
    validate::print_warnings(&warnings);
    let Some(limits) = set.effective(&args.mesh, &args.dataplane) else {
        anyhow::bail!("{}", not_found(&set, &args.mesh, &args.dataplane));
    };
    let notes = set
        .dataplane(&args.mesh, &args.dataplane)
        .map(|dp| dp.not_enforced())
        .unwrap_or_default();
    if args.envoy {
        print!("{}", meshlimit_xds::render_yaml(&limits));
    } else {
        match args.output {
            Output::Json => println!("{}", serde_json::to_string_pretty(&limits)?),
            Output::Table => print!("{}", render(&set, &args.mesh, &limits)),
        }
    }
    // Beside the output (on standard error where that is YAML or JSON, to keep it parseable).
    if !notes.is_empty() {
        let text: String = notes.iter().map(|n| format!("  - {n}\n")).collect();
        if args.envoy || args.output == Output::Json {
            eprint!("not enforced:\n{text}");
        } else {
            print!("\nNot enforced:\n{text}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn render(set: &ResourceSet, mesh: &str, limits: &DataplaneLimits) -> String {
    table::render(limits, &set.source_limits(mesh, &limits.dataplane))
}

fn not_found(set: &ResourceSet, mesh: &str, name: &str) -> String {
    let known: Vec<String> = set
        .resources()
        .iter()
        .filter(|r| r.kind() == meshlimit_policy::Kind::Dataplane)
        .map(|r| format!("{} (mesh {})", r.name(), r.mesh()))
        .collect();
    if known.is_empty() {
        format!("no Dataplane '{name}' in mesh '{mesh}': the files define no Dataplane")
    } else {
        format!(
            "no Dataplane '{name}' in mesh '{mesh}' (the files define: {})",
            known.join(", ")
        )
    }
}
