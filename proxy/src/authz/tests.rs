//! RBAC evaluation, compile errors and the normalisation corpus. The protos are built by hand
//! in the shapes straitd's `generate/rbac.rs` emits (the proxy does not depend on the control
//! plane).
#![allow(clippy::unwrap_used, clippy::expect_used, deprecated)]

use std::collections::HashMap;
use std::net::IpAddr;

use prost::Message;
use strait_proto::xds::envoy::config::core::v3::{CidrRange, TypedExtensionConfig};
use strait_proto::xds::envoy::config::rbac::v3::principal::{Authenticated, Identifier};
use strait_proto::xds::envoy::config::rbac::v3::{
    Permission, Policy, Principal, Rbac, permission, principal, rbac,
};
use strait_proto::xds::envoy::config::route::v3::HeaderMatcher;
use strait_proto::xds::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier;
use strait_proto::xds::envoy::extensions::filters::http::rbac::v3::Rbac as HttpRbac;
use strait_proto::xds::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;
use strait_proto::xds::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use strait_proto::xds::envoy::r#type::matcher::v3::{
    MetadataMatcher, PathMatcher, RegexMatcher, StringMatcher, path_matcher,
};
use strait_proto::xds::envoy::r#type::v3::Int32Range;
use strait_proto::xds::google::protobuf::UInt32Value;

use super::*;

// ---- proto builders, named after straitd's ----

fn sm(p: MatchPattern) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(p),
        ..Default::default()
    }
}
fn exact(s: &str) -> StringMatcher {
    sm(MatchPattern::Exact(s.into()))
}
fn prefix(s: &str) -> StringMatcher {
    sm(MatchPattern::Prefix(s.into()))
}
fn suffix(s: &str) -> StringMatcher {
    sm(MatchPattern::Suffix(s.into()))
}
fn contains(s: &str) -> StringMatcher {
    sm(MatchPattern::Contains(s.into()))
}
fn regex(s: &str) -> StringMatcher {
    sm(MatchPattern::SafeRegex(RegexMatcher {
        regex: s.into(),
        engine_type: None,
    }))
}
fn perm(rule: permission::Rule) -> Permission {
    Permission { rule: Some(rule) }
}
fn id(i: Identifier) -> Principal {
    Principal {
        identifier: Some(i),
    }
}
fn any_perm() -> Permission {
    perm(permission::Rule::Any(true))
}
fn any_id() -> Principal {
    id(Identifier::Any(true))
}
fn and_rules(rules: Vec<Permission>) -> Permission {
    perm(permission::Rule::AndRules(permission::Set { rules }))
}
fn or_rules(rules: Vec<Permission>) -> Permission {
    perm(permission::Rule::OrRules(permission::Set { rules }))
}
fn not_rule(p: Permission) -> Permission {
    perm(permission::Rule::NotRule(Box::new(p)))
}
fn and_ids(ids: Vec<Principal>) -> Principal {
    id(Identifier::AndIds(principal::Set { ids }))
}
fn or_ids(ids: Vec<Principal>) -> Principal {
    id(Identifier::OrIds(principal::Set { ids }))
}
fn not_id(p: Principal) -> Principal {
    id(Identifier::NotId(Box::new(p)))
}
fn header(name: &str, spec: HeaderMatchSpecifier) -> HeaderMatcher {
    HeaderMatcher {
        name: name.into(),
        header_match_specifier: Some(spec),
        ..Default::default()
    }
}
/// straitd's `method`.
fn method(v: &str) -> Permission {
    perm(permission::Rule::Header(header(
        ":method",
        HeaderMatchSpecifier::StringMatch(exact(v)),
    )))
}
/// straitd's `path`: `x` exact, `x*` prefix, `*x` suffix, `*` → `.+`.
fn path(v: &str) -> Permission {
    let m = if v == "*" {
        regex(".+")
    } else if let Some(s) = v.strip_prefix('*') {
        suffix(s)
    } else if let Some(p) = v.strip_suffix('*') {
        prefix(p)
    } else {
        exact(v)
    };
    perm(permission::Rule::UrlPath(PathMatcher {
        rule: Some(path_matcher::Rule::Path(m)),
    }))
}
fn port(p: u32) -> Permission {
    perm(permission::Rule::DestinationPort(p))
}
fn authenticated(m: Option<StringMatcher>) -> Principal {
    id(Identifier::Authenticated(Authenticated {
        principal_name: m,
    }))
}
/// straitd's `peer_principal`.
fn principal(v: &str) -> Principal {
    authenticated(Some(match v {
        "*" => regex(".+"),
        _ if v.starts_with('*') => suffix(&v[1..]),
        _ => match v.strip_suffix('*') {
            Some(p) => prefix(&format!("spiffe://{p}")),
            None => exact(&format!("spiffe://{v}")),
        },
    }))
}
/// straitd's `peer_namespace` (no wildcard).
fn namespace(ns: &str) -> Principal {
    authenticated(Some(regex(&format!(".*/ns/{ns}/.*"))))
}
fn cidr(addr: &str, len: u32) -> CidrRange {
    CidrRange {
        address_prefix: addr.into(),
        prefix_len: Some(UInt32Value { value: len }),
    }
}
fn policy(permissions: Vec<Permission>, principals: Vec<Principal>) -> Policy {
    Policy {
        permissions,
        principals,
        ..Default::default()
    }
}
fn rbac_of(action: rbac::Action, policies: Vec<(&str, Policy)>) -> Rbac {
    Rbac {
        action: action as i32,
        policies: policies
            .into_iter()
            .map(|(n, p)| (n.to_owned(), p))
            .collect::<HashMap<_, _>>(),
        ..Default::default()
    }
}

