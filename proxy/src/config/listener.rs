//! `Listener` (LDS): address, listener filters as flags, filter chains chosen by destination
//! port and transport protocol, each ending in an HTTP connection manager or a tcp_proxy, with
//! RBAC before them.

use std::net::SocketAddr;
use std::sync::Arc;

use strait_proto::xds::envoy::config::core::v3::TrafficDirection;
use strait_proto::xds::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use strait_proto::xds::envoy::config::listener::v3::{
    Filter, FilterChain as EnvoyChain, FilterChainMatch as EnvoyChainMatch,
    Listener as EnvoyListener, ListenerFilter, filter, listener_filter,
};
use strait_proto::xds::envoy::config::rbac::v3::{Permission, Policy, Principal, Rbac};
use strait_proto::xds::envoy::config::rbac::v3::{permission, principal};
use strait_proto::xds::envoy::extensions::filters::http::fault::v3::HttpFault;
use strait_proto::xds::envoy::extensions::filters::http::rbac::v3::Rbac as EnvoyHttpRbac;
use strait_proto::xds::envoy::extensions::filters::http::router::v3::Router;
use strait_proto::xds::envoy::extensions::filters::listener::original_dst::v3::OriginalDst;
use strait_proto::xds::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use strait_proto::xds::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::{
    CodecType, ForwardClientCertDetails, PathWithEscapedSlashesAction, RouteSpecifier,
};
use strait_proto::xds::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager as EnvoyHcm, HttpFilter as EnvoyHttpFilter, http_filter,
};
use strait_proto::xds::envoy::extensions::filters::network::rbac::v3::Rbac as EnvoyNetworkRbac;
use strait_proto::xds::envoy::extensions::filters::network::rbac::v3::rbac::EnforcementType;
use strait_proto::xds::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy as EnvoyTcpProxy;
use strait_proto::xds::envoy::extensions::filters::network::tcp_proxy::v3::tcp_proxy::ClusterSpecifier;

use super::common::{
    Result, bool_or, bounded, decode_any, name, nothing_else, required_name, socket_address,
};
use super::error::{At, FieldError};
use super::fault::{FAULT_FILTER, FaultConfig, fault};
use super::limits;
use super::route::{RouteConfig, route_configuration};
use super::tls::{DownstreamTls, downstream_socket};

const TLS_INSPECTOR: &str = "envoy.filters.listener.tls_inspector";
const ORIGINAL_DST: &str = "envoy.filters.listener.original_dst";
const HTTP_CONNECTION_MANAGER: &str = "envoy.filters.network.http_connection_manager";
const TCP_PROXY: &str = "envoy.filters.network.tcp_proxy";
const NETWORK_RBAC: &str = "envoy.filters.network.rbac";
const HTTP_RBAC: &str = "envoy.filters.http.rbac";
const ROUTER: &str = "envoy.filters.http.router";

/// Which way a listener's traffic flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Not said.
    Unspecified,
    /// Into the workload.
    Inbound,
    /// Out of the workload.
    Outbound,
}

/// A listener.
#[derive(Debug, Clone, PartialEq)]
pub struct Listener {
    /// Its name, e.g. `virtualOutbound`, `0.0.0.0_9080`.
    pub name: String,
    /// Where it listens (or, with `bind_to_port: false`, which connections it is handed).
    pub address: SocketAddr,
    /// Whether it binds its address; false: it only takes connections handed over by a
    /// `use_original_dst` listener.
    pub bind_to_port: bool,
    /// Hand each connection to the listener of its original destination (capture on 15001).
    pub use_original_dst: bool,
    /// `envoy.filters.listener.tls_inspector`: read SNI, ALPN and "is this TLS" first.
    pub tls_inspector: bool,
    /// `envoy.filters.listener.original_dst`: read the original destination (SO_ORIGINAL_DST).
    pub original_dst: bool,
    /// Direction.
    pub direction: Direction,
    /// Filter chains, matched by [`FilterChainMatch`].
    pub filter_chains: Vec<FilterChain>,
    /// The chain for connections no chain matches.
    pub default_filter_chain: Option<FilterChain>,
}

