//! The table a person reads first: one row per inbound, each limit in words.

use std::fmt::Write;

use meshlimit_policy::duration::format_go;
use meshlimit_policy::model::{Match, MatchType};
use meshlimit_policy::{DataplaneLimits, HttpLimit, KernelLimit, Rate, SourceLimits, TcpLimit};

pub fn render(limits: &DataplaneLimits, sources: &[SourceLimits]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Dataplane {} (mesh {}, address {})",
        limits.dataplane, limits.mesh, limits.address
    );
    let mut rows = vec![[
        "PORT".to_string(),
        "SERVICE".into(),
        "PROTOCOL".into(),
        "HTTP LIMIT".into(),
        "TCP LIMIT".into(),
        "POLICIES".into(),
    ]];
    for i in &limits.inbounds {
        let port = if i.service_port == i.port {
            i.port.to_string()
        } else {
            format!("{}->{}", i.port, i.service_port)
        };
        rows.push([
            port,
            i.service.clone(),
            format!("{:?}", i.protocol).to_lowercase(),
            i.http.as_ref().map_or_else(|| "none".into(), http_words),
            i.tcp.as_ref().map_or_else(|| "none".into(), tcp_words),
            if i.policies.is_empty() {
                "-".into()
            } else {
                i.policies.join(", ")
            },
        ]);
    }
    if limits.inbounds.is_empty() {
        let _ = writeln!(out, "No inbounds.");
    } else {
        out.push_str(&columns(&rows));
    }
    let globals: Vec<_> = limits
        .inbounds
        .iter()
        .filter_map(|i| i.global.as_ref().map(|g| (i.port, g)))
        .collect();
    if !globals.is_empty() {
        let _ = writeln!(
            out,
            "\nGlobal limits (MeshGlobalRateLimit, one total for the service):"
        );
        let mut rows = vec![[
            "PORT".to_string(),
            "TOTAL".into(),
            "THIS INSTANCE'S SHARE".into(),
            "MODE".into(),
            "ON STORE FAILURE".into(),
            "POLICIES".into(),
        ]];
        for (port, g) in globals {
            rows.push([
                port.to_string(),
                format!(
                    "{}, rejected with {}",
                    rate_words(&g.request_rate, "request"),
                    g.status
                ),
                format!(
                    "{} ({} of {} instances)",
                    rate_words(&g.share, "request"),
                    g.index + 1,
                    g.instances
                ),
                format!("{:?}", g.mode),
                format!("{:?}", g.failure_mode),
                g.policies.join(", "),
            ]);
        }
        out.push_str(&columns(&rows));
    }
    if !sources.is_empty() {
        let _ = writeln!(out, "\nPer-source rules (rules[].matches):");
        let mut rows = vec![[
            "PORT".to_string(),
            "WHEN THE CLIENT".into(),
            "HTTP LIMIT".into(),
            "TCP LIMIT".into(),
        ]];
        for s in sources {
            rows.push([
                s.port.to_string(),
                match_words(&s.matched),
                s.limits
                    .http
                    .as_ref()
                    .map_or_else(|| "none".into(), http_words),
                s.limits
                    .tcp
                    .as_ref()
                    .map_or_else(|| "none".into(), tcp_words),
            ]);
        }
        out.push_str(&columns(&rows));
    }
    if !limits.kernel.is_empty() {
        let _ = writeln!(out, "\nKernel limits (RateLimit, at connect()):");
        let mut rows = vec![["DESTINATION".to_string(), "SERVICE".into(), "LIMIT".into()]];
        for k in &limits.kernel {
            rows.push([
                format!("{}:{}", k.address, k.port),
                k.service.clone(),
                kernel_words(k),
            ]);
        }
        out.push_str(&columns(&rows));
    }
    out
}

/// `5 requests per 10s, 423 + 1 header`.
pub fn http_words(h: &HttpLimit) -> String {
    let headers = h.headers.set.len() + h.headers.add.len();
    let mut s = format!("{}, {}", rate_words(&h.request_rate, "request"), h.status);
    if headers > 0 {
        let _ = write!(
            s,
            " + {headers} header{}",
            if headers == 1 { "" } else { "s" }
        );
    }
    s
}

pub fn tcp_words(t: &TcpLimit) -> String {
    rate_words(&t.connection_rate, "connection")
}

fn rate_words(r: &Rate, what: &str) -> String {
    format!(
        "{} {what}{} per {}",
        r.num(),
        if r.num().get() == 1 { "" } else { "s" },
        format_go(r.interval())
    )
}

fn kernel_words(k: &KernelLimit) -> String {
    format!(
        "burst {}, {} connection{} every {}",
        k.bucket.max_tokens(),
        k.bucket.tokens_per_fill(),
        if k.bucket.tokens_per_fill() == 1 {
            ""
        } else {
            "s"
        },
        format_go(std::time::Duration::from_nanos(k.bucket.fill_interval_ns()))
    )
}

fn match_words(m: &Match) -> String {
    match m {
        Match::SpiffeId(s) if s.kind == MatchType::Prefix => {
            format!("has a SPIFFE ID starting with {}", s.value)
        }
        Match::SpiffeId(s) => format!("is {}", s.value),
        Match::Sni(s) => format!("asks for SNI {}", s.value),
        Match::Both { spiffe_id, sni } => {
            let id = if spiffe_id.kind == MatchType::Prefix {
                format!("has a SPIFFE ID starting with {}", spiffe_id.value)
            } else {
                format!("is {}", spiffe_id.value)
            };
            format!("{id} and asks for SNI {}", sni.value)
        }
    }
}

fn columns<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0usize; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
            if i + 1 == N {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}   ");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}
