//! `Cluster` (CDS): discovery type, balancing, timeouts, limits, outlier detection, upstream
//! HTTP protocol and TLS (directly or by `tlsMode` match on endpoint metadata).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use strait_proto::xds::envoy::config::cluster::v3::circuit_breakers::Thresholds;
use strait_proto::xds::envoy::config::cluster::v3::cluster::common_lb_config::LocalityConfigSpecifier;
use strait_proto::xds::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, CommonLbConfig, DiscoveryType as EnvoyDiscovery, DnsLookupFamily,
    EdsClusterConfig, LbPolicy as EnvoyLbPolicy, TransportSocketMatch as EnvoySocketMatch,
};
use strait_proto::xds::envoy::config::cluster::v3::{
    CircuitBreakers as EnvoyBreakers, Cluster as EnvoyCluster,
    OutlierDetection as EnvoyOutlierDetection,
};
use strait_proto::xds::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use strait_proto::xds::envoy::config::core::v3::socket_address::{PortSpecifier, Protocol};
use strait_proto::xds::envoy::config::core::v3::{BindConfig, RoutingPriority};
use strait_proto::xds::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use strait_proto::xds::envoy::extensions::upstreams::http::v3::http_protocol_options::UpstreamProtocolOptions;
use strait_proto::xds::envoy::extensions::upstreams::http::v3::http_protocol_options::explicit_http_config::ProtocolConfig;
use strait_proto::xds::google::protobuf::value::Kind as ValueKind;

use super::common::{
    Result, bounded, decode_any, name, nothing_else, opt_duration, required_name, u32_or,
};
use super::endpoint::{LoadAssignment, load_assignment};
use super::error::{At, FieldError, excerpt};
use super::tls::{UpstreamTls, upstream_socket};

const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";
/// Envoy's default connect timeout.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How a cluster learns its endpoints.
#[derive(Debug, Clone, PartialEq)]
pub enum Discovery {
    /// From EDS, under this name (the cluster's `service_name`, else its name).
    Eds {
        /// The EDS resource name.
        service_name: String,
    },
    /// Fixed endpoints in the cluster.
    Static(Arc<LoadAssignment>),
    /// Host names resolved, every address is an endpoint.
    StrictDns(Arc<LoadAssignment>),
    /// One host name, the first address is the endpoint.
    LogicalDns(Arc<LoadAssignment>),
    /// The connection's original destination.
    OriginalDst,
}

/// Load-balancing policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LbPolicy {
    /// Round robin (weighted).
    RoundRobin,
    /// Least request (power of two choices).
    LeastRequest,
    /// Random.
    Random,
    /// The cluster type decides (ORIGINAL_DST).
    ClusterProvided,
}

/// Connection-pool limits of the default priority (`u32::MAX`: unlimited).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CircuitBreakers {
    /// Connections to the cluster.
    pub max_connections: u32,
    /// Requests waiting for a connection.
    pub max_pending_requests: u32,
    /// Requests in flight.
    pub max_requests: u32,
    /// Retries in flight.
    pub max_retries: u32,
}

impl Default for CircuitBreakers {
    /// Envoy's defaults: 1024 each, 3 retries.
    fn default() -> Self {
        CircuitBreakers {
            max_connections: 1024,
            max_pending_requests: 1024,
            max_requests: 1024,
            max_retries: 3,
        }
    }
}

/// Success-rate ejection (Envoy enables it by default; straitd sets `enforcing` to 0).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SuccessRate {
    /// Percent chance an ejection is enforced.
    pub enforcing: u32,
    /// Hosts with enough volume needed to compute it.
    pub minimum_hosts: u32,
    /// Requests a host needs in an interval to count.
    pub request_volume: u32,
    /// Ejection below mean − stdev × factor/1000.
    pub stdev_factor: u32,
}

