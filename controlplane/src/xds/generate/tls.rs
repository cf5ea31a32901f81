//! TLS contexts in Istio's shape. Certificates never travel in xDS: every context names two SDS
//! secrets that the local agent serves on the bootstrap's static `sds-grpc` cluster, `default`
//! (the workload's chain and key) and `ROOTCA` (the mesh's trust bundle).
//!
//! - Outbound (auto mTLS): endpoints of MESH_INTERNAL services whose workload runs a mesh proxy
//!   (label `security.istio.io/tlsMode: istio`, passed on as endpoint metadata by EDS) get an
//!   `UpstreamTlsContext`, chosen by the cluster's `transport_socket_matches`: it presents
//!   `default`, checks the peer against `ROOTCA` and the service's identities, and sends the
//!   cross-network SNI name. Every other endpoint gets plaintext.
//! - Inbound: a `DownstreamTlsContext` that requires a client certificate signed by `ROOTCA`.
//!   Any mesh identity passes the handshake; AuthorizationPolicies decide who gets in.

use std::collections::BTreeSet;

use strait_proto::identity::SpiffeId;
use strait_proto::sni::SniName;
use strait_proto::xds::envoy::config::cluster::v3::cluster::TransportSocketMatch;
use strait_proto::xds::envoy::config::core::v3::api_config_source::ApiType;
use strait_proto::xds::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use strait_proto::xds::envoy::config::core::v3::grpc_service::{EnvoyGrpc, TargetSpecifier};
use strait_proto::xds::envoy::config::core::v3::{
    ApiConfigSource, ApiVersion, ConfigSource, GrpcService, TransportSocket, transport_socket,
};
use strait_proto::xds::envoy::extensions::transport_sockets::raw_buffer::v3::RawBuffer;
use strait_proto::xds::envoy::extensions::transport_sockets::tls::v3::common_tls_context::{
    CombinedCertificateValidationContext, ValidationContextType,
};
use strait_proto::xds::envoy::extensions::transport_sockets::tls::v3::subject_alt_name_matcher::SanType;
use strait_proto::xds::envoy::extensions::transport_sockets::tls::v3::tls_parameters::TlsProtocol;
use strait_proto::xds::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, SdsSecretConfig,
    SubjectAltNameMatcher, TlsParameters, UpstreamTlsContext,
};
use strait_proto::xds::envoy::r#type::matcher::v3::StringMatcher;
use strait_proto::xds::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use strait_proto::xds::google::protobuf::{Struct, Value, value::Kind};
use strait_proto::xds::to_any;

use crate::model::mesh::{Endpoint, Service};
use crate::model::networking::Location;

use super::{Protocol, boolean, duration};

/// Static cluster of the bootstrap that reaches the local SDS server (Istio's name).
pub const SDS_CLUSTER: &str = "sds-grpc";
/// SDS secret holding the workload's certificate chain and key.
pub const SDS_DEFAULT: &str = "default";
/// SDS secret holding the mesh's trusted root certificates.
pub const SDS_ROOT_CA: &str = "ROOTCA";
/// Endpoint label a workload with a mesh proxy carries (Istio's).
pub const TLS_MODE_LABEL: &str = "security.istio.io/tlsMode";
/// Endpoint metadata namespace that `transport_socket_matches` compare against.
pub const TRANSPORT_SOCKET_MATCH: &str = "envoy.transport_socket_match";
const TLS_TRANSPORT_SOCKET: &str = "envoy.transport_sockets.tls";
const RAW_BUFFER_TRANSPORT_SOCKET: &str = "envoy.transport_sockets.raw_buffer";
/// ALPN a mesh client offers: metadata exchange, then `istio` (which marks mesh traffic).
const ALPN_IN_MESH: [&str; 2] = ["istio-peer-exchange", "istio"];
/// Istio's server-side ALPN for HTTP ports and, with metadata exchange first, for TCP ports.
const ALPN_HTTP: [&str; 2] = ["h2", "http/1.1"];
const ALPN_TCP: [&str; 3] = ["istio-peer-exchange", "h2", "http/1.1"];
/// Istio's inbound cipher suites (TLS 1.2; TLS 1.3 suites are not configurable).
const INBOUND_CIPHERS: [&str; 6] = [
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "AES256-GCM-SHA384",
    "AES128-GCM-SHA256",
];

