//! One VirtualService `http` route → Envoy routes: matches, destinations, timeout, retries and
//! fault injection, translated as Istio translates them.

use std::collections::HashMap;

use strait_proto::xds::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier;
use strait_proto::xds::envoy::config::route::v3::retry_policy::RetryHostPredicate;
use strait_proto::xds::envoy::config::route::v3::retry_policy::retry_host_predicate::ConfigType;
use strait_proto::xds::envoy::config::route::v3::route::Action;
use strait_proto::xds::envoy::config::route::v3::route_action::ClusterSpecifier;
use strait_proto::xds::envoy::config::route::v3::route_match::PathSpecifier;
use strait_proto::xds::envoy::config::route::v3::weighted_cluster::ClusterWeight;
use strait_proto::xds::envoy::config::route::v3::{
    HeaderMatcher, RetryPolicy, Route, RouteAction, RouteMatch, WeightedCluster,
};
use strait_proto::xds::envoy::extensions::filters::common::fault::v3::FaultDelay;
use strait_proto::xds::envoy::extensions::filters::common::fault::v3::fault_delay::FaultDelaySecifier;
use strait_proto::xds::envoy::extensions::filters::http::fault::v3::fault_abort::ErrorType;
use strait_proto::xds::envoy::extensions::filters::http::fault::v3::{FaultAbort, HttpFault};
use strait_proto::xds::envoy::extensions::retry::host::previous_hosts::v3::PreviousHostsPredicate;
use strait_proto::xds::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use strait_proto::xds::envoy::r#type::matcher::v3::{RegexMatcher, StringMatcher};
use strait_proto::xds::envoy::r#type::v3::FractionalPercent;
use strait_proto::xds::envoy::r#type::v3::fractional_percent::DenominatorType;
use strait_proto::xds::google::protobuf::Any;
use strait_proto::xds::to_any;

use crate::model::networking::{
    HttpFaultInjection, HttpMatchRequest, HttpRetry, HttpRoute, Percent, StringMatch,
};

use super::scope::Scope;
use super::{BLACKHOLE_CLUSTER, boolean, duration, rules, uint32};

/// Name of the HTTP fault filter, also the key of its per-route config.
pub(super) const FAULT_FILTER: &str = "envoy.filters.http.fault";
/// Istio's default `retryOn`.
pub(super) const DEFAULT_RETRY_ON: &str =
    "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes";

/// The Envoy routes for one VirtualService `http` route on `port`: one per match that applies
/// to the port (a match naming another port is dropped), or one catch-all if it has no match.
/// Empty when every match names another port.
pub(super) fn http_routes(
    scope: &Scope<'_>,
    namespace: &str,
    r: &HttpRoute,
    port: u32,
) -> Vec<Route> {
    let matches: Vec<&HttpMatchRequest> = r
        .matches
        .iter()
        .filter(|m| m.port.is_none_or(|p| p == port))
        .collect();
    if !r.matches.is_empty() && matches.is_empty() {
        return Vec::new();
    }
    let action = RouteAction {
        cluster_specifier: Some(cluster_specifier(scope, namespace, r, port)),
        timeout: Some(duration(r.timeout.map(|t| t.as_std()).unwrap_or_default())),
        retry_policy: retry_policy(r.retries.as_ref()),
        ..Default::default()
    };
    let mut per_filter = HashMap::new();
    if let Some(fault) = r.fault.as_ref().and_then(fault) {
        per_filter.insert(FAULT_FILTER.to_string(), fault);
    }
    let route = |m: Option<&HttpMatchRequest>| Route {
        name: r.name.clone().unwrap_or_default(),
        r#match: Some(route_match(m)),
        action: Some(Action::Route(action.clone())),
        typed_per_filter_config: per_filter.clone(),
        ..Default::default()
    };
    if matches.is_empty() {
        vec![route(None)]
    } else {
        matches.into_iter().map(|m| route(Some(m))).collect()
    }
}

