//! xDS metrics under Istio's names (`pilot_xds`, `pilot_xds_pushes`, `pilot_total_xds_rejects`),
//! so existing dashboards work, plus the bytes we push.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
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
    pub pushes: Family<TypeLabel, Counter>,
    pub rejects: Family<TypeLabel, Counter>,
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
