//! `RouteConfiguration` (RDS, and inline in an HTTP connection manager): virtual hosts by
//! domain, routes by path, header and method, forwarding to one or weighted clusters with a
//! timeout, a retry policy and fault injection.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use strait_proto::xds::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier;
use strait_proto::xds::envoy::config::route::v3::retry_policy::RetryHostPredicate;
use strait_proto::xds::envoy::config::route::v3::route::Action;
use strait_proto::xds::envoy::config::route::v3::route_action::ClusterSpecifier;
use strait_proto::xds::envoy::config::route::v3::route_match::PathSpecifier;
use strait_proto::xds::envoy::config::route::v3::{
    HeaderMatcher, RetryPolicy as EnvoyRetry, Route as EnvoyRoute, RouteAction, RouteConfiguration,
    RouteMatch as EnvoyMatch, VirtualHost as EnvoyVirtualHost, WeightedCluster,
};
use strait_proto::xds::envoy::extensions::filters::http::fault::v3::HttpFault;
use strait_proto::xds::envoy::r#type::matcher::v3::StringMatcher;
use strait_proto::xds::envoy::r#type::matcher::v3::string_matcher::MatchPattern;

use super::common::{
    Regex, Result, bool_or, bounded, decode_any, name, nothing_else, opt_duration, regex,
    required_name, string_matcher, u32_or,
};
use super::error::{At, FieldError};
use super::fault::{FAULT_FILTER, FaultConfig, fault};
use super::{StringMatcherConfig, limits};

const PREVIOUS_HOSTS: &str = "envoy.retry_host_predicates.previous_hosts";
/// Envoy's route timeout when none is given.
const DEFAULT_ROUTE_TIMEOUT: Duration = Duration::from_secs(15);

/// A route table.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteConfig {
    /// Its name (RDS: the listener's `route_config_name`).
    pub name: String,
    /// Virtual hosts, in order.
    pub virtual_hosts: Vec<VirtualHost>,
    /// Envoy's `validate_clusters` (straitd sets false: unknown clusters answer 503).
    pub validate_clusters: bool,
    index: DomainIndex,
}

/// A virtual host.
#[derive(Debug, Clone, PartialEq)]
pub struct VirtualHost {
    /// Its name.
    pub name: String,
    /// Domains (lower case), `*`, `*.suffix` or `prefix*`.
    pub domains: Vec<String>,
    /// Routes, first match wins.
    pub routes: Vec<Route>,
}

/// One route.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// Its name.
    pub name: String,
    /// When it applies.
    pub r#match: RouteMatch,
    /// What it does.
    pub action: RouteActionConfig,
    /// Per-route fault injection (`typed_per_filter_config["envoy.filters.http.fault"]`).
    pub fault: Option<FaultConfig>,
}

/// How a route matches the path.
#[derive(Debug, Clone, PartialEq)]
pub enum PathMatch {
    /// The path starts with.
    Prefix(String),
    /// The path is.
    Exact(String),
    /// The whole path matches.
    Regex(Regex),
}

/// How a header is matched.
#[derive(Debug, Clone, PartialEq)]
pub enum HeaderMatchKind {
    /// Present (true) or absent (false).
    Present(bool),
    /// Its value matches.
    Value(StringMatcherConfig),
}

/// A header condition (`:method` for the method).
#[derive(Debug, Clone, PartialEq)]
pub struct HeaderMatch {
    /// Header name, lower case.
    pub name: String,
    /// The condition.
    pub kind: HeaderMatchKind,
    /// Negate.
    pub invert: bool,
}

impl HeaderMatch {
    /// Whether a request with this header value (none: absent) passes.
    pub fn matches(&self, value: Option<&str>) -> bool {
        let hit = match (&self.kind, value) {
            (HeaderMatchKind::Present(p), v) => *p == v.is_some(),
            (HeaderMatchKind::Value(m), Some(v)) => m.matches(v),
            // Envoy: a value condition on a missing header fails, inverted or not.
            (HeaderMatchKind::Value(_), None) => return false,
        };
        hit != self.invert
    }
}

