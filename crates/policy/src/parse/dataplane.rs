//! Reading and validating a `Dataplane`'s `networking`: inbounds, outbounds, a gateway, and
//! zone-proxy listeners (checked with Kuma 2.14's messages).

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde_yaml_ng::Value;

use crate::model::dataplane::SERVICE_TAG;
use crate::model::{
    Gateway, GatewayType, Inbound, InboundState, Listener, ListenerState, ListenerType, Networking,
    Outbound,
};
use crate::tree::{self, Report, field, index};

pub(crate) fn networking(report: &mut Report, value: &Value, path: &str) -> Option<Networking> {
    const FIELDS: [&str; 6] = [
        "address",
        "advertisedAddress",
        "gateway",
        "inbound",
        "outbound",
        "listeners",
    ];
    let f = tree::fields(report, value, path, &FIELDS)?;
    let mut ok = true;
    let main_address = match f.get("address") {
        None => {
            report.error(&field(path, "address"), "must be defined");
            None
        }
        Some((v, p)) => address(report, v, &p),
    };
    let advertised_address = match f.get("advertisedAddress") {
        Some((v, p)) => {
            let a = address(report, v, &p);
            ok &= a.is_some();
            a
        }
        None => None,
    };
    let gateway = match f.get("gateway") {
        Some((v, p)) => {
            let g = gateway(report, v, &p);
            ok &= g.is_some();
            g
        }
        None => None,
    };

    let mut inbound: Vec<Inbound> = Vec::new();
    if let Some((v, p)) = f.get("inbound") {
        match tree::list(report, v, &p) {
            Some(items) => {
                for (i, item) in items.iter().enumerate() {
                    let ip = index(&p, i);
                    let Some(ib) = inbound_entry(report, item, &ip) else {
                        ok = false;
                        continue;
                    };
                    if let Some(j) = inbound.iter().position(|o| o.port == ib.port) {
                        report.error(
                            &field(&ip, "port"),
                            format!("port {} is already used by {}", ib.port, index(&p, j)),
                        );
                        ok = false;
                    }
                    if let Some(name) = &ib.name
                        && let Some(j) = inbound.iter().position(|o| o.name.as_ref() == Some(name))
                    {
                        report.error(
                            &field(&ip, "name"),
                            format!("name '{name}' is already used by {}", index(&p, j)),
                        );
                        ok = false;
                    }
                    inbound.push(ib);
                }
            }
            None => ok = false,
        }
    }
    if gateway.is_some() && !inbound.is_empty() {
        report.error(
            &field(path, "inbound"),
            "must not be defined together with gateway",
        );
        ok = false;
    }
    let mut listeners = Vec::new();
    if let Some((v, p)) = f.get("listeners") {
        match &gateway {
            Some(g) if !matches!(v, Value::Sequence(items) if items.is_empty()) => {
                let kind = match g.kind {
                    Some(GatewayType::Builtin) => "builtin",
                    _ => "delegated",
                };
                report.error(
                    &p,
                    format!("listeners cannot be defined for {kind} gateways"),
                );
                ok = false;
            }
            _ => match zone_listeners(report, v, &p, main_address.as_deref(), &inbound) {
                Some(l) => listeners = l,
                None => ok = false,
            },
        }
    }
    if gateway.is_none()
        && inbound.is_empty()
        && f.get("inbound").is_none()
        && f.get("listeners").is_none()
    {
        report.error(
            path,
            "has to contain at least one inbound interface, listener or gateway",
        );
        ok = false;
    }

    let mut outbound = Vec::new();
    if let Some((v, p)) = f.get("outbound") {
        match tree::list(report, v, &p) {
            Some(items) => {
                for (i, item) in items.iter().enumerate() {
                    match outbound_entry(report, item, &index(&p, i)) {
                        Some(o) => outbound.push(o),
                        None => ok = false,
                    }
                }
            }
            None => ok = false,
        }
    }

    let address = main_address?;
    ok.then_some(Networking {
        address,
        advertised_address,
        gateway,
        inbound,
        outbound,
        listeners,
    })
}

fn address(report: &mut Report, value: &Value, path: &str) -> Option<String> {
    let a = tree::nonempty_string(report, value, path)?;
    if a.parse::<IpAddr>().is_ok() || is_domain_name(&a) {
        Some(a)
    } else {
        report.error(
            path,
            format!("'{a}' is not a valid IP address or domain name"),
        );
        None
    }
}

