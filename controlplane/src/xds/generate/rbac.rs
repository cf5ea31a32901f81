//! AuthorizationPolicy → Envoy RBAC, translated as Istio translates it.
//!
//! - Which policies apply to a workload: those of its namespace without selector or whose
//!   `selector.matchLabels` it carries, and those of the root namespace (`istio-system`) without
//!   selector (mesh-wide) or whose selector it matches (in any namespace, as in Istio).
//! - DENY policies become one RBAC filter with action DENY, evaluated first; ALLOW policies one
//!   with action ALLOW after it. When any ALLOW policy applies, a request that matches none of
//!   their rules is denied; an ALLOW policy without rules matches nothing (it denies all), and a
//!   rule `{}` matches everything.
//! - One Envoy policy per rule, named `ns[<ns>]-policy[<name>]-rule[<i>]`. A rule matches when
//!   one of its `from` and one of its `to` match (a missing list matches anything); within one
//!   `from`/`to` every field must match, and a field matches when one of its values does and
//!   none of its `not` values do.
//! - Principals: `spiffe://<p>` exact, `<p>*` prefix, `*<p>` suffix, `*` any authenticated peer;
//!   namespaces: the principal matches `.*/ns/<ns>/.*`. Both need a client certificate, so they
//!   never match plaintext traffic.
//! - Methods (`:method` header), paths (`url_path`) and ports (`destination_port`).
//! - TCP ports (network RBAC) cannot see methods or paths. As in Istio, a rule of an ALLOW
//!   policy that names them is dropped on TCP (it allows nothing there), while in a DENY policy
//!   those values are dropped and the rest of the rule kept, so the deny gets wider — a DENY
//!   rule with only HTTP fields denies every connection to the TCP port (fail closed, never
//!   open).

use std::collections::HashMap;

use strait_proto::xds::envoy::config::rbac::v3::principal::{Authenticated, Identifier};
use strait_proto::xds::envoy::config::rbac::v3::{
    Permission, Policy, Principal, Rbac, permission, principal, rbac,
};
use strait_proto::xds::envoy::config::route::v3::HeaderMatcher;
use strait_proto::xds::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier;
use strait_proto::xds::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use strait_proto::xds::envoy::r#type::matcher::v3::{
    PathMatcher, RegexMatcher, StringMatcher, path_matcher,
};

use crate::model::mesh::{Config, Mesh, selects};
use crate::model::networking::Labels;
use crate::model::security::{Action, AuthorizationPolicy, Operation, Rule, Source};

use super::scope::ROOT_NAMESPACE;

const SPIFFE_PREFIX: &str = "spiffe://";

/// The RBAC rules of one port: DENY first, then ALLOW; None where no policy of that action
/// applies.
#[derive(Debug, Default, Clone, PartialEq)]
pub(super) struct Rules {
    pub deny: Option<Rbac>,
    pub allow: Option<Rbac>,
}

/// The policies that apply to a workload in `namespace` with `labels`, in config order.
pub(super) fn applicable<'a>(
    mesh: &'a Mesh,
    namespace: &str,
    labels: &Labels,
) -> Vec<&'a Config<AuthorizationPolicy>> {
    mesh.authorization_policies
        .iter()
        .filter(|p| p.meta.namespace == namespace || p.meta.namespace == ROOT_NAMESPACE)
        .filter(|p| {
            p.spec
                .selector
                .as_ref()
                .is_none_or(|s| selects(&s.match_labels, labels))
        })
        .collect()
}

