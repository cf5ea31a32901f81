//! `DownstreamTlsContext` / `UpstreamTlsContext` reduced to what the proxy acts on: the SDS
//! secret names, whether a client certificate is required, the SANs to verify, ALPN, SNI and
//! protocol versions. Inline certificates, pinning, CRLs and custom validators are refused.

use strait_proto::xds::envoy::config::core::v3::{TransportSocket, transport_socket};
use strait_proto::xds::envoy::extensions::transport_sockets::raw_buffer::v3::RawBuffer;
use strait_proto::xds::envoy::extensions::transport_sockets::tls::v3::common_tls_context::ValidationContextType;
use strait_proto::xds::envoy::extensions::transport_sockets::tls::v3::subject_alt_name_matcher::SanType as EnvoySanType;
use strait_proto::xds::envoy::extensions::transport_sockets::tls::v3::tls_parameters::TlsProtocol;
use strait_proto::xds::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, SdsSecretConfig,
    SubjectAltNameMatcher, TlsParameters, UpstreamTlsContext,
};

use super::common::{
    Result, bool_or, bounded, decode_any, name, nothing_else, required_name, string_matcher,
};
use super::error::{At, FieldError};
use super::{StringMatcherConfig, limits};

pub(crate) const TLS_TRANSPORT_SOCKET: &str = "envoy.transport_sockets.tls";
pub(crate) const RAW_BUFFER_TRANSPORT_SOCKET: &str = "envoy.transport_sockets.raw_buffer";

/// A TLS protocol version bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    /// TLS 1.2.
    Tls12,
    /// TLS 1.3.
    Tls13,
}

/// Which SAN of the peer certificate a matcher looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SanType {
    /// A URI SAN (SPIFFE ids).
    Uri,
    /// A DNS name.
    Dns,
    /// An e-mail address.
    Email,
    /// An IP address.
    IpAddress,
}

/// One acceptable peer SAN; the peer is accepted if any matcher matches (none: any peer the
/// root vouches for).
#[derive(Debug, Clone, PartialEq)]
pub struct SanMatcher {
    /// The SAN type.
    pub san_type: SanType,
    /// The match on its value.
    pub matcher: StringMatcherConfig,
}

/// What both sides of TLS share.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CommonTls {
    /// SDS names of our certificate and key (Istio: `default`).
    pub certificate_sds: Vec<String>,
    /// SDS name of the root to verify the peer with (Istio: `ROOTCA`); none: no verification
    /// configured.
    pub validation_sds: Option<String>,
    /// SANs the peer certificate must carry (one of them).
    pub verify_sans: Vec<SanMatcher>,
    /// ALPN protocols, in preference order.
    pub alpn: Vec<String>,
    /// Lowest version allowed (none: the library's default).
    pub min_version: Option<TlsVersion>,
    /// Highest version allowed.
    pub max_version: Option<TlsVersion>,
    /// OpenSSL-style cipher names as configured (the TLS module maps them).
    pub cipher_suites: Vec<String>,
}

/// A listener's TLS termination.
#[derive(Debug, Clone, PartialEq)]
pub struct DownstreamTls {
    /// Shared settings.
    pub common: CommonTls,
    /// Refuse clients without a certificate (mutual TLS).
    pub require_client_certificate: bool,
}

/// A cluster's TLS origination.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamTls {
    /// Shared settings.
    pub common: CommonTls,
    /// SNI to send (Istio: `outbound_.<port>_.<subset>_.<host>`); empty: none.
    pub sni: String,
}

fn version(field: &str, v: i32) -> Result<Option<TlsVersion>> {
    match TlsProtocol::try_from(v) {
        Ok(TlsProtocol::TlsAuto) => Ok(None),
        Ok(TlsProtocol::TlSv12) => Ok(Some(TlsVersion::Tls12)),
        Ok(TlsProtocol::TlSv13) => Ok(Some(TlsVersion::Tls13)),
        _ => Err(FieldError::new(
            field,
            format!("protocol version {v} is not supported (TLS 1.2 and 1.3 only)"),
        )),
    }
}

fn sds(mut s: SdsSecretConfig) -> Result<String> {
    let n = required_name("name", std::mem::take(&mut s.name))?;
    // Where the secret comes from is the certificate manager's business (Istio's `sds-grpc`).
    s.sds_config = None;
    nothing_else(&s)?;
    Ok(n)
}

fn tls_params(mut p: TlsParameters, common: &mut CommonTls) -> Result<()> {
    common.min_version = version(
        "tls_minimum_protocol_version",
        p.tls_minimum_protocol_version,
    )?;
    common.max_version = version(
        "tls_maximum_protocol_version",
        p.tls_maximum_protocol_version,
    )?;
    p.tls_minimum_protocol_version = 0;
    p.tls_maximum_protocol_version = 0;
    bounded("cipher_suites", &p.cipher_suites, 64)?;
    common.cipher_suites = std::mem::take(&mut p.cipher_suites);
    nothing_else(&p)
}

fn san_matcher(mut m: SubjectAltNameMatcher) -> Result<SanMatcher> {
    let san_type = match EnvoySanType::try_from(m.san_type) {
        Ok(EnvoySanType::Uri) => SanType::Uri,
        Ok(EnvoySanType::Dns) => SanType::Dns,
        Ok(EnvoySanType::Email) => SanType::Email,
        Ok(EnvoySanType::IpAddress) => SanType::IpAddress,
        _ => {
            return Err(FieldError::new(
                "san_type",
                format!("{} is not supported", m.san_type),
            ));
        }
    };
    let matcher = m
        .matcher
        .take()
        .ok_or_else(|| FieldError::new("matcher", "must be set"))?;
    let matcher = string_matcher(matcher).at("matcher")?;
    m.san_type = 0;
    nothing_else(&m)?;
    Ok(SanMatcher { san_type, matcher })
}

