//! One module per subcommand.

pub mod agent;
pub mod inspect;
pub mod run;
pub mod simulate;
pub mod validate;

/// Global options every subcommand may use.
#[allow(dead_code)]
pub struct Context {
    pub cp: String,
    pub token: Option<String>,
}