fn is_domain_name(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
        // A dotted string of digits is a mistyped IP address, not a name.
        && !s.split('.').all(|l| l.bytes().all(|b| b.is_ascii_digit()))
}

fn port(report: &mut Report, value: &Value, path: &str) -> Option<u16> {
    match tree::integer(report, value, path, u64::MAX)? {
        p @ 1..=65535 => u16::try_from(p).ok(),
        _ => {
            report.error(path, "must be in inclusive range [1, 65535]");
            None
        }
    }
}

fn tags(report: &mut Report, f: &tree::Fields<'_>) -> Option<BTreeMap<String, String>> {
    match f.get("tags") {
        Some((v, p)) => tree::string_map(report, v, &p),
        None => Some(BTreeMap::new()),
    }
}

fn inbound_entry(report: &mut Report, value: &Value, path: &str) -> Option<Inbound> {
    const FIELDS: [&str; 7] = [
        "port",
        "servicePort",
        "serviceAddress",
        "address",
        "name",
        "tags",
        "state",
    ];
    let f = tree::fields(report, value, path, &FIELDS)?;
    let mut ok = true;
    let port_value = match f.get("port") {
        None => {
            report.error(&field(path, "port"), "must be defined");
            None
        }
        Some((v, p)) => port(report, v, &p),
    };
    let mut optional =
        |name: &str, read: fn(&mut Report, &Value, &str) -> Option<String>| match f.get(name) {
            Some((v, p)) => {
                let s = read(report, v, &p);
                ok &= s.is_some();
                s
            }
            None => None,
        };
    let service_address = optional("serviceAddress", address);
    let inbound_address = optional("address", address);
    let name = optional("name", tree::nonempty_string);
    let service_port = match f.get("servicePort") {
        Some((v, p)) => {
            let sp = port(report, v, &p);
            ok &= sp.is_some();
            sp
        }
        None => None,
    };
    let state = match f.get("state") {
        Some((v, p)) => {
            let s = super::shared::one_of(
                report,
                v,
                &p,
                &[
                    ("Ready", InboundState::Ready),
                    ("NotReady", InboundState::NotReady),
                    ("Ignored", InboundState::Ignored),
                ],
            );
            ok &= s.is_some();
            s
        }
        None => None,
    };
    let tags = tags(report, &f);
    if let Some(t) = &tags
        && !t.contains_key(SERVICE_TAG)
    {
        report.error(
            &field(path, "tags"),
            format!("mandatory tag \"{SERVICE_TAG}\" is missing"),
        );
        ok = false;
    }
    let inbound = Inbound {
        port: port_value?,
        service_port,
        service_address,
        address: inbound_address,
        name,
        state,
        tags: tags?,
    };
    ok.then_some(inbound)
}

fn outbound_entry(report: &mut Report, value: &Value, path: &str) -> Option<Outbound> {
    let f = tree::fields(report, value, path, &["port", "address", "tags"])?;
    let port_value = match f.get("port") {
        None => {
            report.error(&field(path, "port"), "must be defined");
            None
        }
        Some((v, p)) => port(report, v, &p),
    };
    let address = match f.get("address") {
        Some((v, p)) => Some(address(report, v, &p)?),
        None => None,
    };
    let tags = tags(report, &f)?;
    Some(Outbound {
        port: port_value?,
        address,
        tags,
    })
}

fn gateway(report: &mut Report, value: &Value, path: &str) -> Option<Gateway> {
    let f = tree::fields(report, value, path, &["type", "tags"])?;
    let kind = match f.get("type") {
        None => None,
        Some((v, p)) => match tree::string(report, v, &p)?.as_str() {
            "BUILTIN" => Some(GatewayType::Builtin),
            "DELEGATED" => Some(GatewayType::Delegated),
            other => {
                report.error(
                    &p,
                    format!("value '{other}' is not supported (expected BUILTIN or DELEGATED)"),
                );
                return None;
            }
        },
    };
    let tags = tags(report, &f)?;
    if !tags.contains_key(SERVICE_TAG) {
        report.error(
            &field(path, "tags"),
            format!("mandatory tag \"{SERVICE_TAG}\" is missing"),
        );
        return None;
    }
    Some(Gateway { kind, tags })
}

