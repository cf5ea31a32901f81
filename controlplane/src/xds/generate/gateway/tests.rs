//! The east-west gateway's xDS: which services appear, subsets, other networks and unexported
//! services left out, reserved ports never routed, deterministic output.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use prost::Message;
use strait_proto::node::NodeType;
use strait_proto::xds::envoy::config::core::v3::address::Address as AddressKind;
use strait_proto::xds::envoy::config::core::v3::socket_address::PortSpecifier;
use strait_proto::xds::envoy::config::endpoint::v3::ClusterLoadAssignment;
use strait_proto::xds::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use strait_proto::xds::envoy::config::listener::v3::Listener;
use strait_proto::xds::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
use strait_proto::xds::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::ClusterSpecifier;

use super::super::tests::{decode, mesh, proxy};
use super::super::{all_endpoint_names, clusters, endpoints, listeners, routes};
use super::is_eastwest_gateway;
use crate::model::mesh::{ExportDefault, Mesh};
use crate::xds::proxy::Proxy;

/// reviews: n1 endpoints v1, v2 (and one on n2, one gateway, one on a reserved target port),
/// a tcp port and a port that is the control plane's; ratings only on n2; details not
/// exported; an external service; a DestinationRule with subsets v1 and v2.
const MESH: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews}
spec:
  hosts: [reviews.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - {number: 9080, name: http, protocol: HTTP}
  - {number: 7070, name: tcp-admin, protocol: TCP}
  - {number: 15012, name: tls-xds, protocol: TLS}
  endpoints:
  - {address: 198.18.1.1, network: n1, labels: {version: v1}}
  - {address: 198.18.1.2, network: n1, labels: {version: v2}}
  - {address: 198.18.1.3, network: n2, labels: {version: v1}}
  - {address: 198.18.1.4, network: n1, labels: {version: v1, istio: eastwestgateway}}
  - {address: 198.18.1.5, network: n1, labels: {version: v2}, ports: {tcp-admin: 15012}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews.default.svc.cluster.local
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ratings}
spec:
  hosts: [ratings.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9080, name: http}]
  endpoints: [{address: 198.18.2.1, network: n2}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: details
  labels: {networking.strait.io/export: "false"}
spec:
  hosts: [details.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9080, name: http}]
  endpoints: [{address: 198.18.3.1, network: n1}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: productpage
  labels: {networking.strait.io/export: "true"}
spec:
  hosts: [productpage.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9080, name: http}]
  endpoints: [{address: 198.18.4.1, network: n1}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: external}
spec:
  hosts: [api.example.com]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{number: 443, name: tls}]
  endpoints: [{address: 198.18.5.1, network: n1}]
"#;

const R: &str = "reviews.default.svc.cluster.local";

fn gateway() -> Proxy {
    Proxy {
        id: "router~198.18.0.9~eastwest-1.istio-system~istio-system.svc.cluster.local".into(),
        node_type: NodeType::Router,
        ip: "198.18.0.9".parse().unwrap(),
        namespace: "istio-system".into(),
        workload_name: "eastwest".into(),
        labels: BTreeMap::from([
            ("istio".to_string(), "eastwestgateway".to_string()),
            ("topology.istio.io/network".to_string(), "n1".to_string()),
        ]),
        network: "n1".into(),
        ..proxy()
    }
}

fn expected_names() -> Vec<String> {
    [
        "outbound_.9080_._.productpage.default.svc.cluster.local".to_string(),
        format!("outbound_.9080_._.{R}"),
        format!("outbound_.9080_.v1_.{R}"),
        format!("outbound_.9080_.v2_.{R}"),
        format!("outbound_.7070_._.{R}"),
        format!("outbound_.7070_.v1_.{R}"),
        format!("outbound_.7070_.v2_.{R}"),
    ]
    .into()
}

fn server_names(l: &Listener) -> Vec<String> {
    l.filter_chains
        .iter()
        .map(|c| {
            let m = c.filter_chain_match.as_ref().expect("a match");
            assert_eq!(m.server_names.len(), 1, "{}", c.name);
            assert!(m.destination_port.is_none() && m.transport_protocol.is_empty());
            m.server_names[0].clone()
        })
        .collect()
}

fn the_listener(m: &Mesh, p: &Proxy) -> Listener {
    let mut ls = listeners(m, p);
    assert_eq!(ls.len(), 1, "one listener: {ls:?}");
    ls.remove(0)
}

