//! What the control-plane client verbs share: the runtime and client, turning API errors into
//! the same lines `meshlimit validate` prints, aligned tables, and resource summaries.

use std::future::Future;

use meshlimit_control_plane::model;
use meshlimit_control_plane_client::client::{Client, ClientError};
use meshlimit_policy::{Kind, Resource};
use serde_json::Value;

use crate::cmd::Context;

/// Runs one client future on a small runtime.
pub fn block_on<F: Future>(future: F) -> anyhow::Result<F::Output> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    Ok(runtime.block_on(future))
}

pub fn client(ctx: &Context) -> anyhow::Result<Client> {
    Ok(Client::new(&ctx.cp, ctx.token.clone())?)
}

/// An API error as the user should read it: validation problems one per line, exactly as
/// `meshlimit validate` prints them, and a hint for a missing token.
pub fn explain(error: ClientError) -> anyhow::Error {
    match &error {
        ClientError::Api { status, body } if !body.invalid_parameters.is_empty() => {
            let lines: Vec<&str> = body
                .invalid_parameters
                .iter()
                .map(|p| p.message.as_str())
                .collect();
            anyhow::anyhow!("{} ({status}):\n{}", body.detail, lines.join("\n"))
        }
        ClientError::Api { status: 401, .. } => anyhow::anyhow!(
            "{error}\nhint: pass the control plane's token with --token or MESHLIMIT_TOKEN"
        ),
        _ => anyhow::Error::new(error),
    }
}

/// `meshratelimit/web` as kubectl writes it.
pub fn kind_slash_name(kind: &str, name: &str) -> String {
    format!("{}/{name}", kind.to_ascii_lowercase())
}

/// A resource from its JSON, through the policy parser (so it is checked and can be written
/// back as YAML in its own form).
pub fn resource_of(value: &Value) -> anyhow::Result<Resource> {
    let text = serde_json::to_string(value)?;
    model::parse_one("control plane", &text)
        .map_err(|p| anyhow::anyhow!("the control plane sent an unreadable resource: {p:?}"))
}

/// Resources as multi-document YAML that `meshlimit apply -f` takes back unchanged.
pub fn yaml_documents(resources: &[Resource]) -> anyhow::Result<String> {
    let mut out = String::new();
    for (i, resource) in resources.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        out.push_str(&model::to_yaml(resource)?);
    }
    Ok(out)
}

