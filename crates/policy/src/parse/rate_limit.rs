//! Reading and validating a kmesh `RateLimit` spec, in either written form.

use serde_yaml_ng::Value;

use crate::model::ServiceRules;
use crate::quota::{QuotaError, TokenBucket};
use crate::tree::{self, Report, field, index};

/// The smallest refill interval the kernel limiter accepts (its arithmetic divides by it).
pub(crate) const MIN_FILL_INTERVAL_NS: u64 = 1_000_000;

/// Returns the services and whether they were written as `services[]`.
pub(crate) fn spec(
    report: &mut Report,
    value: &Value,
    path: &str,
) -> Option<(Vec<ServiceRules>, bool)> {
    let f = tree::fields(report, value, path, &["service", "rules", "services"])?;
    match (f.has("service") || f.has("rules"), f.has("services")) {
        (true, true) => {
            report.error(
                &field(path, "services"),
                "must not be defined together with 'service' and 'rules' (use one form)",
            );
            None
        }
        (false, false) => {
            report.error(path, "must have at least one defined: service, services");
            None
        }
        (true, false) => {
            let name = match f.get("service") {
                None => {
                    report.error(&field(path, "service"), "must be defined");
                    None
                }
                Some((v, p)) => tree::nonempty_string(report, v, &p),
            };
            let rules = rules(report, f.get("rules"), &field(path, "rules"));
            Some((
                vec![ServiceRules {
                    name: name?,
                    rules: rules?,
                }],
                false,
            ))
        }
        (false, true) => {
            let (v, p) = f.get("services")?;
            let items = tree::list(report, v, &p)?;
            if items.is_empty() {
                report.error(&p, "must have at least one element");
                return None;
            }
            let mut out = Vec::new();
            let mut ok = true;
            for (i, item) in items.iter().enumerate() {
                let ip = index(&p, i);
                let Some(sf) = tree::fields(report, item, &ip, &["name", "rules"]) else {
                    ok = false;
                    continue;
                };
                let name = match sf.get("name") {
                    None => {
                        report.error(&field(&ip, "name"), "must be defined");
                        None
                    }
                    Some((v, np)) => tree::nonempty_string(report, v, &np),
                };
                if let Some(n) = &name
                    && let Some(j) = out.iter().position(|s: &ServiceRules| &s.name == n)
                {
                    report.error(
                        &field(&ip, "name"),
                        format!("service '{n}' is already listed at {}", index(&p, j)),
                    );
                    ok = false;
                }
                let rules = rules(report, sf.get("rules"), &field(&ip, "rules"));
                match (name, rules) {
                    (Some(name), Some(rules)) => out.push(ServiceRules { name, rules }),
                    _ => ok = false,
                }
            }
            ok.then_some((out, true))
        }
    }
}

fn rules(
    report: &mut Report,
    value: Option<(&Value, String)>,
    path: &str,
) -> Option<Vec<TokenBucket>> {
    let Some((v, p)) = value else {
        report.error(path, "must be defined");
        return None;
    };
    let items = tree::list(report, v, &p)?;
    if items.is_empty() {
        report.error(&p, "must have at least one element");
        return None;
    }
    if items.len() > 1 {
        // The kernel keeps one bucket per destination, so a second rule could not be enforced.
        report.error(
            &index(&p, 1),
            "only one rule per service is supported (the kernel keeps one token bucket per destination)",
        );
        return None;
    }
    let ip = index(&p, 0);
    let f = tree::fields(
        report,
        &items[0],
        &ip,
        &["maxTokens", "tokensPerFill", "fillInterval"],
    )?;
    let mut number = |name: &str, min: u64, message: &str| -> Option<u64> {
        let Some((v, np)) = f.get(name) else {
            report.error(&field(&ip, name), "must be defined");
            return None;
        };
        let n = tree::integer(report, v, &np, u64::MAX)?;
        if n < min {
            report.error(&np, message);
            return None;
        }
        Some(n)
    };
    let max_tokens = number("maxTokens", 1, "must be greater than 0");
    let tokens_per_fill = number("tokensPerFill", 1, "must be greater than 0");
    let fill_interval = number(
        "fillInterval",
        MIN_FILL_INTERVAL_NS,
        "must be at least 1000000 (1ms, in nanoseconds)",
    );
    let (max_tokens, tokens_per_fill, fill_interval) =
        (max_tokens?, tokens_per_fill?, fill_interval?);
    match TokenBucket::new(max_tokens, tokens_per_fill, fill_interval) {
        Ok(bucket) => Some(vec![bucket]),
        Err(error) => {
            let name = match &error {
                QuotaError::Bucket(meshlimit_bucket::SettingsError::MaxTokensTooLarge(_)) => {
                    "maxTokens"
                }
                QuotaError::Bucket(meshlimit_bucket::SettingsError::FillIntervalTooLong(_)) => {
                    "fillInterval"
                }
                _ => "tokensPerFill",
            };
            report.error(&field(&ip, name), error.to_string());
            None
        }
    }
}
