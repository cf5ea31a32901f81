//! Istio's standard metrics with Istio's names, labels and buckets, in one prometheus-client
//! registry. Labels are bounded: workloads, namespaces, principals and services come from the
//! node, the mesh's certificates and the config's cluster names, never from request paths.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::header::HeaderValue;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::peer::{Cache, Exchange, Workload};
use crate::xds::{MetaValue, NodeInfo};

/// What Istio writes for a label it cannot know.
pub const UNKNOWN: &str = "unknown";

/// `istio_request_duration_milliseconds`' buckets (Istio's).
const DURATION_BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];
/// `istio_request_bytes` / `istio_response_bytes`' buckets (Istio's: 1 to 10⁹ by ×10).
const BYTES_BUCKETS: [f64; 10] = [1.0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9];

/// This proxy's own workload (from the node).
#[derive(Debug, Clone)]
pub struct Local {
    /// `WORKLOAD_NAME`.
    pub workload: String,
    /// Namespace.
    pub namespace: String,
    /// `CLUSTER_ID`.
    pub cluster: String,
    /// Its SPIFFE id, when it has a certificate.
    pub principal: Option<String>,
    /// Its `app`, `version`, canonical service and revision, from its labels.
    pub labels: Workload,
    /// Its metadata exchange headers (None: not sent).
    pub exchange: Option<Exchange>,
}

impl Default for Local {
    fn default() -> Local {
        Local {
            workload: UNKNOWN.into(),
            namespace: UNKNOWN.into(),
            cluster: UNKNOWN.into(),
            principal: None,
            labels: Workload::default(),
            exchange: None,
        }
    }
}

impl Local {
    /// From the node's `WORKLOAD_NAME`, `NAMESPACE`, `CLUSTER_ID` and `LABELS`, and the
    /// certificate's identity.
    pub fn from_node(node: &NodeInfo, principal: Option<String>) -> Local {
        let meta = |k: &str| match node.metadata.get(k) {
            Some(MetaValue::String(s)) if !s.is_empty() => Some(s.clone()),
            _ => None,
        };
        let labels = match node.metadata.get("LABELS") {
            Some(MetaValue::Map(m)) => m.clone(),
            _ => BTreeMap::new(),
        };
        let labels = Workload::new(
            meta("WORKLOAD_NAME"),
            meta("NAMESPACE"),
            meta("CLUSTER_ID"),
            &labels,
        );
        let exchange = Exchange::new(node);
        if exchange.is_none() {
            tracing::warn!(node = %node.id, "node id is not a header value: no metadata exchange");
        }
        Local {
            workload: or_unknown(labels.workload.as_deref()),
            namespace: or_unknown(labels.namespace.as_deref()),
            cluster: or_unknown(labels.cluster.as_deref()),
            principal,
            labels,
            exchange,
        }
    }
}

/// Which side reports: outbound traffic is reported by the source, inbound by the destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// `reporter="source"`.
    Outbound,
    /// `reporter="destination"`.
    Inbound,
}

/// What one request or connection tells about its peers.
#[derive(Debug, Clone, Default)]
pub struct Flow<'a> {
    /// Inbound or outbound (None: outbound).
    pub direction: Option<Direction>,
    /// The downstream's verified SPIFFE id (inbound mTLS).
    pub peer_principal: Option<&'a str>,
    /// The upstream cluster, `outbound|port|subset|host` or `inbound|port||`.
    pub cluster: Option<&'a str>,
    /// The request's authority (inbound: the service's host).
    pub authority: Option<&'a str>,
    /// Whether the downstream connection is mutual TLS.
    pub mtls: bool,
}

/// Labels of the HTTP metrics (Istio's): the TCP ones and the response code.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Labels {
    #[prometheus(flatten)]
    flow: TcpLabels,
    response_code: String,
}

/// Labels of the TCP metrics, and of every HTTP metric but `response_code`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TcpLabels {
    reporter: &'static str,
    source_workload: String,
    source_workload_namespace: String,
    source_principal: String,
    source_cluster: String,
    source_app: String,
    source_version: String,
    source_canonical_service: String,
    source_canonical_revision: String,
    destination_workload: String,
    destination_workload_namespace: String,
    destination_service: String,
    destination_principal: String,
    destination_cluster: String,
    destination_app: String,
    destination_version: String,
    destination_canonical_service: String,
    destination_canonical_revision: String,
    request_protocol: &'static str,
    connection_security_policy: &'static str,
}

type Histograms = Family<Labels, Histogram, fn() -> Histogram>;

