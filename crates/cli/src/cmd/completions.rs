//! `meshlimit completions bash|zsh|fish|elvish|powershell` and `meshlimit man`: shell
//! completions and a man page, generated from the same command definitions clap parses with,
//! so they never drift from the flags.

use std::io::Write;
use std::process::ExitCode;

use clap::Command;
use clap_complete::Shell;

#[derive(clap::Args)]
pub struct CompletionsArgs {
    /// The shell to complete for. Load it with e.g. `source <(meshlimit completions bash)`.
    #[arg(value_enum)]
    pub shell: Shell,
}

pub fn completions(mut command: Command, args: CompletionsArgs) -> anyhow::Result<ExitCode> {
    let name = command.get_name().to_string();
    clap_complete::generate(args.shell, &mut command, name, &mut std::io::stdout());
    Ok(ExitCode::SUCCESS)
}

/// The man page of `meshlimit` and of every subcommand, one after another (roff), for
/// `meshlimit man > meshlimit.1` or `meshlimit man | man -l -`.
pub fn man(command: Command) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    let command = command.version(env!("CARGO_PKG_VERSION"));
    clap_mangen::Man::new(command.clone()).render(&mut out)?;
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        clap_mangen::Man::new(sub.clone())
            .title(format!("{}-{}", command.get_name(), sub.get_name()))
            .render(&mut out)?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
