//! Envoy's matchers, compiled once: strings, headers, CIDR ranges, and RBAC's permission and
//! principal trees. Every proto piece is either compiled faithfully or refused with the
//! policy and field it sits in.

use std::net::IpAddr;

use regex::Regex;
use strait_proto::xds::envoy::config::core::v3::CidrRange;
use strait_proto::xds::envoy::config::rbac::v3::{Permission, Principal, permission, principal};
use strait_proto::xds::envoy::config::route::v3::HeaderMatcher;
use strait_proto::xds::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier;
use strait_proto::xds::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use strait_proto::xds::envoy::r#type::matcher::v3::{
    PathMatcher, RegexMatcher, StringMatcher, path_matcher,
};

use super::{Error, Request};

/// Where in a policy a piece sits, for error messages: `policy` and a field path such as
/// `permissions[0].and_rules[1].header`.
#[derive(Clone, Copy)]
pub(crate) struct At<'a> {
    pub(crate) policy: &'a str,
    pub(crate) field: &'a str,
}

impl<'a> At<'a> {
    fn unsupported(self, what: &str) -> Error {
        Error::Unsupported {
            policy: self.policy.to_owned(),
            field: format!("{}.{what}", self.field),
        }
    }
    fn invalid(self, what: &str, reason: impl Into<String>) -> Error {
        Error::Invalid {
            policy: self.policy.to_owned(),
            field: format!("{}.{what}", self.field),
            reason: reason.into(),
        }
    }
    fn with<R>(self, suffix: &str, f: impl FnOnce(At<'_>) -> R) -> R {
        let field = format!("{}.{suffix}", self.field);
        f(At {
            policy: self.policy,
            field: &field,
        })
    }
}

/// Largest compiled regex accepted (bytes of the compiled program): a hostile or careless
/// pattern cannot blow up memory. RE2's default limit in Envoy is similar in spirit.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// A compiled `envoy.type.matcher.v3.StringMatcher`.
#[derive(Debug, Clone)]
pub enum StringMatch {
    /// `exact`.
    Exact(String, bool),
    /// `prefix`.
    Prefix(String, bool),
    /// `suffix`.
    Suffix(String, bool),
    /// `contains`.
    Contains(String, bool),
    /// `safe_regex`, anchored at both ends (RE2's full match, as Envoy).
    Regex(Regex),
}

impl StringMatch {
    pub(crate) fn compile(m: &StringMatcher, at: At<'_>) -> Result<StringMatch, Error> {
        let ic = m.ignore_case;
        let fold = |s: &str| if ic { s.to_lowercase() } else { s.to_owned() };
        let nonempty = |s: &String, what: &str| {
            if s.is_empty() {
                // Envoy's validation refuses it too (min_len 1).
                Err(at.invalid(what, "must not be empty"))
            } else {
                Ok(fold(s))
            }
        };
        Ok(match &m.match_pattern {
            Some(MatchPattern::Exact(s)) => StringMatch::Exact(fold(s), ic),
            Some(MatchPattern::Prefix(s)) => StringMatch::Prefix(nonempty(s, "prefix")?, ic),
            Some(MatchPattern::Suffix(s)) => StringMatch::Suffix(nonempty(s, "suffix")?, ic),
            Some(MatchPattern::Contains(s)) => StringMatch::Contains(nonempty(s, "contains")?, ic),
            Some(MatchPattern::SafeRegex(r)) => {
                if ic {
                    // Envoy ignores ignore_case for regexes; a policy that relies on it is
                    // almost certainly wrong, so say so instead of guessing.
                    return Err(at.unsupported("safe_regex with ignore_case"));
                }
                StringMatch::Regex(regex(r, at)?)
            }
            Some(MatchPattern::Custom(_)) => return Err(at.unsupported("custom")),
            None => return Err(at.invalid("match_pattern", "not set")),
        })
    }

    /// Whether `value` matches.
    pub fn matches(&self, value: &str) -> bool {
        let v = |ic: bool| -> std::borrow::Cow<'_, str> {
            if ic {
                value.to_lowercase().into()
            } else {
                value.into()
            }
        };
        match self {
            StringMatch::Exact(s, ic) => v(*ic) == s.as_str(),
            StringMatch::Prefix(s, ic) => v(*ic).starts_with(s.as_str()),
            StringMatch::Suffix(s, ic) => v(*ic).ends_with(s.as_str()),
            StringMatch::Contains(s, ic) => v(*ic).contains(s.as_str()),
            StringMatch::Regex(r) => r.is_match(value),
        }
    }
}

