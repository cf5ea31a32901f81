//! Auto mTLS, inbound listeners, PeerAuthentication modes and AuthorizationPolicy → RBAC.

use strait_proto::xds::envoy::config::cluster::v3::Cluster;
use strait_proto::xds::envoy::config::cluster::v3::cluster::{DiscoveryType, LbPolicy};
use strait_proto::xds::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use strait_proto::xds::envoy::config::core::v3::grpc_service::TargetSpecifier;
use strait_proto::xds::envoy::config::core::v3::socket_address::PortSpecifier;
use strait_proto::xds::envoy::config::core::v3::{TrafficDirection, address, transport_socket};
use strait_proto::xds::envoy::config::endpoint::v3::ClusterLoadAssignment;
use strait_proto::xds::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use strait_proto::xds::envoy::config::listener::v3::{Filter, FilterChain, Listener, filter};
use strait_proto::xds::envoy::config::rbac::v3::{
    Permission, Principal, Rbac, permission, principal, rbac,
};
use strait_proto::xds::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier;
use strait_proto::xds::envoy::config::route::v3::route::Action;
use strait_proto::xds::envoy::config::route::v3::route_action::ClusterSpecifier as RouteCluster;
use strait_proto::xds::envoy::extensions::filters::http::rbac::v3::Rbac as HttpRbac;
use strait_proto::xds::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::{
    ForwardClientCertDetails, RouteSpecifier,
};
use strait_proto::xds::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_filter,
};
use strait_proto::xds::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;
use strait_proto::xds::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
use strait_proto::xds::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::ClusterSpecifier;
use strait_proto::xds::envoy::extensions::transport_sockets::tls::v3::common_tls_context::ValidationContextType;
use strait_proto::xds::envoy::extensions::transport_sockets::tls::v3::subject_alt_name_matcher::SanType;
use strait_proto::xds::envoy::extensions::transport_sockets::tls::v3::{
    CommonTlsContext, DownstreamTlsContext, SdsSecretConfig, UpstreamTlsContext,
};
use strait_proto::xds::envoy::r#type::matcher::v3::path_matcher;
use strait_proto::xds::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use strait_proto::xds::envoy::r#type::matcher::v3::StringMatcher;
use strait_proto::xds::google::protobuf::value::Kind;
use strait_proto::xds::google::protobuf::{Any, Struct};

use super::{decode, discovery, find, mesh, proxy};
use crate::xds::generate::{clusters, endpoints, listeners};
use crate::xds::proxy::{Interception, Proxy};

// ---------------------------------------------------------------------------------------------
// Helpers: decode and render the parts under test.

fn typed<M: prost::Message + Default>(f: &Filter) -> M {
    let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type else {
        panic!("{} has no typed_config", f.name)
    };
    decode(any)
}

fn string_matcher(m: &StringMatcher) -> String {
    match m.match_pattern.as_ref().unwrap() {
        MatchPattern::Exact(s) => format!("exact {s}"),
        MatchPattern::Prefix(s) => format!("prefix {s}"),
        MatchPattern::Suffix(s) => format!("suffix {s}"),
        MatchPattern::SafeRegex(r) => format!("regex {}", r.regex),
        other => panic!("unexpected matcher {other:?}"),
    }
}

/// A compact, exact rendering of an RBAC permission tree.
fn perm(p: &Permission) -> String {
    let list = |rules: &[Permission]| rules.iter().map(perm).collect::<Vec<_>>().join(", ");
    match p.rule.as_ref().unwrap() {
        permission::Rule::AndRules(s) => format!("and({})", list(&s.rules)),
        permission::Rule::OrRules(s) => format!("or({})", list(&s.rules)),
        permission::Rule::Any(true) => "any".to_string(),
        permission::Rule::NotRule(inner) => format!("not({})", perm(inner)),
        permission::Rule::DestinationPort(port) => format!("port {port}"),
        permission::Rule::Header(h) => match h.header_match_specifier.as_ref().unwrap() {
            HeaderMatchSpecifier::StringMatch(m) => {
                format!("header {} {}", h.name, string_matcher(m))
            }
            HeaderMatchSpecifier::PresentMatch(true) => format!("header {} present", h.name),
            other => panic!("unexpected header matcher {other:?}"),
        },
        permission::Rule::UrlPath(pm) => {
            let Some(path_matcher::Rule::Path(m)) = &pm.rule else {
                panic!()
            };
            format!("path {}", string_matcher(m))
        }
        other => panic!("unexpected permission {other:?}"),
    }
}

/// A compact, exact rendering of an RBAC principal tree.
fn princ(p: &Principal) -> String {
    let list = |ids: &[Principal]| ids.iter().map(princ).collect::<Vec<_>>().join(", ");
    match p.identifier.as_ref().unwrap() {
        principal::Identifier::AndIds(s) => format!("and({})", list(&s.ids)),
        principal::Identifier::OrIds(s) => format!("or({})", list(&s.ids)),
        principal::Identifier::Any(true) => "any".to_string(),
        principal::Identifier::NotId(inner) => format!("not({})", princ(inner)),
        principal::Identifier::Authenticated(a) => {
            format!(
                "peer {}",
                string_matcher(a.principal_name.as_ref().unwrap())
            )
        }
        other => panic!("unexpected principal {other:?}"),
    }
}

/// Policy name → (permissions, principals), rendered; sorted by name.
fn policies(r: &Rbac) -> Vec<(String, Vec<String>, Vec<String>)> {
    let mut out: Vec<_> = r
        .policies
        .iter()
        .map(|(name, p)| {
            (
                name.clone(),
                p.permissions.iter().map(perm).collect(),
                p.principals.iter().map(princ).collect(),
            )
        })
        .collect();
    out.sort();
    out
}

fn action(r: &Rbac) -> rbac::Action {
    rbac::Action::try_from(r.action).unwrap()
}

fn listener<'a>(ls: &'a [Listener], name: &str) -> &'a Listener {
    ls.iter()
        .find(|l| l.name == name)
        .unwrap_or_else(|| panic!("no listener {name} in {:?}", names(ls)))
}

