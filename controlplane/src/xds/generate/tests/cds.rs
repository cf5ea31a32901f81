use strait_proto::xds::envoy::config::cluster::v3::cluster::common_lb_config::LocalityConfigSpecifier;
use strait_proto::xds::envoy::config::cluster::v3::cluster::{DiscoveryType, DnsLookupFamily, LbPolicy};
use strait_proto::xds::envoy::config::core::v3::address;
use strait_proto::xds::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use strait_proto::xds::envoy::config::core::v3::socket_address::PortSpecifier;
use strait_proto::xds::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use strait_proto::xds::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use strait_proto::xds::envoy::extensions::upstreams::http::v3::http_protocol_options::UpstreamProtocolOptions;
use strait_proto::xds::envoy::extensions::upstreams::http::v3::http_protocol_options::explicit_http_config::ProtocolConfig;

use super::{BOOKINFO, decode, discovery, find, mesh, proxy, secs};
use crate::xds::generate::{all_endpoint_names, clusters};

const OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

fn with_bookinfo(extra: &str) -> String {
    format!("{BOOKINFO}---\n{extra}")
}

const EXTERNAL: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: external}
spec:
  hosts: [api.example.com]
  resolution: DNS
  ports: [{number: 443, name: tls, protocol: TLS}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: logical}
spec:
  hosts: [db.example.com]
  resolution: DNS_ROUND_ROBIN
  ports: [{number: 5432, name: tcp, protocol: TCP}]
  endpoints:
  - {address: db1.example.com}
  - {address: db2.example.com}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: passthrough}
spec:
  hosts: [legacy.example.com]
  resolution: NONE
  ports: [{number: 8080, name: http, protocol: HTTP}]
"#;

#[test]
fn names_types_and_timeouts() {
    let dr = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews.default.svc.cluster.local
  trafficPolicy:
    connectionPool: {tcp: {connectTimeout: 3s}}
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
"#;
    let m = mesh(&with_bookinfo(&format!("{dr}---\n{EXTERNAL}")));
    let cs = clusters(&m, &proxy());
    let names: Vec<&str> = cs.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "outbound|443||api.example.com",
            "outbound|5432||db.example.com",
            "outbound|8080||legacy.example.com",
            "outbound|9080||ratings.default.svc.cluster.local",
            "outbound|3306||ratings.default.svc.cluster.local",
            "outbound|9080||reviews.default.svc.cluster.local",
            "outbound|9080|v1|reviews.default.svc.cluster.local",
            "outbound|9080|v2|reviews.default.svc.cluster.local",
            "InboundPassthroughCluster",
            "BlackHoleCluster",
            "PassthroughCluster",
        ]
    );
    let v1 = find(&cs, "outbound|9080|v1|reviews.default.svc.cluster.local");
    assert_eq!(discovery(v1), DiscoveryType::Eds);
    assert_eq!(v1.connect_timeout, secs(3));
    assert_eq!(
        v1.lb_policy,
        LbPolicy::LeastRequest as i32,
        "Istio's default"
    );
    let eds = v1.eds_cluster_config.as_ref().unwrap();
    assert_eq!(eds.service_name, v1.name);
    let source = eds.eds_config.as_ref().unwrap();
    assert_eq!(source.resource_api_version, 2, "V3");
    assert!(matches!(
        source.config_source_specifier,
        Some(ConfigSourceSpecifier::Ads(_))
    ));
    let thresholds = &v1.circuit_breakers.as_ref().unwrap().thresholds[0];
    assert_eq!(thresholds.max_connections.unwrap().value, u32::MAX);
    assert_eq!(thresholds.max_retries.unwrap().value, u32::MAX);
    assert!(v1.outlier_detection.is_none());
    assert_eq!(
        find(&cs, "outbound|9080||ratings.default.svc.cluster.local").connect_timeout,
        secs(10)
    );

    let dns = find(&cs, "outbound|443||api.example.com");
    assert_eq!(discovery(dns), DiscoveryType::StrictDns);
    assert_eq!(dns.dns_lookup_family, DnsLookupFamily::V4Only as i32);
    assert_eq!(addresses(dns), [("api.example.com".to_string(), 443)]);

    let logical = find(&cs, "outbound|5432||db.example.com");
    assert_eq!(discovery(logical), DiscoveryType::LogicalDns);
    assert_eq!(
        addresses(logical),
        [("db1.example.com".to_string(), 5432)],
        "one endpoint only"
    );

    let none = find(&cs, "outbound|8080||legacy.example.com");
    assert_eq!(discovery(none), DiscoveryType::OriginalDst);
    assert_eq!(none.lb_policy, LbPolicy::ClusterProvided as i32);
    assert!(none.load_assignment.is_none() && none.eds_cluster_config.is_none());

    let blackhole = find(&cs, "BlackHoleCluster");
    assert_eq!(discovery(blackhole), DiscoveryType::Static);
    assert!(blackhole.load_assignment.is_none());
    let passthrough = find(&cs, "PassthroughCluster");
    assert_eq!(discovery(passthrough), DiscoveryType::OriginalDst);
    assert_eq!(passthrough.lb_policy, LbPolicy::ClusterProvided as i32);
}