// ---- requests ----

const SLEEP: &str = "spiffe://cluster.local/ns/default/sa/sleep";
const EVIL: &str = "spiffe://cluster.local/ns/evil/sa/x";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn http(peer: Option<&str>, m: &str, target: &str) -> Request {
    let Normalized::Forward(path) = normalize(target, PathNormalization::default()).unwrap() else {
        panic!("redirect")
    };
    Request::connection(
        peer.map(|p| p.parse().unwrap()),
        ip("10.0.0.7"),
        ip("10.0.0.9"),
        8080,
    )
    .with_http(HttpRequest {
        method: m.into(),
        path,
        authority: "web.default.svc:8080".into(),
        headers: vec![
            ("x-team".into(), "blue".into()),
            ("x-multi".into(), "a".into()),
            ("x-multi".into(), "b".into()),
            ("content-length".into(), "42".into()),
        ],
    })
}

fn allows(p: Permission, principal_: Principal, req: &Request) -> bool {
    let f = RbacFilter::compile(&rbac_of(
        rbac::Action::Allow,
        vec![("p", policy(vec![p], vec![principal_]))],
    ))
    .unwrap();
    f.evaluate(req).allowed
}

#[test]
fn permission_kinds() {
    let get = http(Some(SLEEP), "GET", "/info/x?q=1");
    let mut tcp = Request::connection(None, ip("10.0.0.7"), ip("10.0.0.9"), 9000);
    tcp.requested_server_name = Some("outbound_.9000_._.db".into());
    let cases: Vec<(&str, Permission, &Request, bool)> = vec![
        ("any", any_perm(), &get, true),
        ("method exact", method("GET"), &get, true),
        ("method other", method("POST"), &get, false),
        ("path exact", path("/info/x"), &get, true),
        ("path exact ignores query", path("/info/x?q=1"), &get, false),
        ("path prefix", path("/info*"), &get, true),
        ("path suffix", path("*/x"), &get, true),
        ("path any", path("*"), &get, true),
        ("path on tcp", path("*"), &tcp, false),
        ("port", port(8080), &get, true),
        ("port other", port(8081), &get, false),
        (
            "port range in",
            perm(permission::Rule::DestinationPortRange(Int32Range {
                start: 8000,
                end: 8081,
            })),
            &get,
            true,
        ),
        (
            "port range end excluded",
            perm(permission::Rule::DestinationPortRange(Int32Range {
                start: 8000,
                end: 8080,
            })),
            &get,
            false,
        ),
        (
            "destination ip",
            perm(permission::Rule::DestinationIp(cidr("10.0.0.0", 24))),
            &get,
            true,
        ),
        (
            "destination ip out",
            perm(permission::Rule::DestinationIp(cidr("10.0.1.0", 24))),
            &get,
            false,
        ),
        (
            "and",
            and_rules(vec![method("GET"), port(8080)]),
            &get,
            true,
        ),
        (
            "and one fails",
            and_rules(vec![method("GET"), port(1)]),
            &get,
            false,
        ),
        ("or", or_rules(vec![method("POST"), port(8080)]), &get, true),
        ("not", not_rule(method("POST")), &get, true),
        ("not matching", not_rule(method("GET")), &get, false),
        (
            "header exact",
            perm(permission::Rule::Header(header(
                "x-team",
                HeaderMatchSpecifier::ExactMatch("blue".into()),
            ))),
            &get,
            true,
        ),
        (
            "header values joined",
            perm(permission::Rule::Header(header(
                "x-multi",
                HeaderMatchSpecifier::ExactMatch("a,b".into()),
            ))),
            &get,
            true,
        ),
        (
            "header present",
            perm(permission::Rule::Header(header(
                "x-team",
                HeaderMatchSpecifier::PresentMatch(true),
            ))),
            &get,
            true,
        ),
        (
            "header absent matches present:false",
            perm(permission::Rule::Header(header(
                "x-none",
                HeaderMatchSpecifier::PresentMatch(false),
            ))),
            &get,
            true,
        ),
        (
            "absent header does not match a string",
            perm(permission::Rule::Header(header(
                "x-none",
                HeaderMatchSpecifier::StringMatch(prefix("a")),
            ))),
            &get,
            false,
        ),
        (
            "inverted prefix",
            perm(permission::Rule::Header(HeaderMatcher {
                invert_match: true,
                ..header("x-team", HeaderMatchSpecifier::PrefixMatch("re".into()))
            })),
            &get,
            true,
        ),
        (
            "header range",
            perm(permission::Rule::Header(header(
                "content-length",
                HeaderMatchSpecifier::RangeMatch(
                    strait_proto::xds::envoy::r#type::v3::Int64Range { start: 0, end: 100 },
                ),
            ))),
            &get,
            true,
        ),
        (
            ":path header sees the query",
            perm(permission::Rule::Header(header(
                ":path",
                HeaderMatchSpecifier::SuffixMatch("q=1".into()),
            ))),
            &get,
            true,
        ),
        (
            "header ignore_case",
            perm(permission::Rule::Header(header(
                "x-team",
                HeaderMatchSpecifier::StringMatch(StringMatcher {
                    ignore_case: true,
                    ..exact("BLUE")
                }),
            ))),
            &get,
            true,
        ),
        (
            "sni",
            perm(permission::Rule::RequestedServerName(prefix(
                "outbound_.9000",
            ))),
            &tcp,
            true,
        ),
    ];
    for (name, p, req, want) in cases {
        assert_eq!(allows(p, any_id(), req), want, "{name}");
    }
}