fn names(ls: &[Listener]) -> Vec<&str> {
    ls.iter().map(|l| l.name.as_str()).collect()
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

/// The chains of a listener as (name, transport_protocol match, has TLS).
fn chains(l: &Listener) -> Vec<(String, String, bool)> {
    l.filter_chains
        .iter()
        .map(|c| {
            (
                c.name.clone(),
                c.filter_chain_match
                    .as_ref()
                    .map(|m| m.transport_protocol.clone())
                    .unwrap_or_default(),
                c.transport_socket.is_some(),
            )
        })
        .collect()
}

fn downstream_tls(c: &FilterChain) -> DownstreamTlsContext {
    let ts = c.transport_socket.as_ref().unwrap();
    assert_eq!(ts.name, "envoy.transport_sockets.tls");
    let Some(transport_socket::ConfigType::TypedConfig(any)) = &ts.config_type else {
        panic!()
    };
    assert_eq!(
        any.type_url,
        "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
    );
    decode(any)
}

fn hcm(c: &FilterChain) -> HttpConnectionManager {
    let [f] = c.filters.as_slice() else {
        panic!("an HTTP chain has one network filter: {:?}", c.filters)
    };
    assert_eq!(f.name, "envoy.filters.network.http_connection_manager");
    typed(f)
}

/// Filters as (name, decoded RBAC if it is one).
type Filters = Vec<(String, Option<Rbac>)>;

/// HTTP filters as (name, decoded RBAC if it is one).
fn http_filters(h: &HttpConnectionManager) -> Filters {
    h.http_filters
        .iter()
        .map(|f| {
            let Some(http_filter::ConfigType::TypedConfig(any)) = &f.config_type else {
                panic!()
            };
            let rbac = (f.name == "envoy.filters.http.rbac").then(|| {
                assert_eq!(
                    any.type_url,
                    "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
                );
                decode::<HttpRbac>(any).rules.unwrap()
            });
            (f.name.clone(), rbac)
        })
        .collect()
}

/// Network filters of a TCP chain as (name, decoded RBAC if it is one).
fn tcp_filters(c: &FilterChain) -> Filters {
    c.filters
        .iter()
        .map(|f| {
            let rbac = (f.name == "envoy.filters.network.rbac").then(|| {
                let r: NetworkRbac = typed(f);
                assert_eq!(r.stat_prefix, "tcp.");
                r.rules.unwrap()
            });
            (f.name.clone(), rbac)
        })
        .collect()
}

/// Asserts Istio's SDS reference to `name` on `sds-grpc`.
fn assert_sds(s: &SdsSecretConfig, name: &str) {
    assert_eq!(s.name, name);
    let source = s.sds_config.as_ref().unwrap();
    assert_eq!(source.resource_api_version, 2, "V3");
    assert_eq!(source.initial_fetch_timeout, super::secs(0));
    let Some(ConfigSourceSpecifier::ApiConfigSource(api)) = &source.config_source_specifier else {
        panic!("not an api_config_source: {source:?}")
    };
    assert_eq!(api.api_type, 2, "GRPC");
    assert_eq!(api.transport_api_version, 2, "V3");
    assert!(api.set_node_on_first_message_only);
    let [grpc] = api.grpc_services.as_slice() else {
        panic!()
    };
    let Some(TargetSpecifier::EnvoyGrpc(envoy)) = &grpc.target_specifier else {
        panic!()
    };
    assert_eq!(envoy.cluster_name, "sds-grpc");
}

/// Asserts `default` + combined validation (`ROOTCA`); returns the exact URI SANs required.
fn assert_common(c: &CommonTlsContext) -> Vec<String> {
    let [cert] = c.tls_certificate_sds_secret_configs.as_slice() else {
        panic!()
    };
    assert_sds(cert, "default");
    let Some(ValidationContextType::CombinedValidationContext(combined)) =
        &c.validation_context_type
    else {
        panic!("no combined_validation_context")
    };
    assert_sds(
        combined
            .validation_context_sds_secret_config
            .as_ref()
            .unwrap(),
        "ROOTCA",
    );
    let default = combined.default_validation_context.as_ref().unwrap();
    default
        .match_typed_subject_alt_names
        .iter()
        .map(|m| {
            assert_eq!(m.san_type, SanType::Uri as i32);
            let Some(MatchPattern::Exact(s)) = &m.matcher.as_ref().unwrap().match_pattern else {
                panic!("not exact: {m:?}")
            };
            s.clone()
        })
        .collect()
}

fn vm_proxy() -> Proxy {
    Proxy {
        interception: Interception::None,
        labels: [("app", "ratings"), ("version", "v1")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..proxy()
    }
}

// ---------------------------------------------------------------------------------------------
// Outbound: auto mTLS.

const MESH_SERVICES: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews}
spec:
  hosts: [reviews.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - {number: 9080, name: http, protocol: HTTP}
  - {number: 9090, name: grpc, protocol: GRPC}
  workloadSelector: {labels: {app: reviews}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-1}
spec: {address: 198.18.1.1, serviceAccount: reviews, labels: {app: reviews, version: v1, security.istio.io/tlsMode: istio}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-2}
spec: {address: 198.18.1.2, serviceAccount: reviews-v2, labels: {app: reviews, version: v2, security.istio.io/tlsMode: istio}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-3}
spec: {address: 198.18.1.3, serviceAccount: reviews, labels: {app: reviews, version: v1}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-4}
spec: {address: 198.18.1.4, labels: {app: reviews, version: v2, security.istio.io/tlsMode: disabled}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews.default.svc.cluster.local
  subsets: [{name: v1, labels: {version: v1}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: external}
spec:
  hosts: [api.example.com]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{number: 443, name: tls, protocol: TLS}]
  endpoints: [{address: 198.18.9.9, serviceAccount: x, labels: {security.istio.io/tlsMode: istio}}]
"#;

/// The UpstreamTlsContext of the `tlsMode-istio` match, after checking both matches.
fn upstream_tls(c: &Cluster) -> UpstreamTlsContext {
    let [istio, disabled] = c.transport_socket_matches.as_slice() else {
        panic!("{}: {:?}", c.name, c.transport_socket_matches)
    };
    assert_eq!(istio.name, "tlsMode-istio");
    let m = istio.r#match.as_ref().unwrap();
    assert_eq!(m.fields.len(), 1);
    assert_eq!(
        m.fields["tlsMode"].kind,
        Some(Kind::StringValue("istio".to_string()))
    );
    assert_eq!(disabled.name, "tlsMode-disabled");
    assert_eq!(disabled.r#match, Some(Struct::default()), "empty match");
    let raw = disabled.transport_socket.as_ref().unwrap();
    assert_eq!(raw.name, "envoy.transport_sockets.raw_buffer");
    let Some(transport_socket::ConfigType::TypedConfig(any)) = &raw.config_type else {
        panic!()
    };
    assert_eq!(
        any.type_url,
        "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"
    );
    let ts = istio.transport_socket.as_ref().unwrap();
    assert_eq!(ts.name, "envoy.transport_sockets.tls");
    let Some(transport_socket::ConfigType::TypedConfig(any)) = &ts.config_type else {
        panic!()
    };
    assert_eq!(
        any.type_url,
        "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
    );
    decode(any)
}

#[test]
fn mesh_internal_clusters_get_istio_auto_mtls() {
    let cs = clusters(&mesh(MESH_SERVICES), &proxy());
    let sans = [
        "spiffe://cluster.local/ns/default/sa/reviews",
        "spiffe://cluster.local/ns/default/sa/reviews-v2",
    ];

    let tls = upstream_tls(find(
        &cs,
        "outbound|9080||reviews.default.svc.cluster.local",
    ));
    assert_eq!(
        tls.sni,
        "outbound_.9080_._.reviews.default.svc.cluster.local"
    );
    let common = tls.common_tls_context.as_ref().unwrap();
    assert_eq!(common.alpn_protocols, ["istio-peer-exchange", "istio"]);
    assert_eq!(
        assert_common(common),
        sans,
        "every distinct service account, once"
    );

    let tls = upstream_tls(find(
        &cs,
        "outbound|9080|v1|reviews.default.svc.cluster.local",
    ));
    assert_eq!(
        tls.sni,
        "outbound_.9080_.v1_.reviews.default.svc.cluster.local"
    );
    assert_eq!(
        assert_common(tls.common_tls_context.as_ref().unwrap()),
        sans,
        "a subset trusts the service's identities"
    );

    let tls = upstream_tls(find(
        &cs,
        "outbound|9090||reviews.default.svc.cluster.local",
    ));
    assert_eq!(
        tls.sni,
        "outbound_.9090_._.reviews.default.svc.cluster.local"
    );
    assert_eq!(
        tls.common_tls_context.unwrap().alpn_protocols,
        ["istio-peer-exchange", "istio", "h2"],
        "HTTP/2 ports also offer h2, as in Istio"
    );

    let external = find(&cs, "outbound|443||api.example.com");
    assert!(
        external.transport_socket_matches.is_empty(),
        "MESH_EXTERNAL"
    );
    for name in ["BlackHoleCluster", "PassthroughCluster"] {
        assert!(find(&cs, name).transport_socket_matches.is_empty());
    }
}

#[test]
fn services_without_mesh_proxies_need_no_certificate() {
    // BOOKINFO's services are MESH_INTERNAL, but no endpoint carries the tlsMode label: their
    // clusters stay plaintext-only, so Envoy warms them without waiting for SDS.
    let cs = clusters(&mesh(super::BOOKINFO), &proxy());
    assert!(cs.iter().all(|c| c.transport_socket_matches.is_empty()));
}

#[test]
fn the_trust_domain_comes_from_the_proxy() {
    let p = Proxy {
        trust_domain: "example.org".to_string(),
        ..proxy()
    };
    let cs = clusters(&mesh(MESH_SERVICES), &p);
    let tls = upstream_tls(find(
        &cs,
        "outbound|9080||reviews.default.svc.cluster.local",
    ));
    assert_eq!(
        assert_common(tls.common_tls_context.as_ref().unwrap()),
        [
            "spiffe://example.org/ns/default/sa/reviews",
            "spiffe://example.org/ns/default/sa/reviews-v2"
        ]
    );
}

/// Address → the endpoint's `envoy.transport_socket_match` metadata, if any.
fn socket_match_metadata(la: &ClusterLoadAssignment) -> Vec<(String, Option<Struct>)> {
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
            let md = e.metadata.as_ref().map(|m| {
                assert_eq!(m.filter_metadata.len(), 1, "{m:?}");
                m.filter_metadata["envoy.transport_socket_match"].clone()
            });
            (sa.address.clone(), md)
        })
        .collect()
}

#[test]
fn endpoints_with_a_mesh_proxy_carry_the_tls_mode() {
    let yaml = format!(
        "{MESH_SERVICES}---\n{}",
        r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: reviews-v2-plaintext}
spec:
  selector: {matchLabels: {version: v2}}
  mtls: {mode: STRICT}
  portLevelMtls: {9090: {mode: DISABLE}}
"#
    );
    let names = [
        "outbound|9080||reviews.default.svc.cluster.local".to_string(),
        "outbound|9090||reviews.default.svc.cluster.local".to_string(),
        "outbound|443||api.example.com".to_string(),
    ];
    let las = endpoints(&mesh(&yaml), &proxy(), &names);
    let istio = Some(Struct {
        fields: [(
            "tlsMode".to_string(),
            strait_proto::xds::google::protobuf::Value {
                kind: Some(Kind::StringValue("istio".to_string())),
            },
        )]
        .into_iter()
        .collect(),
    });
    let mut got = socket_match_metadata(&las[0]);
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        got,
        [
            ("198.18.1.1".to_string(), istio.clone()),
            ("198.18.1.2".to_string(), istio.clone()),
            ("198.18.1.3".to_string(), None),
            ("198.18.1.4".to_string(), None),
        ],
        "only the label value `istio` counts"
    );
    let mut got = socket_match_metadata(&las[1]);
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        got[..2],
        [
            ("198.18.1.1".to_string(), istio.clone()),
            ("198.18.1.2".to_string(), None),
        ],
        "the destination's PeerAuthentication disables mTLS on its port 9090"
    );
    assert_eq!(
        socket_match_metadata(&las[2]),
        [("198.18.9.9".to_string(), None)],
        "MESH_EXTERNAL endpoints stay plaintext"
    );
}

