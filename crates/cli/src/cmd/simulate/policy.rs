//! The `--policy` mode of `meshlimit simulate`: the bucket is the effective HTTP request limit
//! of one inbound of one Dataplane (with `--connections`, its TCP connection limit), after
//! matching and merging every policy in the files (the same engine as `validate` and
//! `inspect`). A `MeshRateLimit` refills smoothly, as Envoy does.

use std::fmt;
use std::path::PathBuf;

use meshlimit_bucket::{Refill, Settings};
use meshlimit_policy::duration::format_go;
use meshlimit_policy::{
    DataplaneLimits, InboundLimits, Kind, Problem, Rate, ResourceSet, Source, TcpLimit,
};

use crate::cmd::validate;

/// Where the limit comes from: policy files, a Dataplane and one of its inbounds.
#[derive(clap::Args, Debug, Clone)]
pub struct PolicyFlags {
    /// Policy and Dataplane files or directories (every *.yaml / *.yml inside); `-` reads
    /// standard input. Replaces the bucket flags.
    #[arg(
        long = "policy",
        value_name = "PATH",
        num_args = 1..,
        conflicts_with = "bucket_flags",
        requires_all = ["dataplane", "inbound"]
    )]
    pub policy: Vec<PathBuf>,
    /// Name of the Dataplane whose inbound is simulated (with --policy).
    #[arg(long, value_name = "NAME", requires = "policy")]
    pub dataplane: Option<String>,
    /// Port of the inbound (`networking.inbound[].port`) whose HTTP limit is simulated.
    #[arg(long, value_name = "PORT", requires = "policy")]
    pub inbound: Option<u16>,
    /// Mesh of the Dataplane.
    #[arg(
        long,
        value_name = "MESH",
        default_value = "default",
        requires = "policy"
    )]
    pub mesh: String,
    /// Simulate a client with this SPIFFE ID (for rules with `matches`).
    #[arg(long, value_name = "ID", requires = "policy")]
    pub spiffe_id: Option<String>,
    /// With --spiffe-id: the TLS server name the simulated client asked for. Alone it changes
    /// nothing.
    ///
    /// A rule's match that names both a spiffeID and an SNI applies only when this equals its
    /// SNI; a match with a spiffeID alone applies whatever this is. Matches with an SNI and no
    /// spiffeID are left out: Kuma applies them on zone proxy listeners, never on a sidecar
    /// inbound, so --sni without --spiffe-id simulates the inbound's limit for every client.
    #[arg(long, value_name = "NAME", requires = "policy")]
    pub sni: Option<String>,
    /// The arrivals are new connections: simulate the inbound's TCP connection limit
    /// (`local.tcp.connectionRate`) instead of its HTTP request limits.
    #[arg(long, requires = "policy", conflicts_with_all = ["spiffe_id", "sni"])]
    pub connections: bool,
}

/// The buckets to simulate, in the order the proxy checks them (the local `MeshRateLimit`,
/// then this instance's share of a `MeshGlobalRateLimit`), and the line that says where they
/// come from.
#[derive(Debug)]
pub struct PolicyLimit {
    pub buckets: Vec<Settings>,
    pub description: String,
}

