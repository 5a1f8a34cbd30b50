//! `meshlimit validate -f PATH...`: check resource files without applying them.
//!
//! Exit 0 and `ok <Kind> <name>` per document when everything is valid; otherwise exit 1 and
//! one line per problem on stderr: `<file>: document <n> (<Kind> <name>): <path>: <message>`.
//! Warnings go to stderr with a `warning: ` prefix and do not fail.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use meshlimit_policy::{Parsed, Problem, ResourceSet, load_paths, parse_documents};

#[derive(clap::Args)]
pub struct Args {
    /// Resource files or directories (every *.yaml / *.yml inside); `-` reads standard input.
    #[arg(short = 'f', long = "file", value_name = "PATH", required = true, num_args = 1..)]
    pub files: Vec<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (parsed, warnings) = match load(&args.files)? {
        Ok(parsed) => {
            let warnings = parsed.warnings.clone();
            let origins = parsed.origins.clone();
            match ResourceSet::from_parsed(parsed) {
                Ok(set) => ((set, origins), warnings),
                Err(problems) => return Ok(fail(&warnings, &problems)),
            }
        }
        Err(problems) => return Ok(fail(&[], &problems)),
    };
    print_warnings(&warnings);
    let (set, _origins) = parsed;
    for r in set.resources() {
        println!("ok {} {}", r.kind(), r.name());
    }
    Ok(ExitCode::SUCCESS)
}

/// Loads files and directories; `-` is standard input. The outer error is for I/O on stdin
/// only; problems with the resources are the inner `Err`.
pub fn load(paths: &[PathBuf]) -> anyhow::Result<Result<Parsed, Vec<Problem>>> {
    let (stdin, files): (Vec<&PathBuf>, Vec<&PathBuf>) =
        paths.iter().partition(|p| p.as_os_str() == "-");
    let mut problems = Vec::new();
    let mut parsed = match load_paths(&files) {
        Ok(p) => p,
        Err(p) => {
            problems.extend(p);
            Parsed::default()
        }
    };
    if !stdin.is_empty() {
        let mut text = String::new();
        std::io::stdin()
            .take(meshlimit_policy::MAX_FILE_BYTES as u64 + 1)
            .read_to_string(&mut text)
            .context("reading standard input")?;
        match parse_documents(super::STDIN_LABEL, &text) {
            Ok(p) => {
                parsed.resources.extend(p.resources);
                parsed.warnings.extend(p.warnings);
                parsed.origins.extend(p.origins);
            }
            Err(p) => problems.extend(p),
        }
    }
    Ok(if problems.is_empty() {
        Ok(parsed)
    } else {
        Err(problems)
    })
}

pub fn print_warnings(warnings: &[Problem]) {
    for w in warnings {
        eprintln!("warning: {w}");
    }
}

/// Prints warnings and problems; the exit code of a rejected input.
pub fn fail(warnings: &[Problem], problems: &[Problem]) -> ExitCode {
    print_warnings(warnings);
    for p in problems {
        eprintln!("{p}");
    }
    ExitCode::from(1)
}