/// The rules `policies` give a port: HTTP (`for_tcp` false) or TCP.
pub(super) fn rules(policies: &[&Config<AuthorizationPolicy>], for_tcp: bool) -> Rules {
    let build = |action: Action| {
        let of_action: Vec<_> = policies
            .iter()
            .filter(|p| p.spec.action == action)
            .collect();
        if of_action.is_empty() {
            return None;
        }
        let mut entries = HashMap::new();
        for p in of_action {
            for (i, rule) in p.spec.rules.iter().enumerate() {
                if let Some(policy) = policy(rule, for_tcp, action) {
                    let name =
                        format!("ns[{}]-policy[{}]-rule[{i}]", p.meta.namespace, p.meta.name);
                    entries.insert(name, policy);
                }
            }
        }
        let envoy_action = match action {
            Action::Allow => rbac::Action::Allow,
            Action::Deny => rbac::Action::Deny,
        };
        // An ALLOW filter without policies denies everything, which is what it must do; a DENY
        // filter without policies would deny nothing, so it is left out.
        (action == Action::Allow || !entries.is_empty()).then(|| Rbac {
            action: envoy_action as i32,
            policies: entries,
            ..Default::default()
        })
    };
    Rules {
        deny: build(Action::Deny),
        allow: build(Action::Allow),
    }
}

/// One rule → one Envoy policy; None when the rule cannot match here (ALLOW on TCP with HTTP
/// fields).
fn policy(rule: &Rule, for_tcp: bool, action: Action) -> Option<Policy> {
    let ctx = Ctx { for_tcp, action };
    let permissions = if rule.to.is_empty() {
        vec![and_rules(vec![any_permission()])]
    } else {
        rule.to
            .iter()
            .map(|to| operation(&to.operation, ctx))
            .collect::<Option<Vec<_>>>()?
    };
    let principals = if rule.from.is_empty() {
        vec![and_ids(vec![any_principal()])]
    } else {
        rule.from.iter().map(|from| source(&from.source)).collect()
    };
    Some(Policy {
        permissions,
        principals,
        ..Default::default()
    })
}

#[derive(Clone, Copy)]
struct Ctx {
    for_tcp: bool,
    action: Action,
}

impl Ctx {
    /// A value that cannot be expressed here: the whole rule is dropped for ALLOW (None), the
    /// value alone for DENY (Some(None)).
    fn unusable<T>(self) -> Option<Option<T>> {
        match self.action {
            Action::Allow => None,
            Action::Deny => Some(None),
        }
    }
}

/// Istio's order: methods, paths, ports; each field an OR of its values, `not` values negated.
fn operation(op: &Operation, ctx: Ctx) -> Option<Permission> {
    let mut and = Vec::new();
    let http_only = |v: &str, f: fn(&str) -> Permission| {
        if ctx.for_tcp {
            ctx.unusable()
        } else {
            Some(Some(f(v)))
        }
    };
    let port = |v: &str| match v.parse::<u32>() {
        Ok(p) => Some(Some(permission_rule(permission::Rule::DestinationPort(p)))),
        Err(_) => ctx.unusable(),
    };
    field(&mut and, &op.methods, &op.not_methods, |v| {
        http_only(v, method)
    })?;
    field(&mut and, &op.paths, &op.not_paths, |v| http_only(v, path))?;
    field(&mut and, &op.ports, &op.not_ports, port)?;
    if and.is_empty() {
        and.push(any_permission());
    }
    Some(and_rules(and))
}

/// Appends `or(values)` and `not(or(not_values))`, leaving out empty lists. `one` gives None to
/// drop the rule, Some(None) to drop the value.
fn field(
    and: &mut Vec<Permission>,
    values: &[String],
    not_values: &[String],
    one: impl Fn(&str) -> Option<Option<Permission>>,
) -> Option<()> {
    for (list, negate) in [(values, false), (not_values, true)] {
        let mut or = Vec::new();
        for v in list {
            if let Some(p) = one(v)? {
                or.push(p);
            }
        }
        if or.is_empty() {
            continue;
        }
        let rule = permission_rule(permission::Rule::OrRules(permission::Set { rules: or }));
        and.push(if negate {
            permission_rule(permission::Rule::NotRule(Box::new(rule)))
        } else {
            rule
        });
    }
    Some(())
}

/// A source field: values, `not` values, and the principal one value stands for.
type SourceField<'a> = (&'a [String], &'a [String], fn(&str) -> Principal);

