//! The east-west gateway: Istio's `AUTO_PASSTHROUGH` listener with `ROUTER_MODE=sni-dnat`
//! clusters, scoped to the gateway's own network and to exported services.
//!
//! A node is an east-west gateway when it is a `router~…` node on a network (metadata `NETWORK`
//! or label `topology.istio.io/network`) carrying the label `istio: eastwestgateway`, as Istio's
//! `eastwest-gateway` install labels its pods. It gets:
//! - one listener on `0.0.0.0:15443` (or `<STRAIT_GATEWAY_BIND>:15443`) with `tls_inspector` and
//!   one filter chain per exported service port and DestinationRule subset, matching
//!   `server_names: ["outbound_.<port>_.<subset>_.<fqdn>"]` and ending in a `tcp_proxy` to the
//!   cluster of the same name. Nothing else matches: an unknown SNI, no SNI or plaintext finds
//!   no chain and the connection is closed. No chain at all, no listener.
//! - one EDS cluster per chain, named like it (Istio's sni-dnat clusters), without TLS (the
//!   gateway never decrypts), whose endpoints are the service's endpoints on the gateway's
//!   network only: never another network's, never another gateway, never a port of the control
//!   plane or of a gateway ([`RESERVED_PORTS`]).
//!
//! Exported: the ServiceEntry's `networking.strait.io/export` label, else the mesh default
//! (straitd `--export-default`, `all` as Istio). `MESH_EXTERNAL` services are never exported: the
//! gateway is no egress.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};

use strait_proto::node::NodeType;
use strait_proto::sni::SniName;
use strait_proto::xds::envoy::config::cluster::v3::Cluster;
use strait_proto::xds::envoy::config::cluster::v3::cluster::{CommonLbConfig, LbPolicy};
use strait_proto::xds::envoy::config::endpoint::v3::ClusterLoadAssignment;
use strait_proto::xds::envoy::config::listener::v3::{
    FilterChain, FilterChainMatch, Listener, ListenerFilter, listener_filter,
};
use strait_proto::xds::envoy::config::route::v3::RouteConfiguration;
use strait_proto::xds::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use strait_proto::xds::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::ClusterSpecifier;
use strait_proto::xds::to_any;

use crate::model::mesh::{Config, Endpoint, Mesh, Service, selects};
use crate::model::networking::{
    DestinationRule, Location, ServicePort, SimpleLb, Subset, TrafficPolicy,
};
use crate::xds::proxy::Proxy;

use super::scope::Scope;
use super::{DEFAULT_CONNECT_TIMEOUT, Protocol, cds, duration, eds, lds, rules, socket_address};

/// The cross-network passthrough port.
pub const GATEWAY_PORT: u32 = 15443;
/// Label key and value that make a `router` node an east-west gateway (Istio's).
pub const GATEWAY_LABEL: (&str, &str) = ("istio", "eastwestgateway");
/// Ports never routed through 15443, as a service port or an endpoint's target port: the control
/// plane's (15010 xDS, 15012 xDS+CA, 15014 monitoring, 15017 webhook) and the proxies' and
/// gateways' own (admin, capture, HBONE, health, metrics, and 15443 itself).
pub const RESERVED_PORTS: [u32; 12] = [
    15000, 15001, 15006, 15008, 15010, 15012, 15014, 15017, 15020, 15021, 15090, 15443,
];
const TLS_INSPECTOR: &str = "envoy.filters.listener.tls_inspector";

/// Whether `proxy` is its network's east-west gateway.
pub fn is_eastwest_gateway(proxy: &Proxy) -> bool {
    proxy.node_type == NodeType::Router
        && !proxy.network.is_empty()
        && proxy.labels.get(GATEWAY_LABEL.0).map(String::as_str) == Some(GATEWAY_LABEL.1)
}

/// One exported (service, port, subset): one filter chain, one cluster.
struct Target<'a> {
    /// `outbound_.<port>_.<subset>_.<fqdn>`: the SNI matched and the cluster's name.
    name: String,
    svc: &'a Service,
    port: &'a ServicePort,
    subset: Option<&'a Subset>,
    dr: Option<&'a Config<DestinationRule>>,
}

/// Every exported target on the gateway's network, in a stable order (services by host name,
/// ports and subsets in config order).
fn targets<'a>(scope: &Scope<'a>) -> Vec<Target<'a>> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for svc in scope.mesh.services.values() {
        if svc.location == Location::MeshExternal || !svc.exported(scope.mesh.export_default) {
            continue;
        }
        if !svc.endpoints.iter().any(|e| local(scope.proxy, e)) {
            continue;
        }
        let dr = rules::destination_rule(scope, svc);
        let subsets = dr.map(|d| d.spec.subsets.as_slice()).unwrap_or_default();
        for port in &svc.ports {
            let Some(number) = u16::try_from(port.number)
                .ok()
                .filter(|p| !RESERVED_PORTS.contains(&u32::from(*p)))
            else {
                continue;
            };
            for subset in std::iter::once(None).chain(subsets.iter().map(Some)) {
                // Hosts that are no DNS name (wildcards) or names too long for SNI are skipped.
                let Ok(sni) = SniName::new(number, subset.map(|s| s.name.as_str()), &svc.hostname)
                else {
                    continue;
                };
                let name = sni.to_string();
                if seen.insert(name.clone()) {
                    out.push(Target {
                        name,
                        svc,
                        port,
                        subset,
                        dr,
                    });
                }
            }
        }
    }
    out
}

