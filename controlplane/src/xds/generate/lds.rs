//! LDS: Istio's outbound listeners.
//!
//! - Capture (iptables sends outbound connections to 15001): `virtualOutbound` on
//!   0.0.0.0:15001 hands each connection to the listener of its original destination port,
//!   `0.0.0.0_<port>` (`bind_to_port: false`), or else to `PassthroughCluster`
//!   (`BlackHoleCluster` under `REGISTRY_ONLY`).
//! - No capture (`Interception::None`, or a Sidecar egress listener with `captureMode: NONE` or
//!   a `bind`): one listener per egress listener with a port, `<bind>_<port>`, bound there.
//!
//! An HTTP port gets an HTTP connection manager whose routes come by RDS; a TCP port a
//! tcp_proxy to the cluster of the one service on it. Inbound listeners (`virtualInbound` and
//! the ones bound for ports that are not captured) come from [`super::inbound`].

use strait_proto::xds::envoy::config::core::v3::TrafficDirection;
use strait_proto::xds::envoy::config::listener::v3::filter::ConfigType;
use strait_proto::xds::envoy::config::listener::v3::{Filter, FilterChain, FilterChainMatch, Listener};
use strait_proto::xds::envoy::extensions::filters::http::fault::v3::HttpFault;
use strait_proto::xds::envoy::extensions::filters::http::router::v3::Router;
use strait_proto::xds::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::{
    CodecType, PathWithEscapedSlashesAction, RouteSpecifier,
};
use strait_proto::xds::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType as HttpFilterConfig;
use strait_proto::xds::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds,
};
use strait_proto::xds::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
use strait_proto::xds::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::weighted_cluster::ClusterWeight;
use strait_proto::xds::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::{
    ClusterSpecifier, WeightedCluster,
};
use strait_proto::xds::google::protobuf::Any;
use strait_proto::xds::to_any;

use super::route::FAULT_FILTER;
use super::scope::{PortListener, Scope};
use super::{
    BLACKHOLE_CLUSTER, PASSTHROUGH_CLUSTER, boolean, cluster_name, rules, socket_address, uint32,
};

/// Name of the capture listener.
pub(super) const VIRTUAL_OUTBOUND: &str = "virtualOutbound";
/// Port iptables redirects outbound connections to.
const VIRTUAL_OUTBOUND_PORT: u32 = 15001;
pub(super) const HTTP_CONNECTION_MANAGER: &str = "envoy.filters.network.http_connection_manager";
const TCP_PROXY: &str = "envoy.filters.network.tcp_proxy";
pub(super) const ROUTER: &str = "envoy.filters.http.router";

pub(super) fn listeners(scope: &Scope<'_>) -> Vec<Listener> {
    let inbound = super::inbound::listeners(scope);
    let mut out = Vec::new();
    if !scope.bind_mode() {
        out.push(virtual_outbound(scope));
    }
    // An inbound listener takes its address from an outbound one of the same name: the
    // operator declared that port as the workload's own.
    out.extend(
        scope
            .port_listeners()
            .iter()
            .filter(|l| !inbound.iter().any(|i| i.name == l.name))
            .map(|l| port_listener(scope, l)),
    );
    out.extend(inbound);
    out
}