// ---------------------------------------------------------------------------------------------
// Inbound listeners from Sidecar ingress, and their mTLS modes.

const SIDECAR: &str = r#"
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: ratings}
spec:
  workloadSelector: {labels: {app: ratings}}
  ingress:
  - port: {number: 9080, protocol: HTTP, name: http}
    defaultEndpoint: 127.0.0.1:8080
  - port: {number: 3306, protocol: TCP, name: tcp}
    bind: 198.18.0.5
    defaultEndpoint: 127.0.0.1:13306
  - port: {number: 9090, name: grpc-api}
    defaultEndpoint: 127.0.0.1:19090
  egress:
  - port: {number: 9080, protocol: HTTP, name: http}
    bind: 127.0.0.1
    hosts: ["./*"]
"#;

fn with_sidecar(extra: &str) -> String {
    format!("{SIDECAR}---\n{extra}")
}

fn inbound(yaml: &str, p: &Proxy) -> Vec<Listener> {
    listeners(&mesh(yaml), p)
        .into_iter()
        .filter(|l| l.traffic_direction == TrafficDirection::Inbound as i32)
        .collect()
}

#[test]
fn ingress_listeners_and_clusters() {
    let m = mesh(SIDECAR);
    let ls = listeners(&m, &vm_proxy());
    assert_eq!(
        names(&ls),
        [
            "127.0.0.1_9080",
            "0.0.0.0_9080",
            "198.18.0.5_3306",
            "0.0.0.0_9090"
        ],
        "outbound first, then inbound in Sidecar order"
    );
    let http = listener(&ls, "0.0.0.0_9080");
    assert_eq!(bound(http), ("0.0.0.0".to_string(), 9080));
    assert_eq!(http.traffic_direction, TrafficDirection::Inbound as i32);
    assert!(http.bind_to_port.is_none());
    assert_eq!(
        bound(listener(&ls, "198.18.0.5_3306")),
        ("198.18.0.5".to_string(), 3306)
    );
    assert_eq!(
        listener(&ls, "127.0.0.1_9080").traffic_direction,
        TrafficDirection::Outbound as i32
    );

    // The default mode is PERMISSIVE: both chains carry the same HCM.
    let h = hcm(&http.filter_chains[0]);
    assert_eq!(h, hcm(&http.filter_chains[1]));
    assert_eq!(h.stat_prefix, "inbound_9080");
    assert_eq!(
        h.forward_client_cert_details,
        ForwardClientCertDetails::AppendForward as i32
    );
    let xfcc = h.set_current_client_cert_details.as_ref().unwrap();
    assert!(xfcc.uri && xfcc.dns && xfcc.subject.unwrap().value);
    assert!(!h.use_remote_address.unwrap().value);
    let Some(RouteSpecifier::RouteConfig(rc)) = &h.route_specifier else {
        panic!("inline route config")
    };
    assert_eq!(rc.name, "inbound|9080||");
    let [vh] = rc.virtual_hosts.as_slice() else {
        panic!()
    };
    assert_eq!(vh.domains, ["*"]);
    let Some(Action::Route(ra)) = &vh.routes[0].action else {
        panic!()
    };
    assert_eq!(
        ra.cluster_specifier,
        Some(RouteCluster::Cluster("inbound|9080||".to_string()))
    );
    let filters: Vec<String> = http_filters(&h).into_iter().map(|(n, _)| n).collect();
    assert_eq!(filters, ["envoy.filters.http.router"], "no policy, no RBAC");

    // No protocol field: the port name `grpc-api` makes it GRPC, as in Istio.
    let grpc = listener(&ls, "0.0.0.0_9090");
    assert_eq!(hcm(&grpc.filter_chains[0]).stat_prefix, "inbound_9090");

    let tcp = listener(&ls, "198.18.0.5_3306");
    let filters = tcp_filters(&tcp.filter_chains[0]);
    assert_eq!(filters.len(), 1);
    let proxy_cfg: TcpProxy = typed(&tcp.filter_chains[0].filters[0]);
    assert_eq!(
        proxy_cfg.cluster_specifier,
        Some(ClusterSpecifier::Cluster("inbound|3306||".to_string()))
    );

    let cs = clusters(&m, &vm_proxy());
    let c = find(&cs, "inbound|3306||");
    assert_eq!(discovery(c), DiscoveryType::Static);
    let la = c.load_assignment.as_ref().unwrap();
    let Some(HostIdentifier::Endpoint(ep)) = &la.endpoints[0].lb_endpoints[0].host_identifier
    else {
        panic!()
    };
    let Some(address::Address::SocketAddress(sa)) = &ep.address.as_ref().unwrap().address else {
        panic!()
    };
    assert_eq!(
        (sa.address.as_str(), sa.port_specifier.clone()),
        ("127.0.0.1", Some(PortSpecifier::PortValue(13306)))
    );
    assert!(
        c.transport_socket_matches.is_empty(),
        "plaintext to the app"
    );
    let grpc_cluster = find(&cs, "inbound|9090||");
    assert!(
        grpc_cluster
            .typed_extension_protocol_options
            .contains_key("envoy.extensions.upstreams.http.v3.HttpProtocolOptions"),
        "HTTP/2 to a gRPC application"
    );
    find(&cs, "inbound|9080||");
}