/// When a route applies.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteMatch {
    /// The path condition.
    pub path: PathMatch,
    /// Whether prefix and exact path matches are case sensitive.
    pub case_sensitive: bool,
    /// Every header condition must hold.
    pub headers: Vec<HeaderMatch>,
}

impl RouteMatch {
    /// Whether a request with `path` (no query) and these headers matches.
    pub fn matches<'a>(&self, path: &str, header: impl Fn(&str) -> Option<&'a str>) -> bool {
        let path_ok = match &self.path {
            PathMatch::Prefix(p) if self.case_sensitive => path.starts_with(p.as_str()),
            PathMatch::Prefix(p) => path
                .get(..p.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(p)),
            PathMatch::Exact(p) if self.case_sensitive => path == p,
            PathMatch::Exact(p) => path.eq_ignore_ascii_case(p),
            PathMatch::Regex(re) => re.is_match(path),
        };
        path_ok && self.headers.iter().all(|h| h.matches(header(&h.name)))
    }
}

/// Where a route sends a request.
#[derive(Debug, Clone, PartialEq)]
pub enum ClusterTarget {
    /// One cluster.
    Cluster(String),
    /// Several, by weight; `total` > 0 is their sum.
    Weighted {
        /// (cluster, weight) pairs; a weight may be 0.
        clusters: Vec<(String, u32)>,
        /// Sum of the weights.
        total: u64,
    },
}

/// Which failures are retried (Envoy's `retry_on`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[allow(clippy::struct_excessive_bools)]
pub struct RetryOn {
    /// `5xx`.
    pub five_xx: bool,
    /// `gateway-error`: 502, 503, 504.
    pub gateway_error: bool,
    /// `reset`.
    pub reset: bool,
    /// `reset-before-request`.
    pub reset_before_request: bool,
    /// `connect-failure`.
    pub connect_failure: bool,
    /// `retriable-4xx`: 409.
    pub retriable_4xx: bool,
    /// `refused-stream`.
    pub refused_stream: bool,
    /// `retriable-status-codes`.
    pub retriable_status_codes: bool,
    /// `envoy-ratelimited`.
    pub envoy_ratelimited: bool,
    /// gRPC `cancelled`.
    pub cancelled: bool,
    /// gRPC `deadline-exceeded`.
    pub deadline_exceeded: bool,
    /// gRPC `internal`.
    pub internal: bool,
    /// gRPC `resource-exhausted`.
    pub resource_exhausted: bool,
    /// gRPC `unavailable`.
    pub unavailable: bool,
}

/// A retry policy.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Conditions.
    pub retry_on: RetryOn,
    /// Retries (not counting the first try).
    pub num_retries: u32,
    /// Timeout of each try (none: the route's).
    pub per_try_timeout: Option<Duration>,
    /// Status codes for `retriable-status-codes`.
    pub retriable_status_codes: Vec<u16>,
    /// Avoid hosts already tried.
    pub previous_hosts: bool,
    /// Attempts to pick a host not tried before.
    pub host_selection_retry_max_attempts: u32,
    /// Back-off base (Envoy: 25 ms) and ceiling (10 × base).
    pub back_off: (Duration, Duration),
}

/// Forwarding.
#[derive(Debug, Clone, PartialEq)]
pub struct Forward {
    /// Target clusters.
    pub target: ClusterTarget,
    /// Whole-request timeout; none: no timeout.
    pub timeout: Option<Duration>,
    /// Retries.
    pub retry: Option<RetryPolicy>,
}

/// A route's action.
#[derive(Debug, Clone, PartialEq)]
pub enum RouteActionConfig {
    /// Forward upstream.
    Forward(Forward),
    /// Answer directly.
    DirectResponse {
        /// Status code.
        status: u16,
        /// Body, if any.
        body: Option<String>,
    },
}

/// Domain lookup in Envoy's order: exact, then the longest `*suffix`, then the longest
/// `prefix*`, then `*`.
#[derive(Debug, Clone, PartialEq, Default)]
struct DomainIndex {
    exact: HashMap<String, usize>,
    suffixes: Vec<(String, usize)>,
    prefixes: Vec<(String, usize)>,
    any: Option<usize>,
}