fn addresses(c: &strait_proto::xds::envoy::config::cluster::v3::Cluster) -> Vec<(String, u32)> {
    let la = c.load_assignment.as_ref().unwrap();
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
            (sa.address.clone(), port)
        })
        .collect()
}

#[test]
fn outlier_detection_maps_as_istio_does() {
    let dr = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews.default.svc.cluster.local
  trafficPolicy:
    outlierDetection:
      consecutive5xxErrors: 7
      consecutiveGatewayErrors: 0
      interval: 5s
      baseEjectionTime: 1m
      maxEjectionPercent: 50
      minHealthPercent: 20
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ratings}
spec:
  host: ratings.default.svc.cluster.local
  trafficPolicy:
    outlierDetection: {}
"#;
    let cs = clusters(&mesh(&with_bookinfo(dr)), &proxy());
    let c = find(&cs, "outbound|9080||reviews.default.svc.cluster.local");
    let od = c.outlier_detection.as_ref().unwrap();
    assert_eq!(od.consecutive_5xx.unwrap().value, 7);
    assert_eq!(od.enforcing_consecutive_5xx.unwrap().value, 100);
    assert_eq!(od.consecutive_gateway_failure.unwrap().value, 0);
    assert_eq!(od.enforcing_consecutive_gateway_failure.unwrap().value, 0);
    assert_eq!(od.interval, secs(5));
    assert_eq!(od.base_ejection_time, secs(60));
    assert_eq!(od.max_ejection_percent.unwrap().value, 50);
    assert_eq!(od.enforcing_success_rate.unwrap().value, 0);
    let panic = c
        .common_lb_config
        .as_ref()
        .unwrap()
        .healthy_panic_threshold
        .as_ref();
    assert_eq!(panic.unwrap().value, 20.0);

    let c = find(&cs, "outbound|3306||ratings.default.svc.cluster.local");
    let od = c.outlier_detection.as_ref().unwrap();
    assert_eq!(od.consecutive_5xx.unwrap().value, 5);
    assert_eq!(od.enforcing_consecutive_5xx.unwrap().value, 100);
    assert!(od.consecutive_gateway_failure.is_none());
    assert_eq!(od.interval, secs(10));
    assert_eq!(od.base_ejection_time, secs(30));
    assert_eq!(od.max_ejection_percent.unwrap().value, 10);
    let panic = c
        .common_lb_config
        .as_ref()
        .unwrap()
        .healthy_panic_threshold
        .as_ref();
    assert_eq!(panic.unwrap().value, 0.0, "panic mode off, as in Istio");
}

#[test]
fn subset_policy_replaces_fields_of_the_top_level_one() {
    let dr = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews.default.svc.cluster.local
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN}
    connectionPool:
      tcp: {maxConnections: 100}
      http: {http1MaxPendingRequests: 10, http2MaxRequests: 20, maxRetries: 3, maxRequestsPerConnection: 5, idleTimeout: 30s}
  subsets:
  - {name: v1, labels: {version: v1}}
  - name: v2
    labels: {version: v2}
    trafficPolicy:
      loadBalancer: {simple: RANDOM}
  - name: v3
    labels: {version: v3}
    trafficPolicy:
      loadBalancer: {simple: PASSTHROUGH}
      connectionPool: {tcp: {maxConnections: 1}}
