use strait_proto::xds::envoy::config::core::v3::address;
use strait_proto::xds::envoy::config::core::v3::socket_address::PortSpecifier;
use strait_proto::xds::envoy::config::endpoint::v3::ClusterLoadAssignment;
use strait_proto::xds::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;

use super::{BOOKINFO, mesh, proxy};
use crate::xds::generate::endpoints;

const REVIEWS: &str = "outbound|9080||reviews.default.svc.cluster.local";

fn addresses(la: &ClusterLoadAssignment) -> Vec<String> {
    la.endpoints
        .iter()
        .flat_map(|l| &l.lb_endpoints)
        .map(|e| {
            let Some(HostIdentifier::Endpoint(ep)) = &e.host_identifier else {
                panic!()
            };
            let Some(address::Address::SocketAddress(sa)) = &ep.address.as_ref().unwrap().address
            else {
                panic!()
            };
            let Some(PortSpecifier::PortValue(port)) = sa.port_specifier else {
                panic!()
            };
            format!("{}:{port}", sa.address)
        })
        .collect()
}

/// (locality, priority, addresses) per LocalityLbEndpoints.
fn layout(la: &ClusterLoadAssignment) -> Vec<(String, u32, Vec<String>)> {
    la.endpoints
        .iter()
        .map(|l| {
            let loc = l.locality.as_ref().unwrap();
            let name = [&loc.region, &loc.zone, &loc.sub_zone]
                .into_iter()
                .filter(|s| !s.is_empty())
                .cloned()
                .collect::<Vec<_>>()
                .join("/");
            let one = ClusterLoadAssignment {
                endpoints: vec![l.clone()],
                ..Default::default()
            };
            (name, l.priority, addresses(&one))
        })
        .collect()
}

fn one(yaml: &str, name: &str) -> ClusterLoadAssignment {
    let mut out = endpoints(&mesh(yaml), &proxy(), &[name.to_string()]);
    assert_eq!(out.len(), 1);
    out.remove(0)
}

#[test]
fn subsets_keep_only_matching_endpoints_and_target_ports_apply() {
    let dr = r#"
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews.default.svc.cluster.local
  subsets:
  - {name: v2, labels: {version: v2}}
  - {name: none, labels: {version: v9}}
"#;
    let yaml = format!("{BOOKINFO}{dr}");
    let names = [
        REVIEWS,
        "outbound|9080|v2|reviews.default.svc.cluster.local",
        "outbound|9080|none|reviews.default.svc.cluster.local",
        "outbound|3306||ratings.default.svc.cluster.local",
    ];
    let out = endpoints(&mesh(&yaml), &proxy(), &names.map(String::from));
    let got: Vec<(&str, Vec<String>)> = out
        .iter()
        .map(|la| (la.cluster_name.as_str(), addresses(la)))
        .collect();
    assert_eq!(
        got,
        [
            (
                names[0],
                vec![
                    "198.18.1.1:9080".into(),
                    "198.18.1.2:9080".into(),
                    "198.18.1.3:9080".into()
                ]
            ),
            (names[1], vec!["198.18.1.2:9080".into()]),
            (names[2], vec![]),
            (names[3], vec!["198.18.2.1:13306".into()]),
        ]
    );
    let lb = &out[0].endpoints[0];
    assert_eq!(lb.priority, 0);
    assert_eq!(
        lb.load_balancing_weight.unwrap().value,
        3,
        "sum of endpoint weights"
    );
    assert_eq!(lb.lb_endpoints[0].load_balancing_weight.unwrap().value, 1);
}

#[test]
fn unknown_or_invisible_names_get_empty_assignments() {
    let yaml = format!(
        "{BOOKINFO}---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: hidden, namespace: other}}\nspec:\n  hosts: [hidden.other.svc.cluster.local]\n  resolution: STATIC\n  exportTo: [.]\n  ports: [{{number: 80, name: http}}]\n  endpoints: [{{address: 198.18.9.9}}]\n"
    );
    let names = [
        "outbound|80||hidden.other.svc.cluster.local",
        "outbound|9999||reviews.default.svc.cluster.local",
        "outbound|9080|nosuchsubset|reviews.default.svc.cluster.local",
        "garbage",
    ];
    let out = endpoints(&mesh(&yaml), &proxy(), &names.map(String::from));
    assert_eq!(out.len(), 4);
    for (la, name) in out.iter().zip(names) {
        assert_eq!(la.cluster_name, name);
        assert!(la.endpoints.is_empty(), "{name}");
    }
}