impl RouteConfig {
    /// The virtual host for a `Host` / `:authority` value (matched as given, case-insensitive).
    pub fn virtual_host(&self, host: &str) -> Option<&VirtualHost> {
        let host = host.to_ascii_lowercase();
        let i = &self.index;
        let at = i
            .exact
            .get(&host)
            .copied()
            .or_else(|| {
                i.suffixes
                    .iter()
                    .find(|(s, _)| host.len() > s.len() && host.ends_with(s.as_str()))
                    .map(|(_, v)| *v)
            })
            .or_else(|| {
                i.prefixes
                    .iter()
                    .find(|(p, _)| host.len() > p.len() && host.starts_with(p.as_str()))
                    .map(|(_, v)| *v)
            })
            .or(i.any)?;
        self.virtual_hosts.get(at)
    }

    /// Every cluster a route may send to.
    pub fn clusters(&self) -> impl Iterator<Item = &str> {
        self.virtual_hosts
            .iter()
            .flat_map(|v| v.routes.iter())
            .flat_map(|r| match &r.action {
                RouteActionConfig::Forward(f) => match &f.target {
                    ClusterTarget::Cluster(c) => vec![c.as_str()],
                    ClusterTarget::Weighted { clusters, .. } => {
                        clusters.iter().map(|(c, _)| c.as_str()).collect()
                    }
                },
                RouteActionConfig::DirectResponse { .. } => Vec::new(),
            })
    }
}

pub(crate) fn route_configuration(mut r: RouteConfiguration) -> Result<RouteConfig> {
    let name = required_name("name", std::mem::take(&mut r.name))?;
    bounded("virtual_hosts", &r.virtual_hosts, limits::MAX_VIRTUAL_HOSTS)?;
    let total: usize = r.virtual_hosts.iter().map(|v| v.routes.len()).sum();
    if total > limits::MAX_ROUTES {
        return Err(FieldError::new(
            "virtual_hosts",
            format!("{total} routes, over the limit of {}", limits::MAX_ROUTES),
        ));
    }
    let mut virtual_hosts = Vec::with_capacity(r.virtual_hosts.len());
    let mut index = DomainIndex::default();
    let mut seen = HashSet::new();
    for (i, v) in std::mem::take(&mut r.virtual_hosts).into_iter().enumerate() {
        let vh = virtual_host(v).at_index("virtual_hosts", i)?;
        for (j, d) in vh.domains.iter().enumerate() {
            if !seen.insert(d.clone()) {
                return Err(FieldError::new(
                    format!("virtual_hosts[{i}].domains[{j}]"),
                    format!("{d:?} appears twice (domains must be unique)"),
                ));
            }
            if d == "*" {
                index.any = Some(i);
            } else if let Some(s) = d.strip_prefix('*') {
                index.suffixes.push((s.to_string(), i));
            } else if let Some(p) = d.strip_suffix('*') {
                index.prefixes.push((p.to_string(), i));
            } else {
                index.exact.insert(d.clone(), i);
            }
        }
        virtual_hosts.push(vh);
    }
    index.suffixes.sort_by_key(|s| std::cmp::Reverse(s.0.len()));
    index.prefixes.sort_by_key(|p| std::cmp::Reverse(p.0.len()));
    let validate_clusters = bool_or(r.validate_clusters.take(), false);
    nothing_else(&r)?;
    Ok(RouteConfig {
        name,
        virtual_hosts,
        validate_clusters,
        index,
    })
}

fn domain(d: String) -> Result<String> {
    let d = required_name("", d)?.to_ascii_lowercase();
    let stars = d.matches('*').count();
    let ok = stars == 0 || (stars == 1 && (d.starts_with('*') || d.ends_with('*')));
    if !ok {
        return Err(FieldError::new(
            "",
            format!("{d:?}: a wildcard may only be the first or the last character"),
        ));
    }
    Ok(d)
}

