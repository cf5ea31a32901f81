//! CDS: a cluster per visible service port and DestinationRule subset, shaped as Istio shapes
//! them (discovery type from the resolution, connection pool, outlier detection, load balancer,
//! auto mTLS for MESH_INTERNAL services), and the inbound clusters.

use std::collections::BTreeMap;

use strait_proto::xds::envoy::config::cluster::v3::circuit_breakers::Thresholds;
use strait_proto::xds::envoy::config::cluster::v3::cluster::common_lb_config::{
    LocalityConfigSpecifier, LocalityWeightedLbConfig,
};
use strait_proto::xds::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, CommonLbConfig, DiscoveryType, DnsLookupFamily, EdsClusterConfig,
    LbPolicy,
};
use strait_proto::xds::envoy::config::cluster::v3::{
    CircuitBreakers, Cluster, OutlierDetection as EnvoyOutlierDetection,
};
use strait_proto::xds::envoy::config::core::v3::{
    Http1ProtocolOptions, Http2ProtocolOptions, HttpProtocolOptions as CommonHttpOptions,
};
use strait_proto::xds::envoy::config::endpoint::v3::ClusterLoadAssignment;
use strait_proto::xds::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use strait_proto::xds::envoy::extensions::upstreams::http::v3::http_protocol_options::explicit_http_config::ProtocolConfig;
use strait_proto::xds::envoy::extensions::upstreams::http::v3::http_protocol_options::{
    ExplicitHttpConfig, UpstreamProtocolOptions,
};
use strait_proto::xds::envoy::r#type::v3::Percent;
use strait_proto::xds::to_any;

use crate::model::mesh::{Config, Endpoint, Service};
use crate::model::networking::{
    ConnectionPoolSettings, DestinationRule, LoadBalancerSettings, OutlierDetection, Resolution,
    ServicePort, SimpleLb, Subset, TrafficPolicy,
};

use super::scope::Scope;
use super::{
    BLACKHOLE_CLUSTER, DEFAULT_CONNECT_TIMEOUT, PASSTHROUGH_CLUSTER, Protocol, ads, cluster_name,
    duration, eds, inbound, rules, tls, uint32,
};

/// Key of the upstream HTTP options in `typed_extension_protocol_options`.
pub(super) const HTTP_PROTOCOL_OPTIONS: &str =
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// Istio's outlier detection defaults, where the DestinationRule leaves a field unset.
const DEFAULT_CONSECUTIVE_5XX: u32 = 5;
const DEFAULT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);
const DEFAULT_BASE_EJECTION: std::time::Duration = std::time::Duration::from_secs(30);
const DEFAULT_MAX_EJECTION_PERCENT: u32 = 10;

pub(super) fn clusters(scope: &Scope<'_>) -> Vec<Cluster> {
    let mut out = Vec::new();
    for svc in scope.services() {
        let dr = rules::destination_rule(scope, svc);
        let subsets = dr.map(|d| d.spec.subsets.as_slice()).unwrap_or_default();
        for port in &svc.ports {
            out.push(service_cluster(scope, svc, port, dr, None));
            for subset in subsets {
                out.push(service_cluster(scope, svc, port, dr, Some(subset)));
            }
        }
    }
    out.extend(inbound::clusters(scope));
    out.push(blackhole_cluster());
    out.push(passthrough_cluster());
    out
}

pub(super) fn eds_cluster_names(scope: &Scope<'_>) -> Vec<String> {
    clusters(scope)
        .into_iter()
        .filter(|c| c.eds_cluster_config.is_some())
        .map(|c| c.name)
        .collect()
}