/// Transport protocol as the TLS inspector sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportProtocol {
    /// A TLS ClientHello.
    Tls,
    /// Anything else.
    RawBuffer,
}

/// When a filter chain applies; empty fields match everything.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FilterChainMatch {
    /// The (original) destination port.
    pub destination_port: Option<u16>,
    /// TLS or plaintext.
    pub transport_protocol: Option<TransportProtocol>,
    /// ALPN values offered (one of them).
    pub application_protocols: Vec<String>,
    /// SNI names (one of them; `*.x` wildcards).
    pub server_names: Vec<String>,
}

/// A network RBAC filter; the authz module compiles `rules`.
#[derive(Debug, Clone, PartialEq)]
pub struct RbacFilter {
    /// The enforced rules (none: allow all).
    pub rules: Option<Rbac>,
    /// Rules evaluated for stats only.
    pub shadow_rules: Option<Rbac>,
    /// Stats prefix.
    pub stat_prefix: String,
}

/// The HTTP codec to accept downstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// Sniff HTTP/1.1 or HTTP/2 (prior knowledge or ALPN).
    Auto,
    /// HTTP/1.1 only.
    Http1,
    /// HTTP/2 only.
    Http2,
}

/// Where an HTTP connection manager's routes come from.
#[derive(Debug, Clone, PartialEq)]
pub enum RouteSource {
    /// RDS, by name: look it up in [`super::Config::routes`].
    Rds(String),
    /// Inline.
    Inline(Arc<RouteConfig>),
}

/// One HTTP filter, in order; the router is always last.
#[derive(Debug, Clone, PartialEq)]
pub enum HttpFilter {
    /// Fault injection; routes may override it.
    Fault(FaultConfig),
    /// RBAC; the authz module compiles `rules`.
    Rbac(RbacFilter),
    /// The router.
    Router,
}

/// Envoy's `forward_client_cert_details`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardClientCert {
    /// Remove `x-forwarded-client-cert`.
    Sanitize,
    /// Pass it on as is.
    ForwardOnly,
    /// Append ours (mutual TLS only).
    AppendForward,
    /// Replace it with ours (mutual TLS only).
    SanitizeSet,
    /// Pass it on always.
    AlwaysForwardOnly,
}

/// Which details of the client certificate go into `x-forwarded-client-cert`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClientCertDetails {
    /// `Subject=`.
    pub subject: bool,
    /// `URI=`.
    pub uri: bool,
    /// `DNS=`.
    pub dns: bool,
    /// `Cert=`.
    pub cert: bool,
    /// `Chain=`.
    pub chain: bool,
}

/// How `%2F`, `%5C` in paths are treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EscapedSlashes {
    /// Leave them (Istio's choice here).
    KeepUnchanged,
    /// Refuse the request with 400.
    Reject,
    /// Redirect to the unescaped path.
    UnescapeAndRedirect,
    /// Unescape and forward.
    UnescapeAndForward,
}

/// An HTTP connection manager.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpConnectionManager {
    /// Stats prefix.
    pub stat_prefix: String,
    /// Accepted codec.
    pub codec: Codec,
    /// Routes.
    pub routes: RouteSource,
    /// HTTP filters, router last.
    pub http_filters: Vec<HttpFilter>,
    /// RFC 3986 path normalisation.
    pub normalize_path: bool,
    /// Merge `//` into `/`.
    pub merge_slashes: bool,
    /// Escaped slashes.
    pub escaped_slashes: EscapedSlashes,
    /// Trust the peer address for `x-forwarded-for`.
    pub use_remote_address: bool,
    /// XFCC handling.
    pub forward_client_cert: ForwardClientCert,
    /// XFCC content.
    pub client_cert_details: ClientCertDetails,
}

/// A tcp_proxy.
#[derive(Debug, Clone, PartialEq)]
pub struct TcpProxy {
    /// Stats prefix.
    pub stat_prefix: String,
    /// Target.
    pub target: super::ClusterTarget,
}

/// The last network filter of a chain.
#[derive(Debug, Clone, PartialEq)]
pub enum Terminal {
    /// HTTP.
    Http(Box<HttpConnectionManager>),
    /// TCP.
    Tcp(TcpProxy),
}

