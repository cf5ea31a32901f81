//! Inbound: what a workload's proxy does with connections to the workload, in Istio's shape.
//!
//! The inbound ports come from the Sidecar's `ingress` listeners when it has any (Istio: they
//! replace the service-derived ports), else from the services that select the workload: those
//! of its namespace whose ServiceEntry `workloadSelector` matches its labels or that list its
//! address as an endpoint, each port at its target port (the endpoint's, else `targetPort`,
//! else the number). A workload without capture (`INTERCEPTION_MODE: NONE`) gets inbound ports
//! from `ingress` only, as in Istio: binding service ports would take the application's own.
//!
//! - Not captured (no interception, or the ingress listener's `captureMode: NONE`): a listener
//!   `<bind>_<port>` of its own (bind `0.0.0.0` unless given).
//! - Captured (iptables REDIRECT/TPROXY sends inbound connections to 15006): `virtualInbound` on
//!   0.0.0.0:15006 with the `original_dst` and `tls_inspector` listener filters; its chains match
//!   the original `destination_port` of each inbound port; a chain for 15006 itself drops the
//!   connection (a loop), and passthrough chains without a port send everything else to
//!   `InboundPassthroughCluster` (ORIGINAL_DST) under the workload's own mode, plus chains for the
//!   ports that only `portLevelMtls` names, under theirs.
//!
//! Each port's cluster is `inbound|<port>||`: STATIC to a Sidecar's `defaultEndpoint`
//! (`0.0.0.0:<p>` meaning the workload's own address), else ORIGINAL_DST, which is what Istio
//! ≥1.10 (so ≥1.20) does for service ports: the connection goes on to the address the client
//! dialled (`<pod ip>:<target port>`), not to localhost, so an application bound to localhost only
//! is not exposed. Under capture, upstream connections that leave the loopback interface's own
//! addresses start from 127.0.0.6, the source Istio's iptables rules let through instead of
//! redirecting them back to 15006.
//!
//! Chains per port follow its PeerAuthentication mode ([`super::authn`]) with Istio's matches
//! (`filterchain_options.go`):
//! - STRICT: `transport_protocol: tls`, terminating mutual TLS (client certificate required);
//!   plaintext matches nothing and is closed;
//! - PERMISSIVE: `tls` with one of Istio's mesh ALPN values (`istio`, `istio-peer-exchange`,
//!   `istio-http/*`, `istio-h2`) terminates mutual TLS, `raw_buffer` is plaintext, and on TCP
//!   ports other TLS (a non-mesh client's own TLS) passes through to the application untouched;
//! - DISABLE: plaintext, no transport match (so no TLS inspection is needed on a listener of its
//!   own; Istio matches `raw_buffer` and disables the inspector there, to the same effect).
//!
//! Each chain carries the workload's authorization ([`super::rbac`]): for HTTP ports an HTTP
//! connection manager (inline route to the cluster, RBAC filters, router, the client
//! certificate's identity forwarded in `x-forwarded-client-cert`), for TCP ports and the
//! passthrough chains network RBAC filters and a tcp_proxy. Passthrough chains are TCP only:
//! Istio sniffs HTTP there (`http_inspector`), which we do not, so HTTP-only rules (methods,
//! paths) of an ALLOW policy allow nothing on unknown ports (see [`super::rbac`]).

use std::net::SocketAddr;

use strait_proto::xds::envoy::config::cluster::v3::Cluster;
use strait_proto::xds::envoy::config::cluster::v3::cluster::{DiscoveryType, LbPolicy};
use strait_proto::xds::envoy::config::core::v3::socket_address::PortSpecifier;
use strait_proto::xds::envoy::config::core::v3::{BindConfig, SocketAddress, TrafficDirection};
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
use strait_proto::xds::envoy::extensions::filters::listener::original_dst::v3::OriginalDst;
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

use crate::model::mesh::selects;
use crate::model::networking::CaptureMode;
use crate::xds::proxy::Interception;

