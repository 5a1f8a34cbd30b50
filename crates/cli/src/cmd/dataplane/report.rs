//! The counters a data plane reports to the control plane, read from its own admin endpoint's
//! Prometheus text (`meshlimit_http_requests_total`, `meshlimit_tcp_connections_total`,
//! `meshlimit_bucket_tokens`).

use std::collections::BTreeMap;

use meshlimit_control_plane::wire::InboundCounters;
use meshlimit_policy::effective::{DataplaneLimits, Protocol};

/// `(port, "http"|"tcp") -> (allowed, limited, tokens)`.
type Samples = BTreeMap<(u16, String), (u64, u64, Option<u64>)>;

/// Reads the samples of one dataplane out of the Prometheus text.
pub fn parse_metrics(text: &str, mesh: &str, dataplane: &str) -> Samples {
    let mut out: Samples = BTreeMap::new();
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some((name, rest)) = line.split_once('{') else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once('}') else {
            continue;
        };
        let Ok(value) = value.trim().parse::<u64>() else {
            continue;
        };
        let labels = parse_labels(labels);
        if labels.get("mesh").map(String::as_str) != Some(mesh)
            || labels.get("dataplane").map(String::as_str) != Some(dataplane)
        {
            continue;
        }
        let Some(port) = labels.get("inbound").and_then(|p| p.parse::<u16>().ok()) else {
            continue;
        };
        let (protocol, field) = match (name, labels.get("decision"), labels.get("limit")) {
            ("meshlimit_http_requests_total", Some(d), _) => ("http", d.as_str()),
            ("meshlimit_tcp_connections_total", Some(d), _) => ("tcp", d.as_str()),
            ("meshlimit_bucket_tokens", _, Some(l)) => (l.as_str(), "tokens"),
            _ => continue,
        };
        let entry = out.entry((port, protocol.to_string())).or_default();
        match field {
            "allowed" => entry.0 = value,
            "limited" => entry.1 = value,
            "tokens" => entry.2 = Some(value),
            _ => {}
        }
    }
    out
}

/// `a="x",b="y"` (values may hold escaped quotes).
fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    while let Some((key, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, other)) => value.push(other),
                    None => {}
                },
                '"' => {
                    end = i + 1;
                    break;
                }
                other => value.push(other),
            }
        }
        labels.insert(key.trim_start_matches(',').trim().to_string(), value);
        rest = &after[end.min(after.len())..];
    }
    labels
}

/// The report rows: one per enforced limit of each inbound of the current limits.
pub fn counters(limits: &DataplaneLimits, samples: &Samples) -> Vec<InboundCounters> {
    let mut rows = Vec::new();
    for inbound in &limits.inbounds {
        let mut protocols = Vec::new();
        if inbound.protocol == Protocol::Http {
            protocols.push("http");
        }
        if inbound.protocol == Protocol::Tcp || inbound.tcp.is_some() {
            protocols.push("tcp");
        }
        for protocol in protocols {
            let (allowed, limited, tokens) = samples
                .get(&(inbound.port, protocol.to_string()))
                .copied()
                .unwrap_or_default();
            rows.push(InboundCounters {
                port: inbound.port,
                service: inbound.service.clone(),
                protocol: protocol.to_string(),
                total: allowed + limited,
                allowed,
                limited,
                tokens_available: tokens,
            });
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_proxy_metrics_of_one_dataplane() {
        let text = r#"# HELP meshlimit_http_requests_total x
# TYPE meshlimit_http_requests_total counter
meshlimit_http_requests_total{mesh="default",dataplane="web-1",inbound="8080",decision="allowed"} 7
meshlimit_http_requests_total{mesh="default",dataplane="web-1",inbound="8080",decision="limited"} 3
meshlimit_http_requests_total{mesh="default",dataplane="other",inbound="8080",decision="limited"} 99
meshlimit_bucket_tokens{mesh="default",dataplane="web-1",inbound="8080",limit="http"} 2
meshlimit_tcp_connections_total{mesh="default",dataplane="web-1",inbound="9000",decision="allowed"} 4
"#;
        let samples = parse_metrics(text, "default", "web-1");
        assert_eq!(samples[&(8080, "http".to_string())], (7, 3, Some(2)));
        assert_eq!(samples[&(9000, "tcp".to_string())], (4, 0, None));
        assert_eq!(samples.len(), 2);
    }

    #[test]
    fn labels_keep_escaped_quotes() {
        let labels = parse_labels(r#"mesh="a\"b",dataplane="c""#);
        assert_eq!(labels["mesh"], "a\"b");
        assert_eq!(labels["dataplane"], "c");
    }
}