#[test]
fn endpoints_on_other_networks_and_hostnames_never_appear() {
    let yaml = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews}
spec:
  hosts: [reviews.default.svc.cluster.local]
  resolution: NONE
  ports: [{number: 9080, name: http}]
  endpoints:
  - {address: 198.18.1.1, network: n1}
  - {address: 198.18.1.2}
  - {address: 198.18.1.3, network: n2}
  - {address: vm.example.com, network: n1}
  - {address: "2001:db8::1", network: n1}
"#;
    let la = one(yaml, REVIEWS);
    assert_eq!(
        addresses(&la),
        ["198.18.1.1:9080", "198.18.1.2:9080", "2001:db8::1:9080"]
    );
}

/// Endpoints in r1/z1/s1, r1/z1/s2, r1/z2, r2/z1, r3 and r4, and a DestinationRule.
fn localities(traffic_policy: &str) -> String {
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: reviews}}
spec:
  hosts: [reviews.default.svc.cluster.local]
  resolution: STATIC
  ports: [{{number: 9080, name: http}}]
  endpoints:
  - {{address: 198.18.1.1, network: n1, locality: r1/z1/s1, labels: {{version: v1}}}}
  - {{address: 198.18.1.2, network: n1, locality: r1/z1/s2, labels: {{version: v2}}}}
  - {{address: 198.18.1.3, network: n1, locality: r1/z2, labels: {{version: v1}}}}
  - {{address: 198.18.1.4, locality: r2/z1, labels: {{version: v1}}, network: ""}}
  - {{address: 198.18.1.5, network: n1, locality: r3, labels: {{version: v2}}}}
  - {{address: 198.18.1.6, network: n1, locality: r4, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews}}
spec:
  host: reviews.default.svc.cluster.local
  trafficPolicy:
{traffic_policy}
"#
    )
}

fn row(l: &str, p: u32, a: &str) -> (String, u32, Vec<String>) {
    (l.to_string(), p, vec![a.to_string()])
}

#[test]
fn default_priorities_need_outlier_detection() {
    let la = one(
        &localities("    outlierDetection: {consecutive5xxErrors: 3}"),
        REVIEWS,
    );
    assert_eq!(
        layout(&la),
        [
            row("r1/z1/s1", 0, "198.18.1.1:9080"),
            row("r1/z1/s2", 1, "198.18.1.2:9080"),
            row("r1/z2", 2, "198.18.1.3:9080"),
            row("r2/z1", 3, "198.18.1.4:9080"),
            row("r3", 3, "198.18.1.5:9080"),
            row("r4", 3, "198.18.1.6:9080"),
        ]
    );
    let la = one(
        &localities("    connectionPool: {tcp: {maxConnections: 5}}"),
        REVIEWS,
    );
    assert!(
        la.endpoints.iter().all(|l| l.priority == 0),
        "no outlier detection: no failover"
    );
    let disabled =
        "    outlierDetection: {}\n    loadBalancer: {localityLbSetting: {enabled: false}}";
    let la = one(&localities(disabled), REVIEWS);
    assert!(
        la.endpoints.iter().all(|l| l.priority == 0),
        "locality LB disabled"
    );
}

#[test]
fn priorities_are_contiguous_from_zero() {
    let yaml = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews}
spec:
  hosts: [reviews.default.svc.cluster.local]
  resolution: STATIC
  ports: [{number: 9080, name: http}]
  endpoints:
  - {address: 198.18.1.3, network: n1, locality: r1/z2}
  - {address: 198.18.1.5, network: n1, locality: r3}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews.default.svc.cluster.local
  trafficPolicy: {outlierDetection: {}}
"#;
    let la = one(yaml, REVIEWS);
    assert_eq!(
        layout(&la),
        [
            row("r1/z2", 0, "198.18.1.3:9080"),
            row("r3", 1, "198.18.1.5:9080")
        ]
    );
}

#[test]
fn failover_names_the_next_region() {
    let policy = "    outlierDetection: {}\n    loadBalancer:\n      localityLbSetting:\n        failover: [{from: r2, to: r4}, {from: r1, to: r3}]";
    let la = one(&localities(policy), REVIEWS);
    assert_eq!(
        layout(&la),
        [
            row("r1/z1/s1", 0, "198.18.1.1:9080"),
            row("r1/z1/s2", 1, "198.18.1.2:9080"),
            row("r1/z2", 2, "198.18.1.3:9080"),
            row("r3", 3, "198.18.1.5:9080"),
            row("r2/z1", 4, "198.18.1.4:9080"),
            row("r4", 4, "198.18.1.6:9080"),
        ]
    );
}