/// The SDS reference Istio writes: the secret `name` from the agent over `sds-grpc`. The
/// initial fetch never times out (`0s`), as in Istio: a cluster or listener is not used before
/// its certificate has arrived.
pub(super) fn sds_secret(name: &str) -> SdsSecretConfig {
    let api = ApiConfigSource {
        api_type: ApiType::Grpc as i32,
        transport_api_version: ApiVersion::V3 as i32,
        grpc_services: vec![GrpcService {
            target_specifier: Some(TargetSpecifier::EnvoyGrpc(EnvoyGrpc {
                cluster_name: SDS_CLUSTER.to_string(),
                ..Default::default()
            })),
            ..Default::default()
        }],
        set_node_on_first_message_only: true,
        ..Default::default()
    };
    SdsSecretConfig {
        name: name.to_string(),
        sds_config: Some(ConfigSource {
            config_source_specifier: Some(ConfigSourceSpecifier::ApiConfigSource(api)),
            initial_fetch_timeout: Some(duration(std::time::Duration::ZERO)),
            resource_api_version: ApiVersion::V3 as i32,
            ..Default::default()
        }),
    }
}

/// Certificate `default`, and validation against `ROOTCA` plus, when given, exactly these URI
/// SANs.
fn common_tls_context(sans: &[String], alpn: &[&str]) -> CommonTlsContext {
    let san_matchers = sans
        .iter()
        .map(|san| SubjectAltNameMatcher {
            san_type: SanType::Uri as i32,
            matcher: Some(StringMatcher {
                match_pattern: Some(MatchPattern::Exact(san.clone())),
                ..Default::default()
            }),
            ..Default::default()
        })
        .collect();
    CommonTlsContext {
        alpn_protocols: alpn.iter().map(|a| a.to_string()).collect(),
        tls_certificate_sds_secret_configs: vec![sds_secret(SDS_DEFAULT)],
        validation_context_type: Some(ValidationContextType::CombinedValidationContext(
            CombinedCertificateValidationContext {
                default_validation_context: Some(CertificateValidationContext {
                    match_typed_subject_alt_names: san_matchers,
                    ..Default::default()
                }),
                validation_context_sds_secret_config: Some(sds_secret(SDS_ROOT_CA)),
                ..Default::default()
            },
        )),
        ..Default::default()
    }
}

/// The client side of Istio mutual TLS to `svc` (cluster `subset`, `port`).
pub(super) fn upstream_tls_context(
    svc: &Service,
    port: u32,
    subset: Option<&str>,
    protocol: Protocol,
    trust_domain: &str,
) -> UpstreamTlsContext {
    let mut alpn = ALPN_IN_MESH.to_vec();
    if protocol.is_h2() {
        // Istio's in-mesh HTTP/2 ALPN: the upstream codec is HTTP/2 either way.
        alpn.push("h2");
    }
    UpstreamTlsContext {
        common_tls_context: Some(common_tls_context(
            &service_identities(svc, trust_domain),
            &alpn,
        )),
        sni: sni(svc, port, subset),
        ..Default::default()
    }
}

/// The server side: a client certificate is required and must chain to `ROOTCA`.
pub(super) fn downstream_tls_context(protocol: Protocol) -> DownstreamTlsContext {
    let alpn: &[&str] = if protocol.is_http() {
        &ALPN_HTTP
    } else {
        &ALPN_TCP
    };
    let mut common = common_tls_context(&[], alpn);
    common.tls_params = Some(TlsParameters {
        tls_minimum_protocol_version: TlsProtocol::TlSv12 as i32,
        cipher_suites: INBOUND_CIPHERS.iter().map(|c| c.to_string()).collect(),
        ..Default::default()
    });
    DownstreamTlsContext {
        common_tls_context: Some(common),
        require_client_certificate: boolean(true),
        ..Default::default()
    }
}

