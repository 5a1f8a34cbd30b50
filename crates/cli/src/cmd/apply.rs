//! `meshlimit apply -f PATH...`: create or update resources on the control plane, all or
//! nothing. Prints `meshratelimit/web created|configured|unchanged` per resource; on invalid
//! documents prints the same `<file>: document <n> (<Kind> <name>): <path>: <message>` lines
//! as `meshlimit validate` and exits 1, and the control plane keeps what it had.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use meshlimit_control_plane_client::wire::SourceFile;

use super::Context;
use super::get::output::{block_on, client, explain, kind_slash_name};

#[derive(clap::Args)]
pub struct Args {
    /// Resource files or directories (every *.yaml / *.yml inside); `-` reads standard input.
    #[arg(short = 'f', long = "file", value_name = "PATH", required = true, num_args = 1..)]
    pub files: Vec<PathBuf>,
    /// Validate against the control plane's resources and show what would change, storing nothing.
    #[arg(long)]
    pub dry_run: bool,
}

pub fn run(ctx: &Context, args: Args) -> anyhow::Result<ExitCode> {
    let files = read_files(&args.files)?;
    let client = client(ctx)?;
    let result = match block_on(client.apply(files, args.dry_run))? {
        Ok(result) => result,
        Err(error) => {
            eprintln!("error: {:#}", explain(error));
            return Ok(ExitCode::from(1));
        }
    };
    for warning in &result.warnings {
        eprintln!("warning: {warning}");
    }
    let suffix = if result.dry_run { " (dry run)" } else { "" };
    for applied in &result.results {
        println!(
            "{} {}{suffix}",
            kind_slash_name(&applied.kind, &applied.name),
            applied.action
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Every file named, and every *.yaml / *.yml directly inside a named directory (sorted), named
/// as the user wrote the path so problems point at it.
pub fn read_files(paths: &[PathBuf]) -> anyhow::Result<Vec<SourceFile>> {
    let mut files = Vec::new();
    for path in paths {
        if path.as_os_str() == "-" {
            let mut content = String::new();
            std::io::stdin()
                .read_to_string(&mut content)
                .context("reading standard input")?;
            files.push(SourceFile {
                name: super::STDIN_LABEL.to_string(),
                content,
            });
        } else if path.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(path)
                .with_context(|| format!("reading directory {}", path.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && is_yaml(p))
                .collect();
            found.sort();
            if found.is_empty() {
                anyhow::bail!("{}: directory has no *.yaml or *.yml files", path.display());
            }
            for file in found {
                files.push(read_one(&file)?);
            }
        } else {
            files.push(read_one(path)?);
        }
    }
    Ok(files)
}

fn is_yaml(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    )
}

fn read_one(path: &Path) -> anyhow::Result<SourceFile> {
    let content =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(SourceFile {
        name: path.display().to_string(),
        content,
    })
}