/// Passive health checking.
#[derive(Debug, Clone, PartialEq)]
pub struct OutlierDetection {
    /// Consecutive 5xx that eject.
    pub consecutive_5xx: u32,
    /// Percent chance a consecutive-5xx ejection is enforced.
    pub enforcing_consecutive_5xx: u32,
    /// Consecutive gateway errors (502, 503, 504) that eject.
    pub consecutive_gateway_failure: u32,
    /// Percent chance a gateway-failure ejection is enforced (Envoy's default: 0).
    pub enforcing_consecutive_gateway_failure: u32,
    /// Sweep interval.
    pub interval: Duration,
    /// Base ejection time, multiplied by the number of ejections.
    pub base_ejection_time: Duration,
    /// Ceiling of ejection time.
    pub max_ejection_time: Duration,
    /// Most hosts ejected at once, in percent.
    pub max_ejection_percent: u32,
    /// Success-rate ejection.
    pub success_rate: SuccessRate,
}

/// The upstream HTTP protocol (`HttpProtocolOptions` extension).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamProtocol {
    /// HTTP/1.1 (Envoy's default).
    Http1,
    /// HTTP/2.
    Http2,
}

/// Upstream HTTP options.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpOptions {
    /// The protocol to speak upstream.
    pub protocol: UpstreamProtocol,
    /// Close an idle upstream connection after this long (none: Envoy's 1 h default).
    pub idle_timeout: Option<Duration>,
    /// Requests per connection before it is closed (none: unlimited).
    pub max_requests_per_connection: Option<u32>,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            protocol: UpstreamProtocol::Http1,
            idle_timeout: None,
            max_requests_per_connection: None,
        }
    }
}

/// One entry of `transport_socket_matches`: endpoints whose
/// `envoy.transport_socket_match` metadata holds every `match` entry use `tls` (none:
/// plaintext). The first matching entry wins.
#[derive(Debug, Clone, PartialEq)]
pub struct TransportSocketMatch {
    /// Its name (`tlsMode-istio`).
    pub name: String,
    /// Required metadata entries; empty matches everything.
    pub r#match: BTreeMap<String, String>,
    /// TLS to use, or plaintext.
    pub tls: Option<UpstreamTls>,
}

impl TransportSocketMatch {
    /// Whether an endpoint with this metadata is matched.
    pub fn matches(&self, metadata: &BTreeMap<String, String>) -> bool {
        self.r#match.iter().all(|(k, v)| metadata.get(k) == Some(v))
    }
}

/// A cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct Cluster {
    /// Its name, e.g. `outbound|9080|v1|reviews.default.svc.cluster.local`.
    pub name: String,
    /// Where endpoints come from.
    pub discovery: Discovery,
    /// Balancing.
    pub lb_policy: LbPolicy,
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Limits.
    pub circuit_breakers: CircuitBreakers,
    /// Outlier detection, if enabled.
    pub outlier_detection: Option<OutlierDetection>,
    /// Below this percentage of healthy hosts, balance over all (Envoy's default: 50).
    pub healthy_panic_threshold: f64,
    /// Locality-weighted balancing.
    pub locality_weighted: bool,
    /// Upstream HTTP options.
    pub http: HttpOptions,
    /// The cluster's own transport socket (used when no match applies): TLS or plaintext.
    pub tls: Option<UpstreamTls>,
    /// Per-endpoint transport sockets.
    pub transport_socket_matches: Vec<TransportSocketMatch>,
    /// `upstream_bind_config.source_address`: the address upstream sockets bind before
    /// connecting (port chosen by the kernel). Istio's inbound clusters under capture use
    /// 127.0.0.6, which its iptables rules let through instead of redirecting to 15006 again.
    pub upstream_bind: Option<IpAddr>,
}

impl Cluster {
    /// The TLS to use towards an endpoint with this `envoy.transport_socket_match` metadata.
    pub fn tls_for(&self, metadata: &BTreeMap<String, String>) -> Option<&UpstreamTls> {
        match self
            .transport_socket_matches
            .iter()
            .find(|m| m.matches(metadata))
        {
            Some(m) => m.tls.as_ref(),
            None => self.tls.as_ref(),
        }
    }

