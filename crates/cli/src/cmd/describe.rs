//! `meshlimit describe <kind> <name> [--mesh M]`: the resource, what it selects, and the
//! effective limits there (for a Dataplane: its own effective limits).

use std::process::ExitCode;

use meshlimit_policy::Kind;
use meshlimit_policy::duration::format_go;
use meshlimit_policy::effective::{DataplaneLimits, KernelLimit, Rate};

use super::Context;
use super::get::output::{Table, block_on, client, explain, resource_of, yaml_documents};

#[derive(clap::Args)]
pub struct Args {
    /// meshratelimit (mrl), ratelimit (rl), dataplane (dp) or mesh.
    #[arg(value_name = "KIND")]
    pub kind: String,
    #[arg(value_name = "NAME")]
    pub name: String,
    /// The mesh of the resource.
    #[arg(short = 'm', long, default_value = "default")]
    pub mesh: String,
}

pub fn run(ctx: &Context, args: Args) -> anyhow::Result<ExitCode> {
    let kind: Kind = args.kind.parse()?;
    let client = client(ctx)?;
    let (value, selection) = block_on(async {
        let value = client.get_resource(kind, &args.mesh, &args.name).await?;
        let selection = client.selection(kind, &args.mesh, &args.name).await?;
        Ok::<_, meshlimit_control_plane_client::client::ClientError>((value, selection))
    })?
    .map_err(explain)?;
    let resource = resource_of(&value)?;
    let mut out = String::new();
    out.push_str(&format!("Name:     {}\n", resource.name()));
    out.push_str(&format!("Kind:     {}\n", resource.kind()));
    if kind != Kind::Mesh {
        out.push_str(&format!("Mesh:     {}\n", resource.mesh()));
    }
    out.push_str(&format!("Store:    version {}\n\n", selection.version));
    out.push_str("Resource:\n");
    for line in yaml_documents(std::slice::from_ref(&resource))?.lines() {
        out.push_str("  ");
        out.push_str(line);
        out.push('\n');
    }
    out.push('\n');
    match kind {
        Kind::RateLimit => out.push_str(&kernel_section(&selection.kernel)),
        Kind::Dataplane => {
            out.push_str("Effective limits:\n");
            out.push_str(&inbound_table(&selection.dataplanes));
            if let Some(dp) = selection.dataplanes.first()
                && !dp.kernel.is_empty()
            {
                out.push('\n');
                out.push_str(&kernel_section(&dp.kernel));
            }
        }
        Kind::MeshRateLimit | Kind::MeshGlobalRateLimit | Kind::Mesh => {
            let inbounds: usize = selection.dataplanes.iter().map(|d| d.inbounds.len()).sum();
            if inbounds == 0 {
                out.push_str(
                    "Selects no dataplane inbound: check targetRef against the Dataplanes' \
                     names, tags and kuma.io/service (meshlimit get dp -o yaml).\n",
                );
            } else {
                out.push_str(&format!(
                    "Selects {inbounds} inbound(s) on {} dataplane(s); effective limits there:\n",
                    selection.dataplanes.len()
                ));
                out.push_str(&inbound_table(&selection.dataplanes));
            }
        }
    }
    print!("{out}");
    Ok(ExitCode::SUCCESS)
}

pub fn rate_text(rate: &Rate) -> String {
    format!("{}/{}", rate.num().get(), format_go(rate.interval()))
}

/// One row per inbound: what is enforced there and which policies made it so.
pub fn inbound_table(dataplanes: &[DataplaneLimits]) -> String {
    let mut table = Table::new(&[
        "DATAPLANE",
        "ADDRESS",
        "INBOUND",
        "SERVICE",
        "PROTOCOL",
        "HTTP",
        "TCP",
        "ON LIMIT",
        "POLICIES",
    ]);
    for dp in dataplanes {
        for inbound in &dp.inbounds {
            let protocol = serde_json::to_value(inbound.protocol)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            table.row(vec![
                dp.dataplane.clone(),
                dp.address.clone(),
                format!("{}->{}", inbound.port, inbound.service_port),
                inbound.service.clone(),
                protocol,
                inbound
                    .http
                    .as_ref()
                    .map_or_else(|| "-".to_string(), |h| rate_text(&h.request_rate)),
                inbound
                    .tcp
                    .as_ref()
                    .map_or_else(|| "-".to_string(), |t| rate_text(&t.connection_rate)),
                inbound
                    .http
                    .as_ref()
                    .map_or_else(|| "-".to_string(), |h| h.status.to_string()),
                if inbound.policies.is_empty() {
                    "-".to_string()
                } else {
                    inbound.policies.join(",")
                },
            ]);
        }
    }
    table.render()
}

fn kernel_section(kernel: &[KernelLimit]) -> String {
    if kernel.is_empty() {
        return "Selects no kernel destination: no Dataplane inbound has the service(s) it \
                names as kuma.io/service.\n"
            .to_string();
    }
    let mut table = Table::new(&[
        "SERVICE",
        "DESTINATION",
        "MAX TOKENS",
        "TOKENS PER FILL",
        "FILL INTERVAL",
    ]);
    for k in kernel {
        table.row(vec![
            k.service.clone(),
            format!("{}:{}", k.address, k.port),
            k.bucket.max_tokens().to_string(),
            k.bucket.tokens_per_fill().to_string(),
            format_go(std::time::Duration::from_nanos(k.bucket.fill_interval_ns())),
        ]);
    }
    format!(
        "Kernel destinations (enforced at connect()):\n{}",
        table.render()
    )
}
