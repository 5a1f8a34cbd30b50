//! One module per subcommand.

pub mod agent;
pub mod apply;
pub mod control_plane;
pub mod dataplane;
pub mod delete;
pub mod describe;
pub mod diagnose;
pub mod diagnose_xds;
pub mod envoy;
pub mod get;
pub mod inspect;
pub mod run;
pub mod simulate;
pub mod top;
pub mod validate;

/// Global options every subcommand may use, as clap parsed them.
pub struct Context {
    /// Control-plane API URL.
    pub cp: String,
    /// Token for a control plane that requires one.
    pub token: Option<String>,
    /// `--cp` itself is on the command line (not only its default or `MESHLIMIT_CP`).
    pub cp_on_command_line: bool,
    /// `--cp` came from `MESHLIMIT_CP`.
    pub cp_from_env: bool,
}