/// A filter chain.
#[derive(Debug, Clone, PartialEq)]
pub struct FilterChain {
    /// Its name.
    pub name: String,
    /// When it applies.
    pub r#match: FilterChainMatch,
    /// TLS to terminate, if any.
    pub tls: Option<DownstreamTls>,
    /// Network RBAC filters, in order (deny before allow, as straitd writes them).
    pub rbac: Vec<RbacFilter>,
    /// HTTP or TCP.
    pub terminal: Terminal,
}

impl Listener {
    /// Every RDS name its HTTP connection managers use.
    pub fn rds_names(&self) -> impl Iterator<Item = &str> {
        self.chains().filter_map(|c| match &c.terminal {
            Terminal::Http(h) => match &h.routes {
                RouteSource::Rds(n) => Some(n.as_str()),
                RouteSource::Inline(_) => None,
            },
            Terminal::Tcp(_) => None,
        })
    }

    /// All chains, the default one last.
    pub fn chains(&self) -> impl Iterator<Item = &FilterChain> {
        self.filter_chains
            .iter()
            .chain(self.default_filter_chain.iter())
    }
}

pub(crate) fn listener(mut l: EnvoyListener) -> Result<Listener> {
    let name = required_name("name", std::mem::take(&mut l.name))?;
    let address = socket_address(l.address.take()).at("address")?;
    let bind_to_port = bool_or(l.bind_to_port.take(), true);
    let use_original_dst = bool_or(l.use_original_dst.take(), false);
    let direction = match TrafficDirection::try_from(l.traffic_direction) {
        Ok(TrafficDirection::Unspecified) => Direction::Unspecified,
        Ok(TrafficDirection::Inbound) => Direction::Inbound,
        Ok(TrafficDirection::Outbound) => Direction::Outbound,
        Err(_) => return Err(FieldError::new("traffic_direction", "unknown value")),
    };
    l.traffic_direction = 0;
    let (mut tls_inspector, mut original_dst) = (false, false);
    bounded("listener_filters", &l.listener_filters, 8)?;
    for (i, f) in std::mem::take(&mut l.listener_filters)
        .into_iter()
        .enumerate()
    {
        match listener_filter_kind(f).at_index("listener_filters", i)? {
            ListenerFilterKind::TlsInspector => tls_inspector = true,
            ListenerFilterKind::OriginalDst => original_dst = true,
        }
    }
    bounded("filter_chains", &l.filter_chains, limits::MAX_FILTER_CHAINS)?;
    let mut filter_chains = Vec::with_capacity(l.filter_chains.len());
    for (i, c) in std::mem::take(&mut l.filter_chains).into_iter().enumerate() {
        filter_chains.push(filter_chain(c).at_index("filter_chains", i)?);
    }
    let default_filter_chain = l
        .default_filter_chain
        .take()
        .map(filter_chain)
        .transpose()
        .at("default_filter_chain")?;
    if filter_chains.is_empty() && default_filter_chain.is_none() {
        return Err(FieldError::new(
            "filter_chains",
            "a listener needs a filter chain",
        ));
    }
    let needs_inspector = filter_chains.iter().any(|c| {
        c.r#match.transport_protocol.is_some()
            || !c.r#match.server_names.is_empty()
            || !c.r#match.application_protocols.is_empty()
    });
    if needs_inspector && !tls_inspector {
        return Err(FieldError::new(
            "listener_filters",
            "chains match on TLS facts (transport_protocol, server_names or \
             application_protocols) but there is no tls_inspector",
        ));
    }
    // Informational, or timing knobs with safe defaults.
    l.stat_prefix.clear();
    l.metadata = None;
    l.listener_filters_timeout = None;
    l.continue_on_listener_filters_timeout = false;
    nothing_else(&l)?;
    Ok(Listener {
        name,
        address,
        bind_to_port,
        use_original_dst,
        tls_inspector,
        original_dst,
        direction,
        filter_chains,
        default_filter_chain,
    })
}

enum ListenerFilterKind {
    TlsInspector,
    OriginalDst,
}

