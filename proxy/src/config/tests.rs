//! Decoding: the shapes straitd emits decode field for field; what we do not implement, and
//! hostile input, is refused with the resource's name and the field path.
#![allow(clippy::unwrap_used, clippy::collapsible_if)]

use std::collections::HashMap;

use strait_proto::xds::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, DiscoveryType, EdsClusterConfig, LbPolicy as EnvoyLb,
    TransportSocketMatch as EnvoyTsm,
};
use strait_proto::xds::envoy::config::cluster::v3::{
    CircuitBreakers as EnvoyBreakers, Cluster as EnvoyCluster, OutlierDetection as EnvoyOd,
    circuit_breakers::Thresholds,
};
use strait_proto::xds::envoy::config::core::v3::socket_address::PortSpecifier;
use strait_proto::xds::envoy::config::core::v3::{
    Address, AggregatedConfigSource, ConfigSource, SocketAddress, TransportSocket, address,
    config_source::ConfigSourceSpecifier, transport_socket,
};
use strait_proto::xds::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use strait_proto::xds::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint as EnvoyEndpoint, LbEndpoint, LocalityLbEndpoints,
};
use strait_proto::xds::envoy::config::listener::v3::{
    Filter, FilterChain as EnvoyChain, FilterChainMatch as EnvoyFcm, Listener as EnvoyListener,
    ListenerFilter, filter, listener_filter,
};
use strait_proto::xds::envoy::config::rbac::v3::{Permission, Policy, Rbac, permission};
use strait_proto::xds::envoy::config::route::v3::route::Action;
use strait_proto::xds::envoy::config::route::v3::route_action::ClusterSpecifier as RouteCs;
use strait_proto::xds::envoy::config::route::v3::route_match::{ConnectMatcher, PathSpecifier};
use strait_proto::xds::envoy::config::route::v3::weighted_cluster::ClusterWeight;
use strait_proto::xds::envoy::config::route::v3::{
    HeaderMatcher, RetryPolicy as EnvoyRetry, Route as EnvoyRoute, RouteAction,
    RouteConfiguration, RouteMatch as EnvoyRm, VirtualHost as EnvoyVh, WeightedCluster,
    header_matcher::HeaderMatchSpecifier,
};
use strait_proto::xds::envoy::extensions::filters::common::fault::v3::FaultDelay as EnvoyDelay;
use strait_proto::xds::envoy::extensions::filters::common::fault::v3::fault_delay::FaultDelaySecifier;
use strait_proto::xds::envoy::extensions::filters::http::fault::v3::HttpFault;
use strait_proto::xds::envoy::extensions::filters::http::rbac::v3::Rbac as HttpRbac;
use strait_proto::xds::envoy::extensions::filters::http::router::v3::Router;
use strait_proto::xds::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use strait_proto::xds::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use strait_proto::xds::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager as EnvoyHcm, HttpFilter as EnvoyHttpFilter, Rds, http_filter,
};
use strait_proto::xds::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy as EnvoyTcp;
use strait_proto::xds::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::ClusterSpecifier as TcpCs;
use strait_proto::xds::envoy::extensions::transport_sockets::tls::v3::common_tls_context::{
    CombinedCertificateValidationContext, ValidationContextType,
};
use strait_proto::xds::envoy::extensions::transport_sockets::tls::v3::subject_alt_name_matcher::SanType as EnvoySan;
use strait_proto::xds::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, SdsSecretConfig,
    SubjectAltNameMatcher, UpstreamTlsContext,
};
use strait_proto::xds::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use strait_proto::xds::envoy::r#type::matcher::v3::{RegexMatcher, StringMatcher};
use strait_proto::xds::envoy::r#type::v3::FractionalPercent;
use strait_proto::xds::google::protobuf::{
    Any, BoolValue, Duration as PbDuration, Struct, UInt32Value, Value, value::Kind as VKind,
};
use strait_proto::xds::to_any;

use super::*;

fn addr(ip: &str, port: u32) -> Option<Address> {
    Some(Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: ip.into(),
            port_specifier: Some(PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    })
}

fn u32v(value: u32) -> Option<UInt32Value> {
    Some(UInt32Value { value })
}

fn ads() -> Option<ConfigSource> {
    Some(ConfigSource {
        config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        ..Default::default()
    })
}

fn secs(seconds: i64) -> Option<PbDuration> {
    Some(PbDuration { seconds, nanos: 0 })
}