    /// The EDS name, for EDS clusters.
    pub fn eds_service_name(&self) -> Option<&str> {
        match &self.discovery {
            Discovery::Eds { service_name } => Some(service_name),
            _ => None,
        }
    }
}

pub(crate) fn cluster(mut c: EnvoyCluster) -> Result<Cluster> {
    let name = required_name("name", std::mem::take(&mut c.name))?;
    let discovery = discovery(&mut c, &name)?;
    let lb_policy = lb_policy(c.lb_policy, &discovery)?;
    c.lb_policy = 0;
    let connect_timeout = opt_duration("connect_timeout", c.connect_timeout.take())?
        .unwrap_or(DEFAULT_CONNECT_TIMEOUT);
    let circuit_breakers = c
        .circuit_breakers
        .take()
        .map(breakers)
        .transpose()
        .at("circuit_breakers")?
        .unwrap_or_default();
    let outlier_detection = c
        .outlier_detection
        .take()
        .map(outlier)
        .transpose()
        .at("outlier_detection")?;
    let (healthy_panic_threshold, locality_weighted) =
        common_lb(c.common_lb_config.take()).at("common_lb_config")?;
    let http = http_options(&mut c)?;
    let tls = c
        .transport_socket
        .take()
        .map(upstream_socket)
        .transpose()
        .at("transport_socket")?
        .flatten();
    bounded("transport_socket_matches", &c.transport_socket_matches, 64)?;
    let mut transport_socket_matches = Vec::new();
    for (i, m) in std::mem::take(&mut c.transport_socket_matches)
        .into_iter()
        .enumerate()
    {
        transport_socket_matches.push(socket_match(m).at_index("transport_socket_matches", i)?);
    }
    let upstream_bind = c
        .upstream_bind_config
        .take()
        .map(bind_config)
        .transpose()
        .at("upstream_bind_config")?;
    // Only IPv4 answers are asked of DNS; resolution itself is the data path's.
    if DnsLookupFamily::try_from(c.dns_lookup_family).is_err() {
        return Err(FieldError::new("dns_lookup_family", "unknown value"));
    }
    c.dns_lookup_family = 0;
    // Informational.
    c.alt_stat_name.clear();
    c.metadata = None;
    nothing_else(&c)?;
    Ok(Cluster {
        name,
        discovery,
        lb_policy,
        connect_timeout,
        circuit_breakers,
        outlier_detection,
        healthy_panic_threshold,
        locality_weighted,
        http,
        tls,
        transport_socket_matches,
        upstream_bind,
    })
}

/// The source address upstream connections bind: an IP with port 0. Envoy's other bind
/// options change how the socket is made (freebind, options, several source addresses chosen
/// per family); binding only the address would quietly do something else, so they are refused.
// `additional_source_addresses` is deprecated in Envoy's API but still honoured there: refused.
#[allow(deprecated)]
fn bind_config(mut b: BindConfig) -> Result<IpAddr> {
    for (set, field) in [
        (b.freebind.take().is_some(), "freebind"),
        (!b.socket_options.is_empty(), "socket_options"),
        (
            !b.extra_source_addresses.is_empty(),
            "extra_source_addresses",
        ),
        (
            !b.additional_source_addresses.is_empty(),
            "additional_source_addresses",
        ),
        (b.local_address_selector.is_some(), "local_address_selector"),
    ] {
        if set {
            return Err(FieldError::new(field, "is not supported"));
        }
    }
    let Some(mut sa) = b.source_address.take() else {
        return Err(FieldError::new("source_address", "is required"));
    };
    let at = |e: FieldError| e.at("source_address");
    if sa.protocol != Protocol::Tcp as i32 {
        return Err(at(FieldError::new("protocol", "only TCP is supported")));
    }
    match sa.port_specifier.take() {
        None | Some(PortSpecifier::PortValue(0)) => {}
        Some(PortSpecifier::PortValue(p)) => {
            return Err(at(FieldError::new(
                "port_value",
                format!("{p}: only 0 (the kernel picks the port) is supported"),
            )));
        }
        Some(PortSpecifier::NamedPort(_)) => {
            return Err(at(FieldError::new(
                "named_port",
                "named ports are not supported",
            )));
        }
    }
    let host = std::mem::take(&mut sa.address);
    let ip: IpAddr = host.parse().map_err(|_| {
        at(FieldError::new(
            "address",
            format!("{:?} is not an IP address", excerpt(&host, 64)),
        ))
    })?;
    nothing_else(&sa).map_err(at)?;
    nothing_else(&b)?;
    Ok(ip)
}