/// The route of a service without VirtualService: everything to its cluster, default retries.
pub(super) fn default_route(cluster: String) -> Route {
    Route {
        name: "default".to_string(),
        r#match: Some(route_match(None)),
        action: Some(Action::Route(RouteAction {
            cluster_specifier: Some(ClusterSpecifier::Cluster(cluster)),
            timeout: Some(duration(std::time::Duration::ZERO)),
            retry_policy: retry_policy(None),
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn cluster_specifier(
    scope: &Scope<'_>,
    namespace: &str,
    r: &HttpRoute,
    port: u32,
) -> ClusterSpecifier {
    let dests: Vec<_> = r.route.iter().map(|d| (&d.destination, d.weight)).collect();
    let mut weighted = rules::weighted_clusters(scope, namespace, &dests, port);
    match weighted.len() {
        0 => ClusterSpecifier::Cluster(BLACKHOLE_CLUSTER.to_string()),
        1 => ClusterSpecifier::Cluster(weighted.remove(0).0),
        _ => ClusterSpecifier::WeightedClusters(WeightedCluster {
            clusters: weighted
                .into_iter()
                .map(|(name, weight)| ClusterWeight {
                    name,
                    weight: uint32(weight),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }),
    }
}

fn route_match(m: Option<&HttpMatchRequest>) -> RouteMatch {
    let mut out = RouteMatch {
        path_specifier: Some(PathSpecifier::Prefix("/".to_string())),
        ..Default::default()
    };
    let Some(m) = m else { return out };
    if let Some(uri) = &m.uri {
        out.path_specifier = Some(path_specifier(uri));
    }
    if m.ignore_uri_case == Some(true) {
        out.case_sensitive = boolean(false);
    }
    if let Some(method) = &m.method {
        out.headers.push(header_matcher(":method", method));
    }
    for (name, value) in &m.headers {
        out.headers.push(header_matcher(name, value));
    }
    out
}

fn regex(regex: &str) -> RegexMatcher {
    // No engine_type: Envoy's default engine is RE2, and `google_re2` is deprecated.
    RegexMatcher {
        regex: regex.to_string(),
        engine_type: None,
    }
}

fn path_specifier(m: &StringMatch) -> PathSpecifier {
    match (&m.exact, &m.prefix, &m.regex) {
        (Some(exact), _, _) => PathSpecifier::Path(exact.clone()),
        (None, Some(prefix), _) => PathSpecifier::Prefix(prefix.clone()),
        (None, None, Some(re)) if !re.is_empty() => PathSpecifier::SafeRegex(regex(re)),
        _ => PathSpecifier::Prefix("/".to_string()),
    }
}

/// A header condition. Envoy refuses an empty prefix or regex: those mean "present".
fn header_matcher(name: &str, m: &StringMatch) -> HeaderMatcher {
    let pattern = match (&m.exact, &m.prefix, &m.regex) {
        (Some(exact), _, _) => Some(MatchPattern::Exact(exact.clone())),
        (None, Some(prefix), _) if !prefix.is_empty() => Some(MatchPattern::Prefix(prefix.clone())),
        (None, None, Some(re)) if !re.is_empty() => Some(MatchPattern::SafeRegex(regex(re))),
        _ => None,
    };
    let specifier = match pattern {
        Some(p) => HeaderMatchSpecifier::StringMatch(StringMatcher {
            match_pattern: Some(p),
            ..Default::default()
        }),
        None => HeaderMatchSpecifier::PresentMatch(true),
    };
    HeaderMatcher {
        name: name.to_string(),
        header_match_specifier: Some(specifier),
        ..Default::default()
    }
}

/// Istio's retry policy: the default (2 attempts, [`DEFAULT_RETRY_ON`], other hosts preferred)
/// when unset; none for `attempts: 0`; else the default with the route's attempts, `retryOn`
/// (numbers become retriable status codes) and `perTryTimeout`.
pub(super) fn retry_policy(r: Option<&HttpRetry>) -> Option<RetryPolicy> {
    let mut out = RetryPolicy {
        retry_on: DEFAULT_RETRY_ON.to_string(),
        num_retries: uint32(2),
        retry_host_predicate: vec![RetryHostPredicate {
            name: "envoy.retry_host_predicates.previous_hosts".to_string(),
            config_type: Some(ConfigType::TypedConfig(to_any(&PreviousHostsPredicate {}))),
        }],
        host_selection_retry_max_attempts: 5,
        ..Default::default()
    };
    let Some(r) = r else { return Some(out) };
    if r.attempts == 0 {
        return None;
    }
    out.num_retries = uint32(r.attempts);
    if let Some(on) = r.retry_on.as_deref().filter(|s| !s.trim().is_empty()) {
        let (mut policies, codes): (Vec<&str>, Vec<&str>) = on
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .partition(|p| status_code(p).is_none());
        if !codes.is_empty() && !policies.contains(&"retriable-status-codes") {
            policies.push("retriable-status-codes");
        }
        out.retry_on = policies.join(",");
        out.retriable_status_codes = codes.into_iter().filter_map(status_code).collect();
    }
    if let Some(t) = r.per_try_timeout {
        out.per_try_timeout = Some(duration(t.as_std()));
    }
    Some(out)
}

fn status_code(s: &str) -> Option<u32> {
    s.parse().ok().filter(|c| (100..=599).contains(c))
}

/// The per-route HTTPFault config; None when it injects nothing. An unset percentage injects
/// into no request, as in Istio.
fn fault(f: &HttpFaultInjection) -> Option<Any> {
    let delay = f.delay.as_ref().map(|d| FaultDelay {
        percentage: Some(fraction(d.percentage)),
        fault_delay_secifier: Some(FaultDelaySecifier::FixedDelay(duration(
            d.fixed_delay.as_std(),
        ))),
    });
    let abort = f.abort.as_ref().map(|a| FaultAbort {
        percentage: Some(fraction(a.percentage)),
        error_type: Some(ErrorType::HttpStatus(a.http_status)),
        ..Default::default()
    });
    if delay.is_none() && abort.is_none() {
        return None;
    }
    Some(to_any(&HttpFault {
        delay,
        abort,
        ..Default::default()
    }))
}

/// A percentage per million, so 0.1 % steps (and finer) survive.
fn fraction(p: Option<Percent>) -> FractionalPercent {
    let value = p.map_or(0.0, |p| p.value).clamp(0.0, 100.0);
    FractionalPercent {
        numerator: (value * 10_000.0).round() as u32,
        denominator: DenominatorType::Million as i32,
    }
}