/// An aligned text table, columns separated by three spaces, like kubectl's.
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&str]) -> Table {
        Table {
            headers: headers.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn render(&self) -> String {
        let columns = self.headers.len();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate().take(columns) {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&self.headers).chain(&self.rows) {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate().take(columns) {
                line.push_str(cell);
                if i + 1 < columns {
                    let pad = widths[i] - cell.chars().count() + 3;
                    line.push_str(&" ".repeat(pad));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// The table columns of a kind.
pub fn headers(kind: Kind, all_meshes: bool) -> Vec<&'static str> {
    let mut headers = if all_meshes && kind != Kind::Mesh {
        vec!["MESH"]
    } else {
        Vec::new()
    };
    headers.extend_from_slice(match kind {
        Kind::MeshRateLimit => &["NAME", "TARGETREF", "HTTP", "TCP"][..],
        Kind::MeshGlobalRateLimit => &["NAME", "TARGETREF", "HTTP", "MODE"][..],
        Kind::RateLimit => &["NAME", "SERVICES", "BUCKET"][..],
        Kind::Dataplane => &["NAME", "ADDRESS", "INBOUNDS"][..],
        Kind::Mesh => &["NAME"][..],
    });
    headers
}

/// One table row of a resource (its JSON as the API serves it).
pub fn summary(resource: &Resource, json: &Value, all_meshes: bool) -> Vec<String> {
    let mut row = if all_meshes && resource.kind() != Kind::Mesh {
        vec![resource.mesh().to_string()]
    } else {
        Vec::new()
    };
    row.push(resource.name().to_string());
    let spec = &json["spec"];
    match resource.kind() {
        Kind::MeshRateLimit | Kind::MeshGlobalRateLimit => {
            let target = &spec["targetRef"];
            let mut target_text = target["kind"].as_str().unwrap_or("Mesh").to_string();
            if let Some(name) = target["name"].as_str() {
                target_text.push('/');
                target_text.push_str(name);
            }
            if let Some(section) = target["sectionName"].as_str() {
                target_text.push('#');
                target_text.push_str(section);
            }
            row.push(target_text);
            if resource.kind() == Kind::MeshRateLimit {
                row.push(rates(spec, &["local", "http"], "requestRate"));
                row.push(rates(spec, &["local", "tcp"], "connectionRate"));
            } else {
                row.push(rates(spec, &["http"], "requestRate"));
                row.push(modes(spec));
            }
        }
        Kind::RateLimit => {
            let services = meshlimit_control_plane::select::rate_limit_services(resource);
            row.push(services.join(","));
            let mut buckets = Vec::new();
            let mut collect = |rules: &Value| {
                for rule in rules.as_array().into_iter().flatten() {
                    buckets.push(bucket_text(rule));
                }
            };
            collect(&spec["rules"]);
            for service in spec["services"].as_array().into_iter().flatten() {
                collect(&service["rules"]);
            }
            row.push(buckets.join(","));
        }
        Kind::Dataplane => {
            let networking = &json["networking"];
            row.push(networking["address"].as_str().unwrap_or("").to_string());
            let inbounds: Vec<String> = networking["inbound"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|i| {
                    let service = i["tags"]["kuma.io/service"].as_str().unwrap_or("?");
                    let port = i["port"].as_u64().unwrap_or(0);
                    format!("{service}:{port}")
                })
                .collect();
            row.push(inbounds.join(","));
        }
        Kind::Mesh => {}
    }
    row
}

/// `100/1s`, one per conf that sets the rate (`disabled` when a conf turns it off), `-` if none.
/// The rates of every entry, at `conf_path` under each entry's `default`.
fn rates(spec: &Value, conf_path: &[&str], field: &str) -> String {
    let mut out = Vec::new();
    for list in ["rules", "from", "to"] {
        for item in spec[list].as_array().into_iter().flatten() {
            let conf = conf_path
                .iter()
                .fold(&item["default"], |value, key| &value[*key]);
            if conf["disabled"].as_bool() == Some(true) {
                out.push("disabled".to_string());
            } else if let (Some(num), Some(interval)) = (
                conf[field]["num"].as_u64(),
                conf[field]["interval"].as_str(),
            ) {
                out.push(format!("{num}/{interval}"));
            }
        }
    }
    if out.is_empty() {
        "-".to_string()
    } else {
        out.join(",")
    }
}

/// The `mode` of every entry of a `MeshGlobalRateLimit` (`Limit` when unset).
fn modes(spec: &Value) -> String {
    let mut out: Vec<&str> = Vec::new();
    for list in ["rules", "from", "to"] {
        for item in spec[list].as_array().into_iter().flatten() {
            let mode = item["default"]["mode"].as_str().unwrap_or("Limit");
            if !out.contains(&mode) {
                out.push(mode);
            }
        }
    }
    if out.is_empty() {
        "Limit".to_string()
    } else {
        out.join(",")
    }
}

/// A `RateLimit` rule: `100 max, +10 every 1s`.
fn bucket_text(rule: &Value) -> String {
    let max = rule["maxTokens"].as_u64().unwrap_or(0);
    let fill = rule["tokensPerFill"].as_u64().unwrap_or(0);
    let interval = rule["fillInterval"]
        .as_u64()
        .map(|ns| meshlimit_policy::duration::format_go(std::time::Duration::from_nanos(ns)))
        .unwrap_or_else(|| "?".to_string());
    format!("{max} max +{fill}/{interval}")
}

/// A rate for people: `10/s`, `0.5/s`.
pub fn per_second(value: f64) -> String {
    if value >= 100.0 || value == value.trunc() {
        format!("{value:.0}/s")
    } else if value >= 10.0 {
        format!("{value:.1}/s")
    } else {
        format!("{value:.2}/s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns_and_trim_line_ends() {
        let mut table = Table::new(&["NAME", "HTTP"]);
        table.row(vec!["web".into(), "10/1s".into()]);
        table.row(vec!["a-longer-name".into(), "-".into()]);
        assert_eq!(
            table.render(),
            "NAME            HTTP\nweb             10/1s\na-longer-name   -\n"
        );
    }

    #[test]
    fn rates_read_every_conf_list() {
        let spec = serde_json::json!({
            "rules": [{"default": {"local": {"http": {"requestRate": {"num": 5, "interval": "10s"}}}}}],
            "from": [{"default": {"local": {"http": {"disabled": true}}}}],
        });
        assert_eq!(
            rates(&spec, &["local", "http"], "requestRate"),
            "5/10s,disabled"
        );
        assert_eq!(rates(&spec, &["local", "tcp"], "connectionRate"), "-");
    }
}
