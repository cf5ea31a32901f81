//! Authorization: Envoy's RBAC, as straitd emits it for AuthorizationPolicies.
//!
//! straitd gives each inbound port up to two RBAC filters, DENY first and ALLOW second (HTTP
//! `envoy.filters.http.rbac` or network `envoy.filters.network.rbac`), each holding an
//! `envoy.config.rbac.v3.RBAC`. [`RbacFilter`] compiles one of them once; an unsupported or
//! invalid piece is refused with the policy and field it sits in, never skipped. An
//! [`Authorizer`] is the chain of filters of one port, evaluated in order as Envoy runs its
//! filter chain: a filter that denies ends it.
//!
//! One filter decides as Envoy's RBAC engine: a policy matches when one of its permissions
//! and one of its principals match; ALLOW lets a request through only if some policy
//! matches, DENY stops it if some policy matches, LOG lets everything through and marks
//! matching requests for the access log.
//!
//! [`normalize`] holds the path normalisation that must run before (and that routing uses
//! too).

use std::net::IpAddr;

use strait_proto::identity::SpiffeId;
use strait_proto::xds::envoy::config::rbac::v3::{Rbac, rbac};
use strait_proto::xds::envoy::extensions::filters::http::rbac::v3::Rbac as HttpRbac;
use strait_proto::xds::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;

pub mod matcher;
pub mod normalize;
#[cfg(test)]
mod tests;

use matcher::{At, Perm, Princ};
pub use normalize::{
    EscapedSlashes, Normalized, NormalizedPath, PathError, PathNormalization, normalize,
    normalize_host,
};

/// Why an RBAC configuration cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A piece Strait does not implement; the whole filter is refused (NACK) rather than
    /// evaluated without it.
    #[error("RBAC policy {policy:?}: {field} is not supported")]
    Unsupported {
        /// The policy's name (`<filter>` for filter-level fields).
        policy: String,
        /// The field's path inside the policy.
        field: String,
    },
    /// A value Envoy would refuse too.
    #[error("RBAC policy {policy:?}: {field}: {reason}")]
    Invalid {
        /// The policy's name (`<filter>` for filter-level fields).
        policy: String,
        /// The field's path inside the policy.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// The policy name used in errors about fields of the filter itself.
const FILTER: &str = "<filter>";

/// An RBAC filter's action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Only requests some policy matches pass.
    Allow,
    /// Requests some policy matches are refused.
    Deny,
    /// Everything passes; matching requests are marked for the access log.
    Log,
}

/// One policy, compiled.
#[derive(Debug, Clone)]
struct Policy {
    name: String,
    permissions: Vec<Perm>,
    principals: Vec<Princ>,
}

impl Policy {
    fn matches(&self, req: &Request) -> bool {
        self.permissions.iter().any(|p| p.matches(req))
            && self.principals.iter().any(|p| p.matches(req))
    }
}

/// One compiled RBAC filter.
#[derive(Debug, Clone)]
pub struct RbacFilter {
    action: Action,
    /// Sorted by name, as Envoy keeps them (a `std::map`): the first match is reported.
    policies: Vec<Policy>,
}

/// What one filter says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Whether the request may go on.
    pub allowed: bool,
    /// The first policy (by name) that matched.
    pub policy: Option<String>,
}

impl RbacFilter {
    /// Compiles `envoy.config.rbac.v3.RBAC`.
    pub fn compile(rules: &Rbac) -> Result<RbacFilter, Error> {
        let action = match rbac::Action::try_from(rules.action) {
            Ok(rbac::Action::Allow) => Action::Allow,
            Ok(rbac::Action::Deny) => Action::Deny,
            Ok(rbac::Action::Log) => Action::Log,
            Err(_) => {
                return Err(Error::Invalid {
                    policy: FILTER.into(),
                    field: "rules.action".into(),
                    reason: format!("unknown action {}", rules.action),
                });
            }
        };
        // audit_logging_options only decide what is logged, never who gets in: ignored.
        let mut names: Vec<&String> = rules.policies.keys().collect();
        names.sort();
        let mut policies = Vec::with_capacity(names.len());
        for name in names {
            let Some(p) = rules.policies.get(name) else {
                continue;
            };
            let at = At {
                policy: name,
                field: "",
            };
            if p.condition.is_some() || p.checked_condition.is_some() || p.cel_config.is_some() {
                return Err(Error::Unsupported {
                    policy: name.clone(),
                    field: "condition (CEL)".into(),
                });
            }
            if p.permissions.is_empty() || p.principals.is_empty() {
                return Err(Error::Invalid {
                    policy: name.clone(),
                    field: if p.permissions.is_empty() {
                        "permissions"
                    } else {
                        "principals"
                    }
                    .into(),
                    reason: "must hold at least one entry".into(),
                });
            }
            let permissions = p
                .permissions
                .iter()
                .enumerate()
                .map(|(i, perm)| {
                    Perm::compile(
                        perm,
                        At {
                            field: &format!("permissions[{i}]"),
                            ..at
                        },
                    )
                })
                .collect::<Result<_, _>>()?;
            let principals = p
                .principals
                .iter()
                .enumerate()
                .map(|(i, id)| {
                    Princ::compile(
                        id,
                        At {
                            field: &format!("principals[{i}]"),
                            ..at
                        },
                    )
                })
                .collect::<Result<_, _>>()?;
            policies.push(Policy {
                name: name.clone(),
                permissions,
                principals,
            });
        }
        Ok(RbacFilter { action, policies })
    }

