//! What the control plane knows about its data planes and kernel agents: open streams, the store
//! version each last acknowledged, and their counters over the last minute (for
//! `get ratelimit-stats`, `top` and `diagnose`).
//!
//! Time comes from `tokio::time::Instant`, so tests can drive it with tokio's paused clock.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use crate::store_state::StoreState;
use crate::wire::{
    AgentReport, AgentStatus, DataplaneReport, DataplaneStatus, DestinationStatus, GlobalCounters,
    GlobalStatus, InboundStatus, SeriesStats, StatusResponse,
};

/// The window of `rate_per_second` and of the sparkline history.
const WINDOW: Duration = Duration::from_secs(60);
/// Points kept per series (reports come about once a second).
const MAX_SAMPLES: usize = 120;

#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    total: u64,
    limited: u64,
    /// Failed checks of a global limit's shared store (0 for other series).
    store_errors: u64,
}

#[derive(Debug, Default)]
struct Series {
    samples: VecDeque<Sample>,
    total: u64,
    allowed: u64,
    limited: u64,
    tokens_available: Option<u64>,
    global: Option<GlobalCounters>,
}

impl Series {
    fn record(&mut self, at: Instant, total: u64, allowed: u64, limited: u64, tokens: Option<u64>) {
        // Counters that went down mean the data plane restarted: start the series again.
        if total < self.total || limited < self.limited {
            self.samples.clear();
        }
        self.total = total;
        self.allowed = allowed;
        self.limited = limited;
        self.tokens_available = tokens;
        self.samples.push_back(Sample {
            at,
            total,
            limited,
            store_errors: 0,
        });
        while self.samples.len() > MAX_SAMPLES {
            self.samples.pop_front();
        }
    }

    /// The global limit's counters reported with the sample just recorded.
    fn record_global(&mut self, global: Option<&GlobalCounters>) {
        if let (Some(global), Some(last)) = (global, self.samples.back_mut()) {
            last.store_errors = global.store_errors;
        }
        self.global = global.cloned();
    }

    fn global_status(&self, now: Instant) -> Option<GlobalStatus> {
        let counters = self.global.clone()?;
        // The errors counted before the window: those of the last older sample, or none when
        // the series began inside the window (all its errors are recent).
        let before = self
            .samples
            .iter()
            .rfind(|s| now.saturating_duration_since(s.at) > WINDOW)
            .map_or(0, |s| s.store_errors);
        let last = self.samples.back().map_or(0, |s| s.store_errors);
        Some(GlobalStatus {
            counters,
            store_errors_last_minute: last.saturating_sub(before),
        })
    }

    fn stats(&self, now: Instant) -> SeriesStats {
        let recent: Vec<&Sample> = self
            .samples
            .iter()
            .filter(|s| now.saturating_duration_since(s.at) <= WINDOW)
            .collect();
        let (rate, limited_rate) = match (recent.first(), recent.last()) {
            (Some(first), Some(last)) if last.at > first.at => {
                let secs = (last.at - first.at).as_secs_f64();
                (
                    last.total.saturating_sub(first.total) as f64 / secs,
                    last.limited.saturating_sub(first.limited) as f64 / secs,
                )
            }
            _ => (0.0, 0.0),
        };
        let history = recent
            .windows(2)
            .filter_map(|pair| {
                let secs = (pair[1].at - pair[0].at).as_secs_f64();
                (secs > 0.0).then(|| pair[1].total.saturating_sub(pair[0].total) as f64 / secs)
            })
            .collect();
        SeriesStats {
            total: self.total,
            allowed: self.allowed,
            limited: self.limited,
            tokens_available: self.tokens_available,
            rate_per_second: rate,
            limited_per_second: limited_rate,
            history,
        }
    }
}

#[derive(Debug, Default)]
struct Peer<K: Ord> {
    streams: u32,
    last_seen: Option<Instant>,
    acknowledged: Option<u64>,
    attached: bool,
    /// An agent's reason for being off on purpose.
    disabled: Option<String>,
    series: BTreeMap<K, Series>,
}

impl<K: Ord> Peer<K> {
    fn seen(&mut self, at: Instant) {
        self.last_seen = Some(at);
    }
}

/// `(port, protocol)` and the service name shown with it.
type InboundKey = (u16, String, String);
/// `(service, address, port)`.
type DestinationKey = (String, String, u16);

#[derive(Default)]
struct Registry {
    dataplanes: BTreeMap<(String, String), Peer<InboundKey>>,
    agents: BTreeMap<String, Peer<DestinationKey>>,
}