fn addresses(a: &ClusterLoadAssignment) -> Vec<String> {
    a.endpoints
        .iter()
        .flat_map(|l| &l.lb_endpoints)
        .map(|e| {
            let Some(HostIdentifier::Endpoint(ep)) = &e.host_identifier else {
                panic!("no endpoint")
            };
            let Some(AddressKind::SocketAddress(s)) =
                ep.address.as_ref().and_then(|a| a.address.as_ref())
            else {
                panic!("no socket address")
            };
            let Some(PortSpecifier::PortValue(port)) = s.port_specifier else {
                panic!("no port")
            };
            format!("{}:{port}", s.address)
        })
        .collect()
}

#[test]
fn gateways_are_routers_on_a_network_with_the_istio_label() {
    assert!(is_eastwest_gateway(&gateway()));
    assert!(!is_eastwest_gateway(&proxy()), "a sidecar");
    let mut sidecar_labelled = gateway();
    sidecar_labelled.node_type = NodeType::Sidecar;
    assert!(!is_eastwest_gateway(&sidecar_labelled));
    let mut ingress = gateway();
    ingress
        .labels
        .insert("istio".into(), "ingressgateway".into());
    assert!(!is_eastwest_gateway(&ingress));
    let mut no_network = gateway();
    no_network.network.clear();
    assert!(!is_eastwest_gateway(&no_network));
}

#[test]
fn listener_has_one_sni_chain_per_exported_port_and_subset() {
    let m = mesh(MESH);
    let l = the_listener(&m, &gateway());
    assert_eq!(l.name, "0.0.0.0_15443");
    let Some(AddressKind::SocketAddress(addr)) = l.address.as_ref().and_then(|a| a.address.clone())
    else {
        panic!("no address")
    };
    assert_eq!(addr.address, "0.0.0.0");
    assert_eq!(addr.port_specifier, Some(PortSpecifier::PortValue(15443)));
    assert_eq!(
        l.listener_filters
            .iter()
            .map(|f| f.name.as_str())
            .collect::<Vec<_>>(),
        ["envoy.filters.listener.tls_inspector"]
    );
    assert!(l.default_filter_chain.is_none(), "nothing else matches");
    assert_eq!(server_names(&l), expected_names());
    for c in &l.filter_chains {
        assert_eq!(c.filters.len(), 1);
        assert_eq!(c.filters[0].name, "envoy.filters.network.tcp_proxy");
        let Some(strait_proto::xds::envoy::config::listener::v3::filter::ConfigType::TypedConfig(
            any,
        )) = &c.filters[0].config_type
        else {
            panic!("no typed config")
        };
        let tcp: TcpProxy = decode(any);
        let name = &c.filter_chain_match.as_ref().unwrap().server_names[0];
        assert_eq!(
            tcp.cluster_specifier,
            Some(ClusterSpecifier::Cluster(name.clone()))
        );
        assert!(c.transport_socket.is_none(), "never terminates TLS");
    }
}

#[test]
fn clusters_are_sni_named_eds_without_tls() {
    let m = mesh(MESH);
    let cs = clusters(&m, &gateway());
    let names: Vec<String> = cs.iter().map(|c| c.name.clone()).collect();
    assert_eq!(names, expected_names());
    for c in &cs {
        let eds = c.eds_cluster_config.as_ref().expect("EDS");
        assert_eq!(eds.service_name, c.name);
        assert!(c.transport_socket.is_none() && c.transport_socket_matches.is_empty());
    }
    assert_eq!(all_endpoint_names(&m, &gateway()), expected_names());
    assert!(
        routes(&m, &gateway(), &["80".to_string()])[0]
            .virtual_hosts
            .is_empty()
    );
}