/// Istio's order: principals, then namespaces.
fn source(s: &Source) -> Principal {
    let mut and = Vec::new();
    let fields: [SourceField<'_>; 2] = [
        (&s.principals, &s.not_principals, peer_principal),
        (&s.namespaces, &s.not_namespaces, peer_namespace),
    ];
    for (values, not_values, one) in fields {
        for (list, negate) in [(values, false), (not_values, true)] {
            if list.is_empty() {
                continue;
            }
            let or = principal_id(Identifier::OrIds(principal::Set {
                ids: list.iter().map(|v| one(v)).collect(),
            }));
            and.push(if negate {
                principal_id(Identifier::NotId(Box::new(or)))
            } else {
                or
            });
        }
    }
    if and.is_empty() {
        and.push(any_principal());
    }
    and_ids(and)
}

fn method(v: &str) -> Permission {
    let specifier = match string_match(v) {
        Some(m) => HeaderMatchSpecifier::StringMatch(m),
        None => HeaderMatchSpecifier::PresentMatch(true),
    };
    permission_rule(permission::Rule::Header(HeaderMatcher {
        name: ":method".to_string(),
        header_match_specifier: Some(specifier),
        ..Default::default()
    }))
}

fn path(v: &str) -> Permission {
    let m = string_match(v).unwrap_or_else(|| regex_match(".+"));
    permission_rule(permission::Rule::UrlPath(PathMatcher {
        rule: Some(path_matcher::Rule::Path(m)),
    }))
}

/// `x` exact, `x*` prefix, `*x` suffix; None for `*` alone (the caller decides what "any"
/// means, as Envoy refuses an empty prefix).
fn string_match(v: &str) -> Option<StringMatcher> {
    let pattern = if v == "*" {
        return None;
    } else if let Some(suffix) = v.strip_prefix('*') {
        MatchPattern::Suffix(suffix.to_string())
    } else if let Some(prefix) = v.strip_suffix('*') {
        MatchPattern::Prefix(prefix.to_string())
    } else {
        MatchPattern::Exact(v.to_string())
    };
    Some(StringMatcher {
        match_pattern: Some(pattern),
        ..Default::default()
    })
}

fn regex_match(regex: &str) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(MatchPattern::SafeRegex(RegexMatcher {
            regex: regex.to_string(),
            engine_type: None,
        })),
        ..Default::default()
    }
}

/// `principals` entry: `cluster.local/ns/default/sa/sleep` names `spiffe://cluster.local/…`.
fn peer_principal(v: &str) -> Principal {
    let m = match v {
        "*" => regex_match(".+"),
        _ if v.starts_with('*') => StringMatcher {
            match_pattern: Some(MatchPattern::Suffix(v[1..].to_string())),
            ..Default::default()
        },
        _ => {
            let pattern = match v.strip_suffix('*') {
                Some(prefix) => MatchPattern::Prefix(format!("{SPIFFE_PREFIX}{prefix}")),
                None => MatchPattern::Exact(format!("{SPIFFE_PREFIX}{v}")),
            };
            StringMatcher {
                match_pattern: Some(pattern),
                ..Default::default()
            }
        }
    };
    authenticated(m)
}

/// `namespaces` entry: any identity of that namespace (`*` is a wildcard).
fn peer_namespace(v: &str) -> Principal {
    let ns = v
        .split('*')
        .map(escape_regex)
        .collect::<Vec<_>>()
        .join(".*");
    authenticated(regex_match(&format!(".*/ns/{ns}/.*")))
}

fn escape_regex(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn authenticated(m: StringMatcher) -> Principal {
    principal_id(Identifier::Authenticated(Authenticated {
        principal_name: Some(m),
    }))
}

fn permission_rule(rule: permission::Rule) -> Permission {
    Permission { rule: Some(rule) }
}

fn principal_id(id: Identifier) -> Principal {
    Principal {
        identifier: Some(id),
    }
}

fn any_permission() -> Permission {
    permission_rule(permission::Rule::Any(true))
}

fn any_principal() -> Principal {
    principal_id(Identifier::Any(true))
}

fn and_rules(rules: Vec<Permission>) -> Permission {
    permission_rule(permission::Rule::AndRules(permission::Set { rules }))
}

fn and_ids(ids: Vec<Principal>) -> Principal {
    principal_id(Identifier::AndIds(principal::Set { ids }))
}