fn default_cluster(scope: &Scope<'_>) -> &'static str {
    if scope.registry_only {
        BLACKHOLE_CLUSTER
    } else {
        PASSTHROUGH_CLUSTER
    }
}

/// 0.0.0.0:15001 with `use_original_dst`. Its own chains catch what no port listener takes:
/// connections to 15001 itself (a loop) are dropped, the rest go to the default cluster.
fn virtual_outbound(scope: &Scope<'_>) -> Listener {
    let cluster = default_cluster(scope);
    let blackhole = FilterChain {
        name: format!("{VIRTUAL_OUTBOUND}-blackhole"),
        filter_chain_match: Some(FilterChainMatch {
            destination_port: uint32(VIRTUAL_OUTBOUND_PORT),
            ..Default::default()
        }),
        filters: vec![tcp_proxy(
            BLACKHOLE_CLUSTER,
            ClusterSpecifier::Cluster(BLACKHOLE_CLUSTER.into()),
        )],
        ..Default::default()
    };
    let catch_all = FilterChain {
        name: format!("{VIRTUAL_OUTBOUND}-catchall-tcp"),
        filters: vec![tcp_proxy(
            cluster,
            ClusterSpecifier::Cluster(cluster.into()),
        )],
        ..Default::default()
    };
    Listener {
        name: VIRTUAL_OUTBOUND.to_string(),
        address: Some(socket_address("0.0.0.0", VIRTUAL_OUTBOUND_PORT)),
        use_original_dst: boolean(true),
        filter_chains: vec![blackhole, catch_all],
        traffic_direction: TrafficDirection::Outbound as i32,
        ..Default::default()
    }
}

fn port_listener(scope: &Scope<'_>, l: &PortListener<'_>) -> Listener {
    let filter = if l.protocol.is_http() {
        http_connection_manager(l)
    } else {
        tcp_filter(scope, l)
    };
    Listener {
        name: l.name.clone(),
        address: Some(socket_address(&l.bind, l.port)),
        filter_chains: vec![FilterChain {
            filters: vec![filter],
            ..Default::default()
        }],
        bind_to_port: if l.bind_to_port { None } else { boolean(false) },
        traffic_direction: TrafficDirection::Outbound as i32,
        ..Default::default()
    }
}

pub(super) fn network_filter(name: &str, config: Any) -> Filter {
    Filter {
        name: name.to_string(),
        config_type: Some(ConfigType::TypedConfig(config)),
    }
}

pub(super) fn http_filter(name: &str, config: Any) -> HttpFilter {
    HttpFilter {
        name: name.to_string(),
        config_type: Some(HttpFilterConfig::TypedConfig(config)),
        ..Default::default()
    }
}

/// Routes by RDS (`<port>`), fault injection before the router, Istio's path handling.
fn http_connection_manager(l: &PortListener<'_>) -> Filter {
    let hcm = HttpConnectionManager {
        stat_prefix: format!("outbound_{}", l.name),
        codec_type: CodecType::Auto as i32,
        route_specifier: Some(RouteSpecifier::Rds(Rds {
            config_source: Some(super::ads()),
            route_config_name: l.route_name.clone(),
        })),
        http_filters: vec![
            http_filter(FAULT_FILTER, to_any(&HttpFault::default())),
            http_filter(ROUTER, to_any(&Router::default())),
        ],
        normalize_path: boolean(true),
        merge_slashes: true,
        path_with_escaped_slashes_action: PathWithEscapedSlashesAction::KeepUnchanged as i32,
        ..Default::default()
    };
    network_filter(HTTP_CONNECTION_MANAGER, to_any(&hcm))
}

pub(super) fn tcp_proxy(stat_prefix: &str, cluster: ClusterSpecifier) -> Filter {
    let proxy = TcpProxy {
        stat_prefix: stat_prefix.to_string(),
        cluster_specifier: Some(cluster),
        ..Default::default()
    };
    network_filter(TCP_PROXY, to_any(&proxy))
}

/// The one service on the port (through its VirtualService `tcp` route if any); with none, the
/// default cluster; with several, the original destination (no address tells them apart).
fn tcp_filter(scope: &Scope<'_>, l: &PortListener<'_>) -> Filter {
    let (svc, port) = match l.services.as_slice() {
        [only] => *only,
        [] => {
            let cluster = default_cluster(scope);
            return tcp_proxy(cluster, ClusterSpecifier::Cluster(cluster.into()));
        }
        _ => {
            return tcp_proxy(
                PASSTHROUGH_CLUSTER,
                ClusterSpecifier::Cluster(PASSTHROUGH_CLUSTER.into()),
            );
        }
    };
    let mut clusters = match rules::tcp_route(scope, &svc.hostname, l.port) {
        Some((ns, r)) => {
            let dests: Vec<_> = r.route.iter().map(|d| (&d.destination, d.weight)).collect();
            rules::weighted_clusters(scope, ns, &dests, l.port)
        }
        None => vec![(cluster_name(port.number, "", &svc.hostname), 100)],
    };
    match clusters.len() {
        0 => tcp_proxy(
            BLACKHOLE_CLUSTER,
            ClusterSpecifier::Cluster(BLACKHOLE_CLUSTER.into()),
        ),
        1 => {
            let (cluster, _) = clusters.remove(0);
            tcp_proxy(&cluster, ClusterSpecifier::Cluster(cluster.clone()))
        }
        _ => {
            let weighted = WeightedCluster {
                clusters: clusters
                    .into_iter()
                    .map(|(name, weight)| ClusterWeight {
                        name,
                        weight,
                        ..Default::default()
                    })
                    .collect(),
            };
            tcp_proxy(
                &format!("outbound_{}", l.name),
                ClusterSpecifier::WeightedClusters(weighted),
            )
        }
    }
}