"#;
    let cs = clusters(&mesh(&with_bookinfo(dr)), &proxy());
    let top = find(&cs, "outbound|9080||reviews.default.svc.cluster.local");
    assert_eq!(top.lb_policy, LbPolicy::RoundRobin as i32);
    let t = &top.circuit_breakers.as_ref().unwrap().thresholds[0];
    let values = [
        t.max_connections,
        t.max_pending_requests,
        t.max_requests,
        t.max_retries,
    ];
    assert_eq!(values.map(|v| v.unwrap().value), [100, 10, 20, 3]);
    let options: HttpProtocolOptions = decode(&top.typed_extension_protocol_options[OPTIONS]);
    let common = options.common_http_protocol_options.as_ref().unwrap();
    assert_eq!(common.max_requests_per_connection.unwrap().value, 5);
    assert_eq!(common.idle_timeout, secs(30));
    let Some(UpstreamProtocolOptions::ExplicitHttpConfig(explicit)) =
        options.upstream_protocol_options
    else {
        panic!("Envoy requires upstream_protocol_options")
    };
    assert!(matches!(
        explicit.protocol_config,
        Some(ProtocolConfig::HttpProtocolOptions(_))
    ));

    let v1 = find(&cs, "outbound|9080|v1|reviews.default.svc.cluster.local");
    assert_eq!(
        v1.lb_policy,
        LbPolicy::RoundRobin as i32,
        "inherits the top-level policy"
    );
    let v2 = find(&cs, "outbound|9080|v2|reviews.default.svc.cluster.local");
    assert_eq!(v2.lb_policy, LbPolicy::Random as i32);
    assert!(
        v2.typed_extension_protocol_options.contains_key(OPTIONS),
        "pool inherited"
    );
    let v3 = find(&cs, "outbound|9080|v3|reviews.default.svc.cluster.local");
    assert_eq!(discovery(v3), DiscoveryType::OriginalDst, "PASSTHROUGH");
    assert_eq!(v3.lb_policy, LbPolicy::ClusterProvided as i32);
    assert!(v3.eds_cluster_config.is_none());
    let t = &v3.circuit_breakers.as_ref().unwrap().thresholds[0];
    assert_eq!(t.max_connections.unwrap().value, 1);
    assert_eq!(
        t.max_pending_requests.unwrap().value,
        u32::MAX,
        "the whole pool is replaced"
    );
    assert!(v3.typed_extension_protocol_options.is_empty());
}

#[test]
fn http2_and_grpc_ports_speak_http2_upstream() {
    let yaml = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api}
spec:
  hosts: [api.default.svc.cluster.local]
  resolution: STATIC
  ports:
  - {number: 7070, name: grpc}
  - {number: 8080, name: h, protocol: HTTP2}
  - {number: 9090, name: http-web}
  - {number: 5000, name: tcp}
  endpoints: [{address: 198.18.3.1}]
"#;
    let cs = clusters(&mesh(yaml), &proxy());
    for port in [7070, 8080] {
        let c = find(
            &cs,
            &format!("outbound|{port}||api.default.svc.cluster.local"),
        );
        let options: HttpProtocolOptions = decode(&c.typed_extension_protocol_options[OPTIONS]);
        assert!(options.common_http_protocol_options.is_none());
        let Some(UpstreamProtocolOptions::ExplicitHttpConfig(explicit)) =
            options.upstream_protocol_options
        else {
            panic!()
        };
        assert!(
            matches!(
                explicit.protocol_config,
                Some(ProtocolConfig::Http2ProtocolOptions(_))
            ),
            "{port}"
        );
    }
    for port in [9090, 5000] {
        let c = find(
            &cs,
            &format!("outbound|{port}||api.default.svc.cluster.local"),
        );
        assert!(
            c.typed_extension_protocol_options.is_empty(),
            "{port}: HTTP/1.1 needs no option"
        );
    }
}

#[test]
fn locality_weighted_lb_only_when_locality_rules_can_act() {
    let dr = |name: &str, host: &str, policy: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: {name}}}\nspec:\n  host: {host}\n  trafficPolicy:\n{policy}\n---\n"
        )
    };
    let failover =
        "    loadBalancer:\n      localityLbSetting:\n        failover: [{from: r1, to: r2}]\n";
    let distribute = "    loadBalancer:\n      localityLbSetting:\n        distribute: [{from: 'r1/*', to: {'r1/*': 100}}]\n";
    let outlier = "    outlierDetection: {}\n";
    let yaml = format!(
        "{}{}{BOOKINFO}",
        dr("a", "reviews", failover),
        dr("b", "ratings", &format!("{distribute}{outlier}")),
    );
    let cs = clusters(&mesh(&yaml), &proxy());
    let specifier = |name: &str| {
        find(&cs, name)
            .common_lb_config
            .as_ref()
            .and_then(|l| l.locality_config_specifier)
    };
    assert_eq!(
        specifier("outbound|9080||reviews.default.svc.cluster.local"),
        None,
        "no outlier detection"
    );
    assert!(matches!(
        specifier("outbound|9080||ratings.default.svc.cluster.local"),
        Some(LocalityConfigSpecifier::LocalityWeightedLbConfig(_))
    ));
}

#[test]
fn endpoint_names_are_the_eds_clusters() {
    let m = mesh(&with_bookinfo(EXTERNAL));
    assert_eq!(
        all_endpoint_names(&m, &proxy()),
        [
            "outbound|9080||ratings.default.svc.cluster.local",
            "outbound|3306||ratings.default.svc.cluster.local",
            "outbound|9080||reviews.default.svc.cluster.local",
        ]
    );
}