pub(super) fn downstream_transport_socket(protocol: Protocol) -> TransportSocket {
    TransportSocket {
        name: TLS_TRANSPORT_SOCKET.to_string(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(to_any(
            &downstream_tls_context(protocol),
        ))),
    }
}

/// `outbound_.<port>_.<subset or _>_.<host>`; for a host the SNI grammar refuses (a wildcard),
/// the same text built by hand, as Istio does.
fn sni(svc: &Service, port: u32, subset: Option<&str>) -> String {
    u16::try_from(port)
        .ok()
        .and_then(|p| SniName::new(p, subset, &svc.hostname).ok())
        .map(|n| n.to_string())
        .unwrap_or_else(|| {
            format!(
                "outbound_.{port}_.{}_.{}",
                subset.unwrap_or(""),
                svc.hostname
            )
        })
}

/// `spiffe://<trust domain>/ns/<service namespace>/sa/<sa>` for every distinct service account
/// of the service's endpoints, sorted. Names that cannot form a SPIFFE id are left out.
pub(super) fn service_identities(svc: &Service, trust_domain: &str) -> Vec<String> {
    let accounts: BTreeSet<&str> = svc
        .endpoints
        .iter()
        .map(|e| e.service_account.as_str())
        .filter(|sa| !sa.is_empty())
        .collect();
    accounts
        .into_iter()
        .filter_map(|sa| SpiffeId::new(trust_domain, svc.namespace.as_str(), sa).ok())
        .map(|id| id.to_string())
        .collect()
}

/// Whether endpoints of `svc` may use Istio's auto mTLS: the service is MESH_INTERNAL.
pub(super) fn auto_mtls(svc: &Service) -> bool {
    svc.location == Location::MeshInternal
}

/// Whether an endpoint's workload runs a mesh proxy (label `security.istio.io/tlsMode: istio`).
pub(super) fn has_mesh_proxy(e: &Endpoint) -> bool {
    e.labels.get(TLS_MODE_LABEL).map(String::as_str) == Some("istio")
}

/// Whether clusters of `svc` get the auto-mTLS socket matches. Istio adds them to every cluster
/// of a MESH_INTERNAL service; Strait only when one of its endpoints runs a mesh proxy. The
/// traffic is the same (the mTLS socket is chosen per endpoint), but a cluster whose endpoints
/// are all plaintext then needs no certificate: Envoy warms a cluster only once the SDS secrets
/// of every socket it may use have arrived.
pub(super) fn cluster_mtls(svc: &Service) -> bool {
    auto_mtls(svc) && svc.endpoints.iter().any(has_mesh_proxy)
}

/// `tlsMode-istio` (endpoints with metadata `{tlsMode: istio}`) → mutual TLS; `tlsMode-disabled`
/// (everything else) → plaintext.
pub(super) fn transport_socket_matches(tls: &UpstreamTlsContext) -> Vec<TransportSocketMatch> {
    let istio = TransportSocketMatch {
        name: "tlsMode-istio".to_string(),
        r#match: Some(tls_mode_struct()),
        transport_socket: Some(TransportSocket {
            name: TLS_TRANSPORT_SOCKET.to_string(),
            config_type: Some(transport_socket::ConfigType::TypedConfig(to_any(tls))),
        }),
    };
    let disabled = TransportSocketMatch {
        name: "tlsMode-disabled".to_string(),
        r#match: Some(Struct::default()),
        transport_socket: Some(TransportSocket {
            name: RAW_BUFFER_TRANSPORT_SOCKET.to_string(),
            config_type: Some(transport_socket::ConfigType::TypedConfig(to_any(
                &RawBuffer {},
            ))),
        }),
    };
    vec![istio, disabled]
}

/// `{tlsMode: istio}`: the endpoint metadata EDS sets and the socket match looks for.
pub(super) fn tls_mode_struct() -> Struct {
    Struct {
        fields: [(
            "tlsMode".to_string(),
            Value {
                kind: Some(Kind::StringValue("istio".to_string())),
            },
        )]
        .into_iter()
        .collect(),
    }
}
