use strait_proto::xds::envoy::config::core::v3::address;
use strait_proto::xds::envoy::config::core::v3::socket_address::PortSpecifier;
use strait_proto::xds::envoy::config::listener::v3::filter::ConfigType;
use strait_proto::xds::envoy::config::listener::v3::{Filter, Listener};
use strait_proto::xds::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use strait_proto::xds::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::{
    CodecType, PathWithEscapedSlashesAction, RouteSpecifier,
};
use strait_proto::xds::envoy::extensions::filters::network::http_connection_manager::v3::http_filter;
use strait_proto::xds::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
use strait_proto::xds::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::ClusterSpecifier;

use super::{BOOKINFO, decode, mesh, proxy};
use crate::xds::generate::listeners;
use crate::xds::proxy::Interception;

fn listener<'a>(ls: &'a [Listener], name: &str) -> &'a Listener {
    ls.iter()
        .find(|l| l.name == name)
        .unwrap_or_else(|| panic!("no listener {name}"))
}

fn bound(l: &Listener) -> (String, u32) {
    let Some(address::Address::SocketAddress(sa)) = &l.address.as_ref().unwrap().address else {
        panic!()
    };
    let Some(PortSpecifier::PortValue(port)) = sa.port_specifier else {
        panic!()
    };
    (sa.address.clone(), port)
}

fn typed<M: prost::Message + Default>(f: &Filter) -> M {
    let Some(ConfigType::TypedConfig(any)) = &f.config_type else {
        panic!("{} has no typed_config", f.name)
    };
    decode(any)
}

fn tcp_cluster(f: &Filter) -> String {
    assert_eq!(f.name, "envoy.filters.network.tcp_proxy");
    let proxy: TcpProxy = typed(f);
    assert!(!proxy.stat_prefix.is_empty());
    match proxy.cluster_specifier {
        Some(ClusterSpecifier::Cluster(c)) => c,
        other => panic!("not a single cluster: {other:?}"),
    }
}

#[test]
fn capture_mode_listeners() {
    let ls = listeners(&mesh(BOOKINFO), &proxy());
    let names: Vec<&str> = ls.iter().map(|l| l.name.as_str()).collect();
    // virtualInbound (inbound capture) is covered in tests/security.rs.
    assert_eq!(
        names,
        [
            "virtualOutbound",
            "0.0.0.0_3306",
            "0.0.0.0_9080",
            "virtualInbound"
        ]
    );

    let vo = listener(&ls, "virtualOutbound");
    assert_eq!(bound(vo), ("0.0.0.0".to_string(), 15001));
    assert!(vo.use_original_dst.unwrap().value);
    assert!(vo.bind_to_port.is_none());
    let [loop_guard, catch_all] = vo.filter_chains.as_slice() else {
        panic!()
    };
    assert_eq!(
        loop_guard
            .filter_chain_match
            .as_ref()
            .unwrap()
            .destination_port
            .unwrap()
            .value,
        15001
    );
    assert_eq!(tcp_cluster(&loop_guard.filters[0]), "BlackHoleCluster");
    assert!(catch_all.filter_chain_match.is_none());
    assert_eq!(tcp_cluster(&catch_all.filters[0]), "PassthroughCluster");

    let http = listener(&ls, "0.0.0.0_9080");
    assert_eq!(bound(http), ("0.0.0.0".to_string(), 9080));
    assert!(!http.bind_to_port.unwrap().value);
    let filter = &http.filter_chains[0].filters[0];
    assert_eq!(filter.name, "envoy.filters.network.http_connection_manager");
    let hcm: HttpConnectionManager = typed(filter);
    assert_eq!(hcm.stat_prefix, "outbound_0.0.0.0_9080");
    assert_eq!(hcm.codec_type, CodecType::Auto as i32);
    let Some(RouteSpecifier::Rds(rds)) = &hcm.route_specifier else {
        panic!()
    };
    assert_eq!(rds.route_config_name, "9080");
    assert_eq!(rds.config_source.as_ref().unwrap().resource_api_version, 2);
    let filters: Vec<(&str, &str)> = hcm
        .http_filters
        .iter()
        .map(|f| {
            let Some(http_filter::ConfigType::TypedConfig(any)) = &f.config_type else {
                panic!()
            };
            (f.name.as_str(), any.type_url.as_str())
        })
        .collect();
    assert_eq!(
        filters,
        [
            (
                "envoy.filters.http.fault",
                "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"
            ),
            (
                "envoy.filters.http.router",
                "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
            ),
        ]
    );
    assert!(hcm.normalize_path.unwrap().value);
    assert!(hcm.merge_slashes);
    assert_eq!(
        hcm.path_with_escaped_slashes_action,
        PathWithEscapedSlashesAction::KeepUnchanged as i32
    );

    let tcp = listener(&ls, "0.0.0.0_3306");
    assert_eq!(
        tcp_cluster(&tcp.filter_chains[0].filters[0]),
        "outbound|3306||ratings.default.svc.cluster.local"
    );
}