fn net_filter(name: &str, any: Any) -> Filter {
    Filter {
        name: name.into(),
        config_type: Some(filter::ConfigType::TypedConfig(any)),
    }
}

fn http_filter(name: &str, any: Any) -> EnvoyHttpFilter {
    EnvoyHttpFilter {
        name: name.into(),
        config_type: Some(http_filter::ConfigType::TypedConfig(any)),
        ..Default::default()
    }
}

fn sds(name: &str) -> SdsSecretConfig {
    SdsSecretConfig {
        name: name.into(),
        sds_config: ads(),
    }
}

fn common_tls(sans: &[&str]) -> CommonTlsContext {
    CommonTlsContext {
        alpn_protocols: vec!["istio-peer-exchange".into(), "istio".into()],
        tls_certificate_sds_secret_configs: vec![sds("default")],
        validation_context_type: Some(ValidationContextType::CombinedValidationContext(
            CombinedCertificateValidationContext {
                default_validation_context: Some(CertificateValidationContext {
                    match_typed_subject_alt_names: sans
                        .iter()
                        .map(|s| SubjectAltNameMatcher {
                            san_type: EnvoySan::Uri as i32,
                            matcher: Some(StringMatcher {
                                match_pattern: Some(MatchPattern::Exact(s.to_string())),
                                ..Default::default()
                            }),
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                }),
                validation_context_sds_secret_config: Some(sds("ROOTCA")),
                ..Default::default()
            },
        )),
        ..Default::default()
    }
}

fn rbac_rules() -> Rbac {
    Rbac {
        policies: HashMap::from([(
            "ns[bound]-policy[viewers]-rule[0]".to_string(),
            Policy {
                permissions: vec![Permission {
                    rule: Some(permission::Rule::Any(true)),
                }],
                ..Default::default()
            },
        )]),
        ..Default::default()
    }
}

/// straitd's PERMISSIVE inbound HTTP listener and its bound outbound HTTP and TCP ones.
fn listeners() -> Vec<EnvoyListener> {
    let inbound_hcm = EnvoyHcm {
        stat_prefix: "inbound_7080".into(),
        route_specifier: Some(RouteSpecifier::RouteConfig(route_config("inbound|7080||"))),
        http_filters: vec![
            http_filter(
                "envoy.filters.http.rbac",
                to_any(&HttpRbac {
                    rules: Some(rbac_rules()),
                    ..Default::default()
                }),
            ),
            http_filter("envoy.filters.http.router", to_any(&Router::default())),
        ],
        normalize_path: Some(BoolValue { value: true }),
        merge_slashes: true,
        forward_client_cert_details: 2,
        ..Default::default()
    };
    let tls = TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(to_any(
            &DownstreamTlsContext {
                common_tls_context: Some(common_tls(&[])),
                require_client_certificate: Some(BoolValue { value: true }),
                ..Default::default()
            },
        ))),
    };
    let chain = |name: &str, tp: &str, tls: Option<TransportSocket>| EnvoyChain {
        name: name.into(),
        filter_chain_match: Some(EnvoyFcm {
            transport_protocol: tp.into(),
            ..Default::default()
        }),
        filters: vec![net_filter(
            "envoy.filters.network.http_connection_manager",
            to_any(&inbound_hcm),
        )],
        transport_socket: tls,
        ..Default::default()
    };
    let inbound = EnvoyListener {
        name: "198.18.0.1_7080".into(),
        address: addr("198.18.0.1", 7080),
        filter_chains: vec![
            chain("mtls", "tls", Some(tls)),
            chain("plaintext", "raw_buffer", None),
        ],
        listener_filters: vec![ListenerFilter {
            name: "envoy.filters.listener.tls_inspector".into(),
            config_type: Some(listener_filter::ConfigType::TypedConfig(to_any(
                &TlsInspector::default(),
            ))),
            ..Default::default()
        }],
        traffic_direction: 1,
        ..Default::default()
    };
    let outbound_hcm = EnvoyHcm {
        stat_prefix: "outbound_9080".into(),
        route_specifier: Some(RouteSpecifier::Rds(Rds {
            config_source: ads(),
            route_config_name: "9080".into(),
        })),
        http_filters: vec![
            http_filter("envoy.filters.http.fault", to_any(&HttpFault::default())),
            http_filter("envoy.filters.http.router", to_any(&Router::default())),
        ],
        ..Default::default()
    };
    let outbound = EnvoyListener {
        name: "198.18.0.1_9080".into(),
        address: addr("198.18.0.1", 9080),
        filter_chains: vec![EnvoyChain {
            filters: vec![net_filter(
                "envoy.filters.network.http_connection_manager",
                to_any(&outbound_hcm),
            )],
            ..Default::default()
        }],
        traffic_direction: 2,
        ..Default::default()
    };
    let tcp = EnvoyListener {
        name: "virtualOutbound".into(),
        address: addr("0.0.0.0", 15001),
        use_original_dst: Some(BoolValue { value: true }),
        filter_chains: vec![EnvoyChain {
            filter_chain_match: Some(EnvoyFcm {
                destination_port: u32v(15001),
                ..Default::default()
            }),
            filters: vec![net_filter(
                "envoy.filters.network.tcp_proxy",
                to_any(&EnvoyTcp {
                    stat_prefix: "BlackHoleCluster".into(),
                    cluster_specifier: Some(TcpCs::Cluster("BlackHoleCluster".into())),
                    ..Default::default()
                }),
            )],
            ..Default::default()
        }],
        ..Default::default()
    };
    vec![inbound, outbound, tcp]
}