/// The registry and its metrics.
#[derive(Debug)]
pub struct Telemetry {
    local: Local,
    registry: Registry,
    requests: Family<Labels, Counter>,
    duration: Histograms,
    request_bytes: Histograms,
    response_bytes: Histograms,
    tcp_sent: Family<TcpLabels, Counter>,
    tcp_received: Family<TcpLabels, Counter>,
    tcp_opened: Family<TcpLabels, Counter>,
    tcp_closed: Family<TcpLabels, Counter>,
    /// `destination_service` and peer metadata values seen, bounded: a request's authority is
    /// the client's to choose and the peer's metadata the peer's, so past [`MAX_SERVICES`] new
    /// ones are reported as `unknown`.
    services: Mutex<HashSet<String>>,
    /// Decoded peer metadata.
    peers: Cache,
}

/// Distinct `destination_service` values kept.
pub const MAX_SERVICES: usize = 1000;

impl Default for Telemetry {
    fn default() -> Telemetry {
        Telemetry::new(Local::default())
    }
}

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

fn bytes_histogram() -> Histogram {
    Histogram::new(BYTES_BUCKETS)
}

/// The SPIFFE id's namespace (`spiffe://td/ns/<ns>/sa/<sa>`).
fn principal_namespace(principal: &str) -> Option<&str> {
    let rest = principal.strip_prefix("spiffe://")?;
    let mut parts = rest.split('/').skip(1);
    match (parts.next(), parts.next()) {
        (Some("ns"), Some(ns)) if !ns.is_empty() => Some(ns),
        _ => None,
    }
}

/// The service host of an outbound cluster name, `outbound|port|subset|host`.
fn cluster_host(cluster: &str) -> Option<&str> {
    let mut parts = cluster.split('|');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("outbound"), Some(_), Some(_), Some(host)) if !host.is_empty() => Some(host),
        _ => None,
    }
}

/// The namespace of a Kubernetes service host (`name.ns.svc…`).
fn host_namespace(host: &str) -> Option<&str> {
    let mut parts = host.split('.');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(_), Some(ns), Some("svc")) => Some(ns),
        _ => None,
    }
}

fn or_unknown(s: Option<&str>) -> String {
    s.filter(|s| !s.is_empty()).unwrap_or(UNKNOWN).to_string()
}

impl Telemetry {
    /// A registry with Istio's metrics, reporting as `local`.
    pub fn new(local: Local) -> Telemetry {
        let mut registry = Registry::default();
        let requests = Family::<Labels, Counter>::default();
        let duration: Histograms = Family::new_with_constructor(duration_histogram);
        let request_bytes: Histograms = Family::new_with_constructor(bytes_histogram);
        let response_bytes: Histograms = Family::new_with_constructor(bytes_histogram);
        let tcp_sent = Family::<TcpLabels, Counter>::default();
        let tcp_received = Family::<TcpLabels, Counter>::default();
        let tcp_opened = Family::<TcpLabels, Counter>::default();
        let tcp_closed = Family::<TcpLabels, Counter>::default();
        // prometheus-client appends `_total` to counters: registered without it, the exposed
        // names are exactly Istio's.
        registry.register("istio_requests", "Requests", requests.clone());
        registry.register(
            "istio_request_duration_milliseconds",
            "Request duration",
            duration.clone(),
        );
        registry.register(
            "istio_request_bytes",
            "Request sizes",
            request_bytes.clone(),
        );
        registry.register(
            "istio_response_bytes",
            "Response sizes",
            response_bytes.clone(),
        );
        registry.register(
            "istio_tcp_sent_bytes",
            "Bytes sent to the downstream during TCP connections",
            tcp_sent.clone(),
        );
        registry.register(
            "istio_tcp_received_bytes",
            "Bytes received from the downstream during TCP connections",
            tcp_received.clone(),
        );
        registry.register(
            "istio_tcp_connections_opened",
            "TCP connections opened",
            tcp_opened.clone(),
        );
        registry.register(
            "istio_tcp_connections_closed",
            "TCP connections closed",
            tcp_closed.clone(),
        );
        Telemetry {
            local,
            registry,
            requests,
            duration,
            request_bytes,
            response_bytes,
            tcp_sent,
            tcp_received,
            tcp_opened,
            tcp_closed,
            services: Mutex::default(),
            peers: Cache::default(),
        }
    }

    /// `service` if it is known or there is room for it, else `unknown`.
    fn bounded(&self, service: String) -> String {
        let Ok(mut seen) = self.services.lock() else {
            return UNKNOWN.into();
        };
        if seen.contains(&service) {
            return service;
        }
        if seen.len() >= MAX_SERVICES {
            return UNKNOWN.into();
        }
        seen.insert(service.clone());
        service
    }

