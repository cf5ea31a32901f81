//! EDS: the endpoints of a cluster as one proxy must see them, partitioned by network: endpoints
//! on the proxy's network are given directly; those of another network appear as that network's
//! east-west gateway addresses ([`crate::model::network`]), one per gateway and locality,
//! weighted by the endpoints behind them — only for exported services, only for endpoints that
//! take Istio mutual TLS (the gateway routes on the mTLS SNI and never decrypts), and a network
//! without a reachable gateway is left out. Subsets keep only the endpoints their labels
//! select, and localities get the priorities and weights of Istio's locality load balancing.
//! Endpoints that can take Istio mutual TLS carry the metadata that selects it (see
//! [`super::tls`]).

use std::collections::BTreeMap;
use std::net::IpAddr;

use strait_proto::xds::envoy::config::core::v3::{Locality as EnvoyLocality, Metadata};
use strait_proto::xds::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use strait_proto::xds::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint as EnvoyEndpoint, LbEndpoint, LocalityLbEndpoints,
};

use strait_proto::locality::LABEL_NETWORK;

use crate::model::mesh::{Endpoint, Service, selects};
use crate::model::networking::{ServicePort, Subset, TrafficPolicy};
use crate::xds::proxy::Proxy;

use super::authn::{self, Mode};
use super::locality::{self, Group};
use super::scope::Scope;
use super::{parse_cluster_name, rules, socket_address, tls, uint32};

pub(super) fn endpoints(scope: &Scope<'_>, names: &[String]) -> Vec<ClusterLoadAssignment> {
    names
        .iter()
        .map(|name| {
            load_assignment(scope, name).unwrap_or_else(|| ClusterLoadAssignment {
                cluster_name: name.clone(),
                ..Default::default()
            })
        })
        .collect()
}

/// The assignment of one EDS cluster; None if the name is not a cluster this proxy sees.
fn load_assignment(scope: &Scope<'_>, name: &str) -> Option<ClusterLoadAssignment> {
    let (port, subset, host) = parse_cluster_name(name)?;
    let svc = scope.service(host)?;
    let port = svc.ports.iter().find(|p| p.number == port)?;
    let dr = rules::destination_rule(scope, svc);
    let subset = match subset {
        "" => None,
        s => Some(dr?.spec.subsets.iter().find(|x| x.name == s)?),
    };
    let policy = rules::traffic_policy(dr.map(|d| &d.spec), subset);
    let through_gateways = via_gateways(scope, svc, subset, port);
    let ips = selected(scope.proxy, svc, subset)
        .filter(|e| e.address.parse::<IpAddr>().is_ok())
        .chain(through_gateways.iter());
    Some(assignment(
        scope,
        svc,
        name,
        port,
        ips.collect(),
        Some(&policy),
    ))
}

/// Endpoints of `svc` on other networks, as their networks' gateways: per (network, locality),
/// one endpoint per gateway address carrying the share of the weight behind it. Each keeps the
/// network and locality of what it stands for, so locality failover and `failoverPriority` on
/// `topology.istio.io/network` rank them as they would rank the endpoints themselves.
fn via_gateways(
    scope: &Scope<'_>,
    svc: &Service,
    subset: Option<&Subset>,
    port: &ServicePort,
) -> Vec<Endpoint> {
    let proxy = scope.proxy;
    if proxy.network.is_empty() || !svc.exported(scope.mesh.export_default) {
        return Vec::new();
    }
    let mut behind: BTreeMap<(&str, &str), u32> = BTreeMap::new();
    for e in svc.endpoints.iter().filter(|e| {
        !e.network.is_empty()
            && e.network != proxy.network
            && subset.is_none_or(|s| selects(&s.labels, &e.labels))
            && mtls_capable(scope, svc, e, port)
    }) {
        let w = behind
            .entry((e.network.as_str(), e.locality.as_str()))
            .or_default();
        *w = w.saturating_add(e.weight.max(1));
    }
    let mut out = Vec::new();
    for ((network, locality), weight) in behind {
        let Some(gateways) = scope.mesh.gateway_addrs.get(network) else {
            continue;
        };
        let share = (weight / gateways.len().max(1) as u32).max(1);
        for gw in gateways {
            out.push(Endpoint {
                address: gw.ip().to_string(),
                ports: [(port.name.clone(), u32::from(gw.port()))].into(),
                labels: [
                    (tls::TLS_MODE_LABEL.to_string(), "istio".to_string()),
                    (LABEL_NETWORK.to_string(), network.to_string()),
                ]
                .into(),
                network: network.to_string(),
                locality: locality.to_string(),
                weight: share,
                service_account: String::new(),
                source: format!("gateway of {network}"),
            });
        }
    }
    out
}