fn listener_filter_kind(mut f: ListenerFilter) -> Result<ListenerFilterKind> {
    let any = match f.config_type.take() {
        Some(listener_filter::ConfigType::TypedConfig(any)) => any,
        _ => return Err(FieldError::new("typed_config", "must be set")),
    };
    let kind = match f.name.as_str() {
        TLS_INSPECTOR => {
            let t: TlsInspector = decode_any(&any).at("typed_config")?;
            nothing_else(&t).at("typed_config")?;
            ListenerFilterKind::TlsInspector
        }
        ORIGINAL_DST => {
            let o: OriginalDst = decode_any(&any).at("typed_config")?;
            nothing_else(&o).at("typed_config")?;
            ListenerFilterKind::OriginalDst
        }
        other => return Err(FieldError::unsupported_filter("listener filter", other)),
    };
    f.name.clear();
    nothing_else(&f)?;
    Ok(kind)
}

fn chain_match(mut m: EnvoyChainMatch) -> Result<FilterChainMatch> {
    let destination_port = m
        .destination_port
        .take()
        .map(|p| {
            u16::try_from(p.value)
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| {
                    FieldError::new("destination_port", format!("{} is not a port", p.value))
                })
        })
        .transpose()?;
    let transport_protocol = match std::mem::take(&mut m.transport_protocol).as_str() {
        "" => None,
        "tls" => Some(TransportProtocol::Tls),
        "raw_buffer" => Some(TransportProtocol::RawBuffer),
        other => {
            return Err(FieldError::new(
                "transport_protocol",
                format!(
                    "{:?} is neither tls nor raw_buffer",
                    super::error::excerpt(other, 64)
                ),
            ));
        }
    };
    bounded("application_protocols", &m.application_protocols, 16)?;
    bounded("server_names", &m.server_names, limits::MAX_DOMAINS)?;
    let application_protocols = std::mem::take(&mut m.application_protocols);
    let mut server_names = Vec::new();
    for (i, s) in std::mem::take(&mut m.server_names).into_iter().enumerate() {
        server_names.push(
            required_name("", s)
                .at_index("server_names", i)?
                .to_ascii_lowercase(),
        );
    }
    nothing_else(&m)?;
    Ok(FilterChainMatch {
        destination_port,
        transport_protocol,
        application_protocols,
        server_names,
    })
}

fn filter_chain(mut c: EnvoyChain) -> Result<FilterChain> {
    let name = name("name", std::mem::take(&mut c.name))?;
    let r#match = c
        .filter_chain_match
        .take()
        .map(chain_match)
        .transpose()
        .at("filter_chain_match")?
        .unwrap_or_default();
    let tls = c
        .transport_socket
        .take()
        .map(downstream_socket)
        .transpose()
        .at("transport_socket")?
        .flatten();
    bounded("filters", &c.filters, 16)?;
    let filters = std::mem::take(&mut c.filters);
    let count = filters.len();
    let mut rbac = Vec::new();
    let mut terminal = None;
    for (i, f) in filters.into_iter().enumerate() {
        let at = |e: FieldError| e.at(format!("filters[{i}]"));
        match network_filter(f).map_err(at)? {
            NetworkFilter::Rbac(r) if terminal.is_none() => rbac.push(r),
            NetworkFilter::Terminal(t) if i + 1 == count => terminal = Some(t),
            _ => {
                return Err(at(FieldError::new(
                    "name",
                    "the HTTP connection manager or tcp_proxy must be the last filter, and \
                     only RBAC filters may come before it",
                )));
            }
        }
    }
    let terminal = terminal.ok_or_else(|| {
        FieldError::new(
            "filters",
            "must end with an HTTP connection manager or a tcp_proxy",
        )
    })?;
    c.metadata = None;
    nothing_else(&c)?;
    Ok(FilterChain {
        name,
        r#match,
        tls,
        rbac,
        terminal,
    })
}

enum NetworkFilter {
    Rbac(RbacFilter),
    Terminal(Terminal),
}