use super::authn::{self, Mode};
use super::cds::{apply_connection_pool, set_type};
use super::lds::{HTTP_CONNECTION_MANAGER, ROUTER, http_filter, network_filter, tcp_proxy};
use super::rbac::{self, Rules};
use super::scope::{Scope, declared_protocol};
use super::{
    BLACKHOLE_CLUSTER, DEFAULT_CONNECT_TIMEOUT, Protocol, boolean, duration, socket_address, tls,
    uint32,
};

const WILDCARD: &str = "0.0.0.0";
const TLS_INSPECTOR: &str = "envoy.filters.listener.tls_inspector";
const ORIGINAL_DST: &str = "envoy.filters.listener.original_dst";
const HTTP_RBAC: &str = "envoy.filters.http.rbac";
const NETWORK_RBAC: &str = "envoy.filters.network.rbac";
/// Istio's stat prefix for network RBAC.
const NETWORK_RBAC_STAT_PREFIX: &str = "tcp.";
/// The capture listener for inbound connections (Istio's name and port).
pub(super) const VIRTUAL_INBOUND: &str = "virtualInbound";
const VIRTUAL_INBOUND_PORT: u32 = 15006;
/// ORIGINAL_DST cluster for inbound connections to ports no service declares.
pub const INBOUND_PASSTHROUGH_CLUSTER: &str = "InboundPassthroughCluster";
/// Source address of upstream connections under capture: Istio's iptables rules return traffic
/// from 127.0.0.6 on `lo` instead of redirecting it to 15006 again.
const INBOUND_PASSTHROUGH_BIND: &str = "127.0.0.6";
/// The ALPN values Istio's clients offer on mutual TLS (`allIstioMtlsALPNs`): in PERMISSIVE
/// mode they tell mesh traffic from a non-mesh client's own TLS.
const MESH_ALPN: [&str; 5] = [
    "istio",
    "istio-peer-exchange",
    "istio-http/1.0",
    "istio-http/1.1",
    "istio-h2",
];

/// One inbound port the proxy serves.
pub(super) struct Inbound {
    /// `<bind>_<port>`: the listener's name, or under capture the prefix of its chains' names.
    pub name: String,
    pub bind: String,
    /// The port connections arrive on (a service's target port).
    pub port: u32,
    pub protocol: Protocol,
    /// `inbound|<port>||`.
    pub cluster: String,
    pub upstream: Upstream,
    /// Reached through `virtualInbound` rather than a listener of its own.
    pub captured: bool,
}

/// Where the inbound cluster sends connections.
pub(super) enum Upstream {
    /// STATIC, to a Sidecar ingress listener's `defaultEndpoint`.
    Static(SocketAddr),
    /// ORIGINAL_DST: on to the address the client dialled.
    OriginalDst,
}

/// `inbound|<port>||`, Istio's name for the cluster of the application behind a port.
pub fn inbound_cluster_name(port: u32) -> String {
    format!("inbound|{port}||")
}