#[test]
fn failover_priority_orders_by_matching_labels() {
    // The proxy: network n1, region r1, label app=sleep; endpoint .4 has no network.
    let policy = "    outlierDetection: {}\n    loadBalancer:\n      localityLbSetting:\n        failoverPriority: [topology.istio.io/network, topology.kubernetes.io/region]";
    let la = one(&localities(policy), REVIEWS);
    let flat: Vec<(u32, Vec<String>)> = layout(&la).into_iter().map(|(_, p, a)| (p, a)).collect();
    let at = |p: u32| -> Vec<String> {
        flat.iter()
            .filter(|(q, _)| *q == p)
            .flat_map(|(_, a)| a.clone())
            .collect()
    };
    assert_eq!(
        at(0),
        ["198.18.1.1:9080", "198.18.1.2:9080", "198.18.1.3:9080"],
        "network and region"
    );
    assert_eq!(
        at(1),
        ["198.18.1.5:9080", "198.18.1.6:9080"],
        "network only"
    );
    assert_eq!(at(2), ["198.18.1.4:9080"], "neither");
    assert!(flat.iter().all(|(p, _)| *p <= 2));

    // `key=value` overrides the proxy's value; a missing proxy label equals a missing one.
    let policy = "    outlierDetection: {}\n    loadBalancer:\n      localityLbSetting:\n        failoverPriority: [version=v2]";
    let la = one(&localities(policy), REVIEWS);
    let p0: Vec<String> = la
        .endpoints
        .iter()
        .filter(|l| l.priority == 0)
        .flat_map(|l| {
            addresses(&ClusterLoadAssignment {
                endpoints: vec![l.clone()],
                ..Default::default()
            })
        })
        .collect();
    assert_eq!(
        p0,
        ["198.18.1.2:9080", "198.18.1.5:9080", "198.18.1.6:9080"]
    );
    assert_eq!(la.endpoints.iter().map(|l| l.priority).max(), Some(1));
}

#[test]
fn distribute_sets_locality_weights() {
    let policy = "    loadBalancer:\n      localityLbSetting:\n        distribute:\n        - from: r9/*\n          to: {r9/*: 100}\n        - from: r1/z1/*\n          to: {r1/z1/*: 80, r1/*: 15, r3: 5}";
    let la = one(&localities(policy), REVIEWS);
    let weights: Vec<(String, u32, u32)> = la
        .endpoints
        .iter()
        .map(|l| {
            let loc = l.locality.as_ref().unwrap();
            (
                format!("{}/{}/{}", loc.region, loc.zone, loc.sub_zone),
                l.priority,
                l.load_balancing_weight.unwrap().value,
            )
        })
        .collect();
    assert_eq!(
        weights,
        [
            ("r1/z1/s1".to_string(), 0, 40),
            ("r1/z1/s2".to_string(), 0, 40),
            ("r1/z2/".to_string(), 0, 15),
            ("r3//".to_string(), 0, 5),
        ],
        "r2 and r4 get no traffic"
    );
}

/// `svc` with endpoints on n1 (the proxy's), n2 (behind two gateways) and n3 (no gateway).
const PARTITIONED: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api}
spec:
  hosts: [api.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 8080, name: http, protocol: HTTP}]
  endpoints:
  - {address: 198.18.1.1, network: n1, locality: r1/z1/s1, labels: {security.istio.io/tlsMode: istio, version: v1}}
  - {address: 198.18.2.1, network: n2, locality: r1/z2/s1, labels: {security.istio.io/tlsMode: istio, version: v1}}
  - {address: 198.18.2.2, network: n2, locality: r1/z2/s1, labels: {security.istio.io/tlsMode: istio, version: v2}}
  - {address: 198.18.2.3, network: n2, locality: r2/z1/s1, labels: {security.istio.io/tlsMode: istio, version: v1}}
  - {address: 198.18.2.4, network: n2, locality: r1/z2/s1, labels: {version: v1}}
  - {address: 198.18.3.1, network: n3, locality: r1/z1/s1, labels: {security.istio.io/tlsMode: istio}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: eastwest-n2
  namespace: istio-system
  labels: {topology.istio.io/network: n2}
spec:
  hosts: [eastwest.n2.example]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 15443, name: tls, protocol: TLS}]
  endpoints: [{address: 198.18.20.1}, {address: 198.18.20.2}]
