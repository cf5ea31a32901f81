//! EDS: the endpoints of a cluster as one proxy must see them. Endpoints on another network are
//! left out (a network is reachable only through its gateway, and gateways are not modelled
//! yet), subsets keep only the endpoints their labels select, and localities get the
//! priorities and weights of Istio's locality load balancing.

use std::net::IpAddr;

use strait_proto::xds::envoy::config::core::v3::Locality as EnvoyLocality;
use strait_proto::xds::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use strait_proto::xds::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint as EnvoyEndpoint, LbEndpoint, LocalityLbEndpoints,
};

use crate::model::mesh::{Endpoint, Service, selects};
use crate::model::networking::{ServicePort, Subset, TrafficPolicy};
use crate::xds::proxy::Proxy;

use super::locality::{self, Group};
use super::scope::Scope;
use super::{parse_cluster_name, rules, socket_address, uint32};

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
    let ips = selected(scope.proxy, svc, subset).filter(|e| e.address.parse::<IpAddr>().is_ok());
    Some(assignment(
        scope.proxy,
        name,
        port,
        ips.collect(),
        Some(&policy),
    ))
}

/// The endpoints of `svc` this proxy may use: selected by the subset's labels, and on the
/// proxy's network (or on none).
pub(super) fn selected<'a>(
    proxy: &'a Proxy,
    svc: &'a Service,
    subset: Option<&'a Subset>,
) -> impl Iterator<Item = &'a Endpoint> + 'a {
    svc.endpoints.iter().filter(move |e| {
        subset.is_none_or(|s| selects(&s.labels, &e.labels))
            && (e.network.is_empty() || e.network == proxy.network)
    })
}

/// Groups `endpoints` by locality and applies the policy's locality load balancing (None: all
/// at priority 0, as for LOGICAL_DNS).
pub(super) fn assignment(
    proxy: &Proxy,
    name: &str,
    port: &ServicePort,
    endpoints: Vec<&Endpoint>,
    policy: Option<&TrafficPolicy>,
) -> ClusterLoadAssignment {
    let mut groups = locality::group(endpoints);
    if let Some(policy) = policy {
        groups = locality::apply(groups, proxy, policy);
    }
    ClusterLoadAssignment {
        cluster_name: name.to_string(),
        endpoints: groups.iter().map(|g| locality_endpoints(g, port)).collect(),
        ..Default::default()
    }
}

fn locality_endpoints(group: &Group<'_>, port: &ServicePort) -> LocalityLbEndpoints {
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
            .map(|e| lb_endpoint(e, port))
            .collect(),
        load_balancing_weight: uint32(group.weight.max(1)),
        priority: group.priority,
        ..Default::default()
    }
}

fn lb_endpoint(e: &Endpoint, port: &ServicePort) -> LbEndpoint {
    LbEndpoint {
        host_identifier: Some(HostIdentifier::Endpoint(EnvoyEndpoint {
            address: Some(socket_address(&e.address, e.target_port(port))),
            ..Default::default()
        })),
        load_balancing_weight: uint32(e.weight.max(1)),
        ..Default::default()
    }
}