/// Why the files give no HTTP limit to simulate.
#[derive(Debug)]
pub enum PolicyError {
    /// The files do not parse or validate: the same problems `validate` reports.
    Rejected(Vec<Problem>),
    NoDataplane {
        mesh: String,
        name: String,
        known: Vec<String>,
    },
    NoInbound {
        dataplane: String,
        port: u16,
        known: Vec<String>,
    },
    NoHttpLimit {
        dataplane: String,
        inbound: Box<InboundLimits>,
    },
    /// `--connections`, and the inbound has no TCP connection limit.
    NoTcpLimit {
        dataplane: String,
        inbound: Box<InboundLimits>,
    },
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PolicyError::Rejected(problems) => {
                f.write_str("the policy files are not valid:")?;
                for p in problems {
                    write!(f, "\n  {p}")?;
                }
                Ok(())
            }
            PolicyError::NoDataplane { mesh, name, known } if known.is_empty() => write!(
                f,
                "no Dataplane '{name}' in mesh '{mesh}': the policy files define no Dataplane"
            ),
            PolicyError::NoDataplane { mesh, name, known } => write!(
                f,
                "no Dataplane '{name}' in mesh '{mesh}' (the policy files define: {})",
                known.join(", ")
            ),
            PolicyError::NoInbound {
                dataplane,
                port,
                known,
            } => write!(
                f,
                "Dataplane '{dataplane}' has no inbound on port {port} (its inbounds: {})",
                known.join(", ")
            ),
            PolicyError::NoHttpLimit { dataplane, inbound } => {
                write!(
                    f,
                    "inbound {} of Dataplane '{dataplane}' (service {}, {}) has no HTTP request \
                     limit",
                    inbound.port,
                    inbound.service,
                    protocol_name(inbound)
                )?;
                match (&inbound.tcp, inbound.policies.is_empty()) {
                    (Some(TcpLimit { connection_rate }), _) => write!(
                        f,
                        ": it has a TCP connection limit of {} instead (from {}); add \
                         --connections to replay the arrivals as connections",
                        rate_text(connection_rate, "connections"),
                        inbound.policies.join(", ")
                    ),
                    (None, true) => f.write_str(": no MeshRateLimit selects it"),
                    (None, false) => write!(
                        f,
                        ": the MeshRateLimits that select it ({}) set no HTTP request rate there",
                        inbound.policies.join(", ")
                    ),
                }
            }
            PolicyError::NoTcpLimit { dataplane, inbound } => {
                write!(
                    f,
                    "inbound {} of Dataplane '{dataplane}' (service {}) has no TCP connection \
                     limit",
                    inbound.port, inbound.service
                )?;
                if inbound.policies.is_empty() {
                    f.write_str(": no MeshRateLimit selects it")
                } else {
                    write!(
                        f,
                        ": the MeshRateLimits that select it ({}) set no connectionRate there",
                        inbound.policies.join(", ")
                    )
                }
            }
        }
    }
}

/// Loads and validates the files, then takes the effective HTTP request rate of the inbound.
/// The outer error is for reading standard input only. Warnings go to stderr, as `validate`
/// prints them.
pub fn limit(flags: &PolicyFlags) -> anyhow::Result<Result<PolicyLimit, PolicyError>> {
    let parsed = match validate::load(&flags.policy)? {
        Ok(parsed) => parsed,
        Err(problems) => return Ok(Err(PolicyError::Rejected(problems))),
    };
    let warnings = parsed.warnings.clone();
    let set = match ResourceSet::from_parsed(parsed) {
        Ok(set) => set,
        Err(problems) => return Ok(Err(PolicyError::Rejected(problems))),
    };
    validate::print_warnings(&warnings);
    Ok(limit_in(&set, flags))
}