    /// This proxy's workload.
    pub fn local(&self) -> &Local {
        &self.local
    }

    /// Prometheus' text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            let _ = writeln!(out, "# encoding failed");
        }
        out
    }

    fn tcp_labels(&self, flow: &Flow<'_>, peer: Option<&Workload>) -> TcpLabels {
        let mut labels = self.unbounded_labels(flow, peer);
        labels.destination_service = self.bounded(labels.destination_service);
        labels.destination_workload_namespace = self.bounded(labels.destination_workload_namespace);
        labels
    }

    /// `peer`: the peer's workload from the metadata exchange (inbound: the source, outbound:
    /// the destination).
    fn unbounded_labels(&self, flow: &Flow<'_>, peer_workload: Option<&Workload>) -> TcpLabels {
        let l = &self.local;
        let own_principal = l.principal.as_deref();
        let own = |v: &Option<String>| or_unknown(v.as_deref());
        let peer = |f: fn(&Workload) -> &Option<String>| {
            or_unknown(peer_workload.and_then(|p| f(p).as_deref()))
        };
        match flow.direction.unwrap_or(Direction::Outbound) {
            Direction::Inbound => TcpLabels {
                reporter: "destination",
                source_workload: peer(|p| &p.workload),
                source_workload_namespace: or_unknown(
                    peer_workload
                        .and_then(|p| p.namespace.as_deref())
                        .or(flow.peer_principal.and_then(principal_namespace)),
                ),
                source_principal: or_unknown(flow.peer_principal),
                source_cluster: peer(|p| &p.cluster),
                source_app: peer(|p| &p.app),
                source_version: peer(|p| &p.version),
                source_canonical_service: peer(|p| &p.canonical_service),
                source_canonical_revision: peer(|p| &p.canonical_revision),
                destination_workload: l.workload.clone(),
                destination_workload_namespace: l.namespace.clone(),
                destination_service: or_unknown(
                    flow.authority
                        .map(crate::http::strip_port)
                        .or(flow.cluster.and_then(cluster_host)),
                ),
                destination_principal: or_unknown(own_principal),
                destination_cluster: l.cluster.clone(),
                destination_app: own(&l.labels.app),
                destination_version: own(&l.labels.version),
                destination_canonical_service: own(&l.labels.canonical_service),
                destination_canonical_revision: own(&l.labels.canonical_revision),
                request_protocol: "tcp",
                connection_security_policy: if flow.mtls { "mutual_tls" } else { "none" },
            },
            Direction::Outbound => {
                let host = flow
                    .cluster
                    .and_then(cluster_host)
                    .or(flow.authority.map(crate::http::strip_port));
                TcpLabels {
                    reporter: "source",
                    source_workload: l.workload.clone(),
                    source_workload_namespace: l.namespace.clone(),
                    source_principal: or_unknown(own_principal),
                    source_cluster: l.cluster.clone(),
                    source_app: own(&l.labels.app),
                    source_version: own(&l.labels.version),
                    source_canonical_service: own(&l.labels.canonical_service),
                    source_canonical_revision: own(&l.labels.canonical_revision),
                    destination_workload: peer(|p| &p.workload),
                    destination_workload_namespace: or_unknown(
                        peer_workload
                            .and_then(|p| p.namespace.as_deref())
                            .or(host.and_then(host_namespace)),
                    ),
                    destination_service: or_unknown(host),
                    destination_principal: UNKNOWN.into(),
                    destination_cluster: peer(|p| &p.cluster),
                    destination_app: peer(|p| &p.app),
                    destination_version: peer(|p| &p.version),
                    destination_canonical_service: peer(|p| &p.canonical_service),
                    destination_canonical_revision: peer(|p| &p.canonical_revision),
                    request_protocol: "tcp",
                    // Istio's source reporter does not know the policy the server applied.
                    connection_security_policy: UNKNOWN_STATIC,
                }
            }
        }
    }

    /// The peer described by an `x-envoy-peer-metadata` value (None: refused, or past the
    /// bound of distinct label values). Decoded once per distinct value.
    pub fn peer(&self, encoded: &HeaderValue) -> Option<Arc<Workload>> {
        self.peers.get(encoded, |w| {
            let bound = |v: Option<String>| v.map(|v| self.bounded(v)).filter(|v| v != UNKNOWN);
            Workload {
                workload: bound(w.workload),
                namespace: bound(w.namespace),
                cluster: bound(w.cluster),
                app: bound(w.app),
                version: bound(w.version),
                canonical_service: bound(w.canonical_service),
                canonical_revision: bound(w.canonical_revision),
            }
        })
    }

    /// Records one finished request; `peer` from the metadata exchange.
    #[allow(clippy::too_many_arguments)]
    pub fn request(
        &self,
        flow: &Flow<'_>,
        peer: Option<&Workload>,
        grpc: bool,
        status: u16,
        duration: Duration,
        request_bytes: u64,
        response_bytes: u64,
    ) {
        let mut flow = self.tcp_labels(flow, peer);
        flow.request_protocol = if grpc { "grpc" } else { "http" };
        let labels = Labels {
            flow,
            response_code: status.to_string(),
        };
        self.requests.get_or_create(&labels).inc();
        self.duration
            .get_or_create(&labels)
            .observe(duration.as_secs_f64() * 1000.0);
        self.request_bytes
            .get_or_create(&labels)
            .observe(request_bytes as f64);
        self.response_bytes
            .get_or_create(&labels)
            .observe(response_bytes as f64);
    }

    /// Records a TCP connection opened; returns its labels for [`Telemetry::tcp_closed`].
    pub fn tcp_opened(&self, flow: &Flow<'_>) -> TcpLabels {
        let labels = self.tcp_labels(flow, None);
        self.tcp_opened.get_or_create(&labels).inc();
        labels
    }

    /// Records a TCP connection closed with its byte counts (`sent`: to the downstream).
    pub fn tcp_closed(&self, labels: &TcpLabels, sent: u64, received: u64) {
        self.tcp_closed.get_or_create(labels).inc();
        self.tcp_sent.get_or_create(labels).inc_by(sent);
        self.tcp_received.get_or_create(labels).inc_by(received);
    }
}