fn virtual_host(mut v: EnvoyVirtualHost) -> Result<VirtualHost> {
    let name = required_name("name", std::mem::take(&mut v.name))?;
    bounded("domains", &v.domains, limits::MAX_DOMAINS)?;
    if v.domains.is_empty() {
        return Err(FieldError::new(
            "domains",
            "at least one domain is required",
        ));
    }
    let mut domains = Vec::with_capacity(v.domains.len());
    for (i, d) in std::mem::take(&mut v.domains).into_iter().enumerate() {
        domains.push(domain(d).at_index("domains", i)?);
    }
    let mut routes = Vec::with_capacity(v.routes.len());
    for (i, r) in std::mem::take(&mut v.routes).into_iter().enumerate() {
        routes.push(route(r).at_index("routes", i)?);
    }
    v.metadata = None;
    nothing_else(&v)?;
    Ok(VirtualHost {
        name,
        domains,
        routes,
    })
}

fn route(mut r: EnvoyRoute) -> Result<Route> {
    let name = name("name", std::mem::take(&mut r.name))?;
    let r#match = route_match(r.r#match.take().unwrap_or_default()).at("match")?;
    let action = match r.action.take() {
        Some(Action::Route(a)) => RouteActionConfig::Forward(forward(a).at("route")?),
        Some(Action::DirectResponse(mut d)) => {
            let status = u16::try_from(d.status)
                .ok()
                .filter(|s| (200..600).contains(s))
                .ok_or_else(|| {
                    FieldError::new(
                        "direct_response.status",
                        format!("{} is not 200–599", d.status),
                    )
                })?;
            let body = match d.body.take().and_then(|b| b.specifier) {
                None => None,
                Some(strait_proto::xds::envoy::config::core::v3::data_source::Specifier::InlineString(s))
                    if s.len() <= limits::MAX_VALUE_LEN =>
                {
                    Some(s)
                }
                Some(_) => {
                    return Err(FieldError::new(
                        "direct_response.body",
                        "only a short inline_string is supported",
                    ));
                }
            };
            d.status = 0;
            nothing_else(&d).at("direct_response")?;
            RouteActionConfig::DirectResponse { status, body }
        }
        _ => {
            return Err(FieldError::new(
                "action",
                "only route and direct_response are supported",
            ));
        }
    };
    let mut per_filter = std::mem::take(&mut r.typed_per_filter_config);
    let fault = match per_filter.remove(FAULT_FILTER) {
        Some(any) => {
            let at = format!("typed_per_filter_config[{FAULT_FILTER:?}]");
            let f: HttpFault = decode_any(&any).at(&at)?;
            Some(fault(f).at(&at)?)
        }
        None => None,
    };
    if let Some(key) = per_filter.keys().next() {
        return Err(FieldError::new(
            format!("typed_per_filter_config[{key:?}]"),
            "unknown filter",
        ));
    }
    // Informational: metadata, and the tracing span name.
    r.metadata = None;
    r.decorator = None;
    nothing_else(&r)?;
    Ok(Route {
        name,
        r#match,
        action,
        fault,
    })
}

fn route_match(mut m: EnvoyMatch) -> Result<RouteMatch> {
    let path = match m.path_specifier.take() {
        Some(PathSpecifier::Prefix(p)) => PathMatch::Prefix(path_value("prefix", p)?),
        Some(PathSpecifier::Path(p)) => PathMatch::Exact(path_value("path", p)?),
        Some(PathSpecifier::SafeRegex(r)) => PathMatch::Regex(regex(r).at("safe_regex")?),
        Some(_) => {
            return Err(FieldError::new(
                "path_specifier",
                "only prefix, path and safe_regex are supported",
            ));
        }
        None => return Err(FieldError::new("path_specifier", "must be set")),
    };
    let case_sensitive = bool_or(m.case_sensitive.take(), true);
    bounded("headers", &m.headers, limits::MAX_HEADER_MATCHERS)?;
    let mut headers = Vec::new();
    for (i, h) in std::mem::take(&mut m.headers).into_iter().enumerate() {
        headers.push(header_match(h).at_index("headers", i)?);
    }
    nothing_else(&m)?;
    Ok(RouteMatch {
        path,
        case_sensitive,
        headers,
    })
}

fn path_value(field: &str, p: String) -> Result<String> {
    if p.len() > limits::MAX_VALUE_LEN {
        return Err(FieldError::new(
            field,
            format!(
                "{} bytes, over the limit of {}",
                p.len(),
                limits::MAX_VALUE_LEN
            ),
        ));
    }
    Ok(p)
}