#[test]
fn permissive_is_the_default_and_splits_by_transport() {
    let ls = inbound(SIDECAR, &vm_proxy());
    let l = listener(&ls, "0.0.0.0_9080");
    assert_eq!(
        chains(l),
        [
            ("0.0.0.0_9080_mtls".to_string(), "tls".to_string(), true),
            (
                "0.0.0.0_9080_plaintext".to_string(),
                "raw_buffer".to_string(),
                false
            ),
        ]
    );
    let [inspector] = l.listener_filters.as_slice() else {
        panic!()
    };
    assert_eq!(inspector.name, "envoy.filters.listener.tls_inspector");

    let tls = downstream_tls(&l.filter_chains[0]);
    assert!(tls.require_client_certificate.unwrap().value);
    let common = tls.common_tls_context.as_ref().unwrap();
    assert!(
        assert_common(common).is_empty(),
        "any mesh identity passes the handshake"
    );
    assert_eq!(common.alpn_protocols, ["h2", "http/1.1"]);
    assert_eq!(
        common
            .tls_params
            .as_ref()
            .unwrap()
            .tls_minimum_protocol_version,
        3,
        "TLSv1_2"
    );
    let tcp = downstream_tls(&listener(&ls, "198.18.0.5_3306").filter_chains[0]);
    assert_eq!(
        tcp.common_tls_context.unwrap().alpn_protocols,
        ["istio-peer-exchange", "h2", "http/1.1"]
    );
}

/// "STRICT", "PERMISSIVE" or "DISABLE", read from the chains of one port (Istio's matches).
fn mode_of(chains: &[&FilterChain]) -> &'static str {
    let shape: Vec<(String, Vec<String>, bool)> = chains
        .iter()
        .map(|c| {
            let m = c.filter_chain_match.clone().unwrap_or_default();
            (
                m.transport_protocol,
                m.application_protocols,
                c.transport_socket.is_some(),
            )
        })
        .collect();
    let mesh_alpn = [
        "istio",
        "istio-peer-exchange",
        "istio-http/1.0",
        "istio-http/1.1",
        "istio-h2",
    ];
    match shape.as_slice() {
        [(t, alpn, true)] if t == "tls" && alpn.is_empty() => "STRICT",
        [(t, alpn, true), (p, none, false), rest @ ..]
            if t == "tls" && alpn == &mesh_alpn && p == "raw_buffer" && none.is_empty() =>
        {
            match rest {
                // TCP: a non-mesh client's own TLS passes through.
                [] | [(_, _, false)] => "PERMISSIVE",
                other => panic!("unexpected PERMISSIVE chains {other:?}"),
            }
        }
        [(t, alpn, false)] if t.is_empty() && alpn.is_empty() => "DISABLE",
        other => panic!("unexpected chains {other:?}"),
    }
}

/// Mode per inbound listener of its own.
fn modes(yaml: &str, p: &Proxy) -> Vec<(String, &'static str)> {
    inbound(yaml, p)
        .iter()
        .map(|l| {
            let mode = mode_of(&l.filter_chains.iter().collect::<Vec<_>>());
            // The TLS inspector is there exactly when a chain matches on the transport.
            assert_eq!(l.listener_filters.len(), usize::from(mode != "DISABLE"));
            (l.name.clone(), mode)
        })
        .collect()
}

fn pa(name: &str, namespace: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\n\
         metadata: {{name: {name}, namespace: {namespace}}}\nspec: {spec}\n"
    )
}