    /// Compiles the HTTP filter's config; None when it has no `rules` (Envoy then enforces
    /// nothing). `shadow_rules` only feed statistics and are ignored; the matcher-tree API
    /// (`matcher`) is refused.
    pub fn from_http(config: &HttpRbac) -> Result<Option<RbacFilter>, Error> {
        if config.matcher.is_some() {
            return Err(unsupported_filter_field("matcher"));
        }
        config.rules.as_ref().map(RbacFilter::compile).transpose()
    }

    /// Compiles the network filter's config, as [`RbacFilter::from_http`]. The decision is
    /// taken once per connection (`ONE_TIME_ON_FIRST_BYTE`); `CONTINUOUS` is refused.
    pub fn from_network(config: &NetworkRbac) -> Result<Option<RbacFilter>, Error> {
        if config.matcher.is_some() {
            return Err(unsupported_filter_field("matcher"));
        }
        if config.enforcement_type != 0 {
            return Err(unsupported_filter_field("enforcement_type CONTINUOUS"));
        }
        config.rules.as_ref().map(RbacFilter::compile).transpose()
    }

    /// The filter's action.
    pub fn action(&self) -> Action {
        self.action
    }

    /// This filter's verdict on `req`.
    pub fn evaluate(&self, req: &Request) -> Verdict {
        let matched = self
            .policies
            .iter()
            .find(|p| p.matches(req))
            .map(|p| p.name.clone());
        let allowed = match self.action {
            Action::Allow => matched.is_some(),
            Action::Deny => matched.is_none(),
            Action::Log => true,
        };
        Verdict {
            allowed,
            policy: matched,
        }
    }
}

fn unsupported_filter_field(field: &str) -> Error {
    Error::Unsupported {
        policy: FILTER.into(),
        field: field.into(),
    }
}

/// The RBAC filters of one port, in filter-chain order.
#[derive(Debug, Clone, Default)]
pub struct Authorizer {
    filters: Vec<RbacFilter>,
}

/// The outcome of a whole chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may go on.
    pub allowed: bool,
    /// For a denial: the index of the filter that denied, and the DENY policy that matched
    /// (None when an ALLOW filter found no matching policy).
    pub denied_by: Option<(usize, Option<String>)>,
    /// A LOG filter matched: the request is to be access-logged (`access_log_hint`).
    pub log: bool,
}

impl Authorizer {
    /// The chain `filters`, evaluated in this order. Empty: everything is allowed.
    pub fn new(filters: Vec<RbacFilter>) -> Authorizer {
        Authorizer { filters }
    }

    /// Runs the chain: the first filter that denies ends it.
    pub fn evaluate(&self, req: &Request) -> Decision {
        let mut log = false;
        for (i, f) in self.filters.iter().enumerate() {
            let v = f.evaluate(req);
            if f.action == Action::Log && v.policy.is_some() {
                log = true;
            }
            if !v.allowed {
                let policy = (f.action == Action::Deny).then_some(v.policy).flatten();
                return Decision {
                    allowed: false,
                    denied_by: Some((i, policy)),
                    log,
                };
            }
        }
        Decision {
            allowed: true,
            denied_by: None,
            log,
        }
    }
}

/// What RBAC sees of a connection or request.
#[derive(Debug, Clone)]
pub struct Request {
    /// The peer's verified SPIFFE id; None for plaintext (or a TLS client without certificate).
    pub peer: Option<SpiffeId>,
    /// The connection's peer address (`direct_remote_ip`).
    pub source_ip: IpAddr,
    /// The original client address where trusted (`remote_ip`); None: `source_ip`.
    pub remote_ip: Option<IpAddr>,
    /// The address the connection was made to.
    pub destination_ip: IpAddr,
    /// The port the connection was made to.
    pub destination_port: u16,
    /// The SNI of the TLS handshake.
    pub requested_server_name: Option<String>,
    /// The HTTP request, for HTTP filters; None for network filters (header and path
    /// matchers then see no headers, as Envoy's network RBAC).
    pub http: Option<HttpRequest>,
}

/// The HTTP parts of a [`Request`], after normalisation.
#[derive(Debug, Clone)]
pub struct HttpRequest {
    /// `:method`.
    pub method: String,
    /// The normalised path (see [`normalize`]).
    pub path: NormalizedPath,
    /// `:authority` (or `Host`), as received.
    pub authority: String,
    /// Every other header, names in lower case, in arrival order.
    pub headers: Vec<(String, String)>,
}

impl Request {
    /// A connection-level request (network RBAC).
    pub fn connection(
        peer: Option<SpiffeId>,
        source_ip: IpAddr,
        destination_ip: IpAddr,
        destination_port: u16,
    ) -> Request {
        Request {
            peer,
            source_ip,
            remote_ip: None,
            destination_ip,
            destination_port,
            requested_server_name: None,
            http: None,
        }
    }

    /// The same connection carrying `http`.
    pub fn with_http(mut self, http: HttpRequest) -> Request {
        self.http = Some(http);
        self
    }

    /// The value of header `name` (lower case), pseudo-headers included; several values joined
    /// by `,` as Envoy does.
    pub(crate) fn header(&self, name: &str) -> Option<String> {
        let http = self.http.as_ref()?;
        match name {
            ":method" => Some(http.method.clone()),
            ":path" => Some(http.path.to_header()),
            ":authority" | "host" => Some(http.authority.clone()),
            _ => {
                let values: Vec<&str> = http
                    .headers
                    .iter()
                    .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v.as_str())
                    .collect();
                (!values.is_empty()).then(|| values.join(","))
            }
        }
    }

    /// The path `url_path` matchers see: normalised, without the query.
    pub(crate) fn url_path(&self) -> Option<&str> {
        self.http.as_ref().map(|h| h.path.path.as_str())
    }
}