fn network_filter(mut f: Filter) -> Result<NetworkFilter> {
    let any = match f.config_type.take() {
        Some(filter::ConfigType::TypedConfig(any)) => any,
        _ => return Err(FieldError::new("typed_config", "must be set")),
    };
    let out = match f.name.as_str() {
        HTTP_CONNECTION_MANAGER => {
            let h: EnvoyHcm = decode_any(&any).at("typed_config")?;
            NetworkFilter::Terminal(Terminal::Http(Box::new(hcm(h).at("typed_config")?)))
        }
        TCP_PROXY => {
            let t: EnvoyTcpProxy = decode_any(&any).at("typed_config")?;
            NetworkFilter::Terminal(Terminal::Tcp(tcp_proxy(t).at("typed_config")?))
        }
        NETWORK_RBAC => {
            let r: EnvoyNetworkRbac = decode_any(&any).at("typed_config")?;
            NetworkFilter::Rbac(network_rbac(r).at("typed_config")?)
        }
        other => return Err(FieldError::unsupported_filter("network filter", other)),
    };
    Ok(out)
}

fn tcp_proxy(mut t: EnvoyTcpProxy) -> Result<TcpProxy> {
    let stat_prefix = name("stat_prefix", std::mem::take(&mut t.stat_prefix))?;
    let target = match t.cluster_specifier.take() {
        Some(ClusterSpecifier::Cluster(c)) => {
            super::ClusterTarget::Cluster(required_name("cluster", c)?)
        }
        Some(ClusterSpecifier::WeightedClusters(mut w)) => {
            bounded(
                "weighted_clusters.clusters",
                &w.clusters,
                limits::MAX_WEIGHTED_CLUSTERS,
            )?;
            let mut clusters = Vec::new();
            let mut total = 0u64;
            for (i, mut c) in std::mem::take(&mut w.clusters).into_iter().enumerate() {
                let at = format!("weighted_clusters.clusters[{i}]");
                let n = required_name("name", std::mem::take(&mut c.name)).at(&at)?;
                let weight = std::mem::take(&mut c.weight);
                total += u64::from(weight);
                nothing_else(&c).at(&at)?;
                clusters.push((n, weight));
            }
            if total == 0 {
                return Err(FieldError::new(
                    "weighted_clusters.clusters",
                    "the weights add up to 0",
                ));
            }
            nothing_else(&w).at("weighted_clusters")?;
            super::ClusterTarget::Weighted { clusters, total }
        }
        None => return Err(FieldError::new("cluster_specifier", "must be set")),
    };
    nothing_else(&t)?;
    Ok(TcpProxy {
        stat_prefix,
        target,
    })
}

fn network_rbac(mut r: EnvoyNetworkRbac) -> Result<RbacFilter> {
    if r.enforcement_type != EnforcementType::OneTimeOnFirstByte as i32 {
        return Err(FieldError::new(
            "enforcement_type",
            "only ONE_TIME_ON_FIRST_BYTE is supported",
        ));
    }
    let out = RbacFilter {
        rules: r.rules.take().map(checked_rbac).transpose().at("rules")?,
        shadow_rules: r
            .shadow_rules
            .take()
            .map(checked_rbac)
            .transpose()
            .at("shadow_rules")?,
        stat_prefix: name("stat_prefix", std::mem::take(&mut r.stat_prefix))?,
    };
    r.shadow_rules_stat_prefix.clear();
    nothing_else(&r)?;
    Ok(out)
}

fn http_rbac(mut r: EnvoyHttpRbac) -> Result<RbacFilter> {
    let out = RbacFilter {
        rules: r.rules.take().map(checked_rbac).transpose().at("rules")?,
        shadow_rules: r
            .shadow_rules
            .take()
            .map(checked_rbac)
            .transpose()
            .at("shadow_rules")?,
        stat_prefix: name(
            "rules_stat_prefix",
            std::mem::take(&mut r.rules_stat_prefix),
        )?,
    };
    r.shadow_rules_stat_prefix.clear();
    r.track_per_rule_stats = false;
    nothing_else(&r)?;
    Ok(out)
}