"#;

const API: &str = "outbound|8080||api.default.svc.cluster.local";

#[test]
fn other_networks_appear_as_their_gateways_weighted_by_what_is_behind_them() {
    // No outlier detection, so no failover priorities: everything at priority 0.
    let la = one(PARTITIONED, API);
    let mut got = layout(&la);
    got.iter_mut().for_each(|(_, _, a)| a.sort());
    assert_eq!(
        got,
        vec![
            (
                "r1/z1/s1".to_string(),
                0,
                vec!["198.18.1.1:8080".to_string()]
            ),
            (
                "r1/z2/s1".to_string(),
                0,
                vec![
                    "198.18.20.1:15443".to_string(),
                    "198.18.20.2:15443".to_string()
                ]
            ),
            (
                "r2/z1/s1".to_string(),
                0,
                vec![
                    "198.18.20.1:15443".to_string(),
                    "198.18.20.2:15443".to_string()
                ]
            ),
        ],
        "n2's mTLS-capable endpoints become its gateways, per locality; n3 (no gateway) and \
         n2's endpoint without a sidecar are left out; no address of another network leaks"
    );
    // Two mTLS endpoints behind r1/z2 split across two gateways: weight 1 each; they go over
    // mutual TLS (the tlsMode metadata selects the cluster's mTLS socket, whose SNI the
    // gateway routes on).
    let z2 = &la.endpoints[1];
    for e in &z2.lb_endpoints {
        assert_eq!(e.load_balancing_weight.as_ref().map(|w| w.value), Some(1));
        assert!(e.metadata.is_some(), "gateway endpoints must use mTLS");
    }
    assert_eq!(z2.load_balancing_weight.as_ref().map(|w| w.value), Some(2));
}

#[test]
fn subsets_unexported_services_and_proxies_without_a_network() {
    let dr = "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: api}\nspec:\n  host: api.default.svc.cluster.local\n  subsets: [{name: v2, labels: {version: v2}}]\n";
    let yaml = format!("{PARTITIONED}{dr}");
    let v2 = one(&yaml, "outbound|8080|v2|api.default.svc.cluster.local");
    let mut a = addresses(&v2);
    a.sort();
    assert_eq!(
        a,
        ["198.18.20.1:15443", "198.18.20.2:15443"],
        "only the gateway stands for n2's v2"
    );

    let unexported = PARTITIONED.replacen(
        "metadata: {name: api}",
        "metadata: {name: api, labels: {networking.strait.io/export: \"false\"}}",
        1,
    );
    assert_eq!(addresses(&one(&unexported, API)), ["198.18.1.1:8080"]);

    let mut lonely = proxy();
    lonely.network = String::new();
    let la = endpoints(&mesh(PARTITIONED), &lonely, &[API.to_string()]);
    assert!(
        addresses(&la[0]).iter().all(|a| !a.ends_with(":15443")),
        "a proxy on no network gets no gateway endpoints"
    );
    let mut direct = addresses(&la[0]);
    direct.sort();
    let everywhere = [
        "198.18.1.1:8080",
        "198.18.2.1:8080",
        "198.18.2.2:8080",
        "198.18.2.3:8080",
        "198.18.2.4:8080",
        "198.18.3.1:8080",
    ];
    assert_eq!(
        direct, everywhere,
        "as Istio's InNetwork, a proxy on no network reaches every network's endpoints directly"
    );
}

#[test]
fn gateway_endpoints_keep_their_locality_for_failover() {
    let dr = "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: api}\nspec:\n  host: api.default.svc.cluster.local\n  trafficPolicy: {outlierDetection: {consecutive5xxErrors: 5}}\n";
    let yaml = format!("{PARTITIONED}{dr}");
    let got: Vec<(String, u32)> = layout(&one(&yaml, API))
        .into_iter()
        .map(|(l, p, _)| (l, p))
        .collect();
    assert_eq!(
        got,
        [
            ("r1/z1/s1".to_string(), 0),
            ("r1/z2/s1".to_string(), 1),
            ("r2/z1/s1".to_string(), 2)
        ],
        "same subzone first, then the same region through n2's gateway, then the rest"
    );
}