fn expect(modes: [&'static str; 3]) -> Vec<(String, &'static str)> {
    ["0.0.0.0_9080", "198.18.0.5_3306", "0.0.0.0_9090"]
        .into_iter()
        .map(str::to_string)
        .zip(modes)
        .collect()
}

#[test]
fn peer_authentication_precedence() {
    let p = vm_proxy();
    let mesh_strict = pa("default", "istio-system", "{mtls: {mode: STRICT}}");
    assert_eq!(
        modes(&with_sidecar(&mesh_strict), &p),
        expect(["STRICT"; 3]),
        "mesh-wide"
    );

    let ns_disable = pa("ns", "default", "{mtls: {mode: DISABLE}}");
    assert_eq!(
        modes(&with_sidecar(&format!("{mesh_strict}{ns_disable}")), &p),
        expect(["DISABLE"; 3]),
        "the namespace overrides the mesh"
    );

    let ns_unset = pa("ns", "default", "{mtls: {mode: UNSET}}");
    assert_eq!(
        modes(&with_sidecar(&format!("{mesh_strict}{ns_unset}")), &p),
        expect(["STRICT"; 3]),
        "UNSET inherits"
    );

    let workload = pa(
        "ratings",
        "default",
        "{selector: {matchLabels: {app: ratings}}, mtls: {mode: PERMISSIVE}, \
         portLevelMtls: {3306: {mode: STRICT}, 9090: {mode: UNSET}}}",
    );
    assert_eq!(
        modes(
            &with_sidecar(&format!("{mesh_strict}{ns_disable}{workload}")),
            &p
        ),
        expect(["PERMISSIVE", "STRICT", "PERMISSIVE"]),
        "workload over namespace, port over workload, UNSET port inherits the workload"
    );

    let port_only = pa(
        "ratings",
        "default",
        "{selector: {matchLabels: {app: ratings}}, portLevelMtls: {9080: {mode: DISABLE}}}",
    );
    assert_eq!(
        modes(&with_sidecar(&format!("{mesh_strict}{port_only}")), &p),
        expect(["DISABLE", "STRICT", "STRICT"]),
        "a workload policy without mtls inherits for its other ports"
    );

    let ignored = [
        pa(
            "other-app",
            "default",
            "{selector: {matchLabels: {app: reviews}}, mtls: {mode: DISABLE}}",
        ),
        pa("other-ns", "prod", "{mtls: {mode: DISABLE}}"),
        pa(
            "root-selector",
            "istio-system",
            "{selector: {matchLabels: {app: ratings}}, mtls: {mode: DISABLE}}",
        ),
    ]
    .concat();
    assert_eq!(
        modes(&with_sidecar(&format!("{mesh_strict}{ignored}")), &p),
        expect(["STRICT"; 3]),
        "other workloads, other namespaces and root-namespace selectors do not apply"
    );
}

// ---------------------------------------------------------------------------------------------
// AuthorizationPolicy → RBAC.

fn ap(name: &str, namespace: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
         metadata: {{name: {name}, namespace: {namespace}}}\nspec: {}\n",
        // Flow-style continuation lines must sit deeper than `spec`.
        spec.replace('\n', "\n  ")
    )
}

/// The RBAC filters of the HTTP port 9080 (plaintext chain) and the TCP port 3306.
fn rbac_of(policies_yaml: &str) -> (Filters, Filters) {
    let ls = inbound(&with_sidecar(policies_yaml), &vm_proxy());
    let http = listener(&ls, "0.0.0.0_9080");
    let h = hcm(&http.filter_chains[1]);
    assert_eq!(
        h,
        hcm(&http.filter_chains[0]),
        "both chains enforce the same rules"
    );
    let tcp = listener(&ls, "198.18.0.5_3306");
    (http_filters(&h), tcp_filters(&tcp.filter_chains[0]))
}

#[test]
fn allow_rules_translate_as_istio_does() {
    let policy = ap(
        "viewers",
        "default",
        r#"{
  selector: {matchLabels: {app: ratings}},
  rules: [
    {from: [{source: {principals: [cluster.local/ns/default/sa/sleep, "cluster.local/ns/prod/*", "*/sa/admin"]}},
            {source: {namespaces: [test, "team-*"], notPrincipals: ["*"]}}],
     to: [{operation: {methods: [GET, "*"], paths: [/exact, "/api/*", "*.css"], ports: ["9080"]}},
          {operation: {notPaths: ["/admin*"], notPorts: ["3306"], notMethods: [DELETE]}}]},
    {from: [{source: {principals: ["*"], notNamespaces: [evil]}}]}
  ]
}"#,
    );
    let (http, tcp) = rbac_of(&policy);
    let [(deny_or_allow, Some(allow)), (router, None)] = http.as_slice() else {
        panic!("{http:?}")
    };
    assert_eq!(deny_or_allow, "envoy.filters.http.rbac");
    assert_eq!(router, "envoy.filters.http.router");
    assert_eq!(action(allow), rbac::Action::Allow);
    assert_eq!(
        policies(allow),
        [
            (
                "ns[default]-policy[viewers]-rule[0]".to_string(),
                vec![
                    "and(or(header :method exact GET, header :method present), \
                     or(path exact /exact, path prefix /api/, path suffix .css), \
                     or(port 9080))"
                        .to_string(),
                    "and(not(or(header :method exact DELETE)), not(or(path prefix /admin)), \
                     not(or(port 3306)))"
                        .to_string(),
                ],
                vec![
                    "and(or(peer exact spiffe://cluster.local/ns/default/sa/sleep, \
                     peer prefix spiffe://cluster.local/ns/prod/, peer suffix /sa/admin))"
                        .to_string(),
                    "and(not(or(peer regex .+)), \
                     or(peer regex .*/ns/test/.*, peer regex .*/ns/team-.*/.*))"
                        .to_string(),
                ],
            ),
            (
                "ns[default]-policy[viewers]-rule[1]".to_string(),
                vec!["and(any)".to_string()],
                vec!["and(or(peer regex .+), not(or(peer regex .*/ns/evil/.*)))".to_string()],
            ),
        ]
    );

    // TCP: rule 0 names methods and paths, so as an ALLOW rule it allows nothing on TCP.
    let [(name, Some(allow)), (proxy_name, None)] = tcp.as_slice() else {
        panic!("{tcp:?}")
    };
    assert_eq!(name, "envoy.filters.network.rbac");
    assert_eq!(proxy_name, "envoy.filters.network.tcp_proxy");
    assert_eq!(
        policies(allow)
            .into_iter()
            .map(|(n, ..)| n)
            .collect::<Vec<_>>(),
        ["ns[default]-policy[viewers]-rule[1]"]
    );
}

#[test]
fn deny_comes_first_and_widens_on_tcp() {
    let deny = ap(
        "deny",
        "default",
        r#"{action: DENY, rules: [
  {to: [{operation: {methods: [POST], ports: ["3306", "9080"]}}]},
  {from: [{source: {namespaces: [evil]}}], to: [{operation: {paths: ["/private*"]}}]}
]}"#,
    );
    let allow = ap("allow-all", "default", "{rules: [{}]}");
    let (http, tcp) = rbac_of(&format!("{deny}{allow}"));
    let [(_, Some(first)), (_, Some(second)), (router, None)] = http.as_slice() else {
        panic!("{http:?}")
    };
    assert_eq!(router, "envoy.filters.http.router");
    assert_eq!(action(first), rbac::Action::Deny, "DENY is evaluated first");
    assert_eq!(action(second), rbac::Action::Allow);
    assert_eq!(
        policies(first),
        [
            (
                "ns[default]-policy[deny]-rule[0]".to_string(),
                vec!["and(or(header :method exact POST), or(port 3306, port 9080))".to_string()],
                vec!["and(any)".to_string()],
            ),
            (
                "ns[default]-policy[deny]-rule[1]".to_string(),
                vec!["and(or(path prefix /private))".to_string()],
                vec!["and(or(peer regex .*/ns/evil/.*))".to_string()],
            ),
        ]
    );
    assert_eq!(
        policies(second),
        [(
            "ns[default]-policy[allow-all]-rule[0]".to_string(),
            vec!["and(any)".to_string()],
            vec!["and(any)".to_string()],
        )],
        "rules: [{{}}] matches everything"
    );

    // On TCP a DENY rule loses its HTTP-only values and keeps the rest (Istio: wider deny).
    let [(_, Some(first)), (_, Some(second)), (_, None)] = tcp.as_slice() else {
        panic!("{tcp:?}")
    };
    assert_eq!(action(first), rbac::Action::Deny);
    assert_eq!(action(second), rbac::Action::Allow);
    assert_eq!(
        policies(first),
        [
            (
                "ns[default]-policy[deny]-rule[0]".to_string(),
                vec!["and(or(port 3306, port 9080))".to_string()],
                vec!["and(any)".to_string()],
            ),
            (
                "ns[default]-policy[deny]-rule[1]".to_string(),
                vec!["and(any)".to_string()],
                vec!["and(or(peer regex .*/ns/evil/.*))".to_string()],
            ),
        ]
    );
}