/// The proxy's inbound ports: the Sidecar's `ingress` listeners in Sidecar order (one per bind
/// address and port, and one per port under capture), else the ports of the services that
/// select the workload, by port (each port once: a second service on it is ignored). Port 15006 is never an application port under capture.
pub(super) fn inbound(scope: &Scope<'_>) -> Vec<Inbound> {
    let proxy = scope.proxy;
    let mut out: Vec<Inbound> = Vec::new();
    let taken = |out: &[Inbound], bind: &str, port: u32, captured: bool| {
        out.iter()
            .any(|i| i.port == port && i.captured == captured && (captured || i.bind == bind))
    };
    if !scope.ingress.is_empty() {
        for l in scope.ingress {
            let captured =
                proxy.interception != Interception::None && l.capture_mode != CaptureMode::None;
            let bind = l.bind.clone().unwrap_or_else(|| WILDCARD.to_string());
            let port = l.port.number;
            let Ok(mut endpoint) = l.default_endpoint.parse::<SocketAddr>() else {
                continue;
            };
            // Istio: `0.0.0.0:<p>` is the workload's own address.
            if endpoint.ip().is_unspecified() {
                endpoint.set_ip(proxy.ip);
            }
            if (captured && port == VIRTUAL_INBOUND_PORT) || taken(&out, &bind, port, captured) {
                continue;
            }
            out.push(Inbound {
                name: format!("{bind}_{port}"),
                protocol: declared_protocol(&l.port).unwrap_or(Protocol::Tcp),
                cluster: inbound_cluster_name(port),
                port,
                bind,
                upstream: Upstream::Static(endpoint),
                captured,
            });
        }
        return out;
    }
    if proxy.interception == Interception::None {
        return out;
    }
    let own_address = proxy.ip.to_string();
    // Services in host name order, so the first to claim a port keeps it (Istio keeps the
    // oldest; Strait keeps no creation time).
    for svc in scope.mesh.services.values() {
        if svc.namespace != proxy.namespace {
            continue;
        }
        let own_endpoint = svc.endpoints.iter().find(|e| e.address == own_address);
        let selected = svc
            .workload_selectors
            .iter()
            .any(|s| !s.is_empty() && selects(s, &proxy.labels));
        if own_endpoint.is_none() && !selected {
            continue;
        }
        for p in &svc.ports {
            let port = own_endpoint
                .map(|e| e.target_port(p))
                .unwrap_or_else(|| p.target_port.unwrap_or(p.number));
            if port == VIRTUAL_INBOUND_PORT || taken(&out, WILDCARD, port, true) {
                continue;
            }
            out.push(Inbound {
                name: format!("{WILDCARD}_{port}"),
                bind: WILDCARD.to_string(),
                port,
                protocol: Protocol::of_port(p),
                cluster: inbound_cluster_name(port),
                upstream: Upstream::OriginalDst,
                captured: true,
            });
        }
    }
    out.sort_by_key(|i| i.port);
    out
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
    if scope.proxy.interception != Interception::None {
        out.push(passthrough_cluster());
    }
    out
}

fn cluster(l: &Inbound) -> Cluster {
    let mut c = Cluster {
        name: l.cluster.clone(),
        connect_timeout: Some(duration(DEFAULT_CONNECT_TIMEOUT)),
        ..Default::default()
    };
    match l.upstream {
        Upstream::Static(endpoint) => {
            let lb_endpoint = LbEndpoint {
                host_identifier: Some(HostIdentifier::Endpoint(EnvoyEndpoint {
                    address: Some(socket_address(
                        &endpoint.ip().to_string(),
                        u32::from(endpoint.port()),
                    )),
                    ..Default::default()
                })),
                ..Default::default()
            };
            c.load_assignment = Some(ClusterLoadAssignment {
                cluster_name: l.cluster.clone(),
                endpoints: vec![LocalityLbEndpoints {
                    lb_endpoints: vec![lb_endpoint],
                    ..Default::default()
                }],
                ..Default::default()
            });
            set_type(&mut c, DiscoveryType::Static);
            // Only a captured workload's own traffic is redirected back to 15006, and loopback
            // destinations are never redirected (as Istio: no bind config for localhost).
            if l.captured && !endpoint.ip().is_loopback() {
                c.upstream_bind_config = Some(passthrough_bind());
            }
        }
        Upstream::OriginalDst => {
            set_type(&mut c, DiscoveryType::OriginalDst);
            c.lb_policy = LbPolicy::ClusterProvided as i32;
            c.upstream_bind_config = Some(passthrough_bind());
        }
    }
    apply_connection_pool(&mut c, None, l.protocol);
    c
}

/// ORIGINAL_DST from 127.0.0.6, as Istio's `InboundPassthroughCluster`.
fn passthrough_cluster() -> Cluster {
    let mut c = Cluster {
        name: INBOUND_PASSTHROUGH_CLUSTER.to_string(),
        connect_timeout: Some(duration(DEFAULT_CONNECT_TIMEOUT)),
        lb_policy: LbPolicy::ClusterProvided as i32,
        upstream_bind_config: Some(passthrough_bind()),
        ..Default::default()
    };
    set_type(&mut c, DiscoveryType::OriginalDst);
    c
}