fn regex(r: &RegexMatcher, at: At<'_>) -> Result<Regex, Error> {
    regex::RegexBuilder::new(&format!("^(?:{})$", r.regex))
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| at.invalid("safe_regex", e.to_string()))
}

/// A compiled `envoy.config.route.v3.HeaderMatcher`.
#[derive(Debug, Clone)]
pub struct HeaderMatch {
    name: String,
    how: HeaderHow,
    invert: bool,
    missing_as_empty: bool,
}

#[derive(Debug, Clone)]
enum HeaderHow {
    String(StringMatch),
    Present(bool),
    Range(i64, i64),
}

impl HeaderMatch {
    // The deprecated `*_match` specifiers are still valid in Envoy's API.
    #[allow(deprecated)]
    pub(crate) fn compile(h: &HeaderMatcher, at: At<'_>) -> Result<HeaderMatch, Error> {
        if h.name.is_empty() {
            return Err(at.invalid("name", "must not be empty"));
        }
        let s = |pattern: MatchPattern| StringMatcher {
            match_pattern: Some(pattern),
            ..Default::default()
        };
        let how =
            match &h.header_match_specifier {
                Some(HeaderMatchSpecifier::ExactMatch(v)) => {
                    HeaderHow::String(StringMatch::Exact(v.clone(), false))
                }
                Some(HeaderMatchSpecifier::PrefixMatch(v)) => HeaderHow::String(
                    StringMatch::compile(&s(MatchPattern::Prefix(v.clone())), at)?,
                ),
                Some(HeaderMatchSpecifier::SuffixMatch(v)) => HeaderHow::String(
                    StringMatch::compile(&s(MatchPattern::Suffix(v.clone())), at)?,
                ),
                Some(HeaderMatchSpecifier::ContainsMatch(v)) => HeaderHow::String(
                    StringMatch::compile(&s(MatchPattern::Contains(v.clone())), at)?,
                ),
                Some(HeaderMatchSpecifier::SafeRegexMatch(r)) => {
                    HeaderHow::String(StringMatch::Regex(regex(r, at)?))
                }
                Some(HeaderMatchSpecifier::StringMatch(m)) => {
                    HeaderHow::String(at.with("string_match", |at| StringMatch::compile(m, at))?)
                }
                Some(HeaderMatchSpecifier::PresentMatch(p)) => HeaderHow::Present(*p),
                Some(HeaderMatchSpecifier::RangeMatch(r)) => HeaderHow::Range(r.start, r.end),
                // Envoy: no specifier means "present".
                None => HeaderHow::Present(true),
            };
        Ok(HeaderMatch {
            name: h.name.to_ascii_lowercase(),
            how,
            invert: h.invert_match,
            missing_as_empty: h.treat_missing_header_as_empty,
        })
    }

    /// Envoy's `HeaderUtility::matchHeaders`: several values of one header are joined by `,`.
    pub fn matches(&self, req: &Request) -> bool {
        let value = req.header(&self.name);
        let value = match (value, self.missing_as_empty) {
            (Some(v), _) => v,
            (None, true) => String::new(),
            (None, false) => {
                // An absent header matches only "not present" (or an inverted "present").
                let Self { how, invert, .. } = self;
                return matches!(how, HeaderHow::Present(p) if *p == *invert);
            }
        };
        let matched = match &self.how {
            HeaderHow::String(m) => m.matches(&value),
            HeaderHow::Present(p) => *p,
            HeaderHow::Range(start, end) => {
                value.parse::<i64>().is_ok_and(|n| *start <= n && n < *end)
            }
        };
        matched != self.invert
    }
}

/// A compiled `envoy.config.core.v3.CidrRange`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    len: u8,
}

impl Cidr {
    pub(crate) fn compile(c: &CidrRange, at: At<'_>) -> Result<Cidr, Error> {
        let addr: IpAddr = c.address_prefix.parse().map_err(|_| {
            at.invalid(
                "address_prefix",
                format!("{:?} is not an IP address", c.address_prefix),
            )
        })?;
        let len = c.prefix_len.as_ref().map_or(0, |v| v.value);
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if len > max {
            return Err(at.invalid("prefix_len", format!("{len} is more than {max}")));
        }
        Ok(Cidr {
            addr,
            len: u8::try_from(len).unwrap_or(128),
        })
    }

    /// Whether `ip` is in the range; an IPv4-mapped IPv6 address is compared as IPv4.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(a), IpAddr::V4(b)) => prefix_eq(
                u128::from(u32::from(a)) << 96,
                u128::from(u32::from(b)) << 96,
                self.len,
            ),
            (IpAddr::V6(a), IpAddr::V6(b)) => prefix_eq(u128::from(a), u128::from(b), self.len),
            _ => false,
        }
    }
}

