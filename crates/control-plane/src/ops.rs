//! What operators scrape and probe: `/metrics` (API requests, watch-stream subscribers, xDS
//! nodes and NACKs, the store's version and write errors, build info) in the Prometheus text
//! format, or OpenMetrics when asked, and `/ready` (503 with the reason while the store refuses
//! writes). Every series goes through `prometheus-client`; the format is chosen and encoded
//! by `meshlimit-exposition`, as for the proxy's `/metrics`.
//!
//! The standalone control plane serves both routes itself ([`crate::ApiConfig::serve_ops`]);
//! the all-in-one serves them on its admin routes, fed by [`ControlPlane::ready`] and
//! [`Metrics::render`].

use std::sync::Arc;

use meshlimit_xds::XdsHandle;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;

use crate::state::ControlPlane;

pub use meshlimit_exposition::{Format, OPENMETRICS_TEXT, PROMETHEUS_TEXT};

/// The labels of an API request.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    /// The route template (`/meshes/{mesh}/{collection}`), never the path: bounded cardinality.
    route: String,
    /// `2xx`, `4xx`, ...
    class: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StreamLabels {
    stream: &'static str,
}

/// The API's own counters (the rest is read from the control plane at each scrape). Cheap to
/// clone; clones count into the same series.
#[derive(Clone, Default)]
pub struct Metrics {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    requests: Family<RequestLabels, Counter>,
    connections_refused: Counter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics::default()
    }

    /// Counts one answered request. Methods outside the standard ones count as `other`: a
    /// client must not be able to add series at will.
    pub fn request(&self, method: &str, route: &str, status: u16) {
        const KNOWN: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"];
        let method = KNOWN.into_iter().find(|m| *m == method).unwrap_or("other");
        let labels = RequestLabels {
            method: method.to_string(),
            route: route.to_string(),
            class: format!("{}xx", status / 100),
        };
        self.inner.requests.get_or_create(&labels).inc();
    }

    /// Counts one API connection closed at accept because the listener was at its cap.
    pub fn connection_refused(&self) {
        self.inner.connections_refused.inc();
    }

    /// Every series, as of now, in `format`. `xds`: the xDS server this process runs.
    pub fn render(&self, cp: &ControlPlane, xds: Option<&XdsHandle>, format: Format) -> String {
        format.encode(&self.registry(cp, xds))
    }

    /// The standalone control plane's registry: its series and `meshlimit_build_info` (which
    /// the all-in-one's admin endpoint adds itself).
    fn registry(&self, cp: &ControlPlane, xds: Option<&XdsHandle>) -> Registry {
        let mut registry = Registry::default();
        meshlimit_exposition::register_build_info(&mut registry);
        self.register(registry.sub_registry_with_prefix("meshlimit"), cp, xds);
        registry
    }

    /// Adds every series to `registry` (whose prefix should be `meshlimit`), as of now: the
    /// all-in-one serves them beside the proxy's on one `/metrics`.
    pub fn register(&self, registry: &mut Registry, cp: &ControlPlane, xds: Option<&XdsHandle>) {
        registry.register(
            "api_requests",
            "Requests answered by the control plane's API, by method, route and status class",
            self.inner.requests.clone(),
        );
        registry.register(
            "api_connections_refused",
            "API connections closed at accept because the listener held its maximum",
            self.inner.connections_refused.clone(),
        );
        // A family built at each scrape: its gauges are set from the state of now.
        let (dataplanes, agents) = cp.insights().open_streams();
        let subscribers = Family::<StreamLabels, Gauge>::default();
        subscribers
            .get_or_create(&StreamLabels {
                stream: "dataplane",
            })
            .set(gauge_value(dataplanes));
        subscribers
            .get_or_create(&StreamLabels { stream: "kernel" })
            .set(gauge_value(agents));
        registry.register(
            "api_stream_subscribers",
            "Watch streams open now (data planes following their limits, kernel agents)",
            subscribers,
        );
        let health = cp.store_health();
        registry.register(
            "store_version",
            "The store version served",
            ConstGauge::new(gauge_value(cp.snapshot().version)),
        );
        registry.register(
            "store_writable",
            "1 while the store takes writes, 0 after a write failed until one succeeds again",
            ConstGauge::new(i64::from(health.failure.is_none())),
        );
        registry.register(
            "store_write_errors",
            "Writes the store failed (a full disk, an I/O error) since the process started",
            ConstCounter::new(health.write_errors),
        );
        if let Some(xds) = xds {
            let counts = xds.counts();
            registry.register(
                "xds_connected_nodes",
                "Envoy nodes with an ADS stream open now",
                ConstGauge::new(gauge_value(counts.connected)),
            );
            registry.register(
                "xds_tracked_nodes",
                "Nodes the xDS server keeps state for (Dataplanes of the store and nodes connected now)",
                ConstGauge::new(gauge_value(counts.tracked)),
            );
            registry.register(
                "xds_nacks",
                "Responses Envoys rejected (NACK) since the process started",
                ConstCounter::new(counts.nacks),
            );
        }
    }
}

fn gauge_value(value: impl TryInto<i64>) -> i64 {
    value.try_into().unwrap_or(i64::MAX)
}
