//! The gateway's metrics: Istio's TCP metrics under their standard names and labels (as far as a
//! gateway that never decrypts can know them), and refusals by reason.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// What the gateway says it is in its metrics.
#[derive(Debug, Clone, Default)]
pub struct Identity {
    /// The gateway's workload name (`source_workload`).
    pub workload: String,
    /// Its namespace.
    pub namespace: String,
    /// Its cluster id.
    pub cluster: String,
}

/// Istio's labels on TCP metrics. A passthrough gateway knows the destination service (from the
/// SNI name) and itself; the peers' identities are inside the TLS it does not terminate, so they
/// are `unknown`, as Istio reports them for passthrough traffic.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TcpLabels {
    /// `source`: the gateway reports as the client side of the upstream connection.
    pub reporter: &'static str,
    /// The gateway's workload.
    pub source_workload: String,
    /// The gateway's namespace.
    pub source_workload_namespace: String,
    /// Unknown: inside the end-to-end mTLS.
    pub source_principal: &'static str,
    /// The gateway's cluster.
    pub source_cluster: String,
    /// Unknown at the gateway.
    pub destination_workload: &'static str,
    /// The service host from the SNI name; `istiod` for the control-plane passthrough.
    pub destination_service: String,
    /// Unknown: inside the end-to-end mTLS.
    pub destination_principal: &'static str,
    /// Unknown at the gateway.
    pub destination_cluster: &'static str,
    /// Always `tcp`.
    pub request_protocol: &'static str,
    /// `unknown`: the gateway neither terminates nor originates TLS.
    pub connection_security_policy: &'static str,
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// Beyond the connection limit of 15443.
    Limit,
    /// Beyond the connection limit of 15012.
    ControlPlaneLimit,
    /// Plaintext, garbage, or a malformed or oversized ClientHello.
    NotTls,
    /// A ClientHello without SNI.
    NoSni,
    /// An SNI name that is not `outbound_.<port>_.<subset>_.<fqdn>`.
    BadName,
    /// A name whose port is the control plane's or a gateway's own.
    ReservedPort,
    /// A well-formed name the table does not hold (not exported, not on this network, unknown).
    UnknownName,
    /// The ClientHello did not arrive within the handshake deadline.
    HandshakeTimeout,
    /// The cluster has no usable endpoint.
    NoEndpoint,
    /// Connecting to the endpoint (or the control plane) failed.
    UpstreamConnect,
}

impl Refusal {
    /// The `reason` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Limit => "connection_limit",
            Refusal::ControlPlaneLimit => "control_plane_connection_limit",
            Refusal::NotTls => "not_tls",
            Refusal::NoSni => "no_sni",
            Refusal::BadName => "bad_name",
            Refusal::ReservedPort => "reserved_port",
            Refusal::UnknownName => "unknown_name",
            Refusal::HandshakeTimeout => "handshake_timeout",
            Refusal::NoEndpoint => "no_endpoint",
            Refusal::UpstreamConnect => "upstream_connect",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabel {
    listener: &'static str,
}

/// Counters for one forwarded connection, taken once when it opens.
#[derive(Debug, Clone)]
pub struct ConnectionCounters {
    /// Bytes from the client forwarded upstream (`istio_tcp_received_bytes_total`).
    pub received: Counter,
    /// Bytes from upstream forwarded to the client (`istio_tcp_sent_bytes_total`).
    pub sent: Counter,
    closed: Counter,
}

impl ConnectionCounters {
    /// Counts the connection as closed.
    pub fn close(&self) {
        self.closed.inc();
    }
}

/// All of the gateway's metrics; cheap to clone (the metrics are shared handles).
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    identity: Identity,
    opened: Family<TcpLabels, Counter>,
    closed: Family<TcpLabels, Counter>,
    sent: Family<TcpLabels, Counter>,
    received: Family<TcpLabels, Counter>,
    refused: Family<ReasonLabel, Counter>,
    active: Family<ListenerLabel, Gauge>,
    routes: Gauge,
}

impl Metrics {
    /// Registers every metric in `registry`.
    pub fn new(registry: &mut Registry, identity: Identity) -> Metrics {
        let m = Metrics {
            identity,
            ..Metrics::default()
        };
        registry.register(
            "istio_tcp_connections_opened",
            "TCP connections opened",
            m.opened.clone(),
        );
        registry.register(
            "istio_tcp_connections_closed",
            "TCP connections closed",
            m.closed.clone(),
        );
        registry.register(
            "istio_tcp_sent_bytes",
            "Bytes sent to the downstream client",
            m.sent.clone(),
        );
        registry.register(
            "istio_tcp_received_bytes",
            "Bytes received from the downstream client",
            m.received.clone(),
        );
        registry.register(
            "strait_gateway_refused_connections",
            "Connections the gateway refused, by reason",
            m.refused.clone(),
        );
        registry.register(
            "strait_gateway_active_connections",
            "Connections being forwarded, by listener (sni or control_plane)",
            m.active.clone(),
        );
        registry.register(
            "strait_gateway_sni_routes",
            "SNI names in the routing table",
            m.routes.clone(),
        );
        m
    }

    /// Counts a refusal.
    pub fn refuse(&self, why: Refusal) {
        self.refused
            .get_or_create(&ReasonLabel {
                reason: why.as_str(),
            })
            .inc();
    }

    /// How many refusals of one reason so far (for tests and logs).
    pub fn refused(&self, why: Refusal) -> u64 {
        self.refused
            .get_or_create(&ReasonLabel {
                reason: why.as_str(),
            })
            .get()
    }

    /// Counts a connection to `service` as opened and returns its counters.
    pub fn open(&self, service: &str) -> ConnectionCounters {
        let labels = TcpLabels {
            reporter: "source",
            source_workload: self.identity.workload.clone(),
            source_workload_namespace: self.identity.namespace.clone(),
            source_principal: "unknown",
            source_cluster: self.identity.cluster.clone(),
            destination_workload: "unknown",
            destination_service: service.to_string(),
            destination_principal: "unknown",
            destination_cluster: "unknown",
            request_protocol: "tcp",
            connection_security_policy: "unknown",
        };
        self.opened.get_or_create(&labels).inc();
        ConnectionCounters {
            received: self.received.get_or_create(&labels).clone(),
            sent: self.sent.get_or_create(&labels).clone(),
            closed: self.closed.get_or_create(&labels).clone(),
        }
    }

    /// The gauge of connections in flight on `listener` (`sni` or `control_plane`).
    pub fn active(&self, listener: &'static str) -> Gauge {
        self.active
            .get_or_create(&ListenerLabel { listener })
            .clone()
    }

    /// Sets the number of SNI routes.
    pub fn set_routes(&self, n: usize) {
        self.routes.set(i64::try_from(n).unwrap_or(i64::MAX));
    }
}