#[test]
fn principal_kinds() {
    let sleep = http(Some(SLEEP), "GET", "/");
    let plain = http(None, "GET", "/");
    let mut forwarded = http(Some(SLEEP), "GET", "/");
    forwarded.remote_ip = Some(ip("203.0.113.5"));
    let mapped = Request::connection(None, ip("::ffff:10.0.0.7"), ip("10.0.0.9"), 80);
    let cases: Vec<(&str, Principal, &Request, bool)> = vec![
        ("any", any_id(), &plain, true),
        (
            "exact",
            principal("cluster.local/ns/default/sa/sleep"),
            &sleep,
            true,
        ),
        (
            "exact other",
            principal("cluster.local/ns/default/sa/web"),
            &sleep,
            false,
        ),
        (
            "prefix",
            principal("cluster.local/ns/default/*"),
            &sleep,
            true,
        ),
        ("suffix", principal("*/sa/sleep"), &sleep, true),
        ("any authenticated", principal("*"), &sleep, true),
        (
            "any authenticated, plaintext",
            principal("*"),
            &plain,
            false,
        ),
        (
            "authenticated without matcher",
            authenticated(None),
            &sleep,
            true,
        ),
        (
            "authenticated without matcher, plaintext",
            authenticated(None),
            &plain,
            false,
        ),
        (
            "contains",
            authenticated(Some(contains("/ns/default/"))),
            &sleep,
            true,
        ),
        ("namespace", namespace("default"), &sleep, true),
        ("namespace other", namespace("foo"), &sleep, false),
        ("namespace plaintext", namespace("default"), &plain, false),
        (
            "not namespace, plaintext",
            not_id(namespace("default")),
            &plain,
            true,
        ),
        (
            "and",
            and_ids(vec![namespace("default"), principal("*")]),
            &sleep,
            true,
        ),
        (
            "or",
            or_ids(vec![namespace("foo"), principal("*")]),
            &sleep,
            true,
        ),
        (
            "direct ip",
            id(Identifier::DirectRemoteIp(cidr("10.0.0.0", 8))),
            &sleep,
            true,
        ),
        (
            "direct ip /32 other",
            id(Identifier::DirectRemoteIp(cidr("10.0.0.8", 32))),
            &sleep,
            false,
        ),
        (
            "source ip (deprecated)",
            id(Identifier::SourceIp(cidr("10.0.0.7", 32))),
            &sleep,
            true,
        ),
        (
            "mapped v6 against v4",
            id(Identifier::DirectRemoteIp(cidr("10.0.0.0", 24))),
            &mapped,
            true,
        ),
        (
            "v6 range",
            id(Identifier::DirectRemoteIp(cidr("2001:db8::", 32))),
            &sleep,
            false,
        ),
        (
            "remote ip falls back to direct",
            id(Identifier::RemoteIp(cidr("10.0.0.7", 32))),
            &sleep,
            true,
        ),
        (
            "remote ip forwarded",
            id(Identifier::RemoteIp(cidr("203.0.113.0", 24))),
            &forwarded,
            true,
        ),
        (
            "direct ip ignores forwarded",
            id(Identifier::DirectRemoteIp(cidr("203.0.113.0", 24))),
            &forwarded,
            false,
        ),
        (
            "zero prefix matches all",
            id(Identifier::DirectRemoteIp(cidr("0.0.0.0", 0))),
            &sleep,
            true,
        ),
        (
            "principal header",
            id(Identifier::Header(header(
                "x-team",
                HeaderMatchSpecifier::ExactMatch("blue".into()),
            ))),
            &sleep,
            true,
        ),
        (
            "principal url_path",
            id(Identifier::UrlPath(PathMatcher {
                rule: Some(path_matcher::Rule::Path(exact("/"))),
            })),
            &sleep,
            true,
        ),
    ];
    for (name, p, req, want) in cases {
        assert_eq!(allows(any_perm(), p, req), want, "{name}");
    }
}