/// `networking.listeners`: zone ingress and egress listeners, checked as Kuma's
/// `validateListeners` checks them (messages and paths are Kuma's).
fn zone_listeners(
    report: &mut Report,
    value: &Value,
    path: &str,
    main_address: Option<&str>,
    inbounds: &[Inbound],
) -> Option<Vec<Listener>> {
    let items = tree::list(report, value, path)?;
    let mut ok = true;
    let mut names: Vec<String> = inbounds
        .iter()
        .map(|i| i.name.clone().unwrap_or_else(|| i.port.to_string()))
        .collect();
    let mut taken: Vec<(String, ListenerType)> = Vec::new();
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let ip = index(path, i);
        let Some(f) = tree::fields(
            report,
            item,
            &ip,
            &["type", "address", "port", "name", "state"],
        ) else {
            ok = false;
            continue;
        };
        let errors_before = report.errors.len();
        let kind = match f.get("type") {
            None => {
                report.error(
                    &field(&ip, "type"),
                    "type must be ZoneIngress or ZoneEgress",
                );
                None
            }
            Some((v, p)) => super::shared::one_of(
                report,
                v,
                &p,
                &[
                    ("ZoneIngress", ListenerType::ZoneIngress),
                    ("ZoneEgress", ListenerType::ZoneEgress),
                ],
            ),
        };
        let address = match f.get("address") {
            None => {
                report.error(&field(&ip, "address"), "address can't be empty");
                None
            }
            Some((v, p)) => tree::string(report, v, &p).filter(|a| {
                let problem = if a.is_empty() {
                    Some("address can't be empty")
                } else if a == "0.0.0.0" || a == "::" {
                    Some("must not be 0.0.0.0 or ::")
                } else if a.parse::<IpAddr>().is_err() && !is_domain_name(a) {
                    Some("address has to be valid IP address or domain name")
                } else {
                    None
                };
                if let Some(problem) = problem {
                    report.error(&p, problem);
                }
                problem.is_none()
            }),
        };
        let port = match f.get("port") {
            None => {
                report.error(&field(&ip, "port"), "port must be in the range [1, 65535]");
                None
            }
            Some((v, p)) => match tree::integer(report, v, &p, u64::MAX) {
                Some(n @ 1..=65535) => u16::try_from(n).ok(),
                Some(_) => {
                    report.error(&p, "port must be in the range [1, 65535]");
                    None
                }
                None => None,
            },
        };
        let name = match f.get("name") {
            Some((v, p)) => match tree::string(report, v, &p) {
                Some(n) if n.is_empty() => None,
                Some(n) => {
                    if names.contains(&n) {
                        report.error(
                            &p,
                            format!("name {n:?} must be unique across inbounds and listeners"),
                        );
                    }
                    names.push(n.clone());
                    Some(n)
                }
                None => None,
            },
            None => None,
        };
        let state = match f.get("state") {
            Some((v, p)) => super::shared::one_of(
                report,
                v,
                &p,
                &[
                    ("Ready", ListenerState::Ready),
                    ("NotReady", ListenerState::NotReady),
                ],
            ),
            None => None,
        };
        if let (Some(address), Some(port), Some(kind)) = (&address, port, kind) {
            let key = format!("{address}:{port}");
            match taken.iter().find(|(k, _)| *k == key) {
                Some((_, other)) if *other == kind => report.error(
                    &ip,
                    format!("address:port {key} is already used by another listener"),
                ),
                Some(_) => report.error(
                    &ip,
                    format!("address:port {key} is used by listeners of different types"),
                ),
                None => taken.push((key.clone(), kind)),
            }
            let collides = inbounds.iter().any(|inbound| {
                let at = inbound.address.as_deref().or(main_address).unwrap_or("");
                format!("{at}:{}", inbound.port) == key
            });
            if collides {
                report.error(
                    &ip,
                    format!("address:port {key} collides with an inbound listener"),
                );
            }
        }
        if report.errors.len() != errors_before {
            ok = false;
            continue;
        }
        if let (Some(kind), Some(address), Some(port)) = (kind, address, port) {
            out.push(Listener {
                kind,
                address,
                port,
                name,
                state,
            });
        }
    }
    ok.then_some(out)
}
