//! Tests of the generators: a mesh from YAML, a proxy literal, concrete output.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cds;
mod eds;
mod lds;
mod rds;
mod scope;
mod security;

use std::collections::BTreeMap;

use strait_proto::node::NodeType;
use strait_proto::xds::envoy::config::cluster::v3::Cluster;
use strait_proto::xds::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType};
use strait_proto::xds::google::protobuf::{Any, Duration};

use crate::model::mesh::Mesh;
use crate::model::yaml::resources;
use crate::xds::proxy::{Interception, Proxy};

/// The mesh of these documents (namespace `default` unless they say otherwise).
pub(super) fn mesh(yaml: &str) -> Mesh {
    Mesh::build(&resources(yaml, "default").unwrap())
}

/// A sidecar in `default`, network `n1`, cluster `c1`, locality `r1/z1/s1`, label `app: sleep`.
pub(super) fn proxy() -> Proxy {
    Proxy {
        id: "sidecar~198.18.0.5~sleep-1.default~default.svc.cluster.local".to_string(),
        node_type: NodeType::Sidecar,
        ip: "198.18.0.5".parse().unwrap(),
        namespace: "default".to_string(),
        workload_name: "sleep".to_string(),
        cluster_id: "c1".to_string(),
        network: "n1".to_string(),
        mesh_id: "mesh1".to_string(),
        labels: BTreeMap::from([("app".to_string(), "sleep".to_string())]),
        locality: "r1/z1/s1".parse().unwrap(),
        interception: Interception::Redirect,
        trust_domain: "cluster.local".to_string(),
        gateway_bind: None,
    }
}

pub(super) fn proxy_in(namespace: &str) -> Proxy {
    Proxy {
        namespace: namespace.to_string(),
        ..proxy()
    }
}

pub(super) fn decode<M: prost::Message + Default>(any: &Any) -> M {
    M::decode(any.value.as_slice()).unwrap()
}

pub(super) fn secs(seconds: i64) -> Option<Duration> {
    Some(Duration { seconds, nanos: 0 })
}

pub(super) fn find<'a>(clusters: &'a [Cluster], name: &str) -> &'a Cluster {
    clusters
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no cluster {name}"))
}

pub(super) fn discovery(c: &Cluster) -> DiscoveryType {
    match c.cluster_discovery_type {
        Some(ClusterDiscoveryType::Type(t)) => DiscoveryType::try_from(t).unwrap(),
        ref other => panic!("{}: no discovery type: {other:?}", c.name),
    }
}

/// `reviews` (HTTP 9080, STATIC, three versions) and `ratings` (HTTP 9080 and TCP 3306).
pub(super) const BOOKINFO: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews}
spec:
  hosts: [reviews.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 9080, name: http, protocol: HTTP}]
  endpoints:
  - {address: 198.18.1.1, labels: {version: v1}}
  - {address: 198.18.1.2, labels: {version: v2}}
  - {address: 198.18.1.3, labels: {version: v3}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ratings}
spec:
  hosts: [ratings.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - {number: 9080, name: http, protocol: HTTP}
  - {number: 3306, name: tcp-db, protocol: TCP, targetPort: 13306}
  endpoints:
  - {address: 198.18.2.1}
"#;

#[test]
fn protocols_follow_istio_rules() {
    use super::Protocol;
    let cases = [
        (Some("HTTP"), "x", Protocol::Http),
        (Some("http2"), "x", Protocol::Http2),
        (Some("GRPC"), "x", Protocol::Grpc),
        (Some("GRPC-Web"), "x", Protocol::Http),
        (Some("TCP"), "http", Protocol::Tcp),
        (Some("TLS"), "x", Protocol::Tcp),
        (None, "http", Protocol::Http),
        (None, "http-web", Protocol::Http),
        (None, "http2-api", Protocol::Http2),
        (None, "grpc", Protocol::Grpc),
        (None, "httpx", Protocol::Tcp),
        (None, "mysql", Protocol::Tcp),
    ];
    for (protocol, name, want) in cases {
        assert_eq!(Protocol::of(protocol, name), want, "{protocol:?} {name}");
    }
}

#[test]
fn cluster_names_parse_back() {
    let name = super::cluster_name(8080, "v1", "reviews.default.svc.cluster.local");
    assert_eq!(name, "outbound|8080|v1|reviews.default.svc.cluster.local");
    assert_eq!(
        super::parse_cluster_name(&name),
        Some((8080, "v1", "reviews.default.svc.cluster.local"))
    );
    assert_eq!(
        super::parse_cluster_name("outbound|80||*.example.com"),
        Some((80, "", "*.example.com"))
    );
    for bad in [
        "inbound|80||a",
        "outbound|x||a",
        "outbound|80|a",
        "outbound|80|a|b|c",
        "PassthroughCluster",
    ] {
        assert_eq!(super::parse_cluster_name(bad), None, "{bad}");
    }
}