// The deprecated `*_match` forms are what older control planes send; Envoy still accepts them.
#[allow(deprecated)]
fn header_match(mut h: HeaderMatcher) -> Result<HeaderMatch> {
    let name = required_name("name", std::mem::take(&mut h.name))?.to_ascii_lowercase();
    let value = |p: MatchPattern| {
        string_matcher(StringMatcher {
            match_pattern: Some(p),
            ..Default::default()
        })
    };
    let kind = match h.header_match_specifier.take() {
        Some(HeaderMatchSpecifier::StringMatch(s)) => {
            HeaderMatchKind::Value(string_matcher(s).at("string_match")?)
        }
        Some(HeaderMatchSpecifier::PresentMatch(p)) => HeaderMatchKind::Present(p),
        Some(HeaderMatchSpecifier::ExactMatch(s)) => {
            HeaderMatchKind::Value(value(MatchPattern::Exact(s)).at("exact_match")?)
        }
        Some(HeaderMatchSpecifier::PrefixMatch(s)) => {
            HeaderMatchKind::Value(value(MatchPattern::Prefix(s)).at("prefix_match")?)
        }
        Some(HeaderMatchSpecifier::SuffixMatch(s)) => {
            HeaderMatchKind::Value(value(MatchPattern::Suffix(s)).at("suffix_match")?)
        }
        Some(HeaderMatchSpecifier::ContainsMatch(s)) => {
            HeaderMatchKind::Value(value(MatchPattern::Contains(s)).at("contains_match")?)
        }
        Some(HeaderMatchSpecifier::SafeRegexMatch(r)) => {
            HeaderMatchKind::Value(value(MatchPattern::SafeRegex(r)).at("safe_regex_match")?)
        }
        Some(HeaderMatchSpecifier::RangeMatch(_)) => {
            return Err(FieldError::new(
                "range_match",
                "range matches are not supported",
            ));
        }
        // Envoy: no specifier means "present".
        None => HeaderMatchKind::Present(true),
    };
    let invert = std::mem::take(&mut h.invert_match);
    nothing_else(&h)?;
    Ok(HeaderMatch { name, kind, invert })
}

fn forward(mut a: RouteAction) -> Result<Forward> {
    let target = match a.cluster_specifier.take() {
        Some(ClusterSpecifier::Cluster(c)) => ClusterTarget::Cluster(required_name("cluster", c)?),
        Some(ClusterSpecifier::WeightedClusters(w)) => weighted(w).at("weighted_clusters")?,
        _ => {
            return Err(FieldError::new(
                "cluster_specifier",
                "only cluster and weighted_clusters are supported",
            ));
        }
    };
    let timeout = match opt_duration("timeout", a.timeout.take())? {
        None => Some(DEFAULT_ROUTE_TIMEOUT),
        Some(d) if d.is_zero() => None,
        Some(d) => Some(d),
    };
    let retry = a
        .retry_policy
        .take()
        .map(retry)
        .transpose()
        .at("retry_policy")?;
    nothing_else(&a)?;
    Ok(Forward {
        target,
        timeout,
        retry,
    })
}

fn weighted(mut w: WeightedCluster) -> Result<ClusterTarget> {
    if w.clusters.is_empty() {
        return Err(FieldError::new(
            "clusters",
            "at least one cluster is required",
        ));
    }
    bounded("clusters", &w.clusters, limits::MAX_WEIGHTED_CLUSTERS)?;
    let mut clusters = Vec::with_capacity(w.clusters.len());
    let mut total: u64 = 0;
    for (i, mut c) in std::mem::take(&mut w.clusters).into_iter().enumerate() {
        let name = required_name("name", std::mem::take(&mut c.name)).at_index("clusters", i)?;
        let weight = u32_or(c.weight.take(), 0);
        total += u64::from(weight);
        nothing_else(&c).at_index("clusters", i)?;
        clusters.push((name, weight));
    }
    if total == 0 {
        return Err(FieldError::new("clusters", "the weights add up to 0"));
    }
    nothing_else(&w)?;
    Ok(ClusterTarget::Weighted { clusters, total })
}