fn discovery(c: &mut EnvoyCluster, name: &str) -> Result<Discovery> {
    let t = match c.cluster_discovery_type.take() {
        None => EnvoyDiscovery::Static,
        Some(ClusterDiscoveryType::Type(t)) => EnvoyDiscovery::try_from(t)
            .map_err(|_| FieldError::new("type", format!("{t} is not a discovery type")))?,
        Some(ClusterDiscoveryType::ClusterType(_)) => {
            return Err(FieldError::new(
                "cluster_type",
                "custom cluster types are not supported",
            ));
        }
    };
    let assignment = |c: &mut EnvoyCluster, dns: bool| -> Result<Arc<LoadAssignment>> {
        let mut a = c.load_assignment.take().unwrap_or_default();
        a.cluster_name = name.to_string();
        Ok(Arc::new(load_assignment(a, dns).at("load_assignment")?))
    };
    let out = match t {
        EnvoyDiscovery::Eds => {
            let eds = c.eds_cluster_config.take().unwrap_or_default();
            Discovery::Eds {
                service_name: eds_service_name(eds, name).at("eds_cluster_config")?,
            }
        }
        EnvoyDiscovery::Static => Discovery::Static(assignment(c, false)?),
        EnvoyDiscovery::StrictDns => Discovery::StrictDns(assignment(c, true)?),
        EnvoyDiscovery::LogicalDns => Discovery::LogicalDns(assignment(c, true)?),
        EnvoyDiscovery::OriginalDst => Discovery::OriginalDst,
    };
    Ok(out)
}

fn eds_service_name(mut eds: EdsClusterConfig, cluster: &str) -> Result<String> {
    match eds
        .eds_config
        .take()
        .and_then(|s| s.config_source_specifier)
    {
        Some(ConfigSourceSpecifier::Ads(_)) => {}
        _ => {
            return Err(FieldError::new(
                "eds_config",
                "only ADS is supported as the EDS config source",
            ));
        }
    }
    let service = name("service_name", std::mem::take(&mut eds.service_name))?;
    nothing_else(&eds)?;
    Ok(if service.is_empty() {
        cluster.to_string()
    } else {
        service
    })
}

fn lb_policy(p: i32, discovery: &Discovery) -> Result<LbPolicy> {
    let policy = match EnvoyLbPolicy::try_from(p) {
        Ok(EnvoyLbPolicy::RoundRobin) => LbPolicy::RoundRobin,
        Ok(EnvoyLbPolicy::LeastRequest) => LbPolicy::LeastRequest,
        Ok(EnvoyLbPolicy::Random) => LbPolicy::Random,
        Ok(EnvoyLbPolicy::ClusterProvided) => LbPolicy::ClusterProvided,
        Ok(other) => {
            return Err(FieldError::new(
                "lb_policy",
                format!("{} is not supported", other.as_str_name()),
            ));
        }
        Err(_) => return Err(FieldError::new("lb_policy", format!("{p} is unknown"))),
    };
    let original_dst = matches!(discovery, Discovery::OriginalDst);
    if original_dst != (policy == LbPolicy::ClusterProvided) {
        return Err(FieldError::new(
            "lb_policy",
            "CLUSTER_PROVIDED goes with ORIGINAL_DST clusters, and only with them",
        ));
    }
    Ok(policy)
}