fn service_cluster(
    scope: &Scope<'_>,
    svc: &Service,
    port: &ServicePort,
    dr: Option<&Config<DestinationRule>>,
    subset: Option<&Subset>,
) -> Cluster {
    let name = cluster_name(port.number, subset.map_or("", |s| &s.name), &svc.hostname);
    let policy = rules::traffic_policy(dr.map(|d| &d.spec), subset);
    let mut c = Cluster {
        name,
        connect_timeout: Some(duration(connect_timeout(&policy))),
        common_lb_config: Some(CommonLbConfig::default()),
        ..Default::default()
    };
    set_discovery(&mut c, scope, svc, port, subset, &policy);
    apply_connection_pool(
        &mut c,
        policy.connection_pool.as_ref(),
        Protocol::of_port(port),
    );
    apply_outlier_detection(&mut c, policy.outlier_detection.as_ref());
    apply_load_balancer(
        &mut c,
        policy.load_balancer.as_ref(),
        policy.outlier_detection.is_some(),
    );
    // Auto mTLS: endpoints EDS marks `tlsMode: istio` get mutual TLS, the rest plaintext. An
    // ORIGINAL_DST cluster has no endpoints to mark.
    if tls::cluster_mtls(svc) && !is_type(&c, DiscoveryType::OriginalDst) {
        let context = tls::upstream_tls_context(
            svc,
            port.number,
            subset.map(|s| s.name.as_str()),
            Protocol::of_port(port),
            &scope.proxy.trust_domain,
        );
        c.transport_socket_matches = tls::transport_socket_matches(&context);
    }
    c
}

fn connect_timeout(policy: &TrafficPolicy) -> std::time::Duration {
    policy
        .connection_pool
        .as_ref()
        .and_then(|p| p.tcp.as_ref())
        .and_then(|t| t.connect_timeout)
        .map(|d| d.as_std())
        .filter(|d| !d.is_zero())
        .unwrap_or(DEFAULT_CONNECT_TIMEOUT)
}

pub(super) fn set_type(c: &mut Cluster, t: DiscoveryType) {
    c.cluster_discovery_type = Some(ClusterDiscoveryType::Type(t as i32));
}

fn is_type(c: &Cluster, t: DiscoveryType) -> bool {
    c.cluster_discovery_type == Some(ClusterDiscoveryType::Type(t as i32))
}

/// EDS for STATIC (and NONE with endpoints), DNS types with an inline assignment, ORIGINAL_DST
/// for NONE without endpoints and for `loadBalancer.simple: PASSTHROUGH`.
fn set_discovery(
    c: &mut Cluster,
    scope: &Scope<'_>,
    svc: &Service,
    port: &ServicePort,
    subset: Option<&Subset>,
    policy: &TrafficPolicy,
) {
    let simple = policy.load_balancer.as_ref().and_then(|lb| lb.simple);
    if simple == Some(SimpleLb::Passthrough) {
        return set_type(c, DiscoveryType::OriginalDst);
    }
    let logical = match svc.resolution {
        Resolution::Static => return set_eds(c),
        Resolution::None if !svc.endpoints.is_empty() => return set_eds(c),
        Resolution::None => return set_type(c, DiscoveryType::OriginalDst),
        Resolution::Dns => false,
        Resolution::DnsRoundRobin => true,
    };
    let Some(assignment) = dns_assignment(scope, svc, port, subset, policy, &c.name, logical)
    else {
        return set_type(c, DiscoveryType::OriginalDst);
    };
    // LOGICAL_DNS needs exactly one endpoint; with none left, STRICT_DNS of nothing is valid.
    let has_endpoint = assignment
        .endpoints
        .iter()
        .any(|l| !l.lb_endpoints.is_empty());
    let t = if logical && has_endpoint {
        DiscoveryType::LogicalDns
    } else {
        DiscoveryType::StrictDns
    };
    set_type(c, t);
    c.load_assignment = Some(assignment);
    c.dns_lookup_family = DnsLookupFamily::V4Only as i32;
}

fn set_eds(c: &mut Cluster) {
    set_type(c, DiscoveryType::Eds);
    c.eds_cluster_config = Some(EdsClusterConfig {
        eds_config: Some(ads()),
        service_name: c.name.clone(),
    });
}

