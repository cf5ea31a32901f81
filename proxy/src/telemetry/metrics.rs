//! Istio's standard metrics with Istio's names, labels and buckets, in one prometheus-client
//! registry. Labels are bounded: workloads, namespaces, principals and services come from the
//! node, the mesh's certificates and the config's cluster names, never from request paths.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

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
}

impl Default for Local {
    fn default() -> Local {
        Local {
            workload: UNKNOWN.into(),
            namespace: UNKNOWN.into(),
            cluster: UNKNOWN.into(),
            principal: None,
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

/// Labels of the HTTP metrics (Istio's).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Labels {
    reporter: &'static str,
    source_workload: String,
    source_workload_namespace: String,
    source_principal: String,
    source_cluster: String,
    destination_workload: String,
    destination_workload_namespace: String,
    destination_service: String,
    destination_principal: String,
    destination_cluster: String,
    request_protocol: &'static str,
    response_code: String,
    connection_security_policy: &'static str,
}

/// Labels of the TCP metrics (the HTTP ones without `response_code`).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TcpLabels {
    reporter: &'static str,
    source_workload: String,
    source_workload_namespace: String,
    source_principal: String,
    source_cluster: String,
    destination_workload: String,
    destination_workload_namespace: String,
    destination_service: String,
    destination_principal: String,
    destination_cluster: String,
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
    /// `destination_service` values seen, bounded: a request's authority is the client's to
    /// choose, so past [`MAX_SERVICES`] new ones are reported as `unknown`.
    services: Mutex<HashSet<String>>,
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

    fn tcp_labels(&self, flow: &Flow<'_>) -> TcpLabels {
        let mut labels = self.unbounded_labels(flow);
        labels.destination_service = self.bounded(labels.destination_service);
        labels.destination_workload_namespace = self.bounded(labels.destination_workload_namespace);
        labels
    }

    fn unbounded_labels(&self, flow: &Flow<'_>) -> TcpLabels {
        let l = &self.local;
        let own_principal = l.principal.as_deref();
        match flow.direction.unwrap_or(Direction::Outbound) {
            Direction::Inbound => TcpLabels {
                reporter: "destination",
                source_workload: UNKNOWN.into(),
                source_workload_namespace: or_unknown(
                    flow.peer_principal.and_then(principal_namespace),
                ),
                source_principal: or_unknown(flow.peer_principal),
                source_cluster: UNKNOWN.into(),
                destination_workload: l.workload.clone(),
                destination_workload_namespace: l.namespace.clone(),
                destination_service: or_unknown(
                    flow.authority
                        .map(crate::http::strip_port)
                        .or(flow.cluster.and_then(cluster_host)),
                ),
                destination_principal: or_unknown(own_principal),
                destination_cluster: l.cluster.clone(),
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
                    destination_workload: UNKNOWN.into(),
                    destination_workload_namespace: or_unknown(host.and_then(host_namespace)),
                    destination_service: or_unknown(host),
                    destination_principal: UNKNOWN.into(),
                    destination_cluster: UNKNOWN.into(),
                    request_protocol: "tcp",
                    // Istio's source reporter does not know the policy the server applied.
                    connection_security_policy: UNKNOWN_STATIC,
                }
            }
        }
    }

    /// Records one finished request.
    pub fn request(
        &self,
        flow: &Flow<'_>,
        grpc: bool,
        status: u16,
        duration: Duration,
        request_bytes: u64,
        response_bytes: u64,
    ) {
        let t = self.tcp_labels(flow);
        let labels = Labels {
            reporter: t.reporter,
            source_workload: t.source_workload,
            source_workload_namespace: t.source_workload_namespace,
            source_principal: t.source_principal,
            source_cluster: t.source_cluster,
            destination_workload: t.destination_workload,
            destination_workload_namespace: t.destination_workload_namespace,
            destination_service: t.destination_service,
            destination_principal: t.destination_principal,
            destination_cluster: t.destination_cluster,
            request_protocol: if grpc { "grpc" } else { "http" },
            response_code: status.to_string(),
            connection_security_policy: t.connection_security_policy,
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
        let labels = self.tcp_labels(flow);
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
        }
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
        t.request(&inbound, false, 200, Duration::from_millis(3), 10, 20);
        t.request(&inbound, false, 403, Duration::from_millis(1), 0, 19);
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