#[test]
fn chain_semantics_deny_then_allow() {
    let deny = RbacFilter::compile(&rbac_of(
        rbac::Action::Deny,
        vec![(
            "ns[default]-policy[no-evil]-rule[0]",
            policy(
                vec![and_rules(vec![any_perm()])],
                vec![and_ids(vec![or_ids(vec![namespace("evil")])])],
            ),
        )],
    ))
    .unwrap();
    let allow = RbacFilter::compile(&rbac_of(
        rbac::Action::Allow,
        vec![(
            "ns[default]-policy[get]-rule[0]",
            policy(
                vec![and_rules(vec![or_rules(vec![method("GET")])])],
                vec![and_ids(vec![any_id()])],
            ),
        )],
    ))
    .unwrap();
    let chain = Authorizer::new(vec![deny, allow]);
    let d = chain.evaluate(&http(Some(EVIL), "GET", "/"));
    assert_eq!(
        d.denied_by,
        Some((0, Some("ns[default]-policy[no-evil]-rule[0]".into())))
    );
    assert!(!d.allowed);
    let d = chain.evaluate(&http(Some(SLEEP), "POST", "/"));
    assert_eq!(d.denied_by, Some((1, None)));
    assert!(chain.evaluate(&http(Some(SLEEP), "GET", "/")).allowed);
    assert!(chain.evaluate(&http(None, "GET", "/")).allowed);

    // No filter: everything passes. An ALLOW filter without policies: nothing does.
    assert!(
        Authorizer::default()
            .evaluate(&http(None, "GET", "/"))
            .allowed
    );
    let empty_allow = RbacFilter::compile(&rbac_of(rbac::Action::Allow, vec![])).unwrap();
    assert!(
        !Authorizer::new(vec![empty_allow])
            .evaluate(&http(Some(SLEEP), "GET", "/"))
            .allowed
    );
    let empty_deny = RbacFilter::compile(&rbac_of(rbac::Action::Deny, vec![])).unwrap();
    assert!(
        Authorizer::new(vec![empty_deny])
            .evaluate(&http(Some(SLEEP), "GET", "/"))
            .allowed
    );
}

#[test]
fn log_action_allows_and_marks() {
    let log = RbacFilter::compile(&rbac_of(
        rbac::Action::Log,
        vec![("log-posts", policy(vec![method("POST")], vec![any_id()]))],
    ))
    .unwrap();
    let chain = Authorizer::new(vec![log]);
    let d = chain.evaluate(&http(None, "POST", "/"));
    assert!(d.allowed && d.log);
    let d = chain.evaluate(&http(None, "GET", "/"));
    assert!(d.allowed && !d.log);
}

#[test]
fn first_matching_policy_by_name_is_reported() {
    let f = RbacFilter::compile(&rbac_of(
        rbac::Action::Deny,
        vec![
            ("b", policy(vec![any_perm()], vec![any_id()])),
            ("a", policy(vec![any_perm()], vec![any_id()])),
        ],
    ))
    .unwrap();
    assert_eq!(
        f.evaluate(&http(None, "GET", "/")).policy.as_deref(),
        Some("a")
    );
}

