//! Generators: mesh + proxy → Envoy resources, one file per type.
//!
//! Every generator starts from the same [`scope::Scope`]: which services this proxy sees, and
//! through which Sidecar egress listeners. Names are Istio's, so dashboards and habits carry over:
//! clusters `outbound|<port>|<subset>|<host>`, listeners `0.0.0.0_<port>` (or `<bind>_<port>`),
//! route configurations `<port>`, plus `virtualOutbound`, `PassthroughCluster` and
//! `BlackHoleCluster`; inbound, `virtualInbound` (capture on 15006) with
//! `InboundPassthroughCluster`, listeners `<bind>_<port>` for Sidecar `ingress` ports that are
//! not captured, and clusters `inbound|<port>||`.
//!
//! Security follows Istio: auto mutual TLS to MESH_INTERNAL services ([`tls`]), inbound mTLS
//! modes from PeerAuthentication ([`authn`]) and RBAC from AuthorizationPolicy ([`rbac`]), with
//! certificates delivered by SDS from the local agent (static cluster `sds-grpc`).

mod authn;
mod cds;
mod eds;
pub mod gateway;
mod inbound;
mod lds;
mod locality;
mod rbac;
mod rds;
mod route;
mod rules;
mod scope;
#[cfg(test)]
mod tests;
mod tls;

use std::time::Duration as StdDuration;

use strait_proto::xds::envoy::config::cluster::v3::Cluster;
use strait_proto::xds::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use strait_proto::xds::envoy::config::core::v3::socket_address::PortSpecifier;
use strait_proto::xds::envoy::config::core::v3::{
    Address, AggregatedConfigSource, ApiVersion, ConfigSource, SocketAddress, address,
};
use strait_proto::xds::envoy::config::endpoint::v3::ClusterLoadAssignment;
use strait_proto::xds::envoy::config::listener::v3::Listener;
use strait_proto::xds::envoy::config::route::v3::RouteConfiguration;
use strait_proto::xds::google::protobuf::{BoolValue, Duration, UInt32Value};

use crate::model::mesh::Mesh;
use crate::model::networking::ServicePort;
use crate::xds::proxy::Proxy;

use scope::Scope;

pub use inbound::inbound_cluster_name;
pub use tls::{SDS_CLUSTER, SDS_DEFAULT, SDS_ROOT_CA, TLS_MODE_LABEL};

/// Original-destination cluster for traffic to hosts outside the registry (`ALLOW_ANY`).
pub const PASSTHROUGH_CLUSTER: &str = "PassthroughCluster";
/// Cluster without endpoints: traffic sent here is dropped (`REGISTRY_ONLY`).
pub const BLACKHOLE_CLUSTER: &str = "BlackHoleCluster";
/// Istio's default connect timeout.
const DEFAULT_CONNECT_TIMEOUT: StdDuration = StdDuration::from_secs(10);

/// Every cluster the proxy may use: per visible service and port, one cluster and one per
/// DestinationRule subset; then `inbound|<port>||` per inbound port (and
/// `InboundPassthroughCluster` under capture), `BlackHoleCluster` and `PassthroughCluster`.
pub fn clusters(mesh: &Mesh, proxy: &Proxy) -> Vec<Cluster> {
    if gateway::is_eastwest_gateway(proxy) {
        return gateway::clusters(mesh, proxy);
    }
    cds::clusters(&Scope::new(mesh, proxy))
}

/// Endpoint assignments for the requested EDS cluster names. A name we do not know, or that has
/// no reachable endpoints, gets an empty assignment (never omitted).
pub fn endpoints(mesh: &Mesh, proxy: &Proxy, names: &[String]) -> Vec<ClusterLoadAssignment> {
    if gateway::is_eastwest_gateway(proxy) {
        return gateway::endpoints(mesh, proxy, names);
    }
    eds::endpoints(&Scope::new(mesh, proxy), names)
}

/// Names of the EDS clusters that [`clusters`] emits.
pub fn all_endpoint_names(mesh: &Mesh, proxy: &Proxy) -> Vec<String> {
    if gateway::is_eastwest_gateway(proxy) {
        return gateway::endpoint_names(mesh, proxy);
    }
    cds::eds_cluster_names(&Scope::new(mesh, proxy))
}

/// Outbound listeners: `virtualOutbound` and one per port (capture), or one per Sidecar egress
/// listener bound to its address (no capture); then `virtualInbound` (capture) and the inbound
/// listeners of Sidecar `ingress` ports that are not captured.
pub fn listeners(mesh: &Mesh, proxy: &Proxy) -> Vec<Listener> {
    if gateway::is_eastwest_gateway(proxy) {
        return gateway::listeners(mesh, proxy);
    }
    lds::listeners(&Scope::new(mesh, proxy))
}

/// Route configurations for the requested names; an unknown name gets an empty configuration.
pub fn routes(mesh: &Mesh, proxy: &Proxy, names: &[String]) -> Vec<RouteConfiguration> {
    if gateway::is_eastwest_gateway(proxy) {
        return gateway::routes(names);
    }
    rds::routes(&Scope::new(mesh, proxy), names)
}

/// `outbound|<port>|<subset>|<host>`, the empty subset meaning none.
pub fn cluster_name(port: u32, subset: &str, host: &str) -> String {
    format!("outbound|{port}|{subset}|{host}")
}

/// Splits `outbound|<port>|<subset>|<host>` into its parts.
fn parse_cluster_name(name: &str) -> Option<(u32, &str, &str)> {
    let mut parts = name.split('|');
    let (Some("outbound"), Some(port), Some(subset), Some(host), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return None;
    };
    Some((port.parse().ok()?, subset, host))
}

/// A port's application protocol, as far as the proxy's codec cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Http,
    Http2,
    Grpc,
    Tcp,
}

impl Protocol {
    /// Istio's rule: the `protocol` field if set, else the port name's prefix before `-`
    /// (`http`, `http-web`, `http2-x`, `grpc`…); anything unknown is TCP.
    fn of(protocol: Option<&str>, name: &str) -> Protocol {
        match protocol {
            Some(p) => Protocol::http_kind(p).unwrap_or(Protocol::Tcp),
            None => Protocol::from_name(name).unwrap_or(Protocol::Tcp),
        }
    }

    fn of_port(port: &ServicePort) -> Protocol {
        Protocol::of(port.protocol.as_deref(), &port.name)
    }

    /// The HTTP flavour a port name announces, if any.
    fn from_name(name: &str) -> Option<Protocol> {
        Protocol::http_kind(name.split('-').next().unwrap_or_default())
    }

    fn http_kind(s: &str) -> Option<Protocol> {
        match s.to_ascii_uppercase().as_str() {
            "HTTP" | "GRPC-WEB" => Some(Protocol::Http),
            "HTTP2" => Some(Protocol::Http2),
            "GRPC" => Some(Protocol::Grpc),
            _ => None,
        }
    }

    fn is_http(self) -> bool {
        self != Protocol::Tcp
    }

    /// Whether the upstream connection speaks HTTP/2.
    fn is_h2(self) -> bool {
        matches!(self, Protocol::Http2 | Protocol::Grpc)
    }
}

fn duration(d: StdDuration) -> Duration {
    Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

fn uint32(value: u32) -> Option<UInt32Value> {
    Some(UInt32Value { value })
}

fn boolean(value: bool) -> Option<BoolValue> {
    Some(BoolValue { value })
}

/// Config delivered on the same ADS stream, v3.
fn ads() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        ..Default::default()
    }
}

fn socket_address(address: &str, port: u32) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: address.to_string(),
            port_specifier: Some(PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    }
}