/// Bounds what the authz module will compile: policy count, nesting depth and total size.
fn checked_rbac(r: Rbac) -> Result<Rbac> {
    if r.policies.len() > limits::MAX_RBAC_POLICIES {
        return Err(FieldError::new(
            "policies",
            format!(
                "{} policies, over the limit of {}",
                r.policies.len(),
                limits::MAX_RBAC_POLICIES
            ),
        ));
    }
    let mut budget = limits::MAX_RBAC_NODES;
    for (k, p) in &r.policies {
        let at = format!("policies[{:?}]", super::error::excerpt(k, 64));
        policy_size(p, &mut budget).at(&at)?;
    }
    Ok(r)
}

fn policy_size(p: &Policy, budget: &mut usize) -> Result<()> {
    for (i, perm) in p.permissions.iter().enumerate() {
        permission_size(perm, 0, budget).at_index("permissions", i)?;
    }
    for (i, pr) in p.principals.iter().enumerate() {
        principal_size(pr, 0, budget).at_index("principals", i)?;
    }
    Ok(())
}

fn spend(depth: usize, budget: &mut usize) -> Result<()> {
    if depth > limits::MAX_RBAC_DEPTH {
        return Err(FieldError::new(
            "",
            format!("rules nest deeper than {}", limits::MAX_RBAC_DEPTH),
        ));
    }
    *budget = budget.checked_sub(1).ok_or_else(|| {
        FieldError::new("", format!("over {} rules in all", limits::MAX_RBAC_NODES))
    })?;
    Ok(())
}

fn permission_size(p: &Permission, depth: usize, budget: &mut usize) -> Result<()> {
    spend(depth, budget)?;
    match &p.rule {
        Some(permission::Rule::AndRules(s) | permission::Rule::OrRules(s)) => {
            for r in &s.rules {
                permission_size(r, depth + 1, budget)?;
            }
        }
        Some(permission::Rule::NotRule(r)) => permission_size(r, depth + 1, budget)?,
        _ => {}
    }
    Ok(())
}

fn principal_size(p: &Principal, depth: usize, budget: &mut usize) -> Result<()> {
    spend(depth, budget)?;
    match &p.identifier {
        Some(principal::Identifier::AndIds(s) | principal::Identifier::OrIds(s)) => {
            for i in &s.ids {
                principal_size(i, depth + 1, budget)?;
            }
        }
        Some(principal::Identifier::NotId(i)) => principal_size(i, depth + 1, budget)?,
        _ => {}
    }
    Ok(())
}