fn breakers(mut b: EnvoyBreakers) -> Result<CircuitBreakers> {
    let mut out = CircuitBreakers::default();
    bounded("thresholds", &b.thresholds, 2)?;
    for (i, t) in std::mem::take(&mut b.thresholds).into_iter().enumerate() {
        if t.priority == RoutingPriority::Default as i32 {
            out = thresholds(t).at_index("thresholds", i)?;
        } else {
            return Err(FieldError::new(
                format!("thresholds[{i}].priority"),
                "only the DEFAULT priority is supported",
            ));
        }
    }
    nothing_else(&b)?;
    Ok(out)
}

fn thresholds(mut t: Thresholds) -> Result<CircuitBreakers> {
    let d = CircuitBreakers::default();
    let out = CircuitBreakers {
        max_connections: u32_or(t.max_connections.take(), d.max_connections),
        max_pending_requests: u32_or(t.max_pending_requests.take(), d.max_pending_requests),
        max_requests: u32_or(t.max_requests.take(), d.max_requests),
        max_retries: u32_or(t.max_retries.take(), d.max_retries),
    };
    // Remaining-capacity gauges are a stats matter.
    t.track_remaining = false;
    nothing_else(&t)?;
    Ok(out)
}

fn outlier(mut o: EnvoyOutlierDetection) -> Result<OutlierDetection> {
    let percent = |field: &str, v: Option<u32>, default: u32| -> Result<u32> {
        let v = v.unwrap_or(default);
        if v > 100 {
            return Err(FieldError::new(field, format!("{v} is over 100")));
        }
        Ok(v)
    };
    let out = OutlierDetection {
        consecutive_5xx: u32_or(o.consecutive_5xx.take(), 5),
        enforcing_consecutive_5xx: percent(
            "enforcing_consecutive_5xx",
            o.enforcing_consecutive_5xx.take().map(|v| v.value),
            100,
        )?,
        consecutive_gateway_failure: u32_or(o.consecutive_gateway_failure.take(), 5),
        enforcing_consecutive_gateway_failure: percent(
            "enforcing_consecutive_gateway_failure",
            o.enforcing_consecutive_gateway_failure
                .take()
                .map(|v| v.value),
            0,
        )?,
        interval: opt_duration("interval", o.interval.take())?.unwrap_or(Duration::from_secs(10)),
        base_ejection_time: opt_duration("base_ejection_time", o.base_ejection_time.take())?
            .unwrap_or(Duration::from_secs(30)),
        max_ejection_time: opt_duration("max_ejection_time", o.max_ejection_time.take())?
            .unwrap_or(Duration::from_secs(300)),
        max_ejection_percent: percent(
            "max_ejection_percent",
            o.max_ejection_percent.take().map(|v| v.value),
            10,
        )?,
        success_rate: SuccessRate {
            enforcing: percent(
                "enforcing_success_rate",
                o.enforcing_success_rate.take().map(|v| v.value),
                100,
            )?,
            minimum_hosts: u32_or(o.success_rate_minimum_hosts.take(), 5),
            request_volume: u32_or(o.success_rate_request_volume.take(), 100),
            stdev_factor: u32_or(o.success_rate_stdev_factor.take(), 1900),
        },
    };
    if out.interval.is_zero() {
        return Err(FieldError::new("interval", "must be positive"));
    }
    nothing_else(&o)?;
    Ok(out)
}