/// Shared, cheap to clone.
#[derive(Clone, Default)]
pub struct Insights {
    registry: Arc<Mutex<Registry>>,
}

/// Which stream a [`StreamGuard`] counts.
enum Who {
    Dataplane(String, String),
    Agent(String),
}

/// Marks a data plane or agent connected while it lives.
pub struct StreamGuard {
    insights: Insights,
    who: Who,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let now = Instant::now();
        let mut registry = self.insights.lock();
        let peer_streams = match &self.who {
            Who::Dataplane(mesh, name) => registry
                .dataplanes
                .get_mut(&(mesh.clone(), name.clone()))
                .map(|p| {
                    p.seen(now);
                    &mut p.streams
                }),
            Who::Agent(name) => registry.agents.get_mut(name).map(|p| {
                p.seen(now);
                &mut p.streams
            }),
        };
        if let Some(streams) = peer_streams {
            *streams = streams.saturating_sub(1);
        }
    }
}

impl Insights {
    fn lock(&self) -> MutexGuard<'_, Registry> {
        // The registry holds plain counters; a panic elsewhere cannot leave it inconsistent.
        self.registry
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Watch streams open now: `(data planes', kernel agents')`.
    pub fn open_streams(&self) -> (u64, u64) {
        let registry = self.lock();
        let sum = |streams: &mut dyn Iterator<Item = u32>| streams.map(u64::from).sum::<u64>();
        (
            sum(&mut registry.dataplanes.values().map(|p| p.streams)),
            sum(&mut registry.agents.values().map(|p| p.streams)),
        )
    }

    pub fn dataplane_connected(&self, mesh: &str, name: &str) -> StreamGuard {
        let mut registry = self.lock();
        let peer = registry
            .dataplanes
            .entry((mesh.to_string(), name.to_string()))
            .or_default();
        peer.streams += 1;
        peer.seen(Instant::now());
        StreamGuard {
            insights: self.clone(),
            who: Who::Dataplane(mesh.to_string(), name.to_string()),
        }
    }

    pub fn agent_connected(&self, name: &str) -> StreamGuard {
        let mut registry = self.lock();
        let peer = registry.agents.entry(name.to_string()).or_default();
        peer.streams += 1;
        peer.seen(Instant::now());
        StreamGuard {
            insights: self.clone(),
            who: Who::Agent(name.to_string()),
        }
    }

    pub fn report_dataplane(&self, mesh: &str, name: &str, report: &DataplaneReport) {
        let now = Instant::now();
        let mut registry = self.lock();
        let peer = registry
            .dataplanes
            .entry((mesh.to_string(), name.to_string()))
            .or_default();
        peer.seen(now);
        if report.version.is_some() {
            peer.acknowledged = report.version;
        }
        for c in &report.inbounds {
            let series = peer
                .series
                .entry((c.port, c.protocol.clone(), c.service.clone()))
                .or_default();
            series.record(now, c.total, c.allowed, c.limited, c.tokens_available);
            series.record_global(c.global.as_ref());
        }
    }

    pub fn report_agent(&self, name: &str, report: &AgentReport) {
        let now = Instant::now();
        let mut registry = self.lock();
        let peer = registry.agents.entry(name.to_string()).or_default();
        peer.seen(now);
        peer.attached = report.attached;
        peer.disabled.clone_from(&report.disabled);
        if report.version.is_some() {
            peer.acknowledged = report.version;
        }
        for c in &report.destinations {
            peer.series
                .entry((c.service.clone(), c.address.clone(), c.port))
                .or_default()
                .record(now, c.total, c.allowed, c.limited, c.tokens_available);
        }
    }