#[test]
fn empty_rules_and_policy_selection() {
    // An ALLOW policy without rules allows nothing: the ALLOW filter has no policies.
    let (http, tcp) = rbac_of(&ap("deny-all", "default", "{}"));
    for filters in [&http, &tcp] {
        let (_, Some(allow)) = &filters[0] else {
            panic!("{filters:?}")
        };
        assert_eq!(action(allow), rbac::Action::Allow);
        assert!(allow.policies.is_empty());
        assert_eq!(filters.len(), 2);
    }

    // A DENY policy without rules denies nothing: no filter at all.
    let (http, tcp) = rbac_of(&ap("noop", "default", "{action: DENY}"));
    assert_eq!(http.len(), 1, "{http:?}");
    assert_eq!(tcp.len(), 1, "{tcp:?}");

    // Selection: this namespace without selector or with a matching one, the root namespace
    // without selector or with a matching one (any namespace); nothing else.
    let applies = [
        ap("ns-wide", "default", "{rules: [{}]}"),
        ap(
            "mine",
            "default",
            "{selector: {matchLabels: {app: ratings}}, rules: [{}]}",
        ),
        ap("empty-selector", "default", "{selector: {}, rules: [{}]}"),
        ap("mesh", "istio-system", "{rules: [{}]}"),
        ap(
            "mesh-selected",
            "istio-system",
            "{selector: {matchLabels: {version: v1}}, rules: [{}]}",
        ),
    ]
    .concat();
    let ignored = [
        ap(
            "other-app",
            "default",
            "{selector: {matchLabels: {app: reviews}}, rules: [{}]}",
        ),
        ap("other-ns", "prod", "{rules: [{}]}"),
        ap(
            "mesh-other",
            "istio-system",
            "{selector: {matchLabels: {app: reviews}}, rules: [{}]}",
        ),
    ]
    .concat();
    let (http, _) = rbac_of(&format!("{applies}{ignored}"));
    let (_, Some(allow)) = &http[0] else { panic!() };
    let mut got: Vec<String> = allow.policies.keys().cloned().collect();
    got.sort();
    assert_eq!(
        got,
        [
            "ns[default]-policy[empty-selector]-rule[0]",
            "ns[default]-policy[mine]-rule[0]",
            "ns[default]-policy[ns-wide]-rule[0]",
            "ns[istio-system]-policy[mesh-selected]-rule[0]",
            "ns[istio-system]-policy[mesh]-rule[0]",
        ]
    );
}

#[test]
fn rbac_filters_are_typed_as_envoy_expects() {
    let (_, tcp) = rbac_of(&ap("deny-all", "default", "{}"));
    assert_eq!(tcp[0].0, "envoy.filters.network.rbac");
    let ls = inbound(&with_sidecar(&ap("deny-all", "default", "{}")), &vm_proxy());
    let f = &listener(&ls, "198.18.0.5_3306").filter_chains[0].filters[0];
    let Some(filter::ConfigType::TypedConfig(Any { type_url, .. })) = &f.config_type else {
        panic!()
    };
    assert_eq!(
        type_url,
        "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC"
    );
}

// ---------------------------------------------------------------------------------------------
// Capture: `virtualInbound` on 15006.

/// Services of the captured sidecar `proxy()` (198.18.0.5, `app: sleep`, namespace `default`):
/// `productpage` selects it (HTTP 9080 → 19080, TCP 3306, gRPC 9090), `legacy` lists its
/// address (TCP 7000 → the endpoint's 17000); the others are not its own.
const CAPTURED: &str = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: productpage}
spec:
  hosts: [productpage.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports:
  - {number: 9080, name: http, protocol: HTTP, targetPort: 19080}
  - {number: 3306, name: tcp-db, protocol: TCP}
  - {number: 9090, name: grpc, protocol: GRPC}
  workloadSelector: {labels: {app: sleep}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: legacy}
spec:
  hosts: [legacy.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 7000, name: tcp-legacy, protocol: TCP}]
  endpoints: [{address: 198.18.0.5, ports: {tcp-legacy: 17000}}, {address: 198.18.0.6}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: elsewhere, namespace: prod}
spec:
  hosts: [sleep.prod.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 5000, name: http, protocol: HTTP}]
  workloadSelector: {labels: {app: sleep}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews}
spec:
  hosts: [reviews.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 6000, name: http, protocol: HTTP}]
  workloadSelector: {labels: {app: reviews}}
"#;

fn virtual_inbound(yaml: &str, p: &Proxy) -> Listener {
    let ls = listeners(&mesh(yaml), p);
    let [vi] = ls
        .iter()
        .filter(|l| l.name == "virtualInbound")
        .collect::<Vec<_>>()[..]
    else {
        panic!("one virtualInbound in {:?}", names(&ls))
    };
    vi.clone()
}

fn chain_port(c: &FilterChain) -> Option<u32> {
    c.filter_chain_match
        .as_ref()
        .and_then(|m| m.destination_port)
        .map(|p| p.value)
}

/// The mode of each port's chains (None: the passthrough), in chain order.
fn port_modes(l: &Listener) -> Vec<(Option<u32>, &'static str)> {
    let mut out: Vec<(Option<u32>, Vec<&FilterChain>)> = Vec::new();
    for c in l
        .filter_chains
        .iter()
        .filter(|c| c.name != "virtualInbound-blackhole")
    {
        match out.last_mut() {
            Some((port, chains)) if *port == chain_port(c) => chains.push(c),
            _ => out.push((chain_port(c), vec![c])),
        }
    }
    out.into_iter().map(|(p, cs)| (p, mode_of(&cs))).collect()
}

fn tcp_cluster(c: &FilterChain) -> String {
    let proxy: TcpProxy = typed(c.filters.last().unwrap());
    let Some(ClusterSpecifier::Cluster(name)) = proxy.cluster_specifier else {
        panic!()
    };
    name
}

fn bind_config(c: &Cluster) -> Option<(String, u32)> {
    let sa = c.upstream_bind_config.as_ref()?.source_address.as_ref()?;
    let Some(PortSpecifier::PortValue(port)) = sa.port_specifier else {
        panic!()
    };
    Some((sa.address.clone(), port))
}

