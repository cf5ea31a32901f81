use strait_proto::xds::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier;
use strait_proto::xds::envoy::config::route::v3::retry_policy::retry_host_predicate::ConfigType;
use strait_proto::xds::envoy::config::route::v3::route::Action;
use strait_proto::xds::envoy::config::route::v3::route_action::ClusterSpecifier;
use strait_proto::xds::envoy::config::route::v3::route_match::PathSpecifier;
use strait_proto::xds::envoy::config::route::v3::{
    Route, RouteAction, RouteConfiguration, VirtualHost,
};
use strait_proto::xds::envoy::extensions::filters::common::fault::v3::fault_delay::FaultDelaySecifier;
use strait_proto::xds::envoy::extensions::filters::http::fault::v3::HttpFault;
use strait_proto::xds::envoy::extensions::filters::http::fault::v3::fault_abort::ErrorType;
use strait_proto::xds::envoy::r#type::matcher::v3::string_matcher::MatchPattern;

use super::{BOOKINFO, decode, mesh, proxy, proxy_in, secs};
use crate::xds::generate::routes;

fn route_config(yaml: &str, proxy: &crate::xds::proxy::Proxy, name: &str) -> RouteConfiguration {
    let mut out = routes(&mesh(yaml), proxy, &[name.to_string()]);
    assert_eq!(out.len(), 1);
    out.remove(0)
}

fn vhost<'a>(rc: &'a RouteConfiguration, name: &str) -> &'a VirtualHost {
    rc.virtual_hosts
        .iter()
        .find(|v| v.name == name)
        .unwrap_or_else(|| panic!("no vhost {name}"))
}

fn action(r: &Route) -> &RouteAction {
    match &r.action {
        Some(Action::Route(a)) => a,
        other => panic!("not a route action: {other:?}"),
    }
}

fn cluster(r: &Route) -> &str {
    match &action(r).cluster_specifier {
        Some(ClusterSpecifier::Cluster(c)) => c,
        other => panic!("not one cluster: {other:?}"),
    }
}

#[test]
fn services_without_virtual_service_get_the_default_route() {
    let rc = route_config(BOOKINFO, &proxy(), "9080");
    assert_eq!(rc.name, "9080");
    assert!(!rc.validate_clusters.unwrap().value);
    let names: Vec<&str> = rc.virtual_hosts.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "ratings.default.svc.cluster.local:9080",
            "reviews.default.svc.cluster.local:9080",
            "allow_any"
        ]
    );
    let vh = vhost(&rc, "reviews.default.svc.cluster.local:9080");
    assert_eq!(
        vh.domains,
        [
            "reviews.default.svc.cluster.local",
            "reviews.default.svc.cluster.local:9080",
            "reviews",
            "reviews:9080",
            "reviews.default",
            "reviews.default:9080",
            "reviews.default.svc",
            "reviews.default.svc:9080",
        ]
    );
    let [r] = vh.routes.as_slice() else { panic!() };
    assert_eq!(
        r.r#match.as_ref().unwrap().path_specifier,
        Some(PathSpecifier::Prefix("/".into()))
    );
    assert_eq!(
        cluster(r),
        "outbound|9080||reviews.default.svc.cluster.local"
    );
    assert_eq!(
        action(r).timeout,
        secs(0),
        "Istio disables the route timeout"
    );
    let retry = action(r).retry_policy.as_ref().unwrap();
    assert_eq!(retry.num_retries.unwrap().value, 2);
    assert_eq!(
        retry.retry_on,
        "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
    );
    assert_eq!(retry.host_selection_retry_max_attempts, 5);
    let [pred] = retry.retry_host_predicate.as_slice() else {
        panic!()
    };
    assert_eq!(pred.name, "envoy.retry_host_predicates.previous_hosts");
    let Some(ConfigType::TypedConfig(any)) = &pred.config_type else {
        panic!()
    };
    assert_eq!(
        any.type_url,
        "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
    );

    let any = rc.virtual_hosts.last().unwrap();
    assert_eq!(any.domains, ["*"]);
    assert_eq!(cluster(&any.routes[0]), "PassthroughCluster");
}

#[test]
fn other_namespaces_get_no_bare_short_name() {
    let rc = route_config(BOOKINFO, &proxy_in("other"), "9080");
    let vh = vhost(&rc, "reviews.default.svc.cluster.local:9080");
    assert!(
        !vh.domains
            .iter()
            .any(|d| d == "reviews" || d == "reviews:9080")
    );
    assert!(vh.domains.iter().any(|d| d == "reviews.default"));
}

#[test]
fn registry_only_blocks_with_502() {
    let sidecar = "---\napiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: s}\nspec:\n  outboundTrafficPolicy: {mode: REGISTRY_ONLY}\n";
    let rc = route_config(&format!("{BOOKINFO}{sidecar}"), &proxy(), "9080");
    let last = rc.virtual_hosts.last().unwrap();
    assert_eq!(last.name, "block_all");
    assert_eq!(last.domains, ["*"]);
    let Some(Action::DirectResponse(d)) = &last.routes[0].action else {
        panic!()
    };
    assert_eq!(d.status, 502);
}

#[test]
fn unknown_names_get_empty_configurations() {
    let out = routes(
        &mesh(BOOKINFO),
        &proxy(),
        &["1234".to_string(), "nope".to_string()],
    );
    assert_eq!(
        out.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
        ["1234", "nope"]
    );
    assert!(out.iter().all(|r| r.virtual_hosts.is_empty()));
}

