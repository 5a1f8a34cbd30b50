//! `meshlimit get ratelimit-stats`: per service, instance and inbound (and per kernel
//! destination) — total, allowed, limited, tokens available, and the rates over the last minute.

use std::process::ExitCode;
use std::time::Duration;

use meshlimit_control_plane_client::wire::{SeriesStats, StatusResponse};

use super::Format;
use super::output::{Table, client, explain, per_second};
use crate::cmd::Context;

/// `frames`: 1 without --watch, `None` to refresh until interrupted.
pub fn run(
    ctx: &Context,
    format: Format,
    frames: Option<u64>,
    interval: Duration,
) -> anyhow::Result<ExitCode> {
    let client = client(ctx)?;
    crate::cmd::refresh(frames, interval, |runtime| {
        let status = runtime.block_on(client.status()).map_err(explain)?;
        Ok(match format {
            Format::Json => serde_json::to_string_pretty(&status)? + "\n",
            Format::Yaml => meshlimit_control_plane::model::any_to_yaml(&status)?,
            Format::Table => render(&status),
        })
    })
}

fn cells(stats: &SeriesStats) -> Vec<String> {
    vec![
        stats.total.to_string(),
        stats.allowed.to_string(),
        stats.limited.to_string(),
        stats
            .tokens_available
            .map_or_else(|| "-".to_string(), |t| t.to_string()),
        per_second(stats.rate_per_second),
        per_second(stats.limited_per_second),
    ]
}

/// The tables `get ratelimit-stats` prints.
pub fn render(status: &StatusResponse) -> String {
    let mut inbounds = Table::new(&[
        "MESH",
        "DATAPLANE",
        "SERVICE",
        "INBOUND",
        "PROTOCOL",
        "TOTAL",
        "ALLOWED",
        "LIMITED",
        "TOKENS",
        "RATE(1m)",
        "LIMITED(1m)",
    ]);
    for dp in &status.dataplanes {
        for inbound in &dp.inbounds {
            let mut row = vec![
                dp.mesh.clone(),
                dp.name.clone(),
                inbound.service.clone(),
                inbound.port.to_string(),
                inbound.protocol.clone(),
            ];
            row.extend(cells(&inbound.stats));
            inbounds.row(row);
        }
    }
    let mut kernel = Table::new(&[
        "AGENT",
        "SERVICE",
        "DESTINATION",
        "TOTAL",
        "ALLOWED",
        "LIMITED",
        "TOKENS",
        "RATE(1m)",
        "LIMITED(1m)",
    ]);
    for agent in &status.agents {
        for dest in &agent.destinations {
            let mut row = vec![
                agent.name.clone(),
                dest.service.clone(),
                format!("{}:{}", dest.address, dest.port),
            ];
            row.extend(cells(&dest.stats));
            kernel.row(row);
        }
    }
    let mut out = String::new();
    if inbounds.is_empty() && kernel.is_empty() {
        out.push_str(&format!(
            "No data plane or kernel agent has reported counters yet (store version {}).\n",
            status.version
        ));
        return out;
    }
    if !inbounds.is_empty() {
        out.push_str(&inbounds.render());
    }
    if !kernel.is_empty() {
        if !inbounds.is_empty() {
            out.push('\n');
        }
        out.push_str(&kernel.render());
    }
    out
}