/// The endpoints of `svc` this proxy may use: selected by the subset's labels, and on the
/// proxy's network. Istio's `InNetwork`: an endpoint on no network is on every network, and so
/// is a proxy that says no network (its `NETWORK` unset), which then reaches every endpoint
/// directly and none through a gateway.
pub(super) fn selected<'a>(
    proxy: &'a Proxy,
    svc: &'a Service,
    subset: Option<&'a Subset>,
) -> impl Iterator<Item = &'a Endpoint> + 'a {
    svc.endpoints.iter().filter(move |e| {
        subset.is_none_or(|s| selects(&s.labels, &e.labels))
            && (e.network.is_empty() || proxy.network.is_empty() || e.network == proxy.network)
    })
}

/// Groups `endpoints` by locality and applies the policy's locality load balancing (None: all
/// at priority 0, as for LOGICAL_DNS).
pub(super) fn assignment(
    scope: &Scope<'_>,
    svc: &Service,
    name: &str,
    port: &ServicePort,
    endpoints: Vec<&Endpoint>,
    policy: Option<&TrafficPolicy>,
) -> ClusterLoadAssignment {
    let mut groups = locality::group(endpoints);
    if let Some(policy) = policy {
        groups = locality::apply(groups, scope.proxy, policy);
    }
    let mtls = |e: &Endpoint| mtls_capable(scope, svc, e, port);
    ClusterLoadAssignment {
        cluster_name: name.to_string(),
        endpoints: groups
            .iter()
            .map(|g| locality_endpoints(g, port, &mtls))
            .collect(),
        ..Default::default()
    }
}

/// Istio's auto mTLS choice for one endpoint: its workload runs a mesh proxy (label
/// `security.istio.io/tlsMode: istio`), the service is MESH_INTERNAL, and the workload's
/// PeerAuthentication does not DISABLE mutual TLS on the endpoint's port.
fn mtls_capable(scope: &Scope<'_>, svc: &Service, e: &Endpoint, port: &ServicePort) -> bool {
    tls::has_mesh_proxy(e)
        && tls::auto_mtls(svc)
        && authn::mode(scope.mesh, &svc.namespace, &e.labels, e.target_port(port)) != Mode::Disable
}

fn locality_endpoints(
    group: &Group<'_>,
    port: &ServicePort,
    mtls: &dyn Fn(&Endpoint) -> bool,
) -> LocalityLbEndpoints {
    let l = &group.locality;
    LocalityLbEndpoints {
        locality: Some(EnvoyLocality {
            region: l.region().to_string(),
            zone: l.zone().to_string(),
            sub_zone: l.subzone().to_string(),
        }),
        lb_endpoints: group
            .endpoints
            .iter()
            .map(|e| lb_endpoint(e, port, mtls(e)))
            .collect(),
        load_balancing_weight: uint32(group.weight.max(1)),
        priority: group.priority,
        ..Default::default()
    }
}

/// An endpoint; `mtls` adds the metadata `envoy.transport_socket_match: {tlsMode: istio}` that
/// selects the cluster's mutual TLS socket.
fn lb_endpoint(e: &Endpoint, port: &ServicePort, mtls: bool) -> LbEndpoint {
    let metadata = mtls.then(|| Metadata {
        filter_metadata: [(
            tls::TRANSPORT_SOCKET_MATCH.to_string(),
            tls::tls_mode_struct(),
        )]
        .into_iter()
        .collect(),
        ..Default::default()
    });
    LbEndpoint {
        host_identifier: Some(HostIdentifier::Endpoint(EnvoyEndpoint {
            address: Some(socket_address(&e.address, e.target_port(port))),
            ..Default::default()
        })),
        load_balancing_weight: uint32(e.weight.max(1)),
        metadata,
        ..Default::default()
    }
}
