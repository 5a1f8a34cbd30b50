//! `/metrics` through one library, `prometheus-client`: sources describe families of samples
//! (read from their own atomic counters at scrape time, so the request path never touches the
//! library), and the endpoint answers in the Prometheus text format (0.0.4) or, when the
//! scraper asks for it in `Accept`, in OpenMetrics.

use std::fmt;

use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

pub use prometheus_client;

/// Labels of one sample: `(name, value)` pairs.
pub type Labels = Vec<(&'static str, String)>;

/// A counter family: `name` without the `_total` the encoders add.
pub fn counter<S: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (S, u64)>,
) -> fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in samples {
        ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// A gauge family.
pub fn gauge<S: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (S, u64)>,
) -> fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in samples {
        ConstGauge::new(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// A histogram family: per sample, the bucket upper bounds with the count of each bucket
/// alone (the encoder cumulates them; the last bound `+Inf`), the sum and the count.
pub fn histogram<S: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (S, HistogramSample)>,
) -> fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
    for (labels, sample) in samples {
        family.encode_family(&labels)?.encode_histogram::<S>(
            sample.sum,
            sample.count,
            &sample.buckets,
            None,
        )?;
    }
    Ok(())
}

/// One histogram's numbers at scrape time.
pub struct HistogramSample {
    pub sum: f64,
    pub count: u64,
    /// `(upper bound, count of observations above the previous bound up to this one)`,
    /// ascending, ending with `f64::INFINITY`.
    pub buckets: Vec<(f64, u64)>,
}

/// `meshlimit_build_info{version} 1`: which release a process runs. Every `/metrics` of
/// meshlimit has it once.
pub fn register_build_info(registry: &mut Registry) {
    fn encode(_: &(), mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
        gauge(
            &mut encoder,
            "meshlimit_build_info",
            "The meshlimit release this process runs (always 1).",
            [(vec![("version", env!("CARGO_PKG_VERSION").to_string())], 1)],
        )
    }
    registry.register_collector(Box::new(crate::admin::Collected((), encode)));
}

/// The OpenMetrics media type, as scrapers ask for it.
pub const OPENMETRICS: &str = "application/openmetrics-text";

/// The body and `Content-Type` of `/metrics` for a request's `Accept` header.
pub fn render(registry: &Registry, accept: Option<&str>) -> (String, &'static str) {
    let mut out = String::new();
    if accept.is_some_and(|a| a.contains(OPENMETRICS)) {
        // Writing to a String cannot fail; a source that fails leaves what it wrote.
        let _ = prometheus_client::encoding::text::encode(&mut out, registry);
        (
            out,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )
    } else {
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, registry);
        (
            out,
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        )
    }
}