const VS: &str = r#"
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - name: other-port
    match: [{port: 9999, uri: {prefix: /never}}]
    route: [{destination: {host: reviews, subset: v9}}]
  - name: jason
    match:
    - headers: {end-user: {exact: jason}, x-canary: {prefix: ""}}
      method: {exact: GET}
    - uri: {regex: "/api/v[0-9]+/.*"}
      ignoreUriCase: true
      port: 9080
    route: [{destination: {host: reviews, subset: v2}}]
    timeout: 10s
    retries: {attempts: 3, perTryTimeout: 2s, retryOn: "gateway-error,503"}
    fault:
      delay: {fixedDelay: 5s, percentage: {value: 0.1}}
      abort: {httpStatus: 503, percentage: {value: 50}}
  - name: split
    match: [{uri: {prefix: /reviews}}]
    route:
    - {destination: {host: reviews, subset: v1}, weight: 90}
    - {destination: {host: reviews.default.svc.cluster.local, subset: v3}, weight: 10}
    retries: {attempts: 0}
  - route: [{destination: {host: ratings, port: {number: 9080}}}]
"#;

#[test]
fn virtual_service_routes_in_order() {
    let rc = route_config(&format!("{BOOKINFO}{VS}"), &proxy(), "9080");
    let vh = vhost(&rc, "reviews.default.svc.cluster.local:9080");
    let names: Vec<&str> = vh.routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        ["jason", "jason", "split", ""],
        "one route per match; other-port skipped"
    );

    let m = vh.routes[0].r#match.as_ref().unwrap();
    assert_eq!(m.path_specifier, Some(PathSpecifier::Prefix("/".into())));
    let headers: Vec<(&str, Option<&HeaderMatchSpecifier>)> = m
        .headers
        .iter()
        .map(|h| (h.name.as_str(), h.header_match_specifier.as_ref()))
        .collect();
    let exact = |s: &str| {
        HeaderMatchSpecifier::StringMatch(
            strait_proto::xds::envoy::r#type::matcher::v3::StringMatcher {
                match_pattern: Some(MatchPattern::Exact(s.into())),
                ..Default::default()
            },
        )
    };
    assert_eq!(
        headers,
        [
            (":method", Some(&exact("GET"))),
            ("end-user", Some(&exact("jason"))),
            ("x-canary", Some(&HeaderMatchSpecifier::PresentMatch(true))),
        ]
    );
    let m = vh.routes[1].r#match.as_ref().unwrap();
    let Some(PathSpecifier::SafeRegex(re)) = &m.path_specifier else {
        panic!()
    };
    assert_eq!(re.regex, "/api/v[0-9]+/.*");
    assert!(!m.case_sensitive.unwrap().value);
    assert_eq!(
        cluster(&vh.routes[0]),
        "outbound|9080|v2|reviews.default.svc.cluster.local"
    );
    assert_eq!(action(&vh.routes[0]).timeout, secs(10));

    let Some(ClusterSpecifier::WeightedClusters(w)) = &action(&vh.routes[2]).cluster_specifier
    else {
        panic!()
    };
    let got: Vec<(&str, u32)> = w
        .clusters
        .iter()
        .map(|c| (c.name.as_str(), c.weight.unwrap().value))
        .collect();
    assert_eq!(
        got,
        [
            ("outbound|9080|v1|reviews.default.svc.cluster.local", 90),
            ("outbound|9080|v3|reviews.default.svc.cluster.local", 10),
        ]
    );
    assert!(
        action(&vh.routes[2]).retry_policy.is_none(),
        "attempts: 0 disables retries"
    );
    assert_eq!(
        cluster(&vh.routes[3]),
        "outbound|9080||ratings.default.svc.cluster.local"
    );
}

#[test]
fn retries_and_faults_translate_as_istio_does() {
    let rc = route_config(&format!("{BOOKINFO}{VS}"), &proxy(), "9080");
    let r = &vhost(&rc, "reviews.default.svc.cluster.local:9080").routes[0];
    let retry = action(r).retry_policy.as_ref().unwrap();
    assert_eq!(retry.num_retries.unwrap().value, 3);
    assert_eq!(retry.per_try_timeout, secs(2));
    assert_eq!(retry.retry_on, "gateway-error,retriable-status-codes");
    assert_eq!(retry.retriable_status_codes, [503]);
    assert_eq!(retry.retry_host_predicate.len(), 1);

    let fault: HttpFault = decode(&r.typed_per_filter_config["envoy.filters.http.fault"]);
    let delay = fault.delay.unwrap();
    assert_eq!(
        delay.fault_delay_secifier,
        Some(FaultDelaySecifier::FixedDelay(secs(5).unwrap()))
    );
    let p = delay.percentage.unwrap();
    assert_eq!(
        (p.numerator, p.denominator),
        (1_000, 2),
        "0.1 % per million"
    );
    let abort = fault.abort.unwrap();
    assert_eq!(abort.error_type, Some(ErrorType::HttpStatus(503)));
    let p = abort.percentage.unwrap();
    assert_eq!((p.numerator, p.denominator), (500_000, 2));
    let split = &vhost(&rc, "reviews.default.svc.cluster.local:9080").routes[2];
    assert!(split.typed_per_filter_config.is_empty());
}

#[test]
fn duplicate_domains_are_dropped() {
    let yaml = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: a}
spec:
  hosts: [reviews, reviews.default.svc.cluster.local]
  resolution: STATIC
  ports: [{number: 9080, name: http}]
  endpoints: [{address: 198.18.1.1}]
"#;
    let rc = route_config(yaml, &proxy(), "9080");
    let mut all: Vec<&str> = rc
        .virtual_hosts
        .iter()
        .flat_map(|v| v.domains.iter().map(String::as_str))
        .collect();
    let count = all.len();
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), count, "Envoy refuses duplicate domains");
    assert_eq!(rc.virtual_hosts.len(), 3);
}