fn limit_in(set: &ResourceSet, flags: &PolicyFlags) -> Result<PolicyLimit, PolicyError> {
    // clap makes --dataplane and --inbound required with --policy.
    let name = flags.dataplane.as_deref().unwrap_or_default();
    let port = flags.inbound.unwrap_or_default();
    let Some(limits) = set.effective(&flags.mesh, name) else {
        return Err(PolicyError::NoDataplane {
            mesh: flags.mesh.clone(),
            name: name.to_string(),
            known: known_dataplanes(set),
        });
    };
    let inbound = match (&flags.spiffe_id, &flags.sni) {
        (None, None) => limits.inbounds.iter().find(|i| i.port == port).cloned(),
        (spiffe_id, sni) => {
            let source = Source {
                spiffe_id: spiffe_id.clone(),
                sni: sni.clone(),
            };
            set.limits_for_source(&flags.mesh, name, port, &source)
        }
    };
    let Some(inbound) = inbound else {
        return Err(PolicyError::NoInbound {
            dataplane: name.to_string(),
            port,
            known: known_inbounds(&limits),
        });
    };
    if flags.connections {
        let Some(tcp) = &inbound.tcp else {
            return Err(PolicyError::NoTcpLimit {
                dataplane: name.to_string(),
                inbound: Box::new(inbound),
            });
        };
        // The proxy's TCP bucket and Envoy's network local rate limit: one token per
        // connection, a smooth refill.
        return Ok(PolicyLimit {
            buckets: vec![tcp.connection_rate.settings()],
            description: format!(
                "# Dataplane {name} (mesh {}), inbound {port} (service {}): TCP limit {}, {} \
                 refill, over it the connection is closed at once; MeshRateLimits on this \
                 inbound: {}",
                flags.mesh,
                inbound.service,
                rate_text(&tcp.connection_rate, "connections"),
                Refill::Smooth,
                inbound.policies.join(", ")
            ),
        });
    }
    if inbound.http.is_none() && inbound.global.is_none() {
        return Err(PolicyError::NoHttpLimit {
            dataplane: name.to_string(),
            inbound: Box::new(inbound),
        });
    }
    let client = match (&flags.spiffe_id, &flags.sni) {
        (None, None) => String::new(),
        (spiffe_id, sni) => {
            let parts: Vec<String> = [("spiffeID", spiffe_id), ("SNI", sni)]
                .into_iter()
                .filter_map(|(what, v)| v.as_ref().map(|v| format!("{what} {v}")))
                .collect();
            format!(" for a client with {}", parts.join(" and "))
        }
    };
    // The policy engine built each bucket when it validated the rate: the same ones every data
    // path enforces.
    let mut buckets = Vec::new();
    let mut description = format!(
        "# Dataplane {name} (mesh {}), inbound {port} (service {}){client}: ",
        flags.mesh, inbound.service,
    );
    if let Some(http) = &inbound.http {
        buckets.push(http.request_rate.settings());
        description.push_str(&format!(
            "HTTP limit {}, {} refill, rejected with {}; MeshRateLimits on this inbound: {}",
            rate_text(&http.request_rate, "requests"),
            Refill::Smooth,
            http.status,
            inbound.policies.join(", ")
        ));
    }
    if let Some(global) = &inbound.global {
        // Without a shared store each instance enforces its share; Shadow never rejects.
        let shadow = global.mode == meshlimit_policy::GlobalMode::Shadow;
        if !shadow {
            buckets.push(global.share.settings());
        }
        if inbound.http.is_some() {
            description.push_str("; then ");
        }
        description.push_str(&format!(
            "global limit {} in total, this instance's share {} ({} of {} instances){}, \
             rejected with {}; MeshGlobalRateLimits: {}",
            rate_text(&global.request_rate, "requests"),
            rate_text(&global.share, "requests"),
            global.index + 1,
            global.instances,
            if shadow {
                ", Shadow: counted, never rejected"
            } else {
                ""
            },
            global.status,
            global.policies.join(", ")
        ));
    }
    let other_clients = set
        .source_limits(&flags.mesh, name)
        .iter()
        .any(|s| s.port == port);
    if client.is_empty() && other_clients {
        description.push_str(
            " (clients matching rules[].matches get other limits: see --spiffe-id, --sni)",
        );
    }
    Ok(PolicyLimit {
        buckets,
        description,
    })
}

fn rate_text(rate: &Rate, what: &str) -> String {
    format!(
        "{} {what} per {}",
        rate.num().get(),
        format_go(rate.interval())
    )
}

fn protocol_name(inbound: &InboundLimits) -> &'static str {
    match inbound.protocol {
        meshlimit_policy::Protocol::Http => "http",
        meshlimit_policy::Protocol::Tcp => "tcp",
    }
}

fn known_dataplanes(set: &ResourceSet) -> Vec<String> {
    set.resources()
        .iter()
        .filter(|r| r.kind() == Kind::Dataplane)
        .map(|r| format!("{} (mesh {})", r.name(), r.mesh()))
        .collect()
}

fn known_inbounds(limits: &DataplaneLimits) -> Vec<String> {
    limits
        .inbounds
        .iter()
        .map(|i| format!("{} (service {})", i.port, i.service))
        .collect()
}