#[test]
fn captured_workloads_get_virtual_inbound() {
    let l = virtual_inbound(CAPTURED, &proxy());
    assert_eq!(bound(&l), ("0.0.0.0".to_string(), 15006));
    assert_eq!(l.traffic_direction, TrafficDirection::Inbound as i32);
    assert!(l.bind_to_port.is_none());
    assert!(
        l.use_original_dst.is_none(),
        "no hand-off: capture-mode outbound listeners would take inbound connections"
    );
    let filters: Vec<&str> = l.listener_filters.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        filters,
        [
            "envoy.filters.listener.original_dst",
            "envoy.filters.listener.tls_inspector"
        ]
    );
    assert_eq!(l.listener_filters_timeout, super::secs(0));
    assert!(l.continue_on_listener_filters_timeout);

    // The loop guard first, then the passthrough, then the ports by number.
    let blackhole = &l.filter_chains[0];
    assert_eq!(blackhole.name, "virtualInbound-blackhole");
    assert_eq!(chain_port(blackhole), Some(15006));
    assert_eq!(tcp_cluster(blackhole), "BlackHoleCluster");
    assert_eq!(
        port_modes(&l),
        [
            (None, "PERMISSIVE"),
            (Some(3306), "PERMISSIVE"),
            (Some(9090), "PERMISSIVE"),
            (Some(17000), "PERMISSIVE"),
            (Some(19080), "PERMISSIVE"),
        ],
        "the selected service's target ports and the endpoint's own port; no other service's"
    );
    let names: Vec<&str> = l.filter_chains.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names[1..7],
        [
            "virtualInbound_mtls",
            "virtualInbound_plaintext",
            "virtualInbound_tls",
            "0.0.0.0_3306_mtls",
            "0.0.0.0_3306_plaintext",
            "0.0.0.0_3306_tls",
        ]
    );

    // Envoy refuses a listener with two identical matches.
    let mut matches: Vec<_> = l
        .filter_chains
        .iter()
        .map(|c| format!("{:?}", c.filter_chain_match))
        .collect();
    matches.sort();
    matches.dedup();
    assert_eq!(matches.len(), l.filter_chains.len());

    for c in l
        .filter_chains
        .iter()
        .filter(|c| c.name.starts_with("virtualInbound_"))
    {
        assert_eq!(tcp_cluster(c), "InboundPassthroughCluster", "{}", c.name);
    }
    let http = l
        .filter_chains
        .iter()
        .find(|c| c.name == "0.0.0.0_19080_plaintext")
        .unwrap();
    let h = hcm(http);
    let Some(RouteSpecifier::RouteConfig(rc)) = &h.route_specifier else {
        panic!()
    };
    let Some(Action::Route(ra)) = &rc.virtual_hosts[0].routes[0].action else {
        panic!()
    };
    assert_eq!(
        ra.cluster_specifier,
        Some(RouteCluster::Cluster("inbound|19080||".to_string()))
    );
    let tls = downstream_tls(
        l.filter_chains
            .iter()
            .find(|c| c.name == "0.0.0.0_19080_mtls")
            .unwrap(),
    );
    assert!(tls.require_client_certificate.unwrap().value);
    assert_eq!(
        tls.common_tls_context.unwrap().alpn_protocols,
        ["h2", "http/1.1"]
    );
    let tcp = l
        .filter_chains
        .iter()
        .find(|c| c.name == "0.0.0.0_17000_plaintext")
        .unwrap();
    assert_eq!(tcp_cluster(tcp), "inbound|17000||");

    // Clusters: ORIGINAL_DST from 127.0.0.6 for every port (Istio ≥1.10), and the passthrough.
    let cs = clusters(&mesh(CAPTURED), &proxy());
    for name in [
        "inbound|3306||",
        "inbound|9090||",
        "inbound|17000||",
        "inbound|19080||",
        "InboundPassthroughCluster",
    ] {
        let c = find(&cs, name);
        assert_eq!(discovery(c), DiscoveryType::OriginalDst, "{name}");
        assert_eq!(c.lb_policy, LbPolicy::ClusterProvided as i32, "{name}");
        assert_eq!(bind_config(c), Some(("127.0.0.6".to_string(), 0)), "{name}");
        assert!(c.load_assignment.is_none(), "{name}");
    }
    assert!(
        find(&cs, "inbound|9090||")
            .typed_extension_protocol_options
            .contains_key("envoy.extensions.upstreams.http.v3.HttpProtocolOptions"),
        "HTTP/2 to a gRPC application"
    );
    assert!(
        !cs.iter()
            .any(|c| c.name == "inbound|5000||" || c.name == "inbound|6000||")
    );
}

#[test]
fn capture_modes_per_port_and_for_the_passthrough() {
    let p = proxy();
    let mesh_strict = pa("default", "istio-system", "{mtls: {mode: STRICT}}");
    let workload = pa(
        "sleep",
        "default",
        "{selector: {matchLabels: {app: sleep}}, \
         portLevelMtls: {3306: {mode: DISABLE}, 19080: {mode: PERMISSIVE}, 8443: {mode: DISABLE}}}",
    );
    let l = virtual_inbound(&format!("{CAPTURED}{mesh_strict}{workload}"), &p);
    assert_eq!(
        port_modes(&l),
        [
            (None, "STRICT"),
            (Some(8443), "DISABLE"),
            (Some(3306), "DISABLE"),
            (Some(9090), "STRICT"),
            (Some(17000), "STRICT"),
            (Some(19080), "PERMISSIVE"),
        ],
        "the passthrough takes the workload's mode; a port only portLevelMtls names gets \
         passthrough chains of its own"
    );
    let extra = l
        .filter_chains
        .iter()
        .find(|c| chain_port(c) == Some(8443))
        .unwrap();
    assert_eq!(extra.name, "virtualInbound_8443_plaintext");
    assert_eq!(tcp_cluster(extra), "InboundPassthroughCluster");
    // STRICT on an HTTP port: one mutual TLS chain, any ALPN (plaintext matches nothing).
    let strict = l
        .filter_chains
        .iter()
        .find(|c| c.name == "0.0.0.0_9090_mtls")
        .unwrap();
    assert_eq!(
        downstream_tls(strict)
            .common_tls_context
            .unwrap()
            .alpn_protocols,
        ["h2", "http/1.1"]
    );

    let ns_disable = pa("ns", "default", "{mtls: {mode: DISABLE}}");
    let l = virtual_inbound(&format!("{CAPTURED}{mesh_strict}{ns_disable}"), &p);
    assert!(
        port_modes(&l).iter().all(|(_, m)| *m == "DISABLE"),
        "{:?}",
        port_modes(&l)
    );
}

