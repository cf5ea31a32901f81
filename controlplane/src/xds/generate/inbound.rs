//! Inbound listeners and clusters from the Sidecar's `ingress` listeners, in Istio's shape for
//! workloads whose inbound traffic is not captured (a VM, or `captureMode: NONE`): a listener
//! `<bind>_<port>` (bind `0.0.0.0` unless given) in front of the application at
//! `defaultEndpoint`, reached through the STATIC cluster `inbound|<port>||`.
//!
//! The filter chains follow the port's PeerAuthentication mode ([`super::authn`]):
//! - STRICT: one chain that terminates mutual TLS (client certificate required);
//! - PERMISSIVE: `tls_inspector`, then a chain for `transport_protocol: tls` (mutual TLS) and
//!   one for `raw_buffer` (plaintext). A non-mesh client that speaks TLS lands on the mutual TLS
//!   chain and fails its handshake (Istio would pass it through to the application);
//! - DISABLE: one plaintext chain.
//!
//! Each chain carries the port's authorization ([`super::rbac`]): for HTTP ports an HTTP
//! connection manager (inline route to the cluster, RBAC filters, router, the client
//! certificate's identity forwarded in `x-forwarded-client-cert`), for TCP ports network RBAC
//! filters and a tcp_proxy.
//!
//! A workload whose inbound traffic iptables captures (interception REDIRECT or TPROXY and the
//! ingress listener's `captureMode` not NONE) needs Istio's `virtualInbound` on 15006, which is
//! not generated yet: its ingress listeners produce nothing.

use std::net::SocketAddr;

use strait_proto::xds::envoy::config::cluster::v3::Cluster;
use strait_proto::xds::envoy::config::cluster::v3::cluster::DiscoveryType;
use strait_proto::xds::envoy::config::core::v3::TrafficDirection;
use strait_proto::xds::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use strait_proto::xds::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint as EnvoyEndpoint, LbEndpoint, LocalityLbEndpoints,
};
use strait_proto::xds::envoy::config::listener::v3::listener_filter;
use strait_proto::xds::envoy::config::listener::v3::{
    Filter, FilterChain, FilterChainMatch, Listener, ListenerFilter,
};
use strait_proto::xds::envoy::config::route::v3::route::Action;
use strait_proto::xds::envoy::config::route::v3::route_action::ClusterSpecifier as RouteCluster;
use strait_proto::xds::envoy::config::route::v3::route_match::PathSpecifier;
use strait_proto::xds::envoy::config::route::v3::{
    Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost,
};
use strait_proto::xds::envoy::config::rbac::v3::Rbac;
use strait_proto::xds::envoy::extensions::filters::http::rbac::v3::Rbac as HttpRbac;
use strait_proto::xds::envoy::extensions::filters::http::router::v3::Router;
use strait_proto::xds::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use strait_proto::xds::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::{
    CodecType, ForwardClientCertDetails, PathWithEscapedSlashesAction, RouteSpecifier,
    SetCurrentClientCertDetails,
};
use strait_proto::xds::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter,
};
use strait_proto::xds::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;
use strait_proto::xds::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::ClusterSpecifier;
use strait_proto::xds::to_any;

use crate::model::networking::CaptureMode;
use crate::xds::proxy::Interception;

use super::authn::{self, Mode};
use super::cds::{apply_connection_pool, set_type};
use super::lds::{HTTP_CONNECTION_MANAGER, ROUTER, http_filter, network_filter, tcp_proxy};
use super::rbac::{self, Rules};
use super::scope::{Scope, declared_protocol};
use super::{DEFAULT_CONNECT_TIMEOUT, Protocol, boolean, duration, socket_address, tls};

const WILDCARD: &str = "0.0.0.0";
const TLS_INSPECTOR: &str = "envoy.filters.listener.tls_inspector";
const HTTP_RBAC: &str = "envoy.filters.http.rbac";
const NETWORK_RBAC: &str = "envoy.filters.network.rbac";
/// Istio's stat prefix for network RBAC.
const NETWORK_RBAC_STAT_PREFIX: &str = "tcp.";

