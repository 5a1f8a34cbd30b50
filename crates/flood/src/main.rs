//! `meshlimit-flood --meshlimit PATH [--scale N]`: runs every fault scenario against a fresh
//! `meshlimit run` and prints what it tried and what it saw; exits 1 if any check failed.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut meshlimit = None;
    let mut scale = 1usize;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--meshlimit" => meshlimit = args.next().map(PathBuf::from),
            "--scale" => match args.next().and_then(|s| s.parse().ok()) {
                Some(n) if n > 0 => scale = n,
                _ => return usage("--scale takes a positive whole number"),
            },
            other => return usage(&format!("unknown argument {other:?}")),
        }
    }
    let Some(meshlimit) = meshlimit else {
        return usage("--meshlimit PATH is required");
    };
    match meshlimit_flood::run(&meshlimit_flood::Config { meshlimit, scale }) {
        Ok(report) => {
            print!("{}", report.render());
            if report.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(1)
        }
    }
}

fn usage(problem: &str) -> ExitCode {
    eprintln!("error: {problem}\nusage: meshlimit-flood --meshlimit PATH [--scale N]");
    ExitCode::from(2)
}