fn prefix_eq(a: u128, b: u128, len: u8) -> bool {
    if len == 0 {
        return true;
    }
    let mask = u128::MAX << (128 - u32::from(len.min(128)));
    a & mask == b & mask
}

/// `url_path`: a string matcher on the path without its query.
fn path(p: &PathMatcher, at: At<'_>) -> Result<StringMatch, Error> {
    match &p.rule {
        Some(path_matcher::Rule::Path(m)) => at.with("path", |at| StringMatch::compile(m, at)),
        None => Err(at.invalid("rule", "not set")),
    }
}

/// A compiled `Permission`.
#[derive(Debug, Clone)]
pub enum Perm {
    /// `and_rules`.
    And(Vec<Perm>),
    /// `or_rules`.
    Or(Vec<Perm>),
    /// `not_rule`.
    Not(Box<Perm>),
    /// `any: true`.
    Any,
    /// `header`.
    Header(HeaderMatch),
    /// `url_path`.
    UrlPath(StringMatch),
    /// `destination_ip`.
    DestinationIp(Cidr),
    /// `destination_port`.
    DestinationPort(u32),
    /// `destination_port_range`, `[start, end)`.
    DestinationPortRange(i32, i32),
    /// `requested_server_name`.
    RequestedServerName(StringMatch),
}

impl Perm {
    // `metadata` is deprecated but must still be refused by name.
    #[allow(deprecated)]
    pub(crate) fn compile(p: &Permission, at: At<'_>) -> Result<Perm, Error> {
        use permission::Rule;
        let set = |rules: &[Permission], name: &str| -> Result<Vec<Perm>, Error> {
            if rules.is_empty() {
                return Err(at.invalid(name, "must hold at least one rule"));
            }
            rules
                .iter()
                .enumerate()
                .map(|(i, r)| at.with(&format!("{name}[{i}]"), |at| Perm::compile(r, at)))
                .collect()
        };
        Ok(match &p.rule {
            Some(Rule::AndRules(s)) => Perm::And(set(&s.rules, "and_rules")?),
            Some(Rule::OrRules(s)) => Perm::Or(set(&s.rules, "or_rules")?),
            Some(Rule::NotRule(r)) => {
                Perm::Not(Box::new(at.with("not_rule", |at| Perm::compile(r, at))?))
            }
            Some(Rule::Any(true)) => Perm::Any,
            Some(Rule::Any(false)) => return Err(at.invalid("any", "must be true")),
            Some(Rule::Header(h)) => {
                Perm::Header(at.with("header", |at| HeaderMatch::compile(h, at))?)
            }
            Some(Rule::UrlPath(p)) => Perm::UrlPath(at.with("url_path", |at| path(p, at))?),
            Some(Rule::DestinationIp(c)) => {
                Perm::DestinationIp(at.with("destination_ip", |at| Cidr::compile(c, at))?)
            }
            Some(Rule::DestinationPort(port)) => Perm::DestinationPort(*port),
            Some(Rule::DestinationPortRange(r)) => Perm::DestinationPortRange(r.start, r.end),
            Some(Rule::RequestedServerName(m)) => Perm::RequestedServerName(
                at.with("requested_server_name", |at| StringMatch::compile(m, at))?,
            ),
            Some(Rule::Metadata(_)) => return Err(at.unsupported("metadata")),
            Some(Rule::Matcher(_)) => return Err(at.unsupported("matcher")),
            Some(Rule::UriTemplate(_)) => return Err(at.unsupported("uri_template")),
            Some(Rule::SourcedMetadata(_)) => return Err(at.unsupported("sourced_metadata")),
            None => return Err(at.invalid("rule", "not set")),
        })
    }

    /// Whether the request matches.
    pub fn matches(&self, req: &Request) -> bool {
        match self {
            Perm::And(v) => v.iter().all(|p| p.matches(req)),
            Perm::Or(v) => v.iter().any(|p| p.matches(req)),
            Perm::Not(p) => !p.matches(req),
            Perm::Any => true,
            Perm::Header(h) => h.matches(req),
            Perm::UrlPath(m) => req.url_path().is_some_and(|p| m.matches(p)),
            Perm::DestinationIp(c) => c.contains(req.destination_ip),
            Perm::DestinationPort(p) => u32::from(req.destination_port) == *p,
            Perm::DestinationPortRange(start, end) => {
                let p = i32::from(req.destination_port);
                *start <= p && p < *end
            }
            Perm::RequestedServerName(m) => {
                m.matches(req.requested_server_name.as_deref().unwrap_or(""))
            }
        }
    }
}

