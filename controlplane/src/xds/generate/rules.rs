//! Finding the rules that apply to a service, as Istio does: host names (short names resolve
//! in the rule's namespace), `exportTo`, namespace precedence for DestinationRules, and the
//! merge of a subset's traffic policy over the rule's.

use crate::model::mesh::{Config, Service};
use crate::model::networking::{
    Destination, DestinationRule, Subset, TcpRoute, TrafficPolicy, VirtualService,
};

use super::cluster_name;
use super::scope::{ROOT_NAMESPACE, Scope};

/// Whether a host pattern (`*`, `*.suffix` or a name) covers `host` (itself possibly a
/// `*.` wildcard). Case-insensitive, as DNS is.
pub(super) fn host_matches(pattern: &str, host: &str) -> bool {
    if pattern == "*" || pattern.eq_ignore_ascii_case(host) {
        return true;
    }
    let Some(suffix) = pattern.strip_prefix('*') else {
        return false;
    };
    let name = host.strip_prefix('*').unwrap_or(host);
    name.len() > suffix.len()
        && name
            .to_ascii_lowercase()
            .ends_with(&suffix.to_ascii_lowercase())
}

/// Istio's short-name rule: a name without a dot is a Kubernetes service of `namespace`.
pub(super) fn resolve_host(host: &str, namespace: &str) -> String {
    if host == "*" || host.contains('.') {
        host.to_string()
    } else {
        format!("{host}.{namespace}.svc.cluster.local")
    }
}

/// How well a rule host covers a service host: exact, or through a wildcard.
fn host_rank(rule_host: &str, rule_namespace: &str, host: &str) -> Option<u8> {
    let resolved = resolve_host(rule_host, rule_namespace);
    if resolved.eq_ignore_ascii_case(host) {
        Some(0)
    } else if host_matches(&resolved, host) {
        Some(1)
    } else {
        None
    }
}

/// The DestinationRule for `svc` as seen from the proxy: Istio looks in the proxy's namespace,
/// then the service's, then the root namespace; an exact host beats a wildcard.
pub(super) fn destination_rule<'a>(
    scope: &Scope<'a>,
    svc: &Service,
) -> Option<&'a Config<DestinationRule>> {
    let ns_rank = |ns: &str| {
        if ns == scope.proxy.namespace {
            Some(0)
        } else if ns == svc.namespace {
            Some(1)
        } else if ns == ROOT_NAMESPACE {
            Some(2)
        } else {
            None
        }
    };
    let mesh = scope.mesh;
    mesh.destination_rules
        .iter()
        .filter(|d| scope.exported(&d.spec.export_to, &d.meta.namespace))
        .filter_map(|d| {
            let ns = ns_rank(&d.meta.namespace)?;
            let host = host_rank(&d.spec.host, &d.meta.namespace, &svc.hostname)?;
            Some(((ns, host), d))
        })
        .min_by_key(|(rank, _)| *rank)
        .map(|(_, d)| d)
}

/// The traffic policy of a cluster: the rule's, with the subset's connection pool, load
/// balancer and outlier detection each replacing the rule's when set (Istio's merge).
pub(super) fn traffic_policy(
    dr: Option<&DestinationRule>,
    subset: Option<&Subset>,
) -> TrafficPolicy {
    let mut out = dr
        .and_then(|d| d.traffic_policy.clone())
        .unwrap_or_default();
    if let Some(sub) = subset.and_then(|s| s.traffic_policy.as_ref()) {
        if sub.connection_pool.is_some() {
            out.connection_pool = sub.connection_pool.clone();
        }
        if sub.load_balancer.is_some() {
            out.load_balancer = sub.load_balancer.clone();
        }
        if sub.outlier_detection.is_some() {
            out.outlier_detection = sub.outlier_detection.clone();
        }
    }
    out
}

/// The VirtualServices visible to the proxy whose hosts cover `host`: exact names first, then
/// wildcards, each in config order.
pub(super) fn virtual_services<'a>(
    scope: &Scope<'a>,
    host: &str,
) -> Vec<&'a Config<VirtualService>> {
    let mesh = scope.mesh;
    let mut found: Vec<(u8, &'a Config<VirtualService>)> = mesh
        .virtual_services
        .iter()
        .filter(|vs| scope.exported(&vs.spec.export_to, &vs.meta.namespace))
        .filter_map(|vs| {
            let ranks = vs
                .spec
                .hosts
                .iter()
                .filter_map(|h| host_rank(h, &vs.meta.namespace, host));
            Some((ranks.min()?, vs))
        })
        .collect();
    found.sort_by_key(|(rank, _)| *rank);
    found.into_iter().map(|(_, vs)| vs).collect()
}

/// The cluster a route destination names. Its port: the one given, else the service's only
/// port, else the listener's.
pub(super) fn destination_cluster(
    scope: &Scope<'_>,
    namespace: &str,
    dest: &Destination,
    listener_port: u32,
) -> String {
    let host = resolve_host(&dest.host, namespace);
    let only_port = match scope.mesh.services.get(&host).map(|s| s.ports.as_slice()) {
        Some([only]) => Some(only.number),
        _ => None,
    };
    let port = dest
        .port
        .map(|p| p.number)
        .or(only_port)
        .unwrap_or(listener_port);
    cluster_name(port, dest.subset.as_deref().unwrap_or(""), &host)
}

/// Clusters and weights of a route's destinations. One destination takes everything; among
/// several, those with no or zero weight are left out, as Istio does.
pub(super) fn weighted_clusters(
    scope: &Scope<'_>,
    namespace: &str,
    dests: &[(&Destination, Option<u32>)],
    listener_port: u32,
) -> Vec<(String, u32)> {
    if let [(only, _)] = dests {
        return vec![(
            destination_cluster(scope, namespace, only, listener_port),
            100,
        )];
    }
    dests
        .iter()
        .filter_map(|(d, w)| {
            let w = w.filter(|w| *w > 0)?;
            Some((destination_cluster(scope, namespace, d, listener_port), w))
        })
        .collect()
}

/// The first `tcp` route of the VirtualServices of `host` that applies to `port`, with the
/// namespace its short names resolve in.
pub(super) fn tcp_route<'a>(
    scope: &Scope<'a>,
    host: &str,
    port: u32,
) -> Option<(&'a str, &'a TcpRoute)> {
    virtual_services(scope, host).into_iter().find_map(|vs| {
        vs.spec
            .tcp
            .iter()
            .find(|r| {
                r.matches.is_empty() || r.matches.iter().any(|m| m.port.is_none_or(|p| p == port))
            })
            .map(|r| (vs.meta.namespace.as_str(), r))
    })
}