#[test]
fn capture_chains_carry_the_workload_authorization() {
    let policy = ap(
        "sleep",
        "default",
        r#"{selector: {matchLabels: {app: sleep}}, rules: [
  {from: [{source: {principals: [cluster.local/ns/default/sa/reviews]}}]},
  {to: [{operation: {methods: [GET]}}]}
]}"#,
    );
    let deny = ap(
        "deny",
        "default",
        "{action: DENY, rules: [{to: [{operation: {ports: [\"17000\"]}}]}]}",
    );
    let l = virtual_inbound(&format!("{CAPTURED}{policy}{deny}"), &proxy());
    let rbac_names = |filters: &Filters| {
        filters
            .iter()
            .map(|(name, rbac)| (name.clone(), rbac.as_ref().map(action)))
            .collect::<Vec<_>>()
    };
    for c in &l.filter_chains {
        let port = chain_port(c);
        if c.name == "virtualInbound-blackhole" {
            assert_eq!(
                c.filters.len(),
                1,
                "nothing to authorize on a dropped connection"
            );
            continue;
        }
        if matches!(port, Some(9090 | 19080)) {
            let filters = http_filters(&hcm(c));
            assert_eq!(
                rbac_names(&filters),
                [
                    (
                        "envoy.filters.http.rbac".to_string(),
                        Some(rbac::Action::Deny)
                    ),
                    (
                        "envoy.filters.http.rbac".to_string(),
                        Some(rbac::Action::Allow)
                    ),
                    ("envoy.filters.http.router".to_string(), None),
                ],
                "{}",
                c.name
            );
            let (_, Some(allow)) = &filters[1] else {
                panic!()
            };
            assert_eq!(allow.policies.len(), 2, "HTTP sees both rules");
        } else {
            // TCP ports and the passthrough: the rule naming a method allows nothing on TCP.
            let filters = tcp_filters(c);
            assert_eq!(
                rbac_names(&filters),
                [
                    (
                        "envoy.filters.network.rbac".to_string(),
                        Some(rbac::Action::Deny)
                    ),
                    (
                        "envoy.filters.network.rbac".to_string(),
                        Some(rbac::Action::Allow)
                    ),
                    ("envoy.filters.network.tcp_proxy".to_string(), None),
                ],
                "{}",
                c.name
            );
            let (_, Some(allow)) = &filters[1] else {
                panic!()
            };
            assert_eq!(
                allow.policies.keys().collect::<Vec<_>>(),
                ["ns[default]-policy[sleep]-rule[0]"],
                "{}",
                c.name
            );
        }
    }
}

#[test]
fn no_virtual_inbound_without_capture() {
    let p = Proxy {
        interception: Interception::None,
        ..proxy()
    };
    let ls = listeners(&mesh(CAPTURED), &p);
    assert!(
        ls.iter()
            .all(|l| l.traffic_direction == TrafficDirection::Outbound as i32),
        "service ports are never bound without capture (they are the application's): {:?}",
        names(&ls)
    );
    let cs = clusters(&mesh(CAPTURED), &p);
    assert!(
        !cs.iter()
            .any(|c| c.name.starts_with("inbound|") || c.name == "InboundPassthroughCluster"),
        "{:?}",
        cs.iter().map(|c| &c.name).collect::<Vec<_>>()
    );
}

#[test]
fn sidecar_ingress_replaces_service_ports_under_capture() {
    // `app: ratings` is selected by the Sidecar; a service selecting it too is ignored, as in
    // Istio when a Sidecar declares ingress listeners.
    let service = CAPTURED.replace("{labels: {app: sleep}}", "{labels: {app: ratings}}");
    let captured = Proxy {
        interception: Interception::Redirect,
        ..vm_proxy()
    };
    let yaml = with_sidecar(&service);
    let l = virtual_inbound(&yaml, &captured);
    assert_eq!(
        port_modes(&l),
        [
            (None, "PERMISSIVE"),
            (Some(3306), "PERMISSIVE"),
            (Some(9080), "PERMISSIVE"),
            (Some(9090), "PERMISSIVE"),
        ]
    );
    assert!(
        inbound(&yaml, &captured)
            .iter()
            .all(|l| l.name == "virtualInbound"),
        "captured ingress listeners bind nothing of their own"
    );
    let cs = clusters(&mesh(&yaml), &captured);
    let c = find(&cs, "inbound|9080||");
    assert_eq!(
        discovery(c),
        DiscoveryType::Static,
        "to the defaultEndpoint"
    );
    assert_eq!(bind_config(c), None, "loopback is never redirected");
    assert!(!cs.iter().any(|c| c.name == "inbound|19080||"));

    // An ingress listener that opts out of capture keeps a listener of its own, and
    // `0.0.0.0:<port>` as the endpoint means the workload's own address (from 127.0.0.6).
    let opt_out = SIDECAR
        .replace(
            "    defaultEndpoint: 127.0.0.1:8080",
            "    defaultEndpoint: 127.0.0.1:8080\n    captureMode: NONE",
        )
        .replace("127.0.0.1:19090", "0.0.0.0:19090");
    let ls = inbound(&opt_out, &captured);
    assert_eq!(names(&ls), ["virtualInbound", "0.0.0.0_9080"]);
    assert_eq!(
        port_modes(&ls[0]),
        [
            (None, "PERMISSIVE"),
            (Some(3306), "PERMISSIVE"),
            (Some(9090), "PERMISSIVE"),
        ]
    );
    let cs = clusters(&mesh(&opt_out), &captured);
    let c = find(&cs, "inbound|9090||");
    let la = c.load_assignment.as_ref().unwrap();
    let Some(HostIdentifier::Endpoint(ep)) = &la.endpoints[0].lb_endpoints[0].host_identifier
    else {
        panic!()
    };
    let Some(address::Address::SocketAddress(sa)) = &ep.address.as_ref().unwrap().address else {
        panic!()
    };
    assert_eq!(sa.address, "198.18.0.5");
    assert_eq!(bind_config(c), Some(("127.0.0.6".to_string(), 0)));
}

#[test]
fn virtual_inbound_is_deterministic() {
    // Same documents in another order, and a second service claiming a port already taken:
    // the first by host name keeps it, and the output does not move.
    let second = r#"
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: also-mine}
spec:
  hosts: [aaa.default.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 3306, name: http-shadow, protocol: HTTP}]
  workloadSelector: {labels: {app: sleep}}
"#;
    let docs: Vec<&str> = CAPTURED.split("\n---\n").collect();
    let reversed = docs
        .iter()
        .rev()
        .copied()
        .collect::<Vec<_>>()
        .join("\n---\n");
    let a = (
        listeners(&mesh(&format!("{CAPTURED}{second}")), &proxy()),
        clusters(&mesh(&format!("{CAPTURED}{second}")), &proxy()),
    );
    let b = (
        listeners(&mesh(&format!("{second}\n---\n{reversed}")), &proxy()),
        clusters(&mesh(&format!("{second}\n---\n{reversed}")), &proxy()),
    );
    assert_eq!(a, b);
    let vi = virtual_inbound(&format!("{CAPTURED}{second}"), &proxy());
    let on_3306: Vec<&FilterChain> = vi
        .filter_chains
        .iter()
        .filter(|c| chain_port(c) == Some(3306))
        .collect();
    assert_eq!(on_3306.len(), 2, "one port, one protocol: aaa's HTTP wins");
    hcm(on_3306[0]);
}