fn validation(mut v: CertificateValidationContext, common: &mut CommonTls) -> Result<()> {
    bounded(
        "match_typed_subject_alt_names",
        &v.match_typed_subject_alt_names,
        limits::MAX_SANS,
    )?;
    for (i, m) in std::mem::take(&mut v.match_typed_subject_alt_names)
        .into_iter()
        .enumerate()
    {
        common
            .verify_sans
            .push(san_matcher(m).at_index("match_typed_subject_alt_names", i)?);
    }
    nothing_else(&v)
}

fn common_tls(mut c: CommonTlsContext) -> Result<CommonTls> {
    let mut out = CommonTls::default();
    if let Some(p) = c.tls_params.take() {
        tls_params(p, &mut out).at("tls_params")?;
    }
    bounded(
        "tls_certificate_sds_secret_configs",
        &c.tls_certificate_sds_secret_configs,
        8,
    )?;
    for (i, s) in std::mem::take(&mut c.tls_certificate_sds_secret_configs)
        .into_iter()
        .enumerate()
    {
        out.certificate_sds
            .push(sds(s).at_index("tls_certificate_sds_secret_configs", i)?);
    }
    bounded("alpn_protocols", &c.alpn_protocols, 16)?;
    for (i, a) in std::mem::take(&mut c.alpn_protocols)
        .into_iter()
        .enumerate()
    {
        if a.is_empty() || a.len() > 255 {
            return Err(FieldError::new(
                format!("alpn_protocols[{i}]"),
                "must be 1 to 255 bytes",
            ));
        }
        out.alpn.push(a);
    }
    match c.validation_context_type.take() {
        None => {}
        Some(ValidationContextType::CombinedValidationContext(mut combined)) => {
            let at = "combined_validation_context";
            if let Some(d) = combined.default_validation_context.take() {
                validation(d, &mut out)
                    .at("default_validation_context")
                    .at(at)?;
            }
            if let Some(s) = combined.validation_context_sds_secret_config.take() {
                out.validation_sds =
                    Some(sds(s).at("validation_context_sds_secret_config").at(at)?);
            }
            nothing_else(&combined).at(at)?;
        }
        Some(ValidationContextType::ValidationContextSdsSecretConfig(s)) => {
            out.validation_sds = Some(sds(s).at("validation_context_sds_secret_config")?);
        }
        Some(ValidationContextType::ValidationContext(v)) => {
            validation(v, &mut out).at("validation_context")?;
        }
        Some(_) => {
            return Err(FieldError::new(
                "validation_context_type",
                "only validation_context, validation_context_sds_secret_config and \
                 combined_validation_context are supported",
            ));
        }
    }
    nothing_else(&c)?;
    Ok(out)
}

pub(crate) fn downstream(mut d: DownstreamTlsContext) -> Result<DownstreamTls> {
    let common =
        common_tls(d.common_tls_context.take().unwrap_or_default()).at("common_tls_context")?;
    let require_client_certificate = bool_or(d.require_client_certificate.take(), false);
    nothing_else(&d)?;
    Ok(DownstreamTls {
        common,
        require_client_certificate,
    })
}

pub(crate) fn upstream(mut u: UpstreamTlsContext) -> Result<UpstreamTls> {
    let common =
        common_tls(u.common_tls_context.take().unwrap_or_default()).at("common_tls_context")?;
    let sni = name("sni", std::mem::take(&mut u.sni))?;
    nothing_else(&u)?;
    Ok(UpstreamTls { common, sni })
}

/// A transport socket as the proxy sees it.
#[derive(Debug)]
pub(crate) enum Socket<T> {
    Plaintext,
    Tls(T),
}

fn socket<T, M>(mut s: TransportSocket, decode: impl FnOnce(M) -> Result<T>) -> Result<Socket<T>>
where
    M: prost::Message + prost::Name + Default,
{
    let config = match s.config_type.take() {
        Some(transport_socket::ConfigType::TypedConfig(any)) => any,
        None => return Err(FieldError::new("typed_config", "must be set")),
    };
    let out = match s.name.as_str() {
        TLS_TRANSPORT_SOCKET => {
            Socket::Tls(decode(decode_any::<M>(&config).at("typed_config")?).at("typed_config")?)
        }
        RAW_BUFFER_TRANSPORT_SOCKET => {
            let raw: RawBuffer = decode_any(&config).at("typed_config")?;
            nothing_else(&raw).at("typed_config")?;
            Socket::Plaintext
        }
        other => {
            return Err(FieldError::new(
                "name",
                format!("transport socket {other:?} is not supported"),
            ));
        }
    };
    Ok(out)
}

pub(crate) fn downstream_socket(s: TransportSocket) -> Result<Option<DownstreamTls>> {
    Ok(match socket(s, downstream)? {
        Socket::Plaintext => None,
        Socket::Tls(t) => Some(t),
    })
}

pub(crate) fn upstream_socket(s: TransportSocket) -> Result<Option<UpstreamTls>> {
    Ok(match socket(s, upstream)? {
        Socket::Plaintext => None,
        Socket::Tls(t) => Some(t),
    })
}