/// The inline assignment of a DNS cluster: the endpoints' addresses, or the service host itself
/// when it has none. None when there is nothing to resolve (a wildcard host without endpoints).
fn dns_assignment(
    scope: &Scope<'_>,
    svc: &Service,
    port: &ServicePort,
    subset: Option<&Subset>,
    policy: &TrafficPolicy,
    name: &str,
    logical: bool,
) -> Option<ClusterLoadAssignment> {
    let host;
    let mut selected: Vec<&Endpoint> = if svc.endpoints.is_empty() {
        if svc.hostname.contains('*') {
            return None;
        }
        host = host_endpoint(svc);
        vec![&host]
    } else {
        eds::selected(scope.proxy, svc, subset)
            .filter(|e| !e.address.is_empty())
            .collect()
    };
    if logical {
        selected.truncate(1);
        return Some(eds::assignment(scope, svc, name, port, selected, None));
    }
    Some(eds::assignment(
        scope,
        svc,
        name,
        port,
        selected,
        Some(policy),
    ))
}

/// The service host as its own endpoint (DNS resolution without endpoints).
fn host_endpoint(svc: &Service) -> Endpoint {
    Endpoint {
        address: svc.hostname.clone(),
        ports: BTreeMap::new(),
        labels: BTreeMap::new(),
        network: String::new(),
        locality: String::new(),
        weight: 1,
        service_account: String::new(),
        source: format!("host {}", svc.hostname),
    }
}

/// Circuit breakers (Istio's defaults: unlimited, as Envoy's own defaults are too low under
/// churn) and upstream HTTP options (keep-alive limits, HTTP/2 for HTTP2 and GRPC ports).
pub(super) fn apply_connection_pool(
    c: &mut Cluster,
    pool: Option<&ConnectionPoolSettings>,
    protocol: Protocol,
) {
    let tcp = pool.and_then(|p| p.tcp.as_ref());
    let http = pool.and_then(|p| p.http.as_ref());
    let limit = |v: Option<u32>| uint32(v.filter(|v| *v > 0).unwrap_or(u32::MAX));
    c.circuit_breakers = Some(CircuitBreakers {
        thresholds: vec![Thresholds {
            max_connections: limit(tcp.and_then(|t| t.max_connections)),
            max_pending_requests: limit(http.and_then(|h| h.http1_max_pending_requests)),
            max_requests: limit(http.and_then(|h| h.http2_max_requests)),
            max_retries: limit(http.and_then(|h| h.max_retries)),
            track_remaining: true,
            ..Default::default()
        }],
        ..Default::default()
    });
    let idle_timeout = http
        .and_then(|h| h.idle_timeout)
        .map(|d| duration(d.as_std()));
    let per_connection = http
        .and_then(|h| h.max_requests_per_connection)
        .filter(|n| *n > 0);
    let common = (idle_timeout.is_some() || per_connection.is_some()).then(|| CommonHttpOptions {
        idle_timeout,
        max_requests_per_connection: per_connection.and_then(uint32),
        ..Default::default()
    });
    if common.is_none() && !protocol.is_h2() {
        return;
    }
    // Envoy requires upstream_protocol_options; HTTP/1.1 unless the port speaks HTTP/2.
    let config = if protocol.is_h2() {
        ProtocolConfig::Http2ProtocolOptions(Http2ProtocolOptions::default())
    } else {
        ProtocolConfig::HttpProtocolOptions(Http1ProtocolOptions::default())
    };
    let options = HttpProtocolOptions {
        common_http_protocol_options: common,
        upstream_protocol_options: Some(UpstreamProtocolOptions::ExplicitHttpConfig(
            ExplicitHttpConfig {
                protocol_config: Some(config),
            },
        )),
        ..Default::default()
    };
    c.typed_extension_protocol_options
        .insert(HTTP_PROTOCOL_OPTIONS.to_string(), to_any(&options));
}

