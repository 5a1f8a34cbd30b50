//! From the policy engine's [`KernelLimit`]s to map entries: address parsing, validation of the
//! bucket settings, and the plan of map changes that takes the kernel from one set to the next.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use meshlimit_policy::effective::KernelLimit;

use crate::shared::{BucketSettings, DestKey};

/// Why a [`KernelLimit`] cannot be enforced. Names the destination and the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("service {service}: address {address:?} is not an IPv4 or IPv6 address")]
    Address { service: String, address: String },
    #[error("service {service} ({destination}): port must not be 0")]
    Port {
        service: String,
        destination: SocketAddr,
    },
    #[error(
        "{destination} is limited twice with different settings (services {first} and {second})"
    )]
    Conflict {
        destination: SocketAddr,
        first: String,
        second: String,
    },
}

/// One validated limit, ready for the maps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Destination {
    pub service: String,
    pub ip: IpAddr,
    pub port: u16,
    pub settings: BucketSettings,
}

/// Validates a whole set: every limit, and that no destination gets two different settings.
/// Identical duplicates (the same service listed twice) collapse into one.
pub(crate) fn validate(
    limits: &[KernelLimit],
) -> Result<BTreeMap<DestKeyOrd, Destination>, Vec<LimitError>> {
    let mut entries: BTreeMap<DestKeyOrd, Destination> = BTreeMap::new();
    let mut problems = Vec::new();
    for limit in limits {
        match validate_one(limit) {
            Ok(entry) => {
                let key = DestKeyOrd(DestKey::new(entry.ip, entry.port));
                match entries.get(&key) {
                    Some(existing) if existing.settings != entry.settings => {
                        problems.push(LimitError::Conflict {
                            destination: SocketAddr::new(entry.ip, entry.port),
                            first: existing.service.clone(),
                            second: entry.service.clone(),
                        });
                    }
                    Some(_) => {}
                    None => {
                        entries.insert(key, entry);
                    }
                }
            }
            Err(err) => problems.push(err),
        }
    }
    if problems.is_empty() {
        Ok(entries)
    } else {
        Err(problems)
    }
}

fn validate_one(limit: &KernelLimit) -> Result<Destination, LimitError> {
    let ip: IpAddr = limit
        .address
        .trim()
        .parse()
        .map_err(|_| LimitError::Address {
            service: limit.service.clone(),
            address: limit.address.clone(),
        })?;
    // `::ffff:a.b.c.d` is the IPv4 destination a.b.c.d (see `DestKey::new`).
    let ip = ip.to_canonical();
    let destination = SocketAddr::new(ip, limit.port);
    if limit.port == 0 {
        return Err(LimitError::Port {
            service: limit.service.clone(),
            destination,
        });
    }
    Ok(Destination {
        service: limit.service.clone(),
        ip,
        port: limit.port,
        // The policy engine built the bucket within what the program can count.
        settings: BucketSettings::from(limit.bucket),
    })
}

/// [`DestKey`] ordered by its bytes, so that plans and stats come out in a stable order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct DestKeyOrd(pub DestKey);

impl Ord for DestKeyOrd {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.0.family, self.0.addr, self.0.port).cmp(&(other.0.family, other.0.addr, other.0.port))
    }
}

impl PartialOrd for DestKeyOrd {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// The map changes that take the kernel from `current` to `wanted`.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct MapChanges {
    /// New destinations: counters created, then settings written.
    pub add: Vec<DestKeyOrd>,
    /// Destinations whose settings changed: settings rewritten, buckets kept (tokens clamped).
    pub change: Vec<DestKeyOrd>,
    /// Destinations no longer limited: settings deleted first (the limit lifts at once), then
    /// their buckets and counters.
    pub remove: Vec<DestKeyOrd>,
}

pub(crate) fn plan(
    current: &BTreeMap<DestKeyOrd, Destination>,
    wanted: &BTreeMap<DestKeyOrd, Destination>,
) -> MapChanges {
    let mut plan = MapChanges::default();
    for (key, entry) in wanted {
        match current.get(key) {
            None => plan.add.push(*key),
            Some(old) if old.settings != entry.settings => plan.change.push(*key),
            Some(_) => {}
        }
    }
    plan.remove = current
        .keys()
        .filter(|key| !wanted.contains_key(key))
        .copied()
        .collect();
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(
        service: &str,
        address: &str,
        port: u16,
        max: u64,
        per_fill: u64,
        interval: u64,
    ) -> KernelLimit {
        KernelLimit {
            service: service.to_owned(),
            address: address.to_owned(),
            port,
            bucket: meshlimit_policy::TokenBucket::new(max, per_fill, interval)
                .expect("a valid bucket"),
        }
    }

    #[test]
    fn port_zero_is_rejected_with_the_destination() {
        // Zero or too fast buckets cannot reach here: the policy engine refuses to build them.
        let problems = validate(&[limit("d", "10.0.0.1", 0, 1, 1, 1)]).unwrap_err();
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(text, ["service d (10.0.0.1:0): port must not be 0"]);
    }

    #[test]
    fn addresses_must_be_ip_literals() {
        let problems = validate(&[limit("web", "web.local", 80, 1, 1, 1)]).unwrap_err();
        assert_eq!(
            problems[0].to_string(),
            "service web: address \"web.local\" is not an IPv4 or IPv6 address"
        );
    }

    #[test]
    fn conflicting_duplicates_are_rejected_identical_ones_collapse() {
        let same = validate(&[
            limit("a", "10.0.0.1", 80, 5, 1, 1),
            limit("a", "10.0.0.1", 80, 5, 1, 1),
        ])
        .unwrap();
        assert_eq!(same.len(), 1);
        let problems = validate(&[
            limit("a", "10.0.0.1", 80, 5, 1, 1),
            limit("b", "::ffff:10.0.0.1", 80, 6, 1, 1),
        ])
        .unwrap_err();
        assert_eq!(
            problems[0].to_string(),
            "10.0.0.1:80 is limited twice with different settings (services a and b)"
        );
    }

    #[test]
    fn plan_adds_changes_and_removes() {
        let current = validate(&[
            limit("a", "10.0.0.1", 80, 5, 1, 1),
            limit("b", "10.0.0.2", 80, 5, 1, 1),
        ])
        .unwrap();
        let wanted = validate(&[
            limit("a", "10.0.0.1", 80, 6, 1, 1),
            limit("c", "fd00::1", 80, 5, 1, 1),
        ])
        .unwrap();
        let plan = plan(&current, &wanted);
        let ips = |keys: &[DestKeyOrd]| {
            keys.iter()
                .map(|k| k.0.ip().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(ips(&plan.add), ["fd00::1"]);
        assert_eq!(ips(&plan.change), ["10.0.0.1"]);
        assert_eq!(ips(&plan.remove), ["10.0.0.2"]);
        assert_eq!(super::plan(&wanted, &wanted), MapChanges::default());
    }
}