/// What straitd emits for, on an HTTP port:
///
/// ```yaml
/// action: ALLOW
/// rules:
/// - from: [{source: {principals: ["cluster.local/ns/default/sa/sleep"]}}, {source: {namespaces: ["ops"]}}]
///   to: [{operation: {methods: ["GET", "HEAD"], paths: ["/info*"], notPaths: ["/info/secret"]}}]
/// - to: [{operation: {ports: ["9090"]}}]
/// ```
/// plus a DENY policy `deny-evil` with `from: [{source: {namespaces: ["evil"]}}]`, each wrapped
/// in the HTTP filter config, encoded and decoded as it travels in LDS.
#[test]
fn straitd_http_policies_decoded_from_bytes() {
    let allow = rbac_of(
        rbac::Action::Allow,
        vec![
            (
                "ns[default]-policy[web]-rule[0]",
                policy(
                    vec![and_rules(vec![
                        or_rules(vec![method("GET"), method("HEAD")]),
                        or_rules(vec![path("/info*")]),
                        not_rule(or_rules(vec![path("/info/secret")])),
                    ])],
                    vec![
                        and_ids(vec![or_ids(vec![principal(
                            "cluster.local/ns/default/sa/sleep",
                        )])]),
                        and_ids(vec![or_ids(vec![namespace("ops")])]),
                    ],
                ),
            ),
            (
                "ns[default]-policy[web]-rule[1]",
                policy(
                    vec![and_rules(vec![or_rules(vec![port(9090)])])],
                    vec![and_ids(vec![any_id()])],
                ),
            ),
        ],
    );
    let deny = rbac_of(
        rbac::Action::Deny,
        vec![(
            "ns[default]-policy[deny-evil]-rule[0]",
            policy(
                vec![and_rules(vec![any_perm()])],
                vec![and_ids(vec![or_ids(vec![namespace("evil")])])],
            ),
        )],
    );
    let wire = |r: Rbac| {
        HttpRbac {
            rules: Some(r),
            ..Default::default()
        }
        .encode_to_vec()
    };
    let chain: Vec<RbacFilter> = [wire(deny), wire(allow)]
        .iter()
        .map(|bytes| {
            let cfg = HttpRbac::decode(bytes.as_slice()).unwrap();
            RbacFilter::from_http(&cfg).unwrap().unwrap()
        })
        .collect();
    let chain = Authorizer::new(chain);
    let ops = "spiffe://cluster.local/ns/ops/sa/admin";
    let cases = [
        (Some(SLEEP), "GET", "/info/a", true),
        (Some(SLEEP), "HEAD", "/info", true),
        (Some(SLEEP), "POST", "/info/a", false),
        (Some(SLEEP), "GET", "/info/secret", false),
        (Some(SLEEP), "GET", "/info//secret", false),
        (Some(SLEEP), "GET", "/info/x/../secret", false),
        (Some(SLEEP), "GET", "/other", false),
        (Some(ops), "GET", "/info/a", true),
        (Some(EVIL), "GET", "/info/a", false),
        (None, "GET", "/info/a", false),
        (
            Some("spiffe://cluster.local/ns/default/sa/web"),
            "GET",
            "/info/a",
            false,
        ),
    ];
    for (peer, m, p, want) in cases {
        assert_eq!(
            chain.evaluate(&http(peer, m, p)).allowed,
            want,
            "{peer:?} {m} {p}"
        );
    }
    // Rule 1: any peer (plaintext too) on port 9090.
    let mut r = http(None, "DELETE", "/x");
    r.destination_port = 9090;
    assert!(chain.evaluate(&r).allowed);
}

/// straitd on a TCP port: a DENY rule whose only field was HTTP (dropped) becomes "any";
/// ALLOW rules with ports stay.
#[test]
fn straitd_network_policies_decoded_from_bytes() {
    let deny = NetworkRbac {
        rules: Some(rbac_of(
            rbac::Action::Deny,
            vec![(
                "ns[db]-policy[no-evil]-rule[0]",
                policy(
                    vec![and_rules(vec![any_perm()])],
                    vec![and_ids(vec![or_ids(vec![namespace("evil")])])],
                ),
            )],
        )),
        stat_prefix: "tcp.".into(),
        ..Default::default()
    };
    let allow = NetworkRbac {
        rules: Some(rbac_of(
            rbac::Action::Allow,
            vec![(
                "ns[db]-policy[db]-rule[0]",
                policy(
                    vec![and_rules(vec![or_rules(vec![port(5432)])])],
                    vec![and_ids(vec![or_ids(vec![principal(
                        "cluster.local/ns/default/*",
                    )])])],
                ),
            )],
        )),
        stat_prefix: "tcp.".into(),
        ..Default::default()
    };
    let chain = Authorizer::new(
        [deny, allow]
            .iter()
            .map(|c| {
                let cfg = NetworkRbac::decode(c.encode_to_vec().as_slice()).unwrap();
                RbacFilter::from_network(&cfg).unwrap().unwrap()
            })
            .collect(),
    );
    let conn = |peer: Option<&str>, p: u16| {
        Request::connection(
            peer.map(|s| s.parse().unwrap()),
            ip("10.1.0.1"),
            ip("10.1.0.2"),
            p,
        )
    };
    assert!(chain.evaluate(&conn(Some(SLEEP), 5432)).allowed);
    assert!(!chain.evaluate(&conn(Some(SLEEP), 5433)).allowed);
    assert!(!chain.evaluate(&conn(Some(EVIL), 5432)).allowed);
    assert!(!chain.evaluate(&conn(None, 5432)).allowed);
    assert!(
        RbacFilter::from_network(&NetworkRbac::default())
            .unwrap()
            .is_none()
    );
}