fn hcm(mut h: EnvoyHcm) -> Result<HttpConnectionManager> {
    let stat_prefix = name("stat_prefix", std::mem::take(&mut h.stat_prefix))?;
    let codec = match CodecType::try_from(h.codec_type) {
        Ok(CodecType::Auto) => Codec::Auto,
        Ok(CodecType::Http1) => Codec::Http1,
        Ok(CodecType::Http2) => Codec::Http2,
        _ => return Err(FieldError::new("codec_type", "only AUTO, HTTP1 and HTTP2")),
    };
    h.codec_type = 0;
    let routes = match h.route_specifier.take() {
        Some(RouteSpecifier::Rds(mut rds)) => {
            match rds
                .config_source
                .take()
                .and_then(|s| s.config_source_specifier)
            {
                Some(ConfigSourceSpecifier::Ads(_)) => {}
                _ => {
                    return Err(FieldError::new(
                        "rds.config_source",
                        "only ADS is supported as the RDS config source",
                    ));
                }
            }
            let n = required_name(
                "route_config_name",
                std::mem::take(&mut rds.route_config_name),
            )
            .at("rds")?;
            nothing_else(&rds).at("rds")?;
            RouteSource::Rds(n)
        }
        Some(RouteSpecifier::RouteConfig(rc)) => {
            RouteSource::Inline(Arc::new(route_configuration(rc).at("route_config")?))
        }
        _ => {
            return Err(FieldError::new(
                "route_specifier",
                "only rds and route_config are supported",
            ));
        }
    };
    bounded("http_filters", &h.http_filters, 32)?;
    let filters = std::mem::take(&mut h.http_filters);
    let count = filters.len();
    let mut http_filters = Vec::with_capacity(count);
    for (i, f) in filters.into_iter().enumerate() {
        let filter = http_filter_config(f).at_index("http_filters", i)?;
        if (filter == HttpFilter::Router) != (i + 1 == count) {
            return Err(FieldError::new(
                format!("http_filters[{i}]"),
                "the router must be the last HTTP filter, and there must be exactly one",
            ));
        }
        http_filters.push(filter);
    }
    if count == 0 {
        return Err(FieldError::new("http_filters", "the router is missing"));
    }
    let escaped_slashes =
        match PathWithEscapedSlashesAction::try_from(h.path_with_escaped_slashes_action) {
            Ok(
                PathWithEscapedSlashesAction::ImplementationSpecificDefault
                | PathWithEscapedSlashesAction::KeepUnchanged,
            ) => EscapedSlashes::KeepUnchanged,
            Ok(PathWithEscapedSlashesAction::RejectRequest) => EscapedSlashes::Reject,
            Ok(PathWithEscapedSlashesAction::UnescapeAndRedirect) => {
                EscapedSlashes::UnescapeAndRedirect
            }
            Ok(PathWithEscapedSlashesAction::UnescapeAndForward) => {
                EscapedSlashes::UnescapeAndForward
            }
            Err(_) => {
                return Err(FieldError::new(
                    "path_with_escaped_slashes_action",
                    "unknown value",
                ));
            }
        };
    h.path_with_escaped_slashes_action = 0;
    let forward_client_cert =
        match ForwardClientCertDetails::try_from(h.forward_client_cert_details) {
            Ok(ForwardClientCertDetails::Sanitize) => ForwardClientCert::Sanitize,
            Ok(ForwardClientCertDetails::ForwardOnly) => ForwardClientCert::ForwardOnly,
            Ok(ForwardClientCertDetails::AppendForward) => ForwardClientCert::AppendForward,
            Ok(ForwardClientCertDetails::SanitizeSet) => ForwardClientCert::SanitizeSet,
            Ok(ForwardClientCertDetails::AlwaysForwardOnly) => ForwardClientCert::AlwaysForwardOnly,
            Err(_) => {
                return Err(FieldError::new(
                    "forward_client_cert_details",
                    "unknown value",
                ));
            }
        };
    h.forward_client_cert_details = 0;
    let client_cert_details = match h.set_current_client_cert_details.take() {
        None => ClientCertDetails::default(),
        Some(mut d) => {
            let out = ClientCertDetails {
                subject: bool_or(d.subject.take(), false),
                uri: std::mem::take(&mut d.uri),
                dns: std::mem::take(&mut d.dns),
                cert: std::mem::take(&mut d.cert),
                chain: std::mem::take(&mut d.chain),
            };
            nothing_else(&d).at("set_current_client_cert_details")?;
            out
        }
    };
    let out = HttpConnectionManager {
        stat_prefix,
        codec,
        routes,
        http_filters,
        normalize_path: bool_or(h.normalize_path.take(), false),
        merge_slashes: std::mem::take(&mut h.merge_slashes),
        escaped_slashes,
        use_remote_address: bool_or(h.use_remote_address.take(), false),
        forward_client_cert,
        client_cert_details,
    };
    nothing_else(&h)?;
    Ok(out)
}

fn http_filter_config(mut f: EnvoyHttpFilter) -> Result<HttpFilter> {
    let any = match f.config_type.take() {
        Some(http_filter::ConfigType::TypedConfig(any)) => any,
        _ => return Err(FieldError::new("typed_config", "must be set")),
    };
    let out = match f.name.as_str() {
        FAULT_FILTER => {
            let h: HttpFault = decode_any(&any).at("typed_config")?;
            HttpFilter::Fault(fault(h).at("typed_config")?)
        }
        HTTP_RBAC => {
            let r: EnvoyHttpRbac = decode_any(&any).at("typed_config")?;
            HttpFilter::Rbac(http_rbac(r).at("typed_config")?)
        }
        ROUTER => {
            let r: Router = decode_any(&any).at("typed_config")?;
            nothing_else(&r).at("typed_config")?;
            HttpFilter::Router
        }
        other => return Err(FieldError::unsupported_filter("HTTP filter", other)),
    };
    f.name.clear();
    nothing_else(&f)?;
    Ok(out)
}