#[test]
fn endpoints_are_the_gateways_network_only_by_subset() {
    let m = mesh(MESH);
    let names = [
        format!("outbound_.9080_._.{R}"),
        format!("outbound_.9080_.v1_.{R}"),
        format!("outbound_.9080_.v2_.{R}"),
        format!("outbound_.7070_.v2_.{R}"),
        "outbound_.9080_._.ratings.default.svc.cluster.local".to_string(),
        "outbound_.9080_._.details.default.svc.cluster.local".to_string(),
        "outbound|9080||reviews.default.svc.cluster.local".to_string(),
    ];
    let out = endpoints(&m, &gateway(), &names);
    let got: Vec<(String, Vec<String>)> = out
        .iter()
        .map(|a| (a.cluster_name.clone(), addresses(a)))
        .collect();
    let want: Vec<(String, Vec<String>)> = [
        (
            &names[0],
            vec!["198.18.1.1:9080", "198.18.1.2:9080", "198.18.1.5:9080"],
        ),
        (&names[1], vec!["198.18.1.1:9080"]),
        (&names[2], vec!["198.18.1.2:9080", "198.18.1.5:9080"]),
        // 198.18.1.5 targets 15012 on this port: never routed.
        (&names[3], vec!["198.18.1.2:7070"]),
        (&names[4], vec![]),
        (&names[5], vec![]),
        (&names[6], vec![]),
    ]
    .into_iter()
    .map(|(n, a)| (n.clone(), a.into_iter().map(String::from).collect()))
    .collect();
    assert_eq!(got, want);
    for a in &out {
        for e in a.endpoints.iter().flat_map(|l| &l.lb_endpoints) {
            assert!(e.metadata.is_none(), "no tlsMode metadata on a gateway");
        }
    }
}

#[test]
fn the_other_networks_gateway_sees_its_own_services() {
    let m = mesh(MESH);
    let mut gw2 = gateway();
    gw2.network = "n2".into();
    let l = the_listener(&m, &gw2);
    assert_eq!(
        server_names(&l),
        [
            "outbound_.9080_._.ratings.default.svc.cluster.local".to_string(),
            format!("outbound_.9080_._.{R}"),
            format!("outbound_.9080_.v1_.{R}"),
            format!("outbound_.9080_.v2_.{R}"),
            format!("outbound_.7070_._.{R}"),
            format!("outbound_.7070_.v1_.{R}"),
            format!("outbound_.7070_.v2_.{R}"),
        ]
    );
    let a = endpoints(&m, &gw2, &[format!("outbound_.9080_._.{R}")]);
    assert_eq!(addresses(&a[0]), ["198.18.1.3:9080"]);
    let mut gw3 = gateway();
    gw3.network = "n3".into();
    assert!(listeners(&m, &gw3).is_empty(), "nothing on n3, no listener");
    assert!(clusters(&m, &gw3).is_empty());
}

#[test]
fn export_default_none_keeps_only_labelled_services() {
    let m = mesh(MESH).with_export_default(ExportDefault::None);
    let l = the_listener(&m, &gateway());
    assert_eq!(
        server_names(&l),
        ["outbound_.9080_._.productpage.default.svc.cluster.local"]
    );
}

#[test]
fn bind_address_comes_from_node_metadata() {
    let m = mesh(MESH);
    let p = Proxy {
        gateway_bind: Some("127.0.0.7".parse().unwrap()),
        ..gateway()
    };
    let l = the_listener(&m, &p);
    assert_eq!(l.name, "127.0.0.7_15443");
}

#[test]
fn output_is_deterministic_and_independent_of_document_order() {
    let docs: Vec<&str> = MESH.split("\n---\n").collect();
    let reversed: Vec<&str> = docs.iter().rev().copied().collect();
    let a = mesh(MESH);
    let b = mesh(&reversed.join("\n---\n"));
    let encode = |m: &Mesh| {
        let ls: Vec<Vec<u8>> = listeners(m, &gateway())
            .iter()
            .map(|l| l.encode_to_vec())
            .collect();
        let cs: Vec<Vec<u8>> = clusters(m, &gateway())
            .iter()
            .map(|c| c.encode_to_vec())
            .collect();
        (ls, cs)
    };
    assert_eq!(encode(&a), encode(&a));
    assert_eq!(encode(&a), encode(&b));
}

#[test]
fn sidecars_are_unaffected() {
    let m = mesh(MESH);
    let names: Vec<String> = clusters(&m, &proxy()).into_iter().map(|c| c.name).collect();
    assert!(names.contains(&format!("outbound|9080||{R}")), "{names:?}");
    assert!(!names.iter().any(|n| n.starts_with("outbound_.")));
}

#[test]
fn export_label_must_be_true_or_false() {
    let bad = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: x
  labels: {networking.strait.io/export: "yes"}
spec:
  hosts: [x.default.svc.cluster.local]
  ports: [{number: 80, name: http}]
"#;
    let err = crate::model::yaml::resources(bad, "default").unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("networking.strait.io/export") && text.contains("yes"),
        "{text}"
    );
}
