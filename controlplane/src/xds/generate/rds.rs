//! RDS: one route configuration per HTTP listener, named `<port>` (or `<bind>_<port>` when
//! several bound listeners share a port): a virtual host per HTTP service on the port, then
//! `allow_any` (to `PassthroughCluster`) or `block_all` (502) for everything else.

use std::collections::HashSet;
use std::sync::Arc;

use strait_proto::xds::envoy::config::route::v3::route::Action;
use strait_proto::xds::envoy::config::route::v3::route_action::ClusterSpecifier;
use strait_proto::xds::envoy::config::route::v3::route_match::PathSpecifier;
use strait_proto::xds::envoy::config::route::v3::{
    DirectResponseAction, Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost,
};

use crate::model::mesh::Service;
use crate::model::networking::ServicePort;

use super::scope::{PortListener, Scope};
use super::{PASSTHROUGH_CLUSTER, Protocol, boolean, cluster_name, duration, route, rules};

const KUBE_SUFFIX: &str = ".svc.cluster.local";

pub(super) fn routes(scope: &Scope<'_>, names: &[String]) -> Vec<RouteConfiguration> {
    let listeners = scope.port_listeners();
    names
        .iter()
        .map(
            |name| match listeners.iter().find(|l| l.route_name == *name) {
                Some(l) => route_configuration(scope, l),
                None => RouteConfiguration {
                    name: name.clone(),
                    validate_clusters: boolean(false),
                    ..Default::default()
                },
            },
        )
        .collect()
}

fn route_configuration(scope: &Scope<'_>, l: &PortListener<'_>) -> RouteConfiguration {
    // Envoy refuses a configuration where two virtual hosts share a domain: first one wins.
    let mut used = HashSet::new();
    let mut virtual_hosts: Vec<VirtualHost> = l
        .services
        .iter()
        .filter(|(_, p)| l.declared || Protocol::of_port(p).is_http())
        .filter_map(|(svc, port)| virtual_host(scope, svc, port, l.port, &mut used))
        .collect();
    if used.insert("*".to_string()) {
        virtual_hosts.push(catch_all(scope.registry_only));
    }
    RouteConfiguration {
        name: l.route_name.clone(),
        virtual_hosts,
        validate_clusters: boolean(false),
        ..Default::default()
    }
}

fn virtual_host(
    scope: &Scope<'_>,
    svc: &Arc<Service>,
    port: &ServicePort,
    listener_port: u32,
    used: &mut HashSet<String>,
) -> Option<VirtualHost> {
    let domains: Vec<String> = domains(&svc.hostname, listener_port, &scope.proxy.namespace)
        .into_iter()
        .filter(|d| used.insert(d.to_ascii_lowercase()))
        .collect();
    if domains.is_empty() {
        return None;
    }
    let mut routes: Vec<Route> = rules::virtual_services(scope, &svc.hostname)
        .into_iter()
        .flat_map(|vs| {
            vs.spec
                .http
                .iter()
                .flat_map(|r| route::http_routes(scope, &vs.meta.namespace, r, listener_port))
        })
        .collect();
    if routes.is_empty() {
        let cluster = cluster_name(port.number, "", &svc.hostname);
        routes.push(route::default_route(cluster));
    }
    Some(VirtualHost {
        name: format!("{}:{listener_port}", svc.hostname),
        domains,
        routes,
        ..Default::default()
    })
}

/// The host, `host:port`, and for Kubernetes-style names (`<name>.<ns>.svc.cluster.local`) the
/// short forms Istio adds: `<name>.<ns>`, `<name>.<ns>.svc`, and `<name>` in the proxy's own
/// namespace, each also with `:<port>`.
fn domains(host: &str, port: u32, proxy_namespace: &str) -> Vec<String> {
    let mut names = vec![host.to_string()];
    if let Some((name, ns)) = host
        .strip_suffix(KUBE_SUFFIX)
        .and_then(|rest| rest.split_once('.'))
        .filter(|(_, ns)| !ns.contains('.') && !host.contains('*'))
    {
        if ns == proxy_namespace {
            names.push(name.to_string());
        }
        names.push(format!("{name}.{ns}"));
        names.push(format!("{name}.{ns}.svc"));
    }
    names
        .into_iter()
        .flat_map(|n| {
            let with_port = format!("{n}:{port}");
            [n, with_port]
        })
        .collect()
}

/// Everything else: to the original destination (`allow_any`), or refused with a 502
/// (`block_all`) under `REGISTRY_ONLY`.
fn catch_all(registry_only: bool) -> VirtualHost {
    let (name, action) = if registry_only {
        let block = DirectResponseAction {
            status: 502,
            ..Default::default()
        };
        ("block_all", Action::DirectResponse(block))
    } else {
        let pass = RouteAction {
            cluster_specifier: Some(ClusterSpecifier::Cluster(PASSTHROUGH_CLUSTER.to_string())),
            timeout: Some(duration(std::time::Duration::ZERO)),
            ..Default::default()
        };
        ("allow_any", Action::Route(pass))
    };
    VirtualHost {
        name: name.to_string(),
        domains: vec!["*".to_string()],
        routes: vec![Route {
            name: name.to_string(),
            r#match: Some(RouteMatch {
                path_specifier: Some(PathSpecifier::Prefix("/".to_string())),
                ..Default::default()
            }),
            action: Some(action),
            ..Default::default()
        }],
        ..Default::default()
    }
}