/// Istio's mapping: errors counted are enforced at 100 %, success-rate ejection is off, and
/// the panic threshold is `minHealthPercent` (0 unless set, so ejection is never undone by
/// Envoy's panic mode).
fn apply_outlier_detection(c: &mut Cluster, od: Option<&OutlierDetection>) {
    let Some(od) = od else { return };
    let enforcing = |n: u32| uint32(if n > 0 { 100 } else { 0 });
    let positive = |d: Option<crate::model::Duration>, default| {
        Some(duration(
            d.map(|d| d.as_std())
                .filter(|d| !d.is_zero())
                .unwrap_or(default),
        ))
    };
    let consecutive_5xx = od.consecutive_5xx_errors.unwrap_or(DEFAULT_CONSECUTIVE_5XX);
    let mut out = EnvoyOutlierDetection {
        consecutive_5xx: uint32(consecutive_5xx),
        enforcing_consecutive_5xx: enforcing(consecutive_5xx),
        interval: positive(od.interval, DEFAULT_INTERVAL),
        base_ejection_time: positive(od.base_ejection_time, DEFAULT_BASE_EJECTION),
        max_ejection_percent: uint32(
            od.max_ejection_percent
                .filter(|p| *p > 0)
                .unwrap_or(DEFAULT_MAX_EJECTION_PERCENT),
        ),
        enforcing_success_rate: uint32(0),
        ..Default::default()
    };
    if let Some(n) = od.consecutive_gateway_errors {
        out.consecutive_gateway_failure = uint32(n);
        out.enforcing_consecutive_gateway_failure = enforcing(n);
    }
    c.outlier_detection = Some(out);
    let lb = c
        .common_lb_config
        .get_or_insert_with(CommonLbConfig::default);
    lb.healthy_panic_threshold = Some(Percent {
        value: f64::from(od.min_health_percent.unwrap_or(0)),
    });
}

/// `loadBalancer.simple` (Istio's default is LEAST_REQUEST) and, for locality-aware balancing,
/// `locality_weighted_lb_config`: with `distribute`, or with failover rules that can act
/// (outlier detection set), as Istio sets it.
fn apply_load_balancer(c: &mut Cluster, lb: Option<&LoadBalancerSettings>, outlier: bool) {
    if is_type(c, DiscoveryType::OriginalDst) {
        c.lb_policy = LbPolicy::ClusterProvided as i32;
        return;
    }
    let policy = match lb.and_then(|l| l.simple) {
        Some(SimpleLb::RoundRobin) => LbPolicy::RoundRobin,
        Some(SimpleLb::Random) => LbPolicy::Random,
        _ => LbPolicy::LeastRequest,
    };
    c.lb_policy = policy as i32;
    let Some(setting) = lb
        .and_then(|l| l.locality_lb_setting.as_ref())
        .filter(|s| s.enabled != Some(false))
    else {
        return;
    };
    let failover = !setting.failover.is_empty() || !setting.failover_priority.is_empty();
    if !setting.distribute.is_empty() || (outlier && failover) {
        let lb = c
            .common_lb_config
            .get_or_insert_with(CommonLbConfig::default);
        lb.locality_config_specifier = Some(LocalityConfigSpecifier::LocalityWeightedLbConfig(
            LocalityWeightedLbConfig {},
        ));
    }
}

fn blackhole_cluster() -> Cluster {
    let mut c = Cluster {
        name: BLACKHOLE_CLUSTER.to_string(),
        connect_timeout: Some(duration(DEFAULT_CONNECT_TIMEOUT)),
        lb_policy: LbPolicy::RoundRobin as i32,
        ..Default::default()
    };
    set_type(&mut c, DiscoveryType::Static);
    c
}

fn passthrough_cluster() -> Cluster {
    let mut c = Cluster {
        name: PASSTHROUGH_CLUSTER.to_string(),
        connect_timeout: Some(duration(DEFAULT_CONNECT_TIMEOUT)),
        lb_policy: LbPolicy::ClusterProvided as i32,
        ..Default::default()
    };
    set_type(&mut c, DiscoveryType::OriginalDst);
    c
}