#[test]
fn unsupported_and_invalid_pieces_are_refused_with_policy_and_field() {
    let one = |p: Permission, i: Principal| {
        rbac_of(rbac::Action::Allow, vec![("pol", policy(vec![p], vec![i]))])
    };
    let err = |r: Rbac| RbacFilter::compile(&r).unwrap_err().to_string();
    let e = err(one(
        and_rules(vec![
            any_perm(),
            perm(permission::Rule::Metadata(MetadataMatcher::default())),
        ]),
        any_id(),
    ));
    assert_eq!(
        e,
        "RBAC policy \"pol\": permissions[0].and_rules[1].metadata is not supported"
    );
    let e = err(one(
        any_perm(),
        not_id(id(Identifier::Metadata(MetadataMatcher::default()))),
    ));
    assert_eq!(
        e,
        "RBAC policy \"pol\": principals[0].not_id.metadata is not supported"
    );
    let e = err(one(
        any_perm(),
        id(Identifier::Custom(TypedExtensionConfig::default())),
    ));
    assert!(e.contains("principals[0].custom is not supported"), "{e}");
    let e = err(one(
        perm(permission::Rule::UriTemplate(
            TypedExtensionConfig::default(),
        )),
        any_id(),
    ));
    assert!(e.contains("permissions[0].uri_template"), "{e}");
    let e = err(one(path("/x"), authenticated(Some(regex("(unclosed")))));
    assert!(
        e.contains("principals[0].authenticated.principal_name.safe_regex"),
        "{e}"
    );
    let e = err(one(
        perm(permission::Rule::UrlPath(PathMatcher {
            rule: Some(path_matcher::Rule::Path(prefix(""))),
        })),
        any_id(),
    ));
    assert!(e.contains("url_path.path.prefix: must not be empty"), "{e}");
    let e = err(one(
        perm(permission::Rule::DestinationIp(cidr("10.0.0.0", 33))),
        any_id(),
    ));
    assert!(e.contains("destination_ip.prefix_len"), "{e}");
    let e = err(one(
        perm(permission::Rule::DestinationIp(cidr("not-an-ip", 8))),
        any_id(),
    ));
    assert!(e.contains("address_prefix"), "{e}");
    let e = err(one(and_rules(vec![]), any_id()));
    assert!(e.contains("and_rules: must hold at least one rule"), "{e}");
    let e = err(one(Permission { rule: None }, any_id()));
    assert!(e.contains("rule: not set"), "{e}");
    let e = err(one(perm(permission::Rule::Any(false)), any_id()));
    assert!(e.contains("any: must be true"), "{e}");
    let mut with_cel = one(any_perm(), any_id());
    if let Some(p) = with_cel.policies.get_mut("pol") {
        p.condition = Some(Default::default());
    }
    assert_eq!(
        err(with_cel),
        "RBAC policy \"pol\": condition (CEL) is not supported"
    );
    let e = err(rbac_of(
        rbac::Action::Allow,
        vec![("empty", policy(vec![], vec![any_id()]))],
    ));
    assert!(e.contains("\"empty\": permissions"), "{e}");
    let e = err(Rbac {
        action: 7,
        ..Default::default()
    });
    assert!(e.contains("unknown action 7"), "{e}");
    let http_matcher = HttpRbac {
        matcher: Some(Default::default()),
        ..Default::default()
    };
    assert!(
        RbacFilter::from_http(&http_matcher)
            .unwrap_err()
            .to_string()
            .contains("matcher is not supported")
    );
    let continuous = NetworkRbac {
        enforcement_type: 1,
        ..Default::default()
    };
    assert!(RbacFilter::from_network(&continuous).is_err());
}

// ---- normalisation ----