/// A compiled `Principal`.
#[derive(Debug, Clone)]
pub enum Princ {
    /// `and_ids`.
    And(Vec<Princ>),
    /// `or_ids`.
    Or(Vec<Princ>),
    /// `not_id`.
    Not(Box<Princ>),
    /// `any: true`.
    Any,
    /// `authenticated`: the peer's SPIFFE id (its URI SAN) against the matcher; without a
    /// matcher, any peer with a verified certificate.
    Authenticated(Option<StringMatch>),
    /// `direct_remote_ip` (and the deprecated `source_ip`): the connection's peer address.
    DirectRemoteIp(Cidr),
    /// `remote_ip`: the original client address (from `x-forwarded-for` where trusted).
    RemoteIp(Cidr),
    /// `header`.
    Header(HeaderMatch),
    /// `url_path`.
    UrlPath(StringMatch),
}

impl Princ {
    // `source_ip` and `metadata` are deprecated but still valid in Envoy's API.
    #[allow(deprecated)]
    pub(crate) fn compile(p: &Principal, at: At<'_>) -> Result<Princ, Error> {
        use principal::Identifier;
        let set = |ids: &[Principal], name: &str| -> Result<Vec<Princ>, Error> {
            if ids.is_empty() {
                return Err(at.invalid(name, "must hold at least one id"));
            }
            ids.iter()
                .enumerate()
                .map(|(i, r)| at.with(&format!("{name}[{i}]"), |at| Princ::compile(r, at)))
                .collect()
        };
        Ok(match &p.identifier {
            Some(Identifier::AndIds(s)) => Princ::And(set(&s.ids, "and_ids")?),
            Some(Identifier::OrIds(s)) => Princ::Or(set(&s.ids, "or_ids")?),
            Some(Identifier::NotId(r)) => {
                Princ::Not(Box::new(at.with("not_id", |at| Princ::compile(r, at))?))
            }
            Some(Identifier::Any(true)) => Princ::Any,
            Some(Identifier::Any(false)) => return Err(at.invalid("any", "must be true")),
            Some(Identifier::Authenticated(a)) => Princ::Authenticated(
                a.principal_name
                    .as_ref()
                    .map(|m| {
                        at.with("authenticated.principal_name", |at| {
                            StringMatch::compile(m, at)
                        })
                    })
                    .transpose()?,
            ),
            Some(Identifier::SourceIp(c)) => {
                Princ::DirectRemoteIp(at.with("source_ip", |at| Cidr::compile(c, at))?)
            }
            Some(Identifier::DirectRemoteIp(c)) => {
                Princ::DirectRemoteIp(at.with("direct_remote_ip", |at| Cidr::compile(c, at))?)
            }
            Some(Identifier::RemoteIp(c)) => {
                Princ::RemoteIp(at.with("remote_ip", |at| Cidr::compile(c, at))?)
            }
            Some(Identifier::Header(h)) => {
                Princ::Header(at.with("header", |at| HeaderMatch::compile(h, at))?)
            }
            Some(Identifier::UrlPath(p)) => Princ::UrlPath(at.with("url_path", |at| path(p, at))?),
            Some(Identifier::Metadata(_)) => return Err(at.unsupported("metadata")),
            Some(Identifier::FilterState(_)) => return Err(at.unsupported("filter_state")),
            Some(Identifier::SourcedMetadata(_)) => return Err(at.unsupported("sourced_metadata")),
            Some(Identifier::Custom(_)) => return Err(at.unsupported("custom")),
            None => return Err(at.invalid("identifier", "not set")),
        })
    }

    /// Whether the request matches.
    pub fn matches(&self, req: &Request) -> bool {
        match self {
            Princ::And(v) => v.iter().all(|p| p.matches(req)),
            Princ::Or(v) => v.iter().any(|p| p.matches(req)),
            Princ::Not(p) => !p.matches(req),
            Princ::Any => true,
            Princ::Authenticated(m) => match (&req.peer, m) {
                (None, _) => false,
                (Some(_), None) => true,
                (Some(id), Some(m)) => m.matches(&id.to_string()),
            },
            Princ::DirectRemoteIp(c) => c.contains(req.source_ip),
            Princ::RemoteIp(c) => c.contains(req.remote_ip.unwrap_or(req.source_ip)),
            Princ::Header(h) => h.matches(req),
            Princ::UrlPath(m) => req.url_path().is_some_and(|p| m.matches(p)),
        }
    }
}
