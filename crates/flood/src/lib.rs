//! Hostile clients and faulty applications against a real `meshlimit run`, bounded in count
//! and time: connection floods past the caps, slow clients, HTTP/2 connections that stop after
//! the preface, an application that accepts and never answers, malformed and oversized
//! requests. Each scenario says what it tried, what it expected and what it saw; after all of
//! them the proxy must still be up, ready, and enforce its limit exactly. `scripts/flood` runs
//! it on a release build; the CLI's tests run it at a small scale.

mod client;
mod scenarios;
mod target;

use std::fmt::Write as _;
use std::path::PathBuf;

pub use target::Target;

/// What to run against.
pub struct Config {
    /// The `meshlimit` binary.
    pub meshlimit: PathBuf,
    /// Multiplies every count (1: about 1,500 connections in the largest flood).
    pub scale: usize,
}

/// One check of one scenario.
pub struct Check {
    pub scenario: &'static str,
    pub tried: String,
    pub expected: String,
    pub seen: String,
    pub passed: bool,
}

/// Every check, in the order run.
#[derive(Default)]
pub struct Report {
    pub checks: Vec<Check>,
}

impl Report {
    pub fn passed(&self) -> bool {
        !self.checks.is_empty() && self.checks.iter().all(|c| c.passed)
    }

    pub(crate) fn check(
        &mut self,
        scenario: &'static str,
        tried: impl Into<String>,
        expected: impl Into<String>,
        seen: impl Into<String>,
        passed: bool,
    ) {
        self.checks.push(Check {
            scenario,
            tried: tried.into(),
            expected: expected.into(),
            seen: seen.into(),
            passed,
        });
    }

    /// A Markdown table, then one line saying whether every check passed.
    pub fn render(&self) -> String {
        let mut out =
            String::from("| scenario | tried | expected | seen | |\n|---|---|---|---|---|\n");
        for c in &self.checks {
            let mark = if c.passed { "ok" } else { "FAILED" };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {mark} |",
                c.scenario, c.tried, c.expected, c.seen
            );
        }
        let failed = self.checks.iter().filter(|c| !c.passed).count();
        let _ = writeln!(
            out,
            "\n{} checks, {failed} failed: {}",
            self.checks.len(),
            if failed == 0 {
                "the proxy stayed up and answered correctly"
            } else {
                "see FAILED rows"
            }
        );
        out
    }
}

/// Starts a target, runs every scenario against it, and stops it.
pub fn run(config: &Config) -> anyhow::Result<Report> {
    // The floods hold thousands of sockets at once.
    meshlimit_proxy::raise_fd_limit();
    let mut target = Target::start(&config.meshlimit)?;
    let mut report = Report::default();
    scenarios::all(&mut target, config.scale, &mut report);
    target.stop(&mut report);
    Ok(report)
}