#[test]
fn normalize_examples() {
    let n = |t: &str| match normalize(t, PathNormalization::default()) {
        Ok(Normalized::Forward(p)) => Ok(p.to_header()),
        Ok(Normalized::Redirect(p)) => Ok(format!("redirect {}", p.to_header())),
        Err(e) => Err(e),
    };
    assert_eq!(n("/a//b///c"), Ok("/a/b/c".into()));
    assert_eq!(n("/a/./b/../c"), Ok("/a/c".into()));
    assert_eq!(n("/../../a"), Ok("/a".into()));
    assert_eq!(n("/a/.."), Ok("/".into()));
    assert_eq!(n("/a/b/.."), Ok("/a/".into()));
    assert_eq!(n("/a/."), Ok("/a/".into()));
    assert_eq!(n("/a b"), Ok("/a%20b".into()));
    assert_eq!(n("/é"), Ok("/%C3%A9".into()));
    assert_eq!(n("/%7Euser"), Ok("/~user".into()));
    assert_eq!(n("/a%2fb"), Ok("/a%2fb".into()));
    assert_eq!(n("/a?x=../..//y#f"), Ok("/a?x=../..//y".into()));
    assert_eq!(n("/a%"), Ok("/a%".into()));
    assert_eq!(n("/a%zz"), Ok("/a%zz".into()));
    assert_eq!(n("a"), Err(PathError::NotOriginForm));
    assert_eq!(n("/a%0a"), Err(PathError::ControlCharacter));
    let how = |escaped_slashes| PathNormalization {
        escaped_slashes,
        ..Default::default()
    };
    assert_eq!(
        normalize("/a%2Fb", how(EscapedSlashes::Reject)),
        Err(PathError::EscapedSlash)
    );
    assert_eq!(
        normalize("/a%2Fb%5c..%2f/c", how(EscapedSlashes::UnescapeAndForward)),
        Ok(Normalized::Forward(NormalizedPath {
            path: "/a/c".into(),
            query: None
        }))
    );
    assert_eq!(
        normalize("/a%2fb", how(EscapedSlashes::UnescapeAndRedirect)),
        Ok(Normalized::Redirect(NormalizedPath {
            path: "/a/b".into(),
            query: None
        }))
    );
    assert_eq!(
        EscapedSlashes::from_proto(1),
        Some(EscapedSlashes::KeepUnchanged)
    );
    assert_eq!(EscapedSlashes::from_proto(9), None);
    assert_eq!(
        normalize_host("Web.Default.SVC:8080"),
        "web.default.svc:8080"
    );
}