const UNKNOWN_STATIC: &str = UNKNOWN;

#[cfg(test)]
mod tests {
    use super::*;

    fn local() -> Local {
        Local {
            workload: "httpbin".into(),
            namespace: "default".into(),
            cluster: "cluster1".into(),
            principal: Some("spiffe://cluster.local/ns/default/sa/httpbin".into()),
            ..Local::default()
        }
    }

    fn line<'a>(text: &'a str, reporter: &str) -> &'a str {
        text.lines()
            .find(|l| {
                l.starts_with("istio_requests_total{")
                    && l.contains(&format!("reporter=\"{reporter}\""))
            })
            .unwrap_or_default()
    }

    #[test]
    fn peer_metadata_fills_the_peer_labels() {
        let labels: BTreeMap<String, String> = [("app", "httpbin"), ("version", "v1")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let node = NodeInfo::new(
            "sidecar~10.0.0.9~httpbin-1.default~default.svc.cluster.local",
            "httpbin.default",
        )
        .meta("WORKLOAD_NAME", "httpbin")
        .meta("NAMESPACE", "default")
        .meta("CLUSTER_ID", "cluster1")
        .meta("LABELS", labels);
        let t = Telemetry::new(Local::from_node(&node, None));
        let exchange = t.local().exchange.clone();
        assert!(exchange.is_some());
        // A sleep sidecar's metadata, as it would arrive.
        let sleep = NodeInfo::new(
            "sidecar~10.0.0.7~sleep-1.other~other.svc.cluster.local",
            "sleep.other",
        )
        .meta("WORKLOAD_NAME", "sleep")
        .meta("NAMESPACE", "other")
        .meta("CLUSTER_ID", "cluster2")
        .meta(
            "LABELS",
            BTreeMap::from([(
                "service.istio.io/canonical-name".to_string(),
                "sleepy".to_string(),
            )]),
        );
        let encoded = super::super::peer::Exchange::new(&sleep)
            .map(|x| x.metadata().clone())
            .unwrap_or(HeaderValue::from_static(""));
        let peer = t.peer(&encoded);
        let inbound = Flow {
            direction: Some(Direction::Inbound),
            mtls: true,
            ..Flow::default()
        };
        t.request(&inbound, peer.as_deref(), false, 200, Duration::ZERO, 0, 0);
        let outbound = Flow::default();
        t.request(&outbound, None, false, 200, Duration::ZERO, 0, 0);
        let text = t.encode();
        let l = line(&text, "destination");
        for label in [
            "source_workload=\"sleep\"",
            "source_workload_namespace=\"other\"",
            "source_cluster=\"cluster2\"",
            "source_app=\"unknown\"",
            "source_version=\"unknown\"",
            "source_canonical_service=\"sleepy\"",
            "source_canonical_revision=\"latest\"",
            "destination_app=\"httpbin\"",
            "destination_version=\"v1\"",
            "destination_canonical_service=\"httpbin\"",
            "destination_canonical_revision=\"v1\"",
        ] {
            assert!(l.contains(label), "{label} missing: {l}");
        }
        // No exchange: the peer's labels are unknown, ours are known.
        let l = line(&text, "source");
        for label in [
            "source_app=\"httpbin\"",
            "destination_workload=\"unknown\"",
            "destination_cluster=\"unknown\"",
            "destination_canonical_service=\"unknown\"",
            "destination_canonical_revision=\"unknown\"",
        ] {
            assert!(l.contains(label), "{label} missing: {l}");
        }
        // Garbage is no peer.
        assert!(t.peer(&HeaderValue::from_static("!!")).is_none());
    }

    #[test]
    fn exposition_has_istios_names_and_labels() {
        let t = Telemetry::new(local());
        let sleep = "spiffe://cluster.local/ns/default/sa/sleep";
        let inbound = Flow {
            direction: Some(Direction::Inbound),
            peer_principal: Some(sleep),
            cluster: Some("inbound|8000||"),
            authority: Some("httpbin.default.svc.cluster.local:8000"),
            mtls: true,
        };
        t.request(&inbound, None, false, 200, Duration::from_millis(3), 10, 20);
        t.request(&inbound, None, false, 403, Duration::from_millis(1), 0, 19);
        let outbound = Flow {
            cluster: Some("outbound|8000||httpbin.default.svc.cluster.local"),
            ..Flow::default()
        };
        let l = t.tcp_opened(&outbound);
        t.tcp_closed(&l, 5, 7);
        let text = t.encode();
        // OpenMetrics names a counter's family without `_total` and its samples with it.
        for (family, kind) in [
            ("istio_requests", "counter"),
            ("istio_request_duration_milliseconds", "histogram"),
            ("istio_request_bytes", "histogram"),
            ("istio_response_bytes", "histogram"),
            ("istio_tcp_sent_bytes", "counter"),
            ("istio_tcp_received_bytes", "counter"),
            ("istio_tcp_connections_opened", "counter"),
            ("istio_tcp_connections_closed", "counter"),
        ] {
            let typed = format!("# TYPE {family} {kind}\n");
            assert!(text.contains(&typed), "{typed} missing:\n{text}");
            let sample = match kind {
                "counter" => format!("\n{family}_total{{"),
                _ => format!("\n{family}_bucket{{"),
            };
            assert!(text.contains(&sample), "{sample} missing:\n{text}");
        }
        let line = text
            .lines()
            .find(|l| l.starts_with("istio_requests_total{") && l.contains("response_code=\"200\""))
            .unwrap_or_default();
        for label in [
            "reporter=\"destination\"",
            "source_workload=\"unknown\"",
            "source_workload_namespace=\"default\"",
            &format!("source_principal=\"{sleep}\""),
            "source_cluster=\"unknown\"",
            "destination_workload=\"httpbin\"",
            "destination_workload_namespace=\"default\"",
            "destination_service=\"httpbin.default.svc.cluster.local\"",
            "destination_principal=\"spiffe://cluster.local/ns/default/sa/httpbin\"",
            "destination_cluster=\"cluster1\"",
            "request_protocol=\"http\"",
            "connection_security_policy=\"mutual_tls\"",
        ] {
            assert!(line.contains(label), "{label} missing: {line}");
        }
        assert!(line.ends_with(" 1"), "{line}");
        assert!(text.contains("response_code=\"403\""), "{text}");
        assert!(text.contains("le=\"0.5\""), "{text}");
        let sent = text
            .lines()
            .find(|l| l.starts_with("istio_tcp_sent_bytes_total{"))
            .unwrap_or_default();
        assert!(
            sent.contains("reporter=\"source\"")
                && sent.contains("destination_service=\"httpbin.default.svc.cluster.local\"")
                && sent.contains("destination_workload_namespace=\"default\"")
                && sent.ends_with(" 5"),
            "{sent}"
        );
    }

    #[test]
    fn names_are_parsed() {
        assert_eq!(
            principal_namespace("spiffe://cluster.local/ns/foo/sa/bar"),
            Some("foo")
        );
        assert_eq!(principal_namespace("nonsense"), None);
        assert_eq!(
            cluster_host("outbound|80|v1|a.b.svc.cluster.local"),
            Some("a.b.svc.cluster.local")
        );
        assert_eq!(cluster_host("inbound|80||"), None);
        assert_eq!(host_namespace("a.b.svc.cluster.local"), Some("b"));
    }
}
