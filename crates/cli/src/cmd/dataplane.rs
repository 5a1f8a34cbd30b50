//! `meshlimit dataplane` (being built).

use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`meshlimit dataplane` is not available in this build yet")
}