fn route_config(name: &str) -> RouteConfiguration {
    let per_filter = HashMap::from([(
        "envoy.filters.http.fault".to_string(),
        to_any(&HttpFault {
            delay: Some(EnvoyDelay {
                percentage: Some(FractionalPercent {
                    numerator: 100_000,
                    denominator: 2,
                }),
                fault_delay_secifier: Some(FaultDelaySecifier::FixedDelay(PbDuration {
                    seconds: 0,
                    nanos: 100_000_000,
                })),
            }),
            ..Default::default()
        }),
    )]);
    let headers = vec![
        HeaderMatcher {
            name: ":method".into(),
            header_match_specifier: Some(HeaderMatchSpecifier::StringMatch(StringMatcher {
                match_pattern: Some(MatchPattern::Exact("POST".into())),
                ..Default::default()
            })),
            ..Default::default()
        },
        HeaderMatcher {
            name: "x-canary".into(),
            header_match_specifier: Some(HeaderMatchSpecifier::PresentMatch(true)),
            ..Default::default()
        },
    ];
    let routes = vec![
        EnvoyRoute {
            name: "headers".into(),
            r#match: Some(EnvoyRm {
                path_specifier: Some(PathSpecifier::SafeRegex(RegexMatcher {
                    regex: "/v[0-9]+/.*".into(),
                    engine_type: None,
                })),
                case_sensitive: Some(BoolValue { value: false }),
                headers,
                ..Default::default()
            }),
            action: Some(Action::Route(RouteAction {
                cluster_specifier: Some(RouteCs::WeightedClusters(WeightedCluster {
                    clusters: vec![
                        ClusterWeight {
                            name: "outbound|9080|v1|reviews".into(),
                            weight: u32v(75),
                            ..Default::default()
                        },
                        ClusterWeight {
                            name: "outbound|9080|v2|reviews".into(),
                            weight: u32v(25),
                            ..Default::default()
                        },
                    ],
                    ..Default::default()
                })),
                timeout: secs(2),
                retry_policy: Some(EnvoyRetry {
                    retry_on: "5xx,connect-failure,retriable-status-codes".into(),
                    num_retries: u32v(3),
                    retriable_status_codes: vec![503],
                    per_try_timeout: secs(1),
                    host_selection_retry_max_attempts: 5,
                    ..Default::default()
                }),
                ..Default::default()
            })),
            typed_per_filter_config: per_filter,
            ..Default::default()
        },
        EnvoyRoute {
            name: "default".into(),
            r#match: Some(EnvoyRm {
                path_specifier: Some(PathSpecifier::Prefix("/".into())),
                ..Default::default()
            }),
            action: Some(Action::Route(RouteAction {
                cluster_specifier: Some(RouteCs::Cluster("inbound|7080||".into())),
                timeout: secs(0),
                ..Default::default()
            })),
            ..Default::default()
        },
    ];
    RouteConfiguration {
        name: name.into(),
        virtual_hosts: vec![
            EnvoyVh {
                name: "reviews:9080".into(),
                domains: vec![
                    "reviews".into(),
                    "reviews:9080".into(),
                    "*.reviews.x".into(),
                ],
                routes,
                ..Default::default()
            },
            EnvoyVh {
                name: "allow_any".into(),
                domains: vec!["*".into()],
                routes: vec![EnvoyRoute {
                    r#match: Some(EnvoyRm {
                        path_specifier: Some(PathSpecifier::Prefix("/".into())),
                        ..Default::default()
                    }),
                    action: Some(Action::Route(RouteAction {
                        cluster_specifier: Some(RouteCs::Cluster("PassthroughCluster".into())),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            },
        ],
        validate_clusters: Some(BoolValue { value: false }),
        ..Default::default()
    }
}

fn eds_cluster(name: &str) -> EnvoyCluster {
    let tls = UpstreamTlsContext {
        common_tls_context: Some(common_tls(&[
            "spiffe://cluster.local/ns/default/sa/reviews",
        ])),
        sni: "outbound_.9080_.v1_.reviews.default.svc.cluster.local".into(),
        ..Default::default()
    };
    let istio = Struct {
        fields: [(
            "tlsMode".to_string(),
            Value {
                kind: Some(VKind::StringValue("istio".into())),
            },
        )]
        .into_iter()
        .collect(),
    };
    EnvoyCluster {
        name: name.into(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
        eds_cluster_config: Some(EdsClusterConfig {
            eds_config: ads(),
            service_name: name.into(),
        }),
        connect_timeout: Some(PbDuration {
            seconds: 0,
            nanos: 250_000_000,
        }),
        lb_policy: EnvoyLb::LeastRequest as i32,
        circuit_breakers: Some(EnvoyBreakers {
            thresholds: vec![Thresholds {
                max_connections: u32v(100),
                max_pending_requests: u32v(10),
                max_requests: u32v(u32::MAX),
                max_retries: u32v(3),
                track_remaining: true,
                ..Default::default()
            }],
            ..Default::default()
        }),
        outlier_detection: Some(EnvoyOd {
            consecutive_5xx: u32v(3),
            enforcing_consecutive_5xx: u32v(100),
            interval: secs(5),
            base_ejection_time: secs(900),
            max_ejection_percent: u32v(50),
            enforcing_success_rate: u32v(0),
            ..Default::default()
        }),
        transport_socket_matches: vec![
            EnvoyTsm {
                name: "tlsMode-istio".into(),
                r#match: Some(istio),
                transport_socket: Some(TransportSocket {
                    name: "envoy.transport_sockets.tls".into(),
                    config_type: Some(transport_socket::ConfigType::TypedConfig(to_any(&tls))),
                }),
            },
            EnvoyTsm {
                name: "tlsMode-disabled".into(),
                r#match: Some(Struct::default()),
                transport_socket: Some(TransportSocket {
                    name: "envoy.transport_sockets.raw_buffer".into(),
                    config_type: Some(transport_socket::ConfigType::TypedConfig(to_any(
                        &strait_proto::xds::envoy::extensions::transport_sockets::raw_buffer::v3::RawBuffer {},
                    ))),
                }),
            },
        ],
        ..Default::default()
    }
}

fn assignment(name: &str, priorities: &[u32]) -> ClusterLoadAssignment {
    ClusterLoadAssignment {
        cluster_name: name.into(),
        endpoints: priorities
            .iter()
            .enumerate()
            .map(|(i, p)| LocalityLbEndpoints {
                priority: *p,
                load_balancing_weight: u32v(1),
                lb_endpoints: vec![LbEndpoint {
                    host_identifier: Some(HostIdentifier::Endpoint(EnvoyEndpoint {
                        address: addr(&format!("198.18.1.{}", i + 1), 9080),
                        ..Default::default()
                    })),
                    load_balancing_weight: u32v(2),
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

fn ok(kind: Kind, name: &str, any: Any) -> Resource {
    match decode(kind, name, &any) {
        Ok(r) => r,
        Err(e) => panic!("{e}"),
    }
}

fn refused(kind: Kind, name: &str, any: Any) -> Error {
    match decode(kind, name, &any) {
        Ok(r) => panic!("accepted: {r:?}"),
        Err(e) => e,
    }
}

#[test]
fn straitd_shapes_decode() {
    let ls = listeners();
    let Resource::Listener(inbound) = ok(Kind::Listener, "198.18.0.1_7080", to_any(&ls[0])) else {
        panic!()
    };
    assert!(inbound.tls_inspector);
    assert_eq!(inbound.direction, Direction::Inbound);
    let mtls = &inbound.filter_chains[0];
    assert_eq!(
        mtls.r#match.transport_protocol,
        Some(TransportProtocol::Tls)
    );
    let tls = mtls.tls.as_ref().unwrap();
    assert!(tls.require_client_certificate);
    assert_eq!(tls.common.certificate_sds, ["default"]);
    assert_eq!(tls.common.validation_sds.as_deref(), Some("ROOTCA"));
    let Terminal::Http(hcm) = &mtls.terminal else {
        panic!()
    };
    assert!(matches!(hcm.http_filters[0], HttpFilter::Rbac(ref r) if r.rules.is_some()));
    assert_eq!(hcm.forward_client_cert, ForwardClientCert::AppendForward);
    assert!(hcm.normalize_path && hcm.merge_slashes);
    let RouteSource::Inline(rc) = &hcm.routes else {
        panic!()
    };
    let vh = rc.virtual_host("REVIEWS:9080").unwrap();
    assert_eq!(vh.name, "reviews:9080");
    assert_eq!(rc.virtual_host("a.reviews.x").unwrap().name, "reviews:9080");
    assert_eq!(rc.virtual_host("other").unwrap().name, "allow_any");
    let r = &vh.routes[0];
    assert!(r.r#match.matches("/v1/x", |h| {
        (h == ":method")
            .then_some("POST")
            .or((h == "x-canary").then_some("1"))
    }));
    assert!(!r.r#match.matches("/v1/x", |_| None));
    let RouteActionConfig::Forward(f) = &r.action else {
        panic!()
    };
    assert!(matches!(
        &f.target,
        ClusterTarget::Weighted { total: 100, .. }
    ));
    assert_eq!(f.timeout, Some(std::time::Duration::from_secs(2)));
    let retry = f.retry.as_ref().unwrap();
    assert!(retry.retry_on.five_xx && retry.retry_on.retriable_status_codes);
    assert_eq!(retry.retriable_status_codes, [503]);
    assert_eq!(
        r.fault.unwrap().delay.unwrap().percentage,
        PerMillion(100_000)
    );
    let RouteActionConfig::Forward(f) = &vh.routes[1].action else {
        panic!()
    };
    assert_eq!(f.timeout, None, "0 disables the timeout");

    let Resource::Listener(out) = ok(Kind::Listener, "198.18.0.1_9080", to_any(&ls[1])) else {
        panic!()
    };
    assert_eq!(out.rds_names().collect::<Vec<_>>(), ["9080"]);
    let Resource::Listener(vo) = ok(Kind::Listener, "virtualOutbound", to_any(&ls[2])) else {
        panic!()
    };
    assert!(vo.use_original_dst);
    assert_eq!(vo.filter_chains[0].r#match.destination_port, Some(15001));

    let name = "outbound|9080|v1|reviews.default.svc.cluster.local";
    let Resource::Cluster(c) = ok(Kind::Cluster, name, to_any(&eds_cluster(name))) else {
        panic!()
    };
    assert_eq!(c.eds_service_name(), Some(name));
    assert_eq!(c.lb_policy, LbPolicy::LeastRequest);
    assert_eq!(c.connect_timeout, std::time::Duration::from_millis(250));
    assert_eq!(c.circuit_breakers.max_connections, 100);
    let od = c.outlier_detection.as_ref().unwrap();
    assert_eq!((od.consecutive_5xx, od.success_rate.enforcing), (3, 0));
    let meta = [("tlsMode".to_string(), "istio".to_string())].into();
    let up = c.tls_for(&meta).unwrap();
    assert_eq!(
        up.sni,
        "outbound_.9080_.v1_.reviews.default.svc.cluster.local"
    );
    assert_eq!(up.common.verify_sans.len(), 1);
    assert!(c.tls_for(&Default::default()).is_none());

    let Resource::Endpoints(a) = ok(Kind::Endpoints, name, to_any(&assignment(name, &[0, 1, 1])))
    else {
        panic!()
    };
    assert_eq!(a.max_priority(), 1);
    assert_eq!(a.endpoints().count(), 3);
}

#[test]
fn config_records_dangling_references() {
    let mut c = Config::default();
    let Resource::Listener(l) = ok(Kind::Listener, "198.18.0.1_9080", to_any(&listeners()[1]))
    else {
        panic!()
    };
    std::sync::Arc::make_mut(&mut c.listeners).insert(l.name.clone(), l);
    let name = "outbound|9080|v1|reviews";
    let Resource::Cluster(cl) = ok(Kind::Cluster, name, to_any(&eds_cluster(name))) else {
        panic!()
    };
    std::sync::Arc::make_mut(&mut c.clusters).insert(cl.name.clone(), cl);
    c.check_references();
    assert!(c.missing.routes.contains("9080"));
    assert!(c.missing.endpoints.contains(name));
    assert_eq!(c.rds_names().into_iter().collect::<Vec<_>>(), ["9080"]);
}

fn hcm_listener(filters: Vec<EnvoyHttpFilter>, rc: RouteConfiguration) -> EnvoyListener {
    let hcm = EnvoyHcm {
        route_specifier: Some(RouteSpecifier::RouteConfig(rc)),
        http_filters: filters,
        ..Default::default()
    };
    EnvoyListener {
        name: "l".into(),
        address: addr("0.0.0.0", 80),
        filter_chains: vec![EnvoyChain {
            filters: vec![net_filter(
                "envoy.filters.network.http_connection_manager",
                to_any(&hcm),
            )],
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn router() -> EnvoyHttpFilter {
    http_filter("envoy.filters.http.router", to_any(&Router::default()))
}

#[test]
fn unknown_filters_and_typed_configs_are_refused_by_path() {
    let mut l = listeners()[2].clone();
    l.filter_chains[0].filters[0].name = "envoy.filters.network.redis_proxy".into();
    let e = refused(Kind::Listener, "virtualOutbound", to_any(&l));
    assert_eq!(e.path, "filter_chains[0].filters[0].name");
    assert!(
        e.to_string().starts_with("listener \"virtualOutbound\": "),
        "{e}"
    );
    assert!(e.reason.contains("redis_proxy"));

    let l = hcm_listener(
        vec![
            http_filter("envoy.filters.http.lua", to_any(&Router::default())),
            router(),
        ],
        route_config("r"),
    );
    let e = refused(Kind::Listener, "l", to_any(&l));
    assert!(e.path.ends_with("typed_config.http_filters[0].name"), "{e}");

    // A known filter name whose typed_config is of another type.
    let l = hcm_listener(
        vec![http_filter(
            "envoy.filters.http.router",
            to_any(&HttpFault::default()),
        )],
        route_config("r"),
    );
    let e = refused(Kind::Listener, "l", to_any(&l));
    assert!(
        e.path.ends_with("http_filters[0].typed_config.type_url"),
        "{e}"
    );

    // The router not last.
    let l = hcm_listener(
        vec![
            router(),
            http_filter("envoy.filters.http.fault", to_any(&HttpFault::default())),
        ],
        route_config("r"),
    );
    assert!(
        refused(Kind::Listener, "l", to_any(&l))
            .reason
            .contains("router")
    );
}

#[test]
fn unsupported_matches_and_fields_are_refused() {
    let mut rc = route_config("r");
    rc.virtual_hosts[0].routes[0]
        .r#match
        .as_mut()
        .unwrap()
        .path_specifier = Some(PathSpecifier::ConnectMatcher(ConnectMatcher {}));
    let e = refused(Kind::Route, "r", to_any(&rc));
    assert_eq!(e.path, "virtual_hosts[0].routes[0].match.path_specifier");

    let mut rc = route_config("r");
    rc.virtual_hosts[0].routes[0]
        .r#match
        .as_mut()
        .unwrap()
        .headers[0]
        .header_match_specifier = Some(HeaderMatchSpecifier::RangeMatch(Default::default()));
    let e = refused(Kind::Route, "r", to_any(&rc));
    assert_eq!(
        e.path,
        "virtual_hosts[0].routes[0].match.headers[0].range_match"
    );

    // A field we do not implement is named by number.
    let mut c = eds_cluster("c");
    c.per_connection_buffer_limit_bytes = u32v(1);
    let e = refused(Kind::Cluster, "c", to_any(&c));
    assert!(e.path.starts_with("field #"), "{e}");

    let mut rc = route_config("r");
    rc.virtual_hosts[0].routes[0]
        .typed_per_filter_config
        .insert("envoy.filters.http.cors".into(), to_any(&Router::default()));
    let e = refused(Kind::Route, "r", to_any(&rc));
    assert!(e.path.contains("typed_per_filter_config"), "{e}");

    let mut rc = route_config("r");
    if let Some(Action::Route(a)) = &mut rc.virtual_hosts[0].routes[0].action {
        a.retry_policy.as_mut().unwrap().retry_on = "5xx,sometimes".into();
    }
    let e = refused(Kind::Route, "r", to_any(&rc));
    assert!(e.reason.contains("sometimes"), "{e}");

    // Bytes our schema does not know (a newer field) are not dropped silently.
    let mut any = to_any(&eds_cluster("c"));
    any.value.extend_from_slice(&[0xf8, 0xff, 0x3f, 0x01]); // field 1048575, varint 1
    let e = refused(Kind::Cluster, "c", any);
    assert!(e.reason.contains("unknown"), "{e}");
}

#[test]
fn bad_addresses_weights_and_names_are_refused() {
    let mut l = listeners()[1].clone();
    l.address = addr("not-an-ip", 80);
    let e = refused(Kind::Listener, "198.18.0.1_9080", to_any(&l));
    assert_eq!(e.path, "address.socket_address.address");
    l.address = addr("0.0.0.0", 70_000);
    assert!(
        refused(Kind::Listener, "198.18.0.1_9080", to_any(&l))
            .reason
            .contains("70000")
    );

    let mut rc = route_config("r");
    if let Some(Action::Route(a)) = &mut rc.virtual_hosts[0].routes[0].action {
        if let Some(RouteCs::WeightedClusters(w)) = &mut a.cluster_specifier {
            for c in &mut w.clusters {
                c.weight = u32v(0);
            }
        }
    }
    let e = refused(Kind::Route, "r", to_any(&rc));
    assert!(e.reason.contains("add up to 0"), "{e}");

    let mut a = assignment("c", &[0]);
    a.endpoints[0].lb_endpoints[0].load_balancing_weight = u32v(0);
    assert!(
        refused(Kind::Endpoints, "c", to_any(&a))
            .path
            .ends_with("load_balancing_weight")
    );
    let e = refused(Kind::Endpoints, "c", to_any(&assignment("c", &[0, 2])));
    assert!(e.reason.contains("gaps"), "{e}");
    let mut a = assignment("c", &[0]);
    a.endpoints[0].lb_endpoints[0].host_identifier =
        Some(HostIdentifier::Endpoint(EnvoyEndpoint {
            address: addr("db.example.com", 5432),
            ..Default::default()
        }));
    assert!(
        refused(Kind::Endpoints, "c", to_any(&a))
            .reason
            .contains("not an IP")
    );

    let huge = "x".repeat(1 << 20);
    let e = refused(Kind::Cluster, &huge, to_any(&eds_cluster(&huge)));
    assert!(e.name.len() < 200 && e.reason.contains("limit"), "{e}");

    // The name the server gives and the resource's own must agree.
    let e = refused(Kind::Cluster, "a", to_any(&eds_cluster("b")));
    assert_eq!(e.path, "name");

    let mut rc = route_config("r");
    rc.virtual_hosts[1].domains.push("reviews".into());
    assert!(
        refused(Kind::Route, "r", to_any(&rc))
            .reason
            .contains("twice")
    );
}

#[test]
fn hostile_regexes_and_nesting_are_bounded() {
    for re in [
        "(?:[a-z]{100}){1000}",
        "(a)\\1",
        "(?=x)",
        &"(".repeat(10_000),
    ] {
        let mut rc = route_config("r");
        rc.virtual_hosts[0].routes[0]
            .r#match
            .as_mut()
            .unwrap()
            .path_specifier = Some(PathSpecifier::SafeRegex(RegexMatcher {
            regex: re.to_string(),
            engine_type: None,
        }));
        let e = refused(Kind::Route, "r", to_any(&rc));
        assert_eq!(
            e.path, "virtual_hosts[0].routes[0].match.safe_regex.regex",
            "{e}"
        );
    }

    // RBAC nested past the depth limit (the authz module would recurse on it).
    let mut p = Permission {
        rule: Some(permission::Rule::Any(true)),
    };
    for _ in 0..(limits::MAX_RBAC_DEPTH + 5) {
        p = Permission {
            rule: Some(permission::Rule::NotRule(Box::new(p))),
        };
    }
    let rules = Rbac {
        policies: HashMap::from([(
            "deep".to_string(),
            Policy {
                permissions: vec![p],
                ..Default::default()
            },
        )]),
        ..Default::default()
    };
    let l = hcm_listener(
        vec![
            http_filter(
                "envoy.filters.http.rbac",
                to_any(&HttpRbac {
                    rules: Some(rules),
                    ..Default::default()
                }),
            ),
            router(),
        ],
        route_config("r"),
    );
    let e = refused(Kind::Listener, "l", to_any(&l));
    assert!(e.reason.contains("nest"), "{e}");

    // Routes past the limit.
    let mut rc = route_config("r");
    let route = rc.virtual_hosts[0].routes[1].clone();
    rc.virtual_hosts[0].routes = vec![route; limits::MAX_ROUTES + 1];
    assert!(
        refused(Kind::Route, "r", to_any(&rc))
            .reason
            .contains("limit")
    );
}

#[test]
fn ten_thousand_clusters_decode() {
    for i in 0..10_000 {
        let name = format!(
            "outbound|{}||svc{i}.default.svc.cluster.local",
            1000 + i % 5000
        );
        ok(Kind::Cluster, &name, to_any(&eds_cluster(&name)));
    }
}

/// Istio's inbound cluster under capture: ORIGINAL_DST from 127.0.0.6 (port 0).
fn inbound_original_dst(
    bind: Option<strait_proto::xds::envoy::config::core::v3::BindConfig>,
) -> EnvoyCluster {
    EnvoyCluster {
        name: "inbound|8000||".into(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(
            DiscoveryType::OriginalDst as i32,
        )),
        lb_policy: EnvoyLb::ClusterProvided as i32,
        upstream_bind_config: bind,
        ..Default::default()
    }
}

fn bind_to(address: &str, port: u32) -> strait_proto::xds::envoy::config::core::v3::BindConfig {
    strait_proto::xds::envoy::config::core::v3::BindConfig {
        source_address: Some(SocketAddress {
            address: address.into(),
            port_specifier: Some(PortSpecifier::PortValue(port)),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[test]
fn upstream_bind_config_source_address_decodes() {
    let name = "inbound|8000||";
    let Resource::Cluster(c) = ok(
        Kind::Cluster,
        name,
        to_any(&inbound_original_dst(Some(bind_to("127.0.0.6", 0)))),
    ) else {
        panic!()
    };
    assert_eq!(c.discovery, Discovery::OriginalDst);
    assert_eq!(c.upstream_bind, Some("127.0.0.6".parse().unwrap()));
    let Resource::Cluster(c) = ok(Kind::Cluster, name, to_any(&inbound_original_dst(None))) else {
        panic!()
    };
    assert_eq!(c.upstream_bind, None);
}

#[test]
#[allow(deprecated)]
fn upstream_bind_config_refuses_what_it_does_not_implement() {
    let name = "inbound|8000||";
    let refuse = |bind, path: &str, reason: &str| {
        let e = refused(
            Kind::Cluster,
            name,
            to_any(&inbound_original_dst(Some(bind))),
        );
        assert_eq!(e.path, path, "{e}");
        assert!(e.reason.contains(reason), "{e}");
    };
    refuse(
        bind_to("127.0.0.6", 15000),
        "upstream_bind_config.source_address.port_value",
        "only 0",
    );
    refuse(
        bind_to("localhost", 0),
        "upstream_bind_config.source_address.address",
        "not an IP",
    );
    let mut b = bind_to("127.0.0.6", 0);
    b.freebind = Some(BoolValue { value: true });
    refuse(b, "upstream_bind_config.freebind", "not supported");
    let mut b = bind_to("127.0.0.6", 0);
    b.socket_options = vec![Default::default()];
    refuse(b, "upstream_bind_config.socket_options", "not supported");
    let mut b = bind_to("127.0.0.6", 0);
    b.additional_source_addresses = vec![SocketAddress {
        address: "::6".into(),
        ..Default::default()
    }];
    refuse(
        b,
        "upstream_bind_config.additional_source_addresses",
        "not supported",
    );
    let mut b = bind_to("127.0.0.6", 0);
    b.source_address = None;
    refuse(b, "upstream_bind_config.source_address", "required");
    let mut b = bind_to("127.0.0.6", 0);
    b.validate_network_namespaces = true;
    let e = refused(Kind::Cluster, name, to_any(&inbound_original_dst(Some(b))));
    assert!(e.path.starts_with("upstream_bind_config"), "{e}");
}

#[test]
fn a_route_configuration_for_more_than_ten_thousand_services_decodes() {
    // Istio makes one virtual host per service on a port: a 10 000-service mesh has more.
    let mut rc = route_config("8000");
    let mut vh = rc.virtual_hosts[0].clone();
    vh.routes = vec![vh.routes[1].clone()];
    rc.virtual_hosts = (0..10_002)
        .map(|i| {
            let mut v = vh.clone();
            v.name = format!("svc{i}.default.svc.cluster.local:8000");
            v.domains = vec![format!("svc{i}.default.svc.cluster.local")];
            v
        })
        .collect();
    ok(Kind::Route, "8000", to_any(&rc));
}