fn retry_on(s: &str) -> Result<RetryOn> {
    let mut on = RetryOn::default();
    for token in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let flag = match token {
            "5xx" => &mut on.five_xx,
            "gateway-error" => &mut on.gateway_error,
            "reset" => &mut on.reset,
            "reset-before-request" => &mut on.reset_before_request,
            "connect-failure" => &mut on.connect_failure,
            "retriable-4xx" => &mut on.retriable_4xx,
            "refused-stream" => &mut on.refused_stream,
            "retriable-status-codes" => &mut on.retriable_status_codes,
            "envoy-ratelimited" => &mut on.envoy_ratelimited,
            "cancelled" => &mut on.cancelled,
            "deadline-exceeded" => &mut on.deadline_exceeded,
            "internal" => &mut on.internal,
            "resource-exhausted" => &mut on.resource_exhausted,
            "unavailable" => &mut on.unavailable,
            other => {
                return Err(FieldError::new(
                    "retry_on",
                    format!(
                        "{:?} is not a supported retry condition",
                        super::error::excerpt(other, 64)
                    ),
                ));
            }
        };
        *flag = true;
    }
    Ok(on)
}

fn retry(mut r: EnvoyRetry) -> Result<RetryPolicy> {
    let retry_on = retry_on(&std::mem::take(&mut r.retry_on))?;
    let num_retries = u32_or(r.num_retries.take(), 1);
    if num_retries > limits::MAX_RETRIES {
        return Err(FieldError::new(
            "num_retries",
            format!("{num_retries} is over the limit of {}", limits::MAX_RETRIES),
        ));
    }
    let per_try_timeout =
        opt_duration("per_try_timeout", r.per_try_timeout.take())?.filter(|d| !d.is_zero());
    bounded("retriable_status_codes", &r.retriable_status_codes, 64)?;
    let mut retriable_status_codes = Vec::new();
    for (i, c) in std::mem::take(&mut r.retriable_status_codes)
        .into_iter()
        .enumerate()
    {
        let code = u16::try_from(c)
            .ok()
            .filter(|c| (100..600).contains(c))
            .ok_or_else(|| {
                FieldError::new(
                    format!("retriable_status_codes[{i}]"),
                    format!("{c} is not a status"),
                )
            })?;
        retriable_status_codes.push(code);
    }
    let mut previous_hosts = false;
    for (i, p) in std::mem::take(&mut r.retry_host_predicate)
        .into_iter()
        .enumerate()
    {
        previous_hosts |= host_predicate(p).at_index("retry_host_predicate", i)?;
    }
    let host_selection_retry_max_attempts = u32::try_from(r.host_selection_retry_max_attempts)
        .map_err(|_| FieldError::new("host_selection_retry_max_attempts", "out of range"))?
        .min(limits::MAX_RETRIES);
    r.host_selection_retry_max_attempts = 0;
    let mut back_off = (Duration::from_millis(25), Duration::from_millis(250));
    if let Some(mut b) = r.retry_back_off.take() {
        let base = opt_duration("base_interval", b.base_interval.take())
            .at("retry_back_off")?
            .filter(|d| !d.is_zero())
            .ok_or_else(|| FieldError::new("retry_back_off.base_interval", "must be positive"))?;
        let max = opt_duration("max_interval", b.max_interval.take())
            .at("retry_back_off")?
            .unwrap_or(base * 10);
        nothing_else(&b).at("retry_back_off")?;
        back_off = (base, max.max(base));
    }
    nothing_else(&r)?;
    Ok(RetryPolicy {
        retry_on,
        num_retries,
        per_try_timeout,
        retriable_status_codes,
        previous_hosts,
        host_selection_retry_max_attempts,
        back_off,
    })
}

fn host_predicate(p: RetryHostPredicate) -> Result<bool> {
    if p.name == PREVIOUS_HOSTS {
        return Ok(true);
    }
    Err(FieldError::new(
        "name",
        format!(
            "retry host predicate {:?} is not supported",
            super::error::excerpt(&p.name, 64)
        ),
    ))
}
