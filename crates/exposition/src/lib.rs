//! `/metrics` through one library, `prometheus-client`, for every process that serves it (the
//! proxy's admin endpoint, the control plane's API): a scrape gets the Prometheus text format
//! (0.0.4), or OpenMetrics when its `Accept` asks for it ([`Format`], [`render`]). Sources
//! describe families of samples read from their own counters at scrape time ([`counter`],
//! [`gauge`], [`histogram`]), so the request path never touches the library.

use std::fmt;

use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

pub use prometheus_client;

/// The OpenMetrics media type, as scrapers ask for it in `Accept`.
pub const OPENMETRICS: &str = "application/openmetrics-text";

/// The `Content-Type` of each format.
pub const PROMETHEUS_TEXT: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;
pub const OPENMETRICS_TEXT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Which text format a scrape gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text 0.0.4 (what a plain scrape gets).
    Prometheus,
    /// OpenMetrics 1.0 (`Accept: application/openmetrics-text`).
    OpenMetrics,
}

impl Format {
    /// The format an `Accept` header asks for.
    pub fn from_accept(accept: Option<&str>) -> Format {
        match accept {
            Some(accept) if accept.contains(OPENMETRICS) => Format::OpenMetrics,
            _ => Format::Prometheus,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => PROMETHEUS_TEXT,
            Format::OpenMetrics => OPENMETRICS_TEXT,
        }
    }

    /// Every series of `registry` in this format.
    pub fn encode(self, registry: &Registry) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail; a source that fails leaves what it wrote.
        let _ = match self {
            Format::Prometheus => {
                prometheus_client::encoding::prometheus_text::encode(&mut out, registry)
            }
            Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut out, registry),
        };
        out
    }
}

/// The body and `Content-Type` of `/metrics` for a request's `Accept` header.
pub fn render(registry: &Registry, accept: Option<&str>) -> (String, &'static str) {
    let format = Format::from_accept(accept);
    (format.encode(registry), format.content_type())
}

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
    registry.register_collector(Box::new(BuildInfo));
}

#[derive(Debug)]
struct BuildInfo;

impl prometheus_client::collector::Collector for BuildInfo {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
        gauge(
            &mut encoder,
            "meshlimit_build_info",
            "The meshlimit release this process runs (always 1).",
            [(vec![("version", env!("CARGO_PKG_VERSION").to_string())], 1)],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_chooses_the_format_and_its_content_type() {
        for (accept, format, content_type) in [
            (None, Format::Prometheus, PROMETHEUS_TEXT),
            (Some("text/plain"), Format::Prometheus, PROMETHEUS_TEXT),
            (
                Some("application/openmetrics-text;version=1.0.0,text/plain;q=0.5"),
                Format::OpenMetrics,
                OPENMETRICS_TEXT,
            ),
        ] {
            assert_eq!(Format::from_accept(accept), format, "{accept:?}");
            assert_eq!(format.content_type(), content_type);
        }
    }

    #[test]
    fn openmetrics_ends_with_eof_and_prometheus_text_does_not() {
        let registry = Registry::default();
        let (body, _) = render(&registry, Some(OPENMETRICS));
        assert!(body.ends_with("# EOF\n"), "{body:?}");
        let (body, content_type) = render(&registry, None);
        assert!(!body.contains("# EOF"), "{body:?}");
        assert_eq!(content_type, PROMETHEUS_TEXT);
    }
}