/// The corpus against `DENY paths: ["/admin*"]` and `ALLOW paths: ["/public*"]`: every request
/// that reaches `/admin` (as a backend that resolves dot segments and decodes unreserved
/// escapes reads it) is refused by both, either by RBAC or by normalisation.
#[test]
fn normalisation_corpus_has_no_bypass() {
    let deny = Authorizer::new(vec![
        RbacFilter::compile(&rbac_of(
            rbac::Action::Deny,
            vec![(
                "deny-admin",
                policy(
                    vec![and_rules(vec![or_rules(vec![path("/admin*")])])],
                    vec![any_id()],
                ),
            )],
        ))
        .unwrap(),
    ]);
    let deny_exact = Authorizer::new(vec![
        RbacFilter::compile(&rbac_of(
            rbac::Action::Deny,
            vec![(
                "deny-admin",
                policy(vec![path("/admin"), path("/admin/*")], vec![any_id()]),
            )],
        ))
        .unwrap(),
    ]);
    let allow = Authorizer::new(vec![
        RbacFilter::compile(&rbac_of(
            rbac::Action::Allow,
            vec![("public", policy(vec![path("/public*")], vec![any_id()]))],
        ))
        .unwrap(),
    ]);
    // (request target, normalised path or None when refused, reaches /admin exactly or below
    // with a plain `/` — then the exact-path policy must deny too)
    let corpus: &[(&str, Option<&str>, bool)] = &[
        ("/admin", Some("/admin"), true),
        ("//admin", Some("/admin"), true),
        ("///admin//", Some("/admin/"), true),
        ("/./admin", Some("/admin"), true),
        ("/public/../admin", Some("/admin"), true),
        ("/public/./../admin", Some("/admin"), true),
        ("/public/%2e%2e/admin", Some("/admin"), true),
        ("/public/%2E%2E/admin", Some("/admin"), true),
        ("/public/.%2e/admin", Some("/admin"), true),
        ("/%2e%2e/admin", Some("/admin"), true),
        ("/public/..//admin", Some("/admin"), true),
        // RFC 3986 as Envoy: `..` removes the empty segment, then slashes merge.
        ("/public//../admin", Some("/public/admin"), false),
        ("/%61dmin", Some("/admin"), true),
        ("/%61%64%6D%69%6E/users", Some("/admin/users"), true),
        ("/public\\..\\admin", Some("/admin"), true),
        ("\\admin", None, false),
        ("/public/..\\admin", Some("/admin"), true),
        ("/admin#/public", Some("/admin"), true),
        ("/admin?/public", Some("/admin"), true),
        ("/admin/?q=/public", Some("/admin/"), true),
        ("/admin/x/..", Some("/admin/"), true),
        ("/admin%2F", Some("/admin%2F"), false),
        ("/admin%2fusers", Some("/admin%2fusers"), false),
        ("/admin%5Cusers", Some("/admin%5Cusers"), false),
        ("/public/..%2Fadmin", Some("/public/..%2Fadmin"), false),
        ("/admin%00", None, false),
        ("/public/%00/../admin", None, false),
        ("/public/%C0%AE%C0%AE/admin", None, false),
        ("/public/%E0%80%AE./admin", None, false),
        ("/public/%c0%2e/admin", None, false),
        ("/admin\u{0}", None, false),
        ("/admin\r\nx", None, false),
    ];
    for (target, want, exact_reach) in corpus {
        let got = normalize(target, PathNormalization::default())
            .ok()
            .map(|n| match n {
                Normalized::Forward(p) | Normalized::Redirect(p) => p,
            });
        assert_eq!(
            got.as_ref().map(|p| p.path.as_str()),
            *want,
            "normalising {target:?}"
        );
        let Some(path) = got else { continue };
        let req =
            Request::connection(None, ip("10.0.0.1"), ip("10.0.0.2"), 80).with_http(HttpRequest {
                method: "GET".into(),
                path: path.clone(),
                authority: "web".into(),
                headers: vec![],
            });
        // Whatever is left of /admin-ish text after normalisation stays refused by the prefix
        // DENY, and never reaches the ALLOW of /public.
        if path.path.starts_with("/admin") {
            assert!(
                !deny.evaluate(&req).allowed,
                "DENY /admin* bypassed by {target:?}"
            );
            assert!(
                !allow.evaluate(&req).allowed,
                "ALLOW /public* bypassed by {target:?}"
            );
        }
        if *exact_reach {
            assert!(
                !deny_exact.evaluate(&req).allowed,
                "DENY /admin, /admin/* bypassed by {target:?}"
            );
        }
    }
    // The control: /public itself passes both.
    let ok = http(None, "GET", "/public/a/../b");
    assert!(deny.evaluate(&ok).allowed && allow.evaluate(&ok).allowed);
}

/// With a backend that decodes `%2F` as `/`, the listener must say so: UNESCAPE_AND_FORWARD
/// makes the escaped forms plain paths that the exact policy catches.
#[test]
fn escaped_slashes_decoded_when_the_action_says_so() {
    let deny_exact = Authorizer::new(vec![
        RbacFilter::compile(&rbac_of(
            rbac::Action::Deny,
            vec![(
                "deny-admin",
                policy(vec![path("/admin"), path("/admin/*")], vec![any_id()]),
            )],
        ))
        .unwrap(),
    ]);
    let how = PathNormalization {
        escaped_slashes: EscapedSlashes::UnescapeAndForward,
        ..Default::default()
    };
    for target in [
        "/admin%2F",
        "/admin%2fusers",
        "/admin%5Cusers",
        "/public/..%2Fadmin",
        "/public%2F..%5Cadmin",
    ] {
        let Ok(Normalized::Forward(path)) = normalize(target, how) else {
            panic!("{target}")
        };
        let req =
            Request::connection(None, ip("10.0.0.1"), ip("10.0.0.2"), 80).with_http(HttpRequest {
                method: "GET".into(),
                path,
                authority: "web".into(),
                headers: vec![],
            });
        assert!(!deny_exact.evaluate(&req).allowed, "{target}");
    }
}

#[test]
fn host_case_does_not_bypass_an_authority_deny() {
    let deny = Authorizer::new(vec![
        RbacFilter::compile(&rbac_of(
            rbac::Action::Deny,
            vec![(
                "deny-admin-host",
                policy(
                    vec![perm(permission::Rule::Header(header(
                        ":authority",
                        HeaderMatchSpecifier::StringMatch(prefix("admin.example.com")),
                    )))],
                    vec![any_id()],
                ),
            )],
        ))
        .unwrap(),
    ]);
    for host in [
        "admin.example.com",
        "ADMIN.example.com",
        "Admin.Example.Com:443",
    ] {
        let mut req = http(None, "GET", "/");
        if let Some(h) = req.http.as_mut() {
            h.authority = normalize_host(host);
        }
        assert!(!deny.evaluate(&req).allowed, "{host}");
    }
}