/// One ingress listener the proxy serves.
pub(super) struct Inbound {
    /// `<bind>_<port>`.
    pub name: String,
    pub bind: String,
    pub port: u32,
    pub protocol: Protocol,
    /// `inbound|<port>||`.
    pub cluster: String,
    pub endpoint: SocketAddr,
}

/// `inbound|<port>||`, Istio's name for the cluster of the application behind a port.
pub fn inbound_cluster_name(port: u32) -> String {
    format!("inbound|{port}||")
}

/// The ingress listeners that get an inbound listener of their own (not captured), in
/// Sidecar order; one per bind address and port.
pub(super) fn inbound(scope: &Scope<'_>) -> Vec<Inbound> {
    let mut seen = std::collections::BTreeSet::new();
    scope
        .ingress
        .iter()
        .filter(|l| {
            scope.proxy.interception == Interception::None || l.capture_mode == CaptureMode::None
        })
        .filter_map(|l| {
            let bind = l.bind.clone().unwrap_or_else(|| WILDCARD.to_string());
            let endpoint: SocketAddr = l.default_endpoint.parse().ok()?;
            seen.insert((bind.clone(), l.port.number)).then(|| Inbound {
                name: format!("{bind}_{}", l.port.number),
                protocol: declared_protocol(&l.port).unwrap_or(Protocol::Tcp),
                cluster: inbound_cluster_name(l.port.number),
                port: l.port.number,
                bind,
                endpoint,
            })
        })
        .collect()
}

pub(super) fn clusters(scope: &Scope<'_>) -> Vec<Cluster> {
    let mut out: Vec<Cluster> = Vec::new();
    for l in inbound(scope) {
        // Two bind addresses on one port share the cluster.
        if out.iter().any(|c| c.name == l.cluster) {
            continue;
        }
        out.push(cluster(&l));
    }
    out
}

