//! A `rules[].matches[]` entry, checked as Kuma 2.14 checks it (its `ValidateMatch` and the
//! MeshRateLimit rule checks): a SPIFFE ID as go-spiffe parses one, an SNI as a DNS-1123
//! subdomain, with Kuma's messages at Kuma's paths and in Kuma's order.

use serde_yaml_ng::Value;

use crate::model::{Match, MatchType, StringMatch};
use crate::tree::{self, Report, field};

/// A match's `type` and `value` as written; absent or empty is "".
struct Raw {
    kind: String,
    value: String,
}

fn raw(report: &mut Report, value: &Value, path: &str) -> Option<Raw> {
    let f = tree::fields(report, value, path, &["type", "value"])?;
    let mut text = |name: &str| match f.get(name) {
        Some((v, p)) => tree::string(report, v, &p),
        None => Some(String::new()),
    };
    let kind = text("type");
    let value = text("value");
    Some(Raw {
        kind: kind?,
        value: value?,
    })
}

pub(crate) fn source_match(report: &mut Report, value: &Value, path: &str) -> Option<Match> {
    let f = tree::fields(report, value, path, &["spiffeID", "sni"])?;
    let spiffe = match f.get("spiffeID") {
        Some((v, p)) => Some((raw(report, v, &p)?, p)),
        None => None,
    };
    let sni = match f.get("sni") {
        Some((v, p)) => Some((raw(report, v, &p)?, p)),
        None => None,
    };
    let errors_before = report.errors.len();
    if let Some((m, p)) = &spiffe
        && let Err(reason) = spiffe_id(&m.value)
    {
        report.error(p, format!("must be a valid Spiffe ID: {reason}"));
    }
    if let Some((m, p)) = &sni {
        match m.kind.as_str() {
            "Exact" => {}
            "" => report.error(&field(p, "type"), "must be set"),
            other => report.error(
                &field(p, "type"),
                format!("unrecognized type {other:?}, supported values are: Exact"),
            ),
        }
        if m.value.is_empty() {
            report.error(&field(p, "value"), "must be set");
        } else {
            for problem in dns1123_subdomain(&m.value) {
                report.error(&field(p, "value"), problem);
            }
        }
    }
    let spiffe_kind = match &spiffe {
        Some((m, p)) => match m.kind.as_str() {
            "Exact" => Some(MatchType::Exact),
            "Prefix" => Some(MatchType::Prefix),
            "" => {
                report.error(&field(p, "type"), "must be set");
                None
            }
            other => {
                report.error(
                    &field(p, "type"),
                    format!("unrecognized type {other:?}, supported values are: Exact, Prefix"),
                );
                None
            }
        },
        None => None,
    };
    if report.errors.len() != errors_before {
        return None;
    }
    match (spiffe, sni) {
        (Some((m, _)), None) => Some(Match::SpiffeId(StringMatch {
            kind: spiffe_kind?,
            value: m.value,
        })),
        (None, Some((m, _))) => Some(Match::Sni(StringMatch {
            kind: MatchType::Exact,
            value: m.value,
        })),
        (None, None) => {
            report.error(path, "must specify at least one of 'spiffeID' or 'sni'");
            None
        }
        (Some((s, _)), Some((n, _))) => Some(Match::Both {
            spiffe_id: StringMatch {
                kind: spiffe_kind?,
                value: s.value,
            },
            sni: StringMatch {
                kind: MatchType::Exact,
                value: n.value,
            },
        }),
    }
}

/// Why `id` is not a SPIFFE ID (go-spiffe's `FromString` reasons), if it is not one.
pub(crate) fn spiffe_id(id: &str) -> Result<(), &'static str> {
    const SCHEME: &str = "spiffe://";
    if id.is_empty() {
        return Err("cannot be empty");
    }
    let Some(rest) = id.strip_prefix(SCHEME) else {
        return Err("scheme is missing or invalid");
    };
    let split = rest.find('/').unwrap_or(rest.len());
    let (domain, path) = rest.split_at(split);
    let domain_char = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b);
    if !domain.bytes().all(domain_char) {
        return Err(
            "trust domain characters are limited to lowercase letters, numbers, dots, dashes, and underscores",
        );
    }
    if domain.is_empty() {
        return Err("trust domain is missing");
    }
    if path.is_empty() {
        return Ok(());
    }
    let segments: Vec<&str> = path[1..].split('/').collect();
    let last = segments.len() - 1;
    for (i, segment) in segments.iter().enumerate() {
        // go-spiffe checks a segment's characters before its shape, segment by segment.
        let segment_char = |b: u8| b.is_ascii_alphanumeric() || b"-._".contains(&b);
        if !segment.bytes().all(segment_char) {
            return Err(
                "path segment characters are limited to letters, numbers, dots, dashes, and underscores",
            );
        }
        match *segment {
            "" if i == last => return Err("path cannot have a trailing slash"),
            "" => return Err("path cannot contain empty segments"),
            "." | ".." => return Err("path cannot contain dot segments"),
            _ => {}
        }
    }
    Ok(())
}

/// Kubernetes' `IsDNS1123Subdomain` messages for `s` (none when it is one).
fn dns1123_subdomain(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    if s.len() > 253 {
        out.push("must be no more than 253 characters".to_string());
    }
    if !super::is_dns1123_subdomain_chars(s) {
        out.push("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')".to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::spiffe_id;

    #[test]
    fn spiffe_ids_are_checked_as_go_spiffe_checks_them() {
        for ok in [
            "spiffe://example.org",
            "spiffe://example.org/web",
            "spiffe://default/ns/web/sa/client",
            "spiffe://a_b-c.d/A.b-C_d",
        ] {
            assert_eq!(spiffe_id(ok), Ok(()), "{ok}");
        }
        for (bad, why) in [
            ("", "cannot be empty"),
            ("http://example.org", "scheme is missing or invalid"),
            ("spiffe://", "trust domain is missing"),
            ("spiffe:///web", "trust domain is missing"),
            (
                "spiffe://Example.org",
                "trust domain characters are limited to lowercase letters, numbers, dots, dashes, and underscores",
            ),
            ("spiffe://example.org/", "path cannot have a trailing slash"),
            (
                "spiffe://example.org/a//b",
                "path cannot contain empty segments",
            ),
            (
                "spiffe://example.org/a/../b",
                "path cannot contain dot segments",
            ),
            ("spiffe://example.org/.", "path cannot contain dot segments"),
            (
                "spiffe://example.org/a*b",
                "path segment characters are limited to letters, numbers, dots, dashes, and underscores",
            ),
        ] {
            assert_eq!(spiffe_id(bad), Err(why), "{bad}");
        }
    }
}