fn passthrough_bind() -> BindConfig {
    BindConfig {
        source_address: Some(SocketAddress {
            address: INBOUND_PASSTHROUGH_BIND.to_string(),
            port_specifier: Some(PortSpecifier::PortValue(0)),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// `virtualInbound` first under capture (Istio's order), then the listeners of ports that are
/// not captured.
pub(super) fn listeners(scope: &Scope<'_>) -> Vec<Listener> {
    let proxy = scope.proxy;
    let policies = rbac::applicable(scope.mesh, &proxy.namespace, &proxy.labels);
    let tcp_rules = rbac::rules(&policies, true);
    let http_rules = rbac::rules(&policies, false);
    let mode = |port| authn::mode(scope.mesh, &proxy.namespace, &proxy.labels, port);
    let port_chains = |l: &Inbound, destination_port: Option<u32>| {
        let filters = if l.protocol.is_http() {
            vec![http_connection_manager(l, &http_rules)]
        } else {
            tcp_filters(&l.cluster, &l.cluster, &tcp_rules)
        };
        chains(
            &l.name,
            destination_port,
            mode(l.port),
            l.protocol,
            &filters,
        )
    };
    let inbound = inbound(scope);
    let mut out = Vec::new();
    if proxy.interception != Interception::None {
        let mut filter_chains = vec![blackhole_chain()];
        // Passthrough: the workload's mode for every other port, and the modes that
        // `portLevelMtls` gives ports no inbound port declares.
        let passthrough = tcp_filters(
            INBOUND_PASSTHROUGH_CLUSTER,
            INBOUND_PASSTHROUGH_CLUSTER,
            &tcp_rules,
        );
        let workload_mode = authn::workload_mode(scope.mesh, &proxy.namespace, &proxy.labels);
        filter_chains.extend(chains(
            VIRTUAL_INBOUND,
            None,
            workload_mode,
            Protocol::Tcp,
            &passthrough,
        ));
        for port in authn::port_level_ports(scope.mesh, &proxy.namespace, &proxy.labels) {
            let declared = inbound.iter().any(|i| i.captured && i.port == port);
            if declared || port == VIRTUAL_INBOUND_PORT {
                continue;
            }
            filter_chains.extend(chains(
                &format!("{VIRTUAL_INBOUND}_{port}"),
                Some(port),
                mode(port),
                Protocol::Tcp,
                &passthrough,
            ));
        }
        // By port, as Istio orders them (Sidecar ingress listeners come in Sidecar order).
        let mut captured: Vec<&Inbound> = inbound.iter().filter(|l| l.captured).collect();
        captured.sort_by_key(|l| l.port);
        for l in captured {
            filter_chains.extend(port_chains(l, Some(l.port)));
        }
        out.push(virtual_inbound(filter_chains));
    }
    out.extend(inbound.iter().filter(|l| !l.captured).map(|l| {
        let filter_chains = port_chains(l, None);
        Listener {
            name: l.name.clone(),
            address: Some(socket_address(&l.bind, l.port)),
            listener_filters: needs_tls_inspector(&filter_chains)
                .then(tls_inspector)
                .into_iter()
                .collect(),
            filter_chains,
            traffic_direction: TrafficDirection::Inbound as i32,
            ..Default::default()
        }
    }));
    out
}

/// 0.0.0.0:15006. No `use_original_dst`: with it Envoy would hand a connection to whichever
/// listener owns its original destination, and the capture-mode outbound listeners
/// `0.0.0.0_<port>` (`bind_to_port: false`) own every address on their port, so inbound traffic
/// to a port the workload also calls out on would be routed as outbound. Istio dropped it for
/// the same reason; the `original_dst` listener filter restores the destination that the chains
/// match on. The listener filters never time out (`0s`, Istio's `protocolDetectionTimeout`),
/// and would go on without their verdict if one were configured.
fn virtual_inbound(filter_chains: Vec<FilterChain>) -> Listener {
    let original_dst = ListenerFilter {
        name: ORIGINAL_DST.to_string(),
        config_type: Some(listener_filter::ConfigType::TypedConfig(to_any(
            &OriginalDst::default(),
        ))),
        ..Default::default()
    };
    Listener {
        name: VIRTUAL_INBOUND.to_string(),
        address: Some(socket_address(WILDCARD, VIRTUAL_INBOUND_PORT)),
        listener_filters: vec![original_dst, tls_inspector()],
        listener_filters_timeout: Some(duration(std::time::Duration::ZERO)),
        continue_on_listener_filters_timeout: true,
        filter_chains,
        traffic_direction: TrafficDirection::Inbound as i32,
        ..Default::default()
    }
}

/// Connections to 15006 itself would loop: drop them.
fn blackhole_chain() -> FilterChain {
    FilterChain {
        name: format!("{VIRTUAL_INBOUND}-blackhole"),
        filter_chain_match: Some(FilterChainMatch {
            destination_port: uint32(VIRTUAL_INBOUND_PORT),
            ..Default::default()
        }),
        filters: vec![tcp_proxy(
            BLACKHOLE_CLUSTER,
            ClusterSpecifier::Cluster(BLACKHOLE_CLUSTER.into()),
        )],
        ..Default::default()
    }
}

fn tls_inspector() -> ListenerFilter {
    ListenerFilter {
        name: TLS_INSPECTOR.to_string(),
        config_type: Some(listener_filter::ConfigType::TypedConfig(to_any(
            &TlsInspector::default(),
        ))),
        ..Default::default()
    }
}

fn needs_tls_inspector(chains: &[FilterChain]) -> bool {
    chains.iter().any(|c| {
        c.filter_chain_match
            .as_ref()
            .is_some_and(|m| !m.transport_protocol.is_empty())
    })
}

/// One chain of a port: how it matches, and whether it terminates mutual TLS.
#[derive(Clone, Copy)]
struct ChainMatch {
    /// Appended to the chain's name: `_mtls`, `_plaintext`, `_tls` (TLS passed through).
    suffix: &'static str,
    transport: Option<&'static str>,
    alpn: &'static [&'static str],
    terminate: bool,
}

const STRICT: &[ChainMatch] = &[ChainMatch {
    suffix: "mtls",
    transport: Some("tls"),
    alpn: &[],
    terminate: true,
}];
const PERMISSIVE_HTTP: &[ChainMatch] = &[
    ChainMatch {
        suffix: "mtls",
        transport: Some("tls"),
        alpn: &MESH_ALPN,
        terminate: true,
    },
    ChainMatch {
        suffix: "plaintext",
        transport: Some("raw_buffer"),
        alpn: &[],
        terminate: false,
    },
];
const PERMISSIVE_TCP: &[ChainMatch] = &[
    PERMISSIVE_HTTP[0],
    PERMISSIVE_HTTP[1],
    ChainMatch {
        suffix: "tls",
        transport: Some("tls"),
        alpn: &[],
        terminate: false,
    },
];
const DISABLE: &[ChainMatch] = &[ChainMatch {
    suffix: "plaintext",
    transport: None,
    alpn: &[],
    terminate: false,
}];

/// The chains `<name>_<suffix>` of one port (or of the passthrough), for both shapes: a
/// listener of its own (`destination_port` None) and `virtualInbound`.
fn chains(
    name: &str,
    destination_port: Option<u32>,
    mode: Mode,
    protocol: Protocol,
    filters: &[Filter],
) -> Vec<FilterChain> {
    let matches = match (mode, protocol.is_http()) {
        (Mode::Strict, _) => STRICT,
        (Mode::Permissive, true) => PERMISSIVE_HTTP,
        (Mode::Permissive, false) => PERMISSIVE_TCP,
        (Mode::Disable, _) => DISABLE,
    };
    matches
        .iter()
        .map(|m| {
            let filter_chain_match = FilterChainMatch {
                destination_port: destination_port.and_then(uint32),
                transport_protocol: m.transport.unwrap_or_default().to_string(),
                application_protocols: m.alpn.iter().map(|a| a.to_string()).collect(),
                ..Default::default()
            };
            FilterChain {
                name: format!("{name}_{}", m.suffix),
                filter_chain_match: (filter_chain_match != FilterChainMatch::default())
                    .then_some(filter_chain_match),
                filters: filters.to_vec(),
                transport_socket: m
                    .terminate
                    .then(|| tls::downstream_transport_socket(protocol)),
                ..Default::default()
            }
        })
        .collect()
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

/// Network RBAC, then a tcp_proxy to `cluster`.
fn tcp_filters(stat_prefix: &str, cluster: &str, rules: &Rules) -> Vec<Filter> {
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
        stat_prefix,
        ClusterSpecifier::Cluster(cluster.to_string()),
    ));
    out
}