fn cluster(l: &Inbound) -> Cluster {
    let endpoint = LbEndpoint {
        host_identifier: Some(HostIdentifier::Endpoint(EnvoyEndpoint {
            address: Some(socket_address(
                &l.endpoint.ip().to_string(),
                u32::from(l.endpoint.port()),
            )),
            ..Default::default()
        })),
        ..Default::default()
    };
    let mut c = Cluster {
        name: l.cluster.clone(),
        connect_timeout: Some(duration(DEFAULT_CONNECT_TIMEOUT)),
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: l.cluster.clone(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: vec![endpoint],
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    };
    set_type(&mut c, DiscoveryType::Static);
    apply_connection_pool(&mut c, None, l.protocol);
    c
}

pub(super) fn listeners(scope: &Scope<'_>) -> Vec<Listener> {
    let policies = rbac::applicable(scope.mesh, &scope.proxy.namespace, &scope.proxy.labels);
    inbound(scope)
        .iter()
        .map(|l| {
            let mode = authn::mode(
                scope.mesh,
                &scope.proxy.namespace,
                &scope.proxy.labels,
                l.port,
            );
            let rules = rbac::rules(&policies, !l.protocol.is_http());
            listener(l, mode, &rules)
        })
        .collect()
}

fn listener(l: &Inbound, mode: Mode, rules: &Rules) -> Listener {
    let filters = if l.protocol.is_http() {
        vec![http_connection_manager(l, rules)]
    } else {
        tcp_filters(l, rules)
    };
    let chain = |suffix: &str, transport: Option<&str>, tls: bool| FilterChain {
        name: format!("{}_{suffix}", l.name),
        filter_chain_match: transport.map(|t| FilterChainMatch {
            transport_protocol: t.to_string(),
            ..Default::default()
        }),
        filters: filters.clone(),
        transport_socket: tls.then(|| tls::downstream_transport_socket(l.protocol)),
        ..Default::default()
    };
    let (filter_chains, listener_filters) = match mode {
        Mode::Strict => (vec![chain("mtls", None, true)], Vec::new()),
        Mode::Permissive => (
            vec![
                chain("mtls", Some("tls"), true),
                chain("plaintext", Some("raw_buffer"), false),
            ],
            vec![ListenerFilter {
                name: TLS_INSPECTOR.to_string(),
                config_type: Some(listener_filter::ConfigType::TypedConfig(to_any(
                    &TlsInspector::default(),
                ))),
                ..Default::default()
            }],
        ),
        Mode::Disable => (vec![chain("plaintext", None, false)], Vec::new()),
    };
    Listener {
        name: l.name.clone(),
        address: Some(socket_address(&l.bind, l.port)),
        filter_chains,
        listener_filters,
        traffic_direction: TrafficDirection::Inbound as i32,
        ..Default::default()
    }
}

fn http_connection_manager(l: &Inbound, rules: &Rules) -> Filter {
    let route = Route {
        name: "default".to_string(),
        r#match: Some(RouteMatch {
            path_specifier: Some(PathSpecifier::Prefix("/".to_string())),
            ..Default::default()
        }),
        action: Some(Action::Route(RouteAction {
            cluster_specifier: Some(RouteCluster::Cluster(l.cluster.clone())),
            timeout: Some(duration(std::time::Duration::ZERO)),
            ..Default::default()
        })),
        ..Default::default()
    };
    let route_config = RouteConfiguration {
        name: l.cluster.clone(),
        virtual_hosts: vec![VirtualHost {
            name: format!("inbound|http|{}", l.port),
            domains: vec!["*".to_string()],
            routes: vec![route],
            ..Default::default()
        }],
        validate_clusters: boolean(false),
        ..Default::default()
    };
    let mut http_filters: Vec<HttpFilter> = [&rules.deny, &rules.allow]
        .into_iter()
        .flatten()
        .map(|r| http_filter(HTTP_RBAC, to_any(&http_rbac(r))))
        .collect();
    http_filters.push(http_filter(ROUTER, to_any(&Router::default())));
    let hcm = HttpConnectionManager {
        stat_prefix: format!("inbound_{}", l.port),
        codec_type: CodecType::Auto as i32,
        route_specifier: Some(RouteSpecifier::RouteConfig(route_config)),
        http_filters,
        use_remote_address: boolean(false),
        // Only acts on mutual TLS connections: plaintext requests lose any XFCC they bring.
        forward_client_cert_details: ForwardClientCertDetails::AppendForward as i32,
        set_current_client_cert_details: Some(SetCurrentClientCertDetails {
            subject: boolean(true),
            uri: true,
            dns: true,
            ..Default::default()
        }),
        normalize_path: boolean(true),
        merge_slashes: true,
        path_with_escaped_slashes_action: PathWithEscapedSlashesAction::KeepUnchanged as i32,
        ..Default::default()
    };
    network_filter(HTTP_CONNECTION_MANAGER, to_any(&hcm))
}

fn http_rbac(rules: &Rbac) -> HttpRbac {
    HttpRbac {
        rules: Some(rules.clone()),
        ..Default::default()
    }
}

fn tcp_filters(l: &Inbound, rules: &Rules) -> Vec<Filter> {
    let mut out: Vec<Filter> = [&rules.deny, &rules.allow]
        .into_iter()
        .flatten()
        .map(|r| {
            let config = NetworkRbac {
                rules: Some(r.clone()),
                stat_prefix: NETWORK_RBAC_STAT_PREFIX.to_string(),
                ..Default::default()
            };
            network_filter(NETWORK_RBAC, to_any(&config))
        })
        .collect();
    out.push(tcp_proxy(
        &l.cluster,
        ClusterSpecifier::Cluster(l.cluster.clone()),
    ));
    out
}