/// An endpoint the gateway may forward to: on its network, an IP address, not a gateway, not
/// the gateway itself.
fn local(proxy: &Proxy, e: &Endpoint) -> bool {
    let Ok(ip) = e.address.parse::<IpAddr>() else {
        return false;
    };
    e.network == proxy.network
        && ip != proxy.ip
        && e.labels.get(GATEWAY_LABEL.0).map(String::as_str) != Some(GATEWAY_LABEL.1)
}

/// The endpoints of one target.
fn endpoints_of<'a>(proxy: &Proxy, t: &Target<'a>) -> Vec<&'a Endpoint> {
    t.svc
        .endpoints
        .iter()
        .filter(|e| {
            local(proxy, e)
                && t.subset.is_none_or(|s| selects(&s.labels, &e.labels))
                && !RESERVED_PORTS.contains(&e.target_port(t.port))
        })
        .collect()
}

fn policy(t: &Target<'_>) -> TrafficPolicy {
    rules::traffic_policy(t.dr.map(|d| &d.spec), t.subset)
}

/// The sni-dnat clusters.
pub(super) fn clusters(mesh: &Mesh, proxy: &Proxy) -> Vec<Cluster> {
    let scope = Scope::new(mesh, proxy);
    targets(&scope).iter().map(cluster).collect()
}

fn cluster(t: &Target<'_>) -> Cluster {
    let policy = policy(t);
    let connect_timeout = policy
        .connection_pool
        .as_ref()
        .and_then(|p| p.tcp.as_ref())
        .and_then(|t| t.connect_timeout)
        .map(|d| d.as_std())
        .filter(|d| !d.is_zero())
        .unwrap_or(DEFAULT_CONNECT_TIMEOUT);
    let lb_policy = match policy.load_balancer.as_ref().and_then(|l| l.simple) {
        Some(SimpleLb::RoundRobin) => LbPolicy::RoundRobin,
        Some(SimpleLb::Random) => LbPolicy::Random,
        _ => LbPolicy::LeastRequest,
    };
    let mut c = Cluster {
        name: t.name.clone(),
        connect_timeout: Some(duration(connect_timeout)),
        common_lb_config: Some(CommonLbConfig::default()),
        lb_policy: lb_policy as i32,
        eds_cluster_config: Some(
            strait_proto::xds::envoy::config::cluster::v3::cluster::EdsClusterConfig {
                eds_config: Some(super::ads()),
                service_name: t.name.clone(),
            },
        ),
        ..Default::default()
    };
    cds::set_type(
        &mut c,
        strait_proto::xds::envoy::config::cluster::v3::cluster::DiscoveryType::Eds,
    );
    cds::apply_connection_pool(&mut c, policy.connection_pool.as_ref(), Protocol::Tcp);
    c
}

/// The EDS names [`clusters`] uses.
pub(super) fn endpoint_names(mesh: &Mesh, proxy: &Proxy) -> Vec<String> {
    let scope = Scope::new(mesh, proxy);
    targets(&scope).into_iter().map(|t| t.name).collect()
}

/// Assignments for the requested names; an unknown name gets an empty one.
pub(super) fn endpoints(
    mesh: &Mesh,
    proxy: &Proxy,
    names: &[String],
) -> Vec<ClusterLoadAssignment> {
    let scope = Scope::new(mesh, proxy);
    let targets = targets(&scope);
    names
        .iter()
        .map(|name| match targets.iter().find(|t| &t.name == name) {
            Some(t) => {
                let policy = policy(t);
                let mut a = eds::assignment(
                    &scope,
                    t.svc,
                    name,
                    t.port,
                    endpoints_of(proxy, t),
                    Some(&policy),
                );
                // The gateway forwards bytes; the `tlsMode` metadata that selects a sidecar's
                // mTLS socket means nothing here.
                for l in &mut a.endpoints {
                    for e in &mut l.lb_endpoints {
                        e.metadata = None;
                    }
                }
                a
            }
            None => ClusterLoadAssignment {
                cluster_name: name.clone(),
                ..Default::default()
            },
        })
        .collect()
}

/// The 15443 listener, or none when nothing is exported.
pub(super) fn listeners(mesh: &Mesh, proxy: &Proxy) -> Vec<Listener> {
    let scope = Scope::new(mesh, proxy);
    let chains: Vec<FilterChain> = targets(&scope)
        .iter()
        .map(|t| FilterChain {
            name: t.name.clone(),
            filter_chain_match: Some(FilterChainMatch {
                server_names: vec![t.name.clone()],
                ..Default::default()
            }),
            filters: vec![lds::tcp_proxy(
                &t.name,
                ClusterSpecifier::Cluster(t.name.clone()),
            )],
            ..Default::default()
        })
        .collect();
    if chains.is_empty() {
        return Vec::new();
    }
    let bind = proxy
        .gateway_bind
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
        .to_string();
    vec![Listener {
        name: format!("{bind}_{GATEWAY_PORT}"),
        address: Some(socket_address(&bind, GATEWAY_PORT)),
        listener_filters: vec![ListenerFilter {
            name: TLS_INSPECTOR.to_string(),
            config_type: Some(listener_filter::ConfigType::TypedConfig(to_any(
                &TlsInspector::default(),
            ))),
            ..Default::default()
        }],
        filter_chains: chains,
        ..Default::default()
    }]
}

/// A gateway has no HTTP routes: every requested name gets an empty configuration.
pub(super) fn routes(names: &[String]) -> Vec<RouteConfiguration> {
    names
        .iter()
        .map(|n| RouteConfiguration {
            name: n.clone(),
            ..Default::default()
        })
        .collect()
}

#[cfg(test)]
mod tests;