fn common_lb(c: Option<CommonLbConfig>) -> Result<(f64, bool)> {
    let Some(mut c) = c else {
        return Ok((50.0, false));
    };
    let panic = c.healthy_panic_threshold.take().map_or(50.0, |p| p.value);
    if !(0.0..=100.0).contains(&panic) {
        return Err(FieldError::new(
            "healthy_panic_threshold",
            format!("{panic} is not a percentage"),
        ));
    }
    let weighted = match c.locality_config_specifier.take() {
        None => false,
        Some(LocalityConfigSpecifier::LocalityWeightedLbConfig(_)) => true,
        Some(LocalityConfigSpecifier::ZoneAwareLbConfig(_)) => {
            return Err(FieldError::new(
                "zone_aware_lb_config",
                "zone-aware balancing is not supported",
            ));
        }
    };
    nothing_else(&c)?;
    Ok((panic, weighted))
}

fn http_options(c: &mut EnvoyCluster) -> Result<HttpOptions> {
    let mut options = std::mem::take(&mut c.typed_extension_protocol_options);
    let mut out = HttpOptions::default();
    if let Some(any) = options.remove(HTTP_PROTOCOL_OPTIONS) {
        let at = format!("typed_extension_protocol_options[{HTTP_PROTOCOL_OPTIONS:?}]");
        let o: HttpProtocolOptions = decode_any(&any).at(&at)?;
        out = protocol_options(o).at(&at)?;
    }
    if let Some(key) = options.keys().next() {
        return Err(FieldError::new(
            format!("typed_extension_protocol_options[{key:?}]"),
            "unknown extension",
        ));
    }
    Ok(out)
}

fn protocol_options(mut o: HttpProtocolOptions) -> Result<HttpOptions> {
    let mut out = HttpOptions::default();
    if let Some(mut common) = o.common_http_protocol_options.take() {
        out.idle_timeout = opt_duration("idle_timeout", common.idle_timeout.take())
            .at("common_http_protocol_options")?;
        out.max_requests_per_connection = common
            .max_requests_per_connection
            .take()
            .map(|v| v.value)
            .filter(|v| *v > 0);
        nothing_else(&common).at("common_http_protocol_options")?;
    }
    match o.upstream_protocol_options.take() {
        None => {}
        Some(UpstreamProtocolOptions::ExplicitHttpConfig(mut e)) => {
            out.protocol = match e.protocol_config.take() {
                Some(ProtocolConfig::HttpProtocolOptions(h1)) => {
                    nothing_else(&h1)
                        .at("http_protocol_options")
                        .at("explicit_http_config")?;
                    UpstreamProtocol::Http1
                }
                Some(ProtocolConfig::Http2ProtocolOptions(h2)) => {
                    nothing_else(&h2)
                        .at("http2_protocol_options")
                        .at("explicit_http_config")?;
                    UpstreamProtocol::Http2
                }
                _ => {
                    return Err(FieldError::new(
                        "explicit_http_config.protocol_config",
                        "only HTTP/1.1 and HTTP/2 are supported",
                    ));
                }
            };
        }
        Some(_) => {
            return Err(FieldError::new(
                "upstream_protocol_options",
                "only explicit_http_config is supported",
            ));
        }
    }
    nothing_else(&o)?;
    Ok(out)
}

fn socket_match(mut m: EnvoySocketMatch) -> Result<TransportSocketMatch> {
    let name = name("name", std::mem::take(&mut m.name))?;
    let mut r#match = BTreeMap::new();
    for (k, v) in m.r#match.take().map(|s| s.fields).unwrap_or_default() {
        match v.kind {
            Some(ValueKind::StringValue(v)) => {
                r#match.insert(k, v);
            }
            _ => {
                return Err(FieldError::new(
                    format!("match.{k}"),
                    "only string values are supported",
                ));
            }
        }
    }
    let tls = match m.transport_socket.take() {
        Some(s) => upstream_socket(s).at("transport_socket")?,
        None => None,
    };
    nothing_else(&m)?;
    Ok(TransportSocketMatch { name, r#match, tls })
}