#[test]
fn registry_only_sends_unknown_traffic_to_the_black_hole() {
    let sidecar = r#"
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: istio-system}
spec:
  outboundTrafficPolicy: {mode: REGISTRY_ONLY}
"#;
    let ls = listeners(&mesh(&format!("{BOOKINFO}{sidecar}")), &proxy());
    let vo = listener(&ls, "virtualOutbound");
    assert_eq!(
        tcp_cluster(&vo.filter_chains[1].filters[0]),
        "BlackHoleCluster"
    );
}

#[test]
fn tcp_virtual_service_splits_by_weight() {
    let vs = r#"
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings}
spec:
  hosts: [ratings]
  tcp:
  - match: [{port: 9999}]
    route: [{destination: {host: ratings, subset: never}}]
  - route:
    - {destination: {host: ratings, subset: v1, port: {number: 3306}}, weight: 70}
    - {destination: {host: ratings.default.svc.cluster.local, subset: v2, port: {number: 3306}}, weight: 30}
    - {destination: {host: ratings, subset: v3, port: {number: 3306}}, weight: 0}
"#;
    let ls = listeners(&mesh(&format!("{BOOKINFO}{vs}")), &proxy());
    let f = &listener(&ls, "0.0.0.0_3306").filter_chains[0].filters[0];
    let proxy: TcpProxy = typed(f);
    let Some(ClusterSpecifier::WeightedClusters(w)) = proxy.cluster_specifier else {
        panic!()
    };
    let got: Vec<(&str, u32)> = w
        .clusters
        .iter()
        .map(|c| (c.name.as_str(), c.weight))
        .collect();
    assert_eq!(
        got,
        [
            ("outbound|3306|v1|ratings.default.svc.cluster.local", 70),
            ("outbound|3306|v2|ratings.default.svc.cluster.local", 30),
        ]
    );
}

#[test]
fn no_interception_binds_each_egress_listener() {
    let sidecar = r#"
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default}
spec:
  egress:
  - port: {number: 9080, protocol: HTTP, name: http}
    hosts: [./reviews.default.svc.cluster.local]
  - port: {number: 3306, protocol: TCP, name: tcp}
    bind: 127.0.0.2
    hosts: [./*]
  - hosts: [./*]
"#;
    let m = mesh(&format!("{BOOKINFO}{sidecar}"));
    let p = crate::xds::proxy::Proxy {
        interception: Interception::None,
        ..proxy()
    };
    let ls = listeners(&m, &p);
    let names: Vec<&str> = ls.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(
        names,
        ["127.0.0.1_9080", "127.0.0.2_3306"],
        "no virtualOutbound, no catch-all listeners"
    );
    for l in &ls {
        assert!(l.bind_to_port.is_none(), "bound: {}", l.name);
        assert!(l.use_original_dst.is_none());
    }
    assert_eq!(bound(&ls[1]), ("127.0.0.2".to_string(), 3306));
    let hcm: HttpConnectionManager = typed(&ls[0].filter_chains[0].filters[0]);
    let Some(RouteSpecifier::Rds(rds)) = &hcm.route_specifier else {
        panic!()
    };
    assert_eq!(rds.route_config_name, "9080");
    assert_eq!(
        tcp_cluster(&ls[1].filter_chains[0].filters[0]),
        "outbound|3306||ratings.default.svc.cluster.local"
    );
}

#[test]
fn capture_none_egress_listener_switches_to_bound_listeners() {
    let sidecar = r#"
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default}
spec:
  egress:
  - port: {number: 9080, protocol: HTTP, name: http}
    captureMode: NONE
    hosts: [./*]
"#;
    let ls = listeners(&mesh(&format!("{BOOKINFO}{sidecar}")), &proxy());
    let names: Vec<&str> = ls.iter().map(|l| l.name.as_str()).collect();
    // Inbound capture does not depend on the egress listeners' capture mode.
    assert_eq!(names, ["0.0.0.0_9080", "virtualInbound"]);
    assert!(ls[0].bind_to_port.is_none());
}

#[test]
fn sidecar_ports_add_listeners_in_capture_mode() {
    let sidecar = r#"
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default}
spec:
  egress:
  - port: {number: 3306, protocol: HTTP, name: http}
    hosts: [./*]
  - port: {number: 7000, name: http-x}
    hosts: [./*]
  - hosts: [./reviews.default.svc.cluster.local]
"#;
    let ls = listeners(&mesh(&format!("{BOOKINFO}{sidecar}")), &proxy());
    let names: Vec<&str> = ls.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "virtualOutbound",
            "0.0.0.0_3306",
            "0.0.0.0_7000",
            "0.0.0.0_9080",
            "virtualInbound"
        ]
    );
    for name in ["0.0.0.0_3306", "0.0.0.0_7000"] {
        let f = &listener(&ls, name).filter_chains[0].filters[0];
        assert_eq!(
            f.name, "envoy.filters.network.http_connection_manager",
            "{name}: declared HTTP"
        );
    }
}
