//! `meshlimit get` (being built).

use std::process::ExitCode;

use super::Context;

#[derive(clap::Args)]
pub struct Args {}

pub fn run(_ctx: &Context, _args: Args) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`meshlimit get` is not available in this build yet")
}
