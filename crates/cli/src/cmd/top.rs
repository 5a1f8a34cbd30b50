//! `meshlimit top [--once | --iterations N] [--interval S]`: a live terminal view of the offered
//! rate and the rejections per inbound (and kernel destination), with a sparkline of the last
//! minute. On a terminal the screen is cleared and redrawn each interval; when stdout is not a
//! terminal (a pipe, CI) frames are printed one after another without screen control.
//! `--once` prints one frame, `--iterations N` prints N and exits.

use std::process::ExitCode;
use std::time::Duration;

use meshlimit_control_plane_client::wire::{SeriesStats, StatusResponse};

use super::Context;
use super::get::output::{Table, client, explain, per_second};

#[derive(clap::Args)]
pub struct Args {
    /// Print one frame and exit (no screen control).
    #[arg(long, conflicts_with = "iterations")]
    pub once: bool,
    /// Print this many frames, one interval apart, and exit.
    #[arg(short = 'n', long, value_name = "N")]
    pub iterations: Option<u64>,
    /// Time between refreshes.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = super::parse_positive_duration)]
    pub interval: Duration,
    /// Only this mesh.
    #[arg(short = 'm', long)]
    pub mesh: Option<String>,
}

pub fn run(ctx: &Context, args: Args) -> anyhow::Result<ExitCode> {
    let client = client(ctx)?;
    let frames = if args.once { Some(1) } else { args.iterations };
    super::refresh(frames, args.interval, |runtime| {
        let status = runtime.block_on(client.status()).map_err(explain)?;
        Ok(frame(&status, client.base(), args.mesh.as_deref()))
    })
}

const SPARKS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
const SPARK_WIDTH: usize = 30;

/// The last `SPARK_WIDTH` points, scaled to the largest of them.
pub fn sparkline(history: &[f64]) -> String {
    let points = &history[history.len().saturating_sub(SPARK_WIDTH)..];
    let max = points.iter().copied().fold(0.0_f64, f64::max);
    points
        .iter()
        .map(|&v| {
            if max <= 0.0 {
                SPARKS[0]
            } else {
                let level = ((v / max) * (SPARKS.len() - 1) as f64).round() as usize;
                SPARKS[level.min(SPARKS.len() - 1)]
            }
        })
        .collect()
}

fn cells(stats: &SeriesStats) -> Vec<String> {
    let share = if stats.rate_per_second > 0.0 {
        format!(
            "{:.0}%",
            100.0 * stats.limited_per_second / stats.rate_per_second
        )
    } else {
        "-".to_string()
    };
    vec![
        per_second(stats.rate_per_second),
        per_second(stats.limited_per_second),
        share,
        stats
            .tokens_available
            .map_or_else(|| "-".to_string(), |t| t.to_string()),
        sparkline(&stats.history),
    ]
}

/// One screen of `top`.
pub fn frame(status: &StatusResponse, url: &str, mesh: Option<&str>) -> String {
    let mut out = format!(
        "meshlimit top - {url} - store version {} - rates over the last minute\n\n",
        status.version
    );
    let mut table = Table::new(&[
        "DATAPLANE",
        "INBOUND",
        "SERVICE",
        "PROTOCOL",
        "RATE",
        "LIMITED",
        "LIMITED%",
        "TOKENS",
        "LAST MINUTE",
    ]);
    let mut rows = 0;
    for dp in status
        .dataplanes
        .iter()
        .filter(|dp| mesh.is_none_or(|m| dp.mesh == m))
    {
        for inbound in &dp.inbounds {
            let mut row = vec![
                format!("{}/{}", dp.mesh, dp.name),
                inbound.port.to_string(),
                inbound.service.clone(),
                inbound.protocol.clone(),
            ];
            row.extend(cells(&inbound.stats));
            table.row(row);
            rows += 1;
        }
    }
    for agent in &status.agents {
        for dest in &agent.destinations {
            let mut row = vec![
                format!("kernel:{}", agent.name),
                format!("{}:{}", dest.address, dest.port),
                dest.service.clone(),
                "connect".to_string(),
            ];
            row.extend(cells(&dest.stats));
            table.row(row);
            rows += 1;
        }
    }
    if rows == 0 {
        out.push_str("No data plane or kernel agent has reported traffic yet.\n");
    } else {
        out.push_str(&table.render());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparklines_scale_to_their_largest_point() {
        assert_eq!(sparkline(&[0.0, 5.0, 10.0]), "▁▅█");
        assert_eq!(sparkline(&[0.0, 0.0]), "▁▁");
        assert_eq!(sparkline(&[1.0; 40]).chars().count(), SPARK_WIDTH);
    }
}
