//! xDS metrics under Istio's names (`pilot_xds`, `pilot_xds_pushes`, `pilot_total_xds_rejects`),
//! so existing dashboards work, plus the bytes we push.

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;
use strait_proto::xds;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabel {
    pub r#type: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PushLabel {
    pub r#type: &'static str,
    pub protocol: &'static str,
}

#[derive(Debug, Clone, Default)]
pub struct Metrics {
    pub connected: Gauge,
    pub pushes: Family<TypeLabel, IstioCounter>,
    pub rejects: Family<TypeLabel, IstioCounter>,
    pub pushed_bytes: Family<PushLabel, Counter>,
}

impl Metrics {
    pub fn new(registry: &mut Registry) -> Metrics {
        let m = Metrics::default();
        registry.register("pilot_xds", "Connected xDS streams", m.connected.clone());
        registry.register(
            "pilot_xds_pushes",
            "xDS responses sent, by type",
            m.pushes.clone(),
        );
        registry.register(
            "pilot_total_xds_rejects",
            "xDS responses a proxy NACKed, by type",
            m.rejects.clone(),
        );
        registry.register(
            "strait_xds_pushed_bytes",
            "Encoded resource bytes sent, by type and protocol (sotw or delta)",
            m.pushed_bytes.clone(),
        );
        m
    }
}

/// A counter exposed under its bare name, as istiod exposes `pilot_xds_pushes` and
/// `pilot_total_xds_rejects`: prometheus-client's `Counter` would append `_total` (OpenMetrics),
/// and Istio's dashboards query the bare names. Declared `unknown`, which Prometheus scrapes and
/// `rate()`s like a counter.
#[derive(Debug, Clone, Default)]
pub struct IstioCounter(Counter);

impl IstioCounter {
    pub fn inc(&self) -> u64 {
        self.0.inc()
    }

    pub fn inc_by(&self, v: u64) -> u64 {
        self.0.inc_by(v)
    }

    pub fn get(&self) -> u64 {
        self.0.get()
    }
}

impl TypedMetric for IstioCounter {
    const TYPE: MetricType = MetricType::Unknown;
}

impl EncodeMetric for IstioCounter {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.encode_gauge(&self.0.get())
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// Istio's short type names, used as metric labels.
pub fn short_type(type_url: &str) -> &'static str {
    match type_url {
        xds::CLUSTER => "cds",
        xds::ENDPOINT => "eds",
        xds::LISTENER => "lds",
        xds::ROUTE => "rds",
        xds::SECRET => "sds",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn istio_names_are_exposed_without_a_total_suffix() {
        let mut registry = Registry::default();
        let m = Metrics::new(&mut registry);
        m.pushes
            .get_or_create(&TypeLabel { r#type: "eds" })
            .inc_by(3);
        m.rejects.get_or_create(&TypeLabel { r#type: "lds" }).inc();
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry)
            .unwrap_or_else(|e| panic!("encoding: {e}"));
        assert!(
            text.contains("pilot_xds_pushes{type=\"eds\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("pilot_total_xds_rejects{type=\"lds\"} 1\n"),
            "{text}"
        );
        assert!(!text.contains("pilot_xds_pushes_total"), "{text}");
    }
}