    /// Every Dataplane resource of `snapshot` and every peer seen, with their stats.
    pub fn status(&self, snapshot: &StoreState) -> StatusResponse {
        let now = Instant::now();
        let registry = self.lock();
        let mut names: Vec<(String, String)> = snapshot.effective.keys().cloned().collect();
        for key in registry.dataplanes.keys() {
            if !names.contains(key) {
                names.push(key.clone());
            }
        }
        names.sort();
        let seconds =
            |at: Option<Instant>| at.map(|t| now.saturating_duration_since(t).as_secs_f64());
        let dataplanes = names
            .into_iter()
            .map(
                |(mesh, name)| match registry.dataplanes.get(&(mesh.clone(), name.clone())) {
                    Some(peer) => DataplaneStatus {
                        connected: peer.streams > 0,
                        acknowledged_version: peer.acknowledged,
                        last_seen_seconds: seconds(peer.last_seen),
                        inbounds: peer
                            .series
                            .iter()
                            .map(|((port, protocol, service), series)| InboundStatus {
                                port: *port,
                                service: service.clone(),
                                protocol: protocol.clone(),
                                stats: series.stats(now),
                                global: series.global_status(now),
                            })
                            .collect(),
                        mesh,
                        name,
                    },
                    None => DataplaneStatus {
                        mesh,
                        name,
                        connected: false,
                        acknowledged_version: None,
                        last_seen_seconds: None,
                        inbounds: Vec::new(),
                    },
                },
            )
            .collect();
        let agents = registry
            .agents
            .iter()
            .map(|(name, peer)| AgentStatus {
                name: name.clone(),
                connected: peer.streams > 0,
                attached: peer.attached,
                disabled: peer.disabled.clone(),
                acknowledged_version: peer.acknowledged,
                last_seen_seconds: seconds(peer.last_seen),
                destinations: peer
                    .series
                    .iter()
                    .map(|((service, address, port), series)| DestinationStatus {
                        service: service.clone(),
                        address: address.clone(),
                        port: *port,
                        stats: series.stats(now),
                    })
                    .collect(),
            })
            .collect();
        StatusResponse {
            version: snapshot.version,
            dataplanes,
            agents,
            store: Default::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn rates_cover_the_last_minute_of_reports() {
        let mut series = Series::default();
        let start = Instant::now();
        // 10 requests a second for 90 s, 2 of them limited.
        for s in 0..=90u64 {
            let at = start + Duration::from_secs(s);
            series.record(at, s * 10, s * 8, s * 2, Some(3));
        }
        let now = start + Duration::from_secs(90);
        let stats = series.stats(now);
        assert_eq!(stats.total, 900);
        assert!((stats.rate_per_second - 10.0).abs() < 1e-9, "{stats:?}");
        assert!((stats.limited_per_second - 2.0).abs() < 1e-9, "{stats:?}");
        assert_eq!(stats.history.len(), 60);
        assert!(stats.history.iter().all(|r| (r - 10.0).abs() < 1e-9));
        assert_eq!(stats.tokens_available, Some(3));
    }

    #[tokio::test(start_paused = true)]
    async fn store_errors_count_over_the_last_minute_only() {
        let mut series = Series::default();
        let start = Instant::now();
        let global = |store_errors| GlobalCounters {
            store_errors,
            ..GlobalCounters::default()
        };
        // 5 errors in the first report: the series began inside the window, so all are recent.
        series.record(start, 10, 10, 0, None);
        series.record_global(Some(&global(5)));
        let status = series.global_status(start).expect("a global limit");
        assert_eq!(status.store_errors_last_minute, 5);
        // 30 more by 61 s; then none for over a minute.
        series.record(start + Duration::from_secs(61), 20, 20, 0, None);
        series.record_global(Some(&global(35)));
        let status = series
            .global_status(start + Duration::from_secs(61))
            .unwrap();
        assert_eq!(status.store_errors_last_minute, 30);
        series.record(start + Duration::from_secs(130), 30, 30, 0, None);
        series.record_global(Some(&global(35)));
        let status = series
            .global_status(start + Duration::from_secs(130))
            .unwrap();
        assert_eq!(status.store_errors_last_minute, 0);
        assert_eq!(status.counters.store_errors, 35);
        // A series without a global limit has no global status.
        let mut plain = Series::default();
        plain.record(start, 1, 1, 0, None);
        plain.record_global(None);
        assert!(plain.global_status(start).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_restarted_data_plane_starts_its_series_again() {
        let mut series = Series::default();
        let start = Instant::now();
        series.record(start, 1000, 1000, 0, None);
        series.record(start + Duration::from_secs(1), 5, 5, 0, None);
        series.record(start + Duration::from_secs(2), 10, 10, 0, None);
        let stats = series.stats(start + Duration::from_secs(2));
        assert!((stats.rate_per_second - 5.0).abs() < 1e-9, "{stats:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn streams_mark_peers_connected_until_dropped() {
        let insights = Insights::default();
        let guard = insights.dataplane_connected("default", "web-1");
        insights.report_dataplane(
            "default",
            "web-1",
            &DataplaneReport {
                version: Some(7),
                inbounds: Vec::new(),
            },
        );
        {
            let registry = insights.lock();
            let peer = &registry.dataplanes[&("default".to_string(), "web-1".to_string())];
            assert_eq!(peer.streams, 1);
            assert_eq!(peer.acknowledged, Some(7));
        }
        drop(guard);
        let registry = insights.lock();
        assert_eq!(
            registry.dataplanes[&("default".to_string(), "web-1".to_string())].streams,
            0
        );
    }
}
